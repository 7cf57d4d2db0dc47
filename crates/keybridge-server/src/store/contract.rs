//! The `Store` contract: one test suite that every backend runs, through
//! [`contract_tests!`] in its own test module. Money moves once, idempotency
//! holds under the unique index, every change is audited in one chain, and
//! concurrent answers to one transaction pay at most once.

use keybridge_proto::api::{Reason, TransactionStatus};
use keybridge_proto::{AccountId, Currency, TransactionId};

use super::books::BooksRule;
use super::*;

pub(crate) const NOW: u64 = 1_750_000_000;

fn cny() -> Currency {
    Currency::from_code("CNY").unwrap()
}

fn acct(s: &str) -> AccountId {
    AccountId::new(s).unwrap()
}

/// Alice (10,000 minor units), the shop (nothing), terminal `term_1` and
/// Alice's device `dev_1`.
pub(crate) async fn seed(store: &dyn Store) {
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
    store.create_device(device("dev_1", "alice")).await.unwrap();
}

/// [`seed`], and a webhook registered for `term_1`.
pub(crate) async fn seed_with_webhook(store: &dyn Store) {
    seed(store).await;
    store
        .put_webhook(WebhookRecord {
            terminal_id: "term_1".into(),
            url: "https://shop.example/hook".into(),
            secret: "whsec".into(),
            created_at_unix_s: NOW,
        })
        .await
        .unwrap();
}

/// A transaction-applet device for `account`, with credential hash [2; 32].
fn device(id: &str, account: &str) -> NewDevice {
    NewDevice {
        id: id.into(),
        account: acct(account),
        label: "card".into(),
        method: keybridge_proto::api::SignatureMethod::TransactionApplet,
        ocra: None,
        public_key: vec![4; 65],
        certificate: vec![0x30],
        credential_hash: [2; 32],
        created_at_unix_s: NOW,
    }
}

