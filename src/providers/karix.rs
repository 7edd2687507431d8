//! Karix (Tanla) RCM callbacks: `events.mid` is Karix's own message id, not a
//! wamid. PROVIDERS.md §3.

use super::rcm::{self, Flavor};
use super::{Parsed, Provider, RawWebhook};
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

    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        rcm::parse_body(&FLAVOR, webhook)
    }
}
