//! The money over the admin API: the books balanced through payments, an
//! edit made in the database itself shown as the rules it breaks, and one
//! transaction with the transfer it made.

mod common;

use common::*;
use keybridge_proto::api::{
    AuditEntryView, BooksVerification, BrokenRule, TransactionDetail, TransactionStatus,
};
use reqwest::StatusCode;

async fn verify(h: &Harness) -> BooksVerification {
    let r = h.admin_get("/v1/admin/books/verify").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_books_balance_until_someone_edits_a_balance_in_the_database() {
    let (h, terminal, card) = Harness::standard().await;
    for amount in [500, 1_250] {
        let t = h.pay(&terminal, amount).await;
        let confirmation = card.sign(&h.payload(&t.id).await);
        let settled = h.confirm_ok(&card, &t.id, &confirmation).await;
        assert_eq!(settled.status, TransactionStatus::Settled);
    }
    // One still pending: no money, nothing owed to the books.
    h.pay(&terminal, 99).await;
    // alice, the shop and CNY's issuance account; alice's opening balance
    // and two payments.
    let balanced = BooksVerification {
        balanced: true,
        accounts_checked: 3,
        transfers_checked: 3,
        broken: Vec::new(),
    };
    assert_eq!(verify(&h).await, balanced);

    // Someone with the database's own rights credits the shop 7.00 out of
    // nowhere.
    let edit = "UPDATE accounts SET balance_minor = balance_minor + 700 WHERE id = 'shop'";
    h.in_database(edit, edit).await;
    let broken = |rule: &str, message: &str| BrokenRule {
        rule: rule.into(),
        count: 1,
        message: message.into(),
    };
    assert_eq!(
        verify(&h).await,
        BooksVerification {
            balanced: false,
            broken: vec![
                broken(
                    "balance_is_its_transfers",
                    "accounts hold a balance their transfers do not add up to"
                ),
                broken(
                    "currency_sums_to_zero",
                    "currencies' balances do not sum to zero"
                ),
            ],
            ..balanced
        }
    );

    let r = h
        .http
        .get(h.url("/v1/admin/books/verify"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// An operator looking into one transaction sees the terminal that made it,
/// the money it moved (its payment transfer once settled, nothing before)
/// and its audit rows, which are the log's own.
#[tokio::test]
async fn a_transaction_shows_its_terminal_the_money_it_moved_and_its_audit_rows() {
    let (h, terminal, card) = Harness::standard().await;
    let t = h.pay(&terminal, 1_234).await;
    let detail = |id: String| {
        let h = &h;
        async move { h.admin_get(&format!("/v1/admin/transactions/{id}")).await }
    };
    let pending: TransactionDetail = detail(t.id.to_string()).await.json().await.unwrap();
    assert_eq!(pending.transaction, t);
    assert_eq!(pending.terminal_id, terminal.id);
    assert!(pending.transfers.is_empty());
    let events =
        |d: &TransactionDetail| d.audit.iter().map(|r| r.event.clone()).collect::<Vec<_>>();
    assert_eq!(events(&pending), ["transaction_created"]);
    // Another payment's rows stay out of this one's.
    let other = h.pay(&terminal, 99).await;

    let confirmation = card.sign(&h.payload(&t.id).await);
    let settled = h.confirm_ok(&card, &t.id, &confirmation).await;
    let paid: TransactionDetail = detail(t.id.to_string()).await.json().await.unwrap();
    assert_eq!(paid.transaction, settled);
    assert!(paid.updated_at_unix_s >= pending.updated_at_unix_s);
    let [transfer] = paid.transfers.as_slice() else {
        panic!("{paid:?}");
    };
    assert_eq!(
        (
            transfer.kind.as_str(),
            transfer.debit_account.as_str(),
            transfer.credit_account.as_str(),
            transfer.amount_minor,
        ),
        ("payment", "alice", "shop", 1_234)
    );
    assert_eq!(
        events(&paid),
        ["transaction_created", "transaction_settled"]
    );
    assert_eq!(paid.audit[0], pending.audit[0]);
    let log: Vec<AuditEntryView> = h.admin_get("/v1/admin/audit").await.json().await.unwrap();
    for row in &paid.audit {
        assert_eq!(row.transaction_id, Some(t.id));
        assert!(log.contains(row), "{row:?} is not in the log");
    }
    assert!(log.iter().any(|r| r.transaction_id == Some(other.id)));

    for unknown in ["0".repeat(32), "not-an-id".to_owned()] {
        let (status, body) = error_body(detail(unknown).await).await;
        assert_eq!(
            (status, body.error.as_str()),
            (StatusCode::NOT_FOUND, "not_found")
        );
    }
    let r = h
        .http
        .get(h.url(&format!("/v1/admin/transactions/{}", t.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
