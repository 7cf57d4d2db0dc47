//! The transaction applet through the dispatcher, as hex transcripts:
//! each step is the command a relay sends and the answer the card must give.

mod common;

use common::*;
use keybridge_proto::applet::{CardStatus, AID};
use keybridge_transport::{transmit, Command, StatusWord, TransmitOptions};

/// SELECT answers the interface version; a prefix of the AID selects too, and
/// P2 = 0C suppresses the answer data.
#[test]
fn select_answers_the_version() {
    let mut card = Harness::new();
    card.transcript(&[
        (SELECT, "01 9000"),
        ("00A40400 09 F04B42524944474501", "01 9000"),
        ("00A4040C 09 F04B42524944474501", "9000"),
        ("00A40400 05 F04B425249 00", "01 9000"),
    ]);
    assert_eq!(card.card.selected_aid(), Some(&AID[..]));
}

/// What the dispatcher answers before any applet sees the command.
#[test]
fn dispatcher_refuses_what_no_applet_should_see() {
    let mut card = Harness::new();
    card.transcript(&[
        // Nothing selected yet: every command but SELECT is refused.
        ("00CA0003 00", "6985"),
        // An AID no applet has (PIV), too short an AID, SELECT by file id.
        ("00A40400 05 A000000308 00", "6A82"),
        ("00A40400 04 F04B4252 00", "6A82"),
        ("00A40000 02 3F00", "6A86"),
        (SELECT, "01 9000"),
        // Classes other than 00 / 10 (chaining).
        ("80CA0003 00", "6E00"),
        ("0CCA0003 00", "6E00"),
        ("01CA0003 00", "6E00"),
        // Instructions the applet does not know, and invalid ones (6x, 9x).
        ("00500000", "6D00"),
        ("00B00000 00", "6D00"),
        ("00600000", "6D00"),
        ("00900000", "6D00"),
        // Malformed and truncated commands.
        ("", "6700"),
        ("00", "6700"),
        ("00A404", "6700"),
        ("00A40400 09 F04B", "6700"),
        ("00A40400 02 F04B4252", "6700"),
        ("00200080 000005 3132", "6700"),
        // GET RESPONSE with nothing pending, or chained.
        ("00C00000 00", "6985"),
        ("10C00000 00", "6884"),
    ]);
    // A failed SELECT leaves the applet selected, session and all
    // (GlobalPlatform §11.9.2.3): the verified PIN still holds.
    card.transcript(&[
        (VERIFY_OK, "9000"),
        ("00A40400 08 A000000527200101 00", "6A82"),
        ("00CA0003 00", "* 9000"),
        ("00200080", "9000"),
    ]);
    assert_eq!(card.card.selected_aid(), Some(&AID[..]));
}

/// Three wrong PINs block the card for good: even the right PIN is then
/// refused, and so is every SIGN.
#[test]
fn wrong_pins_block_the_card() {
    let mut card = Harness::new();
    let payload = hex::encode(sample_payload().encode().unwrap());
    let sign = format!("002A9E9A {:02X} {payload} 00", payload.len() / 2);
    card.transcript(&[
        (SELECT, "01 9000"),
        ("00200080", "63C3"),
        (VERIFY_WRONG, "63C2"),
        (VERIFY_WRONG, "63C1"),
        (VERIFY_WRONG, "6983"),
        (VERIFY_OK, "6983"),
        ("00200080", "6983"),
        (&sign, "6983"),
        ("00470000", "6983"),
    ]);
    assert_eq!(card.status().pin_retries_left, 0);
    assert_eq!(card.holder.asked, 0);
}

