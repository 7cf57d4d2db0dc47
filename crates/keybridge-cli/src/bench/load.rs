//! Driving payments through the terminal API, in a closed loop or an open one.
//!
//! Closed loop (`--concurrency C`): C terminals, each starting its next payment
//! when its last one ends. The offered load adapts to the system, so queueing
//! delay never shows in the latencies (coordinated omission): this measures
//! the maximum rate. Open loop (`--rate R`): payment `n` is due at `n / R`
//! seconds, issued on time as its own task whatever became of the others, and
//! its latency counts from when it was due, so a late issue counts too: this
//! measures latency at a given offered rate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keybridge_proto::api::TransactionStatus;
use keybridge_proto::{AccountId, Currency, Money};
use keybridge_terminal::{pay_waiting, Client, PayRequest};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::accounts::Payees;
use super::machine::process_cpu_seconds;

/// Payments in flight at once in the open loop. A payment due while this many
/// are in flight is not issued; it counts as failed, reason [`OVERLOADED`].
pub const IN_FLIGHT_MAX: usize = 100_000;

/// The failure reason of a payment the open loop could not issue.
pub const OVERLOADED: &str = "overloaded";

/// Who pays whom, through which terminal.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub terminal: Client,
    pub payers: Arc<[AccountId]>,
    pub payees: Payees,
    pub currency: Currency,
}

/// How payments are started.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// This many payments in flight, each followed by the next.
    Closed { concurrency: usize },
    /// One payment every `1 / rate_per_s` seconds.
    Open { rate_per_s: f64 },
}

/// When the run stops starting payments.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    Payments(u64),
    Duration(Duration),
}

/// What the terminals saw.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Submit (open loop: due) to settled, of every settled payment.
    pub latencies: Vec<Duration>,
    pub failures_by_reason: BTreeMap<String, u64>,
}

impl Outcomes {
    pub fn failed(&self) -> u64 {
        self.failures_by_reason.values().sum()
    }

    fn record(&mut self, outcome: Result<Duration, String>) {
        match outcome {
            Ok(latency) => self.latencies.push(latency),
            Err(why) => *self.failures_by_reason.entry(why).or_default() += 1,
        }
    }
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub outcomes: Outcomes,
    /// From the first payment started to the last one ended.
    pub wall: Duration,
    /// CPU seconds of the whole process (every role) over `wall`.
    pub cpu_s: f64,
    /// How the open loop kept to its schedule; `None` for the closed loop.
    pub open: Option<OpenLoop>,
}

/// The open loop's own figures.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    /// Payments started (the rest were refused as overloaded).
    pub issued: u64,
    /// From the first payment due to the last one started, plus one interval
    /// (the last payment's own slot): `issued / issuing` is the achieved rate.
    pub issuing: Duration,
    /// The latest a payment started after it was due (the ticker falling
    /// behind: a busy machine, or the load generator itself).
    pub issue_lag_max: Duration,
    /// Most payments in flight at once.
    pub in_flight_peak: usize,
}

impl Traffic {
    fn request(&self, n: u64, payer: usize) -> PayRequest {
        self.request_named(format!("B-{n}"), payer)
    }

    /// A payment whose order id is `order` (also its idempotency key, made
    /// unique per run by the prefix).
    fn request_named(&self, order: String, payer: usize) -> PayRequest {
        PayRequest {
            payer: self.payers[payer % self.payers.len()].clone(),
            payee: self.payees.pick(),
            amount: Money::new(100, self.currency),
            idempotency_key: format!("bench-{order}"),
            order_id: order,
            description: String::new(),
            wait_max: Duration::from_secs(60),
        }
    }
}

/// One payment per payer, all at once, before anything is measured; returns
/// how many settled (all of them, or an error).
///
/// Until its first payment a card may not be reachable yet: its relay's
/// WebSocket is still connecting, or (vpcd, BLE) the card has not yet found
/// its relay's reader, which it retries every 250 ms. Payments started then
/// wait for it, so without this a run's first quarter second measures setup:
/// in an open loop at 1,628/s that was over 1 % of 6,000 payments waiting up to
/// 250 ms, a p99 near 100 ms that no later payment saw.
pub async fn warm_up(traffic: &Traffic) -> anyhow::Result<usize> {
    let mut payments = JoinSet::new();
    for payer in 0..traffic.payers.len() {
        let request = traffic.request_named(format!("W-{payer}"), payer);
        let terminal = traffic.terminal.clone();
        payments.spawn(async move { (payer, settle(&terminal, &request).await) });
    }
    let mut settled = 0;
    while let Some(ended) = payments.join_next().await {
        let (payer, outcome) = ended?;
        if let Err(why) = outcome {
            anyhow::bail!(
                "the warm-up payment of {} did not settle: {why}",
                traffic.payers[payer]
            );
        }
        settled += 1;
    }
    Ok(settled)
}

