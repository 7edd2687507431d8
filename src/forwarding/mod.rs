//! Forwarding: every tracked event goes to every client webhook that wants
//! it, signed, retried, isolated per URL, and logged (DESIGN §5). This room
//! holds all of it; [`Forwarding`] is its front door, built once and handed
//! to the processor (the fan-out) and the HTTP layer (the webhook rules).
//!
//! - [`fanout`] turns applied events into delivery logs and jobs (the
//!   processor runs it before the inbox entry is acked);
//! - [`webhooks`] holds the rules of a webhook's configuration (create,
//!   change, rotate, test), for the admin API and the console alike;
//! - a [`ForwardQueue`] holds the jobs durably (SQLite embedded; RabbitMQ);
//! - the [`worker::Forwarder`] delivers them: per-URL circuit breakers
//!   ([`breaker`]), retries with delays, DLQ for permanent failures,
//!   signing ([`signing`]), the SSRF guard ([`ssrf`]);
//! - [`cached`] keeps webhook lookups off the store.
//!
//! Job and log ids are derived from (event id, webhook id), so re-running a
//! fan-out after a crash creates nothing twice.

pub mod breaker;
pub mod cached;
pub mod fanout;
pub mod filter;
pub mod signing;
pub mod ssrf;
pub mod webhooks;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::health::BackendHealth;
use crate::store::StoreResult;

/// Errors of a forwarding queue backend.
#[derive(Debug, thiserror::Error)]
pub enum ForwardQueueError {
    /// The backend is down or refused the operation; retry later.
    #[error("forwarding queue unavailable: {0}")]
    Unavailable(String),
}

/// The result of a forwardqueue operation.
pub type ForwardResult<T> = Result<T, ForwardQueueError>;

/// A client's webhook, in the legacy `webhooks` shape plus optional fields
/// (absent = legacy behaviour). Its Debug form masks the secret.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookConfig {
    /// ObjectId hex, stored as a string (legacy).
    pub id: String,
    pub project_owner_id: String,
    #[serde(default)]
    pub project_id: String,
    pub webhook_url: String,
    /// 64 lower-case hex chars; empty = deliveries are unsigned.
    #[serde(default)]
    pub shared_secret: String,
    #[serde(default)]
    pub topics: Vec<String>,
    /// Unix ms (legacy int64).
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_numbers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// This webhook's total time for one attempt, in ms, in place of
    /// `FORWARD_TIMEOUT_MS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// This webhook's most deliveries in flight at once, in place of the
    /// shared per-URL share of `FORWARD_CONCURRENCY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Only events whose delivery body matches are delivered (see
    /// `forwarding::filter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    /// The secret before the last rotation, still signing beside the new
    /// one until `previous_secret_expires_at` (never shown by the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub previous_secret: Option<String>,
    /// Unix ms: when the previous secret stops signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<i64>,
}

impl WebhookConfig {
    /// The previous secret while its grace window is open at `now_ms`.
    pub fn previous_secret_at(&self, now_ms: i64) -> Option<&str> {
        match (&self.previous_secret, self.previous_secret_expires_at) {
            (Some(s), Some(until)) if now_ms < until && !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// Whether it still keeps a previous secret whose window closed.
    pub fn holds_expired_secret(&self, now_ms: i64) -> bool {
        self.previous_secret.is_some() && self.previous_secret_at(now_ms).is_none()
    }
}

/// What a secret shows in a Debug form.
fn masked(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("id", &self.id)
            .field("project_owner_id", &self.project_owner_id)
            .field("project_id", &self.project_id)
            .field("webhook_url", &self.webhook_url)
            .field("shared_secret", &masked(&self.shared_secret))
            .field(
                "previous_secret",
                &masked(self.previous_secret.as_deref().unwrap_or_default()),
            )
            .field("topics", &self.topics)
            .field("active", &self.active)
            .field("business_numbers", &self.business_numbers)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// The config as stored: business numbers normalized, so that every
    /// backend can match them with a plain equality.
    pub fn normalized(&self) -> WebhookConfig {
        let mut w = self.clone();
        if let Some(numbers) = &mut w.business_numbers {
            for n in numbers.iter_mut() {
                *n = normalize_number(n);
            }
        }
        w
    }

    pub fn is_active(&self) -> bool {
        self.active.unwrap_or(true)
    }

    /// Legacy names (`datagen.delivery`, `aisensy.<topic>`, …), unified
    /// names (`message.delivered`, …) or `*`.
    pub fn wants(&self, legacy_type: &str, unified_type: &str) -> bool {
        self.topics
            .iter()
            .any(|t| t == "*" || t == legacy_type || t == unified_type)
    }
}

/// `webhook_delivery_logs.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Retrying,
    Success,
    Failed,
}

/// One delivery (event × webhook), updated on every attempt (legacy shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryLog {
    pub id: String,
    pub project_owner_id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    pub webhook_url: String,
    pub payload: Value,
    pub attempt_count: u32,
    pub status: DeliveryStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: DateTime<Utc>,
}