/// The right PIN restores the retries; an empty VERIFY asks for the state.
#[test]
fn right_pin_resets_the_retry_counter() {
    let mut card = Harness::new();
    card.transcript(&[
        (SELECT, "01 9000"),
        (VERIFY_WRONG, "63C2"),
        (VERIFY_WRONG, "63C1"),
        (VERIFY_OK, "9000"),
        ("00200080", "9000"),
        ("00CA0003 00", "00000000 03 03 00 9000"),
        (VERIFY_WRONG, "63C2"),
        // A wrong PIN also ends the verified state.
        ("00200080", "63C2"),
    ]);
}

/// PINs that are not 4 to 8 ASCII digits are refused without costing a try.
#[test]
fn malformed_pins_are_refused_without_counting() {
    let mut card = Harness::new();
    card.transcript(&[
        (SELECT, "01 9000"),
        ("00200080 03 313233", "6A80"),
        ("00200080 09 313233343536373839", "6A80"),
        ("00200080 06 31326133", "6700"),
        ("00200080 04 31326134", "6A80"),
        ("00200080 04 31323320", "6A80"),
        ("00200081 04 31323334", "6A86"),
        ("00200180 04 31323334", "6A86"),
        ("00200080", "63C3"),
        ("00200080 08 3132333435363738", "63C2"),
    ]);
}

/// GENERATE KEY needs the PIN, answers the public key, which GET DATA 01
/// then returns; the status object says a key is present.
#[test]
fn generate_key_needs_the_pin() {
    let mut card = Harness::new();
    let answers = card.transcript(&[
        (SELECT, "01 9000"),
        ("00470000", "6982"),
        ("00CA0001 00", "6A88"),
        (VERIFY_OK, "9000"),
        ("00470100", "6A86"),
        ("00470000 01 00", "6700"),
        ("00470000 00", "* 9000"),
        ("00CA0001 00", "* 9000"),
    ]);
    assert_eq!(answers[6].len(), 65);
    assert_eq!(answers[6][0], 0x04, "SEC1 uncompressed");
    assert_eq!(answers[6], answers[7]);
    assert!(card.status().has_key);
    // The key was saved before the answer left the card.
    assert_eq!(
        card.store.saved().unwrap().public_key_sec1().unwrap(),
        answers[6]
    );
}

/// A certificate is stored only for the card's own key, read back whole
/// through 61xx / GET RESPONSE, and dropped when a new key is generated.
#[test]
fn certificate_round_trips_through_get_response() {
    let cert = include_bytes!("data/test-card-cert.der");
    let other = include_bytes!("data/other-key-cert.der");
    assert!(cert.len() > 1024);
    let put = |data: &[u8]| format!("00DA0002 00{:04X} {}", data.len(), hex::encode(data));

    let mut card = Harness::with_known_key();
    card.transcript(&[
        (SELECT, "01 9000"),
        ("00CA0002 00", "6A88"),
        (&put(cert), "6982"),
        (VERIFY_OK, "9000"),
        (&put(other), "6A80"),
        (&put(&[0x04; 100]), "6A80"),
        (&put(&cert[..cert.len() - 1]), "6A80"),
        (&put(&vec![0x30; 2049]), "6700"),
        ("00DA0001 01 30", "6A86"),
        (&put(cert), "9000"),
    ]);

    // Short Le: 256 bytes at a time, 61xx saying how much is left.
    let mut read = card.transcript(&[("00CA0002 00", "* 6100")]).remove(0);
    loop {
        let answer = h(&card.send("00C00000 00"));
        let (data, sw) = answer.split_at(answer.len() - 2);
        read.extend_from_slice(data);
        match sw {
            [0x61, _] => continue,
            [0x90, 0x00] => break,
            other => panic!("unexpected SW {other:02X?}"),
        }
    }
    assert_eq!(read, cert);
    // The last 61xx names the exact remainder: 1504 = 5 * 256 + 224.
    card.transcript(&[("00CA0002 00", "* 6100")]);
    for _ in 0..3 {
        card.transcript(&[("00C00000 00", "* 6100")]);
    }
    card.transcript(&[("00C00000 00", "* 61E0"), ("00C00000 E0", "* 9000")]);

    // Any other command drops what was pending.
    card.transcript(&[
        ("00CA0002 00", "* 6100"),
        ("00CA0003 00", "* 9000"),
        ("00C00000 00", "6985"),
    ]);

    // transmit() does the same dance; an extended Le gets it in one answer.
    let get = Command::new(0, 0xCA, 0, 2).with_le(256);
    let r = transmit(&mut card, &get, TransmitOptions::default()).unwrap();
    assert_eq!((r.sw, r.data.as_slice()), (StatusWord::Ok, &cert[..]));
    let whole = card.transcript(&[("00CA0002 000000", "* 9000")]).remove(0);
    assert_eq!(whole, cert);

    // Chained short PUT DATA works too.
    let put = Command::new(0, 0xDA, 0, 2).with_data(cert.to_vec());
    let options = TransmitOptions {
        extended_length: false,
        ..TransmitOptions::default()
    };
    let r = transmit(&mut card, &put, options).unwrap();
    assert_eq!(r.sw, StatusWord::Ok);

    // A new key makes the certificate worthless: it is dropped.
    card.transcript(&[("00470000", "* 9000"), ("00CA0002 00", "6A88")]);
}

