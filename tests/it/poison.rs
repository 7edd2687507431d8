//! Hostile and quirky input cannot stop the pipeline: after each poison
//! input, a normal webhook posted next is stored, and the poison entry is
//! applied or in the quarantine with its error, where it can be replayed.

use serde_json::{Value, json};

use crate::helpers::*;

fn aisensy_status(wamid: Option<&str>, id: Option<&str>, status: &str, at_ms: i64) -> String {
    let mut message = json!({
        "type": "message",
        "phone_number": "919876543210",
        "sender": "BUSINESS",
        "status": status,
        "sent_at": at_ms,
        "delivered_at": at_ms,
        "read_at": at_ms,
    });
    if let Some(w) = wamid {
        message["messageId"] = json!(w);
    }
    if let Some(p) = id {
        message["id"] = json!(p);
    }
    json!({
        "id": uuid::Uuid::new_v4().simple().to_string(),
        "created_at": "2025-06-10T07:21:36.000Z",
        "topic": "message.status.updated",
        "data": {"message": message}
    })
    .to_string()
}

fn karix_inbound(wamid: &str, mid: &str) -> String {
    json!({
        "channel": "WABA",
        "appDetails": {"type": "LIVE", "id": ""},
        "events": {"eventType": "User initiated", "timestamp": 1749540120000_i64,
                   "date": "2025-06-10", "mid": mid},
        "eventContent": {"message": {"from": "919876543210", "to": "918071234567",
            "id": wamid, "contentType": "text", "text": {"body": "hi"}}}
    })
    .to_string()
}

/// Posts a normal webhook and waits until it is stored: the pipeline runs.
async fn pipeline_flows(app: &TestApp) {
    let wamid = format!("wamid.next-{}", uuid::Uuid::new_v4().simple());
    let resp = app
        .post_webhook(
            "/webhook/datagen",
            datagen_status(&wamid, "delivered", 1_749_540_000_000),
        )
        .await;
    assert_eq!(resp.status(), 200);
    app.wait_for_message(&wamid, |m| m["current_status"] == "delivered")
        .await;
}

/// The three webhooks that once stopped all processing for good: the
/// third links a wamid record to another BSP's provider id record.
#[tokio::test]
async fn linking_two_records_across_providers_does_not_stop_processing() {
    let app = spawn_app().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (w, p) = (format!("wamid.W-{tag}"), format!("P-{tag}"));
    for (path, body) in [
        (
            "/webhook/aisensy",
            aisensy_status(Some(&w), None, "DELIVERED", 1_749_540_001_000),
        ),
        (
            "/webhook/aisensy",
            aisensy_status(None, Some(&p), "DELIVERED", 1_749_540_002_000),
        ),
        ("/webhook/karix", karix_inbound(&w, &p)),
    ] {
        assert_eq!(app.post_webhook(path, body).await.status(), 200);
    }
    pipeline_flows(&app).await;
    let rec = app
        .wait_for_message(&w, |m| m["status_history"].as_array().unwrap().len() == 2)
        .await;
    // The two records stay apart; the link is recorded on the wamid's.
    assert_eq!(rec["bsp"], "aisensy");
    assert!(rec.get("bsp_message_id").is_none(), "{rec}");
    assert_eq!(rec["bsp_data"]["linked"][0]["bsp_message_id"], p.as_str());
    let other = app.wait_for_message(&p, |_| true).await;
    assert_ne!(other["message_id"], rec["message_id"]);
    app.stop().await;
}

/// One body with 2,000 statuses for one message: the record stays bounded
/// (history compacted, every event counted) and the pipeline goes on.
#[tokio::test]
async fn thousands_of_statuses_for_one_message_leave_a_bounded_record() {
    let app = spawn_app().await;
    let wamid = format!("wamid.flood-{}", uuid::Uuid::new_v4().simple());
    let statuses: Vec<Value> = (0..2000)
        .map(|i| {
            json!({"id": wamid, "status": if i % 2 == 0 { "delivered" } else { "read" },
                   "timestamp": (1_749_540_000_i64 + i).to_string(),
                   "recipient_id": "919876543210"})
        })
        .collect();
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "918071234567", "phone_number_id": "1"},
            "statuses": statuses}}]}]});
    assert_eq!(
        app.post_webhook("/webhook/meta", body.to_string())
            .await
            .status(),
        200
    );
    pipeline_flows(&app).await;
    let rec = app
        .wait_for_message(&wamid, |m| m["current_status"] == "read")
        .await;
    let history = rec["status_history"].as_array().unwrap();
    assert!(
        history.len() <= zen_gateway::model::HISTORY_CAP,
        "{}",
        history.len()
    );
    let counted: u64 = history
        .iter()
        .map(|h| 1 + h["collapsed"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, 2000);
    app.stop().await;
}

fn db_path(app: &TestApp) -> std::path::PathBuf {
    app.data_dir.join("zen.db")
}

