//! Meta WhatsApp Cloud API webhooks, in the Cloud API shape
//! ([`cloud_api`]): statuses, messages, out-of-band errors, and the other
//! fields (template status, account alerts and updates, quality updates) as
//! notifications. Several Meta apps may post here: `META_APP_SECRET` takes a
//! comma-separated list, and a signature by any of them is accepted.
//! docs/PROVIDERS.md, "Meta Cloud API".

use super::cloud_api::{self, CloudApi};
use super::{CredentialEnv, Parsed, Provider, RawWebhook, SignatureHeader};
use crate::model::Bsp;

pub struct Meta;

impl Provider for Meta {
    fn bsp(&self) -> Bsp {
        Bsp::Meta
    }

    fn name(&self) -> &'static str {
        "Meta"
    }

    fn routes(&self) -> &'static [&'static str] {
        &["/webhook/meta"]
    }

    fn summary(&self) -> &'static str {
        "WhatsApp Cloud API (Meta) notifications; `X-Hub-Signature-256` checked when `META_APP_SECRET` is set (a comma-separated list: one secret per Meta app)."
    }

    fn ack_body(&self) -> &'static str {
        r#"{"status":200,"message":"Meta webhook received successfully"}"#
    }

    fn credential_env(&self) -> CredentialEnv {
        CredentialEnv {
            token: "META_WEBHOOK_TOKEN",
            secret: "META_APP_SECRET",
            verify_token: Some("META_VERIFY_TOKEN"),
        }
    }

    fn signature_header(&self) -> SignatureHeader {
        SignatureHeader {
            name: "x-hub-signature-256",
            prefix: "sha256=",
        }
    }

    fn is_inbound(&self, object: &str) -> Result<bool, serde_json::Error> {
        cloud_api::is_inbound(object)
    }

    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        CloudApi {
            prefix: "meta",
            provider_id_key: None,
        }
        .parse(webhook)
    }
}
