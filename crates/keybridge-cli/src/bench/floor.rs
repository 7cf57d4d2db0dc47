//! `--floor`: what the hops every payment must take cost on this machine
//! with none of KeyBridge's own work in them, measured in the same run as
//! the payments.
//!
//! The crypto limit bounds the rate by the two signatures alone. The floor
//! adds the other parts a payment cannot do without, each measured bare, in
//! a closed loop of [`IN_FLIGHT`] on this process's runtime, as CPU seconds
//! of the whole process divided by the operations done:
//!
//! - one HTTP/1.1 exchange over loopback with the libraries the terminal
//!   and the server use (reqwest, axum), a transaction's JSON each way;
//! - one WebSocket exchange over loopback with the libraries the relay and
//!   the server use (tokio-tungstenite, axum): a request the size of a
//!   confirmation request down, an answer the size of a signature up;
//! - two durable SQLite writes per payment, group-committed as the server
//!   commits (WAL, `synchronous=FULL`): the pending row, then its end with
//!   the double entry (debit, credit, transfer). No index, audit row or
//!   device counter: the least a durable double-entry payment writes;
//! - one P-256 sign and one verify (ring), from the crypto limit.
//!
//! Their sum is CPU per payment below which no implementation of this
//! path on this machine can go; `cores / sum` is its rate. The ratio of the
//! measured rate to it says how much of a payment's cost is KeyBridge's own
//! work (card protocol, payload, checks, audit chain, indexes, hand-offs).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};

use keybridge_proto::api::CreateTransaction;

use super::machine::process_cpu_seconds;

/// Operations in flight in each measurement: the bench's default closed
/// loop keeps 32 payments in flight.
const IN_FLIGHT: usize = 32;

/// CPU microseconds per operation of each hop, and what they add up to.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub http_us: f64,
    pub websocket_us: f64,
    pub durable_writes_us: f64,
    pub crypto_us: f64,
}

impl Floor {
    pub fn total_us(&self) -> f64 {
        self.http_us + self.websocket_us + self.durable_writes_us + self.crypto_us
    }

    /// Payments per second on `cores` at the floor's CPU per payment.
    pub fn per_s(&self, cores: usize) -> f64 {
        cores as f64 * 1e6 / self.total_us()
    }

    pub fn json(&self, cores: usize) -> serde_json::Value {
        serde_json::json!({
            "http_exchange_us": self.http_us,
            "websocket_exchange_us": self.websocket_us,
            "durable_writes_us": self.durable_writes_us,
            "crypto_us": self.crypto_us,
            "total_us": self.total_us(),
            "per_s": self.per_s(cores),
        })
    }
}

/// Measures each hop for `each`; `crypto_limit_per_s` (pairs per second on
/// `cores`) gives the signatures' share. `dir` holds the scratch database.
pub async fn measure(
    each: Duration,
    dir: &Path,
    crypto_limit_per_s: f64,
    cores: usize,
) -> anyhow::Result<Floor> {
    anyhow::ensure!(
        crypto_limit_per_s > 0.0,
        "the crypto limit was not measured"
    );
    Ok(Floor {
        http_us: http(each).await.context("the HTTP floor")?,
        websocket_us: websocket(each).await.context("the WebSocket floor")?,
        durable_writes_us: durable_writes(each, dir)
            .await
            .context("the durable-write floor")?,
        crypto_us: cores as f64 * 1e6 / crypto_limit_per_s,
    })
}

/// What the loops of one measurement share: they start together, once
/// each has set up, and stop when told.
struct Gate {
    ready: tokio::sync::Barrier,
    stopped: AtomicBool,
    done: AtomicU64,
}

impl Gate {
    /// Waits until every loop has set up (connections made): set-up is not
    /// part of the cost measured.
    async fn start(&self) {
        self.ready.wait().await;
    }

