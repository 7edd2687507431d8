//! The embedded inbox: an `inbox` table in the shared SQLite file.
//!
//! Appends ride the writer's group commit, so `append` returns once the row
//! is committed. Entries are handed out in `seq` order past an in-memory
//! cursor; a restart resets the cursor, so anything not yet acked (deleted)
//! is handed out again: at-least-once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::params;
use tokio::sync::{Mutex, Notify};

use super::SqliteDb;
use crate::health::BackendHealth;
use crate::model::Bsp;
use crate::queue::QueueResult;
use crate::queue::{DeliveryTag, Inbox, InboxDelivery, InboxEntry, QuarantinedEntry, QueueError};
use crate::telemetry::traces::TraceParent;

/// The inbox on the embedded database.
pub struct SqliteInbox {
    db: SqliteDb,
    arrived: Arc<Notify>,
    /// Highest `seq` handed out in this process.
    cursor: Mutex<i64>,
    /// Bytes of bodies waiting for the writer, and the most that may: the
    /// writer's queue is bounded by entries, this bounds it by memory.
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
}

/// Bytes of bodies waiting for the writer, by default.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 256 * 1024 * 1024;

impl SqliteInbox {
    pub fn new(db: SqliteDb) -> Self {
        SqliteInbox {
            db,
            arrived: Arc::new(Notify::new()),
            cursor: Mutex::new(0),
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
        }
    }

    /// Appends beyond `bytes` of bodies waiting for the writer are refused
    /// (`Overloaded`, a 503 the BSP retries).
    pub fn with_max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes.max(1);
        self
    }
}

/// Gives a body's bytes back to the budget when its append is over.
struct Reserved(Arc<AtomicUsize>, usize);

impl Drop for Reserved {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

fn bsp_from_sql(s: String) -> rusqlite::Result<Bsp> {
    Bsp::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown bsp {s:?} in inbox").into(),
        )
    })
}

