//! A typed HTTP client for the KeyBridge API.

use std::time::Duration;

use keybridge_proto::api::{
    AccountView, AuditEntryView, AuditVerification, BooksVerification, Confirmation, CreateAccount,
    CreateTerminal, CreateTransaction, DeviceEnrolled, DeviceView, EnrollCsr, EnrollDevice,
    ErrorBody, ImportCertificate, ProvisionOcra, RenameDevice, TerminalCreated, TerminalView,
    TransactionDetail, TransactionView,
};
use keybridge_proto::{AccountId, TransactionId};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// The answer's `Retry-After` in seconds (a 429 or a 503): the
        /// least to wait before sending again.
        retry_after: Option<Duration>,
    },
    #[error("cannot reach the server: {0}")]
    Http(#[from] reqwest::Error),
}

impl ClientError {
    /// Whether the same request may succeed if sent again: the server was
    /// not reached (or the connection broke), or it failed or was too busy
    /// to judge it (HTTP 5xx, 429). Any other answer is the server's
    /// judgement, final. Sending again is safe for what KeyBridge clients
    /// send: a transaction's creation carries its idempotency key, and an
    /// answer the server already applied gets its stored outcome.
    pub fn is_transient(&self) -> bool {
        match self {
            // A request that could not be built (a bad URL) or a server whose
            // TLS we refuse (an unknown CA, a wrong name, no common protocol)
            // fails the same way every time: sending it again for minutes
            // would only hide the problem from whoever must fix it.
            ClientError::Http(e) => !(e.is_builder() || e.is_redirect() || is_tls_failure(e)),
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
        }
    }

    /// How long the server asked to be left alone (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            ClientError::Http(_) => None,
        }
    }

    /// Whether the TLS handshake was refused (the server's certificate is
    /// not trusted or does not name it): not transient, but a server whose
    /// certificate is put right would answer.
    pub fn is_tls_refused(&self) -> bool {
        matches!(self, ClientError::Http(e) if is_tls_failure(e))
    }
}

/// `Retry-After` as a number of seconds. The HTTP-date form is not read:
/// KeyBridge servers send seconds, and a wrong guess at a clock skew would
/// be worse than the caller's own backoff.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// Whether rustls refused the connection: somewhere in the error's chain is
/// a `rustls::Error`. The connectors wrap it in `io::Error`s (two deep with
/// hyper-rustls), and an `io::Error`'s `source()` skips what it wraps, so
/// each one is opened with `get_ref` as well.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let mut inner = Some(err);
        while let Some(wrapped) = inner {
            if wrapped.is::<rustls::Error>() {
                return true;
            }
            inner = wrapped
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|w| w as &(dyn std::error::Error + 'static));
        }
        next = err.source();
    }
    false
}

/// The longest a request may take, unless it says otherwise (the long
/// polls wait longer on purpose; the audit chain check reads the whole log):
/// a server that accepts the connection and never answers must not hang a
/// till, an operator or a phone. A timed-out request is transient.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A kept-alive connection unused this long is dropped. Shorter than the
/// server's default read timeout (30 s), after which the server closes an
/// idle connection: the client lets go first, so a request is not sent on a
/// socket the server is closing at that moment (it would fail half-sent).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// For the checks that read every audit row or every transfer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(600);

