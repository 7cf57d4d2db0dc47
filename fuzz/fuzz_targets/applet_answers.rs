//! The transaction applet's answers as the relay parses them
//! (`applet::CardStatus::decode`, `OcraAnswer::decode`,
//! `split_signature_response`) and PUT DATA OCRA's data as the card parses
//! it (`split_ocra_put_data`), on arbitrary bytes. Never panics; whatever
//! decodes re-encodes to the bytes it came from (CardStatus: the has-key
//! byte becomes 0 or 1) and decodes again to itself.
#![no_main]
use keybridge_proto::applet::{
    ocra_put_data, split_ocra_put_data, split_signature_response, CardStatus, OcraAnswer,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(status) = CardStatus::decode(data) {
        let encoded = status.encode();
        assert_eq!(encoded[..6], data[..6]);
        assert_eq!(encoded[6], u8::from(data[6] == 1));
        assert_eq!(CardStatus::decode(&encoded), Some(status));
    }
    if let Some(answer) = OcraAnswer::decode(data) {
        assert_eq!(answer.encode(), data);
        assert!(!answer.response.is_empty());
        assert!(answer.response.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    if let Some((counter, signature)) = split_signature_response(data) {
        assert_eq!(counter.to_be_bytes(), data[..4]);
        assert_eq!(signature, &data[4..]);
        assert!(signature.len() >= 8);
    }
    if let Some((suite, secret)) = split_ocra_put_data(data) {
        assert_eq!(ocra_put_data(suite, secret).as_deref(), Some(data));
    }
});
