//! The payment flow over real loopback HTTP and WebSocket: what settles, what
//! is refused, and that money moves exactly once or not at all.

mod common;

use common::{error_body, payment, request_payload, sign_piv, sign_with, Harness, Options, GUARD};
use keybridge_proto::api::{
    Confirmation, DeclineReason, Reason, RelayAnswer, RelayMessage, TransactionStatus,
    TransactionView,
};
use keybridge_proto::{ConfirmationPayload, TransactionId};
use reqwest::StatusCode;
use std::time::Duration;

/// The whole happy path as a relay sees it: the request arrives live on the
/// WebSocket, the card signs what arrived, the server settles and says
/// `Cancelled` to the relay; balances move by exactly the amount.
#[tokio::test]
async fn a_signed_confirmation_settles_and_moves_exactly_the_amount() {
    let (h, terminal, card) = Harness::standard().await;
    let mut relay = h.relay(&card.enrolled.credential).await;
    let before = h.balances().await;

    let tx = h.pay(&terminal, 1234).await;
    assert_eq!(tx.status, TransactionStatus::Pending);
    assert_eq!(tx.amount_display, "CNY 12.34");
    assert_eq!(tx.payee_name, "shop display");

    let payload = request_payload(&relay.next().await, &tx.id);
    let decoded = ConfirmationPayload::decode(&payload).unwrap();
    assert_eq!(decoded.transaction_id, tx.id);
    assert_eq!(decoded.amount.minor_units, 1234);
    assert_eq!(decoded.origin, "keybridge.test");
    assert_eq!(decoded.expires_at_unix_s, decoded.created_at_unix_s + 120);

    let confirmation = card.sign(&payload);
    let settled = h.confirm_ok(&card, &tx.id, &confirmation).await;
    assert_eq!(
        (settled.status, settled.reason),
        (TransactionStatus::Settled, None)
    );
    assert_eq!(
        relay.next().await,
        RelayMessage::Cancelled {
            transaction_id: tx.id
        }
    );

    let after = h.balances().await;
    assert_eq!(after["alice"], before["alice"] - 1234);
    assert_eq!(after["shop"], before["shop"] + 1234);
    assert_eq!(after["issuance:CNY"], before["issuance:CNY"]);
    assert_eq!(h.transfer_count(&tx.id).await, 1);
    h.assert_ledger_balanced().await;

    // A confirmation after the end is a conflict, not a second settlement.
    let again = h
        .confirm(&card.enrolled.credential, &tx.id, &card.sign(&payload))
        .await;
    let (status, body) = error_body(again).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::CONFLICT, "not_pending")
    );
    assert_eq!(h.transfer_count(&tx.id).await, 1);
    relay.close().await;
}

/// A relay whose result was lost posts its answer again: the very answer
/// that settled the transaction hears the settled outcome (200), once more,
/// and nothing moves twice. Any other answer after the end, even a valid new
/// signature from the same card, is still 409 `not_pending`.
#[tokio::test]
async fn the_answer_that_settled_hears_the_outcome_again() {
    let (h, terminal, card) = Harness::standard().await;
    let tx = h.pay(&terminal, 700).await;
    let payload = h.payload(&tx.id).await;
    let answer = card.sign(&payload);
    let settled = h.confirm_ok(&card, &tx.id, &answer).await;
    assert_eq!(settled.status, TransactionStatus::Settled);

    let again = h.confirm_ok(&card, &tx.id, &answer).await;
    assert_eq!(again, settled);
    assert_eq!(h.transfer_count(&tx.id).await, 1);
    assert_eq!(h.balances().await["alice"], 1_000_000 - 700);

    let Confirmation::Signed { counter, .. } = &answer else {
        panic!("{answer:?}")
    };
    let forged = Confirmation::Signed {
        counter: *counter,
        signature: match card.sign(b"another payload") {
            Confirmation::Signed { signature, .. } => signature,
            other => panic!("{other:?}"),
        },
    };
    for other in [card.sign(&payload), forged] {
        let r = h.confirm(&card.enrolled.credential, &tx.id, &other).await;
        let (status, body) = error_body(r).await;
        assert_eq!(
            (status, body.error.as_str()),
            (StatusCode::CONFLICT, "not_pending")
        );
    }
    assert_eq!(h.transfer_count(&tx.id).await, 1);
    h.assert_ledger_balanced().await;
}

