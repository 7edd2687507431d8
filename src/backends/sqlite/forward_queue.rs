//! The forwarding queue on the embedded database. Jobs are rows with a due
//! time and a lease: `receive` leases due rows (so a crash mid-delivery only
//! delays them until the lease ends), `reschedule` moves the due time,
//! `dead_letter` moves the row to `forward_dlq`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use super::{SqliteDb, from_json, json_err};
use crate::forwarding::ForwardResult;
use crate::forwarding::{DeadJob, ForwardJob, ForwardQueue, JobTag, ReplayFilter};
use crate::health::BackendHealth;

/// How long a received job is reserved for its delivery.
const LEASE: Duration = Duration::from_secs(300);

/// The forwarding queue on the embedded database.
pub struct SqliteForwardQueue {
    db: SqliteDb,
    arrived: Arc<Notify>,
}

impl SqliteForwardQueue {
    pub fn new(db: SqliteDb) -> Self {
        SqliteForwardQueue {
            db,
            arrived: Arc::new(Notify::new()),
        }
    }

    /// Frees the leases a previous process held: it is gone (the embedded
    /// database has one gateway process), so the jobs it was delivering are
    /// due now rather than when their lease would have run out. Returns how
    /// many jobs were freed.
    pub async fn release_stale_leases(&self) -> ForwardResult<usize> {
        let freed = self
            .db
            .write_background(|c| {
                c.execute(
                    "UPDATE forward_jobs SET lease_until_ms = 0, due_at_ms = MIN(due_at_ms, ?1)
                     WHERE lease_until_ms > 0",
                    [now_ms()],
                )
            })
            .await?;
        if freed > 0 {
            self.arrived.notify_one();
        }
        Ok(freed)
    }
}

/// Leases the next due jobs. The scan walks the receive-order index and
/// stops after LIMIT rows; INDEXED BY because, left to itself, SQLite picks
/// a due-time range scan and sorts every due job on every receive, which
/// costs O(backlog). A lease also moves the due time to the lease's end, so
/// jobs in flight are not in the scan's way.
const RECEIVE_SQL: &str = "UPDATE forward_jobs SET lease_until_ms = ?1, due_at_ms = ?1
     WHERE seq IN (SELECT seq FROM forward_jobs INDEXED BY forward_jobs_ready
                   WHERE due_at_ms <= ?2
                   ORDER BY priority DESC, due_at_ms LIMIT ?3)
     RETURNING seq, id";

/// Queues one job unless its id is queued already (then it is left as is).
fn insert_job(c: &Connection, job: &ForwardJob, due_at_ms: i64) -> rusqlite::Result<()> {
    let queued = c
        .prepare_cached(
            "INSERT OR IGNORE INTO forward_jobs (id, due_at_ms, priority, url)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            job.delivery_log_id,
            due_at_ms,
            priority(job),
            job.webhook_url
        ])?;
    if queued > 0 {
        let doc = serde_json::to_string(job).map_err(json_err)?;
        c.prepare_cached("INSERT INTO forward_job_docs (seq, job) VALUES (?1, ?2)")?
            .execute(params![c.last_insert_rowid(), doc])?;
    }
    Ok(())
}

/// Deletes a job (its document goes with it: ON DELETE CASCADE).
fn delete_job(c: &Connection, id: &str) -> rusqlite::Result<usize> {
    c.prepare_cached("DELETE FROM forward_jobs WHERE id = ?1")?
        .execute([id])
}

/// Rows of one park chunk (a few ms of the writer).
const PARK_CHUNK: i64 = 500;

/// The last `seq` of a URL's next park chunk, walking the `url` index
/// (which carries `seq`, the rowid) from where the previous chunk ended.
const PARK_CHUNK_END_SQL: &str = "SELECT MAX(seq) FROM
     (SELECT seq FROM forward_jobs WHERE url = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3)";

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn priority(job: &ForwardJob) -> i64 {
    // Legacy: 10 − attempt_count, at least 1.
    (10 - job.attempt_count as i64).max(1)
}

