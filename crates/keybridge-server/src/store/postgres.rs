//! The PostgreSQL backend, for several server instances on one database.
//!
//! Writes from all instances run concurrently and serialise only where they
//! must:
//! - on the rows a decision depends on, locked in one order everywhere (the
//!   transaction, then the device), so concurrent writes never deadlock: two
//!   answers to one transaction, two payments from one card wait for each
//!   other instead. The row locks are `FOR NO KEY UPDATE`, what an UPDATE of
//!   non-key columns takes: the foreign-key checks of concurrent inserts (a
//!   new transaction naming the same merchant) take `KEY SHARE`, which that
//!   does not block. With `FOR UPDATE` it did, and 38 of 3,000 bench
//!   payments died in deadlocks;
//! - on the accounts, which a write does not lock: it inserts its transfer,
//!   and its commit moves both balances (migration `0003_post_at_commit`),
//!   lower account id first, after every other lock. So a merchant's row,
//!   which every payment to it changes, is held by each for its commit
//!   alone, and two payments in opposite directions cannot deadlock. The
//!   payer's funds, read without a lock, are checked again there; a settle
//!   that finds them spent runs again (`apply_signed_confirmation`);
//! - on the audit log, which is one hash chain: each row's hash needs the
//!   row before it. A write stages its audit rows (`audit_staging`, in its
//!   own transaction, so they commit or roll back with it), and the
//!   sealer (`postgres/sealer.rs`) chains committed rows into `audit_log` in batches, one seal
//!   at a time across instances (`AUDIT_LOCK`). So no write waits for
//!   another's audit rows, and commits share WAL flushes. Reads of the audit
//!   log seal first. Before, each write appended its own rows under that
//!   lock and held it to the end of its commit: every write of every
//!   instance passed through it one at a time.
//!
//! Compare-and-set updates (`WHERE status = 'pending'`, `last_counter <`)
//! and unique indexes stay a second line of defence, as in the SQLite
//! backend. PostgreSQL flushes its WAL at every commit (`synchronous_commit`
//! on, its default), so a settled payment is durable before anyone is told.
//!
//! Reads run on any pooled connection.

use std::sync::LazyLock;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use keybridge_proto::api::{Reason, TransactionStatus};
use keybridge_proto::{AccountId, TransactionId};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::books::{self, BooksCheck, BooksRule};
use super::rows::{
    self, corrupt, decode_account, decode_audit, decode_device, decode_transfer, decode_tx, hash32,
    issuance_account_id, to_i64, to_u64, ACCOUNT_COLUMNS, AUDIT_COLUMNS, DEVICE_COLUMNS,
    TRANSFER_COLUMNS, TX_COLUMNS,
};
use super::{
    AccountRecord, AnswerDigest, AuditRecord, BuildTransaction, CreateOutcome, CreationFacts,
    CreationKeys, DeviceRecord, Finalized, InsertOutcome, NewAccount, NewDevice, NewTerminal,
    SignedConfirmation, Store, StoreError, TerminalRecord, TransactionRecord, TransferKind,
    TransferRecord,
};
use crate::payment::{self, PaymentDecision, PaymentFacts};

pub mod scratch;
pub(crate) mod sealer;
pub(crate) mod web;

/// Numbered migrations, applied in order and recorded in `schema_migrations`.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "0002_audit_staging",
        include_str!("../../migrations/postgres/0002_audit_staging.sql"),
    ),
    (
        3,
        "0003_post_at_commit",
        include_str!("../../migrations/postgres/0003_post_at_commit.sql"),
    ),
    (
        4,
        "0004_terminal_disabled",
        include_str!("../../migrations/postgres/0004_terminal_disabled.sql"),
    ),
    (
        5,
        "0005_notify_at_commit",
        include_str!("../../migrations/postgres/0005_notify_at_commit.sql"),
    ),
    (
        6,
        "0006_audit_by_transaction",
        include_str!("../../migrations/postgres/0006_audit_by_transaction.sql"),
    ),
    (
        7,
        "0007_notify_key_rotation",
        include_str!("../../migrations/postgres/0007_notify_key_rotation.sql"),
    ),
    (
        8,
        "0008_notify_after_commit",
        include_str!("../../migrations/postgres/0008_notify_after_commit.sql"),
    ),
];

/// The advisory lock that orders appends to the audit chain: each seal
/// takes it ([`sealer`]), and so do migrations. An arbitrary constant: "KB"
/// in ASCII, then 1.
const AUDIT_LOCK: i64 = 0x4b42_0001;

/// The class of the advisory locks (two-key form, which never collides
/// with the one-key `AUDIT_LOCK`) that make creations for one payer take
/// turns across instances; the other key is a hash of the payer's id.
const PAYER_CREATION_LOCK_CLASS: i32 = 0x4b42;

/// How many times a settle runs when its commit keeps finding the payer's
/// funds spent by another payment (see `apply_signed_confirmation`).
const SETTLE_ATTEMPTS: usize = 4;

/// Connections per instance: enough for the reads of a busy server while one
/// write holds the lock; PostgreSQL's default `max_connections` (100) leaves
/// room for several instances.
const POOL_SIZE: usize = 16;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A PostgreSQL database, shared by every server instance that opens it.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// This instance's id: its connections' `application_name`, which names
    /// the instance in the events its writes notify (migrations 5 and 8).
    instance: String,
    /// Stops when the last clone of this store is dropped.
    _sealer: std::sync::Arc<sealer::Sealer>,
}

// Hand-written: the pool's configuration holds the connection's password.
impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool_size", &self.pool.status().max_size)
            .finish_non_exhaustive()
    }
}

