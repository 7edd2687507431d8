//! The HTTP edge: what every request passes before its route, as one
//! service. It gives the request its id, opens its span (a child of the
//! caller's trace when exported), bounds it by the request timeout, and
//! turns a panic into a JSON 500 that names the request.
//!
//! One service rather than a stack of four tower layers (`from_fn`, trace,
//! catch-panic, timeout): each of those wrapped the request's future in its
//! own, and `from_fn` cloned and boxed the stack below it per request. This
//! is one boxed future per request.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use tracing::Instrument;

use crate::error::{REQUEST_ID, json_status_body};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The edge around `inner` (the router), with the request timeout.
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Edge<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Edge { inner, timeout }
    }
}

impl<S> tower::Service<Request> for Edge<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let (id, header) = request_id_of(&req);
        req.headers_mut().insert(REQUEST_ID_HEADER, header.clone());
        let span = request_span(&req, &id);
        // The service polled ready is the one called; a fresh clone stays
        // for the next request (the tower convention).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let timeout = self.timeout;
        let began = Instant::now();
        let serve = async move {
            let handled = AssertUnwindSafe(async move { inner.call(req).await }).catch_unwind();
            let mut resp = match tokio::time::timeout(timeout, handled).await {
                Ok(Ok(Ok(resp))) => resp,
                Ok(Ok(Err(never))) => match never {},
                Ok(Err(panic)) => {
                    tracing::error!(panic = panic_message(&*panic), "request handler panicked");
                    json_status_body(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
                }
                // A client that keeps a request open (a body that never
                // finishes) gets its answer and the connection back.
                Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
            };
            tracing::debug!(
                status = resp.status().as_u16(),
                latency_ms = began.elapsed().as_millis() as u64,
                "finished processing request"
            );
            resp.headers_mut().insert(REQUEST_ID_HEADER, header);
            Ok(resp)
        };
        Box::pin(REQUEST_ID.scope(id, serve).instrument(span))
    }
}

/// The request's id: the caller's `x-request-id` when it is a short token,
/// else a fresh UUID (v7: ordered by time). Echoed in the response header,
/// logged, and put in server-error bodies ([`crate::error::request_id`]).
fn request_id_of(req: &Request) -> (Arc<str>, HeaderValue) {
    let given = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        })
        .and_then(|v| Some((v.to_str().ok()?.into(), v.clone())));
    given.unwrap_or_else(|| {
        let mut buf = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
        let header = HeaderValue::from_str(id).expect("a UUID is a valid header value");
        (Arc::from(&*id), header)
    })
}

/// Liveness and readiness probes and metric scrapes: no span of their own.
/// Every few seconds from every orchestrator and scraper, they would fill
/// the exported traces and say nothing about a webhook.
const UNTRACED_PATHS: [&str; 4] = ["/", "/health", "/ready", "/metrics"];

/// The request's span. Never the raw URI: a `?token=` in it is a
/// credential. Exported, the request is a child of the caller's span.
fn request_span(req: &Request, id: &str) -> tracing::Span {
    if UNTRACED_PATHS.contains(&req.uri().path()) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        uri = %super::redacted_uri(req.uri()),
        request_id = %id,
        trace_id = tracing::field::Empty
    );
    crate::telemetry::traces::continue_inbound(&span, req.headers());
    span
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    fn edge() -> Edge<axum::Router> {
        let routes = axum::Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/panic",
                get(|| async {
                    if true {
                        panic!("boom");
                    }
                    "never"
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            );
        Edge::new(routes, Duration::from_millis(50))
    }

    fn get_req(path: &str, id: Option<&str>) -> Request {
        let mut b = Request::builder().uri(path);
        if let Some(id) = id {
            b = b.header("x-request-id", id);
        }
        b.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_request_gets_an_id_and_keeps_a_callers_short_token() {
        let resp = edge().oneshot(get_req("/ok", None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");

        let resp = edge()
            .oneshot(get_req("/ok", Some("bsp-req-42")))
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], "bsp-req-42");
        // Not a short token: replaced, never echoed.
        let resp = edge().oneshot(get_req("/ok", Some("a b"))).await.unwrap();
        assert_ne!(resp.headers()["x-request-id"], "a b");
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_json_500_naming_the_request() {
        let resp = edge()
            .oneshot(get_req("/panic", Some("req-7")))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()["x-request-id"], "req-7");
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], 500);
        assert_eq!(json["request_id"], "req-7");
    }

    #[tokio::test]
    async fn a_request_past_the_timeout_is_a_408() {
        let resp = edge().oneshot(get_req("/slow", None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(resp.headers().contains_key("x-request-id"));
    }
}
