//! Two `keybridge server` processes on one PostgreSQL database, as behind a
//! load balancer: the phone's relay holds its socket to one, the terminal
//! pays through the other, and a real `keybridge card` process signs. The
//! payment settles once and both servers report it. When the test cluster
//! serves TLS (`KEYBRIDGE_TEST_POSTGRES_CA`), both servers reach it over
//! verified TLS.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::removal::{
    card, enrol_and_start_relay, request, vpcd_reader, Killed, ALICE_OPENING, AMOUNT,
};
use common::server;
use keybridge_proto::api::{CreateAccount, TransactionStatus};
use keybridge_proto::AccountId;
use keybridge_server::store::postgres::scratch;
use keybridge_terminal::Client;
use keybridge_testkit::cny;

/// A `keybridge server --database-url` process and its base URL.
struct Server {
    _process: Killed,
    url: String,
}

impl Server {
    /// Starts one on `database` with its CA, master key and admin token in
    /// `data_dir`, and waits until it listens.
    fn start(data_dir: &Path, database: &str, name: &str) -> Server {
        let ready = data_dir.with_file_name(format!("{name}.ready"));
        let log = std::fs::File::create(data_dir.with_file_name(format!("{name}.log"))).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keybridge"));
        command
            .args(["server", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--ready-file")
            .arg(&ready)
            .env("KEYBRIDGE_DATABASE_URL", database)
            // Over TLS to the database when the test cluster serves it
            // (scripts/postgres does): the flag's whole path.
            .envs(std::env::var(scratch::CA_ENV).map(|ca| ("KEYBRIDGE_DATABASE_CA_CERT", ca)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let (process, url) = server::until_ready(&mut command, &ready);
        Server {
            _process: process,
            url,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_on_one_database_confirm_a_payment_together() {
    let Some(database) = scratch::database_or_skip().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("server");
    // A first: it creates the CA, master key and admin token B then reads.
    let a = Server::start(&data_dir, &database, "a");
    let b = Server::start(&data_dir, &database, "b");
    let token = std::fs::read_to_string(data_dir.join("admin-token")).unwrap();
    let token = token.trim();
    let admin_a = Client::new(&a.url, token).unwrap();
    let admin_b = Client::new(&b.url, token).unwrap();
    for (id, balance) in [("alice", ALICE_OPENING), ("shop", 0)] {
        admin_a
            .create_account(&CreateAccount {
                id: AccountId::new(id).unwrap(),
                display_name: id.into(),
                currency: cny(),
                opening_balance_minor: u64::try_from(balance).unwrap(),
            })
            .await
            .unwrap();
    }
    let terminal_key = admin_a.create_terminal("till").await.unwrap().api_key;
    let terminal_b = Client::new(&b.url, &terminal_key).unwrap();

    // Alice's card, enrolled through A; her phone's relay holds A's socket.
    let (enrol, spec, link) = vpcd_reader();
    let state = dir.path().join("card.json");
    let enrolling = card(&state, &link, "approve", true);
    enrol_and_start_relay(&admin_a, enrol, enrolling, spec, Duration::from_secs(10)).await;
    let (mut signing_card, card_lines) = card(&state, &link, "approve", false);

    // The terminal pays through B and waits on B to hear the end.
    let paying = keybridge_terminal::PayRequest {
        wait_max: Duration::from_secs(30),
        ..request("O-TWO")
    };
    let outcome = keybridge_terminal::pay(&terminal_b, &paying, |_| {})
        .await
        .unwrap();
    let logs = || {
        ["a.log", "b.log"]
            .map(|name| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default())
            .join("\n----\n")
    };
    assert_eq!(
        outcome.last.status,
        TransactionStatus::Settled,
        "{outcome:?}\n{}\ncard {:?}:\n{}",
        logs(),
        signing_card.0.try_wait(),
        card_lines.try_iter().collect::<Vec<_>>().join("\n")
    );
    for admin in [&admin_a, &admin_b] {
        let alice = admin
            .account(&AccountId::new("alice").unwrap())
            .await
            .unwrap();
        assert_eq!(alice.balance_minor, ALICE_OPENING - AMOUNT);
        let shop = admin
            .account(&AccountId::new("shop").unwrap())
            .await
            .unwrap();
        assert_eq!(shop.balance_minor, AMOUNT);
    }
    let devices = admin_b.devices().await.unwrap();
    assert_eq!(devices[0].last_counter, 1);

    // Both servers wrote audit rows; either one shows them in one intact
    // chain, through the operator's commands.
    let admin = |url: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keybridge"))
            .args(["admin", "--server", url])
            .args(args)
            .env("KEYBRIDGE_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let verified = admin(&a.url, &["verify-audit"]);
    assert!(verified.starts_with("audit chain intact: "), "{verified}");
    assert_eq!(admin(&b.url, &["verify-audit"]), verified);
    let books = admin(&a.url, &["verify-books"]);
    assert!(books.starts_with("books balance: "), "{books}");
    assert_eq!(admin(&b.url, &["verify-books"]), books);
    let log = admin(&b.url, &["audit", "--limit", "500"]);
    assert_eq!(log.matches(" transaction_settled ").count(), 1, "{log}");

    // The till's key rotated through A: B refuses the old key (remembered
    // from the payment) once it hears from A, well within its cache's 30 s,
    // and takes the new one.
    let listed = admin(&b.url, &["list-terminals"]);
    let till = listed.split_whitespace().next().unwrap().to_owned();
    assert!(listed.contains(" active "), "{listed}");
    let rotated = admin(&a.url, &["rotate-terminal-key", "--id", &till]);
    let new_key = rotated
        .lines()
        .find_map(|l| l.strip_prefix("api key (shown once): "))
        .unwrap_or_else(|| panic!("{rotated}"))
        .to_owned();
    refused_soon(&terminal_b, &outcome.last.id).await;
    let terminal_b = Client::new(&b.url, &new_key).unwrap();
    terminal_b
        .get_transaction(&outcome.last.id, 0)
        .await
        .expect("the new key works on B");

    // The till's key revoked through A: B lists it disabled, and refuses it.
    let disabled = admin(&a.url, &["disable-terminal", "--id", &till]);
    assert_eq!(disabled.trim(), format!("terminal {till} disabled"));
    assert!(admin(&b.url, &["list-terminals"]).contains(" disabled "));
    // B remembered the new key from the read above; it forgets it when it
    // hears from A.
    refused_soon(&terminal_b, &outcome.last.id).await;

    // How both servers are connected, as PostgreSQL sees it (this test's
    // own connection is plain and left out).
    let (db, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let (servers, over_tls): (i64, i64) = (row.get(0), row.get(1));
    assert!(servers >= 4, "each server's pool and event link: {servers}");
    let expected = if std::env::var(scratch::CA_ENV).is_ok() {
        servers
    } else {
        0
    };
    assert_eq!(over_tls, expected, "{servers} connections");
}

/// Waits until `terminal`'s server refuses its key (a 401 on reading `id`),
/// for at most 5 s: well inside the terminal cache's 30 s, so only the
/// other server's notification can explain it.
async fn refused_soon(terminal: &Client, id: &keybridge_proto::TransactionId) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match terminal.get_transaction(id, 0).await {
            Err(keybridge_terminal::ClientError::Api { status: 401, .. }) => return,
            other => assert!(other.is_ok() && Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