/// How to reach the database: the parsed URL, and TLS when a CA is given.
#[derive(Clone)]
pub struct Endpoint {
    pub config: tokio_postgres::Config,
    /// `None`: plain TCP (the database on this host or a private network).
    pub tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

// Hand-written: the configuration holds the connection's password.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// `url` is a `postgres://` URL or a `key=value` string. With `ca_pem`
    /// (PEM certificates), the connection must be TLS (rustls) and the
    /// database's certificate must chain to one of them and name the host:
    /// a given CA means TLS is required, whatever `sslmode` the URL says.
    pub fn new(url: &str, ca_pem: Option<&std::path::Path>) -> Result<Endpoint, StoreError> {
        let mut config = parse_url(url)?;
        let Some(ca_pem) = ca_pem else {
            return Ok(Endpoint { config, tls: None });
        };
        use rustls::pki_types::pem::PemObject;
        let bad = |e: &dyn std::fmt::Display| {
            StoreError::Backend(format!("database CA {}: {e}", ca_pem.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if roots.is_empty() {
            return Err(bad(&"no certificate in the file"));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        Ok(Endpoint {
            config,
            tls: Some(tokio_postgres_rustls::MakeRustlsConnect::new(client)),
        })
    }
}

impl PgStore {
    /// Connects to the database at `endpoint` and applies pending migrations.
    pub async fn connect(mut endpoint: Endpoint, now_unix_s: u64) -> Result<PgStore, StoreError> {
        let id = crate::random::bytes::<8>()
            .map_err(|e| StoreError::Backend(format!("instance id: {e}")))?;
        let instance = format!("keybridge-{}", hex::encode(id));
        endpoint.config.application_name(&instance);
        // Verified: each connection taken from the pool first answers an
        // empty query, so one the database dropped (a restart, a failover)
        // is replaced instead of failing the request. With `Fast`, the first
        // requests after every connection was dropped failed with 500
        // (test `requests_work_again_after_the_database_drops_every_connection`).
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match endpoint.tls {
            Some(tls) => Manager::from_config(endpoint.config, tls, manager_config),
            None => Manager::from_config(endpoint.config, NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?;
        migrate(&pool, now_unix_s).await?;
        Ok(PgStore {
            _sealer: std::sync::Arc::new(sealer::Sealer::start(pool.clone())),
            pool,
            instance,
        })
    }

    /// This instance's id, as its writes' notifications name it.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        pooled(&self.pool).await
    }

    /// Runs `update` (`$1` the new value, `$2` the terminal's id) on an
    /// enabled terminal and audits `event` if it changed it; the terminal as
    /// it now is, `None` if there is none.
    async fn change_enabled_terminal(
        &self,
        update: &str,
        value: &(dyn ToSql + Sync),
        terminal_id: &str,
        now_unix_s: u64,
        event: &str,
    ) -> Result<Option<TerminalRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        let changed = exec(&tx, update, &[value, &terminal_id]).await?;
        if changed == 1 {
            let detail = serde_json::json!({"terminal": terminal_id});
            append_audit(&tx, now_unix_s, None, event, &detail).await?;
        }
        let terminal = get_terminal(&tx, terminal_id).await?;
        tx.commit().await.map_err(backend)?;
        Ok(terminal)
    }

    /// The (sealed) audit rows a `WHERE … ORDER BY …` clause selects.
    async fn audit_rows_where(
        &self,
        clause: &str,
        params: Params<'_>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log {clause}");
        select(&client, &sql, params, |r| {
            decode_audit((
                get(r, 0)?,
                get(r, 1)?,
                get(r, 2)?,
                get(r, 3)?,
                get(r, 4)?,
                get(r, 5)?,
                get(r, 6)?,
            ))
        })
        .await
    }
}

/// A connection from `pool`.
async fn pooled(pool: &Pool) -> Result<deadpool_postgres::Client, StoreError> {
    pool.get()
        .await
        .map_err(|e| StoreError::Backend(format!("database connection: {e}")))
}

/// Applies the migrations `pool`'s database has not had yet.
async fn migrate(pool: &Pool, now_unix_s: u64) -> Result<(), StoreError> {
    let mut client = pooled(pool).await?;
    for (version, name, sql) in MIGRATIONS {
        // The lock first: instances starting together would otherwise
        // race even on `CREATE TABLE IF NOT EXISTS`.
        let tx = client.transaction().await.map_err(backend)?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({AUDIT_LOCK});
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at BIGINT NOT NULL
             )"
        ))
        .await
        .map_err(backend)?;
        let applied = tx
            .query_opt(
                "SELECT version FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await
            .map_err(backend)?;
        if applied.is_none() {
            tx.batch_execute(sql).await.map_err(backend)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[version, name, &to_i64(now_unix_s)?],
            )
            .await
            .map_err(backend)?;
            tracing::info!(version, name, "applied migration");
        }
        tx.commit().await.map_err(backend)?;
    }
    Ok(())
}

/// Parses a connection URL without ever echoing it: it may hold a password.
fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    url.parse::<tokio_postgres::Config>()
        .map_err(|_| StoreError::Backend("the database URL does not parse".to_owned()))
}

/// Begins a write.
async fn begin_write(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client.transaction().await.map_err(backend)
}

pub(crate) fn backend(e: tokio_postgres::Error) -> StoreError {
    // The server's message, without the client's connection details.
    match e.as_db_error() {
        Some(db) => StoreError::Backend(format!("{}: {}", db.code().code(), db.message())),
        None => StoreError::Backend(e.to_string()),
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// A unique index said no: the record exists.
fn unique_to_exists(e: tokio_postgres::Error) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::AlreadyExists
    } else {
        backend(e)
    }
}

/// Runs `sql` through the connection's statement cache.
async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(backend)?;
    c.query(&statement, params).await.map_err(backend)
}

/// Runs the query `sql` and decodes each row with `decode`.
async fn select<T>(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
    decode: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    query(c, sql, params).await?.iter().map(decode).collect()
}

