//! The HTTP API against its own OpenAPI document, by Schemathesis: requests
//! generated from `/openapi.json` (valid, invalid and in between, then
//! sequences that follow the document's data), each answer checked.
//!
//! What must hold for every request: no 5xx; a status code, content type,
//! headers and body the document declares; invalid data refused; nothing
//! served without its credential. One check is left out:
//! `positive_data_acceptance`, which expects every schema-valid body to be
//! accepted, while the server also refuses what a schema cannot say (a payer
//! paying itself, an account that does not exist, a label's length in
//! bytes).
//!
//! Each credential's operations run as that credential: the terminal's, then
//! the phone's, then the admin's last (its run may disable the others).
//! Schemathesis is a Python tool (`scripts/system-packages` installs it):
//! missing, the test is skipped, or fails under `CI=true`.

mod common;

use std::process::Command;

use common::*;

/// Its command-line module, run as `python3 -m`: found wherever pip put it,
/// on `PATH` or not.
const SCHEMATHESIS: &str = "schemathesis.cli";

fn available() -> bool {
    Command::new("python3")
        .args(["-m", SCHEMATHESIS, "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Cases per operation: 25 in CI (about 20 s in all);
/// `KEYBRIDGE_SCHEMATHESIS_EXAMPLES=N` for a longer look.
fn max_examples() -> String {
    std::env::var("KEYBRIDGE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into())
}

/// A fixed seed, so that CI runs the same cases every time (it passes or
/// fails on the code, not on luck); `KEYBRIDGE_SCHEMATHESIS_SEED=N` runs
/// others, `=random` a new draw each run, to look further.
fn seed() -> Vec<String> {
    match std::env::var("KEYBRIDGE_SCHEMATHESIS_SEED").as_deref() {
        Ok("random") => Vec::new(),
        Ok(seed) => vec!["--seed".into(), seed.into()],
        Err(_) => vec!["--seed".into(), "20261126".into()],
    }
}

/// Runs Schemathesis on the operations tagged `tag` with `bearer`; its
/// report when it found a failure. It runs in `scratch`, where it keeps its
/// `.schemathesis` cache: not in the checkout.
fn run(scratch: &std::path::Path, base: &str, tag: &str, bearer: &str) -> Result<(), String> {
    let out = Command::new("python3")
        .current_dir(scratch)
        .args(["-m", SCHEMATHESIS, "run"])
        .arg(format!("{base}/openapi.json"))
        .args(["--include-tag", tag])
        .args(["--header", &format!("Authorization: Bearer {bearer}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        // The relay's WebSocket and the terminal's SSE stream do not end on
        // their own: a request would only time out.
        .args(["--exclude-path-regex", "^/v1/relay$|/events$"])
        .args([
            "--max-examples",
            &max_examples(),
            "--request-timeout",
            "10",
            "--workers",
            "1",
        ])
        .args(seed())
        .env("NO_COLOR", "1")
        .output()
        .map_err(|e| format!("cannot run schemathesis: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "schemathesis on the `{tag}` operations:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_its_document_says() {
    if !available() {
        let message = "schemathesis is not installed (scripts/system-packages installs it)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("\n!!!!!!!! SKIPPED (not CI) !!!!!!!!\n{message}\n");
        return;
    }
    let (h, terminal, card) = Harness::standard().await;
    let base = h.base.clone();
    let passes = [
        ("terminal", terminal.api_key.clone()),
        ("relay", card.enrolled.credential.clone()),
        ("web", terminal.api_key.clone()),
        ("operations", ADMIN_TOKEN.to_owned()),
        ("admin", ADMIN_TOKEN.to_owned()),
    ];
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().to_owned();
    let failures = tokio::task::spawn_blocking(move || {
        passes
            .iter()
            .filter_map(|(tag, bearer)| run(&dir, &base, tag, bearer).err())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
