//! The embedded message store: `messages` rows in the shared SQLite file.
//!
//! Each row keeps the full record as a JSON document plus the columns that
//! are looked up or indexed. Events are applied read-modify-write inside the
//! single writer's transaction, so there is no lost update: the writer is
//! the only one that ever writes.

use async_trait::async_trait;
use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteDb;
use crate::model::{
    Bsp, MessageRecord, Notification, OutboundRegistration, UnifiedEvent, UnrecognizedEvent,
};
use crate::store::StoreResult;
use crate::store::working_set::{Candidates, WorkingSet};
use crate::store::{
    Applied, BackendHealth, Kept, MessagePage, MessageQuery, MessageStats, MessageStore,
    NotificationQuery, StatsQuery,
};

/// The message store on the embedded database.
#[derive(Clone)]
pub struct SqliteStore {
    db: SqliteDb,
    /// Applying events commits in the acked lane (synced to disk) rather
    /// than as bookkeeping: see [`SqliteStore::synced`].
    synced: bool,
}

impl SqliteStore {
    pub fn new(db: SqliteDb) -> Self {
        SqliteStore { db, synced: false }
    }

    /// Applied events (and unrecognized bodies) are synced to disk before
    /// `apply` returns. Needed when the inbox is not the same file (a
    /// RabbitMQ inbox): the processor acks the broker after `apply`, and an
    /// unsynced commit lost to a power loss could not be redone. With the
    /// embedded inbox, bookkeeping and inbox share the file, so a lost
    /// commit's entry is still in the inbox.
    pub fn synced(mut self) -> Self {
        self.synced = true;
        self
    }

    async fn write_applied<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        Ok(self.db.write_result(self.synced, work).await?)
    }

    /// An acked write (an API call someone is told is stored).
    async fn write<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        Ok(self.db.write(work).await?)
    }

    /// A read on one of the readers.
    async fn read<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        Ok(self.db.read(work).await?)
    }
}

type Row = (i64, MessageRecord);

fn decode(doc: String) -> rusqlite::Result<MessageRecord> {
    serde_json::from_str(&doc).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Appends ` AND <column> = ?` for each given filter (columns are ours,
/// values are bound).
fn and_equal<const N: usize>(
    sql: &mut String, args: &mut Vec<rusqlite::types::Value>, filters: [(&str, Option<String>); N],
) {
    for (column, value) in filters {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            args.push(v.into());
        }
    }
}

/// `created_at` in [`from`, `to`), each bound optional.
fn and_created_between(
    sql: &mut String, args: &mut Vec<rusqlite::types::Value>, from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) {
    if let Some(from) = from {
        sql.push_str(" AND created_at_ms >= ?");
        args.push(from.timestamp_millis().into());
    }
    if let Some(to) = to {
        sql.push_str(" AND created_at_ms < ?");
        args.push(to.timestamp_millis().into());
    }
}

fn find_by(
    conn: &Connection, sql: &str, p: impl rusqlite::Params,
) -> rusqlite::Result<Option<Row>> {
    let found: Option<(i64, String)> = conn
        .prepare_cached(sql)?
        .query_row(p, |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    found.map(|(pk, doc)| Ok((pk, decode(doc)?))).transpose()
}

/// A stored row as a batch loaded it: its key, and the columns a save may
/// have to rewrite. SQLite rewrites the entries of every index whose column
/// an UPDATE sets, even to the value it had, and a status report changes
/// none of the identifying columns: so a save sets only what changed.
#[derive(Debug, Clone)]
struct Stored {
    pk: i64,
    columns: Columns,
}

/// The indexed columns of `messages` that a save can change (`message_id`,
/// `bsp` and `created_at_ms` never change; `updated_at_ms` always does).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Columns {
    wamid: Option<String>,
    bsp_message_id: Option<String>,
    phone_number: String,
    business_number: String,
    campaign_id: Option<String>,
    project_id: Option<String>,
    project_owner_id: String,
    user_id: Option<String>,
    current_status: String,
}

/// What a save changes of a stored row's [`Columns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// None of them (the document and `updated_at_ms` only).
    Nothing,
    /// The status alone.
    Status,
    /// An identifying column: every column is written.
    Identity,
}

