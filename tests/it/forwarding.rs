//! Forwarding end to end, on the embedded queue and on RabbitMQ: a webhook
//! posted by a BSP reaches the client's endpoint (a real HTTP receiver),
//! signed both ways, with retries, DLQ and replay, Retry-After, 410
//! deactivation, circuit breakers and the SSRF guard.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::receiver::{Behavior, Receiver};

const BUSINESS: &str = "918071234567";

/// Which forwarding queue a test runs on: every end-to-end forwarding case
/// runs on both.
#[derive(Debug, Clone, Copy)]
enum Queue {
    Embedded,
    RabbitMq,
    /// RabbitMQ with `RABBITMQ_QUEUE_TYPE=quorum`: every queue (inbox,
    /// per-BSP, forwarding, retries, DLQ) a quorum queue.
    RabbitMqQuorum,
}

/// The gateway on `q` (its own queue names on the broker).
async fn spawn_on(q: Queue, tweak: impl FnOnce(&mut zen_gateway::config::Settings)) -> TestApp {
    match q {
        Queue::Embedded => spawn_app_with(tweak).await,
        Queue::RabbitMq | Queue::RabbitMqQuorum => spawn_app_on_rabbitmq(|s| {
            if matches!(q, Queue::RabbitMqQuorum) {
                s.rabbitmq.queue_type = zen_gateway::config::QueueType::Quorum;
            }
            tweak(s);
        })
        .await
        .expect("RabbitMQ"),
    }
}

/// `#[tokio::test]`s of a case on each queue: `<case>::embedded` and
/// `<case>::rabbitmq` (skipped without a broker, as other broker tests).
macro_rules! on_both_queues {
    ($case:ident) => {
        mod $case {
            #[tokio::test]
            async fn embedded() {
                super::$case(super::Queue::Embedded).await;
            }

            #[tokio::test]
            async fn rabbitmq() {
                if crate::services::rabbitmq_url().is_none() {
                    return;
                }
                super::$case(super::Queue::RabbitMq).await;
            }
        }
    };
}

/// [`on_both_queues`], plus `<case>::rabbitmq_quorum`: the case on quorum
/// queues (each a replicated Raft group, heavier for the broker than a
/// classic queue, so only the cases that cover the queue paths: delivery,
/// retries and the DLQ, fan-out).
macro_rules! on_every_queue {
    ($case:ident) => {
        mod $case {
            #[tokio::test]
            async fn embedded() {
                super::$case(super::Queue::Embedded).await;
            }

            #[tokio::test]
            async fn rabbitmq() {
                if crate::services::rabbitmq_url().is_none() {
                    return;
                }
                super::$case(super::Queue::RabbitMq).await;
            }

            #[tokio::test]
            async fn rabbitmq_quorum() {
                if crate::services::rabbitmq_url().is_none() {
                    return;
                }
                super::$case(super::Queue::RabbitMqQuorum).await;
            }
        }
    };
}

/// A gateway that may forward to loopback, with quick retries.
async fn app_fast_retries(q: Queue) -> TestApp {
    spawn_on(q, |s| {
        s.forward.allow_private = true;
        s.forward.retry_delays = "100,100".parse().unwrap();
    })
    .await
}

async fn create_webhook(app: &TestApp, body: Value) -> Value {
    app.create_webhook(body).await
}

async fn admin_get(app: &TestApp, path: &str) -> Value {
    app.admin_get(path).await
}

async fn wait_until(check: impl AsyncFnMut() -> bool) -> bool {
    eventually_within(Duration::from_secs(8), check).await
}

