//! Hub events between server instances on one PostgreSQL database, over
//! LISTEN/NOTIFY on one channel.
//!
//! A relay keeps its WebSocket open to one instance, a terminal waits on
//! whichever instance its load balancer picked, and the answer may arrive at
//! a third. Each instance sends every event it publishes with `pg_notify`
//! and delivers what it hears from the others to its own subscribers. The
//! notification goes out after the write it announces has committed (events
//! are published once the store call returns), so whoever hears it and reads
//! the store sees the change.
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
//! events. Nothing is lost for good, because the store stays the truth: a
//! relay re-reads its pending requests when it reconnects, and a waiting
//! terminal's long-poll ends at its timeout and reads the store.

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
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
const PAYLOAD_MAX: usize = 7_999;

/// One event as it travels: what changed, and the instance that published it.
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
}

impl WireEvent {
    fn of(event: &HubEvent) -> WireEvent {
        match event {
            HubEvent::Created { view, .. } => WireEvent::Created { id: view.id },
            HubEvent::Ended { view } => WireEvent::Ended { id: view.id },
            HubEvent::DeviceDisabled { device_id, .. } => WireEvent::DeviceDisabled {
                device_id: device_id.clone(),
            },
            HubEvent::TerminalDisabled { terminal_id } => WireEvent::TerminalDisabled {
                terminal_id: terminal_id.clone(),
            },
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
        })
    }
}

/// Connects `state`'s hub to the other instances on the database at `endpoint`.
/// Fails if the first connection fails (a wrong URL should stop the start);
/// after that, the returned task reconnects by itself until aborted.
pub async fn start(mut endpoint: Endpoint, state: AppState) -> Result<JoinHandle<()>, ServerError> {
    endpoint.config.application_name(APPLICATION_NAME);
    let instance = hex::encode(
        crate::random::bytes::<8>()
            .map_err(|e| ServerError::Config(format!("instance id: {e}")))?,
    );
    let link = Link::open(&endpoint).await?;
    let (outbound, events) = mpsc::unbounded_channel();
    if !state.hub.connect_peers(outbound) {
        return Err(ServerError::Config("the hub is already connected".into()));
    }
    tracing::info!(%instance, channel = CHANNEL, "sharing events with other instances");
    Ok(tokio::spawn(run(endpoint, instance, state, events, link)))
}

async fn run(
    endpoint: Endpoint,
    instance: String,
    state: AppState,
    mut events: mpsc::UnboundedReceiver<HubEvent>,
    mut link: Link,
) {
    loop {
        let error = link.serve(&instance, &state, &mut events).await;
        let Some(error) = error else {
            return; // The hub is gone: the server is shutting down.
        };
        tracing::warn!(%error, "lost the connection to other instances; reconnecting");
        link = loop {
            tokio::time::sleep(RECONNECT_WAIT).await;
            // What was published meanwhile could not be sent; drop it rather
            // than announce stale news late.
            while events.try_recv().is_ok() {}
            match Link::open(&endpoint).await {
                Ok(link) => break link,
                Err(error) => tracing::warn!(%error, "cannot reach the database for events"),
            }
        };
        // A terminal disabled meanwhile elsewhere was not heard of here.
        state.terminals.clear();
        tracing::info!("connected to other instances again");
    }
}

/// One listening connection and the notifications it has received.
struct Link {
    client: tokio_postgres::Client,
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
            client,
            heard,
            driver,
        })
    }

    /// Sends what is published here and delivers what is heard, until the
    /// connection fails (its error) or the hub is gone (`None`).
    async fn serve(
        &mut self,
        instance: &str,
        state: &AppState,
        events: &mut mpsc::UnboundedReceiver<HubEvent>,
    ) -> Option<String> {
        loop {
            tokio::select! {
                event = events.recv() => {
                    let event = event?;
                    let Some(text) = encode(instance, event) else { continue };
                    if let Err(e) = self
                        .client
                        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &text])
                        .await
                    {
                        return Some(e.to_string());
                    }
                }
                heard = self.heard.recv() => {
                    let Some(text) = heard else {
                        return Some("the connection closed".into());
                    };
                    deliver(instance, state, &text).await;
                }
            }
        }
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

fn encode(instance: &str, event: HubEvent) -> Option<String> {
    let note = Note {
        from: instance.to_owned(),
        event: WireEvent::of(&event),
    };
    let text = serde_json::to_string(&note).ok()?;
    if text.len() > PAYLOAD_MAX {
        // Only a device id this long could do it; those who miss the event
        // read the store (see the module doc).
        tracing::warn!(bytes = text.len(), "event too large to share; not sent");
        return None;
    }
    Some(text)
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
        HubEvent::TerminalDisabled { terminal_id } => state.terminals.forget(terminal_id),
        _ => {}
    }
    state.hub.publish_from_peer(event);
}

#[cfg(test)]
mod tests {
    use super::*;

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
