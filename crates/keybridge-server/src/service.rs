//! The processing unit: what happens when a terminal asks for a payment, a
//! relay answers, or time runs out. HTTP-free (handlers translate), SQL-free
//! (the store persists), clock-injected.

use std::sync::Arc;

use keybridge_proto::api::{Confirmation, CreateTransaction, TransactionStatus, TransactionView};
use keybridge_proto::{Challenge, ConfirmationPayload, Money, TransactionId};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::hub::{HubEvent, Subscription, Topic};
use crate::random;
use crate::state::AppState;
use crate::store::{
    AccountRecord, BuildTransaction, CreateOutcome, CreationFacts, CreationKeys, DeviceRecord,
    Finalized, SignedConfirmation, StoreError, TerminalRecord, TransactionRecord,
};
use crate::verify::{self, Submission, Verdict};

/// How `POST /v1/transactions` was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new transaction (202).
    New(TransactionView),
    /// The same terminal, key and body as before: the original (200).
    Replayed(TransactionView),
}

/// SHA-256 of the request's canonical JSON (fields in declaration order).
fn request_hash(body: &CreateTransaction) -> Result<[u8; 32], ApiError> {
    let canonical = serde_json::to_vec(body).map_err(|e| {
        tracing::error!(error = %e, "serialising a parsed request failed");
        ApiError::Internal
    })?;
    Ok(Sha256::digest(&canonical).into())
}

fn replay(existing: TransactionRecord, request_hash: [u8; 32]) -> Result<Created, ApiError> {
    if existing.request_hash == request_hash {
        Ok(Created::Replayed(existing.view()))
    } else {
        Err(ApiError::IdempotencyConflict)
    }
}

fn check_text(name: &str, value: &str, min: usize, max: usize) -> Result<(), ApiError> {
    if value.len() < min || value.len() > max || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{name} must be {min} to {max} bytes without control characters"
        )));
    }
    Ok(())
}

/// What [`create_transaction`] did, and a subscription to the new
/// transaction's end if one was asked for.
#[derive(Debug)]
pub struct Creation {
    pub created: Created,
    /// `Some` for a new transaction when `follow` was asked: subscribed before
    /// the transaction existed, so its end cannot be missed.
    pub ends: Option<Subscription>,
}

/// A transaction about to be created: the request and everything chosen for
/// it before the store is asked (id, challenge, times).
struct Draft {
    terminal_id: String,
    idempotency_key: String,
    request_hash: [u8; 32],
    body: CreateTransaction,
    origin: String,
    id: TransactionId,
    challenge: Challenge,
    now: u64,
    expires: u64,
    /// `ServerConfig::pending_per_payer_max`.
    pending_max: u64,
}

/// An account a payment may name: one that exists and is not a system account.
fn customer<'a>(
    account: Option<&'a AccountRecord>,
    id: &keybridge_proto::AccountId,
) -> Result<&'a AccountRecord, ApiError> {
    match account {
        Some(a) if !a.system => Ok(a),
        _ => Err(ApiError::UnknownAccount(id.to_string())),
    }
}

