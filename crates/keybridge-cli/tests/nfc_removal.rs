//! The NFC case over the real PC/SC stack: the phone reaches the card through
//! pcscd (as it reaches an NFC reader), the card is `keybridge card` attached
//! to pcscd's vpcd. The card leaves the field in the middle of SIGN (its
//! process is killed while the holder is being asked): the transaction stays
//! pending on the server; the card is tapped again (the process restarted on
//! the same state) and the payment settles exactly once.
//!
//! Holds the vpcd lock for the whole test (pcscd is one daemon with fixed
//! vpcd ports). Under `CI=true` a missing tool or daemon fails the test.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keybridge_proto::api::{CreateAccount, TransactionStatus};
use keybridge_proto::{AccountId, Currency, Money};
use keybridge_relay::{CardLink, CardLinkSpec, Decision, RelayOptions};
use keybridge_terminal::{Client, PayRequest};
use keybridge_transport::pcsc::PcscReader;
use keybridge_transport::pcscd::{self, Pcscd, VpcdLock};
use zeroize::Zeroizing;

const PIN: &str = "246810";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until pcscd no longer lists a card in the virtual reader (a card
/// process just stopped takes pcscd a poll to notice).
fn wait_until_empty() {
    PcscReader::new(None)
        .wait_until_empty(pcscd::VPCD_READER_NAME, Duration::from_secs(10))
        .expect("the virtual reader empties");
}

/// Starts `keybridge card` attached to pcscd's vpcd with `policy`; returns it
/// and a receiver of its stderr lines.
fn card(
    state: &std::path::Path,
    policy: &str,
    init: bool,
) -> (Killed, std::sync::mpsc::Receiver<String>) {
    wait_until_empty();
    // pcscd's vpcd driver takes a moment after noticing a card left before
    // it accepts the next one.
    std::thread::sleep(Duration::from_millis(1500));
    let mut command = Command::new(env!("CARGO_BIN_EXE_keybridge"));
    command
        .args(["card", "--state"])
        .arg(state)
        .args([
            "--link",
            &format!("vpcd={}", pcscd::VPCD_ADDR),
            "--policy",
            policy,
        ])
        .env("KEYBRIDGE_CARD_PIN", PIN)
        .env_remove("KEYBRIDGE_LOG")
        // Piped and never written: a `prompt` card waits for its holder.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if init {
        command.arg("--init");
    }
    let mut child = Killed(command.spawn().expect("start keybridge card"));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Present in pcscd before anyone talks to it.
    let mut probe = PcscReader::new(None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(probe.card_present(pcscd::VPCD_READER_NAME), Ok(true)) {
        assert!(
            Instant::now() < deadline,
            "the card never appeared in pcscd"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, rx)
}

fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line.contains(needle) {
                return;
            }
            seen.push(line);
        }
    }
    panic!(
        "card never printed {needle:?}; it printed:\n{}",
        seen.join("\n")
    );
}

fn pcsc_spec() -> CardLinkSpec {
    CardLinkSpec::Pcsc(Some(pcscd::VPCD_READER_NAME.to_owned()))
}

struct World {
    dir: tempfile::TempDir,
    _server: keybridge_server::RunningServer,
    admin: Client,
    terminal: Client,
    state: std::path::PathBuf,
}

async fn world(dir: tempfile::TempDir, ttl_s: u64) -> World {
    let token = "admin-token-for-nfc-removal".to_owned();
    let mut config = keybridge_server::ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("server"),
        token.clone(),
    );
    config.confirmation_ttl_s = ttl_s;
    config.sweep_interval_ms = 200;
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let server = keybridge_server::start(config).await.unwrap();
    let url = format!("http://{}", server.addr);
    let admin = Client::new(&url, &token).unwrap();
    let cny = Currency::from_code("CNY").unwrap();
    for (id, balance) in [("alice", 10_000), ("shop", 0)] {
        admin
            .create_account(&CreateAccount {
                id: AccountId::new(id).unwrap(),
                display_name: id.to_uppercase(),
                currency: cny,
                opening_balance_minor: balance,
            })
            .await
            .unwrap();
    }
    let t = admin.create_terminal("till").await.unwrap();
    let terminal = Client::new(&url, &t.api_key).unwrap();
    let state = dir.path().join("card.json");
    World {
        dir,
        _server: server,
        admin,
        terminal,
        state,
    }
}

