//! What the PIV applet remembers across power cycles, and where it keeps it.
//!
//! [`PivState`] lives in the `"piv"` section of the same state file as the
//! transaction applet's [`crate::CardState`] (format version 2, see
//! [`crate::state`]). Each applet saves only its own section; the other one is
//! carried over unchanged from the file ([`PivFileStore`]).
//!
//! ```json
//! "piv": { "pin": {"salt_hex": "…", "sha256_hex": "…", "retries_left": 3, "retries_max": 3},
//!          "puk": {…}, "management_key_hex": "…24 bytes…", "serial": 1234567,
//!          "keys": {"9c": "…32 bytes…"}, "objects": {"5fc102": "base64 of 53 … "} }
//! ```
//!
//! PIN and PUK are kept as salted SHA-256 of their 8-byte FF-padded form, like
//! the transaction applet's PIN. The management key and the private keys are
//! kept in clear: the file is the card's memory (mode 0600), as for the
//! transaction applet's key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::error::CardError;
use crate::piv::objects;

/// The management key a new card has: SP 800-73-4 names none, every vendor
/// (YubiKey, OpenSC's test cards) ships this one, and the tools default to it.
pub const MANAGEMENT_KEY_DEFAULT: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
/// A new card's PIN and PUK, unless the card was initialised with a PIN of PIV length.
pub const PIN_DEFAULT: &[u8] = b"123456";
pub const PUK_DEFAULT: &[u8] = b"12345678";
pub const RETRIES_DEFAULT: u8 = 3;
/// `63Cx` has one nibble for the retries left.
pub const RETRIES_MAX_LIMIT: u8 = 15;
/// PIN and PUK: 6 to 8 bytes before padding (SP 800-73-4 Part 2 §2.4.3).
pub const PIN_LEN_MIN: usize = 6;
pub const PIN_LEN_MAX: usize = 8;
/// One stored data object (a certificate is ~1 kB; 800-73-4 caps most below 3 kB).
pub const OBJECT_LEN_MAX: usize = 3072;
/// All stored data objects together: bounds the state file.
pub const OBJECTS_TOTAL_LEN_MAX: usize = 32 * 1024;
const SALT_LEN: usize = 16;
/// Domain separation from the transaction applet's PIN hash.
const HASH_LABEL: &[u8] = b"keybridge-card PIV reference data v1\0";

/// The key slots this card has (SP 800-73-4 Part 1 Table 4b): PIV
/// authentication, digital signature, key management, card authentication.
pub const SLOTS: [u8; 4] = [0x9A, 0x9C, 0x9D, 0x9E];

/// A PIN or PUK: salted hash of its padded form, and its retry counter.
#[derive(Clone)]
pub struct ReferenceData {
    salt: [u8; SALT_LEN],
    hash: [u8; 32],
    pub(crate) retries_left: u8,
    pub(crate) retries_max: u8,
}

impl fmt::Debug for ReferenceData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReferenceData")
            .field("retries_left", &self.retries_left)
            .field("retries_max", &self.retries_max)
            .finish_non_exhaustive()
    }
}

impl ReferenceData {
    /// `value` unpadded, 6 to 8 bytes none of which is `FF`.
    pub(crate) fn new(value: &[u8], rng: &mut dyn CryptoRngCore) -> Option<ReferenceData> {
        let padded = pad(value)?;
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        Some(ReferenceData {
            salt,
            hash: Self::hash(&salt, &padded),
            retries_left: RETRIES_DEFAULT,
            retries_max: RETRIES_DEFAULT,
        })
    }

