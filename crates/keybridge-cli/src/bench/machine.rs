//! What the machine can do and what this process used: the crypto limit,
//! CPU seconds and resident memory, read from /proc (Linux).

use std::time::{Duration, Instant};

use anyhow::Context;

/// P-256 sign + verify pairs per second with ring, one thread per core: the
/// bound the whole system cannot beat, since each payment needs one of each.
pub fn crypto_limit(duration: Duration) -> f64 {
    use ring::rand::SystemRandom;
    use ring::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
        ECDSA_P256_SHA256_ASN1_SIGNING,
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            std::thread::spawn(move || -> u64 {
                let rng = SystemRandom::new();
                let Ok(pkcs8) = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                else {
                    return 0;
                };
                let Ok(key) =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                else {
                    return 0;
                };
                let public = UnparsedPublicKey::new(
                    &ECDSA_P256_SHA256_ASN1,
                    key.public_key().as_ref().to_vec(),
                );
                let message = [7u8; 300];
                let end = Instant::now() + duration;
                let mut n = 0u64;
                while Instant::now() < end {
                    let Ok(sig) = key.sign(&rng, &message) else {
                        return n;
                    };
                    if public.verify(&message, sig.as_ref()).is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    total as f64 / duration.as_secs_f64()
}

/// User + system CPU seconds of this process, from /proc (Linux).
pub fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports in clock ticks of 1/100 s (USER_HZ) on every mainstream build.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process (VmHWM), in KiB; 0 if unknown.
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:").unwrap_or(0)
}

/// Resident memory of this process now (VmRSS), in KiB.
pub fn current_rss_kib() -> anyhow::Result<u64> {
    status_kib("VmRSS:").context("reading VmRSS from /proc/self/status")
}

/// A `kB` field of /proc/self/status.
fn status_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
