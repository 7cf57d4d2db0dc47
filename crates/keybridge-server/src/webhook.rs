//! Webhooks: signed outcome events POSTed to a terminal's callback URL.
//!
//! The event is queued by a database trigger in the same transaction that
//! ends the payment (migration `0005_webhooks.sql`), so no outcome is lost
//! between commit and delivery. This worker reads due events, signs and
//! POSTs them, and records each attempt. Retries back off exponentially
//! (1 s, 2 s, 4 s … capped at [`BACKOFF_S_MAX`]) for at most [`ATTEMPTS_MAX`]
//! attempts; then the event is `failed` and stays visible in the admin API.
//!
//! Signature: `KeyBridge-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! Receivers check it in constant time, refuse old `t` (replays), and
//! deduplicate on the event id (header `KeyBridge-Event-Id` and body `id`):
//! delivery is at least once, because a receiver may succeed and the answer
//! still be lost.

use std::time::Duration;

use futures_util::StreamExt;
use keybridge_proto::api::{WebhookDeliveryView, WebhookEvent};

use crate::hub::shutdown_begun;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::{AttemptResult, DeliveryRecord, DeliveryState, StoreError};

pub const SIGNATURE_HEADER: &str = "KeyBridge-Signature";
pub const EVENT_ID_HEADER: &str = "KeyBridge-Event-Id";
/// Attempts per event, the first included.
pub const ATTEMPTS_MAX: u32 = 8;
pub const BACKOFF_S_BASE: u64 = 1;
pub const BACKOFF_S_MAX: u64 = 300;
/// Events taken per pass, all delivered concurrently: a pass is one round
/// of requests, so it lasts at most about [`REQUEST_TIMEOUT_S`], which
/// bounds how long an instance must hold the events it took
/// (`store::postgres::web::CLAIM_S`).
const BATCH_LEN_MAX: u32 = 8;
const CONCURRENT_MAX: usize = BATCH_LEN_MAX as usize;
/// Least time between two passes; bounds the store queries, not delivery.
const PASS_SPACING_MS: u64 = 10;
pub(crate) const REQUEST_TIMEOUT_S: u64 = 10;
/// Error text kept per attempt; receivers' bodies are not stored.
const ERROR_LEN_MAX: usize = 200;
/// URLs are registered by terminals; keep them to a sane size.
pub const URL_LEN_MAX: usize = 2048;

/// `t=<t>,v1=<hex>` for `body` signed with `secret` at `t`.
pub fn signature_header(secret: &str, t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(sign(secret, t, body)))
}

fn signed_bytes(t: u64, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    message
}

fn sign(secret: &str, t: u64, body: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, &signed_bytes(t, body))
        .as_ref()
        .to_vec()
}

/// Checks a `KeyBridge-Signature` header for `body`, in constant time, and
/// that `t` is within `tolerance_s` of `now_unix_s`. For receivers written in Rust.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix_s: u64,
    tolerance_s: u64,
) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if t.abs_diff(now_unix_s) > tolerance_s {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, &signed_bytes(t, body), &v1).is_ok()
}

/// Seconds to wait after `attempts` failed attempts (1, 2, 4 … ≤ max).
pub fn backoff_s(attempts: u32) -> u64 {
    let shift = attempts.saturating_sub(1).min(20);
    (BACKOFF_S_BASE << shift).min(BACKOFF_S_MAX)
}

pub fn delivery_view(d: &DeliveryRecord) -> WebhookDeliveryView {
    WebhookDeliveryView {
        event_id: d.event_id.clone(),
        terminal_id: d.terminal_id.clone(),
        transaction_id: d.transaction_id,
        url: d.url.clone(),
        state: d.state.as_str().to_owned(),
        attempts: d.attempts,
        next_attempt_at_unix_s: d.next_attempt_at_unix_s,
        last_status: d.last_status,
        last_error: d.last_error.clone(),
        created_at_unix_s: d.created_at_unix_s,
        delivered_at_unix_s: d.delivered_at_unix_s,
    }
}

/// Checks a callback URL: `http`/`https`, a host, bounded length, no credentials.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    if url.is_empty() || url.len() > URL_LEN_MAX {
        return Err("url must be 1 to 2048 bytes");
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| "url is not a valid URL")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("url must be http or https");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("url must name a host");
    }
    // Credentials in the URL would be stored and shown in the admin API.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url must not carry credentials");
    }
    Ok(())
}

/// The delivery worker: runs until shutdown. Woken by the clock tick and by
/// transaction ends (several ends, one wake-up), so a fresh outcome goes out
/// within `PASS_SPACING_MS` of its commit. It must be the only caller of
/// [`crate::hub::Hub::some_ended`].
pub async fn run(state: AppState) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(REQUEST_TIMEOUT_S))
        // A redirect could send a signed event somewhere not registered.
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are off");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(state.sweep_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = shutdown_begun(state.hub.shutdown_signal());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
            // Ends since the last pass, however many, make one pass.
            () = state.hub.some_ended() => {}
        }
        // A full batch means more may be due: go again without waiting.
        loop {
            match deliver_due(&state, &http).await {
                Ok(n) if n == BATCH_LEN_MAX as usize => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "webhook pass failed");
                    break;
                }
            }
        }
        // Under load, ends arrive faster than passes are worth making: at
        // most one pass per spacing (each is a store query).
        tokio::time::sleep(Duration::from_millis(PASS_SPACING_MS)).await;
    }
}

