//! In-process fan-out of transaction events to relay WebSockets, waiting
//! terminals (long-poll, SSE) and the webhook deliverer.
//!
//! Events go by topic: a payer account (its relays: new requests, ends,
//! disabled devices) and a transaction (its waiting terminals: the end). A
//! subscriber hears only its topic, so one event wakes the few tasks it
//! concerns, not every open socket: with one channel for everything, each
//! payment woke every relay and every long-poll on the server, a cost that
//! grew with the number of connections. A topic lives while it has
//! subscribers.
//!
//! A subscriber that falls more than its topic's capacity behind is told so
//! (`Lagged`) and re-reads the store, so the bound never loses a final
//! status. The store stays the truth; the hub only says "look again".
//!
//! Several server instances on one PostgreSQL database share their events
//! through it: a transaction's creation and end are handed to a [`Forward`]
//! as they are published here (after their commit), which `peers` sends to
//! the others; the rarer security events are notified by their write's own
//! transaction (PostgreSQL migration 8). `peers` hands what it hears from
//! other instances to [`Hub::publish_from_peer`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use keybridge_proto::api::TransactionView;
use keybridge_proto::{AccountId, TransactionId};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch, Notify};

/// Events buffered per relay before it must resynchronise from the store:
/// one payer rarely has more than a few requests open.
pub const PAYER_TOPIC_CAPACITY: usize = 64;
/// A transaction has one end; the spare slot is slack.
pub const TRANSACTION_TOPIC_CAPACITY: usize = 2;

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
    DeviceDisabled {
        device_id: String,
        account: AccountId,
    },
    /// A terminal was disabled: every instance must stop accepting its API
    /// key now. No subscriber needs it here; the other instances hear of
    /// it from the database, and forget the terminal.
    TerminalDisabled { terminal_id: String },
    /// A terminal's API key was replaced: every instance must stop
    /// accepting the old one now. Like `TerminalDisabled`, for the other
    /// instances only.
    TerminalKeyRotated { terminal_id: String },
    /// Events may have been missed (this instance's link to the others was
    /// down): every subscriber re-reads the store. A subscription reports it
    /// as `RecvError::Lagged`, which every subscriber already answers that
    /// way, so none can mistake it for news.
    Resync,
}

/// What other instances need to hear of a transaction event: which
/// transaction, and whether it began or ended. They read the rest from the
/// store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum News {
    Created(TransactionId),
    Ended(TransactionId),
}

impl News {
    /// The news in an event this instance publishes, if other instances need it.
    fn of(event: &HubEvent) -> Option<News> {
        match event {
            HubEvent::Created { view, .. } => Some(News::Created(view.id)),
            HubEvent::Ended { view } => Some(News::Ended(view.id)),
            _ => None,
        }
    }
}

/// Takes this instance's transaction news to the other instances
/// (`peers`). Called on the publishing task: it must not block.
pub trait Forward: Send + Sync + std::fmt::Debug {
    fn forward(&self, news: News);
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// What a payer's relays need: `Created`, `Ended`, `DeviceDisabled`.
    Payer(AccountId),
    /// What a terminal waiting on one transaction needs: its `Ended`.
    Transaction(TransactionId),
}