/// The first of `rows` decoded with `decode`, for queries by a unique key.
fn decode_first<T>(
    rows: &[Row],
    decode: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    rows.first().map(decode).transpose()
}

/// The first of `rows`, for queries by a unique key.
fn first<T>(rows: Vec<T>) -> Option<T> {
    rows.into_iter().next()
}

/// Runs the statement `sql` through the statement cache; a unique index
/// that refuses it means the record exists ([`StoreError::AlreadyExists`]).
async fn exec(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(backend)?;
    c.execute(&statement, params)
        .await
        .map_err(unique_to_exists)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

fn read_tx_row(r: &Row) -> Result<rows::TxRow, StoreError> {
    Ok((
        (
            get(r, 0)?,
            get(r, 1)?,
            get(r, 2)?,
            get(r, 3)?,
            get(r, 4)?,
            get(r, 5)?,
            get(r, 6)?,
            get(r, 7)?,
        ),
        (
            get(r, 8)?,
            get(r, 9)?,
            get(r, 10)?,
            get(r, 11)?,
            get(r, 12)?,
            get(r, 13)?,
            get(r, 14)?,
            get(r, 15)?,
            get(r, 16)?,
        ),
    ))
}

fn read_device_row(r: &Row) -> Result<rows::DeviceRow, StoreError> {
    Ok((
        (
            get(r, 0)?,
            get(r, 1)?,
            get(r, 2)?,
            get(r, 3)?,
            get(r, 4)?,
            get(r, 5)?,
            get(r, 6)?,
            get(r, 7)?,
        ),
        (get(r, 8)?, get(r, 9)?, get(r, 10)?, get(r, 11)?),
    ))
}

fn read_account_row(r: &Row) -> Result<rows::AccountRow, StoreError> {
    Ok((
        get(r, 0)?,
        get(r, 1)?,
        get(r, 2)?,
        get(r, 3)?,
        get(r, 4)?,
        get(r, 5)?,
    ))
}

/// A payer's pending transactions not yet expired (`$1` payer, `$2` now).
const PENDING_OF_PAYER: &str =
    "WHERE payer = $1 AND status = 'pending' AND expires_at > $2 ORDER BY seq";
/// Pending transactions whose window has passed (`$1` now), oldest deadline first.
const PENDING_DUE: &str = "WHERE status = 'pending' AND expires_at <= $1 ORDER BY expires_at, seq";

async fn query_txs(
    c: &impl GenericClient,
    where_clause: &str,
    params: Params<'_>,
) -> Result<Vec<TransactionRecord>, StoreError> {
    let sql = format!("SELECT {TX_COLUMNS} FROM transactions {where_clause}");
    select(c, &sql, params, |r| decode_tx(read_tx_row(r)?)).await
}

async fn get_tx(
    c: &impl GenericClient,
    id: &TransactionId,
) -> Result<Option<TransactionRecord>, StoreError> {
    Ok(first(query_txs(c, "WHERE id = $1", &[&id.to_hex()]).await?))
}

/// Reads the transaction and locks its row until the write ends: answers to
/// one transaction wait for each other here.
async fn lock_tx(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &TransactionId,
) -> Result<Option<TransactionRecord>, StoreError> {
    Ok(first(
        query_txs(tx, "WHERE id = $1 FOR NO KEY UPDATE", &[&id.to_hex()]).await?,
    ))
}

async fn query_devices(
    c: &impl GenericClient,
    where_clause: &str,
    params: Params<'_>,
) -> Result<Vec<DeviceRecord>, StoreError> {
    let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices {where_clause}");
    select(c, &sql, params, |r| decode_device(read_device_row(r)?)).await
}

async fn get_device(c: &impl GenericClient, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
    Ok(first(query_devices(c, "WHERE id = $1", &[&id]).await?))
}

async fn query_accounts(
    c: &impl GenericClient,
    where_clause: &str,
    params: Params<'_>,
) -> Result<Vec<AccountRecord>, StoreError> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts {where_clause}");
    select(c, &sql, params, |r| decode_account(read_account_row(r)?)).await
}

async fn get_account(
    c: &impl GenericClient,
    id: &AccountId,
) -> Result<Option<AccountRecord>, StoreError> {
    Ok(first(
        query_accounts(c, "WHERE id = $1", &[&id.as_str()]).await?,
    ))
}

async fn by_idempotency_key(
    c: &impl GenericClient,
    terminal_id: &str,
    key: &str,
) -> Result<Option<TransactionRecord>, StoreError> {
    Ok(first(
        query_txs(
            c,
            "WHERE terminal_id = $1 AND idempotency_key = $2",
            &[&terminal_id, &key],
        )
        .await?,
    ))
}

/// Until the transaction ends, no other creation for `payer` gets past this.
async fn lock_payer_creations(c: &impl GenericClient, payer: &AccountId) -> Result<(), StoreError> {
    query(
        c,
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&PAYER_CREATION_LOCK_CLASS, &payer.as_str()],
    )
    .await
    .map(drop)
}

/// The payer's pending, unexpired transactions, up to the keys' maximum.
async fn count_pending(c: &impl GenericClient, keys: &CreationKeys) -> Result<u64, StoreError> {
    let rows = query(
        c,
        "SELECT count(*) FROM (SELECT 1 FROM transactions
             WHERE payer = $1 AND status = 'pending' AND expires_at > $2 LIMIT $3) AS p",
        &[
            &keys.payer.as_str(),
            &to_i64(keys.now_unix_s)?,
            &to_i64(keys.pending_count_max)?,
        ],
    )
    .await?;
    let row = rows
        .first()
        .ok_or_else(|| corrupt("count returned no row"))?;
    to_u64(get(row, 0)?)
}

