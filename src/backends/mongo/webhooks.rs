//! Webhooks, delivery logs and project lookups on MongoDB, in the legacy
//! collections and types: `webhooks` (`_id` a string, int64-ms dates),
//! `webhook_delivery_logs` (`_id` ObjectId, `attempt_count` int32, dates as
//! BSON dates, updated per attempt with `$set` + `$inc`), and the read-only
//! `projects` (`wa_number` → `project_owner_id`).

use async_trait::async_trait;
use bson::oid::ObjectId;
use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use mongodb::{Collection, Database};

pub use super::collections::LEGACY_SECRETS;
use super::collections::{DELIVERY_LOGS, PROJECTS, WEBHOOKS};
use super::prune::{prune_oldest, prune_oldest_where};
use super::read::documents;
use super::store::only_duplicate_keys;
use crate::forwarding::{
    Attempt, DeliveryLog, DeliveryStatus, ProjectRef, WebhookConfig, WebhookStore, WebhookUpdate,
    normalize_number,
};
use crate::store::StoreError;
use crate::store::StoreResult;

pub struct MongoWebhookStore {
    webhooks: Collection<Document>,
    logs: Collection<Document>,
    projects: Collection<Document>,
    legacy_secrets: Collection<Document>,
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl MongoWebhookStore {
    pub fn new(db: &Database) -> Self {
        MongoWebhookStore {
            webhooks: db.collection(WEBHOOKS),
            logs: db.collection(DELIVERY_LOGS),
            projects: db.collection(PROJECTS),
            legacy_secrets: db.collection(LEGACY_SECRETS),
        }
    }
}

impl MongoWebhookStore {
    /// Delivery logs matching `filter`, newest first, at most `limit`.
    async fn newest_logs(&self, filter: Document, limit: usize) -> StoreResult<Vec<DeliveryLog>> {
        let docs = documents(
            self.logs
                .find(filter)
                .sort(doc! {"created_at": -1, "_id": 1})
                .limit(limit as i64),
        )
        .await?;
        Ok(docs.iter().map(log_from).collect())
    }
}

fn status_name(s: DeliveryStatus) -> &'static str {
    match s {
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Retrying => "retrying",
        DeliveryStatus::Success => "success",
        DeliveryStatus::Failed => "failed",
    }
}

fn webhook_doc(w: &WebhookConfig) -> Document {
    let w = &w.normalized();
    let mut d = doc! {
        "_id": &w.id,
        "project_owner_id": &w.project_owner_id,
        "project_id": &w.project_id,
        "webhook_url": &w.webhook_url,
        "shared_secret": &w.shared_secret,
        "topics": &w.topics,
        "created_at": w.created_at,
        "updated_at": w.updated_at,
    };
    if let Some(a) = w.active {
        d.insert("active", a);
    }
    if let Some(b) = &w.business_numbers {
        d.insert("business_numbers", b);
    }
    if let Some(h) = &w.headers {
        let mut hd = Document::new();
        for (k, v) in h {
            hd.insert(k, v);
        }
        d.insert("headers", hd);
    }
    if let Some(t) = w.timeout_ms {
        d.insert("timeout_ms", t as i64);
    }
    if let Some(m) = w.max_in_flight {
        d.insert("max_in_flight", m as i64);
    }
    // As JSON text: a stored document may not hold `$` field names.
    if let Some(f) = &w.filter {
        d.insert("filter", f.to_string());
    }
    if let Some(s) = &w.previous_secret {
        d.insert("previous_secret", s);
    }
    if let Some(t) = w.previous_secret_expires_at {
        d.insert("previous_secret_expires_at", t);
    }
    d
}

fn int(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => *n as i64,
        Some(Bson::Double(n)) => *n as i64,
        Some(Bson::DateTime(t)) => t.timestamp_millis(),
        _ => 0,
    }
}

fn strings(d: &Document, key: &str) -> Option<Vec<String>> {
    d.get_array(key).ok().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    })
}

