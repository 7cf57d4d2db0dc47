//! The verification unit: decides what a confirmation means, without IO.
//!
//! It sees the device and transaction as stored, the relay's submission and
//! the time; it answers with a [`Verdict`]. The signature is checked against
//! the payload bytes the server stored when it created the transaction, never
//! against anything the relay sent. Consuming the counter and moving money is
//! the payment unit's job ([`crate::payment`]), which re-checks the counter
//! atomically.
//!
//! What the signature covers depends on the device's [`SignatureMethod`]
//! ([`signed_message_for`]): the transaction applet signs the payload and its
//! counter, which must increase; a PIV card signs the payload alone (SHA-256
//! of it, in slot 9C) and has no counter.

use keybridge_proto::api::{b64, Confirmation, Reason, SignatureMethod, TransactionStatus};
use keybridge_proto::signed_message;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};

use crate::ca::Ca;
use crate::store::{DeviceRecord, DeviceStatus, TransactionRecord};

/// A DER ECDSA P-256 signature is at most 72 bytes (96 in base64); anything
/// longer is refused before decoding.
pub const SIGNATURE_B64_LEN_MAX: usize = 128;

/// What the verification unit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// End the transaction with this status and reason; no money moves.
    End {
        status: TransactionStatus,
        reason: Reason,
    },
    /// Valid signature from the payer's device: hand over to the payment
    /// unit, with the counter to consume (`None` for PIV).
    Accept { counter: Option<u32> },
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
    }
}

/// The checks, in the documented order; the first failure decides.
pub fn verify(ca: &Ca, s: Submission<'_>) -> Verdict {
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
    // 3. The holder (or the card) said no.
    let (counter, signature_b64) = match confirmation {
        Confirmation::Declined { reason } => return Verdict::reject((*reason).into()),
        Confirmation::Signed { counter, signature } => (*counter, signature),
    };
    // 4. The certificate the CA issued at enrolment still holds, for this payer.
    let public_key =
        match ca.verify_device_certificate(&device.certificate, &transaction.payer, now_unix_s) {
            Ok(key) if key == device.public_key => key,
            Ok(_) => return Verdict::reject(Reason::CertificateInvalid),
            Err(e) => {
                tracing::warn!(device = %device.id, error = %e, "device certificate refused");
                return Verdict::reject(Reason::CertificateInvalid);
            }
        };
    // 5. The signature covers exactly the stored payload (and the counter,
    //    for the transaction applet).
    let signature = match (signature_b64.len() <= SIGNATURE_B64_LEN_MAX)
        .then(|| b64::decode(signature_b64))
        .flatten()
    {
        Some(sig) => sig,
        None => return Verdict::reject(Reason::BadSignature),
    };
    let message = signed_message_for(device.signature_method, &transaction.payload, counter);
    if UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public_key)
        .verify(&message, &signature)
        .is_err()
    {
        return Verdict::reject(Reason::BadSignature);
    }
    // 6. The counter moves forward (checked again, atomically, by the payment
    //    unit). PIV has none: the submitted value is ignored.
    match device.signature_method {
        SignatureMethod::Piv => Verdict::Accept { counter: None },
        SignatureMethod::TransactionApplet if counter <= device.last_counter => {
            Verdict::reject(Reason::CounterReplay)
        }
        SignatureMethod::TransactionApplet => Verdict::Accept {
            counter: Some(counter),
        },
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

    struct Fixture {
        ca: Ca,
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
        let device = DeviceRecord {
            id: "dev_a".into(),
            account: alice.clone(),
            label: String::new(),
            public_key: point,
            certificate,
            status: DeviceStatus::Active,
            last_counter: 3,
            created_at_unix_s: NOW,
            signature_method: SignatureMethod::TransactionApplet,
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
            ca,
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
            &f.ca,
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
        assert_eq!(check(&f, &c, NOW + 1), Verdict::Accept { counter: Some(4) });
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
        f.device.signature_method = SignatureMethod::Piv;
        let piv_sign = |bytes: &[u8]| {
            let sig: p256::ecdsa::Signature = f.key.sign_prehash(&Sha256::digest(bytes)).unwrap();
            Confirmation::Signed {
                counter: 0,
                signature: b64::encode(sig.to_der().as_bytes()),
            }
        };
        let good = piv_sign(&f.transaction.payload);
        assert_eq!(check(&f, &good, NOW), Verdict::Accept { counter: None });
        let tampered = piv_sign(&payload(1000, "mallory"));
        assert_eq!(check(&f, &tampered, NOW), rejected(Reason::BadSignature));
        // The transaction applet's message (payload ‖ counter) is not a PIV signature.
        let applet_form = signed(&f, &f.transaction.payload, 4);
        assert_eq!(check(&f, &applet_form, NOW), rejected(Reason::BadSignature));
        // And a PIV signature does not pass for a transaction-applet device.
        f.device.signature_method = SignatureMethod::TransactionApplet;
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
