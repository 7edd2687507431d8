//! The OpenAPI document, generated from the handlers' annotations: every
//! route is registered through `utoipa_axum::routes!`, so a route cannot be
//! served without being documented.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every JSON error: `{"status":<code>,"message":"…"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    status: u16,
    message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "zen-gateway",
        description = "WhatsApp BSP webhook gateway: durable ingest, one record per message, signed forwarding to client webhooks. The `/webhook/*` routes and `/`, `/health` keep the legacy gateway's contract byte for byte."
    ),
    modifiers(&AdminAuth),
    components(schemas(ErrorBody, crate::model::Status)),
    tags(
        (name = "webhooks (BSP)", description = "Where providers post; 200 means durably accepted"),
        (name = "messages", description = "Tracked messages (admin key)"),
        (name = "contacts", description = "One contact per WhatsApp user per business number, found by any identifier (admin key)"),
        (name = "webhooks", description = "Client webhooks, deliveries and the DLQ (admin key)"),
        (name = "operations", description = "Liveness, readiness, metrics, this document")
    )
)]
pub struct ApiDoc;

/// `Authorization: Bearer <ADMIN_API_KEY>` on the admin API, and the
/// optional metrics token.
struct AdminAuth;

impl Modify for AdminAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // `METRICS_TOKEN`, when set, on `GET /metrics`.
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document of the routes served for `providers`.
pub fn document_json(providers: &crate::providers::Providers) -> String {
    let mut doc =
        serde_json::to_value(super::openapi(providers)).expect("the OpenAPI document serializes");
    refine(&mut doc);
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes")
}

/// The rules the derive macros cannot state: which of two fields is
/// required, and what a header name and value may hold.
fn refine(doc: &mut serde_json::Value) {
    let schemas = &mut doc["components"]["schemas"];
    schemas["RegisterMessageIn"]["anyOf"] = serde_json::json!([
        {"required": ["wamid"], "properties": {"wamid": {"type": "string"}}},
        {"required": ["bsp_message_id"], "properties": {"bsp_message_id": {"type": "string"}}}
    ]);
    // Empty is the same as absent.
    for field in ["since", "until"] {
        let time = &mut schemas["ReplayFilter"]["properties"][field];
        if let Some(description) = time.get("description").cloned() {
            *time = serde_json::json!({"description": description, "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "string", "maxLength": 0},
                {"type": "null"}]});
        }
    }
    schemas["Delivery"] = delivery_schema();
    // The filter's grammar, as `forwarding::filter` reads it.
    let (filter, condition) = filter_schemas();
    schemas["PayloadFilter"] = filter;
    schemas["FilterCondition"] = condition;
    for owner in ["WebhookOptions", "WebhookConfig"] {
        let field = &mut schemas[owner]["properties"]["filter"];
        if let Some(description) = field.get("description").cloned() {
            *field = serde_json::json!({"description": description, "anyOf": [
                {"$ref": "#/components/schemas/PayloadFilter"}, {"type": "null"}]});
        }
    }
    doc["webhooks"] = delivered_events();
    let schemas = &mut doc["components"]["schemas"];
    // In a change, `null` (like absence) leaves the URL as it is.
    if let Some(url) = schemas["WebhookChanges"]["allOf"][1]["properties"].get_mut("webhook_url") {
        let given = url.clone();
        *url = serde_json::json!({"description": "The new URL; absent or null: unchanged",
            "anyOf": [given, {"type": "null"}]});
    }
    let headers = &mut schemas["WebhookOptions"]["properties"]["headers"];
    if headers.is_object() {
        headers["maxProperties"] = crate::forwarding::webhooks::MAX_HEADERS.into();
        // An HTTP token; a value without control characters (tab allowed).
        headers["propertyNames"] = serde_json::json!({"pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"});
        headers["additionalProperties"] =
            serde_json::json!({"type": "string", "pattern": "^[^\\x00-\\x08\\x0a-\\x1f\\x7f]*$"});
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn document(
    axum::extract::State(state): axum::extract::State<super::AppState>,
) -> impl IntoResponse {
    // Built once per process, on the first request.
    static DOC: OnceLock<String> = OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOC.get_or_init(|| document_json(state.auth.providers()))
            .as_str(),
    )
}

/// The body every delivery has, whatever its event.
fn delivery_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "description": "What a client webhook receives (POST, application/json).",
        "required": ["data", "event_id", "event_type", "timestamp"],
        "properties": {
            "data": {"type": "object", "description": "The provider's own object for this event, as it sent it (a status, a message, a notification's change), or the gateway's for its own events"},
            "event_id": {"type": "string", "description": "Stable across retries; also `X-Event-ID` and `webhook-id`"},
            "event_type": {"type": "string", "description": "The legacy name when the webhook subscribed with it, else the unified one; also `X-Event-Type`"},
            "timestamp": {"type": "integer", "description": "Unix ms of the attempt"},
            "message": {"anyOf": [{"$ref": "#/components/schemas/MessageRecord"}, {"type": "null"}],
                "description": "The message's record as this event left it (the latest 8 history entries); absent for events that are not about a message"},
        }
    })
}

