//! `GET /` and `GET /health` (legacy, static: liveness only) and `GET /ready`
//! (each backend's state; 503 when the inbox cannot accept).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/ready", get(ready))
}

fn legacy_json(body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn root() -> Response {
    legacy_json(r#"{"message":"ZEN Messaging Gateway is running"}"#)
}

async fn health() -> Response {
    legacy_json(r#"{"status":"healthy"}"#)
}

async fn ready(State(state): State<AppState>) -> Response {
    let (inbox, store, cache) = tokio::join!(
        state.inbox.health(),
        state.store.health(),
        state.cache.health()
    );
    // Only the inbox decides readiness: with it up, every webhook is still
    // accepted durably; a store or cache outage only delays processing.
    let status = if !inbox.up {
        "unavailable"
    } else if !store.up || !cache.up || cache.backend == "memory" {
        "degraded"
    } else {
        "ready"
    };
    let code = if inbox.up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let (depth, forward_depth) = tokio::join!(state.inbox.depth(), state.forward_queue.depth());
    (
        code,
        Json(json!({
            "status": status,
            "inbox": inbox,
            "store": store,
            "cache": cache,
            "inbox_depth": depth.ok(),
            "forward_depth": forward_depth.ok(),
        })),
    )
        .into_response()
}
