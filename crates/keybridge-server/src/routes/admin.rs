//! Admin endpoints (bearer admin token): accounts, terminals (and their
//! revocation), device
//! enrolment and revocation, recent transactions, the audit log and its
//! verification, the CA certificate.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use keybridge_proto::api::{
    b64, AccountView, AuditEntryView, AuditVerification, BooksVerification, BrokenRule,
    CreateAccount, CreateTerminal, DeviceEnrolled, DeviceView, EnrollCsr, EnrollDevice,
    ImportCertificate, ProvisionOcra, RenameDevice, SignatureMethod, TerminalCreated, TerminalView,
    TransactionDetail, TransactionView,
};
use keybridge_proto::ocra::OtpauthUri;
use keybridge_proto::{AccountId, Challenge, ConfirmationPayload, Money, TransactionId};
use serde::Deserialize;

use super::extract::{Admin, ApiJson, ApiQuery, PathId};
use crate::ca::parse_p256_point;
use crate::error::ApiError;
use crate::hub::HubEvent;
use crate::random;
use crate::secret::sha256;
use crate::secretbox::ocra_aad;
use crate::state::AppState;
use crate::store::{
    AuditRecord, DeviceRecord, NewAccount, NewDevice, NewTerminal, OcraRecord, StoreError,
    TerminalRecord, TransferRecord,
};

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

