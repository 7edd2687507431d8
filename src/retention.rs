//! Retention: what the gateway keeps, for how long, and the pruner that
//! removes the rest in small batches (so it never holds up ingest), on every
//! backend through the role traits.
//!
//! Each kind has its own age (`MESSAGE_RETENTION`, `DELIVERY_LOG_RETENTION`,
//! …; `0` keeps forever). A message's age is from its last update; a
//! delivery log's from its creation; a DLQ or quarantine entry's from when
//! it was set aside.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::contacts::ContactStore;
use crate::forwarding::{ForwardQueue, WebhookStore};
use crate::queue::Inbox;
use crate::sessions::SessionStore;
use crate::store::{Kept, MessageStore};

/// Rows one delete removes at most.
pub const PRUNE_BATCH: usize = 500;
/// Batches of one kind in one background pass (the next pass goes on).
const BATCHES_PER_PASS: usize = 100;
/// Batches of one kind in one `zen-gateway prune` (bounded, like every loop).
const BATCHES_PER_COMMAND: usize = 100_000;

/// How long each kind is kept; `None` keeps it forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub messages: Option<Duration>,
    pub delivery_logs: Option<Duration>,
    pub unrecognized: Option<Duration>,
    pub notifications: Option<Duration>,
    pub dlq: Option<Duration>,
    pub quarantine: Option<Duration>,
}

impl Retention {
    /// One age for what is kept for the record (messages, delivery logs,
    /// unrecognized bodies, notifications: `zen-gateway prune
    /// --older-than`). What waits for an operator, the DLQ and the
    /// quarantine, keeps its own retention (`kept`): a blanket age never
    /// removes it; `dlq purge` / `quarantine purge` do, when asked.
    pub fn older_than(age: Duration, kept: &Retention) -> Retention {
        Retention {
            messages: Some(age),
            delivery_logs: Some(age),
            unrecognized: Some(age),
            notifications: Some(age),
            dlq: kept.dlq,
            quarantine: kept.quarantine,
        }
    }

    pub fn keeps_everything(&self) -> bool {
        *self == Retention::default()
    }
}

/// What one pass removed, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub messages: u64,
    /// Contacts not seen for as long as messages are kept.
    pub contacts: u64,
    pub delivery_logs: u64,
    pub unrecognized: u64,
    pub notifications: u64,
    pub dlq: u64,
    pub quarantine: u64,
    /// Console sessions past their expiry (always removed).
    pub sessions: u64,
    /// Rotated-out webhook secrets past their grace window (always).
    pub retired_secrets: u64,
}

/// What waits for an operator (and goes only by its own retention or an
/// explicit purge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    Dlq,
    Quarantine,
}

/// Removes what retention no longer keeps.
#[derive(Clone)]
pub struct Pruner {
    pub store: Arc<dyn MessageStore>,
    pub webhooks: Arc<dyn WebhookStore>,
    pub forward_queue: Arc<dyn ForwardQueue>,
    pub inbox: Arc<dyn Inbox>,
    pub sessions: Arc<dyn SessionStore>,
    pub contacts: Arc<dyn ContactStore>,
    pub retention: Retention,
}

impl Pruner {
    /// One pass over every kind, each in batches until nothing older is
    /// left or `max_batches` were removed. A backend that fails ends that
    /// kind's pass (the next one tries again); the error is returned.
    pub async fn pass(
        &self, now: DateTime<Utc>, max_batches: usize,
    ) -> anyhow::Result<PruneReport> {
        self.pass_kinds(now, max_batches, true).await
    }

    async fn pass_kinds(
        &self, now: DateTime<Utc>, max_batches: usize, sessions: bool,
    ) -> anyhow::Result<PruneReport> {
        let r = self.retention;
        let mut report = PruneReport::default();
        let cutoff = |age: Option<Duration>| {
            age.and_then(|a| chrono::Duration::from_std(a).ok())
                .and_then(|a| now.checked_sub_signed(a))
        };
        macro_rules! kind {
            ($field:ident, $age:expr, $delete:expr) => {
                if let Some(before) = cutoff($age) {
                    for _ in 0..max_batches {
                        let n: u64 = $delete(before).await?;
                        report.$field += n;
                        if (n as usize) < PRUNE_BATCH {
                            break;
                        }
                    }
                    if report.$field > 0 {
                        metrics::counter!("zen_pruned_total", "kind" => stringify!($field))
                            .increment(report.$field);
                    }
                }
            };
        }
        kind!(messages, r.messages, |b| self.store.prune(
            Kept::Messages,
            b,
            PRUNE_BATCH
        ));
        // A contact goes with the messages' age: when no event showed the
        // user for that long.
        kind!(contacts, r.messages, |b| self
            .contacts
            .prune_contacts(b, PRUNE_BATCH));
        kind!(unrecognized, r.unrecognized, |b| self.store.prune(
            Kept::Unrecognized,
            b,
            PRUNE_BATCH
        ));
        kind!(notifications, r.notifications, |b| self.store.prune(
            Kept::Notifications,
            b,
            PRUNE_BATCH
        ));
        kind!(delivery_logs, r.delivery_logs, |b| self
            .webhooks
            .prune_delivery_logs(b, PRUNE_BATCH));
        kind!(dlq, r.dlq, |b| self
            .forward_queue
            .prune_dead(b, PRUNE_BATCH));
        // The legacy secrets held for dead deliveries go with their DLQ
        // entries, by the same age.
        if let Some(before) = cutoff(r.dlq) {
            for _ in 0..max_batches {
                let n = self
                    .webhooks
                    .prune_held_legacy_secrets(before, PRUNE_BATCH)
                    .await?;
                if (n as usize) < PRUNE_BATCH {
                    break;
                }
            }
        }
        // Rotated-out secrets past their grace window, always.
        if sessions {
            report.retired_secrets +=
                crate::forwarding::webhooks::forget_expired_secrets(self.webhooks.as_ref()).await?;
        }
        kind!(quarantine, r.quarantine, |b| self
            .inbox
            .prune_quarantined(b, PRUNE_BATCH));
        kind!(sessions, sessions.then_some(Duration::ZERO), |b| self
            .sessions
            .prune_sessions(b, PRUNE_BATCH));
        Ok(report)
    }

    /// Everything older than retention, now (the `prune` command).
    pub async fn prune_all(&self) -> anyhow::Result<PruneReport> {
        self.pass(Utc::now(), BATCHES_PER_COMMAND).await
    }

    /// Removes DLQ (and held legacy secrets) or quarantine entries older
    /// than `age`, at an operator's explicit request (`dlq purge`,
    /// `quarantine purge`); nothing else.
    pub async fn purge(&self, what: Awaiting, age: Duration) -> anyhow::Result<u64> {
        let mut only = Retention::default();
        match what {
            Awaiting::Dlq => only.dlq = Some(age),
            Awaiting::Quarantine => only.quarantine = Some(age),
        }
        let pruner = Pruner {
            retention: only,
            ..self.clone()
        };
        let report = pruner
            .pass_kinds(Utc::now(), BATCHES_PER_COMMAND, false)
            .await?;
        Ok(report.dlq + report.quarantine)
    }

    /// Prunes every `interval` until `stop` (expired console sessions
    /// always; the rest as retention says).
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.pass(Utc::now(), BATCHES_PER_PASS).await {
                Ok(report) if report != PruneReport::default() => {
                    tracing::info!(?report, "retention pruned");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention pass failed; the next one retries"),
            }
        }
    }
}
