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
    fn tokens_are_prefixed_and_distinct() {
        let a = secret_token("kbt_").unwrap();
        let b = secret_token("kbt_").unwrap();
        assert!(a.starts_with("kbt_") && a.len() == 4 + 64);
        assert_ne!(a, b);
        assert_eq!(public_id("dev_").unwrap().len(), 4 + 16);
    }
}
