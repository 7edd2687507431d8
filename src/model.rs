//! The unified message model: what every provider's webhook is normalized to,
//! and the one record per WhatsApp message that events are applied to.
//!
//! The rules of DESIGN §3 live here, as pure functions, so that every store
//! backend applies them the same way:
//! - `current_status` never moves backwards by the order
//!   `accepted < sent < failed < delivered < read`;
//! - every event goes into `status_history`, once (duplicates are no-ops);
//! - `*_at` fields carry the provider's event time (the earliest one seen for
//!   that status, so that arrival order does not matter);
//! - unknown statuses are recorded in history and change nothing else.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::providers::Bsp;

/// Whether an identifier or name is blank: nothing above U+0020 in it.
/// The API document states the same rule as the pattern `[^\x00-\x20]`,
/// which every regex dialect reads alike (`\s` and `trim` do not agree on
/// what white space is).
pub fn is_blank(s: &str) -> bool {
    !s.chars().any(|c| c > ' ')
}

/// A unified message status. The declaration order is the precedence order:
/// a status only replaces `current_status` when it ranks higher.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Accepted,
    /// An inbound (customer → business) message; it has no outbound lifecycle.
    Received,
    Sent,
    /// Ranks above `sent` and below `delivered`: multi-device users produce a
    /// `delivered` after a `failed`, and that later success wins.
    Failed,
    Delivered,
    Read,
    /// A voice message was played: it was read before, so it ranks above
    /// `read` (a late `read` never takes its place).
    Played,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Received => "received",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Delivered => "delivered",
            Status::Read => "read",
            Status::Played => "played",
        }
    }

    /// Parses a unified status name (as stored in `current_status`).
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "accepted" => Status::Accepted,
            "received" => Status::Received,
            "sent" => Status::Sent,
            "failed" => Status::Failed,
            "delivered" => Status::Delivered,
            "read" => Status::Read,
            "played" => Status::Played,
            _ => return None,
        })
    }

    /// The unified forwarding event type for this status.
    pub fn event_type(self) -> &'static str {
        match self {
            Status::Accepted => "message.accepted",
            Status::Received => "message.received",
            Status::Sent => "message.sent",
            Status::Failed => "message.failed",
            Status::Delivered => "message.delivered",
            Status::Read => "message.read",
            Status::Played => "message.played",
        }
    }
}

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Outbound,
    Inbound,
}

/// The unified event type for a status the gateway does not know.
pub const UNKNOWN_STATUS_EVENT_TYPE: &str = "message.unknown";

/// How a message is identified: by its WhatsApp id when the event carries one,
/// else by the provider's own id (Karix `mid` is not a wamid).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageKey {
    Wamid(String),
    Provider { bsp: Bsp, id: String },
}

impl MessageKey {
    /// A stable string form, used to route one message's events to one worker.
    pub fn routing_key(&self) -> String {
        match self {
            MessageKey::Wamid(w) => w.clone(),
            MessageKey::Provider { bsp, id } => format!("{bsp}:{id}"),
        }
    }
}

/// One normalized event out of a provider webhook. One webhook body may
/// carry many (Datagen arrays, Meta batches).
#[derive(Debug, Clone, PartialEq)]
pub struct UnifiedEvent {
    /// Stable id of this event: the ingest event id plus its index in the body.
    pub event_id: String,
    pub bsp: Bsp,
    /// Legacy forwarding type, e.g. `datagen.delivery`, `aisensy.message.status.updated`.
    pub legacy_type: String,
    /// Unified forwarding type, e.g. `message.delivered`, `message.received`.
    pub unified_type: String,
    /// When the gateway received the webhook.
    pub received_at: DateTime<Utc>,
    /// The provider's raw object for this event (forwarded as `data`).
    pub raw: Value,
    /// Present when the event is about a WhatsApp message (status or inbound);
    /// absent for contact / template notifications, which are kept and
    /// forwarded but not tracked as messages.
    pub message: Option<MessageEvent>,
    /// What the event says about a WhatsApp user beyond a message: a
    /// changed number or BSUID, a marketing preference.
    pub contact: Option<ContactEvent>,
}

