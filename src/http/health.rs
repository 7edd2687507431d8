//! `GET /` and `GET /health` (legacy, static: liveness only) and `GET /ready`
//! (each backend's state; 503 when the inbox cannot accept), `GET /metrics`.
//! Neither reads a backend per request: both show what a background
//! refresh read last ([`refresh_probes`]).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;
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

/// Prometheus text format. The backends' gauges are those of the last
/// background refresh (every [`PROBE_REFRESH`]): a scrape costs the
/// rendering alone, never a count. With `METRICS_TOKEN` set, a scrape must
/// carry it as a bearer token.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "`METRICS_TOKEN` is set and the request does not carry it", body = crate::http::openapi::ErrorBody)),
    security((), ("metrics_token" = [])))]
async fn metrics_text(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &state.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
            return crate::error::ApiError::Unauthorized.into_response();
        }
    }
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

/// Readiness: each backend's state, the backlogs and the webhook routes'
/// trust; 503 only when the inbox cannot accept webhooks. The inbox's state
/// is read now (a flag); the rest comes from the last background refresh,
/// so a probe costs no backend call.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "`ready` or `degraded`", body = Object),
        (status = 503, description = "`unavailable`: the inbox backend is down", body = Object)))]
async fn ready(State(state): State<AppState>) -> Response {
    let inbox = state.inbox.health().await;
    let g = state.probes.latest();
    let [_, (_, store), (_, cache), _] = &g.backends;
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
    (
        code,
        Json(json!({
            "status": status,
            "inbox": inbox,
            "store": store,
            "cache": cache,
            "inbox_depth": g.inbox_depth,
            "forward_depth": g.forward_depth,
            // Entries set aside for an operator (GET /api/v1/quarantine).
            "quarantine_depth": g.quarantine_depth,
            // Which webhook routes check a token or signature, which anyone
            // may post to, which are refused (docs/SECURITY.md).
            "inbound": state.auth.report(),
            "as_of": g.at,
        })),
    )
        .into_response()
}

/// How often the backends' health and backlogs are read for `/ready`,
/// `/metrics` and the console.
pub const PROBE_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Backends and backlogs as last read, also set as gauges.
#[derive(Clone)]
pub(crate) struct Gauges {
    pub backends: [(&'static str, crate::health::BackendHealth); 4],
    pub inbox_depth: Option<u64>,
    pub forward_depth: Option<u64>,
    pub dlq_depth: Option<u64>,
    pub quarantine_depth: Option<u64>,
    pub breakers_open: usize,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Gauges {
    /// Before the first read.
    fn unknown() -> Gauges {
        let unknown = |backend| crate::health::BackendHealth {
            backend,
            up: false,
            detail: Some("not read yet".into()),
        };
        Gauges {
            backends: [
                ("inbox", unknown("unknown")),
                ("store", unknown("unknown")),
                ("cache", unknown("unknown")),
                ("forward_queue", unknown("unknown")),
            ],
            inbox_depth: None,
            forward_depth: None,
            dlq_depth: None,
            quarantine_depth: None,
            breakers_open: 0,
            at: chrono::Utc::now(),
        }
    }
}

/// The last [`Gauges`], shared by the probes and the console.
pub struct Probes(std::sync::RwLock<std::sync::Arc<Gauges>>);

impl Default for Probes {
    fn default() -> Self {
        Probes(std::sync::RwLock::new(std::sync::Arc::new(
            Gauges::unknown(),
        )))
    }
}

impl Probes {
    pub(crate) fn latest(&self) -> std::sync::Arc<Gauges> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, g: Gauges) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(g);
    }
}

/// Reads the backends now, for the probes.
pub async fn refresh_now(state: &AppState) {
    let g = refresh_gauges(state).await;
    state.probes.set(g);
    metrics::counter!("zen_probe_refreshes_total").increment(1);
}

/// Reads the backends every [`PROBE_REFRESH`] until `stop`.
pub async fn refresh_probes(state: AppState, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_REFRESH) => {}
        }
        refresh_now(&state).await;
    }
}

/// Reads the backends' health and backlogs and sets their gauges.
async fn refresh_gauges(state: &AppState) -> Gauges {
    let (inbox, store, cache, forward, inbox_depth, forward_depth, dlq_depth, quarantine_depth) = tokio::join!(
        state.inbox.health(),
        state.store.health(),
        state.cache.health(),
        state.forwarding.queue().health(),
        state.inbox.depth(),
        state.forwarding.queue().depth(),
        state.forwarding.queue().dead_depth(),
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
    metrics::counter!("zen_log_lines_dropped_total").absolute(crate::telemetry::lines_dropped());
    if let Ok(d) = forward_depth {
        metrics::gauge!("zen_forward_queue_depth").set(d as f64);
    }
    if let Ok(d) = quarantine_depth {
        metrics::gauge!("zen_quarantine_depth").set(d as f64);
    }
    if let Ok(d) = dlq_depth {
        metrics::gauge!("zen_forward_dlq_depth").set(d as f64);
    }
    let breakers_open = state.forwarding.open_circuits();
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
        at: chrono::Utc::now(),
    }
}
