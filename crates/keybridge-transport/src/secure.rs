//! KB-SC1, the secure channel between the phone and the card, as APDUs.
//!
//! Radio links (Bluetooth LE, NFC) can be overheard and tampered with, so
//! before VERIFY and SIGN the phone and the card agree on session keys and then
//! exchange every command inside an authenticated-encryption envelope. The
//! channel is made of APDUs, so it is transport-independent: the card's
//! dispatcher answers it whatever carried the bytes.
//!
//! ```text
//! phone (relay)                                              card
//!   eP ← fresh P-256 key
//!   KEY AGREEMENT  80 86 00 00  [01 01 ‖ eP.pub(65)] ───────▶
//!                                                            eC ← fresh P-256 key
//!                                                            TH = SHA-256(LABEL ‖ 01 01 ‖ eP.pub ‖ eC.pub ‖ SHA-256(cert))
//!                                                            σ  = ECDSA-P256-SHA256(card key, "KeyBridge SC1 card auth" ‖ TH)
//!                 ◀──────────────── [eC.pub(65) ‖ σ (DER)] 9000
//!   TH as above, with the certificate pinned at enrolment;
//!   verify σ with the pinned certificate's key (else abort)
//!   both: Z = ECDH(e*, e*'), (Kc ‖ Kr) = HKDF-SHA256(salt = TH, ikm = Z, info = "KeyBridge SC1 keys"), 32 bytes each
//!
//!   ENVELOPE  84 C2 00 00  [n(4) ‖ AES-256-GCM(Kc, N(1,n), AAD(n), pad(APDU))] ──▶
//!                                                            n must be last+1 (else refused, session dropped),
//!                                                            or exactly the last request again (answered from cache)
//!                 ◀──────── [AES-256-GCM(Kr, N(2,n), AAD(n), pad(response ‖ SW))] 9000
//! ```
//!
//! - `N(d, n)` is the 12-byte nonce `d` (4 bytes BE) ‖ `n` (8 bytes BE): one
//!   key per direction, the counter never repeats within a session, and every
//!   session has fresh keys, so a nonce is never reused.
//! - The AAD binds the envelope header and the counter; a response is opened
//!   with the counter of the command it answers, so a replayed, reordered or
//!   altered frame in either direction fails authentication.
//! - Plaintexts are padded (ISO/IEC 7816-4 `80 00…`) to a multiple of
//!   [`PAD_BLOCK`] bytes, so the ciphertext length does not tell the PIN's length.
//! - The card authenticates; the phone does not (the PIN authenticates the
//!   holder, inside the channel). A man in the middle who substitutes his own
//!   ephemeral key cannot produce σ over the transcript the phone computes.
//! - Any envelope the card cannot open ends the session (`6988`); the phone
//!   must agree on new keys. A command sent again verbatim (same counter, same
//!   bytes: the link lost the answer) gets the cached answer and is not run
//!   twice, which makes SIGN idempotent per request over a lossy link.
//!
//! Signatures by the card key over `"KeyBridge SC1 card auth" ‖ TH` can never
//! be mistaken for payment signatures: those cover a confirmation payload
//! whose first byte is the BER-TLV tag `71`, and the server checks them
//! against the payload it stored.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use hkdf::Hkdf;
use p256::ecdh::EphemeralSecret;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::rand_core::CryptoRngCore;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::PublicKey;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::apdu::{Command, Response, StatusWord};
use crate::channel::{transmit, CardChannel, LinkError, TransmitOptions};

/// ISO/IEC 7816-4 proprietary class (§5.4.1, `8x`) for KEY AGREEMENT.
pub const CLA_PROPRIETARY: u8 = 0x80;
/// Proprietary class with the secure-messaging indication bits (`x4`) for ENVELOPE.
pub const CLA_SECURE: u8 = 0x84;
/// KEY AGREEMENT (proprietary class, so not ISO's GENERAL AUTHENTICATE).
pub const INS_KEY_AGREEMENT: u8 = 0x86;
/// ENVELOPE (ISO/IEC 7816-4 §7.6.2: carries another APDU).
pub const INS_ENVELOPE: u8 = 0xC2;

pub const PROTOCOL_VERSION: u8 = 0x01;
/// Suite 1: ECDHE P-256, ECDSA P-256/SHA-256, HKDF-SHA-256, AES-256-GCM.
pub const SUITE_1: u8 = 0x01;
/// How the suite is shown to people.
pub const SUITE_1_NAME: &str =
    "KB-SC1: ECDHE-P256 / ECDSA-P256-SHA256 card auth / HKDF-SHA256 / AES-256-GCM";

