//! The quarantine under `/api/v1/quarantine` (admin key): inbox entries the
//! processor set aside after they failed again and again, and their replay.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{Admin, ApiQuery, OptionalJson};
use super::params;
use crate::error::ApiError;
use crate::queue::{QuarantinedEntry, QueueError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_quarantine))
        .routes(routes!(replay_quarantine))
}

/// `GET /api/v1/quarantine` page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// 1 to 500, default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `event_id` of the last entry of the previous page.
    after: Option<String>,
}

/// The inbox's failures come with backend detail that stays in the log.
fn unavailable(e: QueueError) -> ApiError {
    tracing::warn!(error = %e, "quarantine request failed");
    ApiError::Unavailable("the inbox")
}

/// Quarantined inbox entries, newest first, with their error and body.
#[utoipa::path(get, path = "/quarantine", tag = "messages", params(ListParams),
    security(("admin" = [])),
    responses((status = 200, body = Vec<QuarantinedEntry>), (status = 400, description = "Invalid input; the message names the field", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The inbox is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn list_quarantine(
    _: Admin, State(state): State<AppState>, ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Vec<QuarantinedEntry>>, ApiError> {
    let limit = params::page_limit(p.limit)?;
    let after = params::given(p.after);
    let entries = state
        .inbox
        .list_quarantined(limit, after.as_deref())
        .await
        .map_err(unavailable)?;
    Ok(Json(entries))
}

#[derive(Debug, Deserialize, Default, ToSchema)]
struct ReplayIn {
    /// Event ids; absent = all.
    ids: Option<Vec<String>>,
}

/// Puts quarantined entries back into the inbox, to be processed again
/// (with fresh attempts): the given event ids, or all without a body (or
/// with `null`, or with no `ids`).
#[utoipa::path(post, path = "/quarantine/replay", tag = "messages", request_body(content = Option<ReplayIn>),
    security(("admin" = [])),
    responses((status = 200, description = "`{\"replayed\":N}`", body = Object), (status = 400, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 422, description = "Invalid field; the message names it", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The inbox is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn replay_quarantine(
    _: Admin, State(state): State<AppState>, OptionalJson(body): OptionalJson<ReplayIn>,
) -> Result<impl IntoResponse, ApiError> {
    let input = body.unwrap_or_default();
    let n = state
        .inbox
        .replay_quarantined(input.ids.as_deref())
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({"replayed": n})))
}
