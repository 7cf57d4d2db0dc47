//! Handling bearer secrets: hash for storage and lookup, compare in constant time.
//!
//! API keys and device credentials are 256-bit random tokens, so a plain
//! SHA-256 (no salt, no stretching) is enough to make the stored value
//! useless to a thief, and lets the server look a token up by its hash.

use sha2::{Digest, Sha256};

pub fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Equal-length comparison whose time does not depend on where bytes differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_hashes() {
        assert!(constant_time_eq(&sha256("a"), &sha256("a")));
        assert!(!constant_time_eq(&sha256("a"), &sha256("b")));
    }
}
