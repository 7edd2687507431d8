//! Extractors: the webhook body with the legacy/JSON error mapping, JSON
//! request bodies with JSON errors, and admin authentication.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::error::ApiError;

/// A webhook request: its body (413 over the limit, the legacy 400 when it
/// cannot be read), its headers and raw query string for inbound
/// authentication. Taken whole, so the headers are moved rather than cloned
/// and the query is parsed only if authentication looks at it.
pub struct WebhookRequest {
    pub headers: HeaderMap,
    path_and_query: String,
    query: Option<String>,
    pub body: Bytes,
}

impl WebhookRequest {
    /// The path and query the client called (Twilio signs the URL).
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The raw query string (inbound authentication reads `?token` from it).
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
}

/// Bytes of an over-limit body read and thrown away after the 413 is sent,
/// so that a client still uploading reads the answer instead of a reset
/// connection (nginx's lingering close). Past it, or past [`DISCARD_TIME`],
/// the connection is closed as it is.
const DISCARD_BYTES: u64 = 64 * 1024 * 1024;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(10);

impl FromRequest<AppState> for WebhookRequest {
    type Rejection = ApiError;

    async fn from_request(mut req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.body_limit;
        let too_large = || {
            metrics::counter!("zen_webhooks_received_total", "bsp" => "unknown", "outcome" => "too_large")
                .increment(1);
            ApiError::PayloadTooLarge { limit }
        };
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let headers = std::mem::take(req.headers_mut());
        let query = req.uri().query().map(str::to_owned);
        // As the client sent it, before the trailing slash was trimmed.
        let uri = req
            .extensions()
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| req.uri().clone(), |o| o.0.clone());
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
        let mut stream = req.into_body().into_data_stream();
        // A body announced over the limit is not kept, only drained.
        if announced.is_some_and(|n| n > limit as u64) {
            tokio::spawn(discard(stream, 0));
            return Err(too_large());
        }
        let mut body = bytes::BytesMut::with_capacity(announced.unwrap_or(0) as usize);
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return Err(ApiError::BodyRead);
            };
            if body.len() + chunk.len() > limit {
                tokio::spawn(discard(stream, (body.len() + chunk.len()) as u64));
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(WebhookRequest {
            headers,
            path_and_query,
            query,
            body: body.freeze(),
        })
    }
}

/// Reads and drops the rest of a body, within [`DISCARD_BYTES`] (counting
/// the `seen` bytes already read) and [`DISCARD_TIME`], while the 413 goes
/// out at once: the connection closes once the body is drained or given up.
async fn discard(mut stream: axum::body::BodyDataStream, seen: u64) {
    let drain = async {
        let mut seen = seen;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > DISCARD_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

/// A JSON request body whose errors come back as the API's JSON errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::BadRequest(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        // Every body of this API is an object; serde would also read a
        // struct from an array.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Err(e) => Err(ApiError::BadRequest(format!("not JSON: {e}"))),
                Ok(_) => Err(ApiError::Unprocessable("expected a JSON object".into())),
            };
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) if rejection.status() == StatusCode::UNPROCESSABLE_ENTITY => {
                Err(ApiError::Unprocessable(rejection.body_text()))
            }
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::BadRequest(rejection.body_text()))
            }
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// Whether the request says its body is JSON (`application/json`, or a
/// `+json` type).
fn json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .and_then(|v| v.strip_prefix("application/").map(str::to_owned))
        .is_some_and(|sub| sub == "json" || sub.ends_with("+json"))
}

/// An optional JSON request body: none, an empty one or `null` is `None`;
/// anything else is read as [`ApiJson`] reads it.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        let (parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let text = bytes.trim_ascii();
        if text.is_empty() || (has_type && text == b"null") {
            return Ok(OptionalJson(None));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        ApiJson::<T>::from_request(req, state)
            .await
            .map(|ApiJson(v)| OptionalJson(Some(v)))
    }
}

/// Query parameters whose errors come back as the API's JSON 400, naming
/// the parameter (axum's own rejection is plain text).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::BadRequest(
                rejection
                    .body_text()
                    .trim_start_matches("Failed to deserialize query string: ")
                    .to_owned(),
            )),
        }
    }
}

/// Proof that the request carries `Authorization: Bearer <ADMIN_API_KEY>`.
/// With no key configured, nothing passes. A client with too many failed
/// attempts is refused (429) before its key is looked at.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.admin_key.as_deref() else {
            return Err(ApiError::Unauthorized);
        };
        let client = state.client_ip(peer(parts), &parts.headers);
        state
            .attempts
            .check(client)
            .map_err(ApiError::TooManyAttempts)?;
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if bool::from(g.as_bytes().ct_eq(expected.as_bytes())) => Ok(Admin),
            // No key at all is not a guess.
            None => Err(ApiError::Unauthorized),
            Some(_) => {
                metrics::counter!("zen_admin_auth_failures_total").increment(1);
                tracing::warn!(%client, "admin API call with a wrong key");
                state
                    .attempts
                    .fail(client)
                    .map_err(ApiError::TooManyAttempts)?;
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// The peer's address, when the server recorded it.
pub fn peer(parts: &Parts) -> Option<std::net::SocketAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
}
