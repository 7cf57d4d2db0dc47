//! The SQLite backend: the shared `Store` contract, and what only SQLite
//! has (its migrations table and WAL, its triggers, its query plans).

use super::*;
use crate::store::contract::{
    contract_tests, payment_and_pending, pending, seed, signed, COOKED_BOOKS, NOW,
};

contract_tests!(async {
    Some(
        std::sync::Arc::new(SqliteStore::open_in_memory(NOW).unwrap()) as std::sync::Arc<dyn Store>,
    )
});

#[tokio::test]
async fn migrations_are_recorded_and_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    drop(SqliteStore::open(&path, NOW).unwrap());
    let store = SqliteStore::open(&path, NOW + 5).unwrap();
    let conn = store.conn.lock().unwrap();
    let versions: Vec<(i64, i64)> = conn
        .prepare("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<(i64, i64)> = MIGRATIONS.iter().map(|m| (m.0, 1_750_000_000)).collect();
    assert_eq!(versions, expected);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn the_database_refuses_edits_and_the_chain_detects_them() {
    let store = SqliteStore::open_in_memory(NOW).unwrap();
    seed(&store).await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    store.apply_signed_confirmation(signed(1, 1)).await.unwrap();
    assert_eq!(store.verify_audit_chain().await.unwrap(), 7);
    // The database refuses edits outright...
    {
        let conn = store.conn.lock().unwrap();
        let edit = conn.execute("UPDATE audit_log SET detail = '{}' WHERE seq = 2", []);
        assert!(edit.is_err());
        assert!(conn.execute("DELETE FROM transfers", []).is_err());
        // ...and if someone gets past that, the chain shows it.
        conn.execute_batch("DROP TRIGGER audit_log_no_update")
            .unwrap();
        conn.execute("UPDATE audit_log SET detail = '{}' WHERE seq = 2", [])
            .unwrap();
    }
    assert_eq!(
        store.verify_audit_chain().await,
        Err(StoreError::AuditChainBroken { seq: 2 })
    );
}

#[test]
fn partial_indexes_serve_their_queries() {
    let store = SqliteStore::open_in_memory(NOW).unwrap();
    let conn = store.conn.lock().unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let zeros = rusqlite::params_from_iter(std::iter::repeat_n(0, stmt.parameter_count()));
        stmt.query_map(zeros, |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("; ")
    };
    for (sql, index) in [
        (
            format!("SELECT * FROM transactions {PENDING_OF_PAYER}"),
            "transactions_pending_by_payer",
        ),
        (
            format!("SELECT * FROM transactions {PENDING_DUE}"),
            "transactions_pending_by_expiry",
        ),
        (
            format!("SELECT * FROM webhook_deliveries {}", web::DELIVERIES_DUE),
            "webhook_deliveries_pending",
        ),
        (
            "SELECT count(*) FROM transactions WHERE status = 'pending'".to_owned(),
            "transactions_pending_by",
        ),
        (
            format!("SELECT * FROM audit_log {AUDIT_OF_TRANSACTION}"),
            "audit_log_by_transaction",
        ),
    ] {
        let plan = plan(&sql);
        assert!(
            plan.contains(index)
                && !plan
                    .split("; ")
                    .any(|step| step.starts_with("SCAN ") && !step.contains(" USING "))
                && (!sql.contains("audit_log") || !plan.contains("TEMP B-TREE")),
            "{sql}\n  planned as: {plan}"
        );
    }
}

/// Each way of cooking the books by hand is counted by the rule it breaks.
#[tokio::test]
async fn the_books_check_counts_each_hand_edit() {
    for (edit, expected) in COOKED_BOOKS {
        let store = SqliteStore::open_in_memory(NOW).unwrap();
        payment_and_pending(&store).await;
        store.conn.lock().unwrap().execute_batch(edit).unwrap();
        let check = store.check_books().await.unwrap();
        assert_eq!(check.broken, expected, "{edit}");
    }
}
