//! The MongoDB store: the legacy `unified_message_tracking` collection, with
//! its field names and BSON types (dates as BSON dates), plus
//! `unrecognized_webhooks`.
//!
//! Applying a batch costs four round trips whatever its size: a `find` by
//! wamid and one by provider id for every message the batch touches, the
//! events applied in memory by the algorithm every backend shares
//! ([`WorkingSet`]), then one `insert` for new messages and multi-statement
//! `update` commands (split under the 16 MB command limit) for changed ones. Each
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

use super::collections::{
    DELIVERY_LOGS, LEGACY_SECRETS, MESSAGE_KEYS, MESSAGES, META, NOTIFICATIONS, SESSIONS,
    UNRECOGNIZED,
};
use super::prune::prune_oldest;
use super::read::{bsp_of, documents};
use crate::model::{
    Bsp, Direction, MessageRecord, Notification, OutboundRegistration, StatusEntry, UnifiedEvent,
    UnrecognizedEvent, UserIdentity,
};
use crate::store::StoreResult;
use crate::store::working_set::{Candidates, WorkingSet};
use crate::store::{
    Applied, BackendHealth, Kept, MessagePage, MessageQuery, MessageStats, MessageStore,
    NotificationQuery, StatsQuery, StoreError,
};

/// A stored document's identity and revision (for compare-and-set), and
/// the ids it was loaded with (its lookup keys are rewritten only when they
/// change).
#[derive(Debug, Clone)]
pub struct Handle {
    id: ObjectId,
    rev: i64,
    wamid: Option<String>,
    bsp_message_id: Option<String>,
}

/// The layout of collections and indexes this gateway writes. A database
/// marked with a higher one was written by a newer gateway: refused.
pub const SCHEMA_VERSION: i64 = 1;

/// The message store on MongoDB (or a wire-compatible server).
pub struct MongoStore {
    db: Database,
    messages: Collection<Document>,
    unrecognized: Collection<Document>,
    keys: Collection<Document>,
    notifications: Collection<Document>,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Options as the legacy gateway set them (pool 10/2, connect 10 s, server
/// selection 5 s), where the URI does not say otherwise.
pub async fn client(uri: &str) -> StoreResult<Client> {
    let opts = client_options(uri).await?;
    Client::with_options(opts).map_err(|e| StoreError::Invalid(format!("MONGO_URI: {e}")))
}

/// The driver's options for `MONGO_URI`: what the URI says (a replica
/// set's `replicaSet`, `w=majority`, `retryWrites`, `readPreference`, TLS,
/// `mongodb+srv` seed lists…) is kept as it is; the gateway only fills in
/// what it leaves unset.
pub async fn client_options(uri: &str) -> StoreResult<ClientOptions> {
    let mut opts = ClientOptions::parse(uri)
        .await
        .map_err(|e| StoreError::Invalid(format!("MONGO_URI: {e}")))?;
    opts.app_name.get_or_insert_with(|| "zen-gateway".into());
    opts.max_pool_size.get_or_insert(20);
    opts.min_pool_size.get_or_insert(2);
    opts.connect_timeout.get_or_insert(Duration::from_secs(10));
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(5));
    // Every command sent, by name: what the gateway costs the server.
    opts.command_event_handler = Some(mongodb::event::EventHandler::callback(
        |event: mongodb::event::command::CommandEvent| {
            if let mongodb::event::command::CommandEvent::Started(started) = event {
                metrics::counter!("zen_store_commands_total", "op" => started.command_name)
                    .increment(1);
            }
        },
    ));
    Ok(opts)
}

impl MongoStore {
    /// Connects lazily: a server that is down now is retried by each
    /// operation, so start-up never fails on it.
    pub async fn connect(uri: &str, database: &str) -> StoreResult<MongoStore> {
        let client = client(uri).await?;
        Ok(Self::new(client.database(database)))
    }