async fn count_active_devices(
    c: &impl GenericClient,
    account: &AccountId,
) -> Result<u64, StoreError> {
    let rows = query(
        c,
        "SELECT count(*) FROM devices
             WHERE account_id = $1 AND status = 'active' AND revoked_at IS NULL",
        &[&account.as_str()],
    )
    .await?;
    let row = rows
        .first()
        .ok_or_else(|| corrupt("count returned no row"))?;
    to_u64(get(row, 0)?)
}

async fn query_terminals(
    c: &impl GenericClient,
    where_clause: &str,
    params: Params<'_>,
) -> Result<Vec<TerminalRecord>, StoreError> {
    let sql = format!("SELECT id, name, disabled_at FROM terminals {where_clause}");
    select(c, &sql, params, |r| {
        Ok(TerminalRecord {
            id: get(r, 0)?,
            name: get(r, 1)?,
            disabled_at_unix_s: get::<Option<i64>>(r, 2)?.map(to_u64).transpose()?,
        })
    })
    .await
}

async fn get_terminal(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<TerminalRecord>, StoreError> {
    Ok(first(query_terminals(c, "WHERE id = $1", &[&id]).await?))
}

/// Stages one audit row in the caller's write; the [`sealer`] chains it
/// once the write has committed, so nothing here waits for other writers.
async fn append_audit(
    tx: &deadpool_postgres::Transaction<'_>,
    at_unix_s: u64,
    transaction_id: Option<&TransactionId>,
    event: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    exec(
        tx,
        "INSERT INTO audit_staging (at, transaction_id, event, detail) VALUES ($1, $2, $3, $4)",
        &[
            &to_i64(at_unix_s)?,
            &transaction_id.map(TransactionId::to_hex),
            &event,
            &detail.to_string(),
        ],
    )
    .await?;
    Ok(())
}

/// One transfer to write.
struct Transfer<'a> {
    kind: TransferKind,
    transaction_id: Option<&'a TransactionId>,
    debit: &'a AccountId,
    credit: &'a AccountId,
    amount_minor: u64,
    currency: keybridge_proto::Currency,
}

/// Writes one double-entry transfer. Its commit moves both balances by the
/// same amount (migration `0003_post_at_commit`): commit it with
/// [`commit_posting`].
async fn transfer(
    tx: &deadpool_postgres::Transaction<'_>,
    t: Transfer<'_>,
    now_unix_s: u64,
) -> Result<(), StoreError> {
    let amount = i64::try_from(t.amount_minor).map_err(|_| StoreError::BalanceOverflow)?;
    exec(
        tx,
        "INSERT INTO transfers
                 (transaction_id, kind, debit_account, credit_account, amount_minor, currency,
                  created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &t.transaction_id.map(TransactionId::to_hex),
            &t.kind.as_str(),
            &t.debit.as_str(),
            &t.credit.as_str(),
            &amount,
            &t.currency.code(),
            &to_i64(now_unix_s)?,
        ],
    )
    .await?;
    Ok(())
}

/// How the commit of a write with transfers went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Posted {
    Committed,
    /// Posting a transfer would have left a customer account below zero:
    /// the funds read by the write were spent by another one that committed
    /// first. Nothing was written.
    Overdrawn,
}

/// Commits a write whose transfers are posted by its commit (migration
/// `0003_post_at_commit`); a balance past BIGINT is
/// [`StoreError::BalanceOverflow`].
async fn commit_posting(tx: deadpool_postgres::Transaction<'_>) -> Result<Posted, StoreError> {
    let Err(e) = tx.commit().await else {
        return Ok(Posted::Committed);
    };
    let on_accounts = e.as_db_error().and_then(|d| d.table()) == Some("accounts");
    match e.code() {
        Some(&SqlState::CHECK_VIOLATION) if on_accounts => Ok(Posted::Overdrawn),
        Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE) => Err(StoreError::BalanceOverflow),
        _ => Err(backend(e)),
    }
}

/// Inserts a new `pending` transaction and its audit row; the unique index on
/// `(terminal_id, idempotency_key)` decides a race between two requests.
async fn insert_tx(
    tx: &deadpool_postgres::Transaction<'_>,
    t: TransactionRecord,
) -> Result<InsertOutcome, StoreError> {
    // ON CONFLICT instead of catching the violation: in PostgreSQL a failed
    // statement aborts the whole transaction, so the existing row could not
    // be read after it. A clash on the id itself still fails.
    let inserted = exec(
        tx,
        &format!(
            "INSERT INTO transactions ({TX_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             ON CONFLICT (terminal_id, idempotency_key) DO NOTHING"
        ),
        &[
            &t.id.to_hex(),
            &t.terminal_id,
            &t.idempotency_key,
            &t.request_hash.as_slice(),
            &t.payer.as_str(),
            &t.payee.as_str(),
            &t.payee_name,
            &to_i64(t.amount_minor)?,
            &t.currency.code(),
            &t.order_id,
            &t.description,
            &t.payload,
            &t.status.as_str(),
            &t.reason.map(|r| r.as_str()),
            &to_i64(t.created_at_unix_s)?,
            &to_i64(t.expires_at_unix_s)?,
            &to_i64(t.updated_at_unix_s)?,
        ],
    )
    .await?;
    if inserted == 0 {
        let existing = by_idempotency_key(tx, &t.terminal_id, &t.idempotency_key)
            .await?
            .ok_or(StoreError::AlreadyExists)?;
        return Ok(InsertOutcome::Existing(existing));
    }
    append_audit(
        tx,
        t.created_at_unix_s,
        Some(&t.id),
        "transaction_created",
        &rows::transaction_created_detail(&t),
    )
    .await?;
    Ok(InsertOutcome::Created(t))
}

