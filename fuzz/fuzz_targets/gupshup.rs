//! The Gupshup adapter must never panic, whatever the body; every event it
//! returns must carry an id and its webhook's BSP, and ingest's probe must
//! not panic on it either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zen_gateway::model::Bsp;
use zen_gateway::providers::{Gupshup, Provider, Providers, RawWebhook};

fuzz_target!(|body: &[u8]| {
    let webhook = RawWebhook {
        event_id: "fuzz",
        bsp: Bsp::Gupshup,
        received_at: chrono::Utc::now(),
        body,
    };
    let parsed = Gupshup.parse(&webhook);
    for event in &parsed.events {
        assert!(!event.event_id.is_empty());
        assert_eq!(event.bsp, Bsp::Gupshup);
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = Providers::new().probe(Bsp::Gupshup, text);
    }
});
