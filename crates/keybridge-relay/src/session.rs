//! The phone's session with the server.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use keybridge_proto::api::{
    b64, Confirmation, DeclineReason, RelayAnswer, RelayMessage, SignatureMethod, TransactionView,
};
use keybridge_proto::{AccountId, ConfirmationPayload, TransactionId};
use keybridge_terminal::{Client, ClientError};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use zeroize::Zeroizing;

use crate::driver::{self, DriverError, SignOutcome};
use crate::enroll::DeviceCredential;
use crate::link::{CardLink, CardLinkSpec};
use crate::outbox::{Kept, Outbox};
use crate::screen;
use keybridge_transport::LinkError;

/// The phone's screen: lines for the holder on stdout, unless the relay runs
/// quietly (benchmarks, where thousands of panels would drown the report).
/// A line that cannot be written (stdout a file on a full disk) is dropped:
/// `println!` would panic, and end the session that was printing.
macro_rules! say {
    ($quiet:expr, $($arg:tt)*) => {
        if !$quiet {
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "[phone] {}", format_args!($($arg)*));
        }
    };
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("device credential: {0}")]
    Credential(String),
    #[error("the server refused the device credential")]
    Unauthorized,
    #[error("card: {0}")]
    Card(#[from] DriverError),
    #[error("card link: {0}")]
    Link(#[from] keybridge_transport::LinkError),
    #[error("server: {0}")]
    Server(#[from] ClientError),
    #[error("PIN refused: {0:?}")]
    Pin(DeclineReason),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("a card worker panicked")]
    Poisoned,
    #[error("kept answers: {0}")]
    Outbox(std::io::Error),
}

/// What the phone's holder decides before the card is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Decline,
    /// Ask on standard input.
    Prompt,
}

/// Demonstrates the attack the server must catch: a relay that changes what
/// the card signs. Used by `keybridge demo --scenario tamper` and its tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Adds 100 minor units to the amount.
    Amount,
    /// Replaces the payee with `mallory`.
    Payee,
}

impl Tamper {
    fn apply(self, payload: &ConfirmationPayload) -> Option<Vec<u8>> {
        let mut p = payload.clone();
        match self {
            Tamper::Amount => p.amount.minor_units = p.amount.minor_units.saturating_add(100),
            Tamper::Payee => {
                p.payee = AccountId::new("mallory").ok()?;
                p.payee_name = "Mallory".into();
            }
        }
        p.encode().ok()
    }
}

#[derive(Debug)]
pub struct RelayOptions {
    pub credential: DeviceCredential,
    pub card: CardLinkSpec,
    /// `None`: ask on standard input for each payment.
    pub pin: Option<Zeroizing<String>>,
    pub decision: Decision,
    pub tamper: Option<Tamper>,
    /// How long to wait for the card to be present for one request.
    pub card_wait: Duration,
    /// Print nothing on the phone's screen (benchmarks); logs still go to tracing.
    pub quiet: bool,
    /// PEM certificates to trust for an `https` server (its CA or its
    /// self-signed certificate). `wss://` trusts only these.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Which applet to drive; `None`: the one the credential was enrolled with.
    pub applet: Option<SignatureMethod>,
    /// How long an answer sent on the WebSocket waits for the server's result
    /// before it is posted over HTTP instead ([`SOCKET_ANSWER_WAIT`]).
    pub answer_wait: Duration,
    /// Where the card's answers are kept until the server has judged them
    /// ([`crate::outbox`]), so a restarted phone delivers them instead of
    /// asking the card again. `None`: not kept (relays inside tests and the
    /// bench, which never restart).
    pub outbox: Option<std::path::PathBuf>,
    /// How long the server's socket may stay silent, not even a ping,
    /// before the relay takes the path for dead and reconnects, when the
    /// server did not announce its ping interval
    /// ([`keybridge_proto::api::PING_INTERVAL_HEADER`]; it does since
    /// 2026-11-27, and then that interval decides) ([`SERVER_SILENCE_MAX`]).
    pub silence_max: Duration,
}

impl RelayOptions {
    /// The applet this relay drives.
    pub fn signature_method(&self) -> SignatureMethod {
        self.applet.unwrap_or(self.credential.method)
    }
}

