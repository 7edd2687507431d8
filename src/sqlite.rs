//! The embedded database: one SQLite file (WAL) holding the inbox and the
//! message store when no external backend is configured.
//!
//! All writes go through **one writer thread** that batches whatever is queued
//! into a single transaction (group commit): while one batch is being
//! committed and fsynced, the next one accumulates, so an ack costs a share
//! of one fsync instead of a whole one. Each write runs in its own savepoint
//! (a one-statement write needs none: SQLite undoes a failing statement), so
//! one failing write does not roll back the others in its batch. A write
//! only reports success after the batch has committed.
//!
//! Reads use a small pool of separate connections (WAL readers never block
//! the writer).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

/// Errors of the embedded database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database writer is saturated ({0} writes queued)")]
    Overloaded(usize),
    #[error("the database is closed")]
    Closed,
    #[error("could not commit: {0}")]
    Commit(String),
    #[error("database I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("background task failed: {0}")]
    Task(String),
}

/// How hard SQLite syncs a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: an acked event survives power loss.
    Full,
    /// WAL-mode NORMAL: an acked event survives a process crash (kill -9) but
    /// the last commits may be lost on power loss.
    Normal,
}

/// Options for opening the embedded database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// Writes that may wait for the writer before new ones are refused.
    pub queue_capacity: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    pub readers: usize,
}

/// One queued write: runs inside the batch transaction, then learns whether
/// the batch committed.
trait WriteJob: Send {
    fn run(&mut self, conn: &Connection);
    fn complete(self: Box<Self>, commit: Result<(), String>);
}

struct ClosureJob<F, R> {
    work: Option<F>,
    result: Option<rusqlite::Result<R>>,
    reply: oneshot::Sender<Result<R, DbError>>,
}

impl<F, R> WriteJob for ClosureJob<F, R>
where
    F: FnOnce(&Connection) -> rusqlite::Result<R> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(work) = self.work.take() {
            self.result = Some(work(conn));
        }
    }

    fn complete(self: Box<Self>, commit: Result<(), String>) {
        let outcome = match (commit, self.result) {
            (Err(e), _) => Err(DbError::Commit(e)),
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Ok(()), Some(Err(e))) => Err(DbError::Sqlite(e)),
            (Ok(()), None) => Err(DbError::Closed),
        };
        // The caller may have given up waiting (timeout); that is fine.
        let _ = self.reply.send(outcome);
    }
}