pub(crate) fn pending(id: u8, key: &str, amount: u64) -> TransactionRecord {
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

pub(crate) fn signed(id: u8, counter: u32) -> SignedConfirmation {
    SignedConfirmation {
        transaction_id: TransactionId([id; 16]),
        device_id: "dev_1".into(),
        answer: Some(AnswerDigest([u8::try_from(counter).unwrap(); 32])),
        counter: Some(counter),
        now_unix_s: NOW + 1,
        replay_reason: Reason::CounterReplay,
    }
}

/// Inserts [`pending`] transactions `ids` (keys `k{id}`), each of `amount`.
async fn insert_pending(store: &dyn Store, ids: std::ops::RangeInclusive<u8>, amount: u64) {
    for n in ids {
        store
            .insert_transaction(pending(n, &format!("k{n}"), amount))
            .await
            .unwrap();
    }
}

/// The balances sum to zero, and the store's own check of the books, which
/// reads every transfer back, finds every rule kept.
async fn balances_sum_to_zero(store: &dyn Store) {
    let accounts = store.list_accounts().await.unwrap();
    let total: i64 = accounts.iter().map(|a| a.balance_minor).sum();
    assert_eq!(total, 0);
    let books = store.check_books().await.unwrap();
    assert!(books.balanced(), "{}", books.describe_broken());
    assert_eq!(books.accounts, u64::try_from(accounts.len()).unwrap());
}

/// Ways of cooking the books by hand, as an intruder with database access
/// might, on a store holding [`payment_and_pending`]: each edit, and what
/// `check_books` must then count. The last keeps every currency's sum at
/// zero: only the per-account rule sees it.
pub(crate) const COOKED_BOOKS: [(&str, &[(BooksRule, u64)]); 4] = [
    (
        "UPDATE accounts SET balance_minor = balance_minor + 1 WHERE id = 'shop'",
        &[
            (BooksRule::BalanceIsItsTransfers, 1),
            (BooksRule::CurrencySumsToZero, 1),
        ],
    ),
    (
        "UPDATE transactions SET status = 'rejected' WHERE status = 'settled'",
        &[(BooksRule::TransferHasItsSettlement, 1)],
    ),
    (
        "UPDATE transactions SET status = 'settled' WHERE status = 'pending'",
        &[(BooksRule::SettledHasItsTransfer, 1)],
    ),
    (
        "UPDATE accounts SET balance_minor = balance_minor - 5 WHERE id = 'alice';
         UPDATE accounts SET balance_minor = balance_minor + 5 WHERE id = 'shop'",
        &[(BooksRule::BalanceIsItsTransfers, 2)],
    ),
];

/// [`seed`], one payment of 100 settled and one of 50 pending; the books
/// balance.
pub(crate) async fn payment_and_pending(store: &dyn Store) {
    seed(store).await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    store.apply_signed_confirmation(signed(1, 1)).await.unwrap();
    store
        .insert_transaction(pending(2, "k2", 50))
        .await
        .unwrap();
    balances_sum_to_zero(store).await;
}

async fn balance(store: &dyn Store, id: &str) -> i64 {
    store
        .get_account(&acct(id))
        .await
        .unwrap()
        .unwrap()
        .balance_minor
}

pub(crate) async fn opening_balances_come_from_the_issuance_account(store: &dyn Store) {
    seed(store).await;
    let issuance = store
        .get_account(&acct("issuance:CNY"))
        .await
        .unwrap()
        .unwrap();
    assert!(issuance.system);
    assert_eq!(issuance.balance_minor, -10_000);
    assert_eq!(balance(store, "alice").await, 10_000);
    balances_sum_to_zero(store).await;
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
    assert_eq!(balance(store, "alice").await, 10_000);
}

pub(crate) async fn the_unique_index_decides_idempotent_inserts(store: &dyn Store) {
    seed(store).await;
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

pub(crate) async fn a_settlement_moves_money_exactly_once(store: &dyn Store) {
    seed(store).await;
    store
        .insert_transaction(pending(1, "k1", 2_500))
        .await
        .unwrap();
    let Finalized::Applied(t) = store.apply_signed_confirmation(signed(1, 1)).await.unwrap() else {
        panic!("not applied");
    };
    assert_eq!(t.status, TransactionStatus::Settled);
    assert_eq!(t.reason, None);
    assert_eq!(balance(store, "alice").await, 7_500);
    assert_eq!(balance(store, "shop").await, 2_500);
    balances_sum_to_zero(store).await;

    // A second valid-looking confirmation finds it settled and writes nothing.
    let again = store.apply_signed_confirmation(signed(1, 2)).await.unwrap();
    assert!(matches!(again, Finalized::NotPending(_)));
    let transfers = store.transfers_for_transaction(&t.id).await.unwrap();
    assert_eq!(transfers.len(), 1);
    assert_eq!(transfers[0].amount_minor, 2_500);
    assert_eq!(transfers[0].debit_account, acct("alice"));
    assert_eq!(balance(store, "alice").await, 7_500);
    let device = store
        .device_by_credential_hash([2; 32])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.last_counter, 1);
}

pub(crate) async fn a_replayed_counter_is_rejected_and_not_consumed(store: &dyn Store) {
    seed(store).await;
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

pub(crate) async fn insufficient_funds_fail_but_consume_the_counter(store: &dyn Store) {
    seed(store).await;
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
    assert_eq!(balance(store, "alice").await, 10_000);
    let device = store
        .device_by_credential_hash([2; 32])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.last_counter, 3);
}

pub(crate) async fn a_disabled_device_cannot_settle(store: &dyn Store) {
    seed(store).await;
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

pub(crate) async fn expiry_ends_only_overdue_pending_transactions(store: &dyn Store) {
    seed(store).await;
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

pub(crate) async fn the_answer_that_ended_a_transaction_is_stored_with_its_end(store: &dyn Store) {
    seed(store).await;
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

pub(crate) async fn devices_need_a_customer_account(store: &dyn Store) {
    seed(store).await;
    let mut d = NewDevice {
        credential_hash: [3; 32],
        ..device("dev_2", "nobody")
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

pub(crate) async fn a_revoked_device_cannot_settle_and_renames_are_kept(store: &dyn Store) {
    seed(store).await;
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

pub(crate) async fn create_transaction_decides_on_facts_read_inside_the_write(store: &dyn Store) {
    seed(store).await;
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
    assert_eq!(facts.payer_pending, 0);
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

/// The payer's pending transactions, as the rules see them at creation:
/// unexpired ones only, ended ones not, counted no further than asked.
pub(crate) async fn creation_counts_the_payers_pending_transactions(store: &dyn Store) {
    seed(store).await;
    insert_pending(store, 1..=3, 100).await;
    let facts = |now_unix_s: u64, pending_count_max: u64| {
        let keys = CreationKeys {
            now_unix_s,
            pending_count_max,
            ..keys("new", "shop")
        };
        async move {
            match store.create_transaction(keys, Box::new(|_| None)).await {
                Ok(CreateOutcome::Refused(facts)) => facts.payer_pending,
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(facts(NOW, 100).await, 3);
    assert_eq!(facts(NOW, 2).await, 2);
    // `pending` expires at NOW + 120: over then, swept or not.
    assert_eq!(facts(NOW + 119, 100).await, 3);
    assert_eq!(facts(NOW + 120, 100).await, 0);
    store
        .finalize(
            &TransactionId([1; 16]),
            TransactionStatus::Rejected,
            Reason::Declined,
            None,
            NOW + 1,
        )
        .await
        .unwrap();
    store.apply_signed_confirmation(signed(2, 1)).await.unwrap();
    assert_eq!(facts(NOW + 1, 100).await, 1);
}

/// Creations for one payer at once count each other's inserts: a limit of
/// three lets exactly three through, on every backend (PostgreSQL: several
/// connections, as several instances would be).
pub(crate) async fn concurrent_creations_for_one_payer_stop_at_the_limit(store: &dyn Store) {
    seed(store).await;
    let creations = (1..=12u8).map(|n| {
        let key = format!("k{n}");
        store.create_transaction(
            keys(&key, "shop"),
            Box::new(move |facts| (facts.payer_pending < 3).then(|| pending(n, &key, 100))),
        )
    });
    let outcomes = futures_util::future::join_all(creations).await;
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(CreateOutcome::Created(_))))
        .count();
    assert_eq!(created, 3, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Ok(CreateOutcome::Created(_) | CreateOutcome::Refused(_)))));
}

fn keys(key: &str, payee: &str) -> CreationKeys {
    CreationKeys {
        terminal_id: "term_1".into(),
        idempotency_key: key.into(),
        payer: acct("alice"),
        payee: acct(payee),
        now_unix_s: NOW,
        pending_count_max: 100,
    }
}

pub(crate) async fn every_state_change_is_audited_in_one_chain(store: &dyn Store) {
    seed(store).await;
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
}

/// A rotated key replaces the old one at once, audited; a disabled terminal
/// keeps its key (and stays disabled); an unknown one is `None`.
pub(crate) async fn a_terminal_key_rotates_once_and_only_while_enabled(store: &dyn Store) {
    seed(store).await;
    let rotated = store
        .rotate_terminal_key("term_1", [7; 32], NOW + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rotated.id.as_str(), rotated.disabled_at_unix_s),
        ("term_1", None)
    );
    assert_eq!(store.terminal_by_key_hash([1; 32]).await.unwrap(), None);
    let found = store.terminal_by_key_hash([7; 32]).await.unwrap().unwrap();
    assert_eq!(found.id, "term_1");
    assert_eq!(
        store
            .rotate_terminal_key("term_nope", [8; 32], NOW)
            .await
            .unwrap(),
        None
    );

    store.disable_terminal("term_1", NOW + 2).await.unwrap();
    let disabled = store
        .rotate_terminal_key("term_1", [9; 32], NOW + 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(disabled.disabled_at_unix_s, Some(NOW + 2));
    assert_eq!(store.terminal_by_key_hash([9; 32]).await.unwrap(), None);

    let log = store.audit_log().await.unwrap();
    let rotations: Vec<_> = log
        .iter()
        .filter(|r| r.event == "terminal_key_rotated")
        .collect();
    assert_eq!(rotations.len(), 1, "{log:?}");
    assert_eq!(rotations[0].at_unix_s, NOW + 1);
    assert!(rotations[0].detail.contains("term_1"));
    assert_eq!(
        store.verify_audit_chain().await.unwrap(),
        u64::try_from(log.len()).unwrap()
    );
}

/// A transaction's own audit rows tell its story in `seq` order, and only
/// its: rows about other transactions, accounts or devices stay out. They
/// are the rows of the whole log, hashes included.
pub(crate) async fn a_transaction_reads_its_own_audit_rows(store: &dyn Store) {
    seed(store).await;
    insert_pending(store, 1..=3, 100).await;
    store.apply_signed_confirmation(signed(2, 1)).await.unwrap();
    // A replayed counter: transaction 3 ends rejected, with its reason.
    store.apply_signed_confirmation(signed(3, 1)).await.unwrap();
    let story = |n: u8| async move {
        let rows = store
            .audit_for_transaction(&TransactionId([n; 16]))
            .await
            .unwrap();
        assert!(rows
            .iter()
            .all(|r| r.transaction_id == Some(TransactionId([n; 16]))));
        rows
    };
    let events = |rows: &[AuditRecord]| rows.iter().map(|r| r.event.clone()).collect::<Vec<_>>();
    assert_eq!(events(&story(1).await), ["transaction_created"]);
    let settled = story(2).await;
    assert_eq!(
        events(&settled),
        ["transaction_created", "transaction_settled"]
    );
    let rejected = story(3).await;
    assert_eq!(
        events(&rejected),
        ["transaction_created", "transaction_rejected"]
    );
    assert!(
        rejected[1].detail.contains("counter_replay"),
        "{}",
        rejected[1].detail
    );
    assert!(story(9).await.is_empty());

    let log = store.audit_log().await.unwrap();
    for row in settled.iter().chain(&rejected) {
        let in_log = log.iter().find(|r| r.seq == row.seq).unwrap();
        assert_eq!(in_log, row);
    }
    assert!(settled[0].seq < settled[1].seq);
}

/// The audit log reads in pages by `seq`, and the chain checks across
/// page boundaries to the same head as in one piece.
pub(crate) async fn the_audit_log_reads_in_pages(store: &dyn Store) {
    seed(store).await;
    insert_pending(store, 1..=3, 100).await;
    let all = store.audit_log().await.unwrap();
    assert_eq!(all.len(), 8);
    let seqs = |rows: Vec<AuditRecord>| rows.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.audit_page(0, 3).await.unwrap()), [1, 2, 3]);
    assert_eq!(seqs(store.audit_page(3, 3).await.unwrap()), [4, 5, 6]);
    assert_eq!(seqs(store.audit_page(6, 3).await.unwrap()), [7, 8]);
    assert!(store.audit_page(8, 3).await.unwrap().is_empty());
    for page in [1, 2, 3, 8, 1_000] {
        let (check, broken) = store.check_audit_chain_in_pages(page).await.unwrap();
        assert_eq!(broken, None);
        assert_eq!((check.rows(), check.last_seq()), (8, Some(8)));
        assert_eq!(check.head(), Some(all[7].hash));
    }
}

/// Answers to one transaction arriving together (two instances, or the
/// socket and the HTTP fallback) pay once; and many transactions answered at
/// once keep the books balanced, whatever order the backend runs them in.
pub(crate) async fn concurrent_answers_pay_at_most_once(store: &dyn Store) {
    seed(store).await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    let answers = (1..=8).map(|counter| store.apply_signed_confirmation(signed(1, counter)));
    let outcomes = futures_util::future::join_all(answers).await;
    let applied = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Finalized::Applied(_))))
        .count();
    assert_eq!(applied, 1, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Ok(Finalized::Applied(_) | Finalized::NotPending(_)))));
    assert_eq!(balance(store, "alice").await, 9_900);

    insert_pending(store, 2..=21, 100).await;
    // Counters 9..=28 in a shuffled order: whichever lands after a higher
    // one is a replay and must move nothing.
    let order = (2..=21u8).map(|n| (n, 9 + u32::from((n * 7) % 20)));
    let outcomes = futures_util::future::join_all(
        order.map(|(n, c)| store.apply_signed_confirmation(signed(n, c))),
    )
    .await;
    let mut settled = 0i64;
    for outcome in outcomes {
        let Ok(Finalized::Applied(t)) = outcome else {
            panic!("{outcome:?}")
        };
        match (t.status, t.reason) {
            (TransactionStatus::Settled, None) => settled += 1,
            (TransactionStatus::Rejected, Some(Reason::CounterReplay)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(settled >= 1);
    assert_eq!(balance(store, "alice").await, 9_900 - 100 * settled);
    balances_sum_to_zero(store).await;
    assert_eq!(
        store.verify_audit_chain().await.unwrap(),
        u64::try_from(store.audit_log().await.unwrap().len()).unwrap()
    );
}

/// The end of a transaction queues its webhook event in the same write; an
/// attempt's result is recorded once.
pub(crate) async fn an_ended_transaction_queues_its_webhook_event(store: &dyn Store) {
    seed_with_webhook(store).await;
    store
        .insert_transaction(pending(1, "k1", 100))
        .await
        .unwrap();
    assert!(store.due_deliveries(NOW + 5, 10).await.unwrap().is_empty());
    store.apply_signed_confirmation(signed(1, 1)).await.unwrap();
    let due = store.due_deliveries(NOW + 5, 10).await.unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].transaction_id, TransactionId([1; 16]));
    assert_eq!(due[0].state, DeliveryState::Pending);
    assert!(due[0].event_id.starts_with("evt_") && due[0].event_id.len() == 36);
    let delivered = AttemptResult {
        event_id: due[0].event_id.clone(),
        state: DeliveryState::Delivered,
        attempts: 1,
        next_attempt_at_unix_s: NOW + 5,
        last_status: Some(204),
        last_error: None,
        now_unix_s: NOW + 5,
    };
    store.record_attempt(delivered.clone()).await.unwrap();
    // A late duplicate of the result changes nothing.
    store
        .record_attempt(AttemptResult {
            state: DeliveryState::Failed,
            ..delivered
        })
        .await
        .unwrap();
    let all = store.list_deliveries(10).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, DeliveryState::Delivered);
    assert_eq!(all[0].delivered_at_unix_s, Some(NOW + 5));
    assert!(store
        .due_deliveries(NOW + 500, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.count_pending().await.unwrap(), 0);
    assert!(store.delete_webhook("term_1").await.unwrap());
    assert!(!store.delete_webhook("term_1").await.unwrap());
}

/// Payments in both directions between two accounts, all at once: each
/// changes both accounts, and none may deadlock another or lose an update.
pub(crate) async fn payments_both_ways_at_once_all_settle(store: &dyn Store) {
    seed(store).await;
    store
        .create_account(
            NewAccount {
                id: acct("bob"),
                display_name: "BOB".into(),
                currency: cny(),
                opening_balance_minor: 10_000,
            },
            NOW,
        )
        .await
        .unwrap();
    let mut bobs_device = device("dev_2", "bob");
    bobs_device.credential_hash = [5; 32];
    store.create_device(bobs_device).await.unwrap();
    let mut answers = Vec::new();
    for n in 1..=20u8 {
        let (payer, payee, device_id) = if n % 2 == 0 {
            ("alice", "bob", "dev_1")
        } else {
            ("bob", "alice", "dev_2")
        };
        let t = TransactionRecord {
            payer: acct(payer),
            payee: acct(payee),
            ..pending(n, &format!("k{n}"), 100 + u64::from(n))
        };
        store.insert_transaction(t).await.unwrap();
        // No counter (as PIV): the order the answers land in does not matter.
        answers.push(SignedConfirmation {
            device_id: device_id.into(),
            counter: None,
            ..signed(n, 0)
        });
    }
    let outcomes = futures_util::future::join_all(
        answers
            .into_iter()
            .map(|a| store.apply_signed_confirmation(a)),
    )
    .await;
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Ok(Finalized::Applied(t)) if t.status == TransactionStatus::Settled),
            "{outcome:?}"
        );
    }
    let alice_paid: i64 = (1..=20).filter(|n| n % 2 == 0).map(|n| 100 + n).sum();
    let bob_paid: i64 = (1..=20).filter(|n| n % 2 == 1).map(|n| 100 + n).sum();
    assert_eq!(
        balance(store, "alice").await,
        10_000 - alice_paid + bob_paid
    );
    assert_eq!(balance(store, "bob").await, 10_000 - bob_paid + alice_paid);
    balances_sum_to_zero(store).await;
    assert!(store.verify_audit_chain().await.is_ok());
}

