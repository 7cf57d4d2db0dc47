//! The built-in certificate authority: issues device certificates at
//! enrolment (rcgen), from a PKCS#10 request whose signature proves the
//! card holds the key, and signs the CRL of the certificates it issued.
//! Validation is [`crate::pki`]'s job, the same for this CA and an external one.
//!
//! A device certificate binds one public key to one payer account through
//! the SAN URI `urn:keybridge:account:<account>`, with keyUsage
//! digitalSignature only. The key file is written 0600 and never logged.

use std::io::Write;
use std::path::Path;

use keybridge_proto::AccountId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use x509_parser::prelude::FromDer;

/// Length of a SEC1 uncompressed P-256 point: `04 ‖ x ‖ y`.
pub const P256_POINT_LEN: usize = 65;

const CA_KEY_FILE: &str = "ca-key.pem";
const CA_CERT_FILE: &str = "ca-cert.pem";
const CA_VALIDITY_S: i64 = 20 * 365 * 24 * 3600;
const DEVICE_VALIDITY_S: i64 = 2 * 365 * 24 * 3600;
/// Tolerates small clock differences between the CA and whoever checks.
const BACKDATE_S: i64 = 60;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("stored CA is unusable: {0}")]
    Invalid(String),
    #[error("time out of range")]
    Time,
}

/// The SAN URI that binds a certificate to an account.
pub fn account_uri(account: &AccountId) -> String {
    format!("urn:keybridge:account:{}", account.as_str())
}

/// The CA key and certificate. Debug never prints the key.
pub struct Ca {
    key: KeyPair,
    /// The CA certificate re-derived from the stored one, used as rcgen's issuer.
    issuer: rcgen::Certificate,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads `ca-key.pem` and `ca-cert.pem` from `dir`, or creates both
    /// (key file mode 0600) if neither exists.
    pub fn load_or_create(dir: &Path, origin: &str, now_unix_s: u64) -> Result<Ca, CaError> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        let io = |context: &str, path: &Path| {
            let context = format!("{context} {}", path.display());
            move |source| CaError::Io { context, source }
        };
        if key_path.exists() || cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io("reading", &key_path))?;
            let cert_pem =
                std::fs::read_to_string(&cert_path).map_err(io("reading", &cert_path))?;
            return Ca::from_pem(&key_pem, &cert_pem);
        }
        let ca = Ca::generate(origin, now_unix_s)?;
        write_private(&key_path, ca.key.serialize_pem().as_bytes())
            .map_err(io("writing", &key_path))?;
        std::fs::write(&cert_path, ca.cert_pem.as_bytes()).map_err(io("writing", &cert_path))?;
        tracing::info!(path = %cert_path.display(), "created CA");
        Ok(ca)
    }

    /// A fresh CA with a new P-256 key.
    pub fn generate(origin: &str, now_unix_s: u64) -> Result<Ca, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "KeyBridge device CA");
        dn.push(DnType::OrganizationName, origin);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        let now = unix_i64(now_unix_s)?;
        params.not_before = datetime(now - BACKDATE_S)?;
        params.not_after = datetime(now + CA_VALIDITY_S)?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().to_vec();
        Ok(Ca {
            key,
            issuer: cert,
            cert_pem,
            cert_der,
        })
    }

    /// Rebuilds the CA from its stored PEM files.
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::Invalid("CA key is not P-256".into()));
        }
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // Re-signing yields an issuer with the stored subject name and key id,
        // which is all rcgen takes from it; clients get the stored PEM itself.
        let issuer = params.self_signed(&key)?;
        let cert_der = pem_to_der(cert_pem)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|_| CaError::Invalid("CA certificate does not parse".into()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Invalid(
                "CA key does not match its certificate".into(),
            ));
        }
        Ok(Ca {
            key,
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues a device certificate for a validated SEC1 P-256 point.
    pub fn issue_device_certificate(
        &self,
        device_id: &str,
        account: &AccountId,
        public_key: &[u8],
        origin: &str,
        now_unix_s: u64,
    ) -> Result<Vec<u8>, CaError> {
        let params = device_params(device_id, account, origin, now_unix_s)?;
        let subject_key = DevicePublicKey(public_key);
        let cert = params.signed_by(&subject_key, &self.issuer, &self.key)?;
        Ok(cert.der().to_vec())
    }

    /// Issues a device certificate for the key in a PKCS#10 request, after
    /// checking the request's signature (proof that the requester holds the
    /// private key). Only the key is taken from the request: subject, SAN,
    /// key usage and validity are the CA's. Returns the certificate DER and
    /// the certified public key bits (SEC1 point or RSAPublicKey).
    pub fn issue_from_csr(
        &self,
        device_id: &str,
        account: &AccountId,
        csr_der: &[u8],
        origin: &str,
        now_unix_s: u64,
    ) -> Result<(Vec<u8>, Vec<u8>), CsrError> {
        if csr_der.len() > CSR_LEN_MAX {
            return Err(CsrError::Malformed);
        }
        let (rest, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
                .map_err(|_| CsrError::Malformed)?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed);
        }
        let public_key = parsed
            .certification_request_info
            .subject_pki
            .subject_public_key
            .data
            .to_vec();
        // rcgen re-parses the request and verifies its signature with the key it carries.
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| match e {
                rcgen::Error::RingUnspecified => CsrError::BadSignature,
                rcgen::Error::UnsupportedSignatureAlgorithm => CsrError::UnsupportedKey,
                _ => CsrError::Malformed,
            })?;
        let params =
            device_params(device_id, account, origin, now_unix_s).map_err(|_| CsrError::Issue)?;
        let request = rcgen::CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request
            .signed_by(&self.issuer, &self.key)
            .map_err(|_| CsrError::Issue)?;
        Ok((cert.der().to_vec(), public_key))
    }

    /// The CRL of certificates this CA issued and the server revoked: DER,
    /// signed by the CA, `nextUpdate` = now + `validity_s`, CRL number = now.
    pub fn crl(
        &self,
        revoked: &[(Vec<u8>, u64)],
        now_unix_s: u64,
        validity_s: u64,
    ) -> Result<Vec<u8>, CaError> {
        let now = unix_i64(now_unix_s)?;
        let validity = i64::try_from(validity_s).map_err(|_| CaError::Time)?;
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at)| {
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: datetime(unix_i64(*at)?)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: datetime(now)?,
            next_update: datetime(now + validity)?,
            crl_number: SerialNumber::from_slice(&now_unix_s.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer, &self.key)?.der().to_vec())
    }

    /// Whether `der` is a certificate this CA issued (by issuer name), and its serial.
    pub fn issued_serial(&self, der: &[u8]) -> Option<Vec<u8>> {
        let (_, ca) = x509_parser::parse_x509_certificate(&self.cert_der).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        (cert.issuer().as_raw() == ca.subject().as_raw()).then(|| cert.raw_serial().to_vec())
    }
}