/// What an event says about a WhatsApp user of one business number: the
/// identifiers seen together now, those it had before a change, and a
/// marketing preference.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactEvent {
    pub business_number: Option<String>,
    pub user: UserIdentity,
    /// The identifiers before a change (empty when nothing changed).
    pub previous: UserIdentity,
    pub preference: Option<MarketingPreference>,
    /// When it happened (the provider's time).
    pub at: DateTime<Utc>,
}

/// A user's choice about marketing messages (`user_preferences`): `stop`
/// must be honoured until a later `resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MarketingPreference {
    /// `stop` or `resume`.
    pub value: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `marketing_messages`, as Meta sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

impl UnifiedEvent {
    /// A copy with what a message record is built from (ids, types, the
    /// message part), without the raw body.
    pub fn for_record(&self) -> UnifiedEvent {
        UnifiedEvent {
            event_id: self.event_id.clone(),
            bsp: self.bsp,
            legacy_type: self.legacy_type.clone(),
            unified_type: self.unified_type.clone(),
            received_at: self.received_at,
            raw: Value::Null,
            message: self.message.clone(),
            contact: None,
        }
    }
}

/// A provider notification that is not about one message: a template's
/// status, an account alert or update, a number's quality, out-of-band
/// errors, a contact event. Kept (listed by the admin API) and forwarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notification {
    /// The gateway event it came in (its forwarding `event_id`).
    pub event_id: String,
    pub bsp: Bsp,
    /// What it is: the Cloud API field (`message_template_status_update`,
    /// `account_alerts`, …), `errors`, or the provider's own type.
    pub kind: String,
    pub received_at: DateTime<Utc>,
    /// The provider's object, as received.
    pub body: Value,
}

impl Notification {
    /// The notification an event is, when it is not about a message.
    pub fn of(ev: &UnifiedEvent) -> Option<Notification> {
        ev.message.is_none().then(|| Notification {
            event_id: ev.event_id.clone(),
            bsp: ev.bsp,
            kind: ev.unified_type.clone(),
            received_at: ev.received_at,
            body: ev.raw.clone(),
        })
    }
}

/// The message-tracking part of an event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessageEvent {
    pub wamid: Option<String>,
    pub bsp_message_id: Option<String>,
    pub direction: Direction,
    /// The customer's number.
    pub phone_number: Option<String>,
    /// The business's own WhatsApp number.
    pub business_number: Option<String>,
    /// Unified status, `None` when the provider's value is unknown.
    pub status: Option<Status>,
    /// The provider's exact status string.
    pub raw_status: Option<String>,
    /// The provider's event time (falls back to receive time when absent).
    pub occurred_at: DateTime<Utc>,
    pub error_code: Option<String>,
    pub reason: Option<String>,
    pub campaign_id: Option<String>,
    pub project_id: Option<String>,
    /// Inbound message content (type, text, media, reply context…).
    pub content: Option<Value>,
    /// Reference echoes of the send request (Karix/Datagen `cust_ref`,
    /// `messageTag1..3`, `conversationId`; Meta `biz_opaque_callback_data`;
    /// AiSensy campaign name), kept under `bsp_data.tags`.
    pub tags: BTreeMap<String, String>,
    /// What the provider says the message costs (Cloud API `pricing` and
    /// `conversation`), kept under `bsp_data.pricing` / `.conversation`, and
    /// a group send's recipient (`group`).
    pub billing: Option<Value>,
    /// The WhatsApp user, as the provider identifies them (Meta's phone,
    /// BSUID, parent BSUID and username).
    pub user: Option<UserIdentity>,
    /// Identifies the event within its message: two events with the same key
    /// are the same event delivered twice.
    pub dedup_key: String,
}

impl MessageEvent {
    /// The key this event's message is stored under, if it has any id at all.
    pub fn key(&self, bsp: Bsp) -> Option<MessageKey> {
        if let Some(w) = self.wamid.as_deref().filter(|w| !w.is_empty()) {
            return Some(MessageKey::Wamid(w.to_owned()));
        }
        self.bsp_message_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .map(|id| MessageKey::Provider {
                bsp,
                id: id.to_owned(),
            })
    }

    /// The value written into `status_history[].status`: the unified status,
    /// or the lower-cased raw value when unknown (as the legacy gateway did).
    pub fn history_status(&self) -> String {
        match (self.status, &self.raw_status) {
            (Some(s), _) => s.as_str().to_owned(),
            (None, Some(raw)) => raw.trim().to_lowercase(),
            (None, None) => "unknown".to_owned(),
        }
    }
}

