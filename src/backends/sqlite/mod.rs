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
//! Writes wait in two lanes (see [`Lane`]): acked ones (webhook appends, API
//! writes) are run first; the processor's and forwarder's bookkeeping takes
//! turns with them. The connection runs at `synchronous = NORMAL`, and a
//! commit that holds acked writes is followed by an fsync of the WAL (with
//! `SQLITE_SYNCHRONOUS=full`), so bookkeeping alone never waits for the disk.
//! The writer holds at most `max_batch` jobs taken off its channel; past
//! that the channel fills and appends are refused (503).
//!
//! Reads use a small pool of separate connections (WAL readers never block
//! the writer).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

pub mod contacts;
pub mod forward_queue;
pub mod inbox;
pub mod schema;
pub mod sessions;
pub mod store;
pub mod webhooks;

pub use forward_queue::SqliteForwardQueue;
pub use inbox::SqliteInbox;
pub use sessions::SqliteSessionStore;
pub use store::SqliteStore;
use tokio::sync::{mpsc, oneshot};
pub use webhooks::SqliteWebhookStore;

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
    #[error(
        "{0}: SQLite could not use WAL mode here (journal mode {1:?}); the embedded store needs it"
    )]
    NoWal(PathBuf, String),
    #[error(
        "{path}: the data file is at schema version {found}, newer than this zen-gateway \
         knows ({known}); run the zen-gateway that wrote it, or restore a backup taken before \
         the upgrade"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        known: u32,
    },
}

/// A JSON encoding failure, as the error a statement returns.
pub(crate) fn json_err(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// A JSON document column, decoded.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: String) -> rusqlite::Result<T> {
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The embedded database's failures, as the roles see them: a saturated
/// writer is back-pressure (503 at ingest), data SQLite refuses is
/// [`StoreError::Invalid`], anything else an outage.
impl From<DbError> for crate::queue::QueueError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Overloaded(_) => crate::queue::QueueError::Overloaded(e.to_string()),
            other => crate::queue::QueueError::Unavailable(other.to_string()),
        }
    }
}

impl From<DbError> for crate::forwarding::ForwardQueueError {
    fn from(e: DbError) -> Self {
        crate::forwarding::ForwardQueueError::Unavailable(e.to_string())
    }
}

impl From<DbError> for crate::store::StoreError {
    fn from(e: DbError) -> Self {
        if e.is_refused_data() {
            crate::store::StoreError::Invalid(e.to_string())
        } else {
            crate::store::StoreError::Unavailable(e.to_string())
        }
    }
}

impl DbError {
    /// SQLite refused the data itself (a constraint, a value too big, a
    /// document that does not decode): the same write fails the same way
    /// again. Anything else (a full disk, I/O, a saturated writer) may pass
    /// later.
    pub fn is_refused_data(&self) -> bool {
        use rusqlite::ErrorCode;
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.code,
                ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch
            ),
            DbError::Sqlite(
                rusqlite::Error::ToSqlConversionFailure(_)
                | rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)
                | rusqlite::Error::Utf8Error(_)
                | rusqlite::Error::NulError(_),
            ) => true,
            _ => false,
        }
    }
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
    conn: &Connection, work: impl FnOnce(&Connection) -> rusqlite::Result<R>,
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

/// Which queue a write waits in, and how it is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Someone is told it is stored once it commits (a BSP's webhook, an API
    /// call): run ahead of background work, and its commit is synced to disk
    /// with the configured `synchronous`.
    Acked,
    /// The processor's and forwarder's bookkeeping, redone from what is
    /// acked if lost: its commits are not synced on their own (they survive
    /// a process crash; the next acked commit's sync covers them too).
    Background,
}

enum WriterMsg {
    Job(Box<dyn WriteJob>, Lane),
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
    wal_syncs: Arc<AtomicU64>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
}

/// Handle to the embedded database; cheap to clone.
#[derive(Clone)]
pub struct SqliteDb {
    inner: Arc<Inner>,
}

/// WAL pages (4 KiB each) between automatic checkpoints: a WAL of up to
/// about 16 MiB beside the data file.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4096;

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // `FULL` is applied per commit by the writer, to the commits holding
    // acked writes only: see `sync_wal`.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each write runs in a savepoint; with a file temp store, a batch's
    // savepoint journal spills to a temporary file (a write syscall per
    // page) once past 64 KiB. It only ever holds one batch's pages.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