/// An entry the store refuses every time (here a trigger makes SQLite
/// refuse one wamid, as a server refuses a key or a size) is retried, then
/// quarantined with its error while the rest flows; replayed, it is stored.
#[tokio::test]
async fn an_entry_the_store_keeps_refusing_is_quarantined_then_replayed() {
    let app = spawn_app_with(|s| s.processor.max_attempts = 2).await;
    quarantined_then_replayed(app).await;
}

/// The same on a RabbitMQ inbox: the quarantine is `zen_ingest_dlq`.
#[tokio::test]
async fn on_rabbitmq_the_quarantine_is_the_inbox_dlq() {
    let Some(mq) = crate::services::rabbitmq_url() else {
        return;
    };
    let app = spawn_app_with(|s| {
        s.processor.max_attempts = 2;
        s.backends.rabbitmq_url = Some(zen_gateway::config::SecretUrl::new(mq));
        s.rabbitmq.queue_prefix = crate::services::unique_prefix();
    })
    .await;
    app.wait_ready(|r| r["inbox"]["up"] == true).await;
    quarantined_then_replayed(app).await;
}

async fn quarantined_then_replayed(app: TestApp) {
    let wamid = format!("wamid.poison-{}", uuid::Uuid::new_v4().simple());
    let conn = rusqlite::Connection::open(db_path(&app)).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute_batch(&format!(
        "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.wamid = '{wamid}'
         BEGIN SELECT RAISE(ABORT, 'refused by test'); END;"
    ))
    .unwrap();
    let poison = datagen_status(&wamid, "delivered", 1_749_540_000_000);
    assert_eq!(
        app.post_webhook("/webhook/datagen", poison).await.status(),
        200
    );
    pipeline_flows(&app).await;

    let mut listed = Value::Null;
    eventually_within(std::time::Duration::from_secs(10), async || {
        listed = app.admin_get("/api/v1/quarantine").await;
        listed.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let entry = &listed[0];
    assert_eq!(entry["attempts"], 2, "{listed}");
    assert!(
        entry["error"].as_str().unwrap().contains("refused by test"),
        "{entry}"
    );
    assert!(entry["body"].as_str().unwrap().contains(&wamid));
    let ready = app
        .wait_ready(|r| r["quarantine_depth"] == 1 && r["inbox_depth"] == 0)
        .await;
    assert_eq!(ready["quarantine_depth"], 1, "{ready}");
    assert_eq!(ready["inbox_depth"], 0, "{ready}");
    let metrics = app.metrics().await;
    // (The depth gauge is process-wide: other gateways of this test binary
    // set it too; /ready above is this one's.)
    assert!(metrics.contains("zen_quarantined_total"), "{metrics}");
    assert!(metrics.contains("zen_quarantine_depth"), "{metrics}");
    assert_eq!(app.get_message(&wamid).await.status(), 404);

    // Fixed (the trigger dropped), replayed: stored.
    conn.execute_batch("DROP TRIGGER poison").unwrap();
    let replayed: Value = app
        .admin_send(
            reqwest::Method::POST,
            "/api/v1/quarantine/replay",
            Some(json!({"ids": [entry["event_id"]]})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 1);
    app.wait_for_message(&wamid, |m| m["current_status"] == "delivered")
        .await;
    let listed = app.admin_get("/api/v1/quarantine").await;
    assert_eq!(listed, json!([]));
    app.stop().await;
}

/// Two gateways on one data directory would each process everything: the
/// second refuses to start, saying why; the CLI still works beside it.
#[tokio::test]
async fn a_second_gateway_on_the_same_data_dir_refuses_to_start() {
    let app = spawn_app().await;
    let settings = test_settings(&app.data_dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = zen_gateway::app::Application::build_with_listener(settings.clone(), listener)
        .await
        .err()
        .expect("a second gateway on the same DATA_DIR must not start");
    let why = format!("{refused:#}");
    assert!(why.contains("another zen-gateway already serves"), "{why}");
    let inbox = zen_gateway::backends::Backends::from_settings(
        &settings,
        zen_gateway::backends::Mode::Command,
    )
    .inbox()
    .await
    .unwrap();
    assert_eq!(inbox.quarantine_depth().await.unwrap(), 0);
    let dir = app.stop().await.unwrap();
    // Once it has stopped, the directory is free again.
    let again = spawn_app_in(dir.path(), |_| {}).await;
    again.stop().await;
}

/// Where a hostile-input case runs.
#[derive(Debug, Clone, Copy)]
enum Backends {
    Embedded,
    RabbitMqMongo,
}

async fn spawn_on(backends: Backends) -> Option<TestApp> {
    match backends {
        Backends::Embedded => Some(spawn_app_with(|s| s.processor.max_attempts = 2).await),
        Backends::RabbitMqMongo => {
            let (Some(mq), Some(mongo)) = (
                crate::services::rabbitmq_url(),
                crate::services::mongo_uri(),
            ) else {
                return None;
            };
            let app = spawn_app_with(|s| {
                s.processor.max_attempts = 2;
                s.backends.rabbitmq_url = Some(zen_gateway::config::SecretUrl::new(mq));
                s.rabbitmq.queue_prefix = crate::services::unique_prefix();
                s.backends.mongo_uri = Some(zen_gateway::config::SecretUrl::new(mongo));
                s.backends.database_name = crate::services::unique_db_name();
            })
            .await;
            app.wait_ready(|r| r["inbox"]["up"] == true && r["store"]["up"] == true)
                .await;
            Some(app)
        }
    }
}

fn meta_inbound(wamid: &str, message_extra: Value) -> String {
    let mut message = json!({"from": "919876543210", "id": wamid,
        "timestamp": "1749540120", "type": "text", "text": {"body": "hi"}});
    if let (Some(m), Some(extra)) = (message.as_object_mut(), message_extra.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "918071234567", "phone_number_id": "1"},
        "messages": [message]}}]}]})
    .to_string()
}

