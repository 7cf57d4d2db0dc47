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
    let mut check = ChainCheck::default();
    check.feed(rows)?;
    Ok(check.rows())
}

/// Checks a chain page by page from its first row, so a long log need not
/// be held in memory at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheck {
    prev: [u8; 32],
    last_seq: Option<u64>,
    rows: u64,
}

impl Default for ChainCheck {
    fn default() -> ChainCheck {
        ChainCheck {
            prev: GENESIS_HASH,
            last_seq: None,
            rows: 0,
        }
    }
}

impl ChainCheck {
    /// Checks the rows that follow those fed so far, in `seq` order. The
    /// first that does not link up (a hash that is not its own, a
    /// `prev_hash` that is not the row before's, a gap in `seq`) is the
    /// error, and the check stops there: rows after it are not counted.
    pub fn feed(&mut self, rows: &[AuditRecord]) -> Result<(), StoreError> {
        for row in rows {
            let broken = StoreError::AuditChainBroken { seq: row.seq };
            if self
                .last_seq
                .is_some_and(|last| last.checked_add(1) != Some(row.seq))
            {
                return Err(broken);
            }
            let tx = row.transaction_id.map(|t| t.to_hex());
            let hash = row_hash(
                &self.prev,
                row.seq,
                row.at_unix_s,
                tx.as_deref(),
                &row.event,
                &row.detail,
            );
            if row.prev_hash != self.prev || row.hash != hash {
                return Err(broken);
            }
            self.prev = hash;
            self.last_seq = Some(row.seq);
            self.rows += 1;
        }
        Ok(())
    }

    /// How many rows linked up.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The `seq` of the last row that linked up.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The hash of the last row that linked up: what an operator can note
    /// down (or publish) to tell later whether anything before it changed.
    pub fn head(&self) -> Option<[u8; 32]> {
        self.last_seq.map(|_| self.prev)
    }
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
    fn a_chain_checked_in_pages_is_checked_as_a_whole() {
        let c = chain(7);
        let mut check = ChainCheck::default();
        for page in c.chunks(3) {
            check.feed(page).unwrap();
        }
        assert_eq!(check.rows(), 7);
        assert_eq!(check.last_seq(), Some(7));
        assert_eq!(check.head(), Some(c[6].hash));
        assert_eq!(ChainCheck::default().head(), None);

        // A row removed at a page boundary still breaks it.
        let mut c = chain(7);
        c.remove(3);
        let mut check = ChainCheck::default();
        check.feed(&c[..3]).unwrap();
        assert_eq!(
            check.feed(&c[3..]),
            Err(StoreError::AuditChainBroken { seq: 5 })
        );
        assert_eq!(check.rows(), 3);
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let a = row_hash(&GENESIS_HASH, 1, 1, None, "ab", "c");
        let b = row_hash(&GENESIS_HASH, 1, 1, None, "a", "bc");
        assert_ne!(a, b);
    }
}