/// How often the time left is printed while waiting for the card.
const TIME_LEFT_EVERY_S: u64 = 5;

/// Bounded retries when the card goes away mid-conversation.
const CARD_ATTEMPTS_MAX: u32 = 3;

/// How long an answer sent on the WebSocket waits, by default, for the
/// server's result before the relay posts it over HTTP instead: a socket that
/// stays open but carries nothing back (a stuck proxy) must not keep the
/// payment from being judged while the confirmation window is still open.
pub const SOCKET_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// How long the server's socket may stay silent by default: three of its
/// pings (every 15 s). A mobile network can drop a connection without
/// closing it (coverage lost, a NAT mapping expired); without this the
/// phone would wait on it forever while its payments expired.
pub const SERVER_SILENCE_MAX: Duration = Duration::from_secs(45);

struct Context {
    options: RelayOptions,
    client: Client,
    link: Arc<Mutex<CardLink>>,
    seen: Mutex<HashSet<TransactionId>>,
    /// One payment at a time on the card, from VERIFY to the server's answer.
    /// The server requires each device's counter to grow, so signatures must
    /// reach it in the order the card made them: releasing the card before the
    /// submission lands would let a later signature overtake an earlier one
    /// and get the earlier payment refused as a replay.
    turn: tokio::sync::Mutex<()>,
    /// The open session's outgoing frames, `None` between sessions.
    outbox: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// Answers sent on the socket, waiting for their `ConfirmationResult`.
    waiting: Mutex<HashMap<TransactionId, oneshot::Sender<RelayMessage>>>,
    /// The card's answers not yet judged, on the phone's storage.
    kept: Option<Outbox>,
}

/// Runs the relay until the server refuses its credential or the process ends.
pub async fn run(options: RelayOptions) -> Result<(), RelayError> {
    let link = CardLink::open(&options.card)?;
    run_with_link(options, link).await
}

/// Runs the relay over a link already open (`options.card` only names it).
pub async fn run_with_link(options: RelayOptions, link: CardLink) -> Result<(), RelayError> {
    say!(
        options.quiet,
        "card reader ready at {} ({} applet)",
        options.card,
        options.signature_method().as_str()
    );
    let client = Client::with_ca_pem(
        &options.credential.server,
        &options.credential.credential,
        options.ca_cert_pem.as_deref(),
    )?;
    let kept = match &options.outbox {
        Some(dir) => Some(Outbox::open(dir).map_err(RelayError::Outbox)?),
        None => None,
    };
    let ctx = Arc::new(Context {
        link: Arc::new(Mutex::new(link)),
        client,
        options,
        seen: Mutex::new(HashSet::new()),
        turn: tokio::sync::Mutex::new(()),
        outbox: Mutex::new(None),
        waiting: Mutex::new(HashMap::new()),
        kept,
    });
    // Before any session, so before the card can sign anything new.
    deliver_kept(&ctx).await?;
    let mut backoff = RECONNECT_PAUSE_FIRST;
    loop {
        match connect(&ctx).await {
            Err(RelayError::Unauthorized) => return Err(RelayError::Unauthorized),
            Err(e) => tracing::warn!("cannot open a session: {e}"),
            Ok((ws, silence_max)) => {
                // Connected: the next loss is a new outage, not this one
                // going on, so it starts again from the shortest pause.
                backoff = RECONNECT_PAUSE_FIRST;
                match serve(&ctx, ws, silence_max).await {
                    Err(e) => tracing::warn!("server session ended: {e}"),
                    Ok(()) => tracing::info!("server closed the session"),
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_PAUSE_MAX);
    }
}

/// Pause before reconnecting after a session ends; it doubles while the
/// server stays unreachable, up to [`RECONNECT_PAUSE_MAX`].
const RECONNECT_PAUSE_FIRST: Duration = Duration::from_millis(250);
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(5);

/// A rustls connector trusting exactly the given PEM certificates, or `None`
/// (plain `ws://`, or the library's default for `wss://`, which has no roots).
fn tls_connector(
    ca_pem: Option<&[u8]>,
) -> Result<Option<tokio_tungstenite::Connector>, RelayError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let Some(pem) = ca_pem else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| RelayError::Protocol(format!("CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| RelayError::Protocol(format!("CA certificate: {e}")))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::Protocol(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(tokio_tungstenite::Connector::Rustls(
        std::sync::Arc::new(config),
    )))
}

