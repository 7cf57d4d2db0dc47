//! The KeyBridge transaction applet: [`keybridge_proto::applet`]'s table, answered.
//!
//! | command            | refused with                                                     |
//! |--------------------|------------------------------------------------------------------|
//! | VERIFY             | `6A86` P1-P2 ≠ `0080`; `6983` blocked; `6A80` not 4–8 digits; `63Cx` wrong PIN (`6983` when that was the last try); `6581` state not saved |
//! | VERIFY (no data)   | `9000` verified; `63Cx` not verified; `6983` blocked            |
//! | GENERATE KEY       | `6A86` P1-P2 ≠ `0000`; `6700` data present; `6983`; `6982` PIN not verified; `6581`; `6F00` ring refused the new key |
//! | GET DATA           | `6A86` P1 ≠ `00`; `6700` data present; `6A88` no such object (or no key/certificate yet) |
//! | PUT DATA           | `6A86` P1-P2 ≠ `0002`; `6983`; `6982`; `6700` empty or over [`CERTIFICATE_LEN_MAX`]; `6A88` no key; `6A80` not a certificate for the card's key; `6581` |
//! | SIGN TRANSACTION   | `6A86` P1-P2 ≠ `9E9A`/`9E10`; `6983`; `6982`; `6A88` no key; `6A80` payload does not decode; `6985` counter exhausted or holder declined; `6581`; `6F00` ring refused the key or could not sign |
//! | SIGN CSR           | `6983`; `6982`; `6A88` no key; `6A80` not a CertificationRequestInfo for the card's own key |
//! | PUT DATA OCRA      | `6983`; `6982`; `6A80` suite does not parse, has P or S, or secret empty/over [`OCRA_SECRET_LEN_MAX`]; `6581` |
//! | OCRA RESPONSE      | `6A86` P1-P2 ≠ `0000`; `6983`; `6982`; `6A88` no OCRA secret; `6A80` payload does not decode; `6985` counter exhausted or holder declined; `6581` |
//! | anything else      | `6D00`                                                           |
//!
//! Rules the table cannot show:
//! - A PIN attempt is counted and saved *before* the PIN is compared, so
//!   cutting the power mid-command cannot buy a free guess. When the save
//!   fails (`6581`) the PIN is not compared and the attempt is not counted.
//! - A right PIN restores the retries in memory only; the restore is written
//!   by the next save (SIGN TRANSACTION's counter, any other change), or on
//!   deselect, reset and power off if nothing saved it before. Until then the
//!   saved retry count is lower than the true one, never higher: a crash
//!   costs the holder a try (fail-safe), it never gives one. A payment is two
//!   durable writes (VERIFY's count, SIGN's counter), not three.
//! - Saves that change only the retries left and the counter (VERIFY's try,
//!   SIGN TRANSACTION's and OCRA RESPONSE's counter, a retry restore) go
//!   through [`StateStore::save_counters`], which a [`crate::FileStore`]
//!   writes in place; GENERATE KEY, PUT DATA and PUT DATA OCRA save the
//!   whole state.
//! - A verified PIN is consumed by the next SIGN TRANSACTION whatever its
//!   outcome, and forgotten on deselect, reset and power off.
//! - The counter is incremented and saved before the signature is made; if the
//!   save fails the answer is `6581` and no signature leaves the card. A
//!   counter value is never used twice.
//! - SIGN TRANSACTION signs with ring (a key pair built once per key, when the
//!   applet is made and by GENERATE KEY); its nonce is random, hedged by ring
//!   with the key and the message digest. SIGN CSR signs with `p256`
//!   (RFC 6979). Both answer DER ECDSA P-256 over SHA-256.
//! - GENERATE KEY drops the stored certificate: it certifies the old key.
//! - SIGN CSR and OCRA RESPONSE consume the verified PIN like SIGN TRANSACTION.
//! - OCRA suites with a PIN hash (P) or session data (S) are refused: the card
//!   checks its PIN itself, and a payment has no session data.
//! - An expired payload is still shown (marked EXPIRED) and may be signed: the
//!   card's time comes from its host and is not trusted; the server decides.