/// Compare-and-set from `pending` to a final status, with its audit row and
/// the answer that ended it, if one did. The audit row is staged only if the
/// row changed, so a caller may commit after `false`.
async fn end_pending(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &TransactionId,
    status: TransactionStatus,
    reason: Option<Reason>,
    answer: Option<AnswerDigest>,
    now_unix_s: u64,
    detail: serde_json::Value,
) -> Result<bool, StoreError> {
    let changed = set_final(tx, id, status, reason, answer, now_unix_s).await?;
    if changed {
        append_audit(tx, now_unix_s, Some(id), &end_event(status), &detail).await?;
    }
    Ok(changed)
}

/// The compare-and-set of [`end_pending`] alone: whether the row was pending.
async fn set_final(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &TransactionId,
    status: TransactionStatus,
    reason: Option<Reason>,
    answer: Option<AnswerDigest>,
    now_unix_s: u64,
) -> Result<bool, StoreError> {
    debug_assert!(status.is_final());
    let changed = exec(
        tx,
        "UPDATE transactions SET status = $1, reason = $2, updated_at = $3, answer_sha256 = $4
             WHERE id = $5 AND status = 'pending'",
        &[
            &status.as_str(),
            &reason.map(|r| r.as_str()),
            &to_i64(now_unix_s)?,
            &answer.as_ref().map(|a| a.0.as_slice()),
            &id.to_hex(),
        ],
    )
    .await?;
    Ok(changed == 1)
}

/// The audit event of an end with `status`.
fn end_event(status: TransactionStatus) -> String {
    format!("transaction_{}", status.as_str())
}

/// One administrative change to a device: `update` and, if it changed the
/// row, the audit row `event` with `detail`. Returns the device as it now
/// is, `None` if there is none.
#[allow(clippy::too_many_arguments)]
async fn change_device(
    tx: &deadpool_postgres::Transaction<'_>,
    device_id: &str,
    update: &str,
    params: Params<'_>,
    now_unix_s: u64,
    event: &str,
    detail: &serde_json::Value,
) -> Result<Option<DeviceRecord>, StoreError> {
    if exec(tx, update, params).await? == 1 {
        append_audit(tx, now_unix_s, None, event, detail).await?;
    }
    get_device(tx, device_id).await
}

impl PgStore {
    /// Runs one device change as a write and commits it.
    async fn device_write(
        &self,
        device_id: &str,
        update: &str,
        params: Params<'_>,
        now_unix_s: u64,
        event: &str,
        detail: serde_json::Value,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        let device =
            change_device(&tx, device_id, update, params, now_unix_s, event, &detail).await?;
        tx.commit().await.map_err(backend)?;
        Ok(device)
    }
}

