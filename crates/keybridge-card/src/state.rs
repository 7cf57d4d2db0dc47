//! What the card remembers across power cycles, and where it keeps it.
//!
//! [`CardState`] is the applet's persistent memory: private key, certificate,
//! PIN verifier (salted SHA-256, never the PIN), retry counter and signature
//! counter. The applet saves it through a [`StateStore`] before any answer
//! that depends on a change leaves the card: [`StateStore::save`] for the
//! whole state, [`StateStore::save_counters`] when only the retries left and
//! the counter changed (VERIFY, SIGN TRANSACTION, OCRA RESPONSE).
//!
//! ## The state file
//!
//! [`FileStore`] writes the whole state as JSON (format [`STATE_VERSION`])
//! atomically: temp file in the same directory, write, fsync, rename, fsync
//! the directory; mode 0600 on unix.
//!
//! ```json
//! { "version": 3, "private_key_hex": "…32 bytes…", "certificate_base64": "MII…",
//!   "pin_salt_hex": "…16 bytes…", "pin_sha256_hex": "…32 bytes…",
//!   "pin_retries_left": 3, "pin_retries_max": 3, "counter": 7,
//!   "piv": { … },
//!   "counters_binding_hex": "…16 bytes…", "counters_seq": 12 }
//! ```
//!
//! Version 2 added the optional `"piv"` section ([`crate::piv::state`]); a
//! version-1 file (no section) still loads, and the PIV applet gets a factory
//! fresh state on first use. The file has one section per applet and each
//! applet's store rewrites only its own, carrying the other over from the
//! file: the two applets never overwrite each other's changes.
//!
//! Version 3 added the counters fields (both or neither; a version-1 or -2
//! file has none, loads as it is, and gets them on its first save): the
//! binding id of the card's counters sidecar, made by [`init_state`] or by
//! the first save of a file without one, and the sequence number of the
//! write that made the file. A build that reads only version 2 refuses a
//! version-3 file rather than miss the sidecar and go back in counters.
//!
//! ## The counters sidecar
//!
//! A whole write costs a new file, two fsyncs and a rename; a payment's two
//! saves change only two numbers. [`StateStore::save_counters`] on a
//! [`FileStore`] writes them to `<state file>.counters` instead: two slots
//! of a page each, every slot holding a record of binding id, sequence
//! number, counter, retries left and a checksum (layout in `counters.rs`).
//! The sidecar is made once, whole and atomically like the state file (the
//! record in one slot, zeros in the other); after that a counters save
//! overwrites one slot in place and waits for `fdatasync`: no new file, no
//! rename, no directory fsync, and the state file is not touched.
//!
//! Loading reads the state file, then the sidecar: the valid record with
//! the highest sequence number and the file's binding id wins over the file
//! when its number is higher than the file's `counters_seq`. Records with
//! another binding id (a sidecar left by an earlier card at the same path;
//! [`init_state`] also removes it) are ignored. A record with a counter
//! below the file's, or more retries than the maximum, cannot come from
//! this card: the file is refused as corrupt.
//!
//! Why a crash cannot lose a state whose answer left the card:
//! - Every write, whole or counters, and also every write that failed (it
//!   may have landed), takes the next sequence number, higher than any the
//!   store read from either file or used; so the newest write on disk
//!   always wins the comparison above, and a whole save outranks every
//!   record before it.
//! - A counters save never writes the slot holding the newest record known
//!   to be durable: it writes the other one (after a failed write, the same
//!   one again). If the power goes mid-write, the slot being written is
//!   torn (its checksum fails) or old, and load falls back to the other
//!   slot or to the state file: the state before the command, whose answer
//!   had not left the card. That is what the atomic rename gives a whole
//!   save. The slots are in separate pages, so a write to one cannot tear
//!   the other.
//! - After a whole save fails the next save is whole again: the file may
//!   or may not hold the new state, and a counters save would leave the
//!   rest of it as it landed.
//! - The PIV applet's saves rewrite the file with the transaction section
//!   and counters fields as they are in the file, so the sidecar's newer
//!   records still win after them.
//!
//! One [`FileStore`] (and its clones) per state file: a store learns the
//! sequence number and the newest slot from the files on its first save
//! and keeps them.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use keybridge_proto::applet::{pin_is_well_formed, CardStatus};
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::error::CardError;
use counters::{BindingId, Record, Sidecar, Slot};

mod counters;

/// The state file format this build writes and reads.
pub const STATE_VERSION: u32 = 3;
/// The oldest format this build still reads.
pub const STATE_VERSION_MIN: u32 = 1;
/// The PIV applet's section of the file.
pub(crate) const PIV_SECTION: &str = "piv";
/// Wrong PINs allowed before the card blocks, unless configured otherwise.
pub const PIN_RETRIES_MAX_DEFAULT: u8 = 3;
/// `63Cx` has one nibble for the retries left.
pub const PIN_RETRIES_MAX_LIMIT: u8 = 15;
/// Largest certificate the card stores (PUT DATA refuses more).
pub const CERTIFICATE_LEN_MAX: usize = 2048;
const PIN_SALT_LEN: usize = 16;
/// Domain separation for the PIN hash.
const PIN_HASH_LABEL: &[u8] = b"keybridge-card PIN v1\0";
/// A state file is small; refuse to read anything absurd.
const STATE_FILE_LEN_MAX: u64 = 256 * 1024;

