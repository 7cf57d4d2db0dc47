//! The SQLite backend against the `Store` contract: money moves once,
//! idempotency holds under the unique index, the audit chain detects edits.

use super::*;

const NOW: u64 = 1_750_000_000;

fn cny() -> Currency {
    Currency::from_code("CNY").unwrap()
}

fn acct(s: &str) -> AccountId {
    AccountId::new(s).unwrap()
}

async fn seeded() -> SqliteStore {
    let store = SqliteStore::open_in_memory(NOW).unwrap();
    for (id, opening) in [("alice", 10_000u64), ("shop", 0)] {
        store
            .create_account(
                NewAccount {
                    id: acct(id),
                    display_name: id.to_uppercase(),
                    currency: cny(),
                    opening_balance_minor: opening,
                },
                NOW,
            )
            .await
            .unwrap();
    }
    store
        .create_terminal(NewTerminal {
            id: "term_1".into(),
            name: "till".into(),
            api_key_hash: [1; 32],
            created_at_unix_s: NOW,
        })
        .await
        .unwrap();
    store
        .create_device(NewDevice {
            id: "dev_1".into(),
            account: acct("alice"),
            label: "card".into(),
            method: keybridge_proto::api::SignatureMethod::TransactionApplet,
            ocra: None,
            public_key: vec![4; 65],
            certificate: vec![0x30],
            credential_hash: [2; 32],
            created_at_unix_s: NOW,
        })
        .await
        .unwrap();
    store
}

fn pending(id: u8, key: &str, amount: u64) -> TransactionRecord {
    TransactionRecord {
        id: TransactionId([id; 16]),
        terminal_id: "term_1".into(),
        idempotency_key: key.into(),
        request_hash: [id; 32],
        payer: acct("alice"),
        payee: acct("shop"),
        payee_name: "SHOP".into(),
        amount_minor: amount,
        currency: cny(),
        order_id: "o".into(),
        description: String::new(),
        payload: vec![0x71, 0x00],
        status: TransactionStatus::Pending,
        reason: None,
        created_at_unix_s: NOW,
        expires_at_unix_s: NOW + 120,
        updated_at_unix_s: NOW,
    }
}

fn signed(id: u8, counter: u32) -> SignedConfirmation {
    SignedConfirmation {
        transaction_id: TransactionId([id; 16]),
        device_id: "dev_1".into(),
        answer: Some(AnswerDigest([u8::try_from(counter).unwrap(); 32])),
        counter: Some(counter),
        now_unix_s: NOW + 1,
        replay_reason: Reason::CounterReplay,
    }
}

async fn balances_sum_to_zero(store: &SqliteStore) {
    let total: i64 = store
        .list_accounts()
        .await
        .unwrap()
        .iter()
        .map(|a| a.balance_minor)
        .sum();
    assert_eq!(total, 0);
}

async fn balance(store: &SqliteStore, id: &str) -> i64 {
    store
        .get_account(&acct(id))
        .await
        .unwrap()
        .unwrap()
        .balance_minor
}

#[tokio::test]
async fn opening_balances_come_from_the_issuance_account() {
    let store = seeded().await;
    let issuance = store
        .get_account(&acct("issuance:CNY"))
        .await
        .unwrap()
        .unwrap();
    assert!(issuance.system);
    assert_eq!(issuance.balance_minor, -10_000);
    assert_eq!(balance(&store, "alice").await, 10_000);
    balances_sum_to_zero(&store).await;
    let again = store
        .create_account(
            NewAccount {
                id: acct("alice"),
                display_name: "A".into(),
                currency: cny(),
                opening_balance_minor: 5,
            },
            NOW,
        )
        .await;
    assert_eq!(again, Err(StoreError::AlreadyExists));
    assert_eq!(balance(&store, "alice").await, 10_000);
}