/// One entry of `status_history` (legacy shape plus `raw_status` / `event_key`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusEntry {
    pub status: String,
    pub source: String,
    pub timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_status: Option<String>,
    /// The event's dedup key within this message; legacy entries have none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_key: String,
    /// The gateway event that recorded this entry (tells a redelivery of
    /// that event apart from a provider's duplicate).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_id: String,
    /// Events folded into this entry when the history was compacted (see
    /// [`HISTORY_CAP`]): each entry stands for `1 + collapsed` events.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub collapsed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The most entries one record's `status_history` keeps. Past it the history
/// is compacted: of each status only the first and the last event stay, the
/// last one counting the rest in `collapsed`; if distinct statuses alone
/// exceed it, the oldest unknown-status entries fold into their successor.
/// So one message's record stays small whatever a provider sends.
pub const HISTORY_CAP: usize = 64;
/// The longest `reason`, `error_code` or raw status kept, in bytes.
pub const TEXT_CAP: usize = 1024;
/// The largest inbound `content` kept whole, in bytes of JSON; larger content
/// is replaced by a stub saying so (the raw event keeps it all).
pub const CONTENT_CAP: usize = 64 * 1024;
/// The most reference tags kept under `bsp_data.tags`.
pub const TAGS_CAP: usize = 32;

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncate_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn capped(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| truncate_text(s, TEXT_CAP))
}

/// Inbound content, or a stub when it is over [`CONTENT_CAP`].
fn capped_content(content: &Value) -> Value {
    let size = serde_json::to_vec(content).map(|v| v.len()).unwrap_or(0);
    if size <= CONTENT_CAP {
        return content.clone();
    }
    let mut stub = serde_json::Map::new();
    if let Some(t) = content.get("type").and_then(Value::as_str) {
        stub.insert("type".into(), Value::String(truncate_text(t, TEXT_CAP)));
    }
    stub.insert("truncated".into(), Value::Bool(true));
    stub.insert("bytes".into(), Value::from(size));
    Value::Object(stub)
}

/// Compacts a history sorted by time to at most [`HISTORY_CAP`] entries,
/// keeping the count of events (`1 + collapsed` per entry).
fn compact_history(history: &mut Vec<StatusEntry>) {
    if history.len() <= HISTORY_CAP {
        return;
    }
    // Of each status, keep the first and the last; the last counts the rest.
    let mut last_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_of: BTreeMap<String, usize> = BTreeMap::new();
    for (i, h) in history.iter().enumerate() {
        first_of.entry(h.status.clone()).or_insert(i);
        last_of.insert(h.status.clone(), i);
    }
    let mut folded: BTreeMap<String, u64> = BTreeMap::new();
    let mut keep = vec![true; history.len()];
    for (i, h) in history.iter().enumerate() {
        if first_of[&h.status] != i && last_of[&h.status] != i {
            keep[i] = false;
            *folded.entry(h.status.clone()).or_default() += 1 + h.collapsed;
        }
    }
    for (status, n) in folded {
        history[last_of[&status]].collapsed += n;
    }
    let mut i = 0;
    history.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    // Still too many distinct statuses: fold the oldest unknown ones (then
    // any) into the entry after them; the first entry always stays.
    while history.len() > HISTORY_CAP {
        let victim = (1..history.len() - 1)
            .find(|&i| Status::parse(&history[i].status).is_none())
            .unwrap_or(1);
        let gone = history.remove(victim);
        history[victim].collapsed += 1 + gone.collapsed;
    }
}

/// The one record per WhatsApp message, in the legacy
/// `unified_message_tracking` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageRecord {
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wamid: Option<String>,
    pub bsp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bsp_message_id: Option<String>,
    #[serde(default)]
    pub phone_number: String,
    #[serde(default)]
    pub business_number: String,
    pub current_status: String,
    #[serde(default)]
    pub status_history: Vec<StatusEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default)]
    pub project_owner_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bsp_data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub played_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
    /// The WhatsApp user of the conversation (the recipient of an outbound
    /// message, the sender of an inbound one) as Meta names them since
    /// 2026: a phone number when it is shared, a business-scoped user id,
    /// its parent, a username. `phone_number` keeps the legacy field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<UserIdentity>,
}

