//! JSON bodies of the HTTP API. The server owns the routes; these types are the
//! contract its clients (terminal, relay, admin) compile against. Every request
//! body refuses unknown fields, so a typo is an error rather than a silent default.

use serde::{Deserialize, Serialize};

use crate::{AccountId, Currency, TransactionId};

/// Lifecycle of a transaction. Only `pending` ever changes, and only once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TransactionStatus {
    Pending,
    Settled,
    Rejected,
    Expired,
    Failed,
}

impl TransactionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            TransactionStatus::Pending => "pending",
            TransactionStatus::Settled => "settled",
            TransactionStatus::Rejected => "rejected",
            TransactionStatus::Expired => "expired",
            TransactionStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<TransactionStatus> {
        Some(match s {
            "pending" => TransactionStatus::Pending,
            "settled" => TransactionStatus::Settled,
            "rejected" => TransactionStatus::Rejected,
            "expired" => TransactionStatus::Expired,
            "failed" => TransactionStatus::Failed,
            _ => return None,
        })
    }

    pub fn is_final(&self) -> bool {
        *self != TransactionStatus::Pending
    }
}

/// Machine-readable reason for every outcome other than `settled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// The signature does not verify against the payload the server stored.
    BadSignature,
    /// The holder declined on the device or the phone.
    Declined,
    /// The signature counter did not increase: a replayed or cloned device.
    CounterReplay,
    /// The signing device is not enrolled, not active, or not the payer's.
    UnknownDevice,
    /// The device's certificate failed validation (issuer, validity, binding).
    CertificateInvalid,
    /// The PIN entered on the phone was wrong.
    WrongPin,
    /// The device's PIN is blocked after too many wrong attempts.
    PinBlocked,
    /// The device could not be reached or answered with an error.
    DeviceError,
    /// The confirmation window passed.
    Expired,
    /// The payer's balance does not cover the amount.
    InsufficientFunds,
    /// The device's certificate (or one on its path) is revoked.
    CertificateRevoked,
    /// A certificate on the device's path has expired.
    CertificateExpired,
    /// A certificate on the device's path is not yet valid.
    CertificateNotYetValid,
    /// No configured trust anchor issued the device's certificate.
    CertificateUntrusted,
    /// A signature on the certificate path does not verify (an altered certificate).
    CertificateSignatureInvalid,
    /// The device's certificate lacks keyUsage digitalSignature.
    CertificateKeyUsage,
    /// The device's certificate names another account than the payer.
    CertificateWrongAccount,
    /// The OCRA response does not match the stored payload.
    OcraMismatch,
    /// The OCRA response is for a time step outside the accepted window.
    OcraStale,
    /// This OCRA counter or time step was already accepted once.
    ResponseReused,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::BadSignature => "bad_signature",
            Reason::Declined => "declined",
            Reason::CounterReplay => "counter_replay",
            Reason::UnknownDevice => "unknown_device",
            Reason::CertificateInvalid => "certificate_invalid",
            Reason::WrongPin => "wrong_pin",
            Reason::PinBlocked => "pin_blocked",
            Reason::DeviceError => "device_error",
            Reason::Expired => "expired",
            Reason::InsufficientFunds => "insufficient_funds",
            Reason::CertificateRevoked => "certificate_revoked",
            Reason::CertificateExpired => "certificate_expired",
            Reason::CertificateNotYetValid => "certificate_not_yet_valid",
            Reason::CertificateUntrusted => "certificate_untrusted",
            Reason::CertificateSignatureInvalid => "certificate_signature_invalid",
            Reason::CertificateKeyUsage => "certificate_key_usage",
            Reason::CertificateWrongAccount => "certificate_wrong_account",
            Reason::OcraMismatch => "ocra_mismatch",
            Reason::OcraStale => "ocra_stale",
            Reason::ResponseReused => "response_reused",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Some(match s {
            "bad_signature" => Reason::BadSignature,
            "declined" => Reason::Declined,
            "counter_replay" => Reason::CounterReplay,
            "unknown_device" => Reason::UnknownDevice,
            "certificate_invalid" => Reason::CertificateInvalid,
            "wrong_pin" => Reason::WrongPin,
            "pin_blocked" => Reason::PinBlocked,
            "device_error" => Reason::DeviceError,
            "expired" => Reason::Expired,
            "insufficient_funds" => Reason::InsufficientFunds,
            "certificate_revoked" => Reason::CertificateRevoked,
            "certificate_expired" => Reason::CertificateExpired,
            "certificate_not_yet_valid" => Reason::CertificateNotYetValid,
            "certificate_untrusted" => Reason::CertificateUntrusted,
            "certificate_signature_invalid" => Reason::CertificateSignatureInvalid,
            "certificate_key_usage" => Reason::CertificateKeyUsage,
            "certificate_wrong_account" => Reason::CertificateWrongAccount,
            "ocra_mismatch" => Reason::OcraMismatch,
            "ocra_stale" => Reason::OcraStale,
            "response_reused" => Reason::ResponseReused,
            _ => return None,
        })
    }

    /// Plain words for a person at a terminal.
    pub fn describe(&self) -> &'static str {
        match self {
            Reason::BadSignature => "the device's signature does not match this transaction",
            Reason::Declined => "the payer declined on the security device",
            Reason::CounterReplay => "the device's signature counter went backwards (replay)",
            Reason::UnknownDevice => "the signing device is not enrolled for the payer",
            Reason::CertificateInvalid => "the device's certificate is not valid",
            Reason::WrongPin => "a wrong PIN was entered on the security device",
            Reason::PinBlocked => "the security device's PIN is blocked",
            Reason::DeviceError => "the security device could not complete the signature",
            Reason::Expired => "the payer did not confirm in time",
            Reason::InsufficientFunds => "the payer's balance does not cover the amount",
            Reason::CertificateRevoked => "the device's certificate has been revoked",
            Reason::CertificateExpired => "the device's certificate has expired",
            Reason::CertificateNotYetValid => "the device's certificate is not yet valid",
            Reason::CertificateUntrusted => "the device's certificate is not from a trusted CA",
            Reason::CertificateSignatureInvalid => {
                "a signature on the device's certificate chain does not verify"
            }
            Reason::CertificateKeyUsage => "the device's certificate may not sign",
            Reason::CertificateWrongAccount => {
                "the device's certificate is bound to another account"
            }
            Reason::OcraMismatch => {
                "the device's one-time response does not match this transaction"
            }
            Reason::OcraStale => "the device's one-time response is for another time",
            Reason::ResponseReused => "the device's one-time response was already used",
        }
    }
}