/// The OpenAPI 3.1 `webhooks` section: one entry per event type a client
/// webhook can subscribe to, with the body and headers it is sent, so that
/// a client can generate its receiver.
fn delivered_events() -> serde_json::Value {
    use crate::model::Status;
    let mut events: Vec<(String, String)> = [
        Status::Accepted,
        Status::Sent,
        Status::Delivered,
        Status::Read,
        Status::Played,
        Status::Failed,
        Status::Received,
    ]
    .into_iter()
    .map(|s| {
        (
            s.event_type().to_owned(),
            format!("A message became `{}` (unified name; the provider's legacy names, such as `datagen.delivery`, carry the same body).", s.as_str()),
        )
    })
    .collect();
    for (name, what) in [
        (
            "message.unknown",
            "A status the gateway does not know, kept in the record's history.",
        ),
        (
            "contact.marketing_preference",
            "A user stopped or resumed marketing messages (Meta `user_preferences`); `data` is the preference entry.",
        ),
        (
            "contact.user_changed_number",
            "A user's phone number changed (Meta system message); `data` is the message.",
        ),
        (
            "contact.user_changed_user_id",
            "A user's business-scoped user id changed (Meta system message).",
        ),
        ("test.webhook", "Sent by `POST /api/v1/webhooks/{id}/test`."),
        (
            "endpoint.disabled",
            "To `OPERATIONS_WEBHOOK_URL`: a webhook was deactivated by its endpoint's 410.",
        ),
        (
            "endpoint.failing",
            "To `OPERATIONS_WEBHOOK_URL`: an endpoint has failed for `ENDPOINT_FAILING_AFTER` with its circuit open.",
        ),
    ] {
        events.push((name.to_owned(), what.to_owned()));
    }
    let header = |name: &str, description: &str| {
        serde_json::json!({"name": name, "in": "header", "required": false,
            "description": description, "schema": {"type": "string"}})
    };
    let parameters = serde_json::json!([
        header("X-Event-Type", "The event type"),
        header("X-Event-ID", "The event id, stable across retries"),
        header("X-Attempt-Count", "0 on the first attempt"),
        header(
            "X-Webhook-Signature",
            "When signing is on: lower-case hex HMAC-SHA256 of the body, keyed by the secret's bytes (legacy)"
        ),
        header("webhook-id", "Standard Webhooks: the event id"),
        header("webhook-timestamp", "Standard Webhooks: Unix seconds"),
        header(
            "webhook-signature",
            "Standard Webhooks: `v1,<base64>`; during a rotation's grace window two, space-separated (new, then old)"
        ),
        header(
            "traceparent",
            "W3C trace context: the trace of the BSP's request when it sent one (else one per webhook), with a span id per attempt"
        ),
    ]);
    let mut out = serde_json::Map::new();
    for (name, description) in events {
        out.insert(name.clone(), serde_json::json!({"post": {
            "summary": name,
            "description": description,
            "operationId": format!("deliver_{}", name.replace('.', "_")),
            "tags": ["deliveries"],
            "parameters": parameters,
            "requestBody": {"required": true, "content": {"application/json":
                {"schema": {"$ref": "#/components/schemas/Delivery"}}}},
            "responses": {
                "2XX": {"description": "Delivered; anything else is retried (410 deactivates the webhook)"},
            }
        }}));
    }
    serde_json::Value::Object(out)
}

/// A field path: not empty, no empty segment, not starting with `$`.
const FIELD_PATH: &str = "^[^$.][^.]*(\\.[^.]+)*$";

/// JSON Schemas of a payload filter and of a field's condition.
fn filter_schemas() -> (serde_json::Value, serde_json::Value) {
    let filter = serde_json::json!({
        "type": "object",
        "description": "Field paths (dotted, array items by index) to conditions, and `$and` / `$or` (arrays of filters) or `$not` (a filter). At most 8 KB and 8 levels deep.",
        "patternProperties": {
            "^\\$(and|or)$": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/PayloadFilter"}},
            "^\\$not$": {"$ref": "#/components/schemas/PayloadFilter"},
            FIELD_PATH: {"$ref": "#/components/schemas/FilterCondition"},
        },
        "additionalProperties": false,
    });
    let comparable = serde_json::json!({"type": ["number", "string"]});
    let condition = serde_json::json!({
        "description": "A value the field equals (an array field: one of its items), an object of operators, or an object of nested fields.",
        "anyOf": [
            {"not": {"type": "object"}},
            {"type": "object", "minProperties": 1, "additionalProperties": false, "properties": {
                "$eq": {}, "$neq": {}, "$ne": {},
                "$in": {"type": "array"}, "$nin": {"type": "array"},
                "$gt": comparable, "$gte": comparable, "$lt": comparable, "$lte": comparable,
                "$exist": {"type": "boolean"}, "$exists": {"type": "boolean"},
                "$regex": {"type": "string", "description": "Rust `regex` syntax (no look-around or back-references)"},
                "$startsWith": {"type": "string"}, "$endsWith": {"type": "string"},
                "$not": {"$ref": "#/components/schemas/FilterCondition"},
            }},
            {"type": "object", "additionalProperties": false, "patternProperties": {
                FIELD_PATH: {"$ref": "#/components/schemas/FilterCondition"},
            }},
        ]
    });
    (filter, condition)
}
