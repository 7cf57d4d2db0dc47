//! Amounts and currency codes as a terminal or an API client sends them:
//! `Currency::from_bytes` on the first three bytes and `Money::parse_major`
//! on the rest. Never panics; an accepted code is the code given and looks
//! itself up again; an accepted amount formats (`major_string`) to text that
//! parses to the same amount, and formatting is stable. When the three
//! bytes are no known code, the first byte picks CNY, JPY or KWD (exponents
//! 2, 0, 3).
#![no_main]
use keybridge_proto::{Currency, Money};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(code) = data.get(..3) else {
        return;
    };
    let currency = match Currency::from_bytes(code) {
        Ok(c) => {
            assert_eq!(c.as_bytes(), code);
            assert_eq!(Currency::from_code(c.code()), Ok(c));
            c
        }
        Err(_) => {
            let fallback = ["CNY", "JPY", "KWD"][usize::from(code[0] % 3)];
            Currency::from_code(fallback).expect("a known code")
        }
    };
    let Ok(text) = std::str::from_utf8(&data[3..]) else {
        return;
    };
    if let Ok(money) = Money::parse_major(text, currency) {
        assert_eq!(money.currency, currency);
        let formatted = money.major_string();
        let again = Money::parse_major(&formatted, currency).expect("formatted amounts parse");
        assert_eq!(again, money);
        assert_eq!(again.major_string(), formatted);
        assert_eq!(money.to_string(), format!("{currency} {formatted}"));
    }
});
