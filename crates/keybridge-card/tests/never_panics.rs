//! The card answers every byte string with a status word and never panics,
//! alone or in any sequence, including sequences that reach the applet.

mod common;

use common::*;
use proptest::prelude::*;

/// Commands that mean something to the card, with arbitrary parameters and
/// data, so that sequences get past the dispatcher into the applet.
fn plausible_apdu() -> impl Strategy<Value = Vec<u8>> {
    let cla = prop::sample::select(vec![0x00u8, 0x10, 0x80]);
    let ins = prop::sample::select(vec![0xA4u8, 0x20, 0x47, 0xCA, 0xDA, 0x2A, 0xC0, 0x00]);
    (
        cla,
        ins,
        any::<u8>(),
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::option::of(1usize..=65_536),
    )
        .prop_map(|(cla, ins, p1, p2, data, le)| {
            let le = le.map(|le| if data.len() > 255 { le } else { le.min(256) });
            keybridge_transport::Command {
                cla,
                ins,
                p1,
                p2,
                data,
                le,
            }
            .encode()
        })
}

fn fixed(hex: &'static str) -> impl Strategy<Value = Vec<u8>> {
    Just(h(hex))
}

fn any_apdu() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..300),
        3 => plausible_apdu(),
        1 => fixed(SELECT),
        1 => fixed(VERIFY_OK),
        1 => fixed(VERIFY_WRONG),
        1 => fixed("00470000"),
        1 => fixed("00C00000 00"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_get_a_status_word(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut card = Harness::new();
        let _ = card.send_bytes(&bytes);
    }

    #[test]
    fn any_sequence_gets_status_words(sequence in proptest::collection::vec(any_apdu(), 1..24)) {
        let mut card = Harness::new();
        for apdu in &sequence {
            let answer = card.send_bytes(apdu);
            prop_assert!(answer.len() <= 65_536 + 2);
        }
        // Whatever happened, the card still works after a reset and kept its invariants.
        card.card.reset();
        card.transcript(&[(SELECT, "01 9000")]);
        let status = card.status();
        prop_assert!(status.pin_retries_left <= status.pin_retries_max);
    }
}
