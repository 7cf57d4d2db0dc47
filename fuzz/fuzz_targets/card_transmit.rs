//! `transmit`, the phone's side of an exchange (chaining, `61xx` GET
//! RESPONSE, `6Cxx` resend), against a card that answers arbitrary bytes.
//! Never panics and always ends; every command it sends parses as an APDU,
//! chained pieces carry at most 255 bytes and extended ones only when
//! allowed; a response gathered over GET RESPONSE rounds is never longer
//! than the bound asked for (one answer alone is bounded by the link).
//!
//! Input: an options byte (bit 0 extended length, bits 1..3 pick the
//! response bound), two bytes of command data length, then the card's
//! answers, each `[len hi][len lo][bytes]`; when they run out the card is gone.
#![no_main]
use keybridge_transport::{transmit, CardChannel, Command, LinkError, TransmitOptions};
use libfuzzer_sys::fuzz_target;

struct ScriptedCard<'a> {
    answers: &'a [u8],
    extended_length: bool,
    sent: usize,
    largest_answer: usize,
}

impl CardChannel for ScriptedCard<'_> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
        self.sent += 1;
        let parsed = Command::parse(command).expect("the phone sends well-formed APDUs");
        if !self.extended_length {
            assert!(
                parsed.data.len() <= 255,
                "extended APDU on a short-only link"
            );
        }
        let [hi, lo, rest @ ..] = self.answers else {
            return Err(LinkError::CardGone);
        };
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let (answer, rest) = rest.split_at(n);
        self.answers = rest;
        self.largest_answer = self.largest_answer.max(answer.len());
        Ok(answer.to_vec())
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, hi, lo, answers @ ..] = data else {
        return;
    };
    let options = TransmitOptions {
        extended_length: flags & 1 == 1,
        response_len_max: [0, 1, 2, 255, 256, 257, 4096, 65_536][usize::from((flags >> 1) & 7)],
    };
    let data_len = usize::from(u16::from_be_bytes([*hi, *lo])) % 1200;
    let command = Command::new(0x00, 0x2A, 0x9E, 0x9A)
        .with_data(vec![0xAB; data_len])
        .with_le(256);
    let mut card = ScriptedCard {
        answers,
        extended_length: options.extended_length,
        sent: 0,
        largest_answer: 0,
    };
    let max_calls = answers.len() / 2 + 1;
    if let Ok(response) = transmit(&mut card, &command, options) {
        let len = response.data.len();
        assert!(len <= options.response_len_max || len + 2 <= card.largest_answer);
    }
    assert!(card.sent <= max_calls, "more exchanges than answers");
});
