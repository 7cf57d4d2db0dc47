//! The state file: what a restarted card remembers, and how it is written.

mod common;

use std::path::Path;

use common::*;
use keybridge_card::{
    init_state, Card, CardError, CardState, FileStore, PivApplet, PivFileStore, PivState, PivStore,
    TransactionApplet,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// A card on a state file, as the process shell builds it.
fn card_on(path: &Path) -> Harness {
    let mut harness = Harness::new();
    let applet = TransactionApplet::new(
        CardState::load(path).unwrap(),
        Box::new(FileStore::new(path)),
    );
    harness.card = Card::new().with_applet(Box::new(applet));
    harness
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Key, counter and the wrong-PIN count survive a restart; every write is
/// atomic and leaves no temp file behind.
#[test]
fn a_restarted_card_keeps_key_counter_and_wrong_pin_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    init_state(&path, PIN).unwrap();

    let payload = sample_payload().encode().unwrap();
    let sign = format!(
        "002A9E9A {:02X} {} 00",
        payload.len(),
        hex::encode(&payload)
    );
    let mut card = card_on(&path);
    let answers = card.transcript(&[
        (SELECT, "01 9000"),
        (VERIFY_OK, "9000"),
        ("00470000", "* 9000"),
        (VERIFY_OK, "9000"),
        (&sign, "* 9000"),
        (VERIFY_WRONG, "63C2"),
    ]);
    let public_key = answers[2].clone();
    assert_eq!(check_signature(&answers[4], &payload, &public_key), 1);
    drop(card);
    assert_eq!(file_names(dir.path()), ["card.json"]);

    let mut card = card_on(&path);
    let answers = card.transcript(&[
        (SELECT, "01 9000"),
        ("00CA0003 00", "00000001 02 03 01 9000"),
        ("00CA0001 00", "* 9000"),
        (VERIFY_WRONG, "63C1"),
    ]);
    assert_eq!(answers[2], public_key);
    drop(card);

    let mut card = card_on(&path);
    let answers = card.transcript(&[
        (SELECT, "01 9000"),
        ("00200080", "63C1"),
        (VERIFY_OK, "9000"),
        (&sign, "* 9000"),
    ]);
    assert_eq!(check_signature(&answers[3], &payload, &public_key), 2);
    assert_eq!(file_names(dir.path()), ["card.json"]);
}

/// A right PIN with no SIGN after it: the file keeps the try VERIFY counted
/// (a card restarted from it has one try fewer, never one more) until the
/// applet is left, which writes the restore; a SIGN writes it with the counter.
#[test]
fn a_right_pin_is_written_back_by_the_next_save_or_on_leaving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    init_state(&path, PIN).unwrap();
    let retries_saved = || CardState::load(&path).unwrap().pin_retries_left();

    let mut card = card_on(&path);
    card.transcript(&[(SELECT, "01 9000"), (VERIFY_OK, "9000")]);
    assert_eq!(retries_saved(), 2);
    card_on(&path).transcript(&[(SELECT, "01 9000"), ("00200080", "63C2")]);
    card.card.reset();
    assert_eq!(retries_saved(), 3);

    let payload = sample_payload().encode().unwrap();
    let sign = format!(
        "002A9E9A {:02X} {} 00",
        payload.len(),
        hex::encode(&payload)
    );
    card.transcript(&[
        (SELECT, "01 9000"),
        (VERIFY_OK, "9000"),
        ("00470000", "* 9000"),
        (VERIFY_OK, "9000"),
    ]);
    assert_eq!(retries_saved(), 2);
    card.transcript(&[(&sign, "* 9000")]);
    let saved = CardState::load(&path).unwrap();
    assert_eq!((saved.pin_retries_left(), saved.counter()), (3, 1));
    assert_eq!(file_names(dir.path()), ["card.json"]);
}