    fn hash(salt: &[u8], padded: &[u8; 8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(HASH_LABEL);
        h.update(salt);
        h.update(padded);
        h.finalize().into()
    }

    /// Compares an 8-byte padded value in constant time.
    pub(crate) fn matches(&self, padded: &[u8; 8]) -> bool {
        Self::hash(&self.salt, padded).ct_eq(&self.hash).into()
    }

    pub(crate) fn blocked(&self) -> bool {
        self.retries_left == 0
    }

    /// Same value, new salt, full retries.
    pub(crate) fn replace(&mut self, padded: &[u8; 8], rng: &mut dyn CryptoRngCore) {
        rng.fill_bytes(&mut self.salt);
        self.hash = Self::hash(&self.salt, padded);
        self.retries_left = self.retries_max;
    }

    pub fn retries_left(&self) -> u8 {
        self.retries_left
    }
}

/// `value` FF-padded to 8 bytes; `None` unless it is 6 to 8 bytes without `FF`.
pub(crate) fn pad(value: &[u8]) -> Option<[u8; 8]> {
    if !(PIN_LEN_MIN..=PIN_LEN_MAX).contains(&value.len()) || value.contains(&0xFF) {
        return None;
    }
    let mut out = [0xFF; 8];
    out.get_mut(..value.len())?.copy_from_slice(value);
    Some(out)
}

/// Whether 8 bytes are a well-formed padded PIN: 6 to 8 bytes, then only `FF`.
pub(crate) fn is_padded(padded: &[u8; 8]) -> bool {
    let len = padded.iter().position(|&b| b == 0xFF).unwrap_or(8);
    len >= PIN_LEN_MIN && padded[len..].iter().all(|&b| b == 0xFF)
}

/// The PIV applet's persistent memory. `Debug` shows no secrets.
#[derive(Clone)]
pub struct PivState {
    pub(crate) pin: ReferenceData,
    pub(crate) puk: ReferenceData,
    pub(crate) management_key: Zeroizing<[u8; 24]>,
    /// What GET SERIAL answers (YubiKey extension `00 F8`).
    pub(crate) serial: u32,
    /// Private keys by slot (`9A`, `9C`, `9D`, `9E`).
    pub(crate) keys: BTreeMap<u8, SigningKey>,
    /// Data objects by tag, each stored whole as the card answers GET DATA
    /// (`53 …`, or `7E …` for the discovery object).
    pub(crate) objects: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl fmt::Debug for PivState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let objects: Vec<String> = self.objects.keys().map(hex::encode_upper).collect();
        let keys: Vec<String> = self.keys.keys().map(|s| format!("{s:02X}")).collect();
        f.debug_struct("PivState")
            .field("pin_retries_left", &self.pin.retries_left)
            .field("puk_retries_left", &self.puk.retries_left)
            .field("serial", &self.serial)
            .field("keys", &keys)
            .field("objects", &objects)
            .finish_non_exhaustive()
    }
}

impl PivState {
    /// A card as it leaves the factory: the given PIN and PUK, the default
    /// management key, no keys, and a fresh CHUID, CCC and discovery object.
    pub fn new(pin: &[u8], puk: &[u8], rng: &mut dyn CryptoRngCore) -> Result<PivState, CardError> {
        let pin = ReferenceData::new(pin, rng).ok_or(CardError::BadPivReference)?;
        let puk = ReferenceData::new(puk, rng).ok_or(CardError::BadPivReference)?;
        let mut serial = [0u8; 4];
        rng.fill_bytes(&mut serial);
        // Positive and below 10^9, like a printed serial.
        let serial = u32::from_be_bytes(serial) % 1_000_000_000;
        Ok(PivState {
            pin,
            puk,
            management_key: Zeroizing::new(MANAGEMENT_KEY_DEFAULT),
            serial,
            keys: BTreeMap::new(),
            objects: objects::factory_objects(rng),
        })
    }

    /// [`PivState::new`] with the PIN a card was initialised with when it
    /// has PIV length (6 to 8), else [`PIN_DEFAULT`]; PUK [`PUK_DEFAULT`].
    pub fn for_new_card(card_pin: &[u8], rng: &mut dyn CryptoRngCore) -> PivState {
        let pin = if pad(card_pin).is_some() {
            card_pin
        } else {
            PIN_DEFAULT
        };
        // Both defaults are well-formed, so this cannot fail; fall back anyway.
        PivState::new(pin, PUK_DEFAULT, rng)
            .or_else(|_| PivState::new(PIN_DEFAULT, PUK_DEFAULT, rng))
            .expect("the default PIN and PUK are well-formed")
    }

    pub fn pin_retries_left(&self) -> u8 {
        self.pin.retries_left
    }

    pub fn puk_retries_left(&self) -> u8 {
        self.puk.retries_left
    }

