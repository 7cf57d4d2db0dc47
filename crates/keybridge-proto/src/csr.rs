//! PKCS#10 (RFC 2986) for a P-256 card key, in the three steps enrolment
//! takes: the relay builds the `CertificationRequestInfo`
//! ([`certification_request_info`]), the card checks it names its own key
//! ([`check_request_info`]) and signs it (SIGN CSR), the relay wraps info and
//! signature into the `CertificationRequest` ([`assemble`]) the CA verifies.
//!
//! Why the card can answer SIGN CSR with its payment key without becoming a
//! signing oracle: it signs only a DER `SEQUENCE` (first byte `30`) that is
//! exactly `{ INTEGER 0, Name, <its own SubjectPublicKeyInfo>, [0] attributes }`,
//! while every payment message starts with the payload template tag `71`
//! ([`crate::signed_message`]); no byte string is both.
//!
//! Minimal DER, definite lengths of at most two bytes: everything here is
//! far below 64 KiB ([`REQUEST_INFO_LEN_MAX`]).

/// The largest request info the card will sign.
pub const REQUEST_INFO_LEN_MAX: usize = 1024;
/// Longest common name put in the subject.
pub const COMMON_NAME_LEN_MAX: usize = 64;

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_UTF8_STRING: u8 = 0x0C;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_ATTRIBUTES: u8 = 0xA0;

/// id-ecPublicKey, prime256v1, ecdsa-with-SHA256, id-at-commonName (contents only).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_PRIME256V1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_ECDSA_WITH_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// Appends one DER TLV. Lengths above 65535 do not occur here (bounded inputs).
fn tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len.to_be_bytes()[std::mem::size_of::<usize>() - 1]);
    } else if len <= 0xFF {
        out.extend_from_slice(&[0x81, len.to_be_bytes()[std::mem::size_of::<usize>() - 1]]);
    } else {
        let b = len.to_be_bytes();
        let n = std::mem::size_of::<usize>();
        out.extend_from_slice(&[0x82, b[n - 2], b[n - 1]]);
    }
    out.extend_from_slice(value);
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut out = Vec::with_capacity(body.len() + 4);
    tlv(&mut out, TAG_SEQUENCE, &body);
    out
}

fn oid(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    tlv(&mut out, TAG_OID, contents);
    out
}

/// The DER SubjectPublicKeyInfo of a SEC1 uncompressed P-256 point.
pub fn p256_spki(point: &[u8]) -> Vec<u8> {
    let algorithm = seq(&[&oid(OID_EC_PUBLIC_KEY), &oid(OID_PRIME256V1)]);
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    let mut key = Vec::new();
    tlv(&mut key, TAG_BIT_STRING, &bits);
    seq(&[&algorithm, &key])
}

/// Why a request could not be built or was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("the common name is empty, too long or has control characters")]
    CommonName,
    #[error("not a CertificationRequestInfo for this key")]
    NotForThisKey,
}

/// `CertificationRequestInfo` with subject `CN=<common_name>` for a P-256 point.
pub fn certification_request_info(common_name: &str, point: &[u8]) -> Result<Vec<u8>, CsrError> {
    if common_name.is_empty()
        || common_name.len() > COMMON_NAME_LEN_MAX
        || common_name.chars().any(char::is_control)
    {
        return Err(CsrError::CommonName);
    }
    let mut version = Vec::new();
    tlv(&mut version, TAG_INTEGER, &[0]);
    let mut cn = Vec::new();
    tlv(&mut cn, TAG_UTF8_STRING, common_name.as_bytes());
    let atv = seq(&[&oid(OID_COMMON_NAME), &cn]);
    let mut rdn = Vec::new();
    tlv(&mut rdn, TAG_SET, &atv);
    let name = seq(&[&rdn]);
    let mut attributes = Vec::new();
    tlv(&mut attributes, TAG_ATTRIBUTES, &[]);
    Ok(seq(&[&version, &name, &p256_spki(point), &attributes]))
}

