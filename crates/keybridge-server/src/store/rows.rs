//! What both backends read: the column lists, each table's row as a tuple of
//! plain values (text, integers, bytes), and its decoding into a record.
//! A backend only moves values between its driver and these tuples; every
//! check on what a stored value may be lives here, once.

use keybridge_proto::api::{Reason, SignatureMethod, TransactionStatus};
use keybridge_proto::{AccountId, Currency, TransactionId};

use super::web::{DeliveryRecord, DeliveryState};
use super::{
    AccountRecord, AuditRecord, DeviceRecord, DeviceStatus, OcraRecord, StoreError,
    TransactionRecord, TransferKind, TransferRecord,
};

pub(super) const TX_COLUMNS: &str = "id, terminal_id, idempotency_key, request_hash, payer, \
     payee, payee_name, amount_minor, currency, order_id, description, payload, status, reason, \
     created_at, expires_at, updated_at";
pub(super) const DEVICE_COLUMNS: &str = "id, account_id, label, public_key, certificate, \
     status, last_counter, created_at, method, revoked_at, ocra_suite, ocra_secret";
pub(super) const ACCOUNT_COLUMNS: &str =
    "id, display_name, currency, balance_minor, system, created_at";
pub(super) const TRANSFER_COLUMNS: &str =
    "id, transaction_id, kind, debit_account, credit_account, amount_minor, currency, created_at";
pub(super) const AUDIT_COLUMNS: &str = "seq, at, transaction_id, event, detail, prev_hash, hash";
pub(super) const DELIVERY_COLUMNS: &str = "event_id, terminal_id, transaction_id, url, state, \
     attempts, next_attempt_at, last_status, last_error, created_at, delivered_at";

pub(super) fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} exceeds the i64 range")))
}

pub(super) fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} is negative")))
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

pub(super) fn account_id(s: &str) -> Result<AccountId, StoreError> {
    AccountId::new(s).map_err(|_| corrupt("account id"))
}

pub(super) fn currency(s: &str) -> Result<Currency, StoreError> {
    Currency::from_code(s).map_err(|_| corrupt("currency"))
}

pub(super) fn transaction_id(s: &str) -> Result<TransactionId, StoreError> {
    s.parse().map_err(|_| corrupt("transaction id"))
}

pub(super) fn hash32(v: Vec<u8>) -> Result<[u8; 32], StoreError> {
    v.try_into().map_err(|_| corrupt("hash length"))
}

/// The account that funds opening balances in `currency`.
pub(super) fn issuance_account_id(currency: Currency) -> Result<AccountId, StoreError> {
    AccountId::new(&format!("{}{}", crate::ISSUANCE_PREFIX, currency.code()))
        .map_err(|_| corrupt("issuance account id"))
}

/// The values of one `transactions` row in [`TX_COLUMNS`] order.
pub(super) type TxRow = (
    (String, String, String, Vec<u8>, String, String, String, i64),
    (
        String,
        String,
        String,
        Vec<u8>,
        String,
        Option<String>,
        i64,
        i64,
        i64,
    ),
);

pub(super) fn decode_tx(row: TxRow) -> Result<TransactionRecord, StoreError> {
    let (
        (id, terminal_id, idempotency_key, request_hash, payer, payee, payee_name, amount),
        (cur, order_id, description, payload, status, reason, created, expires, updated),
    ) = row;
    Ok(TransactionRecord {
        id: transaction_id(&id)?,
        terminal_id,
        idempotency_key,
        request_hash: hash32(request_hash)?,
        payer: account_id(&payer)?,
        payee: account_id(&payee)?,
        payee_name,
        amount_minor: to_u64(amount)?,
        currency: currency(&cur)?,
        order_id,
        description,
        payload,
        status: TransactionStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        reason: match reason {
            Some(r) => Some(Reason::parse(&r).ok_or_else(|| corrupt("reason"))?),
            None => None,
        },
        created_at_unix_s: to_u64(created)?,
        expires_at_unix_s: to_u64(expires)?,
        updated_at_unix_s: to_u64(updated)?,
    })
}

/// The values of one `devices` row in [`DEVICE_COLUMNS`] order.
pub(super) type DeviceRow = (
    (String, String, String, Vec<u8>, Vec<u8>, String, i64, i64),
    (String, Option<i64>, Option<String>, Option<Vec<u8>>),
);

