//! How the phone reaches its card.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use keybridge_transport::pcsc::PcscReader;
use keybridge_transport::vpcd::VpcdReader;
use keybridge_transport::{CardChannel, LinkError};

/// Where the card is, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardLinkSpec {
    /// `vpcd-listen:HOST:PORT`: act as a vpcd reader; the card connects here.
    VpcdListen(String),
    /// `pcsc` or `pcsc:READER`: a reader through pcscd (the first with a card,
    /// or the first whose name contains READER), as USB and NFC readers are.
    Pcsc(Option<String>),
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
            _ => Err(format!(
                "unknown card link {s:?}: expected vpcd-listen:HOST:PORT, pcsc or pcsc:READER"
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
        }
    }
}

/// An open link to a card.
#[derive(Debug)]
pub enum CardLink {
    Vpcd(VpcdReader),
    Pcsc(PcscReader),
}

impl CardLink {
    pub fn open(spec: &CardLinkSpec) -> Result<CardLink, LinkError> {
        match spec {
            CardLinkSpec::VpcdListen(addr) => Ok(CardLink::Vpcd(VpcdReader::bind(addr.as_str())?)),
            CardLinkSpec::Pcsc(reader) => Ok(CardLink::Pcsc(PcscReader::new(reader.as_deref()))),
        }
    }

    /// Waits up to `wait` for a card to be present (connected and powered).
    pub fn wait_for_card(&mut self, wait: Duration) -> Result<(), LinkError> {
        match self {
            CardLink::Vpcd(reader) => reader.wait_for_card(wait),
            CardLink::Pcsc(reader) => reader.wait_for_card(wait),
        }
    }

    pub fn channel(&mut self) -> &mut dyn CardChannel {
        match self {
            CardLink::Vpcd(reader) => reader,
            CardLink::Pcsc(reader) => reader,
        }
    }

    /// Whether to send long commands as extended APDUs (else chain).
    pub fn extended_length(&self) -> bool {
        match self {
            CardLink::Vpcd(_) => true,
            // Not every reader and card takes extended APDUs: chain instead.
            CardLink::Pcsc(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        for s in [
            "vpcd-listen:127.0.0.1:35963",
            "pcsc",
            "pcsc:Virtual PCD 00 00",
        ] {
            assert_eq!(s.parse::<CardLinkSpec>().unwrap().to_string(), s);
        }
        assert_eq!("pcsc".parse(), Ok(CardLinkSpec::Pcsc(None)));
        for bad in ["pcsc:", "vpcd-listen:nowhere", "usb"] {
            assert!(bad.parse::<CardLinkSpec>().is_err(), "{bad}");
        }
    }
}
