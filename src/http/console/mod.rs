//! The operator console under `/console`: server-rendered pages (maud), no
//! build step and nothing from a CDN; one small script of our own refreshes
//! the overview. Every page but the sign-in needs a session ([`session`]);
//! every form carries the session's CSRF token. Handlers call the same
//! services and rules as the admin API.

mod contacts;
mod failures;
mod layout;
mod messages;
mod overview;
mod rates;
pub mod session;
mod webhooks;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::html;
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

pub use session::Console;
use session::{Operator, Session};

use super::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(overview::page))
        .route("/console/overview/live", get(overview::live))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/messages", get(messages::search))
        .route("/console/messages/{id}", get(messages::show))
        .route("/console/contacts/{id}", get(contacts::show))
        .route(
            "/console/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/console/webhooks/{id}",
            get(webhooks::show).post(webhooks::update),
        )
        .route("/console/webhooks/{id}/rotate", post(webhooks::rotate))
        .route("/console/webhooks/{id}/test", post(webhooks::test))
        .route("/console/webhooks/{id}/active", post(webhooks::set_active))
        .route("/console/dlq", get(failures::dlq))
        .route("/console/dlq/replay", post(failures::replay_dlq))
        .route("/console/quarantine", get(failures::quarantine))
        .route(
            "/console/quarantine/replay",
            post(failures::replay_quarantine),
        )
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        // Pages hold customer data: never cached, never framed, scripts
        // and styles only from here.
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
}

/// What a console request can fail with; one HTML answer for all.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("Your session has ended. Sign in again.")]
    SignedOut,
    #[error("This form has expired. Reload the page and try again.")]
    Csrf,
}

impl From<crate::store::StoreError> for ConsoleError {
    fn from(e: crate::store::StoreError) -> Self {
        ConsoleError::Api(e.into())
    }
}

impl From<crate::forwarding::ForwardQueueError> for ConsoleError {
    fn from(e: crate::forwarding::ForwardQueueError) -> Self {
        ConsoleError::Api(e.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::Api(e) => e.status(),
            ConsoleError::SignedOut => StatusCode::UNAUTHORIZED,
            ConsoleError::Csrf => StatusCode::FORBIDDEN,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "console request failed");
        }
        let message = match &self {
            // The detail of a backend failure is in the log, not the page.
            ConsoleError::Api(e) if status.is_server_error() => match crate::error::request_id() {
                Some(id) => format!("{e} (request {id})"),
                None => e.to_string(),
            },
            e => e.to_string(),
        };
        let body = layout::bare(
            "Error",
            html! {
                main.narrow {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p.error role="alert" { (message) }
                    p { a href="/console" { "Back to the console" } }
                }
            },
        );
        (status, body).into_response()
    }
}

type PageResult = Result<Response, ConsoleError>;

/// A form body: its fields in order (repeated names kept, as checkboxes
/// send them).
pub(super) struct FormFields(Vec<(String, String)>);

impl FormFields {
    fn parse(body: &[u8]) -> FormFields {
        FormFields(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, trimmed; `None` when absent or empty.
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    fn checked(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// The fields of a POST from this session, or [`ConsoleError::Csrf`].
    fn checked_for(session: &Session, body: &[u8]) -> Result<FormFields, ConsoleError> {
        let form = FormFields::parse(body);
        match form.get("csrf") {
            Some(token) if session.csrf_matches(&token) => Ok(form),
            _ => Err(ConsoleError::Csrf),
        }
    }
}

/// A time from a `datetime-local` field (read as UTC) or RFC 3339.
fn parse_time(field: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, ConsoleError> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, format) {
            return Ok(Some(t.and_utc()));
        }
    }
    Err(ApiError::BadRequest(format!(
        "{field}: not a time (expected YYYY-MM-DDTHH:MM, in UTC)"
    ))
    .into())
}

/// A time as a `datetime-local` field shows it.
fn time_field(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M").to_string())
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Only a console path is a place to go after signing in.
fn next_path(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/console") && n.bytes().all(|b| b.is_ascii_graphic()) => n,
        _ => "/console",
    }
}

async fn login_page(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    login_form(&state, q.next.as_deref(), None, StatusCode::OK)
}

fn login_form(
    state: &AppState, next: Option<&str>, error: Option<&str>, status: StatusCode,
) -> Response {
    let configured = state.admin_key.is_some();
    let body = layout::bare(
        "Sign in",
        html! {
            main.narrow {
                h1 { "zen-gateway console" }
                @if !configured {
                    p.error role="alert" { "ADMIN_API_KEY is not set, so no one can sign in. Set it and restart the gateway." }
                }
                @if let Some(e) = error {
                    p.error role="alert" { (e) }
                }
                form method="post" action="/console/login" {
                    input type="hidden" name="next" value=(next_path(next));
                    label for="key" { "Admin key" }
                    input #key type="password" name="key" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
                p.hint { "The key is the gateway's ADMIN_API_KEY." }
            }
        },
    );
    (status, body).into_response()
}

async fn login(State(state): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let form = FormFields::parse(&body);
    let next = form.get("next");
    let addr = state.client_ip(crate::http::extract::peer(&parts), &parts.headers);
    let limited = |state: &AppState, wait: crate::http::attempts::RetryAfter| {
        metrics::counter!("zen_console_sign_ins_total", "outcome" => "limited").increment(1);
        let mut resp = login_form(
            state,
            next.as_deref(),
            Some("Too many attempts. Wait a minute and try again."),
            StatusCode::TOO_MANY_REQUESTS,
        );
        if let Ok(v) = HeaderValue::from_str(&wait.secs().to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    };
    // Refused before the key is looked at: past the limit a right guess
    // looks like any other.
    if let Err(wait) = state.attempts.check(addr) {
        return limited(&state, wait);
    }
    if state.admin_key.is_none() {
        return login_form(
            &state,
            next.as_deref(),
            None,
            StatusCode::SERVICE_UNAVAILABLE,
        );
    }
    let key = form.get("key").unwrap_or_default();
    if !state.console.key_matches(&key) {
        metrics::counter!("zen_console_sign_ins_total", "outcome" => "wrong_key").increment(1);
        tracing::warn!(client = %addr, "console sign-in with a wrong key");
        if let Err(wait) = state.attempts.fail(addr) {
            return limited(&state, wait);
        }
        return login_form(
            &state,
            next.as_deref(),
            Some("That is not the admin key."),
            StatusCode::UNAUTHORIZED,
        );
    }
    match state.console.sign_in(&parts.headers).await {
        Ok(Some(cookie)) => {
            metrics::counter!("zen_console_sign_ins_total", "outcome" => "success").increment(1);
            tracing::info!(client = %addr, "console sign-in");
            let mut resp = Redirect::to(next_path(next.as_deref())).into_response();
            resp.headers_mut().insert(header::SET_COOKIE, cookie);
            resp
        }
        Ok(None) => login_form(
            &state,
            next.as_deref(),
            None,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        Err(e) => ConsoleError::from(e).into_response(),
    }
}

async fn logout(
    Operator(session): Operator, State(state): State<AppState>, headers: HeaderMap, body: Bytes,
) -> PageResult {
    FormFields::checked_for(&session, &body)?;
    let cookie = state.console.sign_out(&session, &headers).await?;
    tracing::info!("console sign-out");
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
        .into_response()
}
