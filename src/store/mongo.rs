//! The MongoDB store: the legacy `unified_message_tracking` collection, with
//! its field names and BSON types (dates as BSON dates), plus
//! `unrecognized_webhooks`.
//!
//! Applying a batch costs three round trips whatever its size: one `find`
//! for every message the batch touches, the events applied in memory by the
//! same rules as every backend ([`MessageRecord::apply`]), then one `insert`
//! for new messages and one multi-statement `update` for changed ones. Each
//! update is a compare-and-set on the document's `rev` counter, so a
//! concurrent writer (another replica) makes the batch fail and be retried,
//! never lose an update; re-applying is idempotent. Our own fields are
//! `$set`, so fields other services added to a document are kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bson::oid::ObjectId;
use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{
    Applied, BackendHealth, MessagePage, MessageQuery, MessageStats, MessageStore, StatsQuery,
    StoreError,
};
use crate::model::{
    ApplyOutcome, Bsp, Direction, MessageEvent, MessageRecord, OutboundRegistration, StatusEntry,
    UnifiedEvent, UnrecognizedEvent,
};

pub const MESSAGES: &str = "unified_message_tracking";
pub const UNRECOGNIZED: &str = "unrecognized_webhooks";

/// The message store on MongoDB (or a wire-compatible server).
pub struct MongoStore {
    db: Database,
    messages: Collection<Document>,
    unrecognized: Collection<Document>,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Options as the legacy gateway set them (pool 10/2, connect 10 s, server
/// selection 5 s), where the URI does not say otherwise.
pub async fn client(uri: &str) -> Result<Client, StoreError> {
    let mut opts = ClientOptions::parse(uri)
        .await
        .map_err(|e| StoreError::Invalid(format!("MONGO_URI: {e}")))?;
    opts.app_name.get_or_insert_with(|| "zen-gateway".into());
    opts.max_pool_size.get_or_insert(20);
    opts.min_pool_size.get_or_insert(2);
    opts.connect_timeout.get_or_insert(Duration::from_secs(10));
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(5));
    Client::with_options(opts).map_err(|e| StoreError::Invalid(format!("MONGO_URI: {e}")))
}

impl MongoStore {
    /// Connects lazily: a server that is down now is retried by each
    /// operation, so start-up never fails on it.
    pub async fn connect(uri: &str, database: &str) -> Result<MongoStore, StoreError> {
        let client = client(uri).await?;
        Ok(Self::new(client.database(database)))
    }

