//! The inbox on RabbitMQ, compatible with the broker the legacy gateway
//! shared (DESIGN §2, docs/LEGACY.md, "RabbitMQ").
//!
//! Ingest publishes **once** per webhook, persistent and mandatory, to
//! `zen_ingest_exchange` (direct, routing key = the BSP); its bindings put one
//! copy on the legacy BSP queue for downstream consumers and one on
//! `zen_ingest_queue` for the processor. `append` returns only after the
//! broker's publisher confirm; a nack, a return (unroutable) or a lost
//! connection is an error, which the HTTP edge turns into 503.
//!
//! One supervisor task owns the connection: it declares the topology (the
//! legacy arguments exactly: a mismatch is a 406 from the broker), opens a
//! small pool of confirm-mode publishing channels and, when this replica
//! processes, one consuming channel; when anything breaks it reconnects with
//! backoff. Delivery tags carry the connection generation, so an ack for a
//! delivery of a dead connection is skipped (the broker redelivers it).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tokio::sync::{Mutex, Notify, RwLock};
use tokio_util::sync::CancellationToken;

pub mod forward_queue;
pub mod topology;

use crate::config::{QueueType, broker_addresses};
pub use forward_queue::RabbitForwardQueue;
pub use topology::declare_topology;

use crate::forwarding::ForwardQueueError;
use crate::health::BackendHealth;
use crate::model::Bsp;
use crate::queue::QueueResult;
use crate::queue::{DeliveryTag, Inbox, InboxDelivery, InboxEntry, QuarantinedEntry, QueueError};
use crate::telemetry::traces;

pub const INGEST_EXCHANGE: &str = "zen_ingest_exchange";
pub const INGEST_QUEUE: &str = "zen_ingest_queue";
pub const INGEST_DLX: &str = "zen_ingest_dlx";
pub const INGEST_DLQ: &str = "zen_ingest_dlq";
pub const FORWARDING_EXCHANGE: &str = "webhook_forwarding_exchange";
pub const FORWARDING_QUEUE: &str = "webhook_forwarding_queue";
pub const FORWARDING_DLX: &str = "webhook_forwarding_dlx";
pub const FORWARDING_DLQ: &str = "webhook_forwarding_dlq";
pub const FORWARDING_ROUTING_KEY: &str = "webhook.forward";

/// The legacy per-BSP queue that receives the raw events (Meta is new).
pub fn bsp_queue(bsp: Bsp) -> String {
    format!("{bsp}_webhook_queue")
}

/// Fixed delays always declared besides the configured retry delays, so that
/// `Retry-After` and parking behind an open circuit have a queue to wait in.
const LADDER_MS: [u32; 5] = [1_000, 5_000, 30_000, 60_000, 300_000];