/// A short Le smaller than a short answer to a repeatable command gets 6Cxx.
#[test]
fn too_small_le_gets_6cxx() {
    let mut card = Harness::new();
    card.transcript(&[
        (SELECT, "01 9000"),
        ("00CA0003 02", "6C07"),
        ("00CA0003 07", "00000000 03 03 00 9000"),
        ("00CA0004 00", "6A88"),
        ("00CA0103 00", "6A86"),
    ]);
}

/// The whole payment: PIN, refusals, a decline that costs no counter, two
/// approved signatures (extended APDU, then chained short APDUs) that verify,
/// with a strictly increasing counter and the PIN needed each time.
#[test]
fn sign_transaction() {
    let mut card = Harness::new();
    let payload = long_payload();
    let extended = format!(
        "002A9E9A 00{:04X} {} 0000",
        payload.len(),
        hex::encode(&payload)
    );
    let garbage = "002A9E9A 05 0102030405 00";

    let answers = card.transcript(&[
        (SELECT, "01 9000"),
        (&extended, "6982"),
        (VERIFY_OK, "9000"),
        (&extended, "6A88"),
        // That SIGN consumed the PIN.
        ("00470000", "6982"),
        (VERIFY_OK, "9000"),
        ("00470000", "* 9000"),
        (garbage, "6A80"),
        (&extended, "6982"),
        (VERIFY_OK, "9000"),
        ("002A9E9B 00", "6A86"),
    ]);
    let public_key = answers[6].clone();
    assert_eq!(
        card.holder.asked, 0,
        "nothing was shown for refused commands"
    );

    // Declined on the device: 6985, counter unchanged.
    card.holder.approve = false;
    card.transcript(&[(VERIFY_OK, "9000"), (&extended, "6985")]);
    assert_eq!(card.holder.asked, 1);
    assert_eq!(card.status().counter, 0);
    let shown = card.holder.shown.last().unwrap().lines();
    assert_eq!(shown[0], "Pay CNY 12.34");
    assert_eq!(
        shown[1],
        "to Corner Bookshop of the Old Town, Books and Stationery (bookshop)"
    );
    assert_eq!(shown[3], "from alice");
    assert_eq!(shown[4], "expires in 118 s");

    // Approved: counter 1, signature over payload ‖ counter.
    card.holder.approve = true;
    let answers = card.transcript(&[(VERIFY_OK, "9000"), (&extended, "* 9000")]);
    assert_eq!(check_signature(&answers[1], &payload, &public_key), 1);
    assert_eq!(card.store.saved().unwrap().counter(), 1);

    // The PIN is needed again for the next payment.
    card.transcript(&[(&extended, "6982")]);

    // Chained short APDUs.
    let chain = Command::new(0, 0x2A, 0x9E, 0x9A)
        .with_data(payload.clone())
        .with_le(256)
        .into_chain(255);
    assert_eq!(chain.len(), 2);
    let first = hex::encode(chain[0].encode());
    let last = hex::encode(chain[1].encode());
    let answers = card.transcript(&[(VERIFY_OK, "9000"), (&first, "9000"), (&last, "* 9000")]);
    assert_eq!(check_signature(&answers[2], &payload, &public_key), 2);

    // Through transmit(), short payload, one more time.
    card.transcript(&[(VERIFY_OK, "9000")]);
    let short = sample_payload().encode().unwrap();
    let sign = Command::new(0, 0x2A, 0x9E, 0x9A)
        .with_data(short.clone())
        .with_le(256);
    let r = transmit(&mut card, &sign, TransmitOptions::default()).unwrap();
    assert_eq!(r.sw, StatusWord::Ok);
    assert_eq!(check_signature(&r.data, &short, &public_key), 3);
    assert_eq!(
        card.status(),
        CardStatus {
            counter: 3,
            pin_retries_left: 3,
            pin_retries_max: 3,
            has_key: true
        }
    );
}