#[tokio::test]
async fn migrations_are_recorded_and_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    drop(SqliteStore::open(&path, NOW).unwrap());
    let store = SqliteStore::open(&path, NOW + 5).unwrap();
    let conn = store.conn.lock().unwrap();
    let versions: Vec<(i64, i64)> = conn
        .prepare("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<(i64, i64)> = MIGRATIONS.iter().map(|m| (m.0, 1_750_000_000)).collect();
    assert_eq!(versions, expected);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn the_unique_index_decides_idempotent_inserts() {
    let store = seeded().await;
    let first = store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    assert!(matches!(first, InsertOutcome::Created(_)));
    // Same terminal and key, different id: the first row wins.
    let second = store
        .insert_transaction(pending(2, "k1", 100))
        .await
        .unwrap();
    match second {
        InsertOutcome::Existing(t) => assert_eq!(t.id, TransactionId([1; 16])),
        other => panic!("expected Existing, got {other:?}"),
    }
    assert_eq!(store.list_transactions(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_settlement_moves_money_exactly_once() {
    let store = seeded().await;
    store
        .insert_transaction(pending(1, "k1", 2_500))
        .await
        .unwrap();
    let Finalized::Applied(t) = store.apply_signed_confirmation(signed(1, 1)).await.unwrap() else {
        panic!("not applied");
    };
    assert_eq!(t.status, TransactionStatus::Settled);
    assert_eq!(t.reason, None);
    assert_eq!(balance(&store, "alice").await, 7_500);
    assert_eq!(balance(&store, "shop").await, 2_500);
    balances_sum_to_zero(&store).await;

    // A second valid-looking confirmation finds it settled and writes nothing.
    let again = store.apply_signed_confirmation(signed(1, 2)).await.unwrap();
    assert!(matches!(again, Finalized::NotPending(_)));
    let transfers = store.transfers_for_transaction(&t.id).await.unwrap();
    assert_eq!(transfers.len(), 1);
    assert_eq!(transfers[0].amount_minor, 2_500);
    assert_eq!(transfers[0].debit_account, acct("alice"));
    assert_eq!(balance(&store, "alice").await, 7_500);
    let device = store
        .device_by_credential_hash([2; 32])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.last_counter, 1);
}

#[tokio::test]
async fn a_replayed_counter_is_rejected_and_not_consumed() {
    let store = seeded().await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    store
        .insert_transaction(pending(2, "k2", 100))
        .await
        .unwrap();
    store.apply_signed_confirmation(signed(1, 7)).await.unwrap();
    let Finalized::Applied(t) = store.apply_signed_confirmation(signed(2, 7)).await.unwrap() else {
        panic!("not applied");
    };
    assert_eq!(
        (t.status, t.reason),
        (TransactionStatus::Rejected, Some(Reason::CounterReplay))
    );
    assert!(store
        .transfers_for_transaction(&t.id)
        .await
        .unwrap()
        .is_empty());
    let device = store
        .device_by_credential_hash([2; 32])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.last_counter, 7);
}

#[tokio::test]
async fn insufficient_funds_fail_but_consume_the_counter() {
    let store = seeded().await;
    store
        .insert_transaction(pending(1, "k1", 10_001))
        .await
        .unwrap();
    let Finalized::Applied(t) = store.apply_signed_confirmation(signed(1, 3)).await.unwrap() else {
        panic!("not applied");
    };
    assert_eq!(
        (t.status, t.reason),
        (TransactionStatus::Failed, Some(Reason::InsufficientFunds))
    );
    assert_eq!(balance(&store, "alice").await, 10_000);
    let device = store
        .device_by_credential_hash([2; 32])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.last_counter, 3);
}

#[tokio::test]
async fn a_disabled_device_cannot_settle() {
    let store = seeded().await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    store.disable_device("dev_1", NOW).await.unwrap();
    let Finalized::Applied(t) = store.apply_signed_confirmation(signed(1, 1)).await.unwrap() else {
        panic!("not applied");
    };
    assert_eq!(t.reason, Some(Reason::UnknownDevice));
    assert_eq!(store.count_active_devices(&acct("alice")).await.unwrap(), 0);
}

#[tokio::test]
async fn expiry_ends_only_overdue_pending_transactions() {
    let store = seeded().await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    let mut later = pending(2, "k2", 100);
    later.expires_at_unix_s = NOW + 500;
    store.insert_transaction(later).await.unwrap();
    assert!(store.expire_due(NOW + 119).await.unwrap().is_empty());
    assert_eq!(
        store
            .pending_for_payer(&acct("alice"), NOW + 119)
            .await
            .unwrap()
            .len(),
        2
    );
    let expired = store.expire_due(NOW + 120).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].reason, Some(Reason::Expired));
    assert_eq!(
        store
            .pending_for_payer(&acct("alice"), NOW + 120)
            .await
            .unwrap()
            .len(),
        1
    );
    // Finalising an ended transaction is a no-op that reports how it ended.
    let f = store
        .finalize(
            &TransactionId([1; 16]),
            TransactionStatus::Rejected,
            Reason::Declined,
            Some(AnswerDigest([9; 32])),
            NOW + 121,
        )
        .await
        .unwrap();
    assert!(matches!(f, Finalized::NotPending(t) if t.status == TransactionStatus::Expired));
    // Expiry is no answer, and the refused finalisation stored none.
    assert_eq!(store.ending_answer(&TransactionId([1; 16])).await, Ok(None));
}

