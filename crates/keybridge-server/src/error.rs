//! Errors: [`ApiError`] is what an HTTP client may see, each variant mapped
//! explicitly to a status and a stable code; [`ServerError`] is what stops the
//! server from starting or running.
//!
//! Codes follow OpenID CIBA where a CIBA situation exists: `invalid_request`
//! (malformed request), `expired_token` (the confirmation window passed).
//! CIBA's `authorization_pending` and `slow_down` answer *polls*; KeyBridge's
//! long-poll and SSE hold the request instead, so "still pending" is a 200
//! with `status: "pending"`, never an error. `access_denied` is the payer's
//! refusal, which is an outcome (`rejected`, reason `declined`), not an error.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keybridge_proto::api::ErrorBody;

use crate::ca::CaError;
use crate::store::StoreError;

/// Every error an endpoint can answer with. Messages are written for clients:
/// they never carry database errors, secrets or internal detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400 `invalid_request`: malformed JSON, unknown fields, bad values.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401 `unauthorized`: missing or wrong credential.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// 404 `not_found`.
    #[error("not found")]
    NotFound,
    /// 404 `not_found`, from the router's fallback: no endpoint has this path.
    /// Its own variant (same code) so a test can tell "no route" from "no record".
    #[error("no such endpoint")]
    NoSuchEndpoint,
    /// 405 `method_not_allowed`: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409 `idempotency_conflict`: the key was used with a different body.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    /// 409 `not_pending`: the transaction already ended.
    #[error("the transaction is no longer pending")]
    NotPending,
    /// 409 `expired_token` (CIBA's code for an expired request): the
    /// transaction's confirmation window passed before this confirmation.
    #[error("the transaction expired before it was confirmed")]
    Expired,
    /// 409 `already_exists`.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// 409 `terminal_disabled`: a disabled terminal gets no new API key.
    #[error("the terminal is disabled: create a new one")]
    TerminalDisabled,
    /// 408 `request_timeout`: the request body did not arrive in time
    /// (`ServerConfig::read_timeout_s`); the connection is closed after.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 413 `payload_too_large`.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// 429 `too_many_pending`: the payer has this many payments
    /// waiting for confirmation (`ServerConfig::pending_per_payer_max`).
    /// Transient: try again once one of them ends.
    #[error(
        "the payer has reached the limit of {0} payments waiting for confirmation; try again when one ends"
    )]
    TooManyPending(u64),
    /// 429 `rate_limited`: this terminal sent more than its rate of requests
    /// (`ServerConfig::terminal_rate_per_s`); the answer's `Retry-After` says
    /// when to send again.
    #[error(
        "this terminal sent more than {per_s} requests a second; try again in {} ms",
        retry_after.as_millis().max(1)
    )]
    RateLimited {
        per_s: u32,
        retry_after: std::time::Duration,
    },
    /// 422 `unknown_account`.
    #[error("unknown account: {0}")]
    UnknownAccount(String),
    /// 422 `currency_mismatch`.
    #[error("the accounts' currency does not match the request")]
    CurrencyMismatch,
    /// 422 `no_device`.
    #[error("the payer has no active security device")]
    NoDevice,
    /// 503 `not_ready`: the database cannot be reached (`/readyz`).
    #[error("the server is not ready")]
    NotReady,
    /// 500 `internal_error`. The cause is logged where it happens, never sent.
    #[error("an internal error occurred")]
    Internal,
    /// 409 `external_ca`: this server trusts an external CA and issues no certificates.
    #[error("this server trusts an external CA: import the certificate it issued")]
    ExternalCa,
    /// 422 `csr_refused`: the PKCS#10 request is malformed or fails its own signature.
    #[error("certificate request refused: {0}")]
    CsrRefused(String),
    /// 422 `certificate_refused`: an imported certificate failed path validation.
    #[error("certificate refused: {0}")]
    CertificateRefused(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound | ApiError::NoSuchEndpoint => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::IdempotencyConflict
            | ApiError::NotPending
            | ApiError::Expired
            | ApiError::AlreadyExists(_)
            | ApiError::TerminalDisabled => StatusCode::CONFLICT,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyPending(_) | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::UnknownAccount(_) | ApiError::CurrencyMismatch | ApiError::NoDevice => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ExternalCa => StatusCode::CONFLICT,
            ApiError::CsrRefused(_) | ApiError::CertificateRefused(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        }
    }

    /// The stable machine-readable code of [`ErrorBody::error`].
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound | ApiError::NoSuchEndpoint => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::IdempotencyConflict => "idempotency_conflict",
            ApiError::NotPending => "not_pending",
            ApiError::Expired => "expired_token",
            ApiError::AlreadyExists(_) => "already_exists",
            ApiError::TerminalDisabled => "terminal_disabled",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::TooManyPending(_) => "too_many_pending",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::UnknownAccount(_) => "unknown_account",
            ApiError::CurrencyMismatch => "currency_mismatch",
            ApiError::NoDevice => "no_device",
            ApiError::NotReady => "not_ready",
            ApiError::Internal => "internal_error",
            ApiError::ExternalCa => "external_ca",
            ApiError::CsrRefused(_) => "csr_refused",
            ApiError::CertificateRefused(_) => "certificate_refused",
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest(message.into())
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code().to_owned(),
            message: self.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            ApiError::RateLimited { retry_after, .. } => {
                headers.insert(
                    axum::http::header::RETRY_AFTER,
                    retry_after_header(retry_after),
                );
            }
            _ => {}
        }
        response
    }
}

