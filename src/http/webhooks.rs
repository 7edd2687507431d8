//! The legacy webhook routes. Each answers 200 with the legacy body only once
//! the raw body is durable in the inbox.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::AppState;
use super::extract::WebhookBody;
use crate::error::ApiError;
use crate::model::Bsp;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhook/datagen", post(datagen))
        .route("/datagen-webhook", post(datagen))
        .route("/webhook/aisensy", post(aisensy))
        .route("/partner-webhook", post(aisensy))
        .route("/webhook/karix", post(karix))
}

/// The legacy 200 body for `bsp`, byte for byte.
fn legacy_ack(bsp: Bsp) -> Response {
    let body: &'static str = match bsp {
        Bsp::Datagen => r#"{"status":200,"message":"Datagen webhook received successfully"}"#,
        Bsp::Aisensy => r#"{"status":200,"message":"Aisensy webhook received successfully"}"#,
        Bsp::Karix => r#"{"status":200,"message":"Karix webhook received successfully"}"#,
        Bsp::Meta => r#"{"status":200,"message":"Meta webhook received successfully"}"#,
    };
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn accept(state: &AppState, bsp: Bsp, body: WebhookBody) -> Result<Response, ApiError> {
    let event_id = state.ingest.accept(bsp, body.0).await?;
    tracing::debug!(event.id = %event_id, %bsp, "webhook accepted");
    Ok(legacy_ack(bsp))
}

async fn datagen(State(state): State<AppState>, body: WebhookBody) -> Result<Response, ApiError> {
    accept(&state, Bsp::Datagen, body).await
}

async fn aisensy(State(state): State<AppState>, body: WebhookBody) -> Result<Response, ApiError> {
    accept(&state, Bsp::Aisensy, body).await
}

async fn karix(State(state): State<AppState>, body: WebhookBody) -> Result<Response, ApiError> {
    accept(&state, Bsp::Karix, body).await
}
