//! `keybridge backup` on a server that is paying: the copy is taken while
//! payments settle, a server restored from it opens with consistent books
//! and an intact audit chain, and the same card, phone and till pay through
//! it (its CA, device certificates and terminal keys came along).

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::removal::{
    bank, card, enrol_and_start_relay, request, vpcd_reader, ALICE_OPENING, AMOUNT,
};
use keybridge_proto::api::TransactionStatus;
use keybridge_proto::AccountId;
use keybridge_terminal::{pay, Client, PayRequest};

/// The admin token of the testkit's bank.
const ADMIN_TOKEN: &str = "admin-token-for-tests";

fn keybridge_backup(from: &std::path::Path, to: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .arg("backup")
        .arg("--data-dir")
        .arg(from)
        .arg("--to")
        .arg(to)
        .env_remove("KEYBRIDGE_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run keybridge backup")
}

/// Pays and waits for the outcome; settled or the test fails.
async fn pay_settled(terminal: &Client, order: &str) {
    let request = PayRequest {
        wait_max: Duration::from_secs(30),
        ..request(order)
    };
    let outcome = pay(terminal, &request, |_| {}).await.unwrap();
    assert_eq!(
        outcome.last.status,
        TransactionStatus::Settled,
        "{order}: {:?}",
        outcome.last.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_paying_restores_to_a_server_that_pays() {
    let dir = tempfile::tempdir().unwrap();
    let live_dir = dir.path().join("server");
    let live = bank(&live_dir, 60).await;
    let (enrol, spec, link) = vpcd_reader();
    let state = dir.path().join("card.json");
    let enrolling = card(&state, &link, "approve", true);
    enrol_and_start_relay(&live.admin, enrol, enrolling, spec, Duration::from_secs(10)).await;
    let (_card, _lines) = card(&state, &link, "approve", false);
    for n in 0..3 {
        pay_settled(&live.terminal, &format!("O-BEFORE-{n}")).await;
    }

    // The till goes on paying while the backup runs.
    let paying = Arc::new(AtomicBool::new(true));
    let till = {
        let terminal = live.terminal.clone();
        let paying = Arc::clone(&paying);
        tokio::spawn(async move {
            let mut n = 0u32;
            // Paced, and at most 30: alice's 100.00 lasts 40 payments, and
            // three more are made before and one after.
            while paying.load(Ordering::SeqCst) && n < 30 {
                pay_settled(&terminal, &format!("O-DURING-{n}")).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backup_dir = dir.path().join("backup");
    let (from, to) = (live_dir.clone(), backup_dir.clone());
    let out = tokio::task::spawn_blocking(move || keybridge_backup(&from, &to))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    paying.store(false, Ordering::SeqCst);
    let paid_during = till.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("integrity ok; books balance"), "{stdout}");
    assert!(stdout.contains("rows intact"), "{stdout}");
    for key_file in ["ca-key.pem", "ca-cert.pem", "master-key"] {
        assert!(stdout.contains(key_file), "{key_file}: {stdout}");
    }
    assert!(
        paid_during >= 2,
        "payments during the backup: {paid_during}"
    );
    let live_settled = 3 + paid_during;
    let addr = live.server.addr;
    live.server.shutdown().await;

    // A second backup into the same place is refused and changes nothing.
    let db = backup_dir.join("keybridge.sqlite");
    let before = std::fs::read(&db).unwrap();
    let again = keybridge_backup(&live_dir, &backup_dir);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("never overwrites"),
        "{again:?}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);

    // Restored where the old one listened: the phone and the till find it.
    let restored = keybridge_server::start(keybridge_server::ServerConfig::new(
        addr,
        backup_dir.clone(),
        ADMIN_TOKEN.into(),
    ))
    .await
    .unwrap();
    let admin = Client::new(&format!("http://{addr}"), ADMIN_TOKEN).unwrap();
    let audit = admin.verify_audit().await.unwrap();
    assert!(audit.intact, "{audit:?}");
    let stored = admin.transactions(500).await.unwrap();
    let settled: Vec<_> = stored
        .iter()
        .filter(|t| t.status == TransactionStatus::Settled)
        .collect();
    // Every payment finished before the backup began is in it; none it
    // holds is one the live server did not settle.
    for n in 0..3 {
        let order = format!("O-BEFORE-{n}");
        assert!(settled.iter().any(|t| t.order_id == order), "{order}");
    }
    assert!(settled.len() <= live_settled as usize, "{}", settled.len());
    let balance = |id: &'static str| {
        let admin = admin.clone();
        async move {
            admin
                .account(&AccountId::new(id).unwrap())
                .await
                .unwrap()
                .balance_minor
        }
    };
    // An operator reconciling lists every transaction of the restored books,
    // page by page, each once: the same as the API's one big page.
    let listed = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["admin", "--server", &format!("http://{addr}")])
        .args(["list-transactions", "--all", "--limit", "3"])
        .env("KEYBRIDGE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run keybridge admin");
    assert!(listed.status.success(), "{listed:?}");
    let listed_ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| line.split_whitespace().next().unwrap().to_owned())
        .collect();
    let stored_ids: Vec<String> = stored.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(listed_ids, stored_ids);
    let settled_minor = AMOUNT * i64::try_from(settled.len()).unwrap();
    assert_eq!(balance("alice").await, ALICE_OPENING - settled_minor);
    assert_eq!(balance("shop").await, settled_minor);

    // The same card, phone and till pay through the restored server: its CA
    // still vouches for the card's certificate, the till's key still opens.
    pay_settled(&live.terminal, "O-AFTER-RESTORE").await;
    assert_eq!(balance("shop").await, settled_minor + AMOUNT);
    // The operator looks that payment up: its till and the money it moved.
    let newest = &admin.transactions(1).await.unwrap()[0];
    assert_eq!(newest.order_id, "O-AFTER-RESTORE");
    let shown = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["admin", "--server", &format!("http://{addr}")])
        .args(["show-transaction", "--id", &newest.id.to_string()])
        .env("KEYBRIDGE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run keybridge admin");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("settled") && shown.contains("terminal term_"),
        "{shown}"
    );
    assert!(
        shown.contains("payment: CNY 2.50 from alice to shop"),
        "{shown}"
    );
    let audit_rows: Vec<&str> = shown
        .lines()
        .skip_while(|l| *l != "audit rows:")
        .skip(1)
        .collect();
    let events: Vec<&str> = audit_rows
        .iter()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        events,
        ["transaction_created", "transaction_settled"],
        "{shown}"
    );
    restored.shutdown().await;
}

