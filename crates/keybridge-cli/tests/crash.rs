//! Crash safety: `keybridge server` is killed with SIGKILL (no shutdown, no
//! flush, a commit possibly half written) while tills pay through it, or
//! stopped with SIGTERM (what service managers send: it must drain and exit
//! cleanly), and restarted each time on the same data directory and port;
//! or the database under it crashes. The tills retry with their idempotency
//! keys, as a real till does after a lost connection; the phone's relay and
//! the card (a `keybridge card` process on the relay's vpcd reader) carry
//! on. Five set-ups:
//! - the default SQLite store, one server, killed five times and stopped
//!   with SIGTERM twice;
//! - PostgreSQL with two servers, the relay's socket on one and the tills on
//!   the other, each killed in turn (six kills) while the other runs on;
//! - PostgreSQL itself crashing three times under two servers;
//! - the phone (`keybridge relay`, a process in every set-up) killed five
//!   times while it talks to the card;
//! - the card (`keybridge card`) killed five times while the phone talks to
//!   it;
//! - the disk filling up under the SQLite server three times (its file size
//!   limit dropped to one byte with `prlimit`: every write to any file fails,
//!   the log's included), and room coming back: the server is not restarted;
//!   the same under the card (those payments end rejected, `device_error`)
//!   and under the phone (its outbox and screen; nothing is cut off).
//!
//! And two single scenes: `keybridge pay` itself, the terminal's command,
//! through two server restarts; and a phone that dies holding the card's
//! answer, which it delivers when it starts again.
//!
//! After the last restart the test reads everything back through the
//! operator's API and checks what a payment system promises across a crash:
//! - every order ended, in exactly one transaction (no order paid twice);
//! - every "settled" a till heard is settled in the store, and nothing else is
//!   (a terminal never hears of money that a crash then takes back);
//! - the payer lost, and the shop gained, exactly the settled amounts;
//! - the audit chain is intact and records each settlement once;
//! - the card's signature counter covers every settlement;
//! - the shop's webhook endpoint hears of every outcome at least once (its
//!   events are queued in the same database transaction as the outcome),
//!   and of nothing else.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::removal::{card, enrol_card, request, vpcd_reader, Killed, AMOUNT, PIN};
use keybridge_proto::api::{CreateAccount, Reason, TransactionStatus, WebhookEvent};
use keybridge_proto::{AccountId, TransactionId};
use keybridge_relay::CardLinkSpec;
use keybridge_server::store::postgres::scratch;
use keybridge_terminal::Client;
use keybridge_testkit::cny;

/// Alice can pay every order of the test many times over.
const ALICE_OPENING: u64 = 100_000_000;
/// Tills paying at once.
const TILLS: usize = 4;
/// Payments settled between two kills (and after the last restart).
const SETTLED_BETWEEN_KILLS: u64 = 12;

/// One `keybridge server` process on a fixed port and data directory, on
/// SQLite there or on a PostgreSQL database.
struct Server {
    name: &'static str,
    data_dir: PathBuf,
    database: Option<(String, Option<PathBuf>)>,
    port: u16,
    process: Option<Killed>,
    started: usize,
}

impl Server {
    /// Starts one; `database` is a PostgreSQL URL and the CA its TLS
    /// certificate chains to (`None`: plain TCP), `None` for SQLite.
    fn start(
        name: &'static str,
        data_dir: &Path,
        database: Option<(&str, Option<PathBuf>)>,
    ) -> Server {
        let mut server = Server {
            name,
            data_dir: data_dir.to_owned(),
            database: database.map(|(url, ca)| (url.to_owned(), ca)),
            port: keybridge_transport::port::listen_port().unwrap(),
            process: None,
            started: 0,
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the process with SIGKILL (`Child::kill` on Unix): no handler
    /// runs, nothing is flushed.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.0.kill().expect("SIGKILL the server");
            process.0.wait().expect("reap the server");
        }
    }

    /// Stops the process with SIGTERM and waits for it to finish what it was
    /// doing and exit: it must exit 0 within 15 s, having logged its stop.
    fn terminate(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        let pid = process.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = process.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "server {} still running 15 s after SIGTERM:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(self.log_path(self.started)).unwrap();
        assert!(
            status.success() && log.contains("server stopped"),
            "server {} after SIGTERM: {status}\n{log}",
            self.name
        );
    }

