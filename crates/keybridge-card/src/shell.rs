//! The process shell: the only part of the card that touches sockets or the clock.
//!
//! [`run`] loads (or creates) the state file, builds a [`Card`] with the
//! applets of its [`Profile`] (transaction applet, PIV, or both), connects to a vpcd reader as a card does, and answers:
//! get-ATR at any time with [`ATR`], power on/off and reset by resetting the
//! card (nothing selected, PIN forgotten, no chain), APDUs through the card.
//!
//! [`DeviceLink::Nfc`] is the card in an NFC reader's field, still over
//! vpcd: it answers get-ATR with [`CONTACTLESS_ATR`], the ATR a PC/SC
//! reader builds for an ISO 14443-4 card, and requires the secure channel as
//! on BLE, since a phone reaches it over the air.
//!
//! [`run_with_link`] does the same on another [`DeviceLink`]: the simulated
//! BLE link (the card is the GATT server: it listens, a phone connects), where
//! the card requires the secure channel for everything but SELECT and GET
//! DATA, sends KEEPALIVE while the holder decides, and treats a CANCEL that
//! arrives before the holder's answer as a decline. A disconnect is a power
//! off: session, PIN and secure channel are forgotten.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keybridge_transport::ble::frame::KeepaliveStatus;
use keybridge_transport::ble::sim::{LinkShape, SimServer};
use keybridge_transport::ble::{self, PeripheralOptions, RequestContext};
use keybridge_transport::vpcd::{Control, ReaderMessage, VpcdCard};

use crate::applet::Context;
use crate::atr::{ATR, CONTACTLESS_ATR};
use crate::dispatch::Card;
use crate::error::CardError;
use crate::holder::{AutoApprove, AutoDecline, Holder, Prompt, QuietApprove, Screen};
use crate::piv::{PivApplet, PivFileStore, PivState, PivStore};
use crate::state::{init_state, CardState, FileStore};
use crate::transaction::TransactionApplet;

/// How long to wait between attempts to reach a reader that is not there.
pub const RECONNECT_INTERVAL_MS: u64 = 250;

/// Who answers "approve this payment?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Ask on the terminal (stdin); end of input declines.
    #[default]
    Prompt,
    /// Approve everything (tests, demos).
    Approve,
    /// Approve everything without printing the screen (load generation).
    ApproveQuietly,
    /// Decline everything.
    Decline,
}

impl Policy {
    pub fn holder(self) -> Box<dyn Holder> {
        match self {
            Policy::Prompt => Box::new(Prompt),
            Policy::Approve => Box::new(AutoApprove),
            Policy::ApproveQuietly => Box::new(QuietApprove),
            Policy::Decline => Box::new(AutoDecline),
        }
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "prompt" => Ok(Policy::Prompt),
            "approve" => Ok(Policy::Approve),
            "approve-quietly" => Ok(Policy::ApproveQuietly),
            "decline" => Ok(Policy::Decline),
            other => Err(format!(
                "unknown policy {other:?} (expected prompt, approve, approve-quietly or decline)"
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Prompt => "prompt",
            Policy::Approve => "approve",
            Policy::ApproveQuietly => "approve-quietly",
            Policy::Decline => "decline",
        })
    }
}

/// Which applets the card carries (`--profile keybridge,piv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// KeyBridge's transaction applet ([`TransactionApplet`]).
    pub keybridge: bool,
    /// The PIV applet ([`PivApplet`]).
    pub piv: bool,
}

impl Default for Profile {
    /// Both applets.
    fn default() -> Profile {
        Profile {
            keybridge: true,
            piv: true,
        }
    }
}

impl FromStr for Profile {
    type Err = String;

