//! The PIV applet (NIST SP 800-73-4 Part 2), as much as real middleware
//! (OpenSC, yubico-piv-tool) needs to use the card for ECC P-256 signatures.
//!
//! | command                       | CLA INS P1 P2     | refused with |
//! |-------------------------------|-------------------|--------------|
//! | SELECT `A0 00 00 03 08`       | 00 A4 04 00       | (dispatcher) answers the application property template |
//! | GET DATA                      | 00 CB 3F FF       | `6A86` P1-P2; `6A80` not `5C` tag list; `6A82` no such object; `6982` PIN-protected object |
//! | VERIFY (PIN `80`)             | 00 20 00/FF 80    | `6A86`; `6A88` other reference; `6A80` not 8 padded bytes; `63Cx` wrong (x left); `6983` blocked |
//! | CHANGE REFERENCE DATA         | 00 24 00 80/81    | `6A86`; `6A80` not old‖new padded; `63Cx`; `6983` |
//! | RESET RETRY COUNTER (PUK)     | 00 2C 00 80       | `6A86`; `6A80`; `63Cx` wrong PUK; `6983` PUK blocked |
//! | GENERAL AUTHENTICATE 9B (3DES)| 00 87 03 9B       | `6A80` template; `6982` wrong witness/response; `6A86` algorithm |
//! | GENERAL AUTHENTICATE sign     | 00 87 11 9A/9C/9D/9E | `6A86` slot; `6A80` algorithm or template; `6A88` no key; `6982` PIN not verified (9C: not verified since the last 9C signature) |
//! | GENERATE ASYMMETRIC KEY PAIR  | 00 47 00 9A/9C/9D/9E | `6A86` slot; `6A80` template or algorithm other than `11`; `6982` management key not authenticated |
//! | PUT DATA                      | 00 DB 3F FF       | `6A86`; `6A80` template or unknown tag; `6A84` object or total too large; `6982` management key |
//! | GET VERSION (YubiKey)         | 00 FD 00 00       | answers [`VERSION`] |
//! | GET SERIAL (YubiKey)          | 00 F8 00 00       | answers the serial, u32 big-endian |
//! | SET MANAGEMENT KEY (YubiKey)  | 00 FF FF FF/FE    | `6A80` not `03 9B 18 <key>`; `6982` |
//! | anything else                 |                   | `6D00` |
//!
//! Rules the table cannot show:
//! - A wrong PIN or PUK is counted and saved *before* the comparison (no free
//!   guess by cutting the power); the attempt that uses the last retry answers
//!   `63C0`, every later one `6983`. The PUK (RESET RETRY COUNTER) sets a new
//!   PIN and restores its retries.
//! - Slot 9C is "PIN always" (Part 1 §3.2.2): each signature in 9C needs a
//!   VERIFY since the previous 9C signature, whatever that signature's outcome.
//!   9A and 9D need the PIN once per session; 9E never.
//! - The management key authenticates by witness (`80`, the card proves
//!   nothing; host decrypts), by mutual witness + challenge (`80` + `81`, the
//!   card answers `82`), or by challenge only (`81` then `82`); a failed step
//!   clears the exchange.
//! - The signature input is the digest (`81`, 1 to 32 bytes, left-padded with
//!   zeros: ECDSA's bits2int gives the same integer): the card never hashes.
//! - Session state (PIN, management key) is forgotten on deselect and reset;
//!   the state is saved before any answer that depends on a change.

pub mod objects;
pub mod state;
mod tlv;

use des::cipher::{BlockEncrypt, KeyInit};
use des::TdesEde3;
use keybridge_transport::{Command, Response, StatusWord};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};

use crate::applet::{Applet, Context};
pub use state::{PivFileStore, PivMemoryStore, PivState, PivStore};

/// What GET VERSION answers: the YubiKey 4 firmware line, so yubico-piv-tool
/// asks for the serial with `00 F8` on this applet (version 5 would select the
/// OTP application instead) and expects no metadata command.
pub const VERSION: [u8; 3] = [4, 3, 7];