/// The same for a PIV device, which signs without a counter: the repeat of
/// its signature hears the outcome; another answer (a decline) does not.
#[tokio::test]
async fn a_piv_answer_that_settled_hears_the_outcome_again() {
    let h = Harness::start().await;
    h.account("alice", "CNY", 1_000_000).await;
    h.account("shop", "CNY", 0).await;
    let terminal = h.terminal().await;
    let card = h.enroll_as("alice", "piv").await;
    let tx = h.pay(&terminal, 700).await;
    let answer = sign_piv(&card.key, &h.payload(&tx.id).await);
    let settled = h.confirm_ok(&card, &tx.id, &answer).await;
    assert_eq!(settled.status, TransactionStatus::Settled);
    assert_eq!(h.confirm_ok(&card, &tx.id, &answer).await, settled);
    let declined = Confirmation::Declined {
        reason: DeclineReason::Declined,
    };
    let r = h
        .confirm(&card.enrolled.credential, &tx.id, &declined)
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::CONFLICT, "not_pending")
    );
    assert_eq!(h.transfer_count(&tx.id).await, 1);
    assert_eq!(h.balances().await["alice"], 1_000_000 - 700);
    h.assert_ledger_balanced().await;
}

/// A relay that connects late is sent what is already pending.
#[tokio::test]
async fn a_relay_receives_pending_requests_on_connect() {
    let (h, terminal, card) = Harness::standard().await;
    let first = h.pay(&terminal, 100).await;
    let second = h.pay(&terminal, 200).await;
    let mut relay = h.relay(&card.enrolled.credential).await;
    let a = relay.next().await;
    let b = relay.next().await;
    assert_eq!(request_payload(&a, &first.id), h.payload(&first.id).await);
    assert_eq!(request_payload(&b, &second.id), h.payload(&second.id).await);
    // And then live ones.
    let third = h.pay(&terminal, 300).await;
    request_payload(&relay.next().await, &third.id);
}