/// Every retry queue delay, ascending.
pub fn retry_ladder(configured: &[u32]) -> Vec<u32> {
    let mut all: Vec<u32> = configured.iter().copied().chain(LADDER_MS).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The per-delay retry queue of the forwarder: messages wait `ms` there and
/// dead-letter back to the forwarding exchange (no plugin needed).
pub fn retry_queue(ms: u32) -> String {
    format!("webhook_forwarding_retry_{ms}")
}

const HEADER_EVENT_ID: &str = "x-zen-event-id";
const HEADER_BSP: &str = "x-zen-bsp";
const HEADER_RECEIVED_AT: &str = "x-zen-received-at";
const HEADER_QUARANTINE_ERROR: &str = "x-zen-quarantine-error";
const HEADER_QUARANTINE_ATTEMPTS: &str = "x-zen-quarantine-attempts";
const HEADER_QUARANTINED_AT: &str = "x-zen-quarantined-at";
/// The most quarantined messages one listing or replay reads from the DLQ
/// (a queue is read by taking messages; they are requeued after).
const QUARANTINE_SCAN: u64 = 10_000;

/// Settings of the RabbitMQ inbox.
#[derive(Debug, Clone)]
pub struct RabbitOptions {
    /// One broker address, or several, comma-separated (the nodes of a
    /// cluster): see [`broker_addresses`].
    pub url: String,
    /// Prepended to every exchange and queue name. Empty in production (the
    /// legacy names); tests use it to isolate themselves on one broker.
    pub prefix: String,
    /// Consume `zen_ingest_queue` (this replica runs the processor).
    pub consume: bool,
    /// Unacked deliveries the broker may push to this replica.
    pub prefetch: u16,
    /// Confirm-mode channels publishes are spread over.
    pub publish_channels: usize,
    /// Retry delays of the forwarder, one queue each.
    pub retry_delays_ms: Vec<u32>,
    /// Consume `webhook_forwarding_queue` (this replica runs the forwarder).
    pub forward_consume: bool,
    /// Unacked forwarding jobs the broker may push to this replica.
    pub forward_prefetch: u16,
    /// How the queues are declared (`RABBITMQ_QUEUE_TYPE`).
    pub queue_type: QueueType,
    /// The providers, for their legacy queue bodies.
    pub providers: crate::providers::Providers,
}

pub(crate) struct Live {
    generation: u64,
    connection: Connection,
    publishers: Vec<Channel>,
    next_publisher: AtomicUsize,
    consumer_channel: Option<Channel>,
    consumer: Option<Mutex<Consumer>>,
    forward_channel: Option<Channel>,
    forward_consumer: Option<Mutex<Consumer>>,
    /// Inbox deliveries handed out on `consumer_channel` and not yet
    /// settled (broker tags): an ack may cover every tag up to its highest
    /// at once only when none below it is still out.
    inbox_unsettled: std::sync::Mutex<BTreeSet<u64>>,
}

impl Live {
    /// The broker's tag inside a wire tag, if the wire tag is of this
    /// connection (see [`wire_tag`]).
    fn broker_tag(&self, wire: u64) -> Option<u64> {
        (wire >> 48 == self.generation).then_some(wire & ((1 << 48) - 1))
    }
}

/// The inbox on RabbitMQ.
pub struct RabbitInbox {
    /// Itself, for publishing tasks that outlive their caller.
    me: std::sync::Weak<RabbitInbox>,
    opts: RabbitOptions,
    live: RwLock<Option<Arc<Live>>>,
    generation: AtomicU64,
    connected: AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
    broken: Notify,
    shutdown: CancellationToken,
    /// The address the next connection tries first: the first at start,
    /// then the one after the node the last connection reached, so that a
    /// lost node is tried last.
    next_address: std::sync::atomic::AtomicUsize,
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// The broker connection's error, told to each role as its own.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    #[error("{0}")]
    Unavailable(String),
}

impl From<BrokerError> for QueueError {
    fn from(e: BrokerError) -> Self {
        let BrokerError::Unavailable(why) = e;
        QueueError::Unavailable(why)
    }
}

impl From<BrokerError> for ForwardQueueError {
    fn from(e: BrokerError) -> Self {
        let BrokerError::Unavailable(why) = e;
        ForwardQueueError::Unavailable(why)
    }
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Takes the message at the head of `queue` without acking it (the
/// channel's close puts back what is not acked); `None` when it is empty.
pub(crate) async fn take_head(
    ch: &Channel, queue: &str,
) -> Result<Option<lapin::message::BasicGetMessage>, BrokerError> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(unavailable)
}

/// Acks one message taken with [`take_head`]: it leaves its queue.
pub(crate) async fn remove(delivery: &lapin::message::Delivery) -> Result<(), BrokerError> {
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map(drop)
        .map_err(unavailable)
}

/// A channel consuming `queue` (at most `prefetch` unacked), when `wanted`.
async fn consumer_of(
    connection: &Connection, wanted: bool, queue: &str, tag: &str, prefetch: u16,
) -> Result<(Option<Channel>, Option<Mutex<Consumer>>), lapin::Error> {
    if !wanted {
        return Ok((None, None));
    }
    let ch = connection.create_channel().await?;
    ch.basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((Some(ch), Some(Mutex::new(consumer))))
}

impl RabbitInbox {
    /// Starts the supervisor; the first connection attempt happens in the
    /// background, so a broker that is down at start-up is retried, and
    /// reported by `/ready`, rather than fatal.
    pub fn start(opts: RabbitOptions) -> Arc<RabbitInbox> {
        let inbox = Arc::new_cyclic(|me| RabbitInbox {
            me: me.clone(),
            opts,
            live: RwLock::new(None),
            generation: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_error: std::sync::Mutex::new(Some("connecting".into())),
            broken: Notify::new(),
            shutdown: CancellationToken::new(),
            next_address: std::sync::atomic::AtomicUsize::new(0),
        });
        tokio::spawn(supervise(inbox.clone()));
        inbox
    }

    /// Waits until connected (tests, start-up logs); false on timeout.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.connected.load(Ordering::Relaxed) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Stops the supervisor and closes the connection.
    pub async fn close(&self) {
        self.shutdown.cancel();
        if let Some(live) = self.live.write().await.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                live.connection.close(200, "shutdown".into()),
            )
            .await;
        }
        self.connected.store(false, Ordering::Relaxed);
    }

    fn set_error(&self, e: &str) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(e.to_owned());
        }
    }

    /// Marks the connection broken so the supervisor replaces it.
    fn report_broken(&self, e: &str) {
        if self.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = e, "rabbitmq connection lost; reconnecting");
        }
        self.set_error(e);
        self.broken.notify_one();
    }

    /// [`report_broken`](Self::report_broken) for the connection of
    /// `generation` only: a publish that times out after its connection was
    /// replaced says nothing of the new one.
    fn report_broken_of(&self, generation: u64, e: &str) {
        if self.generation.load(Ordering::Relaxed) == generation {
            self.report_broken(e);
        } else {
            tracing::debug!(
                generation,
                error = e,
                "a replaced rabbitmq connection's operation failed"
            );
        }
    }

    async fn live(&self) -> Result<Arc<Live>, BrokerError> {
        self.live
            .read()
            .await
            .clone()
            .filter(|_| self.connected.load(Ordering::Relaxed))
            .ok_or_else(|| {
                let why = self
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_default();
                BrokerError::Unavailable(format!("rabbitmq not connected: {why}"))
            })
    }

    /// A connection to the first address that answers, from `next_address`
    /// on, each attempt bounded.
    async fn connect_any(&self) -> Result<Connection, lapin::Error> {
        let addresses = broker_addresses(&self.opts.url);
        let n = addresses.len().max(1);
        let start = self.next_address.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(address) = addresses.get(i) else {
                break;
            };
            let attempt = tokio::time::timeout(
                NODE_CONNECT_TIMEOUT,
                Connection::connect(
                    address,
                    ConnectionProperties::default()
                        .with_connection_name(LongString::from("zen-gateway")),
                ),
            )
            .await;
            match attempt {
                Ok(Ok(connection)) => {
                    if n > 1 {
                        tracing::info!(node = i + 1, of = n, "rabbitmq: connected");
                    }
                    self.next_address.store(i + 1, Ordering::Relaxed);
                    return Ok(connection);
                }
                Ok(Err(e)) => {
                    if n > 1 {
                        tracing::warn!(node = i + 1, of = n, error = %e, "rabbitmq: node not answering; trying the next");
                    }
                    last = Some(e);
                }
                Err(_) => {
                    tracing::warn!(
                        node = i + 1,
                        of = n,
                        "rabbitmq: node did not answer in time; trying the next"
                    );
                    last = Some(lapin::Error::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connection attempt timed out",
                    )));
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "RABBITMQ_URL names no broker",
            ))
        }))
    }

    async fn connect(&self) -> Result<Live, lapin::Error> {
        let connection = self.connect_any().await?;
        let setup = connection.create_channel().await?;
        declare_topology(&setup, &self.opts).await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let mut publishers = Vec::new();
        for _ in 0..self.opts.publish_channels.max(1) {
            let ch = connection.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            publishers.push(ch);
        }
        // The processor's inbox and the forwarder's queue, each consumed
        // only on a replica that runs the role.
        let [inbox, forwarding] = [
            (
                self.opts.consume,
                INGEST_QUEUE,
                "zen-gateway-processor",
                self.opts.prefetch,
            ),
            (
                self.opts.forward_consume,
                FORWARDING_QUEUE,
                "webhook-forwarder",
                self.opts.forward_prefetch,
            ),
        ];
        let mut consumers = Vec::with_capacity(2);
        for (wanted, queue, tag, prefetch) in [inbox, forwarding] {
            let queue = format!("{}{queue}", self.opts.prefix);
            consumers.push(consumer_of(&connection, wanted, &queue, tag, prefetch).await?);
        }
        let (forward_channel, forward_consumer) = consumers.pop().unwrap_or((None, None));
        let (consumer_channel, consumer) = consumers.pop().unwrap_or((None, None));
        Ok(Live {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            connection,
            publishers,
            next_publisher: AtomicUsize::new(0),
            consumer_channel,
            consumer,
            forward_channel,
            forward_consumer,
            inbox_unsettled: Default::default(),
        })
    }

    /// One persistent, mandatory publish, confirmed by the broker.
    ///
    /// The send and the confirm run in a task of their own, bounded by
    /// [`BROKER_OP_TIMEOUT`]: callers stop waiting sooner (ingest answers
    /// 503 after `INGEST_ACK_TIMEOUT_MS`), and a publish dropped with its
    /// caller would never see that the broker stopped confirming. The task
    /// does, and gives the connection up.
    async fn publish_confirmed(
        &self, exchange: &str, routing_key: &str, body: &[u8], props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let live = self.live().await?;
        let i = live.next_publisher.fetch_add(1, Ordering::Relaxed) % live.publishers.len();
        let channel = live.publishers[i].clone();
        let generation = live.generation;
        let (to_exchange, to_key) = (ShortString::from(exchange), ShortString::from(routing_key));
        let body = body.to_vec();
        let inbox = self.me.clone();
        let publish = tokio::spawn(async move {
            let outcome = tokio::time::timeout(BROKER_OP_TIMEOUT, async {
                channel
                    .basic_publish(
                        to_exchange,
                        to_key,
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &body,
                        props.with_delivery_mode(2),
                    )
                    .await?
                    .await
            })
            .await;
            let broken = match &outcome {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("no publisher confirm in time".to_owned()),
            };
            if let (Some(why), Some(inbox)) = (broken, inbox.upgrade()) {
                inbox.report_broken_of(generation, &why);
            }
            outcome
        });
        let confirm = match publish.await {
            Ok(Ok(confirm)) => confirm,
            Ok(Err(_)) => {
                return Err(BrokerError::Unavailable(format!(
                    "no publisher confirm within {BROKER_OP_TIMEOUT:?}"
                )));
            }
            Err(e) => return Err(unavailable(e)),
        };
        match confirm {
            Ok(c) if c.is_ack() => {
                if c.take_message().is_some() {
                    return Err(BrokerError::Unavailable(format!(
                        "the broker returned the message: nothing is bound to {exchange}/{routing_key}"
                    )));
                }
                Ok(())
            }
            Ok(_) => Err(BrokerError::Unavailable(
                "the broker nacked the message".into(),
            )),
            // Reported broken by the publishing task.
            Err(e) => Err(unavailable(e)),
        }
    }

    fn name(&self, n: &str) -> String {
        format!("{}{n}", self.opts.prefix)
    }

    fn entry_from(delivery: &lapin::message::Delivery) -> Result<InboxEntry, String> {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let text = |key: &str| -> Option<String> {
            match headers.inner().get(&ShortString::from(key)) {
                Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
                _ => None,
            }
        };
        let bsp_name = text(HEADER_BSP).unwrap_or_else(|| delivery.routing_key.to_string());
        let bsp = Bsp::parse(&bsp_name).ok_or_else(|| format!("unknown bsp {bsp_name:?}"))?;
        let received_ms = match headers.inner().get(&ShortString::from(HEADER_RECEIVED_AT)) {
            Some(AMQPValue::LongLongInt(ms)) => Some(*ms),
            Some(AMQPValue::Timestamp(s)) => Some(*s as i64 * 1000),
            _ => None,
        };
        Ok(InboxEntry {
            event_id: text(HEADER_EVENT_ID).unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            bsp,
            received_at: received_ms
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                .unwrap_or_else(Utc::now),
            body: Bytes::from(delivery.data.clone()),
            priority: delivery.properties.priority().unwrap_or(0),
            batch_len: None,
            trace: text(traces::TRACEPARENT)
                .as_deref()
                .and_then(traces::TraceParent::parse),
        })
    }
}

