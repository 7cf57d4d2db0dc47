//! The [`Card`]: the applets plus everything ISO/IEC 7816-4 asks of a card
//! above one applet. IO-free and clock-free; never panics on any input.
//!
//! Answers at this level (all other status words come from the selected applet):
//!
//! | situation                                              | SW     | clause    |
//! |--------------------------------------------------------|--------|-----------|
//! | bytes are not a command APDU (length fields wrong)     | `6700` | §5.1      |
//! | CLA other than `00` or `10` (chaining)                 | `6E00` | §5.4.1    |
//! | INS `6x` or `9x` (invalid per ISO/IEC 7816-3 §10.3.2)  | `6D00` | §5.6      |
//! | SELECT with P1 other than `04`, or P2 not `00`/`0C`    | `6A86` | §11.2.2   |
//! | SELECT of an AID no applet has (prefix match allowed)  | `6A82` | §11.2.2   |
//! | any other command while no applet is selected          | `6985` | §5.6      |
//! | chained SELECT or GET RESPONSE                         | `6884` | §5.1.1.1  |
//! | mid-chain command with another INS/P1/P2               | `6883` | §5.1.1.1  |
//! | chain data over [`CHAIN_DATA_LEN_MAX`]                 | `6700` | §5.1.1.1  |
//! | GET RESPONSE with nothing pending                      | `6985` | §7.6.1    |
//! | GET RESPONSE with P1-P2 not `0000`                     | `6A86` | §7.6.1    |
//! | answer longer than Le (256 if absent)                  | `61xx` | §5.3.4    |
//! | short Le too small, answer ≤ 256, command repeatable   | `6Cxx` | §5.6      |
//!
//! A failed SELECT leaves the current applet selected with its session
//! (GlobalPlatform Card Specification §11.9.2.3, what Java Card does):
//! yubico-piv-tool probes the YubiKey OTP application in the middle of a PIV
//! session and carries on with PIV. A successful SELECT, even of the same
//! applet, starts a fresh session. Any command other than GET RESPONSE drops
//! a pending answer.
//!
//! The secure channel (KB-SC1, [`keybridge_transport::secure`]) is answered
//! here, above the applets, so it is the same whatever link carried it:
//!
//! | situation                                              | SW     |
//! |--------------------------------------------------------|--------|
//! | `80 86` KEY AGREEMENT, no applet selected              | `6985` |
//! | KEY AGREEMENT, the applet has no certified key         | `6A88` |
//! | KEY AGREEMENT malformed / unknown version or suite     | `6A80` |
//! | `84 C2` ENVELOPE with no session                       | `6988` |
//! | ENVELOPE that fails authentication or is out of order  | `6988`, session dropped |
//! | ENVELOPE whose inner APDU is not class `00` (chaining included) | inner `6E00` |
//! | ENVELOPE whose inner APDU is GET RESPONSE               | inner `6985` |
//! | class `80` or `84` with another INS                    | `6E00` |
//! | [`Card::require_secure_messaging`] and a plain command other than SELECT, GET RESPONSE, GET DATA | `6987` |
//!
//! An envelope answers `9000` with the sealed inner answer (`data ‖ SW`),
//! never cut by the inner Le; the outer Le cuts it with `61xx` as usual. A
//! plain SELECT or a reset drops the session (a SELECT inside the channel
//! keeps it: it is as protected as any other inner command).

use std::fmt;

use keybridge_transport::apdu::{CLA_CHAINING, INS_GET_RESPONSE};
use keybridge_transport::secure::{
    self, CardSession, Opened, CLA_PROPRIETARY, CLA_SECURE, INS_ENVELOPE, INS_KEY_AGREEMENT,
};
use keybridge_transport::{Command, Response, StatusWord};

use crate::applet::{Applet, Context};

/// Largest data field a chain of commands may add up to.
pub const CHAIN_DATA_LEN_MAX: usize = 4096;
/// ISO/IEC 7816-5: an AID is a 5-byte RID and up to 11 bytes of PIX.
pub const AID_LEN_MIN: usize = 5;
pub const AID_LEN_MAX: usize = 16;