/// Same terminal, key and body: the same transaction, never a second one.
#[tokio::test]
async fn an_idempotent_replay_returns_the_same_transaction() {
    let (h, terminal, card) = Harness::standard().await;
    let first = h.create(&terminal.api_key, "key-1", payment(500)).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: TransactionView = first.json().await.unwrap();
    let replay = h.create(&terminal.api_key, "key-1", payment(500)).await;
    assert_eq!(replay.status(), StatusCode::OK);
    let replay: TransactionView = replay.json().await.unwrap();
    assert_eq!(replay, first);

    // Concurrent replays all resolve to the one transaction.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url, key) = (
            h.http.clone(),
            h.url("/v1/transactions"),
            terminal.api_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "key-2")
                .json(&payment(700))
                .send()
                .await
                .unwrap();
            let status = r.status();
            (status, r.json::<TransactionView>().await.unwrap().id)
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let (status, id) = t.await.unwrap();
        created += usize::from(status == StatusCode::ACCEPTED);
        ids.push(id);
    }
    assert_eq!(created, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1);

    assert_eq!(h.transactions().await.len(), 2);

    let payload = h.payload(&first.id).await;
    h.confirm_ok(&card, &first.id, &card.sign(&payload)).await;
    let after = h.create(&terminal.api_key, "key-1", payment(500)).await;
    assert_eq!(after.status(), StatusCode::OK);
    let after: TransactionView = after.json().await.unwrap();
    assert_eq!(
        (after.id, after.status),
        (first.id, TransactionStatus::Settled)
    );
    assert_eq!(h.transfer_count(&first.id).await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_conflict() {
    let (h, terminal, _card) = Harness::standard().await;
    let first = h.create(&terminal.api_key, "key-1", payment(500)).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let r = h.create(&terminal.api_key, "key-1", payment(501)).await;
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::CONFLICT, "idempotency_conflict")
    );
    // Another terminal may use the same key for its own transaction.
    let other = h.terminal().await;
    let r = h.create(&other.api_key, "key-1", payment(501)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

/// Dynamic linking: a signature over a different amount or payee is refused
/// against the stored payload, and no money moves.
#[tokio::test]
async fn a_signature_over_a_tampered_payload_is_rejected() {
    let (h, terminal, card) = Harness::standard().await;
    h.account("mallory", "CNY", 0).await;
    let before = h.balances().await;
    for tamper in ["amount", "payee"] {
        let tx = h.pay(&terminal, 1000).await;
        let mut p = ConfirmationPayload::decode(&h.payload(&tx.id).await).unwrap();
        match tamper {
            "amount" => p.amount.minor_units = 1,
            _ => p.payee = "mallory".parse().unwrap(),
        }
        let view = h
            .confirm_ok(&card, &tx.id, &card.sign(&p.encode().unwrap()))
            .await;
        assert_eq!(
            (view.status, view.reason),
            (TransactionStatus::Rejected, Some(Reason::BadSignature)),
            "{tamper}"
        );
        assert_eq!(h.transfer_count(&tx.id).await, 0);
    }
    assert_eq!(h.balances().await, before);
    h.assert_ledger_balanced().await;
}

/// A second transaction signed with an already-used counter is a replay.
#[tokio::test]
async fn an_old_counter_is_a_replay() {
    let (h, terminal, card) = Harness::standard().await;
    let first = h.pay(&terminal, 100).await;
    let c5 = sign_with(&card.key, &h.payload(&first.id).await, 5);
    h.confirm_ok(&card, &first.id, &c5).await;

    let second = h.pay(&terminal, 100).await;
    let payload = h.payload(&second.id).await;
    for counter in [5, 4] {
        let third = h.pay(&terminal, 100).await;
        let view = h
            .confirm_ok(
                &card,
                &third.id,
                &sign_with(&card.key, &h.payload(&third.id).await, counter),
            )
            .await;
        assert_eq!(
            view.reason,
            Some(Reason::CounterReplay),
            "counter {counter}"
        );
    }
    // A fresh counter still works, and the device shows it.
    let view = h
        .confirm_ok(&card, &second.id, &sign_with(&card.key, &payload, 6))
        .await;
    assert_eq!(view.status, TransactionStatus::Settled);
    let devices: Vec<keybridge_proto::api::DeviceView> =
        h.admin_get("/v1/admin/devices").await.json().await.unwrap();
    assert_eq!(devices[0].last_counter, 6);
}

#[tokio::test]
async fn declines_and_pin_failures_pass_their_reason_through() {
    let (h, terminal, card) = Harness::standard().await;
    for (decline, reason) in [
        (DeclineReason::Declined, Reason::Declined),
        (DeclineReason::WrongPin, Reason::WrongPin),
        (DeclineReason::PinBlocked, Reason::PinBlocked),
        (DeclineReason::DeviceError, Reason::DeviceError),
    ] {
        let tx = h.pay(&terminal, 100).await;
        let declined = Confirmation::Declined { reason: decline };
        let view = h.confirm_ok(&card, &tx.id, &declined).await;
        assert_eq!(
            (view.status, view.reason),
            (TransactionStatus::Rejected, Some(reason))
        );
        // The same decline posted again (its result was lost) hears the
        // outcome; a different answer to the ended transaction does not.
        assert_eq!(h.confirm_ok(&card, &tx.id, &declined).await, view);
        let other = h
            .confirm(
                &card.enrolled.credential,
                &tx.id,
                &card.sign(&h.payload(&tx.id).await),
            )
            .await;
        let (status, body) = error_body(other).await;
        assert_eq!(
            (status, body.error.as_str()),
            (StatusCode::CONFLICT, "not_pending")
        );
    }
    h.assert_ledger_balanced().await;
}

#[tokio::test]
async fn insufficient_funds_fail_without_moving_money() {
    let (h, terminal, card) = Harness::standard().await;
    let tx = h.pay(&terminal, 1_000_001).await;
    let view = h
        .confirm_ok(&card, &tx.id, &card.sign(&h.payload(&tx.id).await))
        .await;
    assert_eq!(
        (view.status, view.reason),
        (TransactionStatus::Failed, Some(Reason::InsufficientFunds))
    );
    assert_eq!(h.balances().await["alice"], 1_000_000);
    // Exactly the whole balance is fine.
    let tx = h.pay(&terminal, 1_000_000).await;
    let view = h
        .confirm_ok(&card, &tx.id, &card.sign(&h.payload(&tx.id).await))
        .await;
    assert_eq!(view.status, TransactionStatus::Settled);
    assert_eq!(h.balances().await["alice"], 0);
    h.assert_ledger_balanced().await;
}

/// The sweeper expires a transaction once the (manual) clock passes its
/// expiry; a waiting terminal and the relay both hear of it.
#[tokio::test]
async fn the_sweeper_expires_overdue_transactions() {
    let (h, terminal, card) = Harness::standard().await;
    let tx = h.pay(&terminal, 100).await;
    let mut relay = h.relay(&card.enrolled.credential).await;
    request_payload(&relay.next().await, &tx.id);

    let url = h.url(&format!("/v1/transactions/{}?wait=30", tx.id));
    let poll = tokio::spawn(h.http.get(url).bearer_auth(&terminal.api_key).send());
    h.clock.advance(120);
    let view: TransactionView = tokio::time::timeout(GUARD, poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (view.status, view.reason),
        (TransactionStatus::Expired, Some(Reason::Expired))
    );
    assert_eq!(
        relay.next().await,
        RelayMessage::Cancelled {
            transaction_id: tx.id
        }
    );
    h.assert_ledger_balanced().await;
}

/// A valid signature that arrives after the expiry does not settle.
#[tokio::test]
async fn a_late_confirmation_expires_the_transaction() {
    // The sweeper ticks hourly here, so only the confirmation can end it.
    let h = Harness::start_with(Options {
        sweep_interval_ms: 3_600_000,
        ..Options::default()
    })
    .await;
    let (h, terminal, card) = h.standard_setup().await;
    let tx = h.pay(&terminal, 100).await;
    let confirmation = card.sign(&h.payload(&tx.id).await);
    h.clock.advance(121);
    let view = h.confirm_ok(&card, &tx.id, &confirmation).await;
    assert_eq!(
        (view.status, view.reason),
        (TransactionStatus::Expired, Some(Reason::Expired))
    );
    assert_eq!(h.transfer_count(&tx.id).await, 0);
}

/// A device of another account can neither see nor end someone else's
/// transaction.
#[tokio::test]
async fn another_accounts_device_gets_404_and_changes_nothing() {
    let (h, terminal, _alice_card) = Harness::standard().await;
    let bob = h.enroll("shop").await;
    let tx = h.pay(&terminal, 100).await;
    let payload = h.payload(&tx.id).await;
    for confirmation in [
        bob.sign(&payload),
        Confirmation::Declined {
            reason: DeclineReason::Declined,
        },
    ] {
        let r = h
            .confirm(&bob.enrolled.credential, &tx.id, &confirmation)
            .await;
        let (status, body) = error_body(r).await;
        assert_eq!(
            (status, body.error.as_str()),
            (StatusCode::NOT_FOUND, "not_found")
        );
    }
    let r = h
        .http
        .get(h.url(&format!("/v1/transactions/{}", tx.id)))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    let view: TransactionView = r.json().await.unwrap();
    assert_eq!(view.status, TransactionStatus::Pending);
    // An unknown id is a 404 too.
    let r = h
        .confirm(
            &bob.enrolled.credential,
            &TransactionId([9; 16]),
            &bob.sign(&payload),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Disabling a device refuses its credential at once, closes its relay, and
/// leaves the payer without a device for new payments.
#[tokio::test]
async fn a_disabled_device_is_refused_immediately() {
    let (h, terminal, card) = Harness::standard().await;
    let tx = h.pay(&terminal, 100).await;
    let mut relay = h.relay(&card.enrolled.credential).await;
    request_payload(&relay.next().await, &tx.id);

    let r = h
        .admin_post(
            &format!("/v1/admin/devices/{}/disable", card.enrolled.device_id),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let view: keybridge_proto::api::DeviceView = r.json().await.unwrap();
    assert_eq!(view.status, "disabled");
    assert!(relay.closed().await);

    let r = h
        .confirm(
            &card.enrolled.credential,
            &tx.id,
            &card.sign(&h.payload(&tx.id).await),
        )
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let r = h
        .http
        .get(h.url("/v1/relay"))
        .bearer_auth(&card.enrolled.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = h
        .create(&terminal.api_key, "after-disable", payment(100))
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "no_device")
    );
    assert_eq!(h.transfer_count(&tx.id).await, 0);
}

/// Two valid confirmations racing for one transaction settle it once.
#[tokio::test]
async fn concurrent_confirmations_settle_at_most_once() {
    let (h, terminal, card) = Harness::standard().await;
    let second_card = h.enroll("alice").await;
    for round in 0..5u32 {
        let tx = h.pay(&terminal, 100).await;
        let payload = h.payload(&tx.id).await;
        let a = sign_with(&card.key, &payload, round + 1);
        let b = sign_with(&second_card.key, &payload, round + 1);
        let (ra, rb) = tokio::join!(
            h.confirm(&card.enrolled.credential, &tx.id, &a),
            h.confirm(&second_card.enrolled.credential, &tx.id, &b),
        );
        let mut statuses = [ra.status(), rb.status()];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {round}"
        );
        assert_eq!(h.transfer_count(&tx.id).await, 1);
    }
    assert_eq!(h.balances().await["alice"], 1_000_000 - 500);
    h.assert_ledger_balanced().await;
}

/// A transaction ended behind this server's back (as another instance on the
/// same database would end it) is still refused here, although this server
/// remembers it as pending: the payment unit decides on the stored row.
#[tokio::test]
async fn a_transaction_ended_elsewhere_is_not_paid_from_memory() {
    let (h, terminal, card) = Harness::standard().await;
    let tx = h.pay(&terminal, 100).await;
    let payload = h.payload(&tx.id).await;
    let ended = h
        .server()
        .store()
        .finalize(
            &tx.id,
            TransactionStatus::Rejected,
            Reason::Declined,
            None,
            keybridge_server::Clock::now_unix_s(&*h.clock),
        )
        .await
        .unwrap();
    assert!(matches!(
        ended,
        keybridge_server::store::Finalized::Applied(_)
    ));

    let r = h
        .confirm(&card.enrolled.credential, &tx.id, &card.sign(&payload))
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::CONFLICT, "not_pending")
    );
    assert_eq!(h.transfer_count(&tx.id).await, 0);
    assert_eq!(h.balances().await["alice"], 1_000_000);
    h.assert_ledger_balanced().await;
}

