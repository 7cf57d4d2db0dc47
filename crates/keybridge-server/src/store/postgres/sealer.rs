//! The sealer: chains committed audit rows from `audit_staging` into
//! `audit_log` (migration `0002_audit_staging` says why writes do not chain
//! their own).
//!
//! Each seal is one database transaction: take [`AUDIT_LOCK`], read the
//! oldest staged rows and the chain's last row, append the staged rows with
//! their hashes ([`audit::row_hash`], what [`audit::verify_chain`] checks),
//! delete them from staging, commit. The lock makes seals from several
//! instances follow one another, and a seal reads the chain only after the
//! previous one committed (READ COMMITTED takes a fresh snapshot per
//! statement, and a commit is visible before its locks are released), so the
//! chain never forks and no staged row is chained twice.
//!
//! Every instance runs one sealer task ([`Sealer::start`]), which seals
//! every [`PERIOD`] if another instance is not sealing at that moment.
//! Reads of the audit log seal first and wait for the lock ([`seal_all`]).

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};

use super::{backend, get, hash32, pooled, to_i64, to_u64, StoreError, AUDIT_LOCK};
use crate::store::audit;

/// How often an instance's sealer looks for staged rows.
pub(crate) const PERIOD: Duration = Duration::from_millis(50);

/// Most rows chained by one seal, so one seal's transaction stays short.
const BATCH: i64 = 2_000;

/// Whether a seal waits for another instance's seal to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Wait for the lock: a reader that must see every committed row.
    Yes,
    /// Skip if another instance holds it: it is sealing already.
    No,
}

/// The background task of one instance; stops when dropped.
#[derive(Debug)]
pub(crate) struct Sealer(pub(super) tokio::task::JoinHandle<()>);

impl Sealer {
    /// Starts sealing every [`PERIOD`] with connections from `pool`.
    pub(crate) fn start(pool: Pool) -> Sealer {
        Sealer(tokio::spawn(async move {
            let mut every = tokio::time::interval(PERIOD);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = seal_once(&pool, Wait::No).await {
                    // The rows stay staged; the next tick tries again.
                    tracing::warn!(error = %e, "sealing the audit log failed");
                }
            }
        }))
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Chains every row staged and committed before this call; returns how many
/// it chained.
pub(crate) async fn seal_all(pool: &Pool) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let chained = seal_once(pool, Wait::Yes).await?;
        total += chained;
        if chained < to_u64(BATCH)? {
            return Ok(total);
        }
    }
}

/// One seal of at most [`BATCH`] rows.
async fn seal_once(pool: &Pool, wait: Wait) -> Result<u64, StoreError> {
    let mut client = pooled(pool).await?;
    if wait == Wait::No {
        // Most ticks find nothing: do not take the lock for that.
        let staged = client
            .query_opt("SELECT 1 FROM audit_staging LIMIT 1", &[])
            .await
            .map_err(backend)?;
        if staged.is_none() {
            return Ok(0);
        }
    }
    let tx = client.transaction().await.map_err(backend)?;
    match wait {
        Wait::Yes => {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                .await
                .map_err(backend)?;
        }
        Wait::No => {
            let row = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                .await
                .map_err(backend)?;
            if !get::<bool>(&row, 0)? {
                return Ok(0);
            }
        }
    }
    let chained = chain_staged(&tx).await?;
    tx.commit().await.map_err(backend)?;
    Ok(chained)
}

/// Inside a seal's transaction, holding the lock: appends the oldest staged
/// rows to the chain and deletes them from staging.
async fn chain_staged(tx: &impl GenericClient) -> Result<u64, StoreError> {
    let staged = tx
        .query(
            "SELECT id, at, transaction_id, event, detail FROM audit_staging
             ORDER BY id LIMIT $1",
            &[&BATCH],
        )
        .await
        .map_err(backend)?;
    if staged.is_empty() {
        return Ok(0);
    }
    let last = tx
        .query_opt(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(backend)?;
    let (mut seq, mut prev) = match last {
        Some(row) => (to_u64(get(&row, 0)?)?, hash32(get(&row, 1)?)?),
        None => (0, audit::GENESIS_HASH),
    };
    let mut columns = Columns::with_capacity(staged.len());
    for row in &staged {
        let (id, at): (i64, i64) = (get(row, 0)?, get(row, 1)?);
        let transaction_id: Option<String> = get(row, 2)?;
        let (event, detail): (String, String) = (get(row, 3)?, get(row, 4)?);
        seq += 1;
        let hash = audit::row_hash(
            &prev,
            seq,
            to_u64(at)?,
            transaction_id.as_deref(),
            &event,
            &detail,
        );
        columns.staged_ids.push(id);
        columns.seq.push(to_i64(seq)?);
        columns.at.push(at);
        columns.transaction_id.push(transaction_id);
        columns.event.push(event);
        columns.detail.push(detail);
        columns.prev_hash.push(prev.to_vec());
        columns.hash.push(hash.to_vec());
        prev = hash;
    }
    tx.execute(
        "INSERT INTO audit_log (seq, at, transaction_id, event, detail, prev_hash, hash)
         SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                              $6::BYTEA[], $7::BYTEA[])",
        &[
            &columns.seq,
            &columns.at,
            &columns.transaction_id,
            &columns.event,
            &columns.detail,
            &columns.prev_hash,
            &columns.hash,
        ],
    )
    .await
    .map_err(backend)?;
    tx.execute(
        "DELETE FROM audit_staging WHERE id = ANY($1)",
        &[&columns.staged_ids],
    )
    .await
    .map_err(backend)?;
    Ok(u64::try_from(columns.seq.len()).unwrap_or(u64::MAX))
}

/// The rows of one seal, column by column, for one `UNNEST` insert.
struct Columns {
    staged_ids: Vec<i64>,
    seq: Vec<i64>,
    at: Vec<i64>,
    transaction_id: Vec<Option<String>>,
    event: Vec<String>,
    detail: Vec<String>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl Columns {
    fn with_capacity(n: usize) -> Columns {
        Columns {
            staged_ids: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            transaction_id: Vec::with_capacity(n),
            event: Vec::with_capacity(n),
            detail: Vec::with_capacity(n),
            prev_hash: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
        }
    }
}
