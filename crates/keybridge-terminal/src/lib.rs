//! The transaction-initiating terminal and the operator's client.
//!
//! - [`Client`]: a typed client of the KeyBridge HTTP API over one bearer
//!   credential (a terminal's API key or the admin token). Every non-2xx answer
//!   becomes [`ClientError::Api`] with the server's stable error code.
//! - [`pay`]: what `keybridge pay` does: create the transaction with an
//!   idempotency key, then long-poll until it is final. Retrying with the same
//!   key can never pay twice.
//!
//! This crate knows the API only through `keybridge_proto::api`; it holds no
//! business rules of its own.
#![forbid(unsafe_code)]

mod client;
mod pay;

pub use client::{Client, ClientError, POOL_IDLE_TIMEOUT};
pub use pay::{new_idempotency_key, pay, pay_waiting, PayOutcome, PayRequest};
