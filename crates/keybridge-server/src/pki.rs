//! Device certificate path validation (RFC 5280 §6, the parts a payment
//! needs), revocation sets, and the path cache.
//!
//! [`TrustStore`] holds the configured trust anchors and intermediates (DER).
//! [`validate`] builds a path from a device certificate to an anchor and
//! checks, for every certificate on it: the signature (ECDSA P-256/P-384 with
//! SHA-256/384, RSA PKCS#1 v1.5 and PSS with SHA-256/384/512 — ring), the
//! validity period at the time of verification, and no unknown critical
//! extension; for every CA: basicConstraints `cA`, keyUsage `keyCertSign` and
//! pathLenConstraint; for the leaf: not a CA, keyUsage `digitalSignature`, a
//! P-256, P-384 or RSA ≥ 2048 key, and exactly one account URI in its SAN.
//! The answer, a [`ValidatedPath`], keeps what must be re-checked at every
//! confirmation even when the path comes from [`PathCache`]: the narrowest
//! validity window of the path, the (issuer, serial) of each non-anchor
//! certificate for revocation, and the account it is bound to ([`check`]).
//!
//! Not here: name constraints and certificate policies (a certificate that
//! marks them critical is refused, as RFC 5280 §4.2 requires of a verifier
//! that does not process them), OCSP, self-issued intermediates' exemption
//! from path length (each CA on the path counts).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError, RwLock};

use keybridge_proto::api::Reason;
use keybridge_proto::AccountId;
use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_HASH_SHA256,
    OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use crate::ca::account_uri;

/// Longest path: leaf, up to three intermediates, anchor.
pub const PATH_LEN_MAX: usize = 5;
/// Smallest RSA modulus accepted anywhere on a path.
pub const RSA_BITS_MIN: usize = 2048;
/// Paths kept in [`PathCache`]; when full it starts over (a miss only costs a validation).
pub const PATH_CACHE_ENTRIES_MAX: usize = 10_000;
const ACCOUNT_URI_PREFIX: &str = "urn:keybridge:account:";

/// Why a device certificate (or its path) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("not a DER X.509 certificate")]
    Malformed,
    #[error("no configured trust anchor or intermediate issued it")]
    Untrusted,
    #[error("a signature on the path does not verify")]
    SignatureInvalid,
    #[error("a certificate on the path has expired")]
    Expired,
    #[error("a certificate on the path is not yet valid")]
    NotYetValid,
    #[error("an issuer on the path is not a CA (basicConstraints)")]
    NotCa,
    #[error("an issuer on the path lacks keyUsage keyCertSign")]
    CaKeyUsage,
    #[error("the path is longer than an issuer's pathLenConstraint allows")]
    PathLength,
    #[error("the path is longer than {PATH_LEN_MAX} certificates")]
    TooLong,
    #[error("a certificate has a critical extension this verifier does not process")]
    UnknownCriticalExtension,
    #[error("an algorithm or key on the path is not supported")]
    UnsupportedAlgorithm,
    #[error("the device certificate lacks keyUsage digitalSignature")]
    KeyUsage,
    #[error("the device certificate is a CA certificate")]
    IsCa,
    #[error("the device certificate is not bound to the payer account")]
    WrongAccount,
    #[error("a certificate on the path is revoked")]
    Revoked,
}

impl PathError {
    /// The reason a confirmation is rejected with.
    pub fn reason(&self) -> Reason {
        match self {
            PathError::Untrusted => Reason::CertificateUntrusted,
            PathError::SignatureInvalid => Reason::CertificateSignatureInvalid,
            PathError::Expired => Reason::CertificateExpired,
            PathError::NotYetValid => Reason::CertificateNotYetValid,
            PathError::KeyUsage => Reason::CertificateKeyUsage,
            PathError::WrongAccount => Reason::CertificateWrongAccount,
            PathError::Revoked => Reason::CertificateRevoked,
            PathError::Malformed
            | PathError::NotCa
            | PathError::CaKeyUsage
            | PathError::PathLength
            | PathError::TooLong
            | PathError::UnknownCriticalExtension
            | PathError::UnsupportedAlgorithm
            | PathError::IsCa => Reason::CertificateInvalid,
        }
    }
}

