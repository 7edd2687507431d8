//! The message store: one record per WhatsApp message
//! (`unified_message_tracking`), plus the unrecognized bodies.
//!
//! One trait, one implementation per backend: SQLite (embedded default) here,
//! MongoDB in production. Every implementation applies events through
//! [`MessageRecord::apply`](crate::model::MessageRecord::apply) semantics and
//! passes the same conformance suite.

pub mod sqlite;

use async_trait::async_trait;

use crate::model::{MessageRecord, OutboundRegistration, UnifiedEvent, UnrecognizedEvent};

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

/// The result of applying one event to its message record.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The event had been applied before; nothing changed.
    pub duplicate: bool,
    /// The record after the event.
    pub record: MessageRecord,
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

    /// Backend health for `/ready`.
    async fn health(&self) -> BackendHealth;
}