pub(super) fn decode_device(row: DeviceRow) -> Result<DeviceRecord, StoreError> {
    let ((id, account, label, public_key, certificate, status, last_counter, created), more) = row;
    let (method, revoked_at, ocra_suite, ocra_secret) = more;
    let ocra = match (ocra_suite, ocra_secret) {
        (Some(suite), Some(sealed_secret)) => Some(OcraRecord {
            suite,
            sealed_secret,
        }),
        (None, None) => None,
        _ => return Err(corrupt("OCRA suite without secret")),
    };
    Ok(DeviceRecord {
        method: SignatureMethod::parse(&method).ok_or_else(|| corrupt("device method"))?,
        revoked_at_unix_s: revoked_at.map(to_u64).transpose()?,
        ocra,
        id,
        account: account_id(&account)?,
        label,
        public_key,
        certificate,
        status: DeviceStatus::parse(&status).ok_or_else(|| corrupt("device status"))?,
        last_counter: u32::try_from(last_counter).map_err(|_| corrupt("device counter"))?,
        created_at_unix_s: to_u64(created)?,
    })
}

/// The values of one `accounts` row in [`ACCOUNT_COLUMNS`] order.
pub(super) type AccountRow = (String, String, String, i64, bool, i64);

pub(super) fn decode_account(row: AccountRow) -> Result<AccountRecord, StoreError> {
    let (id, display_name, cur, balance_minor, system, created) = row;
    Ok(AccountRecord {
        id: account_id(&id)?,
        display_name,
        currency: currency(&cur)?,
        balance_minor,
        system,
        created_at_unix_s: to_u64(created)?,
    })
}

/// The values of one `transfers` row in [`TRANSFER_COLUMNS`] order.
pub(super) type TransferRow = (
    i64,
    Option<String>,
    String,
    String,
    String,
    i64,
    String,
    i64,
);

pub(super) fn decode_transfer(row: TransferRow) -> Result<TransferRecord, StoreError> {
    let (id, t, kind, debit, credit, amount, cur, created) = row;
    Ok(TransferRecord {
        id,
        transaction_id: t.as_deref().map(transaction_id).transpose()?,
        kind: TransferKind::parse(&kind).ok_or_else(|| corrupt("transfer kind"))?,
        debit_account: account_id(&debit)?,
        credit_account: account_id(&credit)?,
        amount_minor: to_u64(amount)?,
        currency: currency(&cur)?,
        created_at_unix_s: to_u64(created)?,
    })
}

/// The values of one `audit_log` row in [`AUDIT_COLUMNS`] order.
pub(super) type AuditRow = (i64, i64, Option<String>, String, String, Vec<u8>, Vec<u8>);

pub(super) fn decode_audit(row: AuditRow) -> Result<AuditRecord, StoreError> {
    let (seq, at, t, event, detail, prev, hash) = row;
    Ok(AuditRecord {
        seq: to_u64(seq)?,
        at_unix_s: to_u64(at)?,
        transaction_id: t.as_deref().map(transaction_id).transpose()?,
        event,
        detail,
        prev_hash: hash32(prev)?,
        hash: hash32(hash)?,
    })
}

/// The values of one `webhook_deliveries` row in [`DELIVERY_COLUMNS`] order.
pub(super) type DeliveryRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    i64,
    Option<i64>,
);

pub(super) fn decode_delivery(row: DeliveryRow) -> Result<DeliveryRecord, StoreError> {
    let (event_id, terminal_id, tx, url, state, attempts, next, status, error, created, done) = row;
    let corrupt = |what: &str| StoreError::Corrupt(format!("webhook delivery {event_id}: {what}"));
    Ok(DeliveryRecord {
        transaction_id: transaction_id(&tx)?,
        state: DeliveryState::parse(&state).ok_or_else(|| corrupt("state"))?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts"))?,
        next_attempt_at_unix_s: to_u64(next)?,
        last_status: status
            .map(|s| u16::try_from(s).map_err(|_| corrupt("last_status")))
            .transpose()?,
        last_error: error,
        created_at_unix_s: to_u64(created)?,
        delivered_at_unix_s: done.map(to_u64).transpose()?,
        event_id,
        terminal_id,
        url,
    })
}

/// What the audit row of a new transaction says.
pub(super) fn transaction_created_detail(t: &TransactionRecord) -> serde_json::Value {
    serde_json::json!({
        "terminal": t.terminal_id,
        "payer": t.payer.as_str(),
        "payee": t.payee.as_str(),
        "amount_minor": t.amount_minor,
        "currency": t.currency.code(),
        "order_id": t.order_id,
        "payload_sha256": hex::encode(keybridge_proto::ConfirmationPayload::digest(&t.payload)),
    })
}
