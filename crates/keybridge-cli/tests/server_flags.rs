//! Server settings given as flags reach the server (the rules themselves are
//! tested in keybridge-server's and keybridge-relay's tests; this is each
//! flag's path through the command line):
//! - `--pending-per-payer-max 1`: a payer's second waiting payment is
//!   refused with 429 `too_many_pending`;
//! - `--relay-ping-s 7`: a relay's upgrade is answered with the ping
//!   interval it times its patience by (7000 ms);
//! - `--terminal-rate-per-s 1`: a terminal's second request within a second
//!   is refused with 429 `rate_limited` and `Retry-After: 1`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::removal::Killed;
use common::server;
use keybridge_proto::ocra::{OtpauthUri, Suite};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// `keybridge server` with `flags`, and none of the settings' variables.
fn start_server(dir: &Path, flags: &[&str]) -> (Killed, String) {
    let ready = dir.join("ready");
    let mut command = Command::new(env!("CARGO_BIN_EXE_keybridge"));
    command
        .args(["server", "--listen", "127.0.0.1:0"])
        .args(flags)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--ready-file")
        .arg(&ready)
        .env_remove("KEYBRIDGE_DATABASE_URL")
        .env_remove("KEYBRIDGE_PENDING_PER_PAYER_MAX")
        .env_remove("KEYBRIDGE_RELAY_PING_S")
        .env_remove("KEYBRIDGE_TERMINAL_RATE_PER_S")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    server::until_ready(&mut command, &ready)
}

/// POSTs `body` to the admin API path `path` of the server `start_server`
/// ran in `dir`, with the admin token it left there.
async fn admin_post(dir: &Path, base: &str, path: &str, body: Value) -> reqwest::Response {
    let token = std::fs::read_to_string(dir.join("data/admin-token")).unwrap();
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token.trim())
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A new terminal's API key.
async fn terminal_key(dir: &Path, base: &str) -> String {
    let terminal: Value = admin_post(dir, base, "/v1/admin/terminals", json!({"name": "till"}))
        .await
        .json()
        .await
        .unwrap();
    terminal["api_key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_flags_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--pending-per-payer-max", "1", "--relay-ping-s", "7"];
    let (_server, base) = start_server(dir.path(), &flags);
    let http = reqwest::Client::new();
    let admin = |path: &'static str, body: Value| admin_post(dir.path(), &base, path, body);
    for (id, opening) in [("alice", 10_000), ("shop", 0)] {
        let r = admin(
            "/v1/admin/accounts",
            json!({"id": id, "display_name": id, "currency": "CNY", "opening_balance_minor": opening}),
        )
        .await;
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    // A device for alice (an OCRA token: no card needed to be enrolled).
    let uri = OtpauthUri {
        label: "KeyBridge:alice".into(),
        suite: Suite::parse("OCRA-1:HOTP-SHA256-8:C-QH64-T30S").unwrap(),
        secret: b"0123456789abcdef0123456789ABCDEF".to_vec(),
        counter: 0,
    }
    .to_uri();
    let r = admin(
        "/v1/admin/devices/ocra",
        json!({"account": "alice", "uri": uri, "label": "token"}),
    )
    .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let enrolled: Value = r.json().await.unwrap();

    // The device's relay connects: the server says how often it pings.
    let mut upgrade = format!("{}/v1/relay", base.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    let bearer = format!("Bearer {}", enrolled["credential"].as_str().unwrap());
    upgrade
        .headers_mut()
        .insert("Authorization", bearer.parse().unwrap());
    let (_relay, answer) = tokio_tungstenite::connect_async(upgrade).await.unwrap();
    assert_eq!(
        answer.headers()[keybridge_proto::api::PING_INTERVAL_HEADER],
        "7000"
    );
    let api_key = &terminal_key(dir.path(), &base).await;

    let create = |key: &'static str| {
        http.post(format!("{base}/v1/transactions"))
            .bearer_auth(api_key)
            .header("Idempotency-Key", key)
            .json(&json!({
                "payer": "alice", "payee": "shop", "amount_minor": 100,
                "currency": "CNY", "order_id": key, "description": ""
            }))
            .send()
    };
    assert_eq!(create("o-1").await.unwrap().status(), 202);
    let second = create("o-2").await.unwrap();
    assert_eq!(second.status(), 429);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"], "too_many_pending", "{body}");

    // `keybridge pay` takes the 429 for a wait (one payment may end soon),
    // sends the request again with its key until `--wait-s`, then says why
    // it gave up and which key retries the same payment.
    let till = std::process::Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["pay", "--server", &base, "--from", "alice", "--to", "shop"])
        .args(["--amount", "1.00", "--currency", "CNY", "--order", "O-3"])
        .args(["--idempotency-key", "k-O-3", "--wait-s", "2"])
        .env("KEYBRIDGE_API_KEY", api_key)
        .env("KEYBRIDGE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run keybridge pay");
    let stdout = String::from_utf8_lossy(&till.stdout);
    let stderr = String::from_utf8_lossy(&till.stderr);
    assert_eq!(till.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("limit of 1 payments waiting")
            && stdout.contains("--idempotency-key k-O-3"),
        "{stdout}"
    );
    assert!(stderr.contains("sending the request again"), "{stderr}");
}

#[tokio::test]
async fn the_terminal_rate_flag_reaches_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, base) = start_server(dir.path(), &["--terminal-rate-per-s", "1"]);
    let api_key = terminal_key(dir.path(), &base).await;
    let http = reqwest::Client::new();
    // Any terminal request counts; this one is answered 404 once the key
    // is accepted (the terminal has no transaction with that account).
    let read = || {
        http.get(format!("{base}/v1/accounts/nobody"))
            .bearer_auth(&api_key)
            .send()
    };
    assert_eq!(read().await.unwrap().status(), 404);
    let second = read().await.unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
}
