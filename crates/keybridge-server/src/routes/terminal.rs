//! Terminal endpoints: create a transaction, then learn its outcome by
//! long-poll or server-sent events. A terminal sees only its own transactions.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use keybridge_proto::api::{CreateTransaction, TransactionView};
use keybridge_proto::TransactionId;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::extract::{ApiJson, ApiQuery, IdempotencyKey, PreferWait, Terminal, TxId};
use crate::error::ApiError;
use crate::hub::{shutdown_begun, HubEvent, Subscription, Topic};
use crate::service::{self, Created};
use crate::state::AppState;
use crate::store::TerminalRecord;

/// Longest a long-poll may hold a request open.
pub const WAIT_S_MAX: u64 = 60;
const SSE_KEEP_ALIVE_S: u64 = 15;

/// `POST /v1/transactions`: 202 with the pending transaction; 200 with the
/// original for a replayed `Idempotency-Key`. With `Prefer: wait=N` the
/// answer waits up to `N` seconds for the end: 201 if the new transaction
/// ended by then, 202 if not (one request instead of create + long-poll).
pub async fn create(
    State(state): State<AppState>,
    Terminal(terminal): Terminal,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
    ApiJson(body): ApiJson<CreateTransaction>,
) -> Result<Response, ApiError> {
    let creation =
        service::create_transaction(&state, &terminal, &key, body, wait.is_some()).await?;
    let (status, view) = match (creation.created, creation.ends, wait) {
        (Created::New(view), Some(ends), Some(wait_s)) => {
            let id = view.id;
            let view = wait_for_end(&state, &terminal, id, ends, wait_s).await?;
            match view.status.is_final() {
                true => (StatusCode::CREATED, view),
                false => (StatusCode::ACCEPTED, view),
            }
        }
        (Created::New(view), _, _) => (StatusCode::ACCEPTED, view),
        (Created::Replayed(view), _, _) => (StatusCode::OK, view),
    };
    let mut response = (status, Json(view)).into_response();
    if let Some(wait_s) = wait {
        if let Ok(applied) = HeaderValue::from_str(&format!("wait={wait_s}")) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("preference-applied"), applied);
        }
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    wait: Option<u64>,
}

/// The terminal's own transaction, or 404 (also for other terminals' ids).
async fn own(
    state: &AppState,
    terminal: &TerminalRecord,
    id: &TransactionId,
) -> Result<TransactionView, ApiError> {
    match state.store.get_transaction(id).await? {
        Some(t) if t.terminal_id == terminal.id => Ok(t.view()),
        _ => Err(ApiError::NotFound),
    }
}

/// `GET /v1/transactions/{id}?wait=N`: answers at once if final or `N` is 0,
/// otherwise as soon as it becomes final or `N` seconds pass.
pub async fn get(
    State(state): State<AppState>,
    Terminal(terminal): Terminal,
    TxId(id): TxId,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<TransactionView>, ApiError> {
    let wait_s = query.wait.unwrap_or(0);
    if wait_s > WAIT_S_MAX {
        return Err(ApiError::invalid(format!(
            "wait must be 0 to {WAIT_S_MAX} seconds"
        )));
    }
    // Subscribe before reading, so an end between the two is not missed.
    let events = state.hub.subscribe(Topic::Transaction(id));
    let view = own(&state, &terminal, &id).await?;
    if view.status.is_final() || wait_s == 0 {
        return Ok(Json(view));
    }
    Ok(Json(
        wait_for_end(&state, &terminal, id, events, wait_s).await?,
    ))
}

/// The transaction once it has ended, or as it is after `wait_s` seconds (or
/// at shutdown). `events` must have been subscribed before the caller last
/// saw the transaction pending.
async fn wait_for_end(
    state: &AppState,
    terminal: &TerminalRecord,
    id: TransactionId,
    mut events: Subscription,
    wait_s: u64,
) -> Result<TransactionView, ApiError> {
    let deadline = tokio::time::sleep(Duration::from_secs(wait_s));
    let shutdown = shutdown_begun(state.hub.shutdown_signal());
    tokio::pin!(deadline, shutdown);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = &mut shutdown => break,
            event = events.recv() => match event {
                Ok(HubEvent::Ended { view }) if view.id == id => return Ok(view),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    let view = own(state, terminal, &id).await?;
                    if view.status.is_final() {
                        return Ok(view);
                    }
                }
                Err(RecvError::Closed) => break,
            },
        }
    }
    own(state, terminal, &id).await
}

/// `GET /v1/transactions/{id}/events`: `event: status` with the view now,
/// then at its end; the stream closes after a final status.
pub async fn events(
    State(state): State<AppState>,
    Terminal(terminal): Terminal,
    TxId(id): TxId,
) -> Result<impl IntoResponse, ApiError> {
    let events = state.hub.subscribe(Topic::Transaction(id));
    let view = own(&state, &terminal, &id).await?;
    let shutdown = state.hub.shutdown_signal();
    let stream = status_stream(state, terminal, id, view, events, shutdown);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(SSE_KEEP_ALIVE_S))))
}

enum Phase {
    // Boxed: a view is large next to the empty variants.
    Send(Box<TransactionView>),
    Wait,
    Done,
}

struct StreamState {
    state: AppState,
    terminal: TerminalRecord,
    id: TransactionId,
    events: Subscription,
    shutdown: watch::Receiver<bool>,
    phase: Phase,
}

fn status_event(view: &TransactionView) -> Result<Event, axum::Error> {
    Event::default().event("status").json_data(view)
}

fn status_stream(
    state: AppState,
    terminal: TerminalRecord,
    id: TransactionId,
    first: TransactionView,
    events: Subscription,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, axum::Error>> {
    let start = StreamState {
        state,
        terminal,
        id,
        events,
        shutdown,
        phase: Phase::Send(Box::new(first)),
    };
    stream::unfold(start, |mut s| async move {
        loop {
            match std::mem::replace(&mut s.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Send(view) => {
                    s.phase = if view.status.is_final() {
                        Phase::Done
                    } else {
                        Phase::Wait
                    };
                    return Some((status_event(&view), s));
                }
                Phase::Wait => {
                    s.phase = Phase::Wait;
                    let next = tokio::select! {
                        _ = shutdown_begun(s.shutdown.clone()) => return None,
                        event = s.events.recv() => event,
                    };
                    match next {
                        Ok(HubEvent::Ended { view }) if view.id == s.id => {
                            s.phase = Phase::Send(Box::new(view));
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => {
                            // Fell behind: the store says whether we missed the end.
                            match own(&s.state, &s.terminal, &s.id).await {
                                Ok(view) if view.status.is_final() => {
                                    s.phase = Phase::Send(Box::new(view))
                                }
                                Ok(_) => {}
                                Err(_) => return None,
                            }
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        }
    })
}