/// Chains must stay on one command and within the bound.
#[test]
fn command_chaining_rules() {
    let mut card = Harness::new();
    let piece = format!("102A9E9A FF {}", "AB".repeat(255));
    card.transcript(&[
        // No chain before an applet is selected.
        (&piece, "6985"),
        (SELECT, "01 9000"),
        (VERIFY_OK, "9000"),
        (&piece, "9000"),
        // Another INS mid-chain: refused, and the chain is gone.
        ("00CA0003 00", "6883"),
        ("00CA0003 00", "* 9000"),
        // Chained SELECT is not supported.
        ("10A40400 09 F04B42524944474501", "6884"),
    ]);
    // More than 4096 bytes in one chain.
    for _ in 0..16 {
        card.transcript(&[(&piece, "9000")]);
    }
    card.transcript(&[(&piece, "6700"), ("00CA0003 00", "* 9000")]);
    // 6700 ended the chain without running it: the PIN is still verified.
    card.transcript(&[("00200080", "9000")]);
}

/// Reset, power off and (re-)selection forget a verified PIN.
#[test]
fn pin_does_not_survive_reset_or_reselection() {
    let mut card = Harness::new();
    card.transcript(&[(SELECT, "01 9000"), (VERIFY_OK, "9000")]);
    card.card.reset();
    card.transcript(&[
        ("00200080", "6985"),
        (SELECT, "01 9000"),
        ("00200080", "63C3"),
        (VERIFY_OK, "9000"),
        (SELECT, "01 9000"),
        ("00200080", "63C3"),
        (VERIFY_OK, "9000"),
        ("00A40400 05 A000000308", "6A82"),
        (SELECT, "01 9000"),
        ("00200080", "63C3"),
    ]);
}

/// When the state cannot be saved, the card answers 6581 and releases no
/// signature; the counter it spent is never reused.
#[test]
fn a_failed_save_releases_nothing() {
    let mut card = Harness::new();
    let payload = sample_payload().encode().unwrap();
    let sign = format!(
        "002A9E9A {:02X} {} 00",
        payload.len(),
        hex::encode(&payload)
    );
    let answers = card.transcript(&[
        (SELECT, "01 9000"),
        (VERIFY_OK, "9000"),
        ("00470000", "* 9000"),
    ]);
    let public_key = answers[2].clone();
    card.store.set_failing(true);
    // The VERIFY whose try could not be saved was not compared and counted
    // no try (3 left), and verified nothing.
    card.transcript(&[
        (VERIFY_OK, "6581"),
        ("00200080", "63C3"),
        ("00470000", "6982"),
    ]);
    card.store.set_failing(false);
    card.transcript(&[(VERIFY_OK, "9000")]);
    card.store.set_failing(true);
    card.transcript(&[(&sign, "6581"), ("00CA0001 00", "* 9000")]);
    card.store.set_failing(false);
    let answers = card.transcript(&[(VERIFY_OK, "9000"), (&sign, "* 9000")]);
    assert_eq!(check_signature(&answers[1], &payload, &public_key), 2);
    // A failed GENERATE KEY keeps the old key.
    card.transcript(&[(VERIFY_OK, "9000")]);
    card.store.set_failing(true);
    let answers = card.transcript(&[("00470000", "6581"), ("00CA0001 00", "* 9000")]);
    assert_eq!(answers[1], public_key);
}

