//! The PIV applet through the dispatcher, as hex transcripts: each step is
//! what OpenSC or yubico-piv-tool sends (taken from `pcscd -a` logs of those
//! tools) and the answer SP 800-73-4 asks for.

mod common;

use common::{h, Scripted};
use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use des::TdesEde3;
use keybridge_card::MemoryStore;
use keybridge_card::{
    AutoApprove, Card, CardState, Context, PivApplet, PivMemoryStore, PivState, TransactionApplet,
};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

const SELECT_PIV: &str = "00A40400 05 A000000308 00";
const APT: &str = "612B4F06000010000100 79074F05A000000308 500D4B6579427269646765205049 56 AC09800103800111060100";
/// VERIFY 123456 (FF-padded), and a wrong PIN.
const VERIFY_PIN: &str = "00200080 08 313233343536FFFF";
const VERIFY_WRONG: &str = "00200080 08 393939393939FFFF";
const MGMT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

struct Piv {
    card: Card,
    store: PivMemoryStore,
    rng: StdRng,
}

impl Piv {
    /// A card with both applets; PIV PIN 123456, PUK 12345678.
    fn new() -> Piv {
        let mut rng = StdRng::seed_from_u64(11);
        let store = PivMemoryStore::new();
        let piv = PivState::new(b"123456", b"12345678", &mut rng).unwrap();
        let transaction = TransactionApplet::new(
            CardState::new(b"1234", &mut rng).unwrap(),
            Box::new(MemoryStore::new()),
        );
        let card = Card::new()
            .with_applet(Box::new(transaction))
            .with_applet(Box::new(PivApplet::new(piv, Box::new(store.clone()))));
        Piv { card, store, rng }
    }

    fn send(&mut self, apdu: &str) -> String {
        let mut holder = AutoApprove;
        let mut context = Context {
            holder: &mut holder,
            rng: &mut self.rng,
            now_unix_s: 1_700_000_000,
        };
        hex::encode_upper(self.card.process(&h(apdu), &mut context))
    }

