//! `--pending N`: the server's memory per pending confirmation.
//!
//! The payers' cards are enrolled but no relay runs, so every transaction the
//! terminal creates stays pending (the confirmation TTL outlasts the run).
//! Resident memory is read before and after creating N of them; this process
//! holds the server, so the difference over N is what the server keeps per
//! pending confirmation (plus whatever the terminal side retains, which the
//! warm-up below makes a fixed cost). Afterwards the store must still list
//! every one of them as pending, or the figure is refused.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keybridge_proto::api::{CreateTransaction, TransactionStatus};
use keybridge_server::RunningServer;
use tokio::task::JoinSet;

use super::load::Traffic;
use super::machine::{current_rss_kib, peak_rss_kib};

/// Transactions created before the first reading, so that one-time costs
/// (connections, buffers, caches filling) fall outside the measurement.
pub const WARMUP: u64 = 100;

/// The memory figures.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    /// Pending transactions created in the measured window.
    pub measured: u64,
    /// Pending transactions in all, warm-up included.
    pub total: u64,
    /// Time to create the measured ones.
    pub create: Duration,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// Peak RSS when the second reading was taken (before the check reads
    /// every pending transaction back).
    pub peak_rss_kib: u64,
}

impl Pending {
    /// (RSS after − RSS before) / measured, in bytes; negative if the process
    /// shrank.
    pub fn bytes_per_pending(&self) -> f64 {
        let delta_kib = self.rss_after_kib as f64 - self.rss_before_kib as f64;
        delta_kib * 1024.0 / self.measured.max(1) as f64
    }
}

/// Creates [`WARMUP`] then `count` pending transactions, `concurrency` at a
/// time, reading resident memory between the two.
pub async fn measure(
    traffic: &Traffic,
    server: &RunningServer,
    count: u64,
    concurrency: usize,
    bar: indicatif::ProgressBar,
) -> anyhow::Result<Pending> {
    create(traffic, 0..WARMUP, concurrency, None).await?;
    let rss_before_kib = current_rss_kib()?;
    let started = Instant::now();
    create(
        traffic,
        WARMUP..WARMUP + count,
        concurrency,
        Some(bar.clone()),
    )
    .await?;
    let create_time = started.elapsed();
    let rss_after_kib = current_rss_kib()?;
    let peak_rss_kib = peak_rss_kib();
    bar.finish_and_clear();
    // Nothing answered or expired them while they were counted.
    let total = WARMUP + count;
    let now_unix_s = server.state().now_unix_s();
    let mut still_pending = 0u64;
    for payer in traffic.payers.iter() {
        let pending = server.store().pending_for_payer(payer, now_unix_s).await?;
        still_pending += u64::try_from(pending.len())?;
    }
    if still_pending != total {
        bail!("{total} transactions created, but the store lists {still_pending} as pending");
    }
    Ok(Pending {
        measured: count,
        total,
        create: create_time,
        rss_before_kib,
        rss_after_kib,
        peak_rss_kib,
    })
}

/// Creates the transactions numbered `numbers`; each must come back pending.
async fn create(
    traffic: &Traffic,
    numbers: Range<u64>,
    concurrency: usize,
    bar: Option<indicatif::ProgressBar>,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(numbers.start));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let traffic = traffic.clone();
        let next = Arc::clone(&next);
        let numbers = numbers.clone();
        let bar = bar.clone();
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= numbers.end {
                    return anyhow::Ok(());
                }
                let payer_index = usize::try_from(n).unwrap_or(0) % traffic.payers.len();
                let body = CreateTransaction {
                    payer: traffic.payers[payer_index].clone(),
                    payee: traffic.payees.pick(),
                    amount_minor: 100,
                    currency: traffic.currency,
                    order_id: format!("P-{n}"),
                    description: String::new(),
                };
                let view = traffic
                    .terminal
                    .create_transaction(&format!("pending-{n}"), &body)
                    .await
                    .with_context(|| format!("creating pending transaction {n}"))?;
                if view.status != TransactionStatus::Pending {
                    bail!(
                        "transaction {n} came back {} instead of pending",
                        view.status.as_str()
                    );
                }
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("a transaction-creating task failed")??;
    }
    Ok(())
}
