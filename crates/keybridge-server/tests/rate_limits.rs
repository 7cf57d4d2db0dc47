//! Requests per terminal are limited (`ServerConfig::terminal_rate_per_s`,
//! `keybridge_server::rate`): past a burst of one second's worth a terminal
//! gets 429 `rate_limited` with `Retry-After`, while other terminals carry on
//! and the terminal itself is let in again once time has refilled its
//! allowance. A rate of 0 is no limit.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use keybridge_proto::api::{TerminalCreated, TransactionView};
use keybridge_server::ServerConfig;
use reqwest::StatusCode;

const RATE_LIMITED: &str = "keybridge_rate_limited_total{role=\"terminal\"}";

/// `GET /v1/transactions/{id}` with `key`.
async fn read(h: &Harness, key: &str, id: &str) -> reqwest::Response {
    h.http
        .get(h.url(&format!("/v1/transactions/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// `count` reads of `tx` by `terminal`, 16 at a time; their statuses.
async fn reads(
    h: &Harness,
    terminal: &TerminalCreated,
    tx: &TransactionView,
    count: usize,
) -> Vec<StatusCode> {
    futures_util::stream::iter(0..count)
        .map(|_| async {
            read(h, &terminal.api_key, &tx.id.to_string())
                .await
                .status()
        })
        .buffer_unordered(16)
        .collect()
        .await
}

async fn with_rate(per_s: u32) -> (Harness, TerminalCreated, Card) {
    Harness::start_with(Options {
        terminal_rate_per_s: per_s,
        ..Options::default()
    })
    .await
    .standard_setup()
    .await
}

#[tokio::test]
async fn a_terminal_over_its_rate_is_told_when_to_come_back() {
    let (h, till, _card) = with_rate(3).await;
    let other = h.terminal().await;
    let refused_before = h.metric(RATE_LIMITED).await;
    // The creation is the first of the burst of three.
    let tx = h.pay(&till, 500).await;
    let id = tx.id.to_string();

    // Reads right after: a few let in, then refused. Thirty of them would
    // take ten seconds to fit in three a second.
    let mut admitted = 0;
    let refused = loop {
        let r = read(&h, &till.api_key, &id).await;
        if r.status() != StatusCode::OK {
            break r;
        }
        admitted += 1;
        assert!(admitted < 30, "never refused");
    };
    assert!(
        admitted >= 1,
        "the burst holds three, one went to the creation"
    );
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers()["retry-after"],
        "1",
        "whole seconds, rounded up"
    );
    let (_, body) = error_body(refused).await;
    assert_eq!(body.error, "rate_limited");
    assert!(
        body.message.contains("more than 3 requests a second"),
        "{}",
        body.message
    );
    assert!(h.metric(RATE_LIMITED).await > refused_before);

    // Another terminal is not held back by this one's count.
    let r = h.create(&other.api_key, "other-1", payment(100)).await;
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );

    // A wrong key is still a 401, not counted against anyone.
    let r = read(&h, "not-a-key", &id).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // After the wait the server asked for, the terminal is let in again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = read(&h, &till.api_key, &id).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_default_rate_refuses_a_flood_and_zero_refuses_nothing() {
    // 400 reads, 16 at a time: at the default 100 a second (burst 100) they
    // would have to take three seconds to all get in.
    let (h, till, _card) = with_rate(ServerConfig::TERMINAL_RATE_PER_S_DEFAULT).await;
    let tx = h.pay(&till, 500).await;
    let statuses = reads(&h, &till, &tx, 400).await;
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(refused > 0, "no read refused");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(statuses.len() - refused >= 100, "the burst of 100 got in");

    let (h, till, _card) = with_rate(0).await;
    let tx = h.pay(&till, 500).await;
    let statuses = reads(&h, &till, &tx, 400).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}
