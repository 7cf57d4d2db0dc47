//! The external security device: KeyBridge's transaction applet on a virtual
//! smart card.
//!
//! - [`applet`]: the [`Applet`] trait (`aid`/`select`/`deselect`/`call`) and the
//!   [`Context`] lent to it per command: [`Holder`], randomness, the time.
//! - [`dispatch`]: [`Card`], the dispatcher that owns the applets and does what
//!   ISO/IEC 7816-4 asks above one applet: class check, SELECT by AID, command
//!   chaining (bounded), `61xx`/GET RESPONSE and `6Cxx`. Add an applet with
//!   [`Card::with_applet`].
//! - [`transaction`]: [`TransactionApplet`], answering
//!   [`keybridge_proto::applet`] exactly: PIN with retry counter and lockout,
//!   P-256 key generated on the card, certificate storage, and SIGN
//!   TRANSACTION (payload shown to the holder, monotonic counter, ECDSA over
//!   SHA-256 of payload ‖ counter, DER).
//! - [`holder`]: [`Screen`] (what the display shows) and [`Holder`]
//!   ([`AutoApprove`], [`AutoDecline`], [`Prompt`]).
//! - [`state`]: [`CardState`] and its file format, [`StateStore`]
//!   ([`FileStore`]: atomic writes; [`MemoryStore`]), [`init_state`].
//! - [`atr`]: the card's ATR.
//! - [`shell`]: [`run`], the process: vpcd link, reconnects, the clock;
//!   [`run_with_link`] on the simulated BLE link (GATT server), where the card
//!   requires the secure channel (KB-SC1, answered by [`dispatch`]); with
//!   feature `ble`, `radio` is the real GATT server on BlueZ (`bluer`).
//!
//! **Architecture invariant**: `applet`, `dispatch`, `transaction` and `der` do
//! no IO and read no clock. They see the outside only through [`Context`]
//! (holder, randomness, injected time) and the [`StateStore`] an applet was
//! built with; they never panic on any command bytes. Only `shell` talks to
//! sockets and reads `SystemTime`; only `state` touches files; the `holder`
//! implementations print to stderr and read stdin.
//!
//! Not here: PIV (to be added as a second [`Applet`]), ISO/IEC 7816-4
//! secure messaging (KB-SC1 is KeyBridge's own), logical channels.
#![forbid(unsafe_code)]

pub mod applet;
pub mod atr;
mod der;
pub mod dispatch;
mod error;
pub mod holder;
#[cfg(feature = "ble")]
pub mod radio;
pub mod shell;
pub mod state;
pub mod transaction;

pub use applet::{Applet, Context};
pub use atr::ATR;
pub use dispatch::Card;
pub use error::CardError;
pub use holder::{AutoApprove, AutoDecline, Holder, Prompt, Screen};
pub use shell::{run, run_with_link, CardOptions, DeviceLink, Policy};
pub use state::{init_state, CardState, FileStore, MemoryStore, StateStore};
pub use transaction::TransactionApplet;
