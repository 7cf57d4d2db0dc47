//! The CSPRNG (ring's `SystemRandom`, i.e. the operating system's) and the
//! secrets made from it.

use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomError;

/// `N` bytes from the operating system's CSPRNG.
pub fn bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| RandomError)?;
    Ok(out)
}

/// A transaction id: the wall clock in milliseconds (48 bits, big-endian)
/// followed by 80 random bits.
///
/// The time prefix is a locality hint for the store, not a timestamp anyone
/// reads: ids made close together sort close together, so the unique indexes
/// on them (`transactions.id`, `transfers.transaction_id`) take each new entry
/// on the same few rightmost pages instead of a random page per payment, and
/// a group commit writes fewer pages. 80 random bits keep ids unguessable (the
/// confirmation's freshness comes from its own 256-bit challenge). A clock
/// that steps back only costs locality, never uniqueness.
pub fn transaction_id(now_unix_ms: u64) -> Result<[u8; 16], RandomError> {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&now_unix_ms.to_be_bytes()[2..]);
    id[6..].copy_from_slice(&bytes::<10>()?);
    Ok(id)
}

/// A bearer secret: `prefix` followed by 32 random bytes in hex. The prefix
/// (`kbt_`, `kbd_`) tells a leaked secret's kind at a glance.
pub fn secret_token(prefix: &str) -> Result<String, RandomError> {
    Ok(format!("{prefix}{}", hex::encode(bytes::<32>()?)))
}

/// A public identifier: `prefix` followed by 8 random bytes in hex.
pub fn public_id(prefix: &str) -> Result<String, RandomError> {
    Ok(format!("{prefix}{}", hex::encode(bytes::<8>()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_sort_by_time_and_differ_within_a_millisecond() {
        let a = transaction_id(1_750_000_000_123).unwrap();
        let b = transaction_id(1_750_000_000_123).unwrap();
        let later = transaction_id(1_750_000_000_124).unwrap();
        assert_eq!(a[..6], 1_750_000_000_123u64.to_be_bytes()[2..]);
        assert_eq!(a[..6], b[..6]);
        assert_ne!(a, b);
        assert!(a < later && b < later);
    }

    #[test]
    fn tokens_are_prefixed_and_distinct() {
        let a = secret_token("kbt_").unwrap();
        let b = secret_token("kbt_").unwrap();
        assert!(a.starts_with("kbt_") && a.len() == 4 + 64);
        assert_ne!(a, b);
        assert_eq!(public_id("dev_").unwrap().len(), 4 + 16);
    }
}
