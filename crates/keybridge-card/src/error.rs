//! The card's one error type.
//!
//! Inside the applet every failure becomes a status word (see
//! [`crate::transaction`]); [`CardError`] is what the process shell and the
//! state file report to their caller. The one mapping to the wire:
//! a [`CardError`] from [`crate::state::StateStore::save`] is answered `6581`
//! (memory failure), and no signature leaves the card with it.

use std::io;
use std::path::PathBuf;

/// Why the card could not load, save or initialise its state, or reach its reader.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    #[error("card state file {path} already exists; refusing to overwrite it")]
    StateExists { path: PathBuf },
    #[error("card state file {path} does not exist (create it with an initial PIN)")]
    StateMissing { path: PathBuf },
    #[error(
        "card state file {path} has format version {found}; this build reads versions 1 to {supported}"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u64,
        supported: u32,
    },
    #[error("card state file {path} is corrupt: {reason}")]
    CorruptState { path: PathBuf, reason: String },
    #[error("the initial PIN must be 4 to 8 ASCII digits")]
    BadPin,
    #[error("a PIV PIN or PUK must be 6 to 8 bytes, none of them FF")]
    BadPivReference,
    #[error("PIN retries must be 1 to 15, not {0}")]
    BadPinRetries(u8),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to the reader at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("the card state could not be persisted: {0}")]
    Persist(String),
}

impl CardError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> CardError {
        let context = context.into();
        move |source| CardError::Io { context, source }
    }
}
