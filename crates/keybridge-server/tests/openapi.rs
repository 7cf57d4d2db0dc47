//! The API contract: `/openapi.json` is the committed `docs/openapi.json`,
//! every route the router serves is documented, and every documented
//! operation is routed.
//!
//! To update the committed document after an API change:
//! `KEYBRIDGE_UPDATE_OPENAPI=1 cargo test -p keybridge-server --test openapi`

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

fn document() -> Value {
    serde_json::from_str(keybridge_server::openapi::document_json()).unwrap()
}

/// path → methods, from the document.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = document();
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every `.route("…"` path in the router's source. The router is plain axum
/// (it cannot list its routes), so its source is the list; the probe below
/// then checks each path's methods against the running router.
fn routed_paths() -> BTreeSet<String> {
    let source = include_str!("../src/routes/mod.rs");
    let mut paths = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let start = rest.find('"').unwrap() + 1;
        let end = start + rest[start..].find('"').unwrap();
        paths.insert(rest[start..end].to_owned());
    }
    paths
}

#[test]
fn the_committed_document_is_current() {
    let generated = keybridge_server::openapi::document_json();
    let path = committed_path();
    if std::env::var_os("KEYBRIDGE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is not the document the code generates.\nUpdate it with:\n  KEYBRIDGE_UPDATE_OPENAPI=1 cargo test -p keybridge-server --test openapi\nand commit the result.",
        path.display()
    );
}

#[test]
fn the_document_is_openapi_3_1_with_one_error_body() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let error = &schemas["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error", "message"]));
    // Every 4XX/5XX/503 response of every operation is the one error body.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_routed_path_is_documented_and_every_documented_path_is_routed() {
    let documented: BTreeSet<String> = documented().into_keys().collect();
    let routed = routed_paths();
    assert!(routed.len() > 20, "{routed:?}");
    assert_eq!(
        routed, documented,
        "left: routed in src/routes/mod.rs; right: in the OpenAPI document"
    );
}

#[tokio::test]
async fn each_path_answers_exactly_its_documented_methods() {
    let h = Harness::start().await;
    let fallback = "no such endpoint";
    for (path, methods) in documented() {
        let concrete = path.replace("{id}", "00000000000000000000000000000000");
        for method in METHODS {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = h.http.request(m, h.url(&concrete)).send().await.unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            let routed = status != StatusCode::METHOD_NOT_ALLOWED && !body.contains(fallback);
            assert_eq!(
                routed,
                methods.contains(method),
                "{method} {path}: {status} {body}"
            );
        }
    }
    // And the document itself is served.
    let r = h.http.get(h.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), document());
}