    /// The public key in `slot`, 65 bytes SEC1 uncompressed.
    pub fn public_key_sec1(&self, slot: u8) -> Option<Vec<u8>> {
        self.keys.get(&slot).map(|k| {
            k.verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec()
        })
    }

    /// A stored data object, whole (`53 …`).
    pub fn object(&self, tag: &[u8]) -> Option<&[u8]> {
        self.objects.get(tag).map(Vec::as_slice)
    }

    pub(crate) fn objects_len(&self) -> usize {
        self.objects.values().map(Vec::len).sum()
    }

    pub(crate) fn to_file(&self) -> PivStateFile {
        PivStateFile {
            pin: ReferenceFile::from(&self.pin),
            puk: ReferenceFile::from(&self.puk),
            management_key_hex: hex::encode(&self.management_key[..]),
            serial: self.serial,
            keys: self
                .keys
                .iter()
                .map(|(slot, k)| {
                    (
                        format!("{slot:02x}"),
                        hex::encode(&Zeroizing::new(k.to_bytes())[..]),
                    )
                })
                .collect(),
            objects: self
                .objects
                .iter()
                .map(|(tag, v)| {
                    (
                        hex::encode(tag),
                        base64::engine::general_purpose::STANDARD.encode(v),
                    )
                })
                .collect(),
        }
    }

    pub(crate) fn from_file(file: &PivStateFile) -> Result<PivState, String> {
        let management_key = Zeroizing::new(
            hex::decode(&file.management_key_hex)
                .ok()
                .and_then(|k| <[u8; 24]>::try_from(k).ok())
                .ok_or("PIV management key")?,
        );
        let mut keys = BTreeMap::new();
        for (slot, key) in &file.keys {
            let slot = u8::from_str_radix(slot, 16).map_err(|_| "PIV key slot")?;
            if !SLOTS.contains(&slot) {
                return Err("PIV key slot".into());
            }
            let bytes = Zeroizing::new(hex::decode(key).map_err(|_| "PIV private key")?);
            keys.insert(
                slot,
                SigningKey::from_slice(&bytes).map_err(|_| "PIV private key")?,
            );
        }
        let mut objects = BTreeMap::new();
        let mut total = 0usize;
        for (tag, value) in &file.objects {
            let tag = hex::decode(tag).map_err(|_| "PIV object tag")?;
            let value = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|_| "PIV object")?;
            if !objects::is_known_tag(&tag) || value.len() > OBJECT_LEN_MAX + 8 {
                return Err("PIV object".into());
            }
            total = total.saturating_add(value.len());
            objects.insert(tag, value);
        }
        if total > OBJECTS_TOTAL_LEN_MAX + 64 {
            return Err("PIV objects too large".into());
        }
        Ok(PivState {
            pin: file.pin.to_reference().ok_or("PIV PIN")?,
            puk: file.puk.to_reference().ok_or("PIV PUK")?,
            management_key,
            serial: file.serial,
            keys,
            objects,
        })
    }
}

/// The `"piv"` section of the state file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PivStateFile {
    pin: ReferenceFile,
    puk: ReferenceFile,
    management_key_hex: String,
    serial: u32,
    keys: BTreeMap<String, String>,
    objects: BTreeMap<String, String>,
}