/// `POST /v1/transactions` (terminal; `Authorization: Bearer <api key>`,
/// `Idempotency-Key: <client-chosen key>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTransaction {
    pub payer: AccountId,
    pub payee: AccountId,
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 9223372036854775807_i64)
    )]
    pub amount_minor: u64,
    pub currency: Currency,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub order_id: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 140))]
    pub description: String,
}

/// A transaction as every client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransactionView {
    pub id: TransactionId,
    pub status: TransactionStatus,
    pub reason: Option<Reason>,
    pub payer: AccountId,
    pub payee: AccountId,
    pub payee_name: String,
    pub amount_minor: u64,
    pub currency: Currency,
    /// The amount formatted for its currency, e.g. `CNY 12.34`.
    pub amount_display: String,
    pub order_id: String,
    pub description: String,
    pub created_at_unix_s: u64,
    pub expires_at_unix_s: u64,
    /// [`Reason::describe`] of `reason`: plain words for a person at a terminal.
    #[serde(default)]
    pub reason_text: Option<String>,
}

/// The header of the server's answer to a relay's WebSocket upgrade (101)
/// that says how often, in milliseconds, the server pings the socket. A
/// relay that hears nothing, not even a ping, for [`PINGS_MISSED_MAX`] of
/// them takes the path for dead and reconnects; so the interval is set on
/// the server alone (`keybridge server --relay-ping-s`), and the two ends
/// cannot disagree.
pub const PING_INTERVAL_HEADER: &str = "keybridge-ping-interval-ms";

/// Pings either end of a relay socket may miss before it takes the other
/// for gone: the server closes a session whose relay answered none of
/// them, a relay reconnects when none arrived.
pub const PINGS_MISSED_MAX: u32 = 3;

/// Server → relay, one JSON text message per WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RelayMessage {
    /// Please have the device confirm this payload.
    ConfirmationRequest {
        transaction_id: TransactionId,
        /// The canonical confirmation payload, base64 (standard alphabet).
        payload: String,
    },
    /// The transaction ended elsewhere (expired, another device answered).
    Cancelled { transaction_id: TransactionId },
    /// The answer to a [`RelayAnswer::Confirmation`] sent on this socket:
    /// `status` is what `POST /v1/confirmations/{id}` would have answered,
    /// with the transaction after it (`view`, on 200) or the error body.
    ConfirmationResult {
        transaction_id: TransactionId,
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        view: Option<Box<TransactionView>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
}