use keybridge_proto::applet::{
    self, pin_is_well_formed, OcraAnswer, INS_GENERATE_KEY, INS_GET_DATA, INS_OCRA_RESPONSE,
    INS_PUT_DATA, INS_SIGN, INS_VERIFY, OBJ_CERTIFICATE, OBJ_OCRA, OBJ_PUBLIC_KEY, OBJ_STATUS,
    P1_SIGN, P2_PIN, P2_SIGN, P2_SIGN_CSR,
};
use keybridge_proto::ocra;
use keybridge_proto::{signed_message, ConfirmationPayload};
use keybridge_transport::{Command, Response, StatusWord};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::PublicKey;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use zeroize::Zeroizing;

use crate::applet::{Applet, Context};
use crate::holder::Screen;
use crate::state::{CardState, StateStore};

pub use crate::state::CERTIFICATE_LEN_MAX;

/// Longest OCRA secret PUT DATA OCRA stores (HMAC-SHA512's block size).
pub const OCRA_SECRET_LEN_MAX: usize = 128;

/// The byte SELECT answers: the applet interface version.
pub const APPLET_VERSION: u8 = 0x01;

type Outcome = Result<Vec<u8>, StatusWord>;

/// The transaction applet: state, where to save it, and the session.
pub struct TransactionApplet {
    state: CardState,
    store: Box<dyn StateStore>,
    /// `state.private_key` as ring holds it, for SIGN TRANSACTION: made once
    /// per key, never saved (it is made again from the state). `Some` when
    /// the state has a key, unless ring refused it ([`ring_key_pair`]). ring
    /// does not zeroize its copy of the scalar on drop; it lives as long as
    /// the key in the state, which does.
    payment_key: Option<EcdsaKeyPair>,
    /// ring's randomness: its `SecureRandom` is sealed, so the injected
    /// [`Context::rng`] cannot stand in.
    ring_random: SystemRandom,
    /// Session only: set by a right PIN, cleared by SIGN, deselect and reset.
    pin_verified: bool,
    /// A right PIN restored the retries in memory and no save has written
    /// them yet: the saved count is one lower (see the module doc).
    retries_restore_unsaved: bool,
}

impl std::fmt::Debug for TransactionApplet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionApplet")
            .field("state", &self.state)
            .field("has_payment_key", &self.payment_key.is_some())
            .field("pin_verified", &self.pin_verified)
            .field("retries_restore_unsaved", &self.retries_restore_unsaved)
            .finish_non_exhaustive()
    }
}

impl TransactionApplet {
    pub fn new(state: CardState, store: Box<dyn StateStore>) -> TransactionApplet {
        let ring_random = SystemRandom::new();
        let payment_key = state
            .private_key
            .as_ref()
            .and_then(|key| ring_key_pair(key, &ring_random));
        TransactionApplet {
            state,
            store,
            payment_key,
            ring_random,
            pin_verified: false,
            retries_restore_unsaved: false,
        }
    }

    pub fn state(&self) -> &CardState {
        &self.state
    }

    /// Saves the whole state, a pending retry restore included.
    fn save(&mut self) -> Result<(), crate::CardError> {
        self.store.save(&self.state)?;
        self.retries_restore_unsaved = false;
        Ok(())
    }

    /// Saves the PIN retries left and the counter, the only fields VERIFY,
    /// SIGN TRANSACTION, OCRA RESPONSE and a retry restore change (a
    /// pending restore included).
    fn save_counters(&mut self) -> Result<(), crate::CardError> {
        self.store.save_counters(&self.state)?;
        self.retries_restore_unsaved = false;
        Ok(())
    }

    /// [`Self::save`] before an answer: `6581` when it fails.
    fn persist(&mut self) -> Result<(), StatusWord> {
        Self::answerable(self.save())
    }

    /// [`Self::save_counters`] before an answer: `6581` when it fails.
    fn persist_counters(&mut self) -> Result<(), StatusWord> {
        Self::answerable(self.save_counters())
    }

    fn answerable(saved: Result<(), crate::CardError>) -> Result<(), StatusWord> {
        saved.map_err(|e| {
            tracing::error!(error = %e, "card state not saved; answering 6581");
            StatusWord::MemoryFailure
        })
    }

    fn blocked(&self) -> bool {
        self.state.pin_retries_left == 0
    }