    /// Sends each command and checks the answer (hex; a leading `*` matches
    /// any data between). Returns the data fields.
    fn transcript(&mut self, steps: &[(&str, &str)]) -> Vec<Vec<u8>> {
        steps
            .iter()
            .enumerate()
            .map(|(i, (command, expected))| {
                let answer = self.send(command);
                let expected = expected.replace(' ', "").to_uppercase();
                let ok = match expected.split_once('*') {
                    Some((head, tail)) => {
                        answer.len() >= head.len() + tail.len()
                            && answer.starts_with(head)
                            && answer.ends_with(tail)
                    }
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

    /// Mutual authentication with the management key, as yubico-piv-tool does it.
    fn authenticate(&mut self, key: &[u8; 24]) -> String {
        let cipher = TdesEde3::new_from_slice(key).unwrap();
        let answer = h(&self.send("0087039B 04 7C028000"));
        assert_eq!(&answer[..4], &[0x7C, 0x0A, 0x80, 0x08], "{answer:02X?}");
        let mut witness = GenericArray::clone_from_slice(&answer[4..12]);
        cipher.decrypt_block(&mut witness);
        let challenge = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        let answer = self.send(&format!(
            "0087039B 16 7C14 8008{} 8108{}",
            hex::encode(witness),
            hex::encode(challenge)
        ));
        if answer.len() == 4 {
            return answer;
        }
        let mut expected = GenericArray::from(challenge);
        cipher.encrypt_block(&mut expected);
        assert_eq!(
            answer,
            format!("7C0A8208{}9000", hex::encode_upper(expected))
        );
        "9000".into()
    }

    fn generate(&mut self, slot: &str) -> Vec<u8> {
        let data = &self.transcript(&[(&format!("004700{slot} 05 AC03800111 00"), "*9000")])[0];
        assert_eq!(&data[..5], &[0x7F, 0x49, 0x43, 0x86, 0x41]);
        data[5..].to_vec()
    }
}

fn digest_hex(message: &[u8]) -> String {
    hex::encode_upper(Sha256::digest(message))
}

fn sign_9c(digest: &str) -> String {
    format!("0087119C 26 7C24 8200 8120{digest} 00")
}

fn check_signature(answer: &[u8], public_key: &[u8], digest: &[u8]) {
    assert_eq!(answer[0], 0x7C);
    let der = &answer[4..];
    assert_eq!(answer[2], 0x82);
    assert_eq!(usize::from(answer[3]), der.len());
    let key = VerifyingKey::from_sec1_bytes(public_key).unwrap();
    key.verify_prehash(digest, &Signature::from_der(der).unwrap())
        .expect("the signature verifies over the digest");
}

/// SELECT by the 5-byte RID answers the application property template;
/// OpenSC then reads CCC, discovery and CHUID; missing objects are 6A82.
#[test]
fn select_answers_the_template_and_objects_are_readable() {
    let mut piv = Piv::new();
    let data = piv.transcript(&[
        (SELECT_PIV, &format!("{APT} 9000")),
        ("00CB3FFF 05 5C035FC107 00", "5333 * 9000"),
        (
            "00CB3FFF 03 5C017E 00",
            "7E124F0BA0000003080000100001005F2F024000 9000",
        ),
        ("00CB3FFF 05 5C035FC102 00", "533B * 9000"),
        ("00CB3FFF 05 5C035FC10C 00", "6A82"),
        ("00CB3FFF 05 5C035FC10A 00", "6A82"),
        // PIN-protected (printed information) before VERIFY.
        ("00CB3FFF 05 5C035FC109 00", "6982"),
        // Wrong P1-P2, not a tag list, no data.
        ("00CB0000 05 5C035FC107 00", "6A86"),
        ("00CB3FFF 05 5D035FC107 00", "6A80"),
        ("00CB3FFF 00", "6A80"),
        // YubiKey extensions yubico-piv-tool sends.
        ("00FD0000 00", "040307 9000"),
        ("00F80000 00", "* 9000"),
        ("00F70000 00", "6D00"),
    ]);
    assert_eq!(data[1][..2], [0x53, 0x33]);
    assert_eq!(data[11].len(), 4);
    // A too-small Le on GET DATA is answered 6Cxx (it is repeatable).
    piv.transcript(&[("00CB3FFF 03 5C017E 10", "6C14")]);
}

/// VERIFY: FF padding, the retry counter, 63Cx, 63C0 on the last try and
/// 6983 after; the PUK resets it; CHANGE REFERENCE DATA changes it.
#[test]
fn pin_retries_block_and_the_puk_unblocks() {
    let mut piv = Piv::new();
    piv.transcript(&[
        (SELECT_PIV, "*9000"),
        ("00200080", "63C3"),
        (VERIFY_PIN, "9000"),
        ("00200080", "9000"),
        // Reset the security status (P1 = FF).
        ("0020FF80", "9000"),
        ("00200080", "63C3"),
        // Malformed: unpadded, too short before padding, wrong reference.
        ("00200080 06 313233343536", "6A80"),
        ("00200080 08 3132333435FFFFFF", "6A80"),
        ("00200081 08 313233343536FFFF", "6A88"),
        ("00200180 08 313233343536FFFF", "6A86"),
        (VERIFY_WRONG, "63C2"),
        (VERIFY_WRONG, "63C1"),
        (VERIFY_WRONG, "63C0"),
        (VERIFY_PIN, "6983"),
        ("00200080", "6983"),
        // Wrong PUK counts down the PUK.
        ("002C0080 10 3837363534333231 393939393939FFFF", "63C2"),
        ("002C0080 10 3132333435363738 393939393939FFFF", "9000"),
        ("00200080", "63C3"),
        (VERIFY_WRONG, "9000"),
        // Change PIN back: old ‖ new.
        ("00240080 10 393939393939FFFF 313233343536FFFF", "9000"),
        (VERIFY_PIN, "9000"),
        ("00240080 10 000000000000FFFF 313233343536FFFF", "63C2"),
        ("00240080 08 313233343536FFFF", "6A80"),
        // Change the PUK.
        ("00240081 10 3132333435363738 3837363534333231", "9000"),
        ("002C0080 10 3132333435363738 313233343536FFFF", "63C2"),
    ]);
    let saved = piv.store.saved().expect("every change was saved");
    assert_eq!(saved.pin_retries_left(), 2);
    assert_eq!(saved.puk_retries_left(), 2);
}

/// A blocked PUK stays blocked: the PIN cannot be reset any more.
#[test]
fn a_blocked_puk_cannot_reset_the_pin() {
    let mut piv = Piv::new();
    piv.transcript(&[
        (SELECT_PIV, "*9000"),
        ("002C0080 10 0000000000000000 313233343536FFFF", "63C2"),
        ("002C0080 10 0000000000000000 313233343536FFFF", "63C1"),
        ("002C0080 10 0000000000000000 313233343536FFFF", "63C0"),
        ("002C0080 10 3132333435363738 313233343536FFFF", "6983"),
    ]);
}

/// The management key: witness + challenge (mutual), challenge only, and
/// what a wrong key or an out-of-order step gets.
#[test]
fn management_key_authentication() {
    let mut piv = Piv::new();
    piv.transcript(&[(SELECT_PIV, "*9000")]);
    // Nothing that needs the management key works before it.
    piv.transcript(&[
        ("0047009C 05 AC03800111 00", "6982"),
        ("00DB3FFF 09 5C035FC109 5302 0102", "6982"),
    ]);
    assert_eq!(piv.authenticate(&MGMT_KEY), "9000");
    piv.transcript(&[("00DB3FFF 09 5C035FC109 5302 0102", "9000")]);
    // A wrong key: the decrypted witness does not match.
    let mut wrong = MGMT_KEY;
    wrong[0] ^= 0x80; // bit 0 is DES parity: flip a key bit
    assert_eq!(piv.authenticate(&wrong), "6982");
    piv.transcript(&[("00DB3FFF 09 5C035FC109 5302 0102", "6982")]);
    // Second step without a first, and unknown algorithms.
    piv.transcript(&[
        (
            "0087039B 16 7C14 80080000000000000000 81080000000000000000",
            "6985",
        ),
        ("00870A9B 04 7C028000", "6A86"),
        ("00870399 04 7C028000", "6A86"),
        ("0087039B 04 7D028000", "6A80"),
    ]);
    // Challenge-only (OpenSC's external authenticate): the host encrypts.
    let answer = h(&piv.send("0087039B 04 7C028100"));
    assert_eq!(&answer[..4], &[0x7C, 0x0A, 0x81, 0x08]);
    let mut block = GenericArray::clone_from_slice(&answer[4..12]);
    TdesEde3::new_from_slice(&MGMT_KEY)
        .unwrap()
        .encrypt_block(&mut block);
    piv.transcript(&[(
        &format!("0087039B 0C 7C0A 8208{}", hex::encode(block)),
        "9000",
    )]);
    piv.transcript(&[("00DB3FFF 09 5C035FC109 5302 0304", "9000")]);
    // Re-selecting the applet ends the session.
    piv.transcript(&[
        (SELECT_PIV, "*9000"),
        ("00DB3FFF 09 5C035FC109 5302 0102", "6982"),
    ]);
}

/// GENERATE in 9C, a certificate written and read back, and signatures: 9C
/// needs a VERIFY before every signature; 9A once per session.
#[test]
fn generate_store_certificate_and_sign() {
    let mut piv = Piv::new();
    piv.transcript(&[(SELECT_PIV, "*9000")]);
    assert_eq!(piv.authenticate(&MGMT_KEY), "9000");
    // Only P-256 (11); RSA 2048 (07) and P-384 (14) are refused.
    piv.transcript(&[
        ("0047009C 05 AC03800107 00", "6A80"),
        ("0047009C 05 AC03800114 00", "6A80"),
        ("0047009B 05 AC03800111 00", "6A86"),
        ("0047009C 03 AB0100 00", "6A80"),
    ]);
    let key_9c = piv.generate("9C");
    let key_9a = piv.generate("9A");
    assert_ne!(key_9c, key_9a);
    // A certificate object (any bytes: the card stores objects as given).
    let cert = "3082000130";
    let put = format!("00DB3FFF 13 5C035FC10A 530C 7005{cert} 710100 FE00");
    piv.transcript(&[
        (&put, "9000"),
        (
            "00CB3FFF 05 5C035FC10A 00",
            &format!("530C7005{cert}710100FE00 9000"),
        ),
    ]);

    let digest = digest_hex(b"pay 12.34 to bookshop");
    piv.transcript(&[(&sign_9c(&digest), "6982"), (VERIFY_PIN, "9000")]);
    let signature = &piv.transcript(&[(&sign_9c(&digest), "*9000")])[0];
    check_signature(signature, &key_9c, &h(&digest));
    // The PIN was used up by that signature.
    piv.transcript(&[(&sign_9c(&digest), "6982"), (VERIFY_PIN, "9000")]);
    // 9A: once per session, any number of signatures.
    let sign_9a = format!("0087119A 26 7C24 8200 8120{digest} 00");
    let a1 = &piv.transcript(&[(&sign_9a, "*9000")])[0];
    let a2 = &piv.transcript(&[(&sign_9a, "*9000")])[0];
    check_signature(a1, &key_9a, &h(&digest));
    check_signature(a2, &key_9a, &h(&digest));
    // The 9C permission survived the 9A signatures: still one 9C signature.
    piv.transcript(&[(&sign_9c(&digest), "*9000"), (&sign_9c(&digest), "6982")]);
    // Malformed signing requests.
    piv.transcript(&[
        (VERIFY_PIN, "9000"),
        ("0087079C 26 7C24 8200 8120 0000000000000000000000000000000000000000000000000000000000000000 00", "6A80"),
        ("0087119C 04 7C028200 00", "6A80"),
        ("0087119C 27 7C25 8200 8121 000000000000000000000000000000000000000000000000000000000000000000 00", "6A80"),
        // 9D: the session PIN holds, but no key was generated there.
        ("0087119D 26 7C24 8200 8120 0000000000000000000000000000000000000000000000000000000000000000 00", "6A88"),
    ]);
    // No key in 9E yet: referenced data not found (9E needs no PIN).
    piv.transcript(&[(
        "0087119E 26 7C24 8200 8120 0000000000000000000000000000000000000000000000000000000000000000 00",
        "6A88",
    )]);
    let saved = piv.store.saved().unwrap();
    assert_eq!(saved.public_key_sec1(0x9C), Some(key_9c));
}

/// A certificate longer than a short APDU arrives by command chaining
/// (OpenSC and yubico-piv-tool chain at 255 bytes), and is read back with
/// 61xx / GET RESPONSE.
#[test]
fn long_objects_chain_in_and_out() {
    let mut piv = Piv::new();
    piv.transcript(&[(SELECT_PIV, "*9000")]);
    assert_eq!(piv.authenticate(&MGMT_KEY), "9000");
    let cert = vec![0xABu8; 600];
    let mut object = vec![0x70, 0x82, 0x02, 0x58];
    object.extend_from_slice(&cert);
    object.extend_from_slice(&[0x71, 0x01, 0x00, 0xFE, 0x00]);
    let mut data = vec![0x5C, 0x03, 0x5F, 0xC1, 0x05, 0x53, 0x82, 0x02, 0x61];
    data.extend_from_slice(&object);
    let chunks: Vec<&[u8]> = data.chunks(255).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let cla = if i + 1 == chunks.len() { "00" } else { "10" };
        let apdu = format!("{cla}DB3FFF {:02X} {}", chunk.len(), hex::encode(chunk));
        piv.transcript(&[(&apdu, "9000")]);
    }
    let mut read = piv
        .transcript(&[("00CB3FFF 05 5C035FC105 00", "*6100")])
        .remove(0);
    loop {
        let answer = piv.send("00C00000 00");
        let bytes = h(&answer);
        read.extend_from_slice(&bytes[..bytes.len() - 2]);
        if answer.ends_with("9000") {
            break;
        }
        assert!(
            answer.ends_with("6100") || answer[answer.len() - 4..].starts_with("61"),
            "{answer}"
        );
    }
    assert_eq!(read.len(), 4 + object.len());
    assert_eq!(&read[4..], &object[..]);
}

/// Both applets on one card: selecting one forgets the other's session, and
/// the transaction applet's PIN is not the PIV PIN.
#[test]
fn two_applets_keep_separate_sessions() {
    let mut piv = Piv::new();
    piv.transcript(&[
        (SELECT_PIV, "*9000"),
        (VERIFY_PIN, "9000"),
        ("00A40400 09 F04B42524944474501 00", "01 9000"),
        ("00200080 04 31323334", "9000"),
        (SELECT_PIV, "*9000"),
        ("00200080", "63C3"),
        // SELECT of an applet the card does not have (YubiKey management).
        ("00A40400 08 A000000527471117 00", "6A82"),
    ]);
}

/// Random commands after SELECT never panic and always end in a status word
/// (the fuzz target does the same at scale).
#[test]
fn arbitrary_commands_never_panic() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(
            &proptest::collection::vec(
                (
                    prop_oneof![
                        Just(0x20u8),
                        Just(0x24),
                        Just(0x2C),
                        Just(0x47),
                        Just(0x87),
                        Just(0xCB),
                        Just(0xDB),
                        Just(0xFF),
                        any::<u8>()
                    ],
                    any::<u8>(),
                    any::<u8>(),
                    proptest::collection::vec(any::<u8>(), 0..80),
                ),
                1..12,
            ),
            |commands| {
                let mut piv = Piv::new();
                piv.send(SELECT_PIV);
                let mut holder = Scripted::default();
                for (ins, p1, p2, data) in commands {
                    let mut apdu = vec![0x00, ins, p1, p2];
                    if !data.is_empty() {
                        apdu.push(u8::try_from(data.len()).unwrap());
                        apdu.extend_from_slice(&data);
                    }
                    let mut context = Context {
                        holder: &mut holder,
                        rng: &mut piv.rng,
                        now_unix_s: 0,
                    };
                    let answer = piv.card.process(&apdu, &mut context);
                    prop_assert!(answer.len() >= 2);
                }
                Ok(())
            },
        )
        .unwrap();
}

/// As for the transaction applet: a VERIFY whose try cannot be saved
/// answers `6581`, is not compared and is not counted, however many times.
#[test]
fn failed_saves_count_no_pin_try() {
    let mut piv = Piv::new();
    piv.transcript(&[(SELECT_PIV, &format!("{APT} 9000"))]);
    piv.store.set_failing(true);
    for _ in 0..4 {
        piv.transcript(&[(VERIFY_PIN, "6581"), (VERIFY_WRONG, "6581")]);
    }
    piv.store.set_failing(false);
    piv.transcript(&[(VERIFY_WRONG, "63C2"), (VERIFY_PIN, "9000")]);
}
