//! The OCRA provisioning URI parser (`ocra::OtpauthUri::parse`: the file or
//! variable an operator hands to `keybridge admin`, and what the server's
//! provisioning route receives) and its base32, on arbitrary text. Never
//! panics; a parsed URI has a secret of 1..=KEY_LEN_MAX bytes, renders
//! (`to_uri`) to a URI that parses to the same value and renders the same
//! again; base32 decoding accepts only what encoding gives back (upper
//! case, padding dropped), and encoding decodes to itself.
#![no_main]
use keybridge_proto::ocra::{base32_decode, base32_encode, OtpauthUri, KEY_LEN_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_eq!(base32_decode(&base32_encode(data)).as_deref(), Some(data));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(bytes) = base32_decode(text) {
        assert_eq!(
            base32_encode(&bytes),
            text.trim_end_matches('=').to_ascii_uppercase()
        );
    }
    if let Ok(uri) = OtpauthUri::parse(text) {
        assert!((1..=KEY_LEN_MAX).contains(&uri.secret.len()));
        let rendered = uri.to_uri();
        let again = OtpauthUri::parse(&rendered).expect("a rendered URI parses");
        assert_eq!(again, uri);
        assert_eq!(again.to_uri(), rendered);
    }
});
