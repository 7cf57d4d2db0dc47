//! `keybridge server`, `keybridge card` and `keybridge relay`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use keybridge_relay::{CardLinkSpec, Decision, DeviceCredential, RelayOptions, Tamper};
use zeroize::Zeroizing;

use crate::config::{self, FileConfig, Overrides, Tls};

/// Every setting can come from a flag, a `KEYBRIDGE_*` variable or the
/// config file, in that order of precedence (see `config.rs`).
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML config file (settings only; the admin token never goes there).
    #[arg(long, env = "KEYBRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYBRIDGE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database and the CA key [default: keybridge-data].
    #[arg(long, env = "KEYBRIDGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Server identity written into every confirmation payload [default: keybridge.local].
    #[arg(long, env = "KEYBRIDGE_ORIGIN")]
    pub origin: Option<String>,
    /// Seconds the payer has to confirm [default: 120].
    #[arg(long, env = "KEYBRIDGE_TTL_S")]
    pub ttl_s: Option<u64>,
    /// Largest accepted request body [default: 65536].
    #[arg(long, env = "KEYBRIDGE_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<usize>,
    /// Seconds a client may take to send a request head (from connecting or
    /// from its last answer), finish the TLS handshake, or send a body;
    /// then its connection is closed [default: 30].
    #[arg(long, env = "KEYBRIDGE_READ_TIMEOUT_S")]
    pub read_timeout_s: Option<u64>,
    /// The most payments one payer may have waiting for confirmation at once;
    /// one more gets 429 `too_many_pending`. Each is a prompt on the payer's
    /// phone, and a flood of prompts is how "MFA fatigue" attacks get one
    /// approved [default: 10].
    #[arg(long, env = "KEYBRIDGE_PENDING_PER_PAYER_MAX")]
    pub pending_per_payer_max: Option<u32>,
    /// The most requests a second one terminal's API key may send, in
    /// bursts of at most this many; more get 429 `rate_limited` with
    /// `Retry-After`. Counted per server instance; 0: no limit [default: 100].
    #[arg(long, env = "KEYBRIDGE_TERMINAL_RATE_PER_S")]
    pub terminal_rate_per_s: Option<u32>,
    /// Seconds between the server's pings on each relay's socket. Relays
    /// learn it when they connect and reconnect after three missed; lower
    /// it behind a proxy or NAT that drops sockets idle for less than
    /// three times this [default: 15].
    #[arg(long, env = "KEYBRIDGE_RELAY_PING_S")]
    pub relay_ping_s: Option<u64>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "KEYBRIDGE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "KEYBRIDGE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate generated into the data
    /// directory (`tls-cert.pem`; give it to clients as --ca-cert). Development only.
    #[arg(long, env = "KEYBRIDGE_TLS_SELF_SIGNED", num_args = 0..=1, default_missing_value = "true")]
    pub tls_self_signed: Option<bool>,
    /// Write the bound base URL here once listening (for scripts and `demo`).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// External CA: a trust anchor certificate (PEM or DER); repeat for more.
    /// When given, the built-in CA neither issues nor is trusted.
    #[arg(long = "trust-anchor", num_args = 1..)]
    pub trust_anchors: Vec<PathBuf>,
    /// External CA: an intermediate certificate that may sit on device paths.
    #[arg(long = "intermediate", num_args = 1..)]
    pub intermediates: Vec<PathBuf>,
    /// External CA: a CRL file or http:// URL, re-read every --crl-refresh-s.
    #[arg(long = "crl-source", num_args = 1..)]
    pub crl_sources: Vec<String>,
    #[arg(long, default_value_t = 300)]
    pub crl_refresh_s: u64,
    /// PostgreSQL instead of SQLite in the data directory
    /// (`postgres://user@host/db`, or `host=… user=… dbname=…`). Several
    /// instances may share it; give them the same data directory contents
    /// (CA, master key, admin token). May hold a password, so it is no
    /// config-file setting and is never logged.
    #[arg(long, env = "KEYBRIDGE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The CA certificate(s) (PEM) PostgreSQL's TLS certificate must chain
    /// to. Given, the connection must be TLS (rustls) and the certificate
    /// must name the URL's host; not given, the connection is plain TCP.
    #[arg(long, env = "KEYBRIDGE_DATABASE_CA_CERT", requires = "database_url")]
    pub database_ca_cert: Option<PathBuf>,
}

