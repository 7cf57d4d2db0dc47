//! Terminals' API keys can be revoked: a disabled terminal's key is refused
//! at once, even right after it was used (and so remembered), while other
//! terminals and the payments it already started carry on. And replaced: a
//! rotated key takes the old one's place at once, for the same terminal.

mod common;

use common::*;
use keybridge_proto::api::{
    AuditEntryView, TerminalCreated, TerminalView, TransactionStatus, TransactionView,
};
use reqwest::StatusCode;
use serde_json::json;
use sha2::Digest;

async fn terminals(h: &Harness) -> Vec<TerminalView> {
    let r = h.admin_get("/v1/admin/terminals").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// The audit rows of `event` (the first 500 rows of the log).
async fn audit_rows(h: &Harness, event: &str) -> Vec<AuditEntryView> {
    let r = h.admin_get("/v1/admin/audit?limit=500").await;
    assert_eq!(r.status(), StatusCode::OK);
    let all: Vec<AuditEntryView> = r.json().await.unwrap();
    all.into_iter().filter(|r| r.event == event).collect()
}

#[tokio::test]
async fn a_disabled_terminal_is_refused_at_once_and_others_carry_on() {
    let (h, leaked, card) = Harness::standard().await;
    let other = h.terminal().await;
    // Used just before: the key is remembered by the server.
    let started = h.pay(&leaked, 700).await;

    let r = h
        .admin_post(
            &format!("/v1/admin/terminals/{}/disable", leaked.id),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let disabled: TerminalView = r.json().await.unwrap();
    assert_eq!(
        (disabled.id.as_str(), disabled.status.as_str()),
        (leaked.id.as_str(), "disabled")
    );
    let at = disabled.disabled_at_unix_s.expect("when");

    // The key authenticates nothing now: not a new payment, not a read.
    let r = h
        .create(&leaked.api_key, "after-disable", payment(100))
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let r = h
        .http
        .get(h.url(&format!("/v1/transactions/{}", started.id)))
        .bearer_auth(&leaked.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Another terminal is not touched, and what the disabled one started
    // still settles when the payer confirms it.
    let paid = h.pay(&other, 300).await;
    assert_eq!(paid.status, TransactionStatus::Pending);
    let confirmation = card.sign(&h.payload(&started.id).await);
    let settled = h.confirm_ok(&card, &started.id, &confirmation).await;
    assert_eq!(settled.status, TransactionStatus::Settled);

    // Listed as disabled; disabling again changes nothing and is audited once.
    let listed = terminals(&h).await;
    let status = |id: &str| listed.iter().find(|t| t.id == id).map(|t| t.status.clone());
    assert_eq!(status(&leaked.id).as_deref(), Some("disabled"));
    assert_eq!(status(&other.id).as_deref(), Some("active"));
    let again: TerminalView = h
        .admin_post(
            &format!("/v1/admin/terminals/{}/disable", leaked.id),
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again.disabled_at_unix_s, Some(at));
    let disables = audit_rows(&h, "terminal_disabled").await;
    assert_eq!(disables.len(), 1, "{disables:?}");
    assert!(disables[0].detail.contains(&leaked.id));
    h.assert_ledger_balanced().await;
}

/// Only the admin disables a terminal or rotates its key, and only a
/// terminal that exists; a refused request changes nothing.
#[tokio::test]
async fn terminal_changes_need_the_admin_token_and_a_known_terminal() {
    let (h, terminal, _card) = Harness::standard().await;
    for action in ["disable", "rotate-key"] {
        let path = format!("/v1/admin/terminals/{}/{action}", terminal.id);
        for key in [terminal.api_key.as_str(), "wrong"] {
            let r = h
                .http
                .post(h.url(&path))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{action}");
        }
        let r = h
            .admin_post(
                &format!("/v1/admin/terminals/term_nope/{action}"),
                json!({}),
            )
            .await;
        let (status, body) = error_body(r).await;
        assert_eq!(
            (status, body.error.as_str()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{action}"
        );
    }
    // Still working with its key: nothing was disabled or rotated.
    assert_eq!(
        h.pay(&terminal, 100).await.status,
        TransactionStatus::Pending
    );
}

/// A rotated key replaces the old one at once, even right after the old one
/// was used (and so remembered). The terminal keeps its id: what it started
/// reads and settles, and an `Idempotency-Key` it used still finds its
/// transaction under the new key.
#[tokio::test]
async fn a_rotated_key_replaces_the_old_one_at_once() {
    let (h, terminal, card) = Harness::standard().await;
    let r = h
        .create(&terminal.api_key, "before-rotation", payment(700))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let started: TransactionView = r.json().await.unwrap();

    let r = h
        .admin_post(
            &format!("/v1/admin/terminals/{}/rotate-key", terminal.id),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let rotated: TerminalCreated = r.json().await.unwrap();
    assert_eq!(
        (rotated.id.as_str(), rotated.name.as_str()),
        (terminal.id.as_str(), terminal.name.as_str())
    );
    assert!(rotated.api_key.starts_with("kbt_"));
    assert_ne!(rotated.api_key, terminal.api_key);

    // The old key authenticates nothing now.
    let (status, body) = error_body(h.create(&terminal.api_key, "old", payment(100)).await).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let read = |key: String| {
        let h = &h;
        async move {
            h.http
                .get(h.url(&format!("/v1/transactions/{}", started.id)))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        read(terminal.api_key.clone()).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // The new one is the same terminal.
    assert_eq!(read(rotated.api_key.clone()).await.status(), StatusCode::OK);
    let r = h
        .create(&rotated.api_key, "before-rotation", payment(700))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let again: TransactionView = r.json().await.unwrap();
    assert_eq!(again.id, started.id);
    let settled = h
        .confirm_ok(
            &card,
            &started.id,
            &card.sign(&h.payload(&started.id).await),
        )
        .await;
    assert_eq!(settled.status, TransactionStatus::Settled);
    let r = h
        .create(&rotated.api_key, "after-rotation", payment(300))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // Audited once, with no key material; the terminal is still active.
    let rotations = audit_rows(&h, "terminal_key_rotated").await;
    assert_eq!(rotations.len(), 1, "{rotations:?}");
    assert!(rotations[0].detail.contains(&terminal.id));
    let new_hash = hex::encode(sha2::Sha256::digest(rotated.api_key.as_bytes()));
    for secret in [rotated.api_key.as_str(), &rotated.api_key[4..], &new_hash] {
        assert!(
            !rotations[0].detail.contains(secret),
            "{}",
            rotations[0].detail
        );
    }
    let listed = terminals(&h).await;
    assert!(listed
        .iter()
        .any(|t| t.id == terminal.id && t.status == "active"));
    h.assert_ledger_balanced().await;
}

/// A disabled terminal gets no new key, and stays disabled.
#[tokio::test]
async fn a_disabled_terminal_gets_no_new_key() {
    let (h, terminal, _card) = Harness::standard().await;
    let r = h
        .admin_post(
            &format!("/v1/admin/terminals/{}/disable", terminal.id),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (status, body) = error_body(
        h.admin_post(
            &format!("/v1/admin/terminals/{}/rotate-key", terminal.id),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::CONFLICT, "terminal_disabled")
    );
    let listed = terminals(&h).await;
    assert!(listed
        .iter()
        .any(|t| t.id == terminal.id && t.status == "disabled"));
}
