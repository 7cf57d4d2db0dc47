//! `keybridge bench`: payments end to end through real loopback sockets, and
//! the machine's crypto limit measured in the same run.
//!
//! Every payment takes the whole path: terminal HTTP (one request that waits
//! for the outcome, `Prefer: wait`) → server (store, payload) → relay
//! WebSocket → card over vpcd (VERIFY, SIGN with a persisted counter) → relay
//! HTTP → verification → ledger commit → answer to the terminal. K cards,
//! each with its own payer account and relay, run in this process (cards on
//! threads, relays and terminals as tasks); the server runs in-process too, so
//! CPU time and peak RSS cover every role.
//!
//! Modes: a closed loop with `--concurrency` payments in flight (the maximum
//! rate), or an open loop at `--rate` payments per second (latency at a
//! given offered load); see [`load`]. `--accounts N` first seeds N payee
//! accounts so the ledger works on a large table; see [`accounts`].
//! `--pending N` runs no payment to its end: it measures the server's memory
//! per pending confirmation; see [`pending`].

use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use accounts::Payees;
use harness::{Cards, Harness, HarnessConfig};
use load::{Length, Pace, Run, Traffic};
use machine::{crypto_limit, peak_rss_kib};

mod accounts;
mod direct_card;
mod floor;
mod harness;
mod load;
mod machine;
mod pending;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTransport {
    /// The card in the relay's process, reached by a call: no socket, no
    /// reader; isolates the server and the applet.
    Direct,
    /// As `direct`, with the card's state kept in memory instead of its
    /// fsynced file: a real card writes its own EEPROM, not the server's
    /// disk, so this isolates what the server costs.
    DirectMemory,
    /// The card behind a vpcd socket, the relay as its reader.
    Vpcd,
    /// The simulated BLE link (ATT MTU 185, no loss) with the KB-SC1 secure
    /// channel; each card is enrolled over vpcd first, then moves to BLE.
    BleSim,
}

impl BenchTransport {
    /// The card is an object in this process, not a `keybridge card` thread.
    fn in_process(self) -> bool {
        matches!(self, BenchTransport::Direct | BenchTransport::DirectMemory)
    }

    fn name(self) -> &'static str {
        match self {
            BenchTransport::Direct => "direct",
            BenchTransport::DirectMemory => "direct-memory",
            BenchTransport::Vpcd => "vpcd",
            BenchTransport::BleSim => "ble-sim",
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Number of payments to run (ignored with --duration).
    #[arg(long, default_value_t = 1000)]
    pub payments: u64,
    /// Run for this many seconds instead of a fixed count.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Payments in flight at once (closed loop: each payment that ends starts
    /// the next).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Open loop instead: start a payment every 1/R seconds whatever the
    /// others are doing, and time each from when it was due.
    #[arg(long, value_parser = parse_rate, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Before the run, create this many accounts (zero balance) through the
    /// store, and pay to them at random instead of to one merchant.
    #[arg(long, default_value_t = 0)]
    pub accounts: u64,
    /// Memory mode: create N transactions that stay pending (cards enrolled
    /// in-process, no relay), and report the server's resident memory per
    /// pending confirmation.
    #[arg(long, conflicts_with_all = ["rate", "duration", "payments", "transport"])]
    pub pending: Option<u64>,
    /// Cards (each with its own relay and payer account).
    #[arg(long, default_value_t = 8)]
    pub cards: usize,
    #[arg(long, value_enum, default_value_t = BenchTransport::Vpcd)]
    pub transport: BenchTransport,
    /// `sqlite:DIR` or `postgres:URL` (an empty database): where the server
    /// keeps its data (default: SQLite in a temp dir).
    #[arg(long)]
    pub store: Option<String>,
    /// Server instances on the one database (more than 1 needs `--store
    /// postgres:`): the relays hold their sockets to the first, the
    /// terminals pay and wait on the last, so every payment crosses between
    /// instances.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// After the payments, also measure the floor: the bare hops a payment
    /// takes (HTTP and WebSocket exchanges, two durable writes, the two
    /// signatures) with none of KeyBridge's own work, on this machine.
    #[arg(long, conflicts_with = "pending")]
    pub floor: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive number of payments per second"
        )),
    }
}

const PIN: &str = "123456";

/// How long `--floor` runs each of its measurements.
const FLOOR_EACH: Duration = Duration::from_millis(1500);

/// How long a transaction may wait for its card: longer than any run.
const CONFIRMATION_TTL_S: u64 = 600;

