//! A WhatsApp user's contact: who they are (by every identifier they had
//! with the business), their marketing preference, and their messages.

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Section};
use super::session::Operator;
use super::{ConsoleError, PageResult};
use crate::error::ApiError;
use crate::http::AppState;
use crate::store::MessageQuery;

/// Messages shown on a contact's page, newest first.
const MESSAGES: usize = 50;

#[derive(Debug, Default, Deserialize)]
pub struct ContactQuery {
    business_number: Option<String>,
}

/// The link to the contact of a user seen on a record.
pub fn href(id: &str, business_number: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "/console/contacts/{}?business_number={}",
        enc(id),
        enc(business_number)
    )
}

/// `GET /console/contacts/{id}`: by phone, BSUID, parent BSUID or username.
pub async fn show(
    Operator(session): Operator, State(state): State<AppState>, Path(id): Path<String>,
    Query(p): Query<ContactQuery>,
) -> PageResult {
    let business = p
        .business_number
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty());
    let Some(c) = state.contacts.find_contact(&id, business).await? else {
        return Err(ConsoleError::Api(ApiError::NotFound("contact")));
    };
    let user_ids = c.user_ids();
    // By user id when Meta gave one, else by the phone number.
    let query = MessageQuery {
        phone_number: user_ids
            .is_empty()
            .then(|| c.current.phone.clone())
            .flatten(),
        limit: MESSAGES,
        user_ids,
        ..Default::default()
    };
    let messages = if query.phone_number.is_none() && query.user_ids.is_empty() {
        Vec::new()
    } else {
        state.store.list_messages(&query).await?.items
    };
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
    let content = html! {
        h2 { "Contact " code { (c.contact_id) } }
        dl.facts {
            dt { "Business number" } dd { (c.business_number) }
            dt { "Phone" } dd { (dash(&c.current.phone)) }
            dt { "User id (BSUID)" } dd { (dash(&c.current.user_id)) }
            dt { "Parent user id" } dd { (dash(&c.current.parent_user_id)) }
            dt { "Username" } dd { (dash(&c.current.username)) }
            dt { "Marketing messages" } dd {
                @match &c.marketing_preference {
                    Some(m) => {
                        span class=(format!("status {}", m.value)) { (m.value) }
                        " since " (layout::time(m.at))
                        @if let Some(d) = &m.detail { " — " (d) }
                    },
                    None => "no preference received",
                }
            }
            dt { "First seen" } dd { (layout::time(c.created_at)) }
            dt { "Updated" } dd { (layout::time(c.updated_at)) }
        }
        table {
            caption { "Every identifier this user had here" }
            thead { tr { th scope="col" { "Kind" } th scope="col" { "Value" } th scope="col" { "First seen" } th scope="col" { "Last seen" } } }
            tbody {
                @for i in &c.identifiers {
                    tr { td { (i.kind) } td { (i.value) } td { (layout::time(i.first_seen)) } td { (layout::time(i.last_seen)) } }
                }
            }
        }
        @if !c.changes.is_empty() {
            table {
                caption { "Reported changes" }
                thead { tr { th scope="col" { "Kind" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "At" } } }
                tbody {
                    @for ch in &c.changes {
                        tr { td { (ch.kind) } td { (ch.from) } td { (ch.to) } td { (layout::time(ch.at)) } }
                    }
                }
            }
        }
        @if messages.is_empty() {
            p { "No messages of this user are kept." }
        } @else {
            table {
                caption { "Their messages, newest first" }
                thead { tr { th scope="col" { "Message" } th scope="col" { "Direction" } th scope="col" { "Status" } th scope="col" { "Created" } } }
                tbody {
                    @for m in &messages {
                        tr {
                            td { a href=(format!("/console/messages/{}", url::form_urlencoded::byte_serialize(m.message_id.as_bytes()).collect::<String>())) {
                                (m.wamid.as_deref().or(m.bsp_message_id.as_deref()).unwrap_or(&m.message_id)) } }
                            td { (format!("{:?}", m.direction).to_lowercase()) }
                            td { span class=(format!("status {}", m.current_status)) { (m.current_status) } }
                            td { (layout::time(m.created_at)) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page("Contact", &session, Section::Messages, content).into_response())
}