/// A salted SHA-256 of the PIN, compared in constant time.
#[derive(Clone)]
pub(crate) struct PinVerifier {
    salt: [u8; PIN_SALT_LEN],
    hash: [u8; 32],
}

impl PinVerifier {
    fn new(pin: &[u8], rng: &mut dyn CryptoRngCore) -> PinVerifier {
        let mut salt = [0u8; PIN_SALT_LEN];
        rng.fill_bytes(&mut salt);
        let hash = Self::hash(&salt, pin);
        PinVerifier { salt, hash }
    }

    fn hash(salt: &[u8], pin: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(PIN_HASH_LABEL);
        h.update(salt);
        h.update(pin);
        h.finalize().into()
    }

    pub(crate) fn matches(&self, pin: &[u8]) -> bool {
        Self::hash(&self.salt, pin).ct_eq(&self.hash).into()
    }
}

/// The card's persistent memory. `Debug` shows no secrets.
#[derive(Clone)]
pub struct CardState {
    pub(crate) private_key: Option<SigningKey>,
    pub(crate) certificate: Option<Vec<u8>>,
    pub(crate) pin: PinVerifier,
    pub(crate) pin_retries_left: u8,
    pub(crate) pin_retries_max: u8,
    /// The last signature counter used; the next signature uses `counter + 1`.
    pub(crate) counter: u32,
    /// OCRA mode: the suite and shared secret PUT DATA OCRA stored.
    pub(crate) ocra: Option<OcraCredential>,
}

/// The card's OCRA credential. The secret is zeroized on drop and never printed.
#[derive(Clone)]
pub(crate) struct OcraCredential {
    pub(crate) suite: keybridge_proto::ocra::Suite,
    pub(crate) secret: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for CardState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardState")
            .field("has_key", &self.private_key.is_some())
            .field("certificate_len", &self.certificate.as_ref().map(Vec::len))
            .field("pin_retries_left", &self.pin_retries_left)
            .field("pin_retries_max", &self.pin_retries_max)
            .field("counter", &self.counter)
            .field("ocra_suite", &self.ocra.as_ref().map(|o| o.suite.as_str()))
            .finish_non_exhaustive()
    }
}

/// The on-disk form: version 1, and version 2 which adds `piv`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    private_key_hex: Option<String>,
    certificate_base64: Option<String>,
    pin_salt_hex: String,
    pin_sha256_hex: String,
    pin_retries_left: u8,
    pin_retries_max: u8,
    counter: u32,
    /// Added for OCRA mode; absent (and so readable by older builds) until set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ocra_suite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ocra_secret_hex: Option<String>,
    /// The PIV applet's section, carried as it is: this applet never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    piv: Option<serde_json::Value>,
    /// Version 3: the id that ties the counters sidecar to this file, and
    /// the sequence number of this write (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counters_binding_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counters_seq: Option<u64>,
}

/// The state file's counters fields: which sidecar is this card's, and which
/// of its records are newer than the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileCounters {
    binding: BindingId,
    /// The sequence number of the write that made the file: sidecar records
    /// with a higher one are newer.
    seq: u64,
}

impl FileCounters {
    fn parse(binding_hex: Option<&str>, seq: Option<u64>) -> Result<Option<FileCounters>, String> {
        match (binding_hex, seq) {
            (None, None) => Ok(None),
            (Some(binding), Some(seq)) => BindingId::from_hex(binding)
                .map(|binding| Some(FileCounters { binding, seq }))
                .ok_or_else(|| "counters binding id".to_owned()),
            _ => Err("counters binding id without sequence number, or the reverse".to_owned()),
        }
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        self.private_key_hex.zeroize();
        self.ocra_secret_hex.zeroize();
    }
}

/// Only the version, read first so an unknown format gets a clear error.
#[derive(Deserialize)]
struct VersionProbe {
    version: u64,
}

/// Why bytes are not a state file this build can use.
#[derive(Debug)]
enum DecodeError {
    Version(u64),
    Corrupt(String),
}

impl CardState {
    /// A fresh card: the given PIN, full retries, no key, no certificate, counter 0.
    pub fn new(pin: &[u8], rng: &mut dyn CryptoRngCore) -> Result<CardState, CardError> {
        Self::with_retries(pin, PIN_RETRIES_MAX_DEFAULT, rng)
    }

