//! Payments through the real PC/SC stack: `keybridge demo --transport pcsc`
//! attaches the card to pcscd's vpcd and the phone reaches it with PC/SC
//! (pcscd started by the demo when it is not running, and stopped after).
//! Each applet settles a payment; a wrong PIN and a tampered payload end
//! with no money moved, for the right reason.

mod common;

use std::process::Command;

use common::require_stack;

fn demo(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["demo", "--transport", "pcsc"])
        .args(args)
        .env_remove("KEYBRIDGE_LOG")
        .output()
        .expect("run keybridge demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "demo {args:?} exited {}:\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn assert_has(out: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(out.contains(w), "missing {w:?} in:\n{out}");
    }
}

#[test]
fn piv_payment_settles_through_pcscd() {
    if require_stack("piv_payment_settles_through_pcscd").is_none() {
        return;
    }
    let out = demo(&["--applet", "piv"]);
    assert_has(
        &out,
        &[
            "card reader ready at pcsc:Virtual PCD 00 00 (piv applet)",
            "PIV slot 9C, certificate written to 5FC10A",
            "Confirm payment on your security device",
            "PIV signature slot=\"9C\"",
            "card signed SHA-256 of the payload in PIV slot 9C",
            "outcome settled as expected; payer moved -1234, payee moved 1234",
        ],
    );
}

#[test]
fn piv_wrong_pin_is_63cx_and_moves_no_money() {
    if require_stack("piv_wrong_pin_is_63cx_and_moves_no_money").is_none() {
        return;
    }
    let out = demo(&["--applet", "piv", "--scenario", "wrong-pin"]);
    assert_has(
        &out,
        &[
            "PIV card refused the PIN sw=63C2",
            "outcome rejected (wrong_pin) as expected; payer moved 0, payee moved 0",
        ],
    );
    // The only 9C signature is enrolment's PKCS#10 request: none for the payment.
    assert_eq!(out.matches("PIV signature").count(), 1, "{out}");
}

#[test]
fn piv_tampered_payload_fails_verification() {
    if require_stack("piv_tampered_payload_fails_verification").is_none() {
        return;
    }
    let out = demo(&["--applet", "piv", "--scenario", "tamper"]);
    // The card signed (9000): only the server's check against its stored
    // payload stops the altered amount.
    assert_has(
        &out,
        &[
            "card signed SHA-256 of the payload in PIV slot 9C",
            "outcome rejected (bad_signature) as expected; payer moved 0, payee moved 0",
        ],
    );
}

#[test]
fn transaction_applet_payment_settles_through_pcscd() {
    if require_stack("transaction_applet_payment_settles_through_pcscd").is_none() {
        return;
    }
    let out = demo(&["--applet", "keybridge"]);
    assert_has(
        &out,
        &[
            "card reader ready at pcsc:Virtual PCD 00 00 (transaction_applet applet)",
            "card signed (counter 1",
            "outcome settled as expected; payer moved -1234, payee moved 1234",
        ],
    );
}

#[test]
fn transaction_applet_tampered_payee_and_wrong_pin_move_no_money() {
    if require_stack("transaction_applet_tampered_payee_and_wrong_pin_move_no_money").is_none() {
        return;
    }
    let out = demo(&["--scenario", "tamper-payee"]);
    assert_has(
        &out,
        &["outcome rejected (bad_signature) as expected; payer moved 0, payee moved 0"],
    );
    let out = demo(&["--scenario", "wrong-pin"]);
    assert_has(
        &out,
        &["outcome rejected (wrong_pin) as expected; payer moved 0, payee moved 0"],
    );
}
