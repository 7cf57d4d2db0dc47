//! The PostgreSQL backend: the shared `Store` contract, and what only it has
//! (its migrations, its triggers, two instances on one database, the
//! webhook claim).

use super::*;
use crate::store::contract::{
    contract_tests, payment_and_pending, pending, seed, seed_with_webhook, signed, COOKED_BOOKS,
    NOW,
};
use crate::store::web::WebStore;

async fn open() -> Option<PgStore> {
    let url = scratch::database_or_skip().await?;
    Some(PgStore::connect(plain(&url), NOW).await.expect("connect"))
}

fn plain(url: &str) -> Endpoint {
    Endpoint::new(url, None).unwrap()
}

contract_tests!(async {
    open()
        .await
        .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn Store>)
});

/// A second instance on the same database finds the schema in place, and
/// sees (and is bound by) the first one's writes.
#[tokio::test]
async fn two_instances_share_one_database_and_migrate_once() {
    let Some(url) = scratch::database_or_skip().await else {
        return;
    };
    let (a, b) = tokio::join!(
        PgStore::connect(plain(&url), NOW),
        PgStore::connect(plain(&url), NOW + 5)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let client = a.client().await.unwrap();
    let versions: Vec<(i32, i64)> = client
        .query(
            "SELECT version, applied_at FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(versions.len(), MIGRATIONS.len());
    assert!(versions
        .iter()
        .all(|(_, at)| *at == NOW as i64 || *at == NOW as i64 + 5));

    seed(&a).await;
    b.insert_transaction(pending(1, "k1", 100)).await.unwrap();
    // Instance A answers what B created; B's copy of the answer finds it paid.
    let first = a.apply_signed_confirmation(signed(1, 1)).await.unwrap();
    assert!(matches!(first, Finalized::Applied(_)));
    let second = b.apply_signed_confirmation(signed(1, 2)).await.unwrap();
    assert!(matches!(second, Finalized::NotPending(_)));
    assert_eq!(
        b.get_account(&AccountId::new("shop").unwrap())
            .await
            .unwrap()
            .unwrap()
            .balance_minor,
        100
    );
    assert_eq!(b.verify_audit_chain().await.unwrap(), 7);
}

#[tokio::test]
async fn the_database_refuses_edits_and_the_chain_detects_them() {
    let Some(store) = open().await else { return };
    seed(&store).await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    store.apply_signed_confirmation(signed(1, 1)).await.unwrap();
    assert_eq!(store.verify_audit_chain().await.unwrap(), 7);
    let client = store.client().await.unwrap();
    for edit in [
        "UPDATE audit_log SET detail = '{}' WHERE seq = 2",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "UPDATE transfers SET amount_minor = 1",
        "DELETE FROM transfers",
        "TRUNCATE transfers CASCADE",
    ] {
        let refused = client.batch_execute(edit).await.unwrap_err();
        let message = refused.as_db_error().map(|e| e.message().to_owned());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("append-only")),
            "{edit}: {message:?}"
        );
    }
    // If someone gets past that, the chain shows it.
    client
        .batch_execute(
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only;
             UPDATE audit_log SET detail = '{}' WHERE seq = 2;",
        )
        .await
        .unwrap();
    assert_eq!(
        store.verify_audit_chain().await,
        Err(StoreError::AuditChainBroken { seq: 2 })
    );
}

/// Each way of cooking the books by hand is counted by the rule it breaks.
#[tokio::test]
async fn the_books_check_counts_each_hand_edit() {
    for (edit, expected) in COOKED_BOOKS {
        let Some(store) = open().await else { return };
        payment_and_pending(&store).await;
        store
            .client()
            .await
            .unwrap()
            .batch_execute(edit)
            .await
            .unwrap();
        let check = store.check_books().await.unwrap();
        assert_eq!(check.broken, expected, "{edit}");
    }
}

/// Audit rows are staged with their write and chained once it has
/// committed: by the sealer on its own, and before any read of the log. A
/// write that rolls back leaves nothing; staging ends empty. The hashes are
/// the ones the verifier checks (non-ASCII text, with and without a
/// transaction id).
#[tokio::test]
async fn audit_rows_are_chained_after_their_write_commits() {
    let Some(store) = open().await else { return };
    let mut client = store.client().await.unwrap();
    let tx = begin_write(&mut client).await.unwrap();
    append_audit(&tx, NOW, None, "rolled_back", &serde_json::json!({}))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let tx = begin_write(&mut client).await.unwrap();
    let id = TransactionId([7; 16]);
    let detail = serde_json::json!({"name": "Café 书店 \"quoted\" ✓"});
    append_audit(&tx, NOW + 1, None, "first_of_two", &detail)
        .await
        .unwrap();
    append_audit(&tx, NOW + 2, Some(&id), "second_of_two", &detail)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The background sealer chains them without anyone reading the log.
    let count = |table: &'static str| {
        let store = store.clone();
        async move {
            let c = store.client().await.unwrap();
            let sql = format!("SELECT count(*) FROM {table}");
            c.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0)
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while count("audit_log").await < 2 {
        assert!(std::time::Instant::now() < deadline, "not sealed in 5 s");
        tokio::time::sleep(sealer::PERIOD).await;
    }
    assert_eq!(count("audit_staging").await, 0);

    let log = store.audit_log().await.unwrap();
    let events: Vec<&str> = log.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(events, ["first_of_two", "second_of_two"]);
    assert_eq!(log[1].transaction_id, Some(id));
    assert!(log[1].detail.contains("Café 书店"));
    assert_eq!(store.verify_audit_chain().await.unwrap(), 2);
}

