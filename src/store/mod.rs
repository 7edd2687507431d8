//! The message store: one record per WhatsApp message
//! (`unified_message_tracking`), plus the unrecognized bodies.
//!
//! One trait, one implementation per backend: SQLite (embedded default) here,
//! MongoDB in production. Every implementation applies events through
//! [`MessageRecord::apply`](crate::model::MessageRecord::apply) semantics and
//! passes the same conformance suite.

pub mod working_set;

use std::collections::BTreeMap;

use async_trait::async_trait;

pub use crate::health::BackendHealth;

use chrono::{DateTime, Utc};

use crate::model::{
    Bsp, MessageRecord, Notification, OutboundRegistration, UnifiedEvent, UnrecognizedEvent,
};

/// Errors of a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or cannot write right now; retry later.
    #[error("message store unavailable: {0}")]
    Unavailable(String),
    /// The data cannot be stored as it is; retrying will not help.
    #[error("message store rejected the data: {0}")]
    Invalid(String),
}

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// An outage or a race: the same write may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The result of applying one event to its message record.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The event had been applied before; nothing changed.
    pub duplicate: bool,
    /// It was applied before by this same gateway event (a redelivery after
    /// a crash or a failed batch): forwarding must still happen (idempotently).
    pub redelivery: bool,
    /// The record as the batch left it (shared by every event of the batch
    /// that touched it: one copy per message, not one per event, so a body
    /// with thousands of events for one message costs one record).
    pub record: std::sync::Arc<MessageRecord>,
}

/// Filters of `GET /api/v1/stats` (legacy `GetMessageStats`, extended).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsQuery {
    pub project_owner_id: Option<String>,
    pub campaign_id: Option<String>,
    pub bsp: Option<Bsp>,
    /// `created_at >= from`
    pub from: Option<DateTime<Utc>>,
    /// `created_at < to`
    pub to: Option<DateTime<Utc>>,
}

/// Filters and page of `GET /api/v1/messages`: newest first, keyset paging
/// on (`created_at`, `message_id`) so pages stay stable while messages arrive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageQuery {
    pub phone_number: Option<String>,
    pub campaign_id: Option<String>,
    pub project_owner_id: Option<String>,
    pub status: Option<String>,
    /// `created_at >= from`.
    pub from: Option<DateTime<Utc>>,
    /// `created_at < to`.
    pub to: Option<DateTime<Utc>>,
    pub limit: usize,
    /// Where the previous page ended.
    pub after: Option<MessageCursor>,
    /// Only records whose user (`recipient.user_id`) is one of these
    /// business-scoped user ids (a contact's, old and new).
    pub user_ids: Vec<String>,
}

/// The position of the last record of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageCursor {
    pub created_at_ms: i64,
    pub message_id: String,
}

impl MessageCursor {
    pub fn of(record: &MessageRecord) -> Self {
        MessageCursor {
            created_at_ms: record.created_at.timestamp_millis(),
            message_id: record.message_id.clone(),
        }
    }

    /// Opaque to clients: `<created_at ms>-<message_id>`, which the API
    /// document states as the pattern `^[0-9]{1,15}-[0-9A-Za-z]{1,64}$`.
    pub fn encode(&self) -> String {
        format!("{}-{}", self.created_at_ms, self.message_id)
    }

    /// A cursor this API handed out: the current form, or the URL-safe
    /// base64 of `<ms>:<message_id>` that earlier versions returned.
    pub fn decode(s: &str) -> Option<Self> {
        let current = s
            .split_once('-')
            .filter(|(ms, id)| {
                (1..=15).contains(&ms.len())
                    && ms.bytes().all(|b| b.is_ascii_digit())
                    && (1..=64).contains(&id.len())
                    && id.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .and_then(|(ms, id)| {
                Some(MessageCursor {
                    created_at_ms: ms.parse().ok()?,
                    message_id: id.to_owned(),
                })
            });
        current.or_else(|| {
            use base64::Engine;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            let (ms, id) = text.split_once(':')?;
            Some(MessageCursor {
                created_at_ms: ms.parse().ok()?,
                message_id: id.to_owned(),
            })
        })
    }
}

/// One page of messages; `next_cursor` is absent on the last page.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    pub items: Vec<MessageRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl MessagePage {
    /// From up to `limit + 1` records: the extra one only says a next page exists.
    pub fn from_probe(mut items: Vec<MessageRecord>, limit: usize) -> Self {
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = more
            .then(|| items.last().map(|r| MessageCursor::of(r).encode()))
            .flatten();
        MessagePage { items, next_cursor }
    }
}

/// Message counts by `current_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct MessageStats {
    pub total: u64,
    /// Always has `sent`, `delivered`, `read` and `failed` (0 when none),
    /// plus any other status present.
    pub by_status: BTreeMap<String, u64>,
}

