//! Server configuration: one struct instead of a list of parameters.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The SQLite database's file name inside the data directory.
pub const DATABASE_FILE: &str = "keybridge.sqlite";

/// Everything `start` needs. Build with [`ServerConfig::new`] and adjust fields.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:0` for an ephemeral port.
    pub listen: SocketAddr,
    /// Holds `keybridge.sqlite`, `ca-key.pem` (mode 0600) and `ca-cert.pem`.
    pub data_dir: PathBuf,
    /// A PostgreSQL database (`postgres://user@host/db`) instead of SQLite in
    /// `data_dir`: several instances may share it. May hold a password:
    /// never logged.
    pub database_url: Option<String>,
    /// The CA certificates (PEM) the database's TLS certificate must chain
    /// to; when set, the connection to PostgreSQL must be TLS. `None`: plain.
    pub database_ca_pem: Option<PathBuf>,
    /// Server identity written into every payload (stops cross-server replay).
    pub origin: String,
    /// Bearer token of the admin API. Never logged.
    pub admin_token: String,
    /// How long a payer has to confirm.
    pub confirmation_ttl_s: u64,
    /// How often the sweeper expires overdue transactions.
    pub sweep_interval_ms: u64,
    /// How often the server pings each relay's socket: it keeps NATs and
    /// proxies from dropping an idle one, lets a relay tell a live server
    /// from a silent path, and a relay that answers none of three pings in
    /// a row is closed.
    pub relay_ping_interval_ms: u64,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// The most transactions one payer may have waiting for confirmation at
    /// once; one more is refused (429 `too_many_pending`). Each is a prompt
    /// on the payer's phone: a flood of them is the "MFA fatigue" attack.
    pub pending_per_payer_max: u32,
    /// The most requests a second one terminal's API key may send, in
    /// bursts of at most this many; more get 429 `rate_limited` with
    /// `Retry-After` (`crate::rate`). Counted per server instance. 0: no
    /// limit.
    pub terminal_rate_per_s: u32,
    /// The most a client may take to send a request head (counted from
    /// connecting or from its previous answer), to finish the TLS
    /// handshake, or to send a request body. Past it the connection is
    /// closed (a body gets 408 first), so idle or stalled sockets cannot
    /// pile up until the server runs out of file descriptors.
    pub read_timeout_s: u64,
    /// Serve HTTPS with this certificate and key; `None`: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// External CA: trust anchor certificates (PEM or DER files). Empty: the
    /// built-in CA is the only anchor and issues device certificates.
    pub trust_anchors: Vec<PathBuf>,
    /// External CA: intermediate certificates that may sit on device paths.
    pub intermediates: Vec<PathBuf>,
    /// CRLs of the external CA: file paths or `http://` URLs, re-read every
    /// `crl_refresh_s`; each is signature-checked against a configured CA.
    pub crl_sources: Vec<String>,
    pub crl_refresh_s: u64,
    /// The master key (64 hex digits) sealing OCRA secrets; `None`: the
    /// `master-key` file in `data_dir`, created on first start. Never logged.
    pub master_key_hex: Option<String>,
}

impl ServerConfig {
    pub const ORIGIN_DEFAULT: &'static str = "keybridge.local";
    pub const CONFIRMATION_TTL_S_DEFAULT: u64 = 120;
    pub const SWEEP_INTERVAL_MS_DEFAULT: u64 = 1000;
    pub const RELAY_PING_INTERVAL_MS_DEFAULT: u64 = 15_000;
    pub const BODY_LIMIT_BYTES_DEFAULT: usize = 64 * 1024;
    /// A person confirms one payment at a time; ten covers a few tills
    /// serving one account and retries, and bounds a flood to ten prompts.
    pub const PENDING_PER_PAYER_MAX_DEFAULT: u32 = 10;
    /// A till sends a few requests per payment (create, then a long poll or
    /// an event stream), so 100 a second is far beyond any till and many
    /// checkouts behind one merchant key, and still a small share of what
    /// one instance serves (docs/performance.md).
    pub const TERMINAL_RATE_PER_S_DEFAULT: u32 = 100;
    /// hyper's own default for the request head, and far longer than a
    /// client on any working network needs.
    pub const READ_TIMEOUT_S_DEFAULT: u64 = 30;
    pub const CRL_REFRESH_S_DEFAULT: u64 = 300;

    pub fn new(listen: SocketAddr, data_dir: PathBuf, admin_token: String) -> ServerConfig {
        ServerConfig {
            listen,
            data_dir,
            database_url: None,
            database_ca_pem: None,
            origin: Self::ORIGIN_DEFAULT.to_owned(),
            admin_token,
            confirmation_ttl_s: Self::CONFIRMATION_TTL_S_DEFAULT,
            sweep_interval_ms: Self::SWEEP_INTERVAL_MS_DEFAULT,
            relay_ping_interval_ms: Self::RELAY_PING_INTERVAL_MS_DEFAULT,
            body_limit_bytes: Self::BODY_LIMIT_BYTES_DEFAULT,
            pending_per_payer_max: Self::PENDING_PER_PAYER_MAX_DEFAULT,
            terminal_rate_per_s: Self::TERMINAL_RATE_PER_S_DEFAULT,
            read_timeout_s: Self::READ_TIMEOUT_S_DEFAULT,
            tls: None,
            trust_anchors: Vec::new(),
            intermediates: Vec::new(),
            crl_sources: Vec::new(),
            crl_refresh_s: Self::CRL_REFRESH_S_DEFAULT,
            master_key_hex: None,
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE)
    }
}

// Hand-written so the admin token never reaches a log line.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("database_ca_pem", &self.database_ca_pem)
            .field("origin", &self.origin)
            .field("admin_token", &"<redacted>")
            .field("confirmation_ttl_s", &self.confirmation_ttl_s)
            .field("sweep_interval_ms", &self.sweep_interval_ms)
            .field("relay_ping_interval_ms", &self.relay_ping_interval_ms)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("pending_per_payer_max", &self.pending_per_payer_max)
            .field("terminal_rate_per_s", &self.terminal_rate_per_s)
            .field("read_timeout_s", &self.read_timeout_s)
            .field("tls", &self.tls)
            .field("trust_anchors", &self.trust_anchors)
            .field("intermediates", &self.intermediates)
            .field("crl_sources", &self.crl_sources)
            .field("crl_refresh_s", &self.crl_refresh_s)
            .field(
                "master_key_hex",
                &self.master_key_hex.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_admin_token() {
        let c = ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            PathBuf::from("/tmp/x"),
            "s3cret-admin".into(),
        );
        let mut c = c;
        c.master_key_hex = Some("ab".repeat(32));
        c.database_url = Some("postgres://kb:pg-s3cret@db/kb".into());
        let text = format!("{c:?}");
        assert!(!text.contains("s3cret-admin"), "{text}");
        assert!(!text.contains("abab"), "{text}");
        assert!(!text.contains("pg-s3cret"), "{text}");
        assert_eq!(c.confirmation_ttl_s, 120);
        assert_eq!(c.body_limit_bytes, 65536);
        assert_eq!(c.read_timeout_s, 30);
    }
}