impl Draft {
    /// The rules for a new transaction, on the facts the store read. Pure, so
    /// the store can run it inside its write and the refusal's error can be
    /// found again outside from the same facts.
    fn build(&self, facts: &CreationFacts) -> Result<TransactionRecord, ApiError> {
        let body = &self.body;
        if body.amount_minor == 0 || i64::try_from(body.amount_minor).is_err() {
            return Err(ApiError::invalid(
                "amount_minor must be 1 to 9223372036854775807",
            ));
        }
        if body.payer == body.payee {
            return Err(ApiError::invalid("payer and payee must differ"));
        }
        check_text(
            "order_id",
            &body.order_id,
            1,
            ConfirmationPayload::ORDER_ID_LEN_MAX,
        )?;
        check_text(
            "description",
            &body.description,
            0,
            ConfirmationPayload::DESCRIPTION_LEN_MAX,
        )?;
        let payer = customer(facts.payer.as_ref(), &body.payer)?;
        let payee = customer(facts.payee.as_ref(), &body.payee)?;
        if payer.currency != body.currency || payee.currency != body.currency {
            return Err(ApiError::CurrencyMismatch);
        }
        if facts.payer_active_devices == 0 {
            return Err(ApiError::NoDevice);
        }
        // Each pending transaction is a prompt on the payer's phone. A payer
        // flooded with prompts (a stolen terminal key, a till in a retry
        // loop) may approve one just to make them stop: the "MFA fatigue"
        // attack on push confirmation. So a payer has few at a time.
        if facts.payer_pending >= self.pending_max {
            return Err(ApiError::TooManyPending(self.pending_max));
        }
        let payload = ConfirmationPayload {
            origin: self.origin.clone(),
            transaction_id: self.id,
            challenge: self.challenge,
            payer: payer.id.clone(),
            payee: payee.id.clone(),
            payee_name: payee.display_name.clone(),
            amount: Money::new(body.amount_minor, body.currency),
            order_id: body.order_id.clone(),
            description: body.description.clone(),
            created_at_unix_s: self.now,
            expires_at_unix_s: self.expires,
        };
        let encoded = payload.encode().map_err(|e| {
            ApiError::invalid(format!("cannot build the confirmation payload: {e}"))
        })?;
        // The record carries what the payload says, moved, not copied again.
        let ConfirmationPayload {
            payer,
            payee,
            payee_name,
            order_id,
            description,
            ..
        } = payload;
        Ok(TransactionRecord {
            id: self.id,
            terminal_id: self.terminal_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            request_hash: self.request_hash,
            payer,
            payee,
            payee_name,
            amount_minor: body.amount_minor,
            currency: body.currency,
            order_id,
            description,
            payload: encoded,
            status: TransactionStatus::Pending,
            reason: None,
            created_at_unix_s: self.now,
            expires_at_unix_s: self.expires,
            updated_at_unix_s: self.now,
        })
    }
}

/// Validates, builds the confirmation payload, stores the transaction
/// `pending` and tells the payer's relays. With `follow`, also subscribes to
/// the new transaction's end (for a terminal that waits in the same request).
///
/// One trip to the store: the replay lookup, the facts the rules need and the
/// insert are one write ([`crate::store::Store::create_transaction`]). A
/// replay is answered before any rule is applied, so a retry after the
/// payer's device was disabled still finds its transaction.
pub async fn create_transaction(
    state: &AppState,
    terminal: &TerminalRecord,
    idempotency_key: &str,
    body: CreateTransaction,
    follow: bool,
) -> Result<Creation, ApiError> {
    let replayed = |created| Creation {
        created,
        ends: None,
    };
    let hash = request_hash(&body)?;
    let now = state.now_unix_s();
    let rng = |e: random::RandomError| {
        tracing::error!(error = %e, "CSPRNG failed");
        ApiError::Internal
    };
    let draft = Arc::new(Draft {
        terminal_id: terminal.id.clone(),
        idempotency_key: idempotency_key.to_owned(),
        request_hash: hash,
        origin: state.origin.clone(),
        id: TransactionId(random::transaction_id(state.clock.now_unix_ms()).map_err(rng)?),
        challenge: Challenge(random::bytes::<32>().map_err(rng)?),
        now,
        expires: now
            .checked_add(state.confirmation_ttl_s)
            .ok_or(ApiError::Internal)?,
        pending_max: u64::from(state.pending_per_payer_max),
        body,
    });
    // Subscribed before the transaction exists, so its end cannot be missed.
    let ends = follow.then(|| state.hub.subscribe(Topic::Transaction(draft.id)));
    let keys = CreationKeys {
        terminal_id: terminal.id.clone(),
        idempotency_key: idempotency_key.to_owned(),
        payer: draft.body.payer.clone(),
        payee: draft.body.payee.clone(),
        now_unix_s: now,
        pending_count_max: draft.pending_max,
    };
    let inside = Arc::clone(&draft);
    let build: BuildTransaction = Box::new(move |facts| inside.build(facts).ok());
    match state.store.create_transaction(keys, build).await? {
        CreateOutcome::Created(stored) => {
            tracing::info!(transaction = %stored.id, status = "pending", terminal = %terminal.id, "transaction created");
            let view = stored.view();
            let payload = Arc::from(stored.payload.as_slice());
            state.pending.created(Arc::new(stored));
            state.hub.publish(HubEvent::Created {
                view: view.clone(),
                payload,
            });
            Ok(Creation {
                created: Created::New(view),
                ends,
            })
        }
        CreateOutcome::Existing(existing) => replay(existing, hash).map(replayed),
        // The same rules on the same facts give the same refusal, now with
        // its reason.
        CreateOutcome::Refused(facts) => match draft.build(&facts) {
            Err(refused) => {
                crate::metrics::Metrics::creation_refused(refused.code());
                if let ApiError::TooManyPending(limit) = refused {
                    // Who floods whom: the operator's lead on a leaked key.
                    tracing::warn!(terminal = %terminal.id, payer = %draft.body.payer, limit, "refused: the payer has the most payments waiting");
                }
                Err(refused)
            }
            Ok(_) => {
                tracing::error!("the store refused a transaction its rules accept");
                Err(ApiError::Internal)
            }
        },
    }
}

