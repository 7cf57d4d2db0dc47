//! The strict BER-TLV reader on arbitrary bytes: never panics, always ends.
#![no_main]
use keybridge_proto::tlv::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    while let Ok(Some(_)) = r.next_tlv() {}
});