/// `--pending`: the longest the server allows, so nothing expires while the
/// pending transactions are created and counted.
const PENDING_TTL_S: u64 = 24 * 3600;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.cards == 0 || args.concurrency == 0 {
        bail!("--cards and --concurrency must be at least 1");
    }
    if args.pending == Some(0) {
        bail!("--pending must be at least 1");
    }
    let on_postgres = args
        .store
        .as_deref()
        .is_some_and(|s| s.starts_with("postgres:"));
    if args.instances == 0 || (args.instances > 1 && !on_postgres) {
        bail!("--instances must be 1, or more with --store postgres:URL");
    }
    let harness = Harness::start(&HarnessConfig {
        store: args.store.clone(),
        instances: args.instances,
        confirmation_ttl_s: match args.pending {
            Some(_) => PENDING_TTL_S,
            None => CONFIRMATION_TTL_S,
        },
        quiet: args.json,
    })
    .await?;
    let seeded = seed(&args, &harness).await?;
    let payees = match seeded {
        Some(_) => Payees::Seeded {
            count: args.accounts,
        },
        None => Payees::Merchant(harness.merchant.clone()),
    };
    let cards = match args.pending {
        Some(_) => Cards::Silent,
        None => Cards::Serving(args.transport),
    };
    let payers = harness.cards(args.cards, cards).await?;
    let traffic = Traffic {
        terminal: harness.terminal.clone(),
        payers: payers.into(),
        payees,
        currency: harness.currency,
    };
    let result = match args.pending {
        Some(count) => pending_memory(&args, &harness, &traffic, count, seeded).await,
        None => payments(&args, &harness, &traffic, seeded).await,
    };
    harness.shutdown().await;
    result
}

/// `--accounts N`: seeds them; returns how long it took.
async fn seed(args: &BenchArgs, harness: &Harness) -> anyhow::Result<Option<Duration>> {
    if args.accounts == 0 {
        return Ok(None);
    }
    let bar = harness.progress(
        args.accounts,
        "seeding accounts {bar:40} {pos}/{len} [{elapsed_precise}, eta {eta}]",
    )?;
    let took = accounts::seed(
        harness.server.store(),
        harness.server.state().now_unix_s(),
        args.accounts,
        harness.currency,
        bar,
    )
    .await?;
    Ok(Some(took))
}

/// The payment modes: runs the payments, then measures the crypto limit.
async fn payments(
    args: &BenchArgs,
    harness: &Harness,
    traffic: &Traffic,
    seeded: Option<Duration>,
) -> anyhow::Result<()> {
    let pace = match args.rate {
        Some(rate_per_s) => Pace::Open { rate_per_s },
        None => Pace::Closed {
            concurrency: args.concurrency,
        },
    };
    let (length, bar) = match args.duration {
        Some(s) => (Length::Duration(Duration::from_secs(s)), s),
        None => (Length::Payments(args.payments), args.payments),
    };
    let warmed_up = load::warm_up(traffic).await?;
    let before = harness.ledger(&traffic.payers).await?;
    let bar = harness.progress(bar, "{msg:>10} {bar:40} {pos}/{len} [{elapsed_precise}]")?;
    let run = load::drive(traffic, pace, length, bar).await?;
    let ledger = harness.ledger(&traffic.payers).await?.since(before)?;
    // After the run, outside its figures: the audit chain the payments
    // extended, recomputed by the server as an operator would ask for it.
    let audit = harness.admin.verify_audit().await?;
    let books = harness.admin.verify_books().await?;
    let crypto = crypto_limit(Duration::from_millis(1500));
    let mut report = payments_report(args, &run, crypto);
    if args.floor {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let floor = floor::measure(FLOOR_EACH, harness.scratch(), crypto, cores).await?;
        let throughput = report["confirmed_per_s"].as_f64().unwrap_or(0.0);
        report["floor"] = floor.json(cores);
        report["ratio_to_floor"] = (throughput / floor.per_s(cores)).into();
    }
    report["ledger"] = serde_json::json!({
        "payers_debited_minor": ledger.payers_debited_minor,
        "merchant_credited_minor": ledger.merchant_credited_minor,
    });
    report["audit"] = serde_json::json!({
        "intact": audit.intact,
        "rows_checked": audit.rows_checked,
    });
    report["books"] = serde_json::json!({
        "balanced": books.balanced,
        "accounts_checked": books.accounts_checked,
        "transfers_checked": books.transfers_checked,
    });
    report["accounts"] = accounts_report(args.accounts, seeded);
    report["warmup_payments"] = warmed_up.into();
    if args.json {
        println!("{report}");
    } else {
        print_payments(&report);
    }
    if run.outcomes.latencies.is_empty() {
        bail!("no payment settled");
    }
    if let Some(seq) = audit.broken_at_seq {
        bail!("the audit chain is broken at seq {seq}");
    }
    if !books.balanced {
        bail!("the books do not balance: {:?}", books.broken);
    }
    Ok(())
}

