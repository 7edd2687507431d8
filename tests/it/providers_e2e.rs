//! Every provider format end to end: POST → record through the API; optional
//! inbound authentication; Meta's verification handshake.

use serde_json::Value;

use crate::helpers::*;
use zen_gateway::inbound_auth::hmac_sha256_hex;
use zen_gateway::model::Bsp;

#[tokio::test]
async fn every_provider_fixture_becomes_a_record() {
    let app = spawn_app().await;
    let cases: &[(&str, &str, &str, &str)] = &[
        // route, fixture, id to look up, expected status
        (
            "/webhook/karix",
            "karix_sent.json",
            "176901234567890123456",
            "delivered",
        ),
        (
            "/webhook/karix",
            "karix_delivered.json",
            "176901234567890123456",
            "delivered",
        ),
        (
            "/webhook/karix",
            "karix_failed.json",
            "176901234567890123458",
            "failed",
        ),
        (
            "/webhook/karix",
            "karix_inbound_text.json",
            "ABEGkZiHZUMhAgo6N0bGq1AbCdEf",
            "received",
        ),
        (
            "/webhook/aisensy",
            "aisensy_status_read.json",
            "wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSM0VCMEE4QzdGNEQyRTlBMUIwAA==",
            "read",
        ),
        (
            "/partner-webhook",
            "aisensy_status_failed.json",
            "6667a1b2c3d4e5f6a7b8c9d2",
            "failed",
        ),
        (
            "/webhook/aisensy",
            "aisensy_numeric_id_no_status.json",
            "wamid.aisensy-inferred",
            "delivered",
        ),
        (
            "/webhook/meta",
            "meta_status_sent.json",
            "wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSM0VCMEE4QzdGNEQyRTlBMUIwAA==",
            "read",
        ),
        (
            "/webhook/meta",
            "meta_status_failed.json",
            "wamid.HBgMOTE3NzAwMTEyMjMzFQIAERgSM0VCMEMwNEY2RThBMUQyQjkzAA==",
            "failed",
        ),
        ("/webhook/meta", "meta_batch.json", "wamid.meta-b2", "read"),
        (
            "/webhook/datagen",
            "datagen_batch.json",
            "wamid.batch-2",
            "failed",
        ),
        (
            "/webhook/datagen",
            "datagen_inbound_button.json",
            "wamid.button-reply-1",
            "received",
        ),
    ];
    for (route, file, _, _) in cases {
        let resp = app.post_webhook(route, fixture(file)).await;
        assert_eq!(resp.status(), 200, "{route} {file}");
    }
    for (_, file, id, status) in cases {
        let rec = app
            .wait_for_message(id, |m| m["current_status"] == *status)
            .await;
        assert!(
            rec["status_history"]
                .as_array()
                .is_some_and(|h| !h.is_empty()),
            "{file}"
        );
    }
    // Karix: sent then delivered on one record, keyed by its own id.
    let karix = app
        .get_message("176901234567890123456")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(karix["bsp"], "karix");
    assert!(karix.get("wamid").is_none());
    assert_eq!(karix["sent_at"], "2025-06-10T07:20:02Z");
    assert_eq!(karix["delivered_at"], "2025-06-10T07:20:05Z");
    assert_eq!(karix["bsp_data"]["tags"]["cust_ref"], "ORD-1001");
    // AiSensy and Meta report on the same wamid: one record, read wins.
    let shared = app
        .get_message("wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSM0VCMEE4QzdGNEQyRTlBMUIwAA==")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(shared["current_status"], "read");
    assert_eq!(shared["status_history"].as_array().unwrap().len(), 2);
    // Failure details are kept in history.
    let failed = app
        .get_message("176901234567890123458")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(failed["status_history"][0]["error_code"], "131026");
    assert_eq!(
        failed["status_history"][0]["reason"],
        "Message undeliverable"
    );
    assert_eq!(failed["failed_at"], "2025-06-10T07:20:04Z");
    app.stop().await;
}

