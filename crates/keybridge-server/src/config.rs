//! Server configuration: one struct instead of a list of parameters.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `start` needs. Build with [`ServerConfig::new`] and adjust fields.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:0` for an ephemeral port.
    pub listen: SocketAddr,
    /// Holds `keybridge.sqlite`, `ca-key.pem` (mode 0600) and `ca-cert.pem`.
    pub data_dir: PathBuf,
    /// Server identity written into every payload (stops cross-server replay).
    pub origin: String,
    /// Bearer token of the admin API. Never logged.
    pub admin_token: String,
    /// How long a payer has to confirm.
    pub confirmation_ttl_s: u64,
    /// How often the sweeper expires overdue transactions.
    pub sweep_interval_ms: u64,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Serve HTTPS with this certificate and key; `None`: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
}

impl ServerConfig {
    pub const ORIGIN_DEFAULT: &'static str = "keybridge.local";
    pub const CONFIRMATION_TTL_S_DEFAULT: u64 = 120;
    pub const SWEEP_INTERVAL_MS_DEFAULT: u64 = 1000;
    pub const BODY_LIMIT_BYTES_DEFAULT: usize = 64 * 1024;

    pub fn new(listen: SocketAddr, data_dir: PathBuf, admin_token: String) -> ServerConfig {
        ServerConfig {
            listen,
            data_dir,
            origin: Self::ORIGIN_DEFAULT.to_owned(),
            admin_token,
            confirmation_ttl_s: Self::CONFIRMATION_TTL_S_DEFAULT,
            sweep_interval_ms: Self::SWEEP_INTERVAL_MS_DEFAULT,
            body_limit_bytes: Self::BODY_LIMIT_BYTES_DEFAULT,
            tls: None,
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("keybridge.sqlite")
    }
}

// Hand-written so the admin token never reaches a log line.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("origin", &self.origin)
            .field("admin_token", &"<redacted>")
            .field("confirmation_ttl_s", &self.confirmation_ttl_s)
            .field("sweep_interval_ms", &self.sweep_interval_ms)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("tls", &self.tls)
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
        let text = format!("{c:?}");
        assert!(!text.contains("s3cret-admin"), "{text}");
        assert_eq!(c.confirmation_ttl_s, 120);
        assert_eq!(c.body_limit_bytes, 65536);
    }
}
