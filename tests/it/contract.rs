//! What the API document promises, case by case, for the answers the
//! contract test (scripts/contract-test) found out of step with it: bounds
//! the document states are the bounds served, every refusal is the JSON
//! error, and a provider route takes only its provider's events.

use serde_json::{Value, json};

use crate::helpers::*;

async fn admin(
    app: &TestApp, method: reqwest::Method, path: &str, body: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(ADMIN_KEY);
    if let Some((content_type, body)) = body {
        request = request
            .header("content-type", content_type)
            .body(body.to_owned());
    }
    let resp = request.send().await.expect("admin call");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
    (status, value)
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    admin(app, reqwest::Method::GET, path, None).await
}

async fn post_json(app: &TestApp, path: &str, body: &str) -> (u16, Value) {
    admin(
        app,
        reqwest::Method::POST,
        path,
        Some(("application/json", body)),
    )
    .await
}

#[tokio::test]
async fn a_body_that_is_no_event_of_its_route_gets_a_json_400_and_is_not_kept() {
    let app = spawn_app().await;
    for (path, body) in [
        ("/webhook/meta", "\"a string\""),
        ("/webhook/meta", "42"),
        ("/webhook/meta", "[{\"entry\":[]}]"),
        ("/webhook/aisensy", "null"),
        ("/webhook/datagen", "true"),
    ] {
        let resp = app.post_webhook(path, body).await;
        assert_eq!(resp.status(), 400, "{path} {body}");
        let error: Value = resp.json().await.expect("a JSON error");
        assert_eq!(error["status"], 400);
        assert!(
            error["message"].as_str().unwrap().contains("not an event"),
            "{error}"
        );
    }
    // Twilio's form without the message id every callback carries.
    for form in ["", "Body=hello", "MessageSid=&MessageStatus=sent"] {
        let resp = app
            .client
            .post(app.url("/webhook/twilio"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{form:?}");
    }
    // A batch where the provider sends batches is still taken.
    let resp = app
        .post_webhook(
            "/webhook/datagen",
            format!("[{}]", datagen_status("wamid.B1", "sent", 1)),
        )
        .await;
    assert_eq!(resp.status(), 200);
    app.barrier().await;
    let (_, unrecognized) = get(&app, "/api/v1/unrecognized").await;
    assert_eq!(unrecognized, json!([]), "nothing refused was kept");
    app.stop().await;
}

#[tokio::test]
async fn every_list_takes_the_page_sizes_the_document_states() {
    let app = spawn_app().await;
    let hook = app
        .create_webhook(json!({"project_owner_id": "o", "webhook_url": "https://example.com/h"}))
        .await;
    let deliveries = format!(
        "/api/v1/webhooks/{}/deliveries",
        hook["id"].as_str().unwrap()
    );
    for list in [
        "/api/v1/messages",
        "/api/v1/unrecognized",
        "/api/v1/notifications",
        "/api/v1/dlq",
        "/api/v1/quarantine",
        deliveries.as_str(),
    ] {
        for refused in ["0", "501", "", "2.5", "-1", "ten"] {
            let (status, error) = get(&app, &format!("{list}?limit={refused}")).await;
            assert_eq!(status, 400, "{list}?limit={refused}");
            assert!(
                error["message"].as_str().unwrap().starts_with("limit:"),
                "{error}"
            );
        }
        for taken in ["1", "500", "5.0"] {
            let (status, _) = get(&app, &format!("{list}?limit={taken}")).await;
            assert_eq!(status, 200, "{list}?limit={taken}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn typed_filters_refuse_what_their_schema_does_not_allow() {
    let app = spawn_app().await;
    for path in [
        "/api/v1/stats?bsp=",
        "/api/v1/stats?bsp=pigeon",
        "/api/v1/stats?to=",
        "/api/v1/stats?from=yesterday",
        "/api/v1/notifications?bsp=",
        "/api/v1/messages?status=",
        "/api/v1/messages?status=lost",
        "/api/v1/messages?cursor=",
        "/api/v1/messages?cursor=0-",
    ] {
        let (status, error) = get(&app, path).await;
        assert_eq!(status, 400, "{path}: {error}");
    }
    // A cursor in the documented form is a position, whether or not a
    // record sits there.
    let (status, page) = get(&app, "/api/v1/messages?cursor=0-0").await;
    assert_eq!(status, 200, "{page}");
    app.stop().await;
}

#[tokio::test]
async fn a_replay_body_may_be_absent_empty_or_null_and_is_otherwise_an_object() {
    let app = spawn_app().await;
    for path in ["/api/v1/dlq/replay", "/api/v1/quarantine/replay"] {
        for body in ["", "null", "{}", " {\"ids\": null} "] {
            let (status, answer) = post_json(&app, path, body).await;
            assert_eq!(status, 200, "{path} {body:?}: {answer}");
            assert_eq!(answer["replayed"], 0);
        }
        let (status, _) = admin(&app, reqwest::Method::POST, path, None).await;
        assert_eq!(status, 200, "{path} without a body");
        // A struct is not read from an array, and errors are JSON.
        let (status, _) = post_json(&app, path, "[null, null]").await;
        assert_eq!(status, 422, "{path}");
        let (status, _) = post_json(&app, path, "{\"ids\": ").await;
        assert_eq!(status, 400, "{path}");
        let (status, _) = admin(
            &app,
            reqwest::Method::POST,
            path,
            Some(("text/plain", "{}")),
        )
        .await;
        assert_eq!(status, 400, "{path} as text/plain");
    }
    // Empty times are absent; others must be RFC 3339.
    let (status, _) = post_json(
        &app,
        "/api/v1/dlq/replay",
        r#"{"since": "", "until": null}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_json(&app, "/api/v1/dlq/replay", r#"{"since": "soon"}"#).await;
    assert_eq!(status, 422);
    app.stop().await;
}

#[tokio::test]
async fn webhook_and_message_bodies_hold_to_their_schemas() {
    let app = spawn_app().await;
    let create = |body: Value| {
        let app = &app;
        async move { post_json(app, "/api/v1/webhooks", &body.to_string()).await }
    };
    let base = json!({"project_owner_id": "o", "webhook_url": "https://example.com/h"});
    let with = |patch: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        b
    };
    // JSON Schema's integers include 936.0.
    let (status, hook) = create(with(json!({"timeout_ms": 936.0, "max_in_flight": 4.0}))).await;
    assert_eq!(status, 201, "{hook}");
    assert_eq!(hook["timeout_ms"], 936);
    assert_eq!(hook["max_in_flight"], 4);
    for (refused, field) in [
        (json!({"timeout_ms": 936.5}), "timeout_ms"),
        (json!({"max_in_flight": 5e9}), "max_in_flight"),
        (
            json!({"webhook_url": "http://example.com:99999/"}),
            "webhook_url",
        ),
        (json!({"webhook_url": "http://999.1.1.1/"}), "webhook_url"),
        (json!({"webhook_url": "ftp://example.com/"}), "webhook_url"),
        (json!({"project_owner_id": " \t"}), "project_owner_id"),
        (json!({"topics": [" "]}), "topics"),
        (json!({"headers": {"bad name": "v"}}), "headers"),
        (json!({"headers": {"x-ok": "line\nbreak"}}), "headers"),
    ] {
        let (status, error) = create(with(refused.clone())).await;
        assert_eq!(status, 422, "{refused}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    // A message needs a wamid or a provider id, and neither may be blank.
    for (body, field) in [
        (json!({"bsp": "meta", "wamid": null}), "wamid"),
        (json!({"bsp": "meta", "wamid": " "}), "wamid"),
        (
            json!({"bsp": "meta", "bsp_message_id": ""}),
            "bsp_message_id",
        ),
        (json!({"bsp": "pigeon", "wamid": "wamid.X"}), "bsp"),
    ] {
        let (status, error) = post_json(&app, "/api/v1/messages", &body.to_string()).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    app.stop().await;
}
