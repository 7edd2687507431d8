//! The RabbitMQ inbox against the real broker: legacy topology arguments,
//! confirm-gated ingest, the legacy BSP-queue bodies, priorities, the retry
//! queues and the DLQ. Every test uses its own name prefix.

use std::time::Duration;

use chrono::Utc;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use zen_gateway::backends::rabbitmq::{self, RabbitInbox, RabbitOptions, bsp_queue, retry_queue};
use zen_gateway::model::Bsp;
use zen_gateway::queue::{Inbox, InboxEntry};

use crate::helpers::*;
use crate::services;

async fn channel(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

fn options(url: &str, prefix: &str, consume: bool) -> RabbitOptions {
    RabbitOptions {
        url: url.into(),
        prefix: prefix.into(),
        consume,
        prefetch: 64,
        publish_channels: 2,
        retry_delays_ms: vec![300],
        forward_consume: false,
        forward_prefetch: 16,
        providers: zen_gateway::providers::Providers::new(),
        queue_type: Default::default(),
    }
}

/// Removes what a test declared.
async fn cleanup(ch: &Channel, prefix: &str) {
    let mut queues: Vec<String> = Bsp::ALL.iter().map(|b| bsp_queue(*b)).collect();
    queues.extend(
        [
            rabbitmq::INGEST_QUEUE,
            rabbitmq::INGEST_DLQ,
            rabbitmq::FORWARDING_QUEUE,
            rabbitmq::FORWARDING_DLQ,
        ]
        .map(String::from),
    );
    queues.push(retry_queue(300));
    for q in queues {
        let _ = ch
            .queue_delete(format!("{prefix}{q}").into(), QueueDeleteOptions::default())
            .await;
    }
    for e in [
        rabbitmq::INGEST_EXCHANGE,
        rabbitmq::INGEST_DLX,
        rabbitmq::FORWARDING_EXCHANGE,
        rabbitmq::FORWARDING_DLX,
    ] {
        let _ = ch
            .exchange_delete(
                format!("{prefix}{e}").into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
}

#[tokio::test]
async fn our_declares_match_queues_the_legacy_gateway_created() {
    let Some(url) = services::rabbitmq_url() else {
        return;
    };
    let prefix = services::unique_prefix();
    let (_conn, ch) = channel(&url).await;
    // As streadway/amqp declared them: Go `int` is a signed 32-bit 'I'.
    let mut legacy = FieldTable::default();
    legacy.insert(
        ShortString::from("x-queue-mode"),
        AMQPValue::LongString(LongString::from("lazy")),
    );
    legacy.insert(ShortString::from("x-max-priority"), AMQPValue::LongInt(10));
    for bsp in [Bsp::Datagen, Bsp::Aisensy, Bsp::Karix] {
        ch.queue_declare(
            format!("{prefix}{}", bsp_queue(bsp)).into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            legacy.clone(),
        )
        .await
        .unwrap();
    }
    let mut fwd = legacy.clone();
    fwd.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(format!("{prefix}webhook_forwarding_dlx"))),
    );
    ch.queue_declare(
        format!("{prefix}webhook_forwarding_queue").into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        fwd,
    )
    .await
    .unwrap();

    let inbox = RabbitInbox::start(options(&url, &prefix, true));
    assert!(
        inbox.wait_connected(Duration::from_secs(10)).await,
        "{:?}",
        inbox.health().await
    );
    assert!(inbox.health().await.up);
    inbox.close().await;

    // A queue with other arguments makes the broker refuse: reported, not hidden.
    let other = services::unique_prefix();
    ch.queue_declare(
        format!("{other}datagen_webhook_queue").into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let inbox = RabbitInbox::start(options(&url, &other, true));
    assert!(!inbox.wait_connected(Duration::from_secs(2)).await);
    let health = inbox.health().await;
    assert!(!health.up);
    assert!(health.detail.unwrap().contains("PRECONDITION_FAILED"));
    inbox.close().await;
    cleanup(&ch, &prefix).await;
    cleanup(&ch, &other).await;
}

#[tokio::test]
async fn webhooks_are_acked_on_confirm_copied_to_bsp_queues_and_processed() {
    let Some(url) = services::rabbitmq_url() else {
        return;
    };
    let prefix = services::unique_prefix();
    let app = spawn_app_with(|s| {
        s.backends.rabbitmq_url = Some(zen_gateway::config::SecretUrl::new(url.clone()));
        s.rabbitmq.queue_prefix = prefix.clone();
    })
    .await;
    // The broker connection is made in the background.
    app.wait_ready(|r| r["inbox"]["up"] == true).await;
    let single = fixture("datagen_delivered.json");
    let batch = fixture("datagen_batch.json");
    let inbound = fixture("datagen_inbound_text.json");
    let aisensy = fixture("aisensy_status_read.json");
    let karix = fixture("karix_sent.json");
    for (route, body) in [
        ("/webhook/datagen", &single),
        ("/webhook/datagen", &batch),
        ("/webhook/datagen", &inbound),
        ("/webhook/aisensy", &aisensy),
        ("/webhook/karix", &karix),
    ] {
        assert_eq!(
            app.post_webhook(route, body.clone()).await.status(),
            200,
            "{route}"
        );
    }
    // Processed from zen_ingest_queue.
    app.wait_for_message(
        "wamid.HBgMOTE5ODEyMzQ1Njc4FQIAERgSNDdCRkE1RTZEMDlDM0IyRjFBAA==",
        |m| m["current_status"] == "delivered",
    )
    .await;
    app.wait_for_message("wamid.batch-2", |m| m["current_status"] == "failed")
        .await;
    app.wait_for_message("176901234567890123456", |m| m["current_status"] == "sent")
        .await;
    app.wait_for_message(
        "wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSM0VCMEE4QzdGNEQyRTlBMUIwAA==",
        |m| m["current_status"] == "read",
    )
    .await;

    // The legacy queues got the legacy bodies and properties.
    let (_conn, ch) = channel(&url).await;
    let q = format!("{prefix}datagen_webhook_queue");
    let mut bodies = Vec::new();
    while let Some(m) = get(&ch, &q).await {
        let props = &m.delivery.properties;
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        bodies.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            props.priority().unwrap_or(0),
        ));
    }
    assert_eq!(bodies.len(), 3);
    // Priority queues deliver the inbound message (5) first.
    assert_eq!(bodies[0].0, inbound);
    assert_eq!(bodies[0].1, 5);
    assert!(bodies.iter().any(|(b, p)| b == &single && *p == 0));
    let wrapped = bodies
        .iter()
        .find(|(b, _)| b.starts_with("{\"batch_data\":"))
        .unwrap();
    let v: Value = serde_json::from_str(&wrapped.0).unwrap();
    assert_eq!(v["batch_size"], 4);
    assert_eq!(v["batch_data"].as_array().unwrap().len(), 4);
    let a = get(&ch, &format!("{prefix}aisensy_webhook_queue"))
        .await
        .unwrap();
    assert_eq!(String::from_utf8(a.delivery.data.clone()).unwrap(), aisensy);
    let k = get(&ch, &format!("{prefix}karix_webhook_queue"))
        .await
        .unwrap();
    assert_eq!(String::from_utf8(k.delivery.data.clone()).unwrap(), karix);
    app.stop().await;
    cleanup(&ch, &prefix).await;
}