fn websocket_url(server: &str) -> String {
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/v1/relay")
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the session's WebSocket, authenticated by the device credential;
/// with it, how long the server's socket may stay silent: the pings the
/// server announced it sends ([`silence_allowed`]).
async fn connect(ctx: &Arc<Context>) -> Result<(Socket, Duration), RelayError> {
    let mut request = websocket_url(&ctx.options.credential.server)
        .into_client_request()
        .map_err(|e| RelayError::Protocol(e.to_string()))?;
    let bearer = format!("Bearer {}", ctx.options.credential.credential);
    request.headers_mut().insert(
        "Authorization",
        bearer
            .parse()
            .map_err(|_| RelayError::Credential("credential is not a valid header".into()))?,
    );
    let connector = tls_connector(ctx.options.ca_cert_pem.as_deref())?;
    let (ws, response) =
        // No Nagle: the answers this socket carries are small frames that
        // must leave at once (with Nagle and the peer's delayed ACK, each
        // waited about 40 ms).
        match tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector)
            .await
        {
            Ok(ok) => ok,
            Err(tungstenite::Error::Http(r)) if r.status() == 401 => {
                return Err(RelayError::Unauthorized)
            }
            Err(e) => return Err(RelayError::Protocol(e.to_string())),
        };
    let announced = response
        .headers()
        .get(keybridge_proto::api::PING_INTERVAL_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    Ok((ws, silence_allowed(announced, ctx.options.silence_max)))
}

/// The pings the server may miss, at the interval it announced (clamped to
/// 100 ms – 10 min, so a garbled header neither makes the relay reconnect in
/// a loop nor wait an hour), or `otherwise` from a server that announced
/// none.
fn silence_allowed(announced_ms: Option<u64>, otherwise: Duration) -> Duration {
    match announced_ms {
        Some(ms) => {
            let interval = Duration::from_millis(ms.clamp(100, 600_000));
            interval * keybridge_proto::api::PINGS_MISSED_MAX
        }
        None => otherwise,
    }
}

/// Serves one session: requests in, answers out, until the socket closes.
async fn serve(ctx: &Arc<Context>, ws: Socket, silence_max: Duration) -> Result<(), RelayError> {
    say!(
        ctx.options.quiet,
        "connected to {} as device {} for account {}",
        ctx.options.credential.server,
        ctx.options.credential.device_id,
        ctx.options.credential.account
    );
    let (mut sink, mut incoming) = ws.split();
    let (outbox, mut outgoing) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(text) = outgoing.recv().await {
            if sink.send(tungstenite::Message::Text(text)).await.is_err() {
                break;
            }
        }
    });
    *ctx.outbox.lock().map_err(|_| RelayError::Poisoned)? = Some(outbox);
    let read = read_session(ctx, &mut incoming, silence_max).await;
    // Answers in flight lose their socket: each falls back to HTTP.
    *ctx.outbox.lock().map_err(|_| RelayError::Poisoned)? = None;
    ctx.waiting
        .lock()
        .map_err(|_| RelayError::Poisoned)?
        .clear();
    writer.abort();
    read
}

type Incoming = futures_util::stream::SplitStream<Socket>;

async fn read_session(
    ctx: &Arc<Context>,
    incoming: &mut Incoming,
    silence_max: Duration,
) -> Result<(), RelayError> {
    loop {
        let Ok(next) = tokio::time::timeout(silence_max, incoming.next()).await else {
            return Err(RelayError::Protocol(format!(
                "the server sent nothing for {} s, not even a ping: reconnecting",
                silence_max.as_secs_f64()
            )));
        };
        let Some(message) = next else { break };
        let text = match message.map_err(|e| RelayError::Protocol(e.to_string()))? {
            tungstenite::Message::Text(text) => text,
            tungstenite::Message::Close(_) => break,
            _ => continue,
        };
        match serde_json::from_str::<RelayMessage>(&text) {
            Ok(result @ RelayMessage::ConfirmationResult { .. }) => {
                let RelayMessage::ConfirmationResult { transaction_id, .. } = &result else {
                    continue;
                };
                let waiter = ctx
                    .waiting
                    .lock()
                    .map_err(|_| RelayError::Poisoned)?
                    .remove(transaction_id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(result);
                }
            }
            Ok(RelayMessage::ConfirmationRequest {
                transaction_id,
                payload,
            }) => {
                let fresh = ctx
                    .seen
                    .lock()
                    .map_err(|_| RelayError::Poisoned)?
                    .insert(transaction_id);
                if fresh {
                    let ctx = ctx.clone();
                    tokio::spawn(async move { handle(ctx, transaction_id, payload).await });
                }
            }
            Ok(RelayMessage::Cancelled { transaction_id }) => {
                say!(
                    ctx.options.quiet,
                    "transaction {transaction_id} ended on the server"
                );
            }
            Err(e) => tracing::warn!("ignoring a message the relay does not understand: {e}"),
        }
    }
    Ok(())
}