fn in_savepoint<R>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    conn.execute_batch("SAVEPOINT job")?;
    match work(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE job")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

enum WriterMsg {
    Job(Box<dyn WriteJob>),
    Shutdown(oneshot::Sender<()>),
}

struct Inner {
    path: PathBuf,
    sender: mpsc::Sender<WriterMsg>,
    capacity: usize,
    readers: Mutex<Vec<Connection>>,
    max_readers: usize,
    writable: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
}

/// Handle to the embedded database; cheap to clone.
#[derive(Clone)]
pub struct SqliteDb {
    inner: Arc<Inner>,
}

/// The forwarding queue: a narrow schedule row per job, since leases,
/// retries and parking rewrite it (parking, a URL's whole backlog at once),
/// and the job document (~1.5 KiB) beside it, written only when the job is
/// queued or retried and deleted with its row.
const FORWARD_JOB_TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS forward_jobs (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    due_at_ms      INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL DEFAULT 0,
    priority       INTEGER NOT NULL DEFAULT 0,
    url            TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS forward_job_docs (
    seq INTEGER PRIMARY KEY REFERENCES forward_jobs (seq) ON DELETE CASCADE,
    job TEXT    NOT NULL
);
"#;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS inbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT    NOT NULL,
    bsp            TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    body           BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    pk               INTEGER PRIMARY KEY,
    message_id       TEXT    NOT NULL UNIQUE,
    wamid            TEXT    UNIQUE,
    bsp              TEXT    NOT NULL,
    bsp_message_id   TEXT,
    phone_number     TEXT    NOT NULL DEFAULT '',
    business_number  TEXT    NOT NULL DEFAULT '',
    campaign_id      TEXT,
    project_id       TEXT,
    project_owner_id TEXT    NOT NULL DEFAULT '',
    current_status   TEXT    NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL,
    doc              TEXT    NOT NULL,
    UNIQUE (bsp, bsp_message_id)
);
CREATE INDEX IF NOT EXISTS messages_phone ON messages (phone_number);
CREATE INDEX IF NOT EXISTS messages_campaign ON messages (campaign_id);
CREATE INDEX IF NOT EXISTS messages_owner ON messages (project_owner_id);
CREATE INDEX IF NOT EXISTS messages_created ON messages (created_at_ms);
CREATE INDEX IF NOT EXISTS messages_bsp_id ON messages (bsp_message_id);
CREATE TABLE IF NOT EXISTS webhooks (
    id               TEXT PRIMARY KEY,
    project_owner_id TEXT NOT NULL,
    project_id       TEXT NOT NULL DEFAULT '',
    doc              TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_owner ON webhooks (project_owner_id);
CREATE INDEX IF NOT EXISTS webhooks_project ON webhooks (project_id);
CREATE TABLE IF NOT EXISTS delivery_logs (
    id            TEXT PRIMARY KEY,
    webhook_id    TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    doc           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS delivery_logs_webhook ON delivery_logs (webhook_id, created_at_ms);
-- (forward_jobs_due, once on due_at_ms alone, only cost writes and misled
-- the planner: see the receive query.)
DROP INDEX IF EXISTS forward_jobs_due;
-- The receive order: a receive reads the index entries of the rows it
-- returns, not the whole backlog (a lease moves due_at_ms to the lease's end,
-- so jobs in flight are not in the way).
CREATE INDEX IF NOT EXISTS forward_jobs_ready ON forward_jobs (priority DESC, due_at_ms);
CREATE INDEX IF NOT EXISTS forward_jobs_url ON forward_jobs (url);
CREATE TABLE IF NOT EXISTS forward_dlq (
    id         TEXT PRIMARY KEY,
    dead_at_ms INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    job        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS unrecognized (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT    NOT NULL,
    bsp            TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    body           TEXT    NOT NULL
);
"#;

fn configure(conn: &Connection, sync: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each write runs in a savepoint; with a file temp store, a batch's
    // savepoint journal spills to a temporary file (a write syscall per
    // page) once past 64 KiB. It only ever holds one batch's pages.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// Moves a forwarding queue written before the job documents had a table of
/// their own (`forward_jobs.job`) to the current layout, keeping every job;
/// once, at open, in one transaction.
fn split_forward_job_docs(conn: &Connection) -> rusqlite::Result<()> {
    let unsplit: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('forward_jobs') WHERE name = 'job'",
        [],
        |r| r.get(0),
    )?;
    if !unsplit {
        return Ok(());
    }
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         DROP INDEX IF EXISTS forward_jobs_ready;
         DROP INDEX IF EXISTS forward_jobs_url;
         DROP INDEX IF EXISTS forward_jobs_due;
         ALTER TABLE forward_jobs RENAME TO forward_jobs_unsplit;
         {FORWARD_JOB_TABLES}
         INSERT INTO forward_jobs (seq, id, due_at_ms, lease_until_ms, priority, url)
             SELECT rowid, id, due_at_ms, lease_until_ms, priority, url FROM forward_jobs_unsplit;
         INSERT INTO forward_job_docs (seq, job) SELECT rowid, job FROM forward_jobs_unsplit;
         DROP TABLE forward_jobs_unsplit;
         COMMIT;"
    ))
}

impl SqliteDb {
    /// Opens (creating if needed) the database file, applies the schema and
    /// starts the writer thread.
    pub fn open(opts: &SqliteOptions) -> Result<SqliteDb, DbError> {
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(&opts.path)?;
        configure(&conn, opts.synchronous)?;
        split_forward_job_docs(&conn)?;
        conn.execute_batch(FORWARD_JOB_TABLES)?;
        conn.execute_batch(SCHEMA)?;

        let (sender, receiver) = mpsc::channel(opts.queue_capacity.max(1));
        let writable = Arc::new(AtomicBool::new(true));
        let last_error = Arc::new(Mutex::new(None));
        let max_batch = opts.max_batch.max(1);
        let thread = {
            let writable = writable.clone();
            let last_error = last_error.clone();
            std::thread::Builder::new()
                .name("zen-sqlite-writer".into())
                .spawn(move || writer_loop(conn, receiver, max_batch, writable, last_error))?
        };
        Ok(SqliteDb {
            inner: Arc::new(Inner {
                path: opts.path.clone(),
                sender,
                capacity: opts.queue_capacity.max(1),
                readers: Mutex::new(Vec::new()),
                max_readers: opts.readers.max(1),
                writable,
                last_error,
                writer_thread: Mutex::new(Some(thread)),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether the last commit succeeded (false after e.g. a full disk).
    pub fn is_writable(&self) -> bool {
        self.inner.writable.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// `/ready`'s view of this database, for each role it serves.
    pub fn health(&self) -> crate::store::BackendHealth {
        let up = self.is_writable();
        crate::store::BackendHealth {
            backend: "sqlite",
            up,
            detail: (!up).then(|| self.last_error()).flatten(),
        }
    }

    /// Runs `work` in the next group commit, waiting for room in the writer's
    /// queue. Resolves once the batch has committed.
    pub async fn write<R, F>(&self, work: F) -> Result<R, DbError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (job, reply) = Self::job(move |conn: &Connection| in_savepoint(conn, work));
        self.inner
            .sender
            .send(WriterMsg::Job(job))
            .await
            .map_err(|_| DbError::Closed)?;
        reply.await.map_err(|_| DbError::Closed)?
    }

    /// Like [`write`](Self::write) for `work` that runs **one statement**,
    /// but refuses at once when the writer's queue is full: the ingest path
    /// answers 503 rather than queueing without bound. A failing statement
    /// is undone by SQLite itself, so it needs no savepoint of its own (two
    /// statements and a sub-journal saved per ingest write).
    pub async fn try_write_statement<R, F>(&self, work: F) -> Result<R, DbError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (job, reply) = Self::job(work);
        match self.inner.sender.try_send(WriterMsg::Job(job)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(DbError::Overloaded(self.inner.capacity));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(DbError::Closed),
        }
        reply.await.map_err(|_| DbError::Closed)?
    }

    fn job<R, F>(work: F) -> (Box<dyn WriteJob>, oneshot::Receiver<Result<R, DbError>>)
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = ClosureJob {
            work: Some(work),
            result: None,
            reply,
        };
        (Box::new(job), rx)
    }

    /// Runs a read on a pooled read connection, off the async threads.
    pub async fn read<R, F>(&self, work: F) -> Result<R, DbError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.take_reader()?;
            let result = work(&conn);
            inner.return_reader(conn);
            result.map_err(DbError::from)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Commits what is queued, then stops the writer thread. Writes after
    /// this fail with [`DbError::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .sender
            .send(WriterMsg::Shutdown(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let handle = self
            .inner
            .writer_thread
            .lock()
            .ok()
            .and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection, DbError> {
        if let Some(conn) = self.readers.lock().ok().and_then(|mut r| r.pop()) {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "query_only", "ON")?;
        Ok(conn)
    }

    fn return_reader(&self, conn: Connection) {
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < self.max_readers {
                pool.push(conn);
            }
        }
    }
}

fn writer_loop(
    conn: Connection,
    mut receiver: mpsc::Receiver<WriterMsg>,
    max_batch: usize,
    writable: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    let mut jobs: Vec<Box<dyn WriteJob>> = Vec::with_capacity(max_batch);
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    while shutdown.is_none() {
        let Some(first) = receiver.blocking_recv() else {
            break;
        };
        match first {
            WriterMsg::Job(job) => jobs.push(job),
            WriterMsg::Shutdown(done) => shutdown = Some(done),
        }
        // Take whatever else is already waiting: that is the group commit.
        while shutdown.is_none() && jobs.len() < max_batch {
            match receiver.try_recv() {
                Ok(WriterMsg::Job(job)) => jobs.push(job),
                Ok(WriterMsg::Shutdown(done)) => shutdown = Some(done),
                Err(_) => break,
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let commit = commit_batch(&conn, &mut jobs);
        match &commit {
            Ok(()) => {
                writable.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, batch = jobs.len(), "embedded database commit failed");
                writable.store(false, Ordering::Relaxed);
                if let Ok(mut slot) = last_error.lock() {
                    *slot = Some(e.clone());
                }
            }
        }
        for job in jobs.drain(..) {
            job.complete(commit.clone());
        }
    }
    // Refuse what arrives from now on; what was queued before shutdown has
    // been committed above.
    receiver.close();
    while let Ok(msg) = receiver.try_recv() {
        if let WriterMsg::Job(job) = msg {
            job.complete(Err("the database is closing".into()));
        }
    }
    drop(conn);
    if let Some(done) = shutdown {
        let _ = done.send(());
    }
}

fn commit_batch(conn: &Connection, jobs: &mut [Box<dyn WriteJob>]) -> Result<(), String> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| e.to_string())?;
    for job in jobs.iter_mut() {
        job.run(conn);
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> SqliteDb {
        SqliteDb::open(&SqliteOptions {
            path: dir.join("t.db"),
            synchronous: Synchronous::Normal,
            queue_capacity: 1000,
            max_batch: 64,
            readers: 2,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_failing_write_does_not_roll_back_its_batch_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.write(|c| c.execute_batch("CREATE TABLE t (v INTEGER UNIQUE)"))
            .await
            .unwrap();
        let mut handles = Vec::new();
        for v in [1, 2, 2, 3] {
            let db = db.clone();
            handles.push(tokio::spawn(async move {
                db.write(move |c| c.execute("INSERT INTO t VALUES (?1)", [v]))
                    .await
            }));
        }
        let mut failures = 0;
        for h in handles {
            if h.await.unwrap().is_err() {
                failures += 1;
            }
        }
        assert_eq!(failures, 1);
        let n: i64 = db
            .read(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 3);
        db.close().await;
        assert!(matches!(
            db.write(|c| c.execute_batch("SELECT 1")).await,
            Err(DbError::Closed)
        ));
    }
}
