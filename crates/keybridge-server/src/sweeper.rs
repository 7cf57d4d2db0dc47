//! The expiry sweeper: ends pending transactions whose window has passed,
//! so relays drop them and terminals stop waiting even if no one answers.

use std::time::Duration;

use crate::hub::shutdown_begun;
use crate::service;
use crate::state::AppState;

pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_millis(state.sweep_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = shutdown_begun(state.hub.shutdown_signal());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                // A failed sweep is retried next tick; the error is an operating one.
                if let Err(e) = service::sweep(&state).await {
                    tracing::error!(error = %e, "expiry sweep failed");
                }
            }
        }
    }
}