/// Long-poll returns as soon as the transaction settles.
#[tokio::test]
async fn a_long_poll_returns_on_settlement() {
    let (h, terminal, card) = Harness::standard().await;
    let tx = h.pay(&terminal, 100).await;
    let url = h.url(&format!("/v1/transactions/{}?wait=60", tx.id));
    let poll = tokio::spawn(h.http.get(url).bearer_auth(&terminal.api_key).send());
    let mut relay = h.relay(&card.enrolled.credential).await;
    let payload = request_payload(&relay.next().await, &tx.id);
    h.confirm_ok(&card, &tx.id, &card.sign(&payload)).await;
    let r = tokio::time::timeout(GUARD, poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let view: TransactionView = r.json().await.unwrap();
    assert_eq!(view.status, TransactionStatus::Settled);

    // wait=0 answers at once; another terminal cannot see it; wait>60 is refused.
    let r = h
        .http
        .get(h.url(&format!("/v1/transactions/{}?wait=0", tx.id)))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let other = h.terminal().await;
    let r = h
        .http
        .get(h.url(&format!("/v1/transactions/{}", tx.id)))
        .bearer_auth(&other.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = h
        .http
        .get(h.url(&format!("/v1/transactions/{}?wait=61", tx.id)))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

/// `Prefer: wait=N` on the create holds the answer until the end: 201 with
/// the settled view, no long-poll needed; without an end, 202 pending after
/// the wait; a replay is 200.
#[tokio::test]
async fn prefer_wait_on_create_answers_with_the_outcome() {
    let (h, terminal, card) = Harness::standard().await;
    let create = |key: &'static str, wait: &'static str| {
        h.http
            .post(h.url("/v1/transactions"))
            .bearer_auth(&terminal.api_key)
            .header("Idempotency-Key", key)
            .header("Prefer", wait)
            .json(&payment(100))
            .send()
    };
    let waiting = tokio::spawn(create("prefer-1", "respond-async, wait=30"));
    let mut relay = h.relay(&card.enrolled.credential).await;
    let request = relay.next().await;
    let RelayMessage::ConfirmationRequest { transaction_id, .. } = &request else {
        panic!("expected a confirmation request, got {request:?}");
    };
    let id = *transaction_id;
    let payload = request_payload(&request, &id);
    h.confirm_ok(&card, &id, &card.sign(&payload)).await;
    let r = tokio::time::timeout(GUARD, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["preference-applied"], "wait=30");
    let view: TransactionView = r.json().await.unwrap();
    assert_eq!((view.id, view.status), (id, TransactionStatus::Settled));

    // Nobody answers: pending after the wait.
    let started = std::time::Instant::now();
    let r = create("prefer-2", "wait=1").await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let view: TransactionView = r.json().await.unwrap();
    assert_eq!(view.status, TransactionStatus::Pending);

    // A replay answers at once with the original; a wait that does not parse
    // is ignored.
    let r = create("prefer-1", "wait=soon").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let view: TransactionView = r.json().await.unwrap();
    assert_eq!((view.id, view.status), (id, TransactionStatus::Settled));
}

/// The relay's answer on its WebSocket is judged as the HTTP endpoint judges
/// it: a result frame with status 200 and the settled view (and no
/// `Cancelled` after it: the result said how it ended); the same answer
/// again hears the same outcome, another answer gets the endpoint's 409
/// `not_pending`, and neither moves anything; a frame that is not an answer
/// is ignored and the socket stays open.
#[tokio::test]
async fn an_answer_on_the_relay_socket_settles_once() {
    let (h, terminal, card) = Harness::standard().await;
    let tx = h.pay(&terminal, 250).await;
    let mut relay = h.relay(&card.enrolled.credential).await;
    let payload = request_payload(&relay.next().await, &tx.id);
    let answer = RelayAnswer::Confirmation {
        transaction_id: tx.id,
        confirmation: card.sign(&payload),
    };
    relay.send_text("{\"type\":\"nonsense\"}".into()).await;
    relay
        .send_text(serde_json::to_string(&answer).unwrap())
        .await;
    let view = match relay.next().await {
        RelayMessage::ConfirmationResult {
            transaction_id,
            status: 200,
            view: Some(view),
            error: None,
        } if transaction_id == tx.id => view,
        other => panic!("expected a 200 result, got {other:?}"),
    };
    assert_eq!(view.status, TransactionStatus::Settled);
    // The result told the relay how its request ended: no `Cancelled` follows
    // (the next frame is the answer to the second submission below).
    relay
        .send_text(serde_json::to_string(&answer).unwrap())
        .await;
    match relay.next().await {
        RelayMessage::ConfirmationResult {
            status: 200,
            view: Some(again),
            ..
        } => assert_eq!(again, view),
        other => panic!("expected the same 200 result, got {other:?}"),
    }
    let another = RelayAnswer::Confirmation {
        transaction_id: tx.id,
        confirmation: card.sign(&payload),
    };
    relay
        .send_text(serde_json::to_string(&another).unwrap())
        .await;
    match relay.next().await {
        RelayMessage::ConfirmationResult {
            status,
            view: None,
            error: Some(error),
            ..
        } => assert_eq!((status, error.error.as_str()), (409, "not_pending")),
        other => panic!("expected a 409 result, got {other:?}"),
    }
    assert_eq!(h.transfer_count(&tx.id).await, 1);
    h.assert_ledger_balanced().await;
}

/// The relay's session judges answers with the device it read at connect. A
/// revocation it was not told of (made in the store directly, as another
/// server instance would) still stops the payment: the payment unit checks
/// the stored device, so the transaction ends `certificate_revoked` and no
/// money moves.
#[tokio::test]
async fn a_socket_answer_from_a_device_revoked_elsewhere_moves_nothing() {
    let (h, terminal, card) = Harness::standard().await;
    let tx = h.pay(&terminal, 250).await;
    let mut relay = h.relay(&card.enrolled.credential).await;
    let payload = request_payload(&relay.next().await, &tx.id);
    let revoked = h
        .server()
        .store()
        .revoke_device(
            &card.enrolled.device_id,
            keybridge_server::Clock::now_unix_s(&*h.clock),
        )
        .await
        .unwrap();
    assert!(revoked.is_some_and(|d| d.is_revoked()));
    let answer = RelayAnswer::Confirmation {
        transaction_id: tx.id,
        confirmation: card.sign(&payload),
    };
    relay
        .send_text(serde_json::to_string(&answer).unwrap())
        .await;
    let view = match relay.next().await {
        RelayMessage::ConfirmationResult {
            status: 200,
            view: Some(view),
            ..
        } => view,
        other => panic!("expected a 200 result, got {other:?}"),
    };
    assert_eq!(
        (view.status, view.reason),
        (
            TransactionStatus::Rejected,
            Some(Reason::CertificateRevoked)
        )
    );
    assert_eq!(h.transfer_count(&tx.id).await, 0);
    assert_eq!(h.balances().await["alice"], 1_000_000);
    h.assert_ledger_balanced().await;
}

/// SSE: `status` with pending at once, then settled, then the stream ends.
#[tokio::test]
async fn server_sent_events_deliver_pending_then_settled() {
    let (h, terminal, card) = Harness::standard().await;
    let tx = h.pay(&terminal, 100).await;
    let r = h
        .http
        .get(h.url(&format!("/v1/transactions/{}/events", tx.id)))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut events = sse_events(r);

    let first = tokio::time::timeout(GUARD, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, TransactionStatus::Pending);
    let payload = h.payload(&tx.id).await;
    h.confirm_ok(&card, &tx.id, &card.sign(&payload)).await;
    let second = tokio::time::timeout(GUARD, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.id, second.status),
        (tx.id, TransactionStatus::Settled)
    );
    // The server closes the stream after the final status.
    assert!(tokio::time::timeout(GUARD, events.recv())
        .await
        .unwrap()
        .is_none());
}

/// Parses `event: status` blocks of an SSE response into views.
fn sse_events(r: reqwest::Response) -> tokio::sync::mpsc::Receiver<TransactionView> {
    use futures_util::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let mut body = r.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = Some(e.trim().to_owned());
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if event.as_deref() == Some("status") {
                    let _ = tx.send(serde_json::from_str(&data).unwrap()).await;
                }
            }
        }
    });
    rx
}

