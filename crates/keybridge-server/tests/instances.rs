//! Several server instances on one PostgreSQL database, as behind a load
//! balancer: the terminal, the relay and the answer may each reach a
//! different instance, and the payment still happens once, with everyone
//! told. Events cross between instances by LISTEN/NOTIFY only: an instance's
//! relay socket and long-polls hear nothing else from the others.

mod common;

use common::{payment, request_payload, Harness, Options, GUARD};
use keybridge_proto::api::{
    RelayAnswer, RelayMessage, TerminalCreated, TransactionStatus, TransactionView,
};
use keybridge_server::store::postgres::scratch;
use reqwest::StatusCode;
use serde_json::json;

const PEER_EVENTS_SENT: &str = "keybridge_peer_events_total{way=\"sent\"}";
const PEER_EVENTS_CAUGHT_UP: &str = "keybridge_peer_events_total{way=\"caught_up\"}";

/// Instance A with alice, the shop, a terminal and alice's card; `None` when
/// no PostgreSQL is configured outside CI.
async fn on_postgres() -> Option<(Harness, keybridge_proto::api::TerminalCreated, common::Card)> {
    let database_url = scratch::database_or_skip().await?;
    let h = Harness::start_with(Options {
        database_url: Some(database_url),
        ..Options::default()
    })
    .await;
    Some(h.standard_setup().await)
}

/// The relay holds its socket to A; the terminal pays and waits on B; the
/// card's answer goes back over A's socket. B's waiting terminal hears
/// `settled`, and both instances show one transfer.
#[tokio::test]
async fn a_payment_made_on_one_instance_is_confirmed_through_another() {
    let Some((a, terminal, card)) = on_postgres().await else {
        return;
    };
    let b = a.another_instance().await;
    let b_url = |path: &str| format!("http://{}{path}", b.addr);
    // Connected before the payment exists, so the request can only come
    // from B's notification, not from the resync at connect.
    let mut relay = a.relay(&card.enrolled.credential).await;

    let created = a
        .http
        .post(b_url("/v1/transactions"))
        .bearer_auth(&terminal.api_key)
        .header("Idempotency-Key", "order-on-b")
        .json(&payment(1234))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let tx: TransactionView = created.json().await.unwrap();
    let wait = long_poll(&a, &b_url(""), &terminal.api_key, &tx.id, 30);

    let payload = request_payload(&relay.next().await, &tx.id);
    let confirmation = card.sign(&payload);
    let answer = RelayAnswer::Confirmation {
        transaction_id: tx.id,
        confirmation: confirmation.clone(),
    };
    relay
        .send_text(serde_json::to_string(&answer).unwrap())
        .await;
    match relay.next().await {
        RelayMessage::ConfirmationResult {
            status,
            view: Some(view),
            ..
        } => assert_eq!((status, view.status), (200, TransactionStatus::Settled)),
        other => panic!("{other:?}"),
    }

    // The long-poll on B ends on A's news (its own timeout is 30 s, past
    // the guard), not by reading the store at its timeout.
    let heard = answered(wait, "B's waiting terminal was not told").await;
    assert_eq!(heard.status, TransactionStatus::Settled);
    assert_eq!(a.transfer_count(&tx.id).await, 1);
    let on_b = b.store().transfers_for_transaction(&tx.id).await.unwrap();
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b[0].amount_minor, 1234);
    a.assert_ledger_balanced().await;
    assert!(b.store().verify_audit_chain().await.unwrap() > 0);

    // The same answer posted to B (a relay whose socket result was lost)
    // hears the outcome; a fresh one gets `not_pending`. Neither pays again.
    let post_to_b = |confirmation: keybridge_proto::api::Confirmation| {
        a.http
            .post(b_url(&format!("/v1/confirmations/{}", tx.id)))
            .bearer_auth(&card.enrolled.credential)
            .json(&confirmation)
            .send()
    };
    let again = post_to_b(confirmation).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let view: TransactionView = again.json().await.unwrap();
    assert_eq!(view.status, TransactionStatus::Settled);
    let fresh = post_to_b(card.sign(&payload)).await.unwrap();
    assert_eq!(fresh.status(), StatusCode::CONFLICT);
    assert_eq!(a.transfer_count(&tx.id).await, 1);
    b.shutdown().await;
}