const INS_SELECT: u8 = 0xA4;
const INS_GET_DATA: u8 = 0xCA;
const P1_SELECT_BY_AID: u8 = 0x04;
const P2_SELECT_FIRST: u8 = 0x00;
const P2_SELECT_NO_DATA: u8 = 0x0C;
/// Le when the command has none: a short APDU's maximum.
const SHORT_LE_MAX: usize = 256;

/// A command chain being received: its header and the data so far.
#[derive(Debug)]
struct Chain {
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    data: Vec<u8>,
}

/// The rest of an answer, served by GET RESPONSE.
#[derive(Debug)]
struct Pending {
    data: Vec<u8>,
    sw: StatusWord,
}

/// A smart card: a list of applets, which one is selected, and the chaining
/// state of the current conversation.
pub struct Card {
    applets: Vec<Box<dyn Applet>>,
    selected: Option<usize>,
    chain: Option<Chain>,
    pending: Option<Pending>,
    secure: Option<CardSession>,
    require_secure: bool,
}

impl fmt::Debug for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let aids: Vec<String> = self
            .applets
            .iter()
            .map(|a| hex::encode_upper(a.aid()))
            .collect();
        f.debug_struct("Card")
            .field("applets", &aids)
            .field("selected", &self.selected)
            .field("chain_len", &self.chain.as_ref().map(|c| c.data.len()))
            .field("pending_len", &self.pending.as_ref().map(|p| p.data.len()))
            .field("secure_session", &self.secure.is_some())
            .field("require_secure", &self.require_secure)
            .finish()
    }
}

impl Default for Card {
    fn default() -> Card {
        Card::new()
    }
}

impl Card {
    /// A card with no applets.
    pub fn new() -> Card {
        Card {
            applets: Vec::new(),
            selected: None,
            chain: None,
            pending: None,
            secure: None,
            require_secure: false,
        }
    }

    /// On a radio link: VERIFY, SIGN and every other state-changing or
    /// PIN-carrying command must come inside the secure channel; in clear
    /// only SELECT, GET RESPONSE, GET DATA (public objects) and KEY AGREEMENT
    /// are answered.
    pub fn require_secure_messaging(mut self, required: bool) -> Card {
        self.require_secure = required;
        self
    }

    /// Whether a secure-channel session is open.
    pub fn has_secure_session(&self) -> bool {
        self.secure.is_some()
    }

    /// Adds an applet. SELECT prefers an exact AID match, then the first applet
    /// added whose AID starts with the selected bytes.
    pub fn with_applet(mut self, applet: Box<dyn Applet>) -> Card {
        self.applets.push(applet);
        self
    }

    /// The selected applet's AID, if any.
    pub fn selected_aid(&self) -> Option<&[u8]> {
        self.selected
            .and_then(|i| self.applets.get(i))
            .map(|a| a.aid())
    }

    /// Power off, power on or warm reset: nothing selected, no chain, no
    /// pending answer, and every applet forgets its session (verified PIN).
    pub fn reset(&mut self) {
        self.deselect();
        self.chain = None;
        self.pending = None;
        self.secure = None;
    }

    /// Answers raw command bytes with raw response bytes (data ‖ SW1 SW2).
    pub fn process(&mut self, apdu: &[u8], context: &mut Context<'_>) -> Vec<u8> {
        let response = match Command::parse(apdu) {
            Ok(command) => self.call(command, context),
            Err(e) => {
                self.chain = None;
                self.pending = None;
                Response::status(e.status_word())
            }
        };
        response.encode()
    }

