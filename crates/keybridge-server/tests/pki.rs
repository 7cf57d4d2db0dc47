//! Certificates that mean something, over real loopback HTTP: CSR enrolment
//! with the built-in CA, an external CA's chain (anchor + intermediate),
//! certificate import with path validation, revocation (admin and CRL) and
//! the CRL endpoint. Every negative case ends the payment `rejected` with its
//! own reason, and no money moves.

mod common;

use common::chain::{self, Issuer, Leaf};
use common::{error_body, sign_with, Harness, Options};
use keybridge_proto::api::{b64, Reason, SignatureMethod, TransactionStatus};
use keybridge_server::pki::{self, LeafKey, PathError, TrustStore};
use keybridge_server::store::NewDevice;
use p256::ecdsa::SigningKey;
use rcgen::KeyUsagePurpose;
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

const DAY: u64 = 24 * 3600;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An external CA: root (path length 1) → intermediate (path length 0).
struct ExternalCa {
    root: Issuer,
    intermediate: Issuer,
    dir: tempfile::TempDir,
}

impl ExternalCa {
    fn new() -> ExternalCa {
        let t = now();
        let root = chain::root(
            "Test Root",
            &rcgen::PKCS_ECDSA_P384_SHA384,
            Some(1),
            t - DAY,
            t + 3650 * DAY,
        );
        let intermediate =
            chain::intermediate(&root, "Test Issuing CA", Some(0), t - DAY, t + 1000 * DAY);
        ExternalCa {
            root,
            intermediate,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, der: &[u8]) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, chain::pem(der)).unwrap();
        path
    }

    fn options(&self) -> Options {
        Options {
            trust_anchors: vec![self.write("root.pem", &self.root.der())],
            intermediates: vec![self.write("issuing.pem", &self.intermediate.der())],
            ..Options::default()
        }
    }
}

/// Enrols a device straight into the store (as a device enrolled before a
/// CA change would be), so the confirmation path meets the certificate.
async fn insert_device(h: &Harness, id: &str, certificate: Vec<u8>, key: &SigningKey) -> String {
    let credential = format!("kbd_test_{id}");
    h.server()
        .store()
        .create_device(NewDevice {
            id: id.into(),
            account: "alice".parse().unwrap(),
            label: "raw".into(),
            method: SignatureMethod::TransactionApplet,
            ocra: None,
            public_key: key
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
            certificate,
            credential_hash: Sha256::digest(credential.as_bytes()).into(),
            created_at_unix_s: now(),
        })
        .await
        .unwrap();
    credential
}

/// alice pays 500; the device signs the stored payload; the outcome.
async fn pay_and_confirm(
    h: &Harness,
    terminal: &keybridge_proto::api::TerminalCreated,
    credential: &str,
    key: &SigningKey,
    counter: u32,
) -> (TransactionStatus, Option<Reason>) {
    let before = h.balances().await;
    let tx = h.pay(terminal, 500).await;
    let payload = h.payload(&tx.id).await;
    let r = h
        .confirm(credential, &tx.id, &sign_with(key, &payload, counter))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let view: keybridge_proto::api::TransactionView = r.json().await.unwrap();
    if view.status != TransactionStatus::Settled {
        assert_eq!(
            h.balances().await,
            before,
            "money moved on {:?}",
            view.reason
        );
        assert_eq!(h.transfer_count(&tx.id).await, 0);
    }
    (view.status, view.reason)
}

async fn external_harness(ca: &ExternalCa) -> (Harness, keybridge_proto::api::TerminalCreated) {
    let h = Harness::start_with(ca.options()).await;
    h.account("alice", "CNY", 1_000_000).await;
    h.account("shop", "CNY", 0).await;
    let terminal = h.terminal().await;
    (h, terminal)
}

fn rejected(reason: Reason) -> (TransactionStatus, Option<Reason>) {
    (TransactionStatus::Rejected, Some(reason))
}

