//! The embedded file's schema, versioned with `PRAGMA user_version` and
//! an ordered list of migrations. Opening a file applies the migrations it
//! lacks, each in its own transaction with the version bump, so a crash
//! leaves it at one version or the next; a file from a newer gateway is
//! refused with a message that says so.
//!
//! Version 0 is a file from before the versioning (or a new one): its tables
//! were created with `CREATE … IF NOT EXISTS`, so the first migration is that
//! same baseline, written to be idempotent.

use std::path::Path;

use rusqlite::Connection;

use super::DbError;

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

/// Version 1: everything up to the versioning (inbox, messages, webhooks,
/// delivery logs, the forwarding queue and its DLQ, unrecognized bodies).
fn v1_baseline(conn: &Connection) -> rusqlite::Result<()> {
    split_forward_job_docs(conn)?;
    conn.execute_batch(FORWARD_JOB_TABLES)?;
    conn.execute_batch(V1_TABLES)
}

const V1_TABLES: &str = r#"
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

/// Version 2: the quarantine, the file's facts (its deployment id), and the
/// secrets of legacy forwarding jobs. (`IF NOT EXISTS`: development files
/// had these tables before the versioning.)
const V2_QUARANTINE_META_LEGACY_SECRETS: &str = r#"
CREATE TABLE IF NOT EXISTS quarantine (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id          TEXT    NOT NULL UNIQUE,
    bsp               TEXT    NOT NULL,
    received_at_ms    INTEGER NOT NULL,
    quarantined_at_ms INTEGER NOT NULL,
    attempts          INTEGER NOT NULL,
    error             TEXT    NOT NULL,
    body              BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('deployment_id', lower(hex(randomblob(8))));
CREATE TABLE IF NOT EXISTS legacy_job_secrets (
    delivery_log_id TEXT PRIMARY KEY,
    secret          TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL
);
"#;

/// Version 3: provider notifications that are not about one message
/// (template status, account alerts and updates, quality updates,
/// out-of-band errors), one row per event.
const V3_NOTIFICATIONS: &str = r#"
CREATE TABLE notifications (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT    NOT NULL UNIQUE,
    bsp            TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    body           TEXT    NOT NULL
);
CREATE INDEX notifications_kind ON notifications (kind, id);
"#;

/// Version 4: the indexes retention deletes by (oldest first).
const V4_RETENTION_INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS messages_updated ON messages (updated_at_ms);
CREATE INDEX IF NOT EXISTS delivery_logs_created ON delivery_logs (created_at_ms);
CREATE INDEX IF NOT EXISTS forward_dlq_dead_at ON forward_dlq (dead_at_ms);
"#;

/// The console's lookups: a message's deliveries by the events of its
/// history; pages of messages in keyset order (`created_at_ms`,
/// `message_id`), so that a page after the first is a range read of the
/// index, not a sort of the table; and messages of one status in that order
/// (a rare status would otherwise walk the whole table).
const V5_CONSOLE_INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS delivery_logs_event ON delivery_logs (json_extract(doc, '$.event_id'));
CREATE INDEX IF NOT EXISTS messages_created_id ON messages (created_at_ms, message_id);
DROP INDEX IF EXISTS messages_created;
CREATE INDEX IF NOT EXISTS messages_status_created ON messages (current_status, created_at_ms, message_id);
"#;

/// Version 6: operator sessions, kept so that a sign-out or an expiry
/// outlives a restart; and the legacy job secrets held for dead-lettered
/// deliveries (`dead_at_ms`), which live as long as their DLQ entry.
const V6_SESSIONS_HELD_SECRETS: &str = r#"
CREATE TABLE console_sessions (
    id_hash       TEXT    PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at_ms);
ALTER TABLE legacy_job_secrets ADD COLUMN dead_at_ms INTEGER;
CREATE INDEX legacy_job_secrets_created ON legacy_job_secrets (created_at_ms);
CREATE INDEX legacy_job_secrets_dead ON legacy_job_secrets (dead_at_ms) WHERE dead_at_ms IS NOT NULL;
"#;

/// Version 7: the WhatsApp user of a record (its BSUID, to list a user's
/// messages) and contacts, one per user per business number, found by any
/// identifier they ever had (`contact_keys`).
const V7_CONTACTS: &str = r#"
ALTER TABLE messages ADD COLUMN user_id TEXT;
CREATE INDEX messages_user_created ON messages (user_id, created_at_ms, message_id)
    WHERE user_id IS NOT NULL;
CREATE TABLE contacts (
    contact_id      TEXT    PRIMARY KEY,
    business_number TEXT    NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    doc             TEXT    NOT NULL
);
CREATE INDEX contacts_updated ON contacts (updated_at_ms);
CREATE TABLE contact_keys (
    business_number TEXT NOT NULL,
    key             TEXT NOT NULL,
    contact_id      TEXT NOT NULL,
    PRIMARY KEY (business_number, key)
) WITHOUT ROWID;
CREATE INDEX contact_keys_key ON contact_keys (key);
CREATE INDEX contact_keys_contact ON contact_keys (contact_id);
"#;

/// Version 8: the trace an accepted webhook continues (its W3C
/// `traceparent`), kept with the entry and through a quarantine.
const V8_TRACES: &str = r#"
ALTER TABLE inbox ADD COLUMN traceparent TEXT;
ALTER TABLE quarantine ADD COLUMN traceparent TEXT;
"#;

/// One step of the schema.
enum Step {
    Sql(&'static str),
    Code(fn(&Connection) -> rusqlite::Result<()>),
}

/// The migrations, in order: a file at version N has had the first N.
/// Append only; never edit a step that has shipped.
const MIGRATIONS: &[(&str, Step)] = &[
    ("baseline", Step::Code(v1_baseline)),
    (
        "quarantine, meta, legacy job secrets",
        Step::Sql(V2_QUARANTINE_META_LEGACY_SECRETS),
    ),
    ("notifications", Step::Sql(V3_NOTIFICATIONS)),
    ("retention indexes", Step::Sql(V4_RETENTION_INDEXES)),
    ("console indexes", Step::Sql(V5_CONSOLE_INDEXES)),
    (
        "console sessions, held legacy secrets",
        Step::Sql(V6_SESSIONS_HELD_SECRETS),
    ),
    ("record users, contacts", Step::Sql(V7_CONTACTS)),
    ("inbox traces", Step::Sql(V8_TRACES)),
];

/// The schema version this gateway writes.
pub const CURRENT_VERSION: u32 = MIGRATIONS.len() as u32;

/// The file's schema version.
pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings the file to [`CURRENT_VERSION`]; refuses a newer one.
pub fn migrate(conn: &Connection, path: &Path) -> Result<(), DbError> {
    let found = version(conn)?;
    if found > CURRENT_VERSION {
        return Err(DbError::NewerSchema {
            path: path.to_path_buf(),
            found,
            known: CURRENT_VERSION,
        });
    }
    for (i, (name, step)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let to = i as u32 + 1;
        // The baseline moves tables itself (in its own transaction).
        if let Step::Code(f) = step {
            f(conn)?;
            conn.pragma_update(None, "user_version", to)?;
        } else if let Step::Sql(sql) = step {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {sql} PRAGMA user_version = {to}; COMMIT;"
            ))
            .inspect_err(|_| {
                let _ = conn.execute_batch("ROLLBACK");
            })?;
        }
        tracing::info!(version = to, migration = %name, "embedded database migrated");
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::sqlite::{SqliteDb, SqliteOptions, Synchronous};

    fn options(path: &Path) -> SqliteOptions {
        SqliteOptions {
            path: path.to_path_buf(),
            synchronous: Synchronous::Normal,
            queue_capacity: 16,
            max_batch: 16,
            readers: 1,
        }
    }

    fn tables(path: &Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_file_is_at_the_current_version_and_reopening_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zen.db");
        let db = SqliteDb::open(&options(&path)).unwrap();
        let id = db.deployment_id().await.unwrap();
        db.close().await;
        assert_eq!(
            version(&Connection::open(&path).unwrap()).unwrap(),
            CURRENT_VERSION
        );
        for t in [
            "inbox",
            "messages",
            "quarantine",
            "meta",
            "legacy_job_secrets",
            "forward_jobs",
        ] {
            assert!(tables(&path).iter().any(|n| n == t), "{t}");
        }
        let db = SqliteDb::open(&options(&path)).unwrap();
        assert_eq!(db.deployment_id().await.unwrap(), id);
        db.close().await;
    }

    #[tokio::test]
    async fn a_file_from_a_newer_gateway_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zen.db");
        SqliteDb::open(&options(&path)).unwrap().close().await;
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", CURRENT_VERSION + 1)
            .unwrap();
        let err = SqliteDb::open(&options(&path)).err().expect("refused");
        let text = err.to_string();
        assert!(matches!(err, DbError::NewerSchema { .. }), "{text}");
        assert!(text.contains("newer than this zen-gateway"), "{text}");
        assert_eq!(
            version(&Connection::open(&path).unwrap()).unwrap(),
            CURRENT_VERSION + 1
        );
    }

    /// A file as the previous release wrote it (no version, the baseline's
    /// tables, rows in them) is brought to the current version, rows kept.
    #[tokio::test]
    async fn a_file_from_the_previous_release_is_migrated_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zen.db");
        // Compiled in: the test does not depend on the checkout it was
        // built from (a test binary outlives a removed clone).
        let fixture = include_str!("../../../tests/fixtures/zen-db-v1.sql");
        Connection::open(&path)
            .unwrap()
            .execute_batch(fixture)
            .unwrap();
        assert_eq!(version(&Connection::open(&path).unwrap()).unwrap(), 0);
        let db = SqliteDb::open(&options(&path)).unwrap();
        let (messages, inbox): (i64, i64) = db
            .read(|c| {
                Ok((
                    c.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))?,
                    c.query_row("SELECT COUNT(*) FROM inbox", [], |r| r.get(0))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!((messages, inbox), (1, 1));
        assert_eq!(db.deployment_id().await.unwrap().len(), 16);
        db.close().await;
        assert_eq!(
            version(&Connection::open(&path).unwrap()).unwrap(),
            CURRENT_VERSION
        );
    }
}