/// Sends the device's answer on the session's WebSocket and waits for the
/// server's result; posts it over HTTP if there is no socket, or the socket
/// closed or stayed silent. A result lost after the server judged the answer
/// never makes a second payment: the server answers the post of the answer
/// it already applied with the stored outcome (any other answer to an ended
/// transaction gets `not_pending`).
async fn submit(
    ctx: &Arc<Context>,
    id: TransactionId,
    answer: &Confirmation,
) -> Result<TransactionView, RelayError> {
    let outbox = ctx.outbox.lock().map_err(|_| RelayError::Poisoned)?.clone();
    if let Some(outbox) = outbox {
        let (waiter, result) = oneshot::channel();
        ctx.waiting
            .lock()
            .map_err(|_| RelayError::Poisoned)?
            .insert(id, waiter);
        let frame = serde_json::to_string(&RelayAnswer::Confirmation {
            transaction_id: id,
            confirmation: answer.clone(),
        })
        .map_err(|e| RelayError::Protocol(e.to_string()))?;
        if outbox.send(frame).is_ok() {
            let wait = ctx.options.answer_wait;
            if let Ok(Ok(RelayMessage::ConfirmationResult {
                status,
                view,
                error,
                ..
            })) = tokio::time::timeout(wait, result).await
            {
                return match (view, error) {
                    (Some(view), _) if status == 200 => Ok(*view),
                    (_, error) => {
                        let error = error.unwrap_or(keybridge_proto::api::ErrorBody {
                            error: "http_error".into(),
                            message: format!("status {status}"),
                        });
                        Err(RelayError::Server(ClientError::Api {
                            status,
                            code: error.error,
                            message: error.message,
                            // An answer on the socket has no headers.
                            retry_after: None,
                        }))
                    }
                };
            }
        }
        ctx.waiting
            .lock()
            .map_err(|_| RelayError::Poisoned)?
            .remove(&id);
        tracing::warn!("no answer on the socket for {id}; posting it");
    }
    Ok(ctx.client.submit_confirmation(&id, answer).await?)
}

/// The card's counter in its answer (0 when it has none), the order kept
/// answers are delivered in.
fn answer_counter(answer: &Confirmation) -> u32 {
    match answer {
        Confirmation::Signed { counter, .. } => *counter,
        Confirmation::Ocra { counter, .. } => {
            counter.map_or(0, |c| u32::try_from(c).unwrap_or(u32::MAX))
        }
        _ => 0,
    }
}

/// Judged (or expired): nothing left to deliver after a restart.
fn forget_kept(ctx: &Context, id: &TransactionId) {
    if let Some(outbox) = &ctx.kept {
        if let Err(e) = outbox.forget(id) {
            tracing::warn!(error = %e, "cannot forget a delivered answer");
        }
    }
}

/// Delivers what a previous run of this phone kept, oldest signature first
/// (see [`crate::outbox`]). A kept request is not signed again if the server
/// sends it once more.
async fn deliver_kept(ctx: &Arc<Context>) -> Result<(), RelayError> {
    let Some(outbox) = &ctx.kept else {
        return Ok(());
    };
    for kept in outbox.load().map_err(RelayError::Outbox)? {
        let id = kept.transaction_id;
        ctx.seen
            .lock()
            .map_err(|_| RelayError::Poisoned)?
            .insert(id);
        if now_unix_s() < kept.expires_at_unix_s {
            say!(
                ctx.options.quiet,
                "delivering the card's answer for {id}, kept from before a restart"
            );
            match deliver(ctx, id, &kept.answer, kept.expires_at_unix_s).await {
                Ok(view) => say!(
                    ctx.options.quiet,
                    "server answered: {}",
                    view.status.as_str()
                ),
                Err(e) => say!(ctx.options.quiet, "transaction {id}: {e}"),
            }
        }
        forget_kept(ctx, &id);
    }
    Ok(())
}

