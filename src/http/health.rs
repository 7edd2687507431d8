//! `GET /` and `GET /health` (legacy, static: liveness only) and `GET /ready`
//! (each backend's state; 503 when the inbox cannot accept).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(root))
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics_text))
}

/// Prometheus text format; gauges of backends and backlogs are read now.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics_text(State(state): State<AppState>) -> Response {
    refresh_gauges(&state).await;
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

/// Legacy liveness: `{"message":"ZEN Messaging Gateway is running"}`.
#[utoipa::path(get, path = "/", tag = "operations", responses((status = 200, body = Object)))]
async fn root() -> Response {
    legacy_json(r#"{"message":"ZEN Messaging Gateway is running"}"#)
}

/// Liveness (static): `{"status":"healthy"}`.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Object)))]
async fn health() -> Response {
    legacy_json(r#"{"status":"healthy"}"#)
}

/// Readiness: each backend's state and the backlogs; 503 only when the
/// inbox cannot accept webhooks.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "`ready` or `degraded`", body = Object),
        (status = 503, description = "`unavailable`: the inbox backend is down", body = Object)))]
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
    let (depth, forward_depth, quarantine_depth) = tokio::join!(
        state.inbox.depth(),
        state.forward_queue.depth(),
        state.inbox.quarantine_depth()
    );
    (
        code,
        Json(json!({
            "status": status,
            "inbox": inbox,
            "store": store,
            "cache": cache,
            "inbox_depth": depth.ok(),
            "forward_depth": forward_depth.ok(),
            // Entries set aside for an operator (GET /api/v1/quarantine).
            "quarantine_depth": quarantine_depth.ok(),
        })),
    )
        .into_response()
}

/// Backends and backlogs as read now, also set as the scrape-time gauges.
pub(super) struct Gauges {
    pub backends: [(&'static str, crate::health::BackendHealth); 4],
    pub inbox_depth: Option<u64>,
    pub forward_depth: Option<u64>,
    pub dlq_depth: Option<u64>,
    pub quarantine_depth: Option<u64>,
    pub breakers_open: usize,
}

/// Reads the backends' health and backlogs and sets their gauges (the
/// numbers `/metrics` and the console's overview show).
pub(super) async fn refresh_gauges(state: &AppState) -> Gauges {
    let (inbox, store, cache, forward, inbox_depth, forward_depth, dlq_depth, quarantine_depth) = tokio::join!(
        state.inbox.health(),
        state.store.health(),
        state.cache.health(),
        state.forward_queue.health(),
        state.inbox.depth(),
        state.forward_queue.depth(),
        state.forward_queue.dead_depth(),
        state.inbox.quarantine_depth()
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
    if let Ok(d) = quarantine_depth {
        metrics::gauge!("zen_quarantine_depth").set(d as f64);
    }
    if let Ok(d) = dlq_depth {
        metrics::gauge!("zen_forward_dlq_depth").set(d as f64);
    }
    let breakers_open = state.forwarder.open_circuits();
    metrics::gauge!("zen_breakers_open").set(breakers_open as f64);
    Gauges {
        backends: [
            ("inbox", inbox),
            ("store", store),
            ("cache", cache),
            ("forward_queue", forward),
        ],
        inbox_depth: inbox_depth.ok(),
        forward_depth: forward_depth.ok(),
        dlq_depth: dlq_depth.ok(),
        quarantine_depth: quarantine_depth.ok(),
        breakers_open,
    }
}