    /// Starts a process on the same data directory and port, and waits until
    /// it listens.
    fn restart(&mut self) {
        self.started += 1;
        let ready = self
            .data_dir
            .with_file_name(format!("{}-ready-{}", self.name, self.started));
        let log = std::fs::File::create(self.log_path(self.started)).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keybridge"));
        command
            .args(["server", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--ready-file")
            .arg(&ready)
            .env_remove("KEYBRIDGE_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        command.env_remove("KEYBRIDGE_DATABASE_CA_CERT");
        if let Some((url, ca)) = &self.database {
            command.env("KEYBRIDGE_DATABASE_URL", url);
            if let Some(ca) = ca {
                command.env("KEYBRIDGE_DATABASE_CA_CERT", ca);
            }
        }
        let process = Killed(command.spawn().expect("start keybridge server"));
        self.process = Some(process);
        // The port may still be held for a moment by the killed process's
        // sockets; the server retries nothing, so a failed start shows here.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            let exited = self
                .process
                .as_mut()
                .and_then(|p| p.0.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "server {} start {} failed ({exited:?}):\n{}",
                self.name,
                self.started,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets the running process's file size limit ([`limit_file_size`]).
    fn limit_file_size(&self, bytes: Option<u64>) {
        limit_file_size(self.process.as_ref().expect("running").0.id(), bytes);
    }

    /// Whether the process started last is still running.
    fn running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.0.try_wait().unwrap().is_none())
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.data_dir
            .with_file_name(format!("{}-{start}.log", self.name))
    }

    fn logs(&self) -> String {
        (1..=self.started)
            .map(|n| {
                let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
                format!("--- server {} run {n}\n{text}", self.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Sets process `pid`'s file size limit (`prlimit`, util-linux):
/// `Some(bytes)`, or `None` for none. Past it a write fails with `EFBIG`, as
/// on a full disk.
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let limit = bytes.map_or("unlimited".to_owned(), |b| b.to_string());
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--fsize={limit}:unlimited"),
        ])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit --pid {pid} --fsize={limit}");
}

/// What one till saw of one order: the final status it was told, and how
/// many requests it took (more than one: a crash cut a request off).
#[derive(Debug, Clone)]
struct Heard {
    status: TransactionStatus,
    attempts: u32,
}

/// Pays orders `T{till}-{n}` one after another until `stop`, retrying each
/// with its idempotency key until the server tells a final status.
async fn till(
    client: Client,
    till: usize,
    stop: Arc<AtomicBool>,
    settled: Arc<AtomicU64>,
    heard: Arc<Mutex<HashMap<String, Heard>>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let order = format!("T{till}-{n}");
        let paying = keybridge_terminal::PayRequest {
            wait_max: Duration::from_secs(20),
            ..request(&order)
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempts = 0;
        let status = loop {
            attempts += 1;
            match keybridge_terminal::pay_waiting(&client, &paying).await {
                Ok(outcome) if outcome.last.status.is_final() => break outcome.last.status,
                // Still pending when the wait ran out, or the request was cut
                // off by a crash: ask again with the same key.
                Ok(_) | Err(_) => {
                    assert!(Instant::now() < deadline, "order {order} never ended");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        if status == TransactionStatus::Settled {
            settled.fetch_add(1, Ordering::SeqCst);
        }
        heard
            .lock()
            .unwrap()
            .insert(order, Heard { status, attempts });
    }
}

/// Every server's log and the relay's, for a failure's message.
fn everything(servers: &[Server], relay: &Relay) -> String {
    let mut logs: Vec<String> = servers.iter().map(Server::logs).collect();
    logs.push(relay.logs());
    logs.join("\n")
}

/// Waits until `count` reaches `target`, or panics with `logs()`.
async fn reach(count: &AtomicU64, target: u64, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < target {
        assert!(
            Instant::now() < deadline,
            "payments stopped settling at {} of {target}:\n{}",
            count.load(Ordering::SeqCst),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_the_server_killed_five_times_and_stopped_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("server", &dir.path().join("server"), None);
    let stops = [Kill, Kill, Term, Kill, Kill, Term, Kill].map(|stop| (0, stop));
    pay_through_kills(&dir, vec![server], 0, 0, &stops).await;
}

/// The disk fills up under the server three times while tills pay: writes
/// fail (the tills and the phone hear errors and retry), and once there is
/// room the same process settles every payment, each exactly once. Before
/// the fix, the first log line that could not be written panicked the
/// SQLite writer thread, and the server failed every write until restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_the_disk_filling_up_under_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("server", &dir.path().join("server"), None);
    pay_through_kills(&dir, vec![server], 0, 0, &[(0, DiskFull); 3]).await;
}

/// The card's storage fills up three times while it signs: it refuses what
/// it cannot first make durable (`6581`: those payments end rejected,
/// `device_error`), and signs again once there is room. Before the fix each
/// refused VERIFY still took a PIN try in memory, so the first full disk
/// blocked the PIN and no payment settled after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_the_cards_storage_filling_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("server", &dir.path().join("server"), None);
    pay_through_kills(&dir, vec![server], 0, 0, &[(0, CardFull); 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_the_phones_storage_filling_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("server", &dir.path().join("server"), None);
    pay_through_kills(&dir, vec![server], 0, 0, &[(0, PhoneFull); 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_each_of_two_postgres_servers_killed_in_turn() {
    let Some(database) = scratch::database_or_skip().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("server");
    // A first: it creates the CA, master key and admin token that B reads.
    // Over TLS when the test cluster serves it (scripts/postgres does).
    let ca = std::env::var_os(scratch::CA_ENV).map(PathBuf::from);
    let a = Server::start("a", &data_dir, Some((&database, ca.clone())));
    let b = Server::start("b", &data_dir, Some((&database, ca)));
    let stops = [0, 1, 0, 1, 0, 1].map(|victim| (victim, Kill));
    pay_through_kills(&dir, vec![a, b], 0, 1, &stops).await;
}

/// A PostgreSQL cluster of this test's own (`scripts/postgres`), which it
/// crashes and starts again; the shared test cluster must stay up for the
/// other tests.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    /// `None` (after saying so) when PostgreSQL is not installed, except
    /// under `CI=true`, where that fails the test.
    fn start() -> Option<Cluster> {
        let dir = tempfile::tempdir().unwrap();
        let port = keybridge_transport::port::listen_port().unwrap();
        let cluster = Cluster { dir, port };
        if let Err(e) = cluster.run("start") {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{e}");
            }
            eprintln!("\n!!!!!!!! SKIPPED (not CI) !!!!!!!!\n{e}\n");
            return None;
        }
        Some(cluster)
    }

    fn run(&self, command: &str) -> Result<(), String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
        let out = Command::new(script)
            .arg(command)
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .output()
            .map_err(|e| format!("scripts/postgres {command}: {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "scripts/postgres {command}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    /// Kills every PostgreSQL process at once (no checkpoint, no clean
    /// close of any connection), then starts it again: it recovers from
    /// its WAL.
    fn crash_and_restart(&self) {
        self.run("crash").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        self.run("start").unwrap();
    }

    /// A fresh database on it, as a `key=value` URL.
    async fn database(&self) -> String {
        let server = format!("host=127.0.0.1 port={} user=postgres", self.port);
        let (db, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        db.batch_execute("CREATE DATABASE keybridge").await.unwrap();
        format!("{server} dbname=keybridge")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run("stop");
    }
}

/// PostgreSQL itself crashes three times while two servers on it take
/// payments: requests fail while it is down (the tills retry, the relay
/// sends its answers again), the servers' pools and event links reconnect,
/// and every payment still ends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_postgres_crashing_under_two_servers() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let database = cluster.database().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("server");
    // Over TLS: the handshake is redone by every connection the crashes drop.
    let ca = Some(cluster.dir.path().join("ca.crt"));
    let a = Server::start("a", &data_dir, Some((&database, ca.clone())));
    let b = Server::start("b", &data_dir, Some((&database, ca)));
    let stops = [Crash(&cluster); 3].map(|stop| (0, stop));
    pay_through_kills(&dir, vec![a, b], 0, 1, &stops).await;
}

/// The phone killed five times (SIGKILL: the app swiped away, the phone
/// out of battery) while the tills pay; the card signs again what the dead
/// phone never delivered, and every payment ends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_the_phone_killed_five_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("server", &dir.path().join("server"), None);
    let stops = [Phone; 5].map(|stop| (0, stop));
    pay_through_kills(&dir, vec![server], 0, 0, &stops).await;
}

/// The shop's webhook endpoint, registered for the tills' terminal: every
/// event it was sent.
#[derive(Clone, Default)]
struct Shop {
    seen: Arc<Mutex<Vec<WebhookEvent>>>,
}

impl Shop {
    async fn start(server: &str, terminal_key: &str) -> Shop {
        let shop = Shop::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(Shop::hook))
            .with_state(shop.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let registered = reqwest::Client::new()
            .put(format!("{server}/v1/webhook"))
            .bearer_auth(terminal_key)
            .json(&serde_json::json!({ "url": url }))
            .send()
            .await
            .unwrap();
        assert!(registered.status().is_success(), "{registered:?}");
        shop
    }

    async fn hook(
        axum::extract::State(shop): axum::extract::State<Shop>,
        axum::Json(event): axum::Json<WebhookEvent>,
    ) -> axum::http::StatusCode {
        shop.seen.lock().unwrap().push(event);
        axum::http::StatusCode::NO_CONTENT
    }
}

/// `keybridge pay`, the terminal's command, while its server goes down
/// twice: before the till's first request (connection refused) and while it
/// waits for the phone. It sends both requests again with the same
/// idempotency key until the server is back, and exits 0 once the phone
/// (off until then) confirms; one transaction, paid once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keybridge_pay_rides_out_server_restarts_and_pays_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start("server", &dir.path().join("server"), None);
    let bank = Bank::open(dir.path(), &server, &server, 10_000).await;
    let mut phone = bank.phone(dir.path());
    let (_signing_card, _card_lines) = bank.card("approve");

    server.kill();
    let out = dir.path().join("pay.out");
    let mut pay = Killed(
        Command::new(env!("CARGO_BIN_EXE_keybridge"))
            .args([
                "pay",
                "--server",
                &server.url(),
                "--from",
                "alice",
                "--to",
                "shop",
            ])
            .args([
                "--amount",
                "2.50",
                "--currency",
                "CNY",
                "--order",
                "O-RESTARTS",
            ])
            .args(["--idempotency-key", "k-O-RESTARTS", "--wait-s", "60"])
            .env("KEYBRIDGE_API_KEY", &bank.terminal_key)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start keybridge pay"),
    );
    let printed = || std::fs::read_to_string(&out).unwrap_or_default();
    // Refused while the server is down; then the server is back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pay.0.try_wait().unwrap().is_none(),
        "pay gave up: {}",
        printed()
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !printed().contains("confirm on your phone") {
        assert!(Instant::now() < deadline, "not created: {}", printed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Down again while the till waits for the phone, which is still off.
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pay.0.try_wait().unwrap().is_none(),
        "pay gave up: {}",
        printed()
    );
    server.restart();
    phone.restart();

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = pay.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "pay still running: {}",
            printed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success() && printed().contains("settled: CNY 2.50 paid to shop"),
        "{status}: {}\n{}",
        printed(),
        phone.logs()
    );
    let admin = &bank.admin;
    let stored = admin.transactions(10).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].status, TransactionStatus::Settled);
    let alice = admin.account(&AccountId::new("alice").unwrap()).await;
    assert_eq!(alice.unwrap().balance_minor, 10_000 - 250);
}

/// The card killed five times while the phone talks to it, and started
/// again on its state file: its signature counter survives every kill (a
/// counter used twice would be refused by the server as a replay and fail
/// the payment), and every payment ends settled, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_the_card_killed_five_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("server", &dir.path().join("server"), None);
    let stops = [Card; 5].map(|stop| (0, stop));
    pay_through_kills(&dir, vec![server], 0, 0, &stops).await;
}

/// A phone that dies holding the card's answer (the server down when the
/// card signed) delivers it when it starts again, before anything else: the
/// card, whose holder is asked through its standard input, is asked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_phone_delivers_the_answer_it_kept() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start("server", &dir.path().join("server"), None);
    let bank = Bank::open(dir.path(), &server, &server, 10_000).await;
    let mut phone = bank.phone(dir.path());
    phone.restart();
    let (mut asking, _lines) = bank.card("prompt");

    let till = Client::new(&server.url(), &bank.terminal_key).unwrap();
    let paying = tokio::spawn(async move {
        let request = keybridge_terminal::PayRequest {
            wait_max: Duration::from_secs(60),
            ..request("O-KEPT")
        };
        keybridge_terminal::pay(&till, &request, |_| {}).await
    });
    let wait_for = |phone: &Relay, text: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !phone.logs().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?}:\n{}", phone.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The holder is being asked; the server goes down; the holder says yes.
    tokio::task::block_in_place(|| wait_for(&phone, "payload bytes to the card"));
    server.kill();
    let stdin = asking.0.stdin.as_mut().unwrap();
    stdin.write_all(b"y\n").unwrap();
    stdin.flush().unwrap();
    // The card signed; the phone cannot deliver, and dies holding it.
    tokio::task::block_in_place(|| wait_for(&phone, "sending the answer again"));
    phone.kill();
    server.restart();
    phone.restart();

    let outcome = tokio::time::timeout(Duration::from_secs(30), paying)
        .await
        .expect("the payment ended")
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.last.status,
        TransactionStatus::Settled,
        "{}",
        phone.logs()
    );
    assert!(phone.logs().contains("kept from before a restart"));
    let devices = bank.admin.devices().await.unwrap();
    assert_eq!(devices[0].last_counter, 1, "the card signed once");
}

/// How a server (or its database, or the phone, or the card) is stopped.
#[derive(Clone, Copy)]
enum Stop<'a> {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: a deploy or a service manager's stop; a graceful exit.
    Term,
    /// The servers' PostgreSQL crashes and restarts; the servers run on.
    Crash(&'a Cluster),
    /// The phone's relay process is killed (SIGKILL) and started again.
    Phone,
    /// The card's process is killed (SIGKILL: pulled from the reader, or
    /// power lost) and started again on its state file.
    Card,
    /// The server's disk fills up, then has room again; the server runs on.
    DiskFull,
    /// The card's storage fills up, then has room again; the card runs on.
    CardFull,
    /// The phone's storage fills up, then has room again; the relay runs on.
    PhoneFull,
}
use Stop::{Card, CardFull, Crash, DiskFull, Kill, Phone, PhoneFull, Term};

/// Alice, the shop, the tills' terminal, and alice's card enrolled (the
/// state file and the vpcd reader where it meets the phone): what every
/// test here starts from.
struct Bank {
    admin: Client,
    terminal_key: String,
    credential: keybridge_relay::DeviceCredential,
    reader: CardLinkSpec,
    state: PathBuf,
    link: String,
}

impl Bank {
    /// Accounts and terminal through `admin_on`, the card enrolled through
    /// `enrol_on` (where its phone will connect); alice has `alice_minor`.
    async fn open(dir: &Path, admin_on: &Server, enrol_on: &Server, alice_minor: u64) -> Bank {
        let token = std::fs::read_to_string(admin_on.data_dir.join("admin-token")).unwrap();
        let admin = Client::new(&admin_on.url(), token.trim()).unwrap();
        for (id, opening_balance_minor) in [("alice", alice_minor), ("shop", 0)] {
            admin
                .create_account(&CreateAccount {
                    id: AccountId::new(id).unwrap(),
                    display_name: id.into(),
                    currency: cny(),
                    opening_balance_minor,
                })
                .await
                .unwrap();
        }
        let terminal_key = admin.create_terminal("till").await.unwrap().api_key;
        // The phone's own vpcd reader: the enrolment holds it first.
        let (reading, reader, link) = vpcd_reader();
        let state = dir.join("card.json");
        let enrolling = card(&state, &link, "approve", true);
        let enrol_admin = Client::new(&enrol_on.url(), token.trim()).unwrap();
        let credential = enrol_card(&enrol_admin, reading, enrolling).await;
        Bank {
            admin,
            terminal_key,
            credential,
            reader,
            state,
            link,
        }
    }

    /// The card's process on its state file, with `policy`.
    fn card(&self, policy: &str) -> (Killed, std::sync::mpsc::Receiver<String>) {
        card(&self.state, &self.link, policy, false)
    }

    /// The phone for the card, not started.
    fn phone(&self, dir: &Path) -> Relay {
        Relay::stopped(dir, &self.credential, &self.reader.to_string())
    }
}

/// `keybridge relay` as a process of its own, so it can be killed as a
/// phone's app is; the card process connects to its vpcd reader, and
/// reconnects when a new one listens there.
struct Relay {
    dir: PathBuf,
    card: String,
    process: Option<Killed>,
    started: usize,
}

impl Relay {
    /// Ready to start, not started: the phone is off.
    fn stopped(dir: &Path, credential: &keybridge_relay::DeviceCredential, card: &str) -> Relay {
        credential.save(&dir.join("credential.json")).unwrap();
        Relay {
            dir: dir.to_owned(),
            card: card.to_owned(),
            process: None,
            started: 0,
        }
    }

    fn restart(&mut self) {
        self.started += 1;
        let log = std::fs::File::create(self.log_path(self.started)).unwrap();
        let process = Command::new(env!("CARGO_BIN_EXE_keybridge"))
            .arg("relay")
            .arg("--credential")
            .arg(self.dir.join("credential.json"))
            .args([
                "--card",
                &self.card,
                "--auto",
                "approve",
                "--card-wait-s",
                "10",
            ])
            .env("KEYBRIDGE_PIN", PIN)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start keybridge relay");
        self.process = Some(Killed(process));
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.0.kill().expect("SIGKILL the relay");
            process.0.wait().expect("reap the relay");
        }
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.join(format!("relay-{start}.log"))
    }

    /// How many times this run has started sending a payload to the card.
    fn card_conversations(&self) -> usize {
        std::fs::read_to_string(self.log_path(self.started))
            .unwrap_or_default()
            .matches("payload bytes to the card")
            .count()
    }

    fn logs(&self) -> String {
        (1..=self.started)
            .map(|n| {
                let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
                format!("--- relay run {n}\n{text}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Alice's card serves a relay on `servers[relay_on]`, [`TILLS`] tills pay
/// through `servers[tills_on]`, and for each `(k, stop)` of `stops`,
/// `servers[k]` is stopped so and restarted, each time after
/// [`SETTLED_BETWEEN_KILLS`] more payments settled. Then everything is read
/// back and checked.
async fn pay_through_kills(
    dir: &tempfile::TempDir,
    mut servers: Vec<Server>,
    relay_on: usize,
    tills_on: usize,
    stops: &[(usize, Stop<'_>)],
) {
    let bank = Bank::open(
        dir.path(),
        &servers[tills_on],
        &servers[relay_on],
        ALICE_OPENING,
    )
    .await;
    let (admin, terminal_key) = (&bank.admin, &bank.terminal_key);
    let shop = Shop::start(&servers[tills_on].url(), terminal_key).await;
    let mut relay = bank.phone(dir.path());
    relay.restart();
    let mut signing_card = bank.card("approve");

    let stop = Arc::new(AtomicBool::new(false));
    let settled = Arc::new(AtomicU64::new(0));
    let heard = Arc::new(Mutex::new(HashMap::new()));
    let tills: Vec<_> = (0..TILLS)
        .map(|n| {
            let client = Client::new(&servers[tills_on].url(), terminal_key).unwrap();
            tokio::spawn(till(
                client,
                n,
                stop.clone(),
                settled.clone(),
                heard.clone(),
            ))
        })
        .collect();

    for (n, &(victim, stop)) in stops.iter().enumerate() {
        let target = settled.load(Ordering::SeqCst) + SETTLED_BETWEEN_KILLS;
        reach(&settled, target, || everything(&servers, &relay)).await;
        // Kill at a different point of the payments in flight each time
        // (0 to 22 ms after the last count reached, in 1 ms steps).
        let offset = (7 * n as u64) % 23;
        tokio::time::sleep(Duration::from_millis(offset)).await;
        match stop {
            Kill => servers[victim].kill(),
            Term => servers[victim].terminate(),
            Crash(cluster) => {
                tokio::task::block_in_place(|| cluster.crash_and_restart());
                continue;
            }
            DiskFull => {
                servers[victim].limit_file_size(Some(1));
                // Full for certain once a write fails: a terminal made by
                // the operator needs one. Then a second of payments failing.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match admin.create_terminal("probe while full").await {
                        Err(keybridge_terminal::ClientError::Api { status: 500, .. }) => break,
                        other => assert!(
                            Instant::now() < deadline,
                            "with the disk full a write must fail with a 500, got {other:?}"
                        ),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(1000)).await;
                servers[victim].limit_file_size(None);
                assert!(
                    servers[victim].running(),
                    "the server died of a full disk:\n{}",
                    servers[victim].logs()
                );
                continue;
            }
            PhoneFull => {
                let pid = relay.process.as_ref().expect("running").0.id();
                limit_file_size(pid, Some(1));
                tokio::time::sleep(Duration::from_millis(1500)).await;
                limit_file_size(pid, None);
                let process = &mut relay.process.as_mut().unwrap().0;
                assert!(
                    process.try_wait().unwrap().is_none(),
                    "the phone died of full storage:\n{}",
                    relay.logs()
                );
                continue;
            }
            CardFull => {
                let pid = signing_card.0 .0.id();
                limit_file_size(pid, Some(1));
                tokio::time::sleep(Duration::from_millis(1500)).await;
                limit_file_size(pid, None);
                assert!(
                    signing_card.0 .0.try_wait().unwrap().is_none(),
                    "the card died of full storage"
                );
                continue;
            }
            Phone | Card => {
                // Killed while the phone talks to the card: a signature made
                // then never reaches the server, and the card signs again.
                let sent = relay.card_conversations();
                let deadline = Instant::now() + Duration::from_secs(20);
                while relay.card_conversations() == sent {
                    assert!(
                        Instant::now() < deadline,
                        "the phone stopped asking the card"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                // 0 to 9 ms into it: in SELECT, VERIFY, SIGN or the answer.
                tokio::time::sleep(Duration::from_millis(3 * n as u64 % 10)).await;
                if matches!(stop, Phone) {
                    relay.kill();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    relay.restart();
                } else {
                    drop(signing_card);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    signing_card = bank.card("approve");
                }
                continue;
            }
        }
        // Down long enough for requests to fail and the relay to lose its socket.
        tokio::time::sleep(Duration::from_millis(200)).await;
        servers[victim].restart();
    }
    let target = settled.load(Ordering::SeqCst) + SETTLED_BETWEEN_KILLS;
    reach(&settled, target, || everything(&servers, &relay)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tills {
        if let Err(e) = t.await {
            panic!("a till failed: {e}\n{}", everything(&servers, &relay));
        }
    }

    let heard = heard.lock().unwrap().clone();
    let retried = heard.values().filter(|h| h.attempts > 1).count();
    // A server stopped cuts the tills' requests off; a database crash may
    // not (a till waiting on the hub just waits), so it shows in the
    // servers' logs instead: each lost its event connection once a crash.
    let crashes = stops.iter().filter(|(_, s)| matches!(s, Crash(_))).count();
    let phone_kills = stops
        .iter()
        .filter(|(_, s)| matches!(s, Phone | Card))
        .count();
    // A card whose storage is full refuses to count a PIN try (6581): the
    // phone declines with `device_error` and the order ends rejected, with
    // nothing cut off.
    let card_fulls = stops.iter().filter(|(_, s)| matches!(s, CardFull)).count();
    let rejected = heard
        .values()
        .filter(|h| h.status == TransactionStatus::Rejected)
        .count();
    assert!(
        card_fulls == 0 || rejected > 0,
        "the card's storage filled up {card_fulls} times and it refused nothing:\n{}",
        relay.logs()
    );
    // The phone's storage filling up cuts nothing off either: what it
    // cannot keep it still delivers, and what it cannot print it drops.
    let phone_fulls = stops.iter().filter(|(_, s)| matches!(s, PhoneFull)).count();
    // What the phone could not keep left no temporary file behind.
    let outbox = dir.path().join("credential.outbox");
    let leftovers: Vec<_> = std::fs::read_dir(&outbox)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name())
                .filter(|name| name.to_string_lossy().ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?} in {outbox:?}");
    // A full disk under the server was seen to fail a write (the probe's
    // 500) while the tills paid; whether a till's own request was the one
    // to fail is timing: each till waits on its payment, and a settlement
    // that fails leaves it waiting, not failed (a CI run found none cut off).
    let disk_fulls = stops.iter().filter(|(_, s)| matches!(s, DiskFull)).count();
    assert!(
        retried > 0
            || crashes > 0
            || phone_kills > 0
            || card_fulls > 0
            || phone_fulls > 0
            || disk_fulls > 0,
        "no till request was cut off by a kill, so nothing was tested"
    );
    // The card was pulled mid-conversation at least once (the others may
    // have fallen between two).
    let card_kills = stops.iter().filter(|(_, s)| matches!(s, Card)).count();
    let went_away = relay.logs().matches("the card went away").count();
    assert!(
        card_kills == 0 || went_away > 0,
        "{card_kills} card kills, none mid-conversation:\n{}",
        relay.logs()
    );
    // Every run of the phone reached the server (a killed one was replaced).
    let connected = relay.logs().matches("] connected to ").count();
    assert!(
        connected >= relay.started,
        "{connected} connections in {} relay runs:\n{}",
        relay.started,
        relay.logs()
    );
    for server in &servers {
        let lost = server
            .logs()
            .matches("lost the connection to other instances")
            .count();
        assert!(
            lost >= crashes,
            "server {}: {lost} of {crashes}",
            server.name
        );
    }

    // Every order is one transaction in the store, ended as its till heard.
    let mut stored = admin.transactions(500).await.unwrap();
    while let Some(last) = stored.last().filter(|_| stored.len() % 500 == 0) {
        let page = admin.transactions_before(&last.id, 500).await.unwrap();
        if page.is_empty() {
            break;
        }
        stored.extend(page);
    }
    let mut by_order: HashMap<&str, Vec<TransactionStatus>> = HashMap::new();
    for t in &stored {
        by_order.entry(&t.order_id).or_default().push(t.status);
    }
    assert_eq!(by_order.len(), heard.len(), "orders stored vs heard");
    for (order, h) in &heard {
        assert_eq!(
            by_order.get(order.as_str()).map(Vec::as_slice),
            Some(&[h.status][..]),
            "order {order} (the till heard {h:?})"
        );
    }

    // No payment lost to a crash: the card's signatures all counted.
    let settled_n = u64::try_from(
        heard
            .values()
            .filter(|h| h.status == TransactionStatus::Settled)
            .count(),
    )
    .unwrap();
    // Every order settles in the end, but those the card refused while its
    // storage was full: rejected, `device_error`, and never paid.
    assert_eq!(
        settled_n + u64::try_from(rejected).unwrap(),
        u64::try_from(heard.len()).unwrap(),
        "every order settles, or is refused by a full card: {heard:?}\n{}",
        everything(&servers, &relay)
    );
    for t in stored
        .iter()
        .filter(|t| t.status == TransactionStatus::Rejected)
    {
        assert_eq!(t.reason, Some(Reason::DeviceError), "{t:?}");
    }

    // The books: exactly the settled amounts moved.
    let amount = u64::try_from(AMOUNT).unwrap();
    let balance = |id: &str| {
        let admin = &admin;
        let id = AccountId::new(id).unwrap();
        async move { admin.account(&id).await.unwrap().balance_minor }
    };
    let paid = i64::try_from(settled_n * amount).unwrap();
    assert_eq!(
        balance("alice").await,
        i64::try_from(ALICE_OPENING).unwrap() - paid
    );
    assert_eq!(balance("shop").await, paid);
    // And the server's own reading of the books: every balance equals its
    // transfers, one payment transfer per settled transaction.
    let books = admin.verify_books().await.unwrap();
    assert!(books.balanced, "{books:?}");
    assert_eq!(books.transfers_checked, 1 + settled_n, "{books:?}");

    // The audit chain survived the crashes whole, one settlement row each.
    let verified = admin.verify_audit().await.unwrap();
    assert!(verified.intact, "{verified:?}");
    let mut settlements = 0;
    let mut after = 0;
    loop {
        let page = admin.audit(after, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        settlements += page
            .iter()
            .filter(|e| e.event == "transaction_settled")
            .count();
    }
    assert_eq!(u64::try_from(settlements).unwrap(), settled_n);

    // The shop heard every outcome, as stored, at least once (a delivery
    // cut off by a crash goes again: at least once, never lost). Events an
    // instance took before it died wait out its claim (20 s on PostgreSQL).
    let outcomes: HashMap<TransactionId, TransactionStatus> =
        stored.iter().map(|t| (t.id, t.status)).collect();
    let deadline = Instant::now() + Duration::from_secs(45);
    let heard_by_shop = loop {
        let seen = shop.seen.lock().unwrap().clone();
        let told: HashMap<TransactionId, TransactionStatus> = seen
            .iter()
            .map(|e| (e.transaction.id, e.transaction.status))
            .collect();
        if told == outcomes {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "the shop was told {} outcomes of {}:\n{}",
            told.len(),
            outcomes.len(),
            everything(&servers, &relay)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for event in &heard_by_shop {
        assert_eq!(
            Some(&event.transaction.status),
            outcomes.get(&event.transaction.id),
            "{event:?}"
        );
    }
    let repeated = heard_by_shop.len() - outcomes.len();

    let devices = admin.devices().await.unwrap();
    assert!(
        u64::from(devices[0].last_counter) >= settled_n,
        "{devices:?}"
    );
    eprintln!(
        "crash test: {} orders ({rejected} refused by a full card), {retried} cut off by a \
         kill and retried, {} server runs, {} relay runs, {} card signatures that paid \
         nothing (lost with a killed phone or server, signed again), {repeated} webhook \
         events delivered again",
        heard.len(),
        servers.iter().map(|s| s.started).sum::<usize>(),
        relay.started,
        u64::from(devices[0].last_counter) - settled_n
    );
}
