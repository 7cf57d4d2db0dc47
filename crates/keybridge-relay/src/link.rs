//! How the phone reaches its card.
//!
//! - `vpcd-listen:HOST:PORT`: the phone is a vpcd reader; the card connects.
//!   A wired or otherwise trusted link: the secure channel is not required.
//! - `ble-sim:HOST:PORT`: the phone is the GATT client of the simulated BLE
//!   link ([`keybridge_transport::ble::sim`]); the card listens. A radio link:
//!   VERIFY and SIGN go through the secure channel (KB-SC1), which needs the
//!   card certificate pinned at enrolment (see [`crate::driver::sign_transaction_pinned`]).
//! - `ble` (feature `ble`): a real Bluetooth LE device advertising the
//!   KeyBridge service, through btleplug (`radio.rs`); same engine,
//!   same secure channel.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use keybridge_transport::apdu::SHORT_DATA_LEN_MAX;
use keybridge_transport::ble::sim::{LinkShape, SimClient};
use keybridge_transport::ble::{Central, CentralOptions, GattClientIo, LinkStats};
use keybridge_transport::contactless::AtrFraming;
use keybridge_transport::pcsc::PcscReader;
use keybridge_transport::vpcd::VpcdReader;
use keybridge_transport::{CardChannel, LinkError, TransmitOptions};

/// The ATT MTU the phone asks for when none is given: the largest.
pub const BLE_ATT_MTU_DEFAULT: u16 = 515;
/// How often the phone tries to connect while waiting for the card.
const BLE_CONNECT_INTERVAL_MS: u64 = 100;

/// How the phone shapes a simulated BLE link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BleSimSettings {
    /// The phone's largest ATT MTU (23..=515); the device may agree on less.
    pub att_mtu: u16,
    pub shape: LinkShape,
}

impl Default for BleSimSettings {
    fn default() -> BleSimSettings {
        BleSimSettings {
            att_mtu: BLE_ATT_MTU_DEFAULT,
            shape: LinkShape::default(),
        }
    }
}

/// Where the card is, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardLinkSpec {
    /// `vpcd-listen:HOST:PORT`: act as a vpcd reader; the card connects here.
    VpcdListen(String),
    /// `pcsc` or `pcsc:READER`: a reader through pcscd (the first with a card,
    /// or the first whose name contains READER), as USB and NFC readers are.
    Pcsc(Option<String>),
    /// `ble-sim:HOST:PORT`: connect to a card advertising on the simulated BLE link.
    BleSim(String, BleSimSettings),
    /// `ble`: the first real BLE device advertising the KeyBridge service.
    #[cfg(feature = "ble")]
    Ble,
}

impl CardLinkSpec {
    /// Sets the simulated BLE link's MTU and shape (no effect on other links).
    pub fn with_ble_settings(self, settings: BleSimSettings) -> CardLinkSpec {
        match self {
            CardLinkSpec::BleSim(addr, _) => CardLinkSpec::BleSim(addr, settings),
            other => other,
        }
    }
}

impl FromStr for CardLinkSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<CardLinkSpec, String> {
        if s == "pcsc" {
            return Ok(CardLinkSpec::Pcsc(None));
        }
        match s.split_once(':') {
            Some(("vpcd-listen", addr)) if addr.contains(':') => {
                Ok(CardLinkSpec::VpcdListen(addr.to_owned()))
            }
            Some(("pcsc", reader)) if !reader.is_empty() => {
                Ok(CardLinkSpec::Pcsc(Some(reader.to_owned())))
            }
            Some(("ble-sim", addr)) if addr.contains(':') => Ok(CardLinkSpec::BleSim(
                addr.to_owned(),
                BleSimSettings::default(),
            )),
            #[cfg(feature = "ble")]
            None if s == "ble" => Ok(CardLinkSpec::Ble),
            _ => Err(format!(
                "unknown card link {s:?}: expected vpcd-listen:HOST:PORT, pcsc, pcsc:READER or ble-sim:HOST:PORT"
            )),
        }
    }
}

impl fmt::Display for CardLinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CardLinkSpec::VpcdListen(addr) => write!(f, "vpcd-listen:{addr}"),
            CardLinkSpec::Pcsc(None) => f.write_str("pcsc"),
            CardLinkSpec::Pcsc(Some(reader)) => write!(f, "pcsc:{reader}"),
            CardLinkSpec::BleSim(addr, _) => write!(f, "ble-sim:{addr}"),
            #[cfg(feature = "ble")]
            CardLinkSpec::Ble => f.write_str("ble"),
        }
    }
}

