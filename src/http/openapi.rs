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
    components(schemas(ErrorBody)),
    tags(
        (name = "webhooks (BSP)", description = "Where providers post; 200 means durably accepted"),
        (name = "messages", description = "Tracked messages (admin key)"),
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
    super::openapi(providers)
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
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
