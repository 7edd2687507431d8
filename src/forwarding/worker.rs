//! The forwarder: takes jobs from the forwarding queue and delivers them,
//! up to `concurrency` at a time, each through its URL's circuit breaker.
//!
//! Outcomes (DESIGN §5): 2xx delivered; 408, 429, 5xx and transport errors
//! are retried on the schedule (then the DLQ); other 4xx go to the DLQ at
//! once, 410 also deactivates the webhook. An open circuit parks the job
//! (rescheduled, no attempt spent) until the cool-down's probe, or the DLQ
//! past the maximum parked age. Every attempt and park updates the delivery
//! log before the job moves on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::breaker::{Admission, Breakers};
use super::signing::{legacy_signature, standard_signature};
use super::ssrf::{
    PublicOnlyResolver, Refused, TargetError, check_literal_host, check_resolved_host,
};
use super::{
    Attempt, DeliveryStatus, Endpoint, ForwardJob, ForwardQueue, JobTag, WebhookConfig,
    WebhookStore,
};
use crate::telemetry::traces::{self, TraceParent};

/// How the forwarder behaves; every knob has an environment variable.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    /// Delay before each retry; attempts in total = delays + 1.
    pub retry_delays: Vec<Duration>,
    /// Exponential backoff with jitter instead of the fixed schedule.
    pub exponential: bool,
    /// Upper bound for a `Retry-After` the client sends.
    pub max_retry_after: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// Longest a job may stay parked behind an open circuit before the DLQ.
    pub max_parked: Duration,
    /// Allow private / loopback targets (local receivers, tests).
    pub allow_private: bool,
    /// The only proxy deliveries go through (`FORWARD_PROXY`); `None`: no
    /// proxy at all, whatever `HTTP(S)_PROXY` / `ALL_PROXY` say, since the
    /// SSRF guard must see the target's own address.
    pub proxy: Option<String>,
    /// Where operational events go (`endpoint.disabled`,
    /// `endpoint.failing`), with the secret they are signed with; `None`:
    /// nowhere (they are still counted).
    pub operations: Option<OperationsTarget>,
    /// A URL whose circuit is open and that has failed for this long is
    /// reported as `endpoint.failing` (once per run of failures).
    pub failing_after: Duration,
}

/// The operators' own webhook (`OPERATIONS_WEBHOOK_URL`).
#[derive(Debug, Clone)]
pub struct OperationsTarget {
    pub url: String,
    /// Signs like any delivery; empty: unsigned.
    pub secret: String,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            concurrency: 100,
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(15),
            retry_delays: vec![Duration::from_secs(3), Duration::from_secs(3)],
            exponential: false,
            max_retry_after: Duration::from_secs(300),
            breaker_threshold: 10,
            breaker_cooldown: Duration::from_secs(300),
            max_parked: Duration::from_secs(24 * 3600),
            allow_private: false,
            proxy: None,
            operations: None,
            failing_after: Duration::from_secs(15 * 60),
        }
    }
}

/// Longest response body read (the rest is not waited for).
const MAX_RESPONSE_BYTES: usize = 10 * 1024;
/// Longest response body kept in the delivery log (legacy).
const LOGGED_RESPONSE_BYTES: usize = 1000;

/// What one HTTP attempt came back with.
#[derive(Debug, Clone, PartialEq)]
pub struct SendOutcome {
    pub status: Option<u16>,
    pub body: Option<String>,
    pub error: Option<String>,
    /// The SSRF guard refused the target (retrying cannot help).
    pub refused: bool,
    pub retry_after: Option<Duration>,
    pub duration: Duration,
}

impl SendOutcome {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// How an outcome is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Delivered,
    Retry,
    Permanent,
    Gone,
}

fn verdict(o: &SendOutcome) -> Verdict {
    match o.status {
        Some(s) if (200..300).contains(&s) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        Some(408 | 429) => Verdict::Retry,
        Some(s) if s >= 500 => Verdict::Retry,
        Some(s) if (400..500).contains(&s) => Verdict::Permanent,
        Some(_) => Verdict::Retry,
        // A target refused by the SSRF guard will not become allowed.
        None if o.refused => Verdict::Permanent,
        None => Verdict::Retry,
    }
}