/// Largest PKCS#10 request accepted.
pub const CSR_LEN_MAX: usize = 8 * 1024;

/// Why a certificate request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("not a DER PKCS#10 certification request")]
    Malformed,
    #[error("the request's signature does not verify with its own key (no proof of possession)")]
    BadSignature,
    #[error("the request's key or signature algorithm is not supported")]
    UnsupportedKey,
    #[error("the CA could not issue the certificate")]
    Issue,
}

/// What every device certificate says besides its key.
fn device_params(
    device_id: &str,
    account: &AccountId,
    origin: &str,
    now_unix_s: u64,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("KeyBridge device {device_id}"));
    dn.push(DnType::OrganizationName, origin);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        account_uri(account)
            .try_into()
            .map_err(|_| CaError::Invalid("account URI".into()))?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    let now = unix_i64(now_unix_s)?;
    params.not_before = datetime(now - BACKDATE_S)?;
    params.not_after = datetime(now + DEVICE_VALIDITY_S)?;
    Ok(params)
}

/// Reads one or more certificates from PEM (`CERTIFICATE` blocks) or one DER.
pub fn certificates_from_pem_or_der(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if bytes.first() == Some(&0x30) {
        return Ok(vec![bytes.to_vec()]);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "neither DER nor PEM".to_owned())?;
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (&mut body, line) {
            (None, "-----BEGIN CERTIFICATE-----") => body = Some(String::new()),
            (Some(b), "-----END CERTIFICATE-----") => {
                out.push(
                    keybridge_proto::api::b64::decode(b)
                        .ok_or_else(|| "PEM body is not base64".to_owned())?,
                );
                body = None;
            }
            (Some(b), l) => b.push_str(l),
            (None, _) => {}
        }
    }
    if out.is_empty() {
        return Err("no CERTIFICATE in the PEM".into());
    }
    Ok(out)
}

/// Checks that `bytes` is a SEC1 uncompressed point on P-256.
pub fn parse_p256_point(bytes: &[u8]) -> Option<[u8; P256_POINT_LEN]> {
    let point: [u8; P256_POINT_LEN] = bytes.try_into().ok()?;
    if point[0] != 0x04 {
        return None;
    }
    // from_sec1_bytes rejects points not on the curve and the identity.
    p256::PublicKey::from_sec1_bytes(&point).ok()?;
    Some(point)
}

/// A device's public key as rcgen needs it to build the certificate.
struct DevicePublicKey<'a>(&'a [u8]);

impl rcgen::PublicKeyData for DevicePublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// 16 random bytes with the top bit clear, so the DER INTEGER stays positive.
fn random_serial() -> Result<[u8; 16], CaError> {
    let mut serial = crate::random::bytes::<16>().map_err(|_| CaError::Invalid("rng".into()))?;
    serial[0] &= 0x7F;
    serial[0] |= 0x01;
    Ok(serial)
}

