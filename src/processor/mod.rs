//! The processor: takes accepted webhooks from the inbox, normalizes them
//! with the provider adapters, applies the events to the store, then acks.
//!
//! At-least-once: an entry is acked only after its events are applied, and
//! applying is idempotent, so a crash between the two costs a harmless
//! re-application. A store outage pauses processing (the batch is retried
//! with backoff, never acked early); ingest keeps accepting meanwhile.
//!
//! No entry can hold the others back: a batch that fails with an error
//! retrying cannot cure (data the store refuses) is split, each entry
//! processed alone; an entry that keeps failing so is retried with backoff,
//! set aside while the rest flows, and after `max_attempts` moved to the
//! inbox's quarantine with its error, where an operator can replay it.
//! Transient errors (a backend down) never quarantine: they wait.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::contacts::{ContactStore, Sighting};
use crate::forwarding::fanout::{Fanout, FanoutError};
use crate::model::{Notification, UnifiedEvent};
use crate::providers::{Providers, RawWebhook};
use crate::queue::{Inbox, InboxDelivery, QueueError};
use crate::store::{MessageStore, StoreError};
use crate::telemetry::traces::{self, TraceParent};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Fanout(#[from] FanoutError),
}

impl ProcessError {
    /// A backend outage or a race: the same work may succeed later, so it
    /// waits and never counts towards quarantine.
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessError::Store(e) => e.is_transient(),
            ProcessError::Fanout(FanoutError::Store(e)) => e.is_transient(),
            ProcessError::Queue(_) | ProcessError::Fanout(FanoutError::Queue(_)) => true,
        }
    }
}

/// An entry that failed with a non-transient error, waiting to be retried.
struct Deferred {
    delivery: InboxDelivery,
    attempts: u32,
    due: tokio::time::Instant,
}

/// What handling a batch came to.
#[derive(Default)]
struct Settled {
    report: BatchReport,
    /// Entries that failed with a non-transient error (not acked).
    failed: Vec<(InboxDelivery, ProcessError)>,
    /// A transient error, with the entries not yet handled (not acked).
    unfinished: Option<(ProcessError, Vec<InboxDelivery>)>,
}

/// Entries set aside at once; past it the processor takes no new batch until
/// they are retried or quarantined (memory stays bounded).
const MAX_DEFERRED: usize = 1024;
/// Backoff of a deferred entry: doubled per attempt from this, up to the cap.
const DEFER_BASE: Duration = Duration::from_millis(250);
const DEFER_MAX: Duration = Duration::from_secs(30);

/// The span of one entry's processing, continuing its webhook's trace, and
/// the trace its deliveries continue (a child of this span).
fn process_span(d: &InboxDelivery) -> (tracing::Span, TraceParent) {
    let span = tracing::info_span!(
        "process",
        event.id = %d.entry.event_id,
        bsp = %d.entry.bsp,
        trace_id = tracing::field::Empty
    );
    traces::continue_trace(&span, d.entry.trace.as_ref());
    let carried = traces::carried(&span, d.entry.trace.as_ref());
    span.record("trace_id", carried.trace_id());
    (span, carried)
}

/// What one batch amounted to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub entries: usize,
    pub events: usize,
    pub duplicates: usize,
    pub unrecognized: usize,
    /// Entries moved to the quarantine.
    pub quarantined: usize,
}

impl BatchReport {
    fn add(&mut self, r: BatchReport) {
        self.entries += r.entries;
        self.events += r.events;
        self.duplicates += r.duplicates;
        self.unrecognized += r.unrecognized;
        self.quarantined += r.quarantined;
    }
}

#[derive(Clone)]
pub struct Processor {
    inbox: Arc<dyn Inbox>,
    store: Arc<dyn MessageStore>,
    providers: Providers,
    batch_size: usize,
    batch_bytes: usize,
    max_attempts: u32,
    fanout: Option<Fanout>,
    dedup: Option<Arc<dyn Cache>>,
    contacts: Option<Arc<dyn ContactStore>>,
}

/// How long a processed event's dedup key is remembered.
const DEDUP_TTL: Duration = Duration::from_secs(24 * 3600);

/// The dedup key of a message event: provider + message + event identity
/// (the cache adds the deployment's namespace).
fn dedup_key(ev: &UnifiedEvent) -> Option<String> {
    let m = ev.message.as_ref()?;
    let key = m.key(ev.bsp)?;
    (!m.dedup_key.is_empty())
        .then(|| format!("dedup:{}:{}:{}", ev.bsp, key.routing_key(), m.dedup_key))
}

