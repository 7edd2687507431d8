//! The admin API for client webhooks, their deliveries and the DLQ: thin
//! handlers over the forwarding room's rules ([`crate::forwarding::webhooks`]).
//! Secrets are shown only when created or rotated (as the 64-hex legacy
//! secret and its Standard Webhooks `whsec_` form).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{Admin, ApiJson, ApiQuery, OptionalJson};
use super::params;
use crate::error::ApiError;
use crate::forwarding::signing::whsec;
use crate::forwarding::webhooks::{NewWebhook, WebhookChanges};
use crate::forwarding::{DeadJob, DeliveryLog, WebhookConfig};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, update, remove))
        .routes(routes!(rotate))
        .routes(routes!(test))
        .routes(routes!(deliveries))
        .routes(routes!(dlq))
        .routes(routes!(replay))
}

/// A webhook as the API shows it: no secret, but whether one is set.
#[derive(Debug, Serialize, ToSchema)]
struct WebhookOut {
    #[serde(flatten)]
    config: WebhookConfig,
    auth_enabled: bool,
    /// Only when created or rotated: the Standard Webhooks `whsec_` form
    /// (`shared_secret` then holds the 64-hex legacy form).
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_secret: Option<String>,
}

fn out(mut config: WebhookConfig, reveal: bool) -> WebhookOut {
    let auth_enabled = !config.shared_secret.is_empty();
    let signing_secret = (reveal && auth_enabled).then(|| whsec(&config.shared_secret));
    // A rotated-out secret is never shown again.
    config.previous_secret = None;
    if !reveal {
        config.shared_secret = String::new();
    }
    WebhookOut {
        config,
        auth_enabled,
        signing_secret,
    }
}