/// The headers an inbox message carries (what the body alone does not
/// say), plus `extra`.
fn entry_headers(entry: &InboxEntry, extra: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = vec![
        (HEADER_EVENT_ID, long(&entry.event_id)),
        (HEADER_BSP, long(entry.bsp.as_str())),
        (
            HEADER_RECEIVED_AT,
            AMQPValue::LongLongInt(entry.received_at.timestamp_millis()),
        ),
    ];
    if let Some(trace) = &entry.trace {
        // Where OpenTelemetry's messaging conventions put it.
        headers.push((traces::TRACEPARENT, long(trace.as_str())));
    }
    headers.extend(extra.iter().cloned());
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(table(&headers))
}

/// A message of the inbox DLQ as a quarantined entry; one the broker
/// dead-lettered (not one of ours) says so in its error.
fn quarantined_from(delivery: &lapin::message::Delivery) -> QuarantinedEntry {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let get = |key: &str| headers.inner().get(&ShortString::from(key));
    let text = |key: &str| match get(key) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    let ms = |key: &str| match get(key) {
        Some(AMQPValue::LongLongInt(ms)) => Utc.timestamp_millis_opt(*ms).single(),
        _ => None,
    };
    QuarantinedEntry {
        event_id: text(HEADER_EVENT_ID).unwrap_or_default(),
        bsp: text(HEADER_BSP)
            .as_deref()
            .and_then(Bsp::parse)
            .unwrap_or_default(),
        received_at: ms(HEADER_RECEIVED_AT).unwrap_or_default(),
        quarantined_at: ms(HEADER_QUARANTINED_AT).unwrap_or_default(),
        attempts: match get(HEADER_QUARANTINE_ATTEMPTS) {
            Some(AMQPValue::LongLongInt(n)) => (*n).clamp(0, u32::MAX as i64) as u32,
            _ => 0,
        },
        error: text(HEADER_QUARANTINE_ERROR)
            .unwrap_or_else(|| "dead-lettered by the broker (not a gateway entry)".into()),
        body: String::from_utf8_lossy(&delivery.data).into_owned(),
    }
}