    pub fn new(db: Database) -> MongoStore {
        MongoStore {
            messages: db.collection(MESSAGES),
            unrecognized: db.collection(UNRECOGNIZED),
            db,
            up: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn note<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match &r {
            Ok(_) => self.up.store(true, Ordering::Relaxed),
            Err(StoreError::Unavailable(e)) => {
                self.up.store(false, Ordering::Relaxed);
                if let Ok(mut slot) = self.last_error.lock() {
                    *slot = Some(e.clone());
                }
            }
            Err(StoreError::Invalid(_)) => {}
        }
        r
    }

    /// Creates the indexes: unique on `wamid` and on (`bsp`,
    /// `bsp_message_id`) where present and non-empty (the legacy gateway
    /// wrote `bsp_message_id: ""` everywhere), and the lookup indexes.
    /// Run `migrate` first on a collection the legacy gateway wrote.
    pub async fn ensure_indexes(&self) -> Result<IndexReport, StoreError> {
        let mut report = IndexReport::default();
        for (keys, name, partial) in [
            (
                doc! {"wamid": 1},
                "wamid_unique",
                doc! {"wamid": {"$gt": ""}},
            ),
            (
                doc! {"bsp": 1, "bsp_message_id": 1},
                "bsp_message_id_unique",
                doc! {"bsp_message_id": {"$gt": ""}},
            ),
        ] {
            let kind = self.create_unique(keys, name, partial).await?;
            report.unique.push((name, kind));
        }
        for (keys, name) in [
            (doc! {"bsp_message_id": 1}, "bsp_message_id"),
            (doc! {"message_id": 1}, "message_id"),
            (
                doc! {"project_owner_id": 1, "created_at": -1},
                "project_owner_id_created_at",
            ),
            (
                doc! {"campaign_id": 1, "created_at": -1},
                "campaign_id_created_at",
            ),
            (
                doc! {"phone_number": 1, "created_at": -1},
                "phone_number_created_at",
            ),
            (doc! {"created_at": -1}, "created_at"),
        ] {
            self.create_index(keys, IndexOptions::builder().name(name.to_owned()).build())
                .await?;
        }
        Ok(report)
    }

    async fn create_index(&self, keys: Document, options: IndexOptions) -> Result<(), StoreError> {
        let model = IndexModel::builder().keys(keys).options(options).build();
        self.messages
            .create_index(model)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// A unique index over documents that have the key: partial (MongoDB),
    /// else sparse, else — on servers that implement neither, such as the
    /// FerretDB used in tests — a plain index, said loudly: uniqueness then
    /// rests on the processor applying one message's events in one place.
    async fn create_unique(
        &self,
        keys: Document,
        name: &str,
        partial: Document,
    ) -> Result<UniqueIndexKind, StoreError> {
        let attempts = [
            (
                UniqueIndexKind::Partial,
                IndexOptions::builder()
                    .name(name.to_owned())
                    .unique(true)
                    .partial_filter_expression(partial)
                    .build(),
            ),
            (
                UniqueIndexKind::Sparse,
                IndexOptions::builder()
                    .name(name.to_owned())
                    .unique(true)
                    .sparse(true)
                    .build(),
            ),
        ];
        for (kind, options) in attempts {
            match self.create_index(keys.clone(), options).await {
                Ok(()) => return Ok(kind),
                Err(StoreError::Unavailable(e)) if e.contains("NotImplemented") => continue,
                // Real MongoDB never gets here (partial works); elsewhere a
                // sparse compound index may still cover documents that lack
                // the id, and collide.
                Err(StoreError::Unavailable(e))
                    if kind == UniqueIndexKind::Sparse && is_duplicate_key(&e) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::warn!(
            index = name,
            "the database server implements neither partial nor sparse unique indexes; \
             created a non-unique index instead"
        );
        self.create_index(keys, IndexOptions::builder().name(name.to_owned()).build())
            .await?;
        Ok(UniqueIndexKind::NotUnique)
    }

    /// Merges the duplicate documents per `wamid` that the legacy gateway
    /// wrote (every `sent` inserted one more), then builds the indexes.
    /// Histories are merged, the status recomputed by the order rules; the
    /// oldest document survives. Idempotent.
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut report = MigrationReport::default();
        // The legacy gateway wrote "" for absent ids; absent is what it meant,
        // and what the unique indexes skip.
        for field in ["wamid", "bsp_message_id"] {
            let r = self
                .messages
                .update_many(doc! {field: ""}, doc! {"$unset": {field: ""}})
                .await
                .map_err(unavailable)?;
            report.emptied_ids += r.modified_count;
        }
        // Group in memory by wamid: only ids and wamids are read.
        let mut cursor = self
            .messages
            .find(doc! {"wamid": {"$gt": ""}})
            .projection(doc! {"_id": 1, "wamid": 1})
            .await
            .map_err(unavailable)?;
        let mut groups: HashMap<String, Vec<ObjectId>> = HashMap::new();
        while let Some(d) = cursor.try_next().await.map_err(unavailable)? {
            if let (Ok(id), Ok(w)) = (d.get_object_id("_id"), d.get_str("wamid")) {
                groups.entry(w.to_owned()).or_default().push(id);
            }
        }
        for (wamid, ids) in groups.into_iter().filter(|(_, ids)| ids.len() > 1) {
            let docs: Vec<Document> = self
                .messages
                .find(doc! {"_id": {"$in": ids.iter().map(|i| Bson::ObjectId(*i)).collect::<Vec<_>>()}})
                .await
                .map_err(unavailable)?
                .try_collect()
                .await
                .map_err(unavailable)?;
            let mut docs: Vec<(ObjectId, Document)> = docs
                .into_iter()
                .filter_map(|d| d.get_object_id("_id").ok().map(|id| (id, d)))
                .collect();
            docs.sort_by_key(|(id, _)| *id);
            let Some(((keep_id, keep_doc), rest)) = docs.split_first() else {
                continue;
            };
            let mut merged = from_doc(keep_doc);
            for (_, other) in rest {
                merge_legacy(&mut merged, &from_doc(other));
            }
            merged.wamid = Some(wamid.clone());
            let mut set = to_doc(&merged);
            set.insert("rev", rev_of(keep_doc) + 1);
            self.messages
                .update_one(doc! {"_id": keep_id}, doc! {"$set": set})
                .await
                .map_err(unavailable)?;
            let remove: Vec<Bson> = rest.iter().map(|(id, _)| Bson::ObjectId(*id)).collect();
            let deleted = self
                .messages
                .delete_many(doc! {"_id": {"$in": remove}})
                .await
                .map_err(unavailable)?;
            report.merged_groups += 1;
            report.removed_documents += deleted.deleted_count;
        }
        report.indexes = self.ensure_indexes().await?;
        Ok(report)
    }

    async fn load(
        &self,
        wamids: Vec<String>,
        provider_ids: Vec<String>,
    ) -> Result<Vec<Document>, StoreError> {
        let mut or = Vec::new();
        if !wamids.is_empty() {
            or.push(doc! {"wamid": {"$in": wamids}});
        }
        if !provider_ids.is_empty() {
            or.push(doc! {"bsp_message_id": {"$in": provider_ids}});
        }
        if or.is_empty() {
            return Ok(Vec::new());
        }
        self.messages
            .find(doc! {"$or": or})
            .sort(doc! {"_id": 1})
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)
    }

    /// Writes what a batch changed: inserts, then compare-and-set updates.
    async fn write_back(&self, slots: &[Slot]) -> Result<(), StoreError> {
        let inserts: Vec<Document> = slots
            .iter()
            .filter(|s| s.dirty && s.id.is_none())
            .map(|s| {
                let mut d = doc! {"_id": ObjectId::new()};
                d.extend(to_doc(&s.record));
                d.insert("rev", 1_i64);
                d
            })
            .collect();
        if !inserts.is_empty() {
            self.messages
                .insert_many(inserts)
                .ordered(true)
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                        "insert of new messages failed (a concurrent writer may have created one; the batch is retried): {e}"
                    ))
                })?;
        }
        let updates: Vec<Document> = slots
            .iter()
            .filter_map(|s| {
                let id = s.id.filter(|_| s.dirty)?;
                let condition = if s.rev == 0 {
                    doc! {"_id": id, "rev": {"$exists": false}}
                } else {
                    doc! {"_id": id, "rev": s.rev}
                };
                let mut set = to_doc(&s.record);
                set.insert("rev", s.rev + 1);
                Some(doc! {"q": condition, "u": {"$set": set}})
            })
            .collect();
        if updates.is_empty() {
            return Ok(());
        }
        let expected = updates.len() as i64;
        let reply = self
            .db
            .run_command(doc! {"update": MESSAGES, "updates": updates, "ordered": true})
            .await
            .map_err(unavailable)?;
        let matched = match reply.get("n") {
            Some(Bson::Int32(n)) => *n as i64,
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Double(n)) => *n as i64,
            _ => -1,
        };
        if let Ok(errors) = reply.get_array("writeErrors") {
            if !errors.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "update failed: {errors:?}"
                )));
            }
        }
        if matched != expected {
            return Err(StoreError::Unavailable(format!(
                "{} of {expected} messages changed concurrently; the batch is retried",
                expected - matched
            )));
        }
        Ok(())
    }
}