    /// [`CardState::new`] with `pin_retries_max` in `1..=15`.
    pub fn with_retries(
        pin: &[u8],
        pin_retries_max: u8,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<CardState, CardError> {
        if !pin_is_well_formed(pin) {
            return Err(CardError::BadPin);
        }
        if !(1..=PIN_RETRIES_MAX_LIMIT).contains(&pin_retries_max) {
            return Err(CardError::BadPinRetries(pin_retries_max));
        }
        Ok(CardState {
            private_key: None,
            certificate: None,
            pin: PinVerifier::new(pin, rng),
            pin_retries_left: pin_retries_max,
            pin_retries_max,
            counter: 0,
            ocra: None,
        })
    }

    /// What GET DATA `03` answers.
    pub fn status(&self) -> CardStatus {
        CardStatus {
            counter: self.counter,
            pin_retries_left: self.pin_retries_left,
            pin_retries_max: self.pin_retries_max,
            has_key: self.private_key.is_some(),
        }
    }

    pub fn counter(&self) -> u32 {
        self.counter
    }

    pub fn pin_retries_left(&self) -> u8 {
        self.pin_retries_left
    }

    /// The public key, 65 bytes SEC1 uncompressed, once a key was generated.
    pub fn public_key_sec1(&self) -> Option<Vec<u8>> {
        self.private_key.as_ref().map(|k| {
            k.verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec()
        })
    }

    pub fn certificate(&self) -> Option<&[u8]> {
        self.certificate.as_deref()
    }

    /// The state file's bytes (JSON). They hold the private key: zeroized on drop.
    /// They have no counters fields: a file made of them ignores any
    /// counters sidecar until a [`FileStore`] saves it.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        self.to_json_with(None, None)
    }

    /// The state file's bytes with another applet's section carried along.
    fn to_json_with(
        &self,
        piv: Option<serde_json::Value>,
        counters: Option<FileCounters>,
    ) -> Zeroizing<Vec<u8>> {
        let file = StateFile {
            version: STATE_VERSION,
            private_key_hex: self
                .private_key
                .as_ref()
                .map(|k| hex::encode(&Zeroizing::new(k.to_bytes())[..])),
            certificate_base64: self
                .certificate
                .as_ref()
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c)),
            pin_salt_hex: hex::encode(self.pin.salt),
            pin_sha256_hex: hex::encode(self.pin.hash),
            pin_retries_left: self.pin_retries_left,
            pin_retries_max: self.pin_retries_max,
            counter: self.counter,
            ocra_suite: self.ocra.as_ref().map(|o| o.suite.as_str().to_owned()),
            ocra_secret_hex: self.ocra.as_ref().map(|o| hex::encode(&o.secret[..])),
            piv,
            counters_binding_hex: counters.map(|c| c.binding.to_hex()),
            counters_seq: counters.map(|c| c.seq),
        };
        // Serializing strings and integers into a Vec cannot fail.
        let mut out = serde_json::to_vec_pretty(&file).unwrap_or_default();
        out.push(b'\n');
        Zeroizing::new(out)
    }

    #[cfg(test)]
    fn from_json(bytes: &[u8]) -> Result<CardState, DecodeError> {
        CardState::decode(bytes).map(|(state, _)| state)
    }

    /// The state in a state file's bytes, and the file's counters fields.
    fn decode(bytes: &[u8]) -> Result<(CardState, Option<FileCounters>), DecodeError> {
        let corrupt = |what: &str| DecodeError::Corrupt(what.to_owned());
        let probe: VersionProbe = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Corrupt(format!("no format version: {e}")))?;
        if !(u64::from(STATE_VERSION_MIN)..=u64::from(STATE_VERSION)).contains(&probe.version) {
            return Err(DecodeError::Version(probe.version));
        }
        let file: StateFile =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        let private_key = match &file.private_key_hex {
            None => None,
            Some(h) => {
                let bytes = Zeroizing::new(hex::decode(h).map_err(|_| corrupt("private key"))?);
                Some(SigningKey::from_slice(&bytes).map_err(|_| corrupt("private key"))?)
            }
        };
        let certificate = match &file.certificate_base64 {
            None => None,
            Some(b) => {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| corrupt("certificate"))?;
                if der.is_empty() || der.len() > CERTIFICATE_LEN_MAX {
                    return Err(corrupt("certificate size"));
                }
                Some(der)
            }
        };
        let salt = hex::decode(&file.pin_salt_hex)
            .ok()
            .and_then(|s| <[u8; PIN_SALT_LEN]>::try_from(s).ok())
            .ok_or_else(|| corrupt("PIN salt"))?;
        let hash = hex::decode(&file.pin_sha256_hex)
            .ok()
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
            .ok_or_else(|| corrupt("PIN hash"))?;
        if !(1..=PIN_RETRIES_MAX_LIMIT).contains(&file.pin_retries_max)
            || file.pin_retries_left > file.pin_retries_max
        {
            return Err(corrupt("PIN retry counters"));
        }
        let ocra = match (&file.ocra_suite, &file.ocra_secret_hex) {
            (None, None) => None,
            (Some(suite), Some(secret)) => Some(OcraCredential {
                suite: keybridge_proto::ocra::Suite::parse(suite)
                    .map_err(|_| corrupt("OCRA suite"))?,
                secret: Zeroizing::new(hex::decode(secret).map_err(|_| corrupt("OCRA secret"))?),
            }),
            _ => return Err(corrupt("OCRA suite without secret, or the reverse")),
        };
        let counters = FileCounters::parse(file.counters_binding_hex.as_deref(), file.counters_seq)
            .map_err(DecodeError::Corrupt)?;
        let state = CardState {
            private_key,
            certificate,
            pin: PinVerifier { salt, hash },
            pin_retries_left: file.pin_retries_left,
            pin_retries_max: file.pin_retries_max,
            counter: file.counter,
            ocra,
        };
        Ok((state, counters))
    }

    /// Takes the hot fields of a sidecar record newer than the state file.
    /// The counter never goes back: a record below the file's is corrupt.
    fn apply(&mut self, record: &Record) -> Result<(), String> {
        if record.pin_retries_left > self.pin_retries_max {
            return Err(format!(
                "PIN retries left {} above the maximum {}",
                record.pin_retries_left, self.pin_retries_max
            ));
        }
        if record.counter < self.counter {
            return Err(format!(
                "counter {} below the state file's {}",
                record.counter, self.counter
            ));
        }
        self.counter = record.counter;
        self.pin_retries_left = record.pin_retries_left;
        Ok(())
    }

    /// Reads a state file, and the newer counters its sidecar holds if any.
    /// Refuses unknown format versions and corrupt files.
    pub fn load(path: &Path) -> Result<CardState, CardError> {
        let bytes = read_bytes(path)?;
        let (mut state, file_counters) = CardState::decode(&bytes).map_err(|e| match e {
            DecodeError::Version(found) => CardError::UnsupportedVersion {
                path: path.to_owned(),
                found,
                supported: STATE_VERSION,
            },
            DecodeError::Corrupt(reason) => CardError::CorruptState {
                path: path.to_owned(),
                reason,
            },
        })?;
        let Some(file_counters) = file_counters else {
            return Ok(state);
        };
        let newest = counters::read(path)?.and_then(|slots| slots.newest(file_counters.binding));
        if let Some((_, record)) = newest.filter(|(_, r)| r.seq > file_counters.seq) {
            state
                .apply(&record)
                .map_err(|reason| CardError::CorruptState {
                    path: counters::sidecar_path(path),
                    reason,
                })?;
        }
        Ok(state)
    }
}

