//! The admin API under `/api/v1` (bearer `ADMIN_API_KEY`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::extract::{Admin, ApiJson};
use crate::error::ApiError;
use crate::model::Status;
use crate::model::{Bsp, MessageRecord, OutboundRegistration, UnrecognizedEvent};
use crate::store::{MessageCursor, MessagePage, MessageQuery, MessageStats, StatsQuery};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/messages", post(register_message).get(list_messages))
        .route("/messages/{id}", get(get_message))
        .route("/stats", get(stats))
        .route("/unrecognized", get(unrecognized))
}

/// `GET /api/v1/stats` filters; times are RFC 3339.
#[derive(Debug, Deserialize)]
struct StatsParams {
    project_owner_id: Option<String>,
    campaign_id: Option<String>,
    bsp: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

fn parse_time(field: &str, v: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.filter(|s| !s.is_empty())
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::BadRequest(format!("{field}: not an RFC 3339 time: {e}")))
        })
        .transpose()
}

async fn stats(
    _: Admin,
    State(state): State<AppState>,
    Query(p): Query<StatsParams>,
) -> Result<Json<MessageStats>, ApiError> {
    let bsp = p
        .bsp
        .filter(|b| !b.is_empty())
        .map(|b| {
            Bsp::parse(&b)
                .ok_or_else(|| ApiError::BadRequest(format!("bsp: unknown provider {b:?}")))
        })
        .transpose()?;
    let query = StatsQuery {
        project_owner_id: p.project_owner_id.filter(|s| !s.is_empty()),
        campaign_id: p.campaign_id.filter(|s| !s.is_empty()),
        bsp,
        from: parse_time("from", p.from)?,
        to: parse_time("to", p.to)?,
    };
    Ok(Json(state.store.stats(&query).await?))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<usize>,
}

async fn unrecognized(
    _: Admin,
    State(state): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<Vec<UnrecognizedEvent>>, ApiError> {
    let limit = p.limit.unwrap_or(50).clamp(1, 500);
    Ok(Json(state.store.list_unrecognized(limit).await?))
}

/// `GET /api/v1/messages` filters and paging.
#[derive(Debug, Deserialize)]
struct MessagesParams {
    phone_number: Option<String>,
    campaign_id: Option<String>,
    project_owner_id: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// An empty parameter is the same as an absent one.
fn given(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

async fn list_messages(
    _: Admin,
    State(state): State<AppState>,
    Query(p): Query<MessagesParams>,
) -> Result<Json<MessagePage>, ApiError> {
    let limit = match given(p.limit) {
        None => 50,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "limit: must be a whole number from 1 to 500, got {l:?}"
                )));
            }
        },
    };
    let status = given(p.status)
        .map(|s| {
            Status::parse(&s).map(|st| st.as_str().to_owned()).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "status: unknown status {s:?} (expected sent, delivered, read, failed, accepted or received)"
                ))
            })
        })
        .transpose()?;
    let after = given(p.cursor)
        .map(|c| {
            MessageCursor::decode(&c).ok_or_else(|| {
                ApiError::BadRequest(
                    "cursor: not a cursor this API returned (pass next_cursor back unchanged)"
                        .into(),
                )
            })
        })
        .transpose()?;
    let query = MessageQuery {
        phone_number: given(p.phone_number),
        campaign_id: given(p.campaign_id),
        project_owner_id: given(p.project_owner_id),
        status,
        limit,
        after,
    };
    Ok(Json(state.store.list_messages(&query).await?))
}

async fn get_message(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MessageRecord>, ApiError> {
    state
        .store
        .find_message(&id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("message"))
}

/// An outbound message as the sending side registers it.
#[derive(Debug, Deserialize)]
struct RegisterMessageIn {
    /// `datagen`, `aisensy`, `karix` or `meta`.
    bsp: String,
    wamid: Option<String>,
    bsp_message_id: Option<String>,
    phone_number: Option<String>,
    business_number: Option<String>,
    campaign_id: Option<String>,
    project_id: Option<String>,
    project_owner_id: Option<String>,
    bsp_data: Option<Value>,
}

async fn register_message(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<RegisterMessageIn>,
) -> Result<impl IntoResponse, ApiError> {
    let bsp = Bsp::parse(&input.bsp).ok_or_else(|| {
        ApiError::Unprocessable(format!(
            "bsp: unknown provider {:?} (expected datagen, aisensy, karix or meta)",
            input.bsp
        ))
    })?;
    if input.bsp_data.as_ref().is_some_and(|d| !d.is_object()) {
        return Err(ApiError::Unprocessable(
            "bsp_data: must be an object".into(),
        ));
    }
    let registration = OutboundRegistration {
        bsp,
        wamid: input.wamid,
        bsp_message_id: input.bsp_message_id,
        phone_number: input.phone_number,
        business_number: input.business_number,
        campaign_id: input.campaign_id,
        project_id: input.project_id,
        project_owner_id: input.project_owner_id,
        bsp_data: input.bsp_data,
    };
    if registration.key().is_none() {
        return Err(ApiError::Unprocessable(
            "wamid: a wamid or a bsp_message_id is required".into(),
        ));
    }
    let (record, created) = state.store.register(&registration).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)))
}
