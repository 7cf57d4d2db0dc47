//! A real server on loopback, a reqwest client, a software P-256 "card" and a
//! tokio-tungstenite relay. The software key stands in for the device only in
//! these server-level tests; the real card is exercised end to end elsewhere.
#![allow(dead_code)] // Each test binary uses a different subset of the helpers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use keybridge_proto::api::{
    b64, Confirmation, DeviceEnrolled, ErrorBody, RelayMessage, TerminalCreated, TransactionView,
};
use keybridge_proto::{signed_message, TransactionId};
use keybridge_server::{ManualClock, RunningServer, ServerConfig};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// A guard against a hung test, not a speed assertion.
pub mod chain;

/// A guard against a hung test, not a speed assertion.
pub const GUARD: Duration = Duration::from_secs(20);

pub struct Harness {
    pub server: Option<RunningServer>,
    pub clock: Arc<ManualClock>,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// PostgreSQL instead of SQLite (see [`Harness::another_instance`]).
    pub database_url: Option<String>,
}

pub struct Options {
    pub sweep_interval_ms: u64,
    pub body_limit_bytes: usize,
    pub read_timeout_s: u64,
    pub pending_per_payer_max: u32,
    pub terminal_rate_per_s: u32,
    /// External CA mode when not empty.
    pub trust_anchors: Vec<std::path::PathBuf>,
    pub intermediates: Vec<std::path::PathBuf>,
    pub crl_sources: Vec<String>,
    pub crl_refresh_s: u64,
    /// PostgreSQL instead of SQLite in the data directory.
    pub database_url: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sweep_interval_ms: 50,
            body_limit_bytes: 64 * 1024,
            read_timeout_s: 30,
            pending_per_payer_max: ServerConfig::PENDING_PER_PAYER_MAX_DEFAULT,
            terminal_rate_per_s: ServerConfig::TERMINAL_RATE_PER_S_DEFAULT,
            trust_anchors: Vec::new(),
            intermediates: Vec::new(),
            crl_sources: Vec::new(),
            crl_refresh_s: 300,
            database_url: None,
        }
    }
}

/// A software stand-in for an enrolled card.
pub struct Card {
    pub key: SigningKey,
    pub enrolled: DeviceEnrolled,
    /// The card's signature counter; a `Cell` so signing borrows the card shared.
    pub counter: std::cell::Cell<u32>,
}

impl Card {
    /// Signs `payload ‖ counter` with the next counter value.
    pub fn sign(&self, payload: &[u8]) -> Confirmation {
        self.counter.set(self.counter.get() + 1);
        sign_with(&self.key, payload, self.counter.get())
    }
}

/// What a PIV card's slot 9C answers: ECDSA over SHA-256(payload), no
/// counter (the relay sends 0).
pub fn sign_piv(key: &SigningKey, payload: &[u8]) -> Confirmation {
    let sig: DerSignature = key.sign(payload);
    Confirmation::Signed {
        counter: 0,
        signature: b64::encode(sig.as_bytes()),
    }
}

pub fn sign_with(key: &SigningKey, payload: &[u8], counter: u32) -> Confirmation {
    let sig: DerSignature = key.sign(&signed_message(payload, counter));
    Confirmation::Signed {
        counter,
        signature: b64::encode(sig.as_bytes()),
    }
}