/// Which radio a [`RadioLink`] connects through.
#[derive(Debug, Clone)]
enum Radio {
    Sim(String, BleSimSettings),
    #[cfg(feature = "ble")]
    Real,
}

/// The phone's side of a BLE link (simulated or real): connects when the
/// card is wanted, and forgets the connection when it breaks (the card left).
#[derive(Debug)]
pub struct RadioLink {
    radio: Radio,
    central: Option<Central<Box<dyn GattClientIo>>>,
    /// Totals over every connection.
    stats: LinkStats,
    last_att_mtu: Option<u16>,
    last_fragment_len: Option<usize>,
}

impl RadioLink {
    fn new(radio: Radio) -> RadioLink {
        RadioLink {
            radio,
            central: None,
            stats: LinkStats::default(),
            last_att_mtu: None,
            last_fragment_len: None,
        }
    }

    fn options(&self) -> CentralOptions {
        // Silence long enough for a fragment train both ways at this latency.
        let latency = match &self.radio {
            Radio::Sim(_, settings) => settings.shape.latency_ms,
            #[cfg(feature = "ble")]
            Radio::Real => 0,
        };
        CentralOptions {
            idle_ms_max: 600 + latency.saturating_mul(8),
            attempts_max: 24,
            ..CentralOptions::default()
        }
    }

    fn wait_for_card(&mut self, wait: Duration) -> Result<(), LinkError> {
        if self.central.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + wait;
        loop {
            let connected: Result<Box<dyn GattClientIo>, LinkError> = match &self.radio {
                Radio::Sim(addr, settings) => {
                    SimClient::connect(addr.as_str(), settings.att_mtu, settings.shape)
                        .map(|c| Box::new(c) as Box<dyn GattClientIo>)
                }
                #[cfg(feature = "ble")]
                Radio::Real => crate::radio::BtleClient::connect(wait)
                    .map(|c| Box::new(c) as Box<dyn GattClientIo>),
            };
            match connected {
                Ok(client) => {
                    self.last_att_mtu = Some(client.att_mtu());
                    self.last_fragment_len = Some(client.fragment_len().get());
                    self.central = Some(Central::new(client, self.options()));
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    tracing::debug!(error = %e, "no BLE device");
                    return Err(LinkError::Timeout);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(BLE_CONNECT_INTERVAL_MS)),
            }
        }
    }

    fn drop_connection(&mut self) {
        if let Some(central) = self.central.take() {
            add_stats(&mut self.stats, central.stats());
        }
    }

    /// Link statistics so far, the open connection included.
    pub fn stats(&self) -> LinkStats {
        let mut total = self.stats;
        if let Some(c) = &self.central {
            add_stats(&mut total, c.stats());
        }
        total
    }

    /// The negotiated ATT MTU and fragment length of the last connection.
    pub fn negotiated(&self) -> Option<(u16, usize)> {
        Some((self.last_att_mtu?, self.last_fragment_len?))
    }
}

fn add_stats(total: &mut LinkStats, s: LinkStats) {
    total.requests += s.requests;
    total.fragments_sent += s.fragments_sent;
    total.fragments_received += s.fragments_received;
    total.retransmissions += s.retransmissions;
    total.keepalives += s.keepalives;
}

impl CardChannel for RadioLink {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
        let central = self.central.as_mut().ok_or(LinkError::CardGone)?;
        let result = central.request(command);
        if result.is_err() {
            // Whatever broke, the next conversation starts with a new connection
            // (a card that left the field is connected to afresh).
            self.drop_connection();
        }
        result
    }
}

/// An open link to a card.
#[derive(Debug)]
pub enum CardLink {
    Vpcd(VpcdReader),
    Pcsc(PcscReader),
    /// Simulated or real Bluetooth LE.
    Radio(RadioLink),
    /// A card in the same process, reached by a function call: no socket, no
    /// reader. For `keybridge bench --transport direct`, which measures the
    /// server and the applet without any link in between.
    InProcess(InProcessCard),
}

/// A card that answers APDUs by a call (see [`CardLink::InProcess`]).
pub struct InProcessCard(pub Box<dyn CardChannel + Send>);

impl fmt::Debug for InProcessCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InProcessCard")
    }
}