impl Columns {
    /// What writing `rec` over this row changes.
    fn change(&self, rec: &MessageRecord) -> Change {
        let same_identity = self.wamid == rec.wamid
            && self.bsp_message_id == rec.bsp_message_id
            && self.phone_number == rec.phone_number
            && self.business_number == rec.business_number
            && self.campaign_id == rec.campaign_id
            && self.project_id == rec.project_id
            && self.project_owner_id == rec.project_owner_id
            && self.user_id.as_deref() == rec.recipient.as_ref().and_then(|r| r.user_id.as_deref());
        if !same_identity {
            Change::Identity
        } else if self.current_status != rec.current_status {
            Change::Status
        } else {
            Change::Nothing
        }
    }

    /// The columns as stored, from a row whose third to eleventh columns
    /// are [`LOADED_COLUMNS`].
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Columns> {
        Ok(Columns {
            wamid: r.get(2)?,
            bsp_message_id: r.get(3)?,
            phone_number: r.get(4)?,
            business_number: r.get(5)?,
            campaign_id: r.get(6)?,
            project_id: r.get(7)?,
            project_owner_id: r.get(8)?,
            user_id: r.get(9)?,
            current_status: r.get(10)?,
        })
    }
}

/// What a batch loads of a row: its key, its document, its [`Columns`].
const LOADED_COLUMNS: &str = "pk, doc, wamid, bsp_message_id, phone_number, business_number, \
     campaign_id, project_id, project_owner_id, user_id, current_status";

/// Loads the candidate records of a batch inside the writer's transaction,
/// oldest first.
fn load(conn: &Connection, c: &Candidates) -> rusqlite::Result<WorkingSet<Stored>> {
    let mut found: BTreeMap<i64, (Stored, MessageRecord)> = BTreeMap::new();
    for (column, ids) in [("wamid", &c.wamids), ("bsp_message_id", &c.provider_ids)] {
        // Well under SQLite's bound-parameter limit.
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT {LOADED_COLUMNS} FROM messages WHERE {column} IN ({marks})");
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(chunk))?;
            while let Some(r) = rows.next()? {
                let pk: i64 = r.get(0)?;
                if let std::collections::btree_map::Entry::Vacant(slot) = found.entry(pk) {
                    let columns = Columns::read(r)?;
                    slot.insert((Stored { pk, columns }, decode(r.get(1)?)?));
                }
            }
        }
    }
    Ok(WorkingSet::new(found.into_values()))
}

/// Writes the records a working set changed.
fn save_changed(conn: &Connection, set: &WorkingSet<Stored>) -> rusqlite::Result<()> {
    for slot in set.changed() {
        save(conn, slot.handle.as_ref(), &slot.record)?;
    }
    Ok(())
}