/// The good path, then each way a certificate can be wrong, each with its reason.
#[tokio::test]
async fn external_ca_paths_settle_and_every_broken_certificate_is_refused_with_its_reason() {
    let ca = ExternalCa::new();
    let (h, terminal) = external_harness(&ca).await;
    let t = now();

    // Good: leaf ← intermediate ← root, imported with path validation.
    let (key, signing) = chain::p256_key();
    let good = Leaf::new("alice", t - 60, t + 365 * DAY).issue(&ca.intermediate, &key);
    let r = h
        .admin_post(
            "/v1/admin/devices/certificate",
            json!({"account": "alice", "certificate": b64::encode(&good), "label": "ext"}),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let enrolled: keybridge_proto::api::DeviceEnrolled = r.json().await.unwrap();
    let outcome = pay_and_confirm(&h, &terminal, &enrolled.credential, &signing, 1).await;
    assert_eq!(outcome, (TransactionStatus::Settled, None));

    // Import refuses what path validation refuses.
    let stranger = chain::root(
        "Stranger",
        &rcgen::PKCS_ECDSA_P256_SHA256,
        None,
        t - DAY,
        t + DAY,
    );
    let (k2, s2) = chain::p256_key();
    let foreign = Leaf::new("alice", t - 60, t + DAY).issue(&stranger, &k2);
    let r = h
        .admin_post(
            "/v1/admin/devices/certificate",
            json!({"account": "alice", "certificate": b64::encode(&foreign)}),
        )
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "certificate_refused")
    );
    // And the built-in CA does not issue in external mode.
    let r = h
        .admin_post(
            "/v1/admin/devices/csr",
            json!({"account": "alice", "csr": "MA=="}),
        )
        .await;
    assert_eq!(error_body(r).await.1.error, "external_ca");

    // Devices that reach the confirmation path with a broken certificate.
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        ("unknown_ca", foreign.clone(), Reason::CertificateUntrusted),
        (
            "expired",
            Leaf::new("alice", t - 10 * DAY, t - DAY).issue(&ca.intermediate, &k2),
            Reason::CertificateExpired,
        ),
        (
            "not_yet_valid",
            Leaf::new("alice", t + DAY, t + 10 * DAY).issue(&ca.intermediate, &k2),
            Reason::CertificateNotYetValid,
        ),
        (
            "no_digital_signature",
            Leaf {
                key_usages: vec![KeyUsagePurpose::KeyEncipherment],
                ..Leaf::new("alice", t - 60, t + DAY)
            }
            .issue(&ca.intermediate, &k2),
            Reason::CertificateKeyUsage,
        ),
        (
            "other_account",
            Leaf::new("bob", t - 60, t + DAY).issue(&ca.intermediate, &k2),
            Reason::CertificateWrongAccount,
        ),
    ];
    for (i, (name, cert, reason)) in cases.into_iter().enumerate() {
        let credential = insert_device(&h, &format!("dev_{name}"), cert, &s2).await;
        let outcome = pay_and_confirm(
            &h,
            &terminal,
            &credential,
            &s2,
            u32::try_from(i).unwrap() + 1,
        )
        .await;
        assert_eq!(outcome, rejected(reason), "{name}");
    }

    // Revoked by the admin: the good device's next confirmation is refused.
    let r = h
        .admin_post(
            &format!("/v1/admin/devices/{}/revoke", enrolled.device_id),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let view: keybridge_proto::api::DeviceView = r.json().await.unwrap();
    assert_eq!(
        (view.status.as_str(), view.method.as_str()),
        ("revoked", "transaction_applet")
    );
    let outcome = pay_and_confirm(&h, &terminal, &enrolled.credential, &signing, 2).await;
    assert_eq!(outcome, rejected(Reason::CertificateRevoked));
    h.assert_ledger_balanced().await;
}

/// An intermediate altered after issuance (one byte of its signature) breaks
/// every path through it: `certificate_signature_invalid`, not "unknown CA".
#[tokio::test]
async fn an_altered_intermediate_is_refused() {
    let ca = ExternalCa::new();
    let mut altered = ca.intermediate.der();
    let last = altered.len() - 3;
    altered[last] ^= 0x01;
    let options = Options {
        trust_anchors: vec![ca.write("root.pem", &ca.root.der())],
        intermediates: vec![ca.write("altered.pem", &altered)],
        ..Options::default()
    };
    let h = Harness::start_with(options).await;
    h.account("alice", "CNY", 1_000_000).await;
    h.account("shop", "CNY", 0).await;
    let terminal = h.terminal().await;
    let t = now();
    let (key, signing) = chain::p256_key();
    let leaf = Leaf::new("alice", t - 60, t + DAY).issue(&ca.intermediate, &key);
    let credential = insert_device(&h, "dev_alt", leaf, &signing).await;
    let outcome = pay_and_confirm(&h, &terminal, &credential, &signing, 1).await;
    assert_eq!(outcome, rejected(Reason::CertificateSignatureInvalid));
}