impl CardLink {
    pub fn open(spec: &CardLinkSpec) -> Result<CardLink, LinkError> {
        match spec {
            CardLinkSpec::VpcdListen(addr) => Ok(CardLink::Vpcd(VpcdReader::bind(addr.as_str())?)),
            CardLinkSpec::Pcsc(reader) => Ok(CardLink::Pcsc(PcscReader::new(reader.as_deref()))),
            CardLinkSpec::BleSim(addr, settings) => Ok(CardLink::Radio(RadioLink::new(
                Radio::Sim(addr.clone(), *settings),
            ))),
            #[cfg(feature = "ble")]
            CardLinkSpec::Ble => Ok(CardLink::Radio(RadioLink::new(Radio::Real))),
        }
    }

    /// A vpcd reader on a free loopback port below the ephemeral range (see
    /// `keybridge_transport::port`), bound in the same step as the port is
    /// picked, with the spec that binds that port again once this link is
    /// dropped. Picking a port first and binding it a moment later lets a
    /// neighbour take it in between (seen in CI: `AddrInUse`).
    pub fn vpcd_on_free_port() -> std::io::Result<(CardLink, CardLinkSpec, u16)> {
        let (port, reader) = keybridge_transport::port::bind_in_range(|port| {
            VpcdReader::bind((std::net::Ipv4Addr::LOCALHOST, port))
        })?;
        let spec = CardLinkSpec::VpcdListen(format!("127.0.0.1:{port}"));
        Ok((CardLink::Vpcd(reader), spec, port))
    }

    /// Waits up to `wait` for a card to be present (connected and powered).
    pub fn wait_for_card(&mut self, wait: Duration) -> Result<(), LinkError> {
        match self {
            CardLink::Vpcd(reader) => reader.wait_for_card(wait),
            CardLink::Pcsc(reader) => reader.wait_for_card(wait),
            CardLink::Radio(link) => link.wait_for_card(wait),
            CardLink::InProcess(_) => Ok(()),
        }
    }

    pub fn channel(&mut self) -> &mut dyn CardChannel {
        match self {
            CardLink::Vpcd(reader) => reader,
            CardLink::Pcsc(reader) => reader,
            CardLink::Radio(link) => link,
            CardLink::InProcess(card) => card.0.as_mut(),
        }
    }

    /// Whether VERIFY and SIGN must go through the secure channel: every
    /// radio link, where a bystander can listen and tamper. That is BLE, and
    /// a PC/SC reader whose card answered with a contactless ATR (NFC); a
    /// contact card in a PC/SC reader, or the vpcd wire, is not a radio link.
    pub fn requires_secure_channel(&self) -> bool {
        match self {
            CardLink::Vpcd(_) | CardLink::InProcess(_) => false,
            CardLink::Pcsc(reader) => pcsc_is_radio(reader.atr()),
            CardLink::Radio(_) => true,
        }
    }

    /// The ATR of a contactless card behind a PC/SC reader: the NFC case.
    pub fn contactless_atr(&self) -> Option<&[u8]> {
        match self {
            CardLink::Pcsc(reader) if pcsc_is_radio(reader.atr()) => reader.atr(),
            CardLink::Vpcd(_) | CardLink::Pcsc(_) | CardLink::Radio(_) | CardLink::InProcess(_) => {
                None
            }
        }
    }

    /// What the link did so far, on links that count.
    pub fn ble_stats(&self) -> Option<LinkStats> {
        match self {
            CardLink::Radio(link) => Some(link.stats()),
            CardLink::Vpcd(_) | CardLink::Pcsc(_) | CardLink::InProcess(_) => None,
        }
    }

    /// The last negotiated ATT MTU and fragment length, on BLE links.
    pub fn ble_negotiated(&self) -> Option<(u16, usize)> {
        match self {
            CardLink::Radio(link) => link.negotiated(),
            CardLink::Vpcd(_) | CardLink::Pcsc(_) | CardLink::InProcess(_) => None,
        }
    }

    /// How to frame a command with `data_len` bytes of data: one extended
    /// APDU or a chain of short ones, and the bound on the response.
    pub fn transmit_options(&self, data_len: usize) -> TransmitOptions {
        match self {
            // The virtual card takes extended APDUs; BLE messages carry up
            // to 8 KiB, so extended APDUs fit.
            CardLink::Vpcd(_) | CardLink::Radio(_) | CardLink::InProcess(_) => {
                TransmitOptions::default()
            }
            CardLink::Pcsc(reader) => pcsc_transmit_options(reader.atr(), data_len),
        }
    }

    /// Whether a long command goes as one extended APDU (else chained).
    pub fn extended_length(&self) -> bool {
        self.transmit_options(SHORT_DATA_LEN_MAX + 1)
            .extended_length
    }
}