pub fn software_key() -> SigningKey {
    use ring::rand::{SecureRandom, SystemRandom};
    loop {
        let mut seed = [0u8; 32];
        SystemRandom::new().fill(&mut seed).unwrap();
        if let Ok(key) = SigningKey::from_slice(&seed) {
            return key;
        }
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(Options::default()).await
    }

    /// On SQLite in the test's directory, or, with
    /// `KEYBRIDGE_TEST_BACKEND=postgres`, on a fresh PostgreSQL database:
    /// `scripts/test` runs this crate's tests once for each backend.
    pub async fn start_with(mut options: Options) -> Harness {
        if options.database_url.is_none() && on_postgres() {
            options.database_url = Some(
                keybridge_server::store::postgres::scratch::database()
                    .await
                    .unwrap()
                    .expect("KEYBRIDGE_TEST_BACKEND=postgres needs KEYBRIDGE_TEST_POSTGRES"),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        let server = launch(dir.path(), &clock, &options).await;
        let base = format!("http://{}", server.addr);
        Harness {
            server: Some(server),
            clock,
            base,
            http: reqwest::Client::new(),
            dir,
            database_url: options.database_url,
        }
    }

    /// A second server instance on this one's database (PostgreSQL) and data
    /// directory (CA, master key), with the same clock: what a load balancer
    /// would put beside it.
    pub async fn another_instance(&self) -> RunningServer {
        assert!(
            self.database_url.is_some(),
            "instances share PostgreSQL only"
        );
        let options = Options {
            database_url: self.database_url.clone(),
            ..Options::default()
        };
        launch(self.dir.path(), &self.clock, &options).await
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let options = Options {
            database_url: self.database_url.clone(),
            ..Options::default()
        };
        let server = launch(self.dir.path(), &self.clock, &options).await;
        self.base = format!("http://{}", server.addr);
        self.server = Some(server);
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Runs SQL on the server's database with the database's own rights, as
    /// an intruder past the API would: `postgres` on PostgreSQL, `sqlite`
    /// on SQLite (their dialects differ where triggers are concerned).
    pub async fn in_database(&self, postgres: &str, sqlite: &str) {
        match &self.database_url {
            Some(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                client.batch_execute(postgres).await.unwrap();
            }
            None => {
                let path = self.dir.path().join("keybridge.sqlite");
                rusqlite::Connection::open(path)
                    .unwrap()
                    .execute_batch(sqlite)
                    .unwrap();
            }
        }
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub async fn account(&self, id: &str, currency: &str, opening: u64) {
        let r = self
            .admin_post(
                "/v1/admin/accounts",
                json!({"id": id, "display_name": format!("{id} display"), "currency": currency, "opening_balance_minor": opening}),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }

    pub async fn terminal(&self) -> TerminalCreated {
        let r = self
            .admin_post("/v1/admin/terminals", json!({"name": "till 1"}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    pub async fn enroll(&self, account: &str) -> Card {
        self.enroll_as(account, "transaction_applet").await
    }

    /// [`Harness::enroll`] a device that signs by `method` (`piv`, say).
    pub async fn enroll_as(&self, account: &str, method: &str) -> Card {
        let key = software_key();
        let point = key.verifying_key().to_encoded_point(false);
        let r = self
            .admin_post(
                "/v1/admin/devices",
                json!({"account": account, "public_key": b64::encode(point.as_bytes()), "label": "test card", "method": method}),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
        Card {
            key,
            enrolled: r.json().await.unwrap(),
            counter: std::cell::Cell::new(0),
        }
    }

    /// alice (10 000.00 CNY) pays shop; one terminal; one card for alice.
    pub async fn standard() -> (Harness, TerminalCreated, Card) {
        let h = Harness::start().await;
        h.standard_setup().await
    }

    pub async fn standard_setup(self) -> (Harness, TerminalCreated, Card) {
        self.account("alice", "CNY", 1_000_000).await;
        self.account("shop", "CNY", 0).await;
        let terminal = self.terminal().await;
        let card = self.enroll("alice").await;
        (self, terminal, card)
    }

    pub async fn create(
        &self,
        api_key: &str,
        idempotency_key: &str,
        body: Value,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/v1/transactions"))
            .bearer_auth(api_key)
            .header("Idempotency-Key", idempotency_key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates alice → shop for `amount`, expecting 202.
    pub async fn pay(&self, terminal: &TerminalCreated, amount: u64) -> TransactionView {
        let key = format!(
            "order-{}",
            hex::encode(software_key().to_bytes())[..16].to_owned()
        );
        let r = self.create(&terminal.api_key, &key, payment(amount)).await;
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "{}",
            r.text().await.unwrap()
        );
        r.json().await.unwrap()
    }

    /// The payload bytes the server stored (what a relay receives).
    pub async fn payload(&self, id: &TransactionId) -> Vec<u8> {
        self.server()
            .store()
            .get_transaction(id)
            .await
            .unwrap()
            .unwrap()
            .payload
    }

    pub async fn confirm(
        &self,
        credential: &str,
        id: &TransactionId,
        confirmation: &Confirmation,
    ) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/confirmations/{id}")))
            .bearer_auth(credential)
            .json(confirmation)
            .send()
            .await
            .unwrap()
    }

    /// Confirms and expects a 200 with the resulting view.
    pub async fn confirm_ok(
        &self,
        card: &Card,
        id: &TransactionId,
        confirmation: &Confirmation,
    ) -> TransactionView {
        let r = self
            .confirm(&card.enrolled.credential, id, confirmation)
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// One sample from `GET /metrics` ([`sample`]).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sample(&text, name_and_labels)
    }

    /// Every transaction, newest first, as the admin API lists them.
    pub async fn transactions(&self) -> Vec<TransactionView> {
        let r = self.admin_get("/v1/admin/transactions").await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn balances(&self) -> HashMap<String, i64> {
        let r = self.admin_get("/v1/admin/accounts").await;
        assert_eq!(r.status(), StatusCode::OK);
        let accounts: Vec<keybridge_proto::api::AccountView> = r.json().await.unwrap();
        accounts
            .into_iter()
            .map(|a| (a.id.to_string(), a.balance_minor))
            .collect()
    }

    /// The ledger invariant: per currency, all balances sum to zero.
    pub async fn assert_ledger_balanced(&self) {
        let r = self.admin_get("/v1/admin/accounts").await;
        let accounts: Vec<keybridge_proto::api::AccountView> = r.json().await.unwrap();
        let mut sums: HashMap<String, i64> = HashMap::new();
        for a in accounts {
            *sums.entry(a.currency.code().to_owned()).or_default() += a.balance_minor;
        }
        for (currency, sum) in sums {
            assert_eq!(sum, 0, "{currency} balances do not sum to zero");
        }
        self.server().store().verify_audit_chain().await.unwrap();
    }

    pub async fn transfer_count(&self, id: &TransactionId) -> usize {
        self.server()
            .store()
            .transfers_for_transaction(id)
            .await
            .unwrap()
            .len()
    }

    pub async fn relay(&self, credential: &str) -> Relay {
        let url = self.base.replacen("http://", "ws://", 1) + "/v1/relay";
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {credential}").parse().unwrap(),
        );
        let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        Relay { socket }
    }
}

async fn launch(
    dir: &std::path::Path,
    clock: &Arc<ManualClock>,
    options: &Options,
) -> RunningServer {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.to_path_buf(),
        ADMIN_TOKEN.into(),
    );
    config.origin = "keybridge.test".into();
    config.sweep_interval_ms = options.sweep_interval_ms;
    config.body_limit_bytes = options.body_limit_bytes;
    config.read_timeout_s = options.read_timeout_s;
    config.pending_per_payer_max = options.pending_per_payer_max;
    config.terminal_rate_per_s = options.terminal_rate_per_s;
    config.trust_anchors = options.trust_anchors.clone();
    config.intermediates = options.intermediates.clone();
    config.crl_sources = options.crl_sources.clone();
    config.crl_refresh_s = options.crl_refresh_s;
    config.database_url = options.database_url.clone();
    keybridge_server::start_with_clock(config, clock.clone())
        .await
        .unwrap()
}

/// One sample's value in Prometheus text (`name{labels}`), 0 when absent.
/// The recorder is process-wide and tests run side by side: compare before
/// and after, in the direction a value can move, never absolute values.
pub fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name_and_labels).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A configuration for a server of its own on `dir` (SQLite, the real
/// clock, an ephemeral port), for tests that start one without a harness.
pub fn config_in(dir: &std::path::Path) -> ServerConfig {
    ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.to_path_buf(),
        ADMIN_TOKEN.into(),
    )
}

/// Whether this run puts every harness on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("KEYBRIDGE_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

pub fn payment(amount: u64) -> Value {
    json!({
        "payer": "alice",
        "payee": "shop",
        "amount_minor": amount,
        "currency": "CNY",
        "order_id": "ORD-1",
        "description": "Two books"
    })
}

pub async fn error_body(r: reqwest::Response) -> (StatusCode, ErrorBody) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not an ErrorBody: {text}"));
    (status, body)
}

pub struct Relay {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Relay {
    /// Sends a JSON text frame (an answer, or anything a test wants to try).
    pub async fn send_text(&mut self, text: String) {
        self.socket.send(Message::Text(text)).await.unwrap();
    }

    /// The next JSON message, skipping pings. The guard covers the whole
    /// wait: the server's pings must not keep a missing message waited for.
    pub async fn next(&mut self) -> RelayMessage {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("relay waited too long")
                .expect("relay socket closed")
                .expect("relay socket error");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected relay message {other:?}"),
            }
        }
    }

    /// Waits for the server to close the socket.
    pub async fn closed(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.send(Message::Close(None)).await;
    }
}

/// The confirmation request for `id`, from a relay, as payload bytes.
pub fn request_payload(message: &RelayMessage, id: &TransactionId) -> Vec<u8> {
    match message {
        RelayMessage::ConfirmationRequest {
            transaction_id,
            payload,
        } if transaction_id == id => b64::decode(payload).unwrap(),
        other => panic!("expected a request for {id}, got {other:?}"),
    }
}