/// Every change is saved before the answer: a wrong PIN is on "disk" when
/// 63Cx comes back.
#[test]
fn wrong_pin_is_saved_before_the_answer() {
    let mut card = Harness::new();
    card.transcript(&[(SELECT, "01 9000"), (VERIFY_WRONG, "63C2")]);
    assert_eq!(card.store.saved().unwrap().pin_retries_left(), 2);
}

/// A payment is two durable writes: VERIFY saves the counted try before the
/// PIN is compared, SIGN saves the counter, and with it the retries the right
/// PIN restored.
#[test]
fn a_payment_is_two_saves() {
    let mut card = Harness::with_known_key();
    let public_key = card.transcript(&[(SELECT, "01 9000"), ("00CA0001 00", "* 9000")])[1].clone();
    let payload = sample_payload().encode().unwrap();
    let sign = format!(
        "002A9E9A {:02X} {} 00",
        payload.len(),
        hex::encode(&payload)
    );
    assert_eq!(card.store.saves(), 0);

    card.transcript(&[(VERIFY_OK, "9000")]);
    assert_eq!(card.store.saves(), 1);
    // Saved: the try counted before the compare, not yet its restore.
    assert_eq!(card.store.saved().unwrap().pin_retries_left(), 2);
    assert_eq!(card.status().pin_retries_left, 3);

    let answer = card.transcript(&[(&sign, "* 9000")]).remove(0);
    assert_eq!(check_signature(&answer, &payload, &public_key), 1);
    assert_eq!(card.store.saves(), 2);
    let saved = card.store.saved().unwrap();
    assert_eq!((saved.pin_retries_left(), saved.counter()), (3, 1));
    // Both wrote only the counters: a file store writes them in place.
    assert_eq!(card.store.counters_saves(), 2);

    // Nothing left to write: leaving the applet saves nothing more.
    card.card.reset();
    assert_eq!(card.store.saves(), 2);
}

/// Only what changes nothing but the retries and the counter is a counters
/// save; GENERATE KEY saves the whole state. The memory store keeps only the
/// counters of a counters save, as the file store does: a key saved that way
/// would be lost.
#[test]
fn only_counter_changes_are_counters_saves() {
    let mut card = Harness::new();
    let key = card
        .transcript(&[
            (SELECT, "01 9000"),
            (VERIFY_OK, "9000"),
            ("00470000", "* 9000"),
        ])
        .remove(2);
    assert_eq!((card.store.saves(), card.store.counters_saves()), (2, 1));
    assert_eq!(card.store.saved().unwrap().public_key_sec1(), Some(key));

    // A wrong PIN, a restore written on reset: counters.
    card.transcript(&[(VERIFY_WRONG, "63C2"), (VERIFY_OK, "9000")]);
    card.card.reset();
    assert_eq!((card.store.saves(), card.store.counters_saves()), (5, 4));
    assert_eq!(card.store.saved().unwrap().pin_retries_left(), 3);
}

