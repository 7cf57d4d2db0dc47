//! Terminals by the hash of their API key, remembered after the first
//! lookup, so that a payment's request does not pay a store read to say who
//! is asking.
//!
//! A terminal's name and id never change; what can is that it is disabled.
//! Disabling one forgets it here ([`TerminalCache::forget`]) on this
//! instance, and on the others when they hear of it (`peers`); an instance
//! whose event connection was down empties the whole cache when it is back
//! ([`TerminalCache::clear`]), since it may have missed such an event. And
//! no entry is used after [`ENTRY_TTL`]: if the disabling instance's own
//! event connection was down, nobody heard it, and the key must still stop
//! working everywhere within that time. Only keys that found an enabled
//! terminal are kept, so a flood of wrong keys cannot grow the cache; when
//! full, it starts over.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::store::TerminalRecord;

/// Terminals remembered at most; beyond, the cache is emptied and refills.
pub const ENTRIES_MAX: usize = 4096;

/// The longest an entry is used before the store is asked again: the most
/// a disabled terminal's key can go on working on an instance that missed
/// the news. One read per terminal per this period costs nothing.
pub const ENTRY_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct TerminalCache {
    by_key_hash: RwLock<HashMap<[u8; 32], (TerminalRecord, Instant)>>,
}

impl TerminalCache {
    pub fn get(&self, key_hash: &[u8; 32]) -> Option<TerminalRecord> {
        self.get_at(key_hash, Instant::now())
    }

    fn get_at(&self, key_hash: &[u8; 32], now: Instant) -> Option<TerminalRecord> {
        // Plain values only: a panic elsewhere cannot leave the map torn.
        self.by_key_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key_hash)
            .filter(|(_, at)| now.saturating_duration_since(*at) < ENTRY_TTL)
            .map(|(t, _)| t.clone())
    }

    /// Forgets every key of terminal `terminal_id`.
    pub fn forget(&self, terminal_id: &str) {
        self.by_key_hash
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, (t, _)| t.id != terminal_id);
    }

    /// Forgets every terminal.
    pub fn clear(&self) {
        self.by_key_hash
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub fn insert(&self, key_hash: [u8; 32], terminal: TerminalRecord) {
        let mut map = self
            .by_key_hash
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= ENTRIES_MAX {
            map.clear();
        }
        map.insert(key_hash, (terminal, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal(n: usize) -> TerminalRecord {
        TerminalRecord {
            id: format!("t{n}"),
            name: format!("T{n}"),
            disabled_at_unix_s: None,
        }
    }

    #[test]
    fn a_disabled_terminal_is_forgotten_and_others_stay() {
        let cache = TerminalCache::default();
        cache.insert([1; 32], terminal(1));
        cache.insert([2; 32], terminal(2));
        cache.forget("t1");
        assert_eq!(cache.get(&[1; 32]), None);
        assert_eq!(cache.get(&[2; 32]), Some(terminal(2)));
        cache.clear();
        assert_eq!(cache.get(&[2; 32]), None);
    }

    #[test]
    fn an_entry_is_not_used_past_its_time() {
        let cache = TerminalCache::default();
        cache.insert([1; 32], terminal(1));
        let now = Instant::now();
        assert_eq!(cache.get_at(&[1; 32], now), Some(terminal(1)));
        assert_eq!(cache.get_at(&[1; 32], now + ENTRY_TTL), None);
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
