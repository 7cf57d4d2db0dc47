//! The verification unit: decides what a confirmation means, without IO.
//!
//! It sees the device and transaction as stored, the relay's submission and
//! the time; it answers with a [`Verdict`]. The signature (or OCRA response)
//! is checked against the payload bytes the server stored when it created
//! the transaction, never against anything the relay sent. Consuming the
//! counter and moving money is the payment unit's job ([`crate::payment`]),
//! which re-checks the counter and the revocation atomically.
//!
//! What the signature covers depends on the device's [`SignatureMethod`]
//! ([`signed_message_for`]): the transaction applet signs the payload and its
//! counter, which must increase; a PIV card signs the payload alone (SHA-256
//! of it, in slot 9C) and has no counter.

use keybridge_proto::api::{b64, Confirmation, Reason, SignatureMethod, TransactionStatus};
use keybridge_proto::ocra::{self, Inputs, Suite};
use keybridge_proto::signed_message;

use crate::pki::{self, PathCache, RevocationSet, TrustStore};
use crate::secretbox::{ocra_aad, MasterKey};
use crate::store::{AnswerDigest, DeviceRecord, DeviceStatus, TransactionRecord};
use sha2::{Digest, Sha256};

/// An RSA-8192 signature is 1024 bytes (1368 in base64); anything longer is
/// refused before decoding.
pub const SIGNATURE_B64_LEN_MAX: usize = 1400;
/// Longest OCRA response: an untruncated HMAC-SHA512 in hex.
pub const OCRA_RESPONSE_LEN_MAX: usize = 128;

/// How far the server searches for an OCRA response it was not told the
/// counter or time step of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OcraWindow {
    /// Counters tried after the last accepted one.
    pub counter_lookahead: u32,
    /// Time steps accepted before and after the server's current one (clock skew).
    pub time_steps_back: u64,
    pub time_steps_ahead: u64,
    /// Further steps back probed only to tell "stale" from "wrong".
    pub stale_probe_steps: u64,
}

impl Default for OcraWindow {
    fn default() -> OcraWindow {
        OcraWindow {
            counter_lookahead: 20,
            time_steps_back: 2,
            time_steps_ahead: 1,
            stale_probe_steps: 60,
        }
    }
}

/// What the verification unit knows besides the submission: trust anchors,
/// revocations from imported CRLs, the path cache and the master key.
#[derive(Debug)]
pub struct Verifier {
    pub trust: TrustStore,
    pub cache: PathCache,
    pub revoked: RevocationSet,
    pub master_key: MasterKey,
    pub ocra_window: OcraWindow,
}

impl Verifier {
    pub fn new(trust: TrustStore, master_key: MasterKey) -> Verifier {
        Verifier {
            trust,
            cache: PathCache::default(),
            revoked: RevocationSet::default(),
            master_key,
            ocra_window: OcraWindow::default(),
        }
    }
}

/// What the verification unit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// End the transaction with this status and reason; no money moves.
    End {
        status: TransactionStatus,
        reason: Reason,
    },
    /// Valid confirmation from the payer's device: hand over to the payment
    /// unit, which consumes `counter` (`None` for PIV, which has none) and
    /// calls a stale one `replay_reason`.
    Accept {
        counter: Option<u32>,
        replay_reason: Reason,
    },
}

impl Verdict {
    fn reject(reason: Reason) -> Verdict {
        Verdict::End {
            status: TransactionStatus::Rejected,
            reason,
        }
    }
}

/// One submission to judge.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    pub device: &'a DeviceRecord,
    pub transaction: &'a TransactionRecord,
    pub confirmation: &'a Confirmation,
    pub now_unix_s: u64,
}

/// The bytes whose ECDSA P-256 / SHA-256 signature a device of `method`
/// returns for `payload` (ring's `ECDSA_P256_SHA256_ASN1` hashes them).
pub fn signed_message_for(method: SignatureMethod, payload: &[u8], counter: u32) -> Vec<u8> {
    match method {
        SignatureMethod::TransactionApplet => signed_message(payload, counter),
        // The relay sends SHA-256(payload) to the card, which signs that
        // digest: the same signature as over the payload with SHA-256.
        SignatureMethod::Piv => payload.to_vec(),
        // OCRA devices send responses, not signatures: `verify` refuses a
        // signature from them before it gets here; an empty message can
        // verify nothing.
        SignatureMethod::Ocra => Vec::new(),
    }
}

