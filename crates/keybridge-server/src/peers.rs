//! Hub events between server instances on one PostgreSQL database, over
//! LISTEN/NOTIFY on one channel.
//!
//! A relay keeps its WebSocket open to one instance, a terminal waits on
//! whichever instance its load balancer picked, and the answer may arrive at
//! a third. Each instance listens, and delivers what it hears from the others
//! to its own subscribers; its own events it delivered already, and skips.
//!
//! Two kinds of event, sent two ways:
//!
//! - **A transaction's creation and end**, two per payment. The instance
//!   that wrote sends them after its commit, from the hub (`Outbox`, one
//!   connection, several notes per statement, `synchronous_commit` off). Not
//!   from inside the write: PostgreSQL lets one notifying transaction commit
//!   at a time, each holding a database-wide lock until its WAL flush, which
//!   cost about a quarter of the payments per second (migration 8 says
//!   more). An instance that dies between its commit and its note would
//!   lose the event (a payment unannounced until it expired, crash test
//!   `payments_survive_each_of_two_postgres_servers_killed_in_turn`), so
//!   every instance also reads the sealed audit log every
//!   [`CATCH_UP_PERIOD`] and delivers the transaction events it has not
//!   heard of (`Recent`).
//! - **A device disabled or revoked, a terminal disabled or its key
//!   rotated**: rare, and a security decision rests on each, so the write's
//!   own transaction notifies it (a trigger on the audit rows it stages,
//!   PostgreSQL migrations 5, 7 and 8): it is heard exactly when the write
//!   commits, and never lost to a crash.
//!
//! A notification names what changed, never how: any role that can connect
//! to the database may NOTIFY (PostgreSQL checks no privilege for it), so an
//! instance reads what it hears about from the store and announces only
//! what the store shows: an end only if the transaction has ended, a request
//! only if it is pending, a closed device only if it is disabled or revoked.
//! A forged notification costs a read; it cannot tell a terminal "settled".
//!
//! Notifications are not stored: while an instance's listening connection is
//! down (it reconnects every [`RECONNECT_WAIT`]), it misses the others'
//! events. Nothing is lost for good, because the store stays the truth: once
//! connected again, the instance tells every relay socket and waiting
//! terminal it serves to re-read the store ([`crate::hub::Hub::resync_all`]).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use keybridge_proto::api::TransactionStatus;
use keybridge_proto::TransactionId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::error::ServerError;
use crate::hub::{Forward, HubEvent, News};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::postgres::Endpoint;
use crate::store::{DeviceStatus, Store, StoreError};

/// The one channel every instance listens on.
pub const CHANNEL: &str = "keybridge_hub";
/// How long a lost connection waits before the next attempt.
pub const RECONNECT_WAIT: Duration = Duration::from_secs(1);
/// The listening connections' `application_name`, so an operator (or a
/// test) can find them in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "keybridge-peers";

/// The `application_name` of the connection that sends this instance's
/// transaction news and reads the audit log for news not heard.
pub const OUTBOX_APPLICATION_NAME: &str = "keybridge-peers-out";

/// How often an instance reads the audit log for transaction events it has
/// not heard of: those of an instance that died between its commit and its
/// note. The sealer chains a committed row within its own period (50 ms).
pub const CATCH_UP_PERIOD: Duration = Duration::from_millis(250);

/// Transaction events remembered as heard (or sent), so the catch-up does
/// not deliver them again: many seconds of the busiest server's events, for
/// about 3 MiB.
const RECENT_MAX: usize = 65_536;

/// This instance's news waiting to be sent. Past this (the database slower
/// than the payments) news is dropped: the other instances' catch-up finds
/// it in the audit log.
const OUTBOX_MAX: usize = 65_536;

/// Most notes sent by one statement.
const NOTES_PER_STATEMENT: usize = 256;

/// Most audit rows one catch-up read takes; it reads again while full.
const CATCH_UP_ROWS: i64 = 2_000;
/// One event as it travels: what changed, and the instance whose write
/// caused it (its connections' `application_name`). Written in this shape by
/// the [`Outbox`] and by the trigger of migration `0008_notify_after_commit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Note {
    from: String,
    event: WireEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum WireEvent {
    Created { id: TransactionId },
    Ended { id: TransactionId },
    DeviceDisabled { device_id: String },
    TerminalDisabled { terminal_id: String },
    TerminalKeyRotated { terminal_id: String },
}

