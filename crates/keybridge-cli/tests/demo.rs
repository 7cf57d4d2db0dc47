//! Every demo scenario, run as a user runs it: the real `keybridge` binary,
//! which starts server, card, relay and terminal as separate processes on
//! loopback sockets. Each test proves its scenario's outcome and that money
//! moved only when the payment settled (the demo checks balances before and
//! after and exits non-zero otherwise).

use std::process::Command;

fn demo(scenario: &str) -> String {
    demo_with(scenario, "applet")
}

fn demo_with(scenario: &str, method: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["demo", "--scenario", scenario, "--method", method])
        .env_remove("KEYBRIDGE_LOG")
        .output()
        .expect("run keybridge demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "demo {scenario} exited {}:\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn assert_outcome(stdout: &str, outcome: &str) {
    let want = format!("outcome {outcome} as expected");
    assert!(stdout.contains(&want), "expected {want:?} in:\n{stdout}");
}

#[test]
fn happy_path_settles_and_moves_exactly_the_amount() {
    let out = demo("happy");
    assert_outcome(&out, "settled");
    assert!(out.contains("payer moved -1234, payee moved 1234"), "{out}");
    // The flow passed through every role.
    for step in [
        "Confirm payment",
        "card signed (counter 1",
        "settled: CNY 12.34 paid to Corner Bookshop",
        "hash chain intact: ",
        "balanced: 3 accounts, ",
    ] {
        assert!(out.contains(step), "missing {step:?} in:\n{out}");
    }
}

#[test]
fn decline_on_the_card_moves_no_money() {
    let out = demo("decline");
    assert_outcome(&out, "rejected (declined)");
    assert!(out.contains("payer moved 0, payee moved 0"), "{out}");
    assert!(out.contains("hash chain intact: "), "{out}");
}

#[test]
fn wrong_pin_moves_no_money() {
    let out = demo("wrong-pin");
    assert_outcome(&out, "rejected (wrong_pin)");
}

#[test]
fn tampered_amount_fails_verification() {
    let out = demo("tamper");
    assert_outcome(&out, "rejected (bad_signature)");
    // The card really signed something: the attack got past the phone and the
    // card, and only the server's check against its stored payload stopped it.
    assert!(out.contains("card signed"), "{out}");
}

#[test]
fn tampered_payee_fails_verification() {
    let out = demo("tamper-payee");
    assert_outcome(&out, "rejected (bad_signature)");
}

#[test]
fn offline_phone_expires() {
    let out = demo("expired");
    assert_outcome(&out, "expired (expired)");
}

#[test]
fn insufficient_funds_fails() {
    let out = demo("insufficient-funds");
    assert_outcome(&out, "failed (insufficient_funds)");
    assert!(out.contains("payer moved 0, payee moved 0"), "{out}");
}

#[test]
fn an_ocra_mode_card_settles_a_payment() {
    let out = demo_with("happy", "ocra");
    assert_outcome(&out, "settled");
    assert!(out.contains("payer moved -1234, payee moved 1234"), "{out}");
    for step in [
        "as OCRA device",
        "Confirm payment",
        "card answered OCRA response",
        "(counter 1,",
    ] {
        assert!(out.contains(step), "missing {step:?} in:\n{out}");
    }
}

#[test]
fn an_ocra_response_for_a_tampered_amount_is_refused() {
    let out = demo_with("tamper", "ocra");
    assert_outcome(&out, "rejected (ocra_mismatch)");
    assert!(out.contains("payer moved 0, payee moved 0"), "{out}");
}

fn demo_args(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .arg("demo")
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

/// The whole payment over the simulated BLE link with the secure channel:
/// the demo reports the negotiated MTU, the fragments and the cipher suite.
#[test]
fn ble_sim_demo_settles_and_reports_the_link() {
    let out = demo_args(&["--transport", "ble-sim", "--mtu", "185"]);
    assert_outcome(&out, "settled");
    for step in [
        "BLE: ATT MTU 185, 182-byte fragments",
        "fragments sent",
        "KB-SC1: ECDHE-P256",
        "AES-256-GCM",
        "card signed (counter 1",
    ] {
        assert!(out.contains(step), "missing {step:?} in:\n{out}");
    }
}

/// 5% loss at the smallest MTU: retransmissions, still one payment.
#[test]
fn ble_sim_demo_settles_under_loss_at_mtu_23() {
    let out = demo_args(&[
        "--transport",
        "ble-sim",
        "--mtu",
        "23",
        "--drop-rate",
        "0.05",
        "--seed",
        "3",
    ]);
    assert_outcome(&out, "settled");
    assert!(out.contains("BLE: ATT MTU 23, 20-byte fragments"), "{out}");
    assert!(out.contains("payer moved -1234, payee moved 1234"), "{out}");
}

/// Piped into a reader that stops early (`keybridge demo | head -1`), the
/// demo stops as a Unix tool stopped by SIGPIPE does: exit status 141, no
/// panic report, its working directory removed and none of the processes
/// it started left running. (`println!` on the closed pipe used to panic
/// with a backtrace, exit 101.)
#[test]
fn a_reader_that_stops_early_ends_the_demo_quietly() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .arg("demo")
        .env_remove("KEYBRIDGE_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keybridge demo");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let workdir = first
        .split("working directory ")
        .nth(1)
        .unwrap_or_else(|| panic!("{first}"))
        .trim()
        .to_owned();
    // The reader is gone (dropped with the BufReader).
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!std::path::Path::new(&workdir).exists(), "{workdir} left");
    let left = Command::new("pgrep")
        .args(["-f", &workdir])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
