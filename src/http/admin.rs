//! The admin API under `/api/v1` (bearer `ADMIN_API_KEY`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{Admin, ApiJson, ApiQuery};
use super::params::{self, given};
use crate::error::ApiError;
use crate::model::Status;
use crate::model::{Bsp, MessageRecord, OutboundRegistration, UnrecognizedEvent};
use crate::store::{MessageCursor, MessagePage, MessageQuery, MessageStats, StatsQuery};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_message, list_messages))
        .routes(routes!(get_message))
        .routes(routes!(get_contact))
        .routes(routes!(stats))
        .routes(routes!(unrecognized))
        .routes(routes!(notifications))
}

/// `GET /api/v1/stats` filters; times are RFC 3339.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatsParams {
    project_owner_id: Option<String>,
    campaign_id: Option<String>,
    /// The provider, as in its route.
    #[param(value_type = Option<Bsp>)]
    bsp: Option<String>,
    /// `created_at >= from` (RFC 3339)
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    from: Option<String>,
    /// `created_at < to` (RFC 3339)
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    to: Option<String>,
}

/// Message counts by current status.
#[utoipa::path(get, path = "/stats", tag = "messages", params(StatsParams),
    security(("admin" = [])),
    responses((status = 200, body = MessageStats), (status = 400, description = "Invalid input; the message names the field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn stats(
    _: Admin, State(state): State<AppState>, ApiQuery(p): ApiQuery<StatsParams>,
) -> Result<Json<MessageStats>, ApiError> {
    let query = StatsQuery {
        project_owner_id: given(p.project_owner_id),
        campaign_id: given(p.campaign_id),
        bsp: params::provider("bsp", p.bsp)?,
        from: params::time("from", p.from)?,
        to: params::time("to", p.to)?,
    };
    Ok(Json(state.store.stats(&query).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// 1 to 500, default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

/// Bodies no provider adapter understood, newest first.
#[utoipa::path(get, path = "/unrecognized", tag = "messages", params(ListParams),
    security(("admin" = [])),
    responses((status = 200, body = Vec<UnrecognizedEvent>), (status = 400, description = "Invalid input; the message names the field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn unrecognized(
    _: Admin, State(state): State<AppState>, ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Vec<UnrecognizedEvent>>, ApiError> {
    let limit = params::page_limit(p.limit)?;
    Ok(Json(state.store.list_unrecognized(limit).await?))
}

/// `GET /api/v1/notifications` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct NotificationParams {
    /// The provider, as in its route (`meta`, `gupshup`, …).
    #[param(value_type = Option<Bsp>)]
    bsp: Option<String>,
    /// `message_template_status_update`, `account_alerts`, `account_update`,
    /// `phone_number_quality_update`, `errors`, or a provider's own type.
    kind: Option<String>,
    /// 1 to 500, default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

/// Provider notifications that are not about one message (template status,
/// account alerts and updates, quality updates, out-of-band errors), newest
/// first.
#[utoipa::path(get, path = "/notifications", tag = "messages", params(NotificationParams),
    security(("admin" = [])),
    responses((status = 200, body = Vec<crate::model::Notification>), (status = 400, description = "Invalid input; the message names the field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn notifications(
    _: Admin, State(state): State<AppState>, ApiQuery(p): ApiQuery<NotificationParams>,
) -> Result<Json<Vec<crate::model::Notification>>, ApiError> {
    let query = crate::store::NotificationQuery {
        bsp: params::provider("bsp", p.bsp)?,
        kind: given(p.kind),
        limit: params::page_limit(p.limit)?,
    };
    Ok(Json(state.store.list_notifications(&query).await?))
}

/// `GET /api/v1/messages` filters and paging.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct MessagesParams {
    phone_number: Option<String>,
    /// A business-scoped user id (`IN.1502576394655843`): that user's
    /// messages, under every user id their contact had.
    user_id: Option<String>,
    campaign_id: Option<String>,
    project_owner_id: Option<String>,
    /// `sent`, `delivered`, `read`, `played`, `failed`, `accepted` or `received`.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    /// `created_at >= from` (RFC 3339)
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    from: Option<String>,
    /// `created_at < to` (RFC 3339)
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    to: Option<String>,
    /// 1 to 500, default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page, unchanged.
    #[param(pattern = "^[0-9]{1,15}-[0-9A-Za-z]{1,64}$")]
    cursor: Option<String>,
}

/// Tracked messages, newest first, one page at a time.
#[utoipa::path(get, path = "/messages", tag = "messages", params(MessagesParams),
    security(("admin" = [])),
    responses((status = 200, body = MessagePage), (status = 400, description = "Invalid input; the message names the field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn list_messages(
    _: Admin, State(state): State<AppState>, ApiQuery(p): ApiQuery<MessagesParams>,
) -> Result<Json<MessagePage>, ApiError> {
    let after = p
        .cursor
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
        status: params::status(p.status)?.map(|s| s.as_str().to_owned()),
        from: params::time("from", p.from)?,
        to: params::time("to", p.to)?,
        limit: params::page_limit(p.limit)?,
        after,
        user_ids: match given(p.user_id) {
            Some(id) => state.contacts.user_ids_of(&id).await?,
            None => Vec::new(),
        },
    };
    Ok(Json(state.store.list_messages(&query).await?))
}

/// One message record, by wamid, provider message id or `message_id`.
#[utoipa::path(get, path = "/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "wamid, provider message id or message_id")),
    security(("admin" = [])),
    responses((status = 200, body = MessageRecord),
        (status = 404, description = "No such message", body = crate::http::openapi::ErrorBody), (status = 400, description = "Invalid input; the message names the field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn get_message(
    _: Admin, State(state): State<AppState>, Path(id): Path<String>,
) -> Result<Json<MessageRecord>, ApiError> {
    state
        .store
        .find_message(&id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("message"))
}

/// Which business number's contact, when a user talks to several.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ContactParams {
    /// The business's number (as the provider sends it); without it, the
    /// contact updated last.
    business_number: Option<String>,
}

/// A WhatsApp user's contact, by any identifier they ever had here: phone
/// number, business-scoped user id, parent user id or username. Their
/// messages: `GET /messages?user_id=` (or `?phone_number=`).
#[utoipa::path(get, path = "/contacts/{id}", tag = "contacts",
    params(("id" = String, Path, description = "phone, BSUID (`IN.1502576394655843`), parent BSUID or username"), ContactParams),
    security(("admin" = [])),
    responses((status = 200, body = crate::contacts::Contact),
        (status = 404, description = "No such contact", body = crate::http::openapi::ErrorBody), (status = 400, description = "Invalid input; the message names the field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn get_contact(
    _: Admin, State(state): State<AppState>, Path(id): Path<String>,
    ApiQuery(p): ApiQuery<ContactParams>,
) -> Result<Json<crate::contacts::Contact>, ApiError> {
    let business = given(p.business_number);
    state
        .contacts
        .find_contact(&id, business.as_deref())
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("contact"))
}

/// An outbound message as the sending side registers it.
#[derive(Debug, Deserialize, ToSchema)]
struct RegisterMessageIn {
    /// The provider's name, as in its route (`datagen`, `meta`, …).
    #[schema(value_type = Bsp)]
    bsp: String,
    /// The wamid; this or `bsp_message_id` is required.
    #[schema(min_length = 1, pattern = "[^\\x00-\\x20]")]
    wamid: Option<String>,
    /// The provider's own message id.
    #[schema(min_length = 1, pattern = "[^\\x00-\\x20]")]
    bsp_message_id: Option<String>,
    phone_number: Option<String>,
    business_number: Option<String>,
    campaign_id: Option<String>,
    project_id: Option<String>,
    project_owner_id: Option<String>,
    /// The provider's own fields, kept on the record.
    #[schema(value_type = Option<Object>)]
    bsp_data: Option<Value>,
}

/// Registers (or completes) an outbound message with its campaign and
/// owner context; events before or after it land on the same record.
#[utoipa::path(post, path = "/messages", tag = "messages", request_body = RegisterMessageIn,
    security(("admin" = [])),
    responses((status = 201, description = "Created", body = MessageRecord),
        (status = 200, description = "Already known; completed", body = MessageRecord),
        (status = 422, description = "Invalid field", body = crate::http::openapi::ErrorBody), (status = 400, description = "Invalid input; the message names the field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin key", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = crate::http::openapi::ErrorBody)))]
async fn register_message(
    _: Admin, State(state): State<AppState>, ApiJson(input): ApiJson<RegisterMessageIn>,
) -> Result<impl IntoResponse, ApiError> {
    let bsp = Bsp::parse(&input.bsp).ok_or_else(|| {
        let known: Vec<&str> = Bsp::ALL.iter().map(|b| b.as_str()).collect();
        ApiError::Unprocessable(format!(
            "bsp: unknown provider {:?} (expected one of {})",
            input.bsp,
            known.join(", ")
        ))
    })?;
    for (field, id) in [
        ("wamid", &input.wamid),
        ("bsp_message_id", &input.bsp_message_id),
    ] {
        if id.as_deref().is_some_and(crate::model::is_blank) {
            return Err(ApiError::Unprocessable(format!(
                "{field}: must not be blank (leave it out instead)"
            )));
        }
    }
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