/// A restarted server keeps its CA, ledger and devices.
#[tokio::test]
async fn state_survives_a_restart() {
    let (mut h, terminal, card) = Harness::standard().await;
    let ca_before = h.admin_get("/v1/admin/ca.pem").await.text().await.unwrap();
    let tx = h.pay(&terminal, 100).await;
    h.restart().await;
    let ca_after = h.admin_get("/v1/admin/ca.pem").await.text().await.unwrap();
    assert_eq!(ca_before, ca_after);
    assert!(ca_after.starts_with("-----BEGIN CERTIFICATE-----"));
    let view = h
        .confirm_ok(&card, &tx.id, &card.sign(&h.payload(&tx.id).await))
        .await;
    assert_eq!(view.status, TransactionStatus::Settled);
    h.assert_ledger_balanced().await;
}

/// A graceful shutdown does not wait for open relay sockets, SSE streams or
/// long-polls: they are told to finish.
#[tokio::test]
async fn shutdown_ends_open_streams() {
    let (mut h, terminal, card) = Harness::standard().await;
    let tx = h.pay(&terminal, 100).await;
    let mut relay = h.relay(&card.enrolled.credential).await;
    request_payload(&relay.next().await, &tx.id);
    let sse = h
        .http
        .get(h.url(&format!("/v1/transactions/{}/events", tx.id)))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    let mut events = sse_events(sse);
    assert_eq!(
        events.recv().await.unwrap().status,
        TransactionStatus::Pending
    );
    let url = h.url(&format!("/v1/transactions/{}?wait=60", tx.id));
    let poll = tokio::spawn(h.http.get(url).bearer_auth(&terminal.api_key).send());

    let server = h.server.take().unwrap();
    tokio::time::timeout(GUARD, server.shutdown())
        .await
        .expect("shutdown hung");
    assert!(relay.closed().await);
    assert!(tokio::time::timeout(GUARD, events.recv())
        .await
        .unwrap()
        .is_none());
    let polled = tokio::time::timeout(GUARD, poll).await.unwrap().unwrap();
    // The long-poll either got its (still pending) answer or saw the server go.
    if let Ok(r) = polled {
        let view: TransactionView = r.json().await.unwrap();
        assert_eq!(view.status, TransactionStatus::Pending);
    }
}

