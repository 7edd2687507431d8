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
        .route("/metrics", get(metrics_text))
}

/// Prometheus text format; gauges of backends and backlogs are read now.
async fn metrics_text(State(state): State<AppState>) -> Response {
    let (inbox, store, cache, forward, inbox_depth, forward_depth) = tokio::join!(
        state.inbox.health(),
        state.store.health(),
        state.cache.health(),
        state.forward_queue.health(),
        state.inbox.depth(),
        state.forward_queue.depth()
    );
    for (role, h) in [
        ("inbox", &inbox),
        ("store", &store),
        ("cache", &cache),
        ("forward_queue", &forward),
    ] {
        metrics::gauge!("zen_backend_up", "role" => role, "backend" => h.backend).set(if h.up {
            1.0
        } else {
            0.0
        });
    }
    if let Ok(d) = inbox_depth {
        metrics::gauge!("zen_inbox_depth").set(d as f64);
    }
    if let Ok(d) = forward_depth {
        metrics::gauge!("zen_forward_queue_depth").set(d as f64);
    }
    metrics::gauge!("zen_breakers_open").set(state.forwarder.open_circuits() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
        .into_response()
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