fn webhook_from(d: &Document) -> WebhookConfig {
    let id = match d.get("_id") {
        Some(Bson::String(s)) => s.clone(),
        Some(Bson::ObjectId(o)) => o.to_hex(),
        _ => String::new(),
    };
    WebhookConfig {
        id,
        project_owner_id: d.get_str("project_owner_id").unwrap_or_default().to_owned(),
        project_id: d.get_str("project_id").unwrap_or_default().to_owned(),
        webhook_url: d.get_str("webhook_url").unwrap_or_default().to_owned(),
        shared_secret: d.get_str("shared_secret").unwrap_or_default().to_owned(),
        topics: strings(d, "topics").unwrap_or_default(),
        created_at: int(d, "created_at"),
        updated_at: int(d, "updated_at"),
        active: d.get_bool("active").ok(),
        business_numbers: strings(d, "business_numbers"),
        timeout_ms: d
            .get("timeout_ms")
            .map(|_| int(d, "timeout_ms"))
            .and_then(|t| u64::try_from(t).ok()),
        max_in_flight: d
            .get("max_in_flight")
            .map(|_| int(d, "max_in_flight"))
            .and_then(|m| u32::try_from(m).ok()),
        filter: d
            .get_str("filter")
            .ok()
            .and_then(|f| serde_json::from_str(f).ok()),
        previous_secret: d.get_str("previous_secret").ok().map(str::to_owned),
        previous_secret_expires_at: d
            .get("previous_secret_expires_at")
            .map(|_| int(d, "previous_secret_expires_at")),
        headers: d.get_document("headers").ok().map(|h| {
            h.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        }),
    }
}

/// `_id` as stored: ours are 24 hex, i.e. ObjectIds, as the legacy logs.
fn log_id(id: &str) -> Bson {
    ObjectId::parse_str(id)
        .map(Bson::ObjectId)
        .unwrap_or_else(|_| Bson::String(id.to_owned()))
}

fn log_from(d: &Document) -> DeliveryLog {
    let status = match d.get_str("status").unwrap_or("pending") {
        "retrying" => DeliveryStatus::Retrying,
        "success" => DeliveryStatus::Success,
        "failed" => DeliveryStatus::Failed,
        _ => DeliveryStatus::Pending,
    };
    let date = |k: &str| d.get_datetime(k).ok().map(|t| t.to_chrono());
    DeliveryLog {
        id: match d.get("_id") {
            Some(Bson::ObjectId(o)) => o.to_hex(),
            Some(Bson::String(s)) => s.clone(),
            _ => String::new(),
        },
        project_owner_id: d.get_str("project_owner_id").unwrap_or_default().to_owned(),
        webhook_id: d.get_str("webhook_id").unwrap_or_default().to_owned(),
        event_id: d.get_str("event_id").unwrap_or_default().to_owned(),
        event_type: d.get_str("event_type").unwrap_or_default().to_owned(),
        webhook_url: d.get_str("webhook_url").unwrap_or_default().to_owned(),
        payload: d
            .get("payload")
            .cloned()
            .map(Bson::into_relaxed_extjson)
            .unwrap_or_default(),
        attempt_count: int(d, "attempt_count") as u32,
        status,
        status_code: d.get("status_code").map(|_| int(d, "status_code") as u16),
        response_body: d.get_str("response_body").ok().map(str::to_owned),
        error_message: d.get_str("error_message").ok().map(str::to_owned),
        delivery_duration_ms: d
            .get("delivery_duration_ms")
            .map(|_| int(d, "delivery_duration_ms") as u64),
        next_retry_at: date("next_retry_at"),
        created_at: date("created_at").unwrap_or_else(Utc::now),
        last_attempt_at: date("last_attempt_at").unwrap_or_else(Utc::now),
    }
}

