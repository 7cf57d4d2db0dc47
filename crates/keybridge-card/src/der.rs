//! Just enough DER to find the public key in an X.509 certificate
//! (RFC 5280 §4.1), so the card can refuse a certificate for another key.
//! Definite lengths only, at most 2 length bytes (the card stores ≤ 2048 bytes).

const TAG_SEQUENCE: u8 = 0x30;
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_VERSION: u8 = 0xA0;

/// Reads one TLV after another from a byte string.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next TLV's tag and value, or `None` if the bytes are not DER.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.bytes.split_first()?;
        if tag & 0x1F == 0x1F {
            return None; // multi-byte tags do not occur where we look
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = match first {
            0..=0x7F => (usize::from(first), rest),
            0x81 => {
                let (&b, rest) = rest.split_first()?;
                if b < 0x80 {
                    return None; // not minimal
                }
                (usize::from(b), rest)
            }
            0x82 => {
                let (bytes, rest) = rest.split_at_checked(2)?;
                let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
                if len < 0x100 {
                    return None; // not minimal
                }
                (len, rest)
            }
            _ => return None,
        };
        let (value, rest) = rest.split_at_checked(len)?;
        self.bytes = rest;
        Some((tag, value))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, value) if t == tag => Some(value),
            _ => None,
        }
    }
}

/// The subjectPublicKey bits of a certificate (for EC keys: the SEC1 point),
/// or `None` if `der` is not one whole certificate.
pub(crate) fn certificate_public_key(der: &[u8]) -> Option<&[u8]> {
    let mut outer = Reader::new(der);
    let certificate = outer.expect(TAG_SEQUENCE)?;
    if !outer.is_empty() {
        return None;
    }
    let mut certificate = Reader::new(certificate);
    let tbs = certificate.expect(TAG_SEQUENCE)?;
    let _signature_algorithm = certificate.expect(TAG_SEQUENCE)?;
    let _signature = certificate.expect(TAG_BIT_STRING)?;
    if !certificate.is_empty() {
        return None;
    }
    let mut tbs = Reader::new(tbs);
    let (mut tag, _) = tbs.next()?;
    if tag == TAG_VERSION {
        tag = tbs.next()?.0;
    }
    if tag != TAG_INTEGER {
        return None; // serial number
    }
    for _ in ["signature", "issuer", "validity", "subject"] {
        tbs.expect(TAG_SEQUENCE)?;
    }
    let mut spki = Reader::new(tbs.expect(TAG_SEQUENCE)?);
    let _algorithm = spki.expect(TAG_SEQUENCE)?;
    let bits = spki.expect(TAG_BIT_STRING)?;
    match bits.split_first()? {
        (0, key) => Some(key), // no unused bits
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_non_minimal_and_truncated_lengths() {
        assert_eq!(Reader::new(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0]).next(), None);
        assert_eq!(Reader::new(&[0x30, 0x03, 0, 0]).next(), None);
        assert_eq!(Reader::new(&[0x30, 0x83, 0, 0, 1, 0]).next(), None);
        assert_eq!(Reader::new(&[0x30, 0x00]).next(), Some((0x30, &[][..])));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = certificate_public_key(&bytes);
        }
    }
}
