//! The admin API for client webhooks, their deliveries and the DLQ.
//! Secrets are shown only when created or rotated (as the 64-hex legacy
//! secret and its Standard Webhooks `whsec_` form).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{Admin, ApiJson, ApiQuery};
use crate::error::ApiError;
use crate::forwarding::signing::{new_secret, whsec};
use crate::forwarding::{DeadJob, DeliveryLog, ForwardJob, WebhookConfig};

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
    if !reveal {
        config.shared_secret = String::new();
    }
    WebhookOut {
        config,
        auth_enabled,
        signing_secret,
    }
}

fn validate_url(url: &str) -> Result<(), ApiError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(ApiError::Unprocessable(
            "webhook_url: must be an http(s) URL with a host".into(),
        )),
        Err(e) => Err(ApiError::Unprocessable(format!("webhook_url: {e}"))),
    }
}

fn validate_topics(topics: &[String]) -> Result<(), ApiError> {
    if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
        return Err(ApiError::Unprocessable(
            "topics: must be a non-empty list of event types (or \"*\")".into(),
        ));
    }
    Ok(())
}

/// A new webhook, from the API's JSON or the console's form.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(super) struct CreateIn {
    pub project_owner_id: String,
    pub webhook_url: String,
    #[serde(default)]
    pub project_id: String,
    pub topics: Option<Vec<String>>,
    /// Sign deliveries (default true).
    pub enable_auth: Option<bool>,
    pub business_numbers: Option<Vec<String>>,
    pub headers: Option<BTreeMap<String, String>>,
    pub active: Option<bool>,
    /// This webhook's time for one attempt, 100 to 120000 ms (default
    /// `FORWARD_TIMEOUT_MS`).
    pub timeout_ms: Option<u64>,
    /// This webhook's most deliveries in flight, 1 to 1000 (default a share
    /// of `FORWARD_CONCURRENCY`).
    pub max_in_flight: Option<u32>,
}

/// A webhook's own limits, in range or refused naming the field.
fn validate_limits(timeout_ms: Option<u64>, max_in_flight: Option<u32>) -> Result<(), ApiError> {
    if timeout_ms.is_some_and(|t| !(100..=120_000).contains(&t)) {
        return Err(ApiError::Unprocessable(
            "timeout_ms: must be between 100 and 120000".into(),
        ));
    }
    if max_in_flight.is_some_and(|m| !(1..=1000).contains(&m)) {
        return Err(ApiError::Unprocessable(
            "max_in_flight: must be between 1 and 1000".into(),
        ));
    }
    Ok(())
}

