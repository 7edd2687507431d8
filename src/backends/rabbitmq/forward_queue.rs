//! The forwarding queue on RabbitMQ, compatible with the legacy broker:
//! jobs are `WebhookForwardingPayload` JSON on `webhook_forwarding_queue`
//! (published to `webhook_forwarding_exchange` / `webhook.forward`, priority
//! 10 − attempt, the legacy headers). Other services may publish legacy jobs
//! there; ours carry no secret.
//!
//! Retries and parking wait in per-delay TTL queues that dead-letter back to
//! the forwarding exchange (no plugin). Every move is publish-with-confirm
//! first, ack after: a crash in between duplicates a job, never loses one.
//! Dead jobs go to `webhook_forwarding_dlx` → `webhook_forwarding_dlq` with
//! the reason in `x-zen-dead-reason`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::{
    FORWARDING_DLQ, FORWARDING_DLX, FORWARDING_EXCHANGE, FORWARDING_QUEUE, FORWARDING_ROUTING_KEY,
    RabbitInbox, Stream, remove, retry_queue, take_head, wire_tag,
};
use crate::forwarding::ForwardResult;
use crate::forwarding::{
    DeadJob, ForwardJob, ForwardQueue, ForwardQueueError, JobTag, ReplayFilter,
};
use crate::health::BackendHealth;

const DEAD_REASON: &str = "x-zen-dead-reason";
const DEAD_AT: &str = "x-zen-dead-at";

pub struct RabbitForwardQueue {
    broker: Arc<RabbitInbox>,
}

impl RabbitForwardQueue {
    pub fn new(broker: Arc<RabbitInbox>) -> Self {
        RabbitForwardQueue { broker }
    }
}

fn props(job: &ForwardJob, extra: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut put = |k: &str, v: AMQPValue| {
        headers.insert(ShortString::from(k), v);
    };
    // The legacy publisher's headers.
    put(
        "project-owner-id",
        AMQPValue::LongString(LongString::from(job.project_owner_id.as_str())),
    );
    put(
        "webhook-id",
        AMQPValue::LongString(LongString::from(job.webhook_id.as_str())),
    );
    put(
        "event-type",
        AMQPValue::LongString(LongString::from(job.event_type.as_str())),
    );
    put(
        "event-id",
        AMQPValue::LongString(LongString::from(job.event_id.as_str())),
    );
    put(
        "attempt-count",
        AMQPValue::LongInt(job.attempt_count as i32),
    );
    for (k, v) in extra {
        put(k, v.clone());
    }
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_priority((10 - job.attempt_count as i64).max(1) as u8)
        .with_headers(headers)
}

fn body(job: &ForwardJob) -> Vec<u8> {
    // `shared_secret` is never serialized.
    serde_json::to_vec(job).unwrap_or_default()
}

/// When a dead-lettered job died (the header the forwarder set).
fn dead_at(delivery: &lapin::message::Delivery) -> Option<DateTime<Utc>> {
    match delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(&ShortString::from(DEAD_AT)).cloned())
    {
        Some(AMQPValue::LongLongInt(ms)) => Utc.timestamp_millis_opt(ms).single(),
        _ => None,
    }
}

fn parse_tag(tag: &JobTag) -> ForwardResult<u64> {
    tag.0
        .parse()
        .map_err(|_| ForwardQueueError::Unavailable(format!("not a broker tag: {}", tag.0)))
}

fn header_text(props: &BasicProperties, key: &str) -> Option<String> {
    match props
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(key))?
    {
        AMQPValue::LongString(s) => Some(s.to_string()),
        _ => None,
    }
}

impl RabbitForwardQueue {
    /// The retry queue for `delay`: the longest declared delay that does not
    /// exceed it (the shortest when none does).
    fn ladder_step(&self, delay: Duration) -> u32 {
        let ladder = self.broker.retry_delays();
        let wanted = delay.as_millis().min(u32::MAX as u128) as u32;
        ladder
            .iter()
            .rev()
            .find(|&&d| d <= wanted)
            .or(ladder.first())
            .copied()
            .unwrap_or(1000)
    }
}

#[async_trait]
impl ForwardQueue for RabbitForwardQueue {
    /// New jobs that wait in the retry queue for `delay` first (a URL whose
    /// circuit is open), dead-lettered back to the forwarding queue after.
    async fn enqueue_after(&self, jobs: &[ForwardJob], delay: Duration) -> ForwardResult<()> {
        let queue = retry_queue(self.ladder_step(delay));
        let bodies: Vec<Vec<u8>> = jobs.iter().map(body).collect();
        let publishes = jobs
            .iter()
            .zip(&bodies)
            .map(|(job, b)| self.broker.publish_to_queue(&queue, b, props(job, &[])));
        for r in futures::future::join_all(publishes).await {
            r?;
        }
        Ok(())
    }

    async fn enqueue(&self, jobs: &[ForwardJob]) -> ForwardResult<()> {
        // Confirms are pipelined: all publishes go out, then all are awaited.
        let bodies: Vec<Vec<u8>> = jobs.iter().map(body).collect();
        let publishes = jobs.iter().zip(&bodies).map(|(job, b)| {
            self.broker.publish(
                FORWARDING_EXCHANGE,
                FORWARDING_ROUTING_KEY,
                b,
                props(job, &[]),
            )
        });
        for r in futures::future::join_all(publishes).await {
            r?;
        }
        Ok(())
    }