/// Every figure of a payment run, as printed by `--json`.
fn payments_report(args: &BenchArgs, run: &Run, crypto: f64) -> serde_json::Value {
    let mut lat = run.outcomes.latencies.clone();
    lat.sort();
    let settled = lat.len();
    // Nearest-rank percentile in integer arithmetic: `permille` of 500 is p50.
    let pct = |permille: usize| -> f64 {
        match lat.len() {
            0 => 0.0,
            n => lat[((n - 1) * permille / 1000).min(n - 1)].as_secs_f64() * 1000.0,
        }
    };
    let throughput = settled as f64 / run.wall.as_secs_f64();
    let open_loop = match (args.rate, run.open) {
        (Some(offered), Some(open)) => serde_json::json!({
            "offered_per_s": offered,
            "achieved_per_s": open.issued as f64 / open.issuing.as_secs_f64().max(f64::EPSILON),
            "issued": open.issued,
            "issue_lag_ms_max": open.issue_lag_max.as_secs_f64() * 1000.0,
            "in_flight_peak": open.in_flight_peak,
            "in_flight_max": load::IN_FLIGHT_MAX,
        }),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        "mode": if args.rate.is_some() { "open-loop" } else { "closed-loop" },
        "transport": args.transport.name(),
        "instances": args.instances,
        "cards": args.cards,
        "concurrency": if args.rate.is_some() { None } else { Some(args.concurrency) },
        "open_loop": open_loop,
        "payments_settled": settled,
        "payments_failed": run.outcomes.failed(),
        "failures_by_reason": run.outcomes.failures_by_reason,
        "wall_s": run.wall.as_secs_f64(),
        "confirmed_per_s": throughput,
        "latency_ms": { "p50": pct(500), "p95": pct(950), "p99": pct(990) },
        "cpu_s_per_payment": if settled > 0 { run.cpu_s / settled as f64 } else { 0.0 },
        "peak_rss_kib": peak_rss_kib(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "crypto_limit_per_s": crypto,
        "ratio_to_crypto_limit": if crypto > 0.0 { throughput / crypto } else { 0.0 },
        "floor": null,
        "ratio_to_floor": null,
    })
}

