//! Shared test fixtures: a card in memory driven by hex transcripts.
#![allow(dead_code)] // each test file uses a different part of this module

use keybridge_card::{Card, CardState, Context, Holder, MemoryStore, Screen, TransactionApplet};
use keybridge_proto::{AccountId, Challenge, ConfirmationPayload, Currency, Money, TransactionId};
use keybridge_transport::{CardChannel, LinkError};
use rand::rngs::StdRng;
use rand::SeedableRng;

pub const PIN: &str = "1234";
/// `00 A4 04 00 09 <AID> 00`: SELECT the transaction applet.
pub const SELECT: &str = "00A40400 09 F04B42524944474501 00";
/// VERIFY with the right PIN, and with a wrong one.
pub const VERIFY_OK: &str = "00200080 04 31323334";
pub const VERIFY_WRONG: &str = "00200080 04 39393939";
pub const NOW_UNIX_S: u64 = 1_700_000_002;

/// A holder that answers from a switch and remembers every screen it saw.
#[derive(Debug, Default)]
pub struct Scripted {
    pub approve: bool,
    pub shown: Vec<Screen>,
    pub asked: usize,
}

impl Holder for Scripted {
    fn show(&mut self, screen: &Screen) {
        self.shown.push(screen.clone());
    }

    fn confirm(&mut self, _screen: &Screen) -> bool {
        self.asked += 1;
        self.approve
    }
}

/// A card with the transaction applet and a memory store, plus what a
/// command needs from outside: holder, seeded randomness, a fixed time.
pub struct Harness {
    pub card: Card,
    pub store: MemoryStore,
    pub holder: Scripted,
    pub rng: StdRng,
    pub now_unix_s: u64,
}

impl Harness {
    /// A fresh card: PIN 1234, 3 retries, no key.
    pub fn new() -> Harness {
        let mut rng = StdRng::seed_from_u64(42);
        let state = CardState::new(PIN.as_bytes(), &mut rng).unwrap();
        Harness::with_state(state)
    }

    pub fn with_state(state: CardState) -> Harness {
        let store = MemoryStore::new();
        let applet = TransactionApplet::new(state, Box::new(store.clone()));
        Harness {
            card: Card::new().with_applet(Box::new(applet)),
            store,
            holder: Scripted {
                approve: true,
                ..Scripted::default()
            },
            rng: StdRng::seed_from_u64(43),
            now_unix_s: NOW_UNIX_S,
        }
    }

    /// A card holding the key of `tests/data/test-card-key.hex`.
    pub fn with_known_key() -> Harness {
        Harness::with_known_key_and_counter(0)
    }

    /// [`Harness::with_known_key`] with the signature counter at `counter`.
    pub fn with_known_key_and_counter(counter: u32) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.json");
        let salt = "00".repeat(16);
        let state = format!(
            r#"{{"version":1,"private_key_hex":"{}","certificate_base64":null,
                "pin_salt_hex":"{salt}","pin_sha256_hex":"{}",
                "pin_retries_left":3,"pin_retries_max":3,"counter":{counter}}}"#,
            include_str!("../data/test-card-key.hex").trim(),
            pin_hash(&[0; 16], PIN.as_bytes()),
        );
        std::fs::write(&path, state).unwrap();
        Harness::with_state(CardState::load(&path).unwrap())
    }

    /// Raw bytes in, raw bytes out.
    pub fn send_bytes(&mut self, apdu: &[u8]) -> Vec<u8> {
        let mut context = Context {
            holder: &mut self.holder,
            rng: &mut self.rng,
            now_unix_s: self.now_unix_s,
        };
        let response = self.card.process(apdu, &mut context);
        assert!(response.len() >= 2, "every answer ends in a status word");
        response
    }

    /// Hex in (spaces ignored), hex out.
    pub fn send(&mut self, apdu_hex: &str) -> String {
        hex::encode_upper(self.send_bytes(&h(apdu_hex)))
    }

    /// Sends each command and checks its answer. An expected answer is hex
    /// (spaces ignored); a leading `*` stands for any data before the rest.
    /// Returns the answers' data fields.
    pub fn transcript(&mut self, steps: &[(&str, &str)]) -> Vec<Vec<u8>> {
        steps
            .iter()
            .enumerate()
            .map(|(i, (command, expected))| {
                let answer = self.send(command);
                let expected = expected.replace(' ', "").to_uppercase();
                let ok = match expected.strip_prefix('*') {
                    Some(tail) => answer.ends_with(tail),
                    None => answer == expected,
                };
                assert!(
                    ok,
                    "step {i}: {command}\n  expected {expected}\n  got      {answer}"
                );
                let bytes = h(&answer);
                bytes[..bytes.len() - 2].to_vec()
            })
            .collect()
    }

    /// The card's status object (GET DATA 03).
    pub fn status(&mut self) -> keybridge_proto::applet::CardStatus {
        let data = &self.transcript(&[("00CA0003 00", "* 9000")])[0];
        keybridge_proto::applet::CardStatus::decode(data).unwrap()
    }
}

