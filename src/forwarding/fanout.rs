//! Fan-out: applied events → delivery logs + jobs. The processor runs it
//! for each batch, before the batch's inbox entries are acked.
//!
//! An event is forwarded when it was new, or when the same gateway event is
//! being re-processed (a crash between apply and fan-out); a provider's
//! duplicate is not forwarded again. Ids are derived from (event, webhook),
//! so a re-run creates nothing twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use super::breaker::Breakers;
use super::filter::Filter;
use super::{
    DeliveryLog, DeliveryStatus, ForwardJob, ForwardQueue, ForwardQueueError, ProjectRef,
    WebhookConfig, WebhookStore, delivery_id, normalize_number,
};
use crate::cache::Cache;
use crate::model::{MessageRecord, UnifiedEvent};
use crate::providers::json_text;
use crate::store::{Applied, StoreError};
use crate::telemetry::traces::TraceParent;

/// What a fan-out can fail with: the webhook store or the queue. Both are
/// outages as the processor sees them (its batch waits and is retried).
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] ForwardQueueError),
}

const PROJECT_TTL: Duration = Duration::from_secs(4 * 3600);
const NOT_FOUND_TTL: Duration = Duration::from_secs(600);
const NOT_FOUND: &str = "NOT_FOUND";

/// Who an event belongs to: (owner, project, business number).
type MatchKey = (Option<String>, Option<String>, Option<String>);

/// Compiled filters by webhook id, with the `updated_at` compiled at.
type CompiledFilters = HashMap<String, (i64, Arc<Filter>)>;

#[derive(Clone)]
pub struct Fanout {
    webhooks: Arc<dyn WebhookStore>,
    queue: Arc<dyn ForwardQueue>,
    cache: Arc<dyn Cache>,
    /// The forwarder's breakers, when it runs in this process: a new job
    /// for a URL whose circuit is open is queued parked, so a dead
    /// endpoint's jobs cost one insert, not a lease and a park each.
    breakers: Option<Arc<Breakers>>,
    /// Compiled payload filters by webhook id, with the `updated_at` they
    /// were compiled at (a change recompiles).
    filters: Arc<std::sync::Mutex<CompiledFilters>>,
}

impl Fanout {
    pub(super) fn new(
        webhooks: Arc<dyn WebhookStore>, queue: Arc<dyn ForwardQueue>, cache: Arc<dyn Cache>,
    ) -> Self {
        Fanout {
            webhooks,
            queue,
            cache,
            breakers: None,
            filters: Arc::default(),
        }
    }

    /// Whether `webhook`'s payload filter (if any) lets the body through. A
    /// stored filter that no longer compiles lets everything through (and
    /// says so): a filter never loses an event silently.
    fn passes(&self, webhook: &WebhookConfig, body: impl FnOnce() -> Value) -> bool {
        let Some(doc) = &webhook.filter else {
            return true;
        };
        let cached = self.filters.lock().ok().and_then(|m| {
            m.get(&webhook.id)
                .filter(|(at, _)| *at == webhook.updated_at)
                .map(|(_, f)| f.clone())
        });
        let filter = match cached {
            Some(f) => f,
            None => match Filter::compile(doc) {
                Ok(f) => {
                    let f = Arc::new(f);
                    if let Ok(mut m) = self.filters.lock() {
                        m.insert(webhook.id.clone(), (webhook.updated_at, f.clone()));
                    }
                    f
                }
                Err(e) => {
                    tracing::warn!(webhook.id = %webhook.id, error = %e, "stored filter not usable; delivering");
                    return true;
                }
            },
        };
        let pass = filter.matches(&body());
        if !pass {
            metrics::counter!("zen_forward_filtered_total", "webhook_id" => webhook.id.clone())
                .increment(1);
        }
        pass
    }

    pub(super) fn with_breakers(mut self, breakers: Arc<Breakers>) -> Self {
        self.breakers = Some(breakers);
        self
    }