const TRANSCRIPT_LABEL: &[u8] = b"KeyBridge SC1 transcript\0";
const AUTH_LABEL: &[u8] = b"KeyBridge SC1 card auth\0";
const KEYS_INFO: &[u8] = b"KeyBridge SC1 keys";
const DIRECTION_COMMAND: u32 = 1;
const DIRECTION_RESPONSE: u32 = 2;
const POINT_LEN: usize = 65;
const TAG_LEN: usize = 16;
const COUNTER_LEN: usize = 4;
/// Plaintexts are padded to a multiple of this.
pub const PAD_BLOCK: usize = 32;
/// Largest envelope plaintext (an APDU of up to 4096 data bytes plus header,
/// or a response of up to 4096 bytes plus SW, padded).
pub const PLAINTEXT_LEN_MAX: usize = 4096 + 16;
/// A DER ECDSA P-256 signature is at most 72 bytes.
const SIGNATURE_DER_LEN_MAX: usize = 72;

/// Why the channel could not be set up or a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    #[error("key agreement message malformed")]
    Malformed,
    #[error("unsupported secure channel version or suite")]
    Unsupported,
    #[error("the card's key agreement signature does not verify with the pinned certificate")]
    BadCardSignature,
    #[error("envelope failed authentication (altered, replayed or reordered)")]
    BadEnvelope,
    #[error("envelope counter {got} out of order (expected {expected})")]
    Counter { expected: u32, got: u32 },
    #[error("the session's counter is exhausted; agree on new keys")]
    CounterExhausted,
    #[error("plaintext over {PLAINTEXT_LEN_MAX} bytes")]
    TooLong,
    #[error("the card refused the secure channel: status {0}")]
    Refused(StatusWord),
}

struct Keys {
    command: Aes256Gcm,
    response: Aes256Gcm,
}

impl Keys {
    fn derive(shared: &[u8], transcript_hash: &[u8; 32]) -> Result<Keys, SecureError> {
        let hk = Hkdf::<Sha256>::new(Some(transcript_hash), shared);
        let mut okm = Zeroizing::new([0u8; 64]);
        // 64 bytes is far below HKDF-SHA256's 255 × 32 limit; still, a failure
        // must never leave a zero key in use.
        hk.expand(KEYS_INFO, &mut okm[..])
            .map_err(|_| SecureError::Malformed)?;
        let key =
            |bytes: &[u8]| Aes256Gcm::new_from_slice(bytes).map_err(|_| SecureError::Malformed);
        Ok(Keys {
            command: key(&okm[..32])?,
            response: key(&okm[32..])?,
        })
    }
}

fn nonce(direction: u32, counter: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&direction.to_be_bytes());
    n[4..].copy_from_slice(&u64::from(counter).to_be_bytes());
    n
}

fn aad(direction: u32, counter: u32) -> [u8; 12] {
    // Header of the envelope (CLA INS P1 P2), direction and counter.
    let mut a = [0u8; 12];
    a[..4].copy_from_slice(&[CLA_SECURE, INS_ENVELOPE, 0, 0]);
    a[4..8].copy_from_slice(&direction.to_be_bytes());
    a[8..].copy_from_slice(&counter.to_be_bytes());
    a
}

