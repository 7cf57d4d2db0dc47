//! The relay's card conversations (keybridge-relay's `driver` and `piv`)
//! against a card that answers arbitrary bytes, through the public
//! `CardLink::InProcess`: GET DATA status; SELECT, VERIFY and SIGN or OCRA
//! RESPONSE for the transaction applet; for PIV, SELECT, VERIFY and GENERAL
//! AUTHENTICATE (the signature in the `7C` dynamic authentication
//! template), GENERATE (the `7F49` public key template) and the 3DES
//! management-key challenge. Never panics and always ends; a transaction
//! signature is at least 8 bytes, a generated key is 65 bytes starting
//! `04`, and the management key never authenticates a card that does not
//! hold it. Needs feature `relay` (it builds the relay and its HTTP stack).
//!
//! Input: a byte that picks the conversation, then the card's answers, each
//! `[len hi][len lo][bytes]`; when they run out the card is gone.
#![no_main]
use keybridge_relay::link::{CardLink, InProcessCard};
use keybridge_relay::{driver, piv, SignOutcome};
use keybridge_transport::{CardChannel, LinkError};
use libfuzzer_sys::fuzz_target;

struct ScriptedCard {
    answers: Vec<u8>,
    at: usize,
}

impl CardChannel for ScriptedCard {
    fn transmit_raw(&mut self, _command: &[u8]) -> Result<Vec<u8>, LinkError> {
        let [hi, lo, rest @ ..] = &self.answers[self.at..] else {
            return Err(LinkError::CardGone);
        };
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let answer = rest[..n].to_vec();
        self.at += 2 + n;
        Ok(answer)
    }
}

const PAYLOAD: &[u8] = b"\x71\x03\x80\x01\x01";

fuzz_target!(|data: &[u8]| {
    let Some((&which, answers)) = data.split_first() else {
        return;
    };
    let card = ScriptedCard {
        answers: answers.to_vec(),
        at: 0,
    };
    let mut link = CardLink::InProcess(InProcessCard(Box::new(card)));
    match which % 6 {
        0 => {
            let _ = driver::status(&mut link);
        }
        1 => {
            if let Ok(SignOutcome::Signed { signature, .. }) =
                driver::sign_transaction(&mut link, b"1234", PAYLOAD)
            {
                assert!(signature.len() >= 8);
            }
        }
        2 => {
            if let Ok(SignOutcome::Ocra(answer)) =
                driver::ocra_response(&mut link, b"1234", PAYLOAD)
            {
                assert!(!answer.response.is_empty());
            }
        }
        3 => {
            let _ = piv::sign_payload(&mut link, b"123456", PAYLOAD);
        }
        4 => {
            if let Ok(key) = piv::generate_p256(&mut link, piv::SLOT_SIGNATURE) {
                assert_eq!(key.len(), 65);
                assert_eq!(key[0], 0x04);
            }
        }
        _ => {
            assert!(
                piv::authenticate_management(&mut link, &piv::MANAGEMENT_KEY_DEFAULT).is_err(),
                "a card without the management key passed its challenge"
            );
        }
    }
});
