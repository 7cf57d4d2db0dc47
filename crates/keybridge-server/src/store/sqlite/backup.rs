//! A consistent copy of the database while a server writes to it, and the
//! checks a copy must pass before anyone relies on it.
//!
//! Copying the database file is not a backup: in WAL mode the newest commits
//! live in the `-wal` file, and a copy taken while a checkpoint moves pages
//! from one to the other can hold half of a commit. `VACUUM INTO` writes the
//! snapshot of one read transaction into a new file instead: every commit
//! before it whole, none after it in part. It only reads the source, so the
//! server goes on paying meanwhile (WAL readers never block the writer).
//!
//! The copy is then checked as an auditor would: SQLite's own integrity and
//! foreign-key checks, the books (`store::books`: every balance is what its
//! transfers add up to, each currency sums to zero, one payment transfer per
//! settled transaction and none for any other) and the audit chain from its
//! first row.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::{audit_rows, backend, check_books, corrupt, count, tune};
use crate::store::audit::ChainCheck;
use crate::store::{StoreError, AUDIT_PAGE};

/// What a checked copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCheck {
    pub accounts: u64,
    pub transactions: u64,
    pub settled: u64,
    /// The audit chain, recomputed from its first row.
    pub audit: ChainCheck,
}

/// Writes a consistent snapshot of the database at `source` into `target`,
/// which must not exist yet, and makes it durable. Never writes to `source`.
pub fn snapshot(source: &Path, target: &Path) -> Result<(), StoreError> {
    // Read-only and no create: a mistyped path is an error, not a new empty
    // database, and a newer binary never migrates a live server's database.
    let conn = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(backend)?;
    tune(&conn)?;
    let target_str = target
        .to_str()
        .ok_or_else(|| StoreError::Backend("the backup path is not UTF-8".into()))?;
    conn.execute("VACUUM INTO ?1", [target_str])
        .map_err(backend)?;
    // SQLite does not sync what VACUUM INTO wrote; a backup that a power cut
    // can tear is no backup.
    std::fs::File::open(target)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Backend(format!("syncing the copy: {e}")))?;
    Ok(())
}

/// Checks the database at `copy` without changing it (read-only, no
/// migrations); the first check that fails is the error.
pub fn check(copy: &Path) -> Result<CopyCheck, StoreError> {
    let conn =
        Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(backend)?;
    tune(&conn)?;
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(backend)?;
    if integrity != "ok" {
        return Err(corrupt_copy(format!("integrity check: {integrity}")));
    }
    let orphans = count(&conn, "SELECT COUNT(*) FROM pragma_foreign_key_check", [])?;
    if orphans != 0 {
        return Err(corrupt_copy(format!(
            "{orphans} rows refer to rows that do not exist"
        )));
    }
    let books = check_books(&conn)?;
    if !books.balanced() {
        return Err(corrupt_copy(books.describe_broken()));
    }
    let audit = check_audit_chain(&conn)?;
    Ok(CopyCheck {
        accounts: books.accounts,
        transactions: count(&conn, "SELECT COUNT(*) FROM transactions", [])?,
        settled: count(
            &conn,
            "SELECT COUNT(*) FROM transactions WHERE status = 'settled'",
            [],
        )?,
        audit,
    })
}

fn check_audit_chain(conn: &Connection) -> Result<ChainCheck, StoreError> {
    let mut check = ChainCheck::default();
    loop {
        let rows = audit_rows(conn, check.last_seq().unwrap_or(0), AUDIT_PAGE)?;
        check.feed(&rows)?;
        if rows.len() < AUDIT_PAGE as usize {
            return Ok(check);
        }
    }
}

fn corrupt_copy(what: String) -> StoreError {
    corrupt(&format!("the copy fails its check: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{payment_and_pending, COOKED_BOOKS, NOW};
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;

    /// A database of [`payment_and_pending`] in `dir`; its path.
    async fn database(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("live.sqlite");
        payment_and_pending(&SqliteStore::open(&path, NOW).unwrap()).await;
        path
    }

    /// Takes a snapshot named `name`, lets `edit` change it (as an intruder
    /// or a torn copy would), and checks it.
    fn edited_copy(live: &Path, name: &str, edit: &str) -> Result<CopyCheck, StoreError> {
        let copy = live.with_file_name(name);
        snapshot(live, &copy).unwrap();
        Connection::open(&copy)
            .unwrap()
            .execute_batch(edit)
            .unwrap();
        check(&copy)
    }

    #[tokio::test]
    async fn a_snapshot_holds_every_commit_and_checks_out() {
        let dir = tempfile::tempdir().unwrap();
        let live = database(dir.path()).await;
        let copy = dir.path().join("copy.sqlite");
        snapshot(&live, &copy).unwrap();
        let checked = check(&copy).unwrap();
        // alice, the shop and CNY's issuance account.
        assert_eq!(checked.accounts, 3);
        assert_eq!((checked.transactions, checked.settled), (2, 1));
        let live_store = SqliteStore::open(&live, NOW).unwrap();
        let (live_chain, broken) = live_store.check_audit_chain().await.unwrap();
        assert_eq!(broken, None);
        assert_eq!(checked.audit, live_chain);
        // A snapshot never lands on a file that holds something.
        assert!(snapshot(&live, &copy).is_err());
        assert_eq!(check(&copy).unwrap(), checked);
    }

    #[tokio::test]
    async fn a_copy_whose_books_or_chain_were_changed_fails_its_check() {
        let dir = tempfile::tempdir().unwrap();
        let live = database(dir.path()).await;
        let failure = |name: &str, edit: &str| match edited_copy(&live, name, edit) {
            Err(StoreError::Corrupt(why)) => why,
            other => panic!("{name}: {other:?}"),
        };
        // Each way of cooking the books, as the books check counts it.
        for (n, (edit, expected)) in COOKED_BOOKS.iter().enumerate() {
            let why = failure(&format!("cooked-{n}.sqlite"), edit);
            let named = expected
                .iter()
                .all(|(rule, _)| why.contains(rule.breaches()));
            assert!(named, "{edit}: {why}");
        }
        // A row pointing at an account that is not there.
        let why = failure(
            "d.sqlite",
            "PRAGMA foreign_keys = OFF; UPDATE transactions SET payee = 'ghost' WHERE status = 'pending'",
        );
        assert!(why.contains("do not exist"), "{why}");
        // An audit row rewritten past its trigger.
        let tampered = edited_copy(
            &live,
            "e.sqlite",
            "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET detail = '{}' WHERE seq = 2",
        );
        assert_eq!(tampered, Err(StoreError::AuditChainBroken { seq: 2 }));
    }
}
