//! The shared state every handler and background task gets.

use std::sync::Arc;

use crate::ca::Ca;
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::pending_cache::PendingCache;
use crate::pki::TrustStore;
use crate::secret::sha256;
use crate::secretbox::{MasterKey, MASTER_KEY_ENV};
use crate::store::{SqliteStore, Store};
use crate::terminal_cache::TerminalCache;
use crate::verify::Verifier;

/// Cheap to clone: one `Arc` around [`Shared`].
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// The built-in CA: issues device certificates (unless an external CA is
    /// configured) and signs the CRL of what it issued.
    pub ca: Arc<Ca>,
    /// Trust anchors, revocations, path cache, master key.
    pub verifier: Verifier,
    /// An external CA is configured: the built-in CA is not trusted and does not issue.
    pub external_ca: bool,
    /// CRL sources to import on a schedule (external CA).
    pub crl_sources: Vec<String>,
    pub crl_refresh_s: u64,
    pub hub: Hub,
    /// Prometheus metrics (when each transaction was submitted is kept in
    /// `pending`).
    pub metrics: Metrics,
    /// Server identity written into every payload.
    pub origin: String,
    pub confirmation_ttl_s: u64,
    pub sweep_interval_ms: u64,
    pub relay_ping_interval_ms: u64,
    pub body_limit_bytes: usize,
    pub pending_per_payer_max: u32,
    /// How long a request body may take to arrive (`ServerConfig::read_timeout_s`).
    pub read_timeout: std::time::Duration,
    /// Only the hash is kept, so the token itself sits in no long-lived struct.
    pub(crate) admin_token_hash: [u8; 32],
    pub(crate) terminals: TerminalCache,
    /// `None` when the configuration sets no limit.
    pub(crate) terminal_rate: Option<crate::rate::TerminalRate>,
    /// Pending transactions created here, for judging their confirmations.
    pub(crate) pending: PendingCache,
}

fn create_data_dir(config: &ServerConfig) -> Result<(), ServerError> {
    validate(config)?;
    std::fs::create_dir_all(&config.data_dir).map_err(ServerError::io(format!(
        "creating data directory {}",
        config.data_dir.display()
    )))
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Opens the SQLite store and the CA in `config.data_dir`, creating both if new.
    pub fn open(config: &ServerConfig, clock: Arc<dyn Clock>) -> Result<AppState, ServerError> {
        create_data_dir(config)?;
        let store = SqliteStore::open(&config.database_path(), clock.now_unix_s())?;
        AppState::open_with(config, Arc::new(store), clock)
    }

    /// Opens the CA and the master key in `config.data_dir` (creating them if
    /// new) around an open store. Several instances on one database share
    /// the data directory's CA and master key (or an external CA and
    /// `KEYBRIDGE_MASTER_KEY`).
    pub fn open_with(
        config: &ServerConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<AppState, ServerError> {
        create_data_dir(config)?;
        let now = clock.now_unix_s();
        let ca = Ca::load_or_create(&config.data_dir, &config.origin, now)?;
        let env_key = std::env::var(MASTER_KEY_ENV).ok();
        let master_key = MasterKey::load_or_create(
            &config.data_dir,
            config.master_key_hex.as_deref().or(env_key.as_deref()),
        )
        .map_err(|e| ServerError::Config(format!("master key: {e}")))?;
        AppState::new(config, store, clock, Arc::new(ca), master_key)
    }

    /// Assembles state from parts (tests, other backends).
    pub fn new(
        config: &ServerConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        ca: Arc<Ca>,
        master_key: MasterKey,
    ) -> Result<AppState, ServerError> {
        validate(config)?;
        let external_ca = !config.trust_anchors.is_empty();
        let trust = if external_ca {
            let read = |paths: &[std::path::PathBuf]| -> Result<Vec<Vec<u8>>, ServerError> {
                let mut out = Vec::new();
                for path in paths {
                    let bytes = std::fs::read(path)
                        .map_err(ServerError::io(format!("reading {}", path.display())))?;
                    out.extend(
                        crate::ca::certificates_from_pem_or_der(&bytes)
                            .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?,
                    );
                }
                Ok(out)
            };
            TrustStore::new(read(&config.trust_anchors)?, read(&config.intermediates)?)
        } else {
            TrustStore::new(vec![ca.cert_der().to_vec()], Vec::new())
        }
        .map_err(ServerError::Config)?;
        Ok(AppState(Arc::new(Shared {
            store,
            clock,
            ca,
            verifier: Verifier::new(trust, master_key),
            external_ca,
            crl_sources: config.crl_sources.clone(),
            crl_refresh_s: config.crl_refresh_s,
            hub: Hub::new(),
            metrics: Metrics::new(),
            origin: config.origin.clone(),
            confirmation_ttl_s: config.confirmation_ttl_s,
            sweep_interval_ms: config.sweep_interval_ms,
            relay_ping_interval_ms: config.relay_ping_interval_ms,
            body_limit_bytes: config.body_limit_bytes,
            pending_per_payer_max: config.pending_per_payer_max,
            read_timeout: std::time::Duration::from_secs(config.read_timeout_s),
            admin_token_hash: sha256(&config.admin_token),
            terminals: TerminalCache::default(),
            terminal_rate: crate::rate::TerminalRate::new(config.terminal_rate_per_s),
            pending: PendingCache::default(),
        })))
    }

    pub fn now_unix_s(&self) -> u64 {
        self.clock.now_unix_s()
    }
}

/// Refuses configurations that would only fail later, at the first payment.
fn validate(config: &ServerConfig) -> Result<(), ServerError> {
    let bad = |m: &str| Err(ServerError::Config(m.to_owned()));
    let origin = &config.origin;
    if origin.is_empty()
        || origin.len() > keybridge_proto::ConfirmationPayload::ORIGIN_LEN_MAX
        || origin.chars().any(char::is_control)
    {
        return bad("origin must be 1 to 64 bytes without control characters");
    }
    // An empty token would make every admin request "authenticated".
    if config.admin_token.is_empty() {
        return bad("admin token must not be empty");
    }
    if config.confirmation_ttl_s == 0 || config.confirmation_ttl_s > 24 * 3600 {
        return bad("confirmation TTL must be 1 second to 24 hours");
    }
    if config.sweep_interval_ms == 0 {
        return bad("sweep interval must be positive");
    }
    // Relays take at most 10 minutes from the interval they are told.
    if config.relay_ping_interval_ms == 0 || config.relay_ping_interval_ms > 600_000 {
        return bad("relay ping interval must be 1 ms to 10 minutes");
    }
    if config.body_limit_bytes < 1024 {
        return bad("body limit must be at least 1 KiB");
    }
    if config.pending_per_payer_max == 0 {
        return bad("pending per payer maximum must be at least 1");
    }
    if config.read_timeout_s == 0 || config.read_timeout_s > 3600 {
        return bad("read timeout must be 1 second to 1 hour");
    }
    if config.crl_refresh_s == 0 {
        return bad("CRL refresh interval must be positive");
    }
    if !config.crl_sources.is_empty() && config.trust_anchors.is_empty() {
        return bad("CRL sources are for an external CA: configure its trust anchors too");
    }
    Ok(())
}