impl Drop for PivStateFile {
    fn drop(&mut self) {
        self.management_key_hex.zeroize();
        for key in self.keys.values_mut() {
            key.zeroize();
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceFile {
    salt_hex: String,
    sha256_hex: String,
    retries_left: u8,
    retries_max: u8,
}

impl From<&ReferenceData> for ReferenceFile {
    fn from(r: &ReferenceData) -> ReferenceFile {
        ReferenceFile {
            salt_hex: hex::encode(r.salt),
            sha256_hex: hex::encode(r.hash),
            retries_left: r.retries_left,
            retries_max: r.retries_max,
        }
    }
}

impl ReferenceFile {
    fn to_reference(&self) -> Option<ReferenceData> {
        let salt = <[u8; SALT_LEN]>::try_from(hex::decode(&self.salt_hex).ok()?).ok()?;
        let hash = <[u8; 32]>::try_from(hex::decode(&self.sha256_hex).ok()?).ok()?;
        if !(1..=RETRIES_MAX_LIMIT).contains(&self.retries_max)
            || self.retries_left > self.retries_max
        {
            return None;
        }
        Some(ReferenceData {
            salt,
            hash,
            retries_left: self.retries_left,
            retries_max: self.retries_max,
        })
    }
}

/// Where the PIV applet saves its state. `save` returns only once it is
/// durable; the applet answers `6581` when it fails.
pub trait PivStore: Send {
    fn save(&mut self, state: &PivState) -> Result<(), CardError>;
}

/// Saves the `"piv"` section of a card state file, keeping the rest of the
/// file (the transaction applet's section) as it is.
#[derive(Debug, Clone)]
pub struct PivFileStore {
    path: PathBuf,
}

impl PivFileStore {
    pub fn new(path: impl Into<PathBuf>) -> PivFileStore {
        PivFileStore { path: path.into() }
    }

    /// The PIV section of the file at `path`, if it has one.
    pub fn load(path: &Path) -> Result<Option<PivState>, CardError> {
        let corrupt = |reason: String| CardError::CorruptState {
            path: path.to_owned(),
            reason,
        };
        // Checks the version and the transaction section too.
        crate::state::CardState::load(path)?;
        let doc = crate::state::read_document(path)?;
        let Some(section) = doc.get(crate::state::PIV_SECTION) else {
            return Ok(None);
        };
        let file: PivStateFile = serde_json::from_value(section.clone())
            .map_err(|e| corrupt(format!("PIV section: {e}")))?;
        PivState::from_file(&file).map(Some).map_err(corrupt)
    }
}

impl PivStore for PivFileStore {
    fn save(&mut self, state: &PivState) -> Result<(), CardError> {
        let section = serde_json::to_value(state.to_file())
            .map_err(|e| CardError::Persist(format!("encoding the PIV section: {e}")))?;
        crate::state::replace_section(&self.path, crate::state::PIV_SECTION, section)
    }
}

/// Keeps the last saved PIV state in memory: for tests and throwaway cards.
#[derive(Debug, Clone, Default)]
pub struct PivMemoryStore {
    inner: Arc<Mutex<Option<PivState>>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl PivMemoryStore {
    pub fn new() -> PivMemoryStore {
        PivMemoryStore::default()
    }

    /// Makes every later save fail (a full disk, a pulled card), or work again.
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// The last state saved, if any.
    pub fn saved(&self) -> Option<PivState> {
        // Plain values: a panic elsewhere cannot leave them half-written.
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl PivStore for PivMemoryStore {
    fn save(&mut self, state: &PivState) -> Result<(), CardError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CardError::Persist("memory store set to fail".into()));
        }
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner) = Some(state.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn padding_rules() {
        assert_eq!(pad(b"123456"), Some(*b"123456\xFF\xFF"));
        assert_eq!(pad(b"12345678"), Some(*b"12345678"));
        assert_eq!(pad(b"12345"), None);
        assert_eq!(pad(b"123456789"), None);
        assert_eq!(pad(b"1234\xFF6"), None);
        assert!(is_padded(b"123456\xFF\xFF"));
        assert!(!is_padded(b"12345\xFF\xFF\xFF"));
        assert!(!is_padded(b"123456\xFF7"));
    }

    #[test]
    fn section_round_trips() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut s = PivState::new(b"654321", b"87654321", &mut rng).unwrap();
        s.keys.insert(0x9C, SigningKey::random(&mut rng));
        s.pin.retries_left = 1;
        let back = PivState::from_file(&s.to_file()).unwrap();
        assert_eq!(back.public_key_sec1(0x9C), s.public_key_sec1(0x9C));
        assert_eq!(back.objects, s.objects);
        assert_eq!((back.pin.retries_left, back.serial), (1, s.serial));
        assert!(back.pin.matches(&pad(b"654321").unwrap()));
        assert!(back.puk.matches(&pad(b"87654321").unwrap()));
        assert!(!back.pin.matches(&pad(b"87654321").unwrap()));
        assert_eq!(*back.management_key, MANAGEMENT_KEY_DEFAULT);
    }
}