/// Which consumer to take deliveries from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Inbox,
    Forwarding,
}

/// A delivery tag on the wire of this process: the connection generation
/// in the top 16 bits, the broker's tag below.
pub(crate) fn wire_tag(generation: u64, tag: u64) -> u64 {
    (generation << 48) | (tag & ((1 << 48) - 1))
}

impl RabbitInbox {
    /// Up to `max` deliveries, waiting up to `wait` for the first.
    pub(crate) async fn take(
        &self, stream: Stream, max: usize, wait: Duration,
    ) -> Result<(u64, Vec<lapin::message::Delivery>), BrokerError> {
        let live = match self.live().await {
            Ok(l) => l,
            Err(e) => {
                // Not connected: wait a little rather than spin.
                tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
                return Err(e);
            }
        };
        let consumer = match stream {
            Stream::Inbox => &live.consumer,
            Stream::Forwarding => &live.forward_consumer,
        };
        let Some(consumer) = consumer else {
            return Err(BrokerError::Unavailable(format!(
                "this replica does not consume the {stream:?} queue"
            )));
        };
        let mut consumer = consumer.lock().await;
        let mut out = Vec::new();
        let Ok(mut next) = tokio::time::timeout(wait, consumer.next()).await else {
            return Ok((live.generation, out));
        };
        loop {
            match next {
                Some(Ok(delivery)) => out.push(delivery),
                Some(Err(e)) => {
                    self.report_broken_of(live.generation, &e.to_string());
                    break;
                }
                None => {
                    self.report_broken_of(
                        live.generation,
                        "a consumer was cancelled by the broker",
                    );
                    break;
                }
            }
            if out.len() >= max {
                break;
            }
            match consumer.next().now_or_never() {
                Some(n) => next = n,
                None => break,
            }
        }
        if matches!(stream, Stream::Inbox) {
            if let Ok(mut unsettled) = live.inbox_unsettled.lock() {
                unsettled.extend(out.iter().map(|d| d.delivery_tag));
            }
        }
        Ok((live.generation, out))
    }

