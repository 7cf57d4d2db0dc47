//! PIV data objects (SP 800-73-4 Part 1 §3.1, Table 3): their tags, who may
//! read them, the slot each certificate belongs to, and what a new card holds.

use std::collections::BTreeMap;

use p256::elliptic_curve::rand_core::CryptoRngCore;

use crate::piv::tlv;

/// Card Capability Container.
pub const CCC: [u8; 3] = [0x5F, 0xC1, 0x07];
/// Card Holder Unique Identifier.
pub const CHUID: [u8; 3] = [0x5F, 0xC1, 0x02];
/// Discovery object: a one-byte tag, answered without the `53` wrapper.
pub const DISCOVERY: [u8; 1] = [0x7E];
/// X.509 certificates for PIV authentication (9A), digital signature (9C),
/// key management (9D) and card authentication (9E).
pub const CERT_9A: [u8; 3] = [0x5F, 0xC1, 0x05];
pub const CERT_9C: [u8; 3] = [0x5F, 0xC1, 0x0A];
pub const CERT_9D: [u8; 3] = [0x5F, 0xC1, 0x0B];
pub const CERT_9E: [u8; 3] = [0x5F, 0xC1, 0x01];

/// Objects only readable after the PIN (Table 3, access rule "PIN"):
/// fingerprints, printed information, facial image, iris images.
const PIN_PROTECTED: [[u8; 3]; 4] = [
    [0x5F, 0xC1, 0x03],
    [0x5F, 0xC1, 0x09],
    [0x5F, 0xC1, 0x08],
    [0x5F, 0xC1, 0x21],
];

/// The PIV application identifier, in full (Part 1 §2.2).
pub const AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];

/// Tags PUT DATA may write: the PIV range `5FC101`–`5FC123`, the discovery
/// object, the biometric group template `7F61`, and the vendor range `5FFFxx`
/// where yubico-piv-tool keeps its admin data.
pub fn is_known_tag(tag: &[u8]) -> bool {
    match tag {
        [0x7E] => true,
        [0x7F, 0x61] => true,
        [0x5F, 0xC1, n] => (0x01..=0x23).contains(n),
        [0x5F, 0xFF, _] => true,
        _ => false,
    }
}

pub fn needs_pin(tag: &[u8]) -> bool {
    PIN_PROTECTED.iter().any(|t| t == tag)
}

/// The certificate object of a key slot.
pub fn certificate_tag(slot: u8) -> Option<[u8; 3]> {
    match slot {
        0x9A => Some(CERT_9A),
        0x9C => Some(CERT_9C),
        0x9D => Some(CERT_9D),
        0x9E => Some(CERT_9E),
        _ => None,
    }
}

/// The certificate object's content for a DER certificate (Part 1 Table 10):
/// `70` certificate, `71 01 00` (not compressed), `FE 00` (no error detection code).
pub fn certificate_object(der: &[u8]) -> Vec<u8> {
    let mut inner = tlv::encode(&[0x70], der);
    inner.extend_from_slice(&[0x71, 0x01, 0x00, 0xFE, 0x00]);
    tlv::encode(&[0x53], &inner)
}

/// The DER certificate inside a stored certificate object, if it has one.
pub fn certificate_der(object: &[u8]) -> Option<&[u8]> {
    let content = tlv::only(object, &[0x53])?;
    tlv::parse_all(content)?
        .into_iter()
        .find(|t| t.tag == [0x70])
        .map(|t| t.value)
}

/// The application property template SELECT answers (Part 2 §3.1.1): the
/// PIX, the coexistent tag allocation authority (NIST's RID), a label, and the
/// algorithms this card does: 3DES management key (`03`) and ECC P-256 (`11`).
pub fn application_property_template() -> Vec<u8> {
    let mut body = Vec::new();
    tlv::write(&mut body, &[0x4F], &AID[5..]);
    tlv::write(&mut body, &[0x79], &tlv::encode(&[0x4F], &AID[..5]));
    tlv::write(&mut body, &[0x50], b"KeyBridge PIV");
    let mut algorithms = Vec::new();
    tlv::write(&mut algorithms, &[0x80], &[0x03]);
    tlv::write(&mut algorithms, &[0x80], &[0x11]);
    tlv::write(&mut algorithms, &[0x06], &[0x00]);
    tlv::write(&mut body, &[0xAC], &algorithms);
    tlv::encode(&[0x61], &body)
}

