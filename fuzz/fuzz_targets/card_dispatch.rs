//! The card's dispatcher and transaction applet on arbitrary APDU sequences:
//! never panics, always answers with at least a status word. The input is cut
//! into APDUs by a one-byte length before each.
#![no_main]
use keybridge_card::{AutoApprove, Card, CardState, Context, MemoryStore, TransactionApplet};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let state = CardState::new(b"1234", &mut rng).expect("fresh state");
    let applet = TransactionApplet::new(state, Box::new(MemoryStore::new()));
    let mut card = Card::new().with_applet(Box::new(applet));
    let mut holder = AutoApprove;
    let mut rest = data;
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
