//! The OCRA suite parser (`ocra::Suite::parse`) behind the card's PUT DATA
//! OCRA (`applet::split_ocra_put_data`), and the computation with what it
//! parsed. The input is PUT DATA OCRA's data: suite length, suite, then the
//! secret; the rest after a 0x00 in the secret is the question. Never
//! panics; a parsed suite keeps its text, parses again to itself, and its
//! parts are in RFC 6287's ranges; with every input the suite names, the
//! response is the suite's number of digits (or the whole HMAC in hex), and
//! verifies; otherwise the refusal names the key or the question.
#![no_main]
use keybridge_proto::applet::{ocra_put_data, split_ocra_put_data};
use keybridge_proto::ocra::{
    compute, verify, HashAlgorithm, Inputs, OcraError, Suite, KEY_LEN_MAX,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((text, rest)) = split_ocra_put_data(data) else {
        return;
    };
    assert_eq!(ocra_put_data(text, rest).as_deref(), Some(data));
    let Ok(suite) = Suite::parse(text) else {
        return;
    };
    assert_eq!(suite.as_str(), text);
    assert_eq!(suite.to_string(), text);
    assert_eq!(Suite::parse(suite.as_str()).as_ref(), Ok(&suite));
    assert!(suite.digits() == 0 || (4..=10).contains(&suite.digits()));
    assert!((4..=64).contains(&suite.question_len()));
    assert!(suite.session_len().is_none_or(|n| (1..=512).contains(&n)));
    assert!(suite
        .time_step()
        .is_none_or(|t| (1..=48 * 3600).contains(&t.seconds())));

    let (key, question) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let Ok(question) = std::str::from_utf8(question) else {
        return;
    };
    let pin_hash = suite.pin_hash().map(|h| h.digest(b"1234"));
    let session_len = suite.session_len().map_or(0, usize::from);
    let inputs = Inputs {
        counter: suite.uses_counter().then_some(0x0102_0304_0506_0708),
        question,
        pin_hash: pin_hash.as_deref(),
        session: suite
            .session_len()
            .map(|_| &key[..key.len().min(session_len)]),
        time_steps: suite.time_step().map(|t| t.steps_at(1_700_000_000)),
    };
    match compute(&suite, key, &inputs) {
        Ok(response) => {
            if suite.digits() == 0 {
                let hmac_len = match suite.hash() {
                    HashAlgorithm::Sha1 => 20,
                    HashAlgorithm::Sha256 => 32,
                    HashAlgorithm::Sha512 => 64,
                };
                assert_eq!(response.len(), 2 * hmac_len);
                assert!(response.bytes().all(|b| b.is_ascii_hexdigit()));
            } else {
                assert_eq!(response.len(), usize::from(suite.digits()));
                assert!(response.bytes().all(|b| b.is_ascii_digit()));
            }
            assert_eq!(verify(&suite, key, &inputs, &response), Ok(true));
        }
        Err(OcraError::Key) => assert!(key.is_empty() || key.len() > KEY_LEN_MAX),
        Err(OcraError::Question) => {}
        Err(e) => panic!("inputs match the suite, yet {e:?}"),
    }
});