/// The admin token comes from `KEYBRIDGE_ADMIN_TOKEN`, or is generated once and
/// kept in the data directory, readable by its owner only.
fn admin_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("KEYBRIDGE_ADMIN_TOKEN") {
        anyhow::ensure!(
            token.len() >= 16,
            "KEYBRIDGE_ADMIN_TOKEN must be at least 16 characters"
        );
        return Ok(token);
    }
    let path = data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options
        .open(&path)
        .and_then(|mut f| f.write_all(token.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("admin token written to {}", path.display());
    Ok(token)
}

pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let settings = config::resolve(
        Overrides {
            listen: args.listen,
            data_dir: args.data_dir,
            origin: args.origin,
            ttl_s: args.ttl_s,
            body_limit_bytes: args.body_limit_bytes,
            read_timeout_s: args.read_timeout_s,
            pending_per_payer_max: args.pending_per_payer_max,
            terminal_rate_per_s: args.terminal_rate_per_s,
            relay_ping_s: args.relay_ping_s,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            tls_self_signed: args.tls_self_signed,
        },
        file,
    )?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let token = admin_token(&settings.data_dir)?;
    let mut config =
        keybridge_server::ServerConfig::new(settings.listen, settings.data_dir.clone(), token);
    config.database_url = args.database_url;
    config.database_ca_pem = args.database_ca_cert;
    config.origin = settings.origin;
    config.confirmation_ttl_s = settings.ttl_s;
    config.body_limit_bytes = settings.body_limit_bytes;
    config.read_timeout_s = settings.read_timeout_s;
    config.pending_per_payer_max = settings.pending_per_payer_max;
    config.terminal_rate_per_s = settings.terminal_rate_per_s;
    config.relay_ping_interval_ms = settings.relay_ping_s.saturating_mul(1000);
    config.tls = match settings.tls {
        Tls::Off => None,
        Tls::Files { cert, key } => Some(keybridge_server::tls::TlsFiles {
            cert_pem: cert,
            key_pem: key,
        }),
        Tls::SelfSigned => {
            let names = vec!["localhost".to_owned(), settings.listen.ip().to_string()];
            let files = keybridge_server::tls::write_self_signed(&settings.data_dir, &names)
                .context("generating the self-signed certificate")?;
            eprintln!(
                "self-signed TLS certificate for {names:?} in {} (clients: --ca-cert)",
                files.cert_pem.display()
            );
            Some(files)
        }
    };
    config.trust_anchors = args.trust_anchors;
    config.intermediates = args.intermediates;
    config.crl_sources = args.crl_sources;
    config.crl_refresh_s = args.crl_refresh_s;
    // The master key (KEYBRIDGE_MASTER_KEY) is read by the server itself.
    match crate::limits::raise_descriptor_limit() {
        Some(limit) => tracing::info!(limit, "file descriptors"),
        None => tracing::info!("file descriptors: no limit"),
    }
    let running = keybridge_server::start(config)
        .await
        .context("starting the server")?;
    let base = running.base_url();
    println!("listening on {base} (web checkout: {base}/)");
    if let Some(path) = args.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &base)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    running.wait().await.context("server stopped")?;
    Ok(())
}