    /// The checks every PIN-protected command starts with.
    fn require_pin(&self) -> Result<(), StatusWord> {
        if self.blocked() {
            return Err(StatusWord::AuthenticationBlocked);
        }
        if !self.pin_verified {
            return Err(StatusWord::SecurityNotSatisfied);
        }
        Ok(())
    }

    fn verify(&mut self, command: &Command) -> Outcome {
        if (command.p1, command.p2) != (0, P2_PIN) {
            return Err(StatusWord::IncorrectP1P2);
        }
        if self.blocked() {
            self.pin_verified = false;
            return Err(StatusWord::AuthenticationBlocked);
        }
        let pin = command.data.as_slice();
        if pin.is_empty() {
            return match self.pin_verified {
                true => Ok(Vec::new()),
                false => Err(StatusWord::VerifyFailed(self.state.pin_retries_left)),
            };
        }
        if !pin_is_well_formed(pin) {
            return Err(StatusWord::IncorrectData);
        }
        self.pin_verified = false;
        // Count the attempt first (not blocked, so at least one try is left).
        let left = self.state.pin_retries_left;
        self.state.pin_retries_left = left.saturating_sub(1);
        if let Err(sw) = self.persist_counters() {
            // Not counted, so not compared: the card stays as it was saved.
            // Kept in memory, each failed save took a try, and a few of them
            // (a full disk) blocked a PIN nobody had got wrong.
            self.state.pin_retries_left = left;
            return Err(sw);
        }
        if self.state.pin.matches(pin) {
            // Not saved now: the saved count stays one lower until the next
            // save writes this, which errs on the holder's side, never on an
            // attacker's.
            self.state.pin_retries_left = self.state.pin_retries_max;
            self.retries_restore_unsaved = true;
            self.pin_verified = true;
            return Ok(Vec::new());
        }
        match self.state.pin_retries_left {
            0 => Err(StatusWord::AuthenticationBlocked),
            left => Err(StatusWord::VerifyFailed(left)),
        }
    }

    fn generate_key(&mut self, command: &Command, context: &mut Context<'_>) -> Outcome {
        if (command.p1, command.p2) != (0, 0) {
            return Err(StatusWord::IncorrectP1P2);
        }
        if !command.data.is_empty() {
            return Err(StatusWord::WrongLength);
        }
        self.require_pin()?;
        let key = SigningKey::random(&mut context.rng);
        let new_payment_key =
            ring_key_pair(&key, &self.ring_random).ok_or(StatusWord::NoPreciseDiagnosis)?;
        let old_key = self.state.private_key.replace(key);
        let old_certificate = self.state.certificate.take();
        if let Err(sw) = self.persist() {
            // Nothing about the new key left the card: keep the saved one.
            self.state.private_key = old_key;
            self.state.certificate = old_certificate;
            return Err(sw);
        }
        self.payment_key = Some(new_payment_key);
        self.state
            .public_key_sec1()
            .ok_or(StatusWord::NoPreciseDiagnosis)
    }

    fn get_data(&self, command: &Command) -> Outcome {
        if command.p1 != 0 {
            return Err(StatusWord::IncorrectP1P2);
        }
        if !command.data.is_empty() {
            return Err(StatusWord::WrongLength);
        }
        let found = match command.p2 {
            OBJ_PUBLIC_KEY => self.state.public_key_sec1(),
            OBJ_CERTIFICATE => self.state.certificate.clone(),
            OBJ_STATUS => Some(self.state.status().encode().to_vec()),
            _ => None,
        };
        found.ok_or(StatusWord::ReferencedDataNotFound)
    }

    fn put_data(&mut self, command: &Command) -> Outcome {
        if (command.p1, command.p2) == (0, OBJ_OCRA) {
            return self.put_ocra(command);
        }
        if (command.p1, command.p2) != (0, OBJ_CERTIFICATE) {
            return Err(StatusWord::IncorrectP1P2);
        }
        self.require_pin()?;
        let certificate = &command.data;
        if certificate.is_empty() || certificate.len() > CERTIFICATE_LEN_MAX {
            return Err(StatusWord::WrongLength);
        }
        let key = self
            .state
            .private_key
            .as_ref()
            .ok_or(StatusWord::ReferencedDataNotFound)?;
        let certified = crate::der::certificate_public_key(certificate)
            .and_then(|sec1| PublicKey::from_sec1_bytes(sec1).ok())
            .ok_or(StatusWord::IncorrectData)?;
        if certified != PublicKey::from(key.verifying_key()) {
            return Err(StatusWord::IncorrectData);
        }
        let old = self.state.certificate.replace(certificate.clone());
        if let Err(sw) = self.persist() {
            self.state.certificate = old;
            return Err(sw);
        }
        Ok(Vec::new())
    }

