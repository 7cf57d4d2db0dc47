//! What the card-removal tests share, whatever the link (vpcd socket or
//! PC/SC): a server with alice (100.00) and a shop, a `keybridge card`
//! process that can be pulled out of the field, and the enrolment of that
//! card for alice with a relay serving it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keybridge_proto::api::{CreateAccount, TransactionStatus};
use keybridge_proto::{AccountId, Currency, Money, TransactionId};
use keybridge_relay::{CardLink, CardLinkSpec, Decision, RelayOptions};
use keybridge_terminal::{Client, PayRequest};
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

/// A running server with alice and a shop, its admin and one terminal.
pub struct Bank {
    _server: keybridge_server::RunningServer,
    pub admin: Client,
    pub terminal: Client,
}

impl Bank {
    /// Confirmations live `ttl_s`; the sweeper looks every 200 ms.
    pub async fn open(data_dir: &Path, ttl_s: u64) -> Bank {
        let token = "admin-token-for-removal-tests".to_owned();
        let mut config = keybridge_server::ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            data_dir.to_path_buf(),
            token.clone(),
        );
        config.confirmation_ttl_s = ttl_s;
        config.sweep_interval_ms = 200;
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let server = keybridge_server::start(config).await.unwrap();
        let url = format!("http://{}", server.addr);
        let admin = Client::new(&url, &token).unwrap();
        for (id, balance) in [("alice", ALICE_OPENING), ("shop", 0)] {
            admin
                .create_account(&CreateAccount {
                    id: AccountId::new(id).unwrap(),
                    display_name: id.to_uppercase(),
                    currency: cny(),
                    opening_balance_minor: u64::try_from(balance).unwrap(),
                })
                .await
                .unwrap();
        }
        let t = admin.create_terminal("till").await.unwrap();
        let terminal = Client::new(&url, &t.api_key).unwrap();
        Bank {
            _server: server,
            admin,
            terminal,
        }
    }

    pub async fn status(&self, id: &TransactionId) -> TransactionStatus {
        self.terminal.get_transaction(id, 0).await.unwrap().status
    }

    pub async fn balance(&self, id: &str) -> i64 {
        self.admin
            .account(&AccountId::new(id).unwrap())
            .await
            .unwrap()
            .balance_minor
    }

    /// Waits up to `wait` for the transaction to leave `pending`; its status.
    pub async fn wait_until_ended(&self, id: &TransactionId, wait: Duration) -> TransactionStatus {
        let deadline = Instant::now() + wait;
        while self.status(id).await == TransactionStatus::Pending && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.status(id).await
    }

    /// Enrols the card on `enrol` for alice (`card` is the card process
    /// serving that reader, stopped afterwards), then starts a relay that
    /// reaches it through `spec` and waits up to `card_wait` for each tap.
    pub async fn enrol_and_start_relay(
        &self,
        enrol: CardLink,
        card: (Killed, Receiver<String>),
        spec: CardLinkSpec,
        card_wait: Duration,
    ) {
        let link = Arc::new(Mutex::new(enrol));
        let (_, credential) = keybridge_relay::enroll(
            &self.admin,
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
        let options = RelayOptions {
            credential,
            card: spec,
            pin: Some(Zeroizing::new(PIN.to_owned())),
            decision: Decision::Approve,
            tamper: None,
            card_wait,
            applet: None,
            answer_wait: keybridge_relay::SOCKET_ANSWER_WAIT,
            ca_cert_pem: None,
            quiet: false,
        };
        tokio::spawn(keybridge_relay::run(options));
    }
}

fn cny() -> Currency {
    Currency::from_code("CNY").unwrap()
}

/// Alice pays the shop [`AMOUNT`]; `order` is also the idempotency key.
pub fn request(order: &str) -> PayRequest {
    PayRequest {
        payer: AccountId::new("alice").unwrap(),
        payee: AccountId::new("shop").unwrap(),
        amount: Money::new(u64::try_from(AMOUNT).unwrap(), cny()),
        order_id: order.into(),
        description: String::new(),
        idempotency_key: format!("k-{order}"),
        wait_max: Duration::from_secs(0),
    }
}