/// The outcome of one attempt, as written to its delivery log.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub status: DeliveryStatus,
    pub status_code: Option<u16>,
    pub response_body: Option<String>,
    pub error_message: Option<String>,
    pub duration_ms: u64,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
    /// Attempts are counted (`$inc`); a parked job is not an attempt.
    pub counts_as_attempt: bool,
}

/// The delivery-log rule, once for every backend: an attempt sets the
/// status, counts itself (a parked job is not an attempt), keeps the last
/// status code and response body seen, and replaces the error (a success
/// after a failure clears it) and the next retry time.
pub fn apply_attempt(log: &mut DeliveryLog, a: &Attempt) {
    log.status = a.status;
    if a.counts_as_attempt {
        log.attempt_count += 1;
    }
    log.status_code = a.status_code.or(log.status_code);
    if a.response_body.is_some() {
        log.response_body = a.response_body.clone();
    }
    log.error_message = a.error_message.clone();
    log.delivery_duration_ms = Some(a.duration_ms);
    log.next_retry_at = a.next_retry_at;
    log.last_attempt_at = a.at;
}

/// A forwarding job: the legacy `WebhookForwardingPayload` (which other
/// services on the broker publish), plus optional fields of ours. A legacy
/// job may carry `shared_secret`; ours never do (the secret is looked up by
/// `webhook_id`), and it is never written back out.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForwardJob {
    pub delivery_log_id: String,
    #[serde(default)]
    pub project_owner_id: String,
    pub webhook_id: String,
    #[serde(default)]
    pub webhook_url: String,
    #[serde(default, skip_serializing)]
    pub shared_secret: Option<String>,
    pub event_type: String,
    pub event_id: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub timestamp: i64,
    #[serde(default)]
    pub attempt_count: u32,
    /// The unified message record at fan-out time (ours only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Value>,
    /// Since when the job waits behind an open circuit (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_since: Option<i64>,
    /// Format version: absent/0 = legacy, 1 = this one.
    #[serde(default)]
    pub v: u32,
    /// The trace the delivery continues (W3C `traceparent` of the webhook's
    /// processing); each attempt sends a child of it.
    #[serde(
        default,
        deserialize_with = "crate::telemetry::traces::lenient",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub traceparent: Option<crate::telemetry::traces::TraceParent>,
}

impl std::fmt::Debug for ForwardJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardJob")
            .field("delivery_log_id", &self.delivery_log_id)
            .field("webhook_id", &self.webhook_id)
            .field("webhook_url", &self.webhook_url)
            .field("shared_secret", &self.shared_secret.as_deref().map(masked))
            .field("event_type", &self.event_type)
            .field("event_id", &self.event_id)
            .field("attempt_count", &self.attempt_count)
            .field("parked_since", &self.parked_since)
            .field("v", &self.v)
            .finish_non_exhaustive()
    }
}

/// Identifies a received job for `complete` / `reschedule` / `dead_letter`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobTag(pub String);

/// A job in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeadJob {
    pub id: String,
    pub reason: String,
    pub dead_at: DateTime<Utc>,
    pub job: ForwardJob,
}

/// Which dead-lettered deliveries a replay puts back: all of them, or those
/// that match every given part (ids, the webhook, when they died).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct ReplayFilter {
    /// Dead job (delivery) ids; absent = any.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Only this webhook's deliveries.
    #[serde(default)]
    pub webhook_id: Option<String>,
    /// Only deliveries that died at or after this time (RFC 3339; empty is
    /// absent).
    #[serde(default, deserialize_with = "time_or_blank")]
    pub since: Option<DateTime<Utc>>,
    /// Only deliveries that died before this time (RFC 3339; empty is
    /// absent).
    #[serde(default, deserialize_with = "time_or_blank")]
    pub until: Option<DateTime<Utc>>,
}

/// An RFC 3339 time, or `null` or `""` for none.
fn time_or_blank<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    use serde::de::Error;
    match Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| D::Error::custom(format!("not an RFC 3339 time: {e}"))),
    }
}

impl ReplayFilter {
    pub fn ids(ids: Vec<String>) -> Self {
        ReplayFilter {
            ids: Some(ids),
            ..Default::default()
        }
    }

    /// Whether a dead job (`id`, its job, when it died) is to be replayed.
    pub fn matches(&self, id: &str, job: &ForwardJob, dead_at: Option<DateTime<Utc>>) -> bool {
        self.ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|i| i == id))
            && self
                .webhook_id
                .as_ref()
                .is_none_or(|w| *w == job.webhook_id)
            && self
                .since
                .is_none_or(|since| dead_at.is_some_and(|t| t >= since))
            && self
                .until
                .is_none_or(|until| dead_at.is_some_and(|t| t < until))
    }
}

