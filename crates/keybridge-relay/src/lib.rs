//! The mobile device: the bridge between the server and the security device.
//!
//! - [`link`]: [`CardLink`], how the phone reaches the card: the vpcd reader
//!   side (the phone listens and the card connects), or Bluetooth LE, simulated
//!   over TCP or (feature `ble`) real through btleplug (`radio`); run on a
//!   blocking thread because card conversations are sequential and slow.
//! - [`driver`]: the transaction applet's conversation: SELECT, VERIFY, SIGN,
//!   and enrolment's GENERATE KEY / PUT DATA, mapping status words to outcomes.
//! - [`screen`]: the panel the phone shows for a confirmation request.
//! - [`session`]: the WebSocket session with the server: receive requests,
//!   show them, drive the card, post the signature or a decline.
//! - [`enroll`]: put a key and an issued certificate on a card for an account.
//!
//! The relay never decides whether a payment is valid: it only carries bytes.
//! It signs exactly the payload the server sent unless a test deliberately
//! tampers with it ([`Tamper`]), and the server checks against what it stored.
#![forbid(unsafe_code)]

pub mod driver;
pub mod enroll;
pub mod link;
#[cfg(feature = "ble")]
pub mod radio;
pub mod screen;
pub mod session;

pub use driver::{DriverError, SignOutcome};
pub use enroll::{enroll, DeviceCredential};
pub use link::{CardLink, CardLinkSpec};
pub use session::{run, Decision, RelayError, RelayOptions, Tamper};