/// The configured trust: anchors end a path; intermediates may sit on one.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    anchors: Vec<Vec<u8>>,
    intermediates: Vec<Vec<u8>>,
}

impl TrustStore {
    /// Every certificate must parse; nothing else is checked here (an expired
    /// or broken CA fails the paths through it, with that reason).
    pub fn new(anchors: Vec<Vec<u8>>, intermediates: Vec<Vec<u8>>) -> Result<TrustStore, String> {
        if anchors.is_empty() {
            return Err("at least one trust anchor is needed".into());
        }
        for (i, der) in anchors.iter().chain(&intermediates).enumerate() {
            match X509Certificate::from_der(der) {
                Ok(([], _)) => {}
                _ => return Err(format!("CA certificate #{} does not parse", i + 1)),
            }
        }
        Ok(TrustStore {
            anchors,
            intermediates,
        })
    }

    pub fn anchors(&self) -> &[Vec<u8>] {
        &self.anchors
    }

    /// The CA certificate (anchor or intermediate) whose subject is `name`
    /// (raw DER), for checking a CRL's signature.
    pub fn ca_by_subject(&self, name: &[u8]) -> Vec<&[u8]> {
        self.anchors
            .iter()
            .chain(&self.intermediates)
            .filter(|der| {
                X509Certificate::from_der(der)
                    .map(|(_, c)| c.subject().as_raw() == name)
                    .unwrap_or(false)
            })
            .map(Vec::as_slice)
            .collect()
    }
}

/// A device's public key and how it signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafKey {
    /// SEC1 point; signs ECDSA with SHA-256.
    P256(Vec<u8>),
    /// SEC1 point; signs ECDSA with SHA-384.
    P384(Vec<u8>),
    /// RSAPublicKey DER; signs PKCS#1 v1.5 or PSS with SHA-256.
    Rsa(Vec<u8>),
}

impl LeafKey {
    /// Verifies a device's signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let ok = |alg: &'static dyn VerificationAlgorithm, key: &[u8]| {
            UnparsedPublicKey::new(alg, key)
                .verify(message, signature)
                .is_ok()
        };
        match self {
            LeafKey::P256(k) => ok(&sig::ECDSA_P256_SHA256_ASN1, k),
            LeafKey::P384(k) => ok(&sig::ECDSA_P384_SHA384_ASN1, k),
            // Both paddings are sound; which one a token uses is its choice.
            LeafKey::Rsa(k) => {
                ok(&sig::RSA_PKCS1_2048_8192_SHA256, k) || ok(&sig::RSA_PSS_2048_8192_SHA256, k)
            }
        }
    }

    /// The raw key bytes (SEC1 point or RSAPublicKey DER).
    pub fn bytes(&self) -> &[u8] {
        match self {
            LeafKey::P256(k) | LeafKey::P384(k) | LeafKey::Rsa(k) => k,
        }
    }
}

/// What a successful validation established, and what must be re-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedPath {
    pub key: LeafKey,
    /// The SAN URI the leaf is bound to.
    pub account_uri: String,
    /// The latest notBefore and the earliest notAfter on the path (Unix s).
    pub not_before_max: i64,
    pub not_after_min: i64,
    /// (issuer name DER, serial) of the leaf and each intermediate.
    pub revocable: Vec<(Vec<u8>, Vec<u8>)>,
    /// The leaf's serial, hex.
    pub serial_hex: String,
}

/// Revoked serials per issuer, from imported CRLs. Read at every confirmation.
#[derive(Debug, Default)]
pub struct RevocationSet {
    by_issuer: RwLock<HashMap<Vec<u8>, HashSet<Vec<u8>>>>,
}

impl RevocationSet {
    /// Replaces what is known about `issuer` (a newer CRL supersedes the old).
    pub fn replace(&self, issuer: Vec<u8>, serials: HashSet<Vec<u8>>) {
        self.by_issuer
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(issuer, serials);
    }