/// A payer has at most `pending_per_payer_max` payments waiting for
/// confirmation: one more is refused with 429 `too_many_pending` and stores
/// nothing, so a stolen terminal key or a till in a loop cannot flood the
/// payer's phone with prompts ("MFA fatigue"). Replays of a stored request
/// still answer; other payers are not held back; a payment that ends, or
/// expires (swept or not yet), makes room.
#[tokio::test]
async fn a_payer_has_at_most_the_limit_of_payments_waiting() {
    let h = Harness::start_with(Options {
        pending_per_payer_max: 2,
        // Expired transactions stay `pending` in the store until confirmed
        // or swept: the limit must not count them.
        sweep_interval_ms: 3_600_000,
        ..Options::default()
    })
    .await;
    let (h, terminal, card) = h.standard_setup().await;
    let r = h.create(&terminal.api_key, "first", payment(100)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let first: TransactionView = r.json().await.unwrap();
    h.pay(&terminal, 200).await;

    let refusals = r#"keybridge_creations_refused_total{reason="too_many_pending"}"#;
    let before = h.metric(refusals).await;
    let r = h.create(&terminal.api_key, "third", payment(300)).await;
    let (status, body) = error_body(r).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_pending")
    );
    assert!(
        body.message.contains("limit of 2 payments waiting"),
        "{}",
        body.message
    );
    let listed = h.transactions().await;
    assert_eq!(listed.len(), 2, "the refused one was stored: {listed:?}");
    // Counted for the operator (other tests share the process's counters).
    assert!(h.metric(refusals).await > before);

    // A replay of a stored request answers with it, at the limit or not.
    let r = h.create(&terminal.api_key, "first", payment(100)).await;
    assert!(r.status().is_success(), "{}", r.status());

    // Another payer has its own limit.
    h.enroll("shop").await;
    let mut theirs = payment(50);
    theirs["payer"] = "shop".into();
    theirs["payee"] = "alice".into();
    let r = h.create(&terminal.api_key, "shop-pays", theirs).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // The first ends: room for one.
    let confirmation = card.sign(&h.payload(&first.id).await);
    let settled = h.confirm_ok(&card, &first.id, &confirmation).await;
    assert_eq!(settled.status, TransactionStatus::Settled);
    let r = h.create(&terminal.api_key, "third", payment(300)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = h.create(&terminal.api_key, "fourth", payment(400)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);

    // Both waiting ones expire; not yet swept, they no longer count.
    h.clock.advance(121);
    let r = h.create(&terminal.api_key, "fourth", payment(400)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    h.assert_ledger_balanced().await;
}
