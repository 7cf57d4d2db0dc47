//! `keybridge bench`: payments end to end through real loopback sockets, and
//! the machine's crypto limit measured in the same run.
//!
//! Every payment takes the whole path: terminal HTTP → server (store, payload)
//! → relay WebSocket → card over vpcd (VERIFY, SIGN with a persisted counter)
//! → relay HTTP → verification → ledger commit → terminal long-poll. K cards,
//! each with its own payer account and relay, run in this process (cards on
//! threads, relays and terminals as tasks); the server runs in-process too, so
//! CPU time and peak RSS cover every role.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use keybridge_proto::api::{CreateAccount, TransactionStatus};
use keybridge_proto::{AccountId, Currency, Money};
use keybridge_relay::link::InProcessCard;
use keybridge_relay::{CardLink, CardLinkSpec, Decision, RelayOptions};
use keybridge_terminal::{pay, Client, PayRequest};
use zeroize::Zeroizing;

use direct_card::DirectCard;
use machine::{crypto_limit, peak_rss_kib, process_cpu_seconds};

mod direct_card;
mod machine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTransport {
    /// The card in the relay's process, reached by a call: no socket, no
    /// reader; isolates the server and the applet.
    Direct,
    /// The card behind a vpcd socket, the relay as its reader.
    Vpcd,
    /// The simulated BLE link (ATT MTU 185, no loss) with the KB-SC1 secure
    /// channel; each card is enrolled over vpcd first, then moves to BLE.
    BleSim,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Number of payments to run (ignored with --duration).
    #[arg(long, default_value_t = 1000)]
    pub payments: u64,
    /// Run for this many seconds instead of a fixed count.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Payments in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Cards (each with its own relay and payer account).
    #[arg(long, default_value_t = 8)]
    pub cards: usize,
    #[arg(long, value_enum, default_value_t = BenchTransport::Vpcd)]
    pub transport: BenchTransport,
    /// `sqlite:DIR`: where the server keeps its database (default: a temp dir).
    #[arg(long)]
    pub store: Option<String>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

const PIN: &str = "123456";

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.cards == 0 || args.concurrency == 0 {
        bail!("--cards and --concurrency must be at least 1");
    }
    let temp = tempfile::Builder::new()
        .prefix("keybridge-bench-")
        .tempdir()?;
    let data_dir = match args.store.as_deref() {
        Some(spec) => std::path::PathBuf::from(
            spec.strip_prefix("sqlite:")
                .context("--store must be sqlite:DIR")?,
        ),
        None => temp.path().join("server"),
    };
    std::fs::create_dir_all(&data_dir)?;
    let token = hex::encode(rand::random::<[u8; 24]>());
    let mut config =
        keybridge_server::ServerConfig::new("127.0.0.1:0".parse()?, data_dir, token.clone());
    config.confirmation_ttl_s = 600;
    let server = keybridge_server::start(config).await?;
    let url = format!("http://{}", server.addr);
    let admin = Client::new(&url, &token)?;
    let cny = Currency::from_code("CNY")?;
    let payments_max = if args.duration.is_some() {
        u64::MAX
    } else {
        args.payments
    };