/// How Meta identifies a WhatsApp user: any part may be missing (a user
/// with a username may share no phone number; older providers send only
/// the phone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserIdentity {
    /// The phone number (`wa_id`), when shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The business-scoped user id (BSUID), e.g. `IN.1502576394655843`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The parent BSUID shared across a group of business portfolios, e.g.
    /// `US.ENT.11815799212886844830`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
    /// The user's WhatsApp username, when they have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl UserIdentity {
    pub fn is_empty(&self) -> bool {
        self.phone.is_none()
            && self.user_id.is_none()
            && self.parent_user_id.is_none()
            && self.username.is_none()
    }

    /// Fills the parts not known yet (a part once known stays).
    pub fn fill_from(&mut self, other: &UserIdentity) {
        fill_opt(&mut self.phone, &other.phone);
        fill_opt(&mut self.user_id, &other.user_id);
        fill_opt(&mut self.parent_user_id, &other.parent_user_id);
        fill_opt(&mut self.username, &other.username);
    }
}

/// What applying one event did to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// New event: recorded in history (and the status moved if it ranked higher).
    Applied,
    /// Seen before: nothing changed.
    Duplicate {
        /// The same gateway event was applied before (a redelivery after a
        /// crash), as opposed to the provider sending the event twice.
        redelivery: bool,
    },
}

fn fill(slot: &mut String, value: &Option<String>) {
    if slot.is_empty() {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            *slot = v.to_owned();
        }
    }
}

fn fill_opt(slot: &mut Option<String>, value: &Option<String>) {
    if slot.as_deref().is_none_or(str::is_empty) {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            *slot = Some(v.to_owned());
        }
    }
}

fn earliest(slot: &mut Option<DateTime<Utc>>, at: DateTime<Utc>) {
    if slot.is_none_or(|cur| at < cur) {
        *slot = Some(at);
    }
}

impl MessageRecord {
    /// A new, empty record for a message first seen through `event`.
    pub fn new_for(bsp: Bsp, ev: &MessageEvent, now: DateTime<Utc>) -> MessageRecord {
        MessageRecord {
            message_id: bson::oid::ObjectId::new().to_hex(),
            wamid: ev.wamid.clone().filter(|w| !w.is_empty()),
            bsp: bsp.as_str().to_owned(),
            bsp_message_id: ev.bsp_message_id.clone().filter(|w| !w.is_empty()),
            phone_number: String::new(),
            business_number: String::new(),
            current_status: String::new(),
            status_history: Vec::new(),
            campaign_id: None,
            project_id: None,
            project_owner_id: String::new(),
            bsp_data: None,
            sent_at: None,
            delivered_at: None,
            read_at: None,
            played_at: None,
            failed_at: None,
            created_at: now,
            updated_at: now,
            direction: ev.direction,
            content: None,
            recipient: None,
        }
    }

    /// The current status, when it is one the gateway knows; legacy
    /// pass-through values (e.g. `enqueued`) are `None`, so any known status
    /// replaces them.
    pub fn status(&self) -> Option<Status> {
        Status::parse(&self.current_status)
    }

