//! How the phone reaches the security device.
//!
//! - [`apdu`]: ISO/IEC 7816-4 command and response APDUs (short and extended
//!   length, command chaining) and [`StatusWord`], every status word a typed variant.
//! - [`channel`]: the [`CardChannel`] trait (send raw APDU bytes, get raw response
//!   bytes) and [`transmit`], which turns a logical command into what a card
//!   accepts: chaining, `61xx` GET RESPONSE, `6Cxx` retries.
//! - [`vpcd`]: vsmartcard's vpcd wire protocol, both sides: [`vpcd::VpcdReader`]
//!   is the reader (it listens; a card connects) and [`vpcd::VpcdCard`] is the card.
//! - [`pcsc`]: [`pcsc::PcscReader`], a reader through pcscd (the `pcsc` crate,
//!   libpcsclite), the way a phone or PC reaches USB and NFC readers.
//! - [`pcscd`]: pcscd and vpcd on this machine: installed?, start the daemon,
//!   and [`pcscd::VpcdLock`] so programs take turns on vpcd's fixed ports.
//! - [`ble`]: Bluetooth LE framing modelled on CTAP-BLE (IO-free fragments and
//!   reassembly), the phone's and the device's request engines over any GATT
//!   stack, and a simulated link over TCP with loss, latency and a MITM proxy.
//! - [`secure`]: KB-SC1, the authenticated key agreement and AEAD envelopes
//!   the phone and the card speak on radio links, as APDUs.
//! - [`contactless`]: what NFC needs before PC/SC: contactless ATRs (PC/SC
//!   part 3) and the frame-size decision (extended length or chaining).
//!
//! The codecs (`apdu`, `ble::frame`, `ble::reassembly`, `secure`,
//! `contactless`) do no IO and read no clock. Only `vpcd`, `ble::sim`, `pcsc`
//! and `pcscd` touch sockets and processes, with blocking std IO: card links
//! are slow, sequential conversations, and callers in async code run them on
//! a blocking thread.
#![forbid(unsafe_code)]

pub mod apdu;
pub mod ble;
pub mod channel;
pub mod contactless;
pub mod pcsc;
pub mod pcscd;
pub mod port;
pub mod secure;
mod stream;
pub mod vpcd;

pub use apdu::{ApduError, Command, Response, StatusWord};
pub use channel::{transmit, CardChannel, LinkError, TransmitOptions};
