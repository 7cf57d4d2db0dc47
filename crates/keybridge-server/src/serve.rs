//! The connection loop: accepts TCP connections, does TLS where configured,
//! and serves HTTP/1.1 on each with time limits on what the client owes.
//!
//! `axum::serve` and `axum-server` both waited for a client's request head
//! without end: a socket that connected and sent nothing (or half a header,
//! or finished the TLS handshake and went quiet) held a file descriptor and
//! a task for as long as the peer liked. A few thousand of those, from a
//! broken client or on purpose, used up the process's descriptors, and then
//! no terminal or phone could connect until the server restarted. Here every
//! connection must send its request head within `read_timeout` of
//! connecting or of its previous answer (hyper's header read timeout, which
//! starts as soon as the connection waits for a request), and the TLS
//! handshake must end within the same time. Bodies have their own deadline
//! in [`crate::routes`]'s JSON extractor.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt as _;

use crate::metrics::{Metrics, Open, HTTP_CONNECTIONS};

/// How long `accept` waits before trying again after a failure such as
/// `EMFILE` (out of file descriptors): long enough not to spin, short
/// enough that the server takes connections again soon after some close.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// What one listener serves and how.
pub struct Serve {
    pub listener: TcpListener,
    pub router: Router,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The most a client may take to send a request head (from connecting
    /// or from its previous answer) or to finish the TLS handshake.
    pub read_timeout: Duration,
}

impl Serve {
    /// Serves until `stop` turns true, then stops accepting, lets every
    /// in-flight request finish and returns. Connections already upgraded to
    /// WebSocket are no longer HTTP's: they end on the hub's shutdown.
    pub async fn run(self, stop: watch::Receiver<bool>) -> io::Result<()> {
        let Serve {
            listener,
            router,
            tls,
            read_timeout,
        } = self;
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        // Each connection's task holds a sender; once all are dropped, every
        // connection has ended.
        let (open, mut all_closed) = mpsc::channel::<()>(1);
        let stopping = stopped(stop.clone());
        tokio::pin!(stopping);
        let mut http = Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(read_timeout);
        // Whether accepting is failing: logged once per spell, not 20 times a second.
        let mut starved = false;
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if std::mem::take(&mut starved) {
                            tracing::info!("accepting connections again");
                        }
                        stream
                    }
                    // A connection reset before it was taken: that one only.
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        // Out of descriptors or memory: it ends when some
                        // connections close, so wait and retry.
                        if !std::mem::replace(&mut starved, true) {
                            tracing::warn!(error = %e, "cannot accept connections; retrying");
                        }
                        tokio::time::sleep(ACCEPT_RETRY).await;
                        continue;
                    }
                },
                () = &mut stopping => break,
            };
            // No Nagle: the relay WebSocket carries small frames back to
            // back (a result, then the next request); with Nagle each second
            // frame waited for the peer's delayed ACK, about 40 ms.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
            let router = router.clone();
            let http = http.clone();
            let stop = stop.clone();
            let open = open.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _counted = Open::count(HTTP_CONNECTIONS);
                match tls {
                    None => serve_connection(&http, stream, router, stop).await,
                    Some(tls) => {
                        // Shutting down does not wait for a handshake.
                        let shaken = tokio::select! {
                            shaken = handshake(&tls, stream, read_timeout) => shaken,
                            () = stopped(stop.clone()) => None,
                        };
                        if let Some(stream) = shaken {
                            serve_connection(&http, stream, router, stop).await;
                        }
                    }
                }
                drop(open);
            });
        }
        drop(listener);
        drop(open);
        let _ = all_closed.recv().await;
        Ok(())
    }
}

/// Serves HTTP/1.1 on one connection, WebSocket upgrades included, until
/// the client closes it, breaks a time limit, or the server shuts down.
async fn serve_connection<I>(http: &Builder, io: I, router: Router, stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(
        router.map_request(|req: Request<Incoming>| req.map(axum::body::Body::new)),
    );
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    // A client that goes away mid-request, or breaks a time limit, is its
    // own business: nothing to report.
    tokio::select! {
        served = conn.as_mut() => {
            if served.is_err_and(|e| e.is_timeout()) {
                Metrics::read_timed_out("head");
            }
            return;
        }
        () = stopped(stop) => {}
    }
    // Shutting down: the request in flight, if any, is answered, then the
    // connection closes; an idle one closes now.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// An error of the one connection being accepted, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The TLS handshake, given at most `limit`. A failed or slow handshake
/// closes the connection; it is logged at debug level only, since scanners
/// and plain-HTTP clients produce them all day.
async fn handshake(
    tls: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(limit, tls.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            Metrics::read_timed_out("tls");
            None
        }
    }
}
