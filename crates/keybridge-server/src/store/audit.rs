//! The audit log's hash chain, shared by every backend.
//!
//! `hash = SHA-256(prev_hash ‖ seq ‖ at ‖ len‖transaction_id ‖ len‖event ‖ len‖detail)`
//! with integers as big-endian u64 and each text prefixed by its length, so no
//! two different rows can hash the same bytes. The first row's `prev_hash` is 32 zero bytes.

use sha2::{Digest, Sha256};

use super::{AuditRecord, StoreError};

pub const GENESIS_HASH: [u8; 32] = [0; 32];

pub fn row_hash(
    prev_hash: &[u8; 32],
    seq: u64,
    at_unix_s: u64,
    transaction_id: Option<&str>,
    event: &str,
    detail: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(seq.to_be_bytes());
    h.update(at_unix_s.to_be_bytes());
    for text in [transaction_id.unwrap_or(""), event, detail] {
        h.update(u64::try_from(text.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(text.as_bytes());
    }
    h.finalize().into()
}

/// Checks `rows` (in `seq` order, from the first) link up; returns how many.
pub fn verify_chain(rows: &[AuditRecord]) -> Result<u64, StoreError> {
    let mut prev = GENESIS_HASH;
    let mut expected_seq: Option<u64> = None;
    for row in rows {
        if let Some(e) = expected_seq {
            if row.seq != e {
                return Err(StoreError::AuditChainBroken { seq: row.seq });
            }
        }
        let tx = row.transaction_id.map(|t| t.to_hex());
        let hash = row_hash(
            &prev,
            row.seq,
            row.at_unix_s,
            tx.as_deref(),
            &row.event,
            &row.detail,
        );
        if row.prev_hash != prev || row.hash != hash {
            return Err(StoreError::AuditChainBroken { seq: row.seq });
        }
        prev = hash;
        expected_seq = Some(row.seq + 1);
    }
    u64::try_from(rows.len()).map_err(|_| StoreError::Corrupt("audit length".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let hash = row_hash(&prev, seq, 1000 + seq, None, "e", &format!("d{seq}"));
                let r = AuditRecord {
                    seq,
                    at_unix_s: 1000 + seq,
                    transaction_id: None,
                    event: "e".into(),
                    detail: format!("d{seq}"),
                    prev_hash: prev,
                    hash,
                };
                prev = hash;
                r
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(5));
        assert_eq!(verify_chain(&[]), Ok(0));
    }

    #[test]
    fn an_edited_deleted_or_reordered_row_breaks_the_chain() {
        let mut c = chain(5);
        c[2].detail = "forged".into();
        assert_eq!(
            verify_chain(&c),
            Err(StoreError::AuditChainBroken { seq: 3 })
        );

        let mut c = chain(5);
        c.remove(1);
        assert_eq!(
            verify_chain(&c),
            Err(StoreError::AuditChainBroken { seq: 3 })
        );

        let mut c = chain(5);
        c.swap(3, 4);
        assert!(verify_chain(&c).is_err());
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let a = row_hash(&GENESIS_HASH, 1, 1, None, "ab", "c");
        let b = row_hash(&GENESIS_HASH, 1, 1, None, "a", "bc");
        assert_ne!(a, b);
    }
}
