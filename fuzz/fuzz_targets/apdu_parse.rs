//! Command and response APDU parsers on arbitrary bytes: never panic, and a
//! parsed command re-encodes to a command with the same meaning.
#![no_main]
use keybridge_transport::{Command, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Command::parse(data) {
        assert_eq!(Command::parse(&c.encode()).expect("re-parse"), c);
    }
    let _ = Response::parse(data);
});