pub struct Forwarder {
    queue: Arc<dyn ForwardQueue>,
    webhooks: Arc<dyn WebhookStore>,
    client: reqwest::Client,
    breakers: Arc<Breakers>,
    cfg: ForwarderConfig,
}

/// How long a job waits when the webhook store cannot be read.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// How long a URL's queued jobs wait when all its delivery slots are busy
/// (a slow or hanging endpoint): long enough not to churn the queue, short
/// next to the request timeout that frees a slot.
const URL_BUSY_PARK: Duration = Duration::from_secs(1);

/// How long a job waits for one of its URL's slots before going back to the
/// queue: a healthy endpoint frees one within milliseconds.
const URL_SLOT_WAIT: Duration = Duration::from_millis(50);

/// How long a failing or stalled URL's backlog is pushed back: as long as
/// it has been stalled, at least [`URL_BUSY_PARK`] and at most the request
/// timeout (by then its requests in flight are over). The backlog is moved
/// about log2(timeout / 1 s) times while the first requests hang, not once
/// a second (15 times with the default 15 s timeout).
fn busy_park(stalled_for: Option<Duration>, request_timeout: Duration) -> Duration {
    stalled_for
        .unwrap_or_default()
        .min(request_timeout)
        .max(URL_BUSY_PARK)
}

/// The request body: `{"data","event_id","event_type","message","timestamp"}`
/// (keys in the order the legacy gateway's Go maps produced).
pub fn request_body(job: &ForwardJob, now_ms: i64) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("data".into(), job.payload.clone());
    m.insert("event_id".into(), Value::String(job.event_id.clone()));
    m.insert("event_type".into(), Value::String(job.event_type.clone()));
    if let Some(message) = &job.message {
        m.insert("message".into(), message.clone());
    }
    m.insert("timestamp".into(), Value::from(now_ms));
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(s).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

