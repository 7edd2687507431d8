//! Webhooks through to records, read back through the admin API.

use serde_json::{Value, json};

use crate::helpers::*;

const DELIVERED_WAMID: &str = "wamid.HBgMOTE5ODEyMzQ1Njc4FQIAERgSNDdCRkE1RTZEMDlDM0IyRjFBAA==";

#[tokio::test]
async fn a_datagen_delivery_becomes_a_record_with_provider_times() {
    let app = spawn_app().await;
    let resp = app
        .post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    assert_eq!(resp.status(), 200);
    let rec = app
        .wait_for_message(DELIVERED_WAMID, |m| m["current_status"] == "delivered")
        .await;
    assert_eq!(rec["wamid"], DELIVERED_WAMID);
    assert_eq!(rec["bsp"], "datagen");
    assert_eq!(rec["phone_number"], "919812345678");
    assert_eq!(rec["business_number"], "918071234567");
    assert_eq!(rec["campaign_id"], "665f1a2b3c4d5e6f7a8b9c0e");
    assert_eq!(rec["direction"], "outbound");
    // The provider's event time (1749540007000 ms), not the receive time.
    assert_eq!(rec["delivered_at"], "2025-06-10T07:20:07Z");
    let history = rec["status_history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["status"], "delivered");
    assert_eq!(history[0]["source"], "datagen");
    assert_eq!(history[0]["raw_status"], "Delivered");
    assert_eq!(history[0]["timestamp"], "2025-06-10T07:20:07Z");
    assert!(rec["message_id"].as_str().unwrap().len() == 24);
    // Legacy field names are all there.
    for field in [
        "created_at",
        "updated_at",
        "project_owner_id",
        "current_status",
    ] {
        assert!(rec.get(field).is_some(), "missing {field}");
    }
    app.stop().await;
}

#[tokio::test]
async fn out_of_order_and_duplicate_events_give_one_correct_record() {
    let app = spawn_app().await;
    let w = "wamid.order-1";
    for (status, ts) in [
        ("Read", 3_000),
        ("sent", 1_000),
        ("Delivered", 2_000),
        ("sent", 1_000),
    ] {
        let resp = app
            .post_webhook(
                "/webhook/datagen",
                datagen_status(w, status, 1_749_540_000_000 + ts),
            )
            .await;
        assert_eq!(resp.status(), 200);
    }
    let rec = app
        .wait_for_message(w, |m| {
            m["status_history"].as_array().is_some_and(|h| h.len() == 3)
        })
        .await;
    assert_eq!(rec["current_status"], "read");
    assert_eq!(rec["sent_at"], "2025-06-10T07:20:01Z");
    assert_eq!(rec["delivered_at"], "2025-06-10T07:20:02Z");
    assert_eq!(rec["read_at"], "2025-06-10T07:20:03Z");
    // Once everything posted is processed, the duplicate changed nothing.
    app.barrier().await;
    let again: Value = app.get_message(w).await.json().await.unwrap();
    assert_eq!(again["status_history"].as_array().unwrap().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_datagen_batch_and_an_inbound_message_are_tracked() {
    let app = spawn_app().await;
    // Leading whitespace before the array is fine (the legacy gateway
    // dropped such bodies).
    let batch = format!(
        "  \n[{},{}]",
        datagen_status("wamid.batch-a", "sent", 1_749_540_001_000),
        datagen_status("wamid.batch-b", "Not Sent", 1_749_540_002_000)
    );
    assert_eq!(
        app.post_webhook("/webhook/datagen", batch).await.status(),
        200
    );
    assert_eq!(
        app.post_webhook("/webhook/datagen", fixture("datagen_inbound_text.json"))
            .await
            .status(),
        200
    );
    app.wait_for_message("wamid.batch-a", |m| m["current_status"] == "sent")
        .await;
    app.wait_for_message("wamid.batch-b", |m| m["current_status"] == "failed")
        .await;
    let inbound = app
        .wait_for_message(
            "wamid.HBgMOTE5ODEyMzQ1Njc4FQIAEhggQTFCMkMzRDRFNUY2QTdCOEM5RDBFMUYyQTNCNEM1RDYA",
            |m| m["current_status"] == "received",
        )
        .await;
    assert_eq!(inbound["direction"], "inbound");
    assert_eq!(inbound["phone_number"], "919812345678");
    assert_eq!(
        inbound["content"]["text"]["body"],
        "Is the offer valid tomorrow?"
    );
    app.stop().await;
}

#[tokio::test]
async fn registering_an_outbound_message_fills_context_in_any_order() {
    let app = spawn_app().await;
    let register = |wamid: &str| {
        app.client
            .post(app.url("/api/v1/messages"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({
                "bsp": "datagen", "wamid": wamid, "phone_number": "919812345678",
                "business_number": "918071234567", "campaign_id": "cmp-9",
                "project_id": "prj-1", "project_owner_id": "owner-1"
            }))
            .send()
    };
    // Registration first, then the event.
    let resp = register("wamid.reg-1").await.unwrap();
    assert_eq!(resp.status(), 201);
    let rec: Value = resp.json().await.unwrap();
    assert_eq!(rec["current_status"], "accepted");
    app.post_webhook(
        "/webhook/datagen",
        datagen_status("wamid.reg-1", "delivered", 1_749_540_000_000),
    )
    .await;
    let rec = app
        .wait_for_message("wamid.reg-1", |m| m["current_status"] == "delivered")
        .await;
    assert_eq!(rec["project_owner_id"], "owner-1");

    // The event first, then the registration: the status is kept.
    app.post_webhook(
        "/webhook/datagen",
        datagen_status("wamid.reg-2", "read", 1_749_540_000_000),
    )
    .await;
    app.wait_for_message("wamid.reg-2", |m| m["current_status"] == "read")
        .await;
    let resp = register("wamid.reg-2").await.unwrap();
    assert_eq!(resp.status(), 200);
    let rec: Value = resp.json().await.unwrap();
    assert_eq!(rec["current_status"], "read");
    assert_eq!(rec["campaign_id"], "cmp-9");
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_missing_or_wrong_keys() {
    let app = spawn_app().await;
    let url = app.url("/api/v1/messages/wamid.x");
    let none = app.client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["status"], 401);
    let wrong = app
        .client
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .client
        .get(&url)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 404);
    app.stop().await;

    // No key configured: everything is refused, even a guess of an empty key.
    let app = spawn_app_with(|s| s.http.admin_api_key = None).await;
    let resp = app
        .client
        .get(app.url("/api/v1/messages/wamid.x"))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn registration_input_is_validated_with_the_field_named() {
    let app = spawn_app().await;
    let post = |body: Value| {
        app.client
            .post(app.url("/api/v1/messages"))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
    };
    let resp = post(json!({"bsp": "whatsapp-direct", "wamid": "w"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().starts_with("bsp:"),
        "{body}"
    );
    let resp = post(json!({"bsp": "karix"})).await.unwrap();
    assert_eq!(resp.status(), 422);
    let resp = app
        .client
        .post(app.url("/api/v1/messages"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn the_messages_list_pages_through_everything_with_a_cursor() {
    let app = spawn_app().await;
    for i in 0..9 {
        let w = format!("wamid.list-{i}");
        let status = if i % 3 == 0 { "read" } else { "sent" };
        let r = app
            .post_webhook("/webhook/datagen", datagen_status(&w, status, i))
            .await;
        assert_eq!(r.status(), 200);
    }
    app.wait_for_message("wamid.list-8", |_| true).await;
    for i in 0..9 {
        app.wait_for_message(&format!("wamid.list-{i}"), |_| true)
            .await;
    }
    let mut wamids = Vec::new();
    let mut path = "/api/v1/messages?limit=4".to_owned();
    let mut pages = 0;
    loop {
        let page = app.admin_get(&path).await;
        pages += 1;
        for r in page["items"].as_array().unwrap() {
            wamids.push(r["wamid"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/messages?limit=4&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    wamids.sort();
    wamids.dedup();
    assert_eq!(wamids.len(), 9);

    let read = app
        .admin_get("/api/v1/messages?status=read&phone_number=&campaign_id=")
        .await;
    assert_eq!(read["items"].as_array().unwrap().len(), 3, "{read}");

    for (query, field) in [
        ("limit=0", "limit:"),
        ("limit=lots", "limit:"),
        ("status=lost", "status:"),
        ("cursor=%21%21", "cursor:"),
    ] {
        let resp = app
            .admin_send(
                reqwest::Method::GET,
                &format!("/api/v1/messages?{query}"),
                None,
            )
            .await;
        assert_eq!(resp.status(), 400, "{query}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{query}: {body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_keeps_every_acked_event() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), |_| {}).await;
    for i in 0..50 {
        let resp = app
            .post_webhook(
                "/webhook/datagen",
                datagen_status(&format!("wamid.gs-{i}"), "sent", 1_000 + i),
            )
            .await;
        assert_eq!(resp.status(), 200);
    }
    app.stop().await;
    let app = spawn_app_in(dir.path(), |_| {}).await;
    for i in 0..50 {
        app.wait_for_message(&format!("wamid.gs-{i}"), |m| m["current_status"] == "sent")
            .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_query_parameters_get_a_json_400_naming_them() {
    let app = spawn_app().await;
    for path in [
        "/api/v1/dlq?limit=lots",
        "/api/v1/unrecognized?limit=-1",
        "/api/v1/webhooks/some-id/deliveries?limit=x",
    ] {
        let resp = app.admin_send(reqwest::Method::GET, path, None).await;
        assert_eq!(resp.status(), 400, "{path}");
        let body: Value = resp.json().await.expect("a JSON error");
        assert_eq!(body["status"], 400);
        assert!(
            body["message"].as_str().unwrap().contains("limit"),
            "{path}: {body}"
        );
    }
    app.stop().await;
}
