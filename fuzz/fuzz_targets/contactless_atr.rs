//! The contactless ATR parser (`ContactlessAtr::parse`) and what the phone
//! decides from it (`AtrFraming`, `CardLimits`), on arbitrary bytes from a
//! PC/SC reader; the same bytes also as a card's `7F66` extended length
//! information. Never panics; an accepted ATR is exactly the PC/SC part 3
//! encoding of what was parsed (T0, TD1, TD2, historical bytes, a TCK that
//! makes the XOR zero); AtrFraming is contactless exactly when the parse
//! succeeds; the frame plan and transmit options agree for command sizes up
//! to the extended maximum.
#![no_main]
use keybridge_transport::contactless::{
    AtrFraming, CardLimits, ContactlessAtr, FramePlan, StorageStandard,
};
use libfuzzer_sys::fuzz_target;

/// PC/SC part 3's ATR for what was parsed (the parser's inverse).
fn encode(atr: &ContactlessAtr) -> Vec<u8> {
    let historical = match atr {
        ContactlessAtr::Iso14443_4 { historical } => historical.clone(),
        ContactlessAtr::Storage { standard, name } => {
            let ss = match *standard {
                StorageStandard::Iso14443APart3 => 0x03,
                StorageStandard::Iso14443BPart3 => 0x07,
                StorageStandard::Iso15693Part3 => 0x0B,
                StorageStandard::FeliCa => 0x11,
                StorageStandard::Other(b) => b,
            };
            let mut h = vec![0x80, 0x4F, 0x0C, 0xA0, 0x00, 0x00, 0x03, 0x06, ss];
            h.extend_from_slice(&name.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0]);
            h
        }
    };
    let n = u8::try_from(historical.len()).expect("at most 15 historical bytes");
    let mut out = vec![0x3B, 0x80 | n, 0x80, 0x01];
    out.extend_from_slice(&historical);
    let tck = out[1..].iter().fold(0, |x, b| x ^ b);
    out.push(tck);
    out
}

/// Command data sizes worth asking about: the short/extended edges and two
/// from the input.
fn sizes(data: &[u8]) -> [usize; 8] {
    let from = |i: usize| {
        usize::from(u16::from_be_bytes([
            data.get(i).copied().unwrap_or(0),
            data.get(i + 1).copied().unwrap_or(0),
        ]))
    };
    [0, 255, 256, 600, 4096, 65_535, from(0), from(2)]
}

fn check_limits(limits: &CardLimits, data: &[u8]) {
    for n in sizes(data) {
        let plan = limits.plan(n);
        match limits.transmit_options(n) {
            None => assert_eq!(plan, FramePlan::TooLarge),
            Some(options) => {
                assert_eq!(options.extended_length, plan == FramePlan::Extended);
                assert!(options.response_len_max >= 256);
            }
        }
        if n <= 255 {
            assert_eq!(plan, FramePlan::Short);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = ContactlessAtr::parse(data);
    let framing = AtrFraming::from_atr(data);
    match &parsed {
        Ok(atr) => {
            assert_eq!(encode(atr), data);
            assert!(matches!(&framing, AtrFraming::Contactless { atr: a, .. } if a == atr));
            let _ = atr.card_capabilities();
            assert_eq!(
                atr.speaks_apdus(),
                matches!(atr, ContactlessAtr::Iso14443_4 { .. })
            );
            check_limits(&CardLimits::from_atr(atr), data);
        }
        Err(_) => assert_eq!(framing, AtrFraming::Contact),
    }
    for n in sizes(data) {
        let _ = framing.transmit_options(n);
    }
    let base = match &parsed {
        Ok(atr) => CardLimits::from_atr(atr),
        Err(_) => CardLimits::default(),
    };
    if let Ok(limits) = base.with_extended_length_info(data) {
        for max in [limits.command_len_max, limits.response_len_max] {
            assert!(max.is_some_and(|m| m <= 0xFF_FFFF));
        }
        check_limits(&limits, data);
    }
});