    /// The project behind a business number, through the cache (legacy key
    /// and TTLs); a cache outage only costs the lookup.
    async fn project_of(&self, business_number: &str) -> Result<Option<ProjectRef>, FanoutError> {
        let key = format!("project:lookup:{}", normalize_number(business_number));
        match self.cache.get(&key).await {
            Ok(Some(v)) if v == NOT_FOUND => return Ok(None),
            Ok(Some(v)) => {
                if let Ok(p) = serde_json::from_str(&v) {
                    return Ok(Some(p));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cache unavailable for project lookup"),
        }
        let found = self.webhooks.project_of(business_number).await?;
        let (value, ttl) = match &found {
            Some(p) => (serde_json::to_string(p).unwrap_or_default(), PROJECT_TTL),
            None => (NOT_FOUND.to_owned(), NOT_FOUND_TTL),
        };
        let _ = self.cache.set(&key, &value, ttl).await;
        Ok(found)
    }

    /// Creates the deliveries for a processed batch; returns how many.
    /// `traces[i]` is the trace event `i`'s deliveries continue.
    pub async fn run(
        &self, events: &[UnifiedEvent], applied: &[Option<Applied>], traces: &[Option<TraceParent>],
    ) -> Result<usize, FanoutError> {
        let mut matches: HashMap<MatchKey, Vec<WebhookConfig>> = HashMap::new();
        // One snapshot per record, however many events of the batch it had.
        // (Keyed by the shared record's address, as a number: a pointer is
        // not `Send`.)
        let mut snapshots: HashMap<usize, Option<Value>> = HashMap::new();
        let mut logs = Vec::new();
        let mut jobs = Vec::new();
        let mut n = 0;
        let now = Utc::now();
        let no_trace = std::iter::repeat(&None);
        for ((ev, applied), trace) in events
            .iter()
            .zip(applied)
            .zip(traces.iter().chain(no_trace))
        {
            if jobs.len() >= FLUSH_AT {
                n += self.flush(&mut logs, &mut jobs, now).await?;
            }
            let (mut owner, mut project, business, record) = match applied {
                Some(a) if a.duplicate && !a.redelivery => continue,
                Some(a) => (
                    Some(a.record.project_owner_id.clone()).filter(|s| !s.is_empty()),
                    a.record.project_id.clone().filter(|s| !s.is_empty()),
                    Some(a.record.business_number.clone()).filter(|s| !s.is_empty()),
                    Some(&a.record),
                ),
                // Not a message (contact, template…): matched by project,
                // or by the business number a contact event names.
                None => (
                    None,
                    json_text(&ev.raw, &["project_id"]),
                    ev.contact
                        .as_ref()
                        .and_then(|c| c.business_number.clone())
                        .filter(|s| !s.is_empty()),
                    None,
                ),
            };
            if owner.is_none() {
                if let Some(b) = &business {
                    if let Some(p) = self.project_of(b).await? {
                        owner = Some(p.project_owner_id).filter(|s| !s.is_empty());
                        project = project.or(Some(p.project_id).filter(|s| !s.is_empty()));
                    }
                }
            }
            if owner.is_none() && project.is_none() && business.is_none() {
                continue;
            }
            let key = (owner.clone(), project.clone(), business.clone());
            if !matches.contains_key(&key) {
                let found = self
                    .webhooks
                    .matching_webhooks(owner.as_deref(), project.as_deref(), business.as_deref())
                    .await?;
                matches.insert(key.clone(), found);
            }
            for webhook in &matches[&key] {
                if !webhook.wants(&ev.legacy_type, &ev.unified_type) {
                    continue;
                }
                // The record as jobs carry it: built once a webhook wants
                // it (most events of a busy gateway match none).
                let message = record.and_then(|r| {
                    snapshots
                        .entry(Arc::as_ptr(r) as usize)
                        .or_insert_with(|| job_snapshot(r))
                        .as_ref()
                });
                // The name the client subscribed with is the name it gets.
                let event_type = if webhook.topics.iter().any(|t| t == &ev.legacy_type) {
                    ev.legacy_type.clone()
                } else {
                    ev.unified_type.clone()
                };
                // Matched against the body it would get.
                let body = || {
                    serde_json::json!({"event_type": event_type, "event_id": ev.event_id,
                        "data": ev.raw, "message": message})
                };
                if !self.passes(webhook, body) {
                    continue;
                }
                let id = delivery_id(&ev.event_id, &webhook.id);
                logs.push(DeliveryLog {
                    id: id.clone(),
                    project_owner_id: webhook.project_owner_id.clone(),
                    webhook_id: webhook.id.clone(),
                    event_id: ev.event_id.clone(),
                    event_type: event_type.clone(),
                    webhook_url: webhook.webhook_url.clone(),
                    payload: ev.raw.clone(),
                    attempt_count: 0,
                    status: DeliveryStatus::Pending,
                    status_code: None,
                    response_body: None,
                    error_message: None,
                    delivery_duration_ms: None,
                    next_retry_at: None,
                    created_at: now,
                    last_attempt_at: now,
                });
                jobs.push(ForwardJob {
                    delivery_log_id: id,
                    project_owner_id: webhook.project_owner_id.clone(),
                    webhook_id: webhook.id.clone(),
                    webhook_url: webhook.webhook_url.clone(),
                    shared_secret: None,
                    event_type,
                    event_id: ev.event_id.clone(),
                    payload: ev.raw.clone(),
                    timestamp: now.timestamp_millis(),
                    attempt_count: 0,
                    message: message.cloned(),
                    parked_since: None,
                    v: 1,
                    traceparent: trace.clone(),
                });
            }
        }
        n += self.flush(&mut logs, &mut jobs, now).await?;
        Ok(n)
    }

    /// Writes the delivery logs gathered so far, then queues their jobs
    /// (those for an open circuit already parked); returns how many.
    async fn flush(
        &self, logs: &mut Vec<DeliveryLog>, jobs: &mut Vec<ForwardJob>, now: chrono::DateTime<Utc>,
    ) -> Result<usize, FanoutError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        self.webhooks
            .create_delivery_logs(&std::mem::take(logs))
            .await?;
        let mut jobs = std::mem::take(jobs);
        let n = jobs.len();
        // Jobs for an open circuit, by URL, with the rest of its cool-down
        // (read once per URL).
        let mut parked: HashMap<String, (Option<Duration>, Vec<ForwardJob>)> = HashMap::new();
        if let Some(breakers) = &self.breakers {
            let mut due_now = Vec::with_capacity(jobs.len());
            for mut job in jobs {
                let (wait, group) = parked
                    .entry(job.webhook_url.clone())
                    .or_insert_with(|| (breakers.open_for(&job.webhook_url), Vec::new()));
                if wait.is_some() {
                    job.parked_since = Some(now.timestamp_millis());
                    group.push(job);
                } else {
                    due_now.push(job);
                }
            }
            jobs = due_now;
        }
        if !jobs.is_empty() {
            self.queue.enqueue(&jobs).await?;
        }
        for (wait, group) in parked.into_values() {
            let Some(wait) = wait else { continue };
            metrics::counter!("zen_deliveries_total", "outcome" => "parked")
                .increment(group.len() as u64);
            self.queue.enqueue_after(&group, wait).await?;
        }
        Ok(n)
    }
}

/// Deliveries gathered before they are written: a body of thousands of
/// events for many webhooks is fanned out a slice at a time, so its jobs
/// never all sit in memory at once.
const FLUSH_AT: usize = 512;

/// History entries a forwarded `message` carries: the latest ones (the
/// whole history is on the record, `GET /api/v1/messages/{id}`). Keeps every
/// job small, however many events a message has had.
pub const JOB_HISTORY_ENTRIES: usize = 8;

/// The record as a job carries it (`message`), with its latest history.
fn job_snapshot(record: &MessageRecord) -> Option<Value> {
    let mut v = serde_json::to_value(record).ok()?;
    if let Some(Value::Array(history)) = v.get_mut("status_history") {
        let skip = history.len().saturating_sub(JOB_HISTORY_ENTRIES);
        history.drain(..skip);
    }
    Some(v)
}
