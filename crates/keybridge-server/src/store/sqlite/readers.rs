//! Read connections, one per concurrent read.
//!
//! In WAL mode a reader sees the last committed snapshot and never waits for
//! the writer, but only on a connection of its own: sharing the writer's
//! connection would make every read queue behind a batch and its fsync (the
//! first cut of this store did that; it capped the server near 600
//! payments/s with the CPU a third idle). Connections are opened on demand
//! and kept, at most [`OPEN_MAX`]: beyond, a read waits for one to come back,
//! so an overload queues reads instead of opening a connection (and a page
//! cache) per blocked thread.
//!
//! Read connections are `query_only`: a write that strays here fails loudly
//! instead of bypassing the group commit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, OpenFlags};

use super::{backend, tune};
use crate::store::StoreError;

/// Read connections open at most: a few per core covers the reads in flight
/// on a small machine; each holds its own page cache.
pub const OPEN_MAX: usize = 16;

#[derive(Debug)]
pub enum Readers {
    /// A database file: a bounded pool of read-only connections to it.
    File {
        path: PathBuf,
        pool: Mutex<Pool>,
        returned: Condvar,
        open_max: usize,
    },
    /// An in-memory database is private to its connection: reads share the
    /// writer's (and so wait for it, which tests do not mind).
    Shared(Arc<Mutex<Connection>>),
}

#[derive(Debug, Default)]
pub struct Pool {
    idle: Vec<Connection>,
    /// Connections in existence: idle plus lent out plus being opened.
    open: usize,
}

/// A connection lent to one read; goes back to the pool however the read
/// ends. `None` while it is being opened (and if opening failed).
struct Lease<'a> {
    conn: Option<Connection>,
    pool: &'a Mutex<Pool>,
    returned: &'a Condvar,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut pool = lock(self.pool);
        match self.conn.take() {
            Some(conn) => pool.idle.push(conn),
            None => pool.open -= 1,
        }
        self.returned.notify_one();
    }
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    // A poisoned pool only ever holds whole connections and a count that
    // leases keep right.
    pool.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Readers {
    pub fn file(path: &Path) -> Readers {
        Readers::file_with_max(path, OPEN_MAX)
    }

    fn file_with_max(path: &Path, open_max: usize) -> Readers {
        Readers::File {
            path: path.to_owned(),
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
            open_max: open_max.max(1),
        }
    }

    pub fn shared(conn: Arc<Mutex<Connection>>) -> Readers {
        Readers::Shared(conn)
    }

    /// Runs `f` on a read connection. Blocking (it may wait for a free
    /// connection): call it off the async runtime.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Readers::Shared(conn) => {
                let guard = conn
                    .lock()
                    .map_err(|_| StoreError::Backend("connection mutex poisoned".into()))?;
                f(&guard)
            }
            Readers::File {
                path,
                pool,
                returned,
                open_max,
            } => {
                let mut lease = Lease {
                    conn: None,
                    pool,
                    returned,
                };
                {
                    let mut guard = lock(pool);
                    loop {
                        if let Some(conn) = guard.idle.pop() {
                            lease.conn = Some(conn);
                            break;
                        }
                        if guard.open < *open_max {
                            guard.open += 1;
                            break;
                        }
                        guard = returned.wait(guard).unwrap_or_else(PoisonError::into_inner);
                    }
                }
                let conn = match lease.conn.take() {
                    Some(conn) => conn,
                    // On failure the lease gives the slot back.
                    None => open_reader(path)?,
                };
                let conn = lease.conn.insert(conn);
                f(conn)
            }
        }
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    // Read-write open (a read-only one cannot create the WAL index if it is
    // missing), then `query_only` so that nothing is written through it.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(backend)?;
    conn.pragma_update(None, "query_only", "ON")
        .map_err(backend)?;
    tune(&conn)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_connection_refuses_writes_and_sees_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (n INTEGER);")
            .unwrap();
        let readers = Readers::file(&path);
        let refused = readers.read(|c| {
            c.execute("INSERT INTO t (n) VALUES (1)", [])
                .map_err(backend)
        });
        assert!(refused.is_err(), "a read connection wrote");
        writer.execute("INSERT INTO t (n) VALUES (2)", []).unwrap();
        let n: i64 = readers
            .read(|c| {
                c.query_row("SELECT sum(n) FROM t", [], |r| r.get(0))
                    .map_err(backend)
            })
            .unwrap();
        assert_eq!(n, 2);
    }

    /// However many reads at once, at most `open_max` connections exist;
    /// the others wait for one and all complete.
    #[test]
    fn connections_are_bounded_and_reads_wait_for_one() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (n INTEGER);")
            .unwrap();
        let readers = Arc::new(Readers::file_with_max(&path, 2));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (readers, inside, most) = (readers.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    readers
                        .read(|c| {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            inside.fetch_sub(1, Ordering::SeqCst);
                            c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                                .map_err(backend)
                        })
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 0);
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} reads at once");
        let Readers::File { pool, .. } = &*readers else {
            panic!("a file pool")
        };
        let pool = lock(pool);
        assert!(pool.open <= 2 && pool.open == pool.idle.len(), "{pool:?}");
    }

    /// A connection that cannot be opened gives its slot back.
    #[test]
    fn a_failed_open_frees_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("r.sqlite");
        let readers = Readers::file_with_max(&missing, 1);
        for _ in 0..3 {
            assert!(readers.read(|_| Ok(())).is_err());
        }
        let Readers::File { pool, .. } = &readers else {
            panic!("a file pool")
        };
        assert_eq!(lock(pool).open, 0);
    }

    /// A read in progress does not hold up the writer, and the writer's open
    /// transaction does not hold up a read (WAL snapshot).
    #[test]
    fn reads_do_not_wait_for_an_open_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let mut writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1);",
            )
            .unwrap();
        let readers = Readers::file(&path);
        let tx = writer
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.execute("INSERT INTO t (n) VALUES (10)", []).unwrap();
        // Uncommitted: the reader sees the snapshot before it, at once.
        let n: i64 = readers
            .read(|c| {
                c.query_row("SELECT sum(n) FROM t", [], |r| r.get(0))
                    .map_err(backend)
            })
            .unwrap();
        assert_eq!(n, 1);
        tx.commit().unwrap();
        let n: i64 = readers
            .read(|c| {
                c.query_row("SELECT sum(n) FROM t", [], |r| r.get(0))
                    .map_err(backend)
            })
            .unwrap();
        assert_eq!(n, 11);
    }
}
