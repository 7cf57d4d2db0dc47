//! The server master key and AES-256-GCM sealing of secrets at rest (OCRA
//! shared secrets).
//!
//! The key comes from `KEYBRIDGE_MASTER_KEY` (64 hex digits) or from
//! `master-key` in the data directory, created (mode 0600) on first start.
//! A sealed value is `nonce (12, random) ‖ ciphertext ‖ tag (16)`; the
//! associated data binds it to its row (device id and suite), so a sealed
//! secret copied onto another device's row does not open. Neither the key nor
//! an opened secret is ever logged: `Debug` prints neither.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

pub const MASTER_KEY_ENV: &str = "KEYBRIDGE_MASTER_KEY";
const MASTER_KEY_FILE: &str = "master-key";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretBoxError {
    #[error("the master key must be 32 bytes written as 64 hex digits")]
    BadKey,
    #[error("{0}")]
    Io(String),
    /// Wrong key, wrong row, or altered bytes: the tag does not verify.
    #[error("a sealed secret does not open")]
    Open,
    #[error("the random number generator failed")]
    Random,
}

/// The master key. Cloning shares nothing mutable; `Debug` is redacted.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_bytes(key: &[u8; 32]) -> MasterKey {
        MasterKey {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    pub fn from_hex(text: &str) -> Result<MasterKey, SecretBoxError> {
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| SecretBoxError::BadKey)?);
        let key: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretBoxError::BadKey)?;
        Ok(MasterKey::from_bytes(key))
    }

    /// From `env_value` if set, else the key file in `dir` (created if missing).
    pub fn load_or_create(
        dir: &Path,
        env_value: Option<&str>,
    ) -> Result<MasterKey, SecretBoxError> {
        if let Some(text) = env_value {
            return MasterKey::from_hex(text);
        }
        let path = dir.join(MASTER_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => return MasterKey::from_hex(&Zeroizing::new(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SecretBoxError::Io(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        }
        let key = Zeroizing::new(crate::random::bytes::<32>().map_err(|_| SecretBoxError::Random)?);
        let text = Zeroizing::new(hex::encode(&key[..]));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&path)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(|e| SecretBoxError::Io(format!("writing {}: {e}", path.display())))?;
        tracing::info!(path = %path.display(), "created the master key");
        Ok(MasterKey::from_bytes(&key))
    }

    /// Seals `secret` for the row named by `aad`.
    pub fn seal(&self, secret: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        let nonce = crate::random::bytes::<NONCE_LEN>().map_err(|_| SecretBoxError::Random)?;
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret, aad })
            .map_err(|_| SecretBoxError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`MasterKey::seal`] made for the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretBoxError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretBoxError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map(Zeroizing::new)
            .map_err(|_| SecretBoxError::Open)
    }
}

/// The associated data of an OCRA secret: its device and suite.
pub fn ocra_aad(device_id: &str, suite: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(device_id.len() + suite.len() + 16);
    aad.extend_from_slice(b"keybridge-ocra\0");
    aad.extend_from_slice(device_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(suite.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_with_the_same_key_and_row() {
        let key = MasterKey::from_bytes(&[7; 32]);
        let sealed = key.seal(b"shared secret", b"row 1").unwrap();
        assert!(!sealed.windows(13).any(|w| w == b"shared secret"));
        assert_eq!(&key.open(&sealed, b"row 1").unwrap()[..], b"shared secret");
        assert_eq!(key.open(&sealed, b"row 2"), Err(SecretBoxError::Open));
        let other = MasterKey::from_bytes(&[8; 32]);
        assert_eq!(other.open(&sealed, b"row 1"), Err(SecretBoxError::Open));
        let mut altered = sealed.clone();
        altered[20] ^= 1;
        assert_eq!(key.open(&altered, b"row 1"), Err(SecretBoxError::Open));
        assert_eq!(key.open(&sealed[..27], b"row 1"), Err(SecretBoxError::Open));
        // Two seals of one secret differ (fresh nonce).
        assert_ne!(key.seal(b"s", b"r").unwrap(), key.seal(b"s", b"r").unwrap());
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn the_key_file_is_created_once_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKey::load_or_create(dir.path(), None).unwrap();
        let b = MasterKey::load_or_create(dir.path(), None).unwrap();
        let sealed = a.seal(b"x", b"").unwrap();
        assert_eq!(&b.open(&sealed, b"").unwrap()[..], b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let env = MasterKey::load_or_create(dir.path(), Some(&"11".repeat(32))).unwrap();
        assert_eq!(env.open(&sealed, b""), Err(SecretBoxError::Open));
        assert_eq!(
            MasterKey::load_or_create(dir.path(), Some("abcd")).unwrap_err(),
            SecretBoxError::BadKey
        );
    }
}
