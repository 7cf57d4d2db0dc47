//! What every KeyBridge role speaks.
//!
//! - [`Money`] and [`Currency`]: integer minor units with an ISO 4217 code; never floats.
//! - [`TransactionId`], [`AccountId`], [`Challenge`]: newtypes for what the server hands out.
//! - [`ConfirmationPayload`]: the canonical BER-TLV structure the security device
//!   signs. Its encoding is the single source of truth for what was confirmed: the
//!   server verifies signatures against the bytes it stored, never against a copy.
//! - [`applet`]: the KeyBridge transaction applet's AID, instructions and formats,
//!   shared by the card (which answers them) and the relay (which sends them).
//! - [`csr`]: the PKCS#10 request a card signs at enrolment (built by the
//!   relay, checked by the card, verified by the CA).
//! - [`ocra`]: RFC 6287 OCRA suite parser and calculator, shared by the card
//!   and the server (and `keybridge ocra`).
//! - [`api`]: the JSON bodies of the HTTP API, shared by the server and its clients.
//!
//! Feature `openapi`: `utoipa` schemas for the API types (the server's
//! OpenAPI document); clients build without it.
//!
//! This crate does no IO and reads no clock: times come in as arguments.
#![forbid(unsafe_code)]

pub mod api;
pub mod applet;
pub mod csr;
mod ids;
mod money;
pub mod ocra;
#[cfg(feature = "openapi")]
mod openapi;
mod payload;
pub mod tlv;

pub use ids::{AccountId, Challenge, IdError, TransactionId};
pub use money::{Currency, Money, MoneyError};
pub use payload::{signed_message, ConfirmationPayload, PayloadError, PAYLOAD_VERSION};
