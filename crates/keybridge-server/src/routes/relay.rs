//! Relay endpoints: the WebSocket that carries confirmation requests to the
//! payer's phone and, on the same socket, the device's answers back; and the
//! HTTP endpoint a relay may post an answer to instead.

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::Response;
use axum::Json;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use keybridge_proto::api::{
    b64, Confirmation, RelayAnswer, RelayMessage, SignatureMethod, TransactionView,
};
use keybridge_proto::{AccountId, TransactionId};
use tokio::sync::broadcast::error::RecvError;

use super::extract::{ApiJson, Device, TxId};
use crate::error::ApiError;
use crate::hub::{shutdown_begun, HubEvent, Topic};
use crate::service;
use crate::state::AppState;
use crate::store::{DeviceRecord, DeviceStatus};

/// Relays send only their answers (a signature or an OCRA response, well
/// under this); bound what they may send anyway.
const RELAY_MESSAGE_LEN_MAX: usize = 4096;
/// tungstenite zero-fills its read buffer up to this size before every read
/// of the socket (128 KiB by default: a 128 KiB memset per frame received,
/// 1.7 % of a bench run's CPU). A relay's frames fit in 4 KiB, and a longer
/// one still grows the buffer to its length.
const RELAY_READ_BUFFER_LEN: usize = 4096;

/// `POST /v1/confirmations/{id}`: 200 with the outcome, whatever it is.
pub async fn confirm(
    State(state): State<AppState>,
    Device(device): Device,
    TxId(id): TxId,
    ApiJson(confirmation): ApiJson<Confirmation>,
) -> Result<Json<TransactionView>, ApiError> {
    service::confirm(&state, &device, &id, &confirmation)
        .await
        .map(Json)
}

/// `GET /v1/relay`: upgrade to a WebSocket for this device's account.
pub async fn connect(
    State(state): State<AppState>,
    Device(device): Device,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // A revoked device is sent no more requests (its confirmations in flight
    // are still judged, and refused as `certificate_revoked`).
    if device.is_revoked() {
        return Err(ApiError::Unauthorized);
    }
    let upgrade = upgrade.map_err(|_| ApiError::invalid("expected a WebSocket upgrade"))?;
    tracing::info!(device = %device.id, account = %device.account, "relay connected");
    // The relay times its patience by our pings: tell it how often they come.
    let interval = HeaderValue::from(state.relay_ping_interval_ms);
    let mut response = upgrade
        .max_message_size(RELAY_MESSAGE_LEN_MAX)
        .read_buffer_size(RELAY_READ_BUFFER_LEN)
        .on_upgrade(move |socket| session(state, device, socket));
    response
        .headers_mut()
        .insert(keybridge_proto::api::PING_INTERVAL_HEADER, interval);
    Ok(response)
}

/// Judges a `RelayAnswer` from the socket as `POST /v1/confirmations/{id}`
/// would, and says what that endpoint would have answered. `None` for a frame
/// that is not an answer (logged, ignored).
///
/// `device` is the session's snapshot, read when the relay connected. For
/// signatures that is enough: whether the device is still active and
/// unrevoked, and whether its counter moved forward, is decided again by the
/// payment unit on the stored row, atomically with the payment
/// ([`crate::payment::decide`]); and disabling a device closes its session.
/// What a snapshot changes is only the race with a disable: an answer judged
/// in that instant ends its transaction `rejected/unknown_device` instead of
/// being refused with 401. OCRA reads the device fresh, because its counter
/// look-ahead starts from the stored counter.
async fn answer(state: &AppState, device: &DeviceRecord, text: &str) -> Option<RelayMessage> {
    let RelayAnswer::Confirmation {
        transaction_id,
        confirmation,
    } = match super::extract::json_object::<RelayAnswer>(text.as_bytes()) {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(device = %device.id, "ignoring a relay frame that is not an answer: {e}");
            return None;
        }
    };
    let judged = async {
        if device.method != SignatureMethod::Ocra {
            return service::confirm(state, device, &transaction_id, &confirmation).await;
        }
        let fresh = state
            .store
            .get_device(&device.id)
            .await?
            .filter(|d| d.status == DeviceStatus::Active)
            .ok_or(ApiError::Unauthorized)?;
        service::confirm(state, &fresh, &transaction_id, &confirmation).await
    };
    Some(match judged.await {
        Ok(view) => RelayMessage::ConfirmationResult {
            transaction_id,
            status: 200,
            view: Some(Box::new(view)),
            error: None,
        },
        Err(e) => RelayMessage::ConfirmationResult {
            transaction_id,
            status: e.status().as_u16(),
            view: None,
            error: Some(e.body()),
        },
    })
}

