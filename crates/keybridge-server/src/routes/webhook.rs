//! Webhook registration (terminal) and delivery state (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keybridge_proto::api::{RegisterWebhook, WebhookDeliveryView, WebhookRegistered, WebhookView};
use serde::Deserialize;

use super::extract::{Admin, ApiJson, ApiQuery, Terminal};
use crate::error::ApiError;
use crate::random;
use crate::state::AppState;
use crate::store::WebhookRecord;
use crate::webhook;

/// `PUT /v1/webhook`: sets this terminal's callback URL and returns a new
/// signing secret (once). Re-registering rotates the secret.
pub async fn put(
    State(state): State<AppState>,
    Terminal(terminal): Terminal,
    ApiJson(body): ApiJson<RegisterWebhook>,
) -> Result<Json<WebhookRegistered>, ApiError> {
    webhook::check_url(&body.url).map_err(ApiError::invalid)?;
    let secret = random::secret_token("whsec_").map_err(|e| {
        tracing::error!(error = %e, "CSPRNG failed");
        ApiError::Internal
    })?;
    let stored = state
        .store
        .put_webhook(WebhookRecord {
            terminal_id: terminal.id.clone(),
            url: body.url,
            secret,
            created_at_unix_s: state.now_unix_s(),
        })
        .await?;
    tracing::info!(terminal = %terminal.id, url = %stored.url, "webhook registered");
    Ok(Json(WebhookRegistered {
        url: stored.url,
        secret: stored.secret,
    }))
}

/// `GET /v1/webhook`: the registration, without the secret.
pub async fn get(
    State(state): State<AppState>,
    Terminal(terminal): Terminal,
) -> Result<Json<WebhookView>, ApiError> {
    let hook = state
        .store
        .get_webhook(&terminal.id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(WebhookView {
        url: hook.url,
        created_at_unix_s: hook.created_at_unix_s,
    }))
}

/// `DELETE /v1/webhook`: stop sending; queued events then fail.
pub async fn delete(
    State(state): State<AppState>,
    Terminal(terminal): Terminal,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_webhook(&terminal.id).await? {
        tracing::info!(terminal = %terminal.id, "webhook removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<u32>,
}

/// `GET /v1/admin/webhook-deliveries?limit=N`: newest first.
pub async fn list_deliveries(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<WebhookDeliveryView>>, ApiError> {
    let limit = super::admin::list_limit(query.limit)?;
    let deliveries = state.store.list_deliveries(limit).await?;
    Ok(Json(
        deliveries.iter().map(webhook::delivery_view).collect(),
    ))
}
