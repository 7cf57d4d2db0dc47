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
//!   P-256 key generated on the card, SIGN CSR (a PKCS#10 request info for
//!   the card's own key, nothing else), certificate storage, SIGN
//!   TRANSACTION (payload shown to the holder, monotonic counter, ECDSA over
//!   SHA-256 of payload ‖ counter, DER), and the OCRA mode (PUT DATA OCRA,
//!   OCRA RESPONSE: RFC 6287 over the payload's SHA-256).
//! - [`holder`]: [`Screen`] (what the display shows) and [`Holder`]
//!   ([`AutoApprove`], [`AutoDecline`], [`Prompt`]).
//! - [`state`]: [`CardState`] and its file format, [`StateStore`]
//!   ([`FileStore`]: whole states written atomically, the retry count and
//!   the counter written in place in a sidecar; [`MemoryStore`]),
//!   [`init_state`].
//! - [`piv`]: [`PivApplet`], the PIV profile (NIST SP 800-73-4): PIN and PUK,
//!   3DES management key, P-256 keys in 9A/9C/9D/9E, data objects, and the
//!   YubiKey extensions yubico-piv-tool asks for. Its state is the `piv`
//!   section of the same state file.
//! - [`atr`]: the card's ATR.
//! - [`shell`]: [`run`], the process: vpcd link, reconnects, the clock;
//!   [`run_with_link`] on the simulated BLE link (GATT server), where the card
//!   requires the secure channel (KB-SC1, answered by [`dispatch`]); with
//!   feature `ble`, `radio` is the real GATT server on BlueZ (`bluer`).
//!
//! **Architecture invariant**: `applet`, `dispatch`, `transaction`, `piv` and `der` do
//! no IO and read no clock. They see the outside only through [`Context`]
//! (holder, randomness, injected time) and the [`StateStore`] an applet was
//! built with; they never panic on any command bytes. One exception to
//! injected randomness: SIGN TRANSACTION signs with ring, whose sealed
//! `SecureRandom` only the operating system's generator implements (ring
//! hedges the nonce with the key and the message). Only `shell` talks to
//! sockets and reads `SystemTime`; only `state` (and `piv::state` through it) touches files; the `holder`
//! implementations print to stderr and read stdin.
//!
//! Not here: ISO/IEC 7816-4 secure messaging (KB-SC1 is KeyBridge's own),
//! logical channels; PIV's RSA and P-384 keys, key attestation, the PIV
//! pairing code and the global PIN.
#![forbid(unsafe_code)]

/// A line for whoever watches the card, on stderr. One that cannot be
/// written (stderr a file on a full disk) is dropped: `eprintln!` would
/// panic, and take the card down in the middle of a command.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// [`say!`] without the line break (a question the holder answers).
macro_rules! say_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, $($arg)*);
        let _ = stderr.flush();
    }};
}

pub mod applet;
pub mod atr;
mod der;
pub mod dispatch;
mod error;
pub mod holder;
pub mod piv;
#[cfg(feature = "ble")]
pub mod radio;
pub mod shell;
pub mod state;
pub mod transaction;

pub use applet::{Applet, Context};
pub use atr::{ATR, CONTACTLESS_ATR};
pub use dispatch::Card;
pub use error::CardError;
pub use holder::{AutoApprove, AutoDecline, Holder, Prompt, QuietApprove, Screen};
pub use piv::{PivApplet, PivFileStore, PivMemoryStore, PivState, PivStore};
pub use shell::{run, run_with_link, CardOptions, DeviceLink, Policy, Profile};
pub use state::{init_state, CardState, FileStore, MemoryStore, StateStore};
pub use transaction::TransactionApplet;