/// Enrols the card over PC/SC (approve policy, stopped afterwards) and starts
/// the relay on the PC/SC link.
async fn enrol_and_start_relay(w: &World) {
    let link = Arc::new(Mutex::new(CardLink::open(&pcsc_spec()).unwrap()));
    let enrolling = card(&w.state, "approve", true);
    let (_, credential) = keybridge_relay::enroll(
        &w.admin,
        link.clone(),
        &AccountId::new("alice").unwrap(),
        "nfc card",
        Zeroizing::new(PIN.to_owned()),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    drop(enrolling);
    drop(link);
    let options = RelayOptions {
        credential,
        card: pcsc_spec(),
        pin: Some(Zeroizing::new(PIN.to_owned())),
        decision: Decision::Approve,
        tamper: None,
        card_wait: Duration::from_secs(15),
        applet: None,
        answer_wait: keybridge_relay::SOCKET_ANSWER_WAIT,
        ca_cert_pem: None,
        quiet: false,
    };
    tokio::spawn(keybridge_relay::run(options));
}

async fn status(w: &World, id: &keybridge_proto::TransactionId) -> TransactionStatus {
    w.terminal.get_transaction(id, 0).await.unwrap().status
}

async fn balance(w: &World, id: &str) -> i64 {
    w.admin
        .account(&AccountId::new(id).unwrap())
        .await
        .unwrap()
        .balance_minor
}

fn request() -> PayRequest {
    PayRequest {
        payer: AccountId::new("alice").unwrap(),
        payee: AccountId::new("shop").unwrap(),
        amount: Money::new(250, Currency::from_code("CNY").unwrap()),
        order_id: "O-NFC-PCSC".into(),
        description: String::new(),
        idempotency_key: "k-nfc-pcsc".into(),
        wait_max: Duration::from_secs(0),
    }
}

/// Removed mid-SIGN over PC/SC, tapped again: pending meanwhile, then
/// settled exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_removed_mid_sign_over_pcsc_then_tapped_again_settles_once() {
    if common::require_stack("card_removed_mid_sign_over_pcsc_then_tapped_again_settles_once")
        .is_none()
    {
        return;
    }
    let _lock = VpcdLock::acquire(Duration::from_secs(600)).expect("vpcd lock");
    let dir = tempfile::tempdir().unwrap();
    let _pcscd = Pcscd::ensure(Some(&dir.path().join("pcscd.log"))).expect("pcscd");
    let w = world(dir, 90).await;
    enrol_and_start_relay(&w).await;

    // The holder is asked and never answers: the card sits inside SIGN.
    let (asking, lines) = card(&w.state, "prompt", false);
    let created = keybridge_terminal::pay(&w.terminal, &request(), |_| {})
        .await
        .unwrap()
        .created;
    // The screen's last text line; the question follows without a newline.
    wait_for_line(&lines, "| via ", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(asking); // taken out of the field mid-SIGN
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(status(&w, &created.id).await, TransactionStatus::Pending);
    assert_eq!(balance(&w, "alice").await, 10_000);
    assert_eq!(balance(&w, "shop").await, 0);

    // Tapped again: the relay's next attempt finds it through pcscd.
    let (_back, _lines) = card(&w.state, "approve", false);
    let deadline = Instant::now() + Duration::from_secs(45);
    while status(&w, &created.id).await == TransactionStatus::Pending && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pcscd_log = std::fs::read_to_string(w.dir.path().join("pcscd.log")).unwrap_or_default();
    assert_eq!(
        status(&w, &created.id).await,
        TransactionStatus::Settled,
        "pcscd log (if started here):\n{pcscd_log}"
    );
    let devices = w.admin.devices().await.unwrap();
    assert_eq!(
        devices[0].last_counter, 1,
        "the interrupted SIGN signed nothing"
    );
    // Exactly once: the money moved by one payment, and stays so.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(balance(&w, "alice").await, 10_000 - 250);
    assert_eq!(balance(&w, "shop").await, 250);
    assert_eq!(status(&w, &created.id).await, TransactionStatus::Settled);
}