#[async_trait]
impl ForwardQueue for SqliteForwardQueue {
    async fn enqueue(&self, jobs: &[ForwardJob]) -> ForwardResult<()> {
        self.enqueue_after(jobs, Duration::ZERO).await
    }

    async fn enqueue_after(&self, jobs: &[ForwardJob], delay: Duration) -> ForwardResult<()> {
        let jobs = jobs.to_vec();
        let delay_ms = delay.as_millis() as i64;
        self.db
            .write_background(move |c| {
                let due = now_ms() + delay_ms;
                jobs.iter().try_for_each(|j| insert_job(c, j, due))
            })
            .await?;
        // One permit is kept even with no waiter: the next receive wakes.
        if delay_ms == 0 {
            self.arrived.notify_one();
        }
        Ok(())
    }

    async fn receive(
        &self, max: usize, wait: Duration,
    ) -> ForwardResult<Vec<(JobTag, ForwardJob)>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let limit = max.max(1) as i64;
            let leased: Vec<(String, String)> = self
                .db
                .write_background(move |c| {
                    let now = now_ms();
                    let leased: Vec<(i64, String)> = c
                        .prepare_cached(RECEIVE_SQL)?
                        .query_map(params![now + LEASE.as_millis() as i64, now, limit], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?
                        .collect::<rusqlite::Result<_>>()?;
                    let mut doc = c.prepare_cached("SELECT job FROM forward_job_docs WHERE seq = ?1")?;
                    let mut out = Vec::with_capacity(leased.len());
                    for (seq, id) in leased {
                        match doc.query_row([seq], |r| r.get(0)).optional()? {
                            Some(job) => out.push((id, job)),
                            None => tracing::error!(job.id = %id, "forwarding job without its document left leased"),
                        }
                    }
                    Ok(out)
                })
                .await?;
            if !leased.is_empty() {
                let mut out = Vec::with_capacity(leased.len());
                for (id, doc) in leased {
                    match serde_json::from_str::<ForwardJob>(&doc) {
                        Ok(job) => out.push((JobTag(id), job)),
                        Err(e) => {
                            tracing::error!(job.id = %id, error = %e, "undecodable forwarding job left leased")
                        }
                    }
                }
                return Ok(out);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Woken by new jobs; otherwise poll for due retries.
            let nap = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(nap, self.arrived.notified()).await;
        }
    }

    async fn complete(&self, tag: &JobTag) -> ForwardResult<()> {
        let id = tag.0.clone();
        self.db
            .write_background(move |c| delete_job(c, &id))
            .await?;
        Ok(())
    }

