//! Payments over the simulated BLE link, with the secure channel, between a
//! real server (in-process, loopback HTTP/WebSocket), the relay, and a real
//! card (the `keybridge-card` shell in a thread, GATT server side). Some tests
//! put a man in the middle on the link ([`Proxy`]) who records, alters or
//! substitutes GATT operations; they prove what such an attacker gets: never
//! the PIN or the payload in clear, never a changed amount, never a second
//! payment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keybridge_proto::api::TransactionStatus;
use keybridge_proto::AccountId;
use keybridge_relay::link::BleSimSettings;
use keybridge_relay::{CardLink, CardLinkSpec, Decision, RelayOptions};
use keybridge_terminal::{pay, PayOutcome, PayRequest};
use keybridge_testkit::{alice_pays_shop, free_port, Bank, BankOptions};
use keybridge_transport::ble::frame::{Cmd, FragmentLen};
use keybridge_transport::ble::sim::{Direction, GattOp, LinkShape, Proxy, ProxyHook};
use keybridge_transport::ble::Reassembler;
use zeroize::Zeroizing;

const PIN: &str = "482916";
const ORDER: &str = "ORD-SECRET-7731";
const DESCRIPTION: &str = "Confidential order description";

struct World {
    _dir: tempfile::TempDir,
    bank: Bank,
    /// Where the card advertises.
    card_addr: std::net::SocketAddr,
    credential: keybridge_relay::DeviceCredential,
}

