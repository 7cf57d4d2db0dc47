//! [`WebStore`] for PostgreSQL.

use async_trait::async_trait;
use keybridge_proto::AccountId;

use super::{count, exec, get, query, query_txs, select, PgStore};
use crate::store::rows::{decode_delivery, to_i64, to_u64, DELIVERY_COLUMNS};
use crate::store::web::{AttemptResult, DeliveryRecord, DeliveryState, WebStore, WebhookRecord};
use crate::store::{StoreError, TransactionRecord};

/// How long an instance that took due deliveries has them to itself. Several
/// instances run the webhook worker; a claim keeps them from posting the same
/// event at once. If the instance dies mid-attempt (or the database does),
/// the event goes out again after this; receivers deduplicate by event id
/// (delivery is at least once). Twice a worker's pass, which is one round
/// of requests of at most `REQUEST_TIMEOUT_S`; it was 60 s, for passes of
/// four rounds, and the crash test then waited that long for events taken
/// by a killed instance.
pub const CLAIM_S: i64 = 2 * crate::webhook::REQUEST_TIMEOUT_S as i64;

fn read_delivery(r: &tokio_postgres::Row) -> Result<DeliveryRecord, StoreError> {
    decode_delivery((
        get(r, 0)?,
        get(r, 1)?,
        get(r, 2)?,
        get(r, 3)?,
        get(r, 4)?,
        get(r, 5)?,
        get(r, 6)?,
        get(r, 7)?,
        get(r, 8)?,
        get(r, 9)?,
        get(r, 10)?,
    ))
}

#[async_trait]
impl WebStore for PgStore {
    async fn put_webhook(&self, webhook: WebhookRecord) -> Result<WebhookRecord, StoreError> {
        exec(
            &self.client().await?,
            "INSERT INTO webhooks (terminal_id, url, secret, created_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (terminal_id) DO UPDATE
             SET url = excluded.url, secret = excluded.secret, created_at = excluded.created_at",
            &[
                &webhook.terminal_id,
                &webhook.url,
                &webhook.secret,
                &to_i64(webhook.created_at_unix_s)?,
            ],
        )
        .await?;
        Ok(webhook)
    }

    async fn get_webhook(&self, terminal_id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        let rows = query(
            &self.client().await?,
            "SELECT terminal_id, url, secret, created_at FROM webhooks WHERE terminal_id = $1",
            &[&terminal_id],
        )
        .await?;
        rows.first()
            .map(|r| {
                Ok(WebhookRecord {
                    terminal_id: get(r, 0)?,
                    url: get(r, 1)?,
                    secret: get(r, 2)?,
                    created_at_unix_s: to_u64(get(r, 3)?)?,
                })
            })
            .transpose()
    }

    async fn delete_webhook(&self, terminal_id: &str) -> Result<bool, StoreError> {
        let n = exec(
            &self.client().await?,
            "DELETE FROM webhooks WHERE terminal_id = $1",
            &[&terminal_id],
        )
        .await?;
        Ok(n == 1)
    }

    /// Claims the due deliveries for `CLAIM_S`: rows another instance is
    /// claiming at this moment are skipped, not waited for.
    async fn due_deliveries(
        &self,
        now_unix_s: u64,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let now = to_i64(now_unix_s)?;
        let sql = format!(
            "WITH due AS (
                 SELECT seq FROM webhook_deliveries
                 WHERE state = 'pending' AND next_attempt_at <= $1
                 ORDER BY next_attempt_at, seq LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             UPDATE webhook_deliveries AS d SET next_attempt_at = $1 + {CLAIM_S}
             FROM due WHERE d.seq = due.seq
             RETURNING {}",
            prefixed(DELIVERY_COLUMNS, "d.")
        );
        let mut claimed = select(
            &self.client().await?,
            &sql,
            &[&now, &i64::from(limit)],
            read_delivery,
        )
        .await?;
        claimed.sort_by_key(|d| (d.created_at_unix_s, d.event_id.clone()));
        Ok(claimed)
    }

    async fn record_attempt(&self, a: AttemptResult) -> Result<(), StoreError> {
        let delivered_at = match a.state {
            DeliveryState::Delivered => Some(to_i64(a.now_unix_s)?),
            _ => None,
        };
        exec(
            &self.client().await?,
            "UPDATE webhook_deliveries
             SET state = $1, attempts = $2, next_attempt_at = $3, last_status = $4,
                 last_error = $5, delivered_at = $6
             WHERE event_id = $7 AND state = 'pending'",
            &[
                &a.state.as_str(),
                &i64::from(a.attempts),
                &to_i64(a.next_attempt_at_unix_s)?,
                &a.last_status.map(i64::from),
                &a.last_error,
                &delivered_at,
                &a.event_id,
            ],
        )
        .await?;
        Ok(())
    }

    async fn list_deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, StoreError> {
        let sql =
            format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries ORDER BY seq DESC LIMIT $1");
        select(
            &self.client().await?,
            &sql,
            &[&i64::from(limit)],
            read_delivery,
        )
        .await
    }

    async fn terminal_transactions_of_payer(
        &self,
        terminal_id: &str,
        payer: &AccountId,
        limit: u32,
    ) -> Result<Vec<TransactionRecord>, StoreError> {
        query_txs(
            &self.client().await?,
            "WHERE terminal_id = $1 AND payer = $2 ORDER BY seq DESC LIMIT $3",
            &[&terminal_id, &payer.as_str(), &i64::from(limit)],
        )
        .await
    }

    async fn count_pending(&self) -> Result<u64, StoreError> {
        count(
            &self.client().await?,
            "SELECT count(*) FROM transactions WHERE status = 'pending'",
        )
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        query(&self.client().await?, "SELECT 1", &[])
            .await
            .map(drop)
    }
}

/// `a, b` with `prefix` before each column: `d.a, d.b`.
fn prefixed(columns: &str, prefix: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{prefix}{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}
