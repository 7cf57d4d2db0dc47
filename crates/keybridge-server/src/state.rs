//! The shared state every handler and background task gets.

use std::sync::Arc;

use crate::ca::Ca;
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::secret::sha256;
use crate::store::{SqliteStore, Store};

/// Cheap to clone: one `Arc` around [`Shared`].
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub ca: Arc<Ca>,
    pub hub: Hub,
    /// Submission instants for the settle-latency histogram.
    pub metrics: Metrics,
    /// Server identity written into every payload.
    pub origin: String,
    pub confirmation_ttl_s: u64,
    pub sweep_interval_ms: u64,
    pub body_limit_bytes: usize,
    /// Only the hash is kept, so the token itself sits in no long-lived struct.
    pub(crate) admin_token_hash: [u8; 32],
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
        validate(config)?;
        std::fs::create_dir_all(&config.data_dir).map_err(ServerError::io(format!(
            "creating data directory {}",
            config.data_dir.display()
        )))?;
        let now = clock.now_unix_s();
        let store = SqliteStore::open(&config.database_path(), now)?;
        let ca = Ca::load_or_create(&config.data_dir, &config.origin, now)?;
        AppState::new(config, Arc::new(store), clock, Arc::new(ca))
    }

    /// Assembles state from parts (tests, other backends).
    pub fn new(
        config: &ServerConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        ca: Arc<Ca>,
    ) -> Result<AppState, ServerError> {
        validate(config)?;
        Ok(AppState(Arc::new(Shared {
            store,
            clock,
            ca,
            hub: Hub::new(),
            metrics: Metrics::new(),
            origin: config.origin.clone(),
            confirmation_ttl_s: config.confirmation_ttl_s,
            sweep_interval_ms: config.sweep_interval_ms,
            body_limit_bytes: config.body_limit_bytes,
            admin_token_hash: sha256(&config.admin_token),
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
    if config.body_limit_bytes < 1024 {
        return bad("body limit must be at least 1 KiB");
    }
    Ok(())
}
