//! Scheduled import of an external CA's CRLs: every `crl_refresh_s`, each
//! configured source (a file path or an `http://` URL) is read, its
//! signature checked against a configured CA whose subject is the CRL's
//! issuer ([`crate::pki::verify_crl`]), and its serials replace that
//! issuer's entry in the verifier's [`crate::pki::RevocationSet`]. A source
//! that fails keeps the last good list (and is logged): a CRL server being
//! down must not un-revoke anything.

use std::time::Duration;

use crate::hub::shutdown_begun;
use crate::state::AppState;

/// Largest CRL read from a source.
pub const CRL_LEN_MAX: usize = 4 * 1024 * 1024;
const FETCH_TIMEOUT_S: u64 = 10;

pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(state.crl_refresh_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = shutdown_begun(state.hub.shutdown_signal());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                import_all(&state).await;
            }
        }
    }
}

/// Reads and applies every source once; returns how many were applied.
pub async fn import_all(state: &AppState) -> usize {
    let mut applied = 0;
    for source in &state.crl_sources {
        match fetch(source).await.and_then(|bytes| apply(state, &bytes)) {
            Ok(count) => {
                applied += 1;
                tracing::info!(source, revoked = count, "imported CRL");
            }
            Err(e) => {
                tracing::warn!(source, error = %e, "CRL import failed; keeping the last good list")
            }
        }
    }
    applied
}

async fn fetch(source: &str) -> Result<Vec<u8>, String> {
    let bytes = if source.starts_with("http://") || source.starts_with("https://") {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(FETCH_TIMEOUT_S))
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .get(source)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?;
        if response
            .content_length()
            .is_some_and(|n| n > CRL_LEN_MAX as u64)
        {
            return Err("CRL too large".into());
        }
        response.bytes().await.map_err(|e| e.to_string())?.to_vec()
    } else {
        tokio::fs::read(source).await.map_err(|e| e.to_string())?
    };
    if bytes.len() > CRL_LEN_MAX {
        return Err("CRL too large".into());
    }
    Ok(bytes)
}

fn apply(state: &AppState, bytes: &[u8]) -> Result<usize, String> {
    let der = pem_or_der_crl(bytes)?;
    let crate::pki::VerifiedCrl {
        issuer,
        serials,
        next_update_unix_s: next_update,
    } = crate::pki::verify_crl(&state.verifier.trust, &der).map_err(|e| e.to_string())?;
    let now = i64::try_from(state.now_unix_s()).unwrap_or(i64::MAX);
    if next_update.is_some_and(|n| n < now) {
        // Still applied: an old list of revocations is better than none.
        tracing::warn!("imported CRL is past its nextUpdate");
    }
    let count = serials.len();
    state.verifier.revoked.replace(issuer, serials);
    Ok(count)
}

fn pem_or_der_crl(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "neither DER nor PEM".to_owned())?;
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN X509 CRL-----")
        .skip(1)
        .take_while(|l| *l != "-----END X509 CRL-----")
        .collect();
    keybridge_proto::api::b64::decode(&body).ok_or_else(|| "PEM CRL body is not base64".to_owned())
}