/// Delivers every due event once; returns how many were attempted.
pub async fn deliver_due(state: &AppState, http: &reqwest::Client) -> Result<usize, StoreError> {
    let due = state
        .store
        .due_deliveries(state.now_unix_s(), BATCH_LEN_MAX)
        .await?;
    let count = due.len();
    let results: Vec<Result<(), StoreError>> = futures_util::stream::iter(due)
        .map(|d| attempt(state, http, d))
        .buffer_unordered(CONCURRENT_MAX)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(count)
}

fn event_type(status: keybridge_proto::api::TransactionStatus) -> String {
    format!("transaction.{}", status.as_str())
}

fn truncate(mut text: String) -> String {
    if text.len() > ERROR_LEN_MAX {
        let mut end = ERROR_LEN_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

async fn attempt(
    state: &AppState,
    http: &reqwest::Client,
    d: DeliveryRecord,
) -> Result<(), StoreError> {
    let attempts = d.attempts.saturating_add(1);
    let now = state.now_unix_s();
    let give_up = |error: String| AttemptResult {
        event_id: d.event_id.clone(),
        state: DeliveryState::Failed,
        attempts,
        next_attempt_at_unix_s: now,
        last_status: None,
        last_error: Some(error),
        now_unix_s: now,
    };
    let Some(hook) = state.store.get_webhook(&d.terminal_id).await? else {
        Metrics::webhook_attempt("unregistered");
        return state
            .store
            .record_attempt(give_up("the terminal removed its webhook".into()))
            .await;
    };
    let Some(transaction) = state.store.get_transaction(&d.transaction_id).await? else {
        return Err(StoreError::Corrupt(format!(
            "webhook event {} names a missing transaction",
            d.event_id
        )));
    };
    let event = WebhookEvent {
        id: d.event_id.clone(),
        event_type: event_type(transaction.status),
        created_at_unix_s: d.created_at_unix_s,
        transaction: transaction.view(),
    };
    let body = serde_json::to_vec(&event)
        .map_err(|e| StoreError::Backend(format!("serialising a webhook event: {e}")))?;
    let signature = signature_header(&hook.secret, now, &body);
    let sent = http
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(EVENT_ID_HEADER, &d.event_id)
        .body(body)
        .send()
        .await;
    let (status, error) = match sent {
        Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
        Ok(r) => (
            Some(r.status().as_u16()),
            Some(format!("receiver answered HTTP {}", r.status().as_u16())),
        ),
        // reqwest's error text names the URL and the cause, never our secret.
        Err(e) => (None, Some(truncate(format!("{e}")))),
    };
    let result = match error {
        None => {
            Metrics::webhook_attempt("delivered");
            tracing::info!(event = %d.event_id, transaction = %d.transaction_id, attempts, "webhook delivered");
            AttemptResult {
                event_id: d.event_id.clone(),
                state: DeliveryState::Delivered,
                attempts,
                next_attempt_at_unix_s: now,
                last_status: status,
                last_error: None,
                now_unix_s: now,
            }
        }
        Some(error) if attempts >= ATTEMPTS_MAX => {
            Metrics::webhook_attempt("gave_up");
            tracing::warn!(event = %d.event_id, attempts, %error, "webhook failed for good");
            AttemptResult {
                last_status: status,
                ..give_up(error)
            }
        }
        Some(error) => {
            Metrics::webhook_attempt("retry");
            let wait_s = backoff_s(attempts);
            tracing::info!(event = %d.event_id, attempts, wait_s, %error, "webhook attempt failed; will retry");
            AttemptResult {
                event_id: d.event_id.clone(),
                state: DeliveryState::Pending,
                attempts,
                next_attempt_at_unix_s: now.saturating_add(wait_s),
                last_status: status,
                last_error: Some(error),
                now_unix_s: now,
            }
        }
    };
    state.store.record_attempt(result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let waits: Vec<u64> = (1..=ATTEMPTS_MAX).map(backoff_s).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 128]);
        assert_eq!(backoff_s(40), BACKOFF_S_MAX);
        assert_eq!(backoff_s(u32::MAX), BACKOFF_S_MAX);
    }

    #[test]
    fn signatures_verify_and_reject_changes() {
        let body = br#"{"id":"evt_1"}"#;
        let header = signature_header("whsec_k", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert!(verify_signature(
            "whsec_k",
            &header,
            body,
            1_700_000_010,
            300
        ));
        // Another key, another body, a stale timestamp, garbage: all refused.
        assert!(!verify_signature(
            "whsec_x",
            &header,
            body,
            1_700_000_010,
            300
        ));
        assert!(!verify_signature(
            "whsec_k",
            &header,
            b"{}",
            1_700_000_010,
            300
        ));
        assert!(!verify_signature(
            "whsec_k",
            &header,
            body,
            1_700_001_000,
            300
        ));
        assert!(!verify_signature("whsec_k", "t=x,v1=zz", body, 0, u64::MAX));
    }

    #[test]
    fn callback_urls_are_checked() {
        assert!(check_url("https://shop.example/hooks/keybridge").is_ok());
        assert!(check_url("http://127.0.0.1:9000/").is_ok());
        for bad in [
            "",
            "ftp://x/",
            "not a url",
            "https://user:pw@x/",
            "file:///etc/passwd",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://x/{}", "a".repeat(URL_LEN_MAX))).is_err());
    }
}