/// Judges a relay's confirmation and, if valid, has the payment unit settle.
/// `device` is the authenticated device, read from the store for this request.
pub async fn confirm(
    state: &AppState,
    device: &DeviceRecord,
    id: &TransactionId,
    confirmation: &Confirmation,
) -> Result<TransactionView, ApiError> {
    // Remembered from its creation (see `pending_cache` for why that is safe),
    // else read.
    let transaction = match state.pending.get(id) {
        Some(remembered) => remembered,
        None => Arc::new(
            state
                .store
                .get_transaction(id)
                .await?
                .ok_or(ApiError::NotFound)?,
        ),
    };
    // Another account's device learns nothing and changes nothing.
    if transaction.payer != device.account {
        return Err(ApiError::NotFound);
    }
    if transaction.status.is_final() {
        return answer_again(state, device, &transaction, confirmation).await;
    }
    let answer = verify::answer_digest(&device.id, confirmation);
    let now = state.now_unix_s();
    let verdict = verify::verify(
        &state.verifier,
        Submission {
            device,
            transaction: &transaction,
            confirmation,
            now_unix_s: now,
        },
    );
    let finalized = match verdict {
        Verdict::End { status, reason } => {
            if !is_holder_answer(confirmation) {
                crate::metrics::Metrics::verification_failed(reason);
            }
            state
                .store
                .finalize(id, status, reason, answer, now)
                .await?
        }
        Verdict::Accept {
            counter,
            replay_reason,
        } => {
            // `counter` is `None` for methods without one (PIV).
            state
                .store
                .apply_signed_confirmation(SignedConfirmation {
                    transaction_id: *id,
                    device_id: device.id.clone(),
                    answer,
                    counter,
                    now_unix_s: now,
                    replay_reason,
                })
                .await?
        }
    };
    match finalized {
        Finalized::Applied(record) => {
            announce_end(state, &record);
            Ok(record.view())
        }
        Finalized::NotPending(record) => {
            // Ended elsewhere (another instance, or this same answer on the
            // other path: the relay's socket and its HTTP fallback): nothing
            // to remember.
            state.pending.ended(&record.id);
            answer_again(state, device, &record, confirmation).await
        }
        Finalized::NotFound => Err(ApiError::NotFound),
    }
}

