//! Clients that connect and then take their time. Each must send its request
//! head, finish its TLS handshake and send its body within the server's read
//! timeout, or lose the connection (a late body gets 408 first). Before
//! `src/serve.rs`, every one of these sockets stayed open for as long as the
//! client liked; `keybridge-cli/tests/slow_clients.rs` shows what that did to
//! a server with a limited number of file descriptors.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config_in, payment, Harness, Options};
use keybridge_proto::api::TransactionView;
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_TIMEOUT_S: u64 = 1;
/// Far past the read timeout: a connection still open by then was never
/// going to be closed.
const PATIENCE: Duration = Duration::from_secs(10);

async fn server() -> Harness {
    Harness::start_with(Options {
        read_timeout_s: READ_TIMEOUT_S,
        ..Options::default()
    })
    .await
}

async fn connect(h: &Harness) -> TcpStream {
    TcpStream::connect(h.server().addr).await.unwrap()
}

/// Reads until the server closes the connection: what it sent, and how long
/// after `since` it closed.
async fn until_closed(stream: &mut (impl AsyncRead + Unpin), since: Instant) -> (String, Duration) {
    let mut got = Vec::new();
    // A reset counts as closed as much as an orderly end does.
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(read.is_ok(), "still open after {PATIENCE:?}; got {got:?}");
    (got, since.elapsed())
}

const HEAD_TIMEOUTS: &str = r#"keybridge_read_timeouts_total{stage="head"}"#;
const BODY_TIMEOUTS: &str = r#"keybridge_read_timeouts_total{stage="body"}"#;
const TLS_TIMEOUTS: &str = r#"keybridge_read_timeouts_total{stage="tls"}"#;
const CONNECTIONS: &str = "keybridge_http_connections_open";

/// Connects, sends `bytes`, and reads until the server closes: what it
/// sent, and how long after connecting it closed.
async fn send_then_wait_for_close(h: &Harness, bytes: &[u8]) -> (String, Duration) {
    let since = Instant::now();
    let mut stream = connect(h).await;
    stream.write_all(bytes).await.unwrap();
    until_closed(&mut stream, since).await
}

