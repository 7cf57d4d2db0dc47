//! Group commit: one writer thread runs every write, several per database
//! transaction, and answers each caller only after that transaction commits.
//!
//! A durable commit costs one fsync of the WAL (about 115 µs here, more on a
//! busy disk). Paying it per payment caps throughput at a few thousand writes
//! per second whatever the CPU; paying it per batch lets concurrent writes
//! share it. Durability is unchanged: no caller hears "done" before the
//! commit that holds its write is on disk.
//!
//! Each write runs inside its own SAVEPOINT, so a write that fails (a unique
//! violation, an insufficient balance) rolls back alone and its batch-mates
//! still commit. Writes within a batch run in arrival order and see the
//! effects of the earlier ones, exactly as if each had committed on its own.
//!
//! The thread outlives a batch that panics: the batch's transaction rolls
//! back as it unwinds, each of its callers hears an error (its reply is
//! dropped unsent), and the next batch runs. Without that, one panic (a
//! bug, or a log line that could not be written to a full disk) left a
//! server that still answered reads but failed every write until restarted.

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::{backend, exec};
use crate::store::StoreError;

/// Upper bound on writes sharing one commit: bounds the latency a write can
/// add to its batch-mates and the work lost to one failed commit.
pub const BATCH_WRITES_MAX: usize = 256;
/// Bound on queued writes; callers wait (asynchronously) beyond it.
pub const QUEUE_WRITES_MAX: usize = 4096;

/// Tells one caller how its write ended, once the batch's commit is known.
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// One write: runs inside the batch transaction; reports whether it succeeded
/// (to keep or roll back its savepoint) and how to answer its caller.
type Job = Box<dyn FnOnce(&Transaction<'_>) -> (bool, Completion) + Send>;

#[derive(Debug, Clone)]
pub struct Writer {
    jobs: mpsc::SyncSender<Job>,
}

impl Writer {
    /// Starts the writer thread. It ends when the last `Writer` is dropped.
    pub fn start(conn: Arc<Mutex<Connection>>) -> Result<Writer, StoreError> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_WRITES_MAX);
        std::thread::Builder::new()
            .name("keybridge-sqlite-writer".into())
            .spawn(move || run(&conn, &queue))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Runs `f` in a write transaction shared with other writes, and returns
    /// its result once that transaction has committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (job, answer) = job(f);
        let stopped = || StoreError::Backend("the writer thread has stopped".into());
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(stopped()),
            Err(mpsc::TrySendError::Full(job)) => {
                // A full queue: wait for room off the runtime (a blocking
                // `send`), not on it. The common case above costs no hop.
                let jobs = self.jobs.clone();
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))?
                    .map_err(|_| stopped())?;
            }
        }
        answer
            .await
            .map_err(|_| StoreError::Backend("the writer thread dropped a write".into()))?
    }
}

/// `f` as a queued write, and where its caller hears how it ended.
fn job<T, F>(f: F) -> (Job, tokio::sync::oneshot::Receiver<Result<T, StoreError>>)
where
    T: Send + 'static,
    F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
{
    let (reply, answer) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
    let job: Job = Box::new(move |tx| {
        let out = f(tx);
        let ok = out.is_ok();
        let completion: Completion = Box::new(move |committed| {
            let _ = reply.send(committed.and(out));
        });
        (ok, completion)
    });
    (job, answer)
}

fn run(conn: &Mutex<Connection>, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        // Poisoned only by a batch that panicked, whose transaction rolled
        // back as it unwound: the connection is as before that batch.
        let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
        let ran = panic::catch_unwind(AssertUnwindSafe(|| commit_batch(&mut guard, first, queue)));
        if ran.is_err() {
            tracing::error!(
                "a write batch panicked: rolled back, its writes answered with an error"
            );
        }
    }
}

/// Runs `first` and then every write queued by the time the one before it
/// ends, up to `BATCH_WRITES_MAX`, in one transaction, and commits. Taking
/// the writes that arrive while the batch runs, rather than only those
/// queued when it began, shares each commit among more writes: a write that
/// arrives mid-batch commits with it instead of waiting for its commit and
/// then a commit of its own; the batch's earlier writes wait for its run
/// (tens of µs), never for a timer.
fn commit_batch(conn: &mut Connection, first: Job, queue: &mpsc::Receiver<Job>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "cannot begin a write transaction");
            return fail(first, "cannot begin a write transaction");
        }
    };
    let mut completions = Vec::new();
    let mut next = Some(first);
    while let Some(job) = next.take() {
        if let Err(e) = exec(&tx, "SAVEPOINT job", []) {
            tracing::error!(error = %e, "cannot open a savepoint");
            completions.push(Box::new(move |_: Result<(), StoreError>| {}) as Completion);
            drop(job);
        } else {
            let (ok, completion) = job(&tx);
            let end = match ok {
                true => exec(&tx, "RELEASE job", []),
                false => {
                    exec(&tx, "ROLLBACK TO job", []).and_then(|_| exec(&tx, "RELEASE job", []))
                }
            };
            completions.push(completion);
            if let Err(e) = end {
                // The transaction is now in an unknown state: fail the whole batch.
                tracing::error!(error = %e, "cannot close a savepoint");
                let _ = tx.rollback();
                return answer_all(completions, Err(backend(e)));
            }
        }
        if completions.len() < BATCH_WRITES_MAX {
            next = queue.try_recv().ok();
        }
    }
    let committed = tx.commit().map_err(|e| {
        tracing::error!(error = %e, "batch commit failed");
        backend(e)
    });
    answer_all(completions, committed);
}

