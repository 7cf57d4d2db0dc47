//! The NFC case, played on the vpcd link: the card leaves the field in the
//! middle of SIGN (its process is killed while the holder is being asked).
//! The phone says to tap again, the transaction stays pending on the server,
//! and either the card comes back in time (the payment settles, once) or it
//! does not (the transaction expires, no money moves).

mod common;

use std::time::Duration;

use common::removal::{
    bank, card, enrol_and_start_relay, request, vpcd_reader, wait_for_line, ALICE_OPENING, AMOUNT,
};
use keybridge_proto::api::TransactionStatus;
use keybridge_testkit::Bank;

/// A server, and a vpcd reader for the card on a port of its own.
struct World {
    _dir: tempfile::TempDir,
    bank: Bank,
    state: std::path::PathBuf,
    link: String,
}

async fn world(ttl_s: u64) -> World {
    let dir = tempfile::tempdir().unwrap();
    let bank = bank(&dir.path().join("server"), ttl_s).await;
    let state = dir.path().join("card.json");
    // The relay listens again on this port after the enrolment reader is
    // dropped. A port the kernel picked (bind to port 0) lies in the
    // ephemeral range, where in that window any outgoing connection of this
    // test could take it as its source port (seen in CI: the relay's reader
    // never came up). `vpcd_reader` picks below that range.
    let (enrol, spec, link) = vpcd_reader();
    let enrolling = card(&state, &link, "approve", true);
    enrol_and_start_relay(&bank.admin, enrol, enrolling, spec, Duration::from_secs(4)).await;
    World {
        _dir: dir,
        bank,
        state,
        link,
    }
}

/// Removed while the holder is asked, tapped again: the payment settles once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_removed_mid_sign_then_tapped_again_settles_once() {
    let w = world(60).await;
    // The holder is asked and never answers: the card sits inside SIGN.
    let (asking, lines) = card(&w.state, &w.link, "prompt", false);
    let created = keybridge_terminal::pay(&w.bank.terminal, &request("O-NFC"), |_| {})
        .await
        .unwrap()
        .created;
    // The screen's last text line; the question follows without a newline.
    wait_for_line(&lines, "| via ", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(asking); // taken out of the field mid-SIGN
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.bank.status(&created.id).await, TransactionStatus::Pending);

    // Tapped again: the relay's next attempt finds it and the payment settles.
    let (_back, _lines) = card(&w.state, &w.link, "approve", false);
    assert_eq!(
        w.bank
            .wait_until_ended(&created.id, Duration::from_secs(30))
            .await,
        TransactionStatus::Settled
    );
    let devices = w.bank.admin.devices().await.unwrap();
    assert_eq!(
        devices[0].last_counter, 1,
        "the interrupted SIGN signed nothing"
    );
    assert_eq!(w.bank.balance("alice").await, ALICE_OPENING - AMOUNT);
}

/// Removed and never brought back: pending until the TTL, then expired, and
/// no money moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_removed_mid_sign_and_not_returned_expires() {
    let w = world(8).await;
    let (asking, lines) = card(&w.state, &w.link, "prompt", false);
    let created = keybridge_terminal::pay(&w.bank.terminal, &request("O-NFC"), |_| {})
        .await
        .unwrap()
        .created;
    // The screen's last text line; the question follows without a newline.
    wait_for_line(&lines, "| via ", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(asking);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.bank.status(&created.id).await, TransactionStatus::Pending);
    assert_eq!(
        w.bank
            .wait_until_ended(&created.id, Duration::from_secs(30))
            .await,
        TransactionStatus::Expired
    );
    assert_eq!(w.bank.balance("alice").await, ALICE_OPENING);
}