    /// Acks a wire tag on `channel`; a tag of a dead connection is skipped
    /// (the broker redelivers that message).
    pub(crate) async fn ack_on(
        &self, live: &Live, channel: &Channel, tag: u64, options: BasicAckOptions,
    ) -> Result<(), BrokerError> {
        let Some(tag) = live.broker_tag(tag) else {
            return Ok(());
        };
        match tokio::time::timeout(BROKER_OP_TIMEOUT, channel.basic_ack(tag, options)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.report_broken_of(live.generation, &e.to_string());
                Err(unavailable(e))
            }
            Err(_) => {
                self.report_broken_of(live.generation, "an ack did not complete in time");
                Err(BrokerError::Unavailable(format!(
                    "ack not done within {BROKER_OP_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Acks a forwarding job's wire tag.
    pub(crate) async fn ack_forwarding(&self, tag: u64) -> Result<(), BrokerError> {
        let live = self.live().await?;
        let Some(channel) = &live.forward_channel else {
            return Ok(());
        };
        self.ack_on(&live, channel, tag, BasicAckOptions::default())
            .await
    }

    /// Forgets inbox deliveries settled other than by `Inbox::ack` (a
    /// poison message rejected on receipt).
    async fn settled(&self, generation: u64, raw_tags: &[u64]) {
        if let Ok(live) = self.live().await {
            if live.generation == generation {
                if let Ok(mut unsettled) = live.inbox_unsettled.lock() {
                    for t in raw_tags {
                        unsettled.remove(t);
                    }
                }
            }
        }
    }

    /// Rejects a forwarding job without requeue (dead-letters it).
    pub(crate) async fn reject_forwarding(&self, tag: u64) -> Result<(), BrokerError> {
        let live = self.live().await?;
        let Some(channel) = &live.forward_channel else {
            return Ok(());
        };
        let Some(tag) = live.broker_tag(tag) else {
            return Ok(());
        };
        channel
            .basic_reject(tag, BasicRejectOptions { requeue: false })
            .await
            .map_err(unavailable)
    }

    /// A short-lived channel (peeking at or draining the DLQ); closing it
    /// requeues whatever it got and did not ack.
    pub(crate) async fn side_channel(&self) -> Result<Channel, BrokerError> {
        let live = self.live().await?;
        live.connection.create_channel().await.map_err(unavailable)
    }

    /// Publishes with confirm (see [`publish_confirmed`](Self::publish_confirmed)).
    pub(crate) async fn publish(
        &self, exchange: &str, routing_key: &str, body: &[u8], props: BasicProperties,
    ) -> Result<(), BrokerError> {
        self.publish_confirmed(&self.name(exchange), routing_key, body, props)
            .await
    }

    /// Publishes to the default exchange, straight to a (prefixed) queue.
    pub(crate) async fn publish_to_queue(
        &self, queue: &str, body: &[u8], props: BasicProperties,
    ) -> Result<(), BrokerError> {
        self.publish_confirmed("", &self.name(queue), body, props)
            .await
    }

    pub(crate) fn queue_name(&self, n: &str) -> String {
        self.name(n)
    }

    pub(crate) fn retry_delays(&self) -> Vec<u32> {
        retry_ladder(&self.opts.retry_delays_ms)
    }

    /// Removes from the head of `queue` (a dead-letter queue, in the order
    /// its messages died) up to `limit` whose time (`time_of`) is before
    /// `before`, stopping at the first that is not; the rest stay, in order.
    pub(crate) async fn prune_head(
        &self, queue: &str, before: DateTime<Utc>, limit: usize,
        time_of: impl Fn(&lapin::message::Delivery) -> Option<DateTime<Utc>>,
    ) -> Result<u64, BrokerError> {
        let ch = self.side_channel().await?;
        let name = self.name(queue);
        let mut pruned = 0;
        while (pruned as usize) < limit {
            let got = take_head(&ch, &name).await?;
            let Some(m) = got else { break };
            // Unknown or recent: it and the rest stay (the close requeues).
            if time_of(&m.delivery).is_none_or(|t| t >= before) {
                break;
            }
            remove(&m.delivery).await?;
            pruned += 1;
        }
        let _ = ch.close(200, "pruned".into()).await;
        Ok(pruned)
    }

    pub(crate) async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        bounded(self.queue_depth_now(queue)).await
    }

    async fn queue_depth_now(&self, queue: &str) -> Result<u64, BrokerError> {
        let ch = self.side_channel().await?;
        let q = ch
            .queue_declare(
                self.name(queue).into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let _ = ch.close(200, "depth".into()).await;
        Ok(q.message_count() as u64)
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn error_detail(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// Longest a single publish-confirm or ack may take before the connection
/// is treated as broken (so no caller, the processor included, can hang on
/// a connection that died under it).
const BROKER_OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker round trip for `/ready` and `/metrics`: a broker that does not
/// answer reads as unavailable rather than hanging the probe.
async fn bounded<T>(
    op: impl std::future::Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(Duration::from_secs(2), op)
        .await
        .unwrap_or_else(|_| {
            Err(BrokerError::Unavailable(
                "the broker did not answer within 2 s".into(),
            ))
        })
}

/// How long one connection attempt (connect, declare, open channels) may
/// take, past the nodes tried before the one that answered.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one node may take to accept a connection before the next is
/// tried.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps a live connection; replaces it whenever it breaks.
async fn supervise(inbox: Arc<RabbitInbox>) {
    let mut delay = Duration::from_millis(200);
    loop {
        if inbox.shutdown.is_cancelled() {
            return;
        }
        // A broker that accepts TCP but never finishes the handshake (one
        // still booting) must not stall the supervisor forever.
        let nodes = broker_addresses(&inbox.opts.url).len().max(1) as u32;
        let limit = CONNECT_TIMEOUT + NODE_CONNECT_TIMEOUT * (nodes - 1);
        let attempt = match tokio::time::timeout(limit, inbox.connect()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("connect and topology not done within {limit:?}")),
        };
        match attempt {
            Ok(live) => {
                let live = Arc::new(live);
                *inbox.live.write().await = Some(live.clone());
                inbox.connected.store(true, Ordering::Relaxed);
                tracing::info!(
                    generation = live.generation,
                    "rabbitmq connected, topology declared"
                );
                delay = Duration::from_millis(200);
                // Watch until something reports it broken or it dies.
                loop {
                    tokio::select! {
                        _ = inbox.shutdown.cancelled() => return,
                        _ = inbox.broken.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    let healthy = live.connection.status().connected()
                        && live.publishers.iter().all(|c| c.status().connected())
                        && [&live.consumer_channel, &live.forward_channel]
                            .into_iter()
                            .flatten()
                            .all(|c| c.status().connected());
                    if !healthy || !inbox.connected.load(Ordering::Relaxed) {
                        break;
                    }
                }
                inbox.connected.store(false, Ordering::Relaxed);
                inbox.live.write().await.take();
                metrics::counter!("zen_broker_connections_lost_total").increment(1);
                // Closing a connection the broker already dropped can wait
                // forever for a close-ok; the replacement must not.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    live.connection.close(200, "replacing".into()),
                )
                .await;
            }
            Err(msg) => {
                tracing::warn!(error = %msg, retry_in = ?delay, "cannot connect to rabbitmq");
                inbox.set_error(&msg);
                tokio::select! {
                    _ = inbox.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The body as the legacy BSP queue carries it: the provider says (a
/// Datagen batch is wrapped as `{"batch_data":[…],"batch_size":n}`).
pub fn legacy_body(providers: &crate::providers::Providers, entry: &InboxEntry) -> Bytes {
    match providers.get(entry.bsp) {
        Some(p) => p.legacy_queue_body(&entry.body, entry.batch_len),
        None => entry.body.clone(),
    }
}

#[async_trait]
impl Inbox for RabbitInbox {
    async fn append(&self, entry: InboxEntry) -> QueueResult<()> {
        let props = entry_headers(&entry, &[]).with_priority(entry.priority);
        Ok(self
            .publish(
                INGEST_EXCHANGE,
                entry.bsp.as_str(),
                &legacy_body(&self.opts.providers, &entry),
                props,
            )
            .await?)
    }

    async fn receive(&self, max: usize, wait: Duration) -> QueueResult<Vec<InboxDelivery>> {
        let (generation, deliveries) = self.take(Stream::Inbox, max, wait).await?;
        let mut out = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match Self::entry_from(&delivery) {
                Ok(entry) => out.push(InboxDelivery {
                    tag: DeliveryTag(wire_tag(generation, delivery.delivery_tag)),
                    entry,
                }),
                Err(why) => {
                    // Not ours: to the inbox DLQ, where it can be inspected.
                    tracing::warn!(reason = %why, "poison message in the inbox; dead-lettered");
                    let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                    self.settled(generation, &[delivery.delivery_tag]).await;
                }
            }
        }
        Ok(out)
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> QueueResult<()> {
        let live = self.live().await?;
        let Some(channel) = &live.consumer_channel else {
            return Ok(());
        };
        // Tags of an earlier connection are void (see `ack_on`).
        let current: Vec<u64> = tags.iter().filter_map(|t| live.broker_tag(t.0)).collect();
        // One `multiple` ack for the batch when nothing below its highest
        // tag is still out (the usual case: the processor acks what it took,
        // in order); else one ack per tag.
        let covers_all = {
            let Ok(mut unsettled) = live.inbox_unsettled.lock() else {
                return Err(QueueError::Unavailable("inbox bookkeeping poisoned".into()));
            };
            for t in &current {
                unsettled.remove(t);
            }
            current
                .iter()
                .max()
                .filter(|&&max| unsettled.range(..max).next().is_none())
                .copied()
        };
        match covers_all {
            Some(max) => {
                let all = BasicAckOptions { multiple: true };
                Ok(self
                    .ack_on(&live, channel, wire_tag(live.generation, max), all)
                    .await?)
            }
            None => {
                for t in tags {
                    self.ack_on(&live, channel, t.0, BasicAckOptions::default())
                        .await?;
                }
                Ok(())
            }
        }
    }

    async fn depth(&self) -> QueueResult<u64> {
        Ok(bounded(self.queue_depth_now(INGEST_QUEUE)).await?)
    }

    async fn quarantine(
        &self, delivery: &InboxDelivery, error: &str, attempts: u32,
    ) -> QueueResult<()> {
        let e = &delivery.entry;
        let props = entry_headers(
            e,
            &[
                (
                    HEADER_QUARANTINE_ERROR,
                    long(&crate::model::truncate_text(error, 4096)),
                ),
                (
                    HEADER_QUARANTINE_ATTEMPTS,
                    AMQPValue::LongLongInt(attempts as i64),
                ),
                (
                    HEADER_QUARANTINED_AT,
                    AMQPValue::LongLongInt(Utc::now().timestamp_millis()),
                ),
            ],
        );
        // Confirmed in the DLQ before the original is acked: a crash in
        // between leaves a copy in both, and the quarantine keeps it by
        // event id (a replay of a duplicate is applied idempotently).
        self.publish(INGEST_DLX, "", &e.body, props).await?;
        self.ack(&[delivery.tag]).await
    }

    async fn list_quarantined(
        &self, limit: usize, after: Option<&str>,
    ) -> QueueResult<Vec<QuarantinedEntry>> {
        let ch = self.side_channel().await?;
        let queue = self.name(INGEST_DLQ);
        let waiting = self.queue_depth(INGEST_DLQ).await?.min(QUARANTINE_SCAN);
        let mut all = Vec::new();
        for _ in 0..waiting {
            let got = take_head(&ch, &queue).await?;
            let Some(m) = got else { break };
            all.push(quarantined_from(&m.delivery));
        }
        // Closing the channel puts every message back, in order.
        let _ = ch.close(200, "listed".into()).await;
        all.reverse();
        let start = match after {
            Some(id) => all
                .iter()
                .position(|q| q.event_id == id)
                .map_or(all.len(), |i| i + 1),
            None => 0,
        };
        Ok(all.into_iter().skip(start).take(limit).collect())
    }

    async fn replay_quarantined(&self, ids: Option<&[String]>) -> QueueResult<u64> {
        let ch = self.side_channel().await?;
        let queue = self.name(INGEST_DLQ);
        let waiting = self.queue_depth(INGEST_DLQ).await?.min(QUARANTINE_SCAN);
        let mut replayed = 0;
        for _ in 0..waiting {
            let got = take_head(&ch, &queue).await?;
            let Some(m) = got else { break };
            let Ok(entry) = Self::entry_from(&m.delivery) else {
                continue; // not ours: left for the channel close to requeue
            };
            if ids.is_some_and(|ids| !ids.contains(&entry.event_id)) {
                continue;
            }
            let props = entry_headers(&entry, &[]);
            // Straight to the processor's queue: the legacy BSP queue had
            // its copy when the webhook arrived.
            self.publish_to_queue(INGEST_QUEUE, &m.delivery.data, props)
                .await?;
            remove(&m.delivery).await?;
            replayed += 1;
        }
        let _ = ch.close(200, "replayed".into()).await;
        Ok(replayed)
    }

    /// The DLQ is in the order entries were set aside: the oldest are taken
    /// from its head until one is recent enough; that one and the rest stay.
    async fn prune_quarantined(&self, before: DateTime<Utc>, limit: usize) -> QueueResult<u64> {
        Ok(self
            .prune_head(INGEST_DLQ, before, limit, |d| {
                Some(quarantined_from(d).quarantined_at)
            })
            .await?)
    }

    async fn quarantine_depth(&self) -> QueueResult<u64> {
        Ok(self.queue_depth(INGEST_DLQ).await?)
    }

    async fn health(&self) -> BackendHealth {
        let up = self.connected.load(Ordering::Relaxed);
        BackendHealth {
            backend: "rabbitmq",
            up,
            detail: if up {
                None
            } else {
                self.last_error.lock().ok().and_then(|e| e.clone())
            },
        }
    }
}
