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
/// caller can tell the user to look at their phone. A request the server
/// did not get or failed ([`ClientError::is_transient`]: a restart, a
/// network blip) is sent again, with the same idempotency key, until
/// `wait_max`: a till that gave up there would leave a payment it cannot
/// see, and one that tried again with a new key could pay twice.
pub async fn pay(
    client: &Client,
    request: &PayRequest,
    on_created: impl FnOnce(&TransactionView),
) -> Result<PayOutcome, ClientError> {
    let deadline = tokio::time::Instant::now() + request.wait_max;
    let body = body(request);
    // Each attempt within what is left of the wait (at least a second): a
    // server that accepts and never answers must not hold the till past it.
    let created = again_until(deadline, || {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let limit = left.clamp(Duration::from_secs(1), crate::client::REQUEST_TIMEOUT);
        client.create_transaction_within(&request.idempotency_key, &body, limit)
    })
    .await?;
    on_created(&created);
    follow(client, request, created).await
}

/// First pause before a request is sent again; it doubles up to
/// [`AGAIN_PAUSE_MAX`].
const AGAIN_PAUSE_FIRST: Duration = Duration::from_millis(100);
const AGAIN_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Runs `call` until it succeeds, fails for good, or a pause (the backoff,
/// or the server's `Retry-After` when longer) would reach past `deadline`
/// (then its last error).
async fn again_until<T, F, Fut>(
    deadline: tokio::time::Instant,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut pause = AGAIN_PAUSE_FIRST;
    loop {
        match call().await {
            Err(e) if e.is_transient() => {
                // A server that says how long to wait (429 `rate_limited`)
                // is obeyed: sooner would only be refused again.
                let wait = pause.max(e.retry_after().unwrap_or_default());
                if tokio::time::Instant::now() + wait >= deadline {
                    return Err(e);
                }
                tracing::warn!(error = %e, "sending the request again in {} ms", wait.as_millis());
                tokio::time::sleep(wait).await;
                pause = (pause * 2).min(AGAIN_PAUSE_MAX);
            }
            done => return done,
        }
    }
}

/// [`pay`] in one request when the payment ends within the server's longest
/// wait: the create itself waits for the outcome (`Prefer: wait`), saving
/// the long-poll's request. There is no "created" moment to report: the
/// first answer is usually already the outcome.
pub async fn pay_waiting(client: &Client, request: &PayRequest) -> Result<PayOutcome, ClientError> {
    let created = client
        .create_transaction_waiting(
            &request.idempotency_key,
            &body(request),
            wait_s(request.wait_max),
        )
        .await?;
    follow(client, request, created).await
}

fn body(request: &PayRequest) -> CreateTransaction {
    CreateTransaction {
        payer: request.payer.clone(),
        payee: request.payee.clone(),
        amount_minor: request.amount.minor_units,
        currency: request.amount.currency,
        order_id: request.order_id.clone(),
        description: request.description.clone(),
    }
}

/// One long-poll's wait: what is left, within what the server allows.
fn wait_s(left: Duration) -> u32 {
    u32::try_from(left.as_secs().clamp(1, 30)).unwrap_or(30)
}

/// Long-polls until the transaction is final or `wait_max` has passed.
async fn follow(
    client: &Client,
    request: &PayRequest,
    created: TransactionView,
) -> Result<PayOutcome, ClientError> {
    let deadline = tokio::time::Instant::now() + request.wait_max;
    let mut last = created.clone();
    while !last.status.is_final() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        last = again_until(deadline, || {
            client.get_transaction(&created.id, wait_s(left))
        })
        .await?;
    }
    Ok(PayOutcome { created, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(retry_after: Option<Duration>) -> ClientError {
        ClientError::Api {
            status: 429,
            code: "rate_limited".into(),
            message: "slow down".into(),
            retry_after,
        }
    }

    /// Sends until the second call, answered `first` before it; how long that took.
    async fn second_call_after(
        first: ClientError,
        wait_max: Duration,
    ) -> (Result<u8, ClientError>, Duration) {
        let started = tokio::time::Instant::now();
        let mut first = Some(first);
        let result = again_until(started + wait_max, || {
            let answer = first.take().map_or(Ok(7), Err);
            async move { answer }
        })
        .await;
        (result, started.elapsed())
    }

    #[tokio::test]
    async fn a_retry_after_longer_than_the_backoff_is_waited_for() {
        let (result, took) = second_call_after(
            refused(Some(Duration::from_millis(600))),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(result.unwrap(), 7);
        // The backoff alone would have sent again after 100 ms.
        assert!(took >= Duration::from_millis(600), "{took:?}");
    }

    #[tokio::test]
    async fn without_retry_after_the_backoff_applies() {
        let (result, took) = second_call_after(refused(None), Duration::from_secs(5)).await;
        assert_eq!(result.unwrap(), 7);
        assert!(took >= AGAIN_PAUSE_FIRST, "{took:?}");
    }

    #[tokio::test]
    async fn a_retry_after_past_the_deadline_gives_up_at_once() {
        let (result, took) = second_call_after(
            refused(Some(Duration::from_secs(60))),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            result.unwrap_err().retry_after(),
            Some(Duration::from_secs(60))
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn idempotency_keys_are_fresh_and_printable() {
        let a = new_idempotency_key();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_idempotency_key());
    }
}
