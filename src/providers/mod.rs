//! Provider adapters: raw webhook body → unified events.
//!
//! An adapter is a pure function of the body. One body may carry many events
//! (Datagen arrays, Meta batches). Anything an adapter does not understand is
//! returned as [`UnrecognizedEvent`], never dropped and never an error.
//! A provider is the gateway's one extension point: its file implements
//! [`Provider`] (routes and aliases, legacy ack body, credentials and
//! signature, queue priority, legacy queue body, parsing), and routes,
//! inbound auth, ingest and configuration are derived from the list in
//! [`Providers::new`]. Adding one is that file, plus its [`Bsp`] variant and
//! one line in [`Providers::new`] (both in this file), and its fixtures and
//! tests.

mod aisensy;
mod cloud_api;
mod datagen;
mod dialog360;
mod gupshup;
mod json;
mod karix;
mod meta;
mod rcm;
mod twilio;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use serde::{Deserialize, Serialize};

use crate::model::{UnifiedEvent, UnrecognizedEvent};

pub use aisensy::Aisensy;
pub use datagen::Datagen;
pub use dialog360::Dialog360;
pub use gupshup::Gupshup;
pub use json::text as json_text;
pub use karix::Karix;
pub use meta::Meta;
pub use twilio::Twilio;

// The one list of providers besides `Providers::new`; each variant's adapter
// is its own file.
/// A Business Solution Provider (or Meta itself) that posts webhooks to us.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Bsp {
    #[default]
    Datagen,
    Aisensy,
    Karix,
    Meta,
    Gupshup,
    Twilio,
    #[serde(rename = "360dialog")]
    Dialog360,
}

impl Bsp {
    pub const ALL: [Bsp; 7] = [
        Bsp::Datagen,
        Bsp::Aisensy,
        Bsp::Karix,
        Bsp::Meta,
        Bsp::Gupshup,
        Bsp::Twilio,
        Bsp::Dialog360,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bsp::Datagen => "datagen",
            Bsp::Aisensy => "aisensy",
            Bsp::Karix => "karix",
            Bsp::Meta => "meta",
            Bsp::Gupshup => "gupshup",
            Bsp::Twilio => "twilio",
            Bsp::Dialog360 => "360dialog",
        }
    }

    pub fn parse(s: &str) -> Option<Bsp> {
        Bsp::ALL
            .into_iter()
            .find(|b| b.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl std::fmt::Display for Bsp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A webhook as the processor sees it.
#[derive(Debug, Clone, Copy)]
pub struct RawWebhook<'a> {
    pub event_id: &'a str,
    pub bsp: Bsp,
    pub received_at: DateTime<Utc>,
    pub body: &'a [u8],
}

impl RawWebhook<'_> {
    /// The id of the `index`-th event of this webhook: stable across
    /// reprocessing, so downstream dedup and `X-Event-ID` hold.
    pub fn event_id_at(&self, index: usize) -> String {
        format!("{}-{index}", self.event_id)
    }

    /// Its `index`-th event.
    pub fn event(
        &self, index: usize, legacy_type: String, unified_type: String, raw: serde_json::Value,
        message: Option<crate::model::MessageEvent>,
    ) -> UnifiedEvent {
        UnifiedEvent {
            event_id: self.event_id_at(index),
            bsp: self.bsp,
            legacy_type,
            unified_type,
            received_at: self.received_at,
            raw,
            message,
            contact: None,
        }
    }

    pub fn unrecognized(&self, reason: impl Into<String>, body: String) -> UnrecognizedEvent {
        UnrecognizedEvent {
            event_id: self.event_id.to_owned(),
            bsp: self.bsp,
            received_at: self.received_at,
            reason: reason.into(),
            body,
        }
    }

    fn whole_body(&self) -> String {
        String::from_utf8_lossy(self.body).into_owned()
    }
}

/// What an adapter made of one webhook.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parsed {
    pub events: Vec<UnifiedEvent>,
    pub unrecognized: Vec<UnrecognizedEvent>,
}