impl SqliteDb {
    /// Opens (creating if needed) the database file, applies the schema and
    /// starts the writer thread.
    pub fn open(opts: &SqliteOptions) -> Result<SqliteDb, DbError> {
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let fresh = std::fs::metadata(&opts.path).map_or(true, |m| m.len() == 0);
        let conn = Connection::open(&opts.path)?;
        if fresh {
            // A new file hands the pages retention empties back to the file
            // system (`PRAGMA incremental_vacuum` after each prune); SQLite
            // takes this only before the file's first page is written.
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        }
        configure(&conn)?;
        // Checkpoints (copying the WAL into the file, and syncing both) run
        // in the writer's commits. At SQLite's default, every 1,000 pages,
        // they ran several times a second under load and copied the same
        // hot pages (indexes, the inbox's tail) each time.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        // The per-commit WAL sync relies on WAL mode, which SQLite silently
        // declines on some file systems (no shared memory).
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::NoWal(opts.path.clone(), mode));
        }
        schema::migrate(&conn, &opts.path)?;

        let (sender, receiver) = mpsc::channel(opts.queue_capacity.max(1));
        let writable = Arc::new(AtomicBool::new(true));
        let last_error = Arc::new(Mutex::new(None));
        let wal_syncs = Arc::new(AtomicU64::new(0));
        let mut wal = opts.path.clone().into_os_string();
        wal.push("-wal");
        let writer = Writer {
            max_batch: opts.max_batch.max(1),
            acked_sync: opts.synchronous,
            wal: wal.into(),
            wal_syncs: wal_syncs.clone(),
            writable: writable.clone(),
            last_error: last_error.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("zen-sqlite-writer".into())
            .spawn(move || writer_loop(conn, receiver, writer))?;
        Ok(SqliteDb {
            inner: Arc::new(Inner {
                path: opts.path.clone(),
                sender,
                capacity: opts.queue_capacity.max(1),
                readers: Mutex::new(Vec::new()),
                max_readers: opts.readers.max(1),
                writable,
                last_error,
                wal_syncs,
                writer_thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The id this data file was given when it was created: it names the
    /// deployment where a shared backend needs a namespace (Redis keys).
    pub async fn deployment_id(&self) -> Result<String, DbError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT value FROM meta WHERE key = 'deployment_id'",
                [],
                |r| r.get(0),
            )
        })
        .await
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many commits have been made durable by an fsync of the WAL.
    pub fn wal_syncs(&self) -> u64 {
        self.inner.wal_syncs.load(Ordering::Relaxed)
    }

    /// Whether the last commit succeeded (false after e.g. a full disk).
    pub fn is_writable(&self) -> bool {
        self.inner.writable.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// `/ready`'s view of this database, for each role it serves.
    pub fn health(&self) -> crate::health::BackendHealth {
        let up = self.is_writable();
        crate::health::BackendHealth {
            backend: "sqlite",
            up,
            detail: (!up).then(|| self.last_error()).flatten(),
        }
    }

    /// Runs `work` in the next group commit, waiting for room in the writer's
    /// queue. Resolves once the batch has committed (and, with `synchronous`
    /// full, is on disk): for writes someone is told are stored.
    pub async fn write<R, F>(&self, work: F) -> Result<R, DbError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.write_in(Lane::Acked, work).await
    }

    /// Like [`write`](Self::write) for bookkeeping that is redone from acked
    /// data when lost (the processor's results, forwarding state). It waits
    /// behind acked writes and resolves once committed, without an fsync of
    /// its own: it survives a process crash; after a power loss the WAL
    /// keeps a prefix of the commits, so it can only be lost together with
    /// everything committed after it, none of which was acked.
    pub async fn write_background<R, F>(&self, work: F) -> Result<R, DbError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.write_in(Lane::Background, work).await
    }

    /// A write of the processor's results: bookkeeping
    /// ([`write_background`](Self::write_background)) while the inbox is
    /// this file, whose entry outlives a lost commit; acked and synced
    /// ([`write`](Self::write)) with `synced`, when the inbox is a broker
    /// that is acked right after and could not hand the entry out again.
    pub async fn write_result<R, F>(&self, synced: bool, work: F) -> Result<R, DbError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let lane = if synced {
            Lane::Acked
        } else {
            Lane::Background
        };
        self.write_in(lane, work).await
    }

    async fn write_in<R, F>(&self, lane: Lane, work: F) -> Result<R, DbError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (job, reply) = Self::job(move |conn: &Connection| in_savepoint(conn, work));
        self.inner
            .sender
            .send(WriterMsg::Job(job, lane))
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
        match self.inner.sender.try_send(WriterMsg::Job(job, Lane::Acked)) {
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

    /// Deletes up to `limit` of the oldest rows of `table` whose `column`
    /// (epoch ms) is before `before_ms`, on the background lane, then gives
    /// the freed pages back to the file system; returns how many went. The
    /// one delete every retention kind of the embedded file uses.
    pub async fn prune_rows(
        &self, table: &'static str, column: &'static str, before_ms: i64, limit: usize,
    ) -> Result<u64, DbError> {
        self.write_background(move |c| {
            let n = c.execute(
                &format!(
                    "DELETE FROM {table} WHERE rowid IN \
                     (SELECT rowid FROM {table} WHERE {column} < ?1 ORDER BY {column} LIMIT ?2)"
                ),
                rusqlite::params![before_ms, limit as i64],
            )?;
            if n > 0 {
                // A no-op unless the file was created with incremental
                // auto-vacuum (see the schema).
                c.query_row("PRAGMA incremental_vacuum(256)", [], |_| Ok(()))
                    .optional()?;
            }
            Ok(n as u64)
        })
        .await
    }

    /// Rows in `table` (the depth of a queue, the DLQ, the quarantine).
    pub async fn count_rows(&self, table: &'static str) -> Result<u64, DbError> {
        let n: i64 = self
            .read(move |c| c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)))
            .await?;
        Ok(n as u64)
    }

    /// A small database in `dir` for unit tests: relaxed fsync, a short
    /// write queue.
    #[cfg(test)]
    pub(crate) fn open_for_test(dir: &Path) -> SqliteDb {
        Self::open_for_test_with(dir, Synchronous::Normal)
    }

    /// [`Self::open_for_test`] that syncs every commit holding acked
    /// writes (for tests that count WAL syncs).
    #[cfg(test)]
    pub(crate) fn open_synced_for_test(dir: &Path) -> SqliteDb {
        Self::open_for_test_with(dir, Synchronous::Full)
    }

    #[cfg(test)]
    fn open_for_test_with(dir: &Path, synchronous: Synchronous) -> SqliteDb {
        Self::open(&SqliteOptions {
            path: dir.join("zen.db"),
            synchronous,
            queue_capacity: 1000,
            max_batch: 64,
            readers: 2,
        })
        .expect("a test database opens")
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

/// What the writer thread is given.
struct Writer {
    max_batch: usize,
    /// `synchronous` for commits holding acked writes.
    acked_sync: Synchronous,
    wal: PathBuf,
    wal_syncs: Arc<AtomicU64>,
    writable: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
}

fn writer_loop(conn: Connection, mut receiver: mpsc::Receiver<WriterMsg>, writer: Writer) {
    let Writer {
        max_batch,
        acked_sync,
        wal,
        wal_syncs,
        writable,
        last_error,
    } = writer;
    let mut queued = Queued::default();
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(max_batch);
    let mut last_was_acked = false;
    let acked_seconds = crate::metrics::sqlite_transaction_seconds("acked");
    let background_seconds = crate::metrics::sqlite_transaction_seconds("background");
    loop {
        if queued.is_empty() {
            if queued.shutdown.is_some() {
                break;
            }
            match receiver.blocking_recv() {
                Some(msg) => queued.push(msg),
                None => break,
            }
        }
        queued.take_waiting(&mut receiver, max_batch);
        if queued.is_empty() {
            continue;
        }
        // Acked writes go first, but never twice in a row while background
        // work waits: under a flood of webhooks the processor still gets a turn.
        let lane = if !queued.acked.is_empty() && (queued.background.is_empty() || !last_was_acked)
        {
            Lane::Acked
        } else {
            Lane::Background
        };
        let began = std::time::Instant::now();
        let commit = run_transaction(
            &conn,
            &mut queued,
            &mut receiver,
            &mut batch,
            lane,
            max_batch,
        )
        .and_then(|acked| {
            if acked && acked_sync == Synchronous::Full {
                sync_wal(&wal)?;
                wal_syncs.fetch_add(1, Ordering::Relaxed);
            }
            let seconds = if acked {
                &acked_seconds
            } else {
                &background_seconds
            };
            seconds.record(began.elapsed().as_secs_f64());
            Ok(())
        });
        last_was_acked = lane == Lane::Acked;
        match &commit {
            Ok(()) => {
                writable.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, batch = batch.len(), "embedded database commit failed");
                writable.store(false, Ordering::Relaxed);
                if let Ok(mut slot) = last_error.lock() {
                    *slot = Some(e.clone());
                }
            }
        }
        for job in batch.drain(..) {
            job.complete(commit.clone());
        }
    }
    // Refuse what arrives from now on; what was queued before shutdown has
    // been committed above.
    receiver.close();
    while let Ok(msg) = receiver.try_recv() {
        if let WriterMsg::Job(job, _) = msg {
            job.complete(Err("the database is closing".into()));
        }
    }
    drop(conn);
    if let Some(done) = queued.shutdown {
        let _ = done.send(());
    }
}

