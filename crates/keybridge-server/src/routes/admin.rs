//! Admin endpoints (bearer admin token): accounts, terminals, device
//! enrolment and revocation, recent transactions, the CA certificate.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use keybridge_proto::api::{
    b64, AccountView, CreateAccount, CreateTerminal, DeviceEnrolled, DeviceView, EnrollDevice,
    TerminalCreated, TransactionView,
};
use keybridge_proto::{AccountId, Challenge, ConfirmationPayload, Money, TransactionId};
use serde::Deserialize;

use super::extract::{Admin, ApiJson, ApiQuery, PathId};
use crate::ca::parse_p256_point;
use crate::error::ApiError;
use crate::hub::HubEvent;
use crate::random;
use crate::secret::sha256;
use crate::state::AppState;
use crate::store::{NewAccount, NewDevice, NewTerminal, StoreError};

const NAME_LEN_MAX: usize = 64;
pub const LIST_LIMIT_DEFAULT: u32 = 50;
pub const LIST_LIMIT_MAX: u32 = 500;

fn rng(e: random::RandomError) -> ApiError {
    tracing::error!(error = %e, "CSPRNG failed");
    ApiError::Internal
}

fn check_name(field: &str, value: &str, min: usize) -> Result<(), ApiError> {
    if value.len() < min || value.len() > NAME_LEN_MAX || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must be {min} to {NAME_LEN_MAX} bytes without control characters"
        )));
    }
    Ok(())
}

/// A display name becomes a payload's payee name, so it must pass the
/// payload's own rules (no bidirectional overrides either).
fn check_display_name(account: &CreateAccount) -> Result<(), ApiError> {
    let probe = ConfirmationPayload {
        origin: "o".into(),
        transaction_id: TransactionId([0; 16]),
        challenge: Challenge([0; 32]),
        payer: account.id.clone(),
        payee: account.id.clone(),
        payee_name: account.display_name.clone(),
        amount: Money::new(0, account.currency),
        order_id: "o".into(),
        description: String::new(),
        created_at_unix_s: 0,
        expires_at_unix_s: 1,
    };
    probe
        .validate()
        .map_err(|_| ApiError::invalid("display_name must be 1 to 64 bytes of displayable text"))
}

pub async fn create_account(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<CreateAccount>,
) -> Result<impl IntoResponse, ApiError> {
    if body.id.as_str().starts_with(crate::ISSUANCE_PREFIX) {
        return Err(ApiError::invalid(
            "account ids starting with `issuance:` are reserved",
        ));
    }
    check_display_name(&body)?;
    if i64::try_from(body.opening_balance_minor).is_err() {
        return Err(ApiError::invalid("opening_balance_minor is too large"));
    }
    let new = NewAccount {
        id: body.id.clone(),
        display_name: body.display_name,
        currency: body.currency,
        opening_balance_minor: body.opening_balance_minor,
    };
    match state.store.create_account(new, state.now_unix_s()).await {
        Ok(account) => {
            tracing::info!(account = %account.id, "account created");
            Ok((StatusCode::CREATED, Json(account.view())))
        }
        Err(StoreError::AlreadyExists) => {
            Err(ApiError::AlreadyExists(format!("account {}", body.id)))
        }
        Err(StoreError::BalanceOverflow) => Err(ApiError::invalid("opening balance out of range")),
        Err(e) => Err(e.into()),
    }
}

pub async fn list_accounts(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<AccountView>>, ApiError> {
    let accounts = state.store.list_accounts().await?;
    Ok(Json(accounts.iter().map(|a| a.view()).collect()))
}

pub async fn get_account(
    State(state): State<AppState>,
    _: Admin,
    PathId(id): PathId,
) -> Result<Json<AccountView>, ApiError> {
    let id = AccountId::new(&id).map_err(|_| ApiError::NotFound)?;
    let account = state
        .store
        .get_account(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(account.view()))
}

pub async fn create_terminal(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<CreateTerminal>,
) -> Result<impl IntoResponse, ApiError> {
    check_name("name", &body.name, 1)?;
    let id = random::public_id("term_").map_err(rng)?;
    let api_key = random::secret_token("kbt_").map_err(rng)?;
    let terminal = state
        .store
        .create_terminal(NewTerminal {
            id,
            name: body.name,
            api_key_hash: sha256(&api_key),
            created_at_unix_s: state.now_unix_s(),
        })
        .await?;
    tracing::info!(terminal = %terminal.id, "terminal created");
    Ok((
        StatusCode::CREATED,
        Json(TerminalCreated {
            id: terminal.id,
            name: terminal.name,
            api_key,
        }),
    ))
}

pub async fn enroll_device(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<EnrollDevice>,
) -> Result<impl IntoResponse, ApiError> {
    check_name("label", &body.label, 0)?;
    let point = b64::decode(&body.public_key)
        .as_deref()
        .and_then(parse_p256_point)
        .ok_or_else(|| {
            ApiError::invalid("public_key must be a base64 SEC1 uncompressed P-256 point")
        })?;
    match state.store.get_account(&body.account).await? {
        Some(a) if !a.system => {}
        _ => return Err(ApiError::UnknownAccount(body.account.to_string())),
    }
    let now = state.now_unix_s();
    let device_id = random::public_id("dev_").map_err(rng)?;
    let certificate = state
        .ca
        .issue_device_certificate(&device_id, &body.account, &point, &state.origin, now)
        .map_err(|e| {
            tracing::error!(error = %e, "issuing a device certificate failed");
            ApiError::Internal
        })?;
    let credential = random::secret_token("kbd_").map_err(rng)?;
    let device = state
        .store
        .create_device(NewDevice {
            id: device_id,
            account: body.account.clone(),
            label: body.label,
            public_key: point.to_vec(),
            certificate: certificate.clone(),
            credential_hash: sha256(&credential),
            created_at_unix_s: now,
            signature_method: body.signature_method,
        })
        .await
        .map_err(|e| match e {
            StoreError::UnknownAccount => ApiError::UnknownAccount(body.account.to_string()),
            other => other.into(),
        })?;
    tracing::info!(device = %device.id, account = %device.account, "device enrolled");
    Ok((
        StatusCode::CREATED,
        Json(DeviceEnrolled {
            device_id: device.id,
            account: device.account,
            certificate: b64::encode(&certificate),
            credential,
        }),
    ))
}

pub async fn list_devices(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let devices = state.store.list_devices().await?;
    Ok(Json(devices.iter().map(|d| d.view()).collect()))
}

pub async fn disable_device(
    State(state): State<AppState>,
    _: Admin,
    PathId(id): PathId,
) -> Result<Json<DeviceView>, ApiError> {
    let device = state
        .store
        .disable_device(&id, state.now_unix_s())
        .await?
        .ok_or(ApiError::NotFound)?;
    tracing::info!(device = %device.id, "device disabled");
    state.hub.publish(HubEvent::DeviceDisabled {
        device_id: device.id.clone(),
    });
    Ok(Json(device.view()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<u32>,
}

pub async fn list_transactions(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<TransactionView>>, ApiError> {
    let limit = query.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if limit == 0 || limit > LIST_LIMIT_MAX {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {LIST_LIMIT_MAX}"
        )));
    }
    let transactions = state.store.list_transactions(limit).await?;
    Ok(Json(transactions.iter().map(|t| t.view()).collect()))
}

pub async fn ca_pem(State(state): State<AppState>, _: Admin) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.cert_pem().to_owned(),
    )
}
