//! SIGN CSR and the OCRA mode as hex transcripts: what the card signs (only a
//! request info carrying its own key), what it refuses, and that an OCRA
//! answer is RFC 6287 over the payload's SHA-256 and changes with the payload.

mod common;

use common::*;
use keybridge_proto::applet::OcraAnswer;
use keybridge_proto::ocra::{self, Inputs, Suite};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};

fn apdu(header: &str, data: &[u8]) -> String {
    // Extended length keeps every case in one command.
    let len = u16::try_from(data.len()).unwrap();
    format!("{header} 00{len:04X} {} 0000", hex::encode(data))
}

fn public_key(card: &mut Harness) -> Vec<u8> {
    card.transcript(&[("00CA0001 00", "* 9000")]).remove(0)
}

/// The card signs the request info built for its key, with the PIN, once.
#[test]
fn sign_csr_signs_only_a_request_for_the_cards_own_key() {
    let mut card = Harness::with_known_key();
    card.transcript(&[(SELECT, "01 9000")]);
    let point = public_key(&mut card);
    let info = keybridge_proto::csr::certification_request_info("card", &point).unwrap();
    let sign = apdu("002A9E10", &info);

    // No PIN: refused.
    card.transcript(&[(&sign, "6982")]);
    card.transcript(&[(VERIFY_OK, "9000")]);
    let der = card.transcript(&[(&sign, "* 9000")]).remove(0);
    let key = VerifyingKey::from_sec1_bytes(&point).unwrap();
    key.verify(&info, &Signature::from_der(&der).unwrap())
        .expect("signature over the request info");
    // The PIN was consumed.
    card.transcript(&[(&sign, "6982")]);

    // Not for this key, a payment payload, trailing bytes: 6A80, and each
    // consumes the PIN like any signing command.
    let mut other = point.clone();
    other[5] ^= 1;
    let foreign = keybridge_proto::csr::certification_request_info("card", &other).unwrap();
    let payload = sample_payload().encode().unwrap();
    let mut trailing = info.clone();
    trailing.push(0);
    for data in [foreign, payload, trailing] {
        card.transcript(&[(VERIFY_OK, "9000"), (&apdu("002A9E10", &data), "6A80")]);
    }
    // The assembled request verifies with an independent parser.
    let der = {
        card.transcript(&[(VERIFY_OK, "9000")]);
        card.transcript(&[(&sign, "* 9000")]).remove(0)
    };
    let csr = keybridge_proto::csr::assemble(&info, &der);
    assert_eq!(csr[0], 0x30);
    assert!(csr.len() > info.len() + der.len());
}

const SUITE: &str = "OCRA-1:HOTP-SHA256-8:C-QH64-T30S";
const SECRET: &[u8] = b"0123456789abcdef0123456789ABCDEF";

fn put_ocra(card: &mut Harness, suite: &str, secret: &[u8]) -> String {
    let data = keybridge_proto::applet::ocra_put_data(suite, secret).unwrap();
    card.send(&apdu("00DA0004", &data))
}

/// PUT DATA OCRA needs the PIN and refuses suites the card cannot answer;
/// OCRA RESPONSE shows the payload, spends the counter, answers RFC 6287.
#[test]
fn ocra_response_is_rfc6287_over_the_payload_hash() {
    let mut card = Harness::with_known_key_and_counter(4);
    card.transcript(&[(SELECT, "01 9000")]);
    let payload = sample_payload().encode().unwrap();
    let respond = apdu("00880000", &payload);
    // Nothing stored yet.
    card.transcript(&[(VERIFY_OK, "9000"), (&respond, "6A88")]);
    assert_eq!(put_ocra(&mut card, SUITE, SECRET), "6982");
    card.transcript(&[(VERIFY_OK, "9000")]);
    for (suite, secret) in [
        ("OCRA-1:HOTP-SHA256-8:C-QH64-PSHA1", SECRET),
        ("OCRA-1:HOTP-SHA256-8:C-QH64-S064", SECRET),
        ("OCRA-9:HOTP-SHA256-8:C-QH64", SECRET),
        (SUITE, &b""[..]),
    ] {
        assert_eq!(put_ocra(&mut card, suite, secret), "6A80", "{suite}");
    }
    let counters_saves = card.store.counters_saves();
    assert_eq!(put_ocra(&mut card, SUITE, SECRET), "9000");
    assert_eq!(card.store.counters_saves(), counters_saves, "a whole save");

    // PUT DATA leaves the PIN verified (as for certificates); the response consumes it.
    let data = card.transcript(&[(&respond, "* 9000")]).remove(0);
    // The counter was spent by a counters save, before the response.
    assert_eq!(card.store.counters_saves(), counters_saves + 1);
    assert_eq!(card.store.saved().unwrap().counter(), 5);
    card.transcript(&[(&respond, "6982")]);
    let answer = OcraAnswer::decode(&data).unwrap();
    assert_eq!(answer.counter, 5, "the counter moves on from 4");
    assert_eq!(answer.time_step, NOW_UNIX_S / 30);
    let suite = Suite::parse(SUITE).unwrap();
    let expected = |bytes: &[u8], c: u64| {
        ocra::compute(
            &suite,
            SECRET,
            &Inputs {
                counter: Some(c),
                question: &ocra::payload_question(bytes),
                time_steps: Some(NOW_UNIX_S / 30),
                ..Inputs::default()
            },
        )
        .unwrap()
    };
    assert_eq!(answer.response, expected(&payload, 5));
    assert_eq!(card.holder.shown.len(), 1, "the payload was shown");
    assert_eq!(card.status().counter, 5);

    // Another amount: another response, next counter.
    let mut changed = sample_payload();
    changed.amount.minor_units += 1;
    let changed = changed.encode().unwrap();
    card.transcript(&[(VERIFY_OK, "9000")]);
    let data = card
        .transcript(&[(&apdu("00880000", &changed), "* 9000")])
        .remove(0);
    let second = OcraAnswer::decode(&data).unwrap();
    assert_eq!(second.counter, 6);
    assert_eq!(second.response, expected(&changed, 6));
    assert_ne!(second.response, expected(&payload, 6));

    // The holder declines: 6985, and the counter is not spent.
    card.holder.approve = false;
    card.transcript(&[(VERIFY_OK, "9000"), (&respond, "6985")]);
    assert_eq!(card.status().counter, 6);
    // Not a payload: 6A80. Wrong P1-P2: 6A86.
    card.holder.approve = true;
    card.transcript(&[(VERIFY_OK, "9000"), (&apdu("00880000", b"junk"), "6A80")]);
    card.transcript(&[(VERIFY_OK, "9000"), (&apdu("00880100", &payload), "6A86")]);

    // The secret survives a save and load, and is never readable.
    let saved = card.store.saved().unwrap();
    let json = String::from_utf8(saved.to_json().to_vec()).unwrap();
    assert!(json.contains("ocra_suite"));
    card.transcript(&[("00CA0004 00", "6A88")]);
}