/// Relay → server on the relay WebSocket, one JSON text message per frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RelayAnswer {
    /// The device's answer, exactly as the body of `POST
    /// /v1/confirmations/{id}` carries it: saves the relay a second
    /// connection and request per payment. Answered by
    /// [`RelayMessage::ConfirmationResult`].
    Confirmation {
        transaction_id: TransactionId,
        confirmation: Confirmation,
    },
}

/// `POST /v1/confirmations/{id}` (relay; `Authorization: Bearer <device credential>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Confirmation {
    Signed {
        counter: u32,
        /// DER ECDSA signature, base64 (standard alphabet).
        signature: String,
    },
    Declined {
        reason: DeclineReason,
    },
    /// An OCRA (RFC 6287) response from a device in OCRA mode, over the
    /// question derived from the stored payload ([`crate::ocra::payload_question`]).
    Ocra {
        response: String,
        /// The counter C the device used, if it says (otherwise the server looks ahead).
        #[serde(default)]
        counter: Option<u64>,
        /// The time step T the device used, if it says (otherwise the server searches its window).
        #[serde(default)]
        time_step: Option<u64>,
    },
}

/// Why the phone did not return a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    Declined,
    WrongPin,
    PinBlocked,
    DeviceError,
}

impl From<DeclineReason> for Reason {
    fn from(d: DeclineReason) -> Reason {
        match d {
            DeclineReason::Declined => Reason::Declined,
            DeclineReason::WrongPin => Reason::WrongPin,
            DeclineReason::PinBlocked => Reason::PinBlocked,
            DeclineReason::DeviceError => Reason::DeviceError,
        }
    }
}

/// `POST /v1/admin/accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    pub id: AccountId,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub display_name: String,
    pub currency: Currency,
    /// Funded by a double-entry transfer from the currency's issuance account.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 9223372036854775807_i64))]
    pub opening_balance_minor: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountView {
    pub id: AccountId,
    pub display_name: String,
    pub currency: Currency,
    /// Signed: system accounts (issuance) run negative by design.
    pub balance_minor: i64,
    pub balance_display: String,
    pub system: bool,
}

/// `POST /v1/admin/terminals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTerminal {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub name: String,
}

/// Returned once; the server keeps only a hash of `api_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TerminalCreated {
    pub id: String,
    pub name: String,
    pub api_key: String,
}

/// `GET /v1/admin/terminals`, `POST /v1/admin/terminals/{id}/disable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TerminalView {
    pub id: String,
    pub name: String,
    /// `active`, or `disabled`: its API key authenticates nothing.
    pub status: String,
    #[serde(default)]
    pub disabled_at_unix_s: Option<u64>,
}

/// `POST /v1/admin/devices`: issue a certificate for a card's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollDevice {
    pub account: AccountId,
    /// SEC1 uncompressed P-256 point (65 bytes), base64.
    pub public_key: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub label: String,
    /// How the device signs; absent in older clients' bodies: the transaction applet.
    #[serde(default)]
    pub method: SignatureMethod,
}

/// Returned once; the server keeps only a hash of `credential`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceEnrolled {
    pub device_id: String,
    pub account: AccountId,
    /// The issued X.509 certificate, DER, base64.
    pub certificate: String,
    /// The relay's secret for `/v1/relay` and `/v1/confirmations`.
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceView {
    pub device_id: String,
    pub account: AccountId,
    pub label: String,
    pub status: String,
    pub last_counter: u32,
    /// `transaction_applet`, `piv` or `ocra`.
    #[serde(default)]
    pub method: String,
    /// When its certificate (or OCRA secret) was revoked, if it was.
    #[serde(default)]
    pub revoked_at_unix_s: Option<u64>,
    /// The certificate's serial number, hex (none for OCRA devices).
    #[serde(default)]
    pub certificate_serial: Option<String>,
}

/// The one error body of every endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `invalid_request`.
    pub error: String,
    pub message: String,
}

/// `PUT /v1/webhook` (terminal): where to POST this terminal's outcome events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterWebhook {
    /// An `http` or `https` URL, at most 2048 bytes.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 2048))]
    pub url: String,
}

/// Returned once by `PUT /v1/webhook`: the HMAC-SHA256 key that signs every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookRegistered {
    pub url: String,
    /// Key of `KeyBridge-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
    pub secret: String,
}

/// `GET /v1/webhook`: the registration, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookView {
    pub url: String,
    pub created_at_unix_s: u64,
}

