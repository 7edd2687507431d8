//! The webhook routes. Each answers 200 with the legacy body only once the
//! raw body is durable in the inbox; optional per-provider authentication
//! runs first (401, nothing stored).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::WebhookRequest;
use crate::error::ApiError;
use crate::model::Bsp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(datagen))
        .routes(routes!(datagen_legacy))
        .routes(routes!(aisensy))
        .routes(routes!(aisensy_legacy))
        .routes(routes!(karix))
        .routes(routes!(meta, meta_verify))
}

/// The legacy 200 body for `bsp`, byte for byte.
fn legacy_ack(bsp: Bsp) -> Response {
    let body: &'static str = match bsp {
        Bsp::Datagen => r#"{"status":200,"message":"Datagen webhook received successfully"}"#,
        Bsp::Aisensy => r#"{"status":200,"message":"Aisensy webhook received successfully"}"#,
        Bsp::Karix => r#"{"status":200,"message":"Karix webhook received successfully"}"#,
        Bsp::Meta => r#"{"status":200,"message":"Meta webhook received successfully"}"#,
    };
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn accept(state: &AppState, bsp: Bsp, request: WebhookRequest) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let result = accept_inner(state, bsp, request).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(ApiError::InvalidJson(_)) => "invalid",
        Err(ApiError::WebhookAuth(_)) => "unauthorized",
        Err(_) => "unavailable",
    };
    crate::metrics::webhook(bsp, outcome);
    if result.is_ok() {
        crate::metrics::ingest_ack(bsp, started.elapsed());
    }
    result
}

async fn accept_inner(
    state: &AppState,
    bsp: Bsp,
    request: WebhookRequest,
) -> Result<Response, ApiError> {
    if !state.ingest_enabled {
        return Err(ApiError::InboxUnavailable(
            crate::queue::QueueError::Unavailable(
                "this replica does not run the ingest role".into(),
            ),
        ));
    }
    state
        .auth
        .verify(bsp, &request.headers, request.query(), &request.body)?;
    let event_id = state.ingest.accept(bsp, request.body).await?;
    tracing::debug!(event.id = %event_id, %bsp, "webhook accepted");
    Ok(legacy_ack(bsp))
}

macro_rules! webhook_handler {
    ($name:ident, $bsp:expr, $path:literal, $summary:literal) => {
        #[doc = $summary]
        #[utoipa::path(post, path = $path, tag = "webhooks (BSP)",
            request_body(content = Object, description = "The provider's webhook body, as it sends it (one event or a batch)"),
            params(("token" = Option<String>, Query, description = "Shared token, when inbound authentication by query token is configured")),
            responses(
                (status = 200, description = "Durably accepted (legacy body, e.g. `{\"status\":200,\"message\":\"Datagen webhook received successfully\"}`)", body = crate::http::openapi::ErrorBody),
                (status = 400, description = "Not JSON / not UTF-8 / unreadable", body = crate::http::openapi::ErrorBody),
                (status = 401, description = "Inbound authentication failed", body = crate::http::openapi::ErrorBody),
                (status = 413, description = "Body over BODY_LIMIT_BYTES", body = crate::http::openapi::ErrorBody),
                (status = 503, description = "Not accepted, retry (inbox unavailable or saturated; `Retry-After`)", body = crate::http::openapi::ErrorBody)))]
        async fn $name(
            State(state): State<AppState>,
            request: WebhookRequest,
        ) -> Result<Response, ApiError> {
            accept(&state, $bsp, request).await
        }
    };
}

webhook_handler!(
    datagen,
    Bsp::Datagen,
    "/webhook/datagen",
    "Datagen delivery reports and replies."
);
webhook_handler!(
    datagen_legacy,
    Bsp::Datagen,
    "/datagen-webhook",
    "Datagen (legacy alias of `/webhook/datagen`)."
);
webhook_handler!(aisensy, Bsp::Aisensy, "/webhook/aisensy", "AiSensy events.");
webhook_handler!(
    aisensy_legacy,
    Bsp::Aisensy,
    "/partner-webhook",
    "AiSensy (legacy alias of `/webhook/aisensy`)."
);
webhook_handler!(karix, Bsp::Karix, "/webhook/karix", "Karix RCM callbacks.");
webhook_handler!(
    meta,
    Bsp::Meta,
    "/webhook/meta",
    "WhatsApp Cloud API (Meta) notifications; `X-Hub-Signature-256` checked when `META_APP_SECRET` is set."
);

/// Meta's subscription handshake: echo `hub.challenge` when
/// `hub.verify_token` matches `META_VERIFY_TOKEN`; 403 otherwise.
#[utoipa::path(get, path = "/webhook/meta", tag = "webhooks (BSP)",
    params(("hub.mode" = String, Query), ("hub.verify_token" = String, Query), ("hub.challenge" = String, Query)),
    responses((status = 200, description = "The challenge, as text/plain", body = String, content_type = "text/plain"),
        (status = 403, description = "Token mismatch or not configured", body = crate::http::openapi::ErrorBody)))]
async fn meta_verify(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let expected = state
        .meta_verify_token
        .as_deref()
        .ok_or(ApiError::Forbidden("META_VERIFY_TOKEN is not configured"))?;
    let mode_ok = query.get("hub.mode").is_some_and(|m| m == "subscribe");
    let token_ok = query
        .get("hub.verify_token")
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(expected.as_bytes())));
    match query.get("hub.challenge") {
        Some(challenge) if mode_ok && token_ok => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            challenge.clone(),
        )
            .into_response()),
        _ => Err(ApiError::Forbidden("verification token mismatch")),
    }
}