/// A read of the audit log sees every audit row committed before it, even
/// when no sealer has run since (this store's is stopped).
#[tokio::test]
async fn a_read_of_the_audit_log_seals_first() {
    let Some(url) = scratch::database_or_skip().await else {
        return;
    };
    let store = PgStore::connect(plain(&url), NOW).await.unwrap();
    store._sealer.0.abort();
    seed(&store).await;
    let log = store.audit_log().await.unwrap();
    assert!(log.len() >= 3, "{log:?}");
    assert_eq!(
        store.verify_audit_chain().await.unwrap(),
        u64::try_from(log.len()).unwrap()
    );
}

/// Many writes from two instances at once still make one unbroken chain.
#[tokio::test]
async fn concurrent_writes_from_two_instances_make_one_chain() {
    let Some(url) = scratch::database_or_skip().await else {
        return;
    };
    let a = std::sync::Arc::new(PgStore::connect(plain(&url), NOW).await.unwrap());
    let b = std::sync::Arc::new(PgStore::connect(plain(&url), NOW).await.unwrap());
    seed(a.as_ref()).await;
    let writes = (1..=40u8).map(|n| {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            store
                .insert_transaction(pending(n, &format!("k{n}"), 1))
                .await
                .unwrap()
        })
    });
    for write in futures_util::future::join_all(writes).await {
        write.unwrap();
    }
    let log = a.audit_log().await.unwrap();
    assert_eq!(
        log.iter()
            .filter(|r| r.event == "transaction_created")
            .count(),
        40
    );
    assert_eq!(
        b.verify_audit_chain().await.unwrap(),
        u64::try_from(log.len()).unwrap()
    );
}

/// Two instances' webhook workers do not take the same event while one of
/// them is attempting it; a claim that ran out is taken again.
#[tokio::test]
async fn a_due_webhook_event_is_claimed_by_one_instance() {
    let Some(store) = open().await else { return };
    seed_with_webhook(&store).await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    store.apply_signed_confirmation(signed(1, 1)).await.unwrap();
    let other = store.clone();
    let (mine, theirs) = tokio::join!(
        store.due_deliveries(NOW + 2, 10),
        other.due_deliveries(NOW + 2, 10)
    );
    let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
    assert_eq!(mine.len() + theirs.len(), 1, "{mine:?} {theirs:?}");
    assert!(store.due_deliveries(NOW + 3, 10).await.unwrap().is_empty());
    let again = store
        .due_deliveries(NOW + 2 + web::CLAIM_S as u64, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
}

#[tokio::test]
async fn a_url_that_does_not_parse_is_refused_without_echoing_it() {
    let err = Endpoint::new("postgres://kb:s3cret@host:notaport/db", None).unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// With the database's CA given, the connection is TLS, verified: it works
/// against the test cluster's CA and fails against another CA.
#[tokio::test]
async fn a_given_database_ca_means_verified_tls() {
    let Some(url) = scratch::database_or_skip().await else {
        return;
    };
    let ca = match std::env::var(scratch::CA_ENV) {
        Ok(ca) => std::path::PathBuf::from(ca),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "{} is not set: CI's cluster serves TLS (scripts/postgres)",
                scratch::CA_ENV
            )
        }
        Err(_) => {
            eprintln!("SKIPPED: {} is not set", scratch::CA_ENV);
            return;
        }
    };
    let store = PgStore::connect(Endpoint::new(&url, Some(&ca)).unwrap(), NOW)
        .await
        .expect("TLS to the test cluster");
    let client = store.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert!(row.get::<_, String>(1).starts_with("TLS"));

    // Another CA: the server's certificate does not chain to it.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other, params.self_signed(&key).unwrap().pem()).unwrap();
    let refused = PgStore::connect(Endpoint::new(&url, Some(&other)).unwrap(), NOW).await;
    assert!(
        refused.is_err(),
        "a database certificate from another CA was accepted"
    );
    // A file with no certificate is a configuration error.
    std::fs::write(&other, "not a certificate").unwrap();
    assert!(Endpoint::new(&url, Some(&other)).is_err());
}