/// The server's half of a relay socket. Every frame must be taken by the
/// relay within `patience`: a relay that stops reading (a frozen app whose
/// phone still acknowledges TCP) fills the socket's buffers, and a send
/// without a limit then waited for good, holding the session, its socket
/// and its subscription, and no ping check could run to end it.
///
/// Not exercised end to end: on loopback the kernel grows the server's send
/// buffer to about 4 MB, some 13,000 unread requests; the unit test below
/// gives `Sink` a socket that takes nothing.
struct Sink<S = SplitSink<WebSocket, Message>> {
    frames: S,
    patience: Duration,
}

impl<S> Sink<S>
where
    S: futures_util::Sink<Message> + Unpin,
{
    async fn frame(&mut self, frame: Message) -> Result<(), ()> {
        match tokio::time::timeout(self.patience, self.frames.send(frame)).await {
            Ok(sent) => sent.map_err(|_| ()),
            Err(_) => {
                tracing::info!(
                    "relay took no frame for {:?}: closing its socket",
                    self.patience
                );
                Err(())
            }
        }
    }

    async fn send(&mut self, message: &RelayMessage) -> Result<(), ()> {
        let json = serde_json::to_string(message).map_err(|_| ())?;
        self.frame(Message::Text(json.into())).await
    }
}

/// Sends a request for every pending, unexpired transaction of `account` not
/// yet sent, and `Cancelled` for sent ones that are no longer pending.
async fn resync(
    state: &AppState,
    account: &AccountId,
    sink: &mut Sink,
    sent: &mut HashSet<TransactionId>,
) -> Result<(), ()> {
    let pending = state
        .store
        .pending_for_payer(account, state.now_unix_s())
        .await
        .map_err(|e| tracing::error!(error = %e, "relay resync failed"))?;
    let still: HashSet<TransactionId> = pending.iter().map(|t| t.id).collect();
    let gone: Vec<TransactionId> = sent.difference(&still).copied().collect();
    for transaction_id in gone {
        sent.remove(&transaction_id);
        sink.send(&RelayMessage::Cancelled { transaction_id })
            .await?;
    }
    for t in pending {
        if sent.insert(t.id) {
            let message = RelayMessage::ConfirmationRequest {
                transaction_id: t.id,
                payload: b64::encode(&t.payload),
            };
            sink.send(&message).await?;
        }
    }
    Ok(())
}

