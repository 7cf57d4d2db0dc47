//! OCRA-mode devices over real loopback HTTP: provisioning from an otpauth
//! URI (secret sealed at rest), a response over the stored payload settles,
//! and a response for a changed amount or payee, an old time step, or a
//! reused counter is rejected with its own reason, moving no money.

mod common;

use common::{error_body, Harness};
use keybridge_proto::api::{
    Confirmation, DeviceEnrolled, Reason, TransactionStatus, TransactionView,
};
use keybridge_proto::ocra::{self, Inputs, OtpauthUri, Suite};
use keybridge_proto::{AccountId, ConfirmationPayload};
use keybridge_server::Clock;
use reqwest::StatusCode;
use serde_json::json;

const SUITE: &str = "OCRA-1:HOTP-SHA256-8:C-QH64-T30S";
const SECRET: &[u8; 32] = b"0123456789abcdef0123456789ABCDEF";

struct Token {
    suite: Suite,
    enrolled: DeviceEnrolled,
}

impl Token {
    /// What the card computes for `payload` with counter `c` at time step `t`.
    fn answer(&self, payload: &[u8], c: u64, t: u64) -> String {
        let q = ocra::payload_question(payload);
        ocra::compute(
            &self.suite,
            SECRET,
            &Inputs {
                counter: Some(c),
                question: &q,
                time_steps: Some(t),
                ..Inputs::default()
            },
        )
        .unwrap()
    }
}