pub async fn list_terminals(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<TerminalView>>, ApiError> {
    let terminals = state.store.list_terminals().await?;
    Ok(Json(terminals.into_iter().map(terminal_view).collect()))
}

/// Revokes the terminal's API key with immediate effect here, on the other
/// instances as soon as they hear of it, and on all within
/// [`crate::terminal_cache::ENTRY_TTL`] whatever happens to the news.
/// Transactions it created go on to their end.
pub async fn disable_terminal(
    State(state): State<AppState>,
    _: Admin,
    PathId(id): PathId,
) -> Result<Json<TerminalView>, ApiError> {
    let terminal = state
        .store
        .disable_terminal(&id, state.now_unix_s())
        .await?
        .ok_or(ApiError::NotFound)?;
    state.terminals.forget(&terminal.id);
    state.hub.publish(HubEvent::TerminalDisabled {
        terminal_id: terminal.id.clone(),
    });
    tracing::info!(terminal = %terminal.id, "terminal disabled");
    Ok(Json(terminal_view(terminal)))
}

/// Gives an enabled terminal a new API key, shown once; the old one is
/// refused from the commit on, here, on the other instances as soon as they
/// hear of it, and on all within [`crate::terminal_cache::ENTRY_TTL`]. The
/// terminal keeps its id, so its transactions, idempotency keys and
/// webhooks carry on. For a key that may have leaked and a till that goes
/// on working.
pub async fn rotate_terminal_key(
    State(state): State<AppState>,
    _: Admin,
    PathId(id): PathId,
) -> Result<Json<TerminalCreated>, ApiError> {
    let api_key = random::secret_token("kbt_").map_err(rng)?;
    let terminal = state
        .store
        .rotate_terminal_key(&id, sha256(&api_key), state.now_unix_s())
        .await?
        .ok_or(ApiError::NotFound)?;
    if terminal.disabled_at_unix_s.is_some() {
        return Err(ApiError::TerminalDisabled);
    }
    state.terminals.forget(&terminal.id);
    state.hub.publish(HubEvent::TerminalKeyRotated {
        terminal_id: terminal.id.clone(),
    });
    tracing::info!(terminal = %terminal.id, "terminal API key rotated");
    Ok(Json(TerminalCreated {
        id: terminal.id,
        name: terminal.name,
        api_key,
    }))
}

fn terminal_view(t: TerminalRecord) -> TerminalView {
    TerminalView {
        status: match t.disabled_at_unix_s {
            Some(_) => "disabled",
            None => "active",
        }
        .to_owned(),
        id: t.id,
        name: t.name,
        disabled_at_unix_s: t.disabled_at_unix_s,
    }
}

/// `POST /v1/admin/devices` (kept for scripts): the built-in CA certifies a
/// bare P-256 point. Prefer the CSR endpoint, which proves possession.
pub async fn enroll_device(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<EnrollDevice>,
) -> Result<impl IntoResponse, ApiError> {
    check_name("label", &body.label, 0)?;
    if state.external_ca {
        return Err(ApiError::ExternalCa);
    }
    let point = b64::decode(&body.public_key)
        .as_deref()
        .and_then(parse_p256_point)
        .ok_or_else(|| {
            ApiError::invalid("public_key must be a base64 SEC1 uncompressed P-256 point")
        })?;
    check_customer(&state, &body.account).await?;
    let now = state.now_unix_s();
    let device_id = random::public_id("dev_").map_err(rng)?;
    let certificate = state
        .ca
        .issue_device_certificate(&device_id, &body.account, &point, &state.origin, now)
        .map_err(|e| {
            tracing::error!(error = %e, "issuing a device certificate failed");
            ApiError::Internal
        })?;
    let enrolled = create_device(
        &state,
        NewDevice {
            id: device_id,
            account: body.account,
            label: body.label,
            // The transaction applet or a PIV card; OCRA devices have no key.
            method: body.method,
            ocra: None,
            public_key: point.to_vec(),
            certificate,
            credential_hash: [0; 32],
            created_at_unix_s: now,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(enrolled)))
}

async fn check_customer(state: &AppState, account: &AccountId) -> Result<(), ApiError> {
    match state.store.get_account(account).await? {
        Some(a) if !a.system => Ok(()),
        _ => Err(ApiError::UnknownAccount(account.to_string())),
    }
}

/// Stores a new device with a fresh relay credential (returned once).
async fn create_device(state: &AppState, mut new: NewDevice) -> Result<DeviceEnrolled, ApiError> {
    let credential = random::secret_token("kbd_").map_err(rng)?;
    new.credential_hash = sha256(&credential);
    let account = new.account.clone();
    let certificate = new.certificate.clone();
    let device = state.store.create_device(new).await.map_err(|e| match e {
        StoreError::UnknownAccount => ApiError::UnknownAccount(account.to_string()),
        other => other.into(),
    })?;
    tracing::info!(device = %device.id, account = %device.account, method = device.method.as_str(), "device enrolled");
    Ok(DeviceEnrolled {
        device_id: device.id,
        account: device.account,
        certificate: b64::encode(&certificate),
        credential,
    })
}

/// `POST /v1/admin/devices/csr`: the built-in CA verifies the PKCS#10
/// request's signature (proof of possession) and certifies its key for one account.
pub async fn enroll_csr(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<EnrollCsr>,
) -> Result<impl IntoResponse, ApiError> {
    check_name("label", &body.label, 0)?;
    if state.external_ca {
        return Err(ApiError::ExternalCa);
    }
    if body.method == SignatureMethod::Ocra {
        return Err(ApiError::invalid(
            "OCRA devices are provisioned at /v1/admin/devices/ocra",
        ));
    }
    let csr = b64::decode(&body.csr).ok_or_else(|| ApiError::invalid("csr must be base64 DER"))?;
    check_customer(&state, &body.account).await?;
    let now = state.now_unix_s();
    let device_id = random::public_id("dev_").map_err(rng)?;
    let (certificate, public_key) = state
        .ca
        .issue_from_csr(&device_id, &body.account, &csr, &state.origin, now)
        .map_err(|e| ApiError::CsrRefused(e.to_string()))?;
    // The certificate must pass the same validation every confirmation will.
    validate_for(&state, &device_id, &certificate, &body.account, now)?;
    let enrolled = create_device(
        &state,
        NewDevice {
            id: device_id,
            account: body.account,
            label: body.label,
            method: body.method,
            ocra: None,
            public_key,
            certificate,
            credential_hash: [0; 32],
            created_at_unix_s: now,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(enrolled)))
}

/// Full path validation of `certificate` for `account` now; the public key bits.
fn validate_for(
    state: &AppState,
    device_id: &str,
    certificate: &[u8],
    account: &AccountId,
    now: u64,
) -> Result<Vec<u8>, ApiError> {
    let now = i64::try_from(now).map_err(|_| ApiError::Internal)?;
    let v = &state.verifier;
    let path = v
        .cache
        .get_or_validate(&v.trust, device_id, certificate, now)
        .and_then(|p| crate::pki::check(&p, account, now, &v.revoked).map(|()| p))
        .map_err(|e| ApiError::CertificateRefused(e.to_string()))?;
    Ok(path.key.bytes().to_vec())
}

/// `POST /v1/admin/devices/certificate`: enrol a device whose certificate a
/// (configured) external CA issued; refused unless its path validates now.
pub async fn import_certificate(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<ImportCertificate>,
) -> Result<impl IntoResponse, ApiError> {
    check_name("label", &body.label, 0)?;
    if body.method == SignatureMethod::Ocra {
        return Err(ApiError::invalid("OCRA devices have no certificate"));
    }
    let certificate = b64::decode(&body.certificate)
        .filter(|c| c.len() <= crate::ca::CSR_LEN_MAX)
        .ok_or_else(|| ApiError::invalid("certificate must be base64 DER (at most 8 KiB)"))?;
    check_customer(&state, &body.account).await?;
    let now = state.now_unix_s();
    let device_id = random::public_id("dev_").map_err(rng)?;
    let public_key = validate_for(&state, &device_id, &certificate, &body.account, now)?;
    let enrolled = create_device(
        &state,
        NewDevice {
            id: device_id,
            account: body.account,
            label: body.label,
            method: body.method,
            ocra: None,
            public_key,
            certificate,
            credential_hash: [0; 32],
            created_at_unix_s: now,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(enrolled)))
}

/// `POST /v1/admin/devices/ocra`: an OCRA-mode device from an otpauth URI.
/// The secret is sealed under the master key before it reaches the store.
pub async fn provision_ocra(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<ProvisionOcra>,
) -> Result<impl IntoResponse, ApiError> {
    check_name("label", &body.label, 0)?;
    // The parse error never contains the secret.
    let uri = OtpauthUri::parse(&body.uri).map_err(|e| ApiError::invalid(e.to_string()))?;
    let suite = &uri.suite;
    let question_ok = suite.question_format() == keybridge_proto::ocra::QuestionFormat::Hex
        && suite.question_len() == 64;
    if !question_ok
        || suite.pin_hash().is_some()
        || suite.session_len().is_some()
        || (!suite.uses_counter() && suite.time_step().is_none())
    {
        return Err(ApiError::invalid(
            "the suite must ask a QH64 question (the payload's SHA-256), have C or T, and no P or S",
        ));
    }
    check_customer(&state, &body.account).await?;
    let device_id = random::public_id("dev_").map_err(rng)?;
    let sealed_secret = state
        .verifier
        .master_key
        .seal(&uri.secret, &ocra_aad(&device_id, suite.as_str()))
        .map_err(|e| {
            tracing::error!(error = %e, "sealing an OCRA secret failed");
            ApiError::Internal
        })?;
    let enrolled = create_device(
        &state,
        NewDevice {
            id: device_id,
            account: body.account,
            label: body.label,
            method: SignatureMethod::Ocra,
            ocra: Some(OcraRecord {
                suite: suite.as_str().to_owned(),
                sealed_secret,
            }),
            public_key: Vec::new(),
            certificate: Vec::new(),
            credential_hash: [0; 32],
            created_at_unix_s: state.now_unix_s(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(enrolled)))
}

pub async fn get_device(
    State(state): State<AppState>,
    _: Admin,
    PathId(id): PathId,
) -> Result<Json<DeviceView>, ApiError> {
    let device = state
        .store
        .get_device(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(device.view()))
}

pub async fn rename_device(
    State(state): State<AppState>,
    _: Admin,
    PathId(id): PathId,
    ApiJson(body): ApiJson<RenameDevice>,
) -> Result<Json<DeviceView>, ApiError> {
    check_name("label", &body.label, 0)?;
    let device = state
        .store
        .rename_device(&id, &body.label, state.now_unix_s())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(device.view()))
}

/// Revokes the device's certificate (or OCRA secret): every confirmation not
/// yet accepted is refused from now on (`certificate_revoked`), and the
/// built-in CA's CRL lists the serial.
pub async fn revoke_device(
    State(state): State<AppState>,
    _: Admin,
    PathId(id): PathId,
) -> Result<Json<DeviceView>, ApiError> {
    let device = state
        .store
        .revoke_device(&id, state.now_unix_s())
        .await?
        .ok_or(ApiError::NotFound)?;
    tracing::info!(device = %device.id, "device revoked");
    Ok(Json(close_sessions(&state, &device)))
}

/// A device that was disabled or revoked is sent no more requests: its relay
/// sockets close. Returns its view for the response.
fn close_sessions(state: &AppState, device: &DeviceRecord) -> DeviceView {
    state.hub.publish(HubEvent::DeviceDisabled {
        device_id: device.id.clone(),
        account: device.account.clone(),
    });
    device.view()
}

/// How long a CRL from `GET /v1/crl` is valid (its nextUpdate).
pub const CRL_VALIDITY_S: u64 = 24 * 3600;

/// `GET /v1/crl` (no authentication): the built-in CA's CRL, DER.
pub async fn crl(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let devices = state.store.list_devices().await?;
    let revoked: Vec<(Vec<u8>, u64)> = devices
        .iter()
        .filter_map(|d| {
            Some((
                state.ca.issued_serial(&d.certificate)?,
                d.revoked_at_unix_s?,
            ))
        })
        .collect();
    let der = state
        .ca
        .crl(&revoked, state.now_unix_s(), CRL_VALIDITY_S)
        .map_err(|e| {
            tracing::error!(error = %e, "signing the CRL failed");
            ApiError::Internal
        })?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der))
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
    Ok(Json(close_sessions(&state, &device)))
}