/// Jobs taken off the channel, by lane, waiting for a transaction.
#[derive(Default)]
struct Queued {
    acked: VecDeque<Box<dyn WriteJob>>,
    background: VecDeque<Box<dyn WriteJob>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Queued {
    fn is_empty(&self) -> bool {
        self.acked.is_empty() && self.background.is_empty()
    }

    fn push(&mut self, msg: WriterMsg) {
        match msg {
            WriterMsg::Job(job, Lane::Acked) => self.acked.push_back(job),
            WriterMsg::Job(job, Lane::Background) => self.background.push_back(job),
            WriterMsg::Shutdown(done) => self.shutdown = Some(done),
        }
    }

    /// Moves what is waiting in the channel here, holding at most `limit`
    /// jobs: past that the channel fills, and ingest refuses (503) rather
    /// than queue without bound. Nothing sent after a shutdown is taken.
    fn take_waiting(&mut self, receiver: &mut mpsc::Receiver<WriterMsg>, limit: usize) {
        while self.shutdown.is_none() && self.acked.len() + self.background.len() < limit {
            match receiver.try_recv() {
                Ok(msg) => self.push(msg),
                Err(_) => break,
            }
        }
    }
}

/// Runs one transaction into `batch` and commits it: on an acked turn, the
/// acked writes (and those arriving meanwhile); on a background turn,
/// background writes until an acked one arrives, which then joins this
/// commit: it waits for at most the write in progress. Returns whether the
/// transaction holds acked writes (then it needs the WAL synced).
fn run_transaction(
    conn: &Connection, queued: &mut Queued, receiver: &mut mpsc::Receiver<WriterMsg>,
    batch: &mut Vec<Box<dyn WriteJob>>, lane: Lane, max_batch: usize,
) -> Result<bool, String> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        // Nothing can commit: fail everything taken so far.
        batch.extend(queued.acked.drain(..));
        batch.extend(queued.background.drain(..));
        return Err(e.to_string());
    }
    if lane == Lane::Background {
        // At least one, even with acked writes waiting: see the turns.
        while batch.len() < max_batch && (batch.is_empty() || queued.acked.is_empty()) {
            let Some(mut job) = queued.background.pop_front() else {
                break;
            };
            job.run(conn);
            batch.push(job);
            queued.take_waiting(receiver, max_batch);
        }
    }
    let mut acked = false;
    loop {
        while batch.len() < max_batch {
            let Some(mut job) = queued.acked.pop_front() else {
                break;
            };
            job.run(conn);
            batch.push(job);
            acked = true;
        }
        queued.take_waiting(receiver, max_batch);
        if queued.acked.is_empty() || batch.len() >= max_batch {
            break;
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.to_string());
    }
    Ok(acked)
}