/// A state file's bytes, bounded by [`STATE_FILE_LEN_MAX`].
fn read_bytes(path: &Path) -> Result<Zeroizing<Vec<u8>>, CardError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(CardError::StateMissing {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(CardError::io(format!("opening {}", path.display()))(e)),
    };
    let mut bytes = Zeroizing::new(Vec::new());
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, STATE_FILE_LEN_MAX + 1),
        &mut bytes,
    )
    .map_err(CardError::io(format!("reading {}", path.display())))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > STATE_FILE_LEN_MAX {
        return Err(CardError::CorruptState {
            path: path.to_owned(),
            reason: "file too large".into(),
        });
    }
    Ok(bytes)
}

/// The state file as a JSON object (one key per field or section).
pub(crate) fn read_document(
    path: &Path,
) -> Result<serde_json::Map<String, serde_json::Value>, CardError> {
    let bytes = read_bytes(path)?;
    serde_json::from_slice(&bytes).map_err(|e| CardError::CorruptState {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// What a whole save of the transaction applet's state keeps from the file.
#[derive(Debug, Default)]
struct Carried {
    /// The PIV section as it is (`null` included).
    piv: Option<serde_json::Value>,
    /// Where a [`FileStore`] starts counting from.
    counters: Option<FileCounters>,
}

/// The PIV section and the counters fields of a state file, and only them:
/// the rest, this applet's key among it, is checked as JSON but not copied
/// into memory, where nothing would zeroize it.
fn read_carried(path: &Path) -> Result<Carried, CardError> {
    /// The field names are [`PIV_SECTION`] and [`StateFile`]'s.
    #[derive(Deserialize)]
    struct CarriedFields {
        #[serde(default, deserialize_with = "present")]
        piv: Option<serde_json::Value>,
        #[serde(default)]
        counters_binding_hex: Option<String>,
        #[serde(default)]
        counters_seq: Option<u64>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<serde_json::Value>, D::Error> {
        serde_json::Value::deserialize(d).map(Some)
    }
    let corrupt = |reason: String| CardError::CorruptState {
        path: path.to_owned(),
        reason,
    };
    let bytes = read_bytes(path)?;
    let file: CarriedFields = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let counters = FileCounters::parse(file.counters_binding_hex.as_deref(), file.counters_seq)
        .map_err(corrupt)?;
    Ok(Carried {
        piv: file.piv,
        counters,
    })
}

/// Rewrites one applet's section of an existing state file, keeping the rest.
pub(crate) fn replace_section(
    path: &Path,
    key: &str,
    value: serde_json::Value,
) -> Result<(), CardError> {
    let mut doc = read_document(path)?;
    doc.insert(key.to_owned(), value);
    doc.insert("version".to_owned(), STATE_VERSION.into());
    let mut bytes = Zeroizing::new(
        serde_json::to_vec_pretty(&doc)
            .map_err(|e| CardError::Persist(format!("encoding {}: {e}", path.display())))?,
    );
    bytes.push(b'\n');
    write_atomic(path, &bytes, Replace::Yes)
}

/// Where the applet saves its state. Both methods return only once the
/// state is durable; the applet answers `6581` when one fails.
pub trait StateStore: Send {
    /// Saves the whole state.
    fn save(&mut self, state: &CardState) -> Result<(), CardError>;

    /// Saves a state that differs from the last one saved (or, before any
    /// save, the one loaded) only in the PIN retries left and the counter:
    /// what VERIFY, SIGN TRANSACTION and OCRA RESPONSE change. A store may
    /// write just those two; this default writes the whole state.
    fn save_counters(&mut self, state: &CardState) -> Result<(), CardError> {
        self.save(state)
    }
}

/// Saves to a state file: whole states atomically, the counters in place in
/// the sidecar (see the module doc). One store per state file: clones share
/// what it knows of the files (the sequence number, the sidecar's slots).
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
    /// Read from the files on the first save, then kept.
    writer: Arc<Mutex<Option<CountersWriter>>>,
}

/// What a [`FileStore`] knows of the state file and its sidecar.
#[derive(Debug)]
struct CountersWriter {
    binding: BindingId,
    /// The highest sequence number written, or tried, to either file. A
    /// failed write may have landed, so its number is never used again.
    seq_last: u64,
    /// The slot with the newest record known to be durable, if any: the next
    /// counters save writes the other one, never this.
    slot_newest: Option<Slot>,
    /// The sidecar, once it is known to be this card's; `None`: the next
    /// counters save makes it anew.
    sidecar: Option<Sidecar>,
    /// The next save must be whole: the state file has no binding id yet, or
    /// the last whole save failed (it may or may not have landed, so the
    /// file may not hold what memory does).
    whole_save_due: bool,
}

impl CountersWriter {
    /// Starts from the state file's counters fields and the sidecar.
    fn read(path: &Path, file: Option<FileCounters>) -> Result<CountersWriter, CardError> {
        let Some(file) = file else {
            return Ok(CountersWriter {
                binding: BindingId::random(&mut rand::rngs::OsRng),
                seq_last: 0,
                slot_newest: None,
                sidecar: None,
                whole_save_due: true,
            });
        };
        let newest = counters::read(path)?.and_then(|slots| slots.newest(file.binding));
        let sidecar = match newest {
            Some(_) => Some(Sidecar::open(path)?),
            None => None,
        };
        Ok(CountersWriter {
            binding: file.binding,
            seq_last: newest.map_or(file.seq, |(_, r)| r.seq.max(file.seq)),
            slot_newest: newest.map(|(slot, _)| slot),
            sidecar,
            whole_save_due: false,
        })
    }

    fn next_seq(&mut self) -> Result<u64, CardError> {
        self.seq_last = self
            .seq_last
            .checked_add(1)
            .ok_or_else(|| CardError::Persist("counters sequence number exhausted".into()))?;
        Ok(self.seq_last)
    }

    fn save_whole(
        &mut self,
        path: &Path,
        state: &CardState,
        piv: Option<serde_json::Value>,
    ) -> Result<(), CardError> {
        let counters = FileCounters {
            binding: self.binding,
            seq: self.next_seq()?,
        };
        let result = write_atomic(path, &state.to_json_with(piv, Some(counters)), Replace::Yes);
        self.whole_save_due = result.is_err();
        result
    }

    fn save_counters(&mut self, path: &Path, state: &CardState) -> Result<(), CardError> {
        let record = Record {
            binding: self.binding,
            seq: self.next_seq()?,
            counter: state.counter,
            pin_retries_left: state.pin_retries_left,
        };
        let slot = self.slot_newest.map_or(Slot::A, Slot::other);
        match &self.sidecar {
            Some(sidecar) => sidecar.write(slot, &record)?,
            None => self.sidecar = Some(counters::create(path, slot, &record)?),
        }
        self.slot_newest = Some(slot);
        Ok(())
    }
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore {
            path: path.into(),
            writer: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file has now; nothing when there is no file yet.
    fn carried(&self) -> Result<Carried, CardError> {
        match self.path.exists() {
            true => read_carried(&self.path),
            false => Ok(Carried::default()),
        }
    }

    fn writer(&self) -> MutexGuard<'_, Option<CountersWriter>> {
        // A panic mid-save leaves at worst a used sequence number: harmless.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StateStore for FileStore {
    fn save(&mut self, state: &CardState) -> Result<(), CardError> {
        // Carry the PIV applet's section over from the file as it is now.
        let carried = self.carried()?;
        let mut guard = self.writer();
        let writer = match guard.take() {
            Some(writer) => writer,
            None => CountersWriter::read(&self.path, carried.counters)?,
        };
        guard
            .insert(writer)
            .save_whole(&self.path, state, carried.piv)
    }

    fn save_counters(&mut self, state: &CardState) -> Result<(), CardError> {
        let mut guard = self.writer();
        let writer = match guard.take() {
            Some(writer) => writer,
            None => CountersWriter::read(&self.path, self.carried()?.counters)?,
        };
        let writer = guard.insert(writer);
        match writer.whole_save_due {
            true => writer.save_whole(&self.path, state, self.carried()?.piv),
            false => writer.save_counters(&self.path, state),
        }
    }
}

/// Keeps the last saved state in memory: for tests and throwaway cards.
/// Clones share the same memory, so a test can look at what the applet saved.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    saved: Option<CardState>,
    saves: usize,
    counters_saves: usize,
    failing: bool,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // The data is plain values: a panic elsewhere cannot leave it half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last state saved, if any.
    pub fn saved(&self) -> Option<CardState> {
        self.inner().saved.clone()
    }

    /// How many times the state was saved, counters saves included.
    pub fn saves(&self) -> usize {
        self.inner().saves
    }

    /// How many of those saves were counters saves.
    pub fn counters_saves(&self) -> usize {
        self.inner().counters_saves
    }

    /// Makes every later save fail (a full disk, a pulled card).
    pub fn set_failing(&self, failing: bool) {
        self.inner().failing = failing;
    }
}

impl StateStore for MemoryStore {
    fn save(&mut self, state: &CardState) -> Result<(), CardError> {
        let mut inner = self.inner();
        if inner.failing {
            return Err(CardError::Persist("memory store set to fail".into()));
        }
        inner.saved = Some(state.clone());
        inner.saves += 1;
        Ok(())
    }

    /// Keeps only what a [`FileStore`] would: the two counters, over the
    /// last state saved (the whole state when there is none yet). A change
    /// saved through here by mistake is lost, as it would be on disk.
    fn save_counters(&mut self, state: &CardState) -> Result<(), CardError> {
        let mut inner = self.inner();
        if inner.failing {
            return Err(CardError::Persist("memory store set to fail".into()));
        }
        match &mut inner.saved {
            Some(saved) => {
                saved.counter = state.counter;
                saved.pin_retries_left = state.pin_retries_left;
            }
            None => inner.saved = Some(state.clone()),
        }
        inner.saves += 1;
        inner.counters_saves += 1;
        Ok(())
    }
}

/// Creates a fresh card state file holding `pin` (no key yet) for the
/// transaction applet, and a factory-fresh PIV section
/// ([`crate::piv::PivState::for_new_card`]: the same PIN when it is 6 to 8
/// digits, else `123456`; PUK `12345678`; the default management key).
/// Refuses to overwrite an existing file: that would destroy a key and reset
/// its counter. A counters sidecar left at the path by an earlier card is
/// removed (the new file's binding id would make it ignored anyway).
pub fn init_state(path: &Path, pin: &str) -> Result<(), CardError> {
    let mut rng = rand::rngs::OsRng;
    let state = CardState::new(pin.as_bytes(), &mut rng)?;
    let piv = crate::piv::PivState::for_new_card(pin.as_bytes(), &mut rng);
    let section = serde_json::to_value(piv.to_file())
        .map_err(|e| CardError::Persist(format!("encoding the PIV section: {e}")))?;
    // Checked before the sidecar is touched: it may be this existing card's.
    if path
        .try_exists()
        .map_err(CardError::io(format!("looking for {}", path.display())))?
    {
        return Err(CardError::StateExists {
            path: path.to_owned(),
        });
    }
    counters::remove(path)?;
    let counters = FileCounters {
        binding: BindingId::random(&mut rng),
        seq: 0,
    };
    write_atomic(
        path,
        &state.to_json_with(Some(section), Some(counters)),
        Replace::No,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

static TEMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that a crash leaves either the old or the new
/// file, never a mix: temp file in the same directory, fsync, rename (or hard
/// link, which refuses to replace), fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8], replace: Replace) -> Result<(), CardError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| CardError::Io {
        context: format!("{} is not a file path", path.display()),
        source: ErrorKind::InvalidInput.into(),
    })?;
    if replace == Replace::No && path.exists() {
        return Err(CardError::StateExists {
            path: path.to_owned(),
        });
    }
    let temp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_then_install(&temp, path, bytes, replace);
    if result.is_err() || replace == Replace::No {
        // After a hard link the temp name is a second name for the new file.
        let _ = fs::remove_file(&temp);
    }
    result?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CardError::io(format!(
            "syncing directory {}",
            dir.display()
        )))
}

fn write_then_install(
    temp: &Path,
    path: &Path,
    bytes: &[u8],
    replace: Replace,
) -> Result<(), CardError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(temp)
        .map_err(CardError::io(format!("creating {}", temp.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(CardError::io(format!("writing {}", temp.display())))?;
    drop(file);
    match replace {
        Replace::Yes => {
            fs::rename(temp, path).map_err(CardError::io(format!("replacing {}", path.display())))
        }
        Replace::No => match fs::hard_link(temp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(CardError::StateExists {
                path: path.to_owned(),
            }),
            Err(e) => Err(CardError::io(format!("creating {}", path.display()))(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn json_round_trips_and_hides_the_pin() {
        let mut rng = rng();
        let mut s = CardState::new(b"1234", &mut rng).unwrap();
        s.private_key = Some(SigningKey::random(&mut rng));
        s.certificate = Some(vec![0x30, 0x00]);
        s.counter = 42;
        s.pin_retries_left = 1;
        let json = s.to_json();
        let text = std::str::from_utf8(&json).unwrap();
        assert!(!text.contains("1234\""), "{text}");
        let back = CardState::from_json(&json).unwrap();
        assert_eq!(back.status(), s.status());
        assert_eq!(back.public_key_sec1(), s.public_key_sec1());
        assert_eq!(back.certificate(), s.certificate());
        assert!(back.pin.matches(b"1234"));
        assert!(!back.pin.matches(b"1235"));
    }

    #[test]
    fn refuses_unknown_versions_and_corrupt_counters() {
        let s = CardState::new(b"1234", &mut rng()).unwrap();
        let text = String::from_utf8(s.to_json().to_vec()).unwrap();
        let v4 = text.replace("\"version\": 3", "\"version\": 4");
        assert!(matches!(
            CardState::from_json(v4.as_bytes()),
            Err(DecodeError::Version(4))
        ));
        let v0 = text.replace("\"version\": 3", "\"version\": 0");
        assert!(matches!(
            CardState::from_json(v0.as_bytes()),
            Err(DecodeError::Version(0))
        ));
        let bad = text.replace("\"pin_retries_left\": 3", "\"pin_retries_left\": 9");
        assert!(matches!(
            CardState::from_json(bad.as_bytes()),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            CardState::from_json(b"{}"),
            Err(DecodeError::Corrupt(_))
        ));
    }

    /// A save carries the PIV section over exactly as the file has it:
    /// present, absent, even `null` (which the PIV applet refuses to load).
    #[test]
    fn the_piv_section_is_carried_over_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.json");
        let state = CardState::new(b"1234", &mut rng()).unwrap();
        let piv = serde_json::json!({ "pin_retries_left": 2, "objects": ["5FC102"] });
        for section in [Some(piv), Some(serde_json::Value::Null), None] {
            std::fs::write(&path, &state.to_json_with(section.clone(), None)[..]).unwrap();
            FileStore::new(&path).save(&state).unwrap();
            assert_eq!(read_carried(&path).unwrap().piv, section);
            assert_eq!(
                read_document(&path).unwrap().get(PIV_SECTION),
                section.as_ref()
            );
        }
        std::fs::write(&path, "[1, 2]").unwrap();
        assert!(matches!(
            FileStore::new(&path).save(&state),
            Err(CardError::CorruptState { .. })
        ));
    }

    /// A fresh card state file at `dir/card.json`, loaded, and a store on it.
    fn card_in(dir: &Path) -> (PathBuf, CardState, FileStore) {
        let path = dir.join("card.json");
        init_state(&path, "1234").unwrap();
        let state = CardState::load(&path).unwrap();
        (path.clone(), state, FileStore::new(path))
    }

    fn hot_fields(path: &Path) -> (u8, u32) {
        let s = CardState::load(path).unwrap();
        (s.pin_retries_left, s.counter)
    }

    /// Counters saves reach a reloaded card, and leave the state file as it
    /// was: the sidecar alone changes, written in place after its creation.
    #[test]
    fn counters_saves_survive_a_reload_and_leave_the_state_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut state, mut store) = card_in(dir.path());
        let json = std::fs::read(&path).unwrap();
        for (retries, counter) in [(2, 0), (3, 1), (2, 1), (3, 2)] {
            state.pin_retries_left = retries;
            state.counter = counter;
            store.save_counters(&state).unwrap();
            assert_eq!(hot_fields(&path), (retries, counter));
        }
        assert_eq!(std::fs::read(&path).unwrap(), json);
        let sidecar = counters::sidecar_path(&path);
        assert_eq!(
            std::fs::metadata(&sidecar).unwrap().len(),
            u64::try_from(counters::SIDECAR_LEN).unwrap()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&sidecar).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// The slot being written when the power went is the older one: the
    /// other keeps the state before the command. A store started on that
    /// sidecar writes over the torn slot, never over the good one.
    #[test]
    fn a_torn_slot_falls_back_to_the_other_and_is_the_next_one_written() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut state, mut store) = card_in(dir.path());
        for counter in 1..=3 {
            state.counter = counter;
            store.save_counters(&state).unwrap();
        }
        let sidecar = counters::sidecar_path(&path);
        let binding = read_carried(&path).unwrap().counters.unwrap().binding;
        let slots = counters::read(&path).unwrap().unwrap();
        let (torn, newest) = slots.newest(binding).unwrap();
        assert_eq!(newest.counter, 3);
        let offset = match torn {
            Slot::A => 0,
            Slot::B => counters::SLOT_LEN,
        };
        let mut bytes = std::fs::read(&sidecar).unwrap();
        // Half a record made it: the new sequence number, the old rest.
        bytes[offset + 31] ^= 0x01;
        std::fs::write(&sidecar, &bytes).unwrap();
        assert_eq!(hot_fields(&path), (3, 2));

        let mut restarted = FileStore::new(&path);
        state.counter = 3;
        restarted.save_counters(&state).unwrap();
        assert_eq!(hot_fields(&path), (3, 3));
        let slots = counters::read(&path).unwrap().unwrap();
        assert_eq!(slots.newest(binding).unwrap().0, torn);
        let good = match torn {
            Slot::A => slots.b,
            Slot::B => slots.a,
        };
        assert_eq!(good.map(|r| r.counter), Some(2));
    }

    /// A sidecar left by another card at the same path is never read into
    /// this one, and this card's first counters save replaces it.
    #[test]
    fn a_sidecar_from_another_card_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut state, mut store) = card_in(dir.path());
        state.counter = 41;
        store.save_counters(&state).unwrap();
        let sidecar = counters::sidecar_path(&path);
        let old_sidecar = std::fs::read(&sidecar).unwrap();

        std::fs::remove_file(&path).unwrap();
        init_state(&path, "1234").unwrap();
        assert!(!sidecar.exists(), "init removes the old card's sidecar");
        std::fs::write(&sidecar, &old_sidecar).unwrap();
        assert_eq!(hot_fields(&path), (3, 0));

        let mut state = CardState::load(&path).unwrap();
        state.counter = 1;
        FileStore::new(&path).save_counters(&state).unwrap();
        assert_eq!(hot_fields(&path), (3, 1));
        let binding = read_carried(&path).unwrap().counters.unwrap().binding;
        let slots = counters::read(&path).unwrap().unwrap();
        for record in [slots.a, slots.b].into_iter().flatten() {
            assert_eq!(record.binding, binding);
        }
    }

    /// A whole save outranks every record before it; the next counters save
    /// outranks it in turn.
    #[test]
    fn a_whole_save_supersedes_earlier_counters_saves() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut state, mut store) = card_in(dir.path());
        state.pin_retries_left = 1;
        state.counter = 5;
        store.save_counters(&state).unwrap();
        state.pin_retries_left = 2;
        store.save_counters(&state).unwrap();
        state.pin_retries_left = 3;
        state.certificate = Some(vec![0x30, 0x00]);
        store.save(&state).unwrap();
        let loaded = CardState::load(&path).unwrap();
        assert_eq!((loaded.pin_retries_left, loaded.counter), (3, 5));
        assert_eq!(loaded.certificate(), Some(&[0x30, 0x00][..]));
        // The file now says what the newest record says, with a higher number.
        let file = read_carried(&path).unwrap().counters.unwrap();
        let slots = counters::read(&path).unwrap().unwrap();
        assert!(slots.newest(file.binding).unwrap().1.seq < file.seq);

        state.pin_retries_left = 2;
        store.save_counters(&state).unwrap();
        assert_eq!(hot_fields(&path), (2, 5));
    }

    /// A state file without counters fields (format 2 and older) loads as it
    /// is; the first counters save writes the whole file to give it a
    /// binding id, the next one makes the sidecar.
    #[test]
    fn a_file_without_counters_fields_gets_them_on_the_first_save() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.json");
        let mut state = CardState::new(b"1234", &mut rng()).unwrap();
        state.counter = 7;
        let piv = serde_json::json!({ "objects": {} });
        std::fs::write(&path, &state.to_json_with(Some(piv.clone()), None)[..]).unwrap();
        assert!(read_carried(&path).unwrap().counters.is_none());
        assert_eq!(hot_fields(&path), (3, 7));

        let mut store = FileStore::new(&path);
        state.pin_retries_left = 2;
        store.save_counters(&state).unwrap();
        let carried = read_carried(&path).unwrap();
        assert!(carried.counters.is_some());
        assert_eq!(carried.piv, Some(piv));
        assert!(!counters::sidecar_path(&path).exists());
        assert_eq!(hot_fields(&path), (2, 7));

        let json = std::fs::read(&path).unwrap();
        state.counter = 8;
        store.save_counters(&state).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), json);
        assert_eq!(hot_fields(&path), (2, 8));
    }

    /// The PIV applet rewrites the file with the transaction section as it
    /// was written last (older counters) and its counters fields unchanged:
    /// the newer sidecar record still wins, and the transaction applet's
    /// store goes on from where it was.
    #[test]
    fn a_piv_save_keeps_the_newer_counters() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut state, mut store) = card_in(dir.path());
        state.pin_retries_left = 2;
        state.counter = 4;
        store.save_counters(&state).unwrap();
        let before = read_carried(&path).unwrap().counters;
        replace_section(&path, PIV_SECTION, serde_json::json!({ "objects": {} })).unwrap();
        assert_eq!(read_carried(&path).unwrap().counters, before);
        assert_eq!(hot_fields(&path), (2, 4));
        state.counter = 5;
        store.save_counters(&state).unwrap();
        assert_eq!(hot_fields(&path), (2, 5));
    }

    /// Sidecar records the state file cannot have come from are refused, not
    /// loaded: a counter below the file's, more retries than the maximum.
    #[test]
    fn a_record_that_would_move_the_counter_back_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut state, mut store) = card_in(dir.path());
        state.counter = 9;
        store.save(&state).unwrap();
        let file = read_carried(&path).unwrap().counters.unwrap();
        for (counter, pin_retries_left) in [(8, 3), (9, 4)] {
            let record = Record {
                binding: file.binding,
                seq: file.seq + 1,
                counter,
                pin_retries_left,
            };
            counters::create(&path, Slot::A, &record).unwrap();
            assert!(matches!(
                CardState::load(&path),
                Err(CardError::CorruptState { .. })
            ));
        }
    }

    #[test]
    fn the_same_pin_hashes_differently_on_two_cards() {
        let a = CardState::new(b"1234", &mut StdRng::seed_from_u64(1)).unwrap();
        let b = CardState::new(b"1234", &mut StdRng::seed_from_u64(2)).unwrap();
        assert_ne!(a.pin.hash, b.pin.hash);
    }

    #[test]
    fn refuses_malformed_initial_pins() {
        for pin in [&b"123"[..], b"123456789", b"12a4", b""] {
            assert!(matches!(
                CardState::new(pin, &mut rng()),
                Err(CardError::BadPin)
            ));
        }
    }
}