impl From<News> for WireEvent {
    fn from(news: News) -> WireEvent {
        match news {
            News::Created(id) => WireEvent::Created { id },
            News::Ended(id) => WireEvent::Ended { id },
        }
    }
}

impl WireEvent {
    /// The transaction news it carries, if it is one.
    fn news(&self) -> Option<News> {
        match self {
            WireEvent::Created { id } => Some(News::Created(*id)),
            WireEvent::Ended { id } => Some(News::Ended(*id)),
            _ => None,
        }
    }

    /// The event the store confirms, if it does (see the module doc).
    async fn confirmed(self, store: &dyn Store) -> Result<Option<HubEvent>, StoreError> {
        Ok(match self {
            WireEvent::Created { id } => store
                .get_transaction(&id)
                .await?
                .filter(|t| t.status == TransactionStatus::Pending)
                .map(|t| HubEvent::Created {
                    view: t.view(),
                    payload: Arc::from(t.payload),
                }),
            WireEvent::Ended { id } => store
                .get_transaction(&id)
                .await?
                .filter(|t| t.status.is_final())
                .map(|t| HubEvent::Ended { view: t.view() }),
            WireEvent::DeviceDisabled { device_id } => store
                .get_device(&device_id)
                .await?
                .filter(|d| d.status != DeviceStatus::Active || d.is_revoked())
                .map(|d| HubEvent::DeviceDisabled {
                    device_id: d.id,
                    account: d.account,
                }),
            WireEvent::TerminalDisabled { terminal_id } => store
                .get_terminal(&terminal_id)
                .await?
                .filter(|t| t.disabled_at_unix_s.is_some())
                .map(|t| HubEvent::TerminalDisabled { terminal_id: t.id }),
            // What changed (the key's hash) is not for a note to say, and
            // a forged one costs a forgotten cache entry: the store only
            // confirms the terminal exists.
            WireEvent::TerminalKeyRotated { terminal_id } => store
                .get_terminal(&terminal_id)
                .await?
                .map(|t| HubEvent::TerminalKeyRotated { terminal_id: t.id }),
        })
    }
}

/// Delivers to `state`'s hub what the other instances' writes notify on the
/// database at `endpoint`, and sends them this instance's transaction news;
/// `instance` is this instance's id ([`crate::store::PgStore::instance`]),
/// whose own events are skipped. Fails if the first connections fail (a
/// wrong URL should stop the start); after that, the returned task
/// reconnects by itself until aborted.
pub async fn start(
    mut endpoint: Endpoint,
    instance: String,
    state: AppState,
) -> Result<JoinHandle<()>, ServerError> {
    let mut out = endpoint.clone();
    endpoint.config.application_name(APPLICATION_NAME);
    out.config.application_name(OUTBOX_APPLICATION_NAME);
    let link = Link::open(&endpoint).await?;
    let recent = Arc::new(Mutex::new(Recent::default()));
    let (sender, news) = mpsc::channel(OUTBOX_MAX);
    let mut outbox = Outbox::open(out, instance.clone(), Arc::clone(&recent), news).await?;
    state.hub.forward_with(Arc::new(Forwarder {
        recent: Arc::clone(&recent),
        sender,
    }));
    tracing::info!(%instance, channel = CHANNEL, "sharing events with other instances");
    let listening = run(endpoint, instance, state.clone(), link, recent);
    Ok(tokio::spawn(async move {
        tokio::join!(listening, outbox.run(&state));
    }))
}

async fn run(
    endpoint: Endpoint,
    instance: String,
    state: AppState,
    mut link: Link,
    recent: Arc<Mutex<Recent>>,
) {
    loop {
        let error = link.serve(&instance, &state, &recent).await;
        tracing::warn!(%error, "lost the connection to other instances; reconnecting");
        link = loop {
            tokio::time::sleep(RECONNECT_WAIT).await;
            match Link::open(&endpoint).await {
                Ok(link) => break link,
                Err(error) => tracing::warn!(%error, "cannot reach the database for events"),
            }
        };
        // What the others did meanwhile was not heard of here: a terminal
        // disabled (forget them all), a request created for a relay here or
        // an end a terminal here waits for (everyone re-reads the store).
        state.terminals.clear();
        state.hub.resync_all();
        tracing::info!("connected to other instances again");
    }
}

