//! Operations: readiness, Prometheus counters that move with payments, the
//! request id, the web page's headers, and an HTTPS round trip with a
//! certificate the client was told to trust.

mod common;

use common::*;
use keybridge_proto::api::{Confirmation, DeclineReason};
use reqwest::StatusCode;

/// The whole `GET /metrics` text, checked to be Prometheus' text format.
async fn metrics(h: &Harness) -> String {
    let r = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    r.text().await.unwrap()
}

#[tokio::test]
async fn health_and_readiness() {
    let h = Harness::start().await;
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let r = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), body);
    }
}

#[tokio::test]
async fn metrics_count_payments_latency_and_verification_failures() {
    let (h, terminal, card) = Harness::standard().await;
    let settled = r#"keybridge_payments_total{status="settled",reason="none"}"#;
    let declined = r#"keybridge_payments_total{status="rejected",reason="declined"}"#;
    let bad_sig = r#"keybridge_verification_failures_total{reason="bad_signature"}"#;
    let latency = "keybridge_submit_to_settled_seconds_count";
    // Counters are process-wide and other tests in this binary run alongside:
    // compare before and after, and only in the direction they can move.
    let before = metrics(&h).await;

    let pending = h.pay(&terminal, 100).await;
    let during = metrics(&h).await;
    assert!(
        sample(&during, "keybridge_pending_confirmations") >= 1.0,
        "{during}"
    );

    let payload = h.payload(&pending.id).await;
    h.confirm_ok(&card, &pending.id, &card.sign(&payload)).await;
    let tx = h.pay(&terminal, 100).await;
    h.confirm_ok(
        &card,
        &tx.id,
        &Confirmation::Declined {
            reason: DeclineReason::Declined,
        },
    )
    .await;
    // A signature over other bytes: the verification unit refuses it.
    let tx = h.pay(&terminal, 100).await;
    h.confirm_ok(&card, &tx.id, &card.sign(b"not the payload"))
        .await;

    let after = metrics(&h).await;
    assert!(
        sample(&after, settled) >= sample(&before, settled) + 1.0,
        "{after}"
    );
    assert!(
        sample(&after, declined) >= sample(&before, declined) + 1.0,
        "{after}"
    );
    assert!(
        sample(&after, bad_sig) >= sample(&before, bad_sig) + 1.0,
        "{after}"
    );
    assert!(
        sample(&after, latency) >= sample(&before, latency) + 1.0,
        "{after}"
    );
    // A holder's decline is an outcome, not a verification failure.
    assert_eq!(
        sample(
            &after,
            r#"keybridge_verification_failures_total{reason="declined"}"#
        ),
        0.0
    );
    assert!(after.contains("keybridge_submit_to_settled_seconds_bucket{le=\"0.5\"}"));
}

#[tokio::test]
async fn relay_channels_are_counted_while_open() {
    let (h, _terminal, card) = Harness::standard().await;
    let gauge = "keybridge_relay_channels_open";
    let relay = h.relay(&card.enrolled.credential).await;
    // The session task registers right after the upgrade.
    let mut open = 0.0;
    for _ in 0..50 {
        open = sample(&metrics(&h).await, gauge);
        if open >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(open >= 1.0);
    relay.close().await;
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let h = Harness::start().await;
    let r = h.http.get(h.url("/healthz")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    // A caller's own id is kept, so logs can be joined across services.
    let r = h
        .http
        .get(h.url("/nope"))
        .header("x-request-id", "till-7-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["x-request-id"], "till-7-req-42");
}

#[tokio::test]
async fn the_checkout_page_is_served_with_its_assets_and_a_strict_policy() {
    let h = Harness::start().await;
    let page = h.http.get(h.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    // Every asset is ours: no other origin is referenced.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    assert!(!html.contains("kbt_") || html.contains("<code>kbt_</code>"));
    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let r = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
}

#[tokio::test]
async fn the_account_page_shows_only_accounts_this_terminal_has_paid_from() {
    let (h, terminal, card) = Harness::standard().await;
    let url = h.url("/v1/accounts/alice");
    let r = h
        .http
        .get(&url)
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let tx = h.pay(&terminal, 250).await;
    let payload = h.payload(&tx.id).await;
    h.confirm_ok(&card, &tx.id, &card.sign(&payload)).await;
    let r = h
        .http
        .get(&url)
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let activity: keybridge_proto::api::AccountActivity = r.json().await.unwrap();
    assert_eq!(activity.account.balance_minor, 1_000_000 - 250);
    assert_eq!(activity.transactions.len(), 1);
    assert_eq!(activity.transactions[0].id, tx.id);

    // Another terminal sees nothing of it; no key, no answer.
    let other = h.terminal().await;
    let r = h
        .http
        .get(&url)
        .bearer_auth(&other.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = h.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn https_round_trip_with_a_trusted_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = keybridge_server::tls::write_self_signed(dir.path(), &["localhost".into()]).unwrap();
    let mut config = common::config_in(dir.path());
    config.tls = Some(tls.clone());
    let server = keybridge_server::start(config).await.unwrap();
    assert_eq!(server.scheme, "https");
    let url = format!("https://localhost:{}/v1/admin/accounts", server.addr.port());

    // Trusting the certificate: the admin API answers over TLS.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tls.cert_pem).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let r = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Not trusting it: the handshake fails; plain HTTP gets no API answer.
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    assert!(untrusting.get(&url).send().await.is_err());
    let plain = format!("http://{}/healthz", server.addr);
    let answered_plain = matches!(
        reqwest::get(&plain).await,
        Ok(r) if r.status() == StatusCode::OK
    );
    assert!(!answered_plain);
    server.shutdown().await;
}
