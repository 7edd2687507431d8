//! The processor: takes accepted webhooks from the inbox, normalizes them
//! with the provider adapters, applies the events to the store, then acks.
//!
//! At-least-once: an entry is acked only after its events are applied, and
//! applying is idempotent, so a crash between the two costs a harmless
//! re-application. A store outage pauses processing (the batch is retried
//! with backoff, never acked early); ingest keeps accepting meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::forwarding::fanout::Fanout;
use crate::model::UnifiedEvent;
use crate::providers::{Providers, RawWebhook};
use crate::queue::{Inbox, InboxDelivery, QueueError};
use crate::store::{MessageStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What one batch amounted to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub entries: usize,
    pub events: usize,
    pub duplicates: usize,
    pub unrecognized: usize,
}

#[derive(Clone)]
pub struct Processor {
    inbox: Arc<dyn Inbox>,
    store: Arc<dyn MessageStore>,
    providers: Providers,
    batch_size: usize,
    fanout: Option<Fanout>,
    dedup: Option<Arc<dyn Cache>>,
}

/// How long a processed event's dedup key is remembered.
const DEDUP_TTL: Duration = Duration::from_secs(24 * 3600);

/// The dedup key of a message event: provider + message + event identity.
fn dedup_key(ev: &UnifiedEvent) -> Option<String> {
    let m = ev.message.as_ref()?;
    let key = m.key(ev.bsp)?;
    (!m.dedup_key.is_empty())
        .then(|| format!("zen:dedup:{}:{}:{}", ev.bsp, key.routing_key(), m.dedup_key))
}

const IDLE_WAIT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Processor {
    pub fn new(
        inbox: Arc<dyn Inbox>,
        store: Arc<dyn MessageStore>,
        providers: Providers,
        batch_size: usize,
    ) -> Self {
        Processor {
            inbox,
            store,
            providers,
            batch_size: batch_size.max(1),
            fanout: None,
            dedup: None,
        }
    }

    /// Skips events already processed (on any replica sharing the cache)
    /// before they reach the store. Only a shortcut: the store's own dedup
    /// stays authoritative, and a cache outage just bypasses it.
    pub fn with_dedup(mut self, cache: Arc<dyn Cache>) -> Self {
        self.dedup = Some(cache);
        self
    }

    /// Also creates forwarding jobs for every applied event.
    pub fn with_fanout(mut self, fanout: Fanout) -> Self {
        self.fanout = Some(fanout);
        self
    }

    /// Normalizes, applies and acks one batch. On error nothing is acked.
    pub async fn handle(&self, deliveries: &[InboxDelivery]) -> Result<BatchReport, ProcessError> {
        let mut events: Vec<UnifiedEvent> = Vec::with_capacity(deliveries.len());
        let mut unrecognized = Vec::new();
        for d in deliveries {
            let webhook = RawWebhook {
                event_id: &d.entry.event_id,
                bsp: d.entry.bsp,
                received_at: d.entry.received_at,
                body: &d.entry.body,
            };
            let parsed = self.providers.parse(&webhook);
            events.extend(parsed.events);
            unrecognized.extend(parsed.unrecognized);
        }
        for u in &unrecognized {
            metrics::counter!("zen_unrecognized_total", "bsp" => u.bsp.as_str()).increment(1);
            tracing::info!(event.id = %u.event_id, bsp = %u.bsp, reason = %u.reason, "unrecognized webhook content kept");
        }
        self.store.record_unrecognized(&unrecognized).await?;
        let keys: Vec<Option<String>> = events.iter().map(dedup_key).collect();
        let mut skipped = 0;
        if let Some(cache) = &self.dedup {
            let lookup: Vec<String> = keys.iter().flatten().cloned().collect();
            match cache.get_many(&lookup).await {
                Ok(seen) => {
                    let seen: std::collections::HashSet<&String> = lookup
                        .iter()
                        .zip(&seen)
                        .filter(|(_, v)| v.is_some())
                        .map(|(k, _)| k)
                        .collect();
                    let before = events.len();
                    events = events
                        .into_iter()
                        .zip(&keys)
                        .filter(|(_, k)| k.as_ref().is_none_or(|k| !seen.contains(k)))
                        .map(|(e, _)| e)
                        .collect();
                    skipped = before - events.len();
                }
                Err(e) => tracing::debug!(error = %e, "dedup cache unavailable; the store dedups"),
            }
        }
        let applied = self.store.apply(&events).await?;
        let duplicates = applied.iter().flatten().filter(|a| a.duplicate).count() + skipped;
        // Jobs exist before the entry is acked: a crash in between re-runs
        // the fan-out, whose ids make it idempotent.
        if let Some(fanout) = &self.fanout {
            fanout.run(&events, &applied).await?;
        }
        // Remembered only now: a key never hides an event not fully handled.
        if let Some(cache) = &self.dedup {
            let done: Vec<(String, String)> = events
                .iter()
                .filter_map(dedup_key)
                .map(|k| (k, "1".to_owned()))
                .collect();
            if let Err(e) = cache.set_many(&done, DEDUP_TTL).await {
                tracing::debug!(error = %e, "dedup keys not written");
            }
        }
        let tags: Vec<_> = deliveries.iter().map(|d| d.tag).collect();
        self.inbox.ack(&tags).await?;
        let now = chrono::Utc::now();
        for (ev, a) in events.iter().zip(&applied) {
            if a.as_ref().is_some_and(|a| a.duplicate) {
                continue;
            }
            metrics::counter!("zen_events_total", "bsp" => ev.bsp.as_str(), "type" => ev.unified_type.clone())
                .increment(1);
            let lag = (now - ev.received_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!("zen_processing_lag_seconds").record(lag);
        }
        metrics::counter!("zen_duplicates_total").increment(duplicates as u64);
        Ok(BatchReport {
            entries: deliveries.len(),
            events: events.len(),
            duplicates,
            unrecognized: unrecognized.len(),
        })
    }

    /// Processes what is waiting until the inbox has nothing more to hand out.
    pub async fn drain(&self) -> Result<BatchReport, ProcessError> {
        let mut total = BatchReport::default();
        loop {
            let batch = self.inbox.receive(self.batch_size, Duration::ZERO).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            let r = self.handle(&batch).await?;
            total.entries += r.entries;
            total.events += r.events;
            total.duplicates += r.duplicates;
            total.unrecognized += r.unrecognized;
        }
    }

    /// Runs until `shutdown`; the batch in hand is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.inbox.receive(self.batch_size, IDLE_WAIT) => r,
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
            // The batch was handed to us: retry it until it is done. Stopping
            // leaves it unacked, so it is handed out again after a restart.
            loop {
                match self.handle(&batch).await {
                    Ok(report) => {
                        tracing::debug!(?report, "batch processed");
                        backoff = Duration::from_millis(100);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, entries = batch.len(), "batch not processed; retrying");
                        if sleep_or_cancel(&shutdown, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        tracing::info!("processor stopped");
    }
}

/// Sleeps; true when cancelled first.
async fn sleep_or_cancel(token: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = token.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
