//! In-process fan-out of transaction events to relay WebSockets and waiting
//! terminals (long-poll, SSE).
//!
//! One bounded broadcast channel: every subscriber filters for what concerns
//! it (a payer account, a transaction id). A subscriber that falls more than
//! [`HUB_CAPACITY`] events behind is told so (`Lagged`) and re-reads the store,
//! so the bound never loses a final status. The store stays the truth; the hub
//! only says "look again". Several server instances would replace this with
//! the database's own notifications.

use std::sync::Arc;

use keybridge_proto::api::TransactionView;
use tokio::sync::{broadcast, watch};

/// Events buffered per subscriber before it must resynchronise from the store.
pub const HUB_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub enum HubEvent {
    /// A new pending transaction; `payload` is the stored, signed-over encoding.
    Created {
        view: TransactionView,
        payload: Arc<[u8]>,
    },
    /// A transaction reached its final status.
    Ended { view: TransactionView },
    /// A device was disabled: its open relay connections must close now.
    DeviceDisabled { device_id: String },
}

#[derive(Debug, Clone)]
pub struct Hub {
    events: broadcast::Sender<HubEvent>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        let (events, _) = broadcast::channel(HUB_CAPACITY);
        let (shutdown, _) = watch::channel(false);
        Hub {
            events,
            shutdown: Arc::new(shutdown),
        }
    }

    /// Sends to every current subscriber; having none is fine.
    pub fn publish(&self, event: HubEvent) {
        let _ = self.events.send(event);
    }

    /// Subscribe before reading the store, so nothing falls in between.
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.events.subscribe()
    }

    /// Tells long-lived streams (relay sockets, SSE, long-polls) to finish,
    /// so a graceful shutdown does not wait for them.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Resolves once shutdown has begun.
pub async fn shutdown_begun(mut signal: watch::Receiver<bool>) {
    // An error means the hub is gone, which is a shutdown too.
    let _ = signal.wait_for(|down| *down).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_events_published_after_they_subscribe() {
        let hub = Hub::new();
        hub.publish(HubEvent::DeviceDisabled {
            device_id: "before".into(),
        });
        let mut rx = hub.subscribe();
        hub.publish(HubEvent::DeviceDisabled {
            device_id: "after".into(),
        });
        match rx.recv().await.unwrap() {
            HubEvent::DeviceDisabled { device_id } => assert_eq!(device_id, "after"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn shutdown_wakes_waiters() {
        let hub = Hub::new();
        let signal = hub.shutdown_signal();
        let waiter = tokio::spawn(shutdown_begun(signal));
        hub.begin_shutdown();
        waiter.await.unwrap();
        // A late subscriber sees it at once.
        shutdown_begun(hub.shutdown_signal()).await;
    }
}
