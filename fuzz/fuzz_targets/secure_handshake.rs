//! KB-SC1's key agreement messages as the radio delivers them: the card's
//! parser of KEY AGREEMENT data (`secure::card_accept`) and the phone's
//! parser of the card's answer (`PhoneHandshake::finish`). Never panics; the
//! card takes only `01 01 ‖ 65-byte point` and answers `point ‖ DER
//! signature`; the phone accepts no answer but the card's own to its
//! request: an accepted answer carries the card's point (only a re-encoding
//! of the card's signature could differ), and the genuine answer is accepted.
//! The first byte picks: even, the rest is fed to both parsers as is; odd,
//! the rest is XORed onto (and appended to) the genuine answer. The card key
//! and the genuine answer are made once, and the phone's key comes from the
//! same seed every input, so the genuine answer is the same every time.
#![no_main]
use std::sync::OnceLock;

use keybridge_transport::secure::{card_accept, CardIdentity, PhoneHandshake};
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::SigningKey;
use rand::rngs::StdRng;
use rand::SeedableRng;

const CERT: &[u8] = b"the card certificate pinned at enrolment";
const POINT_LEN: usize = 65;
const SIGNATURE_DER_LEN_MAX: usize = 72;

fn identity(key: &SigningKey) -> CardIdentity<'_> {
    CardIdentity {
        key,
        certificate: CERT,
    }
}

/// The card's key, and its answer to the request `PhoneHandshake::start`
/// makes from seed 7.
fn setup() -> &'static (SigningKey, Vec<u8>) {
    static SETUP: OnceLock<(SigningKey, Vec<u8>)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let card_key = SigningKey::random(&mut StdRng::seed_from_u64(1));
        let (_, command) = PhoneHandshake::start(&mut StdRng::seed_from_u64(7));
        let (answer, _) = card_accept(
            &command.data,
            identity(&card_key),
            &mut StdRng::seed_from_u64(8),
        )
        .expect("the phone's own request");
        (card_key, answer)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (card_key, genuine) = setup();
    let (handshake, _) = PhoneHandshake::start(&mut StdRng::seed_from_u64(7));
    if mode & 1 == 0 {
        let mut rng = StdRng::seed_from_u64(8);
        if let Ok((answer, _session)) = card_accept(rest, identity(card_key), &mut rng) {
            assert_eq!(rest.len(), 2 + POINT_LEN);
            assert_eq!(rest[..2], [0x01, 0x01]);
            assert!(answer.len() > POINT_LEN && answer.len() <= POINT_LEN + SIGNATURE_DER_LEN_MAX);
        }
        if handshake
            .finish(rest, CERT, card_key.verifying_key())
            .is_ok()
        {
            assert_eq!(rest.get(..POINT_LEN), Some(&genuine[..POINT_LEN]));
        }
    } else {
        let mut altered = genuine.clone();
        for (i, m) in rest.iter().enumerate() {
            match altered.get_mut(i) {
                Some(b) => *b ^= m,
                None => altered.push(*m),
            }
        }
        let changed = rest.len() > genuine.len() || rest.iter().any(|&m| m != 0);
        let accepted = handshake
            .finish(&altered, CERT, card_key.verifying_key())
            .is_ok();
        if !changed {
            assert!(accepted, "the genuine answer was refused");
        } else if accepted {
            assert_eq!(
                altered[..POINT_LEN],
                genuine[..POINT_LEN],
                "the phone accepted a point the card did not sign"
            );
        }
    }
});
