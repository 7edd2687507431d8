//! Operator sessions on the embedded database (`console_sessions`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;

use super::SqliteDb;
use crate::sessions::SessionStore;
use crate::store::StoreResult;

#[derive(Clone)]
pub struct SqliteSessionStore {
    db: SqliteDb,
}

impl SqliteSessionStore {
    pub fn new(db: SqliteDb) -> Self {
        SqliteSessionStore { db }
    }
}

#[async_trait]
impl SessionStore for SqliteSessionStore {
    async fn start_session(&self, id_hash: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
        let (id, expires) = (id_hash.to_owned(), expires_at.timestamp_millis());
        // An acked write: the operator is told they are signed in.
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO console_sessions (id_hash, expires_at_ms)
                     VALUES (?1, ?2)",
                )?
                .execute(params![id, expires])
            })
            .await?;
        Ok(())
    }

    async fn session_live(&self, id_hash: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let (id, now) = (id_hash.to_owned(), now.timestamp_millis());
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT 1 FROM console_sessions WHERE id_hash = ?1 AND expires_at_ms > ?2",
                )?
                .exists(params![id, now])
            })
            .await?)
    }

    async fn end_session(&self, id_hash: &str) -> StoreResult<()> {
        let id = id_hash.to_owned();
        self.db
            .write(move |c| {
                c.prepare_cached("DELETE FROM console_sessions WHERE id_hash = ?1")?
                    .execute([id])
            })
            .await?;
        Ok(())
    }

    async fn prune_sessions(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        Ok(self
            .db
            .prune_rows(
                "console_sessions",
                "expires_at_ms",
                before.timestamp_millis(),
                limit,
            )
            .await?)
    }
}
