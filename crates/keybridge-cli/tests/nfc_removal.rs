//! The NFC case over the real PC/SC stack: the phone reaches the card through
//! pcscd (as it reaches an NFC reader), the card is `keybridge card` attached
//! to pcscd's vpcd.
//!
//! - The card leaves the field in the middle of SIGN (its process is killed
//!   while the holder is being asked): the transaction stays pending on the
//!   server; the card is tapped again (the process restarted on the same
//!   state) and the payment settles exactly once.
//! - The card as a contactless one (`--link nfc=…`): pcscd reports the ATR an
//!   NFC reader builds for an ISO 14443-4 card, the card refuses VERIFY in
//!   clear, and the phone, seeing a contactless ATR, pays through the secure
//!   channel with extended APDUs.
//!
//! Holds the vpcd lock for the whole test (pcscd is one daemon with fixed
//! vpcd ports). Under `CI=true` a missing tool or daemon fails the test.

mod common;

use std::time::{Duration, Instant};

use common::removal::{
    self, bank, enrol_and_start_relay, request, wait_for_line, Killed, ALICE_OPENING, AMOUNT,
};
use keybridge_proto::api::TransactionStatus;
use keybridge_relay::{CardLink, CardLinkSpec};
use keybridge_transport::pcsc::PcscReader;
use keybridge_transport::pcscd::{self, Pcscd, VpcdLock};

/// Waits until pcscd no longer lists a card in the virtual reader (a card
/// process just stopped takes pcscd a poll to notice).
fn wait_until_empty() {
    PcscReader::new(None)
        .wait_until_empty(pcscd::VPCD_READER_NAME, Duration::from_secs(10))
        .expect("the virtual reader empties");
}

/// Starts `keybridge card` attached to pcscd's vpcd with `policy`, once the
/// reader is empty, and returns when pcscd lists it.
fn card(
    state: &std::path::Path,
    policy: &str,
    init: bool,
) -> (Killed, std::sync::mpsc::Receiver<String>) {
    card_on(state, "vpcd", policy, init)
}

