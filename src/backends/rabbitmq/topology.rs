//! The broker objects the gateway declares, and how: every queue is
//! described once (what it is for, whether it dead-letters, waits or ranks
//! by priority), and [`QueueType`](crate::config::QueueType) turns the description into arguments.
//!
//! - `classic` (the default) declares exactly the legacy arguments
//!   (`x-queue-mode: lazy`, `x-max-priority: 10`, …): a queue the old
//!   gateway or its consumers declared is redeclared without a 406.
//! - `quorum` declares replicated quorum queues for a cluster. They take
//!   neither `x-max-priority` nor `x-queue-mode` (RabbitMQ refuses both), so
//!   those are dropped: every quorum queue keeps its messages on disk
//!   anyway (what `lazy` asked for), and the inbox serves in arrival order
//!   (inbound user messages lose their head start over status reports).
//!   `x-message-ttl` and dead-lettering are kept; a queue that dead-letters
//!   gets `x-dead-letter-strategy: at-least-once` (with the
//!   `x-overflow: reject-publish` it requires), so a job moving from a
//!   retry queue back to the forwarding exchange, or to a DLQ, is never
//!   dropped on the way (the quorum default is at-most-once).
//!
//! A queue's type cannot change in place: see DESIGN §2 for the migration.

use crate::config::QueueType;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::{
    FORWARDING_DLQ, FORWARDING_DLX, FORWARDING_EXCHANGE, FORWARDING_QUEUE, FORWARDING_ROUTING_KEY,
    INGEST_DLQ, INGEST_DLX, INGEST_EXCHANGE, INGEST_QUEUE, RabbitOptions, bsp_queue, retry_ladder,
    retry_queue,
};
use crate::model::Bsp;

/// What one queue is for, whatever its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// Ranks messages by priority (classic only).
    pub priority: bool,
    /// Keeps messages on disk rather than in memory (classic `lazy`; quorum
    /// queues always do).
    pub lazy: bool,
    /// Where expired or rejected messages go: exchange and routing key.
    pub dead_letter: Option<(String, Option<String>)>,
    /// How long a message waits before it expires (retry queues), in ms.
    pub ttl_ms: Option<u32>,
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

impl QueueSpec {
    /// The declare arguments of this queue as `queue_type` wants them.
    pub fn arguments(&self, queue_type: QueueType) -> FieldTable {
        let mut args: Vec<(&str, AMQPValue)> = Vec::new();
        if queue_type == QueueType::Quorum {
            args.push(("x-queue-type", long("quorum")));
        }
        if let Some(ms) = self.ttl_ms {
            args.push(("x-message-ttl", AMQPValue::LongInt(ms as i32)));
        }
        if let Some((exchange, key)) = &self.dead_letter {
            args.push(("x-dead-letter-exchange", long(exchange)));
            if let Some(key) = key {
                args.push(("x-dead-letter-routing-key", long(key)));
            }
            if queue_type == QueueType::Quorum {
                args.push(("x-dead-letter-strategy", long("at-least-once")));
                args.push(("x-overflow", long("reject-publish")));
            }
        }
        if queue_type == QueueType::Classic {
            if self.lazy {
                args.push(("x-queue-mode", long("lazy")));
            }
            if self.priority {
                args.push(("x-max-priority", AMQPValue::LongInt(10)));
            }
        }
        let mut table = FieldTable::default();
        for (k, v) in args {
            table.insert(ShortString::from(k), v);
        }
        table
    }
}

/// An exchange, its queues and their bindings.
pub struct Topology {
    pub exchanges: Vec<(String, ExchangeKind)>,
    pub queues: Vec<QueueSpec>,
    /// (queue, exchange, routing key).
    pub bindings: Vec<(String, String, String)>,
}

