//! The SQLite backend: writes run on one writer thread that commits them in
//! groups ([`writer`]), each group one `BEGIN IMMEDIATE` transaction and each
//! write its own savepoint; reads run on the blocking pool, each on a
//! read-only connection of its own ([`readers`]), so that no read waits for a
//! commit's fsync (WAL gives every reader the last committed snapshot). Writes
//! are serialised, so compare-and-set updates and the unique indexes are a
//! second line of defence, not the first.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use keybridge_proto::api::{Reason, TransactionStatus};
use keybridge_proto::{AccountId, Currency, TransactionId};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::audit;
use super::books::{self, BooksCheck, BooksRule};
use super::rows::{
    self, corrupt, decode_account, decode_audit, decode_device, decode_transfer, decode_tx, hash32,
    issuance_account_id, to_i64, to_u64, AccountRow, DeviceRow, TxRow, ACCOUNT_COLUMNS,
    AUDIT_COLUMNS, DEVICE_COLUMNS, TRANSFER_COLUMNS, TX_COLUMNS,
};
use super::{
    AccountRecord, AnswerDigest, AuditRecord, BuildTransaction, CreateOutcome, CreationFacts,
    CreationKeys, DeviceRecord, Finalized, InsertOutcome, NewAccount, NewDevice, NewTerminal,
    SignedConfirmation, Store, StoreError, TerminalRecord, TransactionRecord, TransferKind,
    TransferRecord,
};
use crate::payment::{self, PaymentDecision, PaymentFacts};

pub mod backup;
mod web;

/// Numbered migrations, applied in order and recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_init",
        include_str!("../../migrations/0001_init.sql"),
    ),
    (
        2,
        "0002_append_only",
        include_str!("../../migrations/0002_append_only.sql"),
    ),
    (
        4,
        "0004_pki_ocra",
        include_str!("../../migrations/0004_pki_ocra.sql"),
    ),
    (
        5,
        "0005_webhooks",
        include_str!("../../migrations/0005_webhooks.sql"),
    ),
    (
        6,
        "0006_pending_indexes",
        include_str!("../../migrations/0006_pending_indexes.sql"),
    ),
    (
        7,
        "0007_answer_digest",
        include_str!("../../migrations/0007_answer_digest.sql"),
    ),
    (
        8,
        "0008_terminal_disabled",
        include_str!("../../migrations/0008_terminal_disabled.sql"),
    ),
    (
        9,
        "0009_audit_by_transaction",
        include_str!("../../migrations/0009_audit_by_transaction.sql"),
    ),
];

const BUSY_TIMEOUT_MS: u64 = 5_000;

mod readers;
mod writer;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The writer's connection; tests look at it directly.
    #[cfg_attr(not(test), allow(dead_code))]
    conn: Arc<Mutex<Connection>>,
    readers: Arc<readers::Readers>,
    writer: writer::Writer,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path, now_unix_s: u64) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        SqliteStore::init(conn, now_unix_s, Some(path))
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory(now_unix_s: u64) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(backend)?;
        SqliteStore::init(conn, now_unix_s, None)
    }

    /// `path` is `None` for an in-memory database, which only its own
    /// connection can see: reads then share the writer's connection.
    fn init(
        mut conn: Connection,
        now_unix_s: u64,
        path: Option<&Path>,
    ) -> Result<SqliteStore, StoreError> {
        // WAL lets readers proceed during a write; FULL syncs the WAL on every
        // commit, because a settled payment must survive a power cut.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        tune(&conn)?;
        migrate(&mut conn, now_unix_s)?;
        let conn = Arc::new(Mutex::new(conn));
        let readers = match path {
            Some(path) => readers::Readers::file(path),
            None => readers::Readers::shared(Arc::clone(&conn)),
        };
        Ok(SqliteStore {
            writer: writer::Writer::start(Arc::clone(&conn))?,
            readers: Arc::new(readers),
            conn,
        })
    }

    /// Runs the read `f` on the blocking pool with a read-only connection.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.read(f))
            .await
            .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))?
    }

    /// Runs `f` as one atomic write (a savepoint in a group commit) and
    /// returns once it is durable.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(f).await
    }
}