impl MessageStats {
    pub fn from_counts(mut by_status: BTreeMap<String, u64>) -> Self {
        for s in ["sent", "delivered", "read", "failed"] {
            by_status.entry(s.to_owned()).or_insert(0);
        }
        MessageStats {
            total: by_status.values().sum(),
            by_status,
        }
    }
}

/// What a message store keeps that retention may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Messages,
    Unrecognized,
    Notifications,
}

/// Which notifications to list.
#[derive(Debug, Clone, Default)]
pub struct NotificationQuery {
    pub bsp: Option<Bsp>,
    pub kind: Option<String>,
    pub limit: usize,
}

#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Applies message events in order; idempotent. Events without a message
    /// part (contact, template notifications) are skipped and yield `None`.
    async fn apply(&self, events: &[UnifiedEvent]) -> StoreResult<Vec<Option<Applied>>>;

    /// Registers (or completes) an outbound message; returns the record and
    /// whether it was created.
    async fn register(
        &self, registration: &OutboundRegistration,
    ) -> StoreResult<(MessageRecord, bool)>;

    /// Finds a message by wamid, provider message id or `message_id`.
    async fn find_message(&self, id: &str) -> StoreResult<Option<MessageRecord>>;

    /// Messages matching the filters, newest first, one page at a time.
    async fn list_messages(&self, query: &MessageQuery) -> StoreResult<MessagePage>;

    /// Keeps bodies no adapter understood.
    async fn record_unrecognized(&self, events: &[UnrecognizedEvent]) -> StoreResult<()>;

    /// The most recent unrecognized bodies, newest first.
    async fn list_unrecognized(&self, limit: usize) -> StoreResult<Vec<UnrecognizedEvent>>;

    /// Keeps provider notifications; a notification already kept (same
    /// `event_id`, a redelivery) is not kept twice.
    async fn record_notifications(&self, notifications: &[Notification]) -> StoreResult<()>;

    /// The most recent notifications, newest first, optionally of one BSP
    /// and one kind.
    async fn list_notifications(&self, query: &NotificationQuery)
    -> StoreResult<Vec<Notification>>;

    /// Removes up to `limit` of the oldest `kind` kept from before `before`
    /// (messages: last updated before it); returns how many went. Retention
    /// calls it in small batches, so that it never holds up the writer.
    async fn prune(&self, kind: Kept, before: DateTime<Utc>, limit: usize) -> StoreResult<u64>;

    /// Counts by `current_status`.
    async fn stats(&self, query: &StatsQuery) -> StoreResult<MessageStats>;

    /// Backend health for `/ready`.
    async fn health(&self) -> BackendHealth;
}

#[cfg(test)]
mod tests {
    use super::MessageCursor;

    #[test]
    fn a_cursor_reads_back_in_both_forms_and_nothing_else() {
        let cursor = MessageCursor {
            created_at_ms: 1_749_540_007_000,
            message_id: "6650f0c2a1b2c3d4e5f60718".into(),
        };
        let encoded = cursor.encode();
        assert_eq!(encoded, "1749540007000-6650f0c2a1b2c3d4e5f60718");
        let back = MessageCursor::decode(&encoded).expect("decodes");
        assert_eq!(
            (back.created_at_ms, back.message_id.as_str()),
            (cursor.created_at_ms, cursor.message_id.as_str())
        );
        // The form earlier versions handed out.
        use base64::Engine;
        let old = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode("1749540007000:6650f0c2a1b2c3d4e5f60718");
        assert_eq!(
            MessageCursor::decode(&old).map(|c| c.created_at_ms),
            Some(cursor.created_at_ms)
        );
        for refused in ["", "-", "12-", "-ab", "1a-b", "1-a b", "9999999999999999-a"] {
            assert!(MessageCursor::decode(refused).is_none(), "{refused}");
        }
    }
}