/// An administrator disables the device on B: the relay's socket on A
/// closes at once.
#[tokio::test]
async fn disabling_a_device_on_one_instance_closes_its_socket_on_another() {
    let Some((a, _terminal, card)) = on_postgres().await else {
        return;
    };
    let b = a.another_instance().await;
    let mut relay = a.relay(&card.enrolled.credential).await;
    let disabled = a
        .http
        .post(format!(
            "http://{}/v1/admin/devices/{}/disable",
            b.addr, card.enrolled.device_id
        ))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        disabled.status(),
        StatusCode::OK,
        "{}",
        disabled.text().await.unwrap()
    );
    assert!(relay.closed().await, "the socket on A stayed open");
    b.shutdown().await;
}

/// The connections that carry events between instances are cut (a database
/// restart, a network blip): each instance connects again by itself, and
/// events cross again.
#[tokio::test]
async fn instances_reconnect_after_their_event_connections_are_cut() {
    let Some((a, terminal, card)) = on_postgres().await else {
        return;
    };
    let b = a.another_instance().await;
    let db = connect(&a).await;
    assert_eq!(
        cut_listeners(&db).await,
        2,
        "one listening connection per instance"
    );
    wait_for_listeners(&db, 2).await;

    let mut relay = a.relay(&card.enrolled.credential).await;
    let tx = create_on(&a, &b.addr, &terminal.api_key, "after-the-cut", 500).await;
    request_payload(&relay.next().await, &tx.id);
    b.shutdown().await;
}

/// A transaction's creation and end are sent by the instance that wrote
/// them, after its commit, one note each, named by id: heard here on a plain
/// listening connection (the catch-up sends no notes). After its connection
/// is cut, the next note goes out on a new one.
#[tokio::test]
async fn an_instance_sends_its_transaction_news_after_each_commit() {
    let Some((a, terminal, card)) = on_postgres().await else {
        return;
    };
    let b = a.another_instance().await;
    let mut relay = a.relay(&card.enrolled.credential).await;
    let (listener, mut heard) = listen(&a).await;
    let sent = a.metric(PEER_EVENTS_SENT).await;
    let tx = create_on(&a, &b.addr, &terminal.api_key, "noted", 300).await;
    assert_eq!(
        next_note(&mut heard).await,
        ("created".into(), tx.id.to_hex())
    );
    let payload = request_payload(&relay.next().await, &tx.id);
    let settled = a
        .http
        .post(format!("http://{}/v1/confirmations/{}", b.addr, tx.id))
        .bearer_auth(&card.enrolled.credential)
        .json(&card.sign(&payload))
        .send()
        .await
        .unwrap();
    assert_eq!(settled.status(), StatusCode::OK);
    assert_eq!(
        next_note(&mut heard).await,
        ("ended".into(), tx.id.to_hex())
    );
    // At least the creation's note: counted before the end's was sent (the
    // end's own count may land just after its note is heard).
    assert!(a.metric(PEER_EVENTS_SENT).await >= sent + 1.0);

    let db = connect(&a).await;
    assert_eq!(
        cut(&db, keybridge_server::peers::OUTBOX_APPLICATION_NAME).await,
        2,
        "one outbox connection per instance"
    );
    let tx = create_on(&a, &b.addr, &terminal.api_key, "noted-after-the-cut", 300).await;
    assert_eq!(
        next_note(&mut heard).await,
        ("created".into(), tx.id.to_hex())
    );
    drop(listener);
    b.shutdown().await;
}

/// An instance that dies between its commit and its note (here B's store
/// ends a payment with no note sent: the hub never hears of it) loses no
/// event: A reads the sealed audit log and tells its waiting terminal,
/// well before the long-poll's own 30 s.
#[tokio::test]
async fn an_end_whose_note_was_never_sent_is_still_heard() {
    let Some((a, terminal, _card)) = on_postgres().await else {
        return;
    };
    let b = a.another_instance().await;
    let tx = a.pay(&terminal, 400).await;
    let caught_up = a.metric(PEER_EVENTS_CAUGHT_UP).await;
    let wait = long_poll(&a, &a.base, &terminal.api_key, &tx.id, 30);
    // Subscribed before the end is written (A's long-poll subscribes first,
    // then reads the store).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let ended = b.store().expire_due(tx.expires_at_unix_s).await.unwrap();
    assert_eq!(ended.len(), 1);
    let heard = answered(wait, "A's waiting terminal was not told").await;
    assert_eq!(heard.status, TransactionStatus::Expired);
    assert_eq!(a.transfer_count(&tx.id).await, 0);
    assert!(a.metric(PEER_EVENTS_CAUGHT_UP).await > caught_up);
    b.shutdown().await;
}

