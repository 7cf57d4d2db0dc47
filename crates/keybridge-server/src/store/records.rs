//! What the store keeps, as plain Rust values (no SQL types).

use keybridge_proto::api::{self, Reason, TransactionStatus};
use keybridge_proto::{AccountId, Currency, Money, TransactionId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub id: AccountId,
    pub display_name: String,
    pub currency: Currency,
    /// Signed: the issuance account runs negative by design.
    pub balance_minor: i64,
    pub system: bool,
    pub created_at_unix_s: u64,
}

impl AccountRecord {
    pub fn view(&self) -> api::AccountView {
        let magnitude = Money::new(self.balance_minor.unsigned_abs(), self.currency);
        let sign = if self.balance_minor < 0 { "-" } else { "" };
        api::AccountView {
            id: self.id.clone(),
            display_name: self.display_name.clone(),
            currency: self.currency,
            balance_minor: self.balance_minor,
            balance_display: format!("{} {sign}{}", self.currency, magnitude.major_string()),
            system: self.system,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    pub id: AccountId,
    pub display_name: String,
    pub currency: Currency,
    /// At most `i64::MAX`; the handler checks.
    pub opening_balance_minor: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTerminal {
    pub id: String,
    pub name: String,
    /// SHA-256 of the API key; the key itself is never stored.
    pub api_key_hash: [u8; 32],
    pub created_at_unix_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalRecord {
    pub id: String,
    pub name: String,
    /// Set once the terminal is disabled: its API key authenticates nothing.
    pub disabled_at_unix_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Active,
    Disabled,
}

impl DeviceStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceStatus> {
        match s {
            "active" => Some(DeviceStatus::Active),
            "disabled" => Some(DeviceStatus::Disabled),
            _ => None,
        }
    }
}

/// An OCRA device's suite and its secret sealed under the master key
/// ([`crate::secretbox`]); the store never sees the secret in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcraRecord {
    pub suite: String,
    pub sealed_secret: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub id: String,
    pub account: AccountId,
    pub label: String,
    pub method: api::SignatureMethod,
    /// Set for OCRA devices (which have no key or certificate: both empty).
    pub ocra: Option<OcraRecord>,
    /// SEC1 uncompressed P-256 point, 65 bytes.
    pub public_key: Vec<u8>,
    /// The X.509 certificate the CA issued, DER.
    pub certificate: Vec<u8>,
    /// SHA-256 of the device credential; the credential itself is never stored.
    pub credential_hash: [u8; 32],
    pub created_at_unix_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: String,
    pub account: AccountId,
    pub label: String,
    pub public_key: Vec<u8>,
    pub certificate: Vec<u8>,
    pub status: DeviceStatus,
    /// The highest signature counter accepted so far (0: none yet). For OCRA
    /// devices: the highest counter C, or for suites without C the highest
    /// time step T, accepted: each is accepted once.
    pub last_counter: u32,
    pub created_at_unix_s: u64,
    pub method: api::SignatureMethod,
    pub revoked_at_unix_s: Option<u64>,
    pub ocra: Option<OcraRecord>,
}

impl DeviceRecord {
    pub fn view(&self) -> api::DeviceView {
        let serial = x509_parser::parse_x509_certificate(&self.certificate)
            .ok()
            .map(|(_, c)| hex::encode(c.raw_serial()));
        api::DeviceView {
            device_id: self.id.clone(),
            account: self.account.clone(),
            label: self.label.clone(),
            status: match self.revoked_at_unix_s {
                Some(_) => "revoked".to_owned(),
                None => self.status.as_str().to_owned(),
            },
            last_counter: self.last_counter,
            method: self.method.as_str().to_owned(),
            revoked_at_unix_s: self.revoked_at_unix_s,
            certificate_serial: serial,
        }
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_at_unix_s.is_some()
    }
}

/// One transaction row, including the exact payload bytes the device must sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    pub id: TransactionId,
    pub terminal_id: String,
    pub idempotency_key: String,
    /// SHA-256 of the canonical request body, to tell a replay from a conflict.
    pub request_hash: [u8; 32],
    pub payer: AccountId,
    pub payee: AccountId,
    pub payee_name: String,
    pub amount_minor: u64,
    pub currency: Currency,
    pub order_id: String,
    pub description: String,
    /// The canonical encoded `ConfirmationPayload`, as issued.
    pub payload: Vec<u8>,
    pub status: TransactionStatus,
    pub reason: Option<Reason>,
    pub created_at_unix_s: u64,
    pub expires_at_unix_s: u64,
    pub updated_at_unix_s: u64,
}

impl TransactionRecord {
    pub fn view(&self) -> api::TransactionView {
        api::TransactionView {
            id: self.id,
            status: self.status,
            reason: self.reason,
            payer: self.payer.clone(),
            payee: self.payee.clone(),
            payee_name: self.payee_name.clone(),
            amount_minor: self.amount_minor,
            currency: self.currency,
            amount_display: Money::new(self.amount_minor, self.currency).to_string(),
            order_id: self.order_id.clone(),
            description: self.description.clone(),
            created_at_unix_s: self.created_at_unix_s,
            expires_at_unix_s: self.expires_at_unix_s,
            reason_text: self.reason.map(|r| r.describe().to_owned()),
        }
    }
}

impl TransferRecord {
    pub fn view(&self) -> api::TransferView {
        api::TransferView {
            id: self.id,
            kind: self.kind.as_str().to_owned(),
            debit_account: self.debit_account.clone(),
            credit_account: self.credit_account.clone(),
            amount_minor: self.amount_minor,
            currency: self.currency,
            created_at_unix_s: self.created_at_unix_s,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// Funds a new account from its currency's issuance account.
    Opening,
    /// Settles a confirmed transaction.
    Payment,
}

impl TransferKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TransferKind::Opening => "opening",
            TransferKind::Payment => "payment",
        }
    }

    pub fn parse(s: &str) -> Option<TransferKind> {
        match s {
            "opening" => Some(TransferKind::Opening),
            "payment" => Some(TransferKind::Payment),
            _ => None,
        }
    }
}

/// One double-entry transfer: debit and credit are equal by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    pub id: i64,
    pub transaction_id: Option<TransactionId>,
    pub kind: TransferKind,
    pub debit_account: AccountId,
    pub credit_account: AccountId,
    pub amount_minor: u64,
    pub currency: Currency,
    pub created_at_unix_s: u64,
}

/// One row of the append-only, hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_unix_s: u64,
    pub transaction_id: Option<TransactionId>,
    pub event: String,
    pub detail: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

impl AuditRecord {
    pub fn view(&self) -> api::AuditEntryView {
        api::AuditEntryView {
            seq: self.seq,
            at_unix_s: self.at_unix_s,
            transaction_id: self.transaction_id,
            event: self.event.clone(),
            detail: self.detail.clone(),
            prev_hash_hex: hex::encode(self.prev_hash),
            hash_hex: hex::encode(self.hash),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_balances_display_with_a_sign() {
        let a = AccountRecord {
            id: AccountId::new("issuance:CNY").unwrap(),
            display_name: "CNY issuance".into(),
            currency: Currency::from_code("CNY").unwrap(),
            balance_minor: -1234,
            system: true,
            created_at_unix_s: 0,
        };
        assert_eq!(a.view().balance_display, "CNY -12.34");
    }
}