    /// Answers one parsed command.
    pub fn call(&mut self, command: Command, context: &mut Context<'_>) -> Response {
        let pending = self.pending.take();
        let class = command.cla & !CLA_CHAINING;
        let class_ok = match class {
            0x00 => true,
            CLA_PROPRIETARY => command.ins == INS_KEY_AGREEMENT,
            CLA_SECURE => command.ins == INS_ENVELOPE,
            _ => false,
        };
        if !class_ok {
            self.chain = None;
            return Response::status(StatusWord::ClaNotSupported);
        }
        if matches!(command.ins >> 4, 0x6 | 0x9) {
            self.chain = None;
            return Response::status(StatusWord::InsNotSupported);
        }
        if command.ins == INS_GET_RESPONSE && class == 0x00 {
            if self.chain.take().is_some() {
                return Response::status(StatusWord::LastCommandExpected);
            }
            if command.is_chained() {
                return Response::status(StatusWord::ChainingNotSupported);
            }
            return self.get_response(&command, pending);
        }

        let command = match self.chain.take() {
            None => command,
            Some(chain)
                if (chain.cla, chain.ins, chain.p1, chain.p2)
                    == (class, command.ins, command.p1, command.p2) =>
            {
                let mut data = chain.data;
                if data.len().saturating_add(command.data.len()) > CHAIN_DATA_LEN_MAX {
                    return Response::status(StatusWord::WrongLength);
                }
                data.extend_from_slice(&command.data);
                Command { data, ..command }
            }
            Some(_) => return Response::status(StatusWord::LastCommandExpected),
        };

        if command.is_chained() {
            if command.ins == INS_SELECT {
                return Response::status(StatusWord::ChainingNotSupported);
            }
            if self.selected.is_none() {
                return Response::status(StatusWord::ConditionsNotSatisfied);
            }
            if command.data.len() > CHAIN_DATA_LEN_MAX {
                return Response::status(StatusWord::WrongLength);
            }
            self.chain = Some(Chain {
                cla: class,
                ins: command.ins,
                p1: command.p1,
                p2: command.p2,
                data: command.data,
            });
            return Response::status(StatusWord::Ok);
        }

        let command = Command {
            cla: class,
            ..command
        };
        let (response, repeatable) = match class {
            CLA_PROPRIETARY => (self.key_agreement(&command, context), false),
            CLA_SECURE => (self.envelope(&command, context), false),
            _ if self.require_secure && !matches!(command.ins, INS_SELECT | INS_GET_DATA) => {
                (Response::status(StatusWord::SecureMessagingMissing), false)
            }
            _ => {
                if command.ins == INS_SELECT {
                    // The session belonged to the applet selected before.
                    self.secure = None;
                }
                self.execute(&command, context)
            }
        };
        self.fit_to_le(response, command.le, repeatable)
    }

    /// Runs one complete class-`00` command: SELECT or the selected applet.
    fn execute(&mut self, command: &Command, context: &mut Context<'_>) -> (Response, bool) {
        if command.ins == INS_SELECT {
            return (self.select(command), true);
        }
        match self.selected.and_then(|i| self.applets.get_mut(i)) {
            Some(applet) => {
                let repeatable = applet.is_repeatable(command);
                (applet.call(command, context), repeatable)
            }
            None => (Response::status(StatusWord::ConditionsNotSatisfied), false),
        }
    }

    /// KEY AGREEMENT: the selected applet's certified key proves the card.
    fn key_agreement(&mut self, command: &Command, context: &mut Context<'_>) -> Response {
        self.secure = None;
        if (command.p1, command.p2) != (0, 0) {
            return Response::status(StatusWord::IncorrectP1P2);
        }
        let Some(applet) = self.selected.and_then(|i| self.applets.get(i)) else {
            return Response::status(StatusWord::ConditionsNotSatisfied);
        };
        let Some(identity) = applet.channel_identity() else {
            return Response::status(StatusWord::ReferencedDataNotFound);
        };
        match secure::card_accept(&command.data, identity, &mut context.rng) {
            Ok((answer, session)) => {
                self.secure = Some(session);
                Response::ok(answer)
            }
            Err(e) => {
                tracing::debug!(error = %e, "key agreement refused");
                Response::status(StatusWord::IncorrectData)
            }
        }
    }