/// Reads `--ca-cert`: PEM certificates a client trusts for `https` servers.
pub fn read_ca_cert(path: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    path.map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CardPolicy {
    /// Ask the holder on standard input.
    Prompt,
    /// Approve every request (scripts and tests).
    Approve,
    /// Decline every request.
    Decline,
}

/// Shaping of the simulated BLE link, for `card` and `relay`.
#[derive(Debug, Clone, Args)]
pub struct BleSimArgs {
    /// Largest ATT MTU this side supports on the simulated BLE link (23..=515);
    /// the two sides agree on the smaller.
    #[arg(long, default_value_t = 515)]
    pub mtu: u16,
    /// Delay added to every fragment this side sends or receives.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability (0..=0.5) that this side loses a fragment, either way.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Seed of the loss RNG: a failing run is reproduced from it.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl BleSimArgs {
    pub fn shape(&self) -> anyhow::Result<keybridge_transport::ble::sim::LinkShape> {
        keybridge_transport::ble::sim::LinkShape::new(self.latency_ms, self.drop_rate, self.seed)
            .map_err(anyhow::Error::msg)
    }
}

#[derive(Debug, Args)]
pub struct CardArgs {
    /// The card's state file (key, certificate, PIN state, counter).
    #[arg(long)]
    pub state: PathBuf,
    /// Where the card attaches: `vpcd=HOST:PORT` (pcscd's vpcd at
    /// 127.0.0.1:35963, or a relay listening with `vpcd-listen`),
    /// `nfc=HOST:PORT` (the same, as a contactless card in an NFC reader's
    /// field: the reader reports a contactless ATR, and the card takes VERIFY
    /// and SIGN only inside the secure channel), or `ble-sim=HOST:PORT`
    /// (advertise on the simulated BLE link: listen there).
    #[arg(long)]
    pub link: String,
    #[command(flatten)]
    pub ble: BleSimArgs,
    /// What the holder answers when the card asks to confirm.
    #[arg(long, value_enum, default_value_t = CardPolicy::Prompt)]
    pub policy: CardPolicy,
    /// Create the state file if missing, with the PIN from `KEYBRIDGE_CARD_PIN`
    /// (the PIV applet gets the same PIN when it has 6 to 8 digits, else
    /// 123456; PUK 12345678; the default 3DES management key).
    #[arg(long)]
    pub init: bool,
    /// Which applets the card carries: `keybridge`, `piv`, or both.
    #[arg(long, default_value = "keybridge,piv")]
    pub profile: keybridge_card::Profile,
}

pub fn card(args: CardArgs) -> anyhow::Result<()> {
    let link = if let Some(addr) = args.link.strip_prefix("vpcd=") {
        keybridge_card::DeviceLink::Vpcd(addr.to_owned())
    } else if let Some(addr) = args.link.strip_prefix("nfc=") {
        keybridge_card::DeviceLink::Nfc(addr.to_owned())
    } else if let Some(addr) = args.link.strip_prefix("ble-sim=") {
        keybridge_card::DeviceLink::BleSim {
            addr: addr.to_owned(),
            att_mtu_max: args.ble.mtu,
            shape: args.ble.shape()?,
        }
    } else {
        ble_link(&args.link)?
    };
    let addr = match &link {
        keybridge_card::DeviceLink::Vpcd(addr) | keybridge_card::DeviceLink::Nfc(addr) => {
            addr.clone()
        }
        keybridge_card::DeviceLink::BleSim { addr, .. } => addr.clone(),
        #[cfg(feature = "ble")]
        keybridge_card::DeviceLink::Ble { .. } => String::new(),
    };
    let init_pin = if args.init {
        Some(std::env::var("KEYBRIDGE_CARD_PIN").context("--init needs KEYBRIDGE_CARD_PIN")?)
    } else {
        None
    };
    let policy = match args.policy {
        CardPolicy::Prompt => keybridge_card::Policy::Prompt,
        CardPolicy::Approve => keybridge_card::Policy::Approve,
        CardPolicy::Decline => keybridge_card::Policy::Decline,
    };
    keybridge_card::run_with_link(
        keybridge_card::CardOptions {
            state_path: args.state,
            vpcd_addr: addr,
            policy,
            init_pin,
            reconnect: true,
            profile: args.profile,
        },
        link,
    )
    .context("card stopped")
}

/// `ble=NAME`: the real adapter (feature `ble`).
#[cfg(feature = "ble")]
fn ble_link(link: &str) -> anyhow::Result<keybridge_card::DeviceLink> {
    match link.strip_prefix("ble=") {
        Some(name) if !name.is_empty() => Ok(keybridge_card::DeviceLink::Ble {
            name: name.to_owned(),
        }),
        _ => anyhow::bail!(
            "--link must be vpcd=HOST:PORT, nfc=HOST:PORT, ble-sim=HOST:PORT or ble=NAME"
        ),
    }
}

#[cfg(not(feature = "ble"))]
fn ble_link(_link: &str) -> anyhow::Result<keybridge_card::DeviceLink> {
    anyhow::bail!(
        "--link must be vpcd=HOST:PORT, nfc=HOST:PORT or ble-sim=HOST:PORT (ble=NAME needs a build with --features ble)"
    )
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AutoDecision {
    Approve,
    Decline,
    Prompt,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TamperArg {
    Amount,
    Payee,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The device credential file written at enrolment. The card's answers
    /// not yet judged by the server are kept beside it (`NAME.outbox/`), so
    /// a restarted relay delivers them instead of asking the card again.
    #[arg(long)]
    pub credential: PathBuf,
    /// How to reach the card: `vpcd-listen:HOST:PORT`, `pcsc`, `pcsc:READER`, or
    /// `ble-sim:HOST:PORT` (the simulated BLE link; the secure channel is required there).
    #[arg(long)]
    pub card: CardLinkSpec,
    #[command(flatten)]
    pub ble: BleSimArgs,
    /// What the phone's holder answers before the card is asked.
    #[arg(long, value_enum, default_value_t = AutoDecision::Prompt)]
    pub auto: AutoDecision,
    /// Attack simulation: alter the payload before the card signs it.
    #[arg(long, value_enum)]
    pub tamper: Option<TamperArg>,
    /// Seconds to wait for the card to be presented for one request.
    #[arg(long, default_value_t = 30)]
    pub card_wait_s: u64,
    /// PEM certificate(s) to trust for an https server (its CA, or the
    /// `tls-cert.pem` of `keybridge server --tls-self-signed`).
    #[arg(long, env = "KEYBRIDGE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Which applet to drive; default: the one the credential was enrolled with.
    #[arg(long, value_enum)]
    pub applet: Option<AppletArg>,
}

/// The card applet that signs: KeyBridge's transaction applet, or PIV slot 9C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppletArg {
    Keybridge,
    Piv,
}

impl AppletArg {
    pub fn method(self) -> keybridge_proto::api::SignatureMethod {
        match self {
            AppletArg::Keybridge => keybridge_proto::api::SignatureMethod::TransactionApplet,
            AppletArg::Piv => keybridge_proto::api::SignatureMethod::Piv,
        }
    }
}

pub async fn relay(args: RelayArgs) -> anyhow::Result<()> {
    let credential = DeviceCredential::load(&args.credential)?;
    let pin = std::env::var("KEYBRIDGE_PIN").ok().map(Zeroizing::new);
    let card = args
        .card
        .with_ble_settings(keybridge_relay::link::BleSimSettings {
            att_mtu: args.ble.mtu,
            shape: args.ble.shape()?,
        });
    let options = RelayOptions {
        credential,
        card,
        pin,
        decision: match args.auto {
            AutoDecision::Approve => Decision::Approve,
            AutoDecision::Decline => Decision::Decline,
            AutoDecision::Prompt => Decision::Prompt,
        },
        tamper: args.tamper.map(|t| match t {
            TamperArg::Amount => Tamper::Amount,
            TamperArg::Payee => Tamper::Payee,
        }),
        card_wait: Duration::from_secs(args.card_wait_s),
        quiet: false,
        ca_cert_pem: read_ca_cert(args.ca_cert.as_deref())?,
        applet: args.applet.map(AppletArg::method),
        answer_wait: keybridge_relay::SOCKET_ANSWER_WAIT,
        // Beside the credential: `phone.json` keeps its answers in
        // `phone.outbox/`.
        outbox: Some(args.credential.with_extension("outbox")),
        silence_max: keybridge_relay::SERVER_SILENCE_MAX,
    };
    keybridge_relay::run(options).await?;
    Ok(())
}