    fn put_ocra(&mut self, command: &Command) -> Outcome {
        self.require_pin()?;
        let (suite, secret) =
            applet::split_ocra_put_data(&command.data).ok_or(StatusWord::IncorrectData)?;
        let suite = ocra::Suite::parse(suite).map_err(|_| StatusWord::IncorrectData)?;
        if suite.pin_hash().is_some()
            || suite.session_len().is_some()
            || secret.is_empty()
            || secret.len() > OCRA_SECRET_LEN_MAX
        {
            return Err(StatusWord::IncorrectData);
        }
        let old = self.state.ocra.replace(crate::state::OcraCredential {
            suite,
            secret: Zeroizing::new(secret.to_vec()),
        });
        if let Err(sw) = self.persist() {
            self.state.ocra = old;
            return Err(sw);
        }
        Ok(Vec::new())
    }

    /// SIGN CSR: signs a PKCS#10 request info that carries this card's key, and nothing else.
    fn sign_csr(&mut self, command: &Command) -> Outcome {
        self.require_pin()?;
        self.pin_verified = false;
        let key = self
            .state
            .private_key
            .clone()
            .ok_or(StatusWord::ReferencedDataNotFound)?;
        let point = self
            .state
            .public_key_sec1()
            .ok_or(StatusWord::ReferencedDataNotFound)?;
        keybridge_proto::csr::check_request_info(&command.data, &point)
            .map_err(|_| StatusWord::IncorrectData)?;
        let signature: Signature = key.sign(&command.data);
        tracing::info!("signed a certificate request for the card's own key");
        Ok(signature.to_der().as_bytes().to_vec())
    }

    /// OCRA RESPONSE: the payload shown and confirmed like SIGN TRANSACTION,
    /// answered with an RFC 6287 response over the payload's SHA-256.
    fn ocra_response(&mut self, command: &Command, context: &mut Context<'_>) -> Outcome {
        if (command.p1, command.p2) != (0, 0) {
            return Err(StatusWord::IncorrectP1P2);
        }
        self.require_pin()?;
        self.pin_verified = false;
        let credential = self
            .state
            .ocra
            .clone()
            .ok_or(StatusWord::ReferencedDataNotFound)?;
        let payload =
            ConfirmationPayload::decode(&command.data).map_err(|_| StatusWord::IncorrectData)?;
        let suite = &credential.suite;
        let counter = match suite.uses_counter() {
            true => Some(
                self.state
                    .counter
                    .checked_add(1)
                    .ok_or(StatusWord::ConditionsNotSatisfied)?,
            ),
            false => None,
        };
        let screen = Screen::from_payload(&payload, context.now_unix_s);
        context.holder.show(&screen);
        if !context.holder.confirm(&screen) {
            tracing::info!("holder declined the payment");
            return Err(StatusWord::ConditionsNotSatisfied);
        }
        if let Some(c) = counter {
            // Spent before the response exists, as for signatures.
            self.state.counter = c;
            self.persist_counters()?;
        }
        let time_step = suite.time_step().map(|t| t.steps_at(context.now_unix_s));
        let question = ocra::payload_question(&command.data);
        let response = ocra::compute(
            suite,
            &credential.secret,
            &ocra::Inputs {
                counter: counter.map(u64::from),
                question: &question,
                pin_hash: None,
                session: None,
                time_steps: time_step,
            },
        )
        .map_err(|_| StatusWord::IncorrectData)?;
        tracing::info!(counter = ?counter, "answered an OCRA challenge");
        Ok(OcraAnswer {
            counter: counter.map(u64::from).unwrap_or(0),
            time_step: time_step.unwrap_or(0),
            response,
        }
        .encode())
    }