fn migrate(conn: &mut Connection, now_unix_s: u64) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )
    .map_err(backend)?;
    for (version, name, sql) in MIGRATIONS {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let applied: Option<i64> = one_row(
            &tx,
            "SELECT version FROM schema_migrations WHERE version = ?1",
            [version],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
        if applied.is_none() {
            tx.execute_batch(sql).map_err(backend)?;
            exec(
                &tx,
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, to_i64(now_unix_s)?],
            )
            .map_err(backend)?;
            tracing::info!(version, name, "applied migration");
        }
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

/// `Connection::execute` through the connection's statement cache: parsing
/// and planning the SQL was a third of the writer thread's time when every
/// call prepared its statement afresh.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `Connection::query_row` through the statement cache (see [`exec`]).
fn one_row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// Runs the query `sql` through the statement cache: each row is read by
/// `read` (SQLite types) and then checked and converted by `decode`.
fn select<R, T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    decode: impl FnMut(R) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(params, read)
        .map_err(backend)?
        .collect::<Result<Vec<R>, _>>()
        .map_err(backend)?;
    rows.into_iter().map(decode).collect()
}

/// Statements kept prepared per connection: every distinct SQL text of the
/// store fits, so the hot path never parses.
const STATEMENT_CACHE_CAPACITY: usize = 128;

/// What every connection of the store gets, the writer's and the readers'.
fn tune(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
        .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(())
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation
                && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    )
}

/// A unique violation as `AlreadyExists`, any other failure as `Backend`.
fn unique_to_exists(e: rusqlite::Error) -> StoreError {
    match is_unique_violation(&e) {
        true => StoreError::AlreadyExists,
        false => backend(e),
    }
}

fn read_tx_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TxRow> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ),
        (
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
            r.get(12)?,
            r.get(13)?,
            r.get(14)?,
            r.get(15)?,
            r.get(16)?,
        ),
    ))
}

/// A payer's pending transactions not yet expired (`?1` payer, `?2` now).
/// Served by the partial index `transactions_pending_by_payer`, which SQLite
/// uses only because the literal `'pending'` is in the query.
const PENDING_OF_PAYER: &str =
    "WHERE payer = ?1 AND status = 'pending' AND expires_at > ?2 ORDER BY seq";
/// Pending transactions whose window has passed (`?1` now), oldest deadline
/// first; served by `transactions_pending_by_expiry`. Ordering by the index's
/// own order (expiry, then seq) is what keeps SQLite on it: asked for `seq`
/// order alone, it scans the whole table instead, to skip a sort.
const PENDING_DUE: &str = "WHERE status = 'pending' AND expires_at <= ?1 ORDER BY expires_at, seq";
/// One transaction's audit rows (`?1` its id), served by the partial index
/// `audit_log_by_transaction` with no sort.
const AUDIT_OF_TRANSACTION: &str = "WHERE transaction_id = ?1 ORDER BY seq";

fn query_txs(
    conn: &Connection,
    where_clause: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<TransactionRecord>, StoreError> {
    let sql = format!("SELECT {TX_COLUMNS} FROM transactions {where_clause}");
    select(conn, &sql, params, read_tx_row, decode_tx)
}

fn get_tx(conn: &Connection, id: &TransactionId) -> Result<Option<TransactionRecord>, StoreError> {
    Ok(query_txs(conn, "WHERE id = ?1", [id.to_hex()])?
        .into_iter()
        .next())
}

fn read_device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ),
        (r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?),
    ))
}

fn query_devices(
    conn: &Connection,
    where_clause: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<DeviceRecord>, StoreError> {
    let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices {where_clause}");
    select(conn, &sql, params, read_device_row, decode_device)
}

fn query_terminals(
    conn: &Connection,
    where_clause: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<TerminalRecord>, StoreError> {
    let sql = format!("SELECT id, name, disabled_at FROM terminals {where_clause}");
    select(
        conn,
        &sql,
        params,
        |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<i64>>(2)?)),
        |(id, name, disabled_at)| {
            Ok(TerminalRecord {
                id,
                name,
                disabled_at_unix_s: disabled_at.map(to_u64).transpose()?,
            })
        },
    )
}

fn get_terminal(conn: &Connection, id: &str) -> Result<Option<TerminalRecord>, StoreError> {
    Ok(query_terminals(conn, "WHERE id = ?1", [id])?
        .into_iter()
        .next())
}

fn get_device(conn: &Connection, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
    Ok(query_devices(conn, "WHERE id = ?1", [id])?
        .into_iter()
        .next())
}