    pub fn is_revoked(&self, issuer: &[u8], serial: &[u8]) -> bool {
        self.by_issuer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(issuer)
            .is_some_and(|s| s.contains(serial))
    }
}

/// Validated paths by (device id, SHA-256 of the certificate). A hit skips
/// path building and signatures, never the time, revocation and account checks.
#[derive(Debug, Default)]
pub struct PathCache {
    entries: Mutex<HashMap<(String, [u8; 32]), ValidatedPath>>,
}

impl PathCache {
    pub fn get_or_validate(
        &self,
        trust: &TrustStore,
        device_id: &str,
        certificate: &[u8],
        now_unix_s: i64,
    ) -> Result<ValidatedPath, PathError> {
        let key = (device_id.to_owned(), Sha256::digest(certificate).into());
        if let Some(hit) = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let path = validate(trust, certificate, now_unix_s)?;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= PATH_CACHE_ENTRIES_MAX {
            entries.clear();
        }
        entries.insert(key, path.clone());
        Ok(path)
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The checks a cached path still needs: time, revocation, account.
pub fn check(
    path: &ValidatedPath,
    account: &AccountId,
    now_unix_s: i64,
    revoked: &RevocationSet,
) -> Result<(), PathError> {
    if now_unix_s < path.not_before_max {
        return Err(PathError::NotYetValid);
    }
    if now_unix_s > path.not_after_min {
        return Err(PathError::Expired);
    }
    if path
        .revocable
        .iter()
        .any(|(issuer, serial)| revoked.is_revoked(issuer, serial))
    {
        return Err(PathError::Revoked);
    }
    if path.account_uri != account_uri(account) {
        return Err(PathError::WrongAccount);
    }
    Ok(())
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PathError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(PathError::Malformed),
    }
}

/// The kinds of public key we accept on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    P256,
    P384,
    Rsa,
}

fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Option<KeyKind> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
        return match curve {
            c if c == OID_EC_P256 => Some(KeyKind::P256),
            c if c == OID_NIST_EC_P384 => Some(KeyKind::P384),
            _ => None,
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return None,
        };
        return (bits >= RSA_BITS_MIN).then_some(KeyKind::Rsa);
    }
    None
}

/// The ring algorithm for a certificate signature made by a key of `kind`.
fn signature_algorithm(
    alg: &AlgorithmIdentifier<'_>,
    kind: KeyKind,
) -> Option<&'static dyn VerificationAlgorithm> {
    let oid: &Oid = &alg.algorithm;
    let hash_of_pss = || -> Option<Oid<'static>> {
        let params = alg.parameters.as_ref()?;
        let pss = x509_parser::signature_algorithm::RsaSsaPssParams::try_from(params).ok()?;
        Some(pss.hash_algorithm_oid().to_owned())
    };
    Some(match kind {
        KeyKind::P256 | KeyKind::P384 => {
            let p256 = kind == KeyKind::P256;
            match oid {
                o if *o == OID_SIG_ECDSA_WITH_SHA256 && p256 => &sig::ECDSA_P256_SHA256_ASN1,
                o if *o == OID_SIG_ECDSA_WITH_SHA384 && p256 => &sig::ECDSA_P256_SHA384_ASN1,
                o if *o == OID_SIG_ECDSA_WITH_SHA256 => &sig::ECDSA_P384_SHA256_ASN1,
                o if *o == OID_SIG_ECDSA_WITH_SHA384 => &sig::ECDSA_P384_SHA384_ASN1,
                _ => return None,
            }
        }
        KeyKind::Rsa => match oid {
            o if *o == OID_PKCS1_SHA256WITHRSA => &sig::RSA_PKCS1_2048_8192_SHA256,
            o if *o == OID_PKCS1_SHA384WITHRSA => &sig::RSA_PKCS1_2048_8192_SHA384,
            o if *o == OID_PKCS1_SHA512WITHRSA => &sig::RSA_PKCS1_2048_8192_SHA512,
            o if *o == OID_PKCS1_RSASSAPSS => match hash_of_pss()? {
                h if h == OID_NIST_HASH_SHA256 => &sig::RSA_PSS_2048_8192_SHA256,
                h if h == OID_NIST_HASH_SHA384 => &sig::RSA_PSS_2048_8192_SHA384,
                h if h == OID_NIST_HASH_SHA512 => &sig::RSA_PSS_2048_8192_SHA512,
                _ => return None,
            },
            _ => return None,
        },
    })
}

