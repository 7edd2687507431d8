//! Karix (Tanla) RCM callbacks: `events.mid` is Karix's own message id, not a
//! wamid. docs/PROVIDERS.md, "Karix".

use super::rcm::{self, Flavor};
use super::{CredentialEnv, Parsed, Provider, RawWebhook};
use crate::model::Bsp;

pub struct Karix;

const FLAVOR: Flavor = Flavor {
    bsp: Bsp::Karix,
    mid_is_wamid: false,
};

impl Provider for Karix {
    fn bsp(&self) -> Bsp {
        Bsp::Karix
    }

    fn name(&self) -> &'static str {
        "Karix"
    }

    fn routes(&self) -> &'static [&'static str] {
        &["/webhook/karix"]
    }

    fn summary(&self) -> &'static str {
        "Karix RCM callbacks."
    }

    fn ack_body(&self) -> &'static str {
        r#"{"status":200,"message":"Karix webhook received successfully"}"#
    }

    fn credential_env(&self) -> CredentialEnv {
        CredentialEnv {
            token: "KARIX_WEBHOOK_TOKEN",
            secret: "KARIX_WEBHOOK_SECRET",
            verify_token: None,
        }
    }

    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        rcm::parse_body(&FLAVOR, webhook)
    }

    fn is_inbound(&self, object: &str) -> Result<bool, serde_json::Error> {
        rcm::is_inbound(object)
    }
}
