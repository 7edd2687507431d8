//! Contacts on MongoDB: `zen_contacts` (`_id` the contact id, the contact's
//! fields, `keys` its lookup keys) and `zen_contact_keys` (`_id`
//! `<business number>|<kind>:<value>`, `c` the contact id, `k` the key), so
//! that any identifier the user ever had finds them with `_id` queries.

use async_trait::async_trait;
use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use mongodb::{Collection, Database};

use super::collections::{CONTACT_KEYS, CONTACTS};
use super::read::documents;
use crate::contacts::{self, Contact, ContactStore, Lookup, Sighting};
use crate::store::{BackendHealth, StoreError, StoreResult};

pub struct MongoContactStore {
    contacts: Collection<Document>,
    keys: Collection<Document>,
}

impl MongoContactStore {
    pub fn new(db: &Database) -> Self {
        MongoContactStore {
            contacts: db.collection(CONTACTS),
            keys: db.collection(CONTACT_KEYS),
        }
    }

    /// The index `find_contact` uses without a business number.
    pub async fn ensure_indexes(&self) -> StoreResult<()> {
        let index = mongodb::IndexModel::builder().keys(doc! {"k": 1}).build();
        self.keys.create_index(index).await.map_err(unavailable)?;
        let index = mongodb::IndexModel::builder()
            .keys(doc! {"updated_at": 1})
            .build();
        self.contacts
            .create_index(index)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn key_id(business: &str, key: &str) -> String {
    format!("{business}|{key}")
}

fn to_doc(c: &Contact) -> StoreResult<Document> {
    let mut d = bson::to_document(c).map_err(|e| StoreError::Invalid(e.to_string()))?;
    d.insert("_id", c.contact_id.clone());
    d.insert("keys", c.keys());
    d.insert("updated_at", bson::DateTime::from_chrono(c.updated_at));
    Ok(d)
}

fn from_doc(mut d: Document) -> Option<Contact> {
    d.remove("_id");
    d.remove("keys");
    // Dates as the serializer wrote them (RFC 3339 strings), except the
    // indexed `updated_at`, a BSON date.
    if let Some(Bson::DateTime(t)) = d.get("updated_at").cloned() {
        d.insert("updated_at", t.to_chrono().to_rfc3339());
    }
    bson::from_document(d).ok()
}

#[async_trait]
impl ContactStore for MongoContactStore {
    async fn record_sightings(&self, sightings: &[Sighting]) -> StoreResult<()> {
        if sightings.is_empty() {
            return Ok(());
        }
        let lookup = Lookup::of(sightings);
        let ids: Vec<String> = lookup
            .keys
            .iter()
            .flat_map(|(b, keys)| keys.iter().map(move |k| key_id(b, k)))
            .collect();
        // One read per collection for the batch.
        let found = documents(self.keys.find(doc! {"_id": {"$in": &ids}})).await?;
        let contact_ids: Vec<String> = found
            .iter()
            .filter_map(|d| d.get_str("c").ok().map(str::to_owned))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let loaded: Vec<Contact> = if contact_ids.is_empty() {
            Vec::new()
        } else {
            documents(self.contacts.find(doc! {"_id": {"$in": &contact_ids}}))
                .await?
                .into_iter()
                .filter_map(from_doc)
                .collect()
        };
        let changes = contacts::apply(loaded, sightings, Utc::now());
        // One write per collection: upserts of the contacts, then their
        // keys (a key never names a contact not written), then removals.
        if !changes.write.is_empty() {
            let mut updates = Vec::with_capacity(changes.write.len());
            let mut key_updates = Vec::new();
            for c in &changes.write {
                let d = to_doc(c)?;
                updates.push(doc! {"q": {"_id": &c.contact_id}, "u": d, "upsert": true});
                for k in c.keys() {
                    key_updates.push(doc! {
                        "q": {"_id": key_id(&c.business_number, &k)},
                        "u": {"$set": {"c": &c.contact_id, "k": &k}},
                        "upsert": true,
                    });
                }
            }
            let db = self
                .contacts
                .client()
                .database(&self.contacts.namespace().db);
            db.run_command(doc! {"update": CONTACTS, "updates": updates, "ordered": false})
                .await
                .map_err(unavailable)?;
            db.run_command(doc! {"update": CONTACT_KEYS, "updates": key_updates, "ordered": false})
                .await
                .map_err(unavailable)?;
        }
        if !changes.remove.is_empty() {
            self.contacts
                .delete_many(doc! {"_id": {"$in": &changes.remove}})
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn find_contact(
        &self, id: &str, business_number: Option<&str>,
    ) -> StoreResult<Option<Contact>> {
        let keys = contacts::keys_of_any(id);
        let filter = match business_number {
            Some(b) => doc! {"_id": {"$in": keys.iter().map(|k| key_id(b, k)).collect::<Vec<_>>()}},
            None => doc! {"k": {"$in": &keys}},
        };
        let found = documents(self.keys.find(filter)).await?;
        let ids: Vec<String> = found
            .iter()
            .filter_map(|d| d.get_str("c").ok().map(str::to_owned))
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let mut best: Option<Contact> = None;
        for d in documents(self.contacts.find(doc! {"_id": {"$in": &ids}})).await? {
            if let Some(c) = from_doc(d) {
                if best.as_ref().is_none_or(|b| c.updated_at > b.updated_at) {
                    best = Some(c);
                }
            }
        }
        Ok(best)
    }

    async fn prune_contacts(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        let old = documents(
            self.contacts
                .find(doc! {"updated_at": {"$lt": bson::DateTime::from_chrono(before)}})
                .projection(doc! {"_id": 1, "keys": 1, "business_number": 1})
                .limit(limit as i64),
        )
        .await?;
        if old.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::new();
        let mut key_ids = Vec::new();
        for d in &old {
            let Ok(id) = d.get_str("_id") else { continue };
            ids.push(id.to_owned());
            let business = d.get_str("business_number").unwrap_or("");
            if let Ok(keys) = d.get_array("keys") {
                key_ids.extend(
                    keys.iter()
                        .filter_map(Bson::as_str)
                        .map(|k| key_id(business, k)),
                );
            }
        }
        // Keys first: a key left without its contact is harmless, the
        // other way round a contact could not be found.
        self.keys
            .delete_many(doc! {"_id": {"$in": &key_ids}, "c": {"$in": &ids}})
            .await
            .map_err(unavailable)?;
        let n = self
            .contacts
            .delete_many(doc! {"_id": {"$in": &ids}})
            .await
            .map_err(unavailable)?;
        Ok(n.deleted_count)
    }

    async fn health(&self) -> BackendHealth {
        match self
            .contacts
            .client()
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
        {
            Ok(_) => BackendHealth {
                backend: "mongodb",
                up: true,
                detail: None,
            },
            Err(e) => BackendHealth {
                backend: "mongodb",
                up: false,
                detail: Some(e.to_string()),
            },
        }
    }
}
