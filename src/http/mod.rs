//! The HTTP surface: legacy webhook routes (byte-compatible), health and
//! readiness, the admin API. Handlers are thin: they extract, call a service,
//! and map the result.

mod admin;
pub mod attempts;
pub mod client_addr;
pub mod console;
pub mod edge;
mod extract;
pub mod health;
pub mod openapi;
mod params;
mod quarantine;
pub mod serve;
mod webhook_admin;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::Layer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::cache::Cache;
use crate::forwarding::Forwarding;
use crate::inbound_auth::InboundAuth;
use crate::ingest::Ingest;
use crate::providers::Providers;
use crate::queue::Inbox;
use crate::store::MessageStore;

/// Shared handles for the handlers. axum clones the state for every
/// request, so it is one `Arc` (a dozen handles and the inbound-auth map
/// would otherwise be cloned per webhook).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What the handlers call: the ingest path, the backends, the settings
/// they need.
pub struct Services {
    pub ingest: Ingest,
    pub inbox: Arc<dyn Inbox>,
    pub store: Arc<dyn MessageStore>,
    /// One contact per WhatsApp user per business number.
    pub contacts: Arc<dyn crate::contacts::ContactStore>,
    pub cache: Arc<dyn Cache>,
    /// `None`: the admin API refuses every call.
    pub admin_key: Option<Arc<str>>,
    pub body_limit: usize,
    /// False on replicas that do not run the ingest role: webhooks get 503.
    pub ingest_enabled: bool,
    /// Optional inbound webhook authentication per provider.
    pub auth: InboundAuth,
    /// Client webhooks, their rules, the forwarding queue and the breakers.
    pub forwarding: Arc<Forwarding>,
    /// The operator console's sign-in state.
    pub console: console::Console,
    /// Failed admin-key attempts per client (API and console).
    pub attempts: attempts::FailedAttempts,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: crate::config::TrustedProxies,
    /// Bearer token `GET /metrics` requires, when set.
    pub metrics_token: Option<crate::config::Secret>,
    /// The backends' health and backlogs, as last read in the background.
    pub probes: health::Probes,
}

impl Services {
    /// The address a request's per-client limits are keyed on.
    pub fn client_ip(
        &self, peer: Option<std::net::SocketAddr>, headers: &axum::http::HeaderMap,
    ) -> std::net::IpAddr {
        client_addr::client_ip(&self.trusted_proxies, peer, headers)
    }
}

/// The full router, with the middleware every request passes. Trailing
/// slashes are trimmed by the caller (see [`crate::app`]), since that must
/// happen before routing.
pub fn router(
    state: AppState, request_timeout: Duration,
) -> impl tower::Service<
    axum::extract::Request,
    Response = Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let body_limit = state.body_limit;
    let (routes, _) = documented_routes(state.auth.providers()).split_for_parts();
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(legacy_cors())
        // After the legacy CORS policy: console pages answer no other origin.
        .merge(console::router())
        .with_state(state);
    // Around the whole router, once. (With `Router::layer` each layer boxes
    // every route again, and axum clones a matched route's boxes for every
    // request.)
    edge::Edge::new(
        DefaultBodyLimit::max(body_limit).layer(routes),
        request_timeout,
    )
}

/// Query parameters whose values are credentials (inbound tokens, the
/// subscription handshake's token) or may be: shown as `[redacted]`.
const SECRET_PARAMS: [&str; 6] = [
    "token",
    "hub.verify_token",
    "key",
    "secret",
    "signature",
    "access_token",
];

/// A URI as logs may show it: path, and the query with every credential's
/// value redacted.
pub fn redacted_uri(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let raw_key = pair.split('=').next().unwrap_or("");
            // The key as the client may have encoded it (`hub%2Everify_token`).
            let key = url::form_urlencoded::parse(raw_key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if SECRET_PARAMS.iter().any(|s| key.eq_ignore_ascii_case(s)) {
                format!("{raw_key}=[redacted]")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    format!("{}?{}", uri.path(), pairs.join("&"))
}

/// Every route, each with its OpenAPI operation (the webhook routes are
/// the providers').
fn documented_routes(providers: &Providers) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(webhooks::router(providers))
        .merge(health::router().layer(compression()))
        .nest(
            "/api/v1",
            admin::router()
                .merge(webhook_admin::router())
                .merge(quarantine::router())
                .routes(routes!(openapi::document))
                .layer(compression()),
        )
}

/// gzip for the responses worth it (metrics, admin lists, the OpenAPI
/// document); not on the webhook routes, whose acks are a few dozen bytes
/// and whose callers are the BSPs' servers.
fn compression() -> CompressionLayer {
    CompressionLayer::new().gzip(true)
}

/// The OpenAPI document of the routes served for `providers`.
pub fn openapi(providers: &Providers) -> utoipa::openapi::OpenApi {
    documented_routes(providers).split_for_parts().1
}

/// Gin's answer to an unknown route or method, kept for drop-in behaviour.
async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "404 page not found",
    )
        .into_response()
}

/// The legacy CORS policy: any origin (mirrored, since credentials are
/// allowed), the legacy header and method lists, 12 h preflight cache.
fn legacy_cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::ORIGIN,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::AUTHORIZATION,
            HeaderName::from_static("x-requested-with"),
            HeaderName::from_static("x-event-type"),
            HeaderName::from_static("x-event-id"),
            HeaderName::from_static("x-webhook-signature"),
        ])
        .expose_headers([header::CONTENT_LENGTH])
        .max_age(Duration::from_secs(12 * 3600))
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_a_query_are_redacted_for_the_log() {
        let uri: axum::http::Uri =
            "/webhook/datagen?a=1&token=s3cret&hub%2Everify_token=v&TOKEN=x&b=c%20d"
                .parse()
                .unwrap();
        assert_eq!(
            super::redacted_uri(&uri),
            "/webhook/datagen?a=1&token=[redacted]&hub%2Everify_token=[redacted]&TOKEN=[redacted]&b=c%20d"
        );
        let plain: axum::http::Uri = "/health".parse().unwrap();
        assert_eq!(super::redacted_uri(&plain), "/health");
    }
}