impl Parsed {
    /// The whole body kept as unrecognized.
    pub fn unrecognized_body(webhook: &RawWebhook<'_>, reason: impl Into<String>) -> Parsed {
        Parsed {
            events: Vec::new(),
            unrecognized: vec![webhook.unrecognized(reason, webhook.whole_body())],
        }
    }
}

/// Where a provider puts its HMAC-SHA256 body signature (hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureHeader {
    /// Lower-case header name.
    pub name: &'static str,
    /// Text before the hex digest, e.g. Meta's `sha256=`.
    pub prefix: &'static str,
}

/// How a provider encodes its bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    /// `application/x-www-form-urlencoded` (Twilio).
    Form,
}

/// The environment variables of a provider's inbound credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialEnv {
    /// The shared token (`X-Webhook-Token` or `?token=`).
    pub token: &'static str,
    /// The HMAC secret of [`Provider::signature_header`].
    pub secret: &'static str,
    /// The token of a `hub.*` subscription handshake on `GET` of its first
    /// route, for providers that have one.
    pub verify_token: Option<&'static str>,
}

/// One provider: everything the gateway knows of a BSP lives in its
/// implementation (its routes, its legacy answer, its credentials and
/// signature, its queue priority, its body format), so a new BSP is one file
/// plus its [`Bsp`] variant.
pub trait Provider: Send + Sync {
    fn bsp(&self) -> Bsp;
    /// Its name as people write it ("AiSensy").
    fn name(&self) -> &'static str;
    /// The paths it posts to: `/webhook/<bsp>` first, then legacy aliases.
    fn routes(&self) -> &'static [&'static str];
    /// One line for the API document.
    fn summary(&self) -> &'static str;
    /// The legacy gateway's 200 body, byte for byte.
    fn ack_body(&self) -> &'static str;
    /// The media type of [`Provider::ack_body`].
    fn ack_content_type(&self) -> &'static str {
        "application/json; charset=utf-8"
    }
    /// How its bodies are encoded (ingest validates accordingly).
    fn body_format(&self) -> BodyFormat {
        BodyFormat::Json
    }
    /// Where its inbound credentials are configured.
    fn credential_env(&self) -> CredentialEnv;
    /// The header that carries the body signature when a secret is configured.
    fn signature_header(&self) -> SignatureHeader {
        SignatureHeader {
            name: "x-webhook-signature",
            prefix: "",
        }
    }
    /// Whether its signature may also be over the body re-serialized as
    /// compact JSON (a sender that signs its parsed object).
    fn signs_compact_json(&self) -> bool {
        false
    }
    /// Whether its signature is Twilio's: base64 HMAC-SHA1 of the public URL
    /// it called followed by the sorted form parameters, in
    /// [`Provider::signature_header`].
    fn signs_public_url(&self) -> bool {
        false
    }
    /// Normalizes a body. Must not panic on any input.
    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed;
    /// Whether one JSON object of its bodies is an inbound user message,
    /// which is queued before status reports. It parses the whole text, so
    /// `Ok` also means the text is JSON: ingest's one validating pass. An
    /// error: not JSON, or JSON this probe cannot read (ingest then only
    /// checks that it is JSON).
    fn is_inbound(&self, object: &str) -> Result<bool, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(object).map(|_| false)
    }
    /// Whether a JSON array of its events (a batch) is one of its bodies;
    /// otherwise only a JSON object is.
    fn takes_batches(&self) -> bool {
        false
    }
    /// Why a well-formed body is still not one of its events (a form
    /// without the field every callback carries), or `None`.
    fn refuse(&self, _text: &str) -> Option<&'static str> {
        None
    }
    /// The body as the legacy BSP queue carries it (`batch_len`: the number
    /// of events of a JSON array body).
    fn legacy_queue_body(&self, body: &bytes::Bytes, _batch_len: Option<usize>) -> bytes::Bytes {
        body.clone()
    }
}

/// Queue priority of an inbound user message (status reports: 0).
pub const INBOUND_PRIORITY: u8 = 5;

/// What ingest learns about a body in its one validating pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub priority: u8,
    pub batch_len: Option<usize>,
}

