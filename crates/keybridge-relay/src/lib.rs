//! The mobile device: the bridge between the server and the security device.
//!
//! - [`link`]: [`CardLink`], how the phone reaches the card: the vpcd reader
//!   side (the phone listens and the card connects), a PC/SC reader through
//!   pcscd, or Bluetooth LE, simulated over TCP or (feature `ble`) real
//!   through btleplug (`radio`); run on a blocking thread because card
//!   conversations are sequential and slow.
//! - [`driver`]: the transaction applet's conversation: SELECT, VERIFY, SIGN
//!   (or OCRA RESPONSE for an OCRA-mode card), and enrolment's GENERATE KEY,
//!   SIGN CSR, PUT DATA and PUT DATA OCRA, mapping status words to outcomes;
//!   over radio links inside the KB-SC1 secure channel.
//! - [`piv`]: the PIV conversation (SP 800-73-4) for PIV cards: VERIFY,
//!   GENERAL AUTHENTICATE 9C over SHA-256 of the payload; and enrolment's
//!   management-key authentication, GENERATE in 9C, PUT DATA `5FC10A`.
//! - [`screen`]: the panel the phone shows for a confirmation request.
//! - [`session`]: the WebSocket session with the server: receive requests,
//!   show them, drive the card, post the signature or a decline.
//! - [`mod@enroll`]: a key, a PKCS#10 request signed by the card and the issued
//!   certificate for an account ([`enroll()`]), or an OCRA secret ([`enroll_ocra`]).
//!
//! The relay never decides whether a payment is valid: it only carries bytes.
//! It signs exactly the payload the server sent unless a test deliberately
//! tampers with it ([`Tamper`]), and the server checks against what it stored.
#![forbid(unsafe_code)]

pub mod driver;
pub mod enroll;
pub mod link;
pub mod outbox;
pub mod piv;
#[cfg(feature = "ble")]
pub mod radio;
pub mod screen;
pub mod session;

pub use driver::{DriverError, SignOutcome};
pub use enroll::{enroll, enroll_ocra, enroll_with, DeviceCredential, PivEnrollment};
pub use link::{CardLink, CardLinkSpec};
pub use session::{
    run, run_with_link, Decision, RelayError, RelayOptions, Tamper, SERVER_SILENCE_MAX,
    SOCKET_ANSWER_WAIT,
};