/// `Retry-After` counts whole seconds (RFC 9110 section 10.2.3): the wait
/// rounded up, so a client that obeys it is let in.
fn retry_after_header(wait: std::time::Duration) -> axum::http::HeaderValue {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    axum::http::HeaderValue::from(seconds.max(1))
}

/// Store failures reach clients only as `internal_error`; the cause is logged here.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store error");
        ApiError::Internal
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
}

impl ServerError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
        let context = context.into();
        move |source| ServerError::Io { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_documented_status_and_code() {
        let table = [
            (ApiError::invalid("x"), 400, "invalid_request"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::NotFound, 404, "not_found"),
            (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
            (ApiError::IdempotencyConflict, 409, "idempotency_conflict"),
            (ApiError::NotPending, 409, "not_pending"),
            (ApiError::Expired, 409, "expired_token"),
            (ApiError::NoSuchEndpoint, 404, "not_found"),
            (ApiError::NotReady, 503, "not_ready"),
            (ApiError::AlreadyExists("a".into()), 409, "already_exists"),
            (ApiError::TerminalDisabled, 409, "terminal_disabled"),
            (ApiError::RequestTimeout, 408, "request_timeout"),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (ApiError::TooManyPending(10), 429, "too_many_pending"),
            (
                ApiError::RateLimited {
                    per_s: 100,
                    retry_after: std::time::Duration::from_millis(10),
                },
                429,
                "rate_limited",
            ),
            (ApiError::UnknownAccount("a".into()), 422, "unknown_account"),
            (ApiError::CurrencyMismatch, 422, "currency_mismatch"),
            (ApiError::NoDevice, 422, "no_device"),
            (ApiError::Internal, 500, "internal_error"),
            (ApiError::ExternalCa, 409, "external_ca"),
            (ApiError::CsrRefused("x".into()), 422, "csr_refused"),
            (
                ApiError::CertificateRefused("x".into()),
                422,
                "certificate_refused",
            ),
        ];
        for (e, status, code) in table {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), code);
        }
    }

    #[test]
    fn store_errors_do_not_leak() {
        let e: ApiError =
            StoreError::Backend("UNIQUE constraint failed: secret_table".into()).into();
        assert_eq!(e, ApiError::Internal);
        assert!(!e.body().message.contains("secret_table"));
    }
}