/// `init` never overwrites: that would destroy a key and reset its counter.
#[test]
fn init_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    init_state(&path, PIN).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        init_state(&path, "5678"),
        Err(CardError::StateExists { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(matches!(
        init_state(&dir.path().join("other.json"), "12"),
        Err(CardError::BadPin)
    ));
    assert_eq!(file_names(dir.path()), ["card.json"]);
}

/// The file holds a salted hash, not the PIN, and only its owner may read it.
#[test]
fn the_state_file_keeps_no_pin_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    init_state(&path, "97531864").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("97531864"), "{text}");
    assert!(text.contains("\"version\": 3"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// A file from a newer (or unknown) format is refused with a clear error,
/// as is a corrupt one; a missing one says how to create it.
#[test]
fn load_refuses_unknown_versions_and_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    let err = CardState::load(&path).unwrap_err();
    assert!(matches!(err, CardError::StateMissing { .. }), "{err}");

    let state = CardState::new(PIN.as_bytes(), &mut StdRng::seed_from_u64(1)).unwrap();
    let text = String::from_utf8(state.to_json().to_vec()).unwrap();
    std::fs::write(&path, text.replace("\"version\": 3", "\"version\": 9")).unwrap();
    let err = CardState::load(&path).unwrap_err();
    assert!(
        matches!(
            err,
            CardError::UnsupportedVersion {
                found: 9,
                supported: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("version 9"), "{err}");

    std::fs::write(&path, text.replace("\"counter\": 0", "\"counter\": -1")).unwrap();
    let err = CardState::load(&path).unwrap_err();
    assert!(matches!(err, CardError::CorruptState { .. }), "{err}");
    std::fs::write(&path, "not json").unwrap();
    assert!(matches!(
        CardState::load(&path),
        Err(CardError::CorruptState { .. })
    ));
}

/// A save that cannot happen (the directory is gone) is an error, not a panic,
/// and the applet answers 6581.
#[test]
fn a_store_that_cannot_write_answers_6581() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    init_state(&path, PIN).unwrap();
    let mut card = card_on(&path);
    drop(dir);
    card.transcript(&[(SELECT, "01 9000"), (VERIFY_WRONG, "6581")]);
}

/// Both applets on one state file, as the shell builds the default card.
fn both_applets_on(path: &Path) -> Harness {
    let mut harness = Harness::new();
    let transaction = TransactionApplet::new(
        CardState::load(path).unwrap(),
        Box::new(FileStore::new(path)),
    );
    let piv = PivFileStore::load(path).unwrap().expect("a PIV section");
    harness.card = Card::new()
        .with_applet(Box::new(transaction))
        .with_applet(Box::new(PivApplet::new(
            piv,
            Box::new(PivFileStore::new(path)),
        )));
    harness
}

/// A state file written in format version 1 (committed in tests/data) still
/// loads: key, certificate, PIN, retries and counter are kept; it has no PIV
/// section until one is added, and from then on each applet's saves keep the
/// other applet's section.
#[test]
fn a_version_1_state_file_upgrades_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/state-v1.json"),
        &path,
    )
    .unwrap();
    let v1 = CardState::load(&path).unwrap();
    assert_eq!((v1.counter(), v1.pin_retries_left()), (7, 2));
    let key = v1.public_key_sec1().unwrap();
    let certificate = v1.certificate().unwrap().to_vec();
    assert!(PivFileStore::load(&path).unwrap().is_none());

    // What the shell does for a file without a PIV section.
    let piv = PivState::new(b"123456", b"12345678", &mut StdRng::seed_from_u64(5)).unwrap();
    PivFileStore::new(&path).save(&piv).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\"version\": 3") && text.contains("\"piv\""),
        "{text}"
    );

    let mut card = both_applets_on(&path);
    card.transcript(&[
        // The transaction applet: the v1 PIN works and restores the retries.
        (SELECT, "01 9000"),
        (VERIFY_OK, "9000"),
        // PIV: a wrong PIN is saved to the PIV section only.
        ("00A40400 05 A000000308 00", "*9000"),
        ("00200080 08 393939393939FFFF", "63C2"),
    ]);
    let after = CardState::load(&path).unwrap();
    assert_eq!(after.counter(), 7);
    assert_eq!(after.pin_retries_left(), 3);
    assert_eq!(after.public_key_sec1().unwrap(), key);
    assert_eq!(after.certificate().unwrap(), &certificate[..]);
    let piv = PivFileStore::load(&path).unwrap().unwrap();
    assert_eq!(piv.pin_retries_left(), 2);

    // A transaction-applet save after the PIV save keeps the PIV count.
    let mut card = both_applets_on(&path);
    card.transcript(&[(SELECT, "01 9000"), (VERIFY_WRONG, "63C2")]);
    assert_eq!(
        PivFileStore::load(&path)
            .unwrap()
            .unwrap()
            .pin_retries_left(),
        2
    );
    assert_eq!(CardState::load(&path).unwrap().pin_retries_left(), 2);
}

/// A new card's PIV applet takes the card's PIN when it has PIV length.
#[test]
fn init_gives_piv_the_card_pin_when_it_fits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    init_state(&path, "24681357").unwrap();
    let mut card = both_applets_on(&path);
    card.transcript(&[
        ("00A40400 05 A000000308 00", "*9000"),
        ("00200080 08 3234363831333537", "9000"),
    ]);
    let path = dir.path().join("short.json");
    init_state(&path, "1234").unwrap();
    let mut card = both_applets_on(&path);
    card.transcript(&[
        ("00A40400 05 A000000308 00", "*9000"),
        ("00200080 08 313233343536FFFF", "9000"),
    ]);
}
