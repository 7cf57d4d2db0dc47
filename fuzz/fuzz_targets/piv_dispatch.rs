//! The card's dispatcher with the PIV applet on arbitrary APDU sequences:
//! never panics, always answers with at least a status word. The first byte
//! picks a prelude (SELECT, VERIFY); the rest is cut into APDUs by a one-byte
//! length before each.
#![no_main]
use keybridge_card::{AutoApprove, Card, Context, PivApplet, PivMemoryStore, PivState};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

/// SELECT PIV and VERIFY with the right PIN: the prelude the first byte
/// switches on, so the fuzzer starts past the checks that guard signing
/// (management-key paths need 3DES answers no fuzzer guesses).
const SELECT: &[u8] = &[
    0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08, 0x00,
];
const VERIFY: &[u8] = &[
    0x00, 0x20, 0x00, 0x80, 0x08, b'1', b'2', b'3', b'4', b'5', b'6', 0xFF, 0xFF,
];

fuzz_target!(|data: &[u8]| {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let state = PivState::new(b"123456", b"12345678", &mut rng).expect("fresh state");
    let applet = PivApplet::new(state, Box::new(PivMemoryStore::new()));
    let mut card = Card::new().with_applet(Box::new(applet));
    let mut holder = AutoApprove;
    let Some((&start, mut rest)) = data.split_first() else {
        return;
    };
    let mut prelude: Vec<&[u8]> = Vec::new();
    if start & 1 == 1 {
        prelude.push(SELECT);
    }
    if start & 2 == 2 {
        prelude.push(VERIFY);
    }
    for apdu in prelude {
        let mut context = Context {
            holder: &mut holder,
            rng: &mut rng,
            now_unix_s: 1_700_000_000,
        };
        assert!(card.process(apdu, &mut context).len() >= 2);
    }
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (apdu, tail) = tail.split_at(len);
        rest = tail;
        let mut context = Context {
            holder: &mut holder,
            rng: &mut rng,
            now_unix_s: 1_700_000_000,
        };
        let response = card.process(apdu, &mut context);
        assert!(response.len() >= 2);
    }
});
