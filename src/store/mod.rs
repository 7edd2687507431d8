//! The message store: one record per WhatsApp message
//! (`unified_message_tracking`), plus the unrecognized bodies.
//!
//! One trait, one implementation per backend: SQLite (embedded default) here,
//! MongoDB in production. Every implementation applies events through
//! [`MessageRecord::apply`](crate::model::MessageRecord::apply) semantics and
//! passes the same conformance suite.

pub mod mongo;
pub mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::model::{Bsp, MessageRecord, OutboundRegistration, UnifiedEvent, UnrecognizedEvent};

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

impl From<crate::sqlite::DbError> for StoreError {
    fn from(e: crate::sqlite::DbError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<crate::queue::QueueError> for StoreError {
    fn from(e: crate::queue::QueueError) -> Self {
        StoreError::Unavailable(e.to_string())
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
    /// The record after the event.
    pub record: MessageRecord,
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

/// Message counts by `current_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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

/// Health of one backend, as `/ready` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendHealth {
    pub backend: &'static str,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Applies message events in order; idempotent. Events without a message
    /// part (contact, template notifications) are skipped and yield `None`.
    async fn apply(&self, events: &[UnifiedEvent]) -> Result<Vec<Option<Applied>>, StoreError>;

    /// Registers (or completes) an outbound message; returns the record and
    /// whether it was created.
    async fn register(
        &self,
        registration: &OutboundRegistration,
    ) -> Result<(MessageRecord, bool), StoreError>;

    /// Finds a message by wamid, provider message id or `message_id`.
    async fn find_message(&self, id: &str) -> Result<Option<MessageRecord>, StoreError>;

    /// Keeps bodies no adapter understood.
    async fn record_unrecognized(&self, events: &[UnrecognizedEvent]) -> Result<(), StoreError>;

    /// The most recent unrecognized bodies, newest first.
    async fn list_unrecognized(&self, limit: usize) -> Result<Vec<UnrecognizedEvent>, StoreError>;

    /// Counts by `current_status`.
    async fn stats(&self, query: &StatsQuery) -> Result<MessageStats, StoreError>;

    /// Backend health for `/ready`.
    async fn health(&self) -> BackendHealth;
}
