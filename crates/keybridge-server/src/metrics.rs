//! Prometheus metrics (`GET /metrics`), recorded with the `metrics` facade.
//!
//! The recorder is process-global (that is how the facade works), installed
//! once; several servers in one process (tests) share its counters, so tests
//! assert that counters *move*, not their absolute values.
//!
//! Names (all prefixed `keybridge_`):
//! - `payments_total{status,reason}`: transactions that ended, by outcome.
//! - `submit_to_settled_seconds`: histogram, creation to settlement.
//! - `verification_failures_total{reason}`: confirmations the verification
//!   unit refused (holder declines and PIN errors are not verification failures).
//! - `relay_channels_open`: relay WebSockets connected now.
//! - `pending_confirmations`: transactions waiting for the payer, read from
//!   the store at each scrape.
//! - `webhook_deliveries_total{result}`: webhook attempts by result.
//! - `creations_refused_total{reason}`: payments refused at creation by the
//!   rules, by error code; `too_many_pending` climbing means some terminal is
//!   flooding payers with prompts (the log names it).
//! - `rate_limited_total{role}`: requests refused because their sender
//!   (`terminal`) went over its rate (`crate::rate`); the log names it.
//! - `http_connections_open`: client connections now (TLS handshakes and
//!   HTTP; a connection upgraded to a relay channel leaves this count).
//! - `read_timeouts_total{stage}`: connections closed because the client
//!   sent its request head (`head`), TLS handshake (`tls`) or body (`body`)
//!   too slowly: many of them mean broken clients, or someone holding sockets.
//! - `peer_events_total{way}`: on PostgreSQL, this instance's transaction
//!   events `sent` to the other instances after their commit, or `dropped`
//!   unsent (the database unreachable or behind), and events of other
//!   instances it `caught_up` on from the audit log because no note came
//!   (`crate::peers`): `caught_up` climbing means notes are being lost (an
//!   instance died after a commit, or its connection to the database broke).

use std::sync::OnceLock;
use std::time::Instant;

use keybridge_proto::api::{Reason, TransactionStatus};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const PAYMENTS: &str = "keybridge_payments_total";
pub const SETTLE_LATENCY: &str = "keybridge_submit_to_settled_seconds";
pub const VERIFICATION_FAILURES: &str = "keybridge_verification_failures_total";
pub const RELAY_CHANNELS: &str = "keybridge_relay_channels_open";
pub const PENDING: &str = "keybridge_pending_confirmations";
pub const WEBHOOK_DELIVERIES: &str = "keybridge_webhook_deliveries_total";
pub const CREATIONS_REFUSED: &str = "keybridge_creations_refused_total";
pub const HTTP_CONNECTIONS: &str = "keybridge_http_connections_open";
pub const READ_TIMEOUTS: &str = "keybridge_read_timeouts_total";
pub const RATE_LIMITED: &str = "keybridge_rate_limited_total";
pub const PEER_EVENTS: &str = "keybridge_peer_events_total";

/// Payments are confirmed by a person: seconds to minutes.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(SETTLE_LATENCY.to_owned()), LATENCY_BUCKETS_S);
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            // Only fails on an empty bucket list, which the constant is not.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        handle
    })
}

/// The server's metrics. Per-transaction state (when each was submitted)
/// lives in `pending_cache`, which holds each pending transaction anyway.
#[derive(Debug, Default)]
pub struct Metrics(());

impl Metrics {
    pub fn new() -> Metrics {
        // Install the recorder before anything records.
        let _ = handle();
        Metrics::default()
    }

    /// A transaction ended. `submitted` is when this process stored it, if it
    /// remembered; else `fallback_s`, its age by the injected clock, is used.
    pub fn ended(
        &self,
        status: TransactionStatus,
        reason: Option<Reason>,
        submitted: Option<Instant>,
        fallback_s: u64,
    ) {
        let reason = reason.map(|r| r.as_str()).unwrap_or("none");
        metrics::counter!(PAYMENTS, "status" => status.as_str(), "reason" => reason).increment(1);
        if status == TransactionStatus::Settled {
            let seconds = match submitted {
                Some(at) => at.elapsed().as_secs_f64(),
                // u64 → f64 is exact below 2^53 s, far beyond any age.
                None => fallback_s as f64,
            };
            metrics::histogram!(SETTLE_LATENCY).record(seconds);
        }
    }

    pub fn verification_failed(reason: Reason) {
        metrics::counter!(VERIFICATION_FAILURES, "reason" => reason.as_str()).increment(1);
    }

    pub fn webhook_attempt(result: &'static str) {
        metrics::counter!(WEBHOOK_DELIVERIES, "result" => result).increment(1);
    }

    /// The rules refused a new payment; `reason` is the error's code.
    pub fn creation_refused(reason: &'static str) {
        metrics::counter!(CREATIONS_REFUSED, "reason" => reason).increment(1);
    }

    /// A request was refused because its sender went over its rate.
    pub fn rate_limited(role: &'static str) {
        metrics::counter!(RATE_LIMITED, "role" => role).increment(1);
    }

    /// A client was too slow: its request head, TLS handshake or body did
    /// not arrive within the read timeout, and its connection was closed.
    pub fn read_timed_out(stage: &'static str) {
        metrics::counter!(READ_TIMEOUTS, "stage" => stage).increment(1);
    }

    /// Transaction events between instances, by `way`: `sent`, `dropped`
    /// or `caught_up` (see the module doc).
    pub fn peer_events(way: &'static str, count: u64) {
        metrics::counter!(PEER_EVENTS, "way" => way).increment(count);
    }

    pub fn set_pending(count: u64) {
        metrics::gauge!(PENDING).set(count as f64);
    }

    /// The text exposition format.
    pub fn render() -> String {
        handle().render()
    }
}

/// Counts one open thing (a relay channel, an HTTP connection) in the gauge
/// it names, for as long as it lives.
#[derive(Debug)]
pub struct Open(&'static str);

impl Open {
    pub fn count(gauge: &'static str) -> Open {
        metrics::gauge!(gauge).increment(1.0);
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}