    /// Applies one event by the rules of DESIGN §3. Idempotent: applying the
    /// same event again returns `Duplicate` and changes nothing.
    pub fn apply(
        &mut self, bsp: Bsp, event_id: &str, ev: &MessageEvent, now: DateTime<Utc>,
    ) -> ApplyOutcome {
        if !ev.dedup_key.is_empty() {
            if let Some(seen) = self
                .status_history
                .iter()
                .find(|h| h.event_key == ev.dedup_key)
            {
                return ApplyOutcome::Duplicate {
                    redelivery: !event_id.is_empty() && seen.event_id == event_id,
                };
            }
        }
        self.status_history.push(StatusEntry {
            status: truncate_text(&ev.history_status(), TEXT_CAP),
            source: bsp.as_str().to_owned(),
            timestamp: ev.occurred_at,
            reason: capped(&ev.reason),
            error_code: capped(&ev.error_code),
            raw_status: ev.raw_status.as_deref().map(|r| truncate_text(r, TEXT_CAP)),
            event_key: ev.dedup_key.clone(),
            event_id: event_id.to_owned(),
            collapsed: 0,
        });
        // Keep history in event-time order whatever the arrival order.
        self.status_history
            .sort_by(|a, b| (a.timestamp, &a.event_key).cmp(&(b.timestamp, &b.event_key)));
        compact_history(&mut self.status_history);

        if let Some(status) = ev.status {
            if self.status().is_none_or(|cur| status > cur) {
                self.current_status = status.as_str().to_owned();
            }
            match status {
                Status::Sent => earliest(&mut self.sent_at, ev.occurred_at),
                Status::Delivered => earliest(&mut self.delivered_at, ev.occurred_at),
                Status::Read => earliest(&mut self.read_at, ev.occurred_at),
                Status::Played => earliest(&mut self.played_at, ev.occurred_at),
                Status::Failed => earliest(&mut self.failed_at, ev.occurred_at),
                Status::Accepted | Status::Received => {}
            }
        } else if self.current_status.is_empty() {
            // First sight of a message through an unknown status: it exists,
            // but nothing is known about where it stands.
            self.current_status = "unknown".to_owned();
        }

        fill_opt(&mut self.wamid, &ev.wamid);
        fill_opt(&mut self.bsp_message_id, &ev.bsp_message_id);
        fill(&mut self.phone_number, &ev.phone_number);
        fill(&mut self.business_number, &ev.business_number);
        fill_opt(&mut self.campaign_id, &ev.campaign_id);
        fill_opt(&mut self.project_id, &ev.project_id);
        if let Some(user) = ev.user.as_ref().filter(|u| !u.is_empty()) {
            self.recipient
                .get_or_insert_with(UserIdentity::default)
                .fill_from(user);
        }
        self.merge_tags(&ev.tags);
        self.merge_billing(ev.billing.as_ref());
        if ev.direction == Direction::Inbound {
            self.direction = Direction::Inbound;
            if self.content.is_none() {
                self.content = ev.content.as_ref().map(capped_content);
            }
        }
        self.updated_at = now;
        ApplyOutcome::Applied
    }

    /// `bsp_data.<key>`, made `empty` first when it is absent or of another
    /// JSON type than `empty` (and `bsp_data` an object when it is not one).
    pub fn bsp_data_entry(&mut self, key: &str, empty: Value) -> Option<&mut Value> {
        let data = self
            .bsp_data
            .get_or_insert_with(|| Value::Object(Default::default()));
        if !data.is_object() {
            *data = Value::Object(Default::default());
        }
        let obj = data.as_object_mut()?;
        let same_type = |v: &Value| std::mem::discriminant(v) == std::mem::discriminant(&empty);
        let slot = obj.entry(key).or_insert_with(|| empty.clone());
        if !same_type(slot) {
            *slot = empty;
        }
        Some(slot)
    }