/// What a new card holds: a CHUID with a random GUID, a CCC with a random
/// card identifier, and the discovery object (PIV PIN only, no pairing code).
pub fn factory_objects(rng: &mut dyn CryptoRngCore) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut guid = [0u8; 16];
    rng.fill_bytes(&mut guid);
    let mut card_id = [0u8; 14];
    rng.fill_bytes(&mut card_id);

    let mut chuid = Vec::new();
    // FASC-N of a non-government card: agency code 9999, all other fields 9s
    // (the value YubiKeys and OpenSC's test cards carry).
    tlv::write(
        &mut chuid,
        &[0x30],
        &[
            0xD4, 0xE7, 0x39, 0xDA, 0x73, 0x9C, 0xED, 0x39, 0xCE, 0x73, 0x9D, 0x83, 0x68, 0x58,
            0x21, 0x08, 0x42, 0x10, 0x84, 0x21, 0xC8, 0x42, 0x10, 0xC3, 0xEB,
        ],
    );
    tlv::write(&mut chuid, &[0x34], &guid);
    tlv::write(&mut chuid, &[0x35], b"20991231");
    tlv::write(&mut chuid, &[0x3E], &[]);
    tlv::write(&mut chuid, &[0xFE], &[]);

    let mut ccc = Vec::new();
    let mut ccc_id = vec![0xA0, 0x00, 0x00, 0x01, 0x16, 0xFF, 0x02];
    ccc_id.extend_from_slice(&card_id);
    tlv::write(&mut ccc, &[0xF0], &ccc_id);
    tlv::write(&mut ccc, &[0xF1], &[0x21]); // container version
    tlv::write(&mut ccc, &[0xF2], &[0x21]); // grammar version
    tlv::write(&mut ccc, &[0xF3], &[]);
    tlv::write(&mut ccc, &[0xF4], &[0x00]); // PKCS#15: no
    tlv::write(&mut ccc, &[0xF5], &[0x10]); // data model number
    for tag in [0xF6, 0xF7, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE] {
        tlv::write(&mut ccc, &[tag], &[]);
    }

    let mut discovery = Vec::new();
    tlv::write(&mut discovery, &[0x4F], &AID);
    // PIN usage policy: the PIV PIN only (0x40); no global PIN preference.
    tlv::write(&mut discovery, &[0x5F, 0x2F], &[0x40, 0x00]);

    let mut objects = BTreeMap::new();
    objects.insert(CHUID.to_vec(), tlv::encode(&[0x53], &chuid));
    objects.insert(CCC.to_vec(), tlv::encode(&[0x53], &ccc));
    objects.insert(DISCOVERY.to_vec(), tlv::encode(&DISCOVERY, &discovery));
    objects
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn factory_objects_have_the_published_shapes() {
        let objects = factory_objects(&mut rand::rngs::StdRng::seed_from_u64(1));
        let ccc = &objects[&CCC.to_vec()];
        assert_eq!(&ccc[..2], &[0x53, 0x33], "YubiKey's CCC is 53 33 …");
        let discovery = &objects[&DISCOVERY.to_vec()];
        assert_eq!(
            hex::encode_upper(discovery),
            "7E124F0BA0000003080000100001005F2F024000"
        );
        let chuid = &objects[&CHUID.to_vec()];
        assert_eq!(&chuid[..4], &[0x53, 0x3B, 0x30, 0x19]);
        assert_eq!(
            hex::encode_upper(application_property_template()),
            "612B 4F06000010000100 79074F05A000000308 500D4B6579427269646765205049 56 AC09800103800111060100"
                .replace(' ', "")
        );
    }

    #[test]
    fn certificate_objects_round_trip() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        let object = certificate_object(&der);
        assert_eq!(certificate_der(&object), Some(&der[..]));
        assert_eq!(certificate_der(&[0x53, 0x00]), None);
    }
}
