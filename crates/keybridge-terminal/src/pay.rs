//! `keybridge pay`: start a payment and wait for its outcome.

use std::time::Duration;

use keybridge_proto::api::{CreateTransaction, TransactionStatus, TransactionView};
use keybridge_proto::{AccountId, Money};

use crate::{Client, ClientError};

/// What the terminal asks for.
#[derive(Debug, Clone)]
pub struct PayRequest {
    pub payer: AccountId,
    pub payee: AccountId,
    pub amount: Money,
    pub order_id: String,
    pub description: String,
    /// Chosen and kept by the client: re-running with the same key returns the
    /// same transaction instead of paying again.
    pub idempotency_key: String,
    /// Give up waiting (the transaction stays as the server decides) after this.
    pub wait_max: Duration,
}

/// Where a payment ended, as seen by the terminal.
#[derive(Debug, Clone)]
pub struct PayOutcome {
    /// The first answer: the transaction as created (pending).
    pub created: TransactionView,
    /// The last answer: final unless `wait_max` ran out.
    pub last: TransactionView,
}

impl PayOutcome {
    pub fn settled(&self) -> bool {
        self.last.status == TransactionStatus::Settled
    }
}

/// A fresh random idempotency key, for callers that do not keep their own.
pub fn new_idempotency_key() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Creates the transaction, then long-polls until it is final or `wait_max`
/// passes. `on_created` runs once the server has accepted the transaction, so a
/// caller can tell the user to look at their phone.
pub async fn pay(
    client: &Client,
    request: &PayRequest,
    on_created: impl FnOnce(&TransactionView),
) -> Result<PayOutcome, ClientError> {
    let body = CreateTransaction {
        payer: request.payer.clone(),
        payee: request.payee.clone(),
        amount_minor: request.amount.minor_units,
        currency: request.amount.currency,
        order_id: request.order_id.clone(),
        description: request.description.clone(),
    };
    let created = client
        .create_transaction(&request.idempotency_key, &body)
        .await?;
    on_created(&created);
    let deadline = tokio::time::Instant::now() + request.wait_max;
    let mut last = created.clone();
    while !last.status.is_final() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let wait_s = u32::try_from(left.as_secs().clamp(1, 30)).unwrap_or(30);
        last = client.get_transaction(&created.id, wait_s).await?;
    }
    Ok(PayOutcome { created, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_fresh_and_printable() {
        let a = new_idempotency_key();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_idempotency_key());
    }
}
