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
/// atomic or in place and leaves no temp file behind.
#[test]
fn a_restarted_card_keeps_key_counter_and_wrong_pin_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    init_state(&path, PIN).unwrap();

    let payload = sample_payload().encode().unwrap();
    let sign = sign_apdu(&payload);
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
    assert_eq!(file_names(dir.path()), ["card.json", "card.json.counters"]);

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
    assert_eq!(file_names(dir.path()), ["card.json", "card.json.counters"]);
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
    let sign = sign_apdu(&payload);
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
    assert_eq!(file_names(dir.path()), ["card.json", "card.json.counters"]);
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
    card_on(&path).transcript(&[(SELECT, "01 9000"), (VERIFY_WRONG, "63C2")]);
    #[cfg(unix)]
    for name in ["card.json", "card.json.counters"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
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

/// The state file as a payment must leave it: same inode, same modification
/// time, same bytes.
#[derive(Debug, PartialEq)]
struct Untouched {
    bytes: Vec<u8>,
    modified: std::time::SystemTime,
    #[cfg(unix)]
    inode: u64,
}

impl Untouched {
    fn of(path: &Path) -> Untouched {
        let metadata = std::fs::metadata(path).unwrap();
        Untouched {
            bytes: std::fs::read(path).unwrap(),
            modified: metadata.modified().unwrap(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&metadata),
        }
    }
}

/// A payment (VERIFY + SIGN TRANSACTION) on a card with a key writes the
/// counters sidecar in place and never the state file, yet a card restarted
/// from the two files has the counter and the retries the payments left; a
/// change that is not a counter (PUT DATA) still rewrites the state file.
#[test]
fn a_payment_writes_the_counters_in_place_and_not_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    init_state(&path, PIN).unwrap();
    let payload = sample_payload().encode().unwrap();
    let sign = sign_apdu(&payload);
    let mut card = card_on(&path);
    let public_key = card.transcript(&[
        (SELECT, "01 9000"),
        (VERIFY_OK, "9000"),
        ("00470000", "* 9000"),
        // The first counters save makes the sidecar.
        (VERIFY_WRONG, "63C2"),
    ])[2]
        .clone();
    let state_file = Untouched::of(&path);
    let sidecar = dir.path().join("card.json.counters");
    let sidecar_inode = Untouched::of(&sidecar).inode;

    for counter in 1..=3 {
        let answers = card.transcript(&[(VERIFY_OK, "9000"), (&sign, "* 9000")]);
        assert_eq!(check_signature(&answers[1], &payload, &public_key), counter);
        let saved = CardState::load(&path).unwrap();
        assert_eq!((saved.pin_retries_left(), saved.counter()), (3, counter));
    }
    card.transcript(&[(VERIFY_WRONG, "63C2")]);
    assert_eq!(CardState::load(&path).unwrap().pin_retries_left(), 2);
    assert_eq!(Untouched::of(&path), state_file);
    assert_eq!(Untouched::of(&sidecar).inode, sidecar_inode);
    drop(card);

    let mut card = card_on(&path);
    let answers = card.transcript(&[
        (SELECT, "01 9000"),
        ("00200080", "63C2"),
        (VERIFY_OK, "9000"),
        (&sign, "* 9000"),
    ]);
    assert_eq!(check_signature(&answers[3], &payload, &public_key), 4);
    assert_eq!(Untouched::of(&path), state_file);

    // PUT DATA OCRA is not a counter: the state file is rewritten, with the
    // counter and the retries memory has (the sidecar's, plus the restore).
    let put_ocra =
        keybridge_proto::applet::ocra_put_data("OCRA-1:HOTP-SHA1-6:QN08", b"12345").unwrap();
    let put_ocra = format!("00DA0004 {:02X} {}", put_ocra.len(), hex::encode(&put_ocra));
    card.transcript(&[(VERIFY_OK, "9000"), (&put_ocra, "9000")]);
    assert_ne!(Untouched::of(&path), state_file);
    std::fs::remove_file(&sidecar).unwrap();
    let saved = CardState::load(&path).unwrap();
    assert_eq!((saved.pin_retries_left(), saved.counter()), (3, 4));
}

