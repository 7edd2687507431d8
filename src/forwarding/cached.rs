//! A caching layer over any [`WebhookStore`]: fan-out matches every event
//! against the webhooks, and the forwarder reads a webhook per delivery;
//! neither should cost a database round trip each time.
//!
//! - Match results go to the shared cache (Redis when configured), **without
//!   secrets**, under a key that includes a generation value. Every change
//!   through this layer writes a new generation, which is how all replicas'
//!   entries are invalidated at once; the short TTL bounds anything else
//!   (a change made by another service directly in the database).
//! - Single webhooks (with their secret, for signing) are cached in-process
//!   only, for a few seconds: secrets never leave the process through a cache.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    Attempt, DeliveryLog, DeliveryStatus, ProjectRef, WebhookConfig, WebhookStore, WebhookUpdate,
};
use crate::cache::Cache;
use crate::store::StoreResult;

const GENERATION_KEY: &str = "zen:webhooks:generation";
const MATCH_TTL: Duration = Duration::from_secs(30);
const LOCAL_TTL: Duration = Duration::from_secs(5);

pub struct CachedWebhookStore {
    inner: Arc<dyn WebhookStore>,
    shared: Arc<dyn Cache>,
    local: moka::sync::Cache<String, Option<WebhookConfig>>,
}

impl CachedWebhookStore {
    pub fn new(inner: Arc<dyn WebhookStore>, shared: Arc<dyn Cache>) -> Self {
        CachedWebhookStore {
            inner,
            shared,
            local: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(LOCAL_TTL)
                .build(),
        }
    }

    async fn generation(&self) -> Option<String> {
        match self.shared.get(GENERATION_KEY).await {
            Ok(Some(g)) => Some(g),
            Ok(None) => Some("0".into()),
            Err(_) => None,
        }
    }

    /// Invalidates every cached match, here and on the other replicas.
    async fn changed(&self, id: &str) {
        self.local.invalidate(id);
        let generation = uuid::Uuid::new_v4().simple().to_string();
        if let Err(e) = self
            .shared
            .set(
                GENERATION_KEY,
                &generation,
                Duration::from_secs(7 * 24 * 3600),
            )
            .await
        {
            tracing::warn!(error = %e, "webhook cache not invalidated; entries expire within 30 s");
        }
    }
}

#[async_trait]
impl WebhookStore for CachedWebhookStore {
    async fn create_webhook(&self, w: &WebhookConfig) -> StoreResult<()> {
        self.inner.create_webhook(w).await?;
        self.changed(&w.id).await;
        Ok(())
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<WebhookConfig>> {
        if let Some(hit) = self.local.get(id) {
            return Ok(hit);
        }
        let found = self.inner.get_webhook(id).await?;
        self.local.insert(id.to_owned(), found.clone());
        Ok(found)
    }

    async fn list_webhooks(&self, owner: Option<&str>) -> StoreResult<Vec<WebhookConfig>> {
        self.inner.list_webhooks(owner).await
    }

    async fn update_webhook(&self, w: &WebhookConfig, read_at: i64) -> StoreResult<WebhookUpdate> {
        let updated = self.inner.update_webhook(w, read_at).await?;
        // Stale too: the copy here may be what was stale.
        self.changed(&w.id).await;
        Ok(updated)
    }

    async fn forget_previous_secret(&self, id: &str, expires_at_ms: i64) -> StoreResult<bool> {
        let forgot = self.inner.forget_previous_secret(id, expires_at_ms).await?;
        self.changed(id).await;
        Ok(forgot)
    }

    async fn delete_webhook(&self, id: &str) -> StoreResult<bool> {
        let deleted = self.inner.delete_webhook(id).await?;
        self.changed(id).await;
        Ok(deleted)
    }

    async fn matching_webhooks(
        &self, owner: Option<&str>, project_id: Option<&str>, business_number: Option<&str>,
    ) -> StoreResult<Vec<WebhookConfig>> {
        let Some(generation) = self.generation().await else {
            // Cache down: straight to the store.
            return self
                .inner
                .matching_webhooks(owner, project_id, business_number)
                .await;
        };
        let key = format!(
            "zen:webhooks:match:{generation}:{}|{}|{}",
            owner.unwrap_or(""),
            project_id.unwrap_or(""),
            business_number
                .map(super::normalize_number)
                .unwrap_or_default()
        );
        if let Ok(Some(hit)) = self.shared.get(&key).await {
            if let Ok(list) = serde_json::from_str::<Vec<WebhookConfig>>(&hit) {
                return Ok(list);
            }
        }
        let found = self
            .inner
            .matching_webhooks(owner, project_id, business_number)
            .await?;
        let without_secrets: Vec<WebhookConfig> = found
            .iter()
            .cloned()
            .map(|mut w| {
                // Secrets and custom headers (often client tokens) never go
                // to the shared cache; deliveries read them from the store.
                w.shared_secret.clear();
                w.headers = None;
                w
            })
            .collect();
        if let Ok(json) = serde_json::to_string(&without_secrets) {
            let _ = self.shared.set(&key, &json, MATCH_TTL).await;
        }
        Ok(found)
    }

    async fn project_of(&self, business_number: &str) -> StoreResult<Option<ProjectRef>> {
        self.inner.project_of(business_number).await
    }

    async fn prune_delivery_logs(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        self.inner.prune_delivery_logs(before, limit).await
    }

    async fn create_delivery_logs(&self, logs: &[DeliveryLog]) -> StoreResult<()> {
        self.inner.create_delivery_logs(logs).await
    }

    async fn record_attempt(&self, log_id: &str, attempt: &Attempt) -> StoreResult<()> {
        self.inner.record_attempt(log_id, attempt).await
    }

    async fn delivery_status(&self, log_id: &str) -> StoreResult<Option<DeliveryStatus>> {
        self.inner.delivery_status(log_id).await
    }

    async fn keep_legacy_secret(&self, log_id: &str, secret: &str) -> StoreResult<()> {
        self.inner.keep_legacy_secret(log_id, secret).await
    }

    async fn legacy_secret(&self, log_id: &str) -> StoreResult<Option<String>> {
        self.inner.legacy_secret(log_id).await
    }

    async fn hold_legacy_secret(
        &self, log_id: &str, dead_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        self.inner.hold_legacy_secret(log_id, dead_at).await
    }

    async fn prune_held_legacy_secrets(
        &self, before: DateTime<Utc>, limit: usize,
    ) -> StoreResult<u64> {
        self.inner.prune_held_legacy_secrets(before, limit).await
    }

    async fn list_deliveries(
        &self, webhook_id: &str, limit: usize,
    ) -> StoreResult<Vec<DeliveryLog>> {
        self.inner.list_deliveries(webhook_id, limit).await
    }

    async fn deliveries_of_events(
        &self, event_ids: &[String], limit: usize,
    ) -> StoreResult<Vec<DeliveryLog>> {
        self.inner.deliveries_of_events(event_ids, limit).await
    }
}
