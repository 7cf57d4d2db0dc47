//! Webhooks against a real loopback receiver: each outcome arrives exactly
//! once with a valid signature; a receiver that fails first gets retries
//! with backoff; the admin API shows the delivery state.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use common::*;
use hmac::{Hmac, Mac};
use keybridge_proto::api::{
    Confirmation, DeclineReason, TransactionStatus, WebhookDeliveryView, WebhookEvent,
    WebhookRegistered,
};
use keybridge_server::Clock;
use reqwest::StatusCode;
use serde_json::json;
use sha2::Sha256;

#[derive(Clone, Default)]
struct Receiver {
    /// Every request as it arrived: signature header and body.
    seen: Arc<Mutex<Vec<(String, Bytes)>>>,
    /// Answer 500 to this many requests first.
    fail_first: Arc<Mutex<u32>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let signature = headers
        .get("keybridge-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    r.seen.lock().unwrap().push((signature, body));
    let mut fail = r.fail_first.lock().unwrap();
    if *fail > 0 {
        *fail -= 1;
        AxumStatus::INTERNAL_SERVER_ERROR
    } else {
        AxumStatus::NO_CONTENT
    }
}

async fn start_receiver(fail_first: u32) -> (Receiver, String) {
    let receiver = Receiver {
        fail_first: Arc::new(Mutex::new(fail_first)),
        ..Receiver::default()
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (receiver, url)
}

/// An HMAC check written from the documented format, independent of the server's code.
fn signature_valid(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

async fn register(h: &Harness, api_key: &str, url: &str) -> WebhookRegistered {
    let r = h
        .http
        .put(h.url("/v1/webhook"))
        .bearer_auth(api_key)
        .json(&json!({ "url": url }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let registered: WebhookRegistered = r.json().await.unwrap();
    assert!(registered.secret.starts_with("whsec_"));
    registered
}

async fn deliveries(h: &Harness) -> Vec<WebhookDeliveryView> {
    let r = h.admin_get("/v1/admin/webhook-deliveries").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn wait_until<F: Fn(&[WebhookDeliveryView]) -> bool>(
    h: &Harness,
    done: F,
) -> Vec<WebhookDeliveryView> {
    tokio::time::timeout(GUARD, async {
        loop {
            let d = deliveries(h).await;
            if done(&d) {
                return d;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("webhook deliveries did not reach the expected state")
}

#[tokio::test]
async fn each_outcome_is_delivered_once_with_a_valid_signature() {
    let (h, terminal, card) = Harness::standard().await;
    let (receiver, url) = start_receiver(0).await;
    let registered = register(&h, &terminal.api_key, &url).await;

    // The registration is readable without its secret.
    let r = h
        .http
        .get(h.url("/v1/webhook"))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains(&url) && !text.contains(&registered.secret),
        "{text}"
    );

    // Three outcomes: settled, rejected (declined), rejected (wrong PIN).
    let settled = h.pay(&terminal, 100).await;
    let payload = h.payload(&settled.id).await;
    h.confirm_ok(&card, &settled.id, &card.sign(&payload)).await;
    let declined = h.pay(&terminal, 200).await;
    h.confirm_ok(
        &card,
        &declined.id,
        &Confirmation::Declined {
            reason: DeclineReason::Declined,
        },
    )
    .await;
    let wrong_pin = h.pay(&terminal, 300).await;
    h.confirm_ok(
        &card,
        &wrong_pin.id,
        &Confirmation::Declined {
            reason: DeclineReason::WrongPin,
        },
    )
    .await;

    let state = wait_until(&h, |d| {
        d.len() == 3 && d.iter().all(|d| d.state == "delivered")
    })
    .await;
    // Give a duplicate, if the worker were to send one, time to arrive.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "exactly one request per outcome");
    let mut by_transaction = HashMap::new();
    for (signature, body) in &seen {
        assert!(
            signature_valid(&registered.secret, signature, body),
            "bad signature {signature}"
        );
        assert!(!signature_valid("whsec_wrong", signature, body));
        let event: WebhookEvent = serde_json::from_slice(body).unwrap();
        assert!(event.id.starts_with("evt_"));
        by_transaction.insert(event.transaction.id, event);
    }
    assert_eq!(by_transaction.len(), 3);
    let s = &by_transaction[&settled.id];
    assert_eq!(
        (s.event_type.as_str(), s.transaction.status),
        ("transaction.settled", TransactionStatus::Settled)
    );
    let d = &by_transaction[&declined.id];
    assert_eq!(d.event_type, "transaction.rejected");
    assert_eq!(
        d.transaction.reason_text.as_deref(),
        Some("the payer declined on the security device")
    );
    assert_eq!(
        by_transaction[&wrong_pin.id]
            .transaction
            .reason
            .map(|r| r.as_str()),
        Some("wrong_pin")
    );
    // The admin view names the same events, one attempt each.
    for d in &state {
        assert_eq!(d.attempts, 1, "{d:?}");
        assert_eq!(d.last_status, Some(204));
        assert_eq!(by_transaction[&d.transaction_id].id, d.event_id);
    }
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_with_the_same_event_id() {
    let (h, terminal, card) = Harness::standard().await;
    let (receiver, url) = start_receiver(2).await;
    let registered = register(&h, &terminal.api_key, &url).await;

    let tx = h.pay(&terminal, 100).await;
    let payload = h.payload(&tx.id).await;
    h.confirm_ok(&card, &tx.id, &card.sign(&payload)).await;

    // First attempt fails at once; the retry waits 1 s of (injected) time.
    let first = wait_until(&h, |d| d.len() == 1 && d[0].attempts == 1).await;
    assert_eq!(first[0].state, "pending");
    assert_eq!(first[0].last_status, Some(500));
    assert_eq!(first[0].next_attempt_at_unix_s, h.clock.now_unix_s() + 1);
    // Not before its time.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.seen.lock().unwrap().len(), 1);

    h.clock.advance(1);
    let second = wait_until(&h, |d| d[0].attempts == 2).await;
    assert_eq!(second[0].state, "pending");
    // The second wait doubles.
    assert_eq!(second[0].next_attempt_at_unix_s, h.clock.now_unix_s() + 2);
    h.clock.advance(2);
    let done = wait_until(&h, |d| d[0].state == "delivered").await;
    assert_eq!(done[0].attempts, 3);

    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let ids: Vec<String> = seen
        .iter()
        .map(|(signature, body)| {
            assert!(signature_valid(&registered.secret, signature, body));
            serde_json::from_slice::<WebhookEvent>(body).unwrap().id
        })
        .collect();
    assert!(ids.iter().all(|id| id == &done[0].event_id), "{ids:?}");
}

#[tokio::test]
async fn bad_urls_are_refused_and_removal_stops_delivery() {
    let (h, terminal, _card) = Harness::standard().await;
    for bad in ["ftp://x/", "not a url", "https://u:p@x/"] {
        let r = h
            .http
            .put(h.url("/v1/webhook"))
            .bearer_auth(&terminal.api_key)
            .json(&json!({ "url": bad }))
            .send()
            .await
            .unwrap();
        let (status, body) = error_body(r).await;
        assert_eq!(
            (status, body.error.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
    }
    let (_receiver, url) = start_receiver(0).await;
    register(&h, &terminal.api_key, &url).await;
    let r = h
        .http
        .delete(h.url("/v1/webhook"))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = h
        .http
        .get(h.url("/v1/webhook"))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // No registration, no event queued.
    let tx = h.pay(&terminal, 100).await;
    let r = h
        .confirm(
            &_card.enrolled.credential,
            &tx.id,
            &Confirmation::Declined {
                reason: DeclineReason::Declined,
            },
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(deliveries(&h).await.is_empty());
}
