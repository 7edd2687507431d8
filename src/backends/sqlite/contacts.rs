//! Contacts on the embedded database: `contacts` rows (the whole contact as
//! JSON) and `contact_keys` (business number + `kind:value` → contact), so
//! that any identifier the user ever had finds them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::SqliteDb;
use crate::contacts::{self, Contact, ContactStore, Lookup, Sighting};
use crate::store::{BackendHealth, StoreResult};

#[derive(Clone)]
pub struct SqliteContactStore {
    db: SqliteDb,
    /// See [`SqliteContactStore::synced`].
    synced: bool,
}

impl SqliteContactStore {
    pub fn new(db: SqliteDb) -> Self {
        SqliteContactStore { db, synced: false }
    }

    /// Sightings are synced to disk before `record_sightings` returns: with
    /// a broker inbox, acked right after (as `SqliteStore::synced`).
    pub fn synced(mut self) -> Self {
        self.synced = true;
        self
    }
}

fn decode(doc: String) -> rusqlite::Result<Contact> {
    serde_json::from_str(&doc).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn load(conn: &Connection, lookup: &Lookup) -> rusqlite::Result<Vec<Contact>> {
    let mut ids = std::collections::BTreeSet::new();
    let mut stmt = conn.prepare_cached(
        "SELECT contact_id FROM contact_keys WHERE business_number = ?1 AND key = ?2",
    )?;
    for (business, keys) in &lookup.keys {
        for key in keys {
            let mut rows = stmt.query(params![business, key])?;
            while let Some(row) = rows.next()? {
                ids.insert(row.get::<_, String>(0)?);
            }
        }
    }
    let mut doc = conn.prepare_cached("SELECT doc FROM contacts WHERE contact_id = ?1")?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(d) = doc
            .query_map([id], |r| r.get::<_, String>(0))?
            .next()
            .transpose()?
        {
            out.push(decode(d)?);
        }
    }
    Ok(out)
}

fn save(conn: &Connection, c: &Contact) -> rusqlite::Result<()> {
    let doc = serde_json::to_string(c)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    conn.prepare_cached(
        "INSERT INTO contacts (contact_id, business_number, updated_at_ms, doc)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (contact_id) DO UPDATE SET updated_at_ms = ?3, doc = ?4",
    )?
    .execute(params![
        c.contact_id,
        c.business_number,
        c.updated_at.timestamp_millis(),
        doc
    ])?;
    let mut key = conn.prepare_cached(
        "INSERT INTO contact_keys (business_number, key, contact_id) VALUES (?1, ?2, ?3)
         ON CONFLICT (business_number, key) DO UPDATE SET contact_id = ?3",
    )?;
    for k in c.keys() {
        key.execute(params![c.business_number, k, c.contact_id])?;
    }
    Ok(())
}

fn remove(conn: &Connection, contact_id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM contacts WHERE contact_id = ?1")?
        .execute([contact_id])?;
    // Keys of a merged contact were moved to the survivor by `save`.
    conn.prepare_cached("DELETE FROM contact_keys WHERE contact_id = ?1")?
        .execute([contact_id])?;
    Ok(())
}

#[async_trait]
impl ContactStore for SqliteContactStore {
    async fn record_sightings(&self, sightings: &[Sighting]) -> StoreResult<()> {
        if sightings.is_empty() {
            return Ok(());
        }
        let sightings = sightings.to_vec();
        self.db
            .write_result(self.synced, move |conn| {
                let loaded = load(conn, &Lookup::of(&sightings))?;
                let changes = contacts::apply(loaded, &sightings, Utc::now());
                for id in &changes.remove {
                    remove(conn, id)?;
                }
                for c in &changes.write {
                    save(conn, c)?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn find_contact(
        &self, id: &str, business_number: Option<&str>,
    ) -> StoreResult<Option<Contact>> {
        let keys = contacts::keys_of_any(id);
        let business = business_number.map(str::to_owned);
        Ok(self
            .db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT c.doc FROM contact_keys k JOIN contacts c ON c.contact_id = k.contact_id
                     WHERE k.key = ?1 AND (?2 IS NULL OR k.business_number = ?2)
                     ORDER BY c.updated_at_ms DESC LIMIT 1",
                )?;
                let mut best: Option<Contact> = None;
                for key in &keys {
                    if let Some(doc) = stmt
                        .query_map(params![key, business], |r| r.get::<_, String>(0))?
                        .next()
                        .transpose()?
                    {
                        let c = decode(doc)?;
                        if best.as_ref().is_none_or(|b| c.updated_at > b.updated_at) {
                            best = Some(c);
                        }
                    }
                }
                Ok(best)
            })
            .await?)
    }

    async fn prune_contacts(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        let before = before.timestamp_millis();
        Ok(self
            .db
            .write_background(move |c| {
                let ids: Vec<String> = c
                    .prepare_cached(
                        "SELECT contact_id FROM contacts WHERE updated_at_ms < ?1
                         ORDER BY updated_at_ms LIMIT ?2",
                    )?
                    .query_map(params![before, limit as i64], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for id in &ids {
                    remove(c, id)?;
                }
                Ok(ids.len() as u64)
            })
            .await?)
    }

    async fn health(&self) -> BackendHealth {
        self.db.health()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::model::UserIdentity;

    fn seen(user_id: &str) -> Sighting {
        Sighting {
            business_number: "918071234567".into(),
            user: UserIdentity {
                user_id: Some(user_id.into()),
                ..Default::default()
            },
            previous: UserIdentity::default(),
            change: None,
            preference: None,
            at: Utc.timestamp_opt(1_767_225_600, 0).unwrap(),
        }
    }

    /// With a broker inbox the sightings are synced before
    /// `record_sightings` returns (the broker is acked right after); with
    /// the embedded inbox they are bookkeeping, never waiting for the disk.
    #[tokio::test]
    async fn a_synced_contact_store_syncs_its_sightings_and_the_default_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open_synced_for_test(dir.path());
        let before = db.wal_syncs();
        SqliteContactStore::new(db.clone())
            .record_sightings(&[seen("IN.1")])
            .await
            .unwrap();
        assert_eq!(db.wal_syncs(), before);
        SqliteContactStore::new(db.clone())
            .synced()
            .record_sightings(&[seen("IN.2")])
            .await
            .unwrap();
        assert_eq!(db.wal_syncs(), before + 1);
    }
}