/// Runs one payment to its end; `Err` says why it did not settle.
async fn settle(terminal: &Client, request: &PayRequest) -> Result<(), String> {
    match pay_waiting(terminal, request).await {
        Ok(out) if out.last.status == TransactionStatus::Settled => Ok(()),
        Ok(out) => Err(format!(
            "{}:{}",
            out.last.status.as_str(),
            out.last.reason.map(|r| r.as_str()).unwrap_or("-")
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Shows progress: payments ended, or seconds elapsed for `--duration`.
#[derive(Debug, Clone)]
struct Progress {
    bar: indicatif::ProgressBar,
    length: Length,
    started: Instant,
}

impl Progress {
    fn ended_one(&self) {
        match self.length {
            Length::Payments(_) => self.bar.inc(1),
            Length::Duration(_) => self.bar.set_position(self.started.elapsed().as_secs()),
        }
    }
}

/// Drives payments until `length` is reached and every started one has ended.
/// `bar` counts payments, or seconds for [`Length::Duration`].
pub async fn drive(
    traffic: &Traffic,
    pace: Pace,
    length: Length,
    bar: indicatif::ProgressBar,
) -> anyhow::Result<Run> {
    let cpu_start = process_cpu_seconds();
    let started = Instant::now();
    let progress = Progress {
        bar,
        length,
        started,
    };
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let open = match pace {
        Pace::Closed { concurrency } => {
            closed(traffic, concurrency, length, &progress, &outcomes).await?;
            None
        }
        Pace::Open { rate_per_s } => {
            Some(open(traffic, rate_per_s, length, &progress, &outcomes).await?)
        }
    };
    let wall = started.elapsed();
    let cpu_s = process_cpu_seconds() - cpu_start;
    progress.bar.finish_and_clear();
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("not poisoned"));
    Ok(Run {
        outcomes,
        wall,
        cpu_s,
        open,
    })
}

async fn closed(
    traffic: &Traffic,
    concurrency: usize,
    length: Length,
    progress: &Progress,
    outcomes: &Arc<Mutex<Outcomes>>,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let (count, deadline) = match length {
        Length::Payments(n) => (n, None),
        Length::Duration(d) => (u64::MAX, Some(progress.started + d)),
    };
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        let traffic = traffic.clone();
        let next = Arc::clone(&next);
        let outcomes = Arc::clone(outcomes);
        let progress = progress.clone();
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let payer = usize::try_from(n).unwrap_or(0).wrapping_add(worker);
                let request = traffic.request(n, payer);
                let t0 = Instant::now();
                let outcome = settle(&traffic.terminal, &request)
                    .await
                    .map(|()| t0.elapsed());
                outcomes.lock().expect("not poisoned").record(outcome);
                progress.ended_one();
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined?;
    }
    Ok(())
}

async fn open(
    traffic: &Traffic,
    rate_per_s: f64,
    length: Length,
    progress: &Progress,
    outcomes: &Arc<Mutex<Outcomes>>,
) -> anyhow::Result<OpenLoop> {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let mut tasks = JoinSet::new();
    let mut issued = 0u64;
    let mut in_flight_peak = 0usize;
    let mut issue_lag_max = Duration::ZERO;
    let mut payer = 0usize;
    for n in 0u64.. {
        // Payment n is due at n / R seconds, however the others are doing.
        let offset = Duration::from_secs_f64(n as f64 / rate_per_s);
        let done = match length {
            Length::Payments(count) => n >= count,
            Length::Duration(d) => offset >= d,
        };
        if done {
            break;
        }
        let due = progress.started + offset;
        if due > Instant::now() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        }
        while let Some(joined) = tasks.try_join_next() {
            joined?;
        }
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            outcomes
                .lock()
                .expect("not poisoned")
                .record(Err(OVERLOADED.to_owned()));
            progress.ended_one();
            continue;
        };
        issued += 1;
        issue_lag_max = issue_lag_max.max(due.elapsed());
        in_flight_peak = in_flight_peak.max(IN_FLIGHT_MAX - slots.available_permits());
        payer = payer.wrapping_add(1);
        let request = traffic.request(n, payer);
        let terminal = traffic.terminal.clone();
        let outcomes = Arc::clone(outcomes);
        let progress = progress.clone();
        tasks.spawn(async move {
            // From when it was due, not when it was sent: a late start is
            // queueing the payer would have seen.
            let outcome = settle(&terminal, &request).await.map(|()| due.elapsed());
            outcomes.lock().expect("not poisoned").record(outcome);
            progress.ended_one();
            drop(slot);
        });
    }
    let issuing = progress.started.elapsed() + Duration::from_secs_f64(1.0 / rate_per_s);
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    Ok(OpenLoop {
        issued,
        issuing,
        issue_lag_max,
        in_flight_peak,
    })
}