/// One connection to the database, and the task that drives it.
struct Connection {
    client: tokio_postgres::Client,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Connection {
    /// Connects; the notifications it receives go to `heard`, if given.
    async fn open(
        endpoint: &Endpoint,
        heard: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<Connection, ServerError> {
        let (client, driver) = match &endpoint.tls {
            Some(tls) => {
                let (client, connection) =
                    endpoint.config.connect(tls.clone()).await.map_err(failed)?;
                (client, tokio::spawn(forward(connection, heard)))
            }
            None => {
                let (client, connection) = endpoint.config.connect(NoTls).await.map_err(failed)?;
                (client, tokio::spawn(forward(connection, heard)))
            }
        };
        Ok(Connection { client, driver })
    }
}

fn failed(e: tokio_postgres::Error) -> ServerError {
    ServerError::Store(crate::store::postgres::backend(e))
}

/// One listening connection and the notifications it has received.
struct Link {
    /// Held, not used: dropping it would close the connection.
    _connection: Connection,
    heard: mpsc::UnboundedReceiver<String>,
}

impl Link {
    async fn open(endpoint: &Endpoint) -> Result<Link, ServerError> {
        let (heard_tx, heard) = mpsc::unbounded_channel();
        let connection = Connection::open(endpoint, Some(heard_tx)).await?;
        connection
            .client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(failed)?;
        Ok(Link {
            _connection: connection,
            heard,
        })
    }

    /// Delivers what is heard until the connection fails; returns why.
    async fn serve(&mut self, instance: &str, state: &AppState, recent: &Mutex<Recent>) -> String {
        while let Some(text) = self.heard.recv().await {
            let Some(event) = decode(instance, &text) else {
                if serde_json::from_str::<Note>(&text).is_err() {
                    tracing::warn!(bytes = text.len(), "unreadable event from another instance");
                }
                continue;
            };
            // Already delivered by the catch-up (the note came late):
            // once is enough.
            if let Some(news) = event.news() {
                if !lock(recent).remember(news) {
                    continue;
                }
            }
            deliver(state, event).await;
        }
        "the connection closed".into()
    }
}

/// Polls `connection` (it delivers notifications only while polled) and
/// forwards each notification's payload to `heard`, until it fails or
/// nobody listens.
async fn forward<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    heard: Option<mpsc::UnboundedSender<String>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(n)) => {
                if let Some(heard) = &heard {
                    if heard.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "event connection failed");
                return;
            }
        }
    }
}

/// What a heard notification says, unless this instance sent it.
fn decode(instance: &str, text: &str) -> Option<WireEvent> {
    let note = serde_json::from_str::<Note>(text).ok()?;
    (note.from != instance).then_some(note.event)
}

/// Delivers what the store confirms of one event another instance caused.
async fn deliver(state: &AppState, event: WireEvent) {
    let event = match event.confirmed(state.store.as_ref()).await {
        Ok(Some(event)) => event,
        Ok(None) => return,
        Err(error) => {
            // A waiting terminal reads the store at its timeout anyway.
            tracing::warn!(%error, "cannot read what another instance announced");
            return;
        }
    };
    match &event {
        // Created here, ended there: forget it here too.
        HubEvent::Ended { view } => {
            state.pending.ended(&view.id);
        }
        HubEvent::TerminalDisabled { terminal_id }
        | HubEvent::TerminalKeyRotated { terminal_id } => state.terminals.forget(terminal_id),
        _ => {}
    }
    state.hub.publish_from_peer(event);
}

fn lock(recent: &Mutex<Recent>) -> std::sync::MutexGuard<'_, Recent> {
    // A set of ids: a panic elsewhere cannot leave it half-updated in a way
    // that matters (at worst one event is delivered twice, which is safe).
    recent.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The last [`RECENT_MAX`] transaction events this instance sent or heard,
/// oldest first out. Hearing one twice is safe (hearers read the store, and
/// relays and waiting terminals drop what they know), so this only spares
/// the catch-up a read per event.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<News>,
    known: HashSet<News>,
}

impl Recent {
    /// Remembers `news`; whether it was new.
    fn remember(&mut self, news: News) -> bool {
        if !self.known.insert(news) {
            return false;
        }
        self.order.push_back(news);
        if self.order.len() > RECENT_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.known.remove(&oldest);
            }
        }
        true
    }
}

