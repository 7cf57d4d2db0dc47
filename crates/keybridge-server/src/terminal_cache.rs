//! Terminals by the hash of their API key, remembered after the first
//! lookup, so that a payment's request does not pay a store read to say who
//! is asking.
//!
//! Safe because a terminal record never changes and no operation disables a
//! terminal: an entry cannot go stale. An operation that disables terminals
//! must clear its entry here. Only keys that found a terminal are kept, so a
//! flood of wrong keys cannot grow the cache; when full, it starts over.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use crate::store::TerminalRecord;

/// Terminals remembered at most; beyond, the cache is emptied and refills.
pub const ENTRIES_MAX: usize = 4096;

#[derive(Debug, Default)]
pub struct TerminalCache {
    by_key_hash: RwLock<HashMap<[u8; 32], TerminalRecord>>,
}

impl TerminalCache {
    pub fn get(&self, key_hash: &[u8; 32]) -> Option<TerminalRecord> {
        // Plain values only: a panic elsewhere cannot leave the map torn.
        self.by_key_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key_hash)
            .cloned()
    }

    pub fn insert(&self, key_hash: [u8; 32], terminal: TerminalRecord) {
        let mut map = self
            .by_key_hash
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= ENTRIES_MAX {
            map.clear();
        }
        map.insert(key_hash, terminal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal(n: usize) -> TerminalRecord {
        TerminalRecord {
            id: format!("t{n}"),
            name: format!("T{n}"),
        }
    }

    #[test]
    fn remembers_what_was_found_and_stays_bounded() {
        let cache = TerminalCache::default();
        assert_eq!(cache.get(&[1; 32]), None);
        cache.insert([1; 32], terminal(1));
        assert_eq!(cache.get(&[1; 32]), Some(terminal(1)));
        for n in 0..ENTRIES_MAX + 10 {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(n as u64).to_be_bytes());
            key[31] = 0xEE;
            cache.insert(key, terminal(n));
        }
        let len = cache.by_key_hash.read().unwrap().len();
        assert!(len <= ENTRIES_MAX, "{len} entries");
    }
}