/// The checks, in the documented order; the first failure decides.
pub fn verify(v: &Verifier, s: Submission<'_>) -> Verdict {
    let Submission {
        device,
        transaction,
        confirmation,
        now_unix_s,
    } = s;
    // 1. The device may speak for the payer at all.
    if device.status != DeviceStatus::Active || device.account != transaction.payer {
        return Verdict::reject(Reason::UnknownDevice);
    }
    // 2. Too late: even a valid signature cannot revive it.
    if now_unix_s >= transaction.expires_at_unix_s {
        return Verdict::End {
            status: TransactionStatus::Expired,
            reason: Reason::Expired,
        };
    }
    match confirmation {
        // 3. The holder (or the card) said no.
        Confirmation::Declined { reason } => Verdict::reject((*reason).into()),
        Confirmation::Signed { counter, signature } => {
            if device.method == SignatureMethod::Ocra {
                return Verdict::reject(Reason::BadSignature);
            }
            verify_signature(v, s, *counter, signature)
        }
        Confirmation::Ocra {
            response,
            counter,
            time_step,
        } => {
            if device.method != SignatureMethod::Ocra {
                return Verdict::reject(Reason::OcraMismatch);
            }
            // 4'. Revoked OCRA secrets are refused like revoked certificates.
            if device.is_revoked() {
                return Verdict::reject(Reason::CertificateRevoked);
            }
            verify_ocra(v, s, response, *counter, *time_step)
        }
    }
}

fn verify_signature(v: &Verifier, s: Submission<'_>, counter: u32, signature_b64: &str) -> Verdict {
    let Submission {
        device,
        transaction,
        now_unix_s,
        ..
    } = s;
    // 4. The certificate: revoked here, a valid path to a trust anchor (cached),
    //    valid now, not revoked by a CRL, bound to the payer.
    if device.is_revoked() {
        return Verdict::reject(Reason::CertificateRevoked);
    }
    let Ok(now) = i64::try_from(now_unix_s) else {
        return Verdict::reject(Reason::CertificateExpired);
    };
    let path = match v
        .cache
        .get_or_validate(&v.trust, &device.id, &device.certificate, now)
        .and_then(|p| pki::check(&p, &transaction.payer, now, &v.revoked).map(|()| p))
    {
        Ok(path) => path,
        Err(e) => {
            tracing::warn!(device = %device.id, error = %e, "device certificate refused");
            return Verdict::reject(e.reason());
        }
    };
    // The enrolment record and the certificate must name the same key.
    if path.key.bytes() != device.public_key.as_slice() {
        return Verdict::reject(Reason::CertificateInvalid);
    }
    // 5. The signature covers exactly the stored payload (and the counter,
    //    for the transaction applet).
    let signature = match (signature_b64.len() <= SIGNATURE_B64_LEN_MAX)
        .then(|| b64::decode(signature_b64))
        .flatten()
    {
        Some(sig) => sig,
        None => return Verdict::reject(Reason::BadSignature),
    };
    let message = signed_message_for(device.method, &transaction.payload, counter);
    if !path.key.verify(&message, &signature) {
        return Verdict::reject(Reason::BadSignature);
    }
    // 6. The counter moves forward (checked again, atomically, by the payment
    //    unit). PIV has none: the submitted value is ignored.
    match device.method {
        SignatureMethod::Piv => Verdict::Accept {
            counter: None,
            replay_reason: Reason::CounterReplay,
        },
        _ if counter <= device.last_counter => Verdict::reject(Reason::CounterReplay),
        _ => Verdict::Accept {
            counter: Some(counter),
            replay_reason: Reason::CounterReplay,
        },
    }
}

/// Names an answer, for [`AnswerDigest`]: SHA-256 over the answering
/// device's id and the confirmation as received, in its one JSON form (serde
/// writes a value's fields in declaration order, so the same value always
/// gives the same bytes). Stored with the end the answer brought.
///
/// A relay whose result was lost (its socket died after the server judged
/// the answer, or its HTTP response never arrived) posts the same answer
/// again; matching this digest it hears the stored outcome, not
/// `not_pending`, whatever the method or the answer: a transaction-applet or
/// PIV signature, an OCRA response, a decline. A different answer (a new
/// signature, even a valid one), or the same bytes from another device, has
/// another digest. `None` only if the confirmation cannot be serialised,
/// which matches nothing.
pub fn answer_digest(device_id: &str, confirmation: &Confirmation) -> Option<AnswerDigest> {
    let json = serde_json::to_vec(confirmation).ok()?;
    let mut h = Sha256::new();
    h.update(b"keybridge-answer-v1\0");
    h.update((device_id.len() as u64).to_be_bytes());
    h.update(device_id.as_bytes());
    h.update(&json);
    Some(AnswerDigest(h.finalize().into()))
}