impl Forwarder {
    pub fn new(
        queue: Arc<dyn ForwardQueue>, webhooks: Arc<dyn WebhookStore>, cfg: ForwarderConfig,
    ) -> Result<Forwarder, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.total_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(50)
            .user_agent(concat!("zen-gateway/", env!("CARGO_PKG_VERSION")));
        builder = match &cfg.proxy {
            Some(url) => builder.proxy(reqwest::Proxy::all(url)?),
            None => builder.no_proxy(),
        };
        if !cfg.allow_private {
            // The proxy is the operator's: its own name resolves as it is.
            let proxy_host = cfg
                .proxy
                .as_deref()
                .and_then(|p| reqwest::Url::parse(p).ok())
                .and_then(|u| u.host_str().map(str::to_owned));
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver::trusting(proxy_host)));
        }
        Ok(Forwarder {
            queue,
            webhooks,
            client: builder.build()?,
            breakers: Arc::new(Breakers::with_limits(
                cfg.breaker_threshold,
                cfg.breaker_cooldown,
                cfg.total_timeout,
                // A quarter of the slots per URL (at least 4).
                (cfg.concurrency as u32 / 4).max(4),
            )),
            cfg,
        })
    }

    /// Sends an operational event to `OPERATIONS_WEBHOOK_URL`, through the
    /// forwarding queue like any delivery (retried, dead-lettered, signed
    /// with `OPERATIONS_WEBHOOK_SECRET`, kept in the store by delivery id
    /// so that it is never queued in clear). Counted either way.
    pub async fn notify_operations(&self, kind: &str, data: serde_json::Value) {
        metrics::counter!("zen_operational_events_total", "kind" => kind.to_owned()).increment(1);
        let Some(ops) = &self.cfg.operations else {
            return;
        };
        let job = ForwardJob {
            delivery_log_id: bson::oid::ObjectId::new().to_hex(),
            project_owner_id: "zen-gateway".into(),
            webhook_id: "operations".into(),
            webhook_url: ops.url.clone(),
            shared_secret: None,
            event_type: kind.to_owned(),
            event_id: uuid::Uuid::now_v7().to_string(),
            payload: data,
            timestamp: Utc::now().timestamp_millis(),
            attempt_count: 0,
            message: None,
            parked_since: None,
            v: 1,
            traceparent: None,
        };
        let kept = self
            .webhooks
            .keep_legacy_secret(&job.delivery_log_id, &ops.secret)
            .await;
        let sent = match kept {
            Ok(()) => self
                .queue
                .enqueue(std::slice::from_ref(&job))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, kind, "could not queue the operational event");
        }
    }

    /// Reports `endpoint.failing` once per run of failures, when the URL's
    /// circuit is open and it has failed for `failing_after`.
    async fn report_if_failing(&self, url: &str, job: &ForwardJob) {
        if let Some(failing_for) = self
            .breakers
            .take_failing_report(url, self.cfg.failing_after)
        {
            tracing::warn!(webhook.url = %url, ?failing_for, "endpoint failing; operators told");
            self.notify_operations(
                "endpoint.failing",
                serde_json::json!({
                    "webhook_id": job.webhook_id,
                    "project_owner_id": job.project_owner_id,
                    "webhook_url": url,
                    "failing_for_secs": failing_for.as_secs(),
                }),
            )
            .await;
        }
    }

    /// The circuit breakers, shared with the fan-out (which parks new jobs
    /// for an open circuit at once).
    pub fn breakers(&self) -> Arc<Breakers> {
        self.breakers.clone()
    }

    pub fn open_circuits(&self) -> usize {
        self.breakers.open_count()
    }

    /// Runs until `shutdown`, then lets in-flight deliveries finish.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.cfg.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let want = (permits.available_permits() + 1).min(100);
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.queue.receive(want, Duration::from_secs(1)) => r,
            };
            let jobs = match received {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the forwarding queue; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut first = Some(first);
            for (tag, job) in jobs {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let this = self.clone();
                tasks.spawn(async move {
                    this.deliver(tag, job).await;
                    drop(permit);
                });
            }
        }
        // Let in-flight deliveries finish (each bounded by the timeouts).
        while tasks.join_next().await.is_some() {}
        tracing::info!("forwarder stopped");
    }

    /// One HTTP attempt of `job` to `url` (no queue or log side effects).
    pub async fn send(
        &self, endpoint: Endpoint<'_>, job: &ForwardJob, traceparent: &TraceParent,
    ) -> SendOutcome {
        let Endpoint {
            url,
            secret,
            previous_secret,
            headers: extra_headers,
            timeout,
        } = endpoint;
        let started = Instant::now();
        let outcome = |e: String, refused: bool| SendOutcome {
            status: None,
            body: None,
            error: Some(e),
            refused,
            retry_after: None,
            duration: started.elapsed(),
        };
        let refused = |e: Refused| outcome(e.0, true);
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            Ok(u) => {
                return refused(Refused(format!(
                    "refused to forward to scheme {}",
                    u.scheme()
                )));
            }
            Err(e) => {
                return refused(Refused(format!(
                    "refused to forward to an invalid URL: {e}"
                )));
            }
        };
        if !self.cfg.allow_private {
            if let Err(e) = check_literal_host(&parsed) {
                return refused(e);
            }
            // Through a proxy the client resolves only the proxy's name: the
            // target's own addresses are checked here.
            if self.cfg.proxy.is_some() {
                match check_resolved_host(&parsed).await {
                    Ok(()) => {}
                    Err(TargetError::Refused(e)) => return refused(e),
                    // DNS failing now says nothing of the target: retried.
                    Err(e @ TargetError::Unresolved(_)) => return outcome(e.to_string(), false),
                }
            }
        }
        let now = Utc::now();
        let body = request_body(job, now.timestamp_millis());
        let mut headers = HeaderMap::new();
        for (k, v) in extra_headers.into_iter().flatten() {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
                headers.insert(k, v);
            }
        }
        let mut set = |k: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(HeaderName::from_static(k), v);
            }
        };
        set("content-type", "application/json".into());
        set("x-event-type", job.event_type.clone());
        set("x-event-id", job.event_id.clone());
        set("x-attempt-count", job.attempt_count.to_string());
        set(traces::TRACEPARENT, traceparent.to_string());
        if !secret.is_empty() {
            let ts = now.timestamp();
            set("x-webhook-signature", legacy_signature(secret, &body));
            set("webhook-id", job.event_id.clone());
            set("webhook-timestamp", ts.to_string());
            // During a rotation's grace window, a signature by each secret
            // (space-separated, as Standard Webhooks verifiers expect).
            let mut signature = standard_signature(secret, &job.event_id, ts, &body);
            if let Some(previous) = previous_secret {
                signature.push(' ');
                signature.push_str(&standard_signature(previous, &job.event_id, ts, &body));
            }
            set("webhook-signature", signature);
        }
        // A webhook's own `timeout_ms` replaces the attempt's total budget.
        let mut request = self.client.post(parsed).headers(headers).body(body);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let resp = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                // The SSRF resolver's refusal is in the source chain.
                let mut msg = e.to_string();
                let mut was_refused = false;
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    was_refused |= s.downcast_ref::<Refused>().is_some();
                    src = s.source();
                }
                return outcome(msg, was_refused);
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(parse_retry_after);
        let mut resp = resp;
        let mut buf = Vec::new();
        while buf.len() < MAX_RESPONSE_BYTES {
            match resp.chunk().await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                _ => break,
            }
        }
        buf.truncate(MAX_RESPONSE_BYTES);
        let text = String::from_utf8_lossy(&buf).into_owned();
        SendOutcome {
            status: Some(status),
            error: (!(200..300).contains(&status))
                .then(|| format!("HTTP {status}: {}", truncate(&text, 200))),
            body: Some(text),
            refused: false,
            retry_after,
            duration: started.elapsed(),
        }
    }

    fn retry_delay(&self, attempt_index: usize, retry_after: Option<Duration>) -> Duration {
        let schedule = self
            .cfg
            .retry_delays
            .get(attempt_index)
            .or(self.cfg.retry_delays.last())
            .copied()
            .unwrap_or(Duration::from_secs(3));
        let base = if self.cfg.exponential {
            let exp = schedule.saturating_mul(1 << attempt_index.min(16));
            // ±20 % jitter so retries of one outage do not arrive together.
            let jitter = (uuid::Uuid::new_v4().as_bytes()[0] as f64 / 255.0) * 0.4 + 0.8;
            exp.mul_f64(jitter)
        } else {
            schedule
        };
        // The client's Retry-After wins, within bounds.
        match retry_after {
            Some(ra) => ra.min(self.cfg.max_retry_after),
            None => base,
        }
    }

    async fn log_attempt(&self, log_id: &str, attempt: Attempt) {
        // Delivery logs are never dropped: retry the write for a while.
        let mut delay = Duration::from_millis(100);
        for _ in 0..8 {
            match self.webhooks.record_attempt(log_id, &attempt).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(delivery.id = log_id, error = %e, "delivery log write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!(
            delivery.id = log_id,
            "delivery log write abandoned after retries"
        );
    }

    async fn finish(&self, what: &str, r: Result<(), super::ForwardQueueError>) {
        if let Err(e) = r {
            // The lease runs out and the job comes back: at-least-once.
            tracing::warn!(error = %e, step = what, "forwarding queue update failed; the job will run again");
        }
    }

    async fn dead(
        &self, tag: &JobTag, job: &ForwardJob, reason: String, outcome: Option<&SendOutcome>,
    ) {
        metrics::counter!("zen_deliveries_total", "outcome" => "dead").increment(1);
        tracing::info!(delivery.id = %job.delivery_log_id, webhook.id = %job.webhook_id, reason = %reason, "delivery dead-lettered");
        self.log_attempt(
            &job.delivery_log_id,
            Attempt {
                status: DeliveryStatus::Failed,
                status_code: outcome.and_then(|o| o.status),
                response_body: outcome
                    .and_then(|o| o.body.as_deref())
                    .map(|b| truncate(b, LOGGED_RESPONSE_BYTES)),
                error_message: Some(reason.clone()),
                duration_ms: outcome.map(|o| o.duration.as_millis() as u64).unwrap_or(0),
                next_retry_at: None,
                at: Utc::now(),
                counts_as_attempt: outcome.is_some(),
            },
        )
        .await;
        // A legacy job's secret (kept by delivery id) must outlive the
        // delivery logs' retention for as long as the DLQ entry that needs
        // it for a replay. A no-op for jobs without one.
        if let Err(e) = self
            .webhooks
            .hold_legacy_secret(&job.delivery_log_id, Some(Utc::now()))
            .await
        {
            tracing::warn!(error = %e, delivery.id = %job.delivery_log_id, "could not hold the legacy secret of a dead-lettered job");
        }
        self.finish(
            "dead_letter",
            self.queue.dead_letter(tag, job, &reason).await,
        )
        .await;
    }

    /// The webhook store cannot say where a job goes now: it runs again in
    /// a few seconds, no attempt spent.
    async fn postpone(&self, tag: &JobTag, job: &ForwardJob, e: &crate::store::StoreError) {
        tracing::warn!(error = %e, "webhook store unavailable; job postponed");
        self.finish(
            "reschedule",
            self.queue.reschedule(tag, job, STORE_WAIT).await,
        )
        .await;
    }

    /// Delivers one job and moves it on (done, retry, park or DLQ).
    pub async fn deliver(&self, tag: JobTag, job: ForwardJob) {
        // One span per attempt, in the webhook's trace; the endpoint gets its
        // `traceparent` (exported) or a child of the job's trace.
        let span = tracing::info_span!(
            "deliver",
            delivery.id = %job.delivery_log_id,
            webhook.id = %job.webhook_id,
            attempt = job.attempt_count + 1,
            trace_id = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        traces::continue_trace(&span, job.traceparent.as_ref());
        let traceparent = traces::carried(&span, job.traceparent.as_ref());
        span.record("trace_id", traceparent.trace_id());
        self.attempt(tag, job, traceparent).instrument(span).await
    }

    async fn attempt(&self, tag: JobTag, job: ForwardJob, traceparent: TraceParent) {
        // A fresh job queued twice (a fan-out re-run after a crash or a
        // failed batch, on a broker that cannot refuse a duplicate) is
        // delivered once: its log already says it was.
        if job.attempt_count == 0 {
            if let Ok(Some(DeliveryStatus::Success)) =
                self.webhooks.delivery_status(&job.delivery_log_id).await
            {
                metrics::counter!("zen_deliveries_total", "outcome" => "duplicate").increment(1);
                tracing::debug!(delivery.id = %job.delivery_log_id, "delivered before; job dropped");
                self.finish("complete", self.queue.complete(&tag).await)
                    .await;
                return;
            }
        }
        let webhook: Option<WebhookConfig> = match self.webhooks.get_webhook(&job.webhook_id).await
        {
            Ok(w) => w,
            Err(e) => return self.postpone(&tag, &job, &e).await,
        };
        let previous_secret = webhook
            .as_ref()
            .and_then(|w| w.previous_secret_at(Utc::now().timestamp_millis()))
            .map(str::to_owned);
        let (url, secret, headers, timeout, max_in_flight) = match &webhook {
            Some(w) if !w.is_active() => {
                return self
                    .dead(&tag, &job, "webhook is inactive".into(), None)
                    .await;
            }
            Some(w) => (
                w.webhook_url.clone(),
                w.shared_secret.clone(),
                w.headers.clone(),
                w.timeout_ms.map(Duration::from_millis),
                w.max_in_flight,
            ),
            // A legacy job from another service can carry url and secret.
            // The secret is kept in the store by delivery id, since a job
            // we write back to a queue (retry, DLQ) never carries it.
            None if !job.webhook_url.is_empty() => {
                let secret = match &job.shared_secret {
                    Some(secret) => self
                        .webhooks
                        .keep_legacy_secret(&job.delivery_log_id, secret)
                        .await
                        .map(|()| Some(secret.clone())),
                    None => self.webhooks.legacy_secret(&job.delivery_log_id).await,
                };
                match secret {
                    Ok(Some(secret)) => (job.webhook_url.clone(), secret, None, None, None),
                    Ok(None) => {
                        return self
                            .dead(&tag, &job, "webhook no longer exists".into(), None)
                            .await;
                    }
                    Err(e) => return self.postpone(&tag, &job, &e).await,
                }
            }
            None => {
                return self
                    .dead(&tag, &job, "webhook no longer exists".into(), None)
                    .await;
            }
        };

        self.breakers.set_limit(&url, max_in_flight);
        let slot = match self.breakers.enter_within(&url, URL_SLOT_WAIT).await {
            Ok(slot) => slot,
            // This URL's share of slots stayed busy: back to the queue, no
            // attempt spent, so other URLs' jobs get through. When the URL
            // is failing or stalled (slow or hanging, not just busy), its
            // whole queued backlog is pushed back (see `busy_park`), at most
            // once a second, so it does not cycle through the queue and crowd
            // out the other URLs while its first requests run into their
            // timeout.
            Err(wait) => {
                let stalled = self.breakers.stalled_for(&url);
                let failing = stalled.is_some() || self.breakers.failing(&url);
                let wait = if failing {
                    wait.max(busy_park(stalled, self.cfg.total_timeout))
                } else {
                    wait
                };
                if failing && self.breakers.should_bulk_park(&url) {
                    if let Err(e) = self.queue.park_url(&job.webhook_url, wait).await {
                        tracing::warn!(error = %e, "could not park the URL's queued jobs");
                    }
                }
                self.finish("reschedule", self.queue.reschedule(&tag, &job, wait).await)
                    .await;
                return;
            }
        };
        match self.breakers.admit(&url) {
            Admission::Reject(wait) => {
                self.report_if_failing(&url, &job).await;
                if self.breakers.should_bulk_park(&url) {
                    match self.queue.park_url(&job.webhook_url, wait).await {
                        Ok(n) if n > 0 => {
                            tracing::info!(webhook.url = %url, jobs = n, ?wait, "circuit open: queued jobs parked")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "could not park the URL's queued jobs")
                        }
                    }
                }
                return self.park(tag, job, wait).await;
            }
            Admission::Allow | Admission::Probe => {}
        }

        let endpoint = Endpoint {
            url: &url,
            secret: &secret,
            previous_secret: previous_secret.as_deref(),
            headers: headers.as_ref(),
            timeout,
        };
        let outcome = self.send(endpoint, &job, &traceparent).await;
        // The URL's slot bounds its requests, not our bookkeeping: held
        // through a slow delivery-log write or broker ack (a store under
        // load, a broker node lost), it made a healthy URL look stalled and
        // its whole backlog was pushed back again and again.
        drop(slot);
        if let Some(status) = outcome.status {
            tracing::Span::current().record("http.response.status_code", status);
        }
        metrics::histogram!("zen_delivery_seconds").record(outcome.duration.as_secs_f64());
        let now = Utc::now();
        let logged_body = outcome
            .body
            .as_deref()
            .map(|b| truncate(b, LOGGED_RESPONSE_BYTES));
        match verdict(&outcome) {
            Verdict::Delivered => {
                metrics::counter!("zen_deliveries_total", "outcome" => "success").increment(1);
                self.breakers.record_success(&url);
                self.log_attempt(
                    &job.delivery_log_id,
                    Attempt {
                        status: DeliveryStatus::Success,
                        status_code: outcome.status,
                        response_body: logged_body,
                        error_message: None,
                        duration_ms: outcome.duration.as_millis() as u64,
                        next_retry_at: None,
                        at: now,
                        counts_as_attempt: true,
                    },
                )
                .await;
                // A legacy job delivered (after a replay, say): its secret
                // goes with the delivery log again.
                if webhook.is_none() {
                    if let Err(e) = self
                        .webhooks
                        .hold_legacy_secret(&job.delivery_log_id, None)
                        .await
                    {
                        tracing::debug!(error = %e, "legacy secret not released");
                    }
                }
                self.finish("complete", self.queue.complete(&tag).await)
                    .await;
            }
            Verdict::Gone => {
                self.breakers.release_probe(&url);
                if let Some(w) = webhook {
                    // Only `active` changes: a rotation or an edit made
                    // since this copy was read stays.
                    let deactivated =
                        super::webhooks::change_webhook(&*self.webhooks, &w.id, |w| {
                            w.active = Some(false);
                            Ok(())
                        })
                        .await;
                    if let Err(e) = deactivated {
                        tracing::warn!(error = %e, webhook.id = %w.id, "could not deactivate the webhook");
                    } else {
                        tracing::warn!(webhook.id = %w.id, "endpoint answered 410 Gone: webhook deactivated");
                        self.notify_operations(
                            "endpoint.disabled",
                            serde_json::json!({
                                "webhook_id": w.id,
                                "project_owner_id": w.project_owner_id,
                                "webhook_url": w.webhook_url,
                                "reason": "410 Gone",
                            }),
                        )
                        .await;
                    }
                }
                self.dead(
                    &tag,
                    &job,
                    "410 Gone: the webhook was deactivated".into(),
                    Some(&outcome),
                )
                .await;
            }
            Verdict::Permanent => {
                self.breakers.release_probe(&url);
                let reason = outcome
                    .error
                    .clone()
                    .unwrap_or_else(|| "permanent failure".into());
                self.dead(&tag, &job, reason, Some(&outcome)).await;
            }
            Verdict::Retry => {
                // 429 says "slow down", not "broken": it does not trip the circuit.
                if outcome.status == Some(429) {
                    self.breakers.release_probe(&url);
                } else {
                    self.breakers.record_failure(&url);
                    self.report_if_failing(&url, &job).await;
                }
                let attempts_done = job.attempt_count as usize + 1;
                let total_attempts = self.cfg.retry_delays.len() + 1;
                let reason = outcome.error.clone().unwrap_or_else(|| "failed".into());
                if attempts_done >= total_attempts {
                    return self
                        .dead(
                            &tag,
                            &job,
                            format!("gave up after {attempts_done} attempts: {reason}"),
                            Some(&outcome),
                        )
                        .await;
                }
                metrics::counter!("zen_deliveries_total", "outcome" => "retry").increment(1);
                let delay = self.retry_delay(job.attempt_count as usize, outcome.retry_after);
                let next_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                self.log_attempt(
                    &job.delivery_log_id,
                    Attempt {
                        status: DeliveryStatus::Retrying,
                        status_code: outcome.status,
                        response_body: logged_body,
                        error_message: Some(reason),
                        duration_ms: outcome.duration.as_millis() as u64,
                        next_retry_at: Some(next_at),
                        at: now,
                        counts_as_attempt: true,
                    },
                )
                .await;
                let mut next = job.clone();
                next.attempt_count += 1;
                next.parked_since = None;
                self.finish(
                    "reschedule",
                    self.queue.reschedule(&tag, &next, delay).await,
                )
                .await;
            }
        }
    }

    /// The circuit is open: wait without spending an attempt, unless the job
    /// has waited too long already.
    async fn park(&self, tag: JobTag, mut job: ForwardJob, wait: Duration) {
        metrics::counter!("zen_deliveries_total", "outcome" => "parked").increment(1);
        let now = Utc::now();
        let first_park = job.parked_since.is_none();
        let since = *job.parked_since.get_or_insert(now.timestamp_millis());
        let parked_for = Duration::from_millis((now.timestamp_millis() - since).max(0) as u64);
        if parked_for >= self.cfg.max_parked {
            return self
                .dead(
                    &tag,
                    &job,
                    format!("circuit open; parked for {}s", parked_for.as_secs()),
                    None,
                )
                .await;
        }
        // Spread the wake-ups of a URL's parked jobs (+0–10 %).
        let spread = wait.mul_f64(uuid::Uuid::new_v4().as_bytes()[1] as f64 / 255.0 * 0.1);
        let delay = (wait + spread).max(Duration::from_millis(100));
        // A park is not an attempt: the log says so once, not on every
        // re-park (that would double the queue's write load behind a dead URL).
        if first_park {
            self.log_attempt(
                &job.delivery_log_id,
                Attempt {
                    status: DeliveryStatus::Retrying,
                    status_code: None,
                    response_body: None,
                    error_message: Some("circuit open for this URL; parked".into()),
                    duration_ms: 0,
                    next_retry_at: Some(
                        now + chrono::Duration::from_std(delay).unwrap_or_default(),
                    ),
                    at: now,
                    counts_as_attempt: false,
                },
            )
            .await;
        }
        self.finish("reschedule", self.queue.reschedule(&tag, &job, delay).await)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_urls_backlog_waits_as_long_as_it_has_hung_within_bounds() {
        let timeout = Duration::from_secs(15);
        let s = Duration::from_secs;
        assert_eq!(
            busy_park(None, timeout),
            URL_BUSY_PARK,
            "failing, not stalled"
        );
        assert_eq!(
            busy_park(Some(Duration::from_millis(100)), timeout),
            URL_BUSY_PARK
        );
        assert_eq!(busy_park(Some(s(4)), timeout), s(4));
        assert_eq!(busy_park(Some(s(60)), timeout), timeout);
        // A request timeout under a second does not shorten the floor.
        assert_eq!(
            busy_park(Some(s(4)), Duration::from_millis(300)),
            URL_BUSY_PARK
        );
    }
}
