//! Hub events between server instances on one PostgreSQL database, over
//! LISTEN/NOTIFY on one channel.
//!
//! A relay keeps its WebSocket open to one instance, a terminal waits on
//! whichever instance its load balancer picked, and the answer may arrive at
//! a third. Every write that causes an event notifies it inside its own
//! database transaction (a trigger on the audit rows it stages, PostgreSQL
//! migration 5), so PostgreSQL delivers the notification exactly when the
//! write commits: whoever hears it and reads the store sees the change, and
//! an instance that dies right after its commit cannot lose the event (when
//! each instance sent its events itself after the commit, one killed in
//! between left a payment unannounced until it expired). Each instance
//! listens, and delivers what it hears from the others to its own
//! subscribers; its own events it delivered already, and skips.
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

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use keybridge_proto::api::TransactionStatus;
use keybridge_proto::TransactionId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::error::ServerError;
use crate::hub::HubEvent;
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
/// One event as it travels: what changed, and the instance whose write
/// caused it (its connections' `application_name`). Written by the trigger
/// of migration `0005_notify_at_commit`, in this shape.
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

impl WireEvent {
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
/// database at `endpoint`; `instance` is this instance's id
/// ([`crate::store::PgStore::instance`]), whose own events are skipped.
/// Fails if the first connection fails (a wrong URL should stop the start);
/// after that, the returned task reconnects by itself until aborted.
pub async fn start(
    mut endpoint: Endpoint,
    instance: String,
    state: AppState,
) -> Result<JoinHandle<()>, ServerError> {
    endpoint.config.application_name(APPLICATION_NAME);
    let link = Link::open(&endpoint).await?;
    tracing::info!(%instance, channel = CHANNEL, "sharing events with other instances");
    Ok(tokio::spawn(run(endpoint, instance, state, link)))
}

async fn run(endpoint: Endpoint, instance: String, state: AppState, mut link: Link) {
    loop {
        let error = link.serve(&instance, &state).await;
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

/// One listening connection and the notifications it has received.
struct Link {
    /// Held, not used: dropping it would close the connection.
    _client: tokio_postgres::Client,
    heard: mpsc::UnboundedReceiver<String>,
    driver: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Link {
    async fn open(endpoint: &Endpoint) -> Result<Link, ServerError> {
        let failed =
            |e: tokio_postgres::Error| ServerError::Store(StoreError::Backend(e.to_string()));
        let (heard_tx, heard) = mpsc::unbounded_channel();
        let (client, driver) = match &endpoint.tls {
            Some(tls) => {
                let (client, connection) =
                    endpoint.config.connect(tls.clone()).await.map_err(failed)?;
                (client, tokio::spawn(forward(connection, heard_tx)))
            }
            None => {
                let (client, connection) = endpoint.config.connect(NoTls).await.map_err(failed)?;
                (client, tokio::spawn(forward(connection, heard_tx)))
            }
        };
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(failed)?;
        Ok(Link {
            _client: client,
            heard,
            driver,
        })
    }

    /// Delivers what is heard until the connection fails; returns why.
    async fn serve(&mut self, instance: &str, state: &AppState) -> String {
        while let Some(text) = self.heard.recv().await {
            deliver(instance, state, &text).await;
        }
        "the connection closed".into()
    }
}

/// Polls `connection` (it delivers notifications only while polled) and
/// forwards each notification's payload, until it fails or nobody listens.
async fn forward<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    heard: mpsc::UnboundedSender<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(n)) => {
                if heard.send(n.payload().to_owned()).is_err() {
                    return;
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

/// Delivers what the store confirms of one heard notification.
async fn deliver(instance: &str, state: &AppState, text: &str) {
    let Some(event) = decode(instance, text) else {
        if serde_json::from_str::<Note>(text).is_err() {
            tracing::warn!(bytes = text.len(), "unreadable event from another instance");
        }
        return;
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{pending, seed, signed, NOW};
    use crate::store::postgres::scratch;
    use crate::store::PgStore;

    /// Each write that causes an event notifies it in its own transaction
    /// (PostgreSQL migration 5), named by the writing instance, in the shape
    /// `decode` reads; a write that rolls back notifies nothing; writes
    /// without an event (accounts, terminals, devices created) are silent.
    #[tokio::test]
    async fn writes_notify_their_events_when_they_commit() {
        let Some(url) = scratch::database_or_skip().await else {
            return;
        };
        let endpoint = Endpoint::new(&url, None).unwrap();
        let store = PgStore::connect(endpoint.clone(), NOW).await.unwrap();
        let mut link = Link::open(&endpoint).await.unwrap();

        seed(&store).await;
        let id = TransactionId([1; 16]);
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
                 VALUES (1, $1, 'transaction_created', '{}')",
                &[&TransactionId([9; 16]).to_hex()],
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
            WireEvent::Created { id },
            WireEvent::Ended { id },
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