/// A server (confirmation TTL `ttl_s`) with alice (CNY 100.00) and shop, a
/// terminal, and a card enrolled for alice over vpcd (enrolment is a wired
/// step), which then advertises on the simulated BLE link.
async fn world(ttl_s: u64) -> World {
    let dir = tempfile::tempdir().unwrap();
    let options = BankOptions {
        alice_minor: 10_000,
        confirmation_ttl_s: Some(ttl_s),
        relay_ping_interval_ms: None,
    };
    let bank = Bank::open(&dir.path().join("server"), options).await;

    // Enrolment over vpcd; the card process returns when the reader closes.
    let vpcd_port = free_port();
    let enrol_spec = CardLinkSpec::VpcdListen(format!("127.0.0.1:{vpcd_port}"));
    let enrol = Arc::new(Mutex::new(CardLink::open(&enrol_spec).unwrap()));
    let state_path = dir.path().join("card.json");
    let options = keybridge_card::CardOptions {
        state_path: state_path.clone(),
        vpcd_addr: format!("127.0.0.1:{vpcd_port}"),
        policy: keybridge_card::Policy::Approve,
        init_pin: Some(PIN.to_owned()),
        reconnect: false,
        profile: keybridge_card::Profile::default(),
    };
    let enrol_card = std::thread::spawn(move || keybridge_card::run(options));
    let (_, credential) = keybridge_relay::enroll(
        &bank.admin,
        enrol.clone(),
        &AccountId::new("alice").unwrap(),
        "ble card",
        Zeroizing::new(PIN.to_owned()),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(
        credential.card_certificate_der().is_some(),
        "certificate pinned"
    );
    drop(enrol);
    let _ = enrol_card.join();

    // The same card, now on the radio.
    let card_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let options = keybridge_card::CardOptions {
        state_path,
        vpcd_addr: String::new(),
        policy: keybridge_card::Policy::Approve,
        init_pin: None,
        reconnect: true,
        profile: keybridge_card::Profile::default(),
    };
    let link = keybridge_card::DeviceLink::BleSim {
        addr: card_addr.to_string(),
        att_mtu_max: 515,
        shape: LinkShape::default(),
    };
    std::thread::spawn(move || keybridge_card::run_with_link(options, link));
    World {
        _dir: dir,
        bank,
        card_addr,
        credential,
    }
}

/// Starts a relay that reaches the card at `addr` over simulated BLE.
fn start_relay(
    w: &World,
    addr: std::net::SocketAddr,
    att_mtu: u16,
    shape: LinkShape,
) -> tokio::task::JoinHandle<Result<(), keybridge_relay::RelayError>> {
    let card = CardLinkSpec::BleSim(addr.to_string(), BleSimSettings { att_mtu, shape });
    let options = RelayOptions {
        credential: w.credential.clone(),
        card,
        pin: Some(Zeroizing::new(PIN.to_owned())),
        decision: Decision::Approve,
        tamper: None,
        card_wait: Duration::from_secs(10),
        applet: None,
        answer_wait: keybridge_relay::SOCKET_ANSWER_WAIT,
        outbox: None,
        silence_max: keybridge_relay::SERVER_SILENCE_MAX,
        ca_cert_pem: None,
        quiet: false,
    };
    tokio::spawn(keybridge_relay::run(options))
}

fn request(amount_minor: u64, key: &str, wait_s: u64) -> PayRequest {
    PayRequest {
        description: DESCRIPTION.to_owned(),
        wait_max: Duration::from_secs(wait_s),
        ..alice_pays_shop(amount_minor, ORDER, key)
    }
}

async fn device_counter(w: &World) -> u32 {
    w.bank.admin.devices().await.unwrap()[0].last_counter
}

async fn pays_at(att_mtu: u16, shape: LinkShape) -> PayOutcome {
    let w = world(120).await;
    let _relay = start_relay(&w, w.card_addr, att_mtu, shape);
    let out = pay(&w.bank.terminal, &request(250, "k-1", 60), |_| {})
        .await
        .unwrap();
    assert_eq!(
        out.last.status,
        TransactionStatus::Settled,
        "MTU {att_mtu}, {shape:?}: {:?}",
        out.last.reason
    );
    assert_eq!(w.bank.balance("alice").await, 10_000 - 250);
    assert_eq!(w.bank.balance("shop").await, 250);
    assert_eq!(device_counter(&w).await, 1, "exactly one signature");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_over_ble_sim_at_att_mtu_23() {
    pays_at(23, LinkShape::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_over_ble_sim_at_att_mtu_185() {
    pays_at(185, LinkShape::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_over_ble_sim_at_att_mtu_512() {
    pays_at(512, LinkShape::default()).await;
}

/// 5% of fragments lost each way, at the smallest MTU (the most fragments)
/// and at 185, from fixed seeds: the phone resends whole requests, the card
/// answers retransmissions from its cache, and still exactly one signature
/// and one payment happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_under_five_percent_loss() {
    for (att_mtu, seed) in [(23, 11), (185, 12)] {
        pays_at(att_mtu, LinkShape::new(5, 0.05, seed).unwrap()).await;
    }
}

type Log = Arc<Mutex<Vec<(Direction, GattOp)>>>;

/// A proxy between relay and card whose hook sees every operation.
fn mitm(
    w: &World,
    mut hook: impl FnMut(Direction, GattOp) -> Vec<GattOp> + Send + 'static,
) -> (Proxy, Log) {
    let log: Log = Arc::default();
    let log2 = log.clone();
    let boxed: Box<ProxyHook> = Box::new(move |d, op| {
        log2.lock().unwrap().push((d, op.clone()));
        hook(d, op)
    });
    let proxy = Proxy::start("127.0.0.1:0", w.card_addr, Arc::new(Mutex::new(boxed))).unwrap();
    (proxy, log)
}

/// The messages (APDUs and responses) one direction carried, reassembled as
/// the eavesdropper would.
fn messages(log: &Log, direction: Direction) -> Vec<Vec<u8>> {
    let mut r = Reassembler::new(FragmentLen::MAX, u64::MAX);
    let mut out = Vec::new();
    for (d, op) in log.lock().unwrap().iter() {
        let fragment = match (d, op) {
            (Direction::PhoneToDevice, GattOp::Write(f)) if *d == direction => f,
            (Direction::DeviceToPhone, GattOp::Notify(f)) if *d == direction => f,
            _ => continue,
        };
        if let Ok(Some(m)) = r.push(fragment, 0) {
            if m.cmd == Cmd::Msg {
                out.push(m.data);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A passive listener records every fragment of a whole payment. The PIN,
/// the order id, the description and the payee name appear in none of them,
/// neither in single fragments nor in the reassembled messages; what is not
/// secret (the applet's AID in SELECT) does, which proves the capture works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_listener_never_sees_the_pin_or_the_payload() {
    let w = world(120).await;
    let (proxy, log) = mitm(&w, |_, op| vec![op]);
    let _relay = start_relay(&w, proxy.local_addr(), 23, LinkShape::default());
    let out = pay(&w.bank.terminal, &request(250, "k-1", 60), |_| {})
        .await
        .unwrap();
    assert_eq!(out.last.status, TransactionStatus::Settled);

    let to_card = messages(&log, Direction::PhoneToDevice);
    let to_phone = messages(&log, Direction::DeviceToPhone);
    assert!(to_card.len() >= 4, "SELECT, KEY AGREEMENT, VERIFY, SIGN");
    assert!(
        to_card
            .iter()
            .any(|m| contains(m, &keybridge_proto::applet::AID)),
        "the capture sees what is sent in clear"
    );
    let secrets: [&[u8]; 4] = [
        PIN.as_bytes(),
        ORDER.as_bytes(),
        DESCRIPTION.as_bytes(),
        b"Corner Shop",
    ];
    let fragments: Vec<Vec<u8>> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, op)| match op {
            GattOp::Write(f) | GattOp::Notify(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    for secret in secrets {
        for m in to_card.iter().chain(&to_phone).chain(&fragments) {
            assert!(
                !contains(m, secret),
                "{:?} seen on the air",
                String::from_utf8_lossy(secret)
            );
        }
    }
    // No VERIFY (00 20) or SIGN (00 2A) header ever crossed in clear.
    for m in &to_card {
        assert!(
            !m.starts_with(&[0x00, 0x20]) && !m.starts_with(&[0x00, 0x2A]),
            "a PIN or payload command in clear"
        );
    }
}

/// An active attacker flips a bit in every large command (the SIGN envelope
/// carrying the amount). The card refuses each altered envelope (6988) and
/// never signs; the relay gives up, the transaction stays pending and then
/// expires; no money moves, and certainly no changed amount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altering_the_sign_frame_is_an_error_never_a_changed_amount() {
    let w = world(6).await;
    let (proxy, _log) = mitm(&w, |d, op| match (d, op) {
        (Direction::PhoneToDevice, GattOp::Write(mut f)) if f.len() > 200 => {
            let last = f.len() - 1;
            f[last / 2] ^= 0x04;
            vec![GattOp::Write(f)]
        }
        (_, op) => vec![op],
    });
    let _relay = start_relay(&w, proxy.local_addr(), 512, LinkShape::default());
    let out = pay(&w.bank.terminal, &request(250, "k-1", 30), |_| {})
        .await
        .unwrap();
    assert_eq!(out.last.status, TransactionStatus::Expired);
    assert_eq!(w.bank.balance("alice").await, 10_000);
    assert_eq!(w.bank.balance("shop").await, 0);
    assert_eq!(device_counter(&w).await, 0, "nothing was ever signed");
}

/// The attacker alters the card's *answer* to SIGN once: the phone cannot
/// open it, starts over with new keys, and the card signs again with a
/// higher counter. Two signatures exist for one request, yet only the second
/// ever reaches the server, and the server's single-use pending state would
/// refuse any other: exactly one payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_signature_means_a_second_signature_never_a_second_payment() {
    let w = world(120).await;
    let mut altered = false;
    let (proxy, _log) = mitm(&w, move |d, op| match (d, op) {
        // At MTU 512 the sealed SIGN answer is one 115-byte notification
        // (4 + 72 + 2 bytes padded to 96, a 16-byte tag, a 3-byte header).
        (Direction::DeviceToPhone, GattOp::Notify(mut f))
            if !altered && (100..=130).contains(&f.len()) =>
        {
            altered = true;
            f[50] ^= 0x01;
            vec![GattOp::Notify(f)]
        }
        (_, op) => vec![op],
    });
    let _relay = start_relay(&w, proxy.local_addr(), 512, LinkShape::default());
    let out = pay(&w.bank.terminal, &request(250, "k-1", 60), |_| {})
        .await
        .unwrap();
    assert_eq!(out.last.status, TransactionStatus::Settled);
    assert_eq!(device_counter(&w).await, 2, "the card signed twice");
    assert_eq!(w.bank.balance("alice").await, 10_000 - 250, "paid once");
    assert_eq!(w.bank.balance("shop").await, 250);
}

/// A man in the middle swaps both ephemeral keys for his own, to read and
/// rewrite everything. The card's signature covers the keys the card saw,
/// so the phone's check against the pinned certificate fails: the phone
/// never sends the PIN under keys the attacker could know (no envelope is
/// ever written), and nothing is paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substituted_ephemeral_key_fails_authentication() {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let w = world(6).await;
    let mallory = p256::SecretKey::random(&mut rand::rngs::OsRng)
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let (proxy, log) = mitm(&w, move |d, op| match (d, op) {
        // KEY AGREEMENT at MTU 512: 83 LL LL | 80 86 00 00 43 | 01 01 | point(65) | 00
        (Direction::PhoneToDevice, GattOp::Write(mut f))
            if f.len() > 12 && f[3..5] == [0x80, 0x86] =>
        {
            f[10..75].copy_from_slice(&mallory);
            vec![GattOp::Write(f)]
        }
        // Its answer: 83 LL LL | card point(65) | signature | 90 00
        (Direction::DeviceToPhone, GattOp::Notify(mut f))
            if f.len() > 70 && f[3] == 0x04 && f[0] == 0x83 =>
        {
            f[3..68].copy_from_slice(&mallory);
            vec![GattOp::Notify(f)]
        }
        (_, op) => vec![op],
    });
    let _relay = start_relay(&w, proxy.local_addr(), 512, LinkShape::default());
    let out = pay(&w.bank.terminal, &request(250, "k-1", 30), |_| {})
        .await
        .unwrap();
    assert_ne!(out.last.status, TransactionStatus::Settled);
    assert_eq!(w.bank.balance("alice").await, 10_000);
    assert_eq!(device_counter(&w).await, 0);
    let to_card = messages(&log, Direction::PhoneToDevice);
    assert!(
        to_card.iter().any(|m| m.starts_with(&[0x80, 0x86])),
        "key agreement was attempted"
    );
    assert!(
        !to_card.iter().any(|m| m.starts_with(&[0x84, 0xC2])),
        "the phone sent an envelope under unauthenticated keys"
    );
}