    /// ENVELOPE: open, run the inner command, seal its whole answer.
    fn envelope(&mut self, command: &Command, context: &mut Context<'_>) -> Response {
        if (command.p1, command.p2) != (0, 0) {
            return Response::status(StatusWord::IncorrectP1P2);
        }
        let Some(mut session) = self.secure.take() else {
            return Response::status(StatusWord::SecureMessagingIncorrect);
        };
        let (counter, apdu) = match session.open(&command.data) {
            Ok(Opened::Fresh { counter, apdu }) => (counter, apdu),
            Ok(Opened::Retransmission(answer)) => {
                tracing::debug!("retransmitted envelope: answering from cache");
                self.secure = Some(session);
                return Response::ok(answer);
            }
            Err(e) => {
                // The session is dropped: no second guess with the same keys.
                tracing::warn!(error = %e, "envelope refused; secure session closed");
                return Response::status(StatusWord::SecureMessagingIncorrect);
            }
        };
        let inner = match Command::parse(&apdu) {
            Err(e) => Response::status(e.status_word()),
            Ok(inner) if inner.cla != 0x00 => Response::status(StatusWord::ClaNotSupported),
            Ok(inner) if inner.ins == INS_GET_RESPONSE => {
                Response::status(StatusWord::ConditionsNotSatisfied)
            }
            Ok(inner) => self.execute(&inner, context).0,
        };
        match session.seal(counter, &inner.encode()) {
            Ok(sealed) => {
                self.secure = Some(session);
                Response::ok(sealed)
            }
            Err(e) => {
                tracing::warn!(error = %e, "answer could not be sealed; session closed");
                Response::status(StatusWord::SecureMessagingIncorrect)
            }
        }
    }

    fn deselect(&mut self) {
        if let Some(applet) = self.selected.take().and_then(|i| self.applets.get_mut(i)) {
            applet.deselect();
        }
    }

    fn select(&mut self, command: &Command) -> Response {
        if command.p1 != P1_SELECT_BY_AID
            || !matches!(command.p2, P2_SELECT_FIRST | P2_SELECT_NO_DATA)
        {
            return Response::status(StatusWord::IncorrectP1P2);
        }
        let aid = command.data.as_slice();
        if !(AID_LEN_MIN..=AID_LEN_MAX).contains(&aid.len()) {
            return Response::status(StatusWord::NotFound);
        }
        let found = self
            .applets
            .iter()
            .position(|a| a.aid() == aid)
            .or_else(|| self.applets.iter().position(|a| a.aid().starts_with(aid)));
        let Some(index) = found else {
            return Response::status(StatusWord::NotFound);
        };
        // Found: the current applet is left first, so re-selecting an applet
        // starts a fresh session.
        self.deselect();
        let Some(applet) = self.applets.get_mut(index) else {
            return Response::status(StatusWord::NotFound);
        };
        let mut response = applet.select();
        if response.sw.is_ok() {
            self.selected = Some(index);
            if command.p2 == P2_SELECT_NO_DATA {
                response.data.clear();
            }
        }
        response
    }

    fn get_response(&mut self, command: &Command, pending: Option<Pending>) -> Response {
        let Some(pending) = pending else {
            return Response::status(StatusWord::ConditionsNotSatisfied);
        };
        if (command.p1, command.p2) != (0, 0) {
            self.pending = Some(pending);
            return Response::status(StatusWord::IncorrectP1P2);
        }
        self.fit_to_le(
            Response {
                data: pending.data,
                sw: pending.sw,
            },
            command.le,
            false,
        )
    }

    /// Cuts an answer to what Le allows; the rest waits for GET RESPONSE.
    fn fit_to_le(
        &mut self,
        mut response: Response,
        le: Option<usize>,
        repeatable: bool,
    ) -> Response {
        let limit = le.unwrap_or(SHORT_LE_MAX);
        let len = response.data.len();
        if len <= limit {
            return response;
        }
        if repeatable && le.is_some() && len <= SHORT_LE_MAX {
            // Short answer, too small an Le: "send again with Le = len".
            return Response::status(StatusWord::WrongLe(le_byte(len)));
        }
        let rest = response.data.split_off(limit);
        let more = le_byte(rest.len().min(SHORT_LE_MAX));
        self.pending = Some(Pending {
            data: rest,
            sw: response.sw,
        });
        Response {
            data: response.data,
            sw: StatusWord::MoreData(more),
        }
    }
}

/// A length of 1..=256 as a short Le byte (`00` = 256).
fn le_byte(len: usize) -> u8 {
    u8::try_from(len % 256).unwrap_or(0)
}
