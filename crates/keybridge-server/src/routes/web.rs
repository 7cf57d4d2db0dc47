//! The web checkout: static assets compiled into the binary (no CDN, no
//! files at run time) and the terminal-scoped account page's data.
//!
//! Authentication: the page never contains a credential. It asks the
//! operator for the terminal's API key once, keeps it in `sessionStorage`
//! (gone when the tab closes, not sent with any request automatically, so
//! no CSRF), and sends it as `Authorization: Bearer` on `fetch`. The live
//! status uses `fetch` with a streamed body to read the SSE endpoint, because
//! `EventSource` cannot set headers and a token in a URL ends up in logs.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use keybridge_proto::api::AccountActivity;
use keybridge_proto::AccountId;

use super::extract::{PathId, Terminal};
use crate::error::ApiError;
use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");

/// Transactions shown on the account page.
pub const ACCOUNT_RECENT_MAX: u32 = 20;

/// Only our own scripts and styles, only our own origin to talk to.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // Assets change with the binary; revalidate rather than run stale code.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `GET /`: the checkout page.
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/app.js`.
pub async fn app_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /assets/app.css`.
pub async fn app_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `GET /v1/accounts/{id}` (terminal): balance and this terminal's recent
/// transactions for a payer. A terminal sees an account only once it has
/// created a transaction for it as payer, so an API key cannot be used to
/// read arbitrary balances; everyone else gets 404.
pub async fn account(
    State(state): State<AppState>,
    Terminal(terminal): Terminal,
    PathId(id): PathId,
) -> Result<Json<AccountActivity>, ApiError> {
    let id = AccountId::new(&id).map_err(|_| ApiError::NotFound)?;
    let transactions = state
        .store
        .terminal_transactions_of_payer(&terminal.id, &id, ACCOUNT_RECENT_MAX)
        .await?;
    if transactions.is_empty() {
        return Err(ApiError::NotFound);
    }
    let account = state
        .store
        .get_account(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(AccountActivity {
        account: account.view(),
        transactions: transactions.iter().map(|t| t.view()).collect(),
    }))
}
