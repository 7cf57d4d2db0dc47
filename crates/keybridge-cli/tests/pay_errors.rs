//! What `keybridge pay` does when it cannot pay: which failures it waits
//! out (a server restarting, tested in `crash.rs`) and which it reports at
//! once, because sending the request again cannot help.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keybridge_terminal::Client;

const ADMIN_TOKEN: &str = "pay-errors-admin-token-0123456789";

/// A server over HTTPS with a self-signed certificate the till was not
/// given: every handshake fails the same way. `keybridge pay` must say so
/// and exit 1 at once, not retry it as a network blip until `--wait-s`
/// (60 s here); like every failure, it names the idempotency key that
/// retries safely once the certificate is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let tls = keybridge_server::tls::write_self_signed(dir.path(), &["localhost".into()]).unwrap();
    let mut config = keybridge_server::ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("server"),
        ADMIN_TOKEN.into(),
    );
    config.tls = Some(tls.clone());
    let server = keybridge_server::start(config).await.unwrap();
    let url = format!("https://localhost:{}", server.addr.port());

    // The library's view: refused TLS is not worth a retry; refused TCP is.
    let untrusting = Client::new(&url, ADMIN_TOKEN).unwrap();
    let refused = untrusting.accounts().await.unwrap_err();
    assert!(
        !refused.is_transient() && refused.is_tls_refused(),
        "{refused:?}"
    );
    let closed = keybridge_transport::port::listen_port().unwrap();
    let nobody = Client::new(&format!("http://127.0.0.1:{closed}"), ADMIN_TOKEN).unwrap();
    let unreachable = nobody.accounts().await.unwrap_err();
    assert!(
        unreachable.is_transient() && !unreachable.is_tls_refused(),
        "{unreachable:?}"
    );
    // Trusted, the same server answers: the failure above was the trust.
    let pem = std::fs::read(&tls.cert_pem).unwrap();
    let trusting = Client::with_ca_pem(&url, ADMIN_TOKEN, Some(&pem)).unwrap();
    trusting.accounts().await.unwrap();

    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_keybridge"))
            .args(["pay", "--server", &url, "--from", "alice", "--to", "shop"])
            .args(["--amount", "2.50", "--currency", "CNY", "--order", "O-TLS"])
            .args(["--idempotency-key", "k-O-TLS", "--wait-s", "60"])
            .env("KEYBRIDGE_API_KEY", "kbt_unused")
            .env("KEYBRIDGE_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run keybridge pay")
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("certificate") && stdout.contains("--idempotency-key k-O-TLS"),
        "{stdout}"
    );
    // Retrying it would have taken the whole minute; no retry was logged.
    assert!(took < Duration::from_secs(30), "gave up after {took:?}");
    assert!(!stderr.contains("sending the request again"), "{stderr}");
    server.shutdown().await;
}

/// A server that accepts the connection and never answers (hung, or behind
/// a proxy that lost its upstream): `keybridge pay --wait-s 3` sends the
/// request again within its wait and then gives up as it says it will,
/// exit 1 with the idempotency key, instead of waiting forever on the
/// first request (which had no time limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_given_up_on_within_the_wait() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Accepts and holds every connection, reads nothing, answers nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["pay", "--server", &url, "--from", "alice", "--to", "shop"])
        .args(["--amount", "2.50", "--currency", "CNY", "--order", "O-HUNG"])
        .args(["--idempotency-key", "k-O-HUNG", "--wait-s", "3"])
        .env("KEYBRIDGE_API_KEY", "kbt_unused")
        .env("KEYBRIDGE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keybridge pay");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("keybridge pay --wait-s 3 still waiting after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("--idempotency-key k-O-HUNG"), "{stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after {:?}",
        started.elapsed()
    );
}