/// A confirmation of a transaction that has ended: the stored outcome if this
/// is the very answer that ended it (see [`verify::answer_digest`]), else
/// `not_pending` (`expired_token` once its window passed). Nothing is written.
async fn answer_again(
    state: &AppState,
    device: &DeviceRecord,
    transaction: &TransactionRecord,
    confirmation: &Confirmation,
) -> Result<TransactionView, ApiError> {
    let ended_by = state.store.ending_answer(&transaction.id).await?;
    match ended_by {
        Some(stored) if Some(stored) == verify::answer_digest(&device.id, confirmation) => {
            Ok(transaction.view())
        }
        _ => Err(ended(transaction.status)),
    }
}

/// The error for a confirmation of an ended transaction: CIBA's
/// `expired_token` when its window passed, `not_pending` otherwise.
fn ended(status: TransactionStatus) -> ApiError {
    if status == TransactionStatus::Expired {
        ApiError::Expired
    } else {
        ApiError::NotPending
    }
}

/// A decline or PIN failure is the holder's or the device's answer, not a
/// confirmation the verification unit refused.
fn is_holder_answer(confirmation: &Confirmation) -> bool {
    matches!(confirmation, Confirmation::Declined { .. })
}

/// Expires every overdue pending transaction; returns how many.
pub async fn sweep(state: &AppState) -> Result<usize, StoreError> {
    let expired = state.store.expire_due(state.now_unix_s()).await?;
    for record in &expired {
        announce_end(state, record);
    }
    Ok(expired.len())
}

/// Logs a final status, forgets the pending record, and tells relays and
/// waiting terminals.
fn announce_end(state: &AppState, record: &TransactionRecord) {
    let submitted = state.pending.ended(&record.id);
    tracing::info!(
        transaction = %record.id,
        status = record.status.as_str(),
        reason = record.reason.map(|r| r.as_str()).unwrap_or("-"),
        "transaction ended"
    );
    state.metrics.ended(
        record.status,
        record.reason,
        submitted,
        record
            .updated_at_unix_s
            .saturating_sub(record.created_at_unix_s),
    );
    state.hub.publish(HubEvent::Ended {
        view: record.view(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_proto::{AccountId, Currency};

    fn body(amount_minor: u64) -> CreateTransaction {
        CreateTransaction {
            payer: AccountId::new("alice").unwrap(),
            payee: AccountId::new("shop").unwrap(),
            amount_minor,
            currency: Currency::from_code("CNY").unwrap(),
            order_id: "o-1".into(),
            description: String::new(),
        }
    }

    fn stored(hash: [u8; 32]) -> TransactionRecord {
        TransactionRecord {
            id: TransactionId([1; 16]),
            terminal_id: "t".into(),
            idempotency_key: "k".into(),
            request_hash: hash,
            payer: AccountId::new("alice").unwrap(),
            payee: AccountId::new("shop").unwrap(),
            payee_name: "Shop".into(),
            amount_minor: 100,
            currency: Currency::from_code("CNY").unwrap(),
            order_id: "o-1".into(),
            description: String::new(),
            payload: vec![],
            status: TransactionStatus::Settled,
            reason: None,
            created_at_unix_s: 1,
            expires_at_unix_s: 2,
            updated_at_unix_s: 2,
        }
    }

    #[test]
    fn a_replay_with_the_same_body_returns_the_original_even_if_it_ended() {
        let hash = request_hash(&body(100)).unwrap();
        assert_eq!(hash, request_hash(&body(100)).unwrap());
        match replay(stored(hash), hash).unwrap() {
            Created::Replayed(view) => assert_eq!(view.status, TransactionStatus::Settled),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_same_key_with_another_body_is_a_conflict() {
        let hash = request_hash(&body(100)).unwrap();
        let other = request_hash(&body(101)).unwrap();
        assert_ne!(hash, other);
        assert_eq!(
            replay(stored(hash), other),
            Err(ApiError::IdempotencyConflict)
        );
    }
}
