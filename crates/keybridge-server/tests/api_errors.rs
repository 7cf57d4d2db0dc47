//! Every refusal is a JSON `ErrorBody` with its documented status and code,
//! whether it comes from our validation or from axum's extractors.

mod common;

use common::{error_body, payment, Harness, Options, ADMIN_TOKEN};
use keybridge_proto::api::{b64, AccountView, DeviceView, TransactionView};
use reqwest::StatusCode;
use serde_json::json;

async fn expect(r: reqwest::Response, status: StatusCode, code: &str) {
    let (got, body) = error_body(r).await;
    assert_eq!(
        (got, body.error.as_str()),
        (status, code),
        "{}",
        body.message
    );
}

#[tokio::test]
async fn malformed_bodies_are_invalid_requests() {
    let (h, terminal, _card) = Harness::standard().await;
    let raw = |key: &'static str, body: &'static str| {
        h.http
            .post(h.url("/v1/transactions"))
            .bearer_auth(&terminal.api_key)
            .header("Idempotency-Key", key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let bad = StatusCode::BAD_REQUEST;
    expect(
        raw("k1", "{not json").await.unwrap(),
        bad,
        "invalid_request",
    )
    .await;
    expect(
        raw("k2", r#"{"payer":"alice","payee":"shop","amount_minor":1,"currency":"CNY","order_id":"o","amont":5}"#).await.unwrap(),
        bad,
        "invalid_request",
    )
    .await;
    expect(
        raw("k3", r#"{"payer":"alice","payee":"shop","amount_minor":12.5,"currency":"CNY","order_id":"o"}"#).await.unwrap(),
        bad,
        "invalid_request",
    )
    .await;
    expect(
        raw(
            "k4",
            r#"{"payer":"alice","payee":"shop","amount_minor":-1,"currency":"CNY","order_id":"o"}"#,
        )
        .await
        .unwrap(),
        bad,
        "invalid_request",
    )
    .await;
    expect(
        raw(
            "k5",
            r#"{"payer":"alice","payee":"shop","amount_minor":1,"currency":"XXX","order_id":"o"}"#,
        )
        .await
        .unwrap(),
        bad,
        "invalid_request",
    )
    .await;
    expect(raw("k6", "").await.unwrap(), bad, "invalid_request").await;
    // The fields in order, as an array: serde would take it; the API does not.
    expect(
        raw("k7", r#"["alice","shop",1,"CNY","o",""]"#)
            .await
            .unwrap(),
        bad,
        "invalid_request",
    )
    .await;
    expect(
        h.admin_post("/v1/admin/terminals", json!(["till"])).await,
        bad,
        "invalid_request",
    )
    .await;

    // Values the types accept but the rules do not.
    let mut cases = vec![
        json!({"payer": "alice", "payee": "shop", "amount_minor": 0, "currency": "CNY", "order_id": "o"}),
        json!({"payer": "alice", "payee": "alice", "amount_minor": 1, "currency": "CNY", "order_id": "o"}),
        json!({"payer": "alice", "payee": "shop", "amount_minor": 1, "currency": "CNY", "order_id": ""}),
        json!({"payer": "alice", "payee": "shop", "amount_minor": 1, "currency": "CNY", "order_id": "x".repeat(65)}),
        json!({"payer": "alice", "payee": "shop", "amount_minor": 1, "currency": "CNY", "order_id": "o", "description": "d".repeat(141)}),
        json!({"payer": "alice", "payee": "shop", "amount_minor": 1, "currency": "CNY", "order_id": "o\nPay mallory"}),
        json!({"payer": "alice", "payee": "shop", "amount_minor": 1, "currency": "CNY", "order_id": "o", "description": "rev \u{202E}"}),
        json!({"payer": "alice", "payee": "shop", "amount_minor": u64::MAX, "currency": "CNY", "order_id": "o"}),
    ];
    for (i, body) in cases.drain(..).enumerate() {
        let r = h
            .create(&terminal.api_key, &format!("rule-{i}"), body)
            .await;
        expect(r, bad, "invalid_request").await;
    }
}

#[tokio::test]
async fn the_idempotency_key_is_required_and_bounded() {
    let (h, terminal, _card) = Harness::standard().await;
    let r = h
        .http
        .post(h.url("/v1/transactions"))
        .bearer_auth(&terminal.api_key)
        .json(&payment(1))
        .send()
        .await
        .unwrap();
    expect(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = h
        .create(&terminal.api_key, &"k".repeat(129), payment(1))
        .await;
    expect(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = h
        .create(&terminal.api_key, &"k".repeat(128), payment(1))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn oversized_bodies_are_413_with_a_json_body() {
    let h = Harness::start_with(Options {
        body_limit_bytes: 4096,
        ..Options::default()
    })
    .await;
    let (h, terminal, _card) = h.standard_setup().await;
    let huge = json!({"payer": "alice", "payee": "shop", "amount_minor": 1, "currency": "CNY", "order_id": "o", "description": "x".repeat(10_000)});
    let r = h.create(&terminal.api_key, "big", huge.clone()).await;
    expect(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // Also without a Content-Length (chunked), and on the admin API.
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(huge.to_string())];
    let r = h
        .http
        .post(h.url("/v1/transactions"))
        .bearer_auth(&terminal.api_key)
        .header("Idempotency-Key", "big-chunked")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    expect(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    let r = h
        .admin_post("/v1/admin/terminals", json!({"name": "n".repeat(10_000)}))
        .await;
    expect(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

#[tokio::test]
async fn credentials_are_checked() {
    let (h, terminal, card) = Harness::standard().await;
    let unauthorized = StatusCode::UNAUTHORIZED;
    // Terminal API.
    expect(
        h.create("kbt_wrong", "k", payment(1)).await,
        unauthorized,
        "unauthorized",
    )
    .await;
    let r = h
        .http
        .post(h.url("/v1/transactions"))
        .header("Idempotency-Key", "k")
        .json(&payment(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    expect(r, unauthorized, "unauthorized").await;
    // A device credential is not an API key, nor the admin token.
    expect(
        h.create(&card.enrolled.credential, "k", payment(1)).await,
        unauthorized,
        "unauthorized",
    )
    .await;
    expect(
        h.create(ADMIN_TOKEN, "k", payment(1)).await,
        unauthorized,
        "unauthorized",
    )
    .await;
    // Admin API.
    for token in ["wrong", &terminal.api_key, &format!("{ADMIN_TOKEN}x")] {
        let r = h
            .http
            .get(h.url("/v1/admin/accounts"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        expect(r, unauthorized, "unauthorized").await;
    }
    let r = h
        .http
        .get(h.url("/v1/admin/accounts"))
        .send()
        .await
        .unwrap();
    expect(r, unauthorized, "unauthorized").await;
    let r = h
        .http
        .get(h.url("/v1/admin/ca.pem"))
        .header("Authorization", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    expect(r, unauthorized, "unauthorized").await;
    // Relay API.
    let r = h
        .http
        .get(h.url("/v1/relay"))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    expect(r, unauthorized, "unauthorized").await;
    let r = h
        .http
        .post(h.url(&format!("/v1/confirmations/{}", "ab".repeat(16))))
        .bearer_auth("kbd_nope")
        .json(&json!({"result": "declined", "reason": "declined"}))
        .send()
        .await
        .unwrap();
    expect(r, unauthorized, "unauthorized").await;
    // A valid device credential on a plain GET is not a WebSocket.
    let r = h
        .http
        .get(h.url("/v1/relay"))
        .bearer_auth(&card.enrolled.credential)
        .send()
        .await
        .unwrap();
    expect(r, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test]
async fn accounts_currency_and_devices_are_checked() {
    let (h, terminal, _card) = Harness::standard().await;
    h.account("eur-shop", "EUR", 0).await;
    h.account("nocard", "CNY", 100).await;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let body = |payer: &str, payee: &str, currency: &str| json!({"payer": payer, "payee": payee, "amount_minor": 1, "currency": currency, "order_id": "o"});
    let cases = [
        (body("ghost", "shop", "CNY"), "unknown_account"),
        (body("alice", "ghost", "CNY"), "unknown_account"),
        (body("issuance:CNY", "shop", "CNY"), "unknown_account"),
        (body("alice", "issuance:CNY", "CNY"), "unknown_account"),
        (body("alice", "eur-shop", "CNY"), "currency_mismatch"),
        (body("alice", "shop", "EUR"), "currency_mismatch"),
        (body("nocard", "shop", "CNY"), "no_device"),
    ];
    for (i, (body, code)) in cases.into_iter().enumerate() {
        let r = h
            .create(&terminal.api_key, &format!("acct-{i}"), body)
            .await;
        expect(r, unprocessable, code).await;
    }
}

#[tokio::test]
async fn unknown_routes_ids_and_methods_answer_in_json() {
    let (h, terminal, card) = Harness::standard().await;
    let r = h.http.get(h.url("/v1/nothing")).send().await.unwrap();
    expect(r, StatusCode::NOT_FOUND, "not_found").await;
    for id in ["zz", &"AB".repeat(16), &"ab".repeat(16)] {
        let r = h
            .http
            .get(h.url(&format!("/v1/transactions/{id}")))
            .bearer_auth(&terminal.api_key)
            .send()
            .await
            .unwrap();
        expect(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    let r = h
        .http
        .post(h.url("/v1/confirmations/zz"))
        .bearer_auth(&card.enrolled.credential)
        .json(&json!({"result": "declined", "reason": "declined"}))
        .send()
        .await
        .unwrap();
    expect(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = h
        .http
        .delete(h.url("/v1/transactions"))
        .send()
        .await
        .unwrap();
    expect(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let r = h
        .http
        .get(h.url("/v1/transactions/x?wait=abc"))
        .bearer_auth(&terminal.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = h.http.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    // A confirmation body of the wrong shape.
    let tx = h.pay(&terminal, 1).await;
    let r = h
        .http
        .post(h.url(&format!("/v1/confirmations/{}", tx.id)))
        .bearer_auth(&card.enrolled.credential)
        .json(&json!({"result": "signed", "counter": 1}))
        .send()
        .await
        .unwrap();
    expect(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = h
        .http
        .post(h.url(&format!("/v1/confirmations/{}", tx.id)))
        .bearer_auth(&card.enrolled.credential)
        .json(&json!({"result": "signed", "counter": -1, "signature": ""}))
        .send()
        .await
        .unwrap();
    expect(r, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test]
async fn admin_accounts_terminals_devices() {
    let h = Harness::start().await;
    h.account("alice", "CNY", 5000).await;
    let r = h
        .admin_post(
            "/v1/admin/accounts",
            json!({"id": "alice", "display_name": "A", "currency": "CNY"}),
        )
        .await;
    expect(r, StatusCode::CONFLICT, "already_exists").await;
    let r = h
        .admin_post(
            "/v1/admin/accounts",
            json!({"id": "issuance:EUR", "display_name": "x", "currency": "EUR"}),
        )
        .await;
    expect(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    for name in ["", "bad\u{7}", "rtl \u{202E}"] {
        let r = h
            .admin_post(
                "/v1/admin/accounts",
                json!({"id": "b", "display_name": name, "currency": "CNY"}),
            )
            .await;
        expect(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let r = h.admin_post("/v1/admin/accounts", json!({"id": "b", "display_name": "B", "currency": "CNY", "opening_balance_minor": u64::MAX})).await;
    expect(r, StatusCode::BAD_REQUEST, "invalid_request").await;

    let accounts: Vec<AccountView> = h
        .admin_get("/v1/admin/accounts")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = accounts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["alice", "issuance:CNY"]);
    assert!(accounts[1].system);
    assert_eq!(accounts[1].balance_minor, -5000);
    assert_eq!(accounts[1].balance_display, "CNY -50.00");
    let alice: AccountView = h
        .admin_get("/v1/admin/accounts/alice")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (alice.balance_minor, alice.balance_display.as_str()),
        (5000, "CNY 50.00")
    );
    expect(
        h.admin_get("/v1/admin/accounts/ghost").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Enrolment validates the key and the account.
    let card = common::software_key();
    let point = card
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let mut off_curve = point.clone();
    off_curve[64] ^= 1;
    for key in [
        b64::encode(&off_curve),
        b64::encode(&point[..33]),
        "***".into(),
    ] {
        let r = h
            .admin_post(
                "/v1/admin/devices",
                json!({"account": "alice", "public_key": key}),
            )
            .await;
        expect(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    for account in ["ghost", "issuance:CNY"] {
        let r = h
            .admin_post(
                "/v1/admin/devices",
                json!({"account": account, "public_key": b64::encode(&point)}),
            )
            .await;
        expect(r, StatusCode::UNPROCESSABLE_ENTITY, "unknown_account").await;
    }
    let enrolled = h.enroll("alice").await.enrolled;
    assert!(enrolled.credential.starts_with("kbd_"));
    let der = b64::decode(&enrolled.certificate).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(cert
        .subject()
        .to_string()
        .contains(&format!("KeyBridge device {}", enrolled.device_id)));
    let devices: Vec<DeviceView> = h.admin_get("/v1/admin/devices").await.json().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (devices[0].status.as_str(), devices[0].last_counter),
        ("active", 0)
    );
    let r = h
        .admin_post("/v1/admin/devices/dev_nope/disable", json!({}))
        .await;
    expect(r, StatusCode::NOT_FOUND, "not_found").await;

    let terminal = h.terminal().await;
    assert!(terminal.api_key.starts_with("kbt_"));
    let r = h
        .admin_post("/v1/admin/terminals", json!({"name": ""}))
        .await;
    expect(r, StatusCode::BAD_REQUEST, "invalid_request").await;

    // Listing: newest first, bounded.
    h.account("shop", "CNY", 0).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = h
            .create(&terminal.api_key, &format!("list-{i}"), payment(1))
            .await;
        ids.push(r.json::<TransactionView>().await.unwrap().id);
    }
    let listed: Vec<TransactionView> = h
        .admin_get("/v1/admin/transactions?limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id).collect::<Vec<_>>(),
        [ids[2], ids[1]]
    );
    // The next page starts after the last id of this one.
    let next: Vec<TransactionView> = h
        .admin_get(&format!("/v1/admin/transactions?limit=2&before={}", ids[1]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next.iter().map(|t| t.id).collect::<Vec<_>>(), [ids[0]]);
    let (bad, missing) = (
        (StatusCode::BAD_REQUEST, "invalid_request"),
        (StatusCode::NOT_FOUND, "not_found"),
    );
    for (query, (status, code)) in [
        (format!("?before={}", "0".repeat(32)), missing),
        ("?before=xyz".to_owned(), bad),
        ("?limit=501".to_owned(), bad),
        ("?limit=x".to_owned(), bad),
    ] {
        let r = h.admin_get(&format!("/v1/admin/transactions{query}")).await;
        expect(r, status, code).await;
    }
}

/// No secret appears in a response it was not created for.
#[tokio::test]
async fn secrets_are_returned_once_and_never_listed() {
    let (h, terminal, card) = Harness::standard().await;
    for path in [
        "/v1/admin/devices",
        "/v1/admin/accounts",
        "/v1/admin/transactions",
    ] {
        let text = h.admin_get(path).await.text().await.unwrap();
        assert!(!text.contains(&card.enrolled.credential), "{path}");
        assert!(!text.contains(&terminal.api_key), "{path}");
        assert!(!text.contains(ADMIN_TOKEN), "{path}");
    }
}
