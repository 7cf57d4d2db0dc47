//! Read connections, one per concurrent read.
//!
//! In WAL mode a reader sees the last committed snapshot and never waits for
//! the writer, but only on a connection of its own: sharing the writer's
//! connection would make every read queue behind a batch and its fsync (the
//! first cut of this store did that; it capped the server near 600
//! payments/s with the CPU a third idle). Idle connections are kept for reuse,
//! up to [`IDLE_MAX`]; a read that finds none opens one.
//!
//! Read connections are `query_only`: a write that strays here fails loudly
//! instead of bypassing the group commit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OpenFlags};

use super::{backend, tune};
use crate::store::StoreError;

/// Idle connections kept open; more may exist while reads are in flight.
/// About the blocking pool's busy threads under load on a small machine.
pub const IDLE_MAX: usize = 16;

#[derive(Debug)]
pub enum Readers {
    /// A database file: a pool of read-only connections to it.
    File {
        path: PathBuf,
        idle: Mutex<Vec<Connection>>,
    },
    /// An in-memory database is private to its connection: reads share the
    /// writer's (and so wait for it, which tests do not mind).
    Shared(Arc<Mutex<Connection>>),
}

impl Readers {
    pub fn file(path: &Path) -> Readers {
        Readers::File {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn shared(conn: Arc<Mutex<Connection>>) -> Readers {
        Readers::Shared(conn)
    }

    /// Runs `f` on a read connection. Blocking: call it off the async runtime.
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
            Readers::File { path, idle } => {
                // A poisoned pool only ever holds whole connections.
                let taken = idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
                let conn = match taken {
                    Some(conn) => conn,
                    None => open_reader(path)?,
                };
                let out = f(&conn);
                let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < IDLE_MAX {
                    idle.push(conn);
                }
                out
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
