//! Terminals' API keys can be revoked: a disabled terminal's key is refused
//! at once, even right after it was used (and so remembered), while other
//! terminals and the payments it already started carry on.

mod common;

use common::*;
use keybridge_proto::api::{AuditEntryView, TerminalView, TransactionStatus};
use reqwest::StatusCode;
use serde_json::json;

async fn terminals(h: &Harness) -> Vec<TerminalView> {
    let r = h.admin_get("/v1/admin/terminals").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
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
    let audit: Vec<AuditEntryView> = h
        .admin_get("/v1/admin/audit?limit=500")
        .await
        .json()
        .await
        .unwrap();
    let disables: Vec<&AuditEntryView> = audit
        .iter()
        .filter(|r| r.event == "terminal_disabled")
        .collect();
    assert_eq!(disables.len(), 1, "{audit:?}");
    assert!(disables[0].detail.contains(&leaked.id));
    h.assert_ledger_balanced().await;
}

#[tokio::test]
async fn disabling_needs_the_admin_token_and_a_known_terminal() {
    let (h, terminal, _card) = Harness::standard().await;
    let path = format!("/v1/admin/terminals/{}/disable", terminal.id);
    for key in [terminal.api_key.as_str(), "wrong"] {
        let r = h
            .http
            .post(h.url(&path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = h
        .admin_post("/v1/admin/terminals/term_nope/disable", json!({}))
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // Still working: nothing was disabled.
    assert_eq!(
        h.pay(&terminal, 100).await.status,
        TransactionStatus::Pending
    );
}
