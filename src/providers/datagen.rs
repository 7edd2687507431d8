//! Datagen (a Karix reseller): the RCM shape with the wamid in `events.mid`,
//! single events or JSON arrays of them. docs/PROVIDERS.md, "Datagen".

use bytes::Bytes;

use super::rcm::{self, Flavor};
use super::{CredentialEnv, Parsed, Provider, RawWebhook};
use crate::model::Bsp;

pub struct Datagen;

const FLAVOR: Flavor = Flavor {
    bsp: Bsp::Datagen,
    mid_is_wamid: true,
};

impl Provider for Datagen {
    fn bsp(&self) -> Bsp {
        Bsp::Datagen
    }

    fn name(&self) -> &'static str {
        "Datagen"
    }

    fn routes(&self) -> &'static [&'static str] {
        &["/webhook/datagen", "/datagen-webhook"]
    }

    fn summary(&self) -> &'static str {
        "Datagen delivery reports and replies."
    }

    fn ack_body(&self) -> &'static str {
        r#"{"status":200,"message":"Datagen webhook received successfully"}"#
    }

    fn credential_env(&self) -> CredentialEnv {
        CredentialEnv {
            token: "DATAGEN_WEBHOOK_TOKEN",
            secret: "DATAGEN_WEBHOOK_SECRET",
            verify_token: None,
        }
    }

    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        rcm::parse_body(&FLAVOR, webhook)
    }

    /// It posts batches as JSON arrays.
    fn takes_batches(&self) -> bool {
        true
    }

    fn is_inbound(&self, object: &str) -> Result<bool, serde_json::Error> {
        rcm::is_inbound(object)
    }

    /// The legacy BSP queue carries a batch as
    /// `{"batch_data":[…],"batch_size":n}` (the adapter reads both forms).
    fn legacy_queue_body(&self, body: &Bytes, batch_len: Option<usize>) -> Bytes {
        let Some(n) = batch_len else {
            return body.clone();
        };
        let raw = body.as_ref();
        let start = raw
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(0);
        let mut out = Vec::with_capacity(raw.len() + 40);
        out.extend_from_slice(b"{\"batch_data\":");
        out.extend_from_slice(&raw[start..]);
        out.extend_from_slice(format!(",\"batch_size\":{n}}}").as_bytes());
        Bytes::from(out)
    }
}
