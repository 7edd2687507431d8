//! The webhook routes. Each answers 200 with the legacy body only once the
//! raw body is durable in the inbox; optional per-provider authentication
//! runs first (401, nothing stored).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;

use super::AppState;
use super::extract::WebhookRequest;
use crate::error::ApiError;
use crate::model::Bsp;
use crate::providers::{BodyFormat, Provider, Providers};
use crate::telemetry::traces;

/// One route per provider path (and alias), each with its OpenAPI
/// operation, from the provider list: a new provider needs nothing here.
pub fn router(providers: &Providers) -> OpenApiRouter<AppState> {
    let mut paths = serde_json::Map::new();
    let mut router = axum::Router::new();
    for provider in providers.all() {
        let bsp = provider.bsp();
        for (n, path) in provider.routes().iter().enumerate() {
            let operation_id = match n {
                0 => bsp.as_str().to_owned(),
                1 => format!("{bsp}_legacy"),
                n => format!("{bsp}_legacy_{n}"),
            };
            let summary = match n {
                0 => provider.summary().to_owned(),
                _ => format!(
                    "{} (legacy alias of `{}`).",
                    provider.name(),
                    provider.routes()[0]
                ),
            };
            let mut item =
                json!({"post": post_operation(&operation_id, &summary, provider.as_ref())});
            let mut method = post(
                move |State(state): State<AppState>, request: WebhookRequest| async move {
                    accept(&state, bsp, request).await
                },
            );
            if n == 0 {
                if let Some(env) = provider.credential_env().verify_token {
                    item["get"] = handshake_operation(bsp, provider.name(), env);
                    method = method.get(
                        move |State(state): State<AppState>,
                              Query(query): Query<HashMap<String, String>>| async move {
                            verify_subscription(&state, bsp, env, &query)
                        },
                    );
                }
            }
            paths.insert((*path).to_owned(), item);
            router = router.route(path, method);
        }
    }
    let doc: utoipa::openapi::OpenApi = serde_json::from_value(json!({
        "openapi": "3.1.0",
        "info": {"title": "", "version": ""},
        "paths": paths,
    }))
    .expect("webhook route documentation");
    OpenApiRouter::with_openapi(doc).merge(OpenApiRouter::from(router))
}

/// The operation of a provider's webhook route: the bodies it takes (a
/// JSON object, an array of them where the provider batches, or Twilio's
/// form naming its message) and its answers, the legacy 200 body included.
fn post_operation(operation_id: &str, summary: &str, provider: &dyn Provider) -> Value {
    let error = |description: &str| {
        json!({"description": description, "content": {"application/json": {"schema":
            {"$ref": "#/components/schemas/ErrorBody"}}}})
    };
    let (media, schema) = match provider.body_format() {
        BodyFormat::Json if provider.takes_batches() => (
            "application/json",
            json!({"oneOf": [{"type": "object"}, {"type": "array", "description": "A batch of events"}]}),
        ),
        BodyFormat::Json => ("application/json", json!({"type": "object"})),
        BodyFormat::Form => (
            "application/x-www-form-urlencoded",
            json!({"type": "object", "required": ["MessageSid"],
                "properties": {"MessageSid": {"type": "string", "minLength": 1, "pattern": "[^\\x00-\\x20]"}}}),
        ),
    };
    let ack = provider.ack_body();
    let ack_media = provider
        .ack_content_type()
        .split(';')
        .next()
        .unwrap_or("application/json");
    let accepted = format!("Durably accepted (the legacy body: `{ack}`)");
    let ok = if ack_media == "application/json" {
        error(&accepted)
    } else {
        json!({"description": accepted, "content": {ack_media: {"schema": {"type": "string"}}}})
    };
    json!({
        "tags": ["webhooks (BSP)"],
        "summary": summary,
        "operationId": operation_id,
        "parameters": [{"name": "token", "in": "query", "required": false,
            "description": "Shared token, when inbound authentication by query token is configured",
            "schema": {"type": "string"}}],
        "requestBody": {"description": "The provider's webhook body, as it sends it",
            "content": {media: {"schema": schema}}, "required": true},
        "responses": {
            "200": ok,
            "400": error("Not one of the provider's events: not JSON (or not UTF-8, or unreadable), a JSON value that is not an object (nor, for a provider that batches, an array), or a form without its message id"),
            "401": error("Inbound authentication failed, or the route is refused (`INBOUND_REQUIRE_AUTH` with no credential configured for it)"),
            "413": error("Body over BODY_LIMIT_BYTES"),
            "503": error("Not accepted, retry (inbox unavailable or saturated; `Retry-After`)"),
        }
    })
}

/// The operation of a subscription handshake (`GET` with `hub.*`).
fn handshake_operation(bsp: Bsp, name: &str, env: &str) -> Value {
    let param = |name: &str| json!({"name": name, "in": "query", "required": true, "schema": {"type": "string"}});
    json!({
        "tags": ["webhooks (BSP)"],
        "summary": format!("{name}'s subscription handshake: echo `hub.challenge` when\n`hub.verify_token` matches `{env}`; 403 otherwise."),
        "operationId": format!("{bsp}_verify"),
        "parameters": [param("hub.mode"), param("hub.verify_token"), param("hub.challenge")],
        "responses": {
            "200": {"description": "The challenge, as text/plain",
                "content": {"text/plain": {"schema": {"type": "string"}}}},
            "403": {"description": "Token mismatch or not configured",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
        }
    })
}

/// The legacy 200 body of `bsp`'s provider, byte for byte.
fn legacy_ack(state: &AppState, bsp: Bsp) -> Response {
    let (body, content_type) = state
        .auth
        .providers()
        .get(bsp)
        .map_or(("", "application/json; charset=utf-8"), |p| {
            (p.ack_body(), p.ack_content_type())
        });
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn accept(state: &AppState, bsp: Bsp, request: WebhookRequest) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let result = accept_inner(state, bsp, request).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(ApiError::InvalidJson(_) | ApiError::NotAnEvent(_)) => "invalid",
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
    state: &AppState, bsp: Bsp, request: WebhookRequest,
) -> Result<Response, ApiError> {
    if !state.ingest_enabled {
        return Err(ApiError::IngestDisabled);
    }
    state.auth.verify(
        bsp,
        &request.headers,
        request.path_and_query(),
        request.query(),
        &request.body,
    )?;
    // The request's trace (exported) or the BSP's (carried), kept with the
    // entry so that processing and deliveries continue it.
    let request_span = tracing::Span::current();
    let trace = traces::carried(&request_span, traces::inbound(&request.headers).as_ref());
    request_span.record("trace_id", trace.trace_id());
    let event_id = state.ingest.accept(bsp, request.body, trace).await?;
    tracing::debug!(event.id = %event_id, %bsp, "webhook accepted");
    Ok(legacy_ack(state, bsp))
}

/// A subscription handshake: echo `hub.challenge` when `hub.verify_token`
/// matches the provider's configured token (`env` names it); 403 otherwise.
fn verify_subscription(
    state: &AppState, bsp: Bsp, env: &'static str, query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let expected = state
        .auth
        .verify_token(bsp)
        .ok_or(ApiError::NotConfigured(env))?;
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
