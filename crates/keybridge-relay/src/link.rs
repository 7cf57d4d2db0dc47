//! How the phone reaches its card.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use keybridge_transport::vpcd::VpcdReader;
use keybridge_transport::{CardChannel, LinkError};

/// Where the card is, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardLinkSpec {
    /// `vpcd-listen:HOST:PORT`: act as a vpcd reader; the card connects here.
    VpcdListen(String),
}

impl FromStr for CardLinkSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<CardLinkSpec, String> {
        match s.split_once(':') {
            Some(("vpcd-listen", addr)) if addr.contains(':') => {
                Ok(CardLinkSpec::VpcdListen(addr.to_owned()))
            }
            _ => Err(format!(
                "unknown card link {s:?}: expected vpcd-listen:HOST:PORT"
            )),
        }
    }
}

impl fmt::Display for CardLinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CardLinkSpec::VpcdListen(addr) => write!(f, "vpcd-listen:{addr}"),
        }
    }
}

/// An open link to a card.
#[derive(Debug)]
pub enum CardLink {
    Vpcd(VpcdReader),
}

impl CardLink {
    pub fn open(spec: &CardLinkSpec) -> Result<CardLink, LinkError> {
        match spec {
            CardLinkSpec::VpcdListen(addr) => Ok(CardLink::Vpcd(VpcdReader::bind(addr.as_str())?)),
        }
    }

    /// Waits up to `wait` for a card to be present (connected and powered).
    pub fn wait_for_card(&mut self, wait: Duration) -> Result<(), LinkError> {
        match self {
            CardLink::Vpcd(reader) => reader.wait_for_card(wait),
        }
    }

    pub fn channel(&mut self) -> &mut dyn CardChannel {
        match self {
            CardLink::Vpcd(reader) => reader,
        }
    }

    /// Whether to send long commands as extended APDUs (else chain).
    pub fn extended_length(&self) -> bool {
        match self {
            CardLink::Vpcd(_) => true,
        }
    }
}