    /// Adds the billing keys not seen before under `bsp_data.pricing` and
    /// `bsp_data.conversation` (Meta sends `expiration_timestamp` only with
    /// `sent`; later statuses must not erase it).
    fn merge_billing(&mut self, billing: Option<&Value>) {
        let Some(Value::Object(billing)) = billing else {
            return;
        };
        for (key, given) in billing {
            let Value::Object(given) = given else {
                continue;
            };
            let slot = self.bsp_data_entry(key, Value::Object(Default::default()));
            if let Some(kept) = slot.and_then(Value::as_object_mut) {
                for (k, v) in given {
                    kept.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }

    /// Adds tags not seen before under `bsp_data.tags` (first value wins).
    fn merge_tags(&mut self, tags: &BTreeMap<String, String>) {
        if tags.is_empty() {
            return;
        }
        let slot = self.bsp_data_entry("tags", Value::Object(Default::default()));
        if let Some(existing) = slot.and_then(Value::as_object_mut) {
            for (k, v) in tags {
                if existing.len() >= TAGS_CAP {
                    break;
                }
                existing
                    .entry(truncate_text(k, 128))
                    .or_insert_with(|| Value::String(truncate_text(v, TEXT_CAP)));
            }
        }
    }

    /// Fills the fields an outbound registration carries. Registration never
    /// touches the status: events may have arrived before it.
    pub fn register(&mut self, reg: &OutboundRegistration, now: DateTime<Utc>) {
        fn set(slot: &mut String, v: &Option<String>) {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                *slot = v.to_owned();
            }
        }
        fn set_opt(slot: &mut Option<String>, v: &Option<String>) {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                *slot = Some(v.to_owned());
            }
        }
        set_opt(&mut self.wamid, &reg.wamid);
        set_opt(&mut self.bsp_message_id, &reg.bsp_message_id);
        set(&mut self.phone_number, &reg.phone_number);
        set(&mut self.business_number, &reg.business_number);
        set_opt(&mut self.campaign_id, &reg.campaign_id);
        set_opt(&mut self.project_id, &reg.project_id);
        set(&mut self.project_owner_id, &reg.project_owner_id);
        if let Some(Value::Object(given)) = &reg.bsp_data {
            // Registration data joins (and wins over) what events brought.
            let data = self
                .bsp_data
                .get_or_insert_with(|| Value::Object(Default::default()));
            if let Some(obj) = data.as_object_mut() {
                for (k, v) in given {
                    obj.insert(k.clone(), v.clone());
                }
            } else {
                *data = Value::Object(given.clone());
            }
        }
        if self.current_status.is_empty() || self.current_status == "unknown" {
            self.current_status = Status::Accepted.as_str().to_owned();
        }
        self.updated_at = now;
    }
}

/// An outbound message registered by the sending side, so that campaign and
/// owner context is known before (or after) its status events arrive.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OutboundRegistration {
    pub bsp: Bsp,
    pub wamid: Option<String>,
    pub bsp_message_id: Option<String>,
    pub phone_number: Option<String>,
    pub business_number: Option<String>,
    pub campaign_id: Option<String>,
    pub project_id: Option<String>,
    pub project_owner_id: Option<String>,
    pub bsp_data: Option<Value>,
}

impl OutboundRegistration {
    pub fn key(&self) -> Option<MessageKey> {
        MessageEvent {
            wamid: self.wamid.clone(),
            bsp_message_id: self.bsp_message_id.clone(),
            ..Default::default()
        }
        .key(self.bsp)
    }
}

