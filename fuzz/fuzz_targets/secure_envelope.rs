//! KB-SC1 envelopes under a real session: the card's `CardSession::open`
//! and the phone's `PhoneSession::open`, the two parsers of sealed frames
//! off the radio. The session is agreed anew for each input, from a seeded
//! generator (the card's key is made once).
//! Never panics; any plaintext sealed by one side opens to itself on the
//! other, in both directions, and a verbatim resend gets the cached answer;
//! a genuine envelope or answer with any byte changed is refused; whatever
//! either side opens is byte for byte what the other side seals for that
//! plaintext and counter (nothing can be forged).
//!
//! The input is records `[op][len hi][len lo][len bytes]`; op mod 4:
//! 0 an exchange with those bytes as the command and, reversed, the answer;
//! 1 the bytes to the card as an envelope; 2 the bytes XORed onto the
//! phone's next genuine envelope, then the genuine one; 3 the bytes XORed
//! onto the card's last answer, and the bytes themselves, to the phone.
//!
//! Sealed bytes are compared by hash, never directly: a direct comparison
//! would hand them to libFuzzer's comparison tracing, and with seeded keys
//! the fuzzer could replay them into a later input.
#![no_main]
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use keybridge_transport::secure::{
    card_accept, CardIdentity, CardSession, Opened, PhoneHandshake, PhoneSession,
};
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::SigningKey;
use rand::SeedableRng;

const CERT: &[u8] = b"the card certificate pinned at enrolment";

fn same(a: &[u8], b: &[u8]) -> bool {
    let hash = |bytes: &[u8]| {
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    };
    a.len() == b.len() && hash(a) == hash(b)
}

/// `genuine` with `mask` XORed onto it (and its excess appended), and
/// whether that changed anything.
fn alter(genuine: &[u8], mask: &[u8]) -> (Vec<u8>, bool) {
    let mut out = genuine.to_vec();
    for (i, m) in mask.iter().enumerate() {
        match out.get_mut(i) {
            Some(b) => *b ^= m,
            None => out.push(*m),
        }
    }
    let changed = mask.len() > genuine.len() || mask.iter().any(|&m| m != 0);
    (out, changed)
}

/// The last exchange: counter, envelope, sealed answer.
type Exchange = (u32, Vec<u8>, Vec<u8>);

/// The card answers the envelope it just opened as `counter`; the phone
/// opens the answer; a verbatim resend of the envelope gets the same answer.
fn answer(
    card: &mut CardSession,
    phone: &PhoneSession,
    counter: u32,
    envelope: &[u8],
    reply: &[u8],
) -> Exchange {
    let sealed = card.seal(counter, reply).expect("seal the answer");
    let opened = phone.open(counter, &sealed).expect("open the answer");
    assert_eq!(&opened[..], reply);
    let Ok(Opened::Retransmission(again)) = card.open(envelope) else {
        panic!("a verbatim resend was not answered from the cache");
    };
    assert!(same(&again, &sealed));
    (counter, envelope.to_vec(), sealed)
}

/// The phone seals `plain`, the card opens it and answers `reply`.
fn exchange(
    card: &mut CardSession,
    phone: &mut PhoneSession,
    plain: &[u8],
    reply: &[u8],
) -> Exchange {
    let (counter, envelope) = phone.seal(plain).expect("seal");
    deliver(card, phone, counter, &envelope.data, plain, reply)
}

fn deliver(
    card: &mut CardSession,
    phone: &PhoneSession,
    counter: u32,
    envelope: &[u8],
    plain: &[u8],
    reply: &[u8],
) -> Exchange {
    let Ok(Opened::Fresh { counter: got, apdu }) = card.open(envelope) else {
        panic!("a genuine envelope was refused");
    };
    assert_eq!(got, counter);
    assert_eq!(&apdu[..], plain);
    answer(card, phone, counter, envelope, reply)
}

fn card_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::random(&mut rand::rngs::StdRng::seed_from_u64(1)))
}

fuzz_target!(|data: &[u8]| {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let card_key = card_key();
    let (handshake, command) = PhoneHandshake::start(&mut rng);
    let identity = CardIdentity {
        key: card_key,
        certificate: CERT,
    };
    let (accepted, mut card) = card_accept(&command.data, identity, &mut rng).expect("accept");
    let mut phone = handshake
        .finish(&accepted, CERT, card_key.verifying_key())
        .expect("finish");
    let mut last: Option<Exchange> = None;

    let mut rest = data;
    while let [op, hi, lo, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (bytes, tail) = tail.split_at(n);
        rest = tail;
        match op % 4 {
            0 => {
                let reply: Vec<u8> = bytes.iter().rev().copied().collect();
                last = Some(exchange(&mut card, &mut phone, bytes, &reply));
            }
            1 => match card.open(bytes) {
                Err(_) => {}
                Ok(Opened::Fresh { counter, apdu }) => {
                    let (expected, envelope) = phone.seal(&apdu).expect("seal");
                    assert_eq!(counter, expected);
                    assert!(
                        same(&envelope.data, bytes),
                        "the card opened an envelope the phone did not seal"
                    );
                    last = Some(answer(&mut card, &phone, counter, bytes, b"\x90\x00"));
                }
                Ok(Opened::Retransmission(again)) => {
                    let (_, envelope, sealed) = last.as_ref().expect("a resend needs an exchange");
                    assert!(same(bytes, envelope) && same(&again, sealed));
                }
            },
            2 => {
                let plain = b"\x00\x20\x00\x80\x041234";
                let (counter, envelope) = phone.seal(plain).expect("seal");
                let (altered, changed) = alter(&envelope.data, bytes);
                if changed {
                    match card.open(&altered) {
                        Err(_) => {}
                        Ok(Opened::Fresh { .. }) => panic!("the card opened an altered envelope"),
                        Ok(Opened::Retransmission(_)) => {
                            let (_, previous, _) =
                                last.as_ref().expect("a resend needs an exchange");
                            assert!(same(&altered, previous));
                        }
                    }
                }
                last = Some(deliver(
                    &mut card,
                    &phone,
                    counter,
                    &envelope.data,
                    plain,
                    b"\x90\x00",
                ));
            }
            _ => {
                if let Some((counter, _, sealed)) = &last {
                    let (altered, changed) = alter(sealed, bytes);
                    if changed {
                        assert!(
                            phone.open(*counter, &altered).is_err(),
                            "an altered answer opened"
                        );
                    }
                    assert!(
                        phone.open(counter.wrapping_add(1), sealed).is_err(),
                        "an answer opened under another counter"
                    );
                }
                let counters = [0, 1, last.as_ref().map_or(2, |l| l.0)];
                for counter in counters {
                    if let Ok(plain) = phone.open(counter, bytes) {
                        let resealed = card.seal(counter, &plain).expect("seal");
                        assert!(
                            same(&resealed, bytes),
                            "the phone opened an answer the card did not seal"
                        );
                    }
                }
            }
        }
    }
});
