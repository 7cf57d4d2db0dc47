//! Smoke test of `keybridge bench`: the command runs payments end to end and
//! reports every figure. It asserts that the figures exist and are coherent,
//! never a speed: speed belongs in benchmark runs, not in tests.

use std::process::Command;

#[test]
fn bench_runs_200_payments_and_reports_json() {
    let output = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args([
            "bench",
            "--payments",
            "200",
            "--cards",
            "2",
            "--concurrency",
            "4",
            "--json",
        ])
        .env("KEYBRIDGE_LOG", "warn")
        .output()
        .expect("run keybridge bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench exited {}:\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["payments_settled"], 200, "{report}");
    assert_eq!(report["payments_failed"], 0, "{report}");
    for key in [
        "confirmed_per_s",
        "cpu_s_per_payment",
        "crypto_limit_per_s",
        "ratio_to_crypto_limit",
    ] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {report}"
        );
    }
    let p50 = report["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = report["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{report}");
    assert!(
        report["peak_rss_kib"].as_u64().is_some_and(|v| v > 0),
        "{report}"
    );
    // One unmeasured payment per card first, so every card is reachable
    // when the clock starts.
    assert_eq!(report["warmup_payments"], 2, "{report}");
    // Read back from the server: the 200 measured payments of 1.00 left the
    // payers and reached the merchant (the warm-up's are not counted).
    assert_eq!(report["ledger"]["payers_debited_minor"], 20_000, "{report}");
    assert_eq!(
        report["ledger"]["merchant_credited_minor"], 20_000,
        "{report}"
    );
    assert_audited(&report, 202);
    assert!(
        report["floor"].is_null(),
        "measured only when asked: {report}"
    );
}

/// `--floor`: the bare hops are measured after the payments, each figure
/// positive, their sum the floor, and the run's rate set against it.
#[test]
fn bench_measures_the_floor_of_the_hops() {
    let report = small_run("direct-memory", &["--floor"]);
    assert_eq!(report["payments_settled"], 40, "{report}");
    let floor = &report["floor"];
    let us = |key: &str| {
        floor[key]
            .as_f64()
            .filter(|v| *v > 0.0)
            .unwrap_or_else(|| panic!("{key} in {report}"))
    };
    let parts = us("http_exchange_us")
        + us("websocket_exchange_us")
        + us("durable_writes_us")
        + us("crypto_us");
    let total = us("total_us");
    assert!((total - parts).abs() < 1e-6, "{report}");
    let cores = report["cores"].as_f64().unwrap();
    assert!((us("per_s") - cores * 1e6 / total).abs() < 1e-6, "{report}");
    let ratio = report["ratio_to_floor"].as_f64().unwrap();
    let rate = report["confirmed_per_s"].as_f64().unwrap();
    assert!((ratio - rate / us("per_s")).abs() < 1e-9, "{report}");
}

/// The audit chain checks, and holds at least a creation and an end for
/// each of `payments`; the books balance, with a transfer for each.
fn assert_audited(report: &serde_json::Value, payments: u64) {
    assert_eq!(report["audit"]["intact"], true, "{report}");
    assert_eq!(report["books"]["balanced"], true, "{report}");
    assert!(
        report["books"]["transfers_checked"]
            .as_u64()
            .is_some_and(|transfers| transfers >= payments),
        "{report}"
    );
    assert!(
        report["audit"]["rows_checked"]
            .as_u64()
            .is_some_and(|rows| rows >= 2 * payments),
        "{report}"
    );
}

/// The same smoke over the simulated BLE link with the secure channel, and
/// with the card in-process (state file or memory): the JSON stays one clean
/// object (the phone's screen is quiet).
#[test]
fn bench_runs_over_ble_sim_and_direct() {
    for transport in ["ble-sim", "direct", "direct-memory"] {
        smoke(transport);
    }
}

fn smoke(transport: &str) {
    let report = small_run(transport, &[]);
    assert_eq!(report["transport"], transport, "{report}");
    assert_eq!(report["payments_settled"], 40, "{report}");
    assert_eq!(report["payments_failed"], 0, "{report}");
}

/// 40 payments over `transport`, 2 cards, 4 in flight, and `extra`.
fn small_run(transport: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--payments",
        "40",
        "--cards",
        "2",
        "--concurrency",
        "4",
        "--transport",
        transport,
    ];
    args.extend_from_slice(extra);
    bench_json(&args)
}

