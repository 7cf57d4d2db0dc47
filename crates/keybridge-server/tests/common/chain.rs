//! Test CAs and device certificates made with rcgen: roots, intermediates
//! with path length limits, leaves with any key usage, account and validity.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber, SignatureAlgorithm,
};

pub struct Issuer {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

impl Issuer {
    pub fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }
}

fn time(unix_s: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix_s).unwrap()).unwrap()
}

fn ca_params(name: &str, path_len: Option<u8>, from: u64, to: u64) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = time(from);
    p.not_after = time(to);
    p
}

pub fn root(
    name: &str,
    alg: &'static SignatureAlgorithm,
    path_len: Option<u8>,
    from: u64,
    to: u64,
) -> Issuer {
    let key = KeyPair::generate_for(alg).unwrap();
    let cert = ca_params(name, path_len, from, to)
        .self_signed(&key)
        .unwrap();
    Issuer { cert, key }
}

pub fn intermediate(
    parent: &Issuer,
    name: &str,
    path_len: Option<u8>,
    from: u64,
    to: u64,
) -> Issuer {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = ca_params(name, path_len, from, to)
        .signed_by(&key, &parent.cert, &parent.key)
        .unwrap();
    Issuer { cert, key }
}

/// What a device certificate says.
pub struct Leaf<'a> {
    pub account: &'a str,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub from: u64,
    pub to: u64,
    pub serial: u8,
}

impl Leaf<'_> {
    pub fn new(account: &str, from: u64, to: u64) -> Leaf<'_> {
        Leaf {
            account,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            from,
            to,
            serial: 0x42,
        }
    }

    pub fn issue(&self, parent: &Issuer, key: &KeyPair) -> Vec<u8> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "test device");
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(
            format!("urn:keybridge:account:{}", self.account)
                .try_into()
                .unwrap(),
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = self.key_usages.clone();
        p.serial_number = Some(SerialNumber::from_slice(&[self.serial, 1, 2, 3]));
        p.not_before = time(self.from);
        p.not_after = time(self.to);
        p.signed_by(key, &parent.cert, &parent.key)
            .unwrap()
            .der()
            .to_vec()
    }
}

/// A P-256 key as rcgen holds it and as the software card signs with it.
pub fn p256_key() -> (KeyPair, p256::ecdsa::SigningKey) {
    use p256::pkcs8::DecodePrivateKey;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let signing = p256::ecdsa::SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap();
    (key, signing)
}

pub fn pem(der: &[u8]) -> String {
    let b64 = keybridge_proto::api::b64::encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}
