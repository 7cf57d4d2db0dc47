//! The OpenAPI 3.1 document of the HTTP API, generated from the API types
//! (`keybridge-proto`'s `openapi` feature) and the path declarations below.
//!
//! The declarations are here rather than on the handlers so the handlers stay
//! plain axum functions; `tests/openapi.rs` keeps the two in step: every
//! route of [`crate::app`] is documented, every documented operation is
//! routed, and `docs/openapi.json` in the repository is this document.

use std::sync::OnceLock;

use keybridge_proto::api::{
    AccountActivity, AccountView, AuditEntryView, AuditVerification, BooksVerification, BrokenRule,
    Confirmation, CreateAccount, CreateTerminal, CreateTransaction, DeclineReason, DeviceEnrolled,
    DeviceView, EnrollCsr, EnrollDevice, ErrorBody, ImportCertificate, ProvisionOcra, Reason,
    RegisterWebhook, RelayAnswer, RelayMessage, RenameDevice, SignatureMethod, TerminalCreated,
    TerminalView, TransactionDetail, TransactionStatus, TransactionView, TransferView,
    WebhookDeliveryView, WebhookEvent, WebhookRegistered, WebhookView,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "KeyBridge API",
        description = "Out-of-band payment confirmation: a terminal submits a payment, the payer's phone relays the confirmation payload to a security device, the server verifies the device's signature over the payload it stored and settles.\n\nEvery error has the body `ErrorBody` (`{\"error\": <stable code>, \"message\": <text>}`). Request bodies refuse unknown fields, are size-limited (413 `payload_too_large`) and must arrive within the server's read timeout (408 `request_timeout`). Codes: `invalid_request` (400), `unauthorized` (401), `not_found` (404), `method_not_allowed` (405), `idempotency_conflict`, `not_pending`, `expired_token`, `already_exists` (409), `request_timeout` (408), `payload_too_large` (413), `too_many_pending` (429: the payer already has the server's limit of payments waiting for confirmation; retry once one ends), `rate_limited` (429: the terminal's API key sent more than the server's rate of requests a second; `Retry-After` says how many seconds to wait), `unknown_account`, `currency_mismatch`, `no_device` (422), `internal_error` (500), `not_ready` (503).",
        license(name = "Apache-2.0"),
    ),
    paths(
        paths::healthz, paths::readyz, paths::metrics, paths::openapi_json, paths::index, paths::app_js, paths::app_css,
        paths::create_transaction, paths::get_transaction, paths::transaction_events, paths::account_activity,
        paths::put_webhook, paths::get_webhook, paths::delete_webhook,
        paths::relay_socket, paths::confirm,
        paths::create_account, paths::list_accounts, paths::get_account, paths::create_terminal,
        paths::enroll_device, paths::list_devices, paths::disable_device, paths::list_transactions, paths::get_admin_transaction, paths::ca_pem,
        paths::enroll_csr, paths::import_certificate, paths::provision_ocra, paths::get_device,
        paths::rename_device, paths::revoke_device, paths::crl,
        paths::list_webhook_deliveries, paths::audit, paths::verify_audit, paths::verify_books,
        paths::list_terminals, paths::disable_terminal, paths::rotate_terminal_key,
    ),
    components(schemas(
        ErrorBody, TransactionStatus, Reason, CreateTransaction, TransactionView,
        RelayMessage, RelayAnswer, Confirmation, DeclineReason, CreateAccount, AccountView, CreateTerminal,
        TerminalCreated, EnrollDevice, DeviceEnrolled, DeviceView, RegisterWebhook,
        WebhookRegistered, WebhookView, WebhookEvent, WebhookDeliveryView, AccountActivity,
        SignatureMethod, EnrollCsr, ImportCertificate, ProvisionOcra, RenameDevice,
        AuditEntryView, AuditVerification, BooksVerification, BrokenRule, TerminalView,
        TransactionDetail, TransferView,
    )),
    modifiers(&Bearers),
    tags(
        (name = "terminal", description = "The transaction-initiating terminal (API key)."),
        (name = "relay", description = "The payer's phone (device credential)."),
        (name = "admin", description = "Operators (admin token)."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
        (name = "web", description = "The web checkout page and its assets."),
    ),
)]
pub struct ApiDoc;

