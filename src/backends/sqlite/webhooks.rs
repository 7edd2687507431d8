//! Client webhooks and their delivery logs on the embedded database
//! (`webhooks`, `delivery_logs`), and the secrets of legacy forwarding jobs
//! (`legacy_job_secrets`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{SqliteDb, from_json, json_err};
use crate::forwarding::{
    Attempt, DeliveryLog, DeliveryStatus, ProjectRef, WebhookConfig, WebhookStore, WebhookUpdate,
    apply_attempt,
};
use crate::store::StoreResult;

#[derive(Clone)]
pub struct SqliteWebhookStore {
    db: SqliteDb,
}

impl SqliteWebhookStore {
    pub fn new(db: SqliteDb) -> Self {
        SqliteWebhookStore { db }
    }
}

fn upsert_webhook(conn: &rusqlite::Connection, w: &WebhookConfig) -> rusqlite::Result<usize> {
    let w = &w.normalized();
    let doc = serde_json::to_string(w).map_err(json_err)?;
    conn.prepare_cached(
        "INSERT INTO webhooks (id, project_owner_id, project_id, doc) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET project_owner_id = ?2, project_id = ?3, doc = ?4",
    )?
    .execute(params![w.id, w.project_owner_id, w.project_id, doc])
}

/// A webhook as stored now (on the writer, inside its transaction).
fn stored_webhook(c: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<WebhookConfig>> {
    c.prepare_cached("SELECT doc FROM webhooks WHERE id = ?1")?
        .query_row([id], |r| r.get::<_, String>(0))
        .optional()?
        .map(from_json)
        .transpose()
}

#[async_trait]
impl WebhookStore for SqliteWebhookStore {
    async fn create_webhook(&self, w: &WebhookConfig) -> StoreResult<()> {
        let w = w.clone();
        self.db.write(move |c| upsert_webhook(c, &w)).await?;
        Ok(())
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<WebhookConfig>> {
        let id = id.to_owned();
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached("SELECT doc FROM webhooks WHERE id = ?1")?
                    .query_row([id], |r| r.get::<_, String>(0))
                    .optional()?
                    .map(from_json)
                    .transpose()
            })
            .await?)
    }

    async fn list_webhooks(&self, owner: Option<&str>) -> StoreResult<Vec<WebhookConfig>> {
        let owner = owner.map(str::to_owned);
        Ok(self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT doc FROM webhooks WHERE ?1 IS NULL OR project_owner_id = ?1 ORDER BY id",
                )?;
                let rows = stmt.query_map([owner], |r| r.get::<_, String>(0))?;
                rows.map(|r| r.and_then(from_json)).collect()
            })
            .await?)
    }

    async fn update_webhook(&self, w: &WebhookConfig, read_at: i64) -> StoreResult<WebhookUpdate> {
        let w = w.clone();
        // Compared and written in one writer job: nothing lands in between.
        Ok(self
            .db
            .write(move |c| {
                Ok(match stored_webhook(c, &w.id)? {
                    None => WebhookUpdate::NotFound,
                    Some(now) if now.updated_at != read_at => WebhookUpdate::Stale,
                    Some(_) => {
                        upsert_webhook(c, &w)?;
                        WebhookUpdate::Updated
                    }
                })
            })
            .await?)
    }

    async fn forget_previous_secret(&self, id: &str, expires_at_ms: i64) -> StoreResult<bool> {
        let id = id.to_owned();
        // Read and written in one writer job: nothing lands in between.
        Ok(self
            .db
            .write(move |c| {
                let Some(mut w) = stored_webhook(c, &id)?.filter(|w| {
                    w.previous_secret.is_some()
                        && w.previous_secret_expires_at == Some(expires_at_ms)
                }) else {
                    return Ok(false);
                };
                w.previous_secret = None;
                w.previous_secret_expires_at = None;
                upsert_webhook(c, &w)?;
                Ok(true)
            })
            .await?)
    }

    async fn delete_webhook(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        Ok(self
            .db
            .write(move |c| {
                c.execute("DELETE FROM webhooks WHERE id = ?1", [id])
                    .map(|n| n > 0)
            })
            .await?)
    }

    async fn matching_webhooks(
        &self, owner: Option<&str>, project_id: Option<&str>, business_number: Option<&str>,
    ) -> StoreResult<Vec<WebhookConfig>> {
        let (o, p, b) = (
            owner.map(str::to_owned),
            project_id.map(str::to_owned),
            business_number.map(crate::forwarding::normalize_number),
        );
        let all: Vec<WebhookConfig> = self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT doc FROM webhooks
                     WHERE (?1 IS NOT NULL AND project_owner_id = ?1)
                        OR (?2 IS NOT NULL AND project_id = ?2)
                        OR (?3 IS NOT NULL AND EXISTS (
                              SELECT 1 FROM json_each(doc, '$.business_numbers')
                              WHERE value = ?3))",
                )?;
                let rows = stmt.query_map(params![o, p, b], |r| r.get::<_, String>(0))?;
                rows.map(|r| r.and_then(from_json)).collect()
            })
            .await?;
        Ok(all.into_iter().filter(WebhookConfig::is_active).collect())
    }

    async fn project_of(&self, _business_number: &str) -> StoreResult<Option<ProjectRef>> {
        // The embedded backend has no `projects` collection: owners come from
        // registered messages, and webhooks can match by business number.
        Ok(None)
    }

    async fn prune_delivery_logs(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        let before_ms = before.timestamp_millis();
        // Secrets held for a dead-lettered delivery stay (see
        // `prune_held_legacy_secrets`).
        self.db
            .write_background(move |c| {
                c.prepare_cached(
                    "DELETE FROM legacy_job_secrets WHERE rowid IN
                     (SELECT rowid FROM legacy_job_secrets
                      WHERE created_at_ms < ?1 AND dead_at_ms IS NULL
                      ORDER BY created_at_ms LIMIT ?2)",
                )?
                .execute(params![before_ms, limit as i64])
            })
            .await?;
        Ok(self
            .db
            .prune_rows("delivery_logs", "created_at_ms", before_ms, limit)
            .await?)
    }

    async fn create_delivery_logs(&self, logs: &[DeliveryLog]) -> StoreResult<()> {
        let logs = logs.to_vec();
        self.db
            .write_background(move |c| {
                let mut stmt = c.prepare_cached(
                    "INSERT OR IGNORE INTO delivery_logs (id, webhook_id, created_at_ms, doc)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for l in &logs {
                    let doc = serde_json::to_string(l).map_err(json_err)?;
                    stmt.execute(params![
                        l.id,
                        l.webhook_id,
                        l.created_at.timestamp_millis(),
                        doc
                    ])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn record_attempt(&self, log_id: &str, a: &Attempt) -> StoreResult<()> {
        let (id, a) = (log_id.to_owned(), a.clone());
        self.db
            .write_background(move |c| {
                let Some(doc) = c
                    .prepare_cached("SELECT doc FROM delivery_logs WHERE id = ?1")?
                    .query_row([&id], |r| r.get::<_, String>(0))
                    .optional()?
                else {
                    return Ok(());
                };
                let mut log: DeliveryLog = from_json(doc)?;
                apply_attempt(&mut log, &a);
                let doc = serde_json::to_string(&log).map_err(json_err)?;
                c.prepare_cached("UPDATE delivery_logs SET doc = ?2 WHERE id = ?1")?
                    .execute(params![id, doc])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn delivery_status(&self, log_id: &str) -> StoreResult<Option<DeliveryStatus>> {
        let id = log_id.to_owned();
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT json_extract(doc, '$.status') FROM delivery_logs WHERE id = ?1",
                )?
                .query_row([&id], |r| r.get::<_, String>(0))
                .optional()
            })
            .await?
            .and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok()))
    }

    async fn keep_legacy_secret(&self, log_id: &str, secret: &str) -> StoreResult<()> {
        let (id, secret) = (log_id.to_owned(), secret.to_owned());
        self.db
            .write_background(move |c| {
                c.prepare_cached(
                    "INSERT INTO legacy_job_secrets (delivery_log_id, secret, created_at_ms)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (delivery_log_id) DO UPDATE SET secret = excluded.secret",
                )?
                .execute(params![id, secret, Utc::now().timestamp_millis()])
            })
            .await?;
        Ok(())
    }

    async fn legacy_secret(&self, log_id: &str) -> StoreResult<Option<String>> {
        let id = log_id.to_owned();
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT secret FROM legacy_job_secrets WHERE delivery_log_id = ?1",
                )?
                .query_row([&id], |r| r.get(0))
                .optional()
            })
            .await?)
    }

    async fn hold_legacy_secret(
        &self, log_id: &str, dead_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        let (id, dead_at) = (log_id.to_owned(), dead_at.map(|t| t.timestamp_millis()));
        self.db
            .write_background(move |c| {
                c.prepare_cached(
                    "UPDATE legacy_job_secrets SET dead_at_ms = ?2 WHERE delivery_log_id = ?1",
                )?
                .execute(params![id, dead_at])
            })
            .await?;
        Ok(())
    }

    async fn prune_held_legacy_secrets(
        &self, before: DateTime<Utc>, limit: usize,
    ) -> StoreResult<u64> {
        Ok(self
            .db
            .prune_rows(
                "legacy_job_secrets",
                "dead_at_ms",
                before.timestamp_millis(),
                limit,
            )
            .await?)
    }

    async fn list_deliveries(
        &self, webhook_id: &str, limit: usize,
    ) -> StoreResult<Vec<DeliveryLog>> {
        let id = webhook_id.to_owned();
        Ok(self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT doc FROM delivery_logs WHERE webhook_id = ?1
                     ORDER BY created_at_ms DESC, id LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![id, limit as i64], |r| r.get::<_, String>(0))?;
                rows.map(|r| r.and_then(from_json)).collect()
            })
            .await?)
    }

    async fn deliveries_of_events(
        &self, event_ids: &[String], limit: usize,
    ) -> StoreResult<Vec<DeliveryLog>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = event_ids.to_vec();
        Ok(self
            .db
            .read(move |c| {
                // The expression is the index's (`delivery_logs_event`).
                let marks = vec!["?"; ids.len()].join(", ");
                let sql = format!(
                    "SELECT doc FROM delivery_logs WHERE json_extract(doc, '$.event_id') IN ({marks})
                     ORDER BY created_at_ms DESC, id LIMIT ?"
                );
                let mut args: Vec<rusqlite::types::Value> =
                    ids.into_iter().map(Into::into).collect();
                args.push((limit as i64).into());
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?;
                rows.map(|r| r.and_then(from_json)).collect()
            })
            .await?)
    }
}
