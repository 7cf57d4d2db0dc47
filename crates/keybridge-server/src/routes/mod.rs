//! The HTTP API: [`app`] builds the router; submodules hold the handlers by
//! audience (terminal, relay, admin); [`extract`] holds the extractors that
//! turn every malformed request into a JSON [`crate::ApiError`].

mod admin;
mod extract;
mod relay;
mod terminal;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;

/// The whole API as one router, ready for `axum::serve` or `oneshot` in tests.
pub fn app(state: AppState) -> Router {
    let body_limit = state.body_limit_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
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
        .route("/v1/admin/terminals", post(admin::create_terminal))
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
        .route("/v1/admin/ca.pem", get(admin::ca_pem))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        // Logs method, path and status; never headers, so no bearer secrets.
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