/// A state file written by the format-2 build (committed in tests/data, no
/// counters fields) loads with its key, counters and PIV section; the
/// card's first counters save rewrites it with a binding id, later ones go
/// to the sidecar.
#[test]
fn a_version_2_state_file_loads_and_gets_a_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/state-v2.json"),
        &path,
    )
    .unwrap();
    let v2 = CardState::load(&path).unwrap();
    assert_eq!((v2.counter(), v2.pin_retries_left()), (7, 2));
    let piv = PivFileStore::load(&path).unwrap().expect("a PIV section");
    assert_eq!(piv.pin_retries_left(), 3);

    let mut card = both_applets_on(&path);
    card.transcript(&[(SELECT, "01 9000"), (VERIFY_WRONG, "63C1")]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\"version\": 3") && text.contains("\"counters_binding_hex\""),
        "{text}"
    );
    assert_eq!(file_names(dir.path()), ["card.json"]);
    let state_file = Untouched::of(&path);
    card.transcript(&[(VERIFY_OK, "9000"), ("00200080 04 39393939", "63C2")]);
    assert_eq!(Untouched::of(&path), state_file);
    assert_eq!(file_names(dir.path()), ["card.json", "card.json.counters"]);
    let after = CardState::load(&path).unwrap();
    assert_eq!((after.counter(), after.pin_retries_left()), (7, 2));
    assert_eq!(after.public_key_sec1(), v2.public_key_sec1());
    assert_eq!(after.certificate(), v2.certificate());
    let piv_after = PivFileStore::load(&path).unwrap().unwrap();
    assert_eq!(
        piv_after.object(&[0x5F, 0xC1, 0x02]),
        piv.object(&[0x5F, 0xC1, 0x02])
    );
}

/// The PIV applet saves its section by rewriting the state file with the
/// transaction section as the file had it, older than the sidecar: the
/// sidecar's newer counters still win, before and after the transaction
/// applet saves again.
#[test]
fn a_piv_save_after_counters_saves_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    init_state(&path, "24681357").unwrap();
    let mut card = both_applets_on(&path);
    card.transcript(&[
        (SELECT, "01 9000"),
        ("00200080 04 39393939", "63C2"),
        ("00200080 04 39393939", "63C1"),
        ("00A40400 05 A000000308 00", "*9000"),
        ("00200080 08 3939393939393939", "63C2"),
    ]);
    let saved = CardState::load(&path).unwrap();
    assert_eq!(saved.pin_retries_left(), 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"pin_retries_left\": 3"), "{text}");
    assert_eq!(
        PivFileStore::load(&path)
            .unwrap()
            .unwrap()
            .pin_retries_left(),
        2
    );

    card.transcript(&[
        (SELECT, "01 9000"),
        ("00200080 08 3234363831333537", "9000"),
    ]);
    card.card.reset();
    assert_eq!(CardState::load(&path).unwrap().pin_retries_left(), 3);
    assert_eq!(
        PivFileStore::load(&path)
            .unwrap()
            .unwrap()
            .pin_retries_left(),
        2
    );
}

/// Saves that fail for a while (a full disk) answer `6581` and count no PIN
/// try: more failed VERIFYs than the PIN has tries do not block it, a wrong
/// PIN is not even compared, and once saves work again the card has every
/// try left and signs. (Before, each failed save took a try in memory: a
/// full disk blocked a PIN nobody had got wrong.)
#[test]
fn failed_saves_count_no_pin_try() {
    let mut card = Harness::with_known_key();
    card.transcript(&[(SELECT, "01 9000")]);
    card.store.set_failing(true);
    for _ in 0..4 {
        card.transcript(&[(VERIFY_OK, "6581"), (VERIFY_WRONG, "6581")]);
    }
    card.store.set_failing(false);
    card.transcript(&[(VERIFY_WRONG, "63C2"), (VERIFY_OK, "9000")]);
    let payload = sample_payload().encode().unwrap();
    card.transcript(&[(&sign_apdu(&payload), "* 9000")]);
}
