//! The HTTP edge's error type: every failure a client can see, mapped to a
//! status and the JSON body `{"status":<code>,"message":"…"}` the legacy
//! gateway used for its 400.
//!
//! A server-side failure says what the client can do (retry later) and
//! carries the request's id (`request_id`, also the `x-request-id` header);
//! the backend's own words go to the log under that id, never to the
//! caller.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::forwarding::ForwardQueueError;
use crate::queue::QueueError;
use crate::store::StoreError;

tokio::task_local! {
    /// The id of the request being served (set by the HTTP edge's
    /// request-id layer), for error bodies and logs.
    pub static REQUEST_ID: std::sync::Arc<str>;
}

/// The current request's id, when serving one.
pub fn request_id() -> Option<std::sync::Arc<str>> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The legacy 400: the body could not be read (client abort, timeout).
    #[error("Failed to read webhook body")]
    BodyRead,
    #[error("Request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Webhook body is not valid JSON: {0}")]
    InvalidJson(String),
    /// Well-formed, but no event of the route's provider.
    #[error("Webhook body is not an event of this provider: {0}")]
    NotAnEvent(&'static str),
    #[error("Missing or invalid credentials")]
    Unauthorized,
    /// Too many failed key attempts from this client: wait, then retry.
    #[error("Too many failed attempts; retry in {} s", .0.secs())]
    TooManyAttempts(crate::http::attempts::RetryAfter),
    #[error("Webhook not authenticated: {0}")]
    WebhookAuth(#[from] crate::inbound_auth::AuthFailure),
    #[error("{0}")]
    Forbidden(&'static str),
    /// A feature whose setting (named) is not configured.
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Unprocessable(String),
    /// Changed by others meanwhile, on every attempt (named): retry.
    #[error("The {0} kept changing while this change was made; retry")]
    Conflict(&'static str),
    /// The inbox could not make the event durable: the BSP must retry.
    #[error("Webhook not accepted, retry later")]
    NotAccepted(#[from] QueueError),
    /// A replica without the ingest role got a webhook.
    #[error("Webhook not accepted: this replica does not run the ingest role")]
    IngestDisabled,
    #[error("{}", store_message(.0))]
    Store(#[from] StoreError),
    #[error("The forwarding queue is unavailable, retry later")]
    ForwardQueue(#[from] ForwardQueueError),
    /// A backend (named) cannot serve this call now; its detail is logged.
    #[error("{0} is unavailable, retry later")]
    Unavailable(&'static str),
}

impl From<crate::forwarding::webhooks::WebhookError> for ApiError {
    fn from(e: crate::forwarding::webhooks::WebhookError) -> Self {
        use crate::forwarding::webhooks::WebhookError;
        match e {
            WebhookError::Invalid(m) => ApiError::Unprocessable(m),
            WebhookError::NotFound => ApiError::NotFound("webhook"),
            WebhookError::Conflict => ApiError::Conflict("webhook"),
            WebhookError::Store(e) => ApiError::Store(e),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BodyRead
            | ApiError::InvalidJson(_)
            | ApiError::NotAnEvent(_)
            | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized | ApiError::WebhookAuth(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::NotConfigured(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotAccepted(_)
            | ApiError::IngestDisabled
            | ApiError::ForwardQueue(_)
            | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(StoreError::Invalid(_)) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// What the log gets beyond the message: the backend's own words.
    fn detail(&self) -> Option<String> {
        match self {
            ApiError::NotAccepted(e) => Some(e.to_string()),
            ApiError::Store(e) => Some(e.to_string()),
            ApiError::ForwardQueue(e) => Some(e.to_string()),
            _ => None,
        }
    }
}

fn store_message(e: &StoreError) -> &'static str {
    match e {
        StoreError::Unavailable(_) => "The message store is unavailable, retry later",
        StoreError::Invalid(_) => "The message store refused the data",
    }
}

/// The JSON error body shape shared by every route; a server error also
/// carries the request's id.
pub fn json_status_body(status: StatusCode, message: &str) -> Response {
    let mut body = serde_json::json!({ "status": status.as_u16(), "message": message });
    if status.is_server_error() {
        if let Some(id) = request_id() {
            body["request_id"] = serde_json::Value::from(&*id);
        }
    }
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() || matches!(self, ApiError::Store(_)) {
            tracing::warn!(
                error = %self,
                detail = self.detail().as_deref().unwrap_or(""),
                status = status.as_u16(),
                request_id = request_id().as_deref().unwrap_or(""),
                "request refused"
            );
        }
        let mut resp = json_status_body(status, &self.to_string());
        if let ApiError::TooManyAttempts(wait) = &self {
            if let Ok(v) = HeaderValue::from_str(&wait.secs().to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::UNAUTHORIZED => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of an over-limit body was drained, or given up on:
            // either way this connection ends with the answer.
            StatusCode::PAYLOAD_TOO_LARGE => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}