/// An inbox on the test broker, connected.
async fn connected(url: &str, prefix: &str, consume: bool) -> std::sync::Arc<RabbitInbox> {
    let inbox = RabbitInbox::start(options(url, prefix, consume));
    assert!(inbox.wait_connected(Duration::from_secs(10)).await);
    inbox
}

/// Publishes `n` Datagen "sent" reports for `wamid.<tag><i>`.
async fn append_statuses(inbox: &RabbitInbox, tag: &str, n: i64) {
    for i in 0..n {
        inbox
            .append(entry(
                Bsp::Datagen,
                &datagen_status(&format!("wamid.{tag}{i}"), "sent", i),
                0,
            ))
            .await
            .unwrap();
    }
}

fn entry(bsp: Bsp, body: &str, priority: u8) -> InboxEntry {
    InboxEntry {
        event_id: uuid::Uuid::now_v7().to_string(),
        bsp,
        received_at: Utc::now(),
        body: body.to_owned().into(),
        priority,
        batch_len: None,
        trace: None,
    }
}

#[tokio::test]
async fn inbound_messages_are_processed_before_waiting_status_reports() {
    let Some(url) = services::rabbitmq_url() else {
        return;
    };
    let prefix = services::unique_prefix();
    let publisher = connected(&url, &prefix, false).await;
    append_statuses(&publisher, "p", 5).await;
    publisher
        .append(entry(
            Bsp::Datagen,
            &fixture("datagen_inbound_text.json"),
            5,
        ))
        .await
        .unwrap();
    assert_eq!(publisher.depth().await.unwrap(), 6);

    let consumer = connected(&url, &prefix, true).await;
    let mut got = Vec::new();
    while got.len() < 6 {
        let batch = consumer.receive(10, Duration::from_secs(5)).await.unwrap();
        assert!(!batch.is_empty());
        got.extend(batch);
    }
    assert_eq!(got[0].entry.priority, 5);
    assert!(got[1..].iter().all(|d| d.entry.priority == 0));
    assert_eq!(got[0].entry.bsp, Bsp::Datagen);
    let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
    consumer.ack(&tags).await.unwrap();
    publisher.close().await;
    consumer.close().await;
    let (_conn, ch) = channel(&url).await;
    cleanup(&ch, &prefix).await;
}