fn pad(plain: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecureError> {
    if plain.len() > PLAINTEXT_LEN_MAX - 1 {
        return Err(SecureError::TooLong);
    }
    let padded_len = (plain.len() + 1).div_ceil(PAD_BLOCK) * PAD_BLOCK;
    let mut out = Zeroizing::new(Vec::with_capacity(padded_len));
    out.extend_from_slice(plain);
    out.push(0x80);
    out.resize(padded_len, 0);
    Ok(out)
}

fn unpad(mut padded: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, SecureError> {
    let end = padded
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(SecureError::BadEnvelope)?;
    if padded[end] != 0x80 {
        return Err(SecureError::BadEnvelope);
    }
    padded.truncate(end);
    Ok(padded)
}

fn seal(
    key: &Aes256Gcm,
    direction: u32,
    counter: u32,
    plain: &[u8],
) -> Result<Vec<u8>, SecureError> {
    let padded = pad(plain)?;
    key.encrypt(
        &nonce(direction, counter).into(),
        Payload {
            msg: &padded,
            aad: &aad(direction, counter),
        },
    )
    .map_err(|_| SecureError::TooLong)
}

fn open(
    key: &Aes256Gcm,
    direction: u32,
    counter: u32,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SecureError> {
    if sealed.len() < TAG_LEN + PAD_BLOCK || sealed.len() > PLAINTEXT_LEN_MAX + PAD_BLOCK + TAG_LEN
    {
        return Err(SecureError::BadEnvelope);
    }
    let plain = key
        .decrypt(
            &nonce(direction, counter).into(),
            Payload {
                msg: sealed,
                aad: &aad(direction, counter),
            },
        )
        .map_err(|_| SecureError::BadEnvelope)?;
    unpad(Zeroizing::new(plain))
}

fn transcript_hash(phone_point: &[u8], card_point: &[u8], certificate: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(TRANSCRIPT_LABEL);
    h.update([PROTOCOL_VERSION, SUITE_1]);
    h.update(phone_point);
    h.update(card_point);
    h.update(Sha256::digest(certificate));
    h.finalize().into()
}

fn auth_message(th: &[u8; 32]) -> Vec<u8> {
    [AUTH_LABEL, &th[..]].concat()
}

fn encode_point(key: &PublicKey) -> Vec<u8> {
    key.to_encoded_point(false).as_bytes().to_vec()
}

/// The phone's half of the key agreement, between request and response.
pub struct PhoneHandshake {
    secret: EphemeralSecret,
    point: Vec<u8>,
}

impl std::fmt::Debug for PhoneHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhoneHandshake")
    }
}

impl PhoneHandshake {
    /// A fresh ephemeral key and the KEY AGREEMENT command carrying it.
    pub fn start(rng: &mut impl CryptoRngCore) -> (PhoneHandshake, Command) {
        let secret = EphemeralSecret::random(rng);
        let point = encode_point(&secret.public_key());
        let mut data = vec![PROTOCOL_VERSION, SUITE_1];
        data.extend_from_slice(&point);
        let command = Command::new(CLA_PROPRIETARY, INS_KEY_AGREEMENT, 0, 0)
            .with_data(data)
            .with_le(256);
        (PhoneHandshake { secret, point }, command)
    }

    /// Checks the card's answer against the certificate pinned at enrolment
    /// (its DER and the public key it certifies) and derives the session keys.
    pub fn finish(
        self,
        response: &[u8],
        pinned_certificate: &[u8],
        pinned_key: &VerifyingKey,
    ) -> Result<PhoneSession, SecureError> {
        if response.len() <= POINT_LEN || response.len() > POINT_LEN + SIGNATURE_DER_LEN_MAX {
            return Err(SecureError::Malformed);
        }
        let (card_point, signature) = response.split_at(POINT_LEN);
        let card_key =
            PublicKey::from_sec1_bytes(card_point).map_err(|_| SecureError::Malformed)?;
        let signature = Signature::from_der(signature).map_err(|_| SecureError::Malformed)?;
        let th = transcript_hash(&self.point, card_point, pinned_certificate);
        pinned_key
            .verify(&auth_message(&th), &signature)
            .map_err(|_| SecureError::BadCardSignature)?;
        let shared = self.secret.diffie_hellman(&card_key);
        Ok(PhoneSession {
            keys: Keys::derive(shared.raw_secret_bytes(), &th)?,
            next_counter: 1,
        })
    }
}

/// The phone's session: seals commands, opens responses.
pub struct PhoneSession {
    keys: Keys,
    next_counter: u32,
}

impl std::fmt::Debug for PhoneSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneSession")
            .field("next_counter", &self.next_counter)
            .finish_non_exhaustive()
    }
}

impl PhoneSession {
    /// The ENVELOPE carrying `apdu`, and the counter its answer must carry.
    pub fn seal(&mut self, apdu: &[u8]) -> Result<(u32, Command), SecureError> {
        let counter = self.next_counter;
        self.next_counter = counter
            .checked_add(1)
            .ok_or(SecureError::CounterExhausted)?;
        let sealed = seal(&self.keys.command, DIRECTION_COMMAND, counter, apdu)?;
        let mut data = Vec::with_capacity(COUNTER_LEN + sealed.len());
        data.extend_from_slice(&counter.to_be_bytes());
        data.extend_from_slice(&sealed);
        let command = Command::new(CLA_SECURE, INS_ENVELOPE, 0, 0)
            .with_data(data)
            .with_le(65_536);
        Ok((counter, command))
    }