impl PgStore {
    /// One attempt at [`Store::apply_signed_confirmation`]; `None` if its
    /// commit found the payer's funds spent by another write (nothing
    /// written).
    async fn settle_once(&self, c: &SignedConfirmation) -> Result<Option<Finalized>, StoreError> {
        // Four round trips: begin, the reads and locks, the writes, the
        // commit, which also moves the balances (migration 3). The accounts
        // are locked only there, in id order, so a merchant's row is held
        // by each payment to it for its commit alone.
        static LOCK_TX: LazyLock<String> = LazyLock::new(|| {
            format!("SELECT {TX_COLUMNS} FROM transactions WHERE id = $1 FOR NO KEY UPDATE")
        });
        static LOCK_DEVICE: LazyLock<String> = LazyLock::new(|| {
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1 FOR NO KEY UPDATE")
        });
        static READ_PAYER: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts
                 WHERE id = (SELECT payer FROM transactions WHERE id = $1)"
            )
        });
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        // The lock order of every write: transaction, device, then (at
        // commit) accounts by id. The three go out in one round trip and
        // keep that order: prepared first, their requests are sent in the
        // order `try_join!` first polls them, and PostgreSQL runs a
        // connection's statements in the order sent.
        let (lock_tx, lock_device, read_payer) = tokio::try_join!(
            tx.prepare_cached(&LOCK_TX),
            tx.prepare_cached(&LOCK_DEVICE),
            tx.prepare_cached(&READ_PAYER),
        )
        .map_err(backend)?;
        let tx_id = c.transaction_id.to_hex();
        let (by_tx, by_device): (Params<'_>, Params<'_>) = (&[&tx_id], &[&c.device_id]);
        let (tx_rows, device_rows, account_rows) = tokio::try_join!(
            tx.query(&lock_tx, by_tx),
            tx.query(&lock_device, by_device),
            tx.query(&read_payer, by_tx),
        )
        .map_err(backend)?;
        let Some(current) = decode_first(&tx_rows, |r| decode_tx(read_tx_row(r)?))? else {
            return Ok(Some(Finalized::NotFound));
        };
        let device = decode_first(&device_rows, |r| decode_device(read_device_row(r)?))?;
        let payer = decode_first(&account_rows, |r| decode_account(read_account_row(r)?))?
            .ok_or_else(|| corrupt("payer missing"))?;
        let decision = payment::decide(PaymentFacts::of(&current, device.as_ref(), &payer, c));
        let Some((status, reason)) = decision.outcome() else {
            return Ok(Some(Finalized::NotPending(current)));
        };
        let counter = c.counter.filter(|_| decision.consumes_counter());
        let (event, detail) = (end_event(status), payment::answered_detail(c, reason));
        let now = to_i64(c.now_unix_s)?;
        // Every row changed here is locked above (the transfer is a new row),
        // so the order in which these statements run does not matter; one
        // failing aborts the rest.
        let (counter_moved, (), ended, ()) = tokio::try_join!(
            async {
                let Some(counter) = counter else {
                    return Ok(true);
                };
                let changed = exec(
                    &tx,
                    "UPDATE devices SET last_counter = $1, updated_at = $2
                         WHERE id = $3 AND last_counter < $1",
                    &[&i64::from(counter), &now, &c.device_id],
                )
                .await?;
                Ok(changed == 1)
            },
            async {
                if decision != PaymentDecision::Settle {
                    return Ok(());
                }
                let payment = Transfer {
                    kind: TransferKind::Payment,
                    transaction_id: Some(&current.id),
                    debit: &current.payer,
                    credit: &current.payee,
                    amount_minor: current.amount_minor,
                    currency: current.currency,
                };
                transfer(&tx, payment, c.now_unix_s).await
            },
            set_final(&tx, &current.id, status, reason, c.answer, c.now_unix_s),
            append_audit(&tx, c.now_unix_s, Some(&current.id), &event, &detail),
        )?;
        if !counter_moved {
            return Err(corrupt("device counter moved inside the transaction"));
        }
        if !ended {
            return Err(corrupt(
                "pending transaction changed inside the transaction",
            ));
        }
        if commit_posting(tx).await? == Posted::Overdrawn {
            return Ok(None);
        }
        Ok(Some(Finalized::Applied(TransactionRecord {
            status,
            reason,
            updated_at_unix_s: c.now_unix_s,
            ..current
        })))
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_account(
        &self,
        account: NewAccount,
        now_unix_s: u64,
    ) -> Result<AccountRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        if get_account(&tx, &account.id).await?.is_some() {
            return Err(StoreError::AlreadyExists);
        }
        let now = to_i64(now_unix_s)?;
        let issuance = issuance_account_id(account.currency)?;
        // Two instances may open the currency's first accounts at once.
        let issuance_created = exec(
            &tx,
            "INSERT INTO accounts (id, display_name, currency, balance_minor, system, created_at)
             VALUES ($1, $2, $3, 0, TRUE, $4) ON CONFLICT (id) DO NOTHING",
            &[
                &issuance.as_str(),
                &format!("{} issuance", account.currency.code()),
                &account.currency.code(),
                &now,
            ],
        )
        .await?
            == 1;
        exec(
            &tx,
            "INSERT INTO accounts (id, display_name, currency, balance_minor, system, created_at)
                 VALUES ($1, $2, $3, 0, FALSE, $4)",
            &[
                &account.id.as_str(),
                &account.display_name,
                &account.currency.code(),
                &now,
            ],
        )
        .await?;
        if account.opening_balance_minor > 0 {
            let opening = Transfer {
                kind: TransferKind::Opening,
                transaction_id: None,
                debit: &issuance,
                credit: &account.id,
                amount_minor: account.opening_balance_minor,
                currency: account.currency,
            };
            transfer(&tx, opening, now_unix_s).await?;
        }
        if issuance_created {
            append_audit(
                &tx,
                now_unix_s,
                None,
                "account_created",
                &serde_json::json!({"account": issuance.as_str(), "system": true}),
            )
            .await?;
        }
        append_audit(
            &tx,
            now_unix_s,
            None,
            "account_created",
            &serde_json::json!({
                "account": account.id.as_str(),
                "currency": account.currency.code(),
                "opening_balance_minor": account.opening_balance_minor,
            }),
        )
        .await?;
        if commit_posting(tx).await? == Posted::Overdrawn {
            // An opening debits the issuance account, which may go negative.
            return Err(corrupt("an opening balance overdrew a customer account"));
        }
        get_account(&client, &account.id)
            .await?
            .ok_or_else(|| corrupt("account vanished"))
    }

    async fn get_account(&self, id: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
        get_account(&self.client().await?, id).await
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        query_accounts(&self.client().await?, "ORDER BY id", &[]).await
    }

    async fn create_terminal(&self, terminal: NewTerminal) -> Result<TerminalRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        exec(
            &tx,
            "INSERT INTO terminals (id, name, api_key_hash, created_at) VALUES ($1, $2, $3, $4)",
            &[
                &terminal.id,
                &terminal.name,
                &terminal.api_key_hash.as_slice(),
                &to_i64(terminal.created_at_unix_s)?,
            ],
        )
        .await?;
        append_audit(
            &tx,
            terminal.created_at_unix_s,
            None,
            "terminal_created",
            &serde_json::json!({"terminal": terminal.id, "name": terminal.name}),
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(TerminalRecord {
            id: terminal.id,
            name: terminal.name,
            disabled_at_unix_s: None,
        })
    }

    async fn list_terminals(&self) -> Result<Vec<TerminalRecord>, StoreError> {
        let client = self.client().await?;
        query_terminals(&client, "ORDER BY id", &[]).await
    }

    async fn get_terminal(&self, terminal_id: &str) -> Result<Option<TerminalRecord>, StoreError> {
        let client = self.client().await?;
        get_terminal(&client, terminal_id).await
    }

    async fn disable_terminal(
        &self,
        terminal_id: &str,
        now_unix_s: u64,
    ) -> Result<Option<TerminalRecord>, StoreError> {
        self.change_enabled_terminal(
            "UPDATE terminals SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NULL",
            &to_i64(now_unix_s)?,
            terminal_id,
            now_unix_s,
            "terminal_disabled",
        )
        .await
    }

    async fn rotate_terminal_key(
        &self,
        terminal_id: &str,
        api_key_hash: [u8; 32],
        now_unix_s: u64,
    ) -> Result<Option<TerminalRecord>, StoreError> {
        self.change_enabled_terminal(
            "UPDATE terminals SET api_key_hash = $1 WHERE id = $2 AND disabled_at IS NULL",
            &api_key_hash.as_slice(),
            terminal_id,
            now_unix_s,
            "terminal_key_rotated",
        )
        .await
    }

    async fn terminal_by_key_hash(
        &self,
        api_key_hash: [u8; 32],
    ) -> Result<Option<TerminalRecord>, StoreError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT id, name FROM terminals WHERE api_key_hash = $1 AND disabled_at IS NULL",
            &[&api_key_hash.as_slice()],
        )
        .await?;
        rows.first()
            .map(|r| {
                Ok(TerminalRecord {
                    id: get(r, 0)?,
                    name: get(r, 1)?,
                    disabled_at_unix_s: None,
                })
            })
            .transpose()
    }

    async fn create_device(&self, device: NewDevice) -> Result<DeviceRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        match get_account(&tx, &device.account).await? {
            Some(a) if !a.system => {}
            _ => return Err(StoreError::UnknownAccount),
        }
        let now = to_i64(device.created_at_unix_s)?;
        let (ocra_suite, ocra_secret) = match &device.ocra {
            Some(o) => (Some(o.suite.as_str()), Some(o.sealed_secret.as_slice())),
            None => (None, None),
        };
        exec(
            &tx,
            "INSERT INTO devices (id, account_id, label, public_key, certificate,
                     credential_hash, status, last_counter, created_at, updated_at,
                     method, ocra_suite, ocra_secret)
                 VALUES ($1, $2, $3, $4, $5, $6, 'active', 0, $7, $7, $8, $9, $10)",
            &[
                &device.id,
                &device.account.as_str(),
                &device.label,
                &device.public_key,
                &device.certificate,
                &device.credential_hash.as_slice(),
                &now,
                &device.method.as_str(),
                &ocra_suite,
                &ocra_secret,
            ],
        )
        .await?;
        append_audit(
            &tx,
            device.created_at_unix_s,
            None,
            "device_enrolled",
            &serde_json::json!({
                "device": device.id,
                "account": device.account.as_str(),
                "method": device.method.as_str(),
            }),
        )
        .await?;
        let created = get_device(&tx, &device.id)
            .await?
            .ok_or_else(|| corrupt("device vanished"))?;
        tx.commit().await.map_err(backend)?;
        Ok(created)
    }

    async fn device_by_credential_hash(
        &self,
        credential_hash: [u8; 32],
    ) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(first(
            query_devices(
                &self.client().await?,
                "WHERE credential_hash = $1",
                &[&credential_hash.as_slice()],
            )
            .await?,
        ))
    }

    async fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        query_devices(&self.client().await?, "ORDER BY created_at, id", &[]).await
    }

    async fn disable_device(
        &self,
        device_id: &str,
        now_unix_s: u64,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.device_write(
            device_id,
            "UPDATE devices SET status = 'disabled', updated_at = $1
                 WHERE id = $2 AND status <> 'disabled'",
            &[&to_i64(now_unix_s)?, &device_id],
            now_unix_s,
            "device_disabled",
            serde_json::json!({"device": device_id}),
        )
        .await
    }

    async fn count_active_devices(&self, account: &AccountId) -> Result<u64, StoreError> {
        count_active_devices(&self.client().await?, account).await
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        get_device(&self.client().await?, device_id).await
    }

    async fn rename_device(
        &self,
        device_id: &str,
        label: &str,
        now_unix_s: u64,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.device_write(
            device_id,
            "UPDATE devices SET label = $1, updated_at = $2 WHERE id = $3",
            &[&label, &to_i64(now_unix_s)?, &device_id],
            now_unix_s,
            "device_renamed",
            serde_json::json!({"device": device_id, "label": label}),
        )
        .await
    }

    async fn revoke_device(
        &self,
        device_id: &str,
        now_unix_s: u64,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.device_write(
            device_id,
            "UPDATE devices SET revoked_at = $1, updated_at = $1
                 WHERE id = $2 AND revoked_at IS NULL",
            &[&to_i64(now_unix_s)?, &device_id],
            now_unix_s,
            "device_revoked",
            serde_json::json!({"device": device_id}),
        )
        .await
    }

    async fn create_transaction(
        &self,
        keys: CreationKeys,
        build: BuildTransaction,
    ) -> Result<CreateOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        // The payer's pending transactions are counted once this creation
        // holds the payer's lock: another instance creating for the payer has
        // committed its insert by then, or waits for this commit. A round
        // trip of its own: pipelined with the reads below, the lock did not
        // reliably run first (`concurrent_creations_for_one_payer_stop_at_the_limit`
        // let six of twelve through a limit of three).
        lock_payer_creations(&tx, &keys.payer).await?;
        // Independent reads: pipelined, one round trip.
        let (existing, payer, payee, payer_active_devices, payer_pending) = tokio::try_join!(
            by_idempotency_key(&tx, &keys.terminal_id, &keys.idempotency_key),
            get_account(&tx, &keys.payer),
            get_account(&tx, &keys.payee),
            count_active_devices(&tx, &keys.payer),
            count_pending(&tx, &keys)
        )?;
        if let Some(existing) = existing {
            return Ok(CreateOutcome::Existing(existing));
        }
        let facts = CreationFacts {
            payer,
            payee,
            payer_active_devices,
            payer_pending,
        };
        let outcome = match build(&facts) {
            Some(record) => match insert_tx(&tx, record).await? {
                InsertOutcome::Created(record) => CreateOutcome::Created(record),
                InsertOutcome::Existing(record) => CreateOutcome::Existing(record),
            },
            None => return Ok(CreateOutcome::Refused(facts)),
        };
        tx.commit().await.map_err(backend)?;
        Ok(outcome)
    }

    async fn insert_transaction(&self, t: TransactionRecord) -> Result<InsertOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        let outcome = insert_tx(&tx, t).await?;
        tx.commit().await.map_err(backend)?;
        Ok(outcome)
    }

    async fn get_transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Option<TransactionRecord>, StoreError> {
        get_tx(&self.client().await?, id).await
    }

    async fn transactions_before(
        &self,
        before: &TransactionId,
        limit: u32,
    ) -> Result<Option<Vec<TransactionRecord>>, StoreError> {
        let client = self.client().await?;
        // A row's `seq` never changes: the two reads need no common snapshot.
        let rows = query(
            &client,
            "SELECT seq FROM transactions WHERE id = $1",
            &[&before.to_hex()],
        )
        .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let seq: i64 = get(row, 0)?;
        query_txs(
            &client,
            "WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
            &[&seq, &i64::from(limit)],
        )
        .await
        .map(Some)
    }

    async fn list_transactions(&self, limit: u32) -> Result<Vec<TransactionRecord>, StoreError> {
        query_txs(
            &self.client().await?,
            "ORDER BY seq DESC LIMIT $1",
            &[&i64::from(limit)],
        )
        .await
    }

    async fn pending_for_payer(
        &self,
        payer: &AccountId,
        now_unix_s: u64,
    ) -> Result<Vec<TransactionRecord>, StoreError> {
        query_txs(
            &self.client().await?,
            PENDING_OF_PAYER,
            &[&payer.as_str(), &to_i64(now_unix_s)?],
        )
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
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        let Some(current) = lock_tx(&tx, id).await? else {
            return Ok(Finalized::NotFound);
        };
        let detail = serde_json::json!({"reason": reason.as_str()});
        if !end_pending(&tx, id, status, Some(reason), answer, now_unix_s, detail).await? {
            return Ok(Finalized::NotPending(current));
        }
        let updated = get_tx(&tx, id)
            .await?
            .ok_or_else(|| corrupt("transaction vanished"))?;
        tx.commit().await.map_err(backend)?;
        Ok(Finalized::Applied(updated))
    }

    async fn apply_signed_confirmation(
        &self,
        c: SignedConfirmation,
    ) -> Result<Finalized, StoreError> {
        // The payer's funds are read without a lock and checked again when
        // the commit posts the debit; if another payment from the same payer
        // committed in between and left too little, the write runs again on
        // what is there now (and ends `failed/insufficient_funds`). Each
        // round needs another payment from that payer to commit first, so
        // the bound only stops a pathological stream of them.
        for _ in 1..SETTLE_ATTEMPTS {
            if let Some(finalized) = self.settle_once(&c).await? {
                return Ok(finalized);
            }
        }
        self.settle_once(&c)
            .await?
            .ok_or_else(|| StoreError::Backend("the payer's balance kept changing".into()))
    }

    async fn expire_due(&self, now_unix_s: u64) -> Result<Vec<TransactionRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        let due = query_txs(&tx, PENDING_DUE, &[&to_i64(now_unix_s)?]).await?;
        let mut expired = Vec::with_capacity(due.len());
        for t in due {
            let detail = serde_json::json!({"reason": Reason::Expired.as_str(), "by": "sweeper"});
            if end_pending(
                &tx,
                &t.id,
                TransactionStatus::Expired,
                Some(Reason::Expired),
                None,
                now_unix_s,
                detail,
            )
            .await?
            {
                expired.push(
                    get_tx(&tx, &t.id)
                        .await?
                        .ok_or_else(|| corrupt("vanished"))?,
                );
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(expired)
    }

    async fn ending_answer(&self, id: &TransactionId) -> Result<Option<AnswerDigest>, StoreError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT answer_sha256 FROM transactions WHERE id = $1",
            &[&id.to_hex()],
        )
        .await?;
        let stored: Option<Vec<u8>> = match rows.first() {
            Some(row) => get(row, 0)?,
            None => None,
        };
        stored
            .map(|digest| hash32(digest).map(AnswerDigest))
            .transpose()
    }

    async fn transfers_for_transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Vec<TransferRecord>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE transaction_id = $1 ORDER BY id"
        );
        select(&client, &sql, &[&id.to_hex()], |r| {
            decode_transfer((
                get(r, 0)?,
                get(r, 1)?,
                get(r, 2)?,
                get(r, 3)?,
                get(r, 4)?,
                get(r, 5)?,
                get(r, 6)?,
                get(r, 7)?,
            ))
        })
        .await
    }

    async fn audit_page(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        if after_seq == 0 {
            // Every row committed before this call, chained.
            sealer::seal_all(&self.pool).await?;
        }
        self.audit_rows_where(
            "WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&to_i64(after_seq)?, &i64::from(limit)],
        )
        .await
    }

    async fn audit_for_transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        // Its rows may still be staged: chain every row committed so far.
        sealer::seal_all(&self.pool).await?;
        self.audit_rows_where("WHERE transaction_id = $1 ORDER BY seq", &[&id.to_hex()])
            .await
    }

    async fn check_books(&self) -> Result<BooksCheck, StoreError> {
        let mut client = self.client().await?;
        // One snapshot for every query: a payment committing meanwhile is
        // wholly in the check or not at all.
        let snapshot = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(backend)?;
        let mut broken = Vec::new();
        for rule in BooksRule::ALL {
            let n = count(&snapshot, rule.count_sql()).await?;
            if n != 0 {
                broken.push((rule, n));
            }
        }
        let check = BooksCheck {
            accounts: count(&snapshot, books::ACCOUNTS_SQL).await?,
            transfers: count(&snapshot, books::TRANSFERS_SQL).await?,
            broken,
        };
        snapshot.commit().await.map_err(backend)?;
        Ok(check)
    }
}

/// The one number a `SELECT COUNT(*) …` answers.
async fn count(c: &impl GenericClient, sql: &str) -> Result<u64, StoreError> {
    let rows = query(c, sql, &[]).await?;
    let row = rows
        .first()
        .ok_or_else(|| corrupt("a count returned no row"))?;
    to_u64(get(row, 0)?)
}

#[cfg(test)]
mod tests;
