//! Pending transactions as created, remembered until they end, so that
//! judging a confirmation does not pay a store read for the record the server
//! wrote a moment ago.
//!
//! Safe because the fields a judgement reads (payer, payload, amount, expiry)
//! never change after creation, and status is only read to refuse early: the
//! payment unit re-reads the row and compares-and-sets `pending` inside its
//! database transaction, so an entry that outlived its transaction (ended by
//! another server instance, say) can only lead to `not_pending` from the
//! store, never to a second payment. A miss (not created here, or the cache
//! was full) reads the store as before.
//!
//! It also remembers when each was submitted, for the settle-latency
//! histogram ([`crate::metrics::Metrics::ended`]).
//!
//! Memory: at most [`ENTRIES_MAX`] records; the payload is shared with the
//! record, not copied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use keybridge_proto::TransactionId;

use crate::store::TransactionRecord;

/// Pending transactions remembered at most; beyond, new ones are not cached
/// (they are read from the store when answered).
pub const ENTRIES_MAX: usize = 100_000;

#[derive(Debug, Default)]
pub struct PendingCache {
    by_id: Mutex<HashMap<TransactionId, Pending>>,
}

#[derive(Debug)]
struct Pending {
    record: Arc<TransactionRecord>,
    submitted: Instant,
}

impl PendingCache {
    /// Remembers a transaction just stored `pending`, submitted now.
    pub fn created(&self, record: Arc<TransactionRecord>) {
        debug_assert!(!record.status.is_final());
        let submitted = Instant::now();
        // Plain values only: a panic elsewhere cannot leave the map torn.
        let mut map = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() < ENTRIES_MAX {
            map.insert(record.id, Pending { record, submitted });
        }
    }

    pub fn get(&self, id: &TransactionId) -> Option<Arc<TransactionRecord>> {
        self.by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .map(|p| Arc::clone(&p.record))
    }

    /// Forgets a transaction that ended (settled, rejected, expired, failed);
    /// says when it was submitted, if it was remembered.
    pub fn ended(&self, id: &TransactionId) -> Option<Instant> {
        self.by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .map(|p| p.submitted)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_proto::api::TransactionStatus;
    use keybridge_proto::{AccountId, Currency};

    fn record(n: u32) -> Arc<TransactionRecord> {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        Arc::new(TransactionRecord {
            id: TransactionId(id),
            terminal_id: "t".into(),
            idempotency_key: format!("k{n}"),
            request_hash: [0; 32],
            payer: AccountId::new("alice").unwrap(),
            payee: AccountId::new("shop").unwrap(),
            payee_name: "Shop".into(),
            amount_minor: 100,
            currency: Currency::from_code("CNY").unwrap(),
            order_id: "o".into(),
            description: String::new(),
            payload: vec![1, 2, 3],
            status: TransactionStatus::Pending,
            reason: None,
            created_at_unix_s: 1,
            expires_at_unix_s: 2,
            updated_at_unix_s: 1,
        })
    }

    #[test]
    fn remembers_until_ended() {
        let cache = PendingCache::default();
        let r = record(1);
        assert!(cache.get(&r.id).is_none());
        cache.created(Arc::clone(&r));
        assert_eq!(cache.get(&r.id).as_deref(), Some(&*r));
        assert!(cache.ended(&r.id).is_some());
        assert!(cache.get(&r.id).is_none());
        assert!(cache.ended(&r.id).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn stays_bounded_and_keeps_what_it_has_when_full() {
        let cache = PendingCache::default();
        for n in 0..u32::try_from(ENTRIES_MAX).unwrap() + 5 {
            cache.created(record(n));
        }
        assert_eq!(cache.len(), ENTRIES_MAX);
        // The first ones are still there; the overflow was not cached.
        assert!(cache.get(&record(0).id).is_some());
        assert!(cache
            .get(&record(u32::try_from(ENTRIES_MAX).unwrap() + 1).id)
            .is_none());
    }
}