async fn setup() -> (Harness, keybridge_proto::api::TerminalCreated, Token) {
    let h = Harness::start().await;
    h.account("alice", "CNY", 1_000_000).await;
    h.account("shop", "CNY", 0).await;
    let terminal = h.terminal().await;
    let uri = OtpauthUri {
        label: "KeyBridge:alice".into(),
        suite: Suite::parse(SUITE).unwrap(),
        secret: SECRET.to_vec(),
        counter: 0,
    }
    .to_uri();
    let r = h
        .admin_post(
            "/v1/admin/devices/ocra",
            json!({"account": "alice", "uri": uri, "label": "token"}),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let enrolled = r.json().await.unwrap();
    (
        h,
        terminal,
        Token {
            suite: Suite::parse(SUITE).unwrap(),
            enrolled,
        },
    )
}

fn step(h: &Harness) -> u64 {
    h.clock.now_unix_s() / 30
}

async fn submit(
    h: &Harness,
    t: &Token,
    id: &keybridge_proto::TransactionId,
    c: Confirmation,
) -> TransactionView {
    let r = h.confirm(&t.enrolled.credential, id, &c).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

fn ocra_confirmation(
    response: String,
    counter: Option<u64>,
    time_step: Option<u64>,
) -> Confirmation {
    Confirmation::Ocra {
        response,
        counter,
        time_step,
    }
}

/// A response over the stored payload settles; look-ahead finds a skipped counter.
#[tokio::test]
async fn an_ocra_response_over_the_stored_payload_settles() {
    let (h, terminal, token) = setup().await;
    let tx = h.pay(&terminal, 1234).await;
    let payload = h.payload(&tx.id).await;
    let before = h.balances().await;
    let answer = ocra_confirmation(token.answer(&payload, 1, step(&h)), Some(1), Some(step(&h)));
    let view = submit(&h, &token, &tx.id, answer.clone()).await;
    assert_eq!(
        (view.status, view.reason),
        (TransactionStatus::Settled, None)
    );
    assert_eq!(h.balances().await["alice"], before["alice"] - 1234);
    // A relay that lost the result posts the same response again: it hears
    // the outcome, and nothing is paid twice.
    assert_eq!(submit(&h, &token, &tx.id, answer).await, view);
    assert_eq!(h.balances().await["alice"], before["alice"] - 1234);

    // A token that only shows digits: no counter, no time step given. The
    // server looks ahead past a counter the holder spent without submitting.
    let tx = h.pay(&terminal, 10).await;
    let payload = h.payload(&tx.id).await;
    let view = submit(
        &h,
        &token,
        &tx.id,
        ocra_confirmation(token.answer(&payload, 3, step(&h)), None, None),
    )
    .await;
    assert_eq!(view.status, TransactionStatus::Settled);
    h.assert_ledger_balanced().await;
}

/// Each negative case with its reason; nothing moves.
#[tokio::test]
async fn changed_amount_or_payee_old_step_and_reuse_are_refused_with_their_reasons() {
    let (h, terminal, token) = setup().await;
    let now_step = step(&h);
    let mut counter = 0;
    let mut case = |name: &'static str| {
        counter += 1;
        (name, counter)
    };
    let mut outcomes = Vec::new();
    for (name, c) in [
        case("amount"),
        case("payee"),
        case("old_step"),
        case("old_step_unsaid"),
    ] {
        let tx = h.pay(&terminal, 500).await;
        let stored = h.payload(&tx.id).await;
        let mut shown = ConfirmationPayload::decode(&stored).unwrap();
        let (bytes, t, claim) = match name {
            "amount" => {
                shown.amount.minor_units += 100;
                (shown.encode().unwrap(), now_step, true)
            }
            "payee" => {
                shown.payee = AccountId::new("mallory").unwrap();
                (shown.encode().unwrap(), now_step, true)
            }
            "old_step" => (stored.clone(), now_step - 10, true),
            _ => (stored.clone(), now_step - 10, false),
        };
        let response = token.answer(&bytes, c, t);
        let confirmation = match claim {
            true => ocra_confirmation(response, Some(c), Some(t)),
            false => ocra_confirmation(response, None, None),
        };
        let view = submit(&h, &token, &tx.id, confirmation).await;
        assert_eq!(h.transfer_count(&tx.id).await, 0, "{name}");
        outcomes.push((name, view.status, view.reason));
    }
    assert_eq!(
        outcomes,
        vec![
            (
                "amount",
                TransactionStatus::Rejected,
                Some(Reason::OcraMismatch)
            ),
            (
                "payee",
                TransactionStatus::Rejected,
                Some(Reason::OcraMismatch)
            ),
            (
                "old_step",
                TransactionStatus::Rejected,
                Some(Reason::OcraStale)
            ),
            (
                "old_step_unsaid",
                TransactionStatus::Rejected,
                Some(Reason::OcraStale)
            ),
        ]
    );

    // Reuse: counter 7 accepted once; a right response with counter 7 for the
    // next payment is refused, with or without saying the counter.
    let tx = h.pay(&terminal, 500).await;
    let payload = h.payload(&tx.id).await;
    let view = submit(
        &h,
        &token,
        &tx.id,
        ocra_confirmation(token.answer(&payload, 7, now_step), Some(7), Some(now_step)),
    )
    .await;
    assert_eq!(view.status, TransactionStatus::Settled);
    let before = h.balances().await;
    for claim in [true, false] {
        let tx = h.pay(&terminal, 500).await;
        let payload = h.payload(&tx.id).await;
        let response = token.answer(&payload, 7, now_step);
        let c = match claim {
            true => ocra_confirmation(response, Some(7), Some(now_step)),
            false => ocra_confirmation(response, None, None),
        };
        let view = submit(&h, &token, &tx.id, c).await;
        assert_eq!(
            (view.status, view.reason),
            (TransactionStatus::Rejected, Some(Reason::ResponseReused))
        );
    }
    assert_eq!(h.balances().await, before);

    // The answer that settled the first of them (counter 7, said), posted
    // again: its outcome, and nothing moves. The same response without the
    // counter and time step is another answer: `not_pending`.
    let repeated = submit(
        &h,
        &token,
        &tx.id,
        ocra_confirmation(token.answer(&payload, 7, now_step), Some(7), Some(now_step)),
    )
    .await;
    assert_eq!(repeated.status, TransactionStatus::Settled);
    assert_eq!(h.balances().await, before);
    let again = h
        .confirm(
            &token.enrolled.credential,
            &tx.id,
            &ocra_confirmation(token.answer(&payload, 7, now_step), None, None),
        )
        .await;
    assert_eq!(error_body(again).await.1.error, "not_pending");

    // A signature from an OCRA device, and a revoked OCRA device.
    let tx = h.pay(&terminal, 500).await;
    let view = submit(
        &h,
        &token,
        &tx.id,
        Confirmation::Signed {
            counter: 9,
            signature: "MEUCIQ==".into(),
        },
    )
    .await;
    assert_eq!(view.reason, Some(Reason::BadSignature));
    // Revoked while a payment waits: that payment is refused, and no new one
    // can start (no usable device left).
    let tx = h.pay(&terminal, 500).await;
    let payload = h.payload(&tx.id).await;
    h.admin_post(
        &format!("/v1/admin/devices/{}/revoke", token.enrolled.device_id),
        json!({}),
    )
    .await;
    let view = submit(
        &h,
        &token,
        &tx.id,
        ocra_confirmation(token.answer(&payload, 8, now_step), Some(8), Some(now_step)),
    )
    .await;
    assert_eq!(view.reason, Some(Reason::CertificateRevoked));
    let r = h
        .create(&terminal.api_key, "after-revoke", common::payment(1))
        .await;
    assert_eq!(error_body(r).await.1.error, "no_device");
    h.assert_ledger_balanced().await;
}

/// The secret is sealed with the master key: the database never holds it,
/// and bad provisioning URIs are refused without echoing their secret.
#[tokio::test]
async fn the_secret_is_encrypted_at_rest_and_bad_uris_are_refused() {
    let (h, _terminal, token) = setup().await;
    // What the database holds: SQLite's files byte for byte; on PostgreSQL,
    // the stored column (its files belong to another user and process).
    let stored: Vec<Vec<u8>> = if common::on_postgres() {
        let devices = h.server().store().list_devices().await.unwrap();
        let sealed: Vec<Vec<u8>> = devices
            .into_iter()
            .filter_map(|d| d.ocra.map(|o| o.sealed_secret))
            .collect();
        assert!(!sealed.is_empty());
        sealed
    } else {
        vec![
            std::fs::read(h.dir.path().join("keybridge.sqlite")).unwrap(),
            std::fs::read(h.dir.path().join("keybridge.sqlite-wal")).unwrap_or_default(),
        ]
    };
    for bytes in &stored {
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET),
            "secret in clear"
        );
        let b32 = ocra::base32_encode(SECRET);
        assert!(!bytes.windows(b32.len()).any(|w| w == b32.as_bytes()));
    }
    let key = std::fs::metadata(h.dir.path().join("master-key")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }
    let view: keybridge_proto::api::DeviceView = h
        .admin_get(&format!("/v1/admin/devices/{}", token.enrolled.device_id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view.method, "ocra");

    for (uri, needle) in [
        (
            "otpauth://ocra/x?secret=GEZDGNBV&suite=OCRA-1:HOTP-SHA1-6:QN08",
            "QH64",
        ),
        (
            "otpauth://ocra/x?secret=GEZDGNBV&suite=OCRA-1:HOTP-SHA256-8:QH64",
            "C or T",
        ),
        (
            "otpauth://ocra/x?secret=GEZDGNBV&suite=OCRA-1:HOTP-SHA256-8:C-QH64-PSHA1",
            "no P",
        ),
        (
            "otpauth://ocra/x?secret=1111&suite=OCRA-1:HOTP-SHA256-8:C-QH64",
            "secret",
        ),
        ("otpauth://totp/x?secret=GEZDGNBV", "otpauth://ocra/"),
    ] {
        let r = h
            .admin_post(
                "/v1/admin/devices/ocra",
                json!({"account": "alice", "uri": uri}),
            )
            .await;
        let (status, body) = error_body(r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(body.message.contains(needle), "{uri}: {}", body.message);
        assert!(!body.message.contains("GEZDGNBV"));
    }
}
