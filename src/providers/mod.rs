//! Provider adapters: raw webhook body → unified events.
//!
//! An adapter is a pure function of the body. One body may carry many events
//! (Datagen arrays, Meta batches). Anything an adapter does not understand is
//! returned as [`UnrecognizedEvent`], never dropped and never an error.
//! Adding a provider is one file implementing [`Provider`] plus one line in
//! [`Providers::new`].

mod aisensy;
mod datagen;
mod json;
mod karix;
mod meta;
mod rcm;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::model::{Bsp, UnifiedEvent, UnrecognizedEvent};

pub use aisensy::Aisensy;
pub use datagen::Datagen;
pub use json::text as json_text;
pub use karix::Karix;
pub use meta::Meta;

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

/// One provider's webhook format.
pub trait Provider: Send + Sync {
    fn bsp(&self) -> Bsp;
    /// The header that carries the body signature when a secret is configured.
    fn signature_header(&self) -> SignatureHeader {
        SignatureHeader {
            name: "x-webhook-signature",
            prefix: "",
        }
    }
    /// Normalizes a body. Must not panic on any input.
    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed;
    /// Queue priority for the raw event on the BSP queue (0–10): inbound user
    /// messages go before status reports.
    fn priority(&self, _event: &UnifiedEvent) -> u8 {
        0
    }
}

/// The registered adapters, by BSP.
#[derive(Clone)]
pub struct Providers {
    by_bsp: HashMap<Bsp, Arc<dyn Provider>>,
}

impl Default for Providers {
    fn default() -> Self {
        Self::new()
    }
}

impl Providers {
    pub fn new() -> Self {
        let adapters: Vec<Arc<dyn Provider>> = vec![
            Arc::new(Datagen),
            Arc::new(Aisensy),
            Arc::new(Karix),
            Arc::new(Meta),
        ];
        Providers {
            by_bsp: adapters.into_iter().map(|a| (a.bsp(), a)).collect(),
        }
    }

    pub fn get(&self, bsp: Bsp) -> Option<&Arc<dyn Provider>> {
        self.by_bsp.get(&bsp)
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