/// Why ingest refused a body.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    NotJson(#[from] serde_json::Error),
    /// Well-formed, but not one of the route's events.
    #[error("{0}")]
    NotAnEvent(&'static str),
}

/// The registered adapters, by BSP: the registry. The gateway builds it
/// once, when its settings load (`Settings::providers`), and hands it to
/// what needs it; a clone shares it.
#[derive(Clone)]
pub struct Providers {
    by_bsp: Arc<HashMap<Bsp, Arc<dyn Provider>>>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.all().map(|p| p.bsp())).finish()
    }
}

impl Providers {
    /// A registry with no provider (before the settings fill it in).
    pub fn empty() -> Self {
        Providers {
            by_bsp: Arc::new(HashMap::new()),
        }
    }

    /// Every provider the gateway serves. (No `Default`: the registry is
    /// built in one place, on purpose, not wherever a default is asked for.)
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let adapters: Vec<Arc<dyn Provider>> = vec![
            Arc::new(Datagen),
            Arc::new(Aisensy),
            Arc::new(Karix),
            Arc::new(Meta),
            Arc::new(Gupshup),
            Arc::new(Twilio),
            Arc::new(Dialog360),
        ];
        Providers {
            by_bsp: Arc::new(adapters.into_iter().map(|a| (a.bsp(), a)).collect()),
        }
    }

    pub fn get(&self, bsp: Bsp) -> Option<&Arc<dyn Provider>> {
        self.by_bsp.get(&bsp)
    }

    /// Every provider, in [`Bsp::ALL`] order.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        Bsp::ALL.iter().filter_map(|b| self.by_bsp.get(b))
    }

    /// Validates `text` as one of `bsp`'s bodies and finds its queue
    /// priority and batch size: an object is [`INBOUND_PRIORITY`] when its
    /// provider says it is an inbound user message; an array (a batch,
    /// mostly status reports, as the legacy queues have always carried it,
    /// for providers that send them) is 0. Anything else is refused: a
    /// JSON string or number is no provider's event.
    pub fn probe(&self, bsp: Bsp, text: &str) -> Result<Probe, ProbeError> {
        use serde::de::IgnoredAny;
        let priority = |inbound: bool| if inbound { INBOUND_PRIORITY } else { 0 };
        let provider = self.get(bsp);
        if let Some(p) = provider.filter(|p| p.body_format() == BodyFormat::Form) {
            if let Some(reason) = p.refuse(text) {
                return Err(ProbeError::NotAnEvent(reason));
            }
            return Ok(Probe {
                priority: priority(p.is_inbound(text).unwrap_or(false)),
                batch_len: None,
            });
        }
        let takes_batches = provider.is_some_and(|p| p.takes_batches());
        match text.trim_start().as_bytes().first() {
            Some(b'[') if takes_batches => {
                let items: Vec<IgnoredAny> = serde_json::from_str(text)?;
                Ok(Probe {
                    priority: 0,
                    batch_len: Some(items.len()),
                })
            }
            // The provider's probe validates as it reads; valid JSON it
            // cannot read (say, a duplicate key) gets no priority, but is
            // still accepted.
            Some(b'{') => match provider.map(|p| p.is_inbound(text)) {
                Some(Ok(inbound)) => Ok(Probe {
                    priority: priority(inbound),
                    batch_len: None,
                }),
                _ => Ok(serde_json::from_str::<IgnoredAny>(text).map(|_| Probe::default())?),
            },
            // Well-formed or not? The answer names the right fault.
            _ => {
                serde_json::from_str::<IgnoredAny>(text)?;
                Err(ProbeError::NotAnEvent(if takes_batches {
                    "expected a JSON object, or an array of them"
                } else {
                    "expected a JSON object"
                }))
            }
        }
    }

    /// Parses a webhook with its BSP's adapter. A missing adapter or a panic
    /// inside one keeps the body as unrecognized instead of losing it.
    pub fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        let Some(adapter) = self.get(webhook.bsp) else {
            return Parsed::unrecognized_body(webhook, "no adapter for this provider");
        };
        std::panic::catch_unwind(AssertUnwindSafe(|| adapter.parse(webhook))).unwrap_or_else(
            |_| {
                tracing::error!(event.id = webhook.event_id, bsp = %webhook.bsp, "provider adapter panicked; body kept as unrecognized");
                Parsed::unrecognized_body(webhook, "adapter panicked on this body")
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Bsp;

    #[test]
    fn probes_priority_and_batches() {
        assert_eq!(
            Providers::new()
                .probe(Bsp::Datagen, " [1, {}, []]")
                .unwrap()
                .batch_len,
            Some(3)
        );
        assert_eq!(
            Providers::new()
                .probe(Bsp::Datagen, r#"{"eventContent":{"message":{}}}"#)
                .unwrap()
                .priority,
            5
        );
        assert_eq!(
            Providers::new()
                .probe(Bsp::Karix, r#"{"events":{}}"#)
                .unwrap()
                .priority,
            0
        );
        assert_eq!(
            Providers::new()
                .probe(Bsp::Aisensy, r#"{"topic":"message.sender.user"}"#)
                .unwrap()
                .priority,
            5
        );
        assert_eq!(
            Providers::new()
                .probe(Bsp::Aisensy, r#"{"topic":5}"#)
                .unwrap()
                .priority,
            0
        );
        assert_eq!(
            Providers::new()
                .probe(Bsp::Aisensy, r#"{"a":1,"a":2}"#)
                .unwrap(),
            Probe::default()
        );
        // A batch keeps the status reports' priority, inbound or not.
        assert_eq!(
            Providers::new()
                .probe(Bsp::Datagen, r#"[{"events":{}},{"eventContent":{}}]"#)
                .unwrap(),
            Probe {
                priority: 0,
                batch_len: Some(2)
            }
        );
        let meta_in = include_str!("../../tests/fixtures/meta_inbound_text.json");
        let meta_status = include_str!("../../tests/fixtures/meta_status_sent.json");
        assert_eq!(
            Providers::new().probe(Bsp::Meta, meta_in).unwrap().priority,
            5
        );
        assert_eq!(
            Providers::new()
                .probe(Bsp::Meta, meta_status)
                .unwrap()
                .priority,
            0
        );
        assert!(Providers::new().probe(Bsp::Datagen, "{").is_err());
        assert!(Providers::new().probe(Bsp::Datagen, "[1,").is_err());
        assert!(Providers::new().probe(Bsp::Datagen, "").is_err());
    }

    #[test]
    fn a_body_that_is_no_event_of_its_route_is_refused() {
        let not_an_event = |bsp, text| {
            matches!(
                Providers::new().probe(bsp, text),
                Err(ProbeError::NotAnEvent(_))
            )
        };
        // Well-formed JSON, but no provider's event.
        for text in ["\"text\"", "42", "null", "true"] {
            assert!(not_an_event(Bsp::Datagen, text), "{text}");
            assert!(not_an_event(Bsp::Meta, text), "{text}");
        }
        // A batch only where the provider sends batches.
        assert!(not_an_event(Bsp::Meta, "[{}]"));
        assert!(not_an_event(Bsp::Aisensy, "[]"));
        for bsp in [Bsp::Datagen, Bsp::Gupshup] {
            assert!(Providers::new().probe(bsp, "[{}]").is_ok(), "{bsp}");
        }
        assert!(not_an_event(Bsp::Karix, "[{}]"));
        // Malformed stays "not JSON".
        assert!(matches!(
            Providers::new().probe(Bsp::Meta, "\"open"),
            Err(ProbeError::NotJson(_))
        ));
        // A Twilio callback names its message.
        assert!(not_an_event(Bsp::Twilio, ""));
        assert!(not_an_event(Bsp::Twilio, "MessageSid=&Body=hi"));
        assert!(
            Providers::new()
                .probe(Bsp::Twilio, "MessageSid=SM1&MessageStatus=sent")
                .is_ok()
        );
        assert!(
            Providers::new()
                .probe(Bsp::Twilio, "SmsSid=SM1&Body=hi")
                .is_ok()
        );
        assert!(
            Providers::new()
                .probe(Bsp::Twilio, r#"{"MessageSid":"SM1"}"#)
                .is_ok()
        );
    }
}
