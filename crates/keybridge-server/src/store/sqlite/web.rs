//! [`WebStore`] for SQLite.

use async_trait::async_trait;
use keybridge_proto::AccountId;
use rusqlite::{params, OptionalExtension};

use super::{backend, count, exec, one_row, query_txs, select, SqliteStore};
use crate::store::rows::{decode_delivery, to_i64, to_u64, DeliveryRow, DELIVERY_COLUMNS};
use crate::store::web::{AttemptResult, DeliveryRecord, DeliveryState, WebStore, WebhookRecord};
use crate::store::{StoreError, TransactionRecord};

/// Deliveries due (`?1` now, `?2` limit), longest overdue first; served by
/// the partial index `webhook_deliveries_pending` (the literal `'pending'`
/// lets SQLite use it, and ordering by the index's own order keeps it there).
pub(super) const DELIVERIES_DUE: &str =
    "WHERE state = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at, seq LIMIT ?2";

fn read_delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn query_deliveries(
    conn: &rusqlite::Connection,
    tail: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries {tail}");
    select(conn, &sql, params, read_delivery_row, decode_delivery)
}

fn get_webhook(
    conn: &rusqlite::Connection,
    terminal_id: &str,
) -> Result<Option<WebhookRecord>, StoreError> {
    let row: Option<(String, String, String, i64)> = one_row(
        conn,
        "SELECT terminal_id, url, secret, created_at FROM webhooks WHERE terminal_id = ?1",
        [terminal_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
    .map_err(backend)?;
    row.map(|(terminal_id, url, secret, created)| {
        Ok(WebhookRecord {
            terminal_id,
            url,
            secret,
            created_at_unix_s: to_u64(created)?,
        })
    })
    .transpose()
}

#[async_trait]
impl WebStore for SqliteStore {
    async fn put_webhook(&self, webhook: WebhookRecord) -> Result<WebhookRecord, StoreError> {
        self.write(move |tx| {
            exec(tx,
                "INSERT INTO webhooks (terminal_id, url, secret, created_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (terminal_id) DO UPDATE
                 SET url = excluded.url, secret = excluded.secret, created_at = excluded.created_at",
                params![
                    webhook.terminal_id,
                    webhook.url,
                    webhook.secret,
                    to_i64(webhook.created_at_unix_s)?
                ],
            )
            .map_err(backend)?;
            Ok(webhook)
        })
        .await
    }

    async fn get_webhook(&self, terminal_id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        let terminal_id = terminal_id.to_owned();
        self.run(move |conn| get_webhook(conn, &terminal_id)).await
    }

    async fn delete_webhook(&self, terminal_id: &str) -> Result<bool, StoreError> {
        let terminal_id = terminal_id.to_owned();
        self.write(move |tx| {
            let n = exec(
                tx,
                "DELETE FROM webhooks WHERE terminal_id = ?1",
                [terminal_id],
            )
            .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn due_deliveries(
        &self,
        now_unix_s: u64,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let now = to_i64(now_unix_s)?;
        self.run(move |conn| query_deliveries(conn, DELIVERIES_DUE, params![now, limit]))
            .await
    }

    async fn record_attempt(&self, a: AttemptResult) -> Result<(), StoreError> {
        self.write(move |tx| {
            let delivered_at = match a.state {
                DeliveryState::Delivered => Some(to_i64(a.now_unix_s)?),
                _ => None,
            };
            exec(
                tx,
                "UPDATE webhook_deliveries
                 SET state = ?1, attempts = ?2, next_attempt_at = ?3, last_status = ?4,
                     last_error = ?5, delivered_at = ?6
                 WHERE event_id = ?7 AND state = 'pending'",
                params![
                    a.state.as_str(),
                    a.attempts,
                    to_i64(a.next_attempt_at_unix_s)?,
                    a.last_status,
                    a.last_error,
                    delivered_at,
                    a.event_id
                ],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.run(move |conn| query_deliveries(conn, "ORDER BY seq DESC LIMIT ?1", [limit]))
            .await
    }

    async fn terminal_transactions_of_payer(
        &self,
        terminal_id: &str,
        payer: &AccountId,
        limit: u32,
    ) -> Result<Vec<TransactionRecord>, StoreError> {
        let terminal_id = terminal_id.to_owned();
        let payer = payer.to_string();
        self.run(move |conn| {
            query_txs(
                conn,
                "WHERE terminal_id = ?1 AND payer = ?2 ORDER BY seq DESC LIMIT ?3",
                params![terminal_id, payer, limit],
            )
        })
        .await
    }

    async fn count_pending(&self) -> Result<u64, StoreError> {
        self.run(|conn| {
            count(
                conn,
                "SELECT count(*) FROM transactions WHERE status = 'pending'",
                [],
            )
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            one_row(conn, "SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(backend)
                .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_states_round_trip() {
        for s in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ] {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::parse("lost"), None);
    }
}
