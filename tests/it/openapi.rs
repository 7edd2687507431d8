//! The OpenAPI document against the served routes: every documented
//! operation is routed, every route of the contract is documented, and the
//! committed `docs/openapi.json` is the document the gateway serves
//! (regenerate with `ZEN_UPDATE_OPENAPI=1 cargo test openapi`).

use std::path::Path;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

/// The HTTP contract of DESIGN §6.
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/webhook/datagen"),
    ("post", "/datagen-webhook"),
    ("post", "/webhook/aisensy"),
    ("post", "/partner-webhook"),
    ("post", "/webhook/karix"),
    ("post", "/webhook/meta"),
    ("get", "/webhook/meta"),
    ("get", "/"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("post", "/api/v1/messages"),
    ("get", "/api/v1/messages"),
    ("get", "/api/v1/messages/{id}"),
    ("get", "/api/v1/stats"),
    ("get", "/api/v1/unrecognized"),
    ("post", "/api/v1/webhooks"),
    ("get", "/api/v1/webhooks"),
    ("get", "/api/v1/webhooks/{id}"),
    ("patch", "/api/v1/webhooks/{id}"),
    ("delete", "/api/v1/webhooks/{id}"),
    ("post", "/api/v1/webhooks/{id}/rotate-secret"),
    ("post", "/api/v1/webhooks/{id}/test"),
    ("get", "/api/v1/webhooks/{id}/deliveries"),
    ("get", "/api/v1/contacts/{id}"),
    ("get", "/api/v1/dlq"),
    ("post", "/api/v1/dlq/replay"),
    ("get", "/api/v1/quarantine"),
    ("post", "/api/v1/quarantine/replay"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/notifications"),
    ("post", "/webhook/gupshup"),
    ("post", "/webhook/twilio"),
    ("post", "/webhook/360dialog"),
];

fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                ops.push((method.clone(), path.clone()));
            }
        }
    }
    ops.sort();
    ops
}

#[tokio::test]
async fn the_openapi_document_matches_the_served_routes() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let served = resp.text().await.unwrap();
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let documented = operations(&doc);
    let mut contract: Vec<(String, String)> = CONTRACT
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    contract.sort();
    assert_eq!(
        documented, contract,
        "documented operations vs the contract"
    );

    // Every documented operation is routed: the router's fallback (Gin's
    // text 404) never answers it.
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "no-such-id");
        let resp = app
            .client
            .request(
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                app.url(&concrete),
            )
            .bearer_auth(ADMIN_KEY)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert!(
            !(status == 404 && body == "404 page not found") && status != 405,
            "{method} {path} is documented but not routed ({status} {body})"
        );
    }

    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("ZEN_UPDATE_OPENAPI").is_some() {
        std::fs::write(&committed, format!("{served}\n")).unwrap();
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
    assert_eq!(
        on_disk.trim_end(),
        served.trim_end(),
        "docs/openapi.json is stale: run ZEN_UPDATE_OPENAPI=1 cargo test openapi"
    );
    app.stop().await;
}

/// The `webhooks` section names every delivered event type with the body a
/// client receives, and the filter schema states the grammar the server
/// reads.
#[tokio::test]
async fn the_document_describes_what_clients_receive_and_how_to_filter_it() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for event in [
        "message.sent",
        "message.delivered",
        "message.read",
        "message.played",
        "message.failed",
        "message.received",
        "contact.marketing_preference",
        "test.webhook",
    ] {
        let body =
            &doc["webhooks"][event]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["$ref"], "#/components/schemas/Delivery", "{event}");
    }
    let delivery = &doc["components"]["schemas"]["Delivery"];
    for field in ["data", "event_id", "event_type", "timestamp", "message"] {
        assert!(delivery["properties"].get(field).is_some(), "{field}");
    }
    let filter = &doc["components"]["schemas"]["PayloadFilter"];
    assert_eq!(filter["additionalProperties"], false);
    assert!(doc["components"]["schemas"]["FilterCondition"]["anyOf"].is_array());
    app.stop().await;
}