/// Whatever ends a transaction through an answer stores which answer it was,
/// and only the end that happened does.
#[tokio::test]
async fn the_answer_that_ended_a_transaction_is_stored_with_its_end() {
    let store = seeded().await;
    for (n, key) in [(1, "k1"), (2, "k2"), (3, "k3")] {
        store
            .insert_transaction(pending(n, key, 100))
            .await
            .unwrap();
    }
    assert_eq!(store.ending_answer(&TransactionId([1; 16])).await, Ok(None));

    // Settled by a signature.
    let Finalized::Applied(t) = store.apply_signed_confirmation(signed(1, 1)).await.unwrap() else {
        panic!("not applied")
    };
    assert_eq!(t.status, TransactionStatus::Settled);
    assert_eq!(
        store.ending_answer(&TransactionId([1; 16])).await,
        Ok(Some(AnswerDigest([1; 32])))
    );
    // Rejected by a decline.
    let declined = Some(AnswerDigest([7; 32]));
    let f = store
        .finalize(
            &TransactionId([2; 16]),
            TransactionStatus::Rejected,
            Reason::Declined,
            declined,
            NOW + 2,
        )
        .await
        .unwrap();
    assert!(matches!(f, Finalized::Applied(_)));
    assert_eq!(
        store.ending_answer(&TransactionId([2; 16])).await,
        Ok(declined)
    );
    // A second answer to an ended transaction changes nothing, its digest
    // included.
    let again = store.apply_signed_confirmation(signed(2, 2)).await.unwrap();
    assert!(matches!(again, Finalized::NotPending(_)));
    assert_eq!(
        store.ending_answer(&TransactionId([2; 16])).await,
        Ok(declined)
    );
    // An unknown transaction has no answer.
    assert_eq!(store.ending_answer(&TransactionId([9; 16])).await, Ok(None));
}

#[tokio::test]
async fn every_state_change_is_audited_and_the_chain_detects_edits() {
    let store = seeded().await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    store.apply_signed_confirmation(signed(1, 1)).await.unwrap();
    let log = store.audit_log().await.unwrap();
    let events: Vec<&str> = log.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "account_created", // issuance:CNY
            "account_created", // alice
            "account_created", // shop
            "terminal_created",
            "device_enrolled",
            "transaction_created",
            "transaction_settled",
        ]
    );
    assert_eq!(store.verify_audit_chain().await.unwrap(), 7);

    // The database refuses edits outright...
    {
        let conn = store.conn.lock().unwrap();
        let edit = conn.execute("UPDATE audit_log SET detail = '{}' WHERE seq = 2", []);
        assert!(edit.is_err());
        assert!(conn.execute("DELETE FROM transfers", []).is_err());
        // ...and if someone gets past that, the chain shows it.
        conn.execute_batch("DROP TRIGGER audit_log_no_update")
            .unwrap();
        conn.execute("UPDATE audit_log SET detail = '{}' WHERE seq = 2", [])
            .unwrap();
    }
    assert_eq!(
        store.verify_audit_chain().await,
        Err(StoreError::AuditChainBroken { seq: 2 })
    );
}

#[tokio::test]
async fn devices_need_a_customer_account() {
    let store = seeded().await;
    let mut d = NewDevice {
        id: "dev_2".into(),
        account: acct("nobody"),
        label: String::new(),
        method: keybridge_proto::api::SignatureMethod::TransactionApplet,
        ocra: None,
        public_key: vec![4; 65],
        certificate: vec![0x30],
        credential_hash: [3; 32],
        created_at_unix_s: NOW,
    };
    assert_eq!(
        store.create_device(d.clone()).await,
        Err(StoreError::UnknownAccount)
    );
    d.account = acct("issuance:CNY");
    assert_eq!(
        store.create_device(d).await,
        Err(StoreError::UnknownAccount)
    );
}

