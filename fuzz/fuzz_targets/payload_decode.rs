//! The confirmation payload decoder on arbitrary bytes: never panics, and
//! whatever it accepts re-encodes to exactly the same bytes (canonical form).
#![no_main]
use keybridge_proto::ConfirmationPayload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ConfirmationPayload::decode(data) {
        assert_eq!(p.encode().expect("decoded payloads encode"), data);
    }
});
