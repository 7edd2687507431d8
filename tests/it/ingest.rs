//! The legacy HTTP surface, byte for byte, and the durable-ack contract.

use std::time::Duration;

use crate::helpers::*;

const LEGACY_CT: &str = "application/json; charset=utf-8";

#[tokio::test]
async fn legacy_routes_answer_byte_identical_bodies() {
    let app = spawn_app().await;
    let body = fixture("datagen_delivered.json");
    for (path, expected) in [
        (
            "/webhook/datagen",
            r#"{"status":200,"message":"Datagen webhook received successfully"}"#,
        ),
        (
            "/datagen-webhook",
            r#"{"status":200,"message":"Datagen webhook received successfully"}"#,
        ),
        (
            "/webhook/aisensy",
            r#"{"status":200,"message":"Aisensy webhook received successfully"}"#,
        ),
        (
            "/partner-webhook",
            r#"{"status":200,"message":"Aisensy webhook received successfully"}"#,
        ),
        (
            "/webhook/karix",
            r#"{"status":200,"message":"Karix webhook received successfully"}"#,
        ),
    ] {
        let resp = app.post_webhook(path, body.clone()).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], LEGACY_CT, "{path}");
        assert_eq!(resp.text().await.unwrap(), expected, "{path}");
    }
    for (path, expected) in [
        ("/", r#"{"message":"ZEN Messaging Gateway is running"}"#),
        ("/health", r#"{"status":"healthy"}"#),
    ] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], LEGACY_CT);
        assert_eq!(resp.text().await.unwrap(), expected);
    }
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_give_gins_404_and_trailing_slashes_still_work() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), "404 page not found");
    // Wrong method: Gin answers 404, not 405.
    let resp = app
        .client
        .get(app.url("/webhook/datagen"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = app
        .post_webhook("/webhook/datagen/", fixture("datagen_delivered.json"))
        .await;
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn bodies_that_are_not_json_get_a_clear_400() {
    let app = spawn_app().await;
    for body in ["", "not json", "{\"a\":", "\u{0}"] {
        let resp = app.post_webhook("/webhook/datagen", body).await;
        assert_eq!(resp.status(), 400, "{body:?}");
        assert_eq!(resp.headers()["content-type"], LEGACY_CT);
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["status"], 400);
        assert!(
            json["message"]
                .as_str()
                .unwrap()
                .starts_with("Webhook body is not valid JSON"),
            "{json}"
        );
    }
    // Invalid UTF-8 inside a string is not JSON either.
    let resp = app
        .client
        .post(app.url("/webhook/karix"))
        .body(vec![b'"', 0xff, 0xfe, b'"'])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let app = spawn_app_with(|s| s.http.body_limit_bytes = 1024).await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2048));
    let resp = app.post_webhook("/webhook/datagen", big).await;
    assert_eq!(resp.status(), 413);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["status"], 413);
    let small = app.post_webhook("/webhook/datagen", "{\"a\":1}").await;
    assert_eq!(small.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn ready_reports_each_backend() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["inbox"]["backend"], "sqlite");
    assert_eq!(json["inbox"]["up"], true);
    assert_eq!(json["store"]["backend"], "sqlite");
    assert_eq!(json["cache"]["backend"], "memory");
    // No Redis: ready, but degraded (per-replica caches).
    assert_eq!(json["status"], "degraded");
    app.stop().await;
}

/// When the writer cannot keep up, the answer is 503 with Retry-After —
/// never a 200 for an event that is not durable. Every 200 is processed.
#[tokio::test]
async fn a_saturated_writer_answers_503_and_every_200_is_kept() {
    let app = spawn_app_with(|s| s.ingest.inbox_write_queue = 1).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = app.client.clone();
        let url = app.url("/webhook/datagen");
        tasks.push(tokio::spawn(async move {
            let wamid = format!("wamid.sat-{i}");
            let resp = client
                .post(url)
                .body(datagen_status(&wamid, "sent", 1_749_540_000_000 + i))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            if status == 503 {
                assert_eq!(resp.headers()["retry-after"], "1");
            }
            (wamid, status)
        }));
    }
    let mut acked = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (w, 200) => acked.push(w),
            (_, 503) => refused += 1,
            (_, other) => panic!("unexpected status {other}"),
        }
    }
    assert!(!acked.is_empty());
    eprintln!("acked {} refused {refused}", acked.len());
    for w in &acked {
        app.wait_for_message(w, |m| m["current_status"] == "sent")
            .await;
    }
    app.stop().await;
}