const INS_VERIFY: u8 = 0x20;
const INS_CHANGE_REFERENCE: u8 = 0x24;
const INS_RESET_RETRY: u8 = 0x2C;
const INS_GENERATE: u8 = 0x47;
const INS_GENERAL_AUTHENTICATE: u8 = 0x87;
const INS_GET_DATA: u8 = 0xCB;
const INS_PUT_DATA: u8 = 0xDB;
const INS_GET_VERSION: u8 = 0xFD;
const INS_GET_SERIAL: u8 = 0xF8;
const INS_SET_MANAGEMENT_KEY: u8 = 0xFF;

const KEY_PIN: u8 = 0x80;
const KEY_PUK: u8 = 0x81;
const KEY_MANAGEMENT: u8 = 0x9B;
const SLOT_SIGNATURE: u8 = 0x9C;
const SLOT_CARD_AUTH: u8 = 0x9E;
/// Algorithm identifiers (SP 800-78-4 Table 6-2).
const ALG_3DES: u8 = 0x03;
const ALG_3DES_DEFAULT: u8 = 0x00;
const ALG_ECC_P256: u8 = 0x11;
const DIGEST_LEN_MAX: usize = 32;

type Outcome = Result<Vec<u8>, StatusWord>;

/// A management-key exchange in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// The card sent `E(witness)`; the host must send the witness back.
    Witness([u8; 8]),
    /// The card sent a challenge; the host must send `E(challenge)`.
    Challenge([u8; 8]),
}

/// The PIV applet: state, where to save it, and the session.
pub struct PivApplet {
    state: PivState,
    store: Box<dyn PivStore>,
    /// Session only: set by a right PIN; cleared by deselect, reset, `VERIFY FF`.
    pin_verified: bool,
    /// Session only: a right PIN not yet used by a 9C signature.
    pin_fresh_for_signature: bool,
    management_authenticated: bool,
    exchange: Option<Exchange>,
}

impl std::fmt::Debug for PivApplet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PivApplet")
            .field("state", &self.state)
            .field("pin_verified", &self.pin_verified)
            .field("management_authenticated", &self.management_authenticated)
            .finish_non_exhaustive()
    }
}

impl PivApplet {
    pub fn new(state: PivState, store: Box<dyn PivStore>) -> PivApplet {
        PivApplet {
            state,
            store,
            pin_verified: false,
            pin_fresh_for_signature: false,
            management_authenticated: false,
            exchange: None,
        }
    }

    pub fn state(&self) -> &PivState {
        &self.state
    }

    fn forget_session(&mut self) {
        self.pin_verified = false;
        self.pin_fresh_for_signature = false;
        self.management_authenticated = false;
        self.exchange = None;
    }

    fn persist(&mut self) -> Result<(), StatusWord> {
        self.store.save(&self.state).map_err(|e| {
            tracing::error!(error = %e, "PIV state not saved; answering 6581");
            StatusWord::MemoryFailure
        })
    }

    fn require_management(&self) -> Result<(), StatusWord> {
        match self.management_authenticated {
            true => Ok(()),
            false => Err(StatusWord::SecurityNotSatisfied),
        }
    }

    fn get_data(&self, command: &Command) -> Outcome {
        if (command.p1, command.p2) != (0x3F, 0xFF) {
            return Err(StatusWord::IncorrectP1P2);
        }
        let tag = tlv::only(&command.data, &[0x5C]).ok_or(StatusWord::IncorrectData)?;
        if objects::needs_pin(tag) && !self.pin_verified {
            return Err(StatusWord::SecurityNotSatisfied);
        }
        self.state
            .object(tag)
            .map(<[u8]>::to_vec)
            .ok_or(StatusWord::NotFound)
    }

