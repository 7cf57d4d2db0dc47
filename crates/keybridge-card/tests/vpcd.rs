//! The card process over a real socket: `run()` connects to a vpcd reader
//! (the relay's `VpcdReader` on loopback), pays, is restarted on the same
//! state file and carries on with the next counter.

mod common;

use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use keybridge_card::{run, CardError, CardOptions, Policy, ATR};
use keybridge_proto::applet::{self, CardStatus};
use keybridge_transport::vpcd::VpcdReader;
use keybridge_transport::{transmit, Command, Response, StatusWord, TransmitOptions};

fn start_card(state_path: &Path, reader: &VpcdReader) -> JoinHandle<Result<(), CardError>> {
    let options = CardOptions {
        policy: Policy::Approve,
        init_pin: Some(PIN.into()),
        reconnect: false,
        ..CardOptions::new(state_path, reader.local_addr().unwrap().to_string())
    };
    std::thread::spawn(move || run(options))
}

fn send(reader: &mut VpcdReader, command: Command, options: TransmitOptions) -> Response {
    transmit(reader, &command, options).unwrap()
}

fn select_and_verify(reader: &mut VpcdReader) {
    let o = TransmitOptions::default();
    let select = Command::new(0, applet::INS_SELECT, 4, 0)
        .with_data(applet::AID.to_vec())
        .with_le(256);
    assert_eq!(send(reader, select, o), Response::ok(vec![1]));
    let verify = Command::new(0, applet::INS_VERIFY, 0, applet::P2_PIN).with_data(PIN.as_bytes());
    assert_eq!(send(reader, verify, o).sw, StatusWord::Ok);
}

fn sign(reader: &mut VpcdReader, payload: &[u8], extended_length: bool) -> Vec<u8> {
    let command = Command::new(0, applet::INS_SIGN, applet::P1_SIGN, applet::P2_SIGN)
        .with_data(payload.to_vec())
        .with_le(256);
    let options = TransmitOptions {
        extended_length,
        ..TransmitOptions::default()
    };
    let r = send(reader, command, options);
    assert_eq!(r.sw, StatusWord::Ok);
    r.data
}

fn status(reader: &mut VpcdReader) -> CardStatus {
    let get = Command::new(0, applet::INS_GET_DATA, 0, applet::OBJ_STATUS).with_le(256);
    CardStatus::decode(&send(reader, get, TransmitOptions::default()).data).unwrap()
}

#[test]
fn pays_over_vpcd_and_keeps_counting_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state_path = dir.path().join("card.json");
    let mut reader = VpcdReader::bind("127.0.0.1:0").unwrap();
    reader.set_timeout(Duration::from_secs(20));
    let payload = long_payload();

    // First run: creates the state with the initial PIN, enrolls, pays.
    let card = start_card(&state_path, &reader);
    reader.wait_for_card(Duration::from_secs(10)).unwrap();
    assert_eq!(reader.atr(), ATR);
    select_and_verify(&mut reader);
    let generate = Command::new(0, applet::INS_GENERATE_KEY, 0, 0).with_le(256);
    let public_key = send(&mut reader, generate, TransmitOptions::default()).data;
    assert_eq!(public_key.len(), 65);
    select_and_verify(&mut reader);
    let answer = sign(&mut reader, &payload, true);
    assert_eq!(check_signature(&answer, &payload, &public_key), 1);
    reader.disconnect();
    card.join().unwrap().unwrap();

    // Second run on the same file: same key, the counter goes on, the PIN
    // verified before the restart is not.
    let card = start_card(&state_path, &reader);
    reader.wait_for_card(Duration::from_secs(10)).unwrap();
    let select = Command::new(0, applet::INS_SELECT, 4, 0).with_data(applet::AID.to_vec());
    assert_eq!(
        send(&mut reader, select, TransmitOptions::default()).sw,
        StatusWord::Ok
    );
    assert_eq!(
        status(&mut reader),
        CardStatus {
            counter: 1,
            pin_retries_left: 3,
            pin_retries_max: 3,
            has_key: true
        }
    );
    let refused = Command::new(0, applet::INS_SIGN, applet::P1_SIGN, applet::P2_SIGN)
        .with_data(payload.clone());
    assert_eq!(
        send(&mut reader, refused, TransmitOptions::default()).sw,
        StatusWord::SecurityNotSatisfied
    );
    select_and_verify(&mut reader);
    // Chained short APDUs this time.
    let answer = sign(&mut reader, &payload, false);
    assert_eq!(check_signature(&answer, &payload, &public_key), 2);
    drop(reader);
    card.join().unwrap().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["card.json", "card.json.counters"],
        "only the state file and its counters"
    );
}

/// Without `reconnect`, a reader that is not there is an error, not a hang.
#[test]
fn no_reader_without_reconnect_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A port bound but not listening: connecting is refused, and no other
    // test can be given it while this socket lives. (A listener bound and
    // dropped freed its port for the next test's reader, which this card
    // then reached: seen once in CI, breaking both tests.)
    let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    closed
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = closed.local_addr().unwrap().as_socket().unwrap().port();
    let options = CardOptions {
        init_pin: Some(PIN.into()),
        reconnect: false,
        ..CardOptions::new(dir.path().join("card.json"), format!("127.0.0.1:{port}"))
    };
    assert!(matches!(run(options), Err(CardError::Connect { .. })));
}

/// Without a state file and without an initial PIN the card does not start.
#[test]
fn no_state_and_no_pin_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = CardOptions::new(dir.path().join("card.json"), "127.0.0.1:9");
    assert!(matches!(run(options), Err(CardError::StateMissing { .. })));
}