/// Another process holding the database's write lock makes commits fail:
/// ingest answers 503 (never 200), and recovers once the lock is gone.
#[tokio::test]
async fn a_database_that_cannot_be_written_gives_503_then_recovers() {
    let app =
        spawn_app_with(|s| s.ingest.ack_timeout = std::time::Duration::from_millis(300)).await;
    let db_path = app.data_dir.join("zen.db");
    let blocker = rusqlite_block(&db_path);
    let resp = app
        .post_webhook(
            "/webhook/datagen",
            datagen_status("wamid.locked", "sent", 1),
        )
        .await;
    assert_eq!(resp.status(), 503);
    let header_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["status"], 503);
    // What the client can do, and the id to quote; the database's own
    // words stay in the log.
    assert_eq!(json["message"], "Webhook not accepted, retry later");
    assert_eq!(json["request_id"], header_id.as_str());
    assert!(
        !json.to_string().to_lowercase().contains("sqlite"),
        "{json}"
    );
    // A caller's own request id is kept.
    let resp = app
        .client
        .post(app.url("/webhook/datagen"))
        .header("x-request-id", "bsp-req-42")
        .body(datagen_status("wamid.locked", "sent", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-request-id"], "bsp-req-42");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["request_id"],
        "bsp-req-42"
    );
    drop(blocker);
    // The writer recovers without a restart.
    let ok = eventually_within(Duration::from_secs(10), async || {
        app.post_webhook("/webhook/datagen", datagen_status("wamid.after", "sent", 2))
            .await
            .status()
            == 200
    })
    .await;
    assert!(ok, "ingest did not recover after the lock was released");
    app.wait_for_message("wamid.after", |m| m["current_status"] == "sent")
        .await;
    app.stop().await;
}

/// Holds an exclusive write lock on the SQLite file from another connection.
fn rusqlite_block(path: &std::path::Path) -> LockHolder {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let path = path.to_path_buf();
    let thread = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        ready_tx.send(()).unwrap();
        let _ = rx.recv();
        conn.execute_batch("ROLLBACK").unwrap();
    });
    ready_rx.recv().unwrap();
    LockHolder {
        release: Some(tx),
        thread: Some(thread),
    }
}

struct LockHolder {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test]
async fn metrics_are_exposed_for_prometheus() {
    let app = spawn_app().await;
    app.post_webhook(
        "/webhook/datagen",
        datagen_status("wamid.metrics", "sent", 1),
    )
    .await;
    app.post_webhook("/webhook/datagen", "nope").await;
    app.wait_for_message("wamid.metrics", |m| m["current_status"] == "sent")
        .await;
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    for needle in [
        "zen_webhooks_received_total{bsp=\"datagen\",outcome=\"accepted\"}",
        "zen_webhooks_received_total{bsp=\"datagen\",outcome=\"invalid\"}",
        "zen_ingest_ack_seconds_bucket",
        "zen_events_total{bsp=\"datagen\",type=\"message.sent\"}",
        "zen_processing_lag_seconds",
        "zen_processor_batch_entries_count",
        "zen_backend_up{role=\"inbox\",backend=\"sqlite\"} 1",
        "zen_inbox_depth",
        "zen_forward_queue_depth",
        "zen_forward_dlq_depth",
        "zen_breakers_open",
        "zen_sqlite_transaction_seconds_bucket{lane=\"acked\"",
        "zen_sqlite_transaction_seconds_bucket{lane=\"background\"",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // The scrape is gzipped when asked for; a webhook ack never is (a few
    // dozen bytes, and the BSPs get the legacy bytes).
    let scrape = app
        .client
        .get(app.url("/metrics"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.headers()["content-encoding"], "gzip");
    let ack = app
        .client
        .post(app.url("/webhook/datagen"))
        .header("accept-encoding", "gzip")
        .body(datagen_status("wamid.gzip", "sent", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 200);
    assert!(ack.headers().get("content-encoding").is_none());
    app.stop().await;
}

/// A client that never finishes its headers is cut off, not kept forever.
#[tokio::test]
async fn slow_loris_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app =
        spawn_app_with(|s| s.http.header_read_timeout = std::time::Duration::from_secs(1)).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /webhook/datagen HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the connection was kept open past the header timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(800));
    // Healthy clients are unaffected.
    let resp = app.post_webhook("/webhook/datagen", "{\"a\":1}").await;
    assert_eq!(resp.status(), 200);
    app.stop().await;
}