/// Reads one DER TLV: (tag, value, rest). Short-form tags only, minimal lengths.
fn read(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    if tag & 0x1F == 0x1F {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7F => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            (b >= 0x80).then_some((usize::from(b), rest))?
        }
        0x82 => {
            let (b, rest) = rest.split_at_checked(2)?;
            let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
            (len >= 0x100).then_some((len, rest))?
        }
        _ => return None,
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((tag, value, rest))
}

/// The card's check before SIGN CSR: `info` is exactly one
/// `CertificationRequestInfo` (v1, any Name, `point`'s SPKI, any attributes)
/// and nothing else.
pub fn check_request_info(info: &[u8], point: &[u8]) -> Result<(), CsrError> {
    let refuse = CsrError::NotForThisKey;
    if info.len() > REQUEST_INFO_LEN_MAX {
        return Err(refuse);
    }
    let (tag, body, rest) = read(info).ok_or(refuse)?;
    if tag != TAG_SEQUENCE || !rest.is_empty() {
        return Err(refuse);
    }
    let (tag, version, body) = read(body).ok_or(refuse)?;
    if tag != TAG_INTEGER || version != [0] {
        return Err(refuse);
    }
    let (tag, _name, body) = read(body).ok_or(refuse)?;
    if tag != TAG_SEQUENCE {
        return Err(refuse);
    }
    let spki = p256_spki(point);
    let spki_end = body.get(..spki.len()).ok_or(refuse)?;
    if spki_end != spki.as_slice() {
        return Err(refuse);
    }
    let (tag, _attributes, rest) = read(&body[spki.len()..]).ok_or(refuse)?;
    if tag != TAG_ATTRIBUTES || !rest.is_empty() {
        return Err(refuse);
    }
    Ok(())
}

/// `CertificationRequest { info, ecdsa-with-SHA256, signature }` (DER).
pub fn assemble(info: &[u8], der_signature: &[u8]) -> Vec<u8> {
    let algorithm = seq(&[&oid(OID_ECDSA_WITH_SHA256)]);
    let mut bits = vec![0u8];
    bits.extend_from_slice(der_signature);
    let mut signature = Vec::new();
    tlv(&mut signature, TAG_BIT_STRING, &bits);
    seq(&[info, &algorithm, &signature])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> Vec<u8> {
        let mut p = vec![0x04];
        p.extend((1..=64).map(|i: u8| i));
        p
    }

    #[test]
    fn the_card_accepts_exactly_the_info_built_for_its_key() {
        let info = certification_request_info("KeyBridge card", &point()).unwrap();
        assert_eq!(info[0], 0x30);
        assert_eq!(check_request_info(&info, &point()), Ok(()));
        let mut other = point();
        other[10] ^= 1;
        assert_eq!(
            check_request_info(&info, &other),
            Err(CsrError::NotForThisKey)
        );
        // Trailing bytes, truncation, any flipped byte in the key: refused.
        let mut long = info.clone();
        long.push(0);
        assert!(check_request_info(&long, &point()).is_err());
        assert!(check_request_info(&info[..info.len() - 1], &point()).is_err());
        // A confirmation payload (tag 71) is never a request info.
        assert!(check_request_info(&[0x71, 0x00], &point()).is_err());
    }

    #[test]
    fn refuses_bad_common_names() {
        assert!(certification_request_info("", &point()).is_err());
        assert!(certification_request_info("a\nb", &point()).is_err());
        assert!(certification_request_info(&"x".repeat(65), &point()).is_err());
    }

    #[test]
    fn long_values_use_long_form_lengths() {
        let mut out = Vec::new();
        tlv(&mut out, 0x04, &[0; 200]);
        assert_eq!(&out[..3], &[0x04, 0x81, 200]);
        let mut out = Vec::new();
        tlv(&mut out, 0x04, &[0; 300]);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2C]);
        assert_eq!(read(&out).unwrap().1.len(), 300);
    }
}