    /// A comma-separated list of `keybridge` and `piv`, at least one.
    fn from_str(s: &str) -> Result<Profile, String> {
        let mut profile = Profile {
            keybridge: false,
            piv: false,
        };
        for name in s.split(',').map(str::trim) {
            match name {
                "keybridge" => profile.keybridge = true,
                "piv" => profile.piv = true,
                other => {
                    return Err(format!(
                        "unknown card profile {other:?} (expected keybridge, piv or both)"
                    ))
                }
            }
        }
        Ok(profile)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [(self.keybridge, "keybridge"), (self.piv, "piv")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// How to run the card process.
#[derive(Clone)]
pub struct CardOptions {
    /// The card's state file (key, certificate, PIN verifier, counters).
    pub state_path: PathBuf,
    /// The reader to connect to, `host:port` (vpcd in pcscd listens on 35963).
    pub vpcd_addr: String,
    pub policy: Policy,
    /// Create the state file with this PIN if it does not exist yet.
    pub init_pin: Option<String>,
    /// Keep reconnecting when the reader goes away or is not there yet.
    /// When `false`, [`run`] returns once the reader closes the link.
    pub reconnect: bool,
    /// Which applets the card carries.
    pub profile: Profile,
}

impl CardOptions {
    /// Options with the defaults: prompt the holder, no initial PIN, reconnect.
    pub fn new(state_path: impl Into<PathBuf>, vpcd_addr: impl Into<String>) -> CardOptions {
        CardOptions {
            state_path: state_path.into(),
            vpcd_addr: vpcd_addr.into(),
            policy: Policy::default(),
            init_pin: None,
            reconnect: true,
            profile: Profile::default(),
        }
    }
}

impl fmt::Debug for CardOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardOptions")
            .field("state_path", &self.state_path)
            .field("vpcd_addr", &self.vpcd_addr)
            .field("policy", &self.policy)
            .field("init_pin", &self.init_pin.as_ref().map(|_| "<redacted>"))
            .field("reconnect", &self.reconnect)
            .field("profile", &self.profile)
            .finish()
    }
}

/// Where the card listens or connects, besides [`CardOptions::vpcd_addr`].
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceLink {
    /// Connect to a vpcd reader at `host:port` (what [`run`] does).
    Vpcd(String),
    /// Connect to a vpcd reader at `host:port` as a card in an NFC field:
    /// the contactless ATR, and the secure channel required.
    Nfc(String),
    /// Be the GATT server of a simulated BLE link: listen on `addr`.
    BleSim {
        addr: String,
        /// The largest ATT MTU the device supports (23..=515).
        att_mtu_max: u16,
        shape: LinkShape,
    },
    /// Be the GATT server on the real Bluetooth adapter (BlueZ), advertising
    /// the KeyBridge service under `name`.
    #[cfg(feature = "ble")]
    Ble { name: String },
}

/// Runs the card: returns only on an error, or when the reader closes the link
/// and `reconnect` is off.
pub fn run(options: CardOptions) -> Result<(), CardError> {
    let link = DeviceLink::Vpcd(options.vpcd_addr.clone());
    run_with_link(options, link)
}

/// Runs the card on `link`. On BLE the card listens; `reconnect` off returns
/// after the first phone disconnects.
pub fn run_with_link(options: CardOptions, link: DeviceLink) -> Result<(), CardError> {
    let state = match (options.state_path.exists(), options.init_pin.as_deref()) {
        (false, Some(pin)) => {
            init_state(&options.state_path, pin)?;
            tracing::info!(path = %options.state_path.display(), "created card state");
            CardState::load(&options.state_path)?
        }
        _ => CardState::load(&options.state_path)?,
    };
    tracing::debug!(state = ?state, "card state loaded");
    let mut card = Card::new();
    if options.profile.keybridge {
        let applet = TransactionApplet::new(state, Box::new(FileStore::new(&options.state_path)));
        card = card.with_applet(Box::new(applet));
    }
    if options.profile.piv {
        let piv = load_piv(&options)?;
        let applet = PivApplet::new(piv, Box::new(PivFileStore::new(&options.state_path)));
        card = card.with_applet(Box::new(applet));
    }
    say!("[card] applets: {}", options.profile);
    let holder = options.policy.holder();
    match link {
        DeviceLink::Vpcd(addr) => run_vpcd(&options, &addr, &ATR, card, holder),
        DeviceLink::Nfc(addr) => {
            say!(
                "[card] as a contactless card in an NFC field: ATR {}; secure channel required",
                hex::encode_upper(CONTACTLESS_ATR)
            );
            run_vpcd(
                &options,
                &addr,
                &CONTACTLESS_ATR,
                card.require_secure_messaging(true),
                holder,
            )
        }
        DeviceLink::BleSim {
            addr,
            att_mtu_max,
            shape,
        } => {
            let server = SimServer::bind(addr.as_str(), att_mtu_max, shape)
                .map_err(CardError::io(format!("listening on {addr}")))?;
            let local = server
                .local_addr()
                .map_err(CardError::io("reading the BLE listen address"))?;
            say!("[card] advertising on simulated BLE at {local} (ATT MTU up to {att_mtu_max})");
            run_radio(
                &options,
                || server.accept(),
                card.require_secure_messaging(true),
                holder,
            )
        }
        #[cfg(feature = "ble")]
        DeviceLink::Ble { name } => {
            let server = crate::radio::start(&name)
                .map_err(|e| CardError::Persist(format!("BlueZ: {e}")))?;
            say!("[card] advertising the KeyBridge service on Bluetooth as {name:?}");
            run_radio(
                &options,
                || Ok(server.clone()),
                card.require_secure_messaging(true),
                holder,
            )
        }
    }
}

/// Serves phones over a radio link, one connection after another.
/// `accept` waits for the next phone.
pub fn run_radio<Io: ble::GattServerIo>(
    options: &CardOptions,
    mut accept: impl FnMut() -> Result<Io, keybridge_transport::LinkError>,
    mut card: Card,
    mut holder: Box<dyn Holder>,
) -> Result<(), CardError> {
    let mut rng = rand::rngs::OsRng;
    loop {
        let mut conn = match accept() {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "a phone failed to connect");
                // Bounded rate: a broken adapter must not spin the CPU.
                std::thread::sleep(Duration::from_millis(RECONNECT_INTERVAL_MS));
                continue;
            }
        };
        say!(
            "[card] phone connected over BLE, fragments of {}",
            conn.fragment_len()
        );
        let mut handler = |apdu: &[u8], request: &RequestContext<'_>| {
            let mut cancel_aware = CancelAware {
                inner: holder.as_mut(),
                request,
            };
            let mut context = Context {
                holder: &mut cancel_aware,
                rng: &mut rng,
                now_unix_s: now_unix_s(),
            };
            let response = card.process(apdu, &mut context);
            tracing::debug!(
                header = %hex::encode_upper(apdu.get(..4).unwrap_or(apdu)),
                sw = %hex::encode_upper(response.get(response.len().saturating_sub(2)..).unwrap_or(&[])),
                "apdu over BLE"
            );
            response
        };
        let ended = ble::serve(&mut conn, &mut handler, PeripheralOptions::default());
        card.reset();
        match &ended {
            Ok(()) => say!("[card] phone disconnected"),
            Err(e) => {
                tracing::warn!(error = %e, "BLE link failed");
                std::thread::sleep(Duration::from_millis(RECONNECT_INTERVAL_MS));
            }
        }
        if !options.reconnect {
            return ended.map_err(|e| CardError::Persist(format!("BLE link: {e}")));
        }
    }
}