/// Whether `issuer`'s key made `cert`'s signature.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Result<(), PathError> {
    // RFC 5280 §4.1.1.2: the outer and the signed algorithm must agree.
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Err(PathError::Malformed);
    }
    let kind = key_kind(issuer.public_key()).ok_or(PathError::UnsupportedAlgorithm)?;
    let alg = signature_algorithm(&cert.signature_algorithm, kind)
        .ok_or(PathError::UnsupportedAlgorithm)?;
    UnparsedPublicKey::new(alg, issuer.public_key().subject_public_key.data.as_ref())
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .map_err(|_| PathError::SignatureInvalid)
}

/// Depth-first search for an issuer chain ending at an anchor. `pool` holds
/// (certificate, is_anchor); `path` the pool indices chosen so far.
fn extend(
    current: &X509Certificate<'_>,
    pool: &[(X509Certificate<'_>, bool)],
    path: &mut Vec<usize>,
) -> Result<(), PathError> {
    let mut best = PathError::Untrusted;
    for (i, (candidate, is_anchor)) in pool.iter().enumerate() {
        if candidate.subject().as_raw() != current.issuer().as_raw() || path.contains(&i) {
            continue;
        }
        if let Err(e) = signed_by(current, candidate) {
            best = e;
            continue;
        }
        path.push(i);
        if *is_anchor {
            return Ok(());
        }
        // +1 for the leaf, +1 for the anchor still to come.
        if path.len() + 2 > PATH_LEN_MAX {
            path.pop();
            best = PathError::TooLong;
            continue;
        }
        match extend(candidate, pool, path) {
            Ok(()) => return Ok(()),
            Err(e) => {
                path.pop();
                if best == PathError::Untrusted {
                    best = e;
                }
            }
        }
    }
    Err(best)
}

/// Refuses critical extensions we do not process (RFC 5280 §4.2).
fn known_critical_extensions(cert: &X509Certificate<'_>) -> Result<(), PathError> {
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::ParseError { .. } => return Err(PathError::Malformed),
            ParsedExtension::BasicConstraints(_)
            | ParsedExtension::KeyUsage(_)
            | ParsedExtension::SubjectAlternativeName(_)
            | ParsedExtension::ExtendedKeyUsage(_)
            | ParsedExtension::SubjectKeyIdentifier(_)
            | ParsedExtension::AuthorityKeyIdentifier(_) => {}
            _ if ext.critical => return Err(PathError::UnknownCriticalExtension),
            _ => {}
        }
    }
    Ok(())
}