/// The entry holding `needle` was applied (its message exists) or sits in
/// the quarantine with an error; waits for one or the other.
async fn applied_or_quarantined(app: &TestApp, wamid: &str) {
    let settled = eventually_within(std::time::Duration::from_secs(15), async || {
        if app.get_message(wamid).await.status() == 200 {
            eprintln!("{wamid}: applied");
            return true;
        }
        let q = app.admin_get("/api/v1/quarantine?limit=500").await;
        let quarantined = q.as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["body"].as_str().is_some_and(|b| b.contains(wamid))
                    && e["error"].as_str().is_some_and(|x| !x.is_empty())
            })
        });
        if quarantined {
            eprintln!("{wamid}: quarantined");
        }
        quarantined
    })
    .await;
    assert!(settled, "{wamid}: neither applied nor quarantined");
}

/// Each poison input, then a normal webhook: the normal one is stored, the
/// poison one applied or quarantined, on the given backends.
async fn hostile_inputs(backends: Backends) {
    let Some(app) = spawn_on(backends).await else {
        return;
    };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (w, p) = (format!("wamid.W-{tag}"), format!("P-{tag}"));
    // 1. The cross-provider link of two records.
    for (path, body) in [
        (
            "/webhook/aisensy",
            aisensy_status(Some(&w), None, "DELIVERED", 1_749_540_001_000),
        ),
        (
            "/webhook/aisensy",
            aisensy_status(None, Some(&p), "DELIVERED", 1_749_540_002_000),
        ),
        ("/webhook/karix", karix_inbound(&w, &p)),
    ] {
        assert_eq!(
            app.post_webhook(path, body).await.status(),
            200,
            "{backends:?}"
        );
    }
    pipeline_flows(&app).await;
    applied_or_quarantined(&app, &w).await;
    // 2. Content keys some servers refuse, and a huge text.
    let odd = format!("wamid.keys-{tag}");
    let body = meta_inbound(
        &odd,
        json!({"text": {"$where": "1", "a.b": {"$gt": ""}, "": "empty", "body": "x".repeat(100_000)}}),
    );
    assert_eq!(app.post_webhook("/webhook/meta", body).await.status(), 200);
    pipeline_flows(&app).await;
    applied_or_quarantined(&app, &odd).await;
    // 3. Thousands of statuses for one message in one body.
    let flood = format!("wamid.flood-{tag}");
    let statuses: Vec<Value> = (0..2000)
        .map(|i| {
            json!({"id": flood, "status": "delivered",
                   "timestamp": (1_749_540_000_i64 + i).to_string(),
                   "recipient_id": "919876543210",
                   "errors": [{"code": 1, "title": "e".repeat(250)}]})
        })
        .collect();
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "918071234567", "phone_number_id": "1"},
            "statuses": statuses}}]}]});
    assert_eq!(
        app.post_webhook("/webhook/meta", body.to_string())
            .await
            .status(),
        200
    );
    pipeline_flows(&app).await;
    applied_or_quarantined(&app, &flood).await;
    // 4. A Datagen array of repeated ids and statuses.
    let repeated = format!("wamid.rep-{tag}");
    let events: Vec<Value> = (0..500)
        .map(|i| {
            serde_json::from_str::<Value>(&datagen_status(
                &repeated,
                ["sent", "delivered", "read", "failed"][i % 4],
                1_749_540_000_000 + (i % 7) as i64,
            ))
            .unwrap()
        })
        .collect();
    assert_eq!(
        app.post_webhook("/webhook/datagen", Value::Array(events).to_string())
            .await
            .status(),
        200
    );
    pipeline_flows(&app).await;
    applied_or_quarantined(&app, &repeated).await;
    app.stop().await;
}

#[tokio::test]
async fn hostile_inputs_on_the_embedded_default() {
    hostile_inputs(Backends::Embedded).await;
}

#[tokio::test]
async fn hostile_inputs_on_rabbitmq_and_mongodb() {
    hostile_inputs(Backends::RabbitMqMongo).await;
}
