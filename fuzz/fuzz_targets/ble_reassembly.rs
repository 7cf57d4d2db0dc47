//! The BLE reassembler fed arbitrary fragments at arbitrary times: never
//! panics, never yields more than MESSAGE_LEN_MAX bytes, and whatever
//! message it completes fragments back into fragments that reassemble to it.
#![no_main]

use keybridge_transport::ble::frame::{FragmentLen, Fragments, MESSAGE_LEN_MAX};
use keybridge_transport::ble::Reassembler;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: the fragment length (20..=512); then records of
    // [time step][length][fragment bytes].
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let len = FragmentLen::new(20 + usize::from(first) * 2).unwrap_or(FragmentLen::MIN);
    let mut r = Reassembler::new(len, 1_000);
    let mut now_ms = 0u64;
    while let [step, n, tail @ ..] = rest {
        now_ms += u64::from(*step) * 10;
        let n = usize::from(*n).min(tail.len());
        let (fragment, tail) = tail.split_at(n);
        rest = tail;
        let _ = r.poll(now_ms);
        if let Ok(Some(message)) = r.push(fragment, now_ms) {
            assert!(message.data.len() <= MESSAGE_LEN_MAX);
            let mut again = Reassembler::new(len, 1_000);
            let mut out = None;
            for f in Fragments::new(message.cmd, &message.data, len).unwrap() {
                assert!(f.len() <= len.get());
                out = again.push(&f, 0).unwrap();
            }
            assert_eq!(out.as_ref(), Some(&message));
        }
    }
});