/// Registers a client webhook; its signing secret is shown this once.
#[utoipa::path(post, path = "/webhooks", tag = "webhooks", request_body = CreateIn,
    security(("admin" = [])),
    responses((status = 201, body = WebhookOut), (status = 422, description = "Invalid field; the message names it", body = crate::http::openapi::ErrorBody), (status = 400, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn create(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<CreateIn>,
) -> Result<impl IntoResponse, ApiError> {
    let config = create_webhook(&state, input).await?;
    Ok((StatusCode::CREATED, Json(out(config, true))))
}

/// Checks and stores a new webhook with a fresh secret (unless signing is
/// off); the one rule for the API and the console.
pub(super) async fn create_webhook(
    state: &AppState,
    input: CreateIn,
) -> Result<WebhookConfig, ApiError> {
    if input.project_owner_id.trim().is_empty() {
        return Err(ApiError::Unprocessable("project_owner_id: required".into()));
    }
    validate_url(&input.webhook_url)?;
    validate_limits(input.timeout_ms, input.max_in_flight)?;
    // The legacy default subscription.
    let topics = input
        .topics
        .unwrap_or_else(|| vec!["datagen.delivery".into()]);
    validate_topics(&topics)?;
    let now = Utc::now().timestamp_millis();
    let config = WebhookConfig {
        id: bson::oid::ObjectId::new().to_hex(),
        project_owner_id: input.project_owner_id,
        project_id: input.project_id,
        webhook_url: input.webhook_url,
        shared_secret: if input.enable_auth.unwrap_or(true) {
            new_secret()
        } else {
            String::new()
        },
        topics,
        created_at: now,
        updated_at: now,
        active: input.active,
        business_numbers: input.business_numbers,
        headers: input.headers,
        timeout_ms: input.timeout_ms,
        max_in_flight: input.max_in_flight,
    };
    state.webhooks.create_webhook(&config).await?;
    Ok(config)
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
    _: Admin,
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Vec<WebhookOut>>, ApiError> {
    let all = state
        .webhooks
        .list_webhooks(p.project_owner_id.as_deref())
        .await?;
    Ok(Json(all.into_iter().map(|w| out(w, false)).collect()))
}

pub(super) async fn find(state: &AppState, id: &str) -> Result<WebhookConfig, ApiError> {
    state
        .webhooks
        .get_webhook(id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))
}

/// One client webhook.
#[utoipa::path(get, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    security(("admin" = [])),
    responses((status = 200, body = WebhookOut), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn show(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookOut>, ApiError> {
    Ok(Json(out(find(&state, &id).await?, false)))
}

/// Fields left out are left as they are (unlike the legacy API, an update
/// never silently turns signing off).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(super) struct UpdateIn {
    pub webhook_url: Option<String>,
    pub project_id: Option<String>,
    pub topics: Option<Vec<String>>,
    pub enable_auth: Option<bool>,
    pub business_numbers: Option<Vec<String>>,
    pub headers: Option<BTreeMap<String, String>>,
    pub active: Option<bool>,
    pub timeout_ms: Option<u64>,
    pub max_in_flight: Option<u32>,
}

/// Changes the given fields; the others stay as they are.
#[utoipa::path(patch, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "webhook id")), request_body = UpdateIn,
    security(("admin" = [])),
    responses((status = 200, body = WebhookOut), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 422, description = "Invalid field; the message names it", body = crate::http::openapi::ErrorBody), (status = 400, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn update(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<UpdateIn>,
) -> Result<Json<WebhookOut>, ApiError> {
    let (w, reveal) = update_webhook(&state, &id, input).await?;
    Ok(Json(out(w, reveal)))
}

/// Changes the given fields of a webhook; true when signing was turned on
/// (its new secret is to be shown once).
pub(super) async fn update_webhook(
    state: &AppState,
    id: &str,
    input: UpdateIn,
) -> Result<(WebhookConfig, bool), ApiError> {
    let mut w = find(state, id).await?;
    let mut reveal = false;
    if let Some(url) = input.webhook_url {
        validate_url(&url)?;
        w.webhook_url = url;
    }
    if let Some(topics) = input.topics {
        validate_topics(&topics)?;
        w.topics = topics;
    }
    if let Some(p) = input.project_id {
        w.project_id = p;
    }
    match input.enable_auth {
        Some(true) if w.shared_secret.is_empty() => {
            w.shared_secret = new_secret();
            reveal = true;
        }
        Some(false) => w.shared_secret.clear(),
        _ => {}
    }
    if input.business_numbers.is_some() {
        w.business_numbers = input.business_numbers;
    }
    if input.headers.is_some() {
        w.headers = input.headers;
    }
    if input.active.is_some() {
        w.active = input.active;
    }
    validate_limits(input.timeout_ms, input.max_in_flight)?;
    if input.timeout_ms.is_some() {
        w.timeout_ms = input.timeout_ms;
    }
    if input.max_in_flight.is_some() {
        w.max_in_flight = input.max_in_flight;
    }
    w.updated_at = Utc::now().timestamp_millis();
    if !state.webhooks.update_webhook(&w).await? {
        return Err(ApiError::NotFound("webhook"));
    }
    Ok((w, reveal))
}

/// Deletes a client webhook.
#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    security(("admin" = [])),
    responses((status = 200, description = "`{\"message\":\"webhook deleted successfully\"}`", body = Object), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn remove(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.webhooks.delete_webhook(&id).await? {
        return Err(ApiError::NotFound("webhook"));
    }
    Ok(Json(json!({"message": "webhook deleted successfully"})))
}

/// A new signing secret, shown this once; the old one stops signing at once.
#[utoipa::path(post, path = "/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    security(("admin" = [])),
    responses((status = 200, body = WebhookOut), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn rotate(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookOut>, ApiError> {
    Ok(Json(out(rotate_secret(&state, &id).await?, true)))
}

/// Gives a webhook a new secret; the old one stops signing at once.
pub(super) async fn rotate_secret(state: &AppState, id: &str) -> Result<WebhookConfig, ApiError> {
    let mut w = find(state, id).await?;
    w.shared_secret = new_secret();
    w.updated_at = Utc::now().timestamp_millis();
    if !state.webhooks.update_webhook(&w).await? {
        return Err(ApiError::NotFound("webhook"));
    }
    Ok(w)
}

/// Sends a `test.webhook` event now and reports what the endpoint said
/// (legacy shape: always 200, `success` tells).
#[utoipa::path(post, path = "/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    security(("admin" = [])),
    responses((status = 200, description = "What the endpoint answered: `success`, `status_code`, `response_body`, `error`, `duration_ms`", body = Object), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn test(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let o = send_test(&state, &id).await?;
    Ok(Json(json!({
        "success": o.success,
        "message": if o.success { "test webhook delivered" } else { "test webhook failed" },
        "status_code": o.status_code,
        "response_body": o.response_body,
        "error": o.error,
        "duration_ms": o.duration_ms,
    })))
}

/// What a webhook's endpoint answered to a test event.
pub(super) struct TestOutcome {
    pub success: bool,
    pub status_code: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// Sends a `test.webhook` event to a webhook now, signed as deliveries are.
pub(super) async fn send_test(state: &AppState, id: &str) -> Result<TestOutcome, ApiError> {
    let w = find(state, id).await?;
    let now = Utc::now();
    let job = ForwardJob {
        delivery_log_id: String::new(),
        project_owner_id: w.project_owner_id.clone(),
        webhook_id: w.id.clone(),
        webhook_url: w.webhook_url.clone(),
        shared_secret: None,
        event_type: "test.webhook".into(),
        event_id: format!("test_{}", now.timestamp_millis()),
        payload: json!({"test": true, "message": "This is a test webhook from zen-gateway", "timestamp": now.timestamp()}),
        timestamp: now.timestamp_millis(),
        attempt_count: 0,
        message: None,
        parked_since: None,
        v: 1,
    };
    let o = state
        .forwarder
        .send(
            &w.webhook_url,
            &w.shared_secret,
            w.headers.as_ref(),
            w.timeout_ms.map(std::time::Duration::from_millis),
            &job,
        )
        .await;
    Ok(TestOutcome {
        success: o.success(),
        status_code: o.status,
        response_body: o.body,
        error: o.error,
        duration_ms: o.duration.as_millis() as u64,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitParams {
    /// 1 to 500, default 50.
    limit: Option<usize>,
}

/// The delivery log of one webhook, newest first: one entry per event,
/// updated on every attempt.
#[utoipa::path(get, path = "/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path, description = "webhook id"), LimitParams),
    security(("admin" = [])),
    responses((status = 200, body = Vec<DeliveryLog>), (status = 404, description = "No such webhook", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn deliveries(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<LimitParams>,
) -> Result<Json<Vec<DeliveryLog>>, ApiError> {
    find(&state, &id).await?;
    let limit = p.limit.unwrap_or(50).clamp(1, 500);
    Ok(Json(state.webhooks.list_deliveries(&id, limit).await?))
}

/// Dead-lettered deliveries, newest first.
#[utoipa::path(get, path = "/dlq", tag = "webhooks", params(LimitParams),
    security(("admin" = [])),
    responses((status = 200, body = Vec<DeadJob>), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The forwarding queue is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn dlq(
    _: Admin,
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<LimitParams>,
) -> Result<Json<Vec<DeadJob>>, ApiError> {
    let limit = p.limit.unwrap_or(50).clamp(1, 500);
    Ok(Json(state.forward_queue.list_dead(limit).await?))
}

/// Puts dead-lettered deliveries back on the forwarding queue with fresh
/// attempts: all of them without a body, else those matching every part
/// given (`ids`, `webhook_id`, died `since` / `until`).
#[utoipa::path(post, path = "/dlq/replay", tag = "webhooks", request_body(content = Option<crate::forwarding::ReplayFilter>),
    security(("admin" = [])),
    responses((status = 200, description = "`{\"replayed\":N}`", body = Object), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The forwarding queue is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn replay(
    _: Admin,
    State(state): State<AppState>,
    body: Option<Json<crate::forwarding::ReplayFilter>>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = body.map(|Json(b)| b).unwrap_or_default();
    let n = state.forward_queue.replay_dead(&filter).await?;
    Ok(Json(json!({"replayed": n})))
}