/// Lets `keybridge_transport::transmit` drive the in-memory card.
impl CardChannel for Harness {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
        Ok(self.send_bytes(command))
    }
}

pub fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

/// The state file's PIN hash, computed independently of the card's code.
pub fn pin_hash(salt: &[u8], pin: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut d = Sha256::new();
    d.update(b"keybridge-card PIN v1\0");
    d.update(salt);
    d.update(pin);
    hex::encode(d.finalize())
}

pub fn sample_payload() -> ConfirmationPayload {
    ConfirmationPayload {
        origin: "keybridge.example".into(),
        transaction_id: TransactionId([7; 16]),
        challenge: Challenge([9; 32]),
        payer: AccountId::new("alice").unwrap(),
        payee: AccountId::new("bookshop").unwrap(),
        payee_name: "Corner Bookshop".into(),
        amount: Money::new(1234, Currency::from_code("CNY").unwrap()),
        order_id: "ORD-1".into(),
        description: "Two books".into(),
        created_at_unix_s: 1_700_000_000,
        expires_at_unix_s: 1_700_000_120,
    }
}

/// A payload long enough (> 255 bytes) to need extended length or chaining.
/// SIGN TRANSACTION for `payload` as a short APDU, in transcript hex.
pub fn sign_apdu(payload: &[u8]) -> String {
    format!("002A9E9A {:02X} {} 00", payload.len(), hex::encode(payload))
}

pub fn long_payload() -> Vec<u8> {
    let mut p = sample_payload();
    p.description = "A long order description that fills the card display: ".repeat(3)
        [..ConfirmationPayload::DESCRIPTION_LEN_MAX]
        .to_owned();
    p.payee_name = "Corner Bookshop of the Old Town, Books and Stationery".into();
    let bytes = p.encode().unwrap();
    assert!(bytes.len() > 255, "{}", bytes.len());
    bytes
}

/// Checks a SIGN answer: counter, then a DER ECDSA signature over
/// `signed_message(payload, counter)` by `public_key` (SEC1).
pub fn check_signature(answer: &[u8], payload: &[u8], public_key: &[u8]) -> u32 {
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::{Signature, VerifyingKey};
    let (counter, der) = keybridge_proto::applet::split_signature_response(answer).unwrap();
    let key = VerifyingKey::from_sec1_bytes(public_key).unwrap();
    let signature = Signature::from_der(der).unwrap();
    key.verify(
        &keybridge_proto::signed_message(payload, counter),
        &signature,
    )
    .expect("signature verifies over payload ‖ counter");
    // Bound to the counter: the same signature does not verify for another one.
    assert!(key
        .verify(
            &keybridge_proto::signed_message(payload, counter.wrapping_add(1)),
            &signature
        )
        .is_err());
    counter
}