/// Makes every commit so far survive a power loss: what SQLite's
/// `synchronous = FULL` does after each commit in WAL mode (the writer runs
/// at `NORMAL`, so that background-only commits skip it).
fn sync_wal(wal: &Path) -> Result<(), String> {
    // Opened each time: a handle kept across commits would go on syncing a
    // deleted file should the WAL ever be recreated.
    std::fs::File::open(wal)
        .and_then(|f| f.sync_data())
        .map_err(|e| format!("syncing {}: {e}", wal.display()))
}

/// What `zen-gateway backup` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupReport {
    pub source: PathBuf,
    pub backup: PathBuf,
    pub bytes: u64,
    pub schema_version: u32,
    /// `PRAGMA integrity_check` of the copy, when `--verify` asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<String>,
    pub seconds: f64,
}

/// Copies the embedded database at `source` to `dest` with SQLite's online
/// backup API, in one step: one read transaction over the source, which in
/// WAL mode never blocks the gateway's writer (a stepwise copy restarts
/// whenever another connection writes, and may never finish under steady
/// load). The copy is the database as of the moment that read began.
///
/// `dest` is created here, mode 0600 from its first byte (the file holds
/// message contents and webhook secrets), and never overwritten. With
/// `verify` the copy is opened again and `PRAGMA integrity_check` run.
/// Restore: stop the gateway, put the copy in `DATA_DIR` as `zen.db` (with
/// no `zen.db-wal` / `zen.db-shm` beside it), start it.
pub fn backup_to(source: &Path, dest: &Path, verify: bool) -> anyhow::Result<BackupReport> {
    let started = std::time::Instant::now();
    if !source.exists() {
        anyhow::bail!("no embedded database at {}", source.display());
    }
    // An empty file is a new database to SQLite; created exclusively, so an
    // existing file (or a link planted there) is refused, not followed.
    create_private(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let copy = || -> anyhow::Result<u32> {
        let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open {}", source.display()))?;
        src.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut dst = Connection::open_with_flags(
            dest,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
            // -1: every page in one step, under one read transaction.
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => {}
                other => anyhow::bail!("the backup did not complete: {other:?}"),
            }
        }
        let version = schema::version(&dst)?;
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        Ok(version)
    };
    let schema_version = match copy() {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(dest);
            return Err(e.context(format!("backup to {} failed", dest.display())));
        }
    };
    let integrity = if verify {
        let conn = Connection::open_with_flags(dest, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open the copy {}", dest.display()))?;
        let rows: Vec<String> = conn
            .prepare("PRAGMA integrity_check")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let verdict = rows.join("; ");
        if verdict != "ok" {
            anyhow::bail!(
                "the copy {} fails its integrity check: {verdict}",
                dest.display()
            );
        }
        Some(verdict)
    } else {
        None
    };
    Ok(BackupReport {
        source: source.to_path_buf(),
        backup: dest.to_path_buf(),
        bytes: std::fs::metadata(dest)?.len(),
        schema_version,
        integrity,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Creates `path` empty and readable by its owner only, failing when it
/// exists.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

/// Takes the data directory's lock (`DATA_DIR/zen.lock`), or says who holds
/// it. An advisory lock: the CLI commands (which do not take it) still work
/// beside a running gateway, and the OS releases it when the process dies,
/// however it dies.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create DATA_DIR {}", data_dir.display()))?;
    let path = data_dir.join("zen.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match try_lock(&file) {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => anyhow::bail!(
            "another zen-gateway already serves from DATA_DIR {} (it holds {}); \
             each gateway needs a data directory of its own",
            data_dir.display(),
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

#[cfg(target_os = "linux")]
fn try_lock(file: &std::fs::File) -> std::io::Result<()> {
    use rustix::fs::{FlockOperation, flock};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(std::io::Error::from)
}

/// Elsewhere there is no lock (the supported platform is Linux).
#[cfg(not(target_os = "linux"))]
fn try_lock(_file: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> SqliteDb {
        SqliteDb::open_for_test(dir)
    }

    /// A database in a fresh directory (kept alive by the returned guard),
    /// with `schema` applied.
    async fn open_with_schema(schema: &'static str) -> (tempfile::TempDir, SqliteDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.write(move |c| c.execute_batch(schema)).await.unwrap();
        (dir, db)
    }

    fn open_with(dir: &Path, synchronous: Synchronous) -> SqliteDb {
        SqliteDb::open(&SqliteOptions {
            path: dir.join("t.db"),
            synchronous,
            queue_capacity: 1000,
            max_batch: 64,
            readers: 2,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn the_writer_checkpoints_the_wal_every_4096_pages() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let pages: i64 = db
            .write(|c| c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(pages, WAL_AUTOCHECKPOINT_PAGES);
        assert_eq!(pages, 4096);
    }

    #[tokio::test]
    async fn a_failing_write_does_not_roll_back_its_batch_neighbours() {
        let (_dir, db) = open_with_schema("CREATE TABLE t (v INTEGER UNIQUE)").await;
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

    #[tokio::test]
    async fn only_commits_holding_acked_writes_sync_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_with(dir.path(), Synchronous::Full);
        let syncs = || db.wal_syncs();
        let noop = |_: &Connection| Ok(());
        db.write(|c| c.execute_batch("CREATE TABLE t (v INTEGER)"))
            .await
            .unwrap();
        assert_eq!(syncs(), 1);
        db.write_background(|c| c.execute("INSERT INTO t VALUES (1)", []))
            .await
            .unwrap();
        db.write_background(noop).await.unwrap();
        assert_eq!(syncs(), 1);
        db.try_write_statement(|c| c.execute("INSERT INTO t VALUES (2)", []))
            .await
            .unwrap();
        assert_eq!(syncs(), 2);
        db.write(noop).await.unwrap();
        assert_eq!(syncs(), 3);
        db.close().await;

        // With `normal`, nothing is synced at commit.
        let dir = tempfile::tempdir().unwrap();
        let db = open_with(dir.path(), Synchronous::Normal);
        db.write(noop).await.unwrap();
        assert_eq!(db.wal_syncs(), 0);
        db.close().await;
    }

    #[tokio::test]
    async fn an_acked_write_does_not_wait_for_queued_background_writes() {
        let (_dir, db) = open_with_schema("CREATE TABLE t (seq INTEGER PRIMARY KEY, v TEXT)").await;
        let insert =
            |v: &'static str| move |c: &Connection| c.execute("INSERT INTO t (v) VALUES (?1)", [v]);
        // Hold the writer in a background write until two more are queued
        // behind it: a background one, then an acked one.
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holding = tokio::spawn({
            let db = db.clone();
            async move {
                db.write_background(move |c| {
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    insert("held")(c)
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        let background = tokio::spawn({
            let db = db.clone();
            async move { db.write_background(insert("background")).await }
        });
        // Queued behind the held write: the channel has that much less room.
        let queued_behind = |n| db.inner.sender.capacity() <= db.inner.capacity - n;
        while !queued_behind(1) {
            tokio::task::yield_now().await;
        }
        let acked = tokio::spawn({
            let db = db.clone();
            async move { db.try_write_statement(insert("acked")).await }
        });
        while !queued_behind(2) {
            tokio::task::yield_now().await;
        }
        release_tx.send(()).unwrap();
        for h in [holding, background, acked] {
            h.await.unwrap().unwrap();
        }
        let order: Vec<String> = db
            .read(|c| {
                c.prepare("SELECT v FROM t ORDER BY seq")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .await
            .unwrap();
        assert_eq!(order, ["held", "acked", "background"]);
        db.close().await;
    }

    #[tokio::test]
    async fn background_writes_get_turns_under_a_flood_of_acked_ones() {
        let (_dir, db) = open_with_schema("CREATE TABLE t (v INTEGER)").await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut flood = Vec::new();
        for _ in 0..8 {
            let (db, stop) = (db.clone(), stop.clone());
            flood.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = db
                        .try_write_statement(|c| c.execute("INSERT INTO t VALUES (1)", []))
                        .await;
                    n += 1;
                }
                n
            }));
        }
        let background = async {
            for _ in 0..50 {
                db.write_background(|c| c.execute("INSERT INTO t VALUES (2)", []))
                    .await
                    .unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), background)
            .await
            .expect("background writes starved");
        stop.store(true, Ordering::Relaxed);
        for h in flood {
            assert!(h.await.unwrap() > 0);
        }
        db.close().await;
    }
}
