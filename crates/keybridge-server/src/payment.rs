//! The payment unit's rules, as a pure function. A store backend reads the
//! rows inside its database transaction, asks [`decide`], and applies the
//! answer before committing; so the rules are written (and tested) once.

use keybridge_proto::api::{Reason, TransactionStatus};

use crate::store::{
    AccountRecord, DeviceRecord, DeviceStatus, SignedConfirmation, StoreError, TransactionRecord,
};

/// The facts the payment unit needs, read inside the database transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentFacts {
    pub status: TransactionStatus,
    /// The device is active and belongs to the payer.
    pub device_usable: bool,
    /// The device's certificate (or OCRA secret) was revoked since it was verified.
    pub device_revoked: bool,
    /// What a counter that did not increase is called (signature or OCRA).
    pub replay_reason: Reason,
    pub device_last_counter: u32,
    /// The submitted counter; `None` for signature methods without one (PIV).
    pub counter: Option<u32>,
    pub payer_balance_minor: i64,
    /// System (issuance) accounts may run negative; customer accounts may not.
    pub payer_is_system: bool,
    pub amount_minor: u64,
}

impl PaymentFacts {
    /// The facts in the rows a backend read: the transaction, the answering
    /// device (`None` if there is no such device) and the payer.
    pub fn of(
        transaction: &TransactionRecord,
        device: Option<&DeviceRecord>,
        payer: &AccountRecord,
        confirmation: &SignedConfirmation,
    ) -> PaymentFacts {
        let (device_usable, device_revoked, device_last_counter) = match device {
            Some(d) => (
                d.status == DeviceStatus::Active && d.account == transaction.payer,
                d.is_revoked(),
                d.last_counter,
            ),
            None => (false, false, 0),
        };
        PaymentFacts {
            status: transaction.status,
            device_usable,
            device_revoked,
            replay_reason: confirmation.replay_reason,
            device_last_counter,
            counter: confirmation.counter,
            payer_balance_minor: payer.balance_minor,
            payer_is_system: payer.system,
            amount_minor: transaction.amount_minor,
        }
    }
}

/// What the audit row of an answered transaction says.
pub fn answered_detail(c: &SignedConfirmation, reason: Option<Reason>) -> serde_json::Value {
    serde_json::json!({
        "device": c.device_id,
        "counter": c.counter,
        "reason": reason.map(|r| r.as_str()),
    })
}

/// The paired assertion after a settlement's write: exactly the amount left
/// the payer (`before` its balance), and a customer account is not negative.
/// A backend that sees this fail rolls the whole write back.
pub fn check_settled(
    before: i64,
    after: &AccountRecord,
    amount_minor: u64,
) -> Result<(), StoreError> {
    let amount = i64::try_from(amount_minor)
        .map_err(|_| StoreError::Corrupt("amount out of range".into()))?;
    if after.balance_minor != before - amount || (!after.system && after.balance_minor < 0) {
        return Err(StoreError::Corrupt("payer balance after settlement".into()));
    }
    Ok(())
}

/// What the backend must write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentDecision {
    /// Another confirmation or the sweeper ended it first: write nothing.
    NotPending,
    /// End the transaction `rejected` with this reason; the counter is not consumed.
    Reject(Reason),
    /// End it `failed/insufficient_funds`; the counter is consumed (the card used it).
    InsufficientFunds,
    /// Consume the counter, write one transfer, move both balances, `settled`.
    Settle,
}

impl PaymentDecision {
    /// The final status and reason this decision writes, if any.
    pub fn outcome(&self) -> Option<(TransactionStatus, Option<Reason>)> {
        match self {
            PaymentDecision::NotPending => None,
            PaymentDecision::Reject(r) => Some((TransactionStatus::Rejected, Some(*r))),
            PaymentDecision::InsufficientFunds => {
                Some((TransactionStatus::Failed, Some(Reason::InsufficientFunds)))
            }
            PaymentDecision::Settle => Some((TransactionStatus::Settled, None)),
        }
    }