const IDLE_WAIT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Processor {
    pub fn new(
        inbox: Arc<dyn Inbox>, store: Arc<dyn MessageStore>, providers: Providers,
        batch_size: usize,
    ) -> Self {
        Processor {
            inbox,
            store,
            providers,
            batch_size: batch_size.max(1),
            batch_bytes: DEFAULT_BATCH_BYTES,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            fanout: None,
            dedup: None,
            contacts: None,
        }
    }

    /// Attempts of an entry failing with a non-transient error before it is
    /// quarantined (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Bytes of bodies processed in one store batch (at least one entry).
    pub fn with_batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// Remembers forwarded events (on every replica sharing the cache) so
    /// that an event the store takes for new, but that was forwarded before,
    /// is not forwarded twice. Never more: every event reaches the store,
    /// whose idempotent apply decides what is a duplicate, and a cache
    /// outage just bypasses it.
    pub fn with_dedup(mut self, cache: Arc<dyn Cache>) -> Self {
        self.dedup = Some(cache);
        self
    }

    /// Also keeps the contacts of the users the events show (identifiers
    /// seen together, changes of number or user id, opt-outs).
    pub fn with_contacts(mut self, contacts: Arc<dyn ContactStore>) -> Self {
        self.contacts = Some(contacts);
        self
    }

    /// Also creates forwarding jobs for every applied event.
    pub fn with_fanout(mut self, fanout: Fanout) -> Self {
        self.fanout = Some(fanout);
        self
    }

    /// Normalizes, applies and acks one batch. On error nothing is acked.
    pub async fn handle(&self, deliveries: &[InboxDelivery]) -> Result<BatchReport, ProcessError> {
        // Exported, each entry's processing is a span of its webhook's
        // trace (none is built otherwise).
        let spans: Vec<(tracing::Span, TraceParent)> = if traces::exporting() {
            deliveries.iter().map(process_span).collect()
        } else {
            Vec::new()
        };
        let mut events: Vec<UnifiedEvent> = Vec::with_capacity(deliveries.len());
        // The trace each event's deliveries continue.
        let mut event_traces: Vec<Option<TraceParent>> = Vec::with_capacity(deliveries.len());
        let mut unrecognized = Vec::new();
        for (i, d) in deliveries.iter().enumerate() {
            let webhook = RawWebhook {
                event_id: &d.entry.event_id,
                bsp: d.entry.bsp,
                received_at: d.entry.received_at,
                body: &d.entry.body,
            };
            let parsed = self.providers.parse(&webhook);
            let trace = match spans.get(i) {
                Some((_, carried)) => Some(carried.clone()),
                None => d.entry.trace.clone(),
            };
            event_traces.extend(std::iter::repeat_n(trace, parsed.events.len()));
            events.extend(parsed.events);
            unrecognized.extend(parsed.unrecognized);
        }
        let store_spans: Vec<tracing::Span> = spans
            .iter()
            .map(|(p, _)| tracing::info_span!(parent: p, "store"))
            .collect();
        for u in &unrecognized {
            metrics::counter!("zen_unrecognized_total", "bsp" => u.bsp.as_str()).increment(1);
            tracing::info!(event.id = %u.event_id, bsp = %u.bsp, reason = %u.reason, "unrecognized webhook content kept");
        }
        self.store.record_unrecognized(&unrecognized).await?;
        let notifications: Vec<Notification> = events.iter().filter_map(Notification::of).collect();
        self.store.record_notifications(&notifications).await?;
        // The store decides what is a duplicate (its apply is idempotent).
        let mut applied = self.store.apply(&events).await?;
        // Every event's sighting, duplicates too: merging is idempotent and
        // order-free, so a replay changes nothing and misses nothing.
        if let Some(contacts) = &self.contacts {
            let sightings: Vec<Sighting> = events.iter().filter_map(Sighting::of).collect();
            contacts.record_sightings(&sightings).await?;
        }
        drop(store_spans);
        // The cache may only spare a second forward of an event the store
        // took for new (its history folds repeats, see `HISTORY_CAP`).
        let keys: Vec<Option<String>> = events.iter().map(dedup_key).collect();
        let mut spared = 0;
        if let Some(cache) = &self.dedup {
            let lookup: Vec<String> = keys
                .iter()
                .zip(&applied)
                .filter(|(_, a)| a.as_ref().is_some_and(|a| !a.duplicate))
                .filter_map(|(k, _)| k.clone())
                .collect();
            match cache.get_many(&lookup).await {
                Ok(seen) => {
                    let seen: std::collections::HashSet<&String> = lookup
                        .iter()
                        .zip(&seen)
                        .filter(|(_, v)| v.is_some())
                        .map(|(k, _)| k)
                        .collect();
                    for (k, a) in keys.iter().zip(applied.iter_mut()) {
                        if let (Some(k), Some(a)) = (k, a.as_mut()) {
                            if !a.duplicate && seen.contains(k) {
                                a.duplicate = true;
                                spared += 1;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "dedup cache unavailable; the store dedups"),
            }
        }
        let duplicates = applied.iter().flatten().filter(|a| a.duplicate).count();
        if spared > 0 {
            tracing::debug!(
                spared,
                "events already forwarded (dedup cache); not forwarded again"
            );
        }
        // Jobs exist before the entry is acked: a crash in between re-runs
        // the fan-out, whose ids make it idempotent.
        if let Some(fanout) = &self.fanout {
            fanout.run(&events, &applied, &event_traces).await?;
        }
        // Remembered only now: a key never stands for an event not fully
        // handled.
        if let Some(cache) = &self.dedup {
            let done: Vec<(String, String)> = keys
                .iter()
                .flatten()
                .map(|k| (k.clone(), "1".to_owned()))
                .collect();
            if let Err(e) = cache.set_many(&done, DEDUP_TTL).await {
                tracing::debug!(error = %e, "dedup keys not written");
            }
        }
        let tags: Vec<_> = deliveries.iter().map(|d| d.tag).collect();
        self.inbox.ack(&tags).await?;
        let now = chrono::Utc::now();
        // Counted per batch: a labelled counter is a registry lookup.
        let mut counts: Vec<(crate::model::Bsp, &str, u64)> = Vec::new();
        let lag_seconds = metrics::histogram!("zen_processing_lag_seconds");
        for (ev, a) in events.iter().zip(&applied) {
            if a.as_ref().is_some_and(|a| a.duplicate) {
                continue;
            }
            match counts
                .iter_mut()
                .find(|(bsp, kind, _)| *bsp == ev.bsp && *kind == ev.unified_type)
            {
                Some((_, _, n)) => *n += 1,
                None => counts.push((ev.bsp, &ev.unified_type, 1)),
            }
            let lag = (now - ev.received_at).num_milliseconds().max(0) as f64 / 1000.0;
            lag_seconds.record(lag);
        }
        for (bsp, kind, n) in counts {
            metrics::counter!("zen_events_total", "bsp" => bsp.as_str(), "type" => kind.to_owned())
                .increment(n);
        }
        metrics::counter!("zen_duplicates_total").increment(duplicates as u64);
        Ok(BatchReport {
            entries: deliveries.len(),
            events: events.len(),
            duplicates,
            unrecognized: unrecognized.len(),
            quarantined: 0,
        })
    }

    /// Handles a batch in chunks bounded by bytes; on an error retrying
    /// cannot cure, splits the chunk and handles each entry alone. A
    /// transient error stops it: the entries not yet handled are returned
    /// with it (none of them was acked).
    async fn settle(&self, batch: &[InboxDelivery]) -> Settled {
        let mut out = Settled::default();
        let chunks = byte_chunks(batch, self.batch_bytes);
        for (n, chunk) in chunks.iter().enumerate() {
            let later = || chunks[n + 1..].iter().flat_map(|c| c.iter().cloned());
            match self.handle(chunk).await {
                Ok(r) => out.report.add(r),
                Err(e) if e.is_transient() => {
                    out.unfinished = Some((e, chunk.iter().cloned().chain(later()).collect()));
                    return out;
                }
                Err(e) if chunk.len() == 1 => out.failed.push((chunk[0].clone(), e)),
                Err(e) => {
                    tracing::warn!(error = %e, entries = chunk.len(), "batch refused; processing its entries one by one");
                    for (i, d) in chunk.iter().enumerate() {
                        match self.handle(std::slice::from_ref(d)).await {
                            Ok(r) => out.report.add(r),
                            Err(e) if e.is_transient() => {
                                let rest = chunk[i..].iter().cloned().chain(later()).collect();
                                out.unfinished = Some((e, rest));
                                return out;
                            }
                            Err(e) => out.failed.push((d.clone(), e)),
                        }
                    }
                }
            }
        }
        out
    }

    /// Moves an entry that failed `attempts` times to the quarantine.
    async fn quarantine(
        &self, d: &InboxDelivery, error: &ProcessError, attempts: u32,
    ) -> Result<(), ProcessError> {
        self.inbox
            .quarantine(d, &error.to_string(), attempts)
            .await?;
        metrics::counter!("zen_quarantined_total", "bsp" => d.entry.bsp.as_str()).increment(1);
        tracing::error!(event.id = %d.entry.event_id, bsp = %d.entry.bsp, attempts, error = %error,
            "inbox entry quarantined; replay it with POST /api/v1/quarantine/replay");
        Ok(())
    }

    /// Processes what is waiting until the inbox has nothing more to hand
    /// out. An entry refused by the store is retried at once, up to
    /// `max_attempts`, then quarantined (no backoff: for tests and the CLI).
    pub async fn drain(&self) -> Result<BatchReport, ProcessError> {
        let mut total = BatchReport::default();
        loop {
            let batch = self.inbox.receive(self.batch_size, Duration::ZERO).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            let settled = self.settle(&batch).await;
            total.add(settled.report);
            if let Some((e, _)) = settled.unfinished {
                return Err(e);
            }
            for (d, mut error) in settled.failed {
                let mut attempts = 1;
                loop {
                    if attempts >= self.max_attempts {
                        self.quarantine(&d, &error, attempts).await?;
                        total.quarantined += 1;
                        break;
                    }
                    attempts += 1;
                    match self.handle(std::slice::from_ref(&d)).await {
                        Ok(r) => {
                            total.add(r);
                            break;
                        }
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => error = e,
                    }
                }
            }
        }
    }

    /// Runs until `shutdown`; the batch in hand is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut deferred: Vec<Deferred> = Vec::new();
        loop {
            if !deferred.is_empty() {
                match self.retry_deferred(&mut deferred).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "set-aside entries not processed; retrying");
                        if sleep_or_cancel(&shutdown, backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            if deferred.len() >= MAX_DEFERRED {
                // Too many set aside: wait for the first to be due.
                let due = deferred.iter().map(|d| d.due).min();
                if let Some(due) = due {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                continue;
            }
            // Wait no longer than the next set-aside entry is due.
            let wait = deferred
                .iter()
                .map(|d| d.due.saturating_duration_since(tokio::time::Instant::now()))
                .min()
                .map_or(IDLE_WAIT, |d| d.min(IDLE_WAIT));
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.inbox.receive(self.batch_size, wait) => r,
            };
            let batch = match received {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the inbox; retrying");
                    if sleep_or_cancel(&shutdown, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            metrics::histogram!("zen_processor_batch_entries").record(batch.len() as f64);
            // The batch was handed to us: retry it until it is settled.
            // Stopping leaves it unacked, so it is handed out again after a
            // restart.
            let mut pending = batch;
            loop {
                let settled = self.settle(&pending).await;
                tracing::debug!(report = ?settled.report, "batch processed");
                for (d, e) in settled.failed {
                    self.defer(&mut deferred, d, 1, &e).await;
                }
                let Some((e, rest)) = settled.unfinished else {
                    backoff = Duration::from_millis(100);
                    break;
                };
                tracing::warn!(error = %e, entries = rest.len(), "batch not processed; retrying");
                if sleep_or_cancel(&shutdown, backoff).await {
                    tracing::info!("processor stopped");
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pending = rest;
            }
        }
        tracing::info!("processor stopped");
    }

    /// Sets an entry aside for a later attempt, or quarantines it when it has
    /// had its attempts.
    async fn defer(
        &self, deferred: &mut Vec<Deferred>, delivery: InboxDelivery, attempts: u32,
        error: &ProcessError,
    ) {
        if attempts >= self.max_attempts {
            match self.quarantine(&delivery, error, attempts).await {
                Ok(()) => return,
                Err(e) => {
                    // Not moved: try again later, still counted.
                    tracing::warn!(error = %e, "could not quarantine an entry; retrying");
                }
            }
        } else {
            tracing::warn!(event.id = %delivery.entry.event_id, attempts, error = %error,
                "inbox entry refused by the store; set aside for a retry");
        }
        let delay = DEFER_BASE
            .saturating_mul(1 << attempts.min(16))
            .min(DEFER_MAX);
        deferred.push(Deferred {
            delivery,
            attempts,
            due: tokio::time::Instant::now() + delay,
        });
    }

    /// Retries the set-aside entries that are due, each alone.
    async fn retry_deferred(&self, deferred: &mut Vec<Deferred>) -> Result<(), ProcessError> {
        let now = tokio::time::Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(deferred)
            .into_iter()
            .partition(|d| d.due <= now);
        *deferred = later;
        let mut due = due.into_iter();
        while let Some(d) = due.next() {
            match self.handle(std::slice::from_ref(&d.delivery)).await {
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    // Keep it (and the rest) without counting an attempt.
                    deferred.push(d);
                    deferred.extend(due);
                    return Err(e);
                }
                Err(e) => self.defer(deferred, d.delivery, d.attempts + 1, &e).await,
            }
        }
        Ok(())
    }
}

/// Attempts before an entry is quarantined, by default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Bytes of bodies in one store batch, by default.
pub const DEFAULT_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Consecutive runs of `batch` whose bodies add up to at most `max_bytes`
/// (a run holds at least one entry).
fn byte_chunks(batch: &[InboxDelivery], max_bytes: usize) -> Vec<&[InboxDelivery]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, d) in batch.iter().enumerate() {
        let size = d.entry.body.len();
        if i > start && bytes + size > max_bytes {
            chunks.push(&batch[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < batch.len() {
        chunks.push(&batch[start..]);
    }
    chunks
}

/// Sleeps; true when cancelled first.
async fn sleep_or_cancel(token: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = token.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