/// One administrative change to device `device_id`: `update` and, if it
/// changed the row, the audit row `event` with `detail`. Returns the device
/// as it now is, `None` if there is none.
fn change_device(
    tx: &Transaction<'_>,
    device_id: &str,
    update: &str,
    params: &[&dyn rusqlite::ToSql],
    now_unix_s: u64,
    event: &str,
    detail: &serde_json::Value,
) -> Result<Option<DeviceRecord>, StoreError> {
    if exec(tx, update, params).map_err(backend)? == 1 {
        append_audit(tx, now_unix_s, None, event, detail)?;
    }
    get_device(tx, device_id)
}

fn query_accounts(
    conn: &Connection,
    where_clause: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<AccountRecord>, StoreError> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts {where_clause}");
    let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<AccountRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    };
    select(conn, &sql, params, read, decode_account)
}

/// Inserts a new `pending` transaction and its audit row; the unique index on
/// `(terminal_id, idempotency_key)` decides a race between two requests.
fn insert_tx(tx: &Transaction<'_>, t: TransactionRecord) -> Result<InsertOutcome, StoreError> {
    let inserted = exec(
        tx,
        &format!(
            "INSERT INTO transactions ({TX_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ),
        params![
            t.id.to_hex(),
            t.terminal_id,
            t.idempotency_key,
            t.request_hash.as_slice(),
            t.payer.as_str(),
            t.payee.as_str(),
            t.payee_name,
            to_i64(t.amount_minor)?,
            t.currency.code(),
            t.order_id,
            t.description,
            t.payload,
            t.status.as_str(),
            t.reason.map(|r| r.as_str()),
            to_i64(t.created_at_unix_s)?,
            to_i64(t.expires_at_unix_s)?,
            to_i64(t.updated_at_unix_s)?
        ],
    );
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            // The unique index on (terminal_id, idempotency_key) decides
            // the race. The failed statement changed nothing, so this
            // write's savepoint is released empty.
            let existing = by_idempotency_key(tx, &t.terminal_id, &t.idempotency_key)?
                .ok_or(StoreError::AlreadyExists)?;
            return Ok(InsertOutcome::Existing(existing));
        }
        Err(e) => return Err(backend(e)),
    }
    append_audit(
        tx,
        t.created_at_unix_s,
        Some(&t.id),
        "transaction_created",
        &rows::transaction_created_detail(&t),
    )?;
    // The row is exactly `t` (the store adds only `seq`, which records
    // do not carry); reading it back would cost the writer a query.
    Ok(InsertOutcome::Created(t))
}

/// Runs `update` (`?1` the new value, `?2` the terminal's id) on an
/// enabled terminal and audits `event` if it changed it; the terminal as it
/// now is, `None` if there is none.
fn change_enabled_terminal(
    tx: &Transaction<'_>,
    update: &str,
    value: &dyn rusqlite::ToSql,
    terminal_id: &str,
    now_unix_s: u64,
    event: &str,
) -> Result<Option<TerminalRecord>, StoreError> {
    let changed = exec(tx, update, params![value, terminal_id]).map_err(unique_to_exists)?;
    if changed == 1 {
        append_audit(
            tx,
            now_unix_s,
            None,
            event,
            &serde_json::json!({"terminal": terminal_id}),
        )?;
    }
    get_terminal(tx, terminal_id)
}

fn get_account(conn: &Connection, id: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
    Ok(query_accounts(conn, "WHERE id = ?1", [id.as_str()])?
        .into_iter()
        .next())
}

fn by_idempotency_key(
    conn: &Connection,
    terminal_id: &str,
    key: &str,
) -> Result<Option<TransactionRecord>, StoreError> {
    Ok(query_txs(
        conn,
        "WHERE terminal_id = ?1 AND idempotency_key = ?2",
        params![terminal_id, key],
    )?
    .into_iter()
    .next())
}

fn count_active_devices(conn: &Connection, account: &AccountId) -> Result<u64, StoreError> {
    count(
        conn,
        "SELECT COUNT(*) FROM devices
             WHERE account_id = ?1 AND status = 'active' AND revoked_at IS NULL",
        [account.as_str()],
    )
}

/// The payer's pending, unexpired transactions, up to the keys' maximum
/// (`transactions_pending_by_payer` holds exactly the rows to count).
fn count_pending(conn: &Connection, keys: &CreationKeys) -> Result<u64, StoreError> {
    count(
        conn,
        "SELECT COUNT(*) FROM (SELECT 1 FROM transactions
             WHERE payer = ?1 AND status = 'pending' AND expires_at > ?2 LIMIT ?3)",
        params![
            keys.payer.as_str(),
            to_i64(keys.now_unix_s)?,
            to_i64(keys.pending_count_max)?
        ],
    )
}

