//! Extractors. Each one rejects with an [`ApiError`], so axum's plain-text
//! rejections never reach a client.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use keybridge_proto::TransactionId;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::secret::{constant_time_eq, sha256};
use crate::state::AppState;
use crate::store::{DeviceRecord, DeviceStatus, TerminalRecord};

/// Bearer secrets are 68 characters; anything far longer is not one of ours.
const BEARER_LEN_MAX: usize = 512;
/// `Idempotency-Key`: 1 to 128 printable ASCII characters.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;

/// A JSON body, refusing unknown fields (the API types say so), floats for
/// integers, bodies over the limit (413) and bodies that do not arrive within
/// the read timeout (408), always with an `ErrorBody`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T> FromRequest<AppState> for ApiJson<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        // One deadline for the whole body: a client trickling a byte now and
        // then would pass a timeout that restarts with each piece.
        let bytes = tokio::time::timeout(state.read_timeout, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                crate::metrics::Metrics::read_timed_out("body");
                ApiError::RequestTimeout
            })?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::invalid("could not read the request body")
                }
            })?;
        json_object(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
    }
}

/// Every body and frame of the API is one JSON object. serde would also
/// read a struct from an array of its fields in order (`["till"]` for
/// `{"name": "till"}`), which no client means and the OpenAPI document does
/// not allow (found by tests/schemathesis.rs): refused here, before serde.
pub fn json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err("expected a JSON object".to_owned());
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= BEARER_LEN_MAX)
        .then_some(token)
}

/// The admin token, compared in constant time (as hashes, so lengths match).
#[derive(Debug)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        if constant_time_eq(&sha256(token), &state.admin_token_hash) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// A terminal, found by the hash of its API key (remembered: see
/// [`crate::terminal_cache`]), and within its request rate
/// ([`crate::rate`]).
#[derive(Debug)]
pub struct Terminal(pub TerminalRecord);

impl FromRequestParts<AppState> for Terminal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let key_hash = sha256(token);
        let terminal = match state.terminals.get(&key_hash) {
            Some(terminal) => terminal,
            None => {
                let terminal = state
                    .store
                    .terminal_by_key_hash(key_hash)
                    .await?
                    .ok_or(ApiError::Unauthorized)?;
                state.terminals.insert(key_hash, terminal.clone());
                terminal
            }
        };
        if let Some(rate) = &state.terminal_rate {
            rate.admit(&terminal)?;
        }
        Ok(Terminal(terminal))
    }
}

/// An active device, found by the hash of its credential and read fresh from
/// the store on every request, so disabling takes effect immediately.
#[derive(Debug)]
pub struct Device(pub DeviceRecord);

impl FromRequestParts<AppState> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        match state.store.device_by_credential_hash(sha256(token)).await? {
            Some(d) if d.status == DeviceStatus::Active => Ok(Device(d)),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// A `{id}` path segment holding a transaction id; anything else is a 404.
#[derive(Debug)]
pub struct TxId(pub TransactionId);

impl<S: Send + Sync> FromRequestParts<S> for TxId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        raw.parse().map(TxId).map_err(|_| ApiError::NotFound)
    }
}

/// A `{id}` path segment as text.
#[derive(Debug)]
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        Ok(PathId(raw))
    }
}

/// The `Idempotency-Key` header, required on `POST /v1/transactions`.
#[derive(Debug)]
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get("idempotency-key")
            .ok_or_else(|| ApiError::invalid("the Idempotency-Key header is required"))?;
        let key = value.as_bytes();
        let printable = key.iter().all(|b| (0x20..=0x7E).contains(b));
        if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX || !printable {
            return Err(ApiError::invalid(
                "Idempotency-Key must be 1 to 128 printable ASCII characters",
            ));
        }
        // Checked printable ASCII above, so this cannot fail.
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| ApiError::invalid("Idempotency-Key must be ASCII"))?;
        Ok(IdempotencyKey(key))
    }
}

/// `Prefer: wait=N` (RFC 7240 §4.3): the client would rather the server
/// answered within `N` seconds with the outcome than at once with "accepted".
/// Capped at [`WAIT_S_MAX`](super::terminal::WAIT_S_MAX); a preference that
/// does not parse is ignored, as the RFC asks of preferences a server does
/// not understand.
#[derive(Debug)]
pub struct PreferWait(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for PreferWait {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let values = parts
            .headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok());
        Ok(PreferWait(
            prefer_wait(values).map(|s| s.min(super::terminal::WAIT_S_MAX)),
        ))
    }
}

/// The first `wait=N` among `Prefer` header values: comma-separated
/// preferences, each `token[=value]` with optional `;`-parameters (ignored),
/// names case-insensitive, the value bare or quoted.
fn prefer_wait<'a>(values: impl Iterator<Item = &'a str>) -> Option<u64> {
    values.flat_map(|v| v.split(',')).find_map(|preference| {
        let preference = preference.split(';').next()?;
        let (name, value) = preference.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("wait") {
            return None;
        }
        value.trim().trim_matches('"').parse::<u64>().ok()
    })
}

/// A query string decoded into `T`, rejecting with `invalid_request`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::invalid(format!("invalid query string: {}", e.body_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::prefer_wait;

    fn wait(values: &[&str]) -> Option<u64> {
        prefer_wait(values.iter().copied())
    }

    #[test]
    fn prefer_wait_reads_rfc_7240_forms() {
        assert_eq!(wait(&["wait=5"]), Some(5));
        assert_eq!(wait(&["respond-async, wait=10"]), Some(10));
        assert_eq!(wait(&[" WAIT = 3 ; foo=bar"]), Some(3));
        assert_eq!(wait(&["wait=\"7\""]), Some(7));
        assert_eq!(wait(&["respond-async", "wait=8"]), Some(8));
        // What does not parse is ignored, as RFC 7240 asks.
        assert_eq!(wait(&["wait=soon"]), None);
        assert_eq!(wait(&["wait=-1"]), None);
        assert_eq!(wait(&["wait"]), None);
        assert_eq!(wait(&["handling=lenient"]), None);
        assert_eq!(wait(&[]), None);
        assert_eq!(wait(&["wait=99999999999999999999999"]), None);
    }
}
