//! KB-SC1 through the card's dispatcher: what a radio link's card answers in
//! clear, inside the channel, and to frames that were replayed or altered.

mod common;

use common::*;
use keybridge_transport::secure::{self, PhoneSession, Protected};
use keybridge_transport::{transmit, Command, Response, StatusWord, TransmitOptions};
use p256::ecdsa::{SigningKey, VerifyingKey};

const CERT: &[u8] = include_bytes!("data/test-card-cert.der");

fn known_key() -> VerifyingKey {
    let scalar = hex::decode(include_str!("data/test-card-key.hex").trim()).unwrap();
    *SigningKey::from_slice(&scalar).unwrap().verifying_key()
}

/// A card with the known key and its certificate, as enrolment leaves it,
/// then switched to radio mode (secure channel required).
fn enrolled_radio_card() -> Harness {
    let mut card = Harness::with_known_key();
    card.transcript(&[(SELECT, "01 9000"), (VERIFY_OK, "9000")]);
    let put = Command::new(0, 0xDA, 0, 2).with_data(CERT.to_vec());
    let r = transmit(&mut card, &put, TransmitOptions::default()).unwrap();
    assert_eq!(r.sw, StatusWord::Ok);
    card.card = std::mem::take(&mut card.card).require_secure_messaging(true);
    card
}

fn establish(card: &mut Harness) -> PhoneSession {
    let mut rng = rand::thread_rng();
    secure::establish(
        card,
        TransmitOptions::default(),
        CERT,
        &known_key(),
        &mut rng,
    )
    .unwrap()
}

fn protected(card: &mut Harness, session: &mut PhoneSession, command: &Command) -> Response {
    let mut channel = Protected {
        inner: card,
        session,
        options: TransmitOptions::default(),
    };
    transmit(&mut channel, command, TransmitOptions::default()).unwrap()
}

fn sign_command(payload: &[u8]) -> Command {
    Command::new(0, 0x2A, 0x9E, 0x9A)
        .with_data(payload.to_vec())
        .with_le(256)
}

/// On a radio link the PIN and the payload are refused in clear (6987);
/// SELECT and GET DATA (public objects) still work.
#[test]
fn a_radio_card_refuses_pin_and_sign_in_clear() {
    let mut card = enrolled_radio_card();
    let payload = hex::encode(long_payload());
    let sign = format!("002A9E9A 00{:04X} {payload} 0000", payload.len() / 2);
    card.transcript(&[
        (SELECT, "01 9000"),
        (VERIFY_OK, "6987"),
        (&sign, "6987"),
        ("00470000", "6987"),
        ("00CA0003 00", "* 9000"),
        // An envelope before any key agreement.
        ("84C20000 05 0000000100", "6988"),
    ]);
    assert_eq!(card.status().counter, 0);
}

/// The whole payment conversation inside the channel: the card signs.
#[test]
fn verify_and_sign_inside_the_channel() {
    let mut card = enrolled_radio_card();
    card.transcript(&[(SELECT, "01 9000")]);
    let mut session = establish(&mut card);
    assert!(card.card.has_secure_session());
    let verify = Command::new(0, 0x20, 0, 0x80).with_data(PIN.as_bytes().to_vec());
    assert_eq!(
        protected(&mut card, &mut session, &verify).sw,
        StatusWord::Ok
    );
    let payload = long_payload();
    let r = protected(&mut card, &mut session, &sign_command(&payload));
    assert_eq!(r.sw, StatusWord::Ok);
    let public = known_key().to_encoded_point(false).as_bytes().to_vec();
    assert_eq!(check_signature(&r.data, &payload, &public), 1);
    // A wrong PIN inside the channel is still counted.
    let wrong = Command::new(0, 0x20, 0, 0x80).with_data(b"9999".to_vec());
    assert_eq!(
        protected(&mut card, &mut session, &wrong).sw,
        StatusWord::VerifyFailed(2)
    );
}

/// The link lost the answer to SIGN and the phone sends the same envelope
/// again: the card answers from its cache and does not sign a second time.
#[test]
fn a_retransmitted_sign_is_answered_from_cache_not_signed_twice() {
    let mut card = enrolled_radio_card();
    card.transcript(&[(SELECT, "01 9000")]);
    let mut session = establish(&mut card);
    let verify = Command::new(0, 0x20, 0, 0x80).with_data(PIN.as_bytes().to_vec());
    protected(&mut card, &mut session, &verify);
    let (counter, envelope) = session
        .seal(&sign_command(&long_payload()).encode())
        .unwrap();
    let first = transmit(&mut card, &envelope, TransmitOptions::default()).unwrap();
    let again = transmit(&mut card, &envelope, TransmitOptions::default()).unwrap();
    assert_eq!(first, again);
    assert_eq!(card.holder.asked, 1, "the holder was asked once");
    assert_eq!(card.status().counter, 1, "one signature");
    let inner = Response::parse(&session.open(counter, &again.data).unwrap()).unwrap();
    assert_eq!(inner.sw, StatusWord::Ok);
}

/// An altered envelope is refused and ends the session: nothing more is
/// answered under those keys; a new key agreement is needed.
#[test]
fn an_altered_envelope_is_refused_and_closes_the_session() {
    let mut card = enrolled_radio_card();
    card.transcript(&[(SELECT, "01 9000")]);
    let mut session = establish(&mut card);
    let verify = Command::new(0, 0x20, 0, 0x80).with_data(PIN.as_bytes().to_vec());
    let (_, mut envelope) = session.seal(&verify.encode()).unwrap();
    envelope.data[10] ^= 0x01;
    let r = transmit(&mut card, &envelope, TransmitOptions::default()).unwrap();
    assert_eq!(r.sw, StatusWord::SecureMessagingIncorrect);
    assert!(!card.card.has_secure_session());
    let (_, next) = session.seal(&verify.encode()).unwrap();
    let r = transmit(&mut card, &next, TransmitOptions::default()).unwrap();
    assert_eq!(r.sw, StatusWord::SecureMessagingIncorrect);
    // Nothing was verified: the PIN retries are untouched.
    assert_eq!(card.status().pin_retries_left, 3);
    // A fresh key agreement works again.
    let mut session = establish(&mut card);
    assert_eq!(
        protected(&mut card, &mut session, &verify).sw,
        StatusWord::Ok
    );
}

/// A card with no certificate cannot prove itself (6A88), and KEY AGREEMENT
/// needs a selected applet (6985); class 80/84 carry nothing else (6E00).
#[test]
fn key_agreement_needs_a_selected_enrolled_applet() {
    let mut card = Harness::with_known_key();
    let (_, command) = secure::PhoneHandshake::start(&mut rand::thread_rng());
    let ka = hex::encode_upper(command.encode());
    card.transcript(&[
        (&ka, "6985"),
        (SELECT, "01 9000"),
        (&ka, "6A88"),
        ("80CA0003 00", "6E00"),
        ("84CA0003 00", "6E00"),
        ("80860000 03 010100 00", "6A88"),
    ]);
    let mut enrolled = enrolled_radio_card();
    enrolled.transcript(&[
        (SELECT, "01 9000"),
        ("80860000 03 010100 00", "6A80"),
        ("80860000 02 0101 00", "6A80"),
    ]);
}