/// Writes one record: a new row when it was not stored yet (SQLite gives it
/// a `pk`); else its document and only the indexed columns that changed
/// (see [`Stored`]). One statement either way.
fn save(conn: &Connection, stored: Option<&Stored>, rec: &MessageRecord) -> rusqlite::Result<()> {
    let doc = serde_json::to_string(rec)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let updated_at_ms = rec.updated_at.timestamp_millis();
    match stored.map(|s| (s.pk, s.columns.change(rec))) {
        Some((pk, Change::Nothing)) => {
            conn.prepare_cached("UPDATE messages SET updated_at_ms = ?2, doc = ?3 WHERE pk = ?1")?
                .execute(params![pk, updated_at_ms, doc])?;
            return Ok(());
        }
        Some((pk, Change::Status)) => {
            conn.prepare_cached(
                "UPDATE messages SET current_status = ?2, updated_at_ms = ?3, doc = ?4 WHERE pk = ?1",
            )?
            .execute(params![pk, rec.current_status, updated_at_ms, doc])?;
            return Ok(());
        }
        Some((_, Change::Identity)) | None => {}
    }
    conn.prepare_cached(
        "INSERT INTO messages (pk, message_id, wamid, bsp, bsp_message_id, phone_number,
         business_number, campaign_id, project_id, project_owner_id, current_status,
         created_at_ms, updated_at_ms, doc, user_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT (pk) DO UPDATE SET wamid = ?3, bsp_message_id = ?5, phone_number = ?6,
         business_number = ?7, campaign_id = ?8, project_id = ?9, project_owner_id = ?10,
         current_status = ?11, updated_at_ms = ?13, doc = ?14, user_id = ?15",
    )?
    .execute(params![
        stored.map(|s| s.pk),
        rec.message_id,
        rec.wamid,
        rec.bsp,
        rec.bsp_message_id,
        rec.phone_number,
        rec.business_number,
        rec.campaign_id,
        rec.project_id,
        rec.project_owner_id,
        rec.current_status,
        rec.created_at.timestamp_millis(),
        updated_at_ms,
        doc,
        rec.recipient.as_ref().and_then(|r| r.user_id.as_deref())
    ])?;
    Ok(())
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn apply(&self, events: &[UnifiedEvent]) -> StoreResult<Vec<Option<Applied>>> {
        // The writer thread needs its own copy; the raw bodies (the bulk of
        // an event, and unused by a record) stay behind.
        let events: Vec<UnifiedEvent> = events.iter().map(UnifiedEvent::for_record).collect();
        self.write_applied(move |conn| {
            let mut set = load(conn, &Candidates::of_events(&events))?;
            let applied = set.apply(&events, Utc::now());
            save_changed(conn, &set)?;
            Ok(applied)
        })
        .await
    }

    async fn register(&self, reg: &OutboundRegistration) -> StoreResult<(MessageRecord, bool)> {
        let candidates = Candidates::of_registration(reg)?;
        let reg = reg.clone();
        self.write(move |conn| {
            let mut set = load(conn, &candidates)?;
            let registered = set.register(&reg, Utc::now());
            save_changed(conn, &set)?;
            Ok(registered)
        })
        .await
    }

    async fn find_message(&self, id: &str) -> StoreResult<Option<MessageRecord>> {
        let id = id.to_owned();
        self.read(move |conn| {
            for sql in [
                "SELECT pk, doc FROM messages WHERE wamid = ?1",
                "SELECT pk, doc FROM messages WHERE message_id = ?1",
                "SELECT pk, doc FROM messages WHERE bsp_message_id = ?1 ORDER BY pk LIMIT 1",
            ] {
                if let Some((_, rec)) = find_by(conn, sql, [&id])? {
                    return Ok(Some(rec));
                }
            }
            Ok(None)
        })
        .await
    }

    async fn list_messages(&self, q: &MessageQuery) -> StoreResult<MessagePage> {
        let q = q.clone();
        let limit = q.limit;
        let items = self
            .db
            .read(move |conn| {
                let mut sql = String::from("SELECT pk, doc FROM messages WHERE 1 = 1");
                let mut args: Vec<rusqlite::types::Value> = Vec::new();
                and_equal(
                    &mut sql,
                    &mut args,
                    [
                        ("phone_number", q.phone_number),
                        ("campaign_id", q.campaign_id),
                        ("project_owner_id", q.project_owner_id),
                        ("current_status", q.status),
                    ],
                );
                and_created_between(&mut sql, &mut args, q.from, q.to);
                if !q.user_ids.is_empty() {
                    let marks = vec!["?"; q.user_ids.len()].join(", ");
                    sql.push_str(&format!(" AND user_id IN ({marks})"));
                    args.extend(q.user_ids.into_iter().map(Into::into));
                }
                if let Some(after) = q.after {
                    // A row value: the planner reads it as a range of the
                    // (created_at_ms, message_id) index.
                    sql.push_str(" AND (created_at_ms, message_id) < (?, ?)");
                    args.push(after.created_at_ms.into());
                    args.push(after.message_id.into());
                }
                sql.push_str(" ORDER BY created_at_ms DESC, message_id DESC LIMIT ?");
                args.push((q.limit as i64 + 1).into());
                let mut stmt = conn.prepare(&sql)?;
                let rows =
                    stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(1))?;
                rows.map(|doc| decode(doc?))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(MessagePage::from_probe(items, limit))
    }

    async fn record_unrecognized(&self, events: &[UnrecognizedEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let events = events.to_vec();
        self.write_applied(move |conn| {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO unrecognized (event_id, bsp, received_at_ms, reason, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for u in &events {
                stmt.execute(params![
                    u.event_id,
                    u.bsp.as_str(),
                    u.received_at.timestamp_millis(),
                    u.reason,
                    u.body
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn list_unrecognized(&self, limit: usize) -> StoreResult<Vec<UnrecognizedEvent>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT event_id, bsp, received_at_ms, reason, body FROM unrecognized
                     ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                let bsp: String = r.get(1)?;
                let ms: i64 = r.get(2)?;
                Ok(UnrecognizedEvent {
                    event_id: r.get(0)?,
                    bsp: Bsp::parse(&bsp).unwrap_or_default(),
                    received_at: Utc.timestamp_millis_opt(ms).single().unwrap_or_default(),
                    reason: r.get(3)?,
                    body: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn record_notifications(&self, notifications: &[Notification]) -> StoreResult<()> {
        if notifications.is_empty() {
            return Ok(());
        }
        let notifications = notifications.to_vec();
        self.write_applied(move |conn| {
            let mut stmt = conn.prepare_cached(
                "INSERT OR IGNORE INTO notifications (event_id, bsp, kind, received_at_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for n in &notifications {
                stmt.execute(params![
                    n.event_id,
                    n.bsp.as_str(),
                    n.kind,
                    n.received_at.timestamp_millis(),
                    n.body.to_string()
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn list_notifications(&self, q: &NotificationQuery) -> StoreResult<Vec<Notification>> {
        let q = q.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT event_id, bsp, kind, received_at_ms, body FROM notifications
                     WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR bsp = ?2)
                     ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![q.kind, q.bsp.map(Bsp::as_str), q.limit as i64],
                |r| {
                    let bsp: String = r.get(1)?;
                    let ms: i64 = r.get(3)?;
                    let body: String = r.get(4)?;
                    Ok(Notification {
                        event_id: r.get(0)?,
                        bsp: Bsp::parse(&bsp).unwrap_or_default(),
                        kind: r.get(2)?,
                        received_at: Utc.timestamp_millis_opt(ms).single().unwrap_or_default(),
                        body: serde_json::from_str(&body).unwrap_or_default(),
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }

    async fn prune(&self, kind: Kept, before: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        let (table, column) = match kind {
            Kept::Messages => ("messages", "updated_at_ms"),
            Kept::Unrecognized => ("unrecognized", "received_at_ms"),
            Kept::Notifications => ("notifications", "received_at_ms"),
        };
        Ok(self
            .db
            .prune_rows(table, column, before.timestamp_millis(), limit)
            .await?)
    }

    async fn stats(&self, q: &StatsQuery) -> StoreResult<MessageStats> {
        let q = q.clone();
        let counts = self
            .db
            .read(move |conn| {
                let mut sql =
                    String::from("SELECT current_status, COUNT(*) FROM messages WHERE 1 = 1");
                let mut args: Vec<rusqlite::types::Value> = Vec::new();
                and_equal(
                    &mut sql,
                    &mut args,
                    [
                        ("project_owner_id", q.project_owner_id.clone()),
                        ("campaign_id", q.campaign_id.clone()),
                        ("bsp", q.bsp.map(|b| b.as_str().to_owned())),
                    ],
                );
                and_created_between(&mut sql, &mut args, q.from, q.to);
                sql.push_str(" GROUP BY current_status");
                let mut stmt = conn.prepare(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?;
                rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()
            })
            .await?;
        Ok(MessageStats::from_counts(counts))
    }

    async fn health(&self) -> BackendHealth {
        self.db.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MessageEvent, Status};

    fn event(wamid: &str) -> UnifiedEvent {
        UnifiedEvent {
            event_id: format!("e-{wamid}"),
            bsp: Bsp::Datagen,
            legacy_type: String::new(),
            unified_type: String::new(),
            received_at: Utc::now(),
            raw: serde_json::Value::Null,
            contact: None,
            message: Some(MessageEvent {
                wamid: Some(wamid.into()),
                status: Some(Status::Sent),
                occurred_at: Utc::now(),
                dedup_key: "k".into(),
                ..Default::default()
            }),
        }
    }

    /// With a broker inbox the store's commit is synced before `apply`
    /// returns (the broker is acked right after); with the embedded inbox it
    /// is bookkeeping, never waiting for the disk.
    #[tokio::test]
    async fn a_synced_store_syncs_applied_events_and_the_default_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open_synced_for_test(dir.path());
        let before = db.wal_syncs();
        SqliteStore::new(db.clone())
            .apply(&[event("wamid.a")])
            .await
            .unwrap();
        assert_eq!(db.wal_syncs(), before);
        SqliteStore::new(db.clone())
            .synced()
            .apply(&[event("wamid.b")])
            .await
            .unwrap();
        assert_eq!(db.wal_syncs(), before + 1);
    }

    fn report(wamid: &str, status: Status, key: &str) -> UnifiedEvent {
        let mut ev = event(wamid);
        ev.event_id = format!("e-{wamid}-{key}");
        let m = ev.message.as_mut().unwrap();
        m.status = Some(status);
        m.dedup_key = key.into();
        ev
    }

    /// Every row's indexed columns as its document says, and every index
    /// entry matching its row.
    async fn assert_rows_consistent(db: &SqliteDb) {
        db.read(|conn| {
            let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            assert_eq!(check, "ok");
            let mut stmt = conn.prepare(&format!("SELECT {LOADED_COLUMNS} FROM messages"))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let rec = decode(r.get(1)?)?;
                assert_eq!(Columns::read(r)?.change(&rec), Change::Nothing, "{rec:?}");
            }
            Ok(())
        })
        .await
        .unwrap();
    }

    /// A save sets only the columns that changed; whichever path it takes,
    /// the row, its document and its indexes agree.
    #[tokio::test]
    async fn a_save_rewrites_only_what_changed_and_rows_stay_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open_synced_for_test(dir.path());
        let store = SqliteStore::new(db.clone());
        let stored = |wamid: &'static str| {
            let db = db.clone();
            async move {
                db.read(move |conn| {
                    conn.query_row(
                        &format!("SELECT {LOADED_COLUMNS} FROM messages WHERE wamid = ?1"),
                        [wamid],
                        |r| Ok((Columns::read(r)?, decode(r.get(1)?)?)),
                    )
                })
                .await
                .unwrap()
            }
        };
        store
            .apply(&[report("wamid.a", Status::Sent, "k1")])
            .await
            .unwrap();
        assert_rows_consistent(&db).await;
        let (before, _) = stored("wamid.a").await;

        // The status alone.
        store
            .apply(&[report("wamid.a", Status::Delivered, "k2")])
            .await
            .unwrap();
        let (after, rec) = stored("wamid.a").await;
        assert_eq!(before.change(&rec), Change::Status);
        assert_eq!(after.current_status, "delivered");
        assert_rows_consistent(&db).await;

        // Nothing indexed (a status the record is past: history only).
        store
            .apply(&[report("wamid.a", Status::Sent, "k3")])
            .await
            .unwrap();
        let (again, rec) = stored("wamid.a").await;
        assert_eq!(after.change(&rec), Change::Nothing);
        assert_eq!(again, after);
        assert_eq!(rec.status_history.len(), 3);
        assert_rows_consistent(&db).await;

        // An identifying column: the provider's id and the user learned.
        let mut ev = report("wamid.a", Status::Read, "k4");
        let m = ev.message.as_mut().unwrap();
        m.bsp_message_id = Some("p-1".into());
        m.user = Some(crate::model::UserIdentity {
            user_id: Some("IN.1502576394655843".into()),
            ..Default::default()
        });
        store.apply(&[ev]).await.unwrap();
        let (last, rec) = stored("wamid.a").await;
        assert_eq!(again.change(&rec), Change::Identity);
        assert_eq!(last.bsp_message_id.as_deref(), Some("p-1"));
        assert_eq!(last.user_id.as_deref(), Some("IN.1502576394655843"));
        assert_eq!(last.current_status, "read");
        assert_rows_consistent(&db).await;
    }
}