/// The number a `SELECT COUNT(*) …` answers, through the statement cache.
fn count(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<u64, StoreError> {
    let n: i64 = one_row(conn, sql, params, |r| r.get(0)).map_err(backend)?;
    to_u64(n)
}

/// Appends one audit row, chained to the last one, inside the caller's transaction.
fn append_audit(
    tx: &Transaction<'_>,
    at_unix_s: u64,
    transaction_id: Option<&TransactionId>,
    event: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    let last: Option<(i64, Vec<u8>)> = one_row(
        tx,
        "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(backend)?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (to_u64(seq)? + 1, hash32(hash)?),
        None => (1, audit::GENESIS_HASH),
    };
    let tx_hex = transaction_id.map(TransactionId::to_hex);
    let detail = detail.to_string();
    let hash = audit::row_hash(
        &prev_hash,
        seq,
        at_unix_s,
        tx_hex.as_deref(),
        event,
        &detail,
    );
    exec(
        tx,
        "INSERT INTO audit_log (seq, at, transaction_id, event, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            to_i64(seq)?,
            to_i64(at_unix_s)?,
            tx_hex,
            event,
            detail,
            prev_hash.as_slice(),
            hash.as_slice()
        ],
    )
    .map_err(backend)?;
    Ok(())
}

/// Adds `delta` to an account's balance with checked arithmetic.
fn add_to_balance(tx: &Transaction<'_>, id: &AccountId, delta: i64) -> Result<i64, StoreError> {
    let balance: i64 = one_row(
        tx,
        "SELECT balance_minor FROM accounts WHERE id = ?1",
        [id.as_str()],
        |r| r.get(0),
    )
    .map_err(backend)?;
    let new = balance
        .checked_add(delta)
        .ok_or(StoreError::BalanceOverflow)?;
    exec(
        tx,
        "UPDATE accounts SET balance_minor = ?1 WHERE id = ?2",
        params![new, id.as_str()],
    )
    .map_err(backend)?;
    Ok(new)
}

/// One transfer to write.
struct Transfer<'a> {
    kind: TransferKind,
    transaction_id: Option<&'a TransactionId>,
    debit: &'a AccountId,
    credit: &'a AccountId,
    amount_minor: u64,
    currency: Currency,
}

/// Writes one double-entry transfer and moves both balances by the same amount.
fn transfer(tx: &Transaction<'_>, t: Transfer<'_>, now_unix_s: u64) -> Result<(), StoreError> {
    let Transfer {
        kind,
        transaction_id,
        debit,
        credit,
        amount_minor,
        currency,
    } = t;
    let amount = i64::try_from(amount_minor).map_err(|_| StoreError::BalanceOverflow)?;
    exec(tx,
        "INSERT INTO transfers
             (transaction_id, kind, debit_account, credit_account, amount_minor, currency, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            transaction_id.map(TransactionId::to_hex),
            kind.as_str(),
            debit.as_str(),
            credit.as_str(),
            amount,
            currency.code(),
            to_i64(now_unix_s)?
        ],
    )
    .map_err(unique_to_exists)?;
    add_to_balance(tx, debit, -amount)?;
    add_to_balance(tx, credit, amount)?;
    Ok(())
}

