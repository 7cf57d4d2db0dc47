//! Injected time. The verification and payment units never read the system
//! clock themselves: they are handed a [`Clock`], so tests can stand still,
//! jump past an expiry, or replay an exact moment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in whole unix seconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_unix_s(&self) -> u64;

    /// The same clock in milliseconds, where finer order helps (the locality
    /// prefix of transaction ids); no rule reads it. By default the seconds.
    fn now_unix_ms(&self) -> u64 {
        self.now_unix_s().saturating_mul(1000)
    }
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_s(&self) -> u64 {
        // A clock before 1970 is an operating error we cannot fix; 0 makes
        // every transaction look expired rather than valid forever.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualClock {
    now_unix_s: AtomicU64,
}

impl ManualClock {
    pub fn new(now_unix_s: u64) -> ManualClock {
        ManualClock {
            now_unix_s: AtomicU64::new(now_unix_s),
        }
    }

    /// Starts at the current wall-clock time, so issued certificates are
    /// valid for real-world tools too.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(SystemClock.now_unix_s())
    }

    pub fn set(&self, now_unix_s: u64) {
        self.now_unix_s.store(now_unix_s, Ordering::SeqCst);
    }

    pub fn advance(&self, seconds: u64) {
        self.now_unix_s.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_s(&self) -> u64 {
        self.now_unix_s.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(100);
        assert_eq!(c.now_unix_s(), 100);
        c.advance(20);
        assert_eq!(c.now_unix_s(), 120);
        c.set(5);
        assert_eq!(c.now_unix_s(), 5);
        assert_eq!(c.now_unix_ms(), 5_000);
    }

    #[test]
    fn the_system_clock_in_milliseconds_is_the_same_clock() {
        let s = SystemClock.now_unix_s();
        let ms = SystemClock.now_unix_ms();
        // Read a moment apart: the same second or the next.
        assert!((s..=s + 1).contains(&(ms / 1000)), "{s} s, {ms} ms");
    }
}