fn answer_all(completions: Vec<Completion>, committed: Result<(), StoreError>) {
    for completion in completions {
        completion(committed.clone());
    }
}

fn fail(job: Job, why: &str) {
    // Dropping a job drops its reply sender: the caller sees an error.
    tracing::error!("{why}; failing a write");
    drop(job);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (Writer, Arc<Mutex<Connection>>) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        let conn = Arc::new(Mutex::new(conn));
        (Writer::start(Arc::clone(&conn)).unwrap(), conn)
    }

    /// Many concurrent writes share commits; a failing write rolls back alone
    /// and its caller gets its own error, the others commit and get their
    /// results.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_rolls_back_alone() {
        let (writer, conn) = writer();
        let mut tasks = Vec::new();
        for n in 0..200i64 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                writer
                    .write(move |tx| {
                        tx.execute("INSERT INTO t (n) VALUES (?1)", [n])
                            .map_err(backend)?;
                        if n % 10 == 3 {
                            return Err(StoreError::AlreadyExists);
                        }
                        Ok(n * 2)
                    })
                    .await
            }));
        }
        for (n, t) in tasks.into_iter().enumerate() {
            let n = i64::try_from(n).unwrap();
            let got = t.await.unwrap();
            if n % 10 == 3 {
                assert_eq!(got, Err(StoreError::AlreadyExists));
            } else {
                assert_eq!(got, Ok(n * 2));
            }
        }
        let conn = conn.lock().unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 180);
        let failed: i64 = conn
            .query_row("SELECT COUNT(*) FROM t WHERE n % 10 = 3", [], |r| r.get(0))
            .unwrap();
        assert_eq!(failed, 0);
    }

    /// A write that panics fails (its caller hears an error), its batch
    /// rolls back, and the writer goes on: the next write commits.
    #[tokio::test]
    async fn a_panicking_write_fails_and_the_writer_goes_on() {
        let (writer, conn) = writer();
        let panicked = writer
            .write(|tx| -> Result<(), StoreError> {
                tx.execute("INSERT INTO t (n) VALUES (1)", [])
                    .map_err(backend)?;
                panic!("a bug in a write");
            })
            .await;
        assert!(
            matches!(panicked, Err(StoreError::Backend(_))),
            "{panicked:?}"
        );
        for n in [2, 3] {
            writer
                .write(move |tx| {
                    tx.execute("INSERT INTO t (n) VALUES (?1)", [n])
                        .map_err(backend)
                })
                .await
                .unwrap();
        }
        let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        let rows: Vec<i64> = conn
            .prepare("SELECT n FROM t ORDER BY n")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [2, 3], "the panicking write's insert rolled back");
    }

    /// A write queued while a batch runs joins that batch: it runs before
    /// the batch commits (another connection cannot see the first write
    /// yet), and both commit.
    #[tokio::test]
    async fn a_write_queued_while_a_batch_runs_commits_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        let writer = Writer::start(Arc::new(Mutex::new(conn))).unwrap();
        let (second, seen) = job(move |tx| {
            let other = Connection::open(&path).map_err(backend)?;
            let seen: i64 = other
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .map_err(backend)?;
            tx.execute("INSERT INTO t (n) VALUES (2)", [])
                .map_err(backend)?;
            Ok(seen)
        });
        let jobs = writer.jobs.clone();
        writer
            .write(move |tx| {
                tx.execute("INSERT INTO t (n) VALUES (1)", [])
                    .map_err(backend)?;
                jobs.try_send(second)
                    .map_err(|_| StoreError::Backend("queue".into()))
            })
            .await
            .unwrap();
        assert_eq!(seen.await.unwrap(), Ok(0), "ran before the first commit");
        let rows: i64 = writer
            .write(|tx| {
                tx.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                    .map_err(backend)
            })
            .await
            .unwrap();
        assert_eq!(rows, 2);
    }

    /// A later write in a batch sees an earlier one, as if each had committed.
    #[tokio::test]
    async fn writes_see_their_predecessors() {
        let (writer, _conn) = writer();
        writer
            .write(|tx| {
                tx.execute("INSERT INTO t (n) VALUES (1)", [])
                    .map_err(backend)
            })
            .await
            .unwrap();
        let seen: i64 = writer
            .write(|tx| {
                tx.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                    .map_err(backend)
            })
            .await
            .unwrap();
        assert_eq!(seen, 1);
    }
}
