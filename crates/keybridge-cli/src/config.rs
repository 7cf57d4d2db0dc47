//! `keybridge server`'s settings: one TOML file, environment variables and
//! flags, resolved in one order: **flags > environment > file > defaults**.
//!
//! clap already gives a flag precedence over its `KEYBRIDGE_*` variable; this
//! module layers the file under both and the defaults under all. Secrets are
//! not settings: the admin token comes only from `KEYBRIDGE_ADMIN_TOKEN` or the
//! data directory's `admin-token` file, never from the config file.
//!
//! ```toml
//! listen = "0.0.0.0:8443"
//! data_dir = "/var/lib/keybridge"
//! origin = "pay.example.com"
//! ttl_s = 120
//! body_limit_bytes = 65536
//! read_timeout_s = 30
//! pending_per_payer_max = 10
//! terminal_rate_per_s = 100
//! relay_ping_s = 15
//!
//! [tls]
//! cert = "/etc/keybridge/tls-cert.pem"
//! key = "/etc/keybridge/tls-key.pem"
//! # or, for development only:
//! # self_signed = true
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The file's shape. Unknown keys are errors, so a typo is not a silent default.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub origin: Option<String>,
    pub ttl_s: Option<u64>,
    pub body_limit_bytes: Option<usize>,
    pub read_timeout_s: Option<u64>,
    pub pending_per_payer_max: Option<u32>,
    pub terminal_rate_per_s: Option<u32>,
    pub relay_ping_s: Option<u64>,
    #[serde(default)]
    pub tls: FileTls,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub self_signed: Option<bool>,
}

/// Config files are small; refuse anything that is not.
const FILE_LEN_MAX: u64 = 64 * 1024;

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        anyhow::ensure!(len <= FILE_LEN_MAX, "{} is over 64 KiB", path.display());
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        FileConfig::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
        Ok(toml::from_str(text)?)
    }
}

/// What flags and environment gave (clap merged those two already).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub origin: Option<String>,
    pub ttl_s: Option<u64>,
    pub body_limit_bytes: Option<usize>,
    pub read_timeout_s: Option<u64>,
    pub pending_per_payer_max: Option<u32>,
    pub terminal_rate_per_s: Option<u32>,
    pub relay_ping_s: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    Off,
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub origin: String,
    pub ttl_s: u64,
    pub body_limit_bytes: usize,
    pub read_timeout_s: u64,
    pub pending_per_payer_max: u32,
    pub terminal_rate_per_s: u32,
    pub relay_ping_s: u64,
    pub tls: Tls,
}

pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
pub const DATA_DIR_DEFAULT: &str = "keybridge-data";