/// First pause before an answer that did not reach the server is sent again;
/// it doubles up to [`REDELIVER_PAUSE_MAX`].
const REDELIVER_PAUSE_FIRST: Duration = Duration::from_millis(100);
const REDELIVER_PAUSE_MAX: Duration = Duration::from_secs(2);

/// [`submit`], again and again while the server cannot be reached or fails
/// (HTTP 5xx, 429), until the request expires. Once the card has signed, its
/// answer is the only one: the card's counter has moved on, so a payment
/// whose answer was lost (the server restarting, the phone between networks)
/// would otherwise hang until it expired, and the holder would be asked to
/// sign again. Sending the same answer twice is safe: the server answers an
/// answer it already applied with the stored outcome.
async fn deliver(
    ctx: &Arc<Context>,
    id: TransactionId,
    answer: &Confirmation,
    expires_at_unix_s: u64,
) -> Result<TransactionView, RelayError> {
    let mut pause = REDELIVER_PAUSE_FIRST;
    loop {
        match submit(ctx, id, answer).await {
            // A refused TLS handshake too, unlike `keybridge pay`, which has a
            // person to tell: this answer cost the card a counter, and a
            // server certificate put right within the request's life still
            // gets it.
            Err(RelayError::Server(e))
                if (e.is_transient() || e.is_tls_refused()) && now_unix_s() < expires_at_unix_s =>
            {
                say!(
                    ctx.options.quiet,
                    "transaction {id}: {e}; sending the answer again in {} ms",
                    pause.as_millis()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(REDELIVER_PAUSE_MAX);
            }
            done => return done,
        }
    }
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn handle(ctx: Arc<Context>, id: TransactionId, payload_b64: String) {
    match confirm(&ctx, id, &payload_b64).await {
        Ok(Some(view)) => {
            let reason = view
                .reason
                .map(|r| format!(" ({})", r.as_str()))
                .unwrap_or_default();
            say!(
                ctx.options.quiet,
                "server answered: {}{reason}",
                view.status.as_str()
            );
        }
        Ok(None) => {}
        Err(e) => say!(ctx.options.quiet, "transaction {id}: {e}"),
    }
}

/// One request, start to end. `Ok(None)` when nothing was sent to the server.
async fn confirm(
    ctx: &Arc<Context>,
    id: TransactionId,
    payload_b64: &str,
) -> Result<Option<keybridge_proto::api::TransactionView>, RelayError> {
    let bytes = b64::decode(payload_b64)
        .ok_or_else(|| RelayError::Protocol("payload is not base64".into()))?;
    // The phone parses what it shows; if it does not parse, nobody signs it.
    let payload = ConfirmationPayload::decode(&bytes)
        .map_err(|e| RelayError::Protocol(format!("payload refused: {e}")))?;
    if payload.transaction_id != id {
        return Err(RelayError::Protocol(
            "payload names another transaction".into(),
        ));
    }
    say!(ctx.options.quiet, "confirmation request {id}");
    for line in screen::confirmation_panel(&payload, now_unix_s()) {
        say!(ctx.options.quiet, "{line}");
    }
    let approved = match ctx.options.decision {
        Decision::Approve => true,
        Decision::Decline => false,
        Decision::Prompt => ask("[phone] Send to your security device? [y/N] ").await,
    };
    if !approved {
        say!(ctx.options.quiet, "declined on the phone");
        let answer = Confirmation::Declined {
            reason: DeclineReason::Declined,
        };
        return Ok(Some(
            deliver(ctx, id, &answer, payload.expires_at_unix_s).await?,
        ));
    }
    let to_sign = match ctx.options.tamper {
        Some(t) => {
            say!(
                ctx.options.quiet,
                "TAMPERING: altering the {t:?} before the card sees it"
            );
            t.apply(&payload)
                .ok_or_else(|| RelayError::Protocol("cannot tamper".into()))?
        }
        None => bytes,
    };
    let _turn = ctx.turn.lock().await;
    let pin = match &ctx.options.pin {
        Some(pin) => pin.clone(),
        None => Zeroizing::new(read_line("[phone] PIN: ").await),
    };
    say!(
        ctx.options.quiet,
        "sending {} payload bytes to the card",
        to_sign.len()
    );
    // Live time left while the holder presents the card and enters nothing
    // more: a line every few seconds, stopped as soon as the card answers.
    let ticker = {
        let payload = payload.clone();
        let quiet = ctx.options.quiet;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(TIME_LEFT_EVERY_S));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = now_unix_s();
                say!(quiet, "{}", screen::time_left_line(&payload, now));
                if now >= payload.expires_at_unix_s {
                    return;
                }
            }
        })
    };
    let outcome = sign_with_retries(ctx, pin, to_sign, payload.expires_at_unix_s).await;
    ticker.abort();
    let outcome = outcome?;
    let answer = match outcome {
        Some(SignOutcome::Signed { counter, signature }) => {
            match ctx.options.signature_method() {
                SignatureMethod::Piv => say!(
                    ctx.options.quiet,
                    "card signed SHA-256 of the payload in PIV slot 9C ({} byte signature)",
                    signature.len()
                ),
                _ => say!(
                    ctx.options.quiet,
                    "card signed (counter {counter}, {} byte signature)",
                    signature.len()
                ),
            }
            Confirmation::Signed {
                counter,
                signature: b64::encode(&signature),
            }
        }
        Some(SignOutcome::Ocra(answer)) => {
            say!(
                false,
                "card answered OCRA response {} (counter {}, time step {})",
                answer.response,
                answer.counter,
                answer.time_step
            );
            Confirmation::Ocra {
                response: answer.response,
                counter: (answer.counter != 0).then_some(answer.counter),
                time_step: (answer.time_step != 0).then_some(answer.time_step),
            }
        }
        Some(SignOutcome::Declined(reason)) => {
            say!(ctx.options.quiet, "card did not sign: {reason:?}");
            Confirmation::Declined { reason }
        }
        None => {
            say!(
                ctx.options.quiet,
                "card not reachable; tap again before the request expires"
            );
            return Ok(None);
        }
    };
    let kept = Kept {
        transaction_id: id,
        expires_at_unix_s: payload.expires_at_unix_s,
        counter: answer_counter(&answer),
        answer,
    };
    if let Some(outbox) = &ctx.kept {
        // Not kept is not lost: it is still delivered now, only not again
        // after a restart.
        if let Err(e) = outbox.keep(&kept) {
            tracing::warn!(error = %e, "cannot keep the card's answer");
        }
    }
    say!(ctx.options.quiet, "submitting to the server");
    let delivered = deliver(ctx, id, &kept.answer, kept.expires_at_unix_s).await;
    forget_kept(ctx, &id);
    Ok(Some(delivered?))
}

