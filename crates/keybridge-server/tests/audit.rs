//! The audit log over the admin API: read in pages, and its hash chain
//! verified, including after someone edits it in the database itself.

mod common;

use common::*;
use keybridge_proto::api::{AuditEntryView, AuditVerification, TransactionStatus};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

async fn page(h: &Harness, query: &str) -> Vec<AuditEntryView> {
    let r = h.admin_get(&format!("/v1/admin/audit{query}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn verify(h: &Harness) -> AuditVerification {
    let r = h.admin_get("/v1/admin/audit/verify").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// The hash of a row as the API documents it, computed here from the row's
/// fields alone: an auditor needs nothing but the API's output.
fn documented_hash(prev: &[u8], row: &AuditEntryView) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(row.seq.to_be_bytes());
    h.update(row.at_unix_s.to_be_bytes());
    let tx = row.transaction_id.map(|t| t.to_hex()).unwrap_or_default();
    for text in [tx.as_str(), &row.event, &row.detail] {
        h.update((text.len() as u64).to_be_bytes());
        h.update(text.as_bytes());
    }
    h.finalize().to_vec()
}

#[tokio::test]
async fn the_audit_log_reads_in_pages_and_verifies_from_its_output_alone() {
    let (h, terminal, card) = Harness::standard().await;
    let t = h.pay(&terminal, 1234).await;
    let confirmation = card.sign(&h.payload(&t.id).await);
    let settled = h.confirm_ok(&card, &t.id, &confirmation).await;
    assert_eq!(settled.status, TransactionStatus::Settled);

    let all = page(&h, "?limit=500").await;
    assert!(all.len() >= 6, "{all:?}");
    let settled = all
        .iter()
        .find(|r| r.transaction_id == Some(t.id) && r.event == "transaction_settled")
        .expect("the settlement is audited");
    assert!(settled.detail.starts_with('{'));

    // Pages by `after` join up to the whole log.
    let mut paged = Vec::new();
    loop {
        let after = paged.last().map_or(0, |r: &AuditEntryView| r.seq);
        let next = page(&h, &format!("?after={after}&limit=2")).await;
        if next.is_empty() {
            break;
        }
        paged.extend(next);
    }
    assert_eq!(paged, all);

    // The chain, recomputed from the API's output with the documented rule.
    let mut prev = vec![0u8; 32];
    for (i, row) in all.iter().enumerate() {
        assert_eq!(row.seq, i as u64 + 1);
        assert_eq!(row.prev_hash_hex, hex::encode(&prev));
        let hash = documented_hash(&prev, row);
        assert_eq!(row.hash_hex, hex::encode(&hash), "row {}", row.seq);
        prev = hash;
    }

    let v = verify(&h).await;
    assert_eq!(
        v,
        AuditVerification {
            intact: true,
            rows_checked: all.len() as u64,
            head_seq: Some(all.len() as u64),
            head_hash_hex: Some(hex::encode(&prev)),
            broken_at_seq: None,
        }
    );
}

#[tokio::test]
async fn an_edit_made_in_the_database_shows_as_a_broken_chain() {
    let (h, terminal, card) = Harness::standard().await;
    let t = h.pay(&terminal, 500).await;
    let confirmation = card.sign(&h.payload(&t.id).await);
    h.confirm_ok(&card, &t.id, &confirmation).await;
    let before = verify(&h).await;
    assert!(before.intact);

    // Someone with the database's own rights goes past the append-only
    // trigger and rewrites one row's details.
    let forged = r#"{"forged":true}"#;
    h.in_database(
        &format!(
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only;
             UPDATE audit_log SET detail = '{forged}' WHERE seq = 3;"
        ),
        &format!(
            "DROP TRIGGER audit_log_no_update;
             UPDATE audit_log SET detail = '{forged}' WHERE seq = 3;"
        ),
    )
    .await;

    let after = verify(&h).await;
    assert_eq!(
        after,
        AuditVerification {
            intact: false,
            rows_checked: 2,
            head_seq: Some(2),
            head_hash_hex: Some(page(&h, "?limit=2").await[1].hash_hex.clone()),
            broken_at_seq: Some(3),
        }
    );
}

#[tokio::test]
async fn the_audit_endpoints_need_the_admin_token_and_a_valid_limit() {
    let h = Harness::start().await;
    for path in ["/v1/admin/audit", "/v1/admin/audit/verify"] {
        let r = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    for query in [
        "?limit=0",
        "?limit=501",
        "?after=-1",
        "?after=x",
        "?after=9223372036854775808",
        "?page=2",
    ] {
        let r = h.admin_get(&format!("/v1/admin/audit{query}")).await;
        let (status, body) = error_body(r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body.error, "invalid_request", "{query}");
    }
    // An empty log is intact and has no head yet.
    let v = verify(&h).await;
    assert!(v.intact);
    assert_eq!(v.head_seq.is_some(), v.rows_checked > 0);
}
