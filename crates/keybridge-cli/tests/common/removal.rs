//! What the card-removal tests share, whatever the link (vpcd socket or
//! PC/SC): a server with alice (100.00) and a shop (`keybridge_testkit`), a
//! `keybridge card` process that can be pulled out of the field, and the
//! enrolment of that card for alice with a relay serving it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keybridge_proto::AccountId;
use keybridge_relay::{CardLink, CardLinkSpec, Decision, RelayOptions};
use keybridge_terminal::PayRequest;
use keybridge_testkit::{alice_pays_shop, Bank, BankOptions};
use zeroize::Zeroizing;

/// The card's PIN in these tests.
pub const PIN: &str = "246810";
/// Alice's opening balance, in minor units.
pub const ALICE_OPENING: i64 = 10_000;
/// What each test pays, in minor units.
pub const AMOUNT: i64 = 250;

/// A card process; dropping it takes the card out of the field.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `keybridge card --state STATE --link LINK --policy POLICY`
/// (`--init` if asked); returns it and a receiver of its stderr lines. Its
/// stdin is piped and never written: a `prompt` card waits for its holder.
pub fn card(state: &Path, link: &str, policy: &str, init: bool) -> (Killed, Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keybridge"));
    command
        .args(["card", "--state"])
        .arg(state)
        .args(["--link", link, "--policy", policy])
        .env("KEYBRIDGE_CARD_PIN", PIN)
        .env_remove("KEYBRIDGE_LOG")
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
    (child, rx)
}

pub fn wait_for_line(rx: &Receiver<String>, needle: &str, wait: Duration) {
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

/// A server with alice ([`ALICE_OPENING`]) and a shop; confirmations live
/// `ttl_s`.
pub async fn bank(data_dir: &Path, ttl_s: u64) -> Bank {
    let options = BankOptions {
        alice_minor: u64::try_from(ALICE_OPENING).unwrap(),
        confirmation_ttl_s: Some(ttl_s),
        relay_ping_interval_ms: None,
    };
    Bank::open(data_dir, options).await
}

/// A vpcd reader bound at once on a loopback port of its own
/// (`CardLink::vpcd_on_free_port`): the link the card is enrolled through,
/// the spec a relay binds the same port again by once that link is dropped,
/// and `keybridge card`'s `--link` to it.
pub fn vpcd_reader() -> (CardLink, CardLinkSpec, String) {
    let (link, spec, port) = CardLink::vpcd_on_free_port().unwrap();
    (link, spec, format!("vpcd=127.0.0.1:{port}"))
}

/// Enrols the card on `enrol` for alice, with the server of `admin` (`card` is the card process serving
/// that reader, stopped afterwards), then starts a relay that reaches it
/// through `spec` and waits up to `card_wait` for each tap.
pub async fn enrol_and_start_relay(
    admin: &keybridge_terminal::Client,
    enrol: CardLink,
    card: (Killed, Receiver<String>),
    spec: CardLinkSpec,
    card_wait: Duration,
) {
    let credential = enrol_card(admin, enrol, card).await;
    start_relay(credential, spec, card_wait);
}

/// Enrols the card on `enrol` for alice (`card` is the card process serving
/// that reader, stopped afterwards); returns the phone's credential.
pub async fn enrol_card(
    admin: &keybridge_terminal::Client,
    enrol: CardLink,
    card: (Killed, Receiver<String>),
) -> keybridge_relay::DeviceCredential {
    let link = Arc::new(Mutex::new(enrol));
    let (_, credential) = keybridge_relay::enroll(
        admin,
        link.clone(),
        &AccountId::new("alice").unwrap(),
        "nfc card",
        Zeroizing::new(PIN.to_owned()),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    drop(card);
    drop(link);
    credential
}

/// Starts a relay in this process with `credential`, reaching the card
/// through `spec` and waiting up to `card_wait` for each tap.
pub fn start_relay(
    credential: keybridge_relay::DeviceCredential,
    spec: CardLinkSpec,
    card_wait: Duration,
) {
    let options = RelayOptions {
        credential,
        card: spec,
        pin: Some(Zeroizing::new(PIN.to_owned())),
        decision: Decision::Approve,
        tamper: None,
        card_wait,
        applet: None,
        answer_wait: keybridge_relay::SOCKET_ANSWER_WAIT,
        outbox: None,
        silence_max: keybridge_relay::SERVER_SILENCE_MAX,
        ca_cert_pem: None,
        quiet: false,
    };
    tokio::spawn(keybridge_relay::run(options));
}

/// Alice pays the shop [`AMOUNT`]; `order` also names the idempotency key.
pub fn request(order: &str) -> PayRequest {
    alice_pays_shop(u64::try_from(AMOUNT).unwrap(), order, &format!("k-{order}"))
}
