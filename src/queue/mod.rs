//! The inbox: where an accepted webhook waits, durably, for the processor.
//!
//! `append` returning `Ok` is the gateway's promise to the BSP (the 200): the
//! body is committed (SQLite) or confirmed by the broker (RabbitMQ). Delivery
//! to the processor is at-least-once: an entry is only removed by `ack`,
//! after its events are applied, and comes back after a crash otherwise.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::health::BackendHealth;
use crate::model::Bsp;

/// Errors of an inbox backend.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Too much is waiting to be made durable: refuse now, the BSP retries.
    #[error("inbox overloaded: {0}")]
    Overloaded(String),
    /// The backend is down or refused the write.
    #[error("inbox unavailable: {0}")]
    Unavailable(String),
    /// The write was not confirmed in time.
    #[error("inbox did not confirm within {0:?}")]
    Timeout(Duration),
}

/// The result of a queue operation.
pub type QueueResult<T> = Result<T, QueueError>;

/// A raw webhook as accepted at the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxEntry {
    /// Unique id given at ingest (UUID v7, time-ordered).
    pub event_id: String,
    pub bsp: Bsp,
    pub received_at: DateTime<Utc>,
    /// The body exactly as received (on RabbitMQ: as the legacy BSP queue
    /// carries it, see [`rabbitmq::legacy_body`]).
    pub body: Bytes,
    /// Queue priority (0–10): inbound user messages before status reports.
    pub priority: u8,
    /// Number of events when the body is a JSON array (Datagen batches).
    pub batch_len: Option<usize>,
    /// The webhook's trace, continued by its processing and deliveries
    /// (absent on entries from before traces, and from other publishers).
    pub trace: Option<crate::telemetry::traces::TraceParent>,
}

/// An inbox entry set aside after it failed again and again with an error
/// that retrying does not cure (see the processor): kept, with why, until an
/// operator replays it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct QuarantinedEntry {
    pub event_id: String,
    pub bsp: Bsp,
    pub received_at: DateTime<Utc>,
    pub quarantined_at: DateTime<Utc>,
    /// Processing attempts before it was set aside.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// The body as received (invalid UTF-8 replaced).
    pub body: String,
}

/// Identifies a received entry for `ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryTag(pub u64);

/// An entry handed to the processor.
#[derive(Debug, Clone)]
pub struct InboxDelivery {
    pub tag: DeliveryTag,
    pub entry: InboxEntry,
}

#[async_trait]
pub trait Inbox: Send + Sync {
    /// Makes the entry durable. `Ok` means it will be processed even if the
    /// process dies right after.
    async fn append(&self, entry: InboxEntry) -> QueueResult<()>;

    /// Up to `max` entries not yet handed out, waiting up to `wait` for the
    /// first one. An empty result means nothing arrived in time.
    async fn receive(&self, max: usize, wait: Duration) -> QueueResult<Vec<InboxDelivery>>;

    /// Removes processed entries.
    async fn ack(&self, tags: &[DeliveryTag]) -> QueueResult<()>;

    /// Entries waiting (accepted, not yet acked).
    async fn depth(&self) -> QueueResult<u64>;

    /// Moves a handed-out entry to the quarantine, atomically: it is no
    /// longer handed out, and kept with its error until replayed.
    async fn quarantine(
        &self, delivery: &InboxDelivery, error: &str, attempts: u32,
    ) -> QueueResult<()>;

    /// Quarantined entries, newest first: up to `limit`, after the entry
    /// `after` (an event id) when given.
    async fn list_quarantined(
        &self, limit: usize, after: Option<&str>,
    ) -> QueueResult<Vec<QuarantinedEntry>>;

    /// Puts quarantined entries (these event ids, or all) back into the
    /// inbox; returns how many.
    async fn replay_quarantined(&self, ids: Option<&[String]>) -> QueueResult<u64>;

    /// Entries in the quarantine.
    async fn quarantine_depth(&self) -> QueueResult<u64>;
    /// Removes up to `limit` quarantined entries set aside before `before`;
    /// returns how many went.
    async fn prune_quarantined(&self, before: DateTime<Utc>, limit: usize) -> QueueResult<u64>;

    /// Backend health for `/ready`.
    async fn health(&self) -> BackendHealth;
}
