//! The Karix adapter must never panic, whatever the body; every event it
//! returns must carry an id and its webhook's BSP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zen_gateway::model::Bsp;
use zen_gateway::providers::{Karix, Provider, RawWebhook};

fuzz_target!(|body: &[u8]| {
    let webhook = RawWebhook {
        event_id: "fuzz",
        bsp: Bsp::Karix,
        received_at: chrono::Utc::now(),
        body,
    };
    let parsed = Karix.parse(&webhook);
    for event in &parsed.events {
        assert!(!event.event_id.is_empty());
        assert_eq!(event.bsp, Bsp::Karix);
        let _ = Karix.priority(event);
    }
});