/// The body KeyBridge POSTs to a terminal's webhook when a transaction ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookEvent {
    /// Unique per event and the same on every retry: deduplicate on it.
    pub id: String,
    /// `transaction.settled`, `transaction.rejected`, `transaction.expired` or `transaction.failed`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at_unix_s: u64,
    pub transaction: TransactionView,
}

/// `GET /v1/admin/webhook-deliveries`: one event and how its delivery went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDeliveryView {
    pub event_id: String,
    pub terminal_id: String,
    pub transaction_id: TransactionId,
    pub url: String,
    /// `pending`, `delivered` or `failed` (gave up after the last attempt).
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at_unix_s: u64,
    /// HTTP status of the last attempt, if the receiver answered.
    #[serde(default)]
    pub last_status: Option<u16>,
    #[serde(default)]
    pub last_error: Option<String>,
    pub created_at_unix_s: u64,
    #[serde(default)]
    pub delivered_at_unix_s: Option<u64>,
}

/// `GET /v1/admin/audit`: one row of the audit log, a link of its hash
/// chain: `hash = SHA-256(prev_hash ‖ seq ‖ at ‖ len‖transaction_id ‖
/// len‖event ‖ len‖detail)`, integers as 8 bytes big-endian, each text as
/// its UTF-8 bytes after their length, a missing transaction id as the empty
/// text; the first row's `prev_hash` is 32 zero bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntryView {
    pub seq: u64,
    pub at_unix_s: u64,
    #[serde(default)]
    pub transaction_id: Option<TransactionId>,
    pub event: String,
    /// The event's details (a JSON object) as the text that was hashed.
    pub detail: String,
    pub prev_hash_hex: String,
    pub hash_hex: String,
}

/// `GET /v1/admin/audit/verify`: the audit log's hash chain recomputed
/// from its first row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditVerification {
    /// Every row links to the one before it, from the first to the last.
    pub intact: bool,
    /// How many rows link up, from the first (all of them when intact).
    pub rows_checked: u64,
    /// The last row that links up. Note its hash down: a later check that
    /// still reaches this `seq` with this hash shows nothing up to it changed.
    #[serde(default)]
    pub head_seq: Option<u64>,
    #[serde(default)]
    pub head_hash_hex: Option<String>,
    /// The first row that does not link up: edited, or after a gap.
    #[serde(default)]
    pub broken_at_seq: Option<u64>,
}

/// `GET /v1/admin/transactions/{id}`: one transaction as an operator
/// investigating it needs it: what the terminal sees, which terminal made
/// it, the money it moved and its audit rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransactionDetail {
    pub transaction: TransactionView,
    pub terminal_id: String,
    /// Unix seconds of its last change (its end, once ended).
    pub updated_at_unix_s: u64,
    /// Its payment transfer once settled; empty otherwise.
    pub transfers: Vec<TransferView>,
    /// The audit rows that name it, in `seq` order: its creation, then its
    /// end with the reason. Each is the row of `GET /v1/admin/audit`, hash
    /// included, so it can be checked against the chain.
    #[serde(default)]
    pub audit: Vec<AuditEntryView>,
}

/// One double-entry transfer of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransferView {
    pub id: i64,
    /// `payment` (a settled transaction) or `opening` (an opening balance).
    pub kind: String,
    pub debit_account: AccountId,
    pub credit_account: AccountId,
    pub amount_minor: u64,
    pub currency: Currency,
    pub created_at_unix_s: u64,
}

/// `GET /v1/admin/books/verify`: the ledger read back in one snapshot,
/// every double-entry rule counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BooksVerification {
    /// No rule is broken.
    pub balanced: bool,
    pub accounts_checked: u64,
    pub transfers_checked: u64,
    /// Each rule broken, with how many rows break it; empty when balanced.
    #[serde(default)]
    pub broken: Vec<BrokenRule>,
}

/// One rule of the books that some rows break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrokenRule {
    /// `balance_is_its_transfers` (each balance is the sum of its account's
    /// transfers), `currency_sums_to_zero`, `settled_has_its_transfer` or
    /// `transfer_has_its_settlement` (a payment transfer belongs to a settled
    /// transaction).
    pub rule: String,
    /// How many rows break it (accounts, currencies, transactions or transfers).
    pub count: u64,
    /// The same in words.
    pub message: String,
}

/// `GET /v1/accounts/{id}` (terminal): the account page of a payer this
/// terminal has created transactions for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountActivity {
    pub account: AccountView,
    /// This terminal's transactions with this payer, newest first.
    #[serde(default)]
    pub transactions: Vec<TransactionView>,
}