/// The holder, as seen through a BLE request: while the holder decides the
/// phone hears "waiting for the holder", and a CANCEL from the phone before
/// the answer turns it into a decline, so nothing is signed for a phone that
/// gave up.
struct CancelAware<'a, 'r> {
    inner: &'a mut dyn Holder,
    request: &'a RequestContext<'r>,
}

impl Holder for CancelAware<'_, '_> {
    fn show(&mut self, screen: &Screen) {
        self.inner.show(screen);
    }

    fn confirm(&mut self, screen: &Screen) -> bool {
        if self.request.cancelled() {
            say!("[card] the phone cancelled before the holder was asked");
            return false;
        }
        self.request.set_status(KeepaliveStatus::UserPresenceNeeded);
        let approved = self.inner.confirm(screen);
        self.request.set_status(KeepaliveStatus::Processing);
        if approved && self.request.cancelled() {
            say!("[card] the phone cancelled while the holder decided: not signing");
            return false;
        }
        approved
    }
}

fn run_vpcd(
    options: &CardOptions,
    addr: &str,
    atr: &[u8],
    mut card: Card,
    mut holder: Box<dyn Holder>,
) -> Result<(), CardError> {
    let mut rng = rand::rngs::OsRng;

    loop {
        let mut link = connect(options, addr)?;
        say!("[card] connected to reader {addr}");
        tracing::debug!(reader = %addr, "connected to reader");
        let ended = serve(&mut link, atr, &mut card, holder.as_mut(), &mut rng);
        card.reset();
        match &ended {
            Ok(()) => tracing::debug!("reader closed the link"),
            Err(e) => tracing::warn!(error = %e, "reader link failed"),
        }
        if !options.reconnect {
            return ended.map_err(CardError::io("talking to the reader"));
        }
        say!("[card] reader went away; reconnecting");
    }
}