/// A webhook body (or part of one) that no adapter understood. It is kept,
/// counted and queryable, never dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UnrecognizedEvent {
    pub event_id: String,
    pub bsp: Bsp,
    pub received_at: DateTime<Utc>,
    pub reason: String,
    /// The raw body (or the unrecognized element of it), verbatim.
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ev(status: Option<Status>, raw: &str, secs: i64) -> MessageEvent {
        MessageEvent {
            wamid: Some("wamid.X".into()),
            status,
            raw_status: Some(raw.into()),
            occurred_at: Utc.timestamp_opt(secs, 0).unwrap(),
            dedup_key: format!("{raw}|{secs}"),
            ..Default::default()
        }
    }

    #[test]
    fn status_never_moves_backwards_and_failed_is_overridden_by_delivery() {
        let now = Utc::now();
        let first = ev(Some(Status::Read), "read", 30);
        let mut rec = MessageRecord::new_for(Bsp::Datagen, &first, now);
        rec.apply(Bsp::Datagen, "e", &first, now);
        rec.apply(Bsp::Datagen, "e", &ev(Some(Status::Sent), "sent", 10), now);
        assert_eq!(rec.current_status, "read");
        assert_eq!(rec.sent_at, Some(Utc.timestamp_opt(10, 0).unwrap()));
        assert_eq!(rec.status_history.len(), 2);

        let mut rec = MessageRecord::new_for(Bsp::Datagen, &first, now);
        rec.apply(
            Bsp::Datagen,
            "e",
            &ev(Some(Status::Failed), "failed", 5),
            now,
        );
        assert_eq!(rec.current_status, "failed");
        rec.apply(Bsp::Datagen, "e", &ev(Some(Status::Sent), "sent", 3), now);
        assert_eq!(rec.current_status, "failed");
        rec.apply(
            Bsp::Datagen,
            "e",
            &ev(Some(Status::Delivered), "delivered", 9),
            now,
        );
        assert_eq!(rec.current_status, "delivered");
    }

    #[test]
    fn duplicates_and_unknown_statuses_change_nothing() {
        let now = Utc::now();
        let sent = ev(Some(Status::Sent), "sent", 10);
        let mut rec = MessageRecord::new_for(Bsp::Datagen, &sent, now);
        assert_eq!(
            rec.apply(Bsp::Datagen, "e", &sent, now),
            ApplyOutcome::Applied
        );
        let before = rec.clone();
        assert_eq!(
            rec.apply(Bsp::Datagen, "e", &sent, now),
            ApplyOutcome::Duplicate { redelivery: true }
        );
        assert_eq!(
            rec.apply(Bsp::Datagen, "other", &sent, now),
            ApplyOutcome::Duplicate { redelivery: false }
        );
        assert_eq!(rec, before);

        assert_eq!(
            rec.apply(Bsp::Datagen, "e", &ev(None, "Enqueued", 11), now),
            ApplyOutcome::Applied
        );
        assert_eq!(rec.current_status, "sent");
        assert_eq!(rec.status_history.last().unwrap().status, "enqueued");
        assert_eq!(rec.status_history.len(), 2);
    }

    /// 2,000 statuses for one message (one hostile body) leave a bounded
    /// record that still counts every event and keeps each status's first
    /// and last.
    #[test]
    fn history_is_capped_and_counts_what_it_folds() {
        let now = Utc::now();
        let first = ev(Some(Status::Sent), "sent", 1);
        let mut rec = MessageRecord::new_for(Bsp::Meta, &first, now);
        rec.apply(Bsp::Meta, "e", &first, now);
        for i in 0..2000 {
            let status = if i % 2 == 0 {
                Status::Delivered
            } else {
                Status::Read
            };
            let raw = if i % 2 == 0 { "delivered" } else { "read" };
            rec.apply(Bsp::Meta, "e", &ev(Some(status), raw, 10 + i), now);
        }
        // Distinct unknown statuses cannot grow it either.
        for i in 0..500 {
            rec.apply(Bsp::Meta, "e", &ev(None, &format!("odd{i}"), 5000 + i), now);
        }
        assert!(rec.status_history.len() <= HISTORY_CAP);
        let events: u64 = rec.status_history.iter().map(|h| 1 + h.collapsed).sum();
        assert_eq!(events, 2501);
        assert_eq!(rec.status_history[0].status, "sent");
        assert_eq!(rec.current_status, "read");
        assert_eq!(rec.delivered_at, Some(Utc.timestamp_opt(10, 0).unwrap()));
        let delivered: Vec<_> = rec
            .status_history
            .iter()
            .filter(|h| h.status == "delivered")
            .collect();
        assert_eq!(delivered.len(), 2);
        assert_eq!(delivered[1].timestamp, Utc.timestamp_opt(2008, 0).unwrap());
        // The last event of a status is still recognised as a duplicate.
        assert!(matches!(
            rec.apply(Bsp::Meta, "x", &ev(None, "odd499", 5499), now),
            ApplyOutcome::Duplicate { .. }
        ));
    }

    #[test]
    fn long_text_and_large_content_are_capped() {
        let now = Utc::now();
        let mut e = ev(Some(Status::Failed), "failed", 1);
        e.reason = Some("é".repeat(5000));
        e.direction = Direction::Inbound;
        e.content = Some(serde_json::json!({"type": "text", "text": "x".repeat(200_000)}));
        let mut rec = MessageRecord::new_for(Bsp::Meta, &e, now);
        rec.apply(Bsp::Meta, "e", &e, now);
        assert!(rec.status_history[0].reason.as_ref().unwrap().len() <= TEXT_CAP);
        let content = rec.content.unwrap();
        assert_eq!(content["truncated"], true);
        assert_eq!(content["type"], "text");
    }

    #[test]
    fn registration_fills_context_without_touching_status() {
        let now = Utc::now();
        let d = ev(Some(Status::Delivered), "delivered", 10);
        let mut rec = MessageRecord::new_for(Bsp::Datagen, &d, now);
        rec.apply(Bsp::Datagen, "e", &d, now);
        rec.register(
            &OutboundRegistration {
                wamid: Some("wamid.X".into()),
                campaign_id: Some("c1".into()),
                project_owner_id: Some("owner-1".into()),
                ..Default::default()
            },
            now,
        );
        assert_eq!(rec.current_status, "delivered");
        assert_eq!(rec.campaign_id.as_deref(), Some("c1"));
        assert_eq!(rec.project_owner_id, "owner-1");
    }
}