/// The external CA's CRL, read from a file on a schedule and signature-checked,
/// revokes a certificate that is otherwise valid.
#[tokio::test]
async fn a_serial_on_the_external_crl_is_refused() {
    let ca = ExternalCa::new();
    let t = now();
    let (key, signing) = chain::p256_key();
    let leaf = Leaf {
        serial: 0x77,
        ..Leaf::new("alice", t - 60, t + DAY)
    }
    .issue(&ca.intermediate, &key);
    let crl = rcgen::CertificateRevocationListParams {
        this_update: time::OffsetDateTime::from_unix_timestamp(i64::try_from(t).unwrap() - 60)
            .unwrap(),
        next_update: time::OffsetDateTime::from_unix_timestamp(i64::try_from(t + DAY).unwrap())
            .unwrap(),
        crl_number: rcgen::SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&[0x77, 1, 2, 3]),
            revocation_time: time::OffsetDateTime::from_unix_timestamp(
                i64::try_from(t).unwrap() - 30,
            )
            .unwrap(),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca.intermediate.cert, &ca.intermediate.key)
    .unwrap();
    let crl_path = ca.dir.path().join("issuing.crl");
    std::fs::write(&crl_path, crl.der()).unwrap();
    // A CRL signed by a stranger with the same issuer name must not count.
    let impostor = chain::root(
        "Test Issuing CA",
        &rcgen::PKCS_ECDSA_P256_SHA256,
        None,
        t - DAY,
        t + DAY,
    );
    let trust = TrustStore::new(vec![ca.root.der()], vec![ca.intermediate.der()]).unwrap();
    let forged = rcgen::CertificateRevocationListParams {
        this_update: time::OffsetDateTime::from_unix_timestamp(i64::try_from(t).unwrap()).unwrap(),
        next_update: time::OffsetDateTime::from_unix_timestamp(i64::try_from(t + DAY).unwrap())
            .unwrap(),
        crl_number: rcgen::SerialNumber::from_slice(&[2]),
        issuing_distribution_point: None,
        revoked_certs: vec![],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&impostor.cert, &impostor.key)
    .unwrap();
    assert_eq!(
        pki::verify_crl(&trust, forged.der()).unwrap_err(),
        PathError::SignatureInvalid
    );
    let verified = pki::verify_crl(&trust, crl.der()).unwrap();
    assert!(verified.serials.contains(&vec![0x77, 1, 2, 3]));
    assert!(verified.next_update_unix_s.is_some());

    let mut options = ca.options();
    options.crl_sources = vec![crl_path.display().to_string()];
    options.crl_refresh_s = 1;
    let h = Harness::start_with(options).await;
    h.account("alice", "CNY", 1_000_000).await;
    h.account("shop", "CNY", 0).await;
    let terminal = h.terminal().await;
    let credential = insert_device(&h, "dev_crl", leaf, &signing).await;
    // The first import runs at start; wait for it rather than sleeping blindly.
    let deadline = std::time::Instant::now() + common::GUARD;
    while !h.server().state().verifier.revoked.is_revoked(
        x509_parser::parse_x509_certificate(&ca.intermediate.der())
            .unwrap()
            .1
            .subject()
            .as_raw(),
        &[0x77, 1, 2, 3],
    ) {
        assert!(std::time::Instant::now() < deadline, "CRL never imported");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let outcome = pay_and_confirm(&h, &terminal, &credential, &signing, 1).await;
    assert_eq!(outcome, rejected(Reason::CertificateRevoked));
}