pub fn resolve(over: Overrides, file: FileConfig) -> anyhow::Result<Settings> {
    let listen = match over.listen.or(file.listen) {
        Some(listen) => listen,
        None => LISTEN_DEFAULT.parse().context("default listen address")?,
    };
    let cert = over.tls_cert.or(file.tls.cert);
    let key = over.tls_key.or(file.tls.key);
    let self_signed = over
        .tls_self_signed
        .or(file.tls.self_signed)
        .unwrap_or(false);
    let tls = match (cert, key, self_signed) {
        (Some(_), Some(_), true) | (Some(_), None, true) | (None, Some(_), true) => {
            anyhow::bail!("TLS: give a certificate and key, or self-signed, not both")
        }
        (Some(cert), Some(key), false) => Tls::Files { cert, key },
        (Some(_), None, false) | (None, Some(_), false) => {
            anyhow::bail!("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
        }
        (None, None, true) => Tls::SelfSigned,
        (None, None, false) => Tls::Off,
    };
    Ok(Settings {
        listen,
        data_dir: over
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT)),
        origin: over
            .origin
            .or(file.origin)
            .unwrap_or_else(|| keybridge_server::ServerConfig::ORIGIN_DEFAULT.to_owned()),
        ttl_s: over
            .ttl_s
            .or(file.ttl_s)
            .unwrap_or(keybridge_server::ServerConfig::CONFIRMATION_TTL_S_DEFAULT),
        body_limit_bytes: over
            .body_limit_bytes
            .or(file.body_limit_bytes)
            .unwrap_or(keybridge_server::ServerConfig::BODY_LIMIT_BYTES_DEFAULT),
        read_timeout_s: over
            .read_timeout_s
            .or(file.read_timeout_s)
            .unwrap_or(keybridge_server::ServerConfig::READ_TIMEOUT_S_DEFAULT),
        pending_per_payer_max: over
            .pending_per_payer_max
            .or(file.pending_per_payer_max)
            .unwrap_or(keybridge_server::ServerConfig::PENDING_PER_PAYER_MAX_DEFAULT),
        terminal_rate_per_s: over
            .terminal_rate_per_s
            .or(file.terminal_rate_per_s)
            .unwrap_or(keybridge_server::ServerConfig::TERMINAL_RATE_PER_S_DEFAULT),
        relay_ping_s: over
            .relay_ping_s
            .or(file.relay_ping_s)
            .unwrap_or(keybridge_server::ServerConfig::RELAY_PING_INTERVAL_MS_DEFAULT / 1000),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        listen = "0.0.0.0:9000"
        origin = "from-file"
        ttl_s = 60
        read_timeout_s = 10
        pending_per_payer_max = 3
        terminal_rate_per_s = 0
        relay_ping_s = 5
        [tls]
        cert = "c.pem"
        key = "k.pem"
    "#;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = resolve(Overrides::default(), FileConfig::default()).unwrap();
        assert_eq!(s.listen.to_string(), LISTEN_DEFAULT);
        assert_eq!(s.data_dir, PathBuf::from(DATA_DIR_DEFAULT));
        assert_eq!(s.origin, "keybridge.local");
        assert_eq!(s.ttl_s, 120);
        assert_eq!(s.read_timeout_s, 30);
        assert_eq!(s.pending_per_payer_max, 10);
        assert_eq!(s.terminal_rate_per_s, 100);
        assert_eq!(s.relay_ping_s, 15);
        assert_eq!(s.tls, Tls::Off);
    }

    #[test]
    fn the_file_beats_defaults_and_flags_or_env_beat_the_file() {
        let file = FileConfig::parse(FILE).unwrap();
        let s = resolve(Overrides::default(), FileConfig::parse(FILE).unwrap()).unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
        assert_eq!((s.origin.as_str(), s.ttl_s), ("from-file", 60));
        assert_eq!(s.read_timeout_s, 10);
        assert_eq!(s.pending_per_payer_max, 3);
        assert_eq!(
            s.terminal_rate_per_s, 0,
            "0 (no limit) is a value, not absence"
        );
        assert_eq!(s.relay_ping_s, 5);
        assert_eq!(
            s.tls,
            Tls::Files {
                cert: "c.pem".into(),
                key: "k.pem".into()
            }
        );
        let over = Overrides {
            origin: Some("from-flag".into()),
            tls_cert: Some("flag.pem".into()),
            read_timeout_s: Some(5),
            ..Overrides::default()
        };
        let s = resolve(over, file).unwrap();
        assert_eq!((s.origin.as_str(), s.ttl_s), ("from-flag", 60));
        assert_eq!(s.read_timeout_s, 5);
        assert_eq!(
            s.tls,
            Tls::Files {
                cert: "flag.pem".into(),
                key: "k.pem".into()
            }
        );
    }

    /// The phone's and the till's client drop an idle connection before the
    /// server would close it, so none of their requests races the close.
    #[test]
    fn clients_let_go_of_idle_connections_before_the_server_does() {
        let server =
            std::time::Duration::from_secs(keybridge_server::ServerConfig::READ_TIMEOUT_S_DEFAULT);
        assert!(keybridge_terminal::POOL_IDLE_TIMEOUT < server);
    }

    #[test]
    fn unknown_keys_and_half_tls_are_errors() {
        assert!(FileConfig::parse("lisen = \"x\"").is_err());
        assert!(FileConfig::parse("[tls]\ncrt = \"x\"").is_err());
        let half = FileConfig::parse("[tls]\ncert = \"c.pem\"").unwrap();
        assert!(resolve(Overrides::default(), half).is_err());
        let both = Overrides {
            tls_self_signed: Some(true),
            ..Overrides::default()
        };
        assert!(resolve(both, FileConfig::parse(FILE).unwrap()).is_err());
    }
}