async fn a_delivery_reaches_the_client_signed_both_ways(q: Queue) {
    let app = app_fast_retries(q).await;
    let rx = Receiver::start().await;
    let hook = create_webhook(
        &app,
        json!({
            "project_owner_id": "owner-1",
            "webhook_url": rx.url("ok"),
            "topics": ["datagen.delivery"],
            "business_numbers": [BUSINESS],
        }),
    )
    .await;
    let secret = hook["shared_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    let whsec = hook["signing_secret"].as_str().unwrap().to_owned();
    assert!(whsec.starts_with("whsec_"));

    let body = fixture("datagen_delivered.json");
    assert_eq!(
        app.post_webhook("/webhook/datagen", body.clone())
            .await
            .status(),
        200
    );
    let got = rx.wait_for("ok", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.header("content-type"), "application/json");
    assert_eq!(req.header("x-event-type"), "datagen.delivery");
    assert_eq!(req.header("x-attempt-count"), "0");
    assert!(req.header("user-agent").starts_with("zen-gateway/"));
    // Legacy signature: hex HMAC-SHA256 of the body with the secret's bytes.
    let expected = zen_gateway::inbound_auth::hmac_sha256_hex(secret.as_bytes(), &req.body);
    assert_eq!(req.header("x-webhook-signature"), expected);
    // Standard Webhooks, checked by an independent implementation.
    let wh = standardwebhooks::Webhook::new(&whsec).unwrap();
    wh.verify(&req.body, &req.headers)
        .expect("standard webhooks signature");
    assert_eq!(req.header("webhook-id"), req.header("x-event-id"));

    let payload = req.json();
    let raw: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(payload["data"], raw);
    assert_eq!(payload["event_type"], "datagen.delivery");
    assert_eq!(payload["event_id"], req.header("x-event-id"));
    assert!(payload["timestamp"].is_i64());
    assert_eq!(payload["message"]["current_status"], "delivered");

    // The delivery log says so.
    let id = hook["id"].as_str().unwrap();
    let logs = admin_get(&app, &format!("/api/v1/webhooks/{id}/deliveries")).await;
    assert!(wait_until(async || admin_get(&app, &format!("/api/v1/webhooks/{id}/deliveries")).await[0]["status"] == "success").await, "{logs}");
    let logs = admin_get(&app, &format!("/api/v1/webhooks/{id}/deliveries")).await;
    assert_eq!(logs[0]["attempt_count"], 1);
    assert_eq!(logs[0]["status_code"], 200);
    assert_eq!(logs[0]["response_body"], "receiver says hi");
    app.stop().await;
}
on_every_queue!(a_delivery_reaches_the_client_signed_both_ways);

async fn failures_retry_then_succeed_and_exhausted_jobs_go_to_the_dlq_for_replay(q: Queue) {
    let app = app_fast_retries(q).await;
    let rx = Receiver::start().await;
    rx.set("flaky", Behavior::Sequence(vec![500, 200]));
    rx.set("down", Behavior::Status(503));
    for path in ["flaky", "down"] {
        create_webhook(
            &app,
            json!({
            "project_owner_id": "o", "webhook_url": rx.url(path),
            "topics": ["message.delivered"], "business_numbers": [BUSINESS]}),
        )
        .await;
    }
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    let flaky = rx.wait_for("flaky", 2, Duration::from_secs(10)).await;
    assert_eq!(flaky.len(), 2);
    assert_eq!(flaky[0].header("x-attempt-count"), "0");
    assert_eq!(flaky[1].header("x-attempt-count"), "1");
    // Same event id on every attempt, re-signed (the timestamp changes).
    assert_eq!(flaky[0].header("x-event-id"), flaky[1].header("x-event-id"));
    assert!(flaky[1].at.duration_since(flaky[0].at) >= Duration::from_millis(90));

    let down = rx.wait_for("down", 3, Duration::from_secs(10)).await;
    assert_eq!(down.len(), 3, "3 attempts in total");
    assert!(
        wait_until(async || admin_get(&app, "/api/v1/dlq")
            .await
            .as_array()
            .is_some_and(|d| d.len() == 1))
        .await
    );
    let dlq = admin_get(&app, "/api/v1/dlq").await;
    assert!(
        dlq[0]["reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{dlq}"
    );
    assert!(
        dlq[0]["job"].get("shared_secret").is_none(),
        "secrets never travel in jobs"
    );
    // Dead after its third attempt, and logged so: nothing is left to run.
    assert_eq!(rx.received("down").len(), 3, "no attempt after the DLQ");

    // Replay: fresh attempts.
    rx.set("down", Behavior::Status(200));
    let resp: Value = app
        .admin_send(reqwest::Method::POST, "/api/v1/dlq/replay", Some(json!({})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resp["replayed"], 1);
    let down = rx.wait_for("down", 4, Duration::from_secs(10)).await;
    assert_eq!(down[3].header("x-attempt-count"), "0");
    assert!(
        wait_until(async || admin_get(&app, "/api/v1/dlq")
            .await
            .as_array()
            .is_some_and(|d| d.is_empty()))
        .await
    );
    app.stop().await;
}
on_every_queue!(failures_retry_then_succeed_and_exhausted_jobs_go_to_the_dlq_for_replay);

async fn permanent_4xx_goes_to_the_dlq_at_once_and_410_deactivates_the_webhook(q: Queue) {
    let app = app_fast_retries(q).await;
    let rx = Receiver::start().await;
    rx.set("bad", Behavior::Status(400));
    rx.set("gone", Behavior::Status(410));
    let gone = create_webhook(
        &app,
        json!({"project_owner_id": "o", "webhook_url": rx.url("gone"),
        "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    create_webhook(
        &app,
        json!({"project_owner_id": "o", "webhook_url": rx.url("bad"),
        "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    assert!(
        wait_until(async || admin_get(&app, "/api/v1/dlq")
            .await
            .as_array()
            .is_some_and(|d| d.len() == 2))
        .await
    );
    // Nothing is left to run: each got its one attempt.
    app.quiesce().await;
    assert_eq!(rx.received("bad").len(), 1);
    assert_eq!(rx.received("gone").len(), 1);
    let id = gone["id"].as_str().unwrap();
    let hook = admin_get(&app, &format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(hook["active"], false);
    // An inactive webhook gets nothing more.
    app.post_webhook(
        "/webhook/datagen",
        datagen_status("wamid.after-gone", "read", 1),
    )
    .await;
    rx.wait_for("bad", 2, Duration::from_secs(5)).await;
    assert_eq!(rx.received("gone").len(), 1);
    app.stop().await;
}
on_both_queues!(permanent_4xx_goes_to_the_dlq_at_once_and_410_deactivates_the_webhook);

async fn retry_after_is_honoured(q: Queue) {
    let app = spawn_on(q, |s| {
        s.forward.allow_private = true;
        s.forward.retry_delays = "50".parse().unwrap();
    })
    .await;
    let rx = Receiver::start().await;
    rx.set("busy", Behavior::RetryAfter(429, 1));
    create_webhook(
        &app,
        json!({"project_owner_id": "o", "webhook_url": rx.url("busy"),
        "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    let got = rx.wait_for("busy", 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(950));
    app.stop().await;
}
on_both_queues!(retry_after_is_honoured);

async fn a_dead_endpoint_opens_its_circuit_without_slowing_a_healthy_one(q: Queue) {
    let app = spawn_on(q, |s| {
        s.forward.allow_private = true;
        s.forward.retry_delays = "100,100".parse().unwrap();
        s.forward.breaker_threshold = 3;
        s.forward.breaker_cooldown = std::time::Duration::from_secs(1);
        s.forward.timeout = std::time::Duration::from_millis(500);
        s.forward.concurrency = 8;
    })
    .await;
    let rx = Receiver::start().await;
    rx.set("dead", Behavior::Hang(Duration::from_secs(5)));
    let mut dead_id = String::new();
    for path in ["dead", "healthy"] {
        let hook = create_webhook(
            &app,
            json!({"project_owner_id": "o", "webhook_url": rx.url(path),
            "topics": ["*"], "business_numbers": [BUSINESS]}),
        )
        .await;
        if path == "dead" {
            dead_id = hook["id"].as_str().unwrap().to_owned();
        }
    }
    let started = std::time::Instant::now();
    for i in 0..20 {
        app.post_webhook(
            "/webhook/datagen",
            datagen_status(&format!("wamid.cb-{i}"), "sent", i),
        )
        .await;
    }
    let healthy = rx.wait_for("healthy", 20, Duration::from_secs(10)).await;
    assert_eq!(healthy.len(), 20);
    let healthy_took = started.elapsed();
    // The dead URL's circuit opened: far fewer than 20 × 3 attempts reached it.
    let dead_calls = rx.received("dead").len();
    assert!(dead_calls < 20, "breaker did not open: {dead_calls} calls");
    // The slot cap alone would also keep that count low: check the circuit
    // itself opened, i.e. jobs were parked behind it.
    let deliveries = format!("/api/v1/webhooks/{dead_id}/deliveries?limit=500");
    assert!(
        wait_until(async || {
            admin_get(&app, &deliveries)
                .await
                .as_array()
                .is_some_and(|logs| {
                    logs.iter().any(|l| {
                        l["error_message"]
                            .as_str()
                            .is_some_and(|e| e.contains("circuit open"))
                    })
                })
        })
        .await,
        "no job was parked behind an open circuit"
    );
    eprintln!(
        "healthy endpoint: 20 deliveries in {healthy_took:?}; dead endpoint saw {dead_calls} calls"
    );

    // It recovers: one probe after the cool-down, then everything flows.
    rx.set("dead", Behavior::Status(200));
    let recovered = rx
        .wait_for("dead", dead_calls + 20, Duration::from_secs(20))
        .await;
    assert!(
        recovered.len() >= dead_calls + 20,
        "parked jobs were not delivered after recovery"
    );
    assert!(
        admin_get(&app, "/api/v1/dlq")
            .await
            .as_array()
            .unwrap()
            .is_empty(),
        "parked jobs keep their attempts"
    );
    app.stop().await;
}
on_both_queues!(a_dead_endpoint_opens_its_circuit_without_slowing_a_healthy_one);

async fn private_targets_are_refused_unless_allowed(q: Queue) {
    let app = spawn_on(q, |_| {}).await; // FORWARD_ALLOW_PRIVATE unset
    let rx = Receiver::start().await;
    create_webhook(
        &app,
        json!({"project_owner_id": "o", "webhook_url": rx.url("internal"),
        "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    create_webhook(
        &app,
        json!({"project_owner_id": "o", "webhook_url": "http://localhost:9/x",
        "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    assert!(
        wait_until(async || admin_get(&app, "/api/v1/dlq")
            .await
            .as_array()
            .is_some_and(|d| d.len() == 2))
        .await
    );
    let dlq = admin_get(&app, "/api/v1/dlq").await;
    for d in dlq.as_array().unwrap() {
        let reason = d["reason"].as_str().unwrap();
        assert!(reason.contains("refused to forward"), "{d}");
        // Refused at once (literal address or at DNS), not retried.
        assert!(!reason.contains("gave up after"), "{d}");
    }
    assert!(rx.received("internal").is_empty());
    app.stop().await;
}
on_both_queues!(private_targets_are_refused_unless_allowed);

async fn fan_out_reaches_every_matching_webhook_and_duplicates_are_forwarded_once(q: Queue) {
    let app = app_fast_retries(q).await;
    let rx = Receiver::start().await;
    create_webhook(&app, json!({"project_owner_id": "owner-F", "webhook_url": rx.url("a"), "topics": ["message.read"]})).await;
    create_webhook(&app, json!({"project_owner_id": "owner-F", "webhook_url": rx.url("b"), "topics": ["datagen.delivery"]})).await;
    create_webhook(
        &app,
        json!({"project_owner_id": "someone-else", "webhook_url": rx.url("c"),
        "topics": ["*"], "business_numbers": ["+91 80712 34567"]}),
    )
    .await;
    create_webhook(&app, json!({"project_owner_id": "owner-F", "webhook_url": rx.url("no-topic"), "topics": ["message.failed"]})).await;
    // The owner comes from the registered message.
    app.admin_send(
        reqwest::Method::POST,
        "/api/v1/messages",
        Some(json!({"bsp": "datagen", "wamid": "wamid.fan", "project_owner_id": "owner-F"})),
    )
    .await;
    let event = datagen_status("wamid.fan", "read", 5);
    for _ in 0..3 {
        assert_eq!(
            app.post_webhook("/webhook/datagen", event.clone())
                .await
                .status(),
            200
        );
    }
    for path in ["a", "b", "c"] {
        rx.wait_for(path, 1, Duration::from_secs(10)).await;
    }
    // Every post processed: the duplicates made no delivery of their own
    // (fan-out writes a delivery log per delivery before the inbox entry
    // is acked).
    app.barrier().await;
    let hooks = admin_get(&app, "/api/v1/webhooks?project_owner_id=owner-F").await;
    for hook in hooks.as_array().unwrap() {
        let id = hook["id"].as_str().unwrap();
        let logs = admin_get(&app, &format!("/api/v1/webhooks/{id}/deliveries")).await;
        let expected = usize::from(hook["topics"] != json!(["message.failed"]));
        assert_eq!(logs.as_array().unwrap().len(), expected, "{hook}");
    }
    assert_eq!(rx.received("a").len(), 1);
    assert_eq!(rx.received("a")[0].header("x-event-type"), "message.read");
    assert_eq!(rx.received("b").len(), 1);
    assert_eq!(
        rx.received("b")[0].header("x-event-type"),
        "datagen.delivery"
    );
    assert_eq!(rx.received("c").len(), 1);
    assert!(rx.received("no-topic").is_empty());
    app.stop().await;
}
on_every_queue!(fan_out_reaches_every_matching_webhook_and_duplicates_are_forwarded_once);

#[tokio::test]
async fn webhook_admin_api() {
    let app = app_fast_retries(Queue::Embedded).await;
    let rx = Receiver::start().await;
    let bad = app
        .admin_send(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(json!({"project_owner_id": "o", "webhook_url": "ftp://x"})),
        )
        .await;
    assert_eq!(bad.status(), 422);
    assert!(
        bad.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .starts_with("webhook_url")
    );

    let hook = create_webhook(
        &app,
        json!({"project_owner_id": "o-admin", "webhook_url": rx.url("t")}),
    )
    .await;
    assert_eq!(
        hook["topics"],
        json!(["datagen.delivery"]),
        "legacy default subscription"
    );
    let id = hook["id"].as_str().unwrap().to_owned();
    let listed = admin_get(&app, "/api/v1/webhooks?project_owner_id=o-admin").await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["shared_secret"], "", "secrets are not listed");
    assert_eq!(listed[0]["auth_enabled"], true);

    let patched: Value = app
        .admin_send(
            reqwest::Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            Some(json!({"topics": ["*"]})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(patched["topics"], json!(["*"]));
    assert_eq!(patched["auth_enabled"], true, "an update leaves signing on");

    let rotated: Value = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(rotated["shared_secret"], hook["shared_secret"]);

    let tested: Value = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/api/v1/webhooks/{id}/test"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tested["success"], true, "{tested}");
    let got = rx.wait_for("t", 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].header("x-event-type"), "test.webhook");
    let sig = zen_gateway::inbound_auth::hmac_sha256_hex(
        rotated["shared_secret"].as_str().unwrap().as_bytes(),
        &got[0].body,
    );
    assert_eq!(
        got[0].header("x-webhook-signature"),
        sig,
        "signed with the rotated secret"
    );

    let deleted = app
        .admin_send(
            reqwest::Method::DELETE,
            &format!("/api/v1/webhooks/{id}"),
            None,
        )
        .await;
    assert_eq!(deleted.status(), 200);
    let gone = app
        .admin_send(
            reqwest::Method::GET,
            &format!("/api/v1/webhooks/{id}"),
            None,
        )
        .await;
    assert_eq!(gone.status(), 404);
    let unauth = app
        .client
        .get(app.url("/api/v1/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn on_mongodb_the_owner_comes_from_projects_and_logs_are_legacy_documents() {
    let Some(uri) = crate::services::mongo_uri() else {
        return;
    };
    let db_name = crate::services::unique_db_name();
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    let db = client.database(&db_name);
    db.collection::<bson::Document>("projects")
        .insert_one(bson::doc! {"_id": bson::oid::ObjectId::new(), "wa_number": BUSINESS, "project_owner_id": "owner-M"})
        .await
        .unwrap();
    let app = spawn_app_with(|s| {
        s.forward.allow_private = true;
        s.backends.mongo_uri = Some(zen_gateway::config::SecretUrl::new(uri.clone()));
        s.backends.database_name = db_name.clone();
    })
    .await;
    let rx = Receiver::start().await;
    let hook = create_webhook(
        &app,
        json!({"project_owner_id": "owner-M", "webhook_url": rx.url("m"),
        "topics": ["datagen.delivery"]}),
    )
    .await;
    // No registration: the business number leads to the owner.
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    let got = rx.wait_for("m", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let id = hook["id"].as_str().unwrap();
    let stored = db
        .collection::<bson::Document>("webhooks")
        .find_one(bson::doc! {"_id": id})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_str("project_owner_id").unwrap(), "owner-M");
    let logs = db.collection::<bson::Document>("webhook_delivery_logs");
    let mut log = None;
    let ok = wait_until(async || {
        log = logs.find_one(bson::doc! {"webhook_id": id}).await.unwrap();
        log.as_ref()
            .is_some_and(|l| l.get_str("status").unwrap() == "success")
    })
    .await;
    assert!(ok, "delivery log not updated to success");
    let log = log.unwrap();
    assert_eq!(log.get_i32("attempt_count").unwrap(), 1);
    assert_eq!(log.get_i32("status_code").unwrap(), 200);
    app.stop().await;
    db.drop().await.unwrap();
}

async fn refused_connections_are_retried_then_dead_lettered(q: Queue) {
    let app = app_fast_retries(q).await;
    // Nothing listens there.
    let closed = format!("http://127.0.0.1:{}/hook", free_port());
    create_webhook(
        &app,
        json!({"project_owner_id": "o", "webhook_url": closed,
        "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    assert!(
        wait_until(async || admin_get(&app, "/api/v1/dlq")
            .await
            .as_array()
            .is_some_and(|d| d.len() == 1))
        .await
    );
    let dlq = admin_get(&app, "/api/v1/dlq").await;
    assert!(
        dlq[0]["reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{dlq}"
    );
    app.stop().await;
}
on_both_queues!(refused_connections_are_retried_then_dead_lettered);

#[tokio::test]
async fn webhook_changes_take_effect_at_once_despite_the_cache() {
    let app = app_fast_retries(Queue::Embedded).await;
    let rx = Receiver::start().await;
    let hook = create_webhook(
        &app,
        json!({"project_owner_id": "o", "webhook_url": rx.url("c"),
        "topics": ["message.failed"], "business_numbers": [BUSINESS]}),
    )
    .await;
    app.post_webhook(
        "/webhook/datagen",
        datagen_status("wamid.cache-1", "read", 1),
    )
    .await;
    app.wait_for_message("wamid.cache-1", |m| m["current_status"] == "read")
        .await;
    let id = hook["id"].as_str().unwrap();
    app.admin_send(
        reqwest::Method::PATCH,
        &format!("/api/v1/webhooks/{id}"),
        Some(json!({"topics": ["message.read"]})),
    )
    .await;
    app.post_webhook(
        "/webhook/datagen",
        datagen_status("wamid.cache-2", "read", 2),
    )
    .await;
    // The new topic applies at once: the read of cache-2 is delivered. (The
    // record of cache-1 is visible before its fan-out ran, so under load
    // cache-1 may be matched after the change too: not asserted.)
    let delivered = eventually_within(Duration::from_secs(10), async || {
        rx.received("c")
            .iter()
            .any(|r| r.json()["message"]["wamid"] == "wamid.cache-2")
    })
    .await;
    assert!(delivered);
    app.stop().await;
}

/// `zen-gateway dlq list|replay` on the embedded database, beside the
/// running gateway that then delivers the replayed job.
#[tokio::test]
async fn the_dlq_command_lists_and_replays_beside_a_running_gateway() {
    let app = app_fast_retries(Queue::Embedded).await;
    let rx = Receiver::start().await;
    rx.set("refuses", Behavior::Status(400));
    create_webhook(
        &app,
        json!({"project_owner_id": "o", "webhook_url": rx.url("refuses"),
        "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    assert!(
        wait_until(async || admin_get(&app, "/api/v1/dlq")
            .await
            .as_array()
            .is_some_and(|d| d.len() == 1))
        .await
    );
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zen-gateway"))
            .args(args)
            .env_clear()
            .env("DATA_DIR", &app.data_dir)
            .env("KEYS_JSON", "/nonexistent/Keys.json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let listed = cli(&["dlq", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(
        listed[0]["reason"].as_str().unwrap().contains("400"),
        "{listed}"
    );

    // Without ids or --all, nothing is replayed by accident.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_zen-gateway"))
        .args(["dlq", "replay"])
        .env_clear()
        .env("DATA_DIR", &app.data_dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());

    rx.set("refuses", Behavior::Status(200));
    let replayed = cli(&["dlq", "replay", "--all"]);
    assert_eq!(replayed["replayed"], 1);
    assert_eq!(cli(&["dlq", "list"]).as_array().unwrap().len(), 0);
    rx.wait_for("refuses", 2, Duration::from_secs(10)).await;
    assert_eq!(rx.received("refuses").len(), 2);
    app.stop().await;
}

/// `HTTP_PROXY` in the environment is not used: the SSRF guard must see the
/// target's own address. With `FORWARD_PROXY` set, deliveries go through it
/// and the guard still checks the target (here a private one, refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_from_the_environment_are_ignored_and_forward_proxy_targets_are_checked() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A "proxy" that only counts who connects to it.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let proxied = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let proxied = proxied.clone();
        async move {
            while let Ok((_conn, _)) = proxy.accept().await {
                proxied.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_gateway_process(
        dir.path(),
        port,
        &[
            ("FORWARD_ALLOW_PRIVATE", "true"),
            ("HTTP_PROXY", proxy_url.as_str()),
            ("http_proxy", proxy_url.as_str()),
            ("ALL_PROXY", proxy_url.as_str()),
        ],
        None,
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_until_ok(&client, &format!("{base}/health")).await;
    create_webhook_at(
        &client,
        &base,
        json!({"project_owner_id": "o", "webhook_url": rx.url("direct"),
               "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    client
        .post(format!("{base}/webhook/datagen"))
        .body(fixture("datagen_delivered.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        rx.wait_for("direct", 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    assert_eq!(
        proxied.load(Ordering::Relaxed),
        0,
        "the delivery went through HTTP_PROXY"
    );
    let _ = child.kill();
    let _ = child.wait();

    // FORWARD_PROXY set, private targets not allowed: the target is checked
    // before the proxy is asked, so nothing reaches the proxy.
    let app = spawn_app_with(|s| {
        s.forward.proxy = Some(zen_gateway::config::SecretUrl::new(proxy_url.clone()))
    })
    .await;
    create_webhook(
        &app,
        json!({"project_owner_id": "o", "webhook_url": "http://localhost:9/x",
        "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    assert!(
        wait_until(async || admin_get(&app, "/api/v1/dlq")
            .await
            .as_array()
            .is_some_and(|d| d.len() == 1))
        .await
    );
    let dlq = admin_get(&app, "/api/v1/dlq").await;
    assert!(
        dlq[0]["reason"]
            .as_str()
            .unwrap()
            .contains("non-public address"),
        "{dlq}"
    );
    assert_eq!(proxied.load(Ordering::Relaxed), 0);
    app.stop().await;
}

/// Twilio's signature as its helper libraries compute it: base64
/// HMAC-SHA1 over the URL followed by each sorted parameter's name and value.
fn twilio_signature(token: &str, url: &str, form: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    let mut params: Vec<(String, String)> = url::form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    params.sort();
    let mut data = url.to_owned();
    for (k, v) in params {
        data += &k;
        data += &v;
    }
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Gupshup and Twilio webhooks, posted as those BSPs send them, end on the
/// right records and are forwarded under their legacy-style topics and the
/// unified ones; Twilio's answer is TwiML and its signature is checked
/// against the public URL.
async fn new_providers_are_stored_and_forwarded(q: Queue) {
    const PUBLIC: &str = "https://gw.example.com";
    let app = spawn_on(q, |s| {
        s.forward.allow_private = true;
        s.forward.retry_delays = "100,100".parse().unwrap();
        s.http.public_base_url = Some(PUBLIC.into());
        s.inbound.insert(
            zen_gateway::model::Bsp::Twilio,
            zen_gateway::inbound_auth::InboundCredentials {
                secret: Some("twilio-token".into()),
                ..Default::default()
            },
        );
        // The others post unsigned here: named open beside verified Twilio.
        s.access.inbound_open_routes = zen_gateway::model::Bsp::ALL
            .into_iter()
            .filter(|b| *b != zen_gateway::model::Bsp::Twilio)
            .collect();
    })
    .await;
    let rx = Receiver::start().await;
    for (path, topics) in [
        (
            "legacy",
            json!(["gupshup.message-event", "twilio.status", "360dialog.status"]),
        ),
        ("unified", json!(["message.delivered", "message.failed"])),
    ] {
        create_webhook(
            &app,
            json!({"project_owner_id": "owner-new", "webhook_url": rx.url(path), "topics": topics}),
        )
        .await;
    }
    // The sender registers what it sent (Gupshup's and Twilio's ids).
    for (bsp, key, id) in [
        (
            "gupshup",
            "bsp_message_id",
            "ee4a68a0-1203-4c85-8dc3-49d0b3226a35",
        ),
        (
            "twilio",
            "bsp_message_id",
            "SM0123456789abcdef0123456789abcdef",
        ),
        (
            "360dialog",
            "wamid",
            "wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSM0VCMEE4QzdGNEQyRTlBMUIwAA==",
        ),
    ] {
        let resp = app
            .admin_send(
                reqwest::Method::POST,
                "/api/v1/messages",
                Some(json!({"bsp": bsp, key: id, "project_owner_id": "owner-new"})),
            )
            .await;
        assert_eq!(resp.status(), 201);
    }
    for name in ["gupshup_v2_sent.json", "gupshup_v2_delivered.json"] {
        assert_eq!(
            app.post_webhook("/webhook/gupshup", fixture(name))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        app.post_webhook("/webhook/360dialog", fixture("meta_status_sent.json"))
            .await
            .status(),
        200
    );
    let form = fixture("twilio_status_delivered.txt");
    let post_twilio = |sig: String| {
        app.client
            .post(app.url("/webhook/twilio?tenant=a"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sig)
            .body(form.clone())
            .send()
    };
    let bad = post_twilio(twilio_signature("twilio-token", PUBLIC, &form))
        .await
        .unwrap();
    assert_eq!(bad.status(), 401, "the URL signed must include the path");
    let url = format!("{PUBLIC}/webhook/twilio?tenant=a");
    let ok = post_twilio(twilio_signature("twilio-token", &url, &form))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        ok.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    assert!(ok.text().await.unwrap().contains("<Response>"));

    let gupshup = app
        .wait_for_message("gBEGkYaYVSEEAgnZxQ3JmKK6Wvg", |m| {
            m["current_status"] == "delivered"
        })
        .await;
    assert_eq!(
        gupshup["bsp_message_id"],
        "ee4a68a0-1203-4c85-8dc3-49d0b3226a35"
    );
    assert_eq!(gupshup["delivered_at"], "2025-06-10T07:20:03Z");
    let twilio = app
        .wait_for_message("SM0123456789abcdef0123456789abcdef", |m| {
            m["current_status"] == "delivered"
        })
        .await;
    assert_eq!(twilio["phone_number"], "919800000007");

    let legacy = rx.wait_for("legacy", 4, Duration::from_secs(10)).await;
    let mut types: Vec<String> = legacy.iter().map(|r| r.header("x-event-type")).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "360dialog.status",
            "gupshup.message-event",
            "gupshup.message-event",
            "twilio.status"
        ]
    );
    let unified = rx.wait_for("unified", 2, Duration::from_secs(10)).await;
    assert!(
        unified
            .iter()
            .all(|r| r.header("x-event-type") == "message.delivered")
    );
    let twilio_payload = legacy
        .iter()
        .find(|r| r.header("x-event-type") == "twilio.status")
        .unwrap()
        .json();
    assert_eq!(twilio_payload["data"]["MessageStatus"], "delivered");
    app.stop().await;
}

on_both_queues!(new_providers_are_stored_and_forwarded);

/// A webhook's own `timeout_ms` replaces the global attempt budget (15 s
/// here): a hanging endpoint's attempt ends after it, with a timeout.
async fn a_webhooks_own_timeout_replaces_the_global_one(q: Queue) {
    let app = spawn_on(q, |s| {
        s.forward.allow_private = true;
        s.forward.retry_delays = "60000".parse().unwrap();
        s.forward.timeout = Duration::from_secs(15);
    })
    .await;
    let rx = Receiver::start().await;
    rx.set("slow", Behavior::Hang(Duration::from_secs(30)));
    // Out of range: refused, naming the field.
    let resp = app
        .admin_send(reqwest::Method::POST, "/api/v1/webhooks", Some(json!({"project_owner_id": "owner-t", "webhook_url": rx.url("slow"), "timeout_ms": 5}),))
        .await;
    assert_eq!(resp.status(), 422);
    assert!(resp.text().await.unwrap().contains("timeout_ms"));
    let hook = create_webhook(
        &app,
        json!({
            "project_owner_id": "owner-t",
            "webhook_url": rx.url("slow"),
            "topics": ["datagen.delivery"],
            "business_numbers": [BUSINESS],
            "timeout_ms": 300,
            "max_in_flight": 2,
        }),
    )
    .await;
    assert_eq!(hook["timeout_ms"], 300);
    assert_eq!(hook["max_in_flight"], 2);
    let started = std::time::Instant::now();
    assert_eq!(
        app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
            .await
            .status(),
        200
    );
    let id = hook["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/webhooks/{id}/deliveries");
    assert!(
        wait_until(async || admin_get(&app, &path).await[0]["status"] == "retrying").await,
        "{}",
        admin_get(&app, &path).await
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let log = admin_get(&app, &path).await;
    let error = log[0]["error_message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(error.contains("time"), "{log}");
    app.stop().await;
}

on_both_queues!(a_webhooks_own_timeout_replaces_the_global_one);

/// A webhook deactivated by a 410 is reported to the operators' own
/// webhook as `endpoint.disabled`, signed like any delivery.
async fn a_deactivated_endpoint_is_reported_to_operations(q: Queue) {
    let rx = Receiver::start().await;
    rx.set("gone", Behavior::Status(410));
    let ops_url = rx.url("ops");
    let app = spawn_on(q, |s| {
        s.forward.allow_private = true;
        s.forward.retry_delays = "100,100".parse().unwrap();
        s.forward.operations_webhook_url = Some(zen_gateway::config::SecretUrl::new(ops_url));
        s.forward.operations_webhook_secret = Some("ops-secret".into());
    })
    .await;
    let gone = create_webhook(
        &app,
        json!({"project_owner_id": "owner-ops", "webhook_url": rx.url("gone"),
        "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    let got = rx.wait_for("ops", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let event = &got[0];
    assert_eq!(event.header("x-event-type"), "endpoint.disabled");
    let expected = zen_gateway::inbound_auth::hmac_sha256_hex(b"ops-secret", &event.body);
    assert_eq!(event.header("x-webhook-signature"), expected);
    let payload = event.json();
    assert_eq!(payload["data"]["webhook_id"], gone["id"]);
    assert_eq!(payload["data"]["project_owner_id"], "owner-ops");
    assert_eq!(payload["data"]["reason"], "410 Gone");
    app.stop().await;
}

on_both_queues!(a_deactivated_endpoint_is_reported_to_operations);

/// An endpoint that keeps failing, its circuit open, is reported once as
/// `endpoint.failing` to the operators' webhook.
async fn a_failing_endpoint_is_reported_to_operations(q: Queue) {
    let rx = Receiver::start().await;
    rx.set("down", Behavior::Status(503));
    let ops_url = rx.url("ops");
    let app = spawn_on(q, |s| {
        s.forward.allow_private = true;
        s.forward.retry_delays = "50,50,50,50".parse().unwrap();
        s.forward.breaker_threshold = 2;
        s.forward.breaker_cooldown = Duration::from_secs(1);
        s.forward.endpoint_failing_after = Duration::from_millis(1);
        s.forward.operations_webhook_url = Some(zen_gateway::config::SecretUrl::new(ops_url));
    })
    .await;
    let hook = create_webhook(
        &app,
        json!({"project_owner_id": "owner-down", "webhook_url": rx.url("down"),
        "topics": ["*"], "business_numbers": [BUSINESS]}),
    )
    .await;
    for i in 0..3 {
        app.post_webhook(
            "/webhook/datagen",
            datagen_status(&format!("wamid.down-{i}"), "sent", 1 + i),
        )
        .await;
    }
    let got = rx.wait_for("ops", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("x-event-type"), "endpoint.failing");
    let payload = got[0].json();
    assert_eq!(payload["data"]["webhook_id"], hook["id"]);
    assert_eq!(payload["data"]["project_owner_id"], "owner-down");
    // Once per run of failures: every delivery to the failing endpoint has
    // run into its open circuit since, and none raised another report.
    let id = hook["id"].as_str().unwrap();
    let settled = wait_until(async || {
        admin_get(&app, &format!("/api/v1/webhooks/{id}/deliveries"))
            .await
            .as_array()
            .is_some_and(|l| l.len() == 3 && l.iter().all(|d| d["status"] != "pending"))
    })
    .await;
    assert!(settled);
    // A second report, were one raised by then, would be on its way: give
    // it the time one delivery takes here, and none may come.
    let reports = rx.wait_for("ops", 2, Duration::from_millis(500)).await;
    assert_eq!(reports.len(), 1);
    app.stop().await;
}

on_both_queues!(a_failing_endpoint_is_reported_to_operations);

/// A user's marketing opt-out (Meta's `user_preferences`) reaches a webhook
/// subscribed to `contact.marketing_preference` for that business number.
async fn a_marketing_preference_is_forwarded_as_its_own_event(q: Queue) {
    let app = app_fast_retries(q).await;
    let rx = Receiver::start().await;
    create_webhook(
        &app,
        json!({
            "project_owner_id": "owner-1",
            "webhook_url": rx.url("prefs"),
            "topics": ["contact.marketing_preference"],
            "business_numbers": [BUSINESS],
        }),
    )
    .await;
    let body = fixture("meta_user_preferences.json");
    assert_eq!(app.post_webhook("/webhook/meta", body).await.status(), 200);
    let got = rx.wait_for("prefs", 1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].header("x-event-type"),
        "contact.marketing_preference"
    );
    let payload = got[0].json();
    assert_eq!(payload["data"]["value"], "stop");
    assert_eq!(payload["data"]["user_id"], "IN.1502576394655843");
    app.stop().await;
}
on_both_queues!(a_marketing_preference_is_forwarded_as_its_own_event);

/// A webhook's payload filter: only failures with a given error code reach
/// it; the rest are counted as filtered; a bad filter is a 422 naming it.
async fn a_filter_delivers_only_what_it_matches(q: Queue) {
    let app = app_fast_retries(q).await;
    let rx = Receiver::start().await;
    let resp = app
        .admin_send(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(
                json!({"project_owner_id": "owner-1", "webhook_url": rx.url("x"),
            "topics": ["*"], "filter": {"data": {"status": {"$like": "x"}}}}),
            ),
        )
        .await;
    assert_eq!(resp.status(), 422);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("filter: unknown operator $like"),
        "{err}"
    );

    let hook = create_webhook(
        &app,
        json!({
            "project_owner_id": "owner-1",
            "webhook_url": rx.url("failures"),
            "topics": ["*"],
            "business_numbers": [BUSINESS],
            "filter": {"event_type": "message.failed", "data.errors.0.code": {"$in": [131026, 131047]}},
        }),
    )
    .await;
    assert_eq!(hook["filter"]["event_type"], "message.failed");
    for f in ["meta_status_sent.json", "meta_status_failed.json"] {
        assert_eq!(
            app.post_webhook("/webhook/meta", fixture(f)).await.status(),
            200
        );
    }
    let got = rx.wait_for("failures", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["event_type"], "message.failed");
    app.barrier().await;
    app.quiesce().await;
    assert_eq!(
        rx.received("failures").len(),
        1,
        "the sent status was filtered out"
    );
    let metrics = app.metrics().await;
    let id = hook["id"].as_str().unwrap();
    assert!(
        metrics.contains(&format!(
            "zen_forward_filtered_total{{webhook_id=\"{id}\"}}"
        )),
        "the filtered event is counted"
    );

    // `{}` removes the filter.
    let changed = app
        .admin_send(
            reqwest::Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            Some(json!({"filter": {}})),
        )
        .await;
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert!(changed.get("filter").is_none(), "{changed}");
    app.stop().await;
}
on_both_queues!(a_filter_delivers_only_what_it_matches);

/// Rotating a secret with a grace window: deliveries carry a signature by
/// the new secret and one by the old, each verified by the Standard
/// Webhooks library; the legacy header uses the new secret; a rotation
/// with grace 0 retires the old one at once; the window is bounded.
async fn a_rotated_secret_keeps_signing_through_its_grace_window(q: Queue) {
    let app = app_fast_retries(q).await;
    let rx = Receiver::start().await;
    let hook = create_webhook(
        &app,
        json!({"project_owner_id": "owner-1", "webhook_url": rx.url("r"),
            "topics": ["datagen.delivery"], "business_numbers": [BUSINESS]}),
    )
    .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    let rotate = |body: Value| {
        let app = &app;
        let id = id.clone();
        async move {
            app.client
                .post(app.url(&format!("/api/v1/webhooks/{id}/rotate-secret")))
                .bearer_auth(ADMIN_KEY)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let too_long = rotate(json!({"grace_period_seconds": 604_801})).await;
    assert_eq!(too_long.status(), 422);
    let err: Value = too_long.json().await.unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("grace_period_seconds"),
        "{err}"
    );

    let rotated: Value = rotate(json!({"grace_period_seconds": 3600}))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        rotated.get("previous_secret").is_none(),
        "never shown: {rotated}"
    );
    assert!(rotated["previous_secret_expires_at"].is_i64(), "{rotated}");
    let (old, new) = (
        hook["signing_secret"].as_str().unwrap().to_owned(),
        rotated["signing_secret"].as_str().unwrap().to_owned(),
    );
    assert_ne!(old, new);
    app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    let got = rx.wait_for("r", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
    for secret in [&old, &new] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&got[0].body, &got[0].headers)
            .expect("each secret verifies during the grace window");
    }
    let legacy = zen_gateway::inbound_auth::hmac_sha256_hex(
        rotated["shared_secret"].as_str().unwrap().as_bytes(),
        &got[0].body,
    );
    assert_eq!(
        got[0].header("x-webhook-signature"),
        legacy,
        "the legacy header: the new secret"
    );

    // Grace 0: the secret before this rotation no longer signs.
    let retired: Value = rotate(json!({"grace_period_seconds": 0}))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        retired.get("previous_secret_expires_at").is_none(),
        "{retired}"
    );
    let newest = retired["signing_secret"].as_str().unwrap().to_owned();
    app.post_webhook(
        "/webhook/datagen",
        datagen_status("wamid.rotated-2", "delivered", 5),
    )
    .await;
    let got = rx.wait_for("r", 2, Duration::from_secs(10)).await;
    let last = &got[1];
    assert_eq!(last.header("webhook-signature").split(' ').count(), 1);
    standardwebhooks::Webhook::new(&newest)
        .unwrap()
        .verify(&last.body, &last.headers)
        .expect("the newest secret verifies");
    assert!(
        standardwebhooks::Webhook::new(&new)
            .unwrap()
            .verify(&last.body, &last.headers)
            .is_err(),
        "the retired secret does not"
    );
    app.stop().await;
}
on_both_queues!(a_rotated_secret_keeps_signing_through_its_grace_window);

/// Each replica keeps a webhook it read for a few seconds. An edit on one
/// replica, from that copy, used to write the whole copy back: a rotation
/// made meanwhile on another replica was undone, and every delivery was
/// signed again with the secret the client had just replaced. A change is
/// now written only over the version it read, else made again on a fresh
/// read.
#[tokio::test]
async fn an_edit_on_one_replica_keeps_a_rotation_made_on_another() {
    let Some(uri) = crate::services::mongo_uri() else {
        return;
    };
    let name = crate::services::unique_db_name();
    let on_mongo = |s: &mut zen_gateway::config::Settings| {
        s.backends.mongo_uri = Some(zen_gateway::config::SecretUrl::new(uri.clone()));
        s.backends.database_name = name.clone();
        s.forward.allow_private = true;
    };
    let a = spawn_app_with(on_mongo).await;
    let b = spawn_app_with(on_mongo).await;
    let rx = Receiver::start().await;
    let hook = create_webhook(
        &a,
        json!({"project_owner_id": "o", "webhook_url": rx.url("r"),
            "topics": ["datagen.delivery"], "business_numbers": [BUSINESS]}),
    )
    .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    // Replica A holds a copy.
    assert_eq!(
        admin_get(&a, &format!("/api/v1/webhooks/{id}")).await["id"],
        id.as_str()
    );
    // Replica B rotates; then A edits.
    let rotated: Value = b
        .admin_send(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let patched = a
        .admin_send(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            Some(json!({"topics": ["*"]})),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let tested: Value = b
        .admin_send(Method::POST, &format!("/api/v1/webhooks/{id}/test"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tested["success"], true, "{tested}");
    let got = rx.wait_for("r", 1, Duration::from_secs(10)).await;
    let signed_by = |secret: &Value| {
        zen_gateway::inbound_auth::hmac_sha256_hex(
            secret.as_str().unwrap().as_bytes(),
            &got[0].body,
        )
    };
    assert_ne!(
        got[0].header("x-webhook-signature"),
        signed_by(&hook["shared_secret"]),
        "the rotation was undone by the edit"
    );
    assert_eq!(
        got[0].header("x-webhook-signature"),
        signed_by(&rotated["shared_secret"])
    );
    let now = admin_get(&b, &format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(now["topics"], json!(["*"]), "the edit landed too");
    a.stop().await;
    b.stop().await;
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    client.database(&name).drop().await.unwrap();
}