/// Whether an error message is a unique-constraint violation (MongoDB
/// E11000, or a wire-compatible server's wording).
pub fn is_duplicate_key(message: &str) -> bool {
    message.contains("E11000")
        || message.contains("duplicate key")
        || message.contains("UNIQUE constraint")
}

/// What `migrate` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    /// Documents whose empty-string `wamid` / `bsp_message_id` was unset.
    pub emptied_ids: u64,
    pub merged_groups: u64,
    pub removed_documents: u64,
    pub indexes: IndexReport,
}

/// How each unique index could be built on this server.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexReport {
    pub unique: Vec<(&'static str, UniqueIndexKind)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UniqueIndexKind {
    Partial,
    Sparse,
    NotUnique,
}

/// One message of a batch, as loaded and as changed.
struct Slot {
    id: Option<ObjectId>,
    rev: i64,
    record: MessageRecord,
    dirty: bool,
}

/// The working set of a batch, indexed by both keys.
#[derive(Default)]
struct Batch {
    slots: Vec<Slot>,
    by_wamid: HashMap<String, usize>,
    by_provider: HashMap<(String, String), usize>,
}

impl Batch {
    fn add(&mut self, slot: Slot) -> usize {
        let i = self.slots.len();
        self.index(i, &slot.record);
        self.slots.push(slot);
        i
    }