    async fn receive(
        &self, max: usize, wait: Duration,
    ) -> ForwardResult<Vec<(JobTag, ForwardJob)>> {
        let (generation, deliveries) = self.broker.take(Stream::Forwarding, max, wait).await?;
        let mut out = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let tag = wire_tag(generation, d.delivery_tag);
            match serde_json::from_slice::<ForwardJob>(&d.data) {
                Ok(job) => out.push((JobTag(tag.to_string()), job)),
                Err(e) => {
                    // Poison: the legacy consumer's answer, to the DLQ as is.
                    tracing::warn!(error = %e, "undecodable forwarding job dead-lettered");
                    self.broker.reject_forwarding(tag).await?;
                }
            }
        }
        Ok(out)
    }

    async fn complete(&self, tag: &JobTag) -> ForwardResult<()> {
        Ok(self.broker.ack_forwarding(parse_tag(tag)?).await?)
    }

    async fn reschedule(
        &self, tag: &JobTag, job: &ForwardJob, delay: Duration,
    ) -> ForwardResult<()> {
        let ms = self.ladder_step(delay);
        let mut job = job.clone();
        job.timestamp = Utc::now().timestamp_millis();
        self.broker
            .publish_to_queue(&retry_queue(ms), &body(&job), props(&job, &[]))
            .await?;
        Ok(self.broker.ack_forwarding(parse_tag(tag)?).await?)
    }

    async fn dead_letter(&self, tag: &JobTag, job: &ForwardJob, reason: &str) -> ForwardResult<()> {
        let extra = [
            (DEAD_REASON, AMQPValue::LongString(LongString::from(reason))),
            (
                DEAD_AT,
                AMQPValue::LongLongInt(Utc::now().timestamp_millis()),
            ),
        ];
        self.broker
            .publish(FORWARDING_DLX, "", &body(job), props(job, &extra))
            .await?;
        Ok(self.broker.ack_forwarding(parse_tag(tag)?).await?)
    }

    async fn list_dead(&self, limit: usize) -> ForwardResult<Vec<DeadJob>> {
        // Peek: get without ack on a side channel; closing it puts them back.
        let ch = self.broker.side_channel().await?;
        let queue = self.broker.queue_name(FORWARDING_DLQ);
        let mut out = Vec::new();
        while out.len() < limit {
            let got = take_head(&ch, &queue).await?;
            let Some(m) = got else { break };
            let props = &m.delivery.properties;
            let Ok(job) = serde_json::from_slice::<ForwardJob>(&m.delivery.data) else {
                continue;
            };
            let dead_at = dead_at(&m.delivery);
            out.push(DeadJob {
                id: job.delivery_log_id.clone(),
                reason: header_text(props, DEAD_REASON).unwrap_or_else(|| "rejected".into()),
                dead_at: dead_at.unwrap_or_else(Utc::now),
                job,
            });
        }
        let _ = ch.close(200, "peeked".into()).await;
        Ok(out)
    }

    async fn replay_dead(&self, filter: &ReplayFilter) -> ForwardResult<usize> {
        let ch = self.broker.side_channel().await?;
        let queue = self.broker.queue_name(FORWARDING_DLQ);
        let waiting = self.broker.queue_depth(FORWARDING_DLQ).await?;
        let mut replayed = 0;
        for _ in 0..waiting {
            let got = take_head(&ch, &queue).await?;
            let Some(m) = got else { break };
            let Ok(mut job) = serde_json::from_slice::<ForwardJob>(&m.delivery.data) else {
                continue; // left unacked: back in the DLQ when the channel closes
            };
            if !filter.matches(&job.delivery_log_id, &job, dead_at(&m.delivery)) {
                continue;
            }
            // A replay starts over: fresh attempts, not parked.
            job.attempt_count = 0;
            job.parked_since = None;
            job.timestamp = Utc::now().timestamp_millis();
            self.broker
                .publish(
                    FORWARDING_EXCHANGE,
                    FORWARDING_ROUTING_KEY,
                    &body(&job),
                    props(&job, &[]),
                )
                .await?;
            remove(&m.delivery).await?;
            replayed += 1;
        }
        let _ = ch.close(200, "replayed".into()).await;
        Ok(replayed)
    }

    async fn prune_dead(&self, before: DateTime<Utc>, limit: usize) -> ForwardResult<u64> {
        Ok(self
            .broker
            .prune_head(FORWARDING_DLQ, before, limit, dead_at)
            .await?)
    }

    async fn depth(&self) -> ForwardResult<u64> {
        Ok(self.broker.queue_depth(FORWARDING_QUEUE).await?)
    }

    async fn dead_depth(&self) -> ForwardResult<u64> {
        Ok(self.broker.queue_depth(FORWARDING_DLQ).await?)
    }

    async fn health(&self) -> BackendHealth {
        let up = self.broker.is_connected();
        BackendHealth {
            backend: "rabbitmq",
            up,
            detail: if up { None } else { self.broker.error_detail() },
        }
    }
}