/// Closed by the read timeout, not at once (a refusal) and not much later.
fn closed_by_the_timeout(after: Duration) {
    let timeout = Duration::from_secs(READ_TIMEOUT_S);
    assert!(
        after >= timeout - Duration::from_millis(100) && after < timeout * 4,
        "closed after {after:?}, the read timeout is {timeout:?}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let h = server().await;
    let timeouts = h.metric(HEAD_TIMEOUTS).await;
    let since = Instant::now();
    let mut stream = connect(&h).await;
    // Counted while open (other tests' connections only add to the gauge).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.metric(CONNECTIONS).await >= 1.0);
    let (got, after) = until_closed(&mut stream, since).await;
    assert_eq!(got, "");
    closed_by_the_timeout(after);
    assert!(h.metric(HEAD_TIMEOUTS).await > timeouts);
}

#[tokio::test]
async fn a_request_head_sent_by_halves_is_closed() {
    let h = server().await;
    let (got, after) = send_then_wait_for_close(&h, b"GET /healthz HTTP/1.1\r\nHost: kb\r\n").await;
    assert!(!got.contains("200 OK"), "{got}");
    closed_by_the_timeout(after);
}

#[tokio::test]
async fn a_kept_alive_connection_left_idle_is_closed_after_its_answer() {
    let h = server().await;
    let (got, after) =
        send_then_wait_for_close(&h, b"GET /healthz HTTP/1.1\r\nHost: kb\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    closed_by_the_timeout(after);
}

#[tokio::test]
async fn a_trickled_body_gets_408_and_creates_nothing() {
    let (h, terminal, _card) = server().await.standard_setup().await;
    let body = payment(500).to_string();
    let head = format!(
        "POST /v1/transactions HTTP/1.1\r\nHost: kb\r\nAuthorization: Bearer {}\r\n\
         Idempotency-Key: slow-1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        terminal.api_key,
        body.len()
    );
    let timeouts = h.metric(BODY_TIMEOUTS).await;
    let (mut read, mut write) = connect(&h).await.into_split();
    let since = Instant::now();
    write.write_all(head.as_bytes()).await.unwrap();
    // One byte every 100 ms: each piece comes well within the timeout, the
    // whole body (some 100 bytes, 10 s) far outside it.
    let trickle = tokio::spawn(async move {
        for byte in body.into_bytes() {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (got, after) = until_closed(&mut read, since).await;
    trickle.abort();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains(r#""error":"request_timeout""#), "{got}");
    closed_by_the_timeout(after);
    assert!(h.metric(BODY_TIMEOUTS).await > timeouts);

    let listed = h.transactions().await;
    assert!(listed.is_empty(), "{listed:?}");
    h.assert_ledger_balanced().await;
}

#[tokio::test]
async fn a_long_poll_outlives_the_read_timeout() {
    let (h, terminal, _card) = server().await.standard_setup().await;
    let created: TransactionView = h
        .create(&terminal.api_key, "wait-1", payment(500))
        .await
        .json()
        .await
        .unwrap();
    let start = Instant::now();
    let r = h
        .http
        .get(h.url(&format!("/v1/transactions/{}?wait=3", created.id)))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let view: TransactionView = r.json().await.unwrap();
    assert_eq!(view.id, created.id);
    assert!(
        start.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        start.elapsed()
    );
}

/// TLS: a connection that never starts the handshake, and one that finishes
/// it and then sends nothing, are both closed; a prompt client is served.
#[tokio::test]
async fn over_tls_a_silent_connection_is_closed_before_and_after_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let tls = keybridge_server::tls::write_self_signed(dir.path(), &["localhost".into()]).unwrap();
    let mut config = config_in(dir.path());
    config.tls = Some(tls.clone());
    config.read_timeout_s = READ_TIMEOUT_S;
    // The metrics, from a plain-HTTP server in this process: they are global.
    let plain = server().await;
    let server = keybridge_server::start(config).await.unwrap();
    let (tls_timeouts, head_timeouts) = (
        plain.metric(TLS_TIMEOUTS).await,
        plain.metric(HEAD_TIMEOUTS).await,
    );

    let since = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let (got, after) = until_closed(&mut silent, since).await;
    assert_eq!(got, "");
    closed_by_the_timeout(after);
    assert!(plain.metric(TLS_TIMEOUTS).await > tls_timeouts);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&tls.cert_pem).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from("localhost").unwrap();

    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut quiet = connector.connect(name.clone(), tcp).await.unwrap();
    let since = Instant::now();
    let (got, after) = until_closed(&mut quiet, since).await;
    assert_eq!(got, "");
    closed_by_the_timeout(after);
    assert!(plain.metric(HEAD_TIMEOUTS).await > head_timeouts);

    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut prompt = connector.connect(name, tcp).await.unwrap();
    prompt
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = until_closed(&mut prompt, Instant::now()).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    server.shutdown().await;
}

/// Stopping the server waits for requests in flight, not for clients that
/// have not sent one: a quiet connection, plain or mid-TLS-handshake, does
/// not hold up a shutdown for the read timeout.
#[tokio::test]
async fn shutting_down_does_not_wait_for_quiet_clients() {
    for tls in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path());
        if tls {
            config.tls = Some(
                keybridge_server::tls::write_self_signed(dir.path(), &["localhost".into()])
                    .unwrap(),
            );
        }
        config.read_timeout_s = 60;
        let server = keybridge_server::start(config).await.unwrap();
        let quiet = TcpStream::connect(server.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        tokio::time::timeout(PATIENCE, server.shutdown())
            .await
            .unwrap_or_else(|_| panic!("tls {tls}: shutdown still waiting after {PATIENCE:?}"));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "tls {tls}: {:?}",
            start.elapsed()
        );
        drop(quiet);
    }
}