/// Compare-and-set from `pending` to a final status, with its audit row and
/// the answer that ended it, if one did.
fn end_pending(
    tx: &Transaction<'_>,
    id: &TransactionId,
    status: TransactionStatus,
    reason: Option<Reason>,
    answer: Option<AnswerDigest>,
    now_unix_s: u64,
    detail: serde_json::Value,
) -> Result<bool, StoreError> {
    debug_assert!(status.is_final());
    let changed = exec(
        tx,
        "UPDATE transactions SET status = ?1, reason = ?2, updated_at = ?3, answer_sha256 = ?4
             WHERE id = ?5 AND status = 'pending'",
        params![
            status.as_str(),
            reason.map(|r| r.as_str()),
            to_i64(now_unix_s)?,
            answer.as_ref().map(|a| a.0.as_slice()),
            id.to_hex()
        ],
    )
    .map_err(backend)?;
    if changed == 1 {
        let event = format!("transaction_{}", status.as_str());
        append_audit(tx, now_unix_s, Some(id), &event, &detail)?;
    }
    Ok(changed == 1)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(
        &self,
        account: NewAccount,
        now_unix_s: u64,
    ) -> Result<AccountRecord, StoreError> {
        self.write(move |tx| {
            if get_account(tx, &account.id)?.is_some() {
                return Err(StoreError::AlreadyExists);
            }
            let now = to_i64(now_unix_s)?;
            let issuance = issuance_account_id(account.currency)?;
            if get_account(tx, &issuance)?.is_none() {
                exec(tx,
                    "INSERT INTO accounts (id, display_name, currency, balance_minor, system, created_at)
                     VALUES (?1, ?2, ?3, 0, 1, ?4)",
                    params![
                        issuance.as_str(),
                        format!("{} issuance", account.currency.code()),
                        account.currency.code(),
                        now
                    ],
                )
                .map_err(backend)?;
                append_audit(
                    tx,
                    now_unix_s,
                    None,
                    "account_created",
                    &serde_json::json!({"account": issuance.as_str(), "system": true}),
                )?;
            }
            exec(tx,
                "INSERT INTO accounts (id, display_name, currency, balance_minor, system, created_at)
                 VALUES (?1, ?2, ?3, 0, 0, ?4)",
                params![
                    account.id.as_str(),
                    account.display_name,
                    account.currency.code(),
                    now
                ],
            )
            .map_err(unique_to_exists)?;
            if account.opening_balance_minor > 0 {
                let opening = Transfer {
                    kind: TransferKind::Opening,
                    transaction_id: None,
                    debit: &issuance,
                    credit: &account.id,
                    amount_minor: account.opening_balance_minor,
                    currency: account.currency,
                };
                transfer(tx, opening, now_unix_s)?;
            }
            append_audit(
                tx,
                now_unix_s,
                None,
                "account_created",
                &serde_json::json!({
                    "account": account.id.as_str(),
                    "currency": account.currency.code(),
                    "opening_balance_minor": account.opening_balance_minor,
                }),
            )?;
            get_account(tx, &account.id)?.ok_or_else(|| corrupt("account vanished"))
        })
        .await
    }

    async fn get_account(&self, id: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
        let id = id.clone();
        self.run(move |conn| get_account(conn, &id)).await
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        self.run(|conn| query_accounts(conn, "ORDER BY id", []))
            .await
    }

    async fn create_terminal(&self, terminal: NewTerminal) -> Result<TerminalRecord, StoreError> {
        self.write(move |tx| {
            exec(tx,
                "INSERT INTO terminals (id, name, api_key_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    terminal.id,
                    terminal.name,
                    terminal.api_key_hash.as_slice(),
                    to_i64(terminal.created_at_unix_s)?
                ],
            )
            .map_err(unique_to_exists)?;
            append_audit(
                tx,
                terminal.created_at_unix_s,
                None,
                "terminal_created",
                &serde_json::json!({"terminal": terminal.id, "name": terminal.name}),
            )?;
            Ok(TerminalRecord {
                id: terminal.id,
                name: terminal.name,
                disabled_at_unix_s: None,
            })
        })
        .await
    }

    async fn terminal_by_key_hash(
        &self,
        api_key_hash: [u8; 32],
    ) -> Result<Option<TerminalRecord>, StoreError> {
        self.run(move |conn| {
            one_row(
                conn,
                "SELECT id, name FROM terminals WHERE api_key_hash = ?1 AND disabled_at IS NULL",
                [api_key_hash.as_slice()],
                |r| {
                    Ok(TerminalRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        disabled_at_unix_s: None,
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list_terminals(&self) -> Result<Vec<TerminalRecord>, StoreError> {
        self.run(|conn| query_terminals(conn, "ORDER BY id", []))
            .await
    }

    async fn get_terminal(&self, terminal_id: &str) -> Result<Option<TerminalRecord>, StoreError> {
        let terminal_id = terminal_id.to_owned();
        self.run(move |conn| get_terminal(conn, &terminal_id)).await
    }

    async fn disable_terminal(
        &self,
        terminal_id: &str,
        now_unix_s: u64,
    ) -> Result<Option<TerminalRecord>, StoreError> {
        let terminal_id = terminal_id.to_owned();
        self.write(move |tx| {
            change_enabled_terminal(
                tx,
                "UPDATE terminals SET disabled_at = ?1 WHERE id = ?2 AND disabled_at IS NULL",
                &to_i64(now_unix_s)?,
                &terminal_id,
                now_unix_s,
                "terminal_disabled",
            )
        })
        .await
    }

    async fn rotate_terminal_key(
        &self,
        terminal_id: &str,
        api_key_hash: [u8; 32],
        now_unix_s: u64,
    ) -> Result<Option<TerminalRecord>, StoreError> {
        let terminal_id = terminal_id.to_owned();
        self.write(move |tx| {
            change_enabled_terminal(
                tx,
                "UPDATE terminals SET api_key_hash = ?1 WHERE id = ?2 AND disabled_at IS NULL",
                &api_key_hash.as_slice(),
                &terminal_id,
                now_unix_s,
                "terminal_key_rotated",
            )
        })
        .await
    }

    async fn create_device(&self, device: NewDevice) -> Result<DeviceRecord, StoreError> {
        self.write(move |tx| {
            match get_account(tx, &device.account)? {
                Some(a) if !a.system => {}
                _ => return Err(StoreError::UnknownAccount),
            }
            let now = to_i64(device.created_at_unix_s)?;
            let (ocra_suite, ocra_secret) = match &device.ocra {
                Some(o) => (Some(o.suite.as_str()), Some(o.sealed_secret.as_slice())),
                None => (None, None),
            };
            exec(
                tx,
                "INSERT INTO devices (id, account_id, label, public_key, certificate,
                     credential_hash, status, last_counter, created_at, updated_at,
                     method, ocra_suite, ocra_secret)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', 0, ?7, ?7, ?8, ?9, ?10)",
                params![
                    device.id,
                    device.account.as_str(),
                    device.label,
                    device.public_key,
                    device.certificate,
                    device.credential_hash.as_slice(),
                    now,
                    device.method.as_str(),
                    ocra_suite,
                    ocra_secret
                ],
            )
            .map_err(unique_to_exists)?;
            append_audit(
                tx,
                device.created_at_unix_s,
                None,
                "device_enrolled",
                &serde_json::json!({
                    "device": device.id,
                    "account": device.account.as_str(),
                    "method": device.method.as_str(),
                }),
            )?;
            get_device(tx, &device.id)?.ok_or_else(|| corrupt("device vanished"))
        })
        .await
    }

    async fn device_by_credential_hash(
        &self,
        credential_hash: [u8; 32],
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.run(move |conn| {
            Ok(query_devices(
                conn,
                "WHERE credential_hash = ?1",
                [credential_hash.as_slice()],
            )?
            .into_iter()
            .next())
        })
        .await
    }

    async fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.run(|conn| query_devices(conn, "ORDER BY created_at, id", []))
            .await
    }

    async fn disable_device(
        &self,
        device_id: &str,
        now_unix_s: u64,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let device_id = device_id.to_owned();
        self.write(move |tx| {
            change_device(
                tx,
                &device_id,
                "UPDATE devices SET status = 'disabled', updated_at = ?1
                     WHERE id = ?2 AND status <> 'disabled'",
                params![to_i64(now_unix_s)?, device_id],
                now_unix_s,
                "device_disabled",
                &serde_json::json!({"device": device_id}),
            )
        })
        .await
    }

    async fn count_active_devices(&self, account: &AccountId) -> Result<u64, StoreError> {
        let account = account.clone();
        self.run(move |conn| count_active_devices(conn, &account))
            .await
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let device_id = device_id.to_owned();
        self.run(move |conn| get_device(conn, &device_id)).await
    }

    async fn rename_device(
        &self,
        device_id: &str,
        label: &str,
        now_unix_s: u64,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let (device_id, label) = (device_id.to_owned(), label.to_owned());
        self.write(move |tx| {
            change_device(
                tx,
                &device_id,
                "UPDATE devices SET label = ?1, updated_at = ?2 WHERE id = ?3",
                params![label, to_i64(now_unix_s)?, device_id],
                now_unix_s,
                "device_renamed",
                &serde_json::json!({"device": device_id, "label": label}),
            )
        })
        .await
    }

    async fn revoke_device(
        &self,
        device_id: &str,
        now_unix_s: u64,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let device_id = device_id.to_owned();
        self.write(move |tx| {
            change_device(
                tx,
                &device_id,
                "UPDATE devices SET revoked_at = ?1, updated_at = ?1
                     WHERE id = ?2 AND revoked_at IS NULL",
                params![to_i64(now_unix_s)?, device_id],
                now_unix_s,
                "device_revoked",
                &serde_json::json!({"device": device_id}),
            )
        })
        .await
    }

    async fn create_transaction(
        &self,
        keys: CreationKeys,
        build: BuildTransaction,
    ) -> Result<CreateOutcome, StoreError> {
        self.write(move |tx| {
            // Read on the writer's connection, inside the write: its pages are
            // warm (a reader's cache is dropped at every commit), there is no
            // hop to a reader, and nothing can change between check and insert.
            if let Some(existing) =
                by_idempotency_key(tx, &keys.terminal_id, &keys.idempotency_key)?
            {
                return Ok(CreateOutcome::Existing(existing));
            }
            let facts = CreationFacts {
                payer: get_account(tx, &keys.payer)?,
                payee: get_account(tx, &keys.payee)?,
                payer_active_devices: count_active_devices(tx, &keys.payer)?,
                payer_pending: count_pending(tx, &keys)?,
            };
            match build(&facts) {
                Some(record) => Ok(match insert_tx(tx, record)? {
                    InsertOutcome::Created(record) => CreateOutcome::Created(record),
                    InsertOutcome::Existing(record) => CreateOutcome::Existing(record),
                }),
                None => Ok(CreateOutcome::Refused(facts)),
            }
        })
        .await
    }

    async fn insert_transaction(&self, t: TransactionRecord) -> Result<InsertOutcome, StoreError> {
        self.write(move |tx| insert_tx(tx, t)).await
    }

    async fn get_transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Option<TransactionRecord>, StoreError> {
        let id = *id;
        self.run(move |conn| get_tx(conn, &id)).await
    }

    async fn list_transactions(&self, limit: u32) -> Result<Vec<TransactionRecord>, StoreError> {
        self.run(move |conn| query_txs(conn, "ORDER BY seq DESC LIMIT ?1", [limit]))
            .await
    }

    async fn transactions_before(
        &self,
        before: &TransactionId,
        limit: u32,
    ) -> Result<Option<Vec<TransactionRecord>>, StoreError> {
        let before = before.to_hex();
        self.run(move |conn| {
            // A row's `seq` never changes: the two reads need no common snapshot.
            let seq: Option<i64> = one_row(
                conn,
                "SELECT seq FROM transactions WHERE id = ?1",
                [&before],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
            let Some(seq) = seq else { return Ok(None) };
            query_txs(
                conn,
                "WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
                params![seq, limit],
            )
            .map(Some)
        })
        .await
    }

    async fn pending_for_payer(
        &self,
        payer: &AccountId,
        now_unix_s: u64,
    ) -> Result<Vec<TransactionRecord>, StoreError> {
        let payer = payer.clone();
        self.run(move |conn| {
            query_txs(
                conn,
                PENDING_OF_PAYER,
                params![payer.as_str(), to_i64(now_unix_s)?],
            )
        })
        .await
    }

    async fn finalize(
        &self,
        id: &TransactionId,
        status: TransactionStatus,
        reason: Reason,
        answer: Option<AnswerDigest>,
        now_unix_s: u64,
    ) -> Result<Finalized, StoreError> {
        let id = *id;
        self.write(move |tx| {
            let Some(current) = get_tx(tx, &id)? else {
                return Ok(Finalized::NotFound);
            };
            let detail = serde_json::json!({"reason": reason.as_str()});
            if !end_pending(tx, &id, status, Some(reason), answer, now_unix_s, detail)? {
                return Ok(Finalized::NotPending(current));
            }
            let updated = get_tx(tx, &id)?.ok_or_else(|| corrupt("transaction vanished"))?;
            Ok(Finalized::Applied(updated))
        })
        .await
    }

    async fn apply_signed_confirmation(
        &self,
        c: SignedConfirmation,
    ) -> Result<Finalized, StoreError> {
        self.write(move |tx| {
            let Some(current) = get_tx(tx, &c.transaction_id)? else {
                return Ok(Finalized::NotFound);
            };
            let device = get_device(tx, &c.device_id)?;
            let payer = get_account(tx, &current.payer)?.ok_or_else(|| corrupt("payer missing"))?;
            let decision = payment::decide(PaymentFacts::of(&current, device.as_ref(), &payer, &c));
            let Some((status, reason)) = decision.outcome() else {
                return Ok(Finalized::NotPending(current));
            };
            if let (true, Some(counter)) = (decision.consumes_counter(), c.counter) {
                let changed = exec(
                    tx,
                    "UPDATE devices SET last_counter = ?1, updated_at = ?2
                         WHERE id = ?3 AND last_counter < ?1",
                    params![counter, to_i64(c.now_unix_s)?, c.device_id],
                )
                .map_err(backend)?;
                if changed != 1 {
                    return Err(corrupt("device counter moved inside the transaction"));
                }
            }
            if decision == PaymentDecision::Settle {
                let balance_before = payer.balance_minor;
                let payment = Transfer {
                    kind: TransferKind::Payment,
                    transaction_id: Some(&current.id),
                    debit: &current.payer,
                    credit: &current.payee,
                    amount_minor: current.amount_minor,
                    currency: current.currency,
                };
                transfer(tx, payment, c.now_unix_s)?;
                let after = get_account(tx, &current.payer)?.ok_or_else(|| corrupt("payer"))?;
                payment::check_settled(balance_before, &after, current.amount_minor)?;
            }
            let detail = payment::answered_detail(&c, reason);
            if !end_pending(
                tx,
                &current.id,
                status,
                reason,
                c.answer,
                c.now_unix_s,
                detail,
            )? {
                return Err(corrupt(
                    "pending transaction changed inside the transaction",
                ));
            }
            // Exactly what `end_pending` wrote; reading it back would cost the
            // serial writer a query per payment.
            Ok(Finalized::Applied(TransactionRecord {
                status,
                reason,
                updated_at_unix_s: c.now_unix_s,
                ..current
            }))
        })
        .await
    }

    async fn expire_due(&self, now_unix_s: u64) -> Result<Vec<TransactionRecord>, StoreError> {
        self.write(move |tx| {
            let due = query_txs(tx, PENDING_DUE, [to_i64(now_unix_s)?])?;
            let mut expired = Vec::with_capacity(due.len());
            for t in due {
                let detail =
                    serde_json::json!({"reason": Reason::Expired.as_str(), "by": "sweeper"});
                if end_pending(
                    tx,
                    &t.id,
                    TransactionStatus::Expired,
                    Some(Reason::Expired),
                    None,
                    now_unix_s,
                    detail,
                )? {
                    expired.push(get_tx(tx, &t.id)?.ok_or_else(|| corrupt("vanished"))?);
                }
            }
            Ok(expired)
        })
        .await
    }

    async fn ending_answer(&self, id: &TransactionId) -> Result<Option<AnswerDigest>, StoreError> {
        let id = id.to_hex();
        self.run(move |conn| {
            let stored: Option<Option<Vec<u8>>> = one_row(
                conn,
                "SELECT answer_sha256 FROM transactions WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
            stored
                .flatten()
                .map(|digest| hash32(digest).map(AnswerDigest))
                .transpose()
        })
        .await
    }

    async fn transfers_for_transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Vec<TransferRecord>, StoreError> {
        let id = *id;
        self.run(move |conn| {
            select(
                conn,
                &format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE transaction_id = ?1 ORDER BY id"
                ),
                [id.to_hex()],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                },
                decode_transfer,
            )
        })
        .await
    }

    async fn audit_page(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.run(move |conn| audit_rows(conn, after_seq, limit))
            .await
    }

    async fn audit_for_transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let id = id.to_hex();
        self.run(move |conn| audit_rows_where(conn, AUDIT_OF_TRANSACTION, rusqlite::params![id]))
            .await
    }

    async fn check_books(&self) -> Result<BooksCheck, StoreError> {
        self.run(check_books).await
    }
}

/// The books' rules counted inside one read transaction, so that every query
/// sees the same commits.
fn check_books(conn: &Connection) -> Result<BooksCheck, StoreError> {
    let snapshot = conn.unchecked_transaction().map_err(backend)?;
    let mut broken = Vec::new();
    for rule in BooksRule::ALL {
        let n = count(&snapshot, rule.count_sql(), [])?;
        if n != 0 {
            broken.push((rule, n));
        }
    }
    Ok(BooksCheck {
        accounts: count(&snapshot, books::ACCOUNTS_SQL, [])?,
        transfers: count(&snapshot, books::TRANSFERS_SQL, [])?,
        broken,
    })
}

/// Up to `limit` audit rows after `after_seq`, in `seq` order.
fn audit_rows(
    conn: &Connection,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<AuditRecord>, StoreError> {
    audit_rows_where(
        conn,
        "WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        rusqlite::params![to_i64(after_seq)?, limit],
    )
}

/// The audit rows a `WHERE … ORDER BY …` clause selects.
fn audit_rows_where(
    conn: &Connection,
    clause: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<AuditRecord>, StoreError> {
    select(
        conn,
        &format!("SELECT {AUDIT_COLUMNS} FROM audit_log {clause}"),
        params,
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
        decode_audit,
    )
}

#[cfg(test)]
mod tests;
