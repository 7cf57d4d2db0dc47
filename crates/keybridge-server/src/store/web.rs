//! What the terminal/operator surface persists: webhook registrations, the
//! webhook outbox (filled by a trigger when a transaction ends, see migration
//! `0005_webhooks.sql`), and the reads behind the account page and `/metrics`.
//! A supertrait of [`super::Store`], kept apart so each backend implements it
//! in its own file.

use async_trait::async_trait;
use keybridge_proto::{AccountId, TransactionId};

use super::{StoreError, TransactionRecord};

/// A terminal's callback registration. `secret` is the HMAC key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub terminal_id: String,
    pub url: String,
    pub secret: String,
    pub created_at_unix_s: u64,
}

// Hand-written so the HMAC key never reaches a log line.
impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("terminal_id", &self.terminal_id)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("created_at_unix_s", &self.created_at_unix_s)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Gave up after the last attempt.
    Failed,
}

impl DeliveryState {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        Some(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            _ => return None,
        })
    }
}

/// One outcome event and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub event_id: String,
    pub terminal_id: String,
    pub transaction_id: TransactionId,
    pub url: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at_unix_s: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at_unix_s: u64,
    pub delivered_at_unix_s: Option<u64>,
}

/// The result of one delivery attempt, as the worker records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub event_id: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at_unix_s: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub now_unix_s: u64,
}

#[async_trait]
pub trait WebStore: Send + Sync {
    /// Creates or replaces the terminal's registration (a new secret each time).
    async fn put_webhook(&self, webhook: WebhookRecord) -> Result<WebhookRecord, StoreError>;
    async fn get_webhook(&self, terminal_id: &str) -> Result<Option<WebhookRecord>, StoreError>;
    /// Whether there was one. Events already queued keep their URL.
    async fn delete_webhook(&self, terminal_id: &str) -> Result<bool, StoreError>;
    /// Pending deliveries due at `now`, oldest first, at most `limit`. A
    /// backend that several instances share claims them for a while, so that
    /// no other instance takes the same event meanwhile (PostgreSQL: 60 s).
    async fn due_deliveries(
        &self,
        now_unix_s: u64,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// Records an attempt; only a `pending` delivery changes.
    async fn record_attempt(&self, attempt: AttemptResult) -> Result<(), StoreError>;
    /// Newest first.
    async fn list_deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// The transactions `terminal_id` created with `payer`, newest first.
    async fn terminal_transactions_of_payer(
        &self,
        terminal_id: &str,
        payer: &AccountId,
        limit: u32,
    ) -> Result<Vec<TransactionRecord>, StoreError>;
    async fn count_pending(&self) -> Result<u64, StoreError>;
    /// A trivial round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}