/// Registers a client webhook; its signing secret is shown this once.
#[utoipa::path(post, path = "/webhooks", tag = "webhooks", request_body = NewWebhook,
    security(("admin" = [])),
    responses((status = 201, body = WebhookOut), (status = 422, description = "Invalid field; the message names it", body = crate::http::openapi::ErrorBody), (status = 400, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn create(
    _: Admin, State(state): State<AppState>, ApiJson(input): ApiJson<NewWebhook>,
) -> Result<impl IntoResponse, ApiError> {
    let config = state.forwarding.create_webhook(input).await?;
    Ok((StatusCode::CREATED, Json(out(config, true))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    project_owner_id: Option<String>,
}

/// Client webhooks, all or one owner's (secrets never shown).
#[utoipa::path(get, path = "/webhooks", tag = "webhooks", params(ListParams),
    security(("admin" = [])),
    responses((status = 200, body = Vec<WebhookOut>), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn list(
    _: Admin, State(state): State<AppState>, ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Vec<WebhookOut>>, ApiError> {
    let all = state
        .forwarding
        .webhooks()
        .list_webhooks(p.project_owner_id.as_deref())
        .await?;
    Ok(Json(all.into_iter().map(|w| out(w, false)).collect()))
}

/// One client webhook.
#[utoipa::path(get, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    security(("admin" = [])),
    responses((status = 200, body = WebhookOut), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn show(
    _: Admin, State(state): State<AppState>, Path(id): Path<String>,
) -> Result<Json<WebhookOut>, ApiError> {
    Ok(Json(out(state.forwarding.webhook(&id).await?, false)))
}

/// Changes the given fields; the others stay as they are.
#[utoipa::path(patch, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "webhook id")), request_body = WebhookChanges,
    security(("admin" = [])),
    responses((status = 200, body = WebhookOut), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 422, description = "Invalid field; the message names it", body = crate::http::openapi::ErrorBody), (status = 400, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "The webhook changed concurrently on every attempt (5); nothing was written: retry", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn update(
    _: Admin, State(state): State<AppState>, Path(id): Path<String>,
    ApiJson(input): ApiJson<WebhookChanges>,
) -> Result<Json<WebhookOut>, ApiError> {
    let (w, reveal) = state.forwarding.update_webhook(&id, input).await?;
    Ok(Json(out(w, reveal)))
}

/// Deletes a client webhook.
#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    security(("admin" = [])),
    responses((status = 200, description = "`{\"message\":\"webhook deleted successfully\"}`", body = Object), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn remove(
    _: Admin, State(state): State<AppState>, Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.forwarding.webhooks().delete_webhook(&id).await? {
        return Err(ApiError::NotFound("webhook"));
    }
    Ok(Json(json!({"message": "webhook deleted successfully"})))
}

/// How long the old secret keeps signing after a rotation.
#[derive(Debug, Deserialize, ToSchema)]
struct RotateIn {
    /// 0 to 604800 (7 days); default 86400. Until it ends, every delivery's
    /// `webhook-signature` carries a signature by the new secret and one by
    /// the old; 0 retires the old secret at once.
    #[schema(minimum = 0, maximum = 604800)]
    #[serde(default, deserialize_with = "crate::forwarding::webhooks::whole_u64")]
    grace_period_seconds: Option<u64>,
}

/// A new signing secret, shown this once. The old one signs beside it for
/// the grace period (default 24 h), then is forgotten.
#[utoipa::path(post, path = "/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    request_body(content = Option<RotateIn>),
    security(("admin" = [])),
    responses((status = 200, body = WebhookOut), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "grace_period_seconds out of range", body = crate::http::openapi::ErrorBody), (status = 400, description = "Not JSON", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "The webhook changed concurrently on every attempt (5); nothing was written: retry", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn rotate(
    _: Admin, State(state): State<AppState>, Path(id): Path<String>,
    OptionalJson(body): OptionalJson<RotateIn>,
) -> Result<Json<WebhookOut>, ApiError> {
    let grace = match body.and_then(|b| b.grace_period_seconds) {
        Some(s) => std::time::Duration::from_secs(s),
        None => crate::forwarding::webhooks::DEFAULT_GRACE,
    };
    Ok(Json(out(
        state.forwarding.rotate_secret(&id, grace).await?,
        true,
    )))
}

/// Sends a `test.webhook` event now and reports what the endpoint said
/// (legacy shape: always 200, `success` tells).
#[utoipa::path(post, path = "/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    security(("admin" = [])),
    responses((status = 200, description = "What the endpoint answered: `success`, `status_code`, `response_body`, `error`, `duration_ms`", body = Object), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn test(
    _: Admin, State(state): State<AppState>, Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let o = state.forwarding.send_test(&id).await?;
    Ok(Json(json!({
        "success": o.success,
        "message": if o.success { "test webhook delivered" } else { "test webhook failed" },
        "status_code": o.status_code,
        "response_body": o.response_body,
        "error": o.error,
        "duration_ms": o.duration_ms,
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitParams {
    /// 1 to 500, default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

/// The delivery log of one webhook, newest first: one entry per event,
/// updated on every attempt.
#[utoipa::path(get, path = "/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path, description = "webhook id"), LimitParams),
    security(("admin" = [])),
    responses((status = 200, body = Vec<DeliveryLog>), (status = 400, description = "Invalid input; the message names the field", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn deliveries(
    _: Admin, State(state): State<AppState>, Path(id): Path<String>,
    ApiQuery(p): ApiQuery<LimitParams>,
) -> Result<Json<Vec<DeliveryLog>>, ApiError> {
    let limit = params::page_limit(p.limit)?;
    state.forwarding.webhook(&id).await?;
    Ok(Json(
        state
            .forwarding
            .webhooks()
            .list_deliveries(&id, limit)
            .await?,
    ))
}

/// Dead-lettered deliveries, newest first.
#[utoipa::path(get, path = "/dlq", tag = "webhooks", params(LimitParams),
    security(("admin" = [])),
    responses((status = 200, body = Vec<DeadJob>), (status = 400, description = "Invalid input; the message names the field", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The forwarding queue is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn dlq(
    _: Admin, State(state): State<AppState>, ApiQuery(p): ApiQuery<LimitParams>,
) -> Result<Json<Vec<DeadJob>>, ApiError> {
    let limit = params::page_limit(p.limit)?;
    Ok(Json(state.forwarding.queue().list_dead(limit).await?))
}

/// Puts dead-lettered deliveries back on the forwarding queue with fresh
/// attempts: all of them without a body, else those matching every part
/// given (`ids`, `webhook_id`, died `since` / `until`). An empty body or
/// `null` is all of them.
#[utoipa::path(post, path = "/dlq/replay", tag = "webhooks", request_body(content = Option<crate::forwarding::ReplayFilter>),
    security(("admin" = [])),
    responses((status = 200, description = "`{\"replayed\":N}`", body = Object), (status = 400, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 422, description = "Invalid field; the message names it", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The forwarding queue is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn replay(
    _: Admin, State(state): State<AppState>,
    OptionalJson(filter): OptionalJson<crate::forwarding::ReplayFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = filter.unwrap_or_default();
    let n = state.forwarding.queue().replay_dead(&filter).await?;
    Ok(Json(json!({"replayed": n})))
}