fn unix_i64(now_unix_s: u64) -> Result<i64, CaError> {
    i64::try_from(now_unix_s).map_err(|_| CaError::Time)
}

fn datetime(unix_s: i64) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(unix_s).map_err(|_| CaError::Time)
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, CaError> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    keybridge_proto::api::b64::decode(body.trim())
        .ok_or_else(|| CaError::Invalid("CA certificate PEM".into()))
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{PathError, TrustStore};

    const NOW: u64 = 1_750_000_000;

    fn device_key() -> Vec<u8> {
        // A fixed software key stands in for a card in these unit tests.
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let point = secret.public_key().to_sec1_bytes();
        assert_eq!(point.len(), P256_POINT_LEN);
        point.to_vec()
    }

    fn alice() -> AccountId {
        AccountId::new("alice").unwrap()
    }

    /// The server's validation of a certificate from this CA alone.
    fn verify(ca: &Ca, der: &[u8], account: &AccountId, now: u64) -> Result<Vec<u8>, PathError> {
        let trust = TrustStore::new(vec![ca.cert_der().to_vec()], vec![]).unwrap();
        let now = i64::try_from(now).unwrap();
        let path = crate::pki::validate(&trust, der, now)?;
        crate::pki::check(&path, account, now, &Default::default())?;
        Ok(path.key.bytes().to_vec())
    }

    #[test]
    fn issued_certificate_round_trips_through_the_verifier() {
        let ca = Ca::generate("keybridge.test", NOW).unwrap();
        let key = device_key();
        let der = ca
            .issue_device_certificate("dev_1", &alice(), &key, "keybridge.test", NOW)
            .unwrap();
        assert_eq!(verify(&ca, &der, &alice(), NOW).unwrap(), key);

        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let subject = cert.subject().to_string();
        assert!(subject.contains("KeyBridge device dev_1"), "{subject}");
        assert!(subject.contains("keybridge.test"), "{subject}");
        assert!(!cert.is_ca());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    }

    #[test]
    fn refuses_wrong_account_time_and_issuer() {
        let ca = Ca::generate("keybridge.test", NOW).unwrap();
        let der = ca
            .issue_device_certificate("dev_1", &alice(), &device_key(), "o", NOW)
            .unwrap();
        let bob = AccountId::new("bob").unwrap();
        assert_eq!(verify(&ca, &der, &bob, NOW), Err(PathError::WrongAccount));
        assert_eq!(
            verify(&ca, &der, &alice(), NOW - 3600),
            Err(PathError::NotYetValid)
        );
        assert_eq!(
            verify(&ca, &der, &alice(), NOW + 3 * 365 * 24 * 3600),
            Err(PathError::Expired)
        );
        let other = Ca::generate("keybridge.test", NOW).unwrap();
        assert_eq!(
            verify(&other, &der, &alice(), NOW),
            Err(PathError::SignatureInvalid)
        );
        assert_eq!(
            verify(&ca, b"not a cert", &alice(), NOW),
            Err(PathError::Malformed)
        );
        // The CA's own certificate is well signed but is not a device certificate.
        assert!(verify(&ca, ca.cert_der(), &alice(), NOW).is_err());
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_certificate_is_refused() {
        let ca = Ca::generate("keybridge.test", NOW).unwrap();
        let der = ca
            .issue_device_certificate("dev_1", &alice(), &device_key(), "o", NOW)
            .unwrap();
        for i in (0..der.len()).step_by(7) {
            let mut bad = der.clone();
            bad[i] ^= 0x01;
            assert!(verify(&ca, &bad, &alice(), NOW).is_err(), "byte {i}");
        }
    }

    #[test]
    fn stored_ca_reloads_and_keeps_verifying_old_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "keybridge.test", NOW).unwrap();
        let der = ca
            .issue_device_certificate("dev_1", &alice(), &device_key(), "o", NOW)
            .unwrap();
        let reloaded = Ca::load_or_create(dir.path(), "ignored", NOW).unwrap();
        assert_eq!(reloaded.cert_pem(), ca.cert_pem());
        assert!(verify(&reloaded, &der, &alice(), NOW).is_ok());
        let der2 = reloaded
            .issue_device_certificate("dev_2", &alice(), &device_key(), "o", NOW)
            .unwrap();
        assert!(verify(&ca, &der2, &alice(), NOW).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn sec1_points_are_validated() {
        let key = device_key();
        assert!(parse_p256_point(&key).is_some());
        let mut off_curve = key.clone();
        off_curve[64] ^= 1;
        assert!(parse_p256_point(&off_curve).is_none());
        assert!(parse_p256_point(&key[..64]).is_none());
        let mut compressed_tag = key.clone();
        compressed_tag[0] = 0x02;
        assert!(parse_p256_point(&compressed_tag).is_none());
        assert!(parse_p256_point(&[0u8; 65]).is_none());
    }
}