/// Whether the card behind a PC/SC reader is reached over the air: its ATR
/// is a contactless one (PC/SC part 3), as NFC readers report.
pub fn pcsc_is_radio(atr: Option<&[u8]>) -> bool {
    matches!(
        AtrFraming::from_atr(atr.unwrap_or_default()),
        AtrFraming::Contactless { .. }
    )
}

/// The framing for a card behind a PC/SC reader, from the ATR the reader
/// reported: a contactless card (PC/SC part 3 ATR, the NFC case) takes
/// extended APDUs when its card capabilities announce them and is chained
/// otherwise ([`AtrFraming`]); a contact card, or an unknown ATR, is
/// chained (not every reader and card takes extended APDUs).
pub fn pcsc_transmit_options(atr: Option<&[u8]>, data_len: usize) -> TransmitOptions {
    AtrFraming::from_atr(atr.unwrap_or_default()).transmit_options(data_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_link_specs() {
        let v: CardLinkSpec = "vpcd-listen:127.0.0.1:35963".parse().unwrap();
        assert_eq!(v.to_string(), "vpcd-listen:127.0.0.1:35963");
        let b: CardLinkSpec = "ble-sim:127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            b,
            CardLinkSpec::BleSim("127.0.0.1:4000".into(), BleSimSettings::default())
        );
        assert_eq!(b.to_string(), "ble-sim:127.0.0.1:4000");
        assert!("ble-sim:nowhere".parse::<CardLinkSpec>().is_err());
        assert!("nfc:0".parse::<CardLinkSpec>().is_err());
    }

    #[test]
    fn pcsc_specs_parse_and_print() {
        for s in ["pcsc", "pcsc:Virtual PCD 00 00"] {
            assert_eq!(s.parse::<CardLinkSpec>().unwrap().to_string(), s);
        }
        assert_eq!("pcsc".parse(), Ok(CardLinkSpec::Pcsc(None)));
        for bad in ["pcsc:", "vpcd-listen:nowhere", "usb"] {
            assert!(bad.parse::<CardLinkSpec>().is_err(), "{bad}");
        }
    }

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// The PC/SC link's framing follows the ATR (contactless.rs's vectors).
    #[test]
    fn pcsc_framing_follows_the_atr() {
        // YubiKey 5 NFC through a contactless reader: capabilities C0.
        let yubikey = h("3B8D80018073C021C057597562694B6579F9");
        assert!(pcsc_transmit_options(Some(&yubikey), 600).extended_length);
        assert!(!pcsc_transmit_options(Some(&yubikey), 200).extended_length);
        // Capabilities 80 (chaining only), TCK 77.
        let chaining = h("3B8580018073 000080 77");
        assert!(!pcsc_transmit_options(Some(&chaining), 600).extended_length);
        // MIFARE Classic 1K: a storage card, never extended.
        let mifare = h("3B8F8001804F0CA000000306030001000000006A");
        assert!(!pcsc_transmit_options(Some(&mifare), 600).extended_length);
        // A contact card (the virtual KeyBridge card), or no ATR: chained.
        let contact = h("3B8E8131FE1580594B6579427269646765829000 76");
        assert!(!pcsc_transmit_options(Some(&contact), 600).extended_length);
        assert!(!pcsc_transmit_options(None, 600).extended_length);
        // A PC/SC link not connected yet knows no ATR: chained.
        let link = CardLink::open(&CardLinkSpec::Pcsc(None)).unwrap();
        assert!(!link.extended_length());
        assert!(!link.transmit_options(600).extended_length);
    }

    /// NFC is a radio link: a contactless ATR makes the relay open KB-SC1
    /// before VERIFY and SIGN; a contact card (or no card yet) does not.
    #[test]
    fn a_contactless_card_needs_the_secure_channel() {
        let yubikey = h("3B8D80018073C021C057597562694B6579F9");
        let mifare = h("3B8F8001804F0CA000000306030001000000006A");
        let contact = h("3B8E8131FE1580594B6579427269646765829000 76");
        assert!(pcsc_is_radio(Some(&yubikey)));
        assert!(pcsc_is_radio(Some(&mifare)));
        assert!(!pcsc_is_radio(Some(&contact)));
        assert!(!pcsc_is_radio(None));
        let link = CardLink::open(&CardLinkSpec::Pcsc(None)).unwrap();
        assert!(!link.requires_secure_channel());
    }
}