    /// Opens the answer to the envelope sealed with `counter`.
    pub fn open(&self, counter: u32, response: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecureError> {
        open(&self.keys.response, DIRECTION_RESPONSE, counter, response)
    }
}

/// What the card needs to prove itself: its certified key and certificate.
pub struct CardIdentity<'a> {
    pub key: &'a SigningKey,
    pub certificate: &'a [u8],
}

impl std::fmt::Debug for CardIdentity<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardIdentity")
            .field("certificate_len", &self.certificate.len())
            .finish_non_exhaustive()
    }
}

/// Answers a KEY AGREEMENT command's data: the response data and the session.
pub fn card_accept(
    request: &[u8],
    identity: CardIdentity<'_>,
    rng: &mut impl CryptoRngCore,
) -> Result<(Vec<u8>, CardSession), SecureError> {
    let [version, suite, phone_point @ ..] = request else {
        return Err(SecureError::Malformed);
    };
    if (*version, *suite) != (PROTOCOL_VERSION, SUITE_1) {
        return Err(SecureError::Unsupported);
    }
    if phone_point.len() != POINT_LEN {
        return Err(SecureError::Malformed);
    }
    let phone_key = PublicKey::from_sec1_bytes(phone_point).map_err(|_| SecureError::Malformed)?;
    let secret = EphemeralSecret::random(rng);
    let card_point = encode_point(&secret.public_key());
    let th = transcript_hash(phone_point, &card_point, identity.certificate);
    let signature: Signature = identity.key.sign(&auth_message(&th));
    let shared = secret.diffie_hellman(&phone_key);
    let mut response = card_point;
    response.extend_from_slice(signature.to_der().as_bytes());
    Ok((
        response,
        CardSession {
            keys: Keys::derive(shared.raw_secret_bytes(), &th)?,
            last_counter: 0,
            last: None,
        },
    ))
}

/// The card's session: opens commands in order, seals answers, and keeps the
/// last answer for a verbatim retransmission.
pub struct CardSession {
    keys: Keys,
    last_counter: u32,
    /// SHA-256 of the last envelope's data and the sealed answer to it.
    last: Option<([u8; 32], Vec<u8>)>,
}

impl std::fmt::Debug for CardSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardSession")
            .field("last_counter", &self.last_counter)
            .finish_non_exhaustive()
    }
}

/// What an envelope turned out to be.
#[derive(Debug)]
pub enum Opened {
    /// A new command: run it, then [`CardSession::seal`] the answer.
    Fresh {
        counter: u32,
        apdu: Zeroizing<Vec<u8>>,
    },
    /// The last command again, verbatim: send this sealed answer again.
    Retransmission(Vec<u8>),
}

impl CardSession {
    pub fn open(&mut self, envelope: &[u8]) -> Result<Opened, SecureError> {
        if envelope.len() < COUNTER_LEN {
            return Err(SecureError::Malformed);
        }
        let (counter, sealed) = envelope.split_at(COUNTER_LEN);
        let counter = u32::from_be_bytes([counter[0], counter[1], counter[2], counter[3]]);
        let digest: [u8; 32] = Sha256::digest(envelope).into();
        if counter == self.last_counter {
            return match &self.last {
                Some((last_digest, answer)) if *last_digest == digest => {
                    Ok(Opened::Retransmission(answer.clone()))
                }
                _ => Err(SecureError::Counter {
                    expected: self.last_counter.saturating_add(1),
                    got: counter,
                }),
            };
        }
        let expected = self
            .last_counter
            .checked_add(1)
            .ok_or(SecureError::CounterExhausted)?;
        if counter != expected {
            return Err(SecureError::Counter {
                expected,
                got: counter,
            });
        }
        let apdu = open(&self.keys.command, DIRECTION_COMMAND, counter, sealed)?;
        self.last_counter = counter;
        self.last = Some((digest, Vec::new()));
        Ok(Opened::Fresh { counter, apdu })
    }

    /// Seals the answer to the command opened with `counter`, and remembers it.
    pub fn seal(&mut self, counter: u32, response: &[u8]) -> Result<Vec<u8>, SecureError> {
        let sealed = seal(&self.keys.response, DIRECTION_RESPONSE, counter, response)?;
        if counter == self.last_counter {
            if let Some((_, answer)) = self.last.as_mut() {
                answer.clone_from(&sealed);
            }
        }
        Ok(sealed)
    }
}

