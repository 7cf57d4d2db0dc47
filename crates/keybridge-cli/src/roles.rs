//! `keybridge server`, `keybridge card` and `keybridge relay`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use keybridge_relay::{CardLinkSpec, Decision, DeviceCredential, RelayOptions, Tamper};
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the SQLite database and the CA key.
    #[arg(long, default_value = "keybridge-data")]
    pub data_dir: PathBuf,
    /// Server identity written into every confirmation payload.
    #[arg(long, default_value = "keybridge.local")]
    pub origin: String,
    /// Seconds the payer has to confirm.
    #[arg(long, default_value_t = 120)]
    pub ttl_s: u64,
    /// Write the bound address here once listening (for scripts and `demo`).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
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
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let token = admin_token(&args.data_dir)?;
    let mut config = keybridge_server::ServerConfig::new(args.listen, args.data_dir.clone(), token);
    config.origin = args.origin;
    config.confirmation_ttl_s = args.ttl_s;
    let running = keybridge_server::start(config)
        .await
        .context("starting the server")?;
    println!("listening on http://{}", running.addr);
    if let Some(path) = args.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, running.addr.to_string())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    running.wait().await.context("server stopped")?;
    Ok(())
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
    /// Where the card attaches: `vpcd=HOST:PORT` (pcscd's vpcd, or a relay), or
    /// `ble-sim=HOST:PORT` (advertise on the simulated BLE link: listen there).
    #[arg(long)]
    pub link: String,
    #[command(flatten)]
    pub ble: BleSimArgs,
    /// What the holder answers when the card asks to confirm.
    #[arg(long, value_enum, default_value_t = CardPolicy::Prompt)]
    pub policy: CardPolicy,
    /// Create the state file if missing, with the PIN from `KEYBRIDGE_CARD_PIN`.
    #[arg(long)]
    pub init: bool,
}

pub fn card(args: CardArgs) -> anyhow::Result<()> {
    let link = if let Some(addr) = args.link.strip_prefix("vpcd=") {
        keybridge_card::DeviceLink::Vpcd(addr.to_owned())
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
        keybridge_card::DeviceLink::Vpcd(addr) => addr.clone(),
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
        _ => anyhow::bail!("--link must be vpcd=HOST:PORT, ble-sim=HOST:PORT or ble=NAME"),
    }
}

#[cfg(not(feature = "ble"))]
fn ble_link(_link: &str) -> anyhow::Result<keybridge_card::DeviceLink> {
    anyhow::bail!(
        "--link must be vpcd=HOST:PORT or ble-sim=HOST:PORT (ble=NAME needs a build with --features ble)"
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
    /// The device credential file written at enrolment.
    #[arg(long)]
    pub credential: PathBuf,
    /// How to reach the card: `vpcd-listen:HOST:PORT`, or `ble-sim:HOST:PORT`
    /// (the simulated BLE link; the secure channel is required there).
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
    };
    keybridge_relay::run(options).await?;
    Ok(())
}
