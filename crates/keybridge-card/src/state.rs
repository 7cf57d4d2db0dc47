//! What the card remembers across power cycles, and where it keeps it.
//!
//! [`CardState`] is the applet's persistent memory: private key, certificate,
//! PIN verifier (salted SHA-256, never the PIN), retry counter and signature
//! counter. The applet saves it through a [`StateStore`] before any answer
//! that depends on a change leaves the card. [`FileStore`] writes it as JSON
//! (format [`STATE_VERSION`]) atomically: temp file in the same directory,
//! write, fsync, rename, fsync the directory; mode 0600 on unix.
//!
//! ```json
//! { "version": 2, "private_key_hex": "…32 bytes…", "certificate_base64": "MII…",
//!   "pin_salt_hex": "…16 bytes…", "pin_sha256_hex": "…32 bytes…",
//!   "pin_retries_left": 3, "pin_retries_max": 3, "counter": 7,
//!   "piv": { … } }
//! ```
//!
//! Version 2 added the optional `"piv"` section ([`crate::piv::state`]); a
//! version-1 file (no section) still loads, and the PIV applet gets a factory
//! fresh state on first use. The file has one section per applet and each
//! applet's store rewrites only its own, carrying the other over from the
//! file: the two applets never overwrite each other's changes.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use keybridge_proto::applet::{pin_is_well_formed, CardStatus};
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::error::CardError;

/// The state file format this build writes and reads.
pub const STATE_VERSION: u32 = 2;
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
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        self.to_json_with(None)
    }

    /// The state file's bytes with another applet's section carried along.
    fn to_json_with(&self, piv: Option<serde_json::Value>) -> Zeroizing<Vec<u8>> {
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
        };
        // Serializing strings and integers into a Vec cannot fail.
        let mut out = serde_json::to_vec_pretty(&file).unwrap_or_default();
        out.push(b'\n');
        Zeroizing::new(out)
    }

    fn from_json(bytes: &[u8]) -> Result<CardState, DecodeError> {
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
        Ok(CardState {
            private_key,
            certificate,
            pin: PinVerifier { salt, hash },
            pin_retries_left: file.pin_retries_left,
            pin_retries_max: file.pin_retries_max,
            counter: file.counter,
            ocra,
        })
    }

    /// Reads a state file. Refuses unknown format versions and corrupt files.
    pub fn load(path: &Path) -> Result<CardState, CardError> {
        let bytes = read_bytes(path)?;
        CardState::from_json(&bytes).map_err(|e| match e {
            DecodeError::Version(found) => CardError::UnsupportedVersion {
                path: path.to_owned(),
                found,
                supported: STATE_VERSION,
            },
            DecodeError::Corrupt(reason) => CardError::CorruptState {
                path: path.to_owned(),
                reason,
            },
        })
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

/// The PIV section of a state file as it is (`null` included), and only it:
/// the rest, this applet's key among it, is checked as JSON but not copied
/// into memory, where nothing would zeroize it.
fn read_piv_section(path: &Path) -> Result<Option<serde_json::Value>, CardError> {
    /// The field name is [`PIV_SECTION`].
    #[derive(Deserialize)]
    struct PivOnly {
        #[serde(default, deserialize_with = "present")]
        piv: Option<serde_json::Value>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<serde_json::Value>, D::Error> {
        serde_json::Value::deserialize(d).map(Some)
    }
    let bytes = read_bytes(path)?;
    let file: PivOnly = serde_json::from_slice(&bytes).map_err(|e| CardError::CorruptState {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(file.piv)
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

/// Where the applet saves its state. `save` returns only once the state is
/// durable; the applet answers `6581` when it fails.
pub trait StateStore: Send {
    fn save(&mut self, state: &CardState) -> Result<(), CardError>;
}

/// Saves to a file, atomically.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl StateStore for FileStore {
    fn save(&mut self, state: &CardState) -> Result<(), CardError> {
        // Carry the PIV applet's section over from the file as it is now.
        let piv = match self.path.exists() {
            true => read_piv_section(&self.path)?,
            false => None,
        };
        write_atomic(&self.path, &state.to_json_with(piv), Replace::Yes)
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

    /// How many times the state was saved.
    pub fn saves(&self) -> usize {
        self.inner().saves
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
}

/// Creates a fresh card state file holding `pin` (no key yet) for the
/// transaction applet, and a factory-fresh PIV section
/// ([`crate::piv::PivState::for_new_card`]: the same PIN when it is 6 to 8
/// digits, else `123456`; PUK `12345678`; the default management key).
/// Refuses to overwrite an existing file: that would destroy a key and reset
/// its counter.
pub fn init_state(path: &Path, pin: &str) -> Result<(), CardError> {
    let mut rng = rand::rngs::OsRng;
    let state = CardState::new(pin.as_bytes(), &mut rng)?;
    let piv = crate::piv::PivState::for_new_card(pin.as_bytes(), &mut rng);
    let section = serde_json::to_value(piv.to_file())
        .map_err(|e| CardError::Persist(format!("encoding the PIV section: {e}")))?;
    write_atomic(path, &state.to_json_with(Some(section)), Replace::No)
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
        let v3 = text.replace("\"version\": 2", "\"version\": 3");
        assert!(matches!(
            CardState::from_json(v3.as_bytes()),
            Err(DecodeError::Version(3))
        ));
        let v0 = text.replace("\"version\": 2", "\"version\": 0");
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
            std::fs::write(&path, &state.to_json_with(section.clone())[..]).unwrap();
            FileStore::new(&path).save(&state).unwrap();
            assert_eq!(read_piv_section(&path).unwrap(), section);
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
