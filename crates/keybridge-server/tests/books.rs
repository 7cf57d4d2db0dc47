//! The books over the admin API: balanced through payments, and an edit made
//! in the database itself shows as the rules it breaks.

mod common;

use common::*;
use keybridge_proto::api::{BooksVerification, BrokenRule, TransactionStatus};
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