    fn put_data(&mut self, command: &Command) -> Outcome {
        if (command.p1, command.p2) != (0x3F, 0xFF) {
            return Err(StatusWord::IncorrectP1P2);
        }
        self.require_management()?;
        // `5C <tag> 53 <content>`, or the discovery object written whole as `7E …`.
        let (first, rest) = tlv::split(&command.data).ok_or(StatusWord::IncorrectData)?;
        let (tag, object) = if first.tag == [0x7E] && rest.is_empty() {
            (objects::DISCOVERY.to_vec(), command.data.clone())
        } else if first.tag == [0x5C] {
            let content = tlv::only(rest, &[0x53]).ok_or(StatusWord::IncorrectData)?;
            (first.value.to_vec(), tlv::encode(&[0x53], content))
        } else {
            return Err(StatusWord::IncorrectData);
        };
        if !objects::is_known_tag(&tag) {
            return Err(StatusWord::IncorrectData);
        }
        if object.len() > state::OBJECT_LEN_MAX + 4 {
            return Err(StatusWord::Other(0x6A84));
        }
        let others = self.state.objects_len() - self.state.object(&tag).map_or(0, <[u8]>::len);
        if others.saturating_add(object.len()) > state::OBJECTS_TOTAL_LEN_MAX {
            return Err(StatusWord::Other(0x6A84));
        }
        let old = self.state.objects.insert(tag.clone(), object);
        if let Err(sw) = self.persist() {
            match old {
                Some(old) => self.state.objects.insert(tag, old),
                None => self.state.objects.remove(&tag),
            };
            return Err(sw);
        }
        Ok(Vec::new())
    }

    /// Reads the 8-byte padded value(s) of VERIFY / CHANGE / RESET.
    fn padded<const N: usize>(data: &[u8]) -> Result<[[u8; 8]; N], StatusWord> {
        if data.len() != 8 * N {
            return Err(StatusWord::IncorrectData);
        }
        let mut out = [[0u8; 8]; N];
        for (slot, chunk) in out.iter_mut().zip(data.chunks_exact(8)) {
            slot.copy_from_slice(chunk);
            if !state::is_padded(slot) {
                return Err(StatusWord::IncorrectData);
            }
        }
        Ok(out)
    }

    /// Counts an attempt against `which`, saves, then compares.
    fn check_reference(&mut self, which: u8, value: &[u8; 8]) -> Result<(), StatusWord> {
        let reference = match which {
            KEY_PUK => &mut self.state.puk,
            _ => &mut self.state.pin,
        };
        if reference.blocked() {
            return Err(StatusWord::AuthenticationBlocked);
        }
        let left = reference.retries_left;
        reference.retries_left = left.saturating_sub(1);
        if let Err(sw) = self.persist() {
            // Not counted, so not compared (as in the transaction applet).
            match which {
                KEY_PUK => self.state.puk.retries_left = left,
                _ => self.state.pin.retries_left = left,
            }
            return Err(sw);
        }
        let reference = match which {
            KEY_PUK => &mut self.state.puk,
            _ => &mut self.state.pin,
        };
        if reference.matches(value) {
            reference.retries_left = reference.retries_max;
            self.persist()?;
            return Ok(());
        }
        let left = match which {
            KEY_PUK => self.state.puk.retries_left,
            _ => self.state.pin.retries_left,
        };
        Err(StatusWord::VerifyFailed(left))
    }

    fn verify(&mut self, command: &Command) -> Outcome {
        match (command.p1, command.p2) {
            // Reset the PIN's security status (Part 2 §3.2.1, P1 = FF).
            (0xFF, KEY_PIN) if command.data.is_empty() => {
                self.pin_verified = false;
                self.pin_fresh_for_signature = false;
                return Ok(Vec::new());
            }
            (0x00, KEY_PIN) => {}
            (0x00, _) => return Err(StatusWord::ReferencedDataNotFound),
            _ => return Err(StatusWord::IncorrectP1P2),
        }
        if command.data.is_empty() {
            return match (self.state.pin.blocked(), self.pin_verified) {
                (true, _) => Err(StatusWord::AuthenticationBlocked),
                (false, true) => Ok(Vec::new()),
                (false, false) => Err(StatusWord::VerifyFailed(self.state.pin.retries_left)),
            };
        }
        let [pin] = Self::padded::<1>(&command.data)?;
        self.pin_verified = false;
        self.pin_fresh_for_signature = false;
        self.check_reference(KEY_PIN, &pin)?;
        self.pin_verified = true;
        self.pin_fresh_for_signature = true;
        Ok(Vec::new())
    }