/// Builds and validates the path of `leaf_der` at `now_unix_s`.
pub fn validate(
    trust: &TrustStore,
    leaf_der: &[u8],
    now_unix_s: i64,
) -> Result<ValidatedPath, PathError> {
    let leaf = parse(leaf_der)?;
    let mut pool = Vec::with_capacity(trust.anchors.len() + trust.intermediates.len());
    for der in &trust.anchors {
        pool.push((parse(der)?, true));
    }
    for der in &trust.intermediates {
        pool.push((parse(der)?, false));
    }
    let mut chosen = Vec::new();
    extend(&leaf, &pool, &mut chosen)?;

    let cas: Vec<&X509Certificate<'_>> = chosen.iter().map(|&i| &pool[i].0).collect();
    let mut not_before_max = i64::MIN;
    let mut not_after_min = i64::MAX;
    for cert in std::iter::once(&leaf).chain(cas.iter().copied()) {
        known_critical_extensions(cert)?;
        let validity = cert.validity();
        not_before_max = not_before_max.max(validity.not_before.timestamp());
        not_after_min = not_after_min.min(validity.not_after.timestamp());
    }
    if now_unix_s < not_before_max {
        return Err(PathError::NotYetValid);
    }
    if now_unix_s > not_after_min {
        return Err(PathError::Expired);
    }

    for (below, ca) in cas.iter().enumerate() {
        // `below` = CA certificates between this one and the leaf.
        match ca.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {
                if let Some(limit) = bc.value.path_len_constraint {
                    if u32::try_from(below).map_or(true, |b| b > limit) {
                        return Err(PathError::PathLength);
                    }
                }
            }
            Ok(_) => return Err(PathError::NotCa),
            Err(_) => return Err(PathError::Malformed),
        }
        match ca.key_usage() {
            Ok(Some(ku)) if ku.value.key_cert_sign() => {}
            _ => return Err(PathError::CaKeyUsage),
        }
    }

    match leaf.basic_constraints() {
        Ok(None) => {}
        Ok(Some(bc)) if !bc.value.ca => {}
        _ => return Err(PathError::IsCa),
    }
    match leaf.key_usage() {
        Ok(Some(ku)) if ku.value.digital_signature() => {}
        _ => return Err(PathError::KeyUsage),
    }
    let spki = leaf.public_key();
    let bits = spki.subject_public_key.data.to_vec();
    let key = match key_kind(spki).ok_or(PathError::UnsupportedAlgorithm)? {
        KeyKind::P256 => LeafKey::P256(bits),
        KeyKind::P384 => LeafKey::P384(bits),
        KeyKind::Rsa => LeafKey::Rsa(bits),
    };
    let uris: Vec<&str> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) if u.starts_with(ACCOUNT_URI_PREFIX) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(PathError::Malformed),
    };
    // Exactly one account: a certificate naming two must not serve either.
    let [account_uri] = uris.as_slice() else {
        return Err(PathError::WrongAccount);
    };

    let mut revocable = vec![(leaf.issuer().as_raw().to_vec(), leaf.raw_serial().to_vec())];
    for (ca, &i) in cas.iter().zip(&chosen) {
        if !pool[i].1 {
            revocable.push((ca.issuer().as_raw().to_vec(), ca.raw_serial().to_vec()));
        }
    }
    Ok(ValidatedPath {
        key,
        account_uri: (*account_uri).to_owned(),
        not_before_max,
        not_after_min,
        revocable,
        serial_hex: hex::encode(leaf.raw_serial()),
    })
}

/// What a CRL whose signature checked out says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// The issuer's name, DER.
    pub issuer: Vec<u8>,
    /// The revoked serials (DER INTEGER contents).
    pub serials: HashSet<Vec<u8>>,
    pub next_update_unix_s: Option<i64>,
}

/// The serials a CRL revokes, once its signature has been checked against a
/// CA of `trust` whose subject is the CRL's issuer and whose keyUsage has
/// cRLSign. An error if the CRL is malformed or no such CA signed it.
pub fn verify_crl(trust: &TrustStore, der: &[u8]) -> Result<VerifiedCrl, PathError> {
    let crl = match x509_parser::revocation_list::CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => crl,
        _ => return Err(PathError::Malformed),
    };
    let issuer = crl.issuer().as_raw().to_vec();
    let mut best = PathError::Untrusted;
    for ca_der in trust.ca_by_subject(&issuer) {
        let ca = parse(ca_der)?;
        match ca.key_usage() {
            Ok(Some(ku)) if ku.value.crl_sign() => {}
            _ => {
                best = PathError::CaKeyUsage;
                continue;
            }
        }
        let Some(kind) = key_kind(ca.public_key()) else {
            best = PathError::UnsupportedAlgorithm;
            continue;
        };
        let Some(alg) = signature_algorithm(&crl.signature_algorithm, kind) else {
            best = PathError::UnsupportedAlgorithm;
            continue;
        };
        let ok = UnparsedPublicKey::new(alg, ca.public_key().subject_public_key.data.as_ref())
            .verify(crl.tbs_cert_list.as_ref(), &crl.signature_value.data)
            .is_ok();
        if ok {
            let serials = crl
                .iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec())
                .collect();
            return Ok(VerifiedCrl {
                issuer,
                serials,
                next_update_unix_s: crl.next_update().map(|t| t.timestamp()),
            });
        }
        best = PathError::SignatureInvalid;
    }
    Err(best)
}