/// Revocation is recorded once, audited, survives reads, and stops a
/// settlement that verification had already passed.
#[tokio::test]
async fn a_revoked_device_cannot_settle_and_renames_are_kept() {
    let store = seeded().await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    let renamed = store
        .rename_device("dev_1", "blue card", NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.label, "blue card");
    let revoked = store
        .revoke_device("dev_1", NOW + 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at_unix_s, Some(NOW + 5));
    assert_eq!(revoked.view().status, "revoked");
    // A second revocation keeps the first time.
    let again = store
        .revoke_device("dev_1", NOW + 9)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at_unix_s, Some(NOW + 5));
    assert_eq!(store.count_active_devices(&acct("alice")).await.unwrap(), 0);
    let Finalized::Applied(t) = store.apply_signed_confirmation(signed(1, 1)).await.unwrap() else {
        panic!("not applied")
    };
    assert_eq!(t.reason, Some(Reason::CertificateRevoked));
    assert!(store
        .transfers_for_transaction(&t.id)
        .await
        .unwrap()
        .is_empty());
    assert!(store.revoke_device("nope", NOW).await.unwrap().is_none());
    let events: Vec<String> = store
        .audit_log()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.event)
        .collect();
    assert_eq!(events.iter().filter(|e| *e == "device_revoked").count(), 1);
    assert!(events.contains(&"device_renamed".to_owned()));
}

/// The queries for pending rows run on the partial indexes of migration 6,
/// not a scan: a full scan would grow with every transaction ever made.
#[test]
fn pending_queries_use_the_partial_indexes() {
    let store = SqliteStore::open_in_memory(NOW).unwrap();
    let conn = store.conn.lock().unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let zeros = rusqlite::params_from_iter(std::iter::repeat_n(0, stmt.parameter_count()));
        stmt.query_map(zeros, |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("; ")
    };
    for (sql, index) in [
        (
            format!("SELECT * FROM transactions {PENDING_OF_PAYER}"),
            "transactions_pending_by_payer",
        ),
        (
            format!("SELECT * FROM transactions {PENDING_DUE}"),
            "transactions_pending_by_expiry",
        ),
        (
            format!("SELECT * FROM webhook_deliveries {}", web::DELIVERIES_DUE),
            "webhook_deliveries_pending",
        ),
        (
            "SELECT count(*) FROM transactions WHERE status = 'pending'".to_owned(),
            "transactions_pending_by",
        ),
    ] {
        let plan = plan(&sql);
        assert!(
            plan.contains(index)
                && !plan
                    .split("; ")
                    .any(|step| step.starts_with("SCAN ") && !step.contains(" USING ")),
            "{sql}\n  planned as: {plan}"
        );
    }
}

fn keys(key: &str, payee: &str) -> CreationKeys {
    CreationKeys {
        terminal_id: "term_1".into(),
        idempotency_key: key.into(),
        payer: acct("alice"),
        payee: acct(payee),
    }
}

/// `create_transaction` reads the facts, lets the caller decide, and stores
/// only what it built; a refusal stores nothing and hands the facts back; a
/// replay returns the first transaction without asking `build` at all.
#[tokio::test]
async fn create_transaction_decides_on_facts_read_inside_the_write() {
    let store = seeded().await;
    let audit_rows = store.audit_log().await.unwrap().len();
    let refused = store
        .create_transaction(keys("k1", "nobody"), Box::new(|_| None))
        .await
        .unwrap();
    let CreateOutcome::Refused(facts) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(facts.payer.as_ref().map(|a| a.balance_minor), Some(10_000));
    assert_eq!(facts.payee, None);
    assert_eq!(facts.payer_active_devices, 1);
    assert!(store.list_transactions(10).await.unwrap().is_empty());

    let built = store
        .create_transaction(
            keys("k1", "shop"),
            Box::new(|facts| {
                assert_eq!(facts.payee.as_ref().unwrap().display_name, "SHOP");
                Some(pending(1, "k1", 100))
            }),
        )
        .await
        .unwrap();
    assert_eq!(built, CreateOutcome::Created(pending(1, "k1", 100)));
    assert_eq!(
        store
            .get_transaction(&TransactionId([1; 16]))
            .await
            .unwrap(),
        Some(pending(1, "k1", 100))
    );

    let replayed = store
        .create_transaction(
            keys("k1", "shop"),
            Box::new(|_| panic!("a replay must not build")),
        )
        .await
        .unwrap();
    assert_eq!(replayed, CreateOutcome::Existing(pending(1, "k1", 100)));
    assert_eq!(store.list_transactions(10).await.unwrap().len(), 1);
    // Only the one created transaction was audited.
    assert_eq!(store.audit_log().await.unwrap().len(), audit_rows + 1);
}
