//! Request rates per terminal: at most `ServerConfig::terminal_rate_per_s`
//! requests a second on one terminal's API key, in bursts of at most one
//! second's worth; past that, 429 `rate_limited` with `Retry-After`.
//!
//! Why per terminal: the key says who sends, where a client address says
//! only which proxy or NAT it came through (behind a load balancer, every
//! client has the same one, and limiting it would lock out every till at
//! once). Without this a leaked key, or a till stuck in a loop, takes the
//! server's capacity from every other terminal.
//!
//! The count is per server instance: N instances on one database allow up
//! to N times the rate. What must hold across instances is the limit on
//! prompts per payer (`ServerConfig::pending_per_payer_max`), which the
//! store enforces. Relays and the admin API are not limited here: a relay
//! answers what it is sent, and the admin token is the operator's.
//!
//! The algorithm is GCRA (`governor`): one timestamp per terminal, no
//! timers, and the time to wait comes with each refusal. Keys are ids of
//! terminals that authenticated, so the table grows with registered
//! terminals only, never with what clients send.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::error::ApiError;
use crate::store::TerminalRecord;

type Limiter<C> =
    RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// How often a terminal over its rate is logged: its refusals may come by
/// the thousand each second, and one line a minute is enough to act on.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The limiter the server keeps (see the module's documentation).
pub struct TerminalRate<C: Clock = DefaultClock> {
    per_s: NonZeroU32,
    requests: Limiter<C>,
    warnings: Limiter<C>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for TerminalRate<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalRate")
            .field("per_s", &self.per_s)
            .finish_non_exhaustive()
    }
}

impl TerminalRate {
    /// `None` for a rate of 0, which the configuration takes as "no limit".
    pub fn new(per_s: u32) -> Option<TerminalRate> {
        NonZeroU32::new(per_s).map(|per_s| TerminalRate::with_clock(per_s, DefaultClock::default()))
    }
}

impl<C: Clock + Clone> TerminalRate<C> {
    pub fn with_clock(per_s: NonZeroU32, clock: C) -> TerminalRate<C> {
        let warn_quota = Quota::with_period(WARN_EVERY).expect("a positive period");
        TerminalRate {
            per_s,
            requests: RateLimiter::dashmap_with_clock(Quota::per_second(per_s), clock.clone()),
            warnings: RateLimiter::dashmap_with_clock(warn_quota, clock.clone()),
            clock,
        }
    }

    /// Counts one request of the terminal with this id: `Ok` within the
    /// rate, otherwise `RateLimited` with how long until the next one would
    /// be let in (then counted in the metrics, and logged at most once a
    /// minute per terminal). Takes the record's own `String`, so a request
    /// within the rate allocates nothing.
    pub fn admit(&self, terminal: &TerminalRecord) -> Result<(), ApiError> {
        let id = &terminal.id;
        let Err(not_until) = self.requests.check_key(id) else {
            return Ok(());
        };
        let retry_after = not_until.wait_time_from(self.clock.now());
        crate::metrics::Metrics::rate_limited("terminal");
        if self.warnings.check_key(id).is_ok() {
            tracing::warn!(terminal = %id, per_s = self.per_s.get(), "refused: the terminal sends more requests than its rate");
        }
        Err(ApiError::RateLimited {
            per_s: self.per_s.get(),
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn terminal(id: &str) -> TerminalRecord {
        TerminalRecord {
            id: id.to_owned(),
            name: id.to_owned(),
            disabled_at_unix_s: None,
        }
    }

    fn rate(per_s: u32) -> (TerminalRate<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let per_s = NonZeroU32::new(per_s).unwrap();
        (TerminalRate::with_clock(per_s, clock.clone()), clock)
    }

    #[test]
    fn a_burst_of_one_seconds_worth_then_refusals_with_the_wait() {
        let (rate, _clock) = rate(10);
        for i in 0..10 {
            assert_eq!(rate.admit(&terminal("till")), Ok(()), "request {i}");
        }
        match rate.admit(&terminal("till")) {
            Err(ApiError::RateLimited { per_s, retry_after }) => {
                assert_eq!(per_s, 10);
                // One request's share of a second, at 10 a second.
                assert!(
                    retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100),
                    "{retry_after:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_rate_refills_with_time() {
        let (rate, clock) = rate(10);
        for _ in 0..10 {
            rate.admit(&terminal("till")).unwrap();
        }
        assert!(rate.admit(&terminal("till")).is_err());
        clock.advance(Duration::from_millis(100));
        assert_eq!(
            rate.admit(&terminal("till")),
            Ok(()),
            "one more after a tenth of a second"
        );
        assert!(rate.admit(&terminal("till")).is_err());
        clock.advance(Duration::from_secs(1));
        for i in 0..10 {
            assert_eq!(
                rate.admit(&terminal("till")),
                Ok(()),
                "request {i} after a full second"
            );
        }
    }

    #[test]
    fn each_terminal_has_its_own_count() {
        let (rate, _clock) = rate(2);
        rate.admit(&terminal("a")).unwrap();
        rate.admit(&terminal("a")).unwrap();
        assert!(rate.admit(&terminal("a")).is_err());
        assert_eq!(rate.admit(&terminal("b")), Ok(()));
        assert_eq!(rate.admit(&terminal("b")), Ok(()));
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        assert!(TerminalRate::new(0).is_none());
        assert!(TerminalRate::new(1).is_some());
    }
}