/// A list's `limit`: [`LIST_LIMIT_DEFAULT`] if absent, at most [`LIST_LIMIT_MAX`].
pub fn list_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(LIST_LIMIT_DEFAULT) {
        n @ 1..=LIST_LIMIT_MAX => Ok(n),
        _ => Err(ApiError::invalid(format!(
            "limit must be 1 to {LIST_LIMIT_MAX}"
        ))),
    }
}

/// One transaction by id, with its terminal, the transfers it made and its
/// audit rows.
pub async fn get_transaction(
    State(state): State<AppState>,
    _: Admin,
    PathId(id): PathId,
) -> Result<Json<TransactionDetail>, ApiError> {
    let id: TransactionId = id.parse().map_err(|_| ApiError::NotFound)?;
    let transaction = state
        .store
        .get_transaction(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let transfers = state.store.transfers_for_transaction(&id).await?;
    let audit = state.store.audit_for_transaction(&id).await?;
    Ok(Json(TransactionDetail {
        transaction: transaction.view(),
        terminal_id: transaction.terminal_id,
        updated_at_unix_s: transaction.updated_at_unix_s,
        transfers: transfers.iter().map(TransferRecord::view).collect(),
        audit: audit.iter().map(AuditRecord::view).collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionsQuery {
    limit: Option<u32>,
    /// The last id of the page before: the next page starts after it.
    before: Option<TransactionId>,
}

/// Every transaction, newest first, a page at a time: `before` the last id
/// of the page before, until a page comes back short.
pub async fn list_transactions(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(query): ApiQuery<TransactionsQuery>,
) -> Result<Json<Vec<TransactionView>>, ApiError> {
    let limit = list_limit(query.limit)?;
    let transactions = match query.before {
        None => state.store.list_transactions(limit).await?,
        Some(before) => state
            .store
            .transactions_before(&before, limit)
            .await?
            .ok_or(ApiError::NotFound)?,
    };
    Ok(Json(transactions.iter().map(|t| t.view()).collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

/// The audit log in `seq` order, a page at a time (`after` the last `seq`
/// of the page before).
pub async fn audit(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntryView>>, ApiError> {
    let limit = list_limit(query.limit)?;
    // Sequence numbers are i64 in both stores; a larger cursor names no row
    // and cannot reach the database (found by tests/schemathesis.rs: it was a 500).
    let after = query.after.unwrap_or(0);
    if i64::try_from(after).is_err() {
        return Err(ApiError::InvalidRequest(format!(
            "after must be at most {}",
            i64::MAX
        )));
    }
    let rows = state.store.audit_page(after, limit).await?;
    Ok(Json(rows.iter().map(AuditRecord::view).collect()))
}

/// Recomputes the whole chain. A broken chain is an answer (200, `intact:
/// false`), not a failed request; it is also logged as an error.
pub async fn verify_audit(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<AuditVerification>, ApiError> {
    let (check, broken_at_seq) = state.store.check_audit_chain().await?;
    if let Some(seq) = broken_at_seq {
        tracing::error!(
            seq,
            rows_checked = check.rows(),
            "the audit chain is broken"
        );
    }
    Ok(Json(AuditVerification {
        intact: broken_at_seq.is_none(),
        rows_checked: check.rows(),
        head_seq: check.last_seq(),
        head_hash_hex: check.head().map(hex::encode),
        broken_at_seq,
    }))
}

/// Reads the books back in one snapshot. Unbalanced books are an answer
/// (200, `balanced: false`), not a failed request; they are also logged as
/// an error.
pub async fn verify_books(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<BooksVerification>, ApiError> {
    let check = state.store.check_books().await?;
    if !check.balanced() {
        tracing::error!(broken = %check.describe_broken(), "the books do not balance");
    }
    Ok(Json(BooksVerification {
        balanced: check.balanced(),
        accounts_checked: check.accounts,
        transfers_checked: check.transfers,
        broken: check
            .broken
            .iter()
            .map(|&(rule, count)| BrokenRule {
                rule: rule.code().to_owned(),
                count,
                message: rule.breaches().to_owned(),
            })
            .collect(),
    }))
}

pub async fn ca_pem(State(state): State<AppState>, _: Admin) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.cert_pem().to_owned(),
    )
}