/// Runs the card conversation on a blocking thread, retrying when the card
/// went away (as a phone does when the card leaves the NFC field). `Ok(None)`
/// when the card stayed unreachable until the request expired.
async fn sign_with_retries(
    ctx: &Arc<Context>,
    pin: Zeroizing<String>,
    payload: Vec<u8>,
    expires_at_unix_s: u64,
) -> Result<Option<SignOutcome>, RelayError> {
    let link = ctx.link.clone();
    let card_wait = ctx.options.card_wait;
    let quiet = ctx.options.quiet;
    let method = ctx.options.signature_method();
    let pinned = ctx.options.credential.card_certificate_der();
    tokio::task::spawn_blocking(move || {
        let mut link = link.lock().map_err(|_| RelayError::Poisoned)?;
        for attempt in 1..=CARD_ATTEMPTS_MAX {
            let left = Duration::from_secs(expires_at_unix_s.saturating_sub(now_unix_s()));
            if left.is_zero() {
                break;
            }
            let result = link
                .wait_for_card(card_wait.min(left))
                .map_err(DriverError::from)
                .and_then(|()| match method {
                    SignatureMethod::Ocra => {
                        driver::ocra_response(&mut link, pin.as_bytes(), &payload)
                    }
                    SignatureMethod::TransactionApplet => driver::sign_transaction_pinned(
                        &mut link,
                        pin.as_bytes(),
                        &payload,
                        pinned.as_deref(),
                    ),
                    // The card shows nothing: the panel above was the holder's view.
                    SignatureMethod::Piv => {
                        crate::piv::sign_payload(&mut link, pin.as_bytes(), &payload)
                    }
                });
            report_link(&link, quiet);
            match result {
                Ok(outcome) => return Ok(Some(outcome)),
                Err(DriverError::Link(LinkError::CardGone)) => {
                    // The NFC case: the card left the field mid-conversation.
                    // The server keeps the request pending until it expires.
                    say!(
                        false,
                        "the card went away mid-transaction: tap again (attempt {attempt}/{CARD_ATTEMPTS_MAX})"
                    );
                }
                Err(DriverError::Link(LinkError::Secure(e))) => {
                    // Damaged on the radio, or someone tampering: new keys,
                    // new conversation; nothing unauthenticated is ever used.
                    say!(
                        false,
                        "secure channel to the card failed ({e}); starting over (attempt {attempt}/{CARD_ATTEMPTS_MAX})"
                    );
                }
                Err(DriverError::Link(e)) => {
                    tracing::warn!("card link failed (attempt {attempt}/{CARD_ATTEMPTS_MAX}): {e}");
                }
                Err(DriverError::Refused { step, sw }) => {
                    tracing::warn!("card refused {step} with {sw}");
                    return Ok(Some(SignOutcome::Declined(DeclineReason::DeviceError)));
                }
                Err(e) => {
                    tracing::warn!("card error: {e}");
                    return Ok(Some(SignOutcome::Declined(DeclineReason::DeviceError)));
                }
            }
        }
        Ok(None)
    })
    .await
    .map_err(|_| RelayError::Poisoned)?
}