/// OCRA: recompute over the stored payload's question for the candidate
/// counters and time steps; the accepted (C, else T) must be fresh.
fn verify_ocra(
    v: &Verifier,
    s: Submission<'_>,
    response: &str,
    counter: Option<u64>,
    time_step: Option<u64>,
) -> Verdict {
    let Submission {
        device,
        transaction,
        now_unix_s,
        ..
    } = s;
    let mismatch = Verdict::reject(Reason::OcraMismatch);
    if response.is_empty() || response.len() > OCRA_RESPONSE_LEN_MAX {
        return mismatch;
    }
    let Some(record) = &device.ocra else {
        tracing::error!(device = %device.id, "OCRA device without a stored secret");
        return mismatch;
    };
    let Ok(suite) = Suite::parse(&record.suite) else {
        tracing::error!(device = %device.id, "stored OCRA suite does not parse");
        return mismatch;
    };
    let secret = match v
        .master_key
        .open(&record.sealed_secret, &ocra_aad(&device.id, &record.suite))
    {
        Ok(secret) => secret,
        Err(e) => {
            // Wrong master key or a tampered row: an operator problem, never the relay's.
            tracing::error!(device = %device.id, error = %e, "OCRA secret does not open");
            return mismatch;
        }
    };
    let question = ocra::payload_question(&transaction.payload);
    let w = v.ocra_window;
    let last = u64::from(device.last_counter);

    // Counter candidates: what the device said, or the look-ahead after the
    // last accepted one (and the look-behind, only to name a reuse).
    let counters: Vec<Option<u64>> = match (suite.uses_counter(), counter) {
        (false, _) => vec![None],
        (true, Some(c)) => vec![Some(c)],
        (true, None) => {
            let behind = last.saturating_sub(u64::from(w.counter_lookahead));
            (behind..=last.saturating_add(u64::from(w.counter_lookahead)))
                .map(Some)
                .collect()
        }
    };
    // Time-step candidates: the window around now, then (to tell stale from
    // wrong) further back; or what the device said.
    let now_step = suite.time_step().map(|t| t.steps_at(now_unix_s));
    let in_window = |t: u64| {
        now_step.is_some_and(|n| {
            t >= n.saturating_sub(w.time_steps_back) && t <= n.saturating_add(w.time_steps_ahead)
        })
    };
    let steps: Vec<Option<u64>> = match (now_step, time_step) {
        (None, _) => vec![None],
        (Some(_), Some(t)) => vec![Some(t)],
        (Some(n), None) => {
            let back = w.time_steps_back.saturating_add(w.stale_probe_steps);
            (n.saturating_sub(back)..=n.saturating_add(w.time_steps_ahead))
                .rev()
                .map(Some)
                .collect()
        }
    };
    let mut found = None;
    'search: for t in &steps {
        for c in &counters {
            let inputs = Inputs {
                counter: *c,
                question: &question,
                pin_hash: None,
                session: None,
                time_steps: *t,
            };
            if ocra::verify(&suite, &secret, &inputs, response) == Ok(true) {
                found = Some((*c, *t));
                break 'search;
            }
        }
    }
    let Some((c, t)) = found else {
        return mismatch;
    };
    if let Some(t) = t {
        if !in_window(t) {
            return Verdict::reject(Reason::OcraStale);
        }
    }
    // Each counter (or, without C, each time step) is accepted once.
    let Some(used) = c.or(t).and_then(|x| u32::try_from(x).ok()) else {
        // A suite with neither C nor T is refused at provisioning.
        return mismatch;
    };
    if used <= device.last_counter {
        return Verdict::reject(Reason::ResponseReused);
    }
    if c.is_none() && counter.is_some() {
        return mismatch;
    }
    Verdict::Accept {
        counter: Some(used),
        replay_reason: Reason::ResponseReused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_proto::api::DeclineReason;
    use keybridge_proto::{
        AccountId, Challenge, ConfirmationPayload, Currency, Money, TransactionId,
    };
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{DerSignature, SigningKey};

    const NOW: u64 = 1_750_000_000;

    use crate::ca::Ca;

    struct Fixture {
        verifier: Verifier,
        key: SigningKey,
        device: DeviceRecord,
        transaction: TransactionRecord,
    }

    fn payload(amount: u64, payee: &str) -> Vec<u8> {
        ConfirmationPayload {
            origin: "keybridge.test".into(),
            transaction_id: TransactionId([1; 16]),
            challenge: Challenge([2; 32]),
            payer: AccountId::new("alice").unwrap(),
            payee: AccountId::new(payee).unwrap(),
            payee_name: "Shop".into(),
            amount: Money::new(amount, Currency::from_code("CNY").unwrap()),
            order_id: "o-1".into(),
            description: String::new(),
            created_at_unix_s: NOW,
            expires_at_unix_s: NOW + 120,
        }
        .encode()
        .unwrap()
    }

    fn fixture() -> Fixture {
        let ca = Ca::generate("keybridge.test", NOW).unwrap();
        let key = SigningKey::from_slice(&[5u8; 32]).unwrap();
        let point = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let alice = AccountId::new("alice").unwrap();
        let certificate = ca
            .issue_device_certificate("dev_a", &alice, &point, "keybridge.test", NOW)
            .unwrap();
        let verifier = Verifier::new(
            TrustStore::new(vec![ca.cert_der().to_vec()], vec![]).unwrap(),
            MasterKey::from_bytes(&[1; 32]),
        );
        let device = DeviceRecord {
            id: "dev_a".into(),
            account: alice.clone(),
            label: String::new(),
            method: SignatureMethod::TransactionApplet,
            revoked_at_unix_s: None,
            ocra: None,
            public_key: point,
            certificate,
            status: DeviceStatus::Active,
            last_counter: 3,
            created_at_unix_s: NOW,
        };
        let transaction = TransactionRecord {
            id: TransactionId([1; 16]),
            terminal_id: "term".into(),
            idempotency_key: "k".into(),
            request_hash: [0; 32],
            payer: alice,
            payee: AccountId::new("shop").unwrap(),
            payee_name: "Shop".into(),
            amount_minor: 1000,
            currency: Currency::from_code("CNY").unwrap(),
            order_id: "o-1".into(),
            description: String::new(),
            payload: payload(1000, "shop"),
            status: TransactionStatus::Pending,
            reason: None,
            created_at_unix_s: NOW,
            expires_at_unix_s: NOW + 120,
            updated_at_unix_s: NOW,
        };
        Fixture {
            verifier,
            key,
            device,
            transaction,
        }
    }

    fn signed(f: &Fixture, bytes: &[u8], counter: u32) -> Confirmation {
        let sig: DerSignature = f.key.sign(&signed_message(bytes, counter));
        Confirmation::Signed {
            counter,
            signature: b64::encode(sig.as_bytes()),
        }
    }

    fn check(f: &Fixture, c: &Confirmation, now: u64) -> Verdict {
        verify(
            &f.verifier,
            Submission {
                device: &f.device,
                transaction: &f.transaction,
                confirmation: c,
                now_unix_s: now,
            },
        )
    }

    fn rejected(reason: Reason) -> Verdict {
        Verdict::reject(reason)
    }

    #[test]
    fn a_good_signature_over_the_stored_payload_is_accepted() {
        let f = fixture();
        let c = signed(&f, &f.transaction.payload, 4);
        assert_eq!(
            check(&f, &c, NOW + 1),
            Verdict::Accept {
                counter: Some(4),
                replay_reason: Reason::CounterReplay
            }
        );
    }

    #[test]
    fn a_signature_over_a_changed_amount_or_payee_is_refused() {
        let f = fixture();
        let c = signed(&f, &payload(1, "shop"), 4);
        assert_eq!(check(&f, &c, NOW), rejected(Reason::BadSignature));
        let c = signed(&f, &payload(1000, "mallory"), 4);
        assert_eq!(check(&f, &c, NOW), rejected(Reason::BadSignature));
        // The counter is part of the signed message too.
        let Confirmation::Signed { signature, .. } = signed(&f, &f.transaction.payload, 4) else {
            unreachable!()
        };
        let c = Confirmation::Signed {
            counter: 5,
            signature,
        };
        assert_eq!(check(&f, &c, NOW), rejected(Reason::BadSignature));
        let c = Confirmation::Signed {
            counter: 5,
            signature: "%%%".into(),
        };
        assert_eq!(check(&f, &c, NOW), rejected(Reason::BadSignature));
        let c = Confirmation::Signed {
            counter: 5,
            signature: "A".repeat(10_000),
        };
        assert_eq!(check(&f, &c, NOW), rejected(Reason::BadSignature));
    }

    /// A PIV device signs SHA-256(payload) (the card gets the digest): the
    /// server verifies over the stored payload, with no counter; a signature
    /// over a changed payload, or in the transaction applet's form, is refused.
    #[test]
    fn piv_signatures_cover_the_payload_alone() {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        use sha2::{Digest, Sha256};
        let mut f = fixture();
        f.device.method = SignatureMethod::Piv;
        let piv_sign = |bytes: &[u8]| {
            let sig: p256::ecdsa::Signature = f.key.sign_prehash(&Sha256::digest(bytes)).unwrap();
            Confirmation::Signed {
                counter: 0,
                signature: b64::encode(sig.to_der().as_bytes()),
            }
        };
        let good = piv_sign(&f.transaction.payload);
        assert_eq!(
            check(&f, &good, NOW),
            Verdict::Accept {
                counter: None,
                replay_reason: Reason::CounterReplay
            }
        );
        let tampered = piv_sign(&payload(1000, "mallory"));
        assert_eq!(check(&f, &tampered, NOW), rejected(Reason::BadSignature));
        // The transaction applet's message (payload ‖ counter) is not a PIV signature.
        let applet_form = signed(&f, &f.transaction.payload, 4);
        assert_eq!(check(&f, &applet_form, NOW), rejected(Reason::BadSignature));
        // And a PIV signature does not pass for a transaction-applet device.
        f.device.method = SignatureMethod::TransactionApplet;
        assert_eq!(check(&f, &good, NOW), rejected(Reason::BadSignature));
    }

    #[test]
    fn counters_must_increase() {
        let f = fixture();
        let c = signed(&f, &f.transaction.payload, 3);
        assert_eq!(check(&f, &c, NOW), rejected(Reason::CounterReplay));
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        let mut f = fixture();
        // A valid signature with an old counter from a disabled device after
        // expiry: the device check comes first.
        let old = signed(&f, &f.transaction.payload, 1);
        f.device.status = DeviceStatus::Disabled;
        assert_eq!(check(&f, &old, NOW + 500), rejected(Reason::UnknownDevice));
        f.device.status = DeviceStatus::Active;
        f.device.account = AccountId::new("bob").unwrap();
        assert_eq!(check(&f, &old, NOW), rejected(Reason::UnknownDevice));
        f.device.account = AccountId::new("alice").unwrap();

        // Expiry beats a decline and a bad signature.
        let decline = Confirmation::Declined {
            reason: DeclineReason::PinBlocked,
        };
        let expired = Verdict::End {
            status: TransactionStatus::Expired,
            reason: Reason::Expired,
        };
        assert_eq!(check(&f, &decline, NOW + 120), expired);
        assert_eq!(check(&f, &old, NOW + 120), expired);
        assert_eq!(check(&f, &decline, NOW + 119), rejected(Reason::PinBlocked));

        // A declined confirmation never reaches the certificate check.
        let good_cert = f.device.certificate.clone();
        f.device.certificate = b"garbage".to_vec();
        assert_eq!(check(&f, &decline, NOW), rejected(Reason::PinBlocked));
        // The certificate is checked before the signature and counter.
        assert_eq!(check(&f, &old, NOW), rejected(Reason::CertificateInvalid));
        f.device.certificate = good_cert;

        // A bad signature is reported before a replayed counter.
        let forged = signed(&f, &payload(1, "shop"), 1);
        assert_eq!(check(&f, &forged, NOW), rejected(Reason::BadSignature));
        assert_eq!(check(&f, &old, NOW), rejected(Reason::CounterReplay));
    }

    #[test]
    fn every_decline_reason_passes_through() {
        let f = fixture();
        for (d, r) in [
            (DeclineReason::Declined, Reason::Declined),
            (DeclineReason::WrongPin, Reason::WrongPin),
            (DeclineReason::PinBlocked, Reason::PinBlocked),
            (DeclineReason::DeviceError, Reason::DeviceError),
        ] {
            let c = Confirmation::Declined { reason: d };
            assert_eq!(check(&f, &c, NOW), rejected(r));
        }
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let mut f = fixture();
        let other = SigningKey::from_slice(&[9u8; 32]).unwrap();
        f.device.public_key = other
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let c = signed(&f, &f.transaction.payload, 4);
        assert_eq!(check(&f, &c, NOW), rejected(Reason::CertificateInvalid));
    }
}
