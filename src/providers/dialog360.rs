//! 360dialog relays Meta's Cloud API webhooks unchanged ([`cloud_api`]), at
//! its own route, with its own label and credential. docs/PROVIDERS.md, "360dialog".

use super::cloud_api::{self, CloudApi};
use super::{CredentialEnv, Parsed, Provider, RawWebhook};
use crate::model::Bsp;

pub struct Dialog360;

impl Provider for Dialog360 {
    fn bsp(&self) -> Bsp {
        Bsp::Dialog360
    }

    fn name(&self) -> &'static str {
        "360dialog"
    }

    fn routes(&self) -> &'static [&'static str] {
        &["/webhook/360dialog"]
    }

    fn summary(&self) -> &'static str {
        "360dialog webhooks (the Cloud API shape)."
    }

    fn ack_body(&self) -> &'static str {
        r#"{"status":200,"message":"360dialog webhook received successfully"}"#
    }

    fn credential_env(&self) -> CredentialEnv {
        CredentialEnv {
            token: "DIALOG360_WEBHOOK_TOKEN",
            secret: "DIALOG360_WEBHOOK_SECRET",
            verify_token: None,
        }
    }

    fn is_inbound(&self, object: &str) -> Result<bool, serde_json::Error> {
        cloud_api::is_inbound(object)
    }

    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        CloudApi {
            prefix: "360dialog",
            provider_id_key: None,
        }
        .parse(webhook)
    }
}