    async fn reschedule(
        &self, tag: &JobTag, job: &ForwardJob, delay: Duration,
    ) -> ForwardResult<()> {
        let (id, job) = (tag.0.clone(), job.clone());
        self.db
            .write_background(move |c| {
                let seq: Option<i64> = c
                    .prepare_cached(
                        "UPDATE forward_jobs SET due_at_ms = ?2, lease_until_ms = 0, priority = ?3
                         WHERE id = ?1 RETURNING seq",
                    )?
                    .query_row(
                        params![id, now_ms() + delay.as_millis() as i64, priority(&job)],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(seq) = seq {
                    let doc = serde_json::to_string(&job).map_err(json_err)?;
                    c.prepare_cached("UPDATE forward_job_docs SET job = ?2 WHERE seq = ?1")?
                        .execute(params![seq, doc])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn park_url(&self, url: &str, delay: Duration) -> ForwardResult<u64> {
        // In chunks, each its own write: a dead URL's backlog (tens of
        // thousands of rows) in one statement holds the writer, and every
        // ingest ack and delivery behind it, for tens of ms.
        let due = now_ms() + delay.as_millis() as i64;
        let mut after = 0_i64;
        let mut parked = 0_u64;
        loop {
            let url = url.to_owned();
            let (n, last) = self
                .db
                .write_background(move |c| {
                    let last: Option<i64> = c
                        .prepare_cached(PARK_CHUNK_END_SQL)?
                        .query_row(params![url, after, PARK_CHUNK], |r| r.get(0))?;
                    let Some(last) = last else {
                        return Ok((0, None));
                    };
                    let n = c
                        .prepare_cached(
                            "UPDATE forward_jobs SET due_at_ms = ?2
                             WHERE url = ?1 AND seq > ?3 AND seq <= ?4
                               AND due_at_ms < ?2 AND lease_until_ms <= ?5",
                        )?
                        .execute(params![url, due, after, last, now_ms()])?;
                    Ok((n, Some(last)))
                })
                .await?;
            parked += n as u64;
            match last {
                Some(last) => after = last,
                None => return Ok(parked),
            }
        }
    }

    async fn dead_letter(&self, tag: &JobTag, job: &ForwardJob, reason: &str) -> ForwardResult<()> {
        let (id, job, reason) = (tag.0.clone(), job.clone(), reason.to_owned());
        self.db
            .write_background(move |c| {
                let doc = serde_json::to_string(&job).map_err(json_err)?;
                delete_job(c, &id)?;
                c.prepare_cached(
                    "INSERT OR REPLACE INTO forward_dlq (id, dead_at_ms, reason, job) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![id, now_ms(), reason, doc])
            })
            .await?;
        Ok(())
    }

    async fn list_dead(&self, limit: usize) -> ForwardResult<Vec<DeadJob>> {
        Ok(self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, dead_at_ms, reason, job FROM forward_dlq ORDER BY dead_at_ms DESC, id LIMIT ?1",
                )?;
                let rows = stmt.query_map([limit as i64], |r| {
                    Ok(DeadJob {
                        id: r.get(0)?,
                        dead_at: Utc.timestamp_millis_opt(r.get(1)?).single().unwrap_or_default(),
                        reason: r.get(2)?,
                        job: from_json(r.get(3)?)?,
                    })
                })?;
                rows.collect()
            })
            .await?)
    }

    async fn replay_dead(&self, filter: &ReplayFilter) -> ForwardResult<usize> {
        // In batches, each its own short transaction, so that a replay of a
        // large DLQ neither holds the writer nor reads the DLQ into memory.
        let mut total = 0;
        match &filter.ids {
            Some(ids) => {
                for chunk in ids.chunks(REPLAY_BATCH) {
                    let (filter, chunk) = (filter.clone(), chunk.to_vec());
                    let marks = vec!["?"; chunk.len()].join(", ");
                    let sql = format!(
                        "SELECT rowid, id, job, dead_at_ms FROM forward_dlq WHERE id IN ({marks})"
                    );
                    let args: Vec<rusqlite::types::Value> =
                        chunk.into_iter().map(Into::into).collect();
                    total += self
                        .db
                        .write(move |c| replay_rows(c, &sql, args, &filter))
                        .await?
                        .0;
                }
            }
            None => {
                // Time bounds narrow the scan (dead_at_ms is indexed);
                // `ReplayFilter::matches` still decides each row.
                // Only what was dead when the replay began: a job that dies
                // again meanwhile comes back with a higher rowid.
                let end: i64 = self
                    .db
                    .read(|c| {
                        c.query_row("SELECT COALESCE(MAX(rowid), 0) FROM forward_dlq", [], |r| {
                            r.get(0)
                        })
                    })
                    .await?;
                let mut after_rowid = 0i64;
                loop {
                    let filter = filter.clone();
                    let mut sql = String::from(
                        "SELECT rowid, id, job, dead_at_ms FROM forward_dlq WHERE rowid > ? AND rowid <= ?",
                    );
                    let mut args: Vec<rusqlite::types::Value> =
                        vec![after_rowid.into(), end.into()];
                    if let Some(since) = filter.since {
                        sql.push_str(" AND dead_at_ms >= ?");
                        args.push(since.timestamp_millis().into());
                    }
                    if let Some(until) = filter.until {
                        sql.push_str(" AND dead_at_ms < ?");
                        args.push(until.timestamp_millis().into());
                    }
                    sql.push_str(&format!(" ORDER BY rowid LIMIT {REPLAY_BATCH}"));
                    let (n, last) = self
                        .db
                        .write(move |c| replay_rows(c, &sql, args, &filter))
                        .await?;
                    total += n;
                    match last {
                        Some(last) => after_rowid = last,
                        None => break,
                    }
                }
            }
        }
        self.arrived.notify_one();
        Ok(total)
    }

    async fn depth(&self) -> ForwardResult<u64> {
        Ok(self.db.count_rows("forward_jobs").await?)
    }

    async fn dead_depth(&self) -> ForwardResult<u64> {
        Ok(self.db.count_rows("forward_dlq").await?)
    }

    async fn prune_dead(&self, before: DateTime<Utc>, limit: usize) -> ForwardResult<u64> {
        Ok(self
            .db
            .prune_rows(
                "forward_dlq",
                "dead_at_ms",
                before.timestamp_millis(),
                limit,
            )
            .await?)
    }

    async fn health(&self) -> BackendHealth {
        self.db.health()
    }
}

/// Dead jobs one replay transaction reads at most.
const REPLAY_BATCH: usize = 500;

/// Replays the dead jobs `sql` selects (rowid, id, job, dead_at_ms) that
/// `filter` matches: fresh attempts, not parked, replacing a job of the
/// same id still queued. Returns how many, and the last rowid read (`None`
/// when the query read nothing: the scan is done).
fn replay_rows(
    c: &Connection, sql: &str, args: Vec<rusqlite::types::Value>, filter: &ReplayFilter,
) -> rusqlite::Result<(usize, Option<i64>)> {
    let rows: Vec<(i64, String, String, i64)> = {
        let mut stmt = c.prepare(sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let last = rows.iter().map(|r| r.0).max();
    let mut n = 0;
    for (_, id, doc, dead_at_ms) in rows {
        let mut job: ForwardJob = from_json(doc)?;
        let dead_at = Utc.timestamp_millis_opt(dead_at_ms).single();
        if !filter.matches(&id, &job, dead_at) {
            continue;
        }
        job.attempt_count = 0;
        job.parked_since = None;
        delete_job(c, &id)?;
        insert_job(c, &job, now_ms())?;
        c.execute("DELETE FROM forward_dlq WHERE id = ?1", [&id])?;
        n += 1;
    }
    Ok((n, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, url: &str) -> ForwardJob {
        ForwardJob {
            delivery_log_id: id.into(),
            project_owner_id: "o".into(),
            webhook_id: "w".into(),
            webhook_url: url.into(),
            shared_secret: None,
            event_type: "t".into(),
            event_id: "e".into(),
            payload: serde_json::Value::Null,
            timestamp: 0,
            attempt_count: 0,
            message: None,
            parked_since: None,
            v: 1,
            traceparent: None,
        }
    }

    fn open(dir: &std::path::Path) -> SqliteDb {
        SqliteDb::open_for_test(dir)
    }

    #[tokio::test]
    async fn a_receive_reads_its_rows_from_the_index_without_sorting_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        assert_walks_index(&open(dir.path()), RECEIVE_SQL, "forward_jobs_ready").await;
    }

    /// `sql`'s plan reads `index` and sorts nothing.
    async fn assert_walks_index(db: &SqliteDb, sql: &'static str, index: &str) {
        let plan: Vec<String> = db
            .read(move |c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
                let rows =
                    stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))?;
                rows.collect()
            })
            .await
            .unwrap();
        assert!(plan.iter().any(|p| p.contains(index)), "{plan:?}");
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    }

    #[tokio::test]
    async fn a_leased_job_is_not_handed_out_again_until_its_lease_is_freed() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteForwardQueue::new(open(dir.path()));
        q.enqueue(&[job("a", "http://x"), job("b", "http://x")])
            .await
            .unwrap();
        let first = q.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), 1);
        let second = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_ne!(first[0].0.0, second[0].0.0);
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(q.release_stale_leases().await.unwrap(), 2);
        assert_eq!(q.receive(10, Duration::ZERO).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn parking_a_url_postpones_only_its_queued_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteForwardQueue::new(open(dir.path()));
        q.enqueue(&[
            job("a1", "http://dead"),
            job("a2", "http://dead"),
            job("b1", "http://ok"),
        ])
        .await
        .unwrap();
        assert_eq!(
            q.park_url("http://dead", Duration::from_secs(60))
                .await
                .unwrap(),
            2
        );
        let got = q.receive(10, Duration::ZERO).await.unwrap();
        let ids: Vec<_> = got.iter().map(|(t, _)| t.0.as_str()).collect();
        assert_eq!(ids, ["b1"]);
    }