    fn index(&mut self, i: usize, rec: &MessageRecord) {
        // The oldest document wins when legacy duplicates share a key.
        if let Some(w) = rec.wamid.as_deref().filter(|w| !w.is_empty()) {
            self.by_wamid.entry(w.to_owned()).or_insert(i);
        }
        if let Some(p) = rec.bsp_message_id.as_deref().filter(|p| !p.is_empty()) {
            self.by_provider
                .entry((rec.bsp.clone(), p.to_owned()))
                .or_insert(i);
        }
    }

    /// Same rule as the SQLite store: the wamid's record wins; the provider id
    /// is not copied onto it when it already names another record.
    fn locate(
        &self,
        bsp: Bsp,
        wamid: Option<&str>,
        provider: Option<&str>,
    ) -> (Option<usize>, bool) {
        let by_w = wamid.and_then(|w| self.by_wamid.get(w)).copied();
        let by_p = provider
            .and_then(|p| {
                self.by_provider
                    .get(&(bsp.as_str().to_owned(), p.to_owned()))
            })
            .copied();
        match (by_w, by_p) {
            (Some(w), Some(p)) => (Some(w), w != p),
            (Some(w), None) => (Some(w), false),
            (None, p) => (p, false),
        }
    }
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

fn rev_of(d: &Document) -> i64 {
    match d.get("rev") {
        Some(Bson::Int32(n)) => *n as i64,
        Some(Bson::Int64(n)) => *n,
        _ => 0,
    }
}

/// `{field: value}` for each given filter.
fn equal_filter<const N: usize>(filters: [(&str, Option<&str>); N]) -> Document {
    let mut filter = Document::new();
    for (field, value) in filters {
        if let Some(v) = value {
            filter.insert(field, v);
        }
    }
    filter
}

#[async_trait]
impl MessageStore for MongoStore {
    async fn apply(&self, events: &[UnifiedEvent]) -> Result<Vec<Option<Applied>>, StoreError> {
        let result = async {
            let mut wamids = Vec::new();
            let mut provider_ids = Vec::new();
            for ev in events {
                if let Some(m) = &ev.message {
                    wamids.extend(non_empty(&m.wamid).map(str::to_owned));
                    provider_ids.extend(non_empty(&m.bsp_message_id).map(str::to_owned));
                    if m.key(ev.bsp).is_none() {
                        provider_ids.push(ev.event_id.clone());
                    }
                }
            }
            let mut batch = Batch::default();
            for d in self.load(wamids, provider_ids).await? {
                batch.add(Slot {
                    id: d.get_object_id("_id").ok(),
                    rev: rev_of(&d),
                    record: from_doc(&d),
                    dirty: false,
                });
            }
            let now = Utc::now();
            let mut out = Vec::with_capacity(events.len());
            for ev in events {
                let Some(m) = &ev.message else {
                    out.push(None);
                    continue;
                };
                let mut msg: MessageEvent = m.clone();
                if msg.key(ev.bsp).is_none() {
                    msg.bsp_message_id = Some(ev.event_id.clone());
                }
                let (found, conflict) = batch.locate(
                    ev.bsp,
                    non_empty(&msg.wamid),
                    non_empty(&msg.bsp_message_id),
                );
                if conflict {
                    msg.bsp_message_id = None;
                }
                let i = match found {
                    Some(i) => i,
                    None => batch.add(Slot {
                        id: None,
                        rev: 0,
                        record: MessageRecord::new_for(ev.bsp, &msg, now),
                        dirty: true,
                    }),
                };
                let slot = &mut batch.slots[i];
                let outcome = slot.record.apply(ev.bsp, &ev.event_id, &msg, now);
                let (duplicate, redelivery) = match outcome {
                    ApplyOutcome::Applied => (false, false),
                    ApplyOutcome::Duplicate { redelivery } => (true, redelivery),
                };
                slot.dirty |= !duplicate;
                let record = slot.record.clone();
                batch.index(i, &record);
                out.push(Some(Applied {
                    duplicate,
                    redelivery,
                    record,
                }));
            }
            self.write_back(&batch.slots).await?;
            Ok(out)
        }
        .await;
        self.note(result)
    }