async fn session(state: AppState, device: DeviceRecord, socket: WebSocket) {
    let _open = crate::metrics::Open::count(crate::metrics::RELAY_CHANNELS);
    let (frames, mut incoming) = socket.split();
    // A relay that answers none of this many pings, or takes no frame for
    // as long, is gone (out of coverage, its NAT mapping lost, its app
    // frozen): its session ends.
    let interval = Duration::from_millis(state.relay_ping_interval_ms);
    let patience = interval * keybridge_proto::api::PINGS_MISSED_MAX;
    let mut sink = Sink { frames, patience };
    // Subscribe before the initial read so nothing created in between is lost;
    // `sent` drops the duplicates that overlap.
    let account = device.account.clone();
    let mut events = state.hub.subscribe(Topic::Payer(account.clone()));
    let mut sent = HashSet::new();
    if resync(&state, &account, &mut sink, &mut sent)
        .await
        .is_err()
    {
        return;
    }
    // Pings keep NATs and proxies from dropping an idle socket and tell the
    // relay the server is there (it reconnects after a silence); any frame
    // from the relay, its pongs included, tells the server the relay is.
    let mut ping = tokio::time::interval(interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut heard_at = tokio::time::Instant::now();
    let shutdown = shutdown_begun(state.hub.shutdown_signal());
    tokio::pin!(shutdown);
    loop {
        let step: Result<(), ()> = tokio::select! {
            _ = &mut shutdown => Err(()),
            _ = ping.tick() => {
                if heard_at.elapsed() > patience {
                    tracing::info!(device = %device.id, "relay answered no ping: closing its socket");
                    Err(())
                } else {
                    sink.frame(Message::Ping(Bytes::new())).await
                }
            }
            message = incoming.next() => match message.inspect(|_| heard_at = tokio::time::Instant::now()) {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Err(()),
                // The device's answer. Judged here, in turn: the relay holds
                // its card until it hears back, so answers come one at a time
                // per device, and a relay that floods gets backpressure.
                Some(Ok(Message::Text(text))) => match answer(&state, &device, &text).await {
                    Some(result) => {
                        // A result that shows the end tells this relay how its
                        // request ended: no `Cancelled` for it follows.
                        if let RelayMessage::ConfirmationResult {
                            transaction_id,
                            view: Some(view),
                            ..
                        } = &result
                        {
                            if view.status.is_final() {
                                sent.remove(transaction_id);
                            }
                        }
                        sink.send(&result).await
                    }
                    None => Ok(()),
                },
                // Pongs are handled by the library; other messages are ignored.
                Some(Ok(_)) => Ok(()),
            },
            event = events.recv() => match event {
                Ok(HubEvent::Created { view, payload }) if view.payer == account => {
                    if sent.insert(view.id) {
                        let message = RelayMessage::ConfirmationRequest {
                            transaction_id: view.id,
                            payload: b64::encode(&payload),
                        };
                        sink.send(&message).await
                    } else {
                        Ok(())
                    }
                }
                // Only for requests this relay was sent and has not had a
                // result for.
                Ok(HubEvent::Ended { view }) if view.payer == account => {
                    if sent.remove(&view.id) {
                        sink.send(&RelayMessage::Cancelled { transaction_id: view.id }).await
                    } else {
                        Ok(())
                    }
                }
                Ok(HubEvent::DeviceDisabled { device_id, .. }) if device_id == device.id => {
                    tracing::info!(device = %device.id, "closing relay of disabled device");
                    Err(())
                }
                Ok(_) => Ok(()),
                Err(RecvError::Lagged(_)) => resync(&state, &account, &mut sink, &mut sent).await,
                Err(RecvError::Closed) => Err(()),
            },
        };
        if step.is_err() {
            break;
        }
    }
    let _ = sink.frame(Message::Close(None)).await;
    tracing::info!(device = %device.id, "relay disconnected");
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A socket whose buffers are full for good: it takes no frame.
    struct Full;

    impl futures_util::Sink<Message> for Full {
        type Error = std::io::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), Self::Error> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_frame_the_relay_does_not_take_in_time_ends_the_session() {
        let patience = Duration::from_millis(50);
        let mut sink = Sink {
            frames: Full,
            patience,
        };
        let started = tokio::time::Instant::now();
        let message = RelayMessage::Cancelled {
            transaction_id: TransactionId([7; 16]),
        };
        // Bounded here too, so that losing the limit fails instead of hanging.
        let guard = Duration::from_secs(10);
        let sent = tokio::time::timeout(guard, sink.send(&message)).await;
        assert_eq!(sent, Ok(Err(())));
        let pinged = tokio::time::timeout(guard, sink.frame(Message::Ping(Bytes::new()))).await;
        assert_eq!(pinged, Ok(Err(())));
        let took = started.elapsed();
        assert!(
            took >= patience * 2 && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}