    // Accounts, one card + relay per payer.
    let setup = indicatif::ProgressBar::new(u64::try_from(args.cards)?);
    setup.set_style(indicatif::ProgressStyle::with_template(
        "setting up cards {bar:30} {pos}/{len}",
    )?);
    if args.json {
        setup.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    admin
        .create_account(&CreateAccount {
            id: AccountId::new("merchant")?,
            display_name: "Merchant".into(),
            currency: cny,
            opening_balance_minor: 0,
        })
        .await?;
    let terminal_key = admin.create_terminal("bench").await?.api_key;
    let mut payers = Vec::new();
    for i in 0..args.cards {
        let payer = AccountId::new(&format!("payer-{i}"))?;
        admin
            .create_account(&CreateAccount {
                id: payer.clone(),
                display_name: format!("Payer {i}"),
                currency: cny,
                opening_balance_minor: 1_000_000_000_000,
            })
            .await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let spec = CardLinkSpec::VpcdListen(format!("127.0.0.1:{port}"));
        let ble_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let state_path = temp.path().join(format!("card-{i}.json"));
        let enrol = Arc::new(Mutex::new(match args.transport {
            BenchTransport::Direct => {
                CardLink::InProcess(InProcessCard(Box::new(DirectCard::new(&state_path)?)))
            }
            BenchTransport::Vpcd | BenchTransport::BleSim => CardLink::open(&spec)?,
        }));
        let options = move |reconnect: bool| keybridge_card::CardOptions {
            state_path: state_path.clone(),
            vpcd_addr: format!("127.0.0.1:{port}"),
            policy: keybridge_card::Policy::Approve,
            init_pin: Some(PIN.to_owned()),
            reconnect,
            profile: keybridge_card::Profile::default(),
        };
        let transport = args.transport;
        if transport != BenchTransport::Direct {
            std::thread::spawn(move || match transport {
                BenchTransport::BleSim => {
                    // The enrolment reader closing ends this run; then the same
                    // card (same state file) starts advertising on BLE.
                    let _ = keybridge_card::run(options(false));
                    keybridge_card::run_with_link(
                        options(true),
                        keybridge_card::DeviceLink::BleSim {
                            addr: format!("127.0.0.1:{ble_port}"),
                            att_mtu_max: 185,
                            shape: keybridge_transport::ble::sim::LinkShape::default(),
                        },
                    )
                }
                _ => keybridge_card::run(options(true)),
            });
        }
        let (_, credential) = keybridge_relay::enroll(
            &admin,
            Arc::clone(&enrol),
            &payer,
            "bench",
            Zeroizing::new(PIN.to_owned()),
            Duration::from_secs(30),
        )
        .await?;
        let relay_options = |card: CardLinkSpec| RelayOptions {
            credential,
            card,
            pin: Some(Zeroizing::new(PIN.to_owned())),
            decision: Decision::Approve,
            tamper: None,
            card_wait: Duration::from_secs(30),
            quiet: true,
            ca_cert_pem: None,
            applet: None,
        };
        match args.transport {
            BenchTransport::Direct => {
                // The same in-process card that was enrolled serves the relay.
                let link = Arc::try_unwrap(enrol)
                    .map_err(|_| anyhow::anyhow!("the enrolment still holds the card"))?
                    .into_inner()
                    .map_err(|_| anyhow::anyhow!("the card's lock was poisoned"))?;
                tokio::spawn(keybridge_relay::run_with_link(relay_options(spec), link));
            }
            BenchTransport::Vpcd => {
                drop(enrol);
                tokio::spawn(keybridge_relay::run(relay_options(spec)));
            }
            BenchTransport::BleSim => {
                drop(enrol);
                tokio::spawn(keybridge_relay::run(relay_options(CardLinkSpec::BleSim(
                    format!("127.0.0.1:{ble_port}"),
                    keybridge_relay::link::BleSimSettings {
                        att_mtu: 185,
                        ..Default::default()
                    },
                ))));
            }
        }
        payers.push(payer);
        setup.inc(1);
    }
    setup.finish_and_clear();

    let progress = match args.duration {
        Some(s) => indicatif::ProgressBar::new(s),
        None => indicatif::ProgressBar::new(args.payments),
    };
    progress.set_style(indicatif::ProgressStyle::with_template(
        "{msg:>10} {bar:40} {pos}/{len} [{elapsed_precise}]",
    )?);
    if args.json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let terminal = Client::new(&url, &terminal_key)?;
    let issued = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let failure_reasons = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let cpu_start = process_cpu_seconds();
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let terminal = terminal.clone();
        let payers = payers.clone();
        let issued = issued.clone();
        let latencies = latencies.clone();
        let failures = failures.clone();
        let failure_reasons = failure_reasons.clone();
        let progress = progress.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= payments_max || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let payer =
                    payers[(usize::try_from(n).unwrap_or(0) + worker) % payers.len()].clone();
                let request = PayRequest {
                    payer,
                    payee: AccountId::new("merchant").expect("valid id"),
                    amount: Money::new(100, cny),
                    order_id: format!("B-{n}"),
                    description: String::new(),
                    idempotency_key: format!("bench-{n}"),
                    wait_max: Duration::from_secs(60),
                };
                let t0 = Instant::now();
                match pay(&terminal, &request, |_| {}).await {
                    Ok(out) if out.last.status == TransactionStatus::Settled => {
                        latencies.lock().expect("not poisoned").push(t0.elapsed());
                    }
                    other => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        let why = match other {
                            Ok(out) => format!(
                                "{}:{}",
                                out.last.status.as_str(),
                                out.last.reason.map(|r| r.as_str()).unwrap_or("-")
                            ),
                            Err(e) => e.to_string(),
                        };
                        *failure_reasons
                            .lock()
                            .expect("not poisoned")
                            .entry(why)
                            .or_default() += 1;
                    }
                }
                if deadline.is_some() {
                    progress.set_position(started.elapsed().as_secs());
                } else {
                    progress.inc(1);
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let wall = started.elapsed();
    let cpu = process_cpu_seconds() - cpu_start;
    progress.finish_and_clear();

    let mut lat = latencies.lock().expect("not poisoned").clone();
    lat.sort();
    let settled = lat.len();
    // Nearest-rank percentile in integer arithmetic: `permille` of 500 is p50.
    let pct = |permille: usize| -> f64 {
        match lat.len() {
            0 => 0.0,
            n => lat[((n - 1) * permille / 1000).min(n - 1)].as_secs_f64() * 1000.0,
        }
    };
    let throughput = settled as f64 / wall.as_secs_f64();
    let crypto = crypto_limit(Duration::from_millis(1500));
    let report = serde_json::json!({
        "transport": match args.transport {
            BenchTransport::Direct => "direct",
            BenchTransport::Vpcd => "vpcd",
            BenchTransport::BleSim => "ble-sim",
        },
        "cards": args.cards,
        "concurrency": args.concurrency,
        "payments_settled": settled,
        "payments_failed": failures.load(Ordering::Relaxed),
        "failures_by_reason": *failure_reasons.lock().expect("not poisoned"),
        "wall_s": wall.as_secs_f64(),
        "confirmed_per_s": throughput,
        "latency_ms": { "p50": pct(500), "p95": pct(950), "p99": pct(990) },
        "cpu_s_per_payment": if settled > 0 { cpu / settled as f64 } else { 0.0 },
        "peak_rss_kib": peak_rss_kib(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "crypto_limit_per_s": crypto,
        "ratio_to_crypto_limit": if crypto > 0.0 { throughput / crypto } else { 0.0 },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "payments settled     {settled} ({} failed) in {:.2} s",
            failures.load(Ordering::Relaxed),
            wall.as_secs_f64()
        );
        for (why, n) in failure_reasons.lock().expect("not poisoned").iter() {
            println!("  failed: {n} × {why}");
        }
        println!("confirmed payments/s {throughput:.1}");
        println!(
            "submit→settled ms    p50 {:.2}  p95 {:.2}  p99 {:.2}",
            pct(500),
            pct(950),
            pct(990)
        );
        println!(
            "CPU s per payment    {:.6}",
            report["cpu_s_per_payment"].as_f64().unwrap_or(0.0)
        );
        println!("peak RSS             {} KiB", report["peak_rss_kib"]);
        println!("crypto limit         {crypto:.0} P-256 sign+verify per s on all cores (ring), same run");
        println!(
            "ratio                {:.4} of the crypto limit",
            report["ratio_to_crypto_limit"].as_f64().unwrap_or(0.0)
        );
    }
    server.shutdown().await;
    if settled == 0 {
        bail!("no payment settled");
    }
    Ok(())
}