    fn change_reference(&mut self, command: &Command, context: &mut Context<'_>) -> Outcome {
        let which = match (command.p1, command.p2) {
            (0x00, KEY_PIN) => KEY_PIN,
            (0x00, KEY_PUK) => KEY_PUK,
            (0x00, _) => return Err(StatusWord::ReferencedDataNotFound),
            _ => return Err(StatusWord::IncorrectP1P2),
        };
        let [old, new] = Self::padded::<2>(&command.data)?;
        if which == KEY_PIN {
            self.pin_verified = false;
            self.pin_fresh_for_signature = false;
        }
        self.check_reference(which, &old)?;
        let reference = match which {
            KEY_PUK => &mut self.state.puk,
            _ => &mut self.state.pin,
        };
        let saved = reference.clone();
        reference.replace(&new, context.rng);
        if let Err(sw) = self.persist() {
            match which {
                KEY_PUK => self.state.puk = saved,
                _ => self.state.pin = saved,
            }
            return Err(sw);
        }
        Ok(Vec::new())
    }

    fn reset_retry_counter(&mut self, command: &Command, context: &mut Context<'_>) -> Outcome {
        match (command.p1, command.p2) {
            (0x00, KEY_PIN) => {}
            (0x00, _) => return Err(StatusWord::ReferencedDataNotFound),
            _ => return Err(StatusWord::IncorrectP1P2),
        }
        let [puk, new_pin] = Self::padded::<2>(&command.data)?;
        self.pin_verified = false;
        self.pin_fresh_for_signature = false;
        self.check_reference(KEY_PUK, &puk)?;
        let saved = self.state.pin.clone();
        self.state.pin.replace(&new_pin, context.rng);
        if let Err(sw) = self.persist() {
            self.state.pin = saved;
            return Err(sw);
        }
        tracing::info!("PIV PIN reset with the PUK");
        Ok(Vec::new())
    }

    fn cipher(&self) -> Result<TdesEde3, StatusWord> {
        TdesEde3::new_from_slice(&self.state.management_key[..])
            .map_err(|_| StatusWord::NoPreciseDiagnosis)
    }

    fn encrypt(&self, block: [u8; 8]) -> Result<[u8; 8], StatusWord> {
        // The block type is inferred, not named: generic-array 0.14.9
        // deprecates its name in favour of 1.x, which `des` 0.8 does not use.
        let mut b = block.into();
        self.cipher()?.encrypt_block(&mut b);
        Ok(b.into())
    }

    fn general_authenticate(&mut self, command: &Command, context: &mut Context<'_>) -> Outcome {
        let template = tlv::only(&command.data, &[0x7C]).ok_or(StatusWord::IncorrectData)?;
        let items = tlv::parse_all(template).ok_or(StatusWord::IncorrectData)?;
        let item = |tag: u8| items.iter().find(|t| t.tag == [tag]).map(|t| t.value);
        match command.p2 {
            KEY_MANAGEMENT => {
                if !matches!(command.p1, ALG_3DES | ALG_3DES_DEFAULT) {
                    return Err(StatusWord::IncorrectP1P2);
                }
                let exchange = self.exchange.take();
                self.management_authenticated = false;
                self.authenticate_management(item(0x80), item(0x81), item(0x82), exchange, context)
            }
            slot if state::SLOTS.contains(&slot) => {
                self.exchange = None;
                self.sign(slot, command.p1, item(0x82), item(0x81))
            }
            _ => Err(StatusWord::IncorrectP1P2),
        }
    }