#[tokio::test]
async fn an_ack_settles_its_own_batch_and_never_an_earlier_one_still_out() {
    let Some(url) = services::rabbitmq_url() else {
        return;
    };
    let prefix = services::unique_prefix();
    let publisher = connected(&url, &prefix, false).await;
    append_statuses(&publisher, "a", 12).await;
    let consumer = connected(&url, &prefix, true).await;
    let mut got = Vec::new();
    while got.len() < 12 {
        got.extend(consumer.receive(4, Duration::from_secs(5)).await.unwrap());
    }
    let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
    // The second batch first: the first is still out, so it stays unacked.
    consumer.ack(&tags[4..8]).await.unwrap();
    // The third batch too, with the first still out below it.
    consumer.ack(&tags[8..]).await.unwrap();
    consumer.close().await;

    // Closing the connection requeues exactly the unacked first batch.
    let consumer = connected(&url, &prefix, true).await;
    let mut again = Vec::new();
    while let Ok(batch) = consumer.receive(12, Duration::from_millis(500)).await {
        if batch.is_empty() {
            break;
        }
        again.extend(batch);
    }
    let ids = |ds: &[zen_gateway::queue::InboxDelivery]| {
        let mut v: Vec<_> = ds.iter().map(|d| d.entry.event_id.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&again), ids(&got[..4]));
    // Acked in order, in one go: nothing comes back.
    let tags: Vec<_> = again.iter().map(|d| d.tag).collect();
    consumer.ack(&tags).await.unwrap();
    consumer.close().await;
    let consumer = connected(&url, &prefix, true).await;
    assert!(
        consumer
            .receive(12, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );
    consumer.close().await;
    publisher.close().await;
    let (_conn, ch) = channel(&url).await;
    cleanup(&ch, &prefix).await;
}

#[tokio::test]
async fn retry_queues_dead_letter_back_after_their_delay_and_rejects_reach_the_dlq() {
    let Some(url) = services::rabbitmq_url() else {
        return;
    };
    let prefix = services::unique_prefix();
    let inbox = connected(&url, &prefix, false).await;
    let (_conn, ch) = channel(&url).await;
    let started = std::time::Instant::now();
    ch.basic_publish(
        "".into(),
        format!("{prefix}{}", retry_queue(300)).into(),
        BasicPublishOptions::default(),
        b"{\"job\":1}",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let fwd = format!("{prefix}webhook_forwarding_queue");
    let mut arrived = None;
    crate::helpers::eventually_within(Duration::from_secs(5), async || {
        arrived = ch
            .basic_get(fwd.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap();
        arrived.is_some()
    })
    .await;
    let m = arrived.expect("the retry queue never dead-lettered back");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(m.delivery.data, b"{\"job\":1}");
    // A rejected forwarding job dead-letters to the DLQ.
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dlq = format!("{prefix}webhook_forwarding_dlq");
    let in_dlq = crate::helpers::eventually_within(Duration::from_secs(5), async || {
        get(&ch, &dlq).await.is_some()
    })
    .await;
    assert!(in_dlq);
    inbox.close().await;
    cleanup(&ch, &prefix).await;
}

/// `RABBITMQ_QUEUE_TYPE=quorum`: the gateway's queues are quorum queues (a
/// classic declare of the same name is refused as inequivalent), and
/// webhooks flow through them to their records.
#[tokio::test]
async fn quorum_queues_carry_webhooks_to_their_records() {
    let Some(url) = services::rabbitmq_url() else {
        return;
    };
    let prefix = services::unique_prefix();
    let app = spawn_app_with(|s| {
        s.backends.rabbitmq_url = Some(zen_gateway::config::SecretUrl::new(url.clone()));
        s.rabbitmq.queue_prefix = prefix.clone();
        s.rabbitmq.queue_type = zen_gateway::config::QueueType::Quorum;
    })
    .await;
    app.wait_ready(|r| r["inbox"]["up"] == true).await;
    assert_eq!(
        app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
            .await
            .status(),
        200
    );
    app.wait_for_message(
        "wamid.HBgMOTE5ODEyMzQ1Njc4FQIAERgSNDdCRkE1RTZEMDlDM0IyRjFBAA==",
        |m| m["current_status"] == "delivered",
    )
    .await;
    for queue in ["zen_ingest_queue", "datagen_webhook_queue"] {
        let (_conn, ch) = channel(&url).await;
        let mut classic = FieldTable::default();
        classic.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("classic")),
        );
        let declared = ch
            .queue_declare(
                ShortString::from(format!("{prefix}{queue}")),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                classic,
            )
            .await;
        let e = declared.expect_err("a quorum queue is not a classic one");
        assert!(
            e.to_string().contains("PRECONDITION_FAILED") || e.to_string().contains("406"),
            "{queue}: {e}"
        );
    }
    app.stop().await;
    let (_conn, ch) = channel(&url).await;
    cleanup(&ch, &prefix).await;
}

/// A TCP relay to the broker that can be cut: a node that dies, for this
/// test's connection only (the broker and the other tests go on).
struct Relay {
    port: u16,
    cut: tokio_util::sync::CancellationToken,
}

impl Relay {
    async fn to(target: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = tokio_util::sync::CancellationToken::new();
        let (stop, target) = (cut.clone(), target.to_owned());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    return;
                };
                let (stop, target) = (stop.clone(), target.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Relay { port, cut }
    }
}

/// `RABBITMQ_URL` as a list of nodes: a node that does not answer is
/// skipped, and when the node in use dies the gateway moves to the next one
/// and webhooks are accepted and processed again; nothing acked is lost.
#[tokio::test]
async fn a_list_of_nodes_rides_through_the_loss_of_one() {
    let Some(url) = services::rabbitmq_url() else {
        return;
    };
    let parsed = url::Url::parse(&url).unwrap();
    let host = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5672)
    );
    let via = |port: u16| {
        let mut u = parsed.clone();
        u.set_port(Some(port)).unwrap();
        u.to_string()
    };
    let relay = Relay::to(&host).await;
    let dead = free_port();
    // A node that never answers, the relay (used first), the broker itself.
    let nodes = format!("{},{},{}", via(dead), via(relay.port), url);
    let prefix = services::unique_prefix();
    let app = spawn_app_with(|s| {
        s.backends.rabbitmq_url = Some(zen_gateway::config::SecretUrl::new(nodes.clone()));
        s.rabbitmq.queue_prefix = prefix.clone();
    })
    .await;
    app.wait_ready(|r| r["inbox"]["up"] == true).await;
    let post = |i: i64| {
        app.post_webhook(
            "/webhook/datagen",
            datagen_status(&format!("wamid.nodes-{i}"), "sent", i),
        )
    };
    assert_eq!(post(1).await.status(), 200);
    app.wait_for_message("wamid.nodes-1", |m| m["current_status"] == "sent")
        .await;

    // The node in use dies: 503s at most while the gateway moves on.
    relay.cut.cancel();
    let started = std::time::Instant::now();
    let mut acked = vec![1];
    let back = eventually_within(Duration::from_secs(10), async || {
        let i = 1000 + started.elapsed().as_millis() as i64;
        match post(i).await.status().as_u16() {
            200 => {
                acked.push(i);
                true
            }
            503 => false,
            other => panic!("unexpected {other}"),
        }
    })
    .await;
    assert!(back, "not accepting again within 10 s of losing a node");
    for i in &acked {
        app.wait_for_message(&format!("wamid.nodes-{i}"), |m| {
            m["current_status"] == "sent"
        })
        .await;
    }
    app.stop().await;
    let (_conn, ch) = channel(&url).await;
    cleanup(&ch, &prefix).await;
}