/// Says what the radio link negotiated and did (the demo prints it).
fn report_link(link: &CardLink, quiet: bool) {
    if let Some(atr) = link.contactless_atr() {
        say!(
            quiet,
            "NFC: contactless card (ATR {}), {}",
            hex::encode_upper(atr),
            match link.extended_length() {
                true => "extended APDUs",
                false => "chained short APDUs",
            }
        );
    }
    if let (Some((att_mtu, fragment)), Some(stats)) = (link.ble_negotiated(), link.ble_stats()) {
        say!(
            quiet,
            "BLE: ATT MTU {att_mtu}, {fragment}-byte fragments; {} requests, {} fragments sent, {} received, {} retransmissions, {} keepalives; channel {}",
            stats.requests,
            stats.fragments_sent,
            stats.fragments_received,
            stats.retransmissions,
            stats.keepalives,
            keybridge_transport::secure::SUITE_1_NAME,
        );
    }
}

async fn read_line(prompt: &'static str) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        print!("{prompt}");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        line.trim().to_owned()
    })
    .await
    .unwrap_or_default()
}

async fn ask(prompt: &'static str) -> bool {
    matches!(read_line(prompt).await.as_str(), "y" | "Y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_silence_allowed_is_three_of_the_pings_the_server_announced() {
        let otherwise = Duration::from_secs(45);
        assert_eq!(
            silence_allowed(Some(200), otherwise),
            Duration::from_millis(600)
        );
        assert_eq!(
            silence_allowed(Some(15_000), otherwise),
            Duration::from_secs(45)
        );
        // A server that says nothing: the relay's own setting.
        assert_eq!(silence_allowed(None, otherwise), otherwise);
        // Nonsense is clamped, not obeyed.
        assert_eq!(
            silence_allowed(Some(0), otherwise),
            Duration::from_millis(300)
        );
        assert_eq!(
            silence_allowed(Some(u64::MAX), otherwise),
            Duration::from_secs(1800)
        );
    }

    #[test]
    fn websocket_urls() {
        assert_eq!(
            websocket_url("http://127.0.0.1:8080/"),
            "ws://127.0.0.1:8080/v1/relay"
        );
        assert_eq!(
            websocket_url("https://kb.example"),
            "wss://kb.example/v1/relay"
        );
    }
}