    async fn register(
        &self,
        reg: &OutboundRegistration,
    ) -> Result<(MessageRecord, bool), StoreError> {
        if reg.key().is_none() {
            return Err(StoreError::Invalid(
                "a message needs a wamid or a bsp_message_id".into(),
            ));
        }
        // Compare-and-set may lose to a concurrent writer: retry a few times.
        let mut last = None;
        for _ in 0..5 {
            let attempt = async {
                let docs = self
                    .load(
                        non_empty(&reg.wamid)
                            .map(str::to_owned)
                            .into_iter()
                            .collect(),
                        non_empty(&reg.bsp_message_id)
                            .map(str::to_owned)
                            .into_iter()
                            .collect(),
                    )
                    .await?;
                let mut batch = Batch::default();
                for d in docs {
                    batch.add(Slot {
                        id: d.get_object_id("_id").ok(),
                        rev: rev_of(&d),
                        record: from_doc(&d),
                        dirty: false,
                    });
                }
                let mut reg = reg.clone();
                let (found, conflict) = batch.locate(
                    reg.bsp,
                    non_empty(&reg.wamid),
                    non_empty(&reg.bsp_message_id),
                );
                if conflict {
                    reg.bsp_message_id = None;
                }
                let now = Utc::now();
                let i = match found {
                    Some(i) => i,
                    None => {
                        let seed = MessageEvent {
                            wamid: reg.wamid.clone(),
                            bsp_message_id: reg.bsp_message_id.clone(),
                            ..Default::default()
                        };
                        batch.add(Slot {
                            id: None,
                            rev: 0,
                            record: MessageRecord::new_for(reg.bsp, &seed, now),
                            dirty: true,
                        })
                    }
                };
                let created = batch.slots[i].id.is_none();
                batch.slots[i].record.register(&reg, now);
                batch.slots[i].dirty = true;
                let record = batch.slots[i].record.clone();
                let only = Slot {
                    id: batch.slots[i].id,
                    rev: batch.slots[i].rev,
                    record: record.clone(),
                    dirty: true,
                };
                self.write_back(std::slice::from_ref(&only)).await?;
                Ok((record, created))
            }
            .await;
            match attempt {
                Ok(v) => return self.note(Ok(v)),
                Err(e) => last = Some(e),
            }
        }
        self.note(Err(last.unwrap_or_else(|| {
            StoreError::Unavailable("register failed".into())
        })))
    }

    async fn find_message(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let result = async {
            let docs: Vec<Document> = self
                .messages
                .find(doc! {"$or": [{"wamid": id}, {"message_id": id}, {"bsp_message_id": id}]})
                .sort(doc! {"_id": 1})
                .limit(16)
                .await
                .map_err(unavailable)?
                .try_collect()
                .await
                .map_err(unavailable)?;
            // Same precedence as every backend: wamid, message_id, provider id.
            let pick = |field: &str| docs.iter().find(|d| d.get_str(field).ok() == Some(id));
            Ok(pick("wamid")
                .or_else(|| pick("message_id"))
                .or_else(|| pick("bsp_message_id"))
                .map(from_doc))
        }
        .await;
        self.note(result)
    }