impl Topic {
    fn capacity(&self) -> usize {
        match self {
            Topic::Payer(_) => PAYER_TOPIC_CAPACITY,
            Topic::Transaction(_) => TRANSACTION_TOPIC_CAPACITY,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    topics: Mutex<HashMap<Topic, broadcast::Sender<HubEvent>>>,
    /// One stored permit however many ends: the webhook deliverer looks at
    /// the store once for all the ends since its last look.
    ended: Notify,
    shutdown: watch::Sender<bool>,
    /// Set once when this instance shares a database with others.
    forward: OnceLock<Arc<dyn Forward>>,
}

impl Inner {
    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, broadcast::Sender<HubEvent>>> {
        // The map holds only channel handles: a panic elsewhere cannot leave
        // it half-updated.
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, topic: &Topic, event: HubEvent) {
        if let Some(sender) = self.topics().get(topic) {
            // No receiver left is fine: the topic is about to be removed.
            let _ = sender.send(event);
        }
    }
}

impl Default for Hub {
    fn default() -> Hub {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        let (shutdown, _) = watch::channel(false);
        Hub {
            inner: Arc::new(Inner {
                topics: Mutex::new(HashMap::new()),
                ended: Notify::new(),
                shutdown,
                forward: OnceLock::new(),
            }),
        }
    }

    /// Sends to the subscribers of the topics the event concerns (having none
    /// is fine), and a transaction's news to the [`Forward`], if any. Call it
    /// only after the write that caused the event has committed: other
    /// instances read the store when they hear of it.
    pub fn publish(&self, event: HubEvent) {
        if let (Some(forward), Some(news)) = (self.inner.forward.get(), News::of(&event)) {
            forward.forward(news);
        }
        self.publish_from_peer(event);
    }

    /// Hands this instance's transaction news to `forward` from now on; a
    /// second call is ignored (one instance has one link to the others).
    pub fn forward_with(&self, forward: Arc<dyn Forward>) {
        let _ = self.inner.forward.set(forward);
    }

    /// Delivers an event another instance caused, to this instance's
    /// subscribers.
    pub fn publish_from_peer(&self, event: HubEvent) {
        match &event {
            HubEvent::Created { view, .. } => {
                let topic = Topic::Payer(view.payer.clone());
                self.inner.send(&topic, event);
            }
            HubEvent::Ended { view } => {
                let payer = Topic::Payer(view.payer.clone());
                let transaction = Topic::Transaction(view.id);
                self.inner.send(&payer, event.clone());
                self.inner.send(&transaction, event);
                self.inner.ended.notify_one();
            }
            HubEvent::DeviceDisabled { account, .. } => {
                let topic = Topic::Payer(account.clone());
                self.inner.send(&topic, event);
            }
            HubEvent::TerminalDisabled { .. } | HubEvent::TerminalKeyRotated { .. } => {}
            HubEvent::Resync => self.resync_all(),
        }
    }

    /// Tells every subscriber, and the webhook deliverer, to re-read the
    /// store: what they were waiting to hear of may have happened unheard.
    pub fn resync_all(&self) {
        for sender in self.inner.topics().values() {
            let _ = sender.send(HubEvent::Resync);
        }
        self.inner.ended.notify_one();
    }

    /// Subscribe before reading the store, so nothing falls in between.
    pub fn subscribe(&self, topic: Topic) -> Subscription {
        let events = self
            .inner
            .topics()
            .entry(topic.clone())
            .or_insert_with(|| broadcast::channel(topic.capacity()).0)
            .subscribe();
        Subscription {
            events: Some(events),
            topic,
            hub: Arc::clone(&self.inner),
        }
    }

    /// Resolves when a transaction has ended since the last call returned
    /// (several ends in between resolve it once).
    pub async fn some_ended(&self) {
        self.inner.ended.notified().await;
    }

    /// Tells long-lived streams (relay sockets, SSE, long-polls) to finish,
    /// so a graceful shutdown does not wait for them.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Topics with at least one subscriber (for tests and metrics).
    pub fn topic_count(&self) -> usize {
        self.inner.topics().len()
    }
}

/// A subscription to one topic; dropping the last one removes the topic.
#[derive(Debug)]
pub struct Subscription {
    // `Some` until dropped: the drop takes it out under the map's lock.
    events: Option<broadcast::Receiver<HubEvent>>,
    topic: Topic,
    hub: Arc<Inner>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Result<HubEvent, RecvError> {
        match self.events.as_mut() {
            Some(events) => match events.recv().await {
                Ok(HubEvent::Resync) => Err(RecvError::Lagged(0)),
                other => other,
            },
            None => Err(RecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.hub.topics();
        // Under the lock, so no subscribe can slip in between the count and
        // the removal.
        drop(self.events.take());
        if topics
            .get(&self.topic)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            topics.remove(&self.topic);
        }
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
    use keybridge_proto::api::TransactionStatus;
    use keybridge_proto::Currency;

    fn view(payer: &str, id: u8) -> TransactionView {
        TransactionView {
            id: TransactionId([id; 16]),
            status: TransactionStatus::Settled,
            reason: None,
            payer: AccountId::new(payer).unwrap(),
            payee: AccountId::new("shop").unwrap(),
            payee_name: "Shop".into(),
            amount_minor: 1,
            currency: Currency::from_code("CNY").unwrap(),
            amount_display: "CNY 0.01".into(),
            order_id: "o".into(),
            description: String::new(),
            created_at_unix_s: 0,
            expires_at_unix_s: 1,
            reason_text: None,
        }
    }

    fn payer(name: &str) -> Topic {
        Topic::Payer(AccountId::new(name).unwrap())
    }

    #[tokio::test]
    async fn subscribers_see_events_published_after_they_subscribe() {
        let hub = Hub::new();
        let disabled = |id: &str| HubEvent::DeviceDisabled {
            device_id: id.into(),
            account: AccountId::new("alice").unwrap(),
        };
        hub.publish(disabled("before"));
        let mut rx = hub.subscribe(payer("alice"));
        hub.publish(disabled("after"));
        match rx.recv().await.unwrap() {
            HubEvent::DeviceDisabled { device_id, .. } => assert_eq!(device_id, "after"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// An end reaches its payer's relays and its own waiters, nobody else's.
    #[tokio::test]
    async fn events_reach_only_their_topics() {
        let hub = Hub::new();
        let mut alice = hub.subscribe(payer("alice"));
        let mut bob = hub.subscribe(payer("bob"));
        let mut tx1 = hub.subscribe(Topic::Transaction(TransactionId([1; 16])));
        let mut tx2 = hub.subscribe(Topic::Transaction(TransactionId([2; 16])));
        hub.publish(HubEvent::Ended {
            view: view("alice", 1),
        });
        for rx in [&mut alice, &mut tx1] {
            match rx.recv().await.unwrap() {
                HubEvent::Ended { view } => assert_eq!(view.id, TransactionId([1; 16])),
                other => panic!("unexpected {other:?}"),
            }
        }
        for rx in [&mut bob, &mut tx2] {
            let nothing =
                tokio::time::timeout(std::time::Duration::from_millis(20), rx.recv()).await;
            assert!(nothing.is_err(), "an unrelated subscriber heard an event");
        }
    }

    #[tokio::test]
    async fn the_last_subscription_dropped_removes_its_topic() {
        let hub = Hub::new();
        let first = hub.subscribe(payer("alice"));
        let second = hub.subscribe(payer("alice"));
        let other = hub.subscribe(Topic::Transaction(TransactionId([3; 16])));
        assert_eq!(hub.topic_count(), 2);
        drop(first);
        assert_eq!(hub.topic_count(), 2);
        drop(second);
        assert_eq!(hub.topic_count(), 1);
        drop(other);
        assert_eq!(hub.topic_count(), 0);
    }

    /// After a gap in the events from other instances, every subscriber of
    /// every topic is told to look at the store, as if it had lagged, and
    /// the webhook deliverer looks too.
    #[tokio::test]
    async fn a_resync_tells_every_subscriber_to_read_the_store() {
        let hub = Hub::new();
        let mut relay = hub.subscribe(payer("alice"));
        let mut waiter = hub.subscribe(Topic::Transaction(TransactionId([1; 16])));
        hub.resync_all();
        for rx in [&mut relay, &mut waiter] {
            assert!(matches!(rx.recv().await, Err(RecvError::Lagged(_))));
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), hub.some_ended())
            .await
            .expect("the webhook deliverer is woken");
    }

    /// A subscriber too far behind is told so, and must look at the store.
    #[tokio::test]
    async fn a_slow_subscriber_learns_it_lagged() {
        let hub = Hub::new();
        let mut slow = hub.subscribe(Topic::Transaction(TransactionId([1; 16])));
        for _ in 0..=TRANSACTION_TOPIC_CAPACITY {
            hub.publish(HubEvent::Ended {
                view: view("alice", 1),
            });
        }
        assert!(matches!(slow.recv().await, Err(RecvError::Lagged(_))));
    }

    #[tokio::test]
    async fn ends_wake_the_webhook_deliverer_once_for_many() {
        let hub = Hub::new();
        for id in 1..=3 {
            hub.publish(HubEvent::Ended {
                view: view("alice", id),
            });
        }
        hub.some_ended().await;
        let again =
            tokio::time::timeout(std::time::Duration::from_millis(20), hub.some_ended()).await;
        assert!(again.is_err(), "one permit was stored per end");
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
