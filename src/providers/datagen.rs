//! Datagen (a Karix reseller): the RCM shape with the wamid in `events.mid`,
//! single events or JSON arrays of them. PROVIDERS.md §4.

use super::rcm::{self, Flavor};
use super::{Parsed, Provider, RawWebhook};
use crate::model::{Bsp, Direction, UnifiedEvent};

pub struct Datagen;

const FLAVOR: Flavor = Flavor {
    bsp: Bsp::Datagen,
    mid_is_wamid: true,
};

impl Provider for Datagen {
    fn bsp(&self) -> Bsp {
        Bsp::Datagen
    }

    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        rcm::parse_body(&FLAVOR, webhook)
    }

    /// Inbound user messages (every content type) before status reports.
    fn priority(&self, event: &UnifiedEvent) -> u8 {
        match &event.message {
            Some(m) if m.direction == Direction::Inbound => 5,
            _ => 0,
        }
    }
}
