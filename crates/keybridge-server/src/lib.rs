//! The KeyBridge server: receives payment requests from terminals, pushes
//! confirmation payloads to the payer's relay, verifies the device's
//! signature against the payload it stored, and settles in one database
//! transaction.
//!
//! Modules, one job each:
//! - [`config`] — [`ServerConfig`].
//! - [`clock`] — injected time ([`SystemClock`], [`ManualClock`]); the core never reads the system clock.
//! - [`error`] — [`ApiError`] (wire codes and statuses) and [`ServerError`].
//! - [`store`] — the [`Store`] trait, its records, the audit hash chain, and
//!   two backends: SQLite (the default) and PostgreSQL (several instances).
//! - [`ca`] — the built-in CA: issues device certificates from PKCS#10
//!   requests, signs the CRL of what it issued.
//! - [`pki`] — path validation to the configured trust anchors, revocation
//!   sets, the path cache.
//! - [`secretbox`] — the master key and AES-256-GCM sealing of OCRA secrets.
//! - [`verify`] — the verification unit, a pure function from submission to
//!   verdict (certificate signatures and OCRA responses).
//! - [`payment`] — the payment unit's rules, applied by the store inside one transaction.
//! - [`service`] — the processing unit: create, confirm, expire.
//! - [`hub`] — in-process fan-out of events to relay sockets and waiting terminals.
//! - `peers` — hub events between instances on one PostgreSQL database (LISTEN/NOTIFY).
//! - `routes` — the HTTP API ([`app`]), its extractors and handlers, the web checkout.
//! - [`openapi`] — the OpenAPI 3.1 document of the API.
//! - [`webhook`] — signed outcome events to terminals' callback URLs, with retries.
//! - [`metrics`] — Prometheus metrics.
//! - [`tls`] — rustls configuration from PEM files, or a self-signed development certificate.
//! - `random`, `secret`, `state`, `sweeper`, `crl_import`, `terminal_cache` —
//!   the CSPRNG, bearer-secret hashing, shared state, the expiry task, the
//!   scheduled import of an external CA's CRLs, and terminals remembered by
//!   API-key hash.
//!
//! Not here: OCSP, request-rate limits per client address (what is limited:
//! requests per terminal, `rate`; payments waiting per payer,
//! `ServerConfig::pending_per_payer_max`; request bodies; the time a client
//! may take, `serve`).
#![forbid(unsafe_code)]

pub mod backup;
pub mod ca;
pub mod clock;
pub mod config;
mod crl_import;
pub mod error;
pub mod hub;
pub mod metrics;
pub mod openapi;
pub mod payment;
pub mod peers;
mod pending_cache;
pub mod pki;
mod random;
pub mod rate;
mod routes;
mod secret;
pub mod secretbox;
mod serve;
pub mod service;
mod state;
pub mod store;
mod sweeper;
mod terminal_cache;
pub mod tls;
pub mod verify;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::ServerConfig;
pub use error::{ApiError, ServerError};
pub use routes::app;
pub use state::{AppState, Shared};
pub use store::Store;

/// Account ids with this prefix are the currencies' issuance accounts.
pub const ISSUANCE_PREFIX: &str = "issuance:";

/// A server listening on [`RunningServer::addr`], with its sweeper and
/// webhook worker running.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    /// `https` when TLS is on, else `http`.
    pub scheme: &'static str,
    state: AppState,
    stop: tokio::sync::watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    /// The sweeper, the webhook worker, and where configured the CRL
    /// importer and the link to other instances: aborted at shutdown.
    background: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// The shared state (store, clock, CA), for tests and tools in-process.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// `scheme://addr`, the base URL clients use.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The store, e.g. to verify the audit chain after a run.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.state.store)
    }

    /// Stops accepting, ends long-lived streams, and waits for in-flight requests.
    pub async fn shutdown(self) {
        let _ = self.finish().await;
    }

    /// Runs until ctrl-c or SIGTERM (then shuts down gracefully) or until
    /// the server fails.
    pub async fn wait(mut self) -> Result<(), ServerError> {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                if let Err(e) = signal {
                    tracing::error!(error = %e, "cannot listen for ctrl-c");
                }
                tracing::info!("shutting down");
                self.finish().await
            }
            () = terminated() => {
                tracing::info!("SIGTERM: shutting down");
                self.finish().await
            }
            result = &mut self.server => {
                self.background.iter().for_each(JoinHandle::abort);
                flatten(result)
            }
        }
    }

    async fn finish(self) -> Result<(), ServerError> {
        self.state.hub.begin_shutdown();
        self.stop.send_replace(true);
        // Undelivered webhook events stay queued in the store and go out
        // after restart.
        self.background.iter().for_each(JoinHandle::abort);
        let result = flatten(self.server.await);
        tracing::info!("server stopped");
        result
    }
}

/// Resolves at SIGTERM, what service managers (systemd, Kubernetes, `docker
/// stop`) send to stop a process. Without a handler it would end the server
/// at once: requests cut mid-answer instead of finished, on every deploy.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
                return;
            }
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGTERM"),
        }
    }
    std::future::pending::<()>().await
}

fn flatten(joined: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), ServerError> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(ServerError::Io {
            context: "serving HTTP".into(),
            source,
        }),
        Err(e) => Err(ServerError::Io {
            context: "server task".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Starts the server with the system clock.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// Starts the server with an injected clock (tests use [`ManualClock`]).
pub async fn start_with_clock(
    config: ServerConfig,
    clock: Arc<dyn Clock>,
) -> Result<RunningServer, ServerError> {
    let Some(url) = config.database_url.clone() else {
        // Opening SQLite and reading the CA files block: keep them off the runtime.
        let state = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || AppState::open(&config, clock))
                .await
                .map_err(|e| ServerError::Config(format!("startup task failed: {e}")))??
        };
        return start_with_state(&config, state).await;
    };
    let endpoint = store::postgres::Endpoint::new(&url, config.database_ca_pem.as_deref())?;
    let store = store::PgStore::connect(endpoint.clone(), clock.now_unix_s()).await?;
    let instance = store.instance().to_owned();
    let state = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || AppState::open_with(&config, Arc::new(store), clock))
            .await
            .map_err(|e| ServerError::Config(format!("startup task failed: {e}")))??
    };
    let peers = peers::start(endpoint, instance, state.clone()).await?;
    let mut server = start_with_state(&config, state).await?;
    server.background.push(peers);
    Ok(server)
}

/// Starts the server on already-assembled state (another store backend, a fixed CA).
pub async fn start_with_state(
    config: &ServerConfig,
    state: AppState,
) -> Result<RunningServer, ServerError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(ServerError::io(format!("binding {}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(ServerError::io("reading the bound address"))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (scheme, tls) = match &config.tls {
        None => ("http", None),
        Some(files) => ("https", Some(tls::server_config(files)?)),
    };
    let serve = serve::Serve {
        listener,
        router: app(state.clone()),
        tls,
        read_timeout: std::time::Duration::from_secs(config.read_timeout_s),
    };
    let server = tokio::spawn(serve.run(stopped));
    let mut background = vec![
        tokio::spawn(sweeper::run(state.clone())),
        tokio::spawn(webhook::run(state.clone())),
    ];
    if !state.crl_sources.is_empty() {
        background.push(tokio::spawn(crl_import::run(state.clone())));
    }
    tracing::info!(%addr, scheme, origin = %config.origin, "KeyBridge server listening");
    Ok(RunningServer {
        addr,
        scheme,
        state,
        stop,
        server,
        background,
    })
}