/// Everything the gateway declares, with `opts.prefix` on every name.
pub fn topology(opts: &RabbitOptions) -> Topology {
    let name = |n: &str| format!("{}{n}", opts.prefix);
    let queue =
        |n: String, priority: bool, dead_letter: Option<(String, Option<String>)>| QueueSpec {
            name: n,
            priority,
            lazy: true,
            dead_letter,
            ttl_ms: None,
        };
    let mut t = Topology {
        exchanges: Vec::new(),
        queues: Vec::new(),
        bindings: Vec::new(),
    };
    // A fanout dead-letter exchange and its queue (the legacy DLQ shape),
    // for the inbox and for forwarding.
    for (dlx, dlq) in [(INGEST_DLX, INGEST_DLQ), (FORWARDING_DLX, FORWARDING_DLQ)] {
        t.exchanges.push((name(dlx), ExchangeKind::Fanout));
        t.queues.push(queue(name(dlq), false, None));
        t.bindings.push((name(dlq), name(dlx), String::new()));
    }
    // Ingest: one publish, two copies (the BSP's legacy queue and the
    // processor's inbox).
    t.exchanges
        .push((name(INGEST_EXCHANGE), ExchangeKind::Direct));
    t.queues.push(queue(
        name(INGEST_QUEUE),
        true,
        Some((name(INGEST_DLX), None)),
    ));
    for bsp in Bsp::ALL {
        let legacy = name(&bsp_queue(bsp));
        t.queues.push(queue(legacy.clone(), true, None));
        for target in [legacy, name(INGEST_QUEUE)] {
            t.bindings
                .push((target, name(INGEST_EXCHANGE), bsp.as_str().to_owned()));
        }
    }
    // Forwarding: the legacy queue, and one retry queue per delay, whose
    // messages expire back into the forwarding exchange.
    t.exchanges
        .push((name(FORWARDING_EXCHANGE), ExchangeKind::Direct));
    t.queues.push(queue(
        name(FORWARDING_QUEUE),
        true,
        Some((name(FORWARDING_DLX), None)),
    ));
    t.bindings.push((
        name(FORWARDING_QUEUE),
        name(FORWARDING_EXCHANGE),
        FORWARDING_ROUTING_KEY.to_owned(),
    ));
    for ms in retry_ladder(&opts.retry_delays_ms) {
        t.queues.push(QueueSpec {
            ttl_ms: Some(ms),
            ..queue(
                name(&retry_queue(ms)),
                false,
                Some((
                    name(FORWARDING_EXCHANGE),
                    Some(FORWARDING_ROUTING_KEY.to_owned()),
                )),
            )
        });
    }
    t
}

/// Declares everything, idempotently.
pub async fn declare_topology(ch: &Channel, opts: &RabbitOptions) -> Result<(), lapin::Error> {
    let t = topology(opts);
    for (exchange, kind) in &t.exchanges {
        ch.exchange_declare(
            exchange.as_str().into(),
            kind.clone(),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    }
    for q in &t.queues {
        ch.queue_declare(
            q.name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            q.arguments(opts.queue_type),
        )
        .await?;
    }
    for (queue, exchange, key) in &t.bindings {
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(t: &FieldTable) -> Vec<String> {
        let mut k: Vec<String> = t.inner().keys().map(|k| k.to_string()).collect();
        k.sort();
        k
    }

    /// Classic queues carry the legacy arguments exactly; quorum queues
    /// drop what quorum refuses and dead-letter at least once.
    #[test]
    fn each_queue_type_gets_the_arguments_it_takes() {
        let forwarding = QueueSpec {
            name: "webhook_forwarding_queue".into(),
            priority: true,
            lazy: true,
            dead_letter: Some(("webhook_forwarding_dlx".into(), None)),
            ttl_ms: None,
        };
        assert_eq!(
            keys(&forwarding.arguments(QueueType::Classic)),
            ["x-dead-letter-exchange", "x-max-priority", "x-queue-mode"]
        );
        assert_eq!(
            keys(&forwarding.arguments(QueueType::Quorum)),
            [
                "x-dead-letter-exchange",
                "x-dead-letter-strategy",
                "x-overflow",
                "x-queue-type"
            ]
        );
        let legacy = QueueSpec {
            name: "datagen_webhook_queue".into(),
            priority: true,
            lazy: true,
            dead_letter: None,
            ttl_ms: None,
        };
        assert_eq!(
            keys(&legacy.arguments(QueueType::Classic)),
            ["x-max-priority", "x-queue-mode"]
        );
        assert_eq!(keys(&legacy.arguments(QueueType::Quorum)), ["x-queue-type"]);
    }
}
