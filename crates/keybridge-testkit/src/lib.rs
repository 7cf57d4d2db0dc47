//! What the integration tests of the relay and the `keybridge` binary share:
//! a real server in-process (loopback HTTP and WebSocket, SQLite in a
//! directory of the test's), with alice and a shop, its admin client and one
//! terminal. Tests panic on any failure here: a broken setup is a failed test.
//!
//! A dev-dependency only. The server crate's own tests have their own harness
//! (they also reach into the store); `keybridge bench` sets up its own bank,
//! with many payers, in `keybridge-cli/src/bench/harness.rs`.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use keybridge_proto::api::{CreateAccount, TransactionStatus};
use keybridge_proto::{AccountId, Currency, Money, TransactionId};
use keybridge_terminal::{Client, PayRequest};

/// A running server with alice and a shop ("Corner Shop"), in CNY.
#[derive(Debug)]
pub struct Bank {
    pub server: keybridge_server::RunningServer,
    pub admin: Client,
    pub terminal: Client,
}

/// How to open a [`Bank`].
#[derive(Debug, Clone, Copy)]
pub struct BankOptions {
    /// Alice's opening balance, minor units; the shop opens with nothing.
    pub alice_minor: u64,
    /// Confirmations live this long (the sweeper then looks every 200 ms);
    /// `None`: the server's default.
    pub confirmation_ttl_s: Option<u64>,
    /// How often the server pings relays; `None`: the server's default.
    pub relay_ping_interval_ms: Option<u64>,
}

impl Bank {
    /// Starts the server with its data in `data_dir`.
    pub async fn open(data_dir: &Path, options: BankOptions) -> Bank {
        let token = "admin-token-for-tests".to_owned();
        let mut config = keybridge_server::ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            data_dir.to_path_buf(),
            token.clone(),
        );
        if let Some(ms) = options.relay_ping_interval_ms {
            config.relay_ping_interval_ms = ms;
        }
        if let Some(ttl_s) = options.confirmation_ttl_s {
            config.confirmation_ttl_s = ttl_s;
            config.sweep_interval_ms = 200;
        }
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let server = keybridge_server::start(config).await.unwrap();
        let url = format!("http://{}", server.addr);
        let admin = Client::new(&url, &token).unwrap();
        for (id, name, balance) in [
            ("alice", "Alice", options.alice_minor),
            ("shop", "Corner Shop", 0),
        ] {
            admin
                .create_account(&CreateAccount {
                    id: AccountId::new(id).unwrap(),
                    display_name: name.into(),
                    currency: cny(),
                    opening_balance_minor: balance,
                })
                .await
                .unwrap();
        }
        let t = admin.create_terminal("till").await.unwrap();
        let terminal = Client::new(&url, &t.api_key).unwrap();
        Bank {
            server,
            admin,
            terminal,
        }
    }

    pub async fn status(&self, id: &TransactionId) -> TransactionStatus {
        self.terminal.get_transaction(id, 0).await.unwrap().status
    }

    pub async fn balance(&self, account: &str) -> i64 {
        self.admin
            .account(&AccountId::new(account).unwrap())
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
}

pub fn cny() -> Currency {
    Currency::from_code("CNY").unwrap()
}

/// Alice pays the shop `amount_minor`; the terminal does not wait for the
/// outcome (`wait_max` 0).
pub fn alice_pays_shop(amount_minor: u64, order: &str, idempotency_key: &str) -> PayRequest {
    PayRequest {
        payer: AccountId::new("alice").unwrap(),
        payee: AccountId::new("shop").unwrap(),
        amount: Money::new(amount_minor, cny()),
        order_id: order.into(),
        description: String::new(),
        idempotency_key: idempotency_key.into(),
        wait_max: Duration::from_secs(0),
    }
}

/// A loopback port to listen on later: below the ephemeral range, so no
/// outgoing connection takes it meanwhile (see `keybridge_transport::port`).
pub fn free_port() -> u16 {
    keybridge_transport::port::listen_port().unwrap()
}
