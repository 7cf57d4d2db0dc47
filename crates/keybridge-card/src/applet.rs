//! The [`Applet`] trait: one application on the card, selected by its AID.
//!
//! An applet sees only complete commands: the [`crate::Card`] dispatcher has
//! already checked the class byte, reassembled command chains, routed SELECT
//! and will cut long answers into `61xx`/GET RESPONSE pieces. Everything an
//! applet needs from outside (the holder, randomness, the time) comes in a
//! [`Context`]; applets do no IO of their own except through the state store
//! they were built with.

use std::fmt;

use keybridge_transport::secure::CardIdentity;
use keybridge_transport::{Command, Response};
use p256::elliptic_curve::rand_core::CryptoRngCore;

use crate::holder::Holder;

/// What the outside world lends an applet for one command.
pub struct Context<'a> {
    /// The person holding the card: display and approval.
    pub holder: &'a mut dyn Holder,
    /// Randomness for key generation, the secure channel and PIV. SIGN
    /// TRANSACTION's ECDSA nonce does not come from here: ring draws it from
    /// the operating system (its `SecureRandom` is sealed) and hedges it with
    /// the key and message; `p256` signatures (SIGN CSR, PIV) are RFC 6979.
    pub rng: &'a mut dyn CryptoRngCore,
    /// The current time, injected: applets never read a clock.
    pub now_unix_s: u64,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("now_unix_s", &self.now_unix_s)
            .finish_non_exhaustive()
    }
}

/// One application on the card.
pub trait Applet: Send {
    /// The full AID; SELECT may name it or a prefix of it (ISO/IEC 7816-4 §11.2.2).
    fn aid(&self) -> &[u8];
    /// Called when SELECT picks this applet; the answer is the SELECT response.
    fn select(&mut self) -> Response;
    /// Called when another applet is selected, on reset and on power off: forget
    /// every session secret (a verified PIN above all).
    fn deselect(&mut self);
    /// Answers one complete command (never SELECT or GET RESPONSE, never a chain link).
    fn call(&mut self, command: &Command, context: &mut Context<'_>) -> Response;
    /// Whether `command` may be sent again with no effect, so the dispatcher
    /// may answer a too-small Le with `6Cxx` ("send again with Le = xx")
    /// instead of `61xx`. Commands that sign or change state must say `false`.
    fn is_repeatable(&self, _command: &Command) -> bool {
        false
    }
    /// The certified key and certificate that prove this card in the secure
    /// channel's key agreement, once enrolment gave it both. The key is lent
    /// to the dispatcher for one signature and never leaves the card.
    fn channel_identity(&self) -> Option<CardIdentity<'_>> {
        None
    }
}