    fn authenticate_management(
        &mut self,
        witness: Option<&[u8]>,
        challenge: Option<&[u8]>,
        response: Option<&[u8]>,
        exchange: Option<Exchange>,
        context: &mut Context<'_>,
    ) -> Outcome {
        let block = |v: &[u8]| <[u8; 8]>::try_from(v).map_err(|_| StatusWord::IncorrectData);
        let answer = |tag: u8, value: [u8; 8]| tlv::encode(&[0x7C], &tlv::encode(&[tag], &value));
        match (witness, challenge, response) {
            // Step 1 of witness authentication: the card picks a witness.
            (Some([]), None, None) => {
                let mut w = [0u8; 8];
                context.rng.fill_bytes(&mut w);
                self.exchange = Some(Exchange::Witness(w));
                Ok(answer(0x80, self.encrypt(w)?))
            }
            // Step 1 of challenge authentication: the host must encrypt it.
            (None, Some([]), None) => {
                let mut c = [0u8; 8];
                context.rng.fill_bytes(&mut c);
                self.exchange = Some(Exchange::Challenge(c));
                Ok(answer(0x81, c))
            }
            // Step 2 of witness authentication, with the host's challenge
            // (mutual: the card proves itself too) or without (card-to-host only).
            (Some(w), host_challenge, None) if !w.is_empty() => {
                let Some(Exchange::Witness(expected)) = exchange else {
                    return Err(StatusWord::ConditionsNotSatisfied);
                };
                let w = block(w)?;
                if !bool::from(subtle::ConstantTimeEq::ct_eq(&w[..], &expected[..])) {
                    return Err(StatusWord::SecurityNotSatisfied);
                }
                let reply = match host_challenge {
                    Some(c) => answer(0x82, self.encrypt(block(c)?)?),
                    None => Vec::new(),
                };
                self.management_authenticated = true;
                Ok(reply)
            }
            // Step 2 of challenge authentication.
            (None, None, Some(r)) if !r.is_empty() => {
                let Some(Exchange::Challenge(c)) = exchange else {
                    return Err(StatusWord::ConditionsNotSatisfied);
                };
                let expected = self.encrypt(c)?;
                if !bool::from(subtle::ConstantTimeEq::ct_eq(&block(r)?[..], &expected[..])) {
                    return Err(StatusWord::SecurityNotSatisfied);
                }
                self.management_authenticated = true;
                Ok(Vec::new())
            }
            _ => Err(StatusWord::IncorrectData),
        }
    }

    fn sign(
        &mut self,
        slot: u8,
        algorithm: u8,
        response: Option<&[u8]>,
        digest: Option<&[u8]>,
    ) -> Outcome {
        // `82 00` asks for the response; `81` carries what to sign.
        let (Some([]), Some(digest)) = (response, digest) else {
            return Err(StatusWord::IncorrectData);
        };
        if algorithm != ALG_ECC_P256 {
            return Err(StatusWord::IncorrectData);
        }
        if digest.is_empty() || digest.len() > DIGEST_LEN_MAX {
            return Err(StatusWord::IncorrectData);
        }
        let allowed = match slot {
            SLOT_SIGNATURE => std::mem::take(&mut self.pin_fresh_for_signature),
            SLOT_CARD_AUTH => true,
            _ => self.pin_verified,
        };
        if !allowed {
            return Err(StatusWord::SecurityNotSatisfied);
        }
        let key: &SigningKey = self
            .state
            .keys
            .get(&slot)
            .ok_or(StatusWord::ReferencedDataNotFound)?;
        let mut padded = [0u8; DIGEST_LEN_MAX];
        padded[DIGEST_LEN_MAX - digest.len()..].copy_from_slice(digest);
        let signature: Signature = key
            .sign_prehash(&padded)
            .map_err(|_| StatusWord::NoPreciseDiagnosis)?;
        let der = signature.to_der();
        tracing::info!(slot = format!("{slot:02X}"), "PIV signature");
        Ok(tlv::encode(&[0x7C], &tlv::encode(&[0x82], der.as_bytes())))
    }

