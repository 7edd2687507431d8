//! Forwarding over RabbitMQ: jobs on the legacy webhook_forwarding_queue,
//! retries through the TTL retry queues, the DLQ and replay, and a legacy
//! job published by another service (secret inline) delivered and signed.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::receiver::{Behavior, Receiver};
use crate::services;

async fn rabbit_app(url: &str, prefix: &str) -> TestApp {
    let app = spawn_app_with(|s| {
        s.backends.rabbitmq_url = Some(zen_gateway::config::SecretUrl::new(url.to_owned()));
        s.rabbitmq.queue_prefix = prefix.to_owned();
        s.forward.allow_private = true;
        s.forward.retry_delays = "200,200".parse().unwrap();
    })
    .await;
    app.wait_ready(|r| r["inbox"]["up"] == true).await;
    app
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut req = app
        .client
        .request(method, app.url(path))
        .bearer_auth(ADMIN_KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn jobs_flow_through_the_broker_with_retries_dlq_and_replay() {
    let Some(url) = services::rabbitmq_url() else {
        return;
    };
    let prefix = services::unique_prefix();
    let app = rabbit_app(&url, &prefix).await;
    let rx = Receiver::start().await;
    rx.set("flaky", Behavior::Sequence(vec![500, 200]));
    rx.set("down", Behavior::Status(500));
    let mut secrets = Vec::new();
    for path in ["ok", "flaky", "down"] {
        let hook = admin(
            &app,
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(json!({
            "project_owner_id": "o", "webhook_url": rx.url(path), "topics": ["*"],
            "business_numbers": ["918071234567"]})),
        )
        .await;
        secrets.push(hook["shared_secret"].as_str().unwrap().to_owned());
    }
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    assert_eq!(rx.wait_for("ok", 1, Duration::from_secs(10)).await.len(), 1);
    let flaky = rx.wait_for("flaky", 2, Duration::from_secs(10)).await;
    assert_eq!(flaky.len(), 2);
    assert_eq!(flaky[1].header("x-attempt-count"), "1");
    assert!(
        flaky[1].at.duration_since(flaky[0].at) >= Duration::from_millis(180),
        "waited in the retry queue"
    );
    assert_eq!(
        rx.wait_for("down", 3, Duration::from_secs(10)).await.len(),
        3
    );

    let mut dead = Value::Null;
    eventually_within(Duration::from_secs(5), async || {
        dead = admin(&app, reqwest::Method::GET, "/api/v1/dlq", None).await;
        dead.as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{dead}"
    );
    // The dead job as it sits on the broker carries no signing secret (nor
    // did it on the forwarding and retry queues: the same serialization).
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let raw = ch
        .basic_get(
            format!("{prefix}webhook_forwarding_dlq").as_str().into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("the dead job is on the DLQ");
    let text = String::from_utf8_lossy(&raw.delivery.data).to_string();
    for s in &secrets {
        assert!(
            !text.contains(s.as_str()),
            "a secret in a queue message: {text}"
        );
    }
    assert!(!text.contains("shared_secret"), "{text}");
    raw.delivery
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    ch.close(200, "checked".into()).await.unwrap();
    rx.set("down", Behavior::Status(200));
    let replayed = admin(
        &app,
        reqwest::Method::POST,
        "/api/v1/dlq/replay",
        Some(json!({})),
    )
    .await;
    assert_eq!(replayed["replayed"], 1);
    let down = rx.wait_for("down", 4, Duration::from_secs(10)).await;
    assert_eq!(down[3].header("x-attempt-count"), "0");
    app.stop().await;
}

#[tokio::test]
async fn a_legacy_job_from_another_service_is_delivered_with_its_inline_secret() {
    let Some(url) = services::rabbitmq_url() else {
        return;
    };
    let prefix = services::unique_prefix();
    let app = rabbit_app(&url, &prefix).await;
    let rx = Receiver::start().await;
    // The first attempt fails: the retry (written back to a queue without
    // the secret) must still be signed with it.
    rx.set("legacy", Behavior::Sequence(vec![500, 200]));
    // WebhookForwardingPayload as the monolith publishes it.
    let legacy = json!({
        "delivery_log_id": "65f0c0ffee0000000000abcd",
        "project_owner_id": "owner-legacy",
        "webhook_id": "65f0c0ffee0000000000ffff",
        "webhook_url": rx.url("legacy"),
        "shared_secret": "s3cr3t-legacy",
        "event_type": "datagen.delivery",
        "event_id": "65f0c0ffee0000000000eeee",
        "payload": {"events": {"mid": "wamid.legacy"}},
        "timestamp": 1_749_540_000_000_i64,
        "attempt_count": 0
    });
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        format!("{prefix}webhook_forwarding_exchange").into(),
        "webhook.forward".into(),
        BasicPublishOptions::default(),
        legacy.to_string().as_bytes(),
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(10),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let got = rx.wait_for("legacy", 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    for req in &got {
        assert_eq!(req.header("x-event-id"), "65f0c0ffee0000000000eeee");
        assert_eq!(req.header("x-event-type"), "datagen.delivery");
        let sig = zen_gateway::inbound_auth::hmac_sha256_hex(b"s3cr3t-legacy", &req.body);
        assert_eq!(req.header("x-webhook-signature"), sig);
        assert_eq!(req.json()["data"]["events"]["mid"], "wamid.legacy");
    }
    // No queue message carries the secret in clear: the retry queues and the
    // DLQ hold none.
    for q in ["webhook_forwarding_dlq", "webhook_forwarding_queue"] {
        let got = ch
            .basic_get(
                format!("{prefix}{q}").into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap();
        if let Some(m) = got {
            let text = String::from_utf8_lossy(&m.delivery.data).into_owned();
            assert!(!text.contains("s3cr3t-legacy"), "{q}: {text}");
        }
    }
    app.stop().await;
}

/// The broker cannot refuse a job queued twice (a fan-out re-run after a
/// crash or a failed batch): the second copy is dropped because the
/// delivery log says it was delivered, so the client gets one request.
#[tokio::test]
async fn a_job_queued_twice_is_delivered_once() {
    let Some(url) = services::rabbitmq_url() else {
        return;
    };
    let prefix = services::unique_prefix();
    let app = rabbit_app(&url, &prefix).await;
    let rx = Receiver::start().await;
    let hook = admin(
        &app,
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(json!({
        "project_owner_id": "o", "webhook_url": rx.url("once"), "topics": ["*"],
        "business_numbers": ["918071234567"]})),
    )
    .await;
    let webhook_id = hook["id"].as_str().unwrap().to_owned();
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    assert_eq!(
        rx.wait_for("once", 1, Duration::from_secs(10)).await.len(),
        1
    );
    let mut logs = Value::Null;
    eventually_within(Duration::from_secs(5), async || {
        logs = admin(
            &app,
            reqwest::Method::GET,
            &format!("/api/v1/webhooks/{webhook_id}/deliveries"),
            None,
        )
        .await;
        logs[0]["status"] == "success"
    })
    .await;
    assert_eq!(logs[0]["status"], "success", "{logs}");
    // The same job again, as a re-run fan-out publishes it.
    let again = json!({
        "delivery_log_id": logs[0]["id"], "project_owner_id": "o",
        "webhook_id": webhook_id, "webhook_url": rx.url("once"),
        "event_type": logs[0]["event_type"], "event_id": logs[0]["event_id"],
        "payload": logs[0]["payload"], "timestamp": 1_749_540_000_000_i64,
        "attempt_count": 0, "v": 1
    });
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        format!("{prefix}webhook_forwarding_exchange").into(),
        "webhook.forward".into(),
        BasicPublishOptions::default(),
        again.to_string().as_bytes(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let dropped = eventually_within(Duration::from_secs(10), async || {
        let metrics = app.metrics().await;
        metrics
            .lines()
            .any(|l| l.starts_with("zen_deliveries_total{outcome=\"duplicate\"}"))
    })
    .await;
    assert!(dropped, "the second copy was not consumed");
    assert_eq!(rx.received("once").len(), 1);
    app.stop().await;
}