    fn sign(&mut self, command: &Command, context: &mut Context<'_>) -> Outcome {
        if (command.p1, command.p2) == (P1_SIGN, P2_SIGN_CSR) {
            return self.sign_csr(command);
        }
        if (command.p1, command.p2) != (P1_SIGN, P2_SIGN) {
            return Err(StatusWord::IncorrectP1P2);
        }
        self.require_pin()?;
        // One verified PIN, one SIGN, whatever happens next.
        self.pin_verified = false;
        match (&self.state.private_key, &self.payment_key) {
            (None, _) => return Err(StatusWord::ReferencedDataNotFound),
            (Some(_), None) => {
                tracing::error!("ring refused the card's key; not signing");
                return Err(StatusWord::NoPreciseDiagnosis);
            }
            (Some(_), Some(_)) => {}
        }
        let payload =
            ConfirmationPayload::decode(&command.data).map_err(|_| StatusWord::IncorrectData)?;
        let counter = self
            .state
            .counter
            .checked_add(1)
            .ok_or(StatusWord::ConditionsNotSatisfied)?;
        let screen = Screen::from_payload(&payload, context.now_unix_s);
        context.holder.show(&screen);
        if !context.holder.confirm(&screen) {
            tracing::info!("holder declined the payment");
            return Err(StatusWord::ConditionsNotSatisfied);
        }
        // The counter is spent before the signature exists: never used twice.
        // This save also writes a retry restore VERIFY left unsaved.
        self.state.counter = counter;
        self.persist_counters()?;
        let key = self
            .payment_key
            .as_ref()
            .ok_or(StatusWord::NoPreciseDiagnosis)?;
        let signature = key
            .sign(&self.ring_random, &signed_message(&command.data, counter))
            .map_err(|_| {
                tracing::error!(counter, "ring could not sign (no randomness?)");
                StatusWord::NoPreciseDiagnosis
            })?;
        let der = signature.as_ref();
        let mut out = Vec::with_capacity(4 + der.len());
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(der);
        tracing::info!(counter, "signed a payment");
        Ok(out)
    }
}

/// `key` as a ring key pair for SIGN TRANSACTION. `None` only if ring
/// refuses a key `p256` accepted (both check the scalar is in `1..n` and
/// the point is its public key), which this card then cannot sign with.
fn ring_key_pair(key: &SigningKey, random: &SystemRandom) -> Option<EcdsaKeyPair> {
    let scalar = Zeroizing::new(key.to_bytes());
    let point = key.verifying_key().to_encoded_point(false);
    match EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &scalar,
        point.as_bytes(),
        random,
    ) {
        Ok(pair) => Some(pair),
        Err(e) => {
            tracing::error!(error = %e, "ring refused the card's key");
            None
        }
    }
}

impl Applet for TransactionApplet {
    fn aid(&self) -> &[u8] {
        &applet::AID
    }

    fn select(&mut self) -> Response {
        self.pin_verified = false;
        Response::ok(vec![APPLET_VERSION])
    }

    /// Also writes a retry restore no save has written yet: the last chance
    /// before a power off (a failure leaves the lower, fail-safe count).
    fn deselect(&mut self) {
        self.pin_verified = false;
        if self.retries_restore_unsaved {
            if let Err(e) = self.save_counters() {
                tracing::warn!(error = %e, "PIN retry restore not saved; the saved count stays one lower");
            }
        }
    }

    fn call(&mut self, command: &Command, context: &mut Context<'_>) -> Response {
        let outcome = match command.ins {
            INS_VERIFY => self.verify(command),
            INS_GENERATE_KEY => self.generate_key(command, context),
            INS_GET_DATA => self.get_data(command),
            INS_PUT_DATA => self.put_data(command),
            INS_SIGN => self.sign(command, context),
            INS_OCRA_RESPONSE => self.ocra_response(command, context),
            _ => Err(StatusWord::InsNotSupported),
        };
        match outcome {
            Ok(data) => Response::ok(data),
            Err(sw) => Response::status(sw),
        }
    }

    fn is_repeatable(&self, command: &Command) -> bool {
        command.ins == INS_GET_DATA
    }

    fn channel_identity(&self) -> Option<keybridge_transport::secure::CardIdentity<'_>> {
        Some(keybridge_transport::secure::CardIdentity {
            key: self.state.private_key.as_ref()?,
            certificate: self.state.certificate.as_deref()?,
        })
    }
}