/// Base64 (standard alphabet, padded) used for every binary field.
pub mod b64 {
    use base64::Engine;

    pub fn encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }
}

/// How an enrolled device confirms, and so what the server verifies.
/// Wire form: `"transaction_applet"` (the default), `"piv"` or `"ocra"`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureMethod {
    /// KeyBridge's transaction applet: ECDSA P-256 over
    /// SHA-256(payload ‖ counter), with a strictly increasing counter.
    #[default]
    TransactionApplet,
    /// A PIV card's slot 9C: ECDSA P-256 over SHA-256(payload), no counter
    /// (the confirmation's `counter` is ignored; replay is stopped by the
    /// single-use challenge and the transaction leaving `pending` once).
    Piv,
    /// An OCRA (RFC 6287) response over the payload's SHA-256.
    Ocra,
}

impl SignatureMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            SignatureMethod::TransactionApplet => "transaction_applet",
            SignatureMethod::Piv => "piv",
            SignatureMethod::Ocra => "ocra",
        }
    }

    pub fn parse(s: &str) -> Option<SignatureMethod> {
        Some(match s {
            "transaction_applet" => SignatureMethod::TransactionApplet,
            "piv" => SignatureMethod::Piv,
            "ocra" => SignatureMethod::Ocra,
            _ => return None,
        })
    }
}

fn transaction_applet() -> SignatureMethod {
    SignatureMethod::TransactionApplet
}

/// `POST /v1/admin/devices/csr`: the built-in CA certifies the key in a
/// PKCS#10 request (whose signature proves possession of the key).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollCsr {
    pub account: AccountId,
    /// The PKCS#10 CertificationRequest, DER, base64.
    pub csr: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub label: String,
    #[serde(default = "transaction_applet")]
    pub method: SignatureMethod,
}

/// `POST /v1/admin/devices/certificate`: enrol a device with a certificate an
/// external CA issued; the server validates its path before accepting it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportCertificate {
    pub account: AccountId,
    /// The X.509 certificate, DER, base64.
    pub certificate: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub label: String,
    #[serde(default = "transaction_applet")]
    pub method: SignatureMethod,
}

/// `POST /v1/admin/devices/ocra`: enrol an OCRA-mode device from an
/// `otpauth://ocra/...?secret=BASE32&suite=...` URI. The secret is stored
/// encrypted under the server's master key and never returned.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionOcra {
    pub account: AccountId,
    pub uri: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub label: String,
}

/// `POST /v1/admin/devices/{id}/rename`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameDevice {
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub label: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let body = r#"{"payer":"a","payee":"b","amount_minor":1,"currency":"CNY","order_id":"o","amont":5}"#;
        assert!(serde_json::from_str::<CreateTransaction>(body).is_err());
    }

    #[test]
    fn floats_and_negative_amounts_are_refused() {
        for amount in ["12.5", "-1", "1e2"] {
            let body = format!(
                r#"{{"payer":"a","payee":"b","amount_minor":{amount},"currency":"CNY","order_id":"o"}}"#
            );
            assert!(
                serde_json::from_str::<CreateTransaction>(&body).is_err(),
                "{amount}"
            );
        }
    }

    #[test]
    fn confirmation_wire_shape() {
        let c: Confirmation =
            serde_json::from_str(r#"{"result":"declined","reason":"wrong_pin"}"#).unwrap();
        assert_eq!(
            c,
            Confirmation::Declined {
                reason: DeclineReason::WrongPin
            }
        );
        let r = RelayMessage::Cancelled {
            transaction_id: TransactionId([1; 16]),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.starts_with(r#"{"type":"cancelled""#), "{json}");
    }

    #[test]
    fn enrolment_bodies_without_a_method_still_parse() {
        let old = r#"{"account":"alice","public_key":"BA==","label":"card"}"#;
        let body: EnrollDevice = serde_json::from_str(old).unwrap();
        assert_eq!(body.method, SignatureMethod::TransactionApplet);
        let piv = r#"{"account":"alice","public_key":"BA==","method":"piv"}"#;
        let body: EnrollDevice = serde_json::from_str(piv).unwrap();
        assert_eq!(body.method, SignatureMethod::Piv);
        for m in [SignatureMethod::TransactionApplet, SignatureMethod::Piv] {
            assert_eq!(SignatureMethod::parse(m.as_str()), Some(m));
        }
    }

    #[test]
    fn reasons_round_trip() {
        for r in [
            Reason::BadSignature,
            Reason::InsufficientFunds,
            Reason::PinBlocked,
        ] {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }
}