/// Runs `keybridge bench ARGS --json` and returns its one JSON object.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("KEYBRIDGE_LOG", "warn")
        .output()
        .expect("run keybridge bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench {args:?} exited {}:\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

/// `--rate`: the open loop starts payments on a schedule, not when others
/// end. At 50/s, far below what even a debug build confirms, every payment is
/// issued and settles, and the report gives the offered and achieved rates
/// and the latencies counted from when each payment was due.
#[test]
fn bench_open_loop_at_a_fixed_rate() {
    let report = bench_json(&["--rate", "50", "--payments", "100", "--cards", "2"]);
    assert_eq!(report["mode"], "open-loop", "{report}");
    assert_eq!(report["payments_settled"], 100, "{report}");
    assert_eq!(report["payments_failed"], 0, "{report}");
    let open = &report["open_loop"];
    assert_eq!(open["offered_per_s"], 50.0, "{report}");
    assert_eq!(open["issued"], 100, "{report}");
    for key in ["achieved_per_s", "issue_lag_ms_max"] {
        assert!(
            open[key].as_f64().is_some_and(|v| v >= 0.0),
            "{key} in {report}"
        );
    }
    assert!(
        open["in_flight_peak"].as_u64().is_some_and(|n| n >= 1),
        "{report}"
    );
    let p50 = report["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = report["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{report}");
}

/// `--accounts`: 500 accounts are seeded through the store before the run,
/// and the payments go to them: the payers are debited for every payment
/// while the merchant, the default payee, receives nothing.
#[test]
fn bench_pays_seeded_accounts() {
    let report = bench_json(&[
        "--accounts",
        "500",
        "--payments",
        "100",
        "--cards",
        "2",
        "--concurrency",
        "4",
    ]);
    assert_eq!(report["accounts"]["seeded"], 500, "{report}");
    assert!(
        report["accounts"]["seed_s"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "{report}"
    );
    assert_eq!(report["payments_settled"], 100, "{report}");
    assert_eq!(report["payments_failed"], 0, "{report}");
    assert_eq!(report["ledger"]["payers_debited_minor"], 10_000, "{report}");
    assert_eq!(report["ledger"]["merchant_credited_minor"], 0, "{report}");
}

/// `--pending`: with no relay to answer, 200 transactions (after the warm-up)
/// stay pending — the bench refuses its figure if the store does not list
/// every one of them so — and the report gives the resident memory they
/// added, per pending confirmation.
#[test]
fn bench_measures_memory_per_pending_confirmation() {
    let report = bench_json(&["--pending", "200", "--cards", "2"]);
    assert_eq!(report["mode"], "pending", "{report}");
    let pending = &report["pending"];
    assert_eq!(pending["measured"], 200, "{report}");
    assert_eq!(
        pending["total"].as_u64(),
        pending["warmup"].as_u64().map(|w| w + 200),
        "{report}"
    );
    let before = pending["rss_before_kib"].as_u64().unwrap();
    let after = pending["rss_after_kib"].as_u64().unwrap();
    assert!(before > 0 && after >= before, "{report}");
    assert!(
        pending["server_bytes_per_pending"]
            .as_f64()
            .is_some_and(|b| b > 0.0),
        "{report}"
    );
}

/// The same smoke with the server on PostgreSQL: every payment settles and
/// the ledger read back from the database matches.
#[test]
fn bench_runs_on_postgres() {
    let Some(store) = postgres_store() else {
        return;
    };
    let report = bench_json(&["--payments", "100", "--cards", "2", "--store", &store]);
    assert_hundred_paid(&report);
}

/// `--store` for a fresh PostgreSQL database; `None` when none is
/// configured outside CI.
fn postgres_store() -> Option<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database =
        runtime.block_on(keybridge_server::store::postgres::scratch::database_or_skip())?;
    Some(format!("postgres:{database}"))
}

/// 100 measured payments of 1.00 from 2 cards: all settled, the ledger
/// moved exactly that, and the audit chain holds them.
fn assert_hundred_paid(report: &serde_json::Value) {
    assert_eq!(report["payments_settled"], 100, "{report}");
    assert_eq!(report["payments_failed"], 0, "{report}");
    assert_eq!(report["ledger"]["payers_debited_minor"], 10_000, "{report}");
    assert_eq!(
        report["ledger"]["merchant_credited_minor"], 10_000,
        "{report}"
    );
    assert_audited(report, 102);
}

/// Two server instances on one PostgreSQL database: the relays on the
/// first, the terminal on the second, so every payment crosses between them
/// (requests and ends travel by NOTIFY). All settle once, and the books and
/// the one audit chain agree. Without PostgreSQL, more than one instance is
/// refused.
#[test]
fn bench_runs_across_two_instances_on_postgres() {
    let refused = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["bench", "--payments", "10", "--instances", "2"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--store postgres:"),
        "{refused:?}"
    );

    let Some(store) = postgres_store() else {
        return;
    };
    let report = bench_json(&[
        "--payments",
        "100",
        "--cards",
        "2",
        "--instances",
        "2",
        "--store",
        &store,
    ]);
    assert_eq!(report["instances"], 2, "{report}");
    assert_hundred_paid(&report);
}
