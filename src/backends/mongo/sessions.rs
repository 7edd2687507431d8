//! Operator sessions on MongoDB (`zen_console_sessions`: `_id` the hash of
//! the session id, `expires_at` a date).

use async_trait::async_trait;
use bson::{Document, doc};
use chrono::{DateTime, Utc};
use mongodb::{Collection, Database};

pub use super::collections::SESSIONS;
use super::prune::prune_oldest;
use crate::sessions::SessionStore;
use crate::store::StoreError;
use crate::store::StoreResult;

pub struct MongoSessionStore {
    sessions: Collection<Document>,
}

impl MongoSessionStore {
    pub fn new(db: &Database) -> Self {
        MongoSessionStore {
            sessions: db.collection(SESSIONS),
        }
    }
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait]
impl SessionStore for MongoSessionStore {
    async fn start_session(&self, id_hash: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
        // An upsert keyed by `_id`: a driver retry writes the same document.
        self.sessions
            .update_one(
                doc! {"_id": id_hash},
                doc! {"$setOnInsert": {"expires_at": bson::DateTime::from_chrono(expires_at)}},
            )
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn session_live(&self, id_hash: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let found = self
            .sessions
            .find_one(doc! {"_id": id_hash})
            .await
            .map_err(unavailable)?;
        Ok(found
            .and_then(|d| d.get_datetime("expires_at").ok().copied())
            .is_some_and(|at| at.to_chrono() > now))
    }

    async fn end_session(&self, id_hash: &str) -> StoreResult<()> {
        self.sessions
            .delete_one(doc! {"_id": id_hash})
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn prune_sessions(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        prune_oldest(&self.sessions, "expires_at", before, limit).await
    }
}
