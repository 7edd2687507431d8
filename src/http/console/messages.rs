//! Finding a message and reading its timeline.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use maud::html;
use serde::Deserialize;

use super::layout::{self, Section};
use super::session::Operator;
use super::{ConsoleError, PageResult, parse_time, time_field};
use crate::error::ApiError;
use crate::http::AppState;
use crate::model::{MessageRecord, Status};
use crate::store::{MessageCursor, MessageQuery};

const PAGE: usize = 50;
/// Deliveries shown on a message's page (its events × webhooks).
const DELIVERIES: usize = 200;

#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
    campaign: Option<String>,
    owner: Option<String>,
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
}

fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `GET /console/messages`: by wamid, provider id or phone number, with
/// filters; newest first, paged.
pub async fn search(
    Operator(session): Operator, State(state): State<AppState>, Query(p): Query<SearchQuery>,
) -> PageResult {
    let status = given(&p.status)
        .map(|s| {
            Status::parse(&s)
                .map(|st| st.as_str().to_owned())
                .ok_or_else(|| ApiError::BadRequest(format!("status: unknown status {s:?}")))
        })
        .transpose()?;
    let from = parse_time("from", p.from.as_deref())?;
    let to = parse_time("to", p.to.as_deref())?;
    let after = given(&p.cursor)
        .map(|c| {
            MessageCursor::decode(&c)
                .ok_or_else(|| ApiError::BadRequest("cursor: not one this page made".into()))
        })
        .transpose()?;
    let q = given(&p.q);
    // An id finds its one message; anything else is a phone number.
    let exact = match &q {
        Some(id) if after.is_none() => state.store.find_message(id).await?,
        _ => None,
    };
    let (items, next) = match exact {
        Some(record) => (vec![record], None),
        None => {
            let page = state
                .store
                .list_messages(&MessageQuery {
                    phone_number: q.clone(),
                    campaign_id: given(&p.campaign),
                    project_owner_id: given(&p.owner),
                    status: status.clone(),
                    from,
                    to,
                    limit: PAGE,
                    after,
                    user_ids: Vec::new(),
                })
                .await?;
            (page.items, page.next_cursor)
        }
    };
    let next_href = next.map(|c| {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("q", &p.q),
            ("campaign", &p.campaign),
            ("owner", &p.owner),
            ("status", &p.status),
            ("from", &p.from),
            ("to", &p.to),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                url.append_pair(k, v);
            }
        }
        url.append_pair("cursor", &c);
        format!("/console/messages?{}", url.finish())
    });
    let searched = q.is_some()
        || [&p.campaign, &p.owner, &p.status, &p.from, &p.to]
            .iter()
            .any(|v| given(v).is_some());
    let statuses = [
        "sent",
        "delivered",
        "read",
        "played",
        "failed",
        "accepted",
        "received",
    ];
    let content = html! {
        form.filters method="get" action="/console/messages" role="search" {
            div.field.wide {
                label for="q" { "Wamid, provider message id or phone number" }
                input #q type="search" name="q" value=[p.q.as_deref()] autofocus;
            }
            div.field { label for="campaign" { "Campaign" } input #campaign name="campaign" value=[p.campaign.as_deref()]; }
            div.field { label for="owner" { "Owner (project_owner_id)" } input #owner name="owner" value=[p.owner.as_deref()]; }
            div.field {
                label for="status" { "Status" }
                select #status name="status" {
                    option value="" { "any" }
                    @for s in statuses {
                        option value=(s) selected[status.as_deref() == Some(s)] { (s) }
                    }
                }
            }
            div.field { label for="from" { "Created from (UTC)" } input #from type="datetime-local" name="from" value=(time_field(from)); }
            div.field { label for="to" { "Created before (UTC)" } input #to type="datetime-local" name="to" value=(time_field(to)); }
            div.field { button type="submit" { "Search" } }
        }
        @if items.is_empty() {
            p { @if searched { "No message matches." } @else { "No messages yet." } }
        } @else {
            table {
                caption { "Messages, newest first" }
                thead { tr { th scope="col" { "Message" } th scope="col" { "Provider" } th scope="col" { "Phone" }
                    th scope="col" { "Status" } th scope="col" { "Campaign" } th scope="col" { "Owner" } th scope="col" { "Created" } th scope="col" { "Updated" } } }
                tbody {
                    @for m in &items {
                        tr {
                            td { a href=(message_href(m)) { (m.wamid.as_deref().or(m.bsp_message_id.as_deref()).unwrap_or(&m.message_id)) } }
                            td { (m.bsp) }
                            td { (m.phone_number) }
                            td { span class=(format!("status {}", m.current_status)) { (m.current_status) } }
                            td { (m.campaign_id.as_deref().unwrap_or("")) }
                            td { (m.project_owner_id) }
                            td { (layout::time(m.created_at)) }
                            td { (layout::time(m.updated_at)) }
                        }
                    }
                }
            }
        }
        @if let Some(href) = next_href {
            p { a href=(href) rel="next" { "Older messages →" } }
        }
    };
    Ok(layout::page("Messages", &session, Section::Messages, content).into_response())
}

fn message_href(m: &MessageRecord) -> String {
    format!(
        "/console/messages/{}",
        url::form_urlencoded::byte_serialize(m.message_id.as_bytes()).collect::<String>()
    )
}

/// When the gateway received an event: its id is a UUIDv7 made on receipt.
fn received_at(event_id: &str) -> Option<DateTime<Utc>> {
    let id = uuid::Uuid::parse_str(event_id.get(..36)?).ok()?;
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(secs as i64, nanos)
}

/// `GET /console/messages/{id}`: the record, its timeline, the raw events
/// as forwarded, and their deliveries.
pub async fn show(
    Operator(session): Operator, State(state): State<AppState>, Path(id): Path<String>,
) -> PageResult {
    let Some(m) = state.store.find_message(&id).await? else {
        return Err(ConsoleError::Api(ApiError::NotFound("message")));
    };
    // The user's contact: by the id Meta gave, else the phone number.
    let user_link = m
        .recipient
        .as_ref()
        .and_then(|r| r.user_id.clone().or_else(|| r.username.clone()))
        .or_else(|| Some(m.phone_number.clone()).filter(|p| !p.is_empty()))
        .map(|id| {
            let href = super::contacts::href(&id, &m.business_number);
            (id, href)
        });
    let mut history = m.status_history.clone();
    history.sort_by_key(|e| e.timestamp);
    let mut event_ids: Vec<String> = history
        .iter()
        .map(|e| e.event_id.clone())
        .filter(|e| !e.is_empty())
        .collect();
    event_ids.sort();
    event_ids.dedup();
    let deliveries = state
        .forwarding
        .webhooks()
        .deliveries_of_events(&event_ids, DELIVERIES)
        .await?;
    // One raw event per gateway event: the payload its deliveries carry.
    let mut raw: Vec<(&str, &serde_json::Value)> = Vec::new();
    for d in &deliveries {
        if !raw.iter().any(|(e, _)| *e == d.event_id) {
            raw.push((&d.event_id, &d.payload));
        }
    }
    let title = format!(
        "Message {}",
        m.wamid.as_deref().unwrap_or(m.message_id.as_str())
    );
    let content = html! {
        dl.summary {
            dt { "Status" } dd { span class=(format!("status {}", m.current_status)) { (m.current_status) } }
            dt { "Provider" } dd { (m.bsp) }
            dt { "wamid" } dd { (m.wamid.as_deref().unwrap_or("—")) }
            dt { "Provider message id" } dd { (m.bsp_message_id.as_deref().unwrap_or("—")) }
            dt { "message_id" } dd { (m.message_id) }
            dt { "Phone" } dd { (m.phone_number) }
            @if let Some(user) = user_link {
                dt { "User" } dd { a href=(user.1) { (user.0) } }
            }
            dt { "Business number" } dd { (m.business_number) }
            dt { "Campaign" } dd { (m.campaign_id.as_deref().unwrap_or("—")) }
            dt { "Owner" } dd { (m.project_owner_id) }
            dt { "Created" } dd { (layout::time(m.created_at)) }
            dt { "Updated" } dd { (layout::time(m.updated_at)) }
        }
        h2 { "Timeline" }
        @if history.is_empty() {
            p { "No status events yet (registered only)." }
        } @else {
            table {
                caption { "Status events, in provider time" }
                thead { tr { th scope="col" { "Status" } th scope="col" { "Provider time" } th scope="col" { "Received" }
                    th scope="col" { "Raw status" } th scope="col" { "Error code" } th scope="col" { "Reason" } th scope="col" { "Source" } } }
                tbody {
                    @for e in &history {
                        tr {
                            td { span class=(format!("status {}", e.status)) { (e.status) }
                                 @if e.collapsed > 0 { " (+" (e.collapsed) " alike)" } }
                            td { (layout::time(e.timestamp)) }
                            td { (layout::time_opt(received_at(&e.event_id))) }
                            td { (e.raw_status.as_deref().unwrap_or("")) }
                            td { (e.error_code.as_deref().unwrap_or("")) }
                            td { (e.reason.as_deref().unwrap_or("")) }
                            td { (e.source) }
                        }
                    }
                }
            }
        }
        h2 { "Deliveries to client webhooks" }
        @if deliveries.is_empty() {
            p { "None: no client webhook wanted this message's events." }
        } @else {
            table {
                thead { tr { th scope="col" { "Created" } th scope="col" { "Event" } th scope="col" { "Webhook" }
                    th scope="col" { "Status" } th scope="col" { "Attempts" } th scope="col" { "Response" } th scope="col" { "Error" } } }
                tbody {
                    @for d in &deliveries {
                        tr {
                            td { (layout::time(d.created_at)) }
                            td { (d.event_type) }
                            td { a href=(format!("/console/webhooks/{}", d.webhook_id)) { (d.webhook_url) } }
                            td { (format!("{:?}", d.status).to_lowercase()) }
                            td { (d.attempt_count) }
                            td { (d.status_code.map(|c| c.to_string()).unwrap_or_default()) }
                            td { (d.error_message.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        h2 { "Raw provider events" }
        @if raw.is_empty() {
            p { "The raw events are kept with their deliveries; this message has none." }
        }
        @for (event, payload) in &raw {
            details {
                summary { "Event " (event) }
                pre { (layout::json(payload)) }
            }
        }
        @if let Some(data) = &m.bsp_data {
            details { summary { "Provider data (bsp_data)" } pre { (layout::json(data)) } }
        }
    };
    Ok((
        StatusCode::OK,
        layout::page(&title, &session, Section::Messages, content),
    )
        .into_response())
}