/// The three bearer credentials.
struct Bearers;

impl Modify for Bearers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("terminal_key", "A terminal's API key (`kbt_…`)."),
            (
                "device_credential",
                "A relay's device credential (`kbd_…`).",
            ),
            ("admin_token", "The server's admin token."),
        ] {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(what.to_owned());
            components.add_security_scheme(name, SecurityScheme::Http(http));
        }
    }
}

/// The document as pretty JSON with a trailing newline, built once.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| match ApiDoc::openapi().to_pretty_json() {
        Ok(mut json) => {
            json.push('\n');
            json
        }
        Err(e) => {
            // Serialising a document of plain strings and maps cannot fail;
            // if it ever did, an error body beats a panic.
            tracing::error!(error = %e, "cannot serialise the OpenAPI document");
            r#"{"error":"internal_error","message":"an internal error occurred"}"#.to_owned()
        }
    })
}

/// Declarations for the document only: these functions are never called
/// (the handlers live in `routes`), utoipa reads their attributes.
#[allow(dead_code)]
mod paths {
    use keybridge_proto::api::*;

    // ---- Operations -------------------------------------------------------------

    #[utoipa::path(get, path = "/healthz", tag = "operations",
        responses((status = 200, description = "The process is up.", body = String, content_type = "text/plain")))]
    fn healthz() {}

    #[utoipa::path(get, path = "/readyz", tag = "operations",
        responses(
            (status = 200, description = "The database answers.", body = String, content_type = "text/plain"),
            (status = 503, description = "`not_ready`", body = ErrorBody)))]
    fn readyz() {}

    #[utoipa::path(get, path = "/metrics", tag = "operations",
        responses((status = 200, description = "Prometheus text exposition format.", body = String, content_type = "text/plain")))]
    fn metrics() {}

    #[utoipa::path(get, path = "/openapi.json", tag = "operations",
        responses((status = 200, description = "This document.", body = Object)))]
    fn openapi_json() {}

    // ---- Web checkout -------------------------------------------------------------

    #[utoipa::path(get, path = "/", tag = "web",
        responses((status = 200, description = "The checkout page.", body = String, content_type = "text/html")))]
    fn index() {}

    #[utoipa::path(get, path = "/assets/app.js", tag = "web",
        responses((status = 200, description = "The page's script.", body = String, content_type = "text/javascript")))]
    fn app_js() {}

    #[utoipa::path(get, path = "/assets/app.css", tag = "web",
        responses((status = 200, description = "The page's style sheet.", body = String, content_type = "text/css")))]
    fn app_css() {}

    // ---- Terminal -------------------------------------------------------------------

    #[utoipa::path(post, path = "/v1/transactions", tag = "terminal",
        security(("terminal_key" = [])),
        params(("Idempotency-Key" = String, Header,
            description = "Chosen and kept by the client: 1 to 128 printable ASCII characters. The same key and body replay the original (200); another body is `idempotency_conflict`."),
            ("Prefer" = Option<String>, Header,
            description = "`wait=N` (RFC 7240): hold the answer up to N seconds (at most 60) for the outcome, saving the long-poll. Answered with `Preference-Applied`.")),
        request_body = CreateTransaction,
        responses(
            (status = 201, description = "With `Prefer: wait`: created, and final within the wait.", body = TransactionView),
            (status = 202, description = "Stored `pending`; the payer's device was asked (with `Prefer: wait`: still pending when the wait ran out).", body = TransactionView),
            (status = 200, description = "A replay of an earlier request with this key.", body = TransactionView),
            (status = "4XX", description = "`invalid_request`, `unauthorized`, `idempotency_conflict`, `payload_too_large`, `unknown_account`, `currency_mismatch`, `no_device`, `too_many_pending`; `rate_limited` (429, with `Retry-After`: this terminal sent more than its rate)", body = ErrorBody)))]
    fn create_transaction() {}

    #[utoipa::path(get, path = "/v1/transactions/{id}", tag = "terminal",
        security(("terminal_key" = [])),
        params(("id" = String, Path, description = "Transaction id."),
            ("wait" = Option<u64>, Query, description = "Long-poll: hold up to this many seconds (0 to 60) until the transaction ends.")),
        responses(
            (status = 200, description = "The transaction now (final, or pending when the wait ran out).", body = TransactionView),
            (status = "4XX", description = "`invalid_request`, `unauthorized`, `not_found` (also for other terminals' transactions); `rate_limited` (429, with `Retry-After`: this terminal sent more than its rate)", body = ErrorBody)))]
    fn get_transaction() {}

    #[utoipa::path(get, path = "/v1/transactions/{id}/events", tag = "terminal",
        security(("terminal_key" = [])),
        params(("id" = String, Path, description = "Transaction id.")),
        responses(
            (status = 200, description = "Server-sent events: `event: status` with a `TransactionView` now and when it ends; the stream closes after a final status.", body = String, content_type = "text/event-stream"),
            (status = "4XX", description = "`unauthorized`, `not_found`; `rate_limited` (429, with `Retry-After`: this terminal sent more than its rate)", body = ErrorBody)))]
    fn transaction_events() {}

    #[utoipa::path(get, path = "/v1/accounts/{id}", tag = "terminal",
        security(("terminal_key" = [])),
        params(("id" = String, Path, description = "A payer account id.")),
        responses(
            (status = 200, description = "Balance and this terminal's recent transactions for the payer.", body = AccountActivity),
            (status = "4XX", description = "`unauthorized`; `not_found` also when this terminal has no transaction with the account; `rate_limited` (429, with `Retry-After`: this terminal sent more than its rate)", body = ErrorBody)))]
    fn account_activity() {}

    #[utoipa::path(put, path = "/v1/webhook", tag = "terminal",
        security(("terminal_key" = [])),
        request_body = RegisterWebhook,
        responses(
            (status = 200, description = "Registered; the secret is shown only now. Outcomes are POSTed as `WebhookEvent` with `KeyBridge-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, \"<t>.<body>\")>` and `KeyBridge-Event-Id`.", body = WebhookRegistered),
            (status = "4XX", description = "`invalid_request`, `unauthorized`; `rate_limited` (429, with `Retry-After`: this terminal sent more than its rate)", body = ErrorBody)))]
    fn put_webhook() {}

    #[utoipa::path(get, path = "/v1/webhook", tag = "terminal",
        security(("terminal_key" = [])),
        responses(
            (status = 200, description = "The registration, without its secret.", body = WebhookView),
            (status = "4XX", description = "`unauthorized`, `not_found`; `rate_limited` (429, with `Retry-After`: this terminal sent more than its rate)", body = ErrorBody)))]
    fn get_webhook() {}

    #[utoipa::path(delete, path = "/v1/webhook", tag = "terminal",
        security(("terminal_key" = [])),
        responses(
            (status = 204, description = "Removed; queued events will not be sent."),
            (status = "4XX", description = "`unauthorized`, `not_found`; `rate_limited` (429, with `Retry-After`: this terminal sent more than its rate)", body = ErrorBody)))]
    fn delete_webhook() {}

    // ---- Relay ------------------------------------------------------------------------

    #[utoipa::path(get, path = "/v1/relay", tag = "relay",
        security(("device_credential" = [])),
        responses(
            (status = 101, description = "WebSocket. The server sends `RelayMessage` JSON text frames; pings every 15 s. The relay may send its device's answers as `RelayAnswer` frames (at most 4096 bytes): each is judged as `POST /v1/confirmations/{id}` would judge it and answered with a `confirmation_result` frame carrying that endpoint's status and body."),
            (status = "4XX", description = "`invalid_request` (not an upgrade), `unauthorized`", body = ErrorBody)))]
    fn relay_socket() {}

    #[utoipa::path(post, path = "/v1/confirmations/{id}", tag = "relay",
        security(("device_credential" = [])),
        params(("id" = String, Path, description = "Transaction id.")),
        request_body = Confirmation,
        responses(
            (status = 200, description = "The outcome, whatever it is. Posting again, from the same device, the very answer that ended the transaction (a signature, an OCRA response or a decline, byte for byte: a relay whose result was lost) answers the stored outcome again; nothing is applied twice.", body = TransactionView),
            (status = "4XX", description = "`invalid_request`, `unauthorized`, `not_found`, `not_pending` (any other answer to an ended transaction), `expired_token`", body = ErrorBody)))]
    fn confirm() {}

    // ---- Admin --------------------------------------------------------------------------

    #[utoipa::path(post, path = "/v1/admin/accounts", tag = "admin",
        security(("admin_token" = [])),
        request_body = CreateAccount,
        responses(
            (status = 201, body = AccountView),
            (status = "4XX", description = "`invalid_request`, `unauthorized`, `already_exists`", body = ErrorBody)))]
    fn create_account() {}

    #[utoipa::path(get, path = "/v1/admin/accounts", tag = "admin",
        security(("admin_token" = [])),
        responses(
            (status = 200, body = Vec<AccountView>),
            (status = "4XX", description = "`unauthorized`", body = ErrorBody)))]
    fn list_accounts() {}

    #[utoipa::path(get, path = "/v1/admin/accounts/{id}", tag = "admin",
        security(("admin_token" = [])),
        params(("id" = String, Path, description = "Account id.")),
        responses(
            (status = 200, body = AccountView),
            (status = "4XX", description = "`unauthorized`, `not_found`", body = ErrorBody)))]
    fn get_account() {}

    #[utoipa::path(post, path = "/v1/admin/terminals", tag = "admin",
        security(("admin_token" = [])),
        request_body = CreateTerminal,
        responses(
            (status = 201, description = "The API key is shown only now.", body = TerminalCreated),
            (status = "4XX", description = "`invalid_request`, `unauthorized`", body = ErrorBody)))]
    fn create_terminal() {}

    #[utoipa::path(post, path = "/v1/admin/devices", tag = "admin",
        security(("admin_token" = [])),
        request_body = EnrollDevice,
        responses(
            (status = 201, description = "Certificate issued; the credential is shown only now.", body = DeviceEnrolled),
            (status = "4XX", description = "`invalid_request`, `unauthorized`, `unknown_account`", body = ErrorBody)))]
    fn enroll_device() {}

    #[utoipa::path(get, path = "/v1/admin/devices", tag = "admin",
        security(("admin_token" = [])),
        responses(
            (status = 200, body = Vec<DeviceView>),
            (status = "4XX", description = "`unauthorized`", body = ErrorBody)))]
    fn list_devices() {}

    #[utoipa::path(post, path = "/v1/admin/devices/{id}/disable", tag = "admin",
        security(("admin_token" = [])),
        params(("id" = String, Path, description = "Device id.")),
        responses(
            (status = 200, description = "Disabled with immediate effect.", body = DeviceView),
            (status = "4XX", description = "`unauthorized`, `not_found`", body = ErrorBody)))]
    fn disable_device() {}

    #[utoipa::path(get, path = "/v1/admin/transactions", tag = "admin",
        security(("admin_token" = [])),
        params(
            ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1 to 500, default 50."),
            ("before" = Option<String>, Query, description = "The last transaction id of the page before (32 hex digits): this page holds the ones made before it. Absent: the newest.")),
        responses(
            (status = 200, description = "Newest first, a page at a time: every transaction, once, by following `before` until a page comes back shorter than `limit`.", body = Vec<TransactionView>),
            (status = "4XX", description = "`invalid_request`, `unauthorized`, `not_found` (no transaction `before`)", body = ErrorBody)))]
    fn list_transactions() {}

    #[utoipa::path(get, path = "/v1/admin/transactions/{id}", tag = "admin",
        security(("admin_token" = [])),
        params(("id" = String, Path, description = "The transaction id (32 hex digits).")),
        responses(
            (status = 200, description = "The transaction, the terminal that made it, the transfers it made (its payment transfer once settled) and its audit rows in `seq` order.", body = TransactionDetail),
            (status = "4XX", description = "`unauthorized`, `not_found`", body = ErrorBody)))]
    fn get_admin_transaction() {}

    #[utoipa::path(get, path = "/v1/admin/ca.pem", tag = "admin",
        security(("admin_token" = [])),
        responses(
            (status = 200, description = "The device CA's certificate.", body = String, content_type = "application/x-pem-file"),
            (status = "4XX", description = "`unauthorized`", body = ErrorBody)))]
    fn ca_pem() {}

    #[utoipa::path(get, path = "/v1/admin/webhook-deliveries", tag = "admin",
        security(("admin_token" = [])),
        params(("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1 to 500, default 50.")),
        responses(
            (status = 200, description = "Webhook events and their delivery state, newest first.", body = Vec<WebhookDeliveryView>),
            (status = "4XX", description = "`invalid_request`, `unauthorized`", body = ErrorBody)))]
    fn list_webhook_deliveries() {}

    #[utoipa::path(get, path = "/v1/admin/audit", tag = "admin",
        security(("admin_token" = [])),
        params(
            ("after" = Option<u64>, Query, maximum = 9223372036854775807_i64, description = "Rows with a greater `seq` (the last `seq` of the page before); default 0, from the first."),
            ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1 to 500, default 50.")),
        responses(
            (status = 200, description = "The audit log in `seq` order: every state change, each row a link of one hash chain. From the first row it holds every row committed before the request.", body = Vec<AuditEntryView>),
            (status = "4XX", description = "`invalid_request`, `unauthorized`", body = ErrorBody)))]
    fn audit() {}

    #[utoipa::path(get, path = "/v1/admin/audit/verify", tag = "admin",
        security(("admin_token" = [])),
        responses(
            (status = 200, description = "The hash chain recomputed from its first row; a broken chain is `intact: false` with the first row that does not link up.", body = AuditVerification),
            (status = "4XX", description = "`unauthorized`", body = ErrorBody)))]
    fn verify_audit() {}

    #[utoipa::path(get, path = "/v1/admin/books/verify", tag = "admin",
        security(("admin_token" = [])),
        responses(
            (status = 200, description = "The ledger read back in one snapshot: each balance is the sum of its transfers, each currency sums to zero, every settled transaction has its payment transfer and every payment transfer its settled transaction. Unbalanced books are `balanced: false` with each rule broken and how many rows break it.", body = BooksVerification),
            (status = "4XX", description = "`unauthorized`", body = ErrorBody)))]
    fn verify_books() {}

    #[utoipa::path(get, path = "/v1/admin/terminals", tag = "admin",
        security(("admin_token" = [])),
        responses(
            (status = 200, description = "Every terminal, disabled ones included, by id.", body = Vec<TerminalView>),
            (status = "4XX", description = "`unauthorized`", body = ErrorBody)))]
    fn list_terminals() {}

    #[utoipa::path(post, path = "/v1/admin/terminals/{id}/disable", tag = "admin",
        security(("admin_token" = [])),
        params(("id" = String, Path, description = "Terminal id.")),
        responses(
            (status = 200, description = "Disabled (again, it changes nothing): its API key is refused at once on this instance, on the others as soon as they hear of it, on every one within 30 s. Transactions it created go on to their end.", body = TerminalView),
            (status = "4XX", description = "`unauthorized`, `not_found`", body = ErrorBody)))]
    fn disable_terminal() {}

    #[utoipa::path(post, path = "/v1/admin/terminals/{id}/rotate-key", tag = "admin",
        security(("admin_token" = [])),
        params(("id" = String, Path, description = "Terminal id.")),
        responses(
            (status = 200, description = "A new API key, shown only now. The old one is refused at once on this instance, on the others as soon as they hear of it, on every one within 30 s. The terminal keeps its id, transactions and webhooks.", body = TerminalCreated),
            (status = "4XX", description = "`unauthorized`, `not_found`, `terminal_disabled` (a disabled terminal gets no new key)", body = ErrorBody)))]
    fn rotate_terminal_key() {}

    #[utoipa::path(post, path = "/v1/admin/devices/csr", tag = "admin",
        security(("admin_token" = [])),
        request_body = EnrollCsr,
        responses(
            (status = 201, description = "The CSR's signature proved possession; certificate issued by the built-in CA; the credential is shown only now.", body = DeviceEnrolled),
            (status = "4XX", description = "`invalid_request` (bad CSR or signature, or an external CA is configured), `unauthorized`, `unknown_account`", body = ErrorBody)))]
    fn enroll_csr() {}

    #[utoipa::path(post, path = "/v1/admin/devices/certificate", tag = "admin",
        security(("admin_token" = [])),
        request_body = ImportCertificate,
        responses(
            (status = 201, description = "The externally issued certificate passed path validation; the credential is shown only now.", body = DeviceEnrolled),
            (status = "4XX", description = "`invalid_request` (path validation failed), `unauthorized`, `unknown_account`", body = ErrorBody)))]
    fn import_certificate() {}

    #[utoipa::path(post, path = "/v1/admin/devices/ocra", tag = "admin",
        security(("admin_token" = [])),
        request_body = ProvisionOcra,
        responses(
            (status = 201, description = "OCRA device provisioned; its secret is sealed under the master key and never returned.", body = DeviceEnrolled),
            (status = "4XX", description = "`invalid_request`, `unauthorized`, `unknown_account`", body = ErrorBody)))]
    fn provision_ocra() {}

    #[utoipa::path(get, path = "/v1/admin/devices/{id}", tag = "admin",
        security(("admin_token" = [])),
        params(("id" = String, Path, description = "Device id.")),
        responses(
            (status = 200, body = DeviceView),
            (status = "4XX", description = "`unauthorized`, `not_found`", body = ErrorBody)))]
    fn get_device() {}

    #[utoipa::path(post, path = "/v1/admin/devices/{id}/rename", tag = "admin",
        security(("admin_token" = [])),
        params(("id" = String, Path, description = "Device id.")),
        request_body = RenameDevice,
        responses(
            (status = 200, body = DeviceView),
            (status = "4XX", description = "`invalid_request`, `unauthorized`, `not_found`", body = ErrorBody)))]
    fn rename_device() {}

    #[utoipa::path(post, path = "/v1/admin/devices/{id}/revoke", tag = "admin",
        security(("admin_token" = [])),
        params(("id" = String, Path, description = "Device id.")),
        responses(
            (status = 200, description = "Revoked with immediate effect: listed in the CRL, refused for every confirmation not yet accepted.", body = DeviceView),
            (status = "4XX", description = "`unauthorized`, `not_found`", body = ErrorBody)))]
    fn revoke_device() {}

    #[utoipa::path(get, path = "/v1/crl", tag = "operations",
        responses(
            (status = 200, description = "The built-in CA's CRL, DER, signed, with nextUpdate.", body = Vec<u8>, content_type = "application/pkix-crl"),
            (status = "5XX", description = "`internal_error`", body = ErrorBody)))]
    fn crl() {}
}