/// A request written by an instance that died before its note (here
/// inserted through B's store: B's hub never hears of it, so no note goes)
/// still reaches the payer's relay on A, from the audit log, well inside
/// the relay's 20 s guard.
#[tokio::test]
async fn a_request_whose_note_was_never_sent_still_reaches_the_relay() {
    let Some((a, terminal, card)) = on_postgres().await else {
        return;
    };
    let b = a.another_instance().await;
    let first = a.pay(&terminal, 100).await;
    let mut relay = a.relay(&card.enrolled.credential).await;
    // The request pending at connect comes from the resync.
    request_payload(&relay.next().await, &first.id);

    let caught_up = a.metric(PEER_EVENTS_CAUGHT_UP).await;
    let mut unannounced = b.store().get_transaction(&first.id).await.unwrap().unwrap();
    unannounced.id = keybridge_proto::TransactionId([0x5a; 16]);
    unannounced.idempotency_key = "written-by-an-instance-that-died".into();
    b.store().insert_transaction(unannounced).await.unwrap();
    request_payload(
        &relay.next().await,
        &keybridge_proto::TransactionId([0x5a; 16]),
    );
    assert!(a.metric(PEER_EVENTS_CAUGHT_UP).await > caught_up);
    b.shutdown().await;
}

/// Any role that can connect to the database may NOTIFY. A forged note
/// saying a pending transaction ended reaches the instance, which reads the
/// store, finds it pending, and tells the waiting terminal nothing.
#[tokio::test]
async fn a_forged_notification_cannot_end_a_payment() {
    let Some((a, terminal, _card)) = on_postgres().await else {
        return;
    };
    let tx = a.pay(&terminal, 700).await;
    let wait = long_poll(&a, &a.base, &terminal.api_key, &tx.id, 3);
    let (db, connection) =
        tokio_postgres::connect(a.database_url.as_deref().unwrap(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let forged = serde_json::json!({
        "from": "forger",
        "event": {"kind": "ended", "id": tx.id.to_hex()},
    })
    .to_string();
    db.execute(
        "SELECT pg_notify($1, $2)",
        &[&keybridge_server::peers::CHANNEL, &forged],
    )
    .await
    .unwrap();
    let heard = answered(wait, "the waiting terminal got no answer").await;
    assert_eq!(heard.status, TransactionStatus::Pending);
    assert_eq!(a.transfer_count(&tx.id).await, 0);
}

/// The database drops every connection (a restart, a failover): the next
/// requests still work, on fresh connections, and the payment settles.
#[tokio::test]
async fn requests_work_again_after_the_database_drops_every_connection() {
    let Some((a, terminal, card)) = on_postgres().await else {
        return;
    };
    // Warm the pool: these connections are the ones that will be dropped.
    let first = a.pay(&terminal, 100).await;
    let db = connect(&a).await;
    let dropped: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(dropped >= 1);

    let second = a.pay(&terminal, 200).await;
    let mut relay = a.relay(&card.enrolled.credential).await;
    for tx in [&first, &second] {
        let payload = request_payload(&relay.next().await, &tx.id);
        let settled = a.confirm_ok(&card, &tx.id, &card.sign(&payload)).await;
        assert_eq!(settled.status, TransactionStatus::Settled);
    }
    a.assert_ledger_balanced().await;
}

/// A terminal disabled on B is refused by A at once, though A had just
/// authenticated (and remembered) its key: A hears of it from B.
#[tokio::test]
async fn a_terminal_disabled_on_one_instance_is_refused_by_another_at_once() {
    let Some((a, terminal)) = terminal_changed_on_another_instance("disable").await else {
        return;
    };
    refused_soon(&a, &terminal.api_key).await;
}

/// A key rotated on B is refused by A at once, though A had just
/// authenticated (and remembered) it; the new key works on A.
#[tokio::test]
async fn a_key_rotated_on_one_instance_is_refused_by_another_at_once() {
    let Some((a, terminal)) = terminal_changed_on_another_instance("rotate-key").await else {
        return;
    };
    refused_soon(&a, &terminal.api_key).await;
    let rotated: TerminalCreated = terminal.answer.json().await.unwrap();
    let r = a.create(&rotated.api_key, "new-key", payment(100)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

/// A terminal that has just paid through instance A, and B's 200 answer to
/// `POST /v1/admin/terminals/{id}/{action}` (B kept running). `None` without
/// PostgreSQL.
struct Changed {
    api_key: String,
    answer: reqwest::Response,
    _b: keybridge_server::RunningServer,
}

async fn terminal_changed_on_another_instance(action: &str) -> Option<(Harness, Changed)> {
    let (a, terminal, _card) = on_postgres().await?;
    let b = a.another_instance().await;
    assert_eq!(
        a.pay(&terminal, 100).await.status,
        TransactionStatus::Pending
    );
    let answer = a
        .http
        .post(format!(
            "http://{}/v1/admin/terminals/{}/{action}",
            b.addr, terminal.id
        ))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "{action}");
    Some((
        a,
        Changed {
            api_key: terminal.api_key,
            answer,
            _b: b,
        },
    ))
}

/// Waits until `a` refuses `api_key`: well inside the terminal cache's 30 s,
/// so only the other instance's notification can explain the 401.
async fn refused_soon(a: &Harness, api_key: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for n in 0.. {
        let r = a.create(api_key, &format!("after-{n}"), payment(100)).await;
        if r.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert!(
            std::time::Instant::now() < deadline,
            "A still accepts the key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What the others did while an instance's event connection was down is
/// not lost: a request created on B in that gap (its notification gone to
/// nobody on A) reaches the relay on A once A is connected again, because
/// reconnecting tells A's relay sockets to re-read the store.
#[tokio::test]
async fn a_request_made_while_an_instance_was_not_listening_reaches_its_relay() {
    let Some((a, terminal, card)) = on_postgres().await else {
        return;
    };
    let b = a.another_instance().await;
    let mut relay = a.relay(&card.enrolled.credential).await;
    let db = connect(&a).await;
    cut_listeners(&db).await;
    // Gone before the request is made (they wait a second to reconnect).
    wait_for_listeners(&db, 0).await;
    let tx = create_on(&a, &b.addr, &terminal.api_key, "in-the-gap", 700).await;
    request_payload(&relay.next().await, &tx.id);
    b.shutdown().await;
}

/// A plain connection to the harness's database.
async fn connect(h: &Harness) -> tokio_postgres::Client {
    let url = h.database_url.clone().unwrap();
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db
}

/// Terminates every instance's listening connection; returns how many.
async fn cut_listeners(db: &tokio_postgres::Client) -> i64 {
    cut(db, keybridge_server::peers::APPLICATION_NAME).await
}

/// Terminates every connection with `application_name`; returns how many.
async fn cut(db: &tokio_postgres::Client, application_name: &str) -> i64 {
    db.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = $1 AND datname = current_database()",
        &[&application_name],
    )
    .await
    .unwrap()
    .get(0)
}

/// A connection listening on the instances' channel, and what it hears.
async fn listen(
    h: &Harness,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use futures_util::StreamExt;
    let url = h.database_url.clone().unwrap();
    let (db, mut connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (sender, heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = sender.send(n.payload().to_owned());
            }
        }
    });
    db.batch_execute(&format!("LISTEN {}", keybridge_server::peers::CHANNEL))
        .await
        .unwrap();
    (db, heard)
}

/// The next note heard: its event's kind and transaction id.
async fn next_note(heard: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> (String, String) {
    let text = tokio::time::timeout(GUARD, heard.recv())
        .await
        .expect("a note")
        .unwrap();
    let note: serde_json::Value = serde_json::from_str(&text).unwrap();
    let field = |name: &str| note["event"][name].as_str().unwrap_or_default().to_owned();
    (field("kind"), field("id"))
}

/// Waits (up to [`GUARD`]) until exactly `n` listening connections are open.
async fn wait_for_listeners(db: &tokio_postgres::Client, n: i64) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = $1 AND datname = current_database()",
                &[&keybridge_server::peers::APPLICATION_NAME],
            )
            .await
            .unwrap()
            .get(0);
        if open == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} listening connections, not {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A terminal's long-poll (`?wait=wait_s`) for `id` on the instance at
/// `base`, running.
fn long_poll(
    h: &Harness,
    base: &str,
    api_key: &str,
    id: &keybridge_proto::TransactionId,
    wait_s: u32,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    tokio::spawn(
        h.http
            .get(format!("{base}/v1/transactions/{id}?wait={wait_s}"))
            .bearer_auth(api_key)
            .send(),
    )
}

/// The transaction as the long-poll answered it, within [`GUARD`].
async fn answered(
    poll: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    untold: &str,
) -> TransactionView {
    tokio::time::timeout(GUARD, poll)
        .await
        .expect(untold)
        .unwrap()
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Creates a payment on the instance at `addr`, with the harness's client.
async fn create_on(
    h: &Harness,
    addr: &std::net::SocketAddr,
    api_key: &str,
    idempotency_key: &str,
    amount_minor: u64,
) -> TransactionView {
    let created = h
        .http
        .post(format!("http://{addr}/v1/transactions"))
        .bearer_auth(api_key)
        .header("Idempotency-Key", idempotency_key)
        .json(&payment(amount_minor))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    created.json().await.unwrap()
}
