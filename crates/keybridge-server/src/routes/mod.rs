//! The HTTP API: [`app`] builds the router; submodules hold the handlers by
//! audience (terminal, relay, admin); [`extract`] holds the extractors that
//! turn every malformed request into a JSON [`crate::ApiError`].
//! `web` serves the checkout page, `ops` the operator endpoints, `webhook`
//! the callback registration. Every route here is in the OpenAPI document
//! (`crate::openapi`); `tests/openapi.rs` checks both ways.

mod admin;
mod extract;
mod ops;
mod relay;
mod terminal;
mod web;
mod webhook;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;

/// The whole API as one router, ready for `axum::serve` or `oneshot` in tests.
pub fn app(state: AppState) -> Router {
    let body_limit = state.body_limit_bytes;
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        // Web checkout.
        .route("/", get(web::index))
        .route("/assets/app.js", get(web::app_js))
        .route("/assets/app.css", get(web::app_css))
        .route("/v1/accounts/{id}", get(web::account))
        .route(
            "/v1/webhook",
            put(webhook::put).get(webhook::get).delete(webhook::delete),
        )
        // Terminal.
        .route("/v1/transactions", post(terminal::create))
        .route("/v1/transactions/{id}", get(terminal::get))
        .route("/v1/transactions/{id}/events", get(terminal::events))
        // Relay.
        .route("/v1/relay", get(relay::connect))
        .route("/v1/confirmations/{id}", post(relay::confirm))
        // Admin.
        .route(
            "/v1/admin/accounts",
            post(admin::create_account).get(admin::list_accounts),
        )
        .route("/v1/admin/accounts/{id}", get(admin::get_account))
        .route(
            "/v1/admin/terminals",
            post(admin::create_terminal).get(admin::list_terminals),
        )
        .route(
            "/v1/admin/terminals/{id}/disable",
            post(admin::disable_terminal),
        )
        .route(
            "/v1/admin/terminals/{id}/rotate-key",
            post(admin::rotate_terminal_key),
        )
        .route(
            "/v1/admin/devices",
            post(admin::enroll_device).get(admin::list_devices),
        )
        .route("/v1/admin/devices/csr", post(admin::enroll_csr))
        .route(
            "/v1/admin/devices/certificate",
            post(admin::import_certificate),
        )
        .route("/v1/admin/devices/ocra", post(admin::provision_ocra))
        .route("/v1/admin/devices/{id}", get(admin::get_device))
        .route(
            "/v1/admin/devices/{id}/disable",
            post(admin::disable_device),
        )
        .route("/v1/admin/devices/{id}/rename", post(admin::rename_device))
        .route("/v1/admin/devices/{id}/revoke", post(admin::revoke_device))
        .route("/v1/crl", get(admin::crl))
        .route("/v1/admin/transactions", get(admin::list_transactions))
        .route("/v1/admin/transactions/{id}", get(admin::get_transaction))
        .route("/v1/admin/audit", get(admin::audit))
        .route("/v1/admin/audit/verify", get(admin::verify_audit))
        .route("/v1/admin/books/verify", get(admin::verify_books))
        .route("/v1/admin/ca.pem", get(admin::ca_pem))
        .route(
            "/v1/admin/webhook-deliveries",
            get(webhook::list_deliveries),
        )
        .fallback(|| async { ApiError::NoSuchEndpoint })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        // Logs method, path, status and the request id; never headers, so no
        // bearer secrets. Layers run bottom-up on requests: the id is set
        // first, then the span reads it, then the response echoes it.
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .with_state(state)
}

/// Taken from the client if it sent one, else a fresh UUID; echoed back.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    // The path only: query strings are not secret here, but keep lines short.
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
    )
}