    async fn list_messages(&self, q: &MessageQuery) -> Result<MessagePage, StoreError> {
        let mut filter = equal_filter([
            ("phone_number", q.phone_number.as_deref()),
            ("campaign_id", q.campaign_id.as_deref()),
            ("project_owner_id", q.project_owner_id.as_deref()),
            ("current_status", q.status.as_deref()),
        ]);
        if let Some(after) = &q.after {
            let at = bson::DateTime::from_millis(after.created_at_ms);
            filter.insert(
                "$or",
                vec![
                    doc! {"created_at": {"$lt": at}},
                    doc! {"created_at": at, "message_id": {"$lt": &after.message_id}},
                ],
            );
        }
        let result = async {
            let docs: Vec<Document> = self
                .messages
                .find(filter)
                .sort(doc! {"created_at": -1, "message_id": -1})
                .limit(q.limit as i64 + 1)
                .await
                .map_err(unavailable)?
                .try_collect()
                .await
                .map_err(unavailable)?;
            Ok(MessagePage::from_probe(
                docs.iter().map(from_doc).collect(),
                q.limit,
            ))
        }
        .await;
        self.note(result)
    }

    async fn record_unrecognized(&self, events: &[UnrecognizedEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let docs = events.iter().map(|u| {
            doc! {
                "event_id": &u.event_id,
                "bsp": u.bsp.as_str(),
                "received_at": bson::DateTime::from_chrono(u.received_at),
                "reason": &u.reason,
                "body": &u.body,
            }
        });
        let result = self
            .unrecognized
            .insert_many(docs)
            .await
            .map(|_| ())
            .map_err(unavailable);
        self.note(result)
    }

    async fn list_unrecognized(&self, limit: usize) -> Result<Vec<UnrecognizedEvent>, StoreError> {
        let result = async {
            let docs: Vec<Document> = self
                .unrecognized
                .find(doc! {})
                .sort(doc! {"_id": -1})
                .limit(limit as i64)
                .await
                .map_err(unavailable)?
                .try_collect()
                .await
                .map_err(unavailable)?;
            Ok(docs
                .iter()
                .map(|d| UnrecognizedEvent {
                    event_id: d.get_str("event_id").unwrap_or_default().to_owned(),
                    bsp: d
                        .get_str("bsp")
                        .ok()
                        .and_then(Bsp::parse)
                        .unwrap_or_default(),
                    received_at: date(d, "received_at").unwrap_or_else(Utc::now),
                    reason: d.get_str("reason").unwrap_or_default().to_owned(),
                    body: d.get_str("body").unwrap_or_default().to_owned(),
                })
                .collect())
        }
        .await;
        self.note(result)
    }

    async fn stats(&self, q: &StatsQuery) -> Result<MessageStats, StoreError> {
        let mut filter = equal_filter([
            ("project_owner_id", q.project_owner_id.as_deref()),
            ("campaign_id", q.campaign_id.as_deref()),
            ("bsp", q.bsp.map(Bsp::as_str)),
        ]);
        let mut created = Document::new();
        if let Some(from) = q.from {
            created.insert("$gte", bson::DateTime::from_chrono(from));
        }
        if let Some(to) = q.to {
            created.insert("$lt", bson::DateTime::from_chrono(to));
        }
        if !created.is_empty() {
            filter.insert("created_at", created);
        }
        let pipeline = vec![
            doc! {"$match": filter},
            doc! {"$group": {"_id": "$current_status", "count": {"$sum": 1}}},
        ];
        let result = async {
            let rows: Vec<Document> = self
                .messages
                .aggregate(pipeline)
                .await
                .map_err(unavailable)?
                .try_collect()
                .await
                .map_err(unavailable)?;
            let mut by_status = BTreeMap::new();
            for row in rows {
                let status = row.get_str("_id").unwrap_or("").to_owned();
                let count = match row.get("count") {
                    Some(Bson::Int32(n)) => *n as u64,
                    Some(Bson::Int64(n)) => *n as u64,
                    Some(Bson::Double(n)) => *n as u64,
                    _ => 0,
                };
                *by_status.entry(status).or_insert(0) += count;
            }
            Ok(MessageStats::from_counts(by_status))
        }
        .await;
        self.note(result)
    }

    async fn health(&self) -> BackendHealth {
        let ping = tokio::time::timeout(
            Duration::from_secs(2),
            self.db.run_command(doc! {"ping": 1}),
        )
        .await;
        let (up, detail) = match ping {
            Ok(Ok(_)) => (true, None),
            Ok(Err(e)) => (false, Some(e.to_string())),
            Err(_) => (false, Some("ping timed out".to_owned())),
        };
        self.up.store(up, Ordering::Relaxed);
        BackendHealth {
            backend: "mongodb",
            up,
            detail,
        }
    }
}

// ---------- documents ----------

fn date(d: &Document, key: &str) -> Option<DateTime<Utc>> {
    match d.get(key) {
        Some(Bson::DateTime(t)) => Some(t.to_chrono()),
        _ => None,
    }
}

fn string(d: &Document, key: &str) -> String {
    d.get_str(key).unwrap_or_default().to_owned()
}

fn opt_string(d: &Document, key: &str) -> Option<String> {
    d.get_str(key)
        .ok()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn json_of(b: &Bson) -> serde_json::Value {
    b.clone().into_relaxed_extjson()
}

fn bson_of(v: &serde_json::Value) -> Bson {
    bson::to_bson(v).unwrap_or_else(|_| Bson::String(v.to_string()))
}

/// Reads a document, ours or the legacy gateway's, leniently: a missing or
/// mistyped field becomes its default rather than an error.
pub fn from_doc(d: &Document) -> MessageRecord {
    let history = d
        .get_array("status_history")
        .map(|entries| {
            entries
                .iter()
                .filter_map(Bson::as_document)
                .map(|h| StatusEntry {
                    status: string(h, "status"),
                    source: string(h, "source"),
                    timestamp: date(h, "timestamp").unwrap_or_default(),
                    reason: opt_string(h, "reason"),
                    error_code: opt_string(h, "error_code"),
                    raw_status: opt_string(h, "raw_status"),
                    event_key: string(h, "event_key"),
                    event_id: string(h, "event_id"),
                })
                .collect()
        })
        .unwrap_or_default();
    let now = Utc::now();
    MessageRecord {
        message_id: opt_string(d, "message_id").unwrap_or_else(|| {
            d.get_object_id("_id")
                .map(|o| o.to_hex())
                .unwrap_or_default()
        }),
        wamid: opt_string(d, "wamid"),
        bsp: string(d, "bsp"),
        bsp_message_id: opt_string(d, "bsp_message_id"),
        phone_number: string(d, "phone_number"),
        business_number: string(d, "business_number"),
        current_status: string(d, "current_status"),
        status_history: history,
        campaign_id: opt_string(d, "campaign_id"),
        project_id: opt_string(d, "project_id"),
        project_owner_id: string(d, "project_owner_id"),
        bsp_data: d
            .get("bsp_data")
            .filter(|b| !matches!(b, Bson::Null))
            .map(json_of),
        sent_at: date(d, "sent_at"),
        delivered_at: date(d, "delivered_at"),
        read_at: date(d, "read_at"),
        failed_at: date(d, "failed_at"),
        created_at: date(d, "created_at").unwrap_or(now),
        updated_at: date(d, "updated_at").unwrap_or(now),
        direction: match d.get_str("direction") {
            Ok("inbound") => Direction::Inbound,
            _ => Direction::Outbound,
        },
        content: d
            .get("content")
            .filter(|b| !matches!(b, Bson::Null))
            .map(json_of),
    }
}

/// The fields zen-gateway owns, in the legacy names and BSON types. Absent
/// optional values are left out (`$set` then leaves them untouched).
pub fn to_doc(r: &MessageRecord) -> Document {
    let mut d = doc! {
        "message_id": &r.message_id,
        "bsp": &r.bsp,
        "phone_number": &r.phone_number,
        "business_number": &r.business_number,
        "current_status": &r.current_status,
        "status_history": r.status_history.iter().map(|h| {
            let mut e = doc! {
                "status": &h.status,
                "source": &h.source,
                "timestamp": bson::DateTime::from_chrono(h.timestamp),
            };
            if let Some(v) = &h.reason { e.insert("reason", v); }
            if let Some(v) = &h.error_code { e.insert("error_code", v); }
            if let Some(v) = &h.raw_status { e.insert("raw_status", v); }
            if !h.event_key.is_empty() { e.insert("event_key", &h.event_key); }
            if !h.event_id.is_empty() { e.insert("event_id", &h.event_id); }
            Bson::Document(e)
        }).collect::<Vec<_>>(),
        "project_owner_id": &r.project_owner_id,
        "created_at": bson::DateTime::from_chrono(r.created_at),
        "updated_at": bson::DateTime::from_chrono(r.updated_at),
        "direction": match r.direction { Direction::Inbound => "inbound", Direction::Outbound => "outbound" },
    };
    if let Some(v) = &r.wamid {
        d.insert("wamid", v);
    }
    if let Some(v) = &r.bsp_message_id {
        d.insert("bsp_message_id", v);
    }
    if let Some(v) = &r.campaign_id {
        d.insert("campaign_id", v);
    }
    if let Some(v) = &r.project_id {
        d.insert("project_id", v);
    }
    if let Some(v) = &r.bsp_data {
        d.insert("bsp_data", bson_of(v));
    }
    for (key, value) in [
        ("sent_at", r.sent_at),
        ("delivered_at", r.delivered_at),
        ("read_at", r.read_at),
        ("failed_at", r.failed_at),
    ] {
        if let Some(t) = value {
            d.insert(key, bson::DateTime::from_chrono(t));
        }
    }
    if let Some(v) = &r.content {
        d.insert("content", bson_of(v));
    }
    d
}

/// Folds a legacy duplicate into the surviving record: histories merged
/// (identical entries once), the status recomputed by the order rules,
/// empty fields filled.
fn merge_legacy(keep: &mut MessageRecord, other: &MessageRecord) {
    for h in &other.status_history {
        let same = |e: &StatusEntry| {
            e.status == h.status && e.timestamp == h.timestamp && e.source == h.source
        };
        if !keep.status_history.iter().any(same) {
            keep.status_history.push(h.clone());
        }
    }
    keep.status_history.sort_by_key(|h| h.timestamp);
    for (slot, value) in [
        (&mut keep.phone_number, &other.phone_number),
        (&mut keep.business_number, &other.business_number),
        (&mut keep.project_owner_id, &other.project_owner_id),
    ] {
        if slot.is_empty() {
            *slot = value.clone();
        }
    }
    keep.campaign_id = keep
        .campaign_id
        .take()
        .or_else(|| other.campaign_id.clone());
    keep.project_id = keep.project_id.take().or_else(|| other.project_id.clone());
    keep.bsp_data = keep.bsp_data.take().or_else(|| other.bsp_data.clone());
    keep.created_at = keep.created_at.min(other.created_at);
    keep.updated_at = keep.updated_at.max(other.updated_at);
    // Status and times, from the merged history by the order rules.
    let mut best: Option<crate::model::Status> = keep.status();
    for h in &keep.status_history {
        if let Some(s) = crate::model::Status::parse(&h.status) {
            if best.is_none_or(|b| s > b) {
                best = Some(s);
            }
            let slot = match s {
                crate::model::Status::Sent => &mut keep.sent_at,
                crate::model::Status::Delivered => &mut keep.delivered_at,
                crate::model::Status::Read => &mut keep.read_at,
                crate::model::Status::Failed => &mut keep.failed_at,
                _ => continue,
            };
            if slot.is_none_or(|t| h.timestamp < t) {
                *slot = Some(h.timestamp);
            }
        }
    }
    for (slot, t) in [
        (&mut keep.sent_at, other.sent_at),
        (&mut keep.delivered_at, other.delivered_at),
        (&mut keep.read_at, other.read_at),
        (&mut keep.failed_at, other.failed_at),
    ] {
        if let Some(t) = t {
            if slot.is_none_or(|cur| t < cur) {
                *slot = Some(t);
            }
        }
    }
    if let Some(b) = best {
        keep.current_status = b.as_str().to_owned();
    }
}