/// The PIV section of the state file; a file without one (format version 1,
/// or made before PIV) gets a factory-fresh section, saved before first use.
fn load_piv(options: &CardOptions) -> Result<PivState, CardError> {
    if let Some(piv) = PivFileStore::load(&options.state_path)? {
        return Ok(piv);
    }
    let piv = PivState::new(
        crate::piv::state::PIN_DEFAULT,
        crate::piv::state::PUK_DEFAULT,
        &mut rand::rngs::OsRng,
    )?;
    PivFileStore::new(&options.state_path).save(&piv)?;
    say!(
        "[card] {} had no PIV section: added one with the default PIN, PUK and management key",
        options.state_path.display()
    );
    Ok(piv)
}

/// Connects to the reader; with `reconnect`, retries forever, saying so once per outage.
fn connect(options: &CardOptions, addr: &str) -> Result<VpcdCard, CardError> {
    let mut waiting = false;
    loop {
        match VpcdCard::connect(addr) {
            Ok(link) => return Ok(link),
            Err(source) if !options.reconnect => {
                return Err(CardError::Connect {
                    addr: addr.to_owned(),
                    source,
                })
            }
            Err(e) => {
                if !waiting {
                    say!(
                        "[card] waiting for reader {addr} ({e}); retrying every {RECONNECT_INTERVAL_MS} ms"
                    );
                    tracing::debug!(reader = %addr, error = %e, "reader not reachable");
                    waiting = true;
                }
                std::thread::sleep(Duration::from_millis(RECONNECT_INTERVAL_MS));
            }
        }
    }
}

/// Answers the reader until it closes the link; get-ATR with `atr`.
fn serve(
    link: &mut VpcdCard,
    atr: &[u8],
    card: &mut Card,
    holder: &mut dyn Holder,
    rng: &mut rand::rngs::OsRng,
) -> std::io::Result<()> {
    while let Some(message) = link.next_message()? {
        match message {
            ReaderMessage::Control(Control::GetAtr) => link.reply(atr)?,
            ReaderMessage::Control(control) => {
                tracing::debug!(?control, "power/reset: card session cleared");
                card.reset();
            }
            ReaderMessage::UnknownControl(byte) => {
                tracing::debug!(byte, "ignoring unknown vpcd control byte");
            }
            ReaderMessage::Apdu(bytes) => {
                let mut context = Context {
                    holder,
                    rng,
                    now_unix_s: now_unix_s(),
                };
                let response = card.process(&bytes, &mut context);
                tracing::debug!(
                    header = %hex::encode_upper(bytes.get(..4).unwrap_or(&bytes)),
                    sw = %hex::encode_upper(response.get(response.len().saturating_sub(2)..).unwrap_or(&[])),
                    "apdu"
                );
                link.reply(&response)?;
            }
        }
    }
    Ok(())
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_from_what_they_print() {
        for policy in [
            Policy::Prompt,
            Policy::Approve,
            Policy::ApproveQuietly,
            Policy::Decline,
        ] {
            assert_eq!(policy.to_string().parse::<Policy>(), Ok(policy));
        }
        assert!("yes".parse::<Policy>().is_err());
    }
}