/// The hub's end of the outbox: called as this instance publishes.
#[derive(Debug)]
struct Forwarder {
    recent: Arc<Mutex<Recent>>,
    sender: mpsc::Sender<News>,
}

impl Forward for Forwarder {
    fn forward(&self, news: News) {
        lock(&self.recent).remember(news);
        // Full (the database is behind) or closed (shutting down): the other
        // instances' catch-up finds the event in the audit log.
        if self.sender.try_send(news).is_err() {
            Metrics::peer_events("dropped", 1);
        }
    }
}

/// Sends this instance's transaction news to the others, and reads the audit
/// log for transaction events it has not heard of, over one connection of
/// its own.
struct Outbox {
    endpoint: Endpoint,
    instance: String,
    recent: Arc<Mutex<Recent>>,
    news: mpsc::Receiver<News>,
    connection: Option<Connection>,
    /// After a failure, no new connection is tried before this: a database
    /// that is down is not asked, nor logged about, several times a second.
    retry_at: tokio::time::Instant,
    /// The last audit row the catch-up has looked at.
    cursor: i64,
}

impl Outbox {
    /// Connects, and starts the catch-up after the audit log's last row:
    /// what came before, this instance had no one to tell of.
    async fn open(
        endpoint: Endpoint,
        instance: String,
        recent: Arc<Mutex<Recent>>,
        news: mpsc::Receiver<News>,
    ) -> Result<Outbox, ServerError> {
        let mut outbox = Outbox {
            endpoint,
            instance,
            recent,
            news,
            connection: None,
            retry_at: tokio::time::Instant::now(),
            cursor: 0,
        };
        let client = outbox.client().await?;
        outbox.cursor = client
            .query_one("SELECT COALESCE(max(seq), 0) FROM audit_log", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(failed)?;
        Ok(outbox)
    }

    /// The connection, opened again if the last one failed.
    async fn client(&mut self) -> Result<&tokio_postgres::Client, ServerError> {
        let connection = match self.connection.take() {
            Some(open) if !open.client.is_closed() => open,
            _ => {
                let connection = Connection::open(&self.endpoint, None).await?;
                // Notes need no durability (they are not stored, and the
                // audit log covers a lost one): the commit need not wait for
                // its WAL flush, so it holds PostgreSQL's notify lock for
                // microseconds.
                connection
                    .client
                    .batch_execute("SET synchronous_commit TO off")
                    .await
                    .map_err(failed)?;
                connection
            }
        };
        Ok(&self.connection.insert(connection).client)
    }

    /// Whether a connection is open or may be opened now.
    fn may_connect(&self) -> bool {
        self.connection.is_some() || tokio::time::Instant::now() >= self.retry_at
    }

    /// Drops the connection after a failure. Only a failure on a connection
    /// opened for this very attempt waits a while before the next: one that
    /// had been open may simply have been closed by the database since its
    /// last use (a restart, an idle timeout, an operator), which the client
    /// learns only when it next sends, and a new one is worth trying at once.
    fn connection_failed(&mut self, was_open: bool) {
        self.connection = None;
        if !was_open {
            self.retry_at = tokio::time::Instant::now() + RECONNECT_WAIT;
        }
    }

    /// Whether a connection was open and, as far as the client knows, alive
    /// before an attempt: if the attempt fails, it may be worth another.
    fn open_before(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|open| !open.client.is_closed())
    }