/// A backup onto a disk that fills up (a file size limit of 16 KiB, set
/// with `prlimit`: every write past it fails) exits 1 with the reason and
/// leaves nothing behind: no partial copy, no stray key. The same backup
/// with room succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_onto_a_full_disk_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let live_dir = dir.path().join("server");
    let live = bank(&live_dir, 60).await;
    // The snapshot holds every page, most of them still in the WAL.
    let size = |name: &str| std::fs::metadata(live_dir.join(name)).map_or(0, |m| m.len());
    let pages = size("keybridge.sqlite") + size("keybridge.sqlite-wal");
    assert!(pages > 4 * 16_384, "{pages} bytes");
    let target = dir.path().join("backup");
    let (from, to) = (live_dir.clone(), target.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("prlimit")
            .arg("--fsize=16384")
            .arg(env!("CARGO_BIN_EXE_keybridge"))
            .arg("backup")
            .arg("--data-dir")
            .arg(&from)
            .arg("--to")
            .arg(&to)
            .env_remove("KEYBRIDGE_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run prlimit (util-linux) keybridge backup")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("snapshot failed"), "{stderr}");
    assert!(!target.exists(), "a failed backup left {target:?}");

    let (from, to) = (live_dir.clone(), target.clone());
    let out = tokio::task::spawn_blocking(move || keybridge_backup(&from, &to))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    live.server.shutdown().await;
}