/// A [`CardChannel`] that carries every APDU inside an ENVELOPE of `session`.
/// Stack it on any link; [`transmit`] above it works as on a plain link.
pub struct Protected<'a> {
    pub inner: &'a mut dyn CardChannel,
    pub session: &'a mut PhoneSession,
    pub options: TransmitOptions,
}

impl std::fmt::Debug for Protected<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protected")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl CardChannel for Protected<'_> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
        let (counter, envelope) = self.session.seal(command).map_err(LinkError::Secure)?;
        let response = transmit(self.inner, &envelope, self.options)?;
        if !response.sw.is_ok() {
            return Err(LinkError::Secure(SecureError::Refused(response.sw)));
        }
        let plain = self
            .session
            .open(counter, &response.data)
            .map_err(LinkError::Secure)?;
        // Checked here so that a response too short for a status word is a
        // channel error, not something `transmit` above has to guess about.
        Response::parse(&plain)?;
        Ok(plain.to_vec())
    }
}

/// Runs KEY AGREEMENT over `channel` and checks the card against the pinned
/// certificate.
pub fn establish(
    channel: &mut dyn CardChannel,
    options: TransmitOptions,
    pinned_certificate: &[u8],
    pinned_key: &VerifyingKey,
    rng: &mut impl CryptoRngCore,
) -> Result<PhoneSession, LinkError> {
    let (handshake, command) = PhoneHandshake::start(rng);
    let response = transmit(channel, &command, options)?;
    if !response.sw.is_ok() {
        return Err(LinkError::Secure(SecureError::Refused(response.sw)));
    }
    handshake
        .finish(&response.data, pinned_certificate, pinned_key)
        .map_err(LinkError::Secure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const CERT: &[u8] = b"pretend certificate DER";

    fn pair(seed: u64) -> (PhoneSession, CardSession, SigningKey) {
        let mut rng = StdRng::seed_from_u64(seed);
        let card_key = SigningKey::random(&mut rng);
        let (hs, cmd) = PhoneHandshake::start(&mut rng);
        let identity = CardIdentity {
            key: &card_key,
            certificate: CERT,
        };
        let (resp, card) = card_accept(&cmd.data, identity, &mut rng).unwrap();
        let phone = hs.finish(&resp, CERT, card_key.verifying_key()).unwrap();
        (phone, card, card_key)
    }

    fn exchange(phone: &mut PhoneSession, card: &mut CardSession, apdu: &[u8]) -> Vec<u8> {
        let (n, env) = phone.seal(apdu).unwrap();
        let Opened::Fresh { counter, apdu: got } = card.open(&env.data).unwrap() else {
            panic!("fresh expected")
        };
        assert_eq!(&got[..], apdu);
        let sealed = card.seal(counter, &[0x90, 0x00]).unwrap();
        phone.open(n, &sealed).unwrap().to_vec()
    }

    #[test]
    fn commands_and_answers_round_trip_in_order() {
        let (mut phone, mut card, _) = pair(1);
        for i in 0..5u8 {
            assert_eq!(
                exchange(&mut phone, &mut card, &[0, 0x20, 0, 0x80, 1, i]),
                [0x90, 0]
            );
        }
    }

    #[test]
    fn ciphertext_length_hides_the_pin_length() {
        let (mut phone, _, _) = pair(2);
        let short = phone.seal(b"\x00\x20\x00\x80\x041234").unwrap().1;
        let long = phone.seal(b"\x00\x20\x00\x80\x0812345678").unwrap().1;
        assert_eq!(short.data.len(), long.data.len());
    }

    #[test]
    fn replayed_reordered_and_altered_envelopes_are_refused() {
        let (mut phone, mut card, _) = pair(3);
        let (_, first) = phone.seal(b"first").unwrap();
        let (_, second) = phone.seal(b"second").unwrap();
        let (_, third) = phone.seal(b"third").unwrap();
        // Reordered: the second before the first.
        assert!(matches!(
            card.open(&second.data),
            Err(SecureError::Counter {
                expected: 1,
                got: 2
            })
        ));
        assert!(matches!(card.open(&first.data), Ok(Opened::Fresh { .. })));
        card.seal(1, b"\x90\x00").unwrap();
        // Altered: one bit of the ciphertext.
        let mut altered = second.data.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(card.open(&altered).unwrap_err(), SecureError::BadEnvelope);
        assert!(matches!(card.open(&second.data), Ok(Opened::Fresh { .. })));
        card.seal(2, b"\x90\x00").unwrap();
        // Replayed: an older one.
        assert!(matches!(
            card.open(&first.data),
            Err(SecureError::Counter { .. })
        ));
        // A counter changed without the key: the tag does not match.
        let mut forged = third.data.clone();
        forged[..4].copy_from_slice(&4u32.to_be_bytes());
        assert!(card.open(&forged).is_err());
        assert!(matches!(card.open(&third.data), Ok(Opened::Fresh { .. })));
    }

    #[test]
    fn a_verbatim_retransmission_gets_the_cached_answer_not_a_second_run() {
        let (mut phone, mut card, _) = pair(4);
        let (n, env) = phone.seal(b"SIGN").unwrap();
        let Ok(Opened::Fresh { counter, .. }) = card.open(&env.data) else {
            panic!()
        };
        let answer = card.seal(counter, b"sig \x90\x00").unwrap();
        let Ok(Opened::Retransmission(again)) = card.open(&env.data) else {
            panic!("retransmission expected")
        };
        assert_eq!(again, answer);
        assert_eq!(&phone.open(n, &again).unwrap()[..], b"sig \x90\x00");
    }

    #[test]
    fn an_answer_for_another_counter_does_not_open() {
        let (mut phone, mut card, _) = pair(5);
        let (n1, e1) = phone.seal(b"one").unwrap();
        let Ok(Opened::Fresh { counter, .. }) = card.open(&e1.data) else {
            panic!()
        };
        let a1 = card.seal(counter, b"\x90\x00").unwrap();
        let (n2, _) = phone.seal(b"two").unwrap();
        assert!(phone.open(n1, &a1).is_ok());
        assert_eq!(phone.open(n2, &a1).unwrap_err(), SecureError::BadEnvelope);
    }

    #[test]
    fn a_substituted_ephemeral_key_fails_card_authentication() {
        let mut rng = StdRng::seed_from_u64(6);
        let card_key = SigningKey::random(&mut rng);
        let mallory_key = SigningKey::random(&mut rng);
        let (hs, cmd) = PhoneHandshake::start(&mut rng);
        // Mallory answers with her own ephemeral key, signed by her own key.
        let (resp, _) = card_accept(
            &cmd.data,
            CardIdentity {
                key: &mallory_key,
                certificate: CERT,
            },
            &mut rng,
        )
        .unwrap();
        assert_eq!(
            hs.finish(&resp, CERT, card_key.verifying_key())
                .unwrap_err(),
            SecureError::BadCardSignature
        );
        // Mallory relays the card's signature but swaps the card's point for hers.
        let (hs, cmd) = PhoneHandshake::start(&mut rng);
        let (mut resp, _) = card_accept(
            &cmd.data,
            CardIdentity {
                key: &card_key,
                certificate: CERT,
            },
            &mut rng,
        )
        .unwrap();
        let mallory_point = encode_point(&EphemeralSecret::random(&mut rng).public_key());
        resp[..POINT_LEN].copy_from_slice(&mallory_point);
        assert_eq!(
            hs.finish(&resp, CERT, card_key.verifying_key())
                .unwrap_err(),
            SecureError::BadCardSignature
        );
    }

    #[test]
    fn a_card_with_another_certificate_than_the_pinned_one_is_refused() {
        let mut rng = StdRng::seed_from_u64(7);
        let card_key = SigningKey::random(&mut rng);
        let (hs, cmd) = PhoneHandshake::start(&mut rng);
        let (resp, _) = card_accept(
            &cmd.data,
            CardIdentity {
                key: &card_key,
                certificate: b"a newer certificate",
            },
            &mut rng,
        )
        .unwrap();
        assert!(hs.finish(&resp, CERT, card_key.verifying_key()).is_err());
    }

    #[test]
    fn malformed_key_agreements_are_errors() {
        let mut rng = StdRng::seed_from_u64(8);
        let key = SigningKey::random(&mut rng);
        for bad in [
            &[][..],
            &[1][..],
            &[1, 1, 4][..],
            &[2, 1][..],
            &[1, 1, 0][..],
        ] {
            let id = CardIdentity {
                key: &key,
                certificate: CERT,
            };
            assert!(card_accept(bad, id, &mut rng).is_err());
        }
        let (hs, _) = PhoneHandshake::start(&mut rng);
        assert_eq!(
            hs.finish(&[0; 10], CERT, key.verifying_key()).unwrap_err(),
            SecureError::Malformed
        );
    }
}