    pub fn consumes_counter(&self) -> bool {
        matches!(
            self,
            PaymentDecision::InsufficientFunds | PaymentDecision::Settle
        )
    }
}

/// The rules, in order. The counter and device are checked again here (the
/// verification unit saw a snapshot) because only inside the database
/// transaction is the check atomic with consuming the counter.
pub fn decide(f: PaymentFacts) -> PaymentDecision {
    if f.status != TransactionStatus::Pending {
        return PaymentDecision::NotPending;
    }
    if !f.device_usable {
        return PaymentDecision::Reject(Reason::UnknownDevice);
    }
    if f.device_revoked {
        return PaymentDecision::Reject(Reason::CertificateRevoked);
    }
    if f.counter.is_some_and(|c| c <= f.device_last_counter) {
        return PaymentDecision::Reject(f.replay_reason);
    }
    let covered = match i64::try_from(f.amount_minor) {
        Ok(amount) => f.payer_is_system || f.payer_balance_minor >= amount,
        Err(_) => false,
    };
    if !covered {
        return PaymentDecision::InsufficientFunds;
    }
    PaymentDecision::Settle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> PaymentFacts {
        PaymentFacts {
            status: TransactionStatus::Pending,
            device_usable: true,
            device_revoked: false,
            replay_reason: Reason::CounterReplay,
            device_last_counter: 4,
            counter: Some(5),
            payer_balance_minor: 1000,
            payer_is_system: false,
            amount_minor: 1000,
        }
    }

    #[test]
    fn settles_when_everything_holds_even_to_a_zero_balance() {
        assert_eq!(decide(facts()), PaymentDecision::Settle);
        assert!(PaymentDecision::Settle.consumes_counter());
    }

    #[test]
    fn rules_apply_in_order() {
        // Not pending beats everything: a second confirmation writes nothing.
        let f = PaymentFacts {
            status: TransactionStatus::Settled,
            device_usable: false,
            counter: Some(0),
            ..facts()
        };
        assert_eq!(decide(f), PaymentDecision::NotPending);
        // A disabled device beats a replayed counter.
        let f = PaymentFacts {
            device_usable: false,
            counter: Some(1),
            ..facts()
        };
        assert_eq!(decide(f), PaymentDecision::Reject(Reason::UnknownDevice));
        // A replayed counter beats insufficient funds and is not consumed.
        let f = PaymentFacts {
            counter: Some(4),
            payer_balance_minor: 0,
            ..facts()
        };
        assert_eq!(decide(f), PaymentDecision::Reject(Reason::CounterReplay));
        assert!(!decide(f).consumes_counter());
        // OCRA names the same rule its own way.
        let ocra = PaymentFacts {
            replay_reason: Reason::ResponseReused,
            ..f
        };
        assert_eq!(
            decide(ocra),
            PaymentDecision::Reject(Reason::ResponseReused)
        );
        // A revocation between verification and payment still stops it.
        let f = PaymentFacts {
            device_revoked: true,
            ..facts()
        };
        assert_eq!(
            decide(f),
            PaymentDecision::Reject(Reason::CertificateRevoked)
        );
        // No counter (PIV): nothing to replay, the other rules still hold.
        let f = PaymentFacts {
            counter: None,
            device_last_counter: 0,
            ..facts()
        };
        assert_eq!(decide(f), PaymentDecision::Settle);
        let f = PaymentFacts {
            counter: None,
            payer_balance_minor: 1,
            ..facts()
        };
        assert_eq!(decide(f), PaymentDecision::InsufficientFunds);
        let f = PaymentFacts {
            payer_balance_minor: 999,
            ..facts()
        };
        assert_eq!(decide(f), PaymentDecision::InsufficientFunds);
        assert!(PaymentDecision::InsufficientFunds.consumes_counter());
    }

    #[test]
    fn amounts_beyond_i64_never_settle() {
        let f = PaymentFacts {
            amount_minor: u64::MAX,
            payer_balance_minor: i64::MAX,
            ..facts()
        };
        assert_eq!(decide(f), PaymentDecision::InsufficientFunds);
    }
}