#[async_trait]
impl Inbox for SqliteInbox {
    async fn append(&self, entry: InboxEntry) -> QueueResult<()> {
        let size = entry.body.len();
        let before = self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        let _reserved = Reserved(self.queued_bytes.clone(), size);
        // One body alone is always let through (the body limit bounds it).
        if before > 0 && before + size > self.max_queued_bytes {
            return Err(QueueError::Overloaded(format!(
                "{before} bytes of webhooks wait for the disk already"
            )));
        }
        self.db
            .try_write_statement(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO inbox (event_id, bsp, received_at_ms, body, traceparent)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    entry.event_id,
                    entry.bsp.as_str(),
                    entry.received_at.timestamp_millis(),
                    entry.body.as_ref(),
                    entry.trace.as_ref().map(TraceParent::as_str)
                ])
            })
            .await?;
        self.arrived.notify_one();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> QueueResult<Vec<InboxDelivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let mut cursor = self.cursor.lock().await;
                let after = *cursor;
                let limit = max.max(1) as i64;
                let rows = self
                    .db
                    .read(move |conn| {
                        let mut stmt = conn.prepare_cached(
                            "SELECT seq, event_id, bsp, received_at_ms, body, traceparent FROM inbox
                             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                        )?;
                        let rows = stmt.query_map(params![after, limit], |r| {
                            let seq: i64 = r.get(0)?;
                            let ms: i64 = r.get(3)?;
                            let body: Vec<u8> = r.get(4)?;
                            Ok(InboxDelivery {
                                tag: DeliveryTag(seq as u64),
                                entry: InboxEntry {
                                    event_id: r.get(1)?,
                                    bsp: bsp_from_sql(r.get(2)?)?,
                                    received_at: Utc
                                        .timestamp_millis_opt(ms)
                                        .single()
                                        .unwrap_or_else(Utc::now),
                                    body: Bytes::from(body),
                                    priority: 0,
                                    batch_len: None,
                                    trace: r
                                        .get::<_, Option<String>>(5)?
                                        .as_deref()
                                        .and_then(TraceParent::parse),
                                },
                            })
                        })?;
                        rows.collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .await?;
                if let Some(last) = rows.last() {
                    *cursor = last.tag.0 as i64;
                    return Ok(rows);
                }
            }
            // Notify keeps one permit, so an append that lands between the
            // query above and this wait still wakes us.
            if tokio::time::timeout_at(deadline, self.arrived.notified())
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> QueueResult<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let tags = tags.to_vec();
        self.db
            .write_background(move |conn| {
                let mut stmt = conn.prepare_cached("DELETE FROM inbox WHERE seq = ?1")?;
                for t in &tags {
                    stmt.execute([t.0 as i64])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn depth(&self) -> QueueResult<u64> {
        Ok(self.db.count_rows("inbox").await?)
    }

    async fn quarantine(
        &self, delivery: &InboxDelivery, error: &str, attempts: u32,
    ) -> QueueResult<()> {
        let seq = delivery.tag.0 as i64;
        let e = &delivery.entry;
        let (event_id, bsp, received_ms) = (
            e.event_id.clone(),
            e.bsp.as_str(),
            e.received_at.timestamp_millis(),
        );
        let body = e.body.clone();
        let trace = e.trace.as_ref().map(|t| t.as_str().to_owned());
        let error = crate::model::truncate_text(error, 4096);
        let now = Utc::now().timestamp_millis();
        self.db
            .write_background(move |conn| {
                // The entry is moved in one transaction: in the inbox or in
                // the quarantine, never neither.
                conn.prepare_cached(
                    "INSERT INTO quarantine
                         (event_id, bsp, received_at_ms, quarantined_at_ms, attempts, error, body,
                          traceparent)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (event_id) DO UPDATE SET
                         quarantined_at_ms = excluded.quarantined_at_ms,
                         attempts = excluded.attempts, error = excluded.error",
                )?
                .execute(params![
                    event_id,
                    bsp,
                    received_ms,
                    now,
                    attempts,
                    error,
                    body.as_ref(),
                    trace
                ])?;
                conn.prepare_cached("DELETE FROM inbox WHERE seq = ?1")?
                    .execute([seq])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn list_quarantined(
        &self, limit: usize, after: Option<&str>,
    ) -> QueueResult<Vec<QuarantinedEntry>> {
        let after = after.map(str::to_owned);
        Ok(self
            .db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT event_id, bsp, received_at_ms, quarantined_at_ms, attempts, error, body
                     FROM quarantine
                     WHERE ?1 IS NULL OR id < (SELECT id FROM quarantine WHERE event_id = ?1)
                     ORDER BY id DESC LIMIT ?2",
                )?;
                let at = |ms: i64| Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
                let rows = stmt.query_map(params![after, limit as i64], |r| {
                    let body: Vec<u8> = r.get(6)?;
                    Ok(QuarantinedEntry {
                        event_id: r.get(0)?,
                        bsp: bsp_from_sql(r.get(1)?)?,
                        received_at: at(r.get(2)?),
                        quarantined_at: at(r.get(3)?),
                        attempts: r.get(4)?,
                        error: r.get(5)?,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?)
    }

    async fn replay_quarantined(&self, ids: Option<&[String]>) -> QueueResult<u64> {
        let ids: Option<Vec<String>> = ids.map(<[String]>::to_vec);
        let moved = self
            .db
            .write(move |conn| {
                let mut moved = 0;
                // Back at the end of the inbox (a new seq), so it is handed
                // out again in this process too. One entry by its key (the
                // unique index on `event_id`), or all of them.
                match &ids {
                    None => {
                        moved += conn.prepare_cached(REPLAY_ALL)?.execute([])? as u64;
                        conn.prepare_cached("DELETE FROM quarantine")?.execute([])?;
                    }
                    Some(ids) => {
                        for id in ids {
                            moved += conn.prepare_cached(REPLAY_ONE)?.execute([id])? as u64;
                            conn.prepare_cached(DELETE_ONE)?.execute([id])?;
                        }
                    }
                }
                Ok(moved)
            })
            .await?;
        if moved > 0 {
            self.arrived.notify_one();
        }
        Ok(moved)
    }

    async fn quarantine_depth(&self) -> QueueResult<u64> {
        Ok(self.db.count_rows("quarantine").await?)
    }

    async fn prune_quarantined(&self, before: DateTime<Utc>, limit: usize) -> QueueResult<u64> {
        Ok(self
            .db
            .prune_rows(
                "quarantine",
                "quarantined_at_ms",
                before.timestamp_millis(),
                limit,
            )
            .await?)
    }

    async fn health(&self) -> BackendHealth {
        self.db.health()
    }
}

/// A replay of every quarantined entry, oldest first.
const REPLAY_ALL: &str = "INSERT INTO inbox (event_id, bsp, received_at_ms, body, traceparent)
     SELECT event_id, bsp, received_at_ms, body, traceparent FROM quarantine ORDER BY id";
/// A replay of one entry, found by its event id's unique index.
const REPLAY_ONE: &str = "INSERT INTO inbox (event_id, bsp, received_at_ms, body, traceparent)
     SELECT event_id, bsp, received_at_ms, body, traceparent FROM quarantine WHERE event_id = ?1";
const DELETE_ONE: &str = "DELETE FROM quarantine WHERE event_id = ?1";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::sqlite::{SqliteOptions, Synchronous};

    /// A replay by id reads the one row through the unique index, never a
    /// scan of the quarantine (on the writer, which acks wait behind).
    #[tokio::test]
    async fn a_replay_by_id_uses_the_event_id_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open_for_test(dir.path());
        let plans = db
            .read(|c| {
                let plan = |sql: &str| -> rusqlite::Result<String> {
                    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let rows = stmt.query_map(["e1"], |r| r.get::<_, String>(3))?;
                    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?.join("; "))
                };
                Ok((plan(REPLAY_ONE)?, plan(DELETE_ONE)?))
            })
            .await
            .unwrap();
        for plan in [&plans.0, &plans.1] {
            assert!(
                plan.contains("USING INDEX") && !plan.contains("SCAN quarantine"),
                "{plan}"
            );
        }
    }

    fn entry(n: usize) -> InboxEntry {
        InboxEntry {
            event_id: format!("e{n}"),
            bsp: Bsp::Datagen,
            received_at: Utc::now(),
            body: Bytes::from(vec![b'x'; 1000]),
            priority: 0,
            batch_len: None,
            trace: None,
        }
    }

    /// Bodies waiting for a busy writer are bounded by bytes: past the bound
    /// an append is refused at once (a 503), and the bytes come back when
    /// the writer has them.
    #[tokio::test]
    async fn appends_past_the_byte_bound_are_refused_while_the_writer_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&SqliteOptions {
            path: dir.path().join("zen.db"),
            synchronous: Synchronous::Normal,
            queue_capacity: 100,
            max_batch: 16,
            readers: 1,
        })
        .unwrap();
        let inbox = Arc::new(SqliteInbox::new(db.clone()).with_max_queued_bytes(1500));
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let hold = tokio::spawn({
            let db = db.clone();
            async move {
                db.write_background(move |_| {
                    let _ = held_tx.send(());
                    let _ = release_rx.recv();
                    Ok(())
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || held_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let first = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.append(entry(1)).await }
        });
        while inbox.queued_bytes.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            inbox.append(entry(2)).await,
            Err(QueueError::Overloaded(_))
        ));
        release_tx.send(()).unwrap();
        hold.await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(inbox.queued_bytes.load(Ordering::Relaxed), 0);
        inbox.append(entry(3)).await.unwrap();
        assert_eq!(inbox.depth().await.unwrap(), 2);
    }
}