    fn running(&self) -> bool {
        !self.stopped.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `IN_FLIGHT` loops made by `run_loop` for `each`, from the moment all
/// have set up; returns CPU µs per operation they counted.
async fn closed_loop<F, Fut>(each: Duration, run_loop: F) -> anyhow::Result<f64>
where
    F: Fn(Arc<Gate>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let gate = Arc::new(Gate {
        ready: tokio::sync::Barrier::new(IN_FLIGHT + 1),
        stopped: AtomicBool::new(false),
        done: AtomicU64::new(0),
    });
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        loops.spawn(run_loop(Arc::clone(&gate)));
    }
    // A loop that fails to set up never reaches the barrier, and the others
    // would wait there for ever: stop them all and report its error.
    tokio::select! {
        _ = gate.start() => {}
        Some(ended) = loops.join_next() => {
            loops.abort_all();
            ended??;
            anyhow::bail!("a loop ended before the start");
        }
        _ = tokio::time::sleep(SET_UP_MAX) => {
            loops.abort_all();
            anyhow::bail!("the loops did not set up within {SET_UP_MAX:?}");
        }
    }
    let cpu_start = process_cpu_seconds();
    tokio::time::sleep(each).await;
    gate.stopped.store(true, Ordering::Relaxed);
    while let Some(ended) = loops.join_next().await {
        ended??;
    }
    let cpu_s = process_cpu_seconds() - cpu_start;
    match gate.done.load(Ordering::Relaxed) {
        0 => anyhow::bail!("no operation completed"),
        done => Ok(cpu_s * 1e6 / done as f64),
    }
}

const SET_UP_MAX: Duration = Duration::from_secs(10);

/// A transaction's creation as the terminal sends it, and an answer of the
/// size the server gives.
fn transaction_json() -> serde_json::Value {
    serde_json::json!({
        "payer": "payer-0001",
        "payee": "merchant",
        "amount_minor": 1250,
        "currency": "CNY",
        "order_id": "bench-0000000001",
        "description": "bench payment",
    })
}

async fn http(each: Duration) -> anyhow::Result<f64> {
    use axum::{routing::post, Json, Router};
    let app = Router::new().route(
        "/v1/transactions",
        post(|Json(created): Json<CreateTransaction>| async move {
            Json(serde_json::json!({
                "id": "0192f3a4b5c6d7e8f90a1b2c3d4e5f60",
                "status": "settled",
                "payer": created.payer,
                "payee": created.payee,
                "amount_minor": created.amount_minor,
                "currency": created.currency,
                "order_id": created.order_id,
                "created_at": 1_795_000_000u64,
                "expires_at": 1_795_000_120u64,
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/transactions", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let body = transaction_json();
    let measured = closed_loop(each, |gate| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            gate.start().await;
            while gate.running() {
                let answer = client
                    .post(&url)
                    .bearer_auth("kbt_0123456789abcdef0123456789abcdef")
                    .header("Idempotency-Key", "bench-0000000001")
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?;
                let _: serde_json::Value = answer.json().await?;
                gate.count();
            }
            Ok(())
        }
    })
    .await;
    server.abort();
    measured
}

/// A confirmation request as the server pushes it is some 700 bytes of
/// JSON; the relay's answer (signature, counter) some 300.
const PUSH_BYTES: usize = 700;
const ANSWER_BYTES: usize = 300;

async fn websocket(each: Duration) -> anyhow::Result<f64> {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::{routing::get, Router};
    // The server pushes, the relay answers, as in a payment.
    let app = Router::new().route(
        "/v1/relay",
        get(|upgrade: WebSocketUpgrade| async move {
            upgrade.on_upgrade(|mut socket| async move {
                let push = "p".repeat(PUSH_BYTES);
                loop {
                    if socket.send(Message::text(push.as_str())).await.is_err() {
                        return;
                    }
                    match socket.recv().await {
                        Some(Ok(Message::Text(_))) => {}
                        _ => return,
                    }
                }
            })
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/v1/relay", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let measured = closed_loop(each, |gate| {
        let url = url.clone();
        async move {
            use tokio_tungstenite::tungstenite::Message;
            let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
            let answer = "a".repeat(ANSWER_BYTES);
            gate.start().await;
            while gate.running() {
                match socket.next().await {
                    Some(Ok(Message::Text(_))) => {}
                    other => anyhow::bail!("the server's push did not come: {other:?}"),
                }
                socket.send(Message::text(answer.as_str())).await?;
                gate.count();
            }
            Ok(())
        }
    })
    .await;
    server.abort();
    measured
}

/// One write of the durable floor.
enum Write {
    /// The pending row, with a payload of a confirmation's size.
    Create { id: i64, payer: String },
    /// Its end: status, debit, credit, transfer.
    Settle { id: i64, payer: String },
}

type Queued = (Write, tokio::sync::oneshot::Sender<Result<(), String>>);

const FLOOR_SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    CREATE TABLE transactions (id INTEGER PRIMARY KEY, payer TEXT NOT NULL,
        payee TEXT NOT NULL, amount_minor INTEGER NOT NULL, status TEXT NOT NULL,
        payload BLOB NOT NULL);
    CREATE TABLE accounts (id TEXT PRIMARY KEY, balance_minor INTEGER NOT NULL);
    CREATE TABLE transfers (transaction_id INTEGER PRIMARY KEY, debit TEXT NOT NULL,
        credit TEXT NOT NULL, amount_minor INTEGER NOT NULL);
    INSERT INTO accounts VALUES ('merchant', 0);";

async fn durable_writes(each: Duration, dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("floor.sqlite");
    let _ = std::fs::remove_file(&path);
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch(FLOOR_SCHEMA)?;
    for i in 0..IN_FLIGHT {
        conn.execute(
            "INSERT INTO accounts VALUES (?1, 1000000000000)",
            [format!("payer-{i}")],
        )?;
    }
    let (queue, writes) = mpsc::sync_channel::<Queued>(4096);
    let writer = std::thread::Builder::new()
        .name("keybridge-floor-writer".into())
        .spawn(move || group_commit(conn, &writes))?;
    let ids = Arc::new(AtomicU64::new(1));
    let payers = Arc::new(AtomicU64::new(0));
    let measured = closed_loop(each, |gate| {
        let (queue, ids) = (queue.clone(), Arc::clone(&ids));
        let payer = format!("payer-{}", payers.fetch_add(1, Ordering::Relaxed));
        async move {
            gate.start().await;
            while gate.running() {
                let id = i64::try_from(ids.fetch_add(1, Ordering::Relaxed))?;
                for write in [
                    Write::Create {
                        id,
                        payer: payer.clone(),
                    },
                    Write::Settle {
                        id,
                        payer: payer.clone(),
                    },
                ] {
                    let (done, committed) = tokio::sync::oneshot::channel();
                    queue
                        .try_send((write, done))
                        .map_err(|_| anyhow::anyhow!("the floor's writer is gone"))?;
                    committed.await?.map_err(anyhow::Error::msg)?;
                }
                gate.count();
            }
            Ok(())
        }
    })
    .await;
    drop(queue);
    let conn = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's writer panicked"))?;
    let measured = measured?;
    books_balance(&conn)?;
    Ok(measured)
}

/// The floor's writes did what a payment's do: every settled row has its
/// transfer, and the merchant gained what the payers lost.
fn books_balance(conn: &rusqlite::Connection) -> anyhow::Result<()> {
    let (settled, transfers, credited, debited): (i64, i64, i64, i64) = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM transactions WHERE status = 'settled'),
                (SELECT COUNT(*) FROM transfers),
                (SELECT balance_minor FROM accounts WHERE id = 'merchant'),
                (SELECT SUM(1000000000000 - balance_minor) FROM accounts WHERE id <> 'merchant')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    anyhow::ensure!(
        settled == transfers && credited == debited && credited == transfers * 1250,
        "the floor's books do not balance: {settled} settled, {transfers} transfers, \
         {credited} credited, {debited} debited"
    );
    Ok(())
}

/// The server's group commit, reduced to what the floor needs: every write
/// queued runs in one transaction, each caller hears after the commit.
fn group_commit(
    mut conn: rusqlite::Connection,
    writes: &mpsc::Receiver<Queued>,
) -> rusqlite::Connection {
    while let Ok(first) = writes.recv() {
        let mut batch = vec![first];
        batch.extend(writes.try_iter().take(255));
        let committed = commit(&mut conn, &batch).map_err(|e| e.to_string());
        for (_, done) in batch {
            let _ = done.send(committed.clone());
        }
    }
    conn
}

fn commit(conn: &mut rusqlite::Connection, batch: &[Queued]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (write, _) in batch {
        match write {
            Write::Create { id, payer } => {
                tx.prepare_cached(
                    "INSERT INTO transactions VALUES (?1, ?2, 'merchant', 1250, 'pending', ?3)",
                )?
                .execute(rusqlite::params![id, payer, [7u8; 300].as_slice()])?;
            }
            Write::Settle { id, payer } => {
                tx.prepare_cached("UPDATE transactions SET status = 'settled' WHERE id = ?1")?
                    .execute([id])?;
                tx.prepare_cached(
                    "UPDATE accounts SET balance_minor = balance_minor - 1250 WHERE id = ?1",
                )?
                .execute([payer])?;
                tx.prepare_cached(
                    "UPDATE accounts SET balance_minor = balance_minor + 1250 WHERE id = 'merchant'",
                )?
                .execute([])?;
                tx.prepare_cached("INSERT INTO transfers VALUES (?1, ?2, 'merchant', 1250)")?
                    .execute(rusqlite::params![id, payer])?;
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_adds_its_hops_and_divides_the_cores() {
        let floor = Floor {
            http_us: 50.0,
            websocket_us: 20.0,
            durable_writes_us: 30.0,
            crypto_us: 100.0,
        };
        assert_eq!(floor.total_us(), 200.0);
        assert_eq!(floor.per_s(2), 10_000.0);
        let json = floor.json(2);
        assert_eq!(json["total_us"], 200.0);
        assert_eq!(json["per_s"], 10_000.0);
    }

    /// The durable floor commits real payments: some settle, and its books
    /// balance (checked inside `durable_writes`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_durable_floor_settles_payments_whose_books_balance() {
        let dir = tempfile::tempdir().unwrap();
        let us = durable_writes(Duration::from_millis(200), dir.path())
            .await
            .unwrap();
        assert!(us > 0.0, "{us}");
        let conn = rusqlite::Connection::open(dir.path().join("floor.sqlite")).unwrap();
        let transfers: i64 = conn
            .query_row("SELECT COUNT(*) FROM transfers", [], |r| r.get(0))
            .unwrap();
        assert!(transfers > 0);
        books_balance(&conn).unwrap();
        conn.execute(
            "UPDATE accounts SET balance_minor = balance_minor + 1 WHERE id = 'merchant'",
            [],
        )
        .unwrap();
        assert!(books_balance(&conn).is_err(), "a cent too many is seen");
    }

    /// A loop that cannot set up ends the measurement with its error; the
    /// others, waiting to start, are stopped rather than left waiting.
    #[tokio::test]
    async fn a_loop_that_cannot_set_up_ends_the_measurement() {
        let loops = AtomicU64::new(0);
        let failed = closed_loop(Duration::from_millis(50), |gate| {
            let first = loops.fetch_add(1, Ordering::Relaxed) == 0;
            async move {
                anyhow::ensure!(!first, "no connection");
                gate.start().await;
                Ok(())
            }
        });
        let failed = tokio::time::timeout(Duration::from_secs(5), failed)
            .await
            .expect("the error, not a wait");
        assert_eq!(failed.unwrap_err().to_string(), "no connection");
    }

    /// The exchanges' floors run against their own loopback servers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_exchange_floors_complete_exchanges() {
        let http_us = http(Duration::from_millis(200)).await.unwrap();
        let websocket_us = websocket(Duration::from_millis(200)).await.unwrap();
        assert!(
            http_us > 0.0 && websocket_us > 0.0,
            "{http_us} {websocket_us}"
        );
    }
}