    #[tokio::test]
    async fn a_url_backlog_is_parked_in_chunks_found_through_the_url_index() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteForwardQueue::new(open(dir.path()));
        assert_walks_index(&q.db, PARK_CHUNK_END_SQL, "forward_jobs_url").await;

        let jobs: Vec<_> = (0..PARK_CHUNK * 2 + 7)
            .flat_map(|i| {
                [
                    job(&format!("d{i}"), "http://dead"),
                    job(&format!("o{i}"), "http://ok"),
                ]
            })
            .collect();
        q.enqueue(&jobs).await.unwrap();
        let leased = q.receive(2, Duration::ZERO).await.unwrap();
        assert_eq!(leased.len(), 2);
        let parked = q
            .park_url("http://dead", Duration::from_secs(60))
            .await
            .unwrap();
        let leased_dead = leased
            .iter()
            .filter(|(_, j)| j.webhook_url == "http://dead")
            .count();
        // Every queued job of the URL but those in flight.
        assert_eq!(parked, (PARK_CHUNK * 2 + 7) as u64 - leased_dead as u64);
        let due = q.receive(10_000, Duration::ZERO).await.unwrap();
        assert!(due.iter().all(|(_, j)| j.webhook_url == "http://ok"));
        assert_eq!(
            due.len() + leased.len() - leased_dead,
            (PARK_CHUNK * 2 + 7) as usize
        );
        // A second park finds nothing left to push back.
        assert_eq!(
            q.park_url("http://dead", Duration::from_secs(30))
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn jobs_queued_before_the_documents_had_their_own_table_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The earlier layout: the document in the schedule row.
            let c = Connection::open(dir.path().join("zen.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE forward_jobs (id TEXT PRIMARY KEY, due_at_ms INTEGER NOT NULL,
                    lease_until_ms INTEGER NOT NULL DEFAULT 0, priority INTEGER NOT NULL DEFAULT 0,
                    job TEXT NOT NULL, url TEXT NOT NULL DEFAULT '');
                 CREATE INDEX forward_jobs_ready ON forward_jobs (priority DESC, due_at_ms);
                 CREATE INDEX forward_jobs_url ON forward_jobs (url);",
            )
            .unwrap();
            for id in ["old1", "old2"] {
                let doc = serde_json::to_string(&job(id, "http://x")).unwrap();
                c.execute(
                    "INSERT INTO forward_jobs (id, due_at_ms, priority, job, url) VALUES (?1, 0, 10, ?2, 'http://x')",
                    [id, &doc],
                )
                .unwrap();
            }
        }
        let q = SqliteForwardQueue::new(open(dir.path()));
        let mut got = q.receive(10, Duration::ZERO).await.unwrap();
        got.sort_by(|a, b| a.0.0.cmp(&b.0.0));
        let ids: Vec<_> = got
            .iter()
            .map(|(_, j)| j.delivery_log_id.as_str())
            .collect();
        assert_eq!(ids, ["old1", "old2"]);
        assert_eq!(got[0].0.0, "old1");
        // Retried with its new attempt count, then delivered: the document
        // follows the job and goes with it.
        let mut retried = got[0].1.clone();
        retried.attempt_count = 1;
        q.reschedule(&got[0].0, &retried, Duration::ZERO)
            .await
            .unwrap();
        q.complete(&got[1].0).await.unwrap();
        let again = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1.attempt_count, 1);
        q.complete(&again[0].0).await.unwrap();
        let left: (i64, i64) = q
            .db
            .read(|c| {
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM forward_jobs), (SELECT COUNT(*) FROM forward_job_docs)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .await
            .unwrap();
        assert_eq!(left, (0, 0));
    }
}
