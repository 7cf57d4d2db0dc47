//! A minimal, strict BER-TLV codec (ISO/IEC 7816-4 §5.2, ISO/IEC 8825-1).
//!
//! Strict means canonical: a length is accepted only in its shortest form, so one
//! value has exactly one encoding. That matters because signatures cover bytes:
//! two encodings of one payload would let a relay present different bytes with the
//! same meaning. Tags are one or two bytes; lengths up to `0xFFFF`.

/// Why bytes are not valid TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlvError {
    #[error("TLV ends in the middle of a tag")]
    TruncatedTag,
    #[error("TLV ends in the middle of a length")]
    TruncatedLength,
    #[error("TLV value is shorter than its length says")]
    TruncatedValue,
    #[error("TLV tag longer than two bytes")]
    TagTooLong,
    #[error("TLV length not in its shortest form")]
    NonMinimalLength,
    #[error("TLV length form not supported")]
    UnsupportedLength,
}

/// One decoded element; `value` borrows from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u16,
    pub value: &'a [u8],
}

/// Iterates over consecutive TLV elements of `input`.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { rest: input }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Reads the next element, or `None` at the end of input.
    pub fn next_tlv(&mut self) -> Result<Option<Tlv<'a>>, TlvError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (tag, after_tag) = read_tag(self.rest)?;
        let (len, after_len) = read_length(after_tag)?;
        if after_len.len() < len {
            return Err(TlvError::TruncatedValue);
        }
        let (value, rest) = after_len.split_at(len);
        self.rest = rest;
        Ok(Some(Tlv { tag, value }))
    }
}

fn read_tag(input: &[u8]) -> Result<(u16, &[u8]), TlvError> {
    let (&first, rest) = input.split_first().ok_or(TlvError::TruncatedTag)?;
    if first & 0x1F != 0x1F {
        return Ok((u16::from(first), rest));
    }
    let (&second, rest) = rest.split_first().ok_or(TlvError::TruncatedTag)?;
    if second & 0x80 != 0 {
        return Err(TlvError::TagTooLong);
    }
    Ok((u16::from_be_bytes([first, second]), rest))
}

fn read_length(input: &[u8]) -> Result<(usize, &[u8]), TlvError> {
    let (&first, rest) = input.split_first().ok_or(TlvError::TruncatedLength)?;
    match first {
        0x00..=0x7F => Ok((usize::from(first), rest)),
        0x81 => {
            let (&b, rest) = rest.split_first().ok_or(TlvError::TruncatedLength)?;
            if b < 0x80 {
                return Err(TlvError::NonMinimalLength);
            }
            Ok((usize::from(b), rest))
        }
        0x82 => {
            if rest.len() < 2 {
                return Err(TlvError::TruncatedLength);
            }
            let len = u16::from_be_bytes([rest[0], rest[1]]);
            if len < 0x100 {
                return Err(TlvError::NonMinimalLength);
            }
            Ok((usize::from(len), &rest[2..]))
        }
        _ => Err(TlvError::UnsupportedLength),
    }
}

/// Appends one element to `out`. Values longer than `0xFFFF` are a programmer
/// error (every caller bounds its fields far below that), so this asserts.
pub fn write(out: &mut Vec<u8>, tag: u16, value: &[u8]) {
    if tag > 0xFF {
        out.extend_from_slice(&tag.to_be_bytes());
    } else {
        out.push(tag.to_be_bytes()[1]);
    }
    write_length(out, value.len());
    out.extend_from_slice(value);
}

fn write_length(out: &mut Vec<u8>, len: usize) {
    assert!(
        len <= 0xFFFF,
        "TLV value of {len} bytes exceeds the codec's bound"
    );
    let bytes = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    match len {
        0..=0x7F => out.push(bytes[3]),
        0x80..=0xFF => out.extend_from_slice(&[0x81, bytes[3]]),
        _ => out.extend_from_slice(&[0x82, bytes[2], bytes[3]]),
    }
}

/// The encoded size of a length field for a value of `len` bytes.
pub fn length_size(len: usize) -> usize {
    match len {
        0..=0x7F => 1,
        0x80..=0xFF => 2,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_short_and_long_lengths() {
        let mut r = Reader::new(&[0x80, 0x01, 0xAA, 0x5F, 0x20, 0x00]);
        assert_eq!(
            r.next_tlv().unwrap(),
            Some(Tlv {
                tag: 0x80,
                value: &[0xAA]
            })
        );
        assert_eq!(
            r.next_tlv().unwrap(),
            Some(Tlv {
                tag: 0x5F20,
                value: &[]
            })
        );
        assert_eq!(r.next_tlv().unwrap(), None);
    }

    #[test]
    fn refuses_non_canonical_and_truncated() {
        let check = |bytes: &[u8], err: TlvError| {
            assert_eq!(Reader::new(bytes).next_tlv(), Err(err), "{bytes:02x?}");
        };
        check(
            &[0x80, 0x81, 0x05, 1, 2, 3, 4, 5],
            TlvError::NonMinimalLength,
        );
        check(&[0x80, 0x82, 0x00, 0x90], TlvError::NonMinimalLength);
        check(&[0x80, 0x83, 0, 0, 1, 0], TlvError::UnsupportedLength);
        check(&[0x80, 0x80], TlvError::UnsupportedLength);
        check(&[0x80, 0x03, 1, 2], TlvError::TruncatedValue);
        check(&[0x80], TlvError::TruncatedLength);
        check(&[0x80, 0x82, 0x01], TlvError::TruncatedLength);
        check(&[0x5F], TlvError::TruncatedTag);
        check(&[0x5F, 0x81, 0x00], TlvError::TagTooLong);
    }

    proptest! {
        #[test]
        fn write_then_read(tag in prop_oneof![0u16..0x1F, 0x5F00u16..0x5F7F], value in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut out = Vec::new();
            write(&mut out, tag, &value);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.next_tlv().unwrap(), Some(Tlv { tag, value: &value }));
            prop_assert!(r.is_empty());
        }

        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            while let Ok(Some(_)) = r.next_tlv() {}
        }
    }
}