#[async_trait]
impl WebhookStore for MongoWebhookStore {
    async fn create_webhook(&self, w: &WebhookConfig) -> StoreResult<()> {
        self.webhooks
            .insert_one(webhook_doc(w))
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<WebhookConfig>> {
        let found = self
            .webhooks
            .find_one(doc! {"_id": id})
            .await
            .map_err(unavailable)?;
        Ok(found.as_ref().map(webhook_from))
    }

    async fn list_webhooks(&self, owner: Option<&str>) -> StoreResult<Vec<WebhookConfig>> {
        let filter = match owner {
            Some(o) => doc! {"project_owner_id": o},
            None => doc! {},
        };
        let docs = documents(self.webhooks.find(filter).sort(doc! {"_id": 1})).await?;
        Ok(docs.iter().map(webhook_from).collect())
    }

    async fn update_webhook(&self, w: &WebhookConfig, read_at: i64) -> StoreResult<WebhookUpdate> {
        // `$set` of our fields: fields other services keep (app_id,
        // partner_id…) survive.
        let mut set = webhook_doc(w);
        set.remove("_id");
        let mut unset = Document::new();
        for key in [
            "active",
            "business_numbers",
            "headers",
            "timeout_ms",
            "max_in_flight",
            "filter",
            "previous_secret",
            "previous_secret_expires_at",
        ] {
            if !set.contains_key(key) {
                unset.insert(key, "");
            }
        }
        let mut update = doc! {"$set": set};
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        // Only while `updated_at` is still what was read, in whichever
        // type a document holds it (legacy documents: a date, or none).
        let mut same = vec![
            Bson::Int64(read_at),
            Bson::DateTime(bson::DateTime::from_millis(read_at)),
        ];
        if read_at == 0 {
            same.push(Bson::Null);
        }
        let r = self
            .webhooks
            .update_one(doc! {"_id": &w.id, "updated_at": {"$in": same}}, update)
            .await
            .map_err(unavailable)?;
        if r.matched_count > 0 {
            return Ok(WebhookUpdate::Updated);
        }
        Ok(match self.get_webhook(&w.id).await? {
            Some(_) => WebhookUpdate::Stale,
            None => WebhookUpdate::NotFound,
        })
    }

    async fn forget_previous_secret(&self, id: &str, expires_at_ms: i64) -> StoreResult<bool> {
        let r = self
            .webhooks
            .update_one(
                doc! {"_id": id, "previous_secret_expires_at": expires_at_ms},
                doc! {"$unset": {"previous_secret": "", "previous_secret_expires_at": ""}},
            )
            .await
            .map_err(unavailable)?;
        Ok(r.modified_count > 0)
    }

    async fn delete_webhook(&self, id: &str) -> StoreResult<bool> {
        let r = self
            .webhooks
            .delete_one(doc! {"_id": id})
            .await
            .map_err(unavailable)?;
        Ok(r.deleted_count > 0)
    }

    async fn matching_webhooks(
        &self, owner: Option<&str>, project_id: Option<&str>, business_number: Option<&str>,
    ) -> StoreResult<Vec<WebhookConfig>> {
        let mut or = Vec::new();
        if let Some(o) = owner {
            or.push(doc! {"project_owner_id": o});
        }
        if let Some(p) = project_id {
            or.push(doc! {"project_id": p});
        }
        if let Some(b) = business_number {
            let n = normalize_number(b);
            or.push(doc! {"business_numbers": n});
        }
        if or.is_empty() {
            return Ok(Vec::new());
        }
        let docs = documents(self.webhooks.find(doc! {"$or": or})).await?;
        Ok(docs
            .iter()
            .map(webhook_from)
            .filter(WebhookConfig::is_active)
            .collect())
    }

    async fn project_of(&self, business_number: &str) -> StoreResult<Option<ProjectRef>> {
        let n = normalize_number(business_number);
        let found = self
            .projects
            .find_one(doc! {"$or": [{"wa_number": business_number}, {"wa_number": &n}]})
            .projection(doc! {"_id": 1, "project_owner_id": 1})
            .await
            .map_err(unavailable)?;
        Ok(found.map(|d| ProjectRef {
            project_id: match d.get("_id") {
                Some(Bson::ObjectId(o)) => o.to_hex(),
                Some(Bson::String(s)) => s.clone(),
                _ => String::new(),
            },
            project_owner_id: d.get_str("project_owner_id").unwrap_or_default().to_owned(),
        }))
    }

    async fn prune_delivery_logs(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        // Secrets held for a dead-lettered delivery stay (see
        // `prune_held_legacy_secrets`).
        prune_oldest_where(
            &self.legacy_secrets,
            "created_at",
            before,
            limit,
            doc! {"dead_at": null},
        )
        .await?;
        prune_oldest(&self.logs, "created_at", before, limit).await
    }

    async fn create_delivery_logs(&self, logs: &[DeliveryLog]) -> StoreResult<()> {
        if logs.is_empty() {
            return Ok(());
        }
        let docs = logs.iter().map(|l| {
            doc! {
                "_id": log_id(&l.id),
                "project_owner_id": &l.project_owner_id,
                "webhook_id": &l.webhook_id,
                "event_id": &l.event_id,
                "event_type": &l.event_type,
                "webhook_url": &l.webhook_url,
                "payload": bson::to_bson(&l.payload).unwrap_or(Bson::Null),
                "attempt_count": l.attempt_count as i32,
                "status": status_name(l.status),
                "created_at": bson::DateTime::from_chrono(l.created_at),
                "last_attempt_at": bson::DateTime::from_chrono(l.last_attempt_at),
            }
        });
        match self.logs.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            // A re-run fan-out: those logs exist already.
            Err(e) if only_duplicate_keys(&e) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn record_attempt(&self, id: &str, a: &Attempt) -> StoreResult<()> {
        let mut set = doc! {
            "status": status_name(a.status),
            "last_attempt_at": bson::DateTime::from_chrono(a.at),
            "delivery_duration_ms": a.duration_ms as i64,
        };
        if let Some(c) = a.status_code {
            set.insert("status_code", c as i32);
        }
        if let Some(b) = &a.response_body {
            set.insert("response_body", b);
        }
        // As `apply_attempt`: the error and the next retry are replaced
        // (cleared when the attempt has none), the rest kept when absent.
        let mut unset = doc! {};
        match &a.error_message {
            Some(e) => {
                set.insert("error_message", e);
            }
            None => {
                unset.insert("error_message", "");
            }
        }
        match a.next_retry_at {
            Some(t) => {
                set.insert("next_retry_at", bson::DateTime::from_chrono(t));
            }
            None => {
                unset.insert("next_retry_at", "");
            }
        }
        let mut update = doc! {};
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        update.insert("$set", set);
        if a.counts_as_attempt {
            update.insert("$inc", doc! {"attempt_count": 1_i32});
        }
        self.logs
            .update_one(doc! {"_id": log_id(id)}, update)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn delivery_status(&self, id: &str) -> StoreResult<Option<DeliveryStatus>> {
        let found = self
            .logs
            .find_one(doc! {"_id": log_id(id)})
            .projection(doc! {"status": 1})
            .await
            .map_err(unavailable)?;
        Ok(found.and_then(|d| {
            serde_json::from_value(serde_json::Value::String(
                d.get_str("status").ok()?.to_owned(),
            ))
            .ok()
        }))
    }

    async fn keep_legacy_secret(&self, id: &str, secret: &str) -> StoreResult<()> {
        self.legacy_secrets
            .update_one(
                doc! {"_id": id},
                doc! {"$set": {"secret": secret, "created_at": bson::DateTime::now()}},
            )
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn legacy_secret(&self, id: &str) -> StoreResult<Option<String>> {
        let found = self
            .legacy_secrets
            .find_one(doc! {"_id": id})
            .await
            .map_err(unavailable)?;
        Ok(found.and_then(|d| d.get_str("secret").ok().map(str::to_owned)))
    }

    async fn hold_legacy_secret(
        &self, id: &str, dead_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        let update = match dead_at {
            Some(t) => doc! {"$set": {"dead_at": bson::DateTime::from_chrono(t)}},
            None => doc! {"$unset": {"dead_at": ""}},
        };
        self.legacy_secrets
            .update_one(doc! {"_id": id}, update)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn prune_held_legacy_secrets(
        &self, before: DateTime<Utc>, limit: usize,
    ) -> StoreResult<u64> {
        prune_oldest(&self.legacy_secrets, "dead_at", before, limit).await
    }

    async fn list_deliveries(
        &self, webhook_id: &str, limit: usize,
    ) -> StoreResult<Vec<DeliveryLog>> {
        self.newest_logs(doc! {"webhook_id": webhook_id}, limit)
            .await
    }

    async fn deliveries_of_events(
        &self, event_ids: &[String], limit: usize,
    ) -> StoreResult<Vec<DeliveryLog>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.newest_logs(doc! {"event_id": {"$in": event_ids}}, limit)
            .await
    }
}