#[tokio::test]
async fn aisensy_retries_of_one_notification_are_applied_once() {
    let app = spawn_app().await;
    let body = fixture("aisensy_status_read.json");
    for _ in 0..5 {
        assert_eq!(
            app.post_webhook("/webhook/aisensy", body.clone())
                .await
                .status(),
            200
        );
    }
    let id = "wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSM0VCMEE4QzdGNEQyRTlBMUIwAA==";
    app.wait_for_message(id, |m| m["current_status"] == "read")
        .await;
    app.barrier().await;
    let rec = app.get_message(id).await.json::<Value>().await.unwrap();
    assert_eq!(rec["status_history"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn configured_inbound_auth_refuses_and_stores_nothing() {
    let app = spawn_app_with(|s| {
        use zen_gateway::inbound_auth::InboundCredentials;
        s.inbound.insert(
            Bsp::Karix,
            InboundCredentials {
                token: Some("karix-token".into()),
                ..Default::default()
            },
        );
        s.inbound.insert(
            Bsp::Aisensy,
            InboundCredentials {
                secret: Some("aisensy-secret".into()),
                ..Default::default()
            },
        );
        s.inbound.insert(
            Bsp::Meta,
            InboundCredentials {
                secret: Some("meta-secret".into()),
                ..Default::default()
            },
        );
        s.access.inbound_open_routes = [Bsp::Datagen].into();
    })
    .await;
    let karix = fixture("karix_sent.json");
    let resp = app.post_webhook("/webhook/karix", karix.clone()).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 401);
    let resp = app
        .post_webhook("/webhook/karix?token=wrong", karix.clone())
        .await;
    assert_eq!(resp.status(), 401);
    let resp = app
        .post_webhook("/webhook/karix?token=karix-token", karix.clone())
        .await;
    assert_eq!(resp.status(), 200);

    let aisensy = fixture("aisensy_status_failed.json");
    let resp = app
        .client
        .post(app.url("/webhook/aisensy"))
        .header("x-aisensy-signature", "deadbeef")
        .body(aisensy.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = app
        .client
        .post(app.url("/webhook/aisensy"))
        .header(
            "x-aisensy-signature",
            hmac_sha256_hex(b"aisensy-secret", aisensy.as_bytes()),
        )
        .body(aisensy.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let meta = fixture("meta_status_failed.json");
    let resp = app.post_webhook("/webhook/meta", meta.clone()).await;
    assert_eq!(resp.status(), 401);
    let sig = format!(
        "sha256={}",
        hmac_sha256_hex(b"meta-secret", meta.as_bytes())
    );
    let resp = app
        .client
        .post(app.url("/webhook/meta"))
        .header("x-hub-signature-256", sig)
        .body(meta.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A provider without credentials is refused once others are verified,
    // unless named open (docs/SECURITY.md); nothing of it is stored.
    let resp = app
        .post_webhook("/webhook/gupshup", fixture("gupshup_v2_sent.json"))
        .await;
    assert_eq!(resp.status(), 401);
    let resp = app
        .post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    assert_eq!(resp.status(), 200);

    // Exactly the four accepted bodies were stored: Karix once, not thrice.
    app.wait_for_message("176901234567890123456", |m| m["current_status"] == "sent")
        .await;
    let ready = app.ready().await.1;
    assert!(ready["inbox_depth"].as_u64().unwrap() <= 4);
    let karix_rec = app
        .get_message("176901234567890123456")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(karix_rec["status_history"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn meta_verification_handshake() {
    let app = spawn_app_with(|s| {
        s.inbound.insert(
            Bsp::Meta,
            zen_gateway::inbound_auth::InboundCredentials {
                verify_token: Some("verify-me".into()),
                ..Default::default()
            },
        );
    })
    .await;
    let ok = app
        .client
        .get(app.url(
            "/webhook/meta?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=verify-me",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    let bad = app
        .client
        .get(app.url("/webhook/meta?hub.mode=subscribe&hub.challenge=1&hub.verify_token=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 403);
    app.stop().await;

    let app = spawn_app().await;
    let unconfigured = app
        .client
        .get(app.url("/webhook/meta?hub.mode=subscribe&hub.challenge=1&hub.verify_token="))
        .send()
        .await
        .unwrap();
    assert_eq!(unconfigured.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn unrecognized_bodies_are_acked_and_kept() {
    let app = spawn_app().await;
    let resp = app
        .post_webhook(
            "/webhook/aisensy",
            r#"{"id":"x","topic":"billing.updated","data":{}}"#,
        )
        .await;
    assert_eq!(resp.status(), 200);
    // Processed without creating a message: kept as unrecognized.
    let kept = eventually_within(std::time::Duration::from_secs(10), async || {
        app.admin_get("/api/v1/unrecognized")
            .await
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    assert!(kept);
    let db = rusqlite::Connection::open(app.data_dir.join("zen.db")).unwrap();
    let (n, reason): (i64, String) = db
        .query_row("SELECT COUNT(*), MAX(reason) FROM unrecognized", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(n, 1);
    assert!(reason.contains("billing.updated"), "{reason}");
    app.stop().await;
}

#[tokio::test]
async fn stats_over_http() {
    let app = spawn_app().await;
    for (w, s) in [
        ("wamid.st1", "sent"),
        ("wamid.st2", "Read"),
        ("wamid.st3", "Read"),
    ] {
        app.post_webhook("/webhook/datagen", datagen_status(w, s, 1_749_540_000_000))
            .await;
    }
    app.wait_for_message("wamid.st3", |m| m["current_status"] == "read")
        .await;
    app.wait_for_message("wamid.st1", |m| m["current_status"] == "sent")
        .await;
    let stats: Value = app
        .admin_send(
            reqwest::Method::GET,
            "/api/v1/stats?bsp=datagen&campaign_id=cmp-1",
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["by_status"]["read"], 2);
    assert_eq!(stats["by_status"]["delivered"], 0);
    let bad = app
        .admin_send(reqwest::Method::GET, "/api/v1/stats?from=yesterday", None)
        .await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().starts_with("from:"));
    app.stop().await;
}

/// Meta's notifications that are not about a message (template status,
/// account alerts and updates, quality updates) are kept and listed.
#[tokio::test]
async fn meta_notifications_are_kept_and_listed() {
    let app = spawn_app().await;
    for name in ["meta_template_status.json", "meta_account_alerts.json"] {
        assert_eq!(
            app.post_webhook("/webhook/meta", fixture(name))
                .await
                .status(),
            200
        );
    }
    let mut listed = Value::Null;
    eventually_within(std::time::Duration::from_secs(5), async || {
        listed = app.admin_get("/api/v1/notifications?bsp=meta").await;
        listed.as_array().is_some_and(|a| a.len() == 4)
    })
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
    let template = app
        .admin_get("/api/v1/notifications?kind=message_template_status_update")
        .await;
    assert_eq!(template[0]["body"]["value"]["event"], "APPROVED");
    assert_eq!(template[0]["bsp"], "meta");
    let quality = app
        .admin_get("/api/v1/notifications?kind=phone_number_quality_update")
        .await;
    assert_eq!(quality[0]["body"]["value"]["event"], "FLAGGED");
    app.stop().await;
}