/// Payments from one payer answered all at once, for more than the payer
/// has: as many settle as the funds cover, the others fail for
/// insufficient funds, and no balance goes below zero (a backend that reads
/// the funds without a lock must check them again as it debits).
pub(crate) async fn concurrent_payments_never_overdraw_the_payer(store: &dyn Store) {
    seed(store).await;
    // Several of the payer's devices, so the answers do not queue on one
    // device's row.
    let devices = ["dev_1", "dev_a", "dev_b", "dev_c", "dev_d", "dev_e"];
    for (i, id) in (1u8..).zip(&devices[1..]) {
        let mut d = device(id, "alice");
        d.credential_hash = [10 + i; 32];
        store.create_device(d).await.unwrap();
    }
    insert_pending(store, 1..=30, 500).await;
    // No counter (as PIV): the order the answers land in does not matter.
    let answers = (1..=30u8).map(|n| SignedConfirmation {
        device_id: devices[usize::from(n) % devices.len()].into(),
        counter: None,
        ..signed(n, 0)
    });
    let outcomes =
        futures_util::future::join_all(answers.map(|a| store.apply_signed_confirmation(a))).await;
    let (mut settled, mut failed) = (0, 0);
    for outcome in &outcomes {
        match outcome {
            Ok(Finalized::Applied(t)) => match (t.status, t.reason) {
                (TransactionStatus::Settled, None) => settled += 1,
                (TransactionStatus::Failed, Some(Reason::InsufficientFunds)) => failed += 1,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((settled, failed), (20, 10));
    assert_eq!(balance(store, "alice").await, 0);
    assert_eq!(balance(store, "shop").await, 10_000);
    balances_sum_to_zero(store).await;
    assert!(store.verify_audit_chain().await.is_ok());
}

/// Following `before` from the newest page reaches every transaction once,
/// in the order they were made, newest first; a cursor that names no
/// transaction is told apart from the end.
pub(crate) async fn transactions_list_in_pages_newest_first(store: &dyn Store) {
    seed(store).await;
    insert_pending(store, 1..=5, 10).await;
    let ids = |page: &[TransactionRecord]| page.iter().map(|t| t.id.0[0]).collect::<Vec<_>>();
    let first = store.list_transactions(2).await.unwrap();
    assert_eq!(ids(&first), [5, 4]);
    let mut seen = ids(&first);
    let mut before = first.last().unwrap().id;
    loop {
        let page = store
            .transactions_before(&before, 2)
            .await
            .unwrap()
            .unwrap();
        seen.extend(ids(&page));
        match page.last() {
            Some(last) if page.len() == 2 => before = last.id,
            _ => break,
        }
    }
    assert_eq!(seen, [5, 4, 3, 2, 1]);
    let oldest = TransactionId([1; 16]);
    assert_eq!(
        store.transactions_before(&oldest, 2).await.unwrap(),
        Some(vec![])
    );
    let unknown = TransactionId([9; 16]);
    assert_eq!(store.transactions_before(&unknown, 2).await.unwrap(), None);
}

/// One `#[tokio::test]` per contract test, each on a fresh store from
/// `$open` (an expression giving a future of `Option<Arc<dyn Store>>`;
/// `None` skips, when the backend's server is not available outside CI).
macro_rules! contract_tests {
    ($open:expr) => {
        $crate::store::contract::contract_tests!(@each $open;
            opening_balances_come_from_the_issuance_account,
            the_unique_index_decides_idempotent_inserts,
            a_settlement_moves_money_exactly_once,
            a_replayed_counter_is_rejected_and_not_consumed,
            insufficient_funds_fail_but_consume_the_counter,
            a_disabled_device_cannot_settle,
            expiry_ends_only_overdue_pending_transactions,
            the_answer_that_ended_a_transaction_is_stored_with_its_end,
            devices_need_a_customer_account,
            a_revoked_device_cannot_settle_and_renames_are_kept,
            create_transaction_decides_on_facts_read_inside_the_write,
            creation_counts_the_payers_pending_transactions,
            concurrent_creations_for_one_payer_stop_at_the_limit,
            every_state_change_is_audited_in_one_chain,
            concurrent_answers_pay_at_most_once,
            an_ended_transaction_queues_its_webhook_event,
            payments_both_ways_at_once_all_settle,
            concurrent_payments_never_overdraw_the_payer,
            the_audit_log_reads_in_pages,
            a_transaction_reads_its_own_audit_rows,
            a_terminal_key_rotates_once_and_only_while_enabled,
            transactions_list_in_pages_newest_first
        );
    };
    (@each $open:expr; $($name:ident),*) => {
        mod contract {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let opened: Option<std::sync::Arc<dyn $crate::store::Store>> = $open.await;
                    let Some(store) = opened else { return };
                    $crate::store::contract::$name(&*store).await;
                }
            )*
        }
    };
}
pub(crate) use contract_tests;