/// The webhook's side of an attempt: where it goes, how it is signed,
/// what else it carries.
pub struct Endpoint<'a> {
    pub url: &'a str,
    pub secret: &'a str,
    /// The old secret, during a rotation's grace window.
    pub previous_secret: Option<&'a str>,
    pub headers: Option<&'a BTreeMap<String, String>>,
    /// The webhook's own `timeout_ms`: replaces the attempt's budget.
    pub timeout: Option<Duration>,
}

/// What a conditional [`WebhookStore::update_webhook`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookUpdate {
    Updated,
    NotFound,
    /// Changed since it was read: nothing written; read it again.
    Stale,
}

/// Client webhooks and their delivery logs.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    async fn create_webhook(&self, webhook: &WebhookConfig) -> StoreResult<()>;
    async fn get_webhook(&self, id: &str) -> StoreResult<Option<WebhookConfig>>;
    async fn list_webhooks(&self, owner: Option<&str>) -> StoreResult<Vec<WebhookConfig>>;
    /// Replaces a webhook, only while its stored `updated_at` is still
    /// `read_at`, the value it was read with: a change made since (by
    /// another call, replica or the forwarder) is never overwritten.
    async fn update_webhook(
        &self, webhook: &WebhookConfig, read_at: i64,
    ) -> StoreResult<WebhookUpdate>;
    async fn forget_previous_secret(&self, id: &str, expires_at_ms: i64) -> StoreResult<bool>;
    async fn delete_webhook(&self, id: &str) -> StoreResult<bool>;
    /// Active webhooks whose owner, project or business numbers match.
    async fn matching_webhooks(
        &self, owner: Option<&str>, project_id: Option<&str>, business_number: Option<&str>,
    ) -> StoreResult<Vec<WebhookConfig>>;
    /// The project of a business number (`projects.wa_number`, raw or
    /// normalized), where the backend has that collection.
    async fn project_of(&self, business_number: &str) -> StoreResult<Option<ProjectRef>>;
    /// Creates logs, skipping ids that exist (fan-out is re-runnable).
    async fn create_delivery_logs(&self, logs: &[DeliveryLog]) -> StoreResult<()>;
    /// Removes up to `limit` delivery logs created before `before` (and the
    /// legacy secrets kept for them, but those held for a dead-lettered
    /// delivery); returns how many logs went.
    async fn prune_delivery_logs(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64>;
    async fn record_attempt(&self, log_id: &str, attempt: &Attempt) -> StoreResult<()>;
    /// The status of one delivery, `None` when it has no log.
    async fn delivery_status(&self, log_id: &str) -> StoreResult<Option<DeliveryStatus>>;
    /// Keeps the secret a legacy job carried inline, by its delivery id, so
    /// that the job can be retried, dead-lettered and replayed without the
    /// secret ever being written into a queue message.
    async fn keep_legacy_secret(&self, log_id: &str, secret: &str) -> StoreResult<()>;
    /// The secret kept for a legacy job, if any.
    async fn legacy_secret(&self, log_id: &str) -> StoreResult<Option<String>>;
    /// Holds a legacy secret for as long as its delivery's DLQ entry
    /// (`dead_at`: when it died), or releases it to the delivery logs'
    /// retention (`None`: delivered after all). A no-op without a secret.
    async fn hold_legacy_secret(
        &self, log_id: &str, dead_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()>;
    /// Removes up to `limit` held legacy secrets whose delivery died before
    /// `before` (its DLQ entry is gone by the same age); how many went.
    async fn prune_held_legacy_secrets(
        &self, before: DateTime<Utc>, limit: usize,
    ) -> StoreResult<u64>;
    async fn list_deliveries(
        &self, webhook_id: &str, limit: usize,
    ) -> StoreResult<Vec<DeliveryLog>>;
    /// The deliveries of these events to every webhook, newest first, at
    /// most `limit` (a message's deliveries: the events of its history).
    async fn deliveries_of_events(
        &self, event_ids: &[String], limit: usize,
    ) -> StoreResult<Vec<DeliveryLog>>;
}

/// Where forwarding jobs wait, durably, for the forwarder.
#[async_trait]
pub trait ForwardQueue: Send + Sync {
    /// Adds jobs. Idempotent per `delivery_log_id`: the embedded queue skips
    /// a job queued already; a broker cannot, so the forwarder drops a fresh
    /// copy whose delivery log already says `success` (either way the
    /// client gets one delivery of a re-run fan-out).
    async fn enqueue(&self, jobs: &[ForwardJob]) -> ForwardResult<()>;
    /// Adds jobs that are due only after `delay` (new jobs for a URL whose
    /// circuit is open).
    async fn enqueue_after(&self, jobs: &[ForwardJob], delay: Duration) -> ForwardResult<()>;
    /// Up to `max` due jobs, waiting up to `wait` for the first.
    async fn receive(&self, max: usize, wait: Duration)
    -> ForwardResult<Vec<(JobTag, ForwardJob)>>;
    /// Done with the job (delivered).
    async fn complete(&self, tag: &JobTag) -> ForwardResult<()>;
    /// Runs `job` (as updated) again after `delay`.
    async fn reschedule(
        &self, tag: &JobTag, job: &ForwardJob, delay: Duration,
    ) -> ForwardResult<()>;
    /// Postpones every queued job for `url` by `delay` at once (its circuit
    /// is open), so they are not leased one by one just to be parked again.
    /// Backends without a cheap way to do that park jobs as they come.
    async fn park_url(&self, _url: &str, _delay: Duration) -> ForwardResult<u64> {
        Ok(0)
    }
    /// Moves the job to the dead-letter queue.
    async fn dead_letter(&self, tag: &JobTag, job: &ForwardJob, reason: &str) -> ForwardResult<()>;
    async fn list_dead(&self, limit: usize) -> ForwardResult<Vec<DeadJob>>;
    /// Requeues dead jobs (all, or those ids) with fresh attempts.
    async fn replay_dead(&self, filter: &ReplayFilter) -> ForwardResult<usize>;
    async fn depth(&self) -> ForwardResult<u64>;
    /// Jobs in the dead-letter queue.
    async fn dead_depth(&self) -> ForwardResult<u64>;
    /// Removes up to `limit` dead-lettered jobs that died before `before`;
    /// returns how many went.
    async fn prune_dead(&self, before: DateTime<Utc>, limit: usize) -> ForwardResult<u64>;
    async fn health(&self) -> BackendHealth;
}

/// The forwarding role, assembled: the webhook store (behind its cache),
/// the forwarding queue, the forwarder with its breakers, and the fan-out.
/// Built once; nothing outside this room builds or wires a fan-out or a
/// breaker.
pub struct Forwarding {
    webhooks: Arc<dyn WebhookStore>,
    queue: Arc<dyn ForwardQueue>,
    forwarder: Arc<worker::Forwarder>,
    fanout: fanout::Fanout,
}

impl Forwarding {
    /// `in_process`: the forwarder runs in this process, so the fan-out
    /// consults its breakers (a new job for an open circuit is queued
    /// already parked).
    pub fn new(
        store: Arc<dyn WebhookStore>, queue: Arc<dyn ForwardQueue>,
        cache: Arc<dyn crate::cache::Cache>, config: worker::ForwarderConfig, in_process: bool,
    ) -> Result<Forwarding, reqwest::Error> {
        let webhooks: Arc<dyn WebhookStore> =
            Arc::new(cached::CachedWebhookStore::new(store, cache.clone()));
        let forwarder = Arc::new(worker::Forwarder::new(
            queue.clone(),
            webhooks.clone(),
            config,
        )?);
        let mut fanout = fanout::Fanout::new(webhooks.clone(), queue.clone(), cache);
        if in_process {
            fanout = fanout.with_breakers(forwarder.breakers());
        }
        Ok(Forwarding {
            webhooks,
            queue,
            forwarder,
            fanout,
        })
    }

    /// The client webhooks and delivery logs (through the cache).
    pub fn webhooks(&self) -> &Arc<dyn WebhookStore> {
        &self.webhooks
    }

    /// The forwarding queue (jobs, retries, the DLQ).
    pub fn queue(&self) -> &Arc<dyn ForwardQueue> {
        &self.queue
    }

    /// The fan-out the processor runs per batch.
    pub fn fanout(&self) -> fanout::Fanout {
        self.fanout.clone()
    }

    /// The circuit state of `url` in this process.
    pub fn breakers(&self) -> Arc<breaker::Breakers> {
        self.forwarder.breakers()
    }

    /// Circuits open in this process.
    pub fn open_circuits(&self) -> usize {
        self.forwarder.open_circuits()
    }

    /// Delivers jobs until `shutdown` (the forwarder role).
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        self.forwarder.clone().run(shutdown).await
    }
}

/// A project as the legacy lookup cache stores it (`project:lookup:<n>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRef {
    pub project_id: String,
    pub project_owner_id: String,
}

/// Legacy number normalization for lookups: strip a leading `+`, then
/// spaces, `-`, `(` and `)`.
pub fn normalize_number(n: &str) -> String {
    n.trim()
        .trim_start_matches('+')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect()
}

/// A stable 24-hex id (a valid ObjectId hex, as legacy consumers parse
/// `delivery_log_id`) for the delivery of `event_id` to `webhook_id`.
pub fn delivery_id(event_id: &str, webhook_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{event_id}|{webhook_id}").as_bytes());
    hex::encode(&digest[..12])
}