    pub fn new(db: Database) -> MongoStore {
        MongoStore {
            messages: db.collection(MESSAGES),
            unrecognized: db.collection(UNRECOGNIZED),
            keys: db.collection(MESSAGE_KEYS),
            notifications: db.collection(NOTIFICATIONS),
            db,
            up: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn note<T>(&self, r: StoreResult<T>) -> StoreResult<T> {
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
    pub async fn ensure_indexes(&self) -> StoreResult<IndexReport> {
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
            (
                doc! {"recipient.user_id": 1, "created_at": -1},
                "recipient_user_id_created_at",
            ),
            // Keyset pages sort on (created_at, message_id): with both in
            // the index a page is a range scan, not a sort of the matches.
            (
                doc! {"current_status": 1, "created_at": -1, "message_id": -1},
                "current_status_created_at_message_id",
            ),
            (doc! {"created_at": -1}, "created_at"),
            (
                doc! {"created_at": -1, "message_id": -1},
                "created_at_message_id",
            ),
        ] {
            self.create_index(keys, IndexOptions::builder().name(name.to_owned()).build())
                .await?;
        }
        for (keys, name) in [
            (doc! {"kind": 1, "received_at": -1}, "kind_received_at"),
            (doc! {"received_at": -1}, "received_at"),
        ] {
            let model = IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build();
            self.notifications
                .create_index(model)
                .await
                .map_err(classify)?;
        }
        // The delivery log's lookups: a webhook's newest, and an event's
        // (a message's deliveries).
        let logs = self.db.collection::<Document>(DELIVERY_LOGS);
        for (keys, name) in [
            (
                doc! {"webhook_id": 1, "created_at": -1},
                "webhook_id_created_at",
            ),
            (doc! {"event_id": 1}, "event_id"),
        ] {
            let model = IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build();
            logs.create_index(model).await.map_err(classify)?;
        }
        // Retention's oldest-first deletes.
        for (coll, field) in [(SESSIONS, "expires_at"), (LEGACY_SECRETS, "created_at")] {
            let model = IndexModel::builder()
                .keys(doc! {field: 1})
                .options(IndexOptions::builder().name(field.to_owned()).build())
                .build();
            self.db
                .collection::<Document>(coll)
                .create_index(model)
                .await
                .map_err(classify)?;
        }
        super::MongoContactStore::new(&self.db)
            .ensure_indexes()
            .await?;
        Ok(report)
    }

    async fn create_index(&self, keys: Document, options: IndexOptions) -> StoreResult<()> {
        self.create_index_raw(keys, options).await.map_err(classify)
    }

    async fn create_index_raw(
        &self, keys: Document, options: IndexOptions,
    ) -> mongodb::error::Result<()> {
        let model = IndexModel::builder().keys(keys).options(options).build();
        self.messages.create_index(model).await.map(|_| ())
    }

    /// A unique index over documents that have the key: partial (MongoDB),
    /// else sparse, else — on servers that implement neither, such as the
    /// FerretDB used in tests — a plain index, said loudly: uniqueness then
    /// rests on the processor applying one message's events in one place.
    async fn create_unique(
        &self, keys: Document, name: &str, partial: Document,
    ) -> StoreResult<UniqueIndexKind> {
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
            match self.create_index_raw(keys.clone(), options).await {
                Ok(()) => return Ok(kind),
                Err(e)
                    if server_code(&e).is_some_and(|(code, name)| {
                        code == NOT_IMPLEMENTED || name == "NotImplemented"
                    }) =>
                {
                    continue;
                }
                // Real MongoDB never gets here (partial works); elsewhere a
                // sparse compound index may still cover documents that lack
                // the id, and collide.
                Err(e) if kind == UniqueIndexKind::Sparse && is_duplicate_key(&e) => continue,
                Err(e) => return Err(classify(e)),
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

    /// Refuses a database a newer gateway wrote (its `zen_meta` schema is
    /// above [`SCHEMA_VERSION`]); marks an older or new one as ours.
    pub async fn check_schema(&self) -> StoreResult<i64> {
        let meta = self.db.collection::<Document>(META);
        let found = meta
            .find_one(doc! {"_id": "schema"})
            .await
            .map_err(unavailable)?
            .and_then(|d| {
                d.get("version")
                    .and_then(Bson::as_i64)
                    .or_else(|| d.get("version").and_then(Bson::as_i32).map(i64::from))
            });
        match found {
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::Invalid(format!(
                "database {:?} was written by a newer zen-gateway (schema {v}; this one \
                 knows {SCHEMA_VERSION}): run the newer gateway, or give this one a \
                 database of its own",
                self.db.name()
            ))),
            Some(v) if v == SCHEMA_VERSION => Ok(v),
            _ => {
                meta.update_one(
                    doc! {"_id": "schema"},
                    doc! {"$set": {"version": SCHEMA_VERSION}},
                )
                .upsert(true)
                .await
                .map_err(unavailable)?;
                Ok(SCHEMA_VERSION)
            }
        }
    }

    /// Merges the duplicate documents per `wamid` that the legacy gateway
    /// wrote (every `sent` inserted one more), then builds the indexes.
    /// Histories are merged, the status recomputed by the order rules; the
    /// oldest document survives. Idempotent.
    pub async fn migrate(&self) -> StoreResult<MigrationReport> {
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
            let docs: Vec<Document> = documents(self.messages.find(
                doc! {"_id": {"$in": ids.iter().map(|i| Bson::ObjectId(*i)).collect::<Vec<_>>()}},
            ))
            .await?;
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
        report.keys_written = self.rebuild_keys().await?;
        Ok(report)
    }

    /// The candidate records of a batch, oldest first: one single-field
    /// `$in` query per key (an `$or` over both is far slower on some
    /// wire-compatible servers). A server that serves `$in` by a scan
    /// (FerretDB on SQLite) still scans once per batch, not once per id.
    async fn load(&self, c: &Candidates) -> StoreResult<WorkingSet<Handle>> {
        let mut found: BTreeMap<ObjectId, Document> = BTreeMap::new();
        for (field, ids) in [("wamid", &c.wamids), ("bsp_message_id", &c.provider_ids)] {
            for chunk in ids.chunks(1000) {
                // One reply for the whole chunk (no `getMore`).
                let mut cursor = self
                    .messages
                    .find(doc! {field: {"$in": chunk}})
                    .batch_size(chunk.len() as u32 + 1)
                    .await
                    .map_err(unavailable)?;
                while let Some(d) = cursor.try_next().await.map_err(unavailable)? {
                    if let Ok(id) = d.get_object_id("_id") {
                        found.entry(id).or_insert(d);
                    }
                }
            }
        }
        Ok(WorkingSet::new(found.into_iter().map(|(id, d)| {
            let record = from_doc(&d);
            let handle = Handle {
                id,
                rev: rev_of(&d),
                wamid: record.wamid.clone(),
                bsp_message_id: record.bsp_message_id.clone(),
            };
            (handle, record)
        })))
    }

    /// Writes the lookup keys of every document (after a merge a key may
    /// name a removed duplicate: it is pointed at the survivor).
    async fn rebuild_keys(&self) -> StoreResult<u64> {
        let mut cursor = self
            .messages
            .find(doc! {})
            .projection(doc! {"_id": 1, "message_id": 1, "wamid": 1, "bsp": 1, "bsp_message_id": 1})
            .sort(doc! {"_id": -1})
            .await
            .map_err(unavailable)?;
        let mut written = 0;
        while let Some(d) = cursor.try_next().await.map_err(unavailable)? {
            let Ok(id) = d.get_object_id("_id") else {
                continue;
            };
            // Newest first, each key overwritten: the oldest document wins.
            for mut key in keys_of(id, &from_doc(&d)) {
                let Some(Bson::String(key_id)) = key.remove("_id") else {
                    continue;
                };
                self.keys
                    .update_one(doc! {"_id": key_id}, doc! {"$set": key})
                    .upsert(true)
                    .await
                    .map_err(unavailable)?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// Writes what a batch changed: inserts, then compare-and-set updates.
    async fn write_back(&self, set: &WorkingSet<Handle>) -> StoreResult<()> {
        let mut keys = Vec::new();
        let inserts: Vec<Document> = set
            .changed()
            .filter(|s| s.handle.is_none())
            .map(|s| {
                let id = ObjectId::new();
                keys.extend(keys_of(id, &s.record));
                let mut d = doc! {"_id": id};
                d.extend(to_doc(&s.record));
                d.insert("rev", 1_i64);
                d
            })
            .collect();
        // A stored record's keys exist; only an id it learned needs one.
        for s in set.changed() {
            if let Some(h) = &s.handle {
                if h.wamid != s.record.wamid || h.bsp_message_id != s.record.bsp_message_id {
                    keys.extend(keys_of(h.id, &s.record));
                }
            }
        }
        if !inserts.is_empty() {
            self.messages
                .insert_many(inserts)
                .ordered(true)
                .await
                .map_err(classify)?;
        }
        // After the documents: a key never names a document not written
        // (a retried batch writes its keys again).
        self.write_keys(keys).await?;
        let updates: Vec<Document> = set
            .changed()
            .filter_map(|s| {
                let Handle { id, rev, .. } = *s.handle.as_ref()?;
                let condition = if rev == 0 {
                    doc! {"_id": id, "rev": {"$exists": false}}
                } else {
                    doc! {"_id": id, "rev": rev}
                };
                let mut set = to_doc(&s.record);
                set.insert("rev", rev + 1);
                Some(doc! {"q": condition, "u": {"$set": set}})
            })
            .collect();
        // One command per chunk, under the server's 16 MB command limit
        // whatever the batch holds.
        for chunk in update_chunks(updates) {
            self.update_chunk(chunk).await?;
        }
        Ok(())
    }

    /// Adds lookup keys; a key that exists already keeps the document it
    /// names (the oldest wins, as for the unique indexes).
    async fn write_keys(&self, keys: Vec<Document>) -> StoreResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        match self.keys.insert_many(keys).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) if only_duplicate_keys(&e) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    async fn update_chunk(&self, updates: Vec<Document>) -> StoreResult<()> {
        let expected = updates.len() as i64;
        let reply = self
            .db
            .run_command(doc! {"update": MESSAGES, "updates": updates, "ordered": true})
            .await
            .map_err(classify)?;
        let matched = match reply.get("n") {
            Some(Bson::Int32(n)) => *n as i64,
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Double(n)) => *n as i64,
            _ => -1,
        };
        if let Ok(errors) = reply.get_array("writeErrors") {
            if !errors.is_empty() {
                // The server refused the data itself (a key it does not
                // accept, a document too large, a unique key): retrying the
                // same data gives the same answer.
                return Err(StoreError::Invalid(format!("update refused: {errors:?}")));
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

/// The lookup keys of a stored message, one per id it has.
fn keys_of(id: ObjectId, r: &MessageRecord) -> Vec<Document> {
    let mut keys = vec![doc! {"_id": format!("k:{}", r.message_id), "m": id}];
    if let Some(w) = r.wamid.as_deref().filter(|w| !w.is_empty()) {
        keys.push(doc! {"_id": format!("k:{w}"), "w": id});
    }
    if let Some(p) = r.bsp_message_id.as_deref().filter(|p| !p.is_empty()) {
        keys.push(doc! {"_id": format!("k:{p}"), "p": id});
    }
    keys
}

impl MongoStore {
    /// Messages last updated before `before`, with the lookup keys that
    /// point at them (keys first: a key without its message is harmless,
    /// the reverse would hide a message from lookups).
    async fn prune_messages(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        let docs: Vec<Document> = documents(
            self.messages
                .find(doc! {"updated_at": {"$lt": bson::DateTime::from_chrono(before)}})
                .sort(doc! {"updated_at": 1})
                .limit(limit as i64)
                .projection(doc! {"_id": 1, "wamid": 1, "message_id": 1, "bsp_message_id": 1}),
        )
        .await?;
        if docs.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
        let keys: Vec<String> = docs
            .iter()
            .flat_map(|d| {
                ["wamid", "message_id", "bsp_message_id"]
                    .into_iter()
                    .filter_map(|f| d.get_str(f).ok().filter(|v| !v.is_empty()))
                    .map(|v| format!("k:{v}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.keys
            .delete_many(doc! {
                "_id": {"$in": keys},
                "$or": [{"w": {"$in": &ids}}, {"m": {"$in": &ids}}, {"p": {"$in": &ids}}],
            })
            .await
            .map_err(unavailable)?;
        let r = self
            .messages
            .delete_many(doc! {"_id": {"$in": ids}})
            .await
            .map_err(unavailable)?;
        Ok(r.deleted_count)
    }
}

/// Whether a failed `insert_many` only hit keys that exist (by code).
pub(crate) fn only_duplicate_keys(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|w| !w.is_empty() && w.iter().all(|w| w.code == 11000))
        }
        _ => false,
    }
}

/// The bytes of update statements sent in one `update` command (the
/// server's limit is 16 MiB for the whole command).
const UPDATE_COMMAND_BYTES: usize = 8 * 1024 * 1024;
/// Statements in one `update` command (the server's limit is 100,000).
const UPDATE_COMMAND_STATEMENTS: usize = 1000;

/// Splits update statements into commands under both bounds; a single
/// statement larger than the byte bound goes alone (and the server decides).
fn update_chunks(updates: Vec<Document>) -> Vec<Vec<Document>> {
    let mut chunks: Vec<Vec<Document>> = Vec::new();
    let mut bytes = 0;
    for u in updates {
        let size = bson::to_vec(&u).map(|v| v.len()).unwrap_or(0);
        let start_new = match chunks.last() {
            None => true,
            Some(c) => c.len() >= UPDATE_COMMAND_STATEMENTS || bytes + size > UPDATE_COMMAND_BYTES,
        };
        if start_new {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(c) = chunks.last_mut() {
            c.push(u);
        }
    }
    chunks
}

/// Tells an outage (retry later) from data the server refuses (retrying the
/// same write cannot help): by the driver's error kind and server code, not
/// by its text.
fn classify(e: mongodb::error::Error) -> StoreError {
    use mongodb::error::{ErrorKind, WriteFailure};
    // Server codes that describe the data, not the server's state.
    const REFUSED: &[i32] = &[
        2,     // BadValue
        9,     // FailedToParse
        14,    // TypeMismatch
        52,    // DollarPrefixedFieldName
        55,    // InvalidDBRef
        56,    // EmptyFieldName
        57,    // DottedFieldName
        10334, // BSONObjectTooLarge
        11000, // DuplicateKey
        17419, // document too large
        17420, // document too large after update
    ];
    let code = match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.code),
        ErrorKind::BulkWrite(_) => None,
        ErrorKind::InvalidArgument { .. }
        | ErrorKind::BsonSerialization(_)
        | ErrorKind::BsonDeserialization(_) => return StoreError::Invalid(e.to_string()),
        _ => None,
    };
    match code {
        Some(c) if REFUSED.contains(&c) => StoreError::Invalid(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// MongoDB's `DuplicateKey` and `NotImplemented` codes.
const DUPLICATE_KEY: i32 = 11000;
const NOT_IMPLEMENTED: i32 = 238;

/// The server's error code and code name, where the error is the server's.
fn server_code(e: &mongodb::error::Error) -> Option<(i32, &str)> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some((c.code, c.code_name.as_str())),
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            Some((w.code, w.code_name.as_deref().unwrap_or("")))
        }
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| (w.code, w.code_name.as_deref().unwrap_or(""))),
        _ => None,
    }
}

/// Whether the server refused a write for a unique key (by code).
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    server_code(e).is_some_and(|(code, name)| code == DUPLICATE_KEY || name == "DuplicateKey")
}

/// What `migrate` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    /// Documents whose empty-string `wamid` / `bsp_message_id` was unset.
    pub emptied_ids: u64,
    pub merged_groups: u64,
    pub removed_documents: u64,
    pub indexes: IndexReport,
    /// Lookup keys written (see [`MESSAGE_KEYS`]).
    pub keys_written: u64,
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

/// `created_at` in [`from`, `to`), each bound optional.
fn created_between(filter: &mut Document, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) {
    let mut created = Document::new();
    if let Some(from) = from {
        created.insert("$gte", bson::DateTime::from_chrono(from));
    }
    if let Some(to) = to {
        created.insert("$lt", bson::DateTime::from_chrono(to));
    }
    if !created.is_empty() {
        filter.insert("created_at", created);
    }
}

#[async_trait]
impl MessageStore for MongoStore {
    async fn apply(&self, events: &[UnifiedEvent]) -> StoreResult<Vec<Option<Applied>>> {
        let result = async {
            let mut set = self.load(&Candidates::of_events(events)).await?;
            let applied = set.apply(events, Utc::now());
            self.write_back(&set).await?;
            Ok(applied)
        }
        .await;
        self.note(result)
    }

    async fn register(&self, reg: &OutboundRegistration) -> StoreResult<(MessageRecord, bool)> {
        let candidates = Candidates::of_registration(reg)?;
        // Compare-and-set may lose to a concurrent writer: retry a few times.
        let mut last = None;
        for _ in 0..5 {
            let attempt = async {
                let mut set = self.load(&candidates).await?;
                let registered = set.register(reg, Utc::now());
                self.write_back(&set).await?;
                Ok(registered)
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

    async fn find_message(&self, id: &str) -> StoreResult<Option<MessageRecord>> {
        let result = async {
            // Same precedence as every backend: wamid, message_id, provider
            // id. By key first: two `_id` queries.
            let key = self
                .keys
                .find_one(doc! {"_id": format!("k:{id}")})
                .await
                .map_err(unavailable)?;
            for kind in ["w", "m", "p"] {
                let Some(message) = key.as_ref().and_then(|k| k.get_object_id(kind).ok()) else {
                    continue;
                };
                let found = self
                    .messages
                    .find_one(doc! {"_id": message})
                    .await
                    .map_err(unavailable)?;
                if let Some(d) = found {
                    return Ok(Some(from_doc(&d)));
                }
            }
            // Documents without keys (written before them, or by another
            // service): the indexed single-field queries.
            for field in ["wamid", "message_id", "bsp_message_id"] {
                let found = self
                    .messages
                    .find_one(doc! {field: id})
                    .sort(doc! {"_id": 1})
                    .await
                    .map_err(unavailable)?;
                if let Some(d) = found {
                    return Ok(Some(from_doc(&d)));
                }
            }
            Ok(None)
        }
        .await;
        self.note(result)
    }

    async fn list_messages(&self, q: &MessageQuery) -> StoreResult<MessagePage> {
        let mut filter = equal_filter([
            ("phone_number", q.phone_number.as_deref()),
            ("campaign_id", q.campaign_id.as_deref()),
            ("project_owner_id", q.project_owner_id.as_deref()),
            ("current_status", q.status.as_deref()),
        ]);
        created_between(&mut filter, q.from, q.to);
        if !q.user_ids.is_empty() {
            filter.insert("recipient.user_id", doc! {"$in": &q.user_ids});
        }
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
            let docs: Vec<Document> = documents(
                self.messages
                    .find(filter)
                    .sort(doc! {"created_at": -1, "message_id": -1})
                    .limit(q.limit as i64 + 1),
            )
            .await?;
            Ok(MessagePage::from_probe(
                docs.iter().map(from_doc).collect(),
                q.limit,
            ))
        }
        .await;
        self.note(result)
    }

    async fn record_unrecognized(&self, events: &[UnrecognizedEvent]) -> StoreResult<()> {
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

    async fn record_notifications(&self, notifications: &[Notification]) -> StoreResult<()> {
        if notifications.is_empty() {
            return Ok(());
        }
        let docs = notifications.iter().map(|n| {
            doc! {
                "_id": &n.event_id,
                "bsp": n.bsp.as_str(),
                "kind": &n.kind,
                "received_at": bson::DateTime::from_chrono(n.received_at),
                // As text: provider keys may be ones a document refuses.
                "body": n.body.to_string(),
            }
        });
        let result = match self.notifications.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            // Redeliveries: the rest went in.
            Err(e) if only_duplicate_keys(&e) => Ok(()),
            Err(e) => Err(unavailable(e)),
        };
        self.note(result)
    }

    async fn list_notifications(&self, q: &NotificationQuery) -> StoreResult<Vec<Notification>> {
        let mut filter = doc! {};
        if let Some(kind) = &q.kind {
            filter.insert("kind", kind);
        }
        if let Some(bsp) = q.bsp {
            filter.insert("bsp", bsp.as_str());
        }
        let result = async {
            let docs: Vec<Document> = documents(
                self.notifications
                    .find(filter)
                    .sort(doc! {"received_at": -1, "_id": -1})
                    .limit(q.limit as i64),
            )
            .await?;
            Ok(docs
                .iter()
                .map(|d| Notification {
                    event_id: d.get_str("_id").unwrap_or_default().to_owned(),
                    bsp: bsp_of(d),
                    kind: d.get_str("kind").unwrap_or_default().to_owned(),
                    received_at: date(d, "received_at").unwrap_or_else(Utc::now),
                    body: d
                        .get_str("body")
                        .ok()
                        .and_then(|b| serde_json::from_str(b).ok())
                        .unwrap_or_default(),
                })
                .collect())
        }
        .await;
        self.note(result)
    }

    async fn prune(&self, kind: Kept, before: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        let result = async {
            match kind {
                Kept::Unrecognized => {
                    prune_oldest(&self.unrecognized, "received_at", before, limit).await
                }
                Kept::Notifications => {
                    prune_oldest(&self.notifications, "received_at", before, limit).await
                }
                Kept::Messages => self.prune_messages(before, limit).await,
            }
        }
        .await;
        self.note(result)
    }

    async fn list_unrecognized(&self, limit: usize) -> StoreResult<Vec<UnrecognizedEvent>> {
        let result = async {
            let docs: Vec<Document> = documents(
                self.unrecognized
                    .find(doc! {})
                    .sort(doc! {"_id": -1})
                    .limit(limit as i64),
            )
            .await?;
            Ok(docs
                .iter()
                .map(|d| UnrecognizedEvent {
                    event_id: d.get_str("event_id").unwrap_or_default().to_owned(),
                    bsp: bsp_of(d),
                    received_at: date(d, "received_at").unwrap_or_else(Utc::now),
                    reason: d.get_str("reason").unwrap_or_default().to_owned(),
                    body: d.get_str("body").unwrap_or_default().to_owned(),
                })
                .collect())
        }
        .await;
        self.note(result)
    }

    async fn stats(&self, q: &StatsQuery) -> StoreResult<MessageStats> {
        let mut filter = equal_filter([
            ("project_owner_id", q.project_owner_id.as_deref()),
            ("campaign_id", q.campaign_id.as_deref()),
            ("bsp", q.bsp.map(Bsp::as_str)),
        ]);
        created_between(&mut filter, q.from, q.to);
        let pipeline = vec![
            doc! {"$match": filter},
            doc! {"$group": {"_id": "$current_status", "count": {"$sum": 1}}},
        ];
        let result = async {
            let rows: Vec<Document> = documents(self.messages.aggregate(pipeline)).await?;
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
                    collapsed: match h.get("collapsed") {
                        Some(Bson::Int64(n)) => (*n).max(0) as u64,
                        Some(Bson::Int32(n)) => (*n).max(0) as u64,
                        _ => 0,
                    },
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
        played_at: date(d, "played_at"),
        failed_at: date(d, "failed_at"),
        recipient: d
            .get_document("recipient")
            .ok()
            .and_then(|r| bson::from_document::<UserIdentity>(r.clone()).ok())
            .filter(|r| !r.is_empty()),
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
            if h.collapsed > 0 { e.insert("collapsed", h.collapsed as i64); }
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
        ("played_at", r.played_at),
        ("failed_at", r.failed_at),
    ] {
        if let Some(t) = value {
            d.insert(key, bson::DateTime::from_chrono(t));
        }
    }
    if let Some(v) = &r.content {
        d.insert("content", bson_of(v));
    }
    // New beside the legacy fields: the user as Meta names them
    // (`recipient.user_id` is indexed).
    if let Some(v) = r.recipient.as_ref().filter(|v| !v.is_empty()) {
        if let Ok(v) = bson::to_document(v) {
            d.insert("recipient", v);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Update statements go out in commands under the byte and count
    /// bounds, in order; a statement larger than the bound goes alone.
    #[test]
    fn updates_are_split_under_the_command_limits() {
        let big = "x".repeat(3 * 1024 * 1024);
        let updates: Vec<Document> = (0..7)
            .map(|i| doc! {"q": {"_id": i}, "u": {"$set": {"blob": &big}}})
            .chain((0..2500).map(|i| doc! {"q": {"_id": 100 + i}, "u": {"$set": {"n": i}}}))
            .collect();
        let chunks = update_chunks(updates);
        let mut seen = 0;
        for c in &chunks {
            let bytes: usize = c.iter().map(|d| bson::to_vec(d).unwrap().len()).sum();
            assert!(c.len() == 1 || bytes <= UPDATE_COMMAND_BYTES, "{bytes}");
            assert!(c.len() <= UPDATE_COMMAND_STATEMENTS);
            seen += c.len();
        }
        assert_eq!(seen, 2507);
        assert_eq!(chunks[0].len(), 2, "two 3 MiB statements fit under 8 MiB");
        let one = "y".repeat(9 * 1024 * 1024);
        let alone = update_chunks(vec![doc! {"u": &one}, doc! {"u": 1}]);
        assert_eq!(alone.len(), 2);
    }
}