/// A right PIN with no save after it: a card restarted from what was saved
/// has one try fewer (the saved count errs low, never high); leaving the
/// applet (another SELECT, a reset, a power off) writes the restore.
#[test]
fn an_unsaved_retry_restore_errs_low_and_is_saved_on_deselect() {
    let mut card = Harness::with_known_key();
    card.transcript(&[(SELECT, "01 9000"), (VERIFY_OK, "9000")]);
    assert_eq!(card.store.saves(), 1);

    // Power cut now: the restarted card has lost a try, not gained one.
    let mut restarted = Harness::with_state(card.store.saved().unwrap());
    restarted.transcript(&[(SELECT, "01 9000"), ("00200080", "63C2")]);

    // Re-selecting deselects first: the restore is written.
    card.transcript(&[(SELECT, "01 9000")]);
    assert_eq!(card.store.saves(), 2);
    assert_eq!(card.store.saved().unwrap().pin_retries_left(), 3);

    // So does a reset, once per restore.
    card.transcript(&[(VERIFY_OK, "9000")]);
    card.card.reset();
    card.card.reset();
    assert_eq!(card.store.saves(), 4);
    assert_eq!(card.store.saved().unwrap().pin_retries_left(), 3);

    // A restore that cannot be saved on reset stays pending, and the next
    // save writes it: the saved count was only ever lower than the truth.
    card.transcript(&[(SELECT, "01 9000"), (VERIFY_OK, "9000")]);
    card.store.set_failing(true);
    card.card.reset();
    card.store.set_failing(false);
    assert_eq!(card.store.saved().unwrap().pin_retries_left(), 2);
    card.transcript(&[(SELECT, "01 9000"), ("00200080", "63C3")]);
    card.card.reset();
    assert_eq!(card.store.saved().unwrap().pin_retries_left(), 3);
}

/// A wrong PIN right after a right one is counted from the restored value
/// and saved before the answer, restore and all.
#[test]
fn a_wrong_pin_after_a_right_one_saves_the_true_count() {
    let mut card = Harness::new();
    card.transcript(&[
        (SELECT, "01 9000"),
        (VERIFY_WRONG, "63C2"),
        (VERIFY_OK, "9000"),
    ]);
    assert_eq!(card.store.saved().unwrap().pin_retries_left(), 1);
    card.transcript(&[(VERIFY_WRONG, "63C2")]);
    assert_eq!(card.store.saved().unwrap().pin_retries_left(), 2);
}

/// When SIGN cannot save its counter, the unsaved restore does not help: no
/// signature, 6581, and the counter it spent is not used again.
#[test]
fn a_sign_whose_save_fails_releases_nothing_after_a_right_pin() {
    let mut card = Harness::with_known_key();
    let public_key = card.transcript(&[(SELECT, "01 9000"), ("00CA0001 00", "* 9000")])[1].clone();
    let payload = sample_payload().encode().unwrap();
    let sign = format!(
        "002A9E9A {:02X} {} 00",
        payload.len(),
        hex::encode(&payload)
    );
    card.transcript(&[(VERIFY_OK, "9000")]);
    card.store.set_failing(true);
    card.transcript(&[(&sign, "6581")]);
    card.store.set_failing(false);
    let saved = card.store.saved().unwrap();
    assert_eq!((saved.pin_retries_left(), saved.counter()), (2, 0));
    let answers = card.transcript(&[(VERIFY_OK, "9000"), (&sign, "* 9000")]);
    assert_eq!(check_signature(&answers[1], &payload, &public_key), 2);
}

/// An exhausted counter cannot wrap around to reuse old values: SIGN is
/// refused before the holder is even asked.
#[test]
fn an_exhausted_counter_refuses_to_sign() {
    let mut card = Harness::with_known_key_and_counter(u32::MAX);
    let payload = sample_payload().encode().unwrap();
    let sign = format!(
        "002A9E9A {:02X} {} 00",
        payload.len(),
        hex::encode(&payload)
    );
    card.transcript(&[(SELECT, "01 9000"), (VERIFY_OK, "9000"), (&sign, "6985")]);
    assert_eq!(card.holder.asked, 0);
    assert_eq!(card.status().counter, u32::MAX);
}