    async fn run(&mut self, state: &AppState) {
        let mut every = tokio::time::interval(CATCH_UP_PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                news = self.news.recv() => {
                    let Some(first) = news else { return };
                    let mut batch = vec![first];
                    while batch.len() < NOTES_PER_STATEMENT {
                        match self.news.try_recv() {
                            Ok(news) => batch.push(news),
                            Err(_) => break,
                        }
                    }
                    self.send_or_drop(&batch).await;
                }
                _ = every.tick() => {
                    // The cursor stays: the next read resumes where this one stopped.
                    if !self.may_connect() {
                        continue;
                    }
                    let was_open = self.open_before();
                    if let Err(error) = self.catch_up(state).await {
                        tracing::warn!(%error, "cannot read the audit log for missed events");
                        self.connection_failed(was_open);
                    }
                }
            }
        }
    }

    /// Sends `batch`, on a new connection if the open one fails, or drops
    /// it: not retried later, since the other instances' catch-up delivers
    /// it from the audit log.
    async fn send_or_drop(&mut self, batch: &[News]) {
        let notes = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        if !self.may_connect() {
            Metrics::peer_events("dropped", notes);
            return;
        }
        let mut was_open = self.open_before();
        let mut sent = self.send(batch).await;
        if sent.is_err() && was_open {
            // Once more, on a new connection (see `connection_failed`).
            self.connection_failed(true);
            was_open = false;
            sent = self.send(batch).await;
        }
        match sent {
            Ok(()) => Metrics::peer_events("sent", notes),
            Err(error) => {
                tracing::warn!(%error, notes, "cannot send events to other instances");
                Metrics::peer_events("dropped", notes);
                self.connection_failed(was_open);
            }
        }
    }

    /// One statement, one autocommitted transaction, one note per event.
    async fn send(&mut self, batch: &[News]) -> Result<(), ServerError> {
        let notes: Vec<String> = batch
            .iter()
            .filter_map(|news| {
                serde_json::to_string(&Note {
                    from: self.instance.clone(),
                    event: WireEvent::from(*news),
                })
                .ok()
            })
            .collect();
        self.client()
            .await?
            .execute(
                "SELECT pg_notify($1, note) FROM unnest($2::text[]) AS note",
                &[&CHANNEL, &notes],
            )
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Delivers the transaction events chained into the audit log since the
    /// last look that this instance has neither sent nor heard: those of an
    /// instance that died between its commit and its note. A row is chained
    /// after its write commits, so the store shows what it records.
    async fn catch_up(&mut self, state: &AppState) -> Result<(), ServerError> {
        loop {
            let cursor = self.cursor;
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT seq, event, transaction_id FROM audit_log
                     WHERE seq > $1 AND transaction_id IS NOT NULL
                     ORDER BY seq LIMIT $2",
                    &[&cursor, &CATCH_UP_ROWS],
                )
                .await
                .map_err(failed)?;
            let full = rows.len() == usize::try_from(CATCH_UP_ROWS).unwrap_or(usize::MAX);
            let mut missed = 0u64;
            for row in &rows {
                let (seq, event, id): (i64, String, String) = (
                    row.try_get(0).map_err(failed)?,
                    row.try_get(1).map_err(failed)?,
                    row.try_get(2).map_err(failed)?,
                );
                self.cursor = seq;
                let Some(news) = news_of(&event, &id) else {
                    continue;
                };
                if lock(&self.recent).remember(news) {
                    missed += 1;
                    deliver(state, WireEvent::from(news)).await;
                }
            }
            if missed > 0 {
                Metrics::peer_events("caught_up", missed);
                tracing::info!(
                    events = missed,
                    "delivered events no note told of (an instance died after its commit?)"
                );
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// The transaction news an audit row records, if any: its creation, or
/// its end (`transaction_` and a final status, as the stores write it).
fn news_of(event: &str, transaction_id: &str) -> Option<News> {
    let id = transaction_id.parse().ok()?;
    if event == "transaction_created" {
        return Some(News::Created(id));
    }
    let status = TransactionStatus::parse(event.strip_prefix("transaction_")?)?;
    status.is_final().then_some(News::Ended(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{pending, seed, signed, NOW};
    use crate::store::postgres::scratch;
    use crate::store::PgStore;

    /// Each write that disables a device or a terminal or rotates a key
    /// notifies it in its own transaction (PostgreSQL migration 8), named by
    /// the writing instance, in the shape `decode` reads; a write that rolls
    /// back notifies nothing. Transaction writes notify nothing themselves
    /// (the outbox sends their news after the commit), nor do writes
    /// without an event (accounts, terminals, devices created).
    #[tokio::test]
    async fn security_writes_notify_their_events_when_they_commit() {
        let Some(url) = scratch::database_or_skip().await else {
            return;
        };
        let endpoint = Endpoint::new(&url, None).unwrap();
        let store = PgStore::connect(endpoint.clone(), NOW).await.unwrap();
        let mut link = Link::open(&endpoint).await.unwrap();

        seed(&store).await;
        store
            .insert_transaction(pending(1, "k1", 100))
            .await
            .unwrap();
        store.apply_signed_confirmation(signed(1, 1)).await.unwrap();
        {
            // An audit row that would notify, rolled back.
            let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            tokio::spawn(connection);
            let tx = client.transaction().await.unwrap();
            tx.execute(
                "INSERT INTO audit_staging (at, transaction_id, event, detail)
                 VALUES (1, NULL, 'device_disabled', '{\"device\": \"dev_9\"}')",
                &[],
            )
            .await
            .unwrap();
            tx.rollback().await.unwrap();
        }
        store
            .rotate_terminal_key("term_1", [5; 32], NOW)
            .await
            .unwrap();
        store.disable_terminal("term_1", NOW).await.unwrap();
        store.disable_device("dev_1", NOW).await.unwrap();

        let expected = [
            WireEvent::TerminalKeyRotated {
                terminal_id: "term_1".into(),
            },
            WireEvent::TerminalDisabled {
                terminal_id: "term_1".into(),
            },
            WireEvent::DeviceDisabled {
                device_id: "dev_1".into(),
            },
        ];
        for want in expected {
            let text = tokio::time::timeout(Duration::from_secs(5), link.heard.recv())
                .await
                .expect("a notification within 5 s")
                .unwrap();
            assert_eq!(decode("another instance", &text), Some(want), "{text}");
            assert_eq!(decode(store.instance(), &text), None, "its own: {text}");
        }
        let more = tokio::time::timeout(Duration::from_millis(300), link.heard.recv()).await;
        assert!(more.is_err(), "nothing else: {more:?}");
    }

    /// The outbox's notes reach a listener, named by the sending instance,
    /// in the shape `decode` reads, in the order sent; many go out in one
    /// statement.
    #[tokio::test]
    async fn the_outbox_sends_one_note_per_event() {
        let Some(url) = scratch::database_or_skip().await else {
            return;
        };
        let mut at = OutboxAndListener::open(&url).await;
        let batch: Vec<News> = (0..300)
            .map(|i| match i % 2 {
                0 => News::Created(numbered(i)),
                _ => News::Ended(numbered(i)),
            })
            .collect();
        at.outbox.send(&batch).await.unwrap();
        for news in batch {
            let text = at.next_heard().await;
            assert_eq!(
                decode("another instance", &text),
                Some(WireEvent::from(news))
            );
            assert_eq!(decode("me", &text), None, "its own: {text}");
        }
    }

    /// An outbox of instance "me" on a migrated database (the outbox reads
    /// the audit log), and a connection listening on the channel.
    struct OutboxAndListener {
        outbox: Outbox,
        link: Link,
        /// Held, not used: the database stays migrated and the news
        /// channel open while the test runs.
        _store: PgStore,
        _news: mpsc::Sender<News>,
    }

    impl OutboxAndListener {
        async fn open(url: &str) -> OutboxAndListener {
            let endpoint = Endpoint::new(url, None).unwrap();
            let store = PgStore::connect(endpoint.clone(), NOW).await.unwrap();
            let link = Link::open(&endpoint).await.unwrap();
            let (sender, news) = mpsc::channel(1);
            let recent = Arc::new(Mutex::new(Recent::default()));
            let outbox = Outbox::open(endpoint, "me".into(), recent, news)
                .await
                .unwrap();
            OutboxAndListener {
                outbox,
                link,
                _store: store,
                _news: sender,
            }
        }

        /// The next note the listener hears, within 5 s.
        async fn next_heard(&mut self) -> String {
            tokio::time::timeout(Duration::from_secs(5), self.link.heard.recv())
                .await
                .expect("a notification within 5 s")
                .unwrap()
        }
    }

    /// A connection the database closed since its last use, which the
    /// client has not noticed yet (nothing polled it meanwhile), fails the
    /// next send: the notes go out at once on a new connection instead of
    /// being dropped, and the next ones follow without waiting.
    #[tokio::test]
    async fn notes_sent_on_a_connection_the_database_closed_go_out_on_a_new_one() {
        let Some(url) = scratch::database_or_skip().await else {
            return;
        };
        let mut at = OutboxAndListener::open(&url).await;
        let pid: i32 = at
            .outbox
            .client()
            .await
            .unwrap()
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        // On a thread of its own, so this runtime (and the outbox's
        // connection task on it) runs nothing until the backend is gone.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(terminate(&url, pid));
            });
        });
        assert!(
            !at.outbox.connection.as_ref().unwrap().client.is_closed(),
            "the client has not noticed yet"
        );
        for i in 0..2 {
            at.outbox.send_or_drop(&[News::Created(numbered(i))]).await;
            let text = at.next_heard().await;
            assert_eq!(
                decode("another instance", &text),
                Some(WireEvent::from(News::Created(numbered(i))))
            );
        }
    }

    /// A failure on a connection that had been open is followed by a new
    /// one at once; a failure on a new one waits `RECONNECT_WAIT`.
    #[tokio::test]
    async fn only_a_failure_on_a_new_connection_waits_before_the_next() {
        let (_sender, news) = mpsc::channel(1);
        let mut outbox = Outbox {
            endpoint: Endpoint::new("host=127.0.0.1 port=1 user=nobody", None).unwrap(),
            instance: "me".into(),
            recent: Arc::new(Mutex::new(Recent::default())),
            news,
            connection: None,
            retry_at: tokio::time::Instant::now(),
            cursor: 0,
        };
        outbox.connection_failed(true);
        assert!(outbox.may_connect());
        outbox.connection_failed(false);
        assert!(!outbox.may_connect());
    }

    /// Terminates backend `pid` and waits until it has gone.
    async fn terminate(url: &str, pid: i32) {
        let (db, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
        tokio::spawn(connection);
        db.execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        for _ in 0..500 {
            let left = db
                .query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .unwrap();
            if left.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("backend {pid} still there after 5 s");
    }

    /// A distinct transaction id for each `i`.
    fn numbered(i: u32) -> TransactionId {
        let mut id = [0; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        TransactionId(id)
    }

    #[test]
    fn recent_remembers_the_last_events_and_forgets_the_oldest() {
        let news = |i: u32| News::Ended(numbered(i));
        let mut recent = Recent::default();
        assert!(recent.remember(news(0)));
        assert!(!recent.remember(news(0)), "known");
        assert!(
            recent.remember(News::Created(TransactionId([0; 16]))),
            "another kind"
        );
        for i in 1..=u32::try_from(RECENT_MAX).unwrap() {
            assert!(recent.remember(news(i)));
        }
        assert_eq!(recent.order.len(), RECENT_MAX);
        assert_eq!(recent.known.len(), RECENT_MAX);
        assert!(recent.remember(news(0)), "the oldest is forgotten");
        assert!(
            !recent.remember(news(u32::try_from(RECENT_MAX).unwrap())),
            "the newest is not"
        );
    }

    #[test]
    fn audit_rows_name_the_news_the_trigger_did() {
        let id = TransactionId([3; 16]);
        let hex = id.to_hex();
        assert_eq!(
            news_of("transaction_created", &hex),
            Some(News::Created(id))
        );
        for status in ["settled", "rejected", "expired", "failed"] {
            let event = format!("transaction_{status}");
            assert_eq!(news_of(&event, &hex), Some(News::Ended(id)), "{event}");
        }
        for status in [
            TransactionStatus::Settled,
            TransactionStatus::Rejected,
            TransactionStatus::Expired,
            TransactionStatus::Failed,
        ] {
            let event = format!("transaction_{}", status.as_str());
            assert_eq!(news_of(&event, &hex), Some(News::Ended(id)), "{event}");
        }
        assert_eq!(news_of("transaction_pending", &hex), None);
        assert_eq!(news_of("device_disabled", &hex), None);
        assert_eq!(news_of("transaction_created", "not an id"), None);
    }

    #[test]
    fn notes_name_what_changed_and_own_or_unreadable_ones_are_dropped() {
        let id = TransactionId([7; 16]);
        let text = serde_json::to_string(&Note {
            from: "them".into(),
            event: WireEvent::Ended { id },
        })
        .unwrap();
        assert_eq!(decode("me", &text), Some(WireEvent::Ended { id }));
        assert_eq!(decode("them", &text), None, "its own note");
        for bad in [
            "",
            "{}",
            "not json",
            r#"{"from":"x","event":{"kind":"ended"}}"#,
            r#"{"from":"x","event":{"kind":"ended","id":"zz"}}"#,
            r#"{"from":"x","event":{"kind":"settled","id":"07070707070707070707070707070707"}}"#,
            // A view smuggled in is refused, not read.
            r#"{"from":"x","event":{"kind":"ended","id":"07070707070707070707070707070707","view":{}}}"#,
        ] {
            assert_eq!(decode("me", bad), None, "{bad}");
        }
    }
}