/// The memory mode: creates `count` pending transactions and reports the
/// server's memory per pending confirmation.
async fn pending_memory(
    args: &BenchArgs,
    harness: &Harness,
    traffic: &Traffic,
    count: u64,
    seeded: Option<Duration>,
) -> anyhow::Result<()> {
    let bar = harness.progress(
        count,
        "pending {bar:40} {pos}/{len} [{elapsed_precise}, eta {eta}]",
    )?;
    let measured = pending::measure(traffic, &harness.server, count, args.concurrency, bar).await?;
    let report = serde_json::json!({
        "mode": "pending",
        "cards": args.cards,
        "concurrency": args.concurrency,
        "accounts": accounts_report(args.accounts, seeded),
        "pending": {
            "measured": measured.measured,
            "warmup": pending::WARMUP,
            "total": measured.total,
            "create_s": measured.create.as_secs_f64(),
            "created_per_s": measured.measured as f64
                / measured.create.as_secs_f64().max(f64::EPSILON),
            "rss_before_kib": measured.rss_before_kib,
            "rss_after_kib": measured.rss_after_kib,
            "server_bytes_per_pending": measured.bytes_per_pending(),
        },
        "peak_rss_kib": measured.peak_rss_kib,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    if args.json {
        println!("{report}");
    } else {
        print_accounts(&report);
        println!(
            "pending              {} created in {:.2} s ({:.0}/s) after {} warm-up, {} in flight; all still pending",
            measured.measured,
            measured.create.as_secs_f64(),
            report["pending"]["created_per_s"].as_f64().unwrap_or(0.0),
            pending::WARMUP,
            args.concurrency
        );
        println!(
            "VmRSS                {} KiB before, {} KiB after",
            measured.rss_before_kib, measured.rss_after_kib
        );
        println!(
            "server memory        {:.0} bytes per pending confirmation",
            measured.bytes_per_pending()
        );
        println!("peak RSS             {} KiB", measured.peak_rss_kib);
    }
    Ok(())
}

/// `--accounts`: how many were seeded and how long that took; null without.
fn accounts_report(count: u64, seeded: Option<Duration>) -> serde_json::Value {
    match seeded {
        Some(took) => serde_json::json!({
            "seeded": count,
            "seed_s": took.as_secs_f64(),
            "seeded_per_s": count as f64 / took.as_secs_f64().max(f64::EPSILON),
        }),
        None => serde_json::Value::Null,
    }
}

fn print_accounts(report: &serde_json::Value) {
    let accounts = &report["accounts"];
    if !accounts.is_null() {
        println!(
            "accounts seeded      {} in {:.2} s ({:.0}/s), each payment to one at random",
            accounts["seeded"],
            accounts["seed_s"].as_f64().unwrap_or(0.0),
            accounts["seeded_per_s"].as_f64().unwrap_or(0.0)
        );
    }
}

fn print_payments(report: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    println!(
        "payments settled     {} ({} failed) in {:.2} s",
        report["payments_settled"],
        report["payments_failed"],
        f(&report["wall_s"])
    );
    if let Some(reasons) = report["failures_by_reason"].as_object() {
        for (why, n) in reasons {
            println!("  failed: {n} × {why}");
        }
    }
    print_accounts(report);
    if report["instances"].as_u64().is_some_and(|n| n > 1) {
        println!(
            "instances            {} on one database: relays on the first, terminals on the last",
            report["instances"]
        );
    }
    let open = &report["open_loop"];
    if open.is_null() {
        println!("closed loop          {} in flight", report["concurrency"]);
    } else {
        println!(
            "open loop            offered {:.1}/s, achieved {:.1}/s ({} issued, at most {:.1} ms late), peak {} in flight",
            f(&open["offered_per_s"]),
            f(&open["achieved_per_s"]),
            open["issued"],
            f(&open["issue_lag_ms_max"]),
            open["in_flight_peak"]
        );
    }
    println!("confirmed payments/s {:.1}", f(&report["confirmed_per_s"]));
    let latency = &report["latency_ms"];
    println!(
        "submit→settled ms    p50 {:.2}  p95 {:.2}  p99 {:.2}{}",
        f(&latency["p50"]),
        f(&latency["p95"]),
        f(&latency["p99"]),
        if open.is_null() {
            ""
        } else {
            " (from when due)"
        }
    );
    println!(
        "CPU s per payment    {:.6}",
        f(&report["cpu_s_per_payment"])
    );
    println!(
        "ledger               payers debited {}, merchant credited {} (minor units; after {} warm-up payments, one per card, not counted)",
        report["ledger"]["payers_debited_minor"],
        report["ledger"]["merchant_credited_minor"],
        report["warmup_payments"]
    );
    println!(
        "audit chain          {} rows, {} (checked after the run)",
        report["audit"]["rows_checked"],
        if report["audit"]["intact"] == true {
            "intact"
        } else {
            "BROKEN"
        }
    );
    println!(
        "books                {} over {} accounts and {} transfers (checked after the run)",
        if report["books"]["balanced"] == true {
            "balance"
        } else {
            "DO NOT BALANCE"
        },
        report["books"]["accounts_checked"],
        report["books"]["transfers_checked"]
    );
    println!("peak RSS             {} KiB", report["peak_rss_kib"]);
    println!(
        "crypto limit         {:.0} P-256 sign+verify per s on all cores (ring), same run",
        f(&report["crypto_limit_per_s"])
    );
    println!(
        "ratio                {:.4} of the crypto limit",
        f(&report["ratio_to_crypto_limit"])
    );
    let floor = &report["floor"];
    if !floor.is_null() {
        println!(
            "floor                {:.1} µs of CPU per payment, {:.0}/s on {} cores: HTTP exchange {:.1} + WebSocket exchange {:.1} + two durable writes {:.1} + sign and verify {:.1} µs (bare hops, same run)",
            f(&floor["total_us"]),
            f(&floor["per_s"]),
            report["cores"],
            f(&floor["http_exchange_us"]),
            f(&floor["websocket_exchange_us"]),
            f(&floor["durable_writes_us"]),
            f(&floor["crypto_us"])
        );
        println!(
            "ratio                {:.4} of the floor",
            f(&report["ratio_to_floor"])
        );
    }
}