/// One server, one credential.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    bearer: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base_url: &str, bearer: &str) -> Result<Client, ClientError> {
        Client::with_ca_pem(base_url, bearer, None)
    }

    /// Like [`Client::new`], also trusting the CA (or self-signed server)
    /// certificates in `ca_pem` for `https` URLs, e.g. `keybridge server
    /// --tls-self-signed`'s `tls-cert.pem`.
    pub fn with_ca_pem(
        base_url: &str,
        bearer: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT);
        if let Some(pem) = ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build()?;
        Ok(Client {
            base: base_url.trim_end_matches('/').to_owned(),
            bearer: bearer.to_owned(),
            http,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = request.bearer_auth(&self.bearer).send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
        }
        let retry_after = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let body: ErrorBody = serde_json::from_str(&text).unwrap_or(ErrorBody {
            error: "http_error".into(),
            message: text.chars().take(200).collect(),
        });
        Err(ClientError::Api {
            status: status.as_u16(),
            code: body.error,
            message: body.message,
            retry_after,
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    // Terminal.

    pub async fn create_transaction(
        &self,
        idempotency_key: &str,
        body: &CreateTransaction,
    ) -> Result<TransactionView, ClientError> {
        self.create_transaction_within(idempotency_key, body, REQUEST_TIMEOUT)
            .await
    }

    /// [`Client::create_transaction`] that gives up after `limit` (a till
    /// with a deadline of its own).
    pub async fn create_transaction_within(
        &self,
        idempotency_key: &str,
        body: &CreateTransaction,
        limit: Duration,
    ) -> Result<TransactionView, ClientError> {
        let request = self
            .http
            .post(format!("{}/v1/transactions", self.base))
            .header("Idempotency-Key", idempotency_key)
            .timeout(limit)
            .json(body);
        self.send(request).await
    }

    /// Creates and waits in the same request (`Prefer: wait`, RFC 7240): the
    /// answer comes when the transaction ends, or after `wait_s` with it
    /// still pending.
    pub async fn create_transaction_waiting(
        &self,
        idempotency_key: &str,
        body: &CreateTransaction,
        wait_s: u32,
    ) -> Result<TransactionView, ClientError> {
        let request = self
            .http
            .post(format!("{}/v1/transactions", self.base))
            .header("Idempotency-Key", idempotency_key)
            .header("Prefer", format!("wait={wait_s}"))
            .timeout(Duration::from_secs(u64::from(wait_s) + 15))
            .json(body);
        self.send(request).await
    }

    /// Long-polls: the server answers as soon as the transaction is final, or
    /// after `wait_s` with it still pending.
    pub async fn get_transaction(
        &self,
        id: &TransactionId,
        wait_s: u32,
    ) -> Result<TransactionView, ClientError> {
        let request = self
            .http
            .get(format!("{}/v1/transactions/{id}?wait={wait_s}", self.base))
            .timeout(Duration::from_secs(u64::from(wait_s) + 15));
        self.send(request).await
    }

    // Relay.

    /// Posts the device's answer for a transaction (bearer: device credential).
    pub async fn submit_confirmation(
        &self,
        id: &TransactionId,
        confirmation: &Confirmation,
    ) -> Result<TransactionView, ClientError> {
        self.post(&format!("/v1/confirmations/{id}"), confirmation)
            .await
    }

    // Admin.

    pub async fn create_account(&self, body: &CreateAccount) -> Result<AccountView, ClientError> {
        self.post("/v1/admin/accounts", body).await
    }

    pub async fn accounts(&self) -> Result<Vec<AccountView>, ClientError> {
        self.get("/v1/admin/accounts").await
    }

    pub async fn account(&self, id: &AccountId) -> Result<AccountView, ClientError> {
        self.get(&format!("/v1/admin/accounts/{id}")).await
    }

    pub async fn create_terminal(&self, name: &str) -> Result<TerminalCreated, ClientError> {
        let body = CreateTerminal {
            name: name.to_owned(),
        };
        self.post("/v1/admin/terminals", &body).await
    }

    pub async fn enroll_device(&self, body: &EnrollDevice) -> Result<DeviceEnrolled, ClientError> {
        self.post("/v1/admin/devices", body).await
    }

    pub async fn enroll_csr(&self, body: &EnrollCsr) -> Result<DeviceEnrolled, ClientError> {
        self.post("/v1/admin/devices/csr", body).await
    }

    pub async fn import_certificate(
        &self,
        body: &ImportCertificate,
    ) -> Result<DeviceEnrolled, ClientError> {
        self.post("/v1/admin/devices/certificate", body).await
    }

    /// The body carries the OCRA secret: sent once, over the admin channel.
    pub async fn provision_ocra(
        &self,
        body: &ProvisionOcra,
    ) -> Result<DeviceEnrolled, ClientError> {
        self.post("/v1/admin/devices/ocra", body).await
    }

    pub async fn rename_device(&self, id: &str, label: &str) -> Result<DeviceView, ClientError> {
        let body = RenameDevice {
            label: label.to_owned(),
        };
        self.post(&format!("/v1/admin/devices/{id}/rename"), &body)
            .await
    }

    pub async fn disable_device(&self, id: &str) -> Result<DeviceView, ClientError> {
        self.post(
            &format!("/v1/admin/devices/{id}/disable"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn revoke_device(&self, id: &str) -> Result<DeviceView, ClientError> {
        self.post(
            &format!("/v1/admin/devices/{id}/revoke"),
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /v1/crl`: the built-in CA's CRL, DER.
    pub async fn crl(&self) -> Result<Vec<u8>, ClientError> {
        let response = self
            .http
            .get(format!("{}/v1/crl", self.base))
            .send()
            .await?
            .error_for_status()?;
        Ok(response.bytes().await?.to_vec())
    }

    pub async fn devices(&self) -> Result<Vec<DeviceView>, ClientError> {
        self.get("/v1/admin/devices").await
    }

    pub async fn transactions(&self, limit: u32) -> Result<Vec<TransactionView>, ClientError> {
        self.get(&format!("/v1/admin/transactions?limit={limit}"))
            .await
    }

    /// One transaction as the admin API shows it: its terminal and transfers.
    pub async fn transaction_detail(
        &self,
        id: &TransactionId,
    ) -> Result<TransactionDetail, ClientError> {
        self.get(&format!("/v1/admin/transactions/{id}")).await
    }

    /// The page of [`Client::transactions`] after the one that ended with
    /// `before`: up to `limit` older ones, newest first.
    pub async fn transactions_before(
        &self,
        before: &TransactionId,
        limit: u32,
    ) -> Result<Vec<TransactionView>, ClientError> {
        self.get(&format!(
            "/v1/admin/transactions?limit={limit}&before={before}"
        ))
        .await
    }

    pub async fn terminals(&self) -> Result<Vec<TerminalView>, ClientError> {
        self.get("/v1/admin/terminals").await
    }

    /// Revokes the terminal's API key.
    pub async fn disable_terminal(&self, id: &str) -> Result<TerminalView, ClientError> {
        self.post(
            &format!("/v1/admin/terminals/{id}/disable"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Replaces the terminal's API key: the new one, shown once, is in the
    /// answer; the old one is refused from now on.
    pub async fn rotate_terminal_key(&self, id: &str) -> Result<TerminalCreated, ClientError> {
        self.post(
            &format!("/v1/admin/terminals/{id}/rotate-key"),
            &serde_json::json!({}),
        )
        .await
    }

    /// At most `limit` audit rows with `seq > after`, in `seq` order.
    pub async fn audit(&self, after: u64, limit: u32) -> Result<Vec<AuditEntryView>, ClientError> {
        self.get(&format!("/v1/admin/audit?after={after}&limit={limit}"))
            .await
    }

    /// The server's check of the audit log's hash chain.
    pub async fn verify_audit(&self) -> Result<AuditVerification, ClientError> {
        let url = format!("{}/v1/admin/audit/verify", self.base);
        self.send(self.http.get(url).timeout(CHECK_TIMEOUT)).await
    }

    /// The server's check of the books (double entry, read back).
    pub async fn verify_books(&self) -> Result<BooksVerification, ClientError> {
        let url = format!("{}/v1/admin/books/verify", self.base);
        self.send(self.http.get(url).timeout(CHECK_TIMEOUT)).await
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    use super::*;

    fn with(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_anything_else_is_ignored() {
        assert_eq!(retry_after(&with("1")), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(&with(" 30 ")), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
        assert_eq!(retry_after(&with("Fri, 27 Nov 2026 03:00:00 GMT")), None);
        assert_eq!(retry_after(&with("-1")), None);
        assert_eq!(retry_after(&with("1.5")), None);
    }
}
