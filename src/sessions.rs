//! Operator sessions (the console's sign-ins), kept durably beside the
//! message store, so that a sign-out or an expiry holds across restarts and
//! on every replica: a cookie proves who signed it (HMAC), the store says
//! whether that session is still live.
//!
//! A session is stored by the SHA-256 of its id, never the id itself: the
//! store's contents alone open no console.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::store::StoreResult;

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Records a new session, live until `expires_at`.
    async fn start_session(&self, id_hash: &str, expires_at: DateTime<Utc>) -> StoreResult<()>;
    /// Whether the session was started, not ended, and `now` is before its
    /// expiry.
    async fn session_live(&self, id_hash: &str, now: DateTime<Utc>) -> StoreResult<bool>;
    /// Ends a session (sign-out); unknown ones are a no-op.
    async fn end_session(&self, id_hash: &str) -> StoreResult<()>;
    /// Removes up to `limit` sessions that expired before `before`; returns
    /// how many went (an ended session is gone at once).
    async fn prune_sessions(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64>;
}

/// How a session id is stored.
pub fn id_hash(id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(id.as_bytes()))
}
