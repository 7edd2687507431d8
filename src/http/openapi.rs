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
