//! The BER-TLV that PIV clients send (SP 800-73-4 Part 2 §3 uses ISO/IEC
//! 8825-1 BER with definite lengths): tags of one to three bytes, lengths in
//! the short form or `81`/`82` long forms.
//!
//! Lenient where clients differ (a non-minimal `81 05` length is accepted:
//! nothing here is signed as bytes), strict where it matters: a length that
//! runs past the input is an error, never a panic.

/// One element: its tag bytes (1 to 3) and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    pub tag: &'a [u8],
    pub value: &'a [u8],
}

/// Splits the first element off `input`; `None` if `input` is not BER-TLV.
pub(crate) fn split(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let first = *input.first()?;
    // Low five bits all set: more tag bytes follow, each with bit 8 set but the last.
    let mut tag_len = 1;
    if first & 0x1F == 0x1F {
        loop {
            let b = *input.get(tag_len)?;
            tag_len += 1;
            if b & 0x80 == 0 {
                break;
            }
            if tag_len >= 3 {
                return None;
            }
        }
    }
    let (tag, rest) = input.split_at(tag_len);
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = match l0 {
        0..=0x7F => (usize::from(l0), rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            (usize::from(b), rest)
        }
        0x82 => {
            let hi = *rest.first()?;
            let lo = *rest.get(1)?;
            (usize::from(u16::from_be_bytes([hi, lo])), rest.get(2..)?)
        }
        _ => return None,
    };
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    Some((Tlv { tag, value }, rest))
}

/// Every element of `input` in order; `None` if any is malformed.
pub(crate) fn parse_all(mut input: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tlv, rest) = split(input)?;
        out.push(tlv);
        input = rest;
    }
    Some(out)
}

/// `input` must be exactly one element with tag `tag`; its value.
pub(crate) fn only<'a>(input: &'a [u8], tag: &[u8]) -> Option<&'a [u8]> {
    match split(input)? {
        (tlv, []) if tlv.tag == tag => Some(tlv.value),
        _ => None,
    }
}

/// Appends `tag ‖ length ‖ value`. Values are bounded far below 65536 bytes
/// by the applet (objects, signatures, keys); a longer one is a programmer error.
pub(crate) fn write(out: &mut Vec<u8>, tag: &[u8], value: &[u8]) {
    out.extend_from_slice(tag);
    let len = value.len();
    let [hi, lo] = u16::try_from(len)
        .expect("PIV TLV values are bounded below 65536 bytes")
        .to_be_bytes();
    match len {
        0..=0x7F => out.push(lo),
        0x80..=0xFF => out.extend_from_slice(&[0x81, lo]),
        _ => out.extend_from_slice(&[0x82, hi, lo]),
    }
    out.extend_from_slice(value);
}

/// `tag ‖ length ‖ value` as a new vector.
pub(crate) fn encode(tag: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + 3 + value.len());
    write(&mut out, tag, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_piv_shapes() {
        // GET DATA's tag list, a GENERAL AUTHENTICATE template, a 2-byte tag.
        assert_eq!(
            only(&[0x5C, 3, 0x5F, 0xC1, 0x05], &[0x5C]),
            Some(&[0x5F, 0xC1, 0x05][..])
        );
        let t = parse_all(&[0x82, 0x00, 0x81, 0x02, 0xAA, 0xBB]).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[1].tag, t[1].value), (&[0x81][..], &[0xAA, 0xBB][..]));
        let (t, rest) = split(&[0x7F, 0x49, 0x81, 0x01, 0x86, 0xFF]).unwrap();
        assert_eq!(
            (t.tag, t.value, rest),
            (&[0x7F, 0x49][..], &[0x86][..], &[0xFF][..])
        );
        let (t, _) = split(
            &[0x53, 0x82, 0x01, 0x00]
                .iter()
                .copied()
                .chain([0; 256])
                .collect::<Vec<_>>(),
        )
        .map(|(t, r)| (t.value.len(), r.len()))
        .unwrap();
        assert_eq!(t, 256);
    }

    #[test]
    fn refuses_truncation_and_overlong_tags() {
        for bad in [
            &[0x53][..],
            &[0x53, 0x02, 0x00],
            &[0x53, 0x81],
            &[0x53, 0x82, 0x01],
            &[0x5F],
            &[0x5F, 0xC1],
            &[0x5F, 0xC1, 0x85, 0x01, 0x00],
            &[0x53, 0x84, 0, 0, 0, 1],
        ] {
            assert!(split(bad).is_none(), "{bad:02X?}");
        }
    }

    proptest! {
        #[test]
        fn write_then_split(tag in prop_oneof![Just(vec![0x53u8]), Just(vec![0x7F, 0x49]), Just(vec![0x5F, 0xC1, 0x05])],
                            value in proptest::collection::vec(any::<u8>(), 0..700)) {
            let bytes = encode(&tag, &value);
            let (t, rest) = split(&bytes).unwrap();
            prop_assert_eq!(t.tag, &tag[..]);
            prop_assert_eq!(t.value, &value[..]);
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn split_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_all(&bytes);
        }
    }
}