/// [`card`] with `--link KIND=` pcscd's vpcd address: `vpcd` (a contact
/// card) or `nfc` (a contactless one).
fn card_on(
    state: &std::path::Path,
    kind: &str,
    policy: &str,
    init: bool,
) -> (Killed, std::sync::mpsc::Receiver<String>) {
    wait_until_empty();
    // pcscd's vpcd driver takes a moment after noticing a card left before
    // it accepts the next one.
    std::thread::sleep(Duration::from_millis(1500));
    let started = removal::card(state, &format!("{kind}={}", pcscd::VPCD_ADDR), policy, init);
    // Present in pcscd before anyone talks to it.
    let mut probe = PcscReader::new(None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(probe.card_present(pcscd::VPCD_READER_NAME), Ok(true)) {
        assert!(
            Instant::now() < deadline,
            "the card never appeared in pcscd"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started
}

fn pcsc_spec() -> CardLinkSpec {
    CardLinkSpec::Pcsc(Some(pcscd::VPCD_READER_NAME.to_owned()))
}

/// What each test starts from: pcscd (started if none runs), a bank, and
/// alice's card enrolled over PC/SC (approve policy, its process stopped
/// again) with a relay that reaches it through PC/SC. `None` when the
/// smart-card stack is missing outside CI. Fields drop in order: the
/// server first, the vpcd lock last.
struct Enrolled {
    bank: keybridge_testkit::Bank,
    state: std::path::PathBuf,
    dir: tempfile::TempDir,
    _pcscd: Pcscd,
    _lock: VpcdLock,
}

async fn enrolled(test: &str) -> Option<Enrolled> {
    common::require_stack(test)?;
    let lock = VpcdLock::acquire(Duration::from_secs(600)).expect("vpcd lock");
    let dir = tempfile::tempdir().unwrap();
    let pcscd = Pcscd::ensure(Some(&dir.path().join("pcscd.log"))).expect("pcscd");
    let bank = bank(&dir.path().join("server"), 90).await;
    let state = dir.path().join("card.json");
    let enrol = CardLink::open(&pcsc_spec()).unwrap();
    let enrolling = card(&state, "approve", true);
    enrol_and_start_relay(
        &bank.admin,
        enrol,
        enrolling,
        pcsc_spec(),
        Duration::from_secs(15),
    )
    .await;
    Some(Enrolled {
        bank,
        state,
        dir,
        _pcscd: pcscd,
        _lock: lock,
    })
}

/// Removed mid-SIGN over PC/SC, tapped again: pending meanwhile, then
/// settled exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_removed_mid_sign_over_pcsc_then_tapped_again_settles_once() {
    let Some(setup) =
        enrolled("card_removed_mid_sign_over_pcsc_then_tapped_again_settles_once").await
    else {
        return;
    };
    let Enrolled {
        bank, state, dir, ..
    } = &setup;

    // The holder is asked and never answers: the card sits inside SIGN.
    let (asking, lines) = card(state, "prompt", false);
    let created = keybridge_terminal::pay(&bank.terminal, &request("O-NFC-PCSC"), |_| {})
        .await
        .unwrap()
        .created;
    // The screen's last text line; the question follows without a newline.
    wait_for_line(&lines, "| via ", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(asking); // taken out of the field mid-SIGN
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(bank.status(&created.id).await, TransactionStatus::Pending);
    assert_eq!(bank.balance("alice").await, ALICE_OPENING);
    assert_eq!(bank.balance("shop").await, 0);

    // Tapped again: the relay's next attempt finds it through pcscd.
    let (_back, _lines) = card(state, "approve", false);
    let ended = bank
        .wait_until_ended(&created.id, Duration::from_secs(45))
        .await;
    let pcscd_log = std::fs::read_to_string(dir.path().join("pcscd.log")).unwrap_or_default();
    assert_eq!(
        ended,
        TransactionStatus::Settled,
        "pcscd log (if started here):\n{pcscd_log}"
    );
    let devices = bank.admin.devices().await.unwrap();
    assert_eq!(
        devices[0].last_counter, 1,
        "the interrupted SIGN signed nothing"
    );
    // Exactly once: the money moved by one payment, and stays so.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bank.balance("alice").await, ALICE_OPENING - AMOUNT);
    assert_eq!(bank.balance("shop").await, AMOUNT);
    assert_eq!(bank.status(&created.id).await, TransactionStatus::Settled);
}

/// The card in an NFC field, through pcscd: the reader's contactless ATR
/// reaches the phone, VERIFY in clear is refused (`6987`), and the phone pays
/// through the secure channel, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contactless_card_pays_through_the_secure_channel_over_pcsc() {
    // Enrolled in a contact reader (as over BLE, enrolment is not a radio
    // conversation), then held to the phone's NFC reader.
    let Some(setup) =
        enrolled("a_contactless_card_pays_through_the_secure_channel_over_pcsc").await
    else {
        return;
    };
    let Enrolled { bank, state, .. } = &setup;
    let (_nfc, lines) = card_on(state, "nfc", "approve", false);
    wait_for_line(&lines, "secure channel required", Duration::from_secs(10));

    // What pcscd reports, and what the card does with a PIN in clear.
    let probe = tokio::task::spawn_blocking(|| {
        let mut link = CardLink::open(&pcsc_spec()).unwrap();
        link.wait_for_card(Duration::from_secs(10)).unwrap();
        let atr = link.contactless_atr().map(<[u8]>::to_vec);
        let plan = (link.requires_secure_channel(), link.extended_length());
        keybridge_relay::driver::select(&mut link).unwrap();
        let verify = keybridge_relay::driver::verify_pin(&mut link, removal::PIN.as_bytes());
        (atr, plan, verify)
    })
    .await
    .unwrap();
    assert_eq!(
        probe.0.as_deref(),
        Some(&keybridge_card::CONTACTLESS_ATR[..])
    );
    assert_eq!(probe.1, (true, true), "secure channel, extended APDUs");
    assert!(
        matches!(
            probe.2,
            Err(keybridge_relay::DriverError::Refused {
                sw: keybridge_transport::StatusWord::SecureMessagingMissing,
                ..
            })
        ),
        "{:?}",
        probe.2
    );

    let created = keybridge_terminal::pay(&bank.terminal, &request("O-NFC-SC1"), |_| {})
        .await
        .unwrap()
        .created;
    let ended = bank
        .wait_until_ended(&created.id, Duration::from_secs(45))
        .await;
    assert_eq!(ended, TransactionStatus::Settled);
    assert_eq!(bank.balance("alice").await, ALICE_OPENING - AMOUNT);
    assert_eq!(bank.balance("shop").await, AMOUNT);
    let devices = bank.admin.devices().await.unwrap();
    assert_eq!(devices[0].last_counter, 1);
}