/// Built-in CA: a CSR whose signature does not match its key is refused
/// (no proof of possession); a good one is certified for the account; the
/// CRL lists the serial once the device is revoked, signed by the CA.
#[tokio::test]
async fn csr_enrolment_and_the_crl_endpoint() {
    let h = Harness::start().await;
    h.account("alice", "CNY", 1_000_000).await;
    h.account("shop", "CNY", 0).await;
    let terminal = h.terminal().await;
    let (key, signing) = chain::p256_key();
    let point = signing
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let info = keybridge_proto::csr::certification_request_info("test card", &point).unwrap();
    use p256::ecdsa::signature::Signer;
    let sig: p256::ecdsa::DerSignature = signing.sign(&info);
    let csr = keybridge_proto::csr::assemble(&info, sig.as_bytes());
    drop(key);

    // A request signed by another key proves nothing.
    let (_, other) = chain::p256_key();
    let bad_sig: p256::ecdsa::DerSignature = other.sign(&info);
    let bad = keybridge_proto::csr::assemble(&info, bad_sig.as_bytes());
    let r = h
        .admin_post(
            "/v1/admin/devices/csr",
            json!({"account": "alice", "csr": b64::encode(&bad)}),
        )
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "csr_refused")
    );

    let r = h
        .admin_post(
            "/v1/admin/devices/csr",
            json!({"account": "alice", "csr": b64::encode(&csr), "label": "card 1"}),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let enrolled: keybridge_proto::api::DeviceEnrolled = r.json().await.unwrap();
    let cert = b64::decode(&enrolled.certificate).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
    assert_eq!(
        parsed.public_key().subject_public_key.data.as_ref(),
        point.as_slice()
    );
    assert!(
        !parsed.subject().to_string().contains("test card"),
        "the CA chooses the subject"
    );
    let outcome = pay_and_confirm(&h, &terminal, &enrolled.credential, &signing, 1).await;
    assert_eq!(outcome, (TransactionStatus::Settled, None));

    // Several devices per account; list, rename.
    let second = h.enroll("alice").await;
    let r = h
        .admin_post(
            &format!("/v1/admin/devices/{}/rename", second.enrolled.device_id),
            json!({"label": "spare"}),
        )
        .await;
    assert_eq!(
        r.json::<keybridge_proto::api::DeviceView>()
            .await
            .unwrap()
            .label,
        "spare"
    );
    let list: Vec<keybridge_proto::api::DeviceView> =
        h.admin_get("/v1/admin/devices").await.json().await.unwrap();
    assert_eq!(
        list.iter()
            .filter(|d| d.account.as_str() == "alice")
            .count(),
        2
    );

    // The CRL: unauthenticated, DER, signed by the CA, with nextUpdate.
    let crl_of = |bytes: Vec<u8>| {
        let ca_pem = std::fs::read(h.dir.path().join("ca-cert.pem")).unwrap();
        let ca_der = keybridge_server::ca::certificates_from_pem_or_der(&ca_pem)
            .unwrap()
            .remove(0);
        let trust = TrustStore::new(vec![ca_der], vec![]).unwrap();
        pki::verify_crl(&trust, &bytes).unwrap()
    };
    let r = h.http.get(h.url("/v1/crl")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/pkix-crl");
    let first = crl_of(r.bytes().await.unwrap().to_vec());
    assert!(first.serials.is_empty());
    assert!(first.next_update_unix_s.unwrap() > i64::try_from(now()).unwrap());
    let mut relay = h.relay(&enrolled.credential).await;
    h.admin_post(
        &format!("/v1/admin/devices/{}/revoke", enrolled.device_id),
        json!({}),
    )
    .await;
    // Its relay is sent no more requests: the socket is closed.
    assert!(relay.closed().await);
    let bytes = h
        .http
        .get(h.url("/v1/crl"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let serials = crl_of(bytes).serials;
    assert_eq!(
        serials.into_iter().collect::<Vec<_>>(),
        vec![parsed.raw_serial().to_vec()]
    );
    let outcome = pay_and_confirm(&h, &terminal, &enrolled.credential, &signing, 2).await;
    assert_eq!(outcome, rejected(Reason::CertificateRevoked));
}

/// The verification unit's algorithms and constraints, without HTTP: P-384
/// and RSA (PKCS#1 v1.5 and PSS) leaves verify; a root whose path length
/// forbids the intermediate, and a leaf that is a CA, are refused.
#[test]
fn algorithms_and_path_constraints() {
    let t = now();
    let ti = i64::try_from(t).unwrap();
    let root = chain::root(
        "R",
        &rcgen::PKCS_ECDSA_P256_SHA256,
        Some(1),
        t - DAY,
        t + DAY,
    );
    let int = chain::intermediate(&root, "I", Some(0), t - DAY, t + DAY);
    let trust = TrustStore::new(vec![root.der()], vec![int.der()]).unwrap();
    let message = b"payload and counter";
    let rng = ring::rand::SystemRandom::new();

    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let cert = Leaf::new("alice", t - 60, t + DAY).issue(&int, &p384);
    let path = pki::validate(&trust, &cert, ti).unwrap();
    assert!(matches!(path.key, LeafKey::P384(_)));
    let ring_key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        &p384.serialize_der(),
        &rng,
    )
    .unwrap();
    let sig = ring_key.sign(&rng, message).unwrap();
    assert!(path.key.verify(message, sig.as_ref()));
    assert!(!path.key.verify(b"other", sig.as_ref()));

    let rsa_pem = include_str!("data/test-rsa-2048.pem");
    let rsa = rcgen::KeyPair::from_pem_and_sign_algo(rsa_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = Leaf::new("alice", t - 60, t + DAY).issue(&int, &rsa);
    let path = pki::validate(&trust, &cert, ti).unwrap();
    assert!(matches!(path.key, LeafKey::Rsa(_)));
    let ring_rsa = ring::signature::RsaKeyPair::from_pkcs8(&rsa.serialize_der()).unwrap();
    for padding in [
        &ring::signature::RSA_PKCS1_SHA256 as &dyn ring::signature::RsaEncoding,
        &ring::signature::RSA_PSS_SHA256,
    ] {
        let mut sig = vec![0; ring_rsa.public().modulus_len()];
        ring_rsa.sign(padding, &rng, message, &mut sig).unwrap();
        assert!(path.key.verify(message, &sig));
    }
    // An RSA CA (PKCS#1 v1.5) issuing a P-256 device certificate.
    let rsa_ca = {
        let key = rcgen::KeyPair::from_pem_and_sign_algo(rsa_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        Issuer {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    };
    let (leaf_key, _) = chain::p256_key();
    let leaf = Leaf::new("alice", t - 60, t + DAY).issue(&rsa_ca, &leaf_key);
    let rsa_trust = TrustStore::new(vec![rsa_ca.der()], vec![]).unwrap();
    assert!(matches!(
        pki::validate(&rsa_trust, &leaf, ti).unwrap().key,
        LeafKey::P256(_)
    ));

    // Path length: a root allowing no intermediate.
    let strict = chain::root(
        "S",
        &rcgen::PKCS_ECDSA_P256_SHA256,
        Some(0),
        t - DAY,
        t + DAY,
    );
    let under = chain::intermediate(&strict, "U", None, t - DAY, t + DAY);
    let (k, _) = chain::p256_key();
    let leaf = Leaf::new("alice", t - 60, t + DAY).issue(&under, &k);
    let trust = TrustStore::new(vec![strict.der()], vec![under.der()]).unwrap();
    assert_eq!(
        pki::validate(&trust, &leaf, ti).unwrap_err(),
        PathError::PathLength
    );
    // An expired intermediate expires every path through it.
    let old = chain::intermediate(&root, "I", Some(0), t - 10 * DAY, t - DAY);
    let leaf = Leaf::new("alice", t - 60, t + DAY).issue(&old, &k);
    let trust = TrustStore::new(vec![root.der()], vec![old.der()]).unwrap();
    assert_eq!(
        pki::validate(&trust, &leaf, ti).unwrap_err(),
        PathError::Expired
    );
    // A device certificate from the anchor directly, and garbage.
    let trust = TrustStore::new(vec![root.der()], vec![int.der()]).unwrap();
    assert_eq!(
        pki::validate(&trust, b"\x30\x00", ti).unwrap_err(),
        PathError::Malformed
    );
    assert_eq!(
        pki::validate(&trust, &int.der(), ti).unwrap_err(),
        PathError::IsCa
    );
}
