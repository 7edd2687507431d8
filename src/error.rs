//! The HTTP edge's error type: every failure a client can see, mapped to a
//! status and the JSON body `{"status":<code>,"message":"…"}` the legacy
//! gateway used for its 400.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::queue::QueueError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The legacy 400: the body could not be read (client abort, timeout).
    #[error("Failed to read webhook body")]
    BodyRead,
    #[error("Request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Webhook body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("Missing or invalid credentials")]
    Unauthorized,
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
    /// The inbox could not make the event durable: the BSP must retry.
    #[error("Webhook not accepted, retry later: {0}")]
    InboxUnavailable(#[from] QueueError),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A backend (named) cannot serve this call now; its detail is logged.
    #[error("{0} is unavailable, retry later")]
    Unavailable(&'static str),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BodyRead | ApiError::InvalidJson(_) | ApiError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized | ApiError::WebhookAuth(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::NotConfigured(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InboxUnavailable(_) | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(StoreError::Invalid(_)) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// The JSON error body shape shared by every route.
pub fn json_status_body(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "status": status.as_u16(), "message": message });
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
        if status.is_server_error() {
            tracing::warn!(error = %self, status = status.as_u16(), "request refused");
        }
        let mut resp = json_status_body(status, &self.to_string());
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::UNAUTHORIZED => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}