    fn generate(&mut self, command: &Command, context: &mut Context<'_>) -> Outcome {
        if command.p1 != 0 || !state::SLOTS.contains(&command.p2) {
            return Err(StatusWord::IncorrectP1P2);
        }
        let template = tlv::only(&command.data, &[0xAC]).ok_or(StatusWord::IncorrectData)?;
        let items = tlv::parse_all(template).ok_or(StatusWord::IncorrectData)?;
        // PIN and touch policies (`AA`, `AB`, YubiKey) are accepted and not
        // kept: this card's policy per slot is fixed (see the module docs).
        match items.iter().find(|t| t.tag == [0x80]).map(|t| t.value) {
            Some([ALG_ECC_P256]) => {}
            _ => return Err(StatusWord::IncorrectData),
        }
        self.require_management()?;
        let slot = command.p2;
        let key = SigningKey::random(&mut context.rng);
        let old = self.state.keys.insert(slot, key);
        if let Err(sw) = self.persist() {
            match old {
                Some(old) => self.state.keys.insert(slot, old),
                None => self.state.keys.remove(&slot),
            };
            return Err(sw);
        }
        let point = self
            .state
            .public_key_sec1(slot)
            .ok_or(StatusWord::NoPreciseDiagnosis)?;
        tracing::info!(slot = format!("{slot:02X}"), "PIV key generated");
        Ok(tlv::encode(&[0x7F, 0x49], &tlv::encode(&[0x86], &point)))
    }

    fn set_management_key(&mut self, command: &Command) -> Outcome {
        if command.p1 != 0xFF || !matches!(command.p2, 0xFF | 0xFE) {
            return Err(StatusWord::IncorrectP1P2);
        }
        self.require_management()?;
        let key = match command.data.as_slice() {
            [ALG_3DES, KEY_MANAGEMENT, 24, key @ ..] => {
                <[u8; 24]>::try_from(key).map_err(|_| StatusWord::IncorrectData)?
            }
            _ => return Err(StatusWord::IncorrectData),
        };
        let old = std::mem::replace(&mut *self.state.management_key, key);
        if let Err(sw) = self.persist() {
            *self.state.management_key = old;
            return Err(sw);
        }
        Ok(Vec::new())
    }
}

impl Applet for PivApplet {
    fn aid(&self) -> &[u8] {
        &objects::AID
    }

    fn select(&mut self) -> Response {
        self.forget_session();
        Response::ok(objects::application_property_template())
    }

    fn deselect(&mut self) {
        self.forget_session();
    }

    fn call(&mut self, command: &Command, context: &mut Context<'_>) -> Response {
        let no_data = |f: &dyn Fn() -> Outcome| match command.data.is_empty() {
            true => f(),
            false => Err(StatusWord::WrongLength),
        };
        let outcome = match command.ins {
            INS_GET_DATA => self.get_data(command),
            INS_VERIFY => self.verify(command),
            INS_CHANGE_REFERENCE => self.change_reference(command, context),
            INS_RESET_RETRY => self.reset_retry_counter(command, context),
            INS_GENERAL_AUTHENTICATE => self.general_authenticate(command, context),
            INS_GENERATE => self.generate(command, context),
            INS_PUT_DATA => self.put_data(command),
            INS_GET_VERSION => no_data(&|| Ok(VERSION.to_vec())),
            INS_GET_SERIAL => no_data(&|| Ok(self.state.serial.to_be_bytes().to_vec())),
            INS_SET_MANAGEMENT_KEY => self.set_management_key(command),
            _ => Err(StatusWord::InsNotSupported),
        };
        // Any command but the second step of an exchange ends the exchange.
        if command.ins != INS_GENERAL_AUTHENTICATE {
            self.exchange = None;
        }
        match outcome {
            Ok(data) => Response::ok(data),
            Err(sw) => Response::status(sw),
        }
    }

    fn is_repeatable(&self, command: &Command) -> bool {
        matches!(command.ins, INS_GET_DATA | INS_GET_VERSION | INS_GET_SERIAL)
    }
}
