//! The one algorithm that applies events (and registrations) to message
//! records, whatever the backend.
//!
//! A store loads the candidate records of a batch ([`Candidates`]: every
//! record holding one of the batch's wamids or provider ids, of any BSP),
//! hands them to a [`WorkingSet`], and saves the slots it reports changed.
//! The rules (DESIGN §3) live here once:
//! - an event belongs to the record holding its wamid, else the one holding
//!   its (bsp, provider id), else a new record;
//! - an id is copied onto that record only where the record has none and no
//!   other record already holds it: a wamid anywhere, a provider id under the
//!   record's own BSP (the unique keys). When another record holds it, the
//!   two records stay apart and the target records the link under
//!   `bsp_data.linked` (bounded), so a key conflict is never a write error;
//! - the record itself follows [`MessageRecord::apply`] / `register`.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Applied, StoreError};
use crate::model::{
    ApplyOutcome, Bsp, MessageEvent, MessageRecord, OutboundRegistration, UnifiedEvent,
};
use crate::store::StoreResult;

/// At most this many links are kept on one record.
pub const MAX_LINKS: usize = 16;

/// What a store must load before applying a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Candidates {
    /// Records whose `wamid` is one of these.
    pub wamids: Vec<String>,
    /// Records whose `bsp_message_id` is one of these, under any BSP.
    pub provider_ids: Vec<String>,
}

impl Candidates {
    pub fn is_empty(&self) -> bool {
        self.wamids.is_empty() && self.provider_ids.is_empty()
    }

    /// The keys of every message event in `events` (an event with no id at
    /// all is keyed by its event id, as [`WorkingSet::apply`] does).
    pub fn of_events(events: &[UnifiedEvent]) -> Candidates {
        let mut c = Candidates::default();
        for ev in events {
            if let Some(m) = &ev.message {
                let m = keyed(ev, m);
                c.push(m.wamid.as_deref(), m.bsp_message_id.as_deref());
            }
        }
        c.dedup();
        c
    }

    /// The records a registration may touch; refused when it names no key.
    pub fn of_registration(reg: &OutboundRegistration) -> StoreResult<Candidates> {
        if reg.key().is_none() {
            return Err(StoreError::Invalid(
                "a message needs a wamid or a bsp_message_id".into(),
            ));
        }
        let mut c = Candidates::default();
        c.push(reg.wamid.as_deref(), reg.bsp_message_id.as_deref());
        Ok(c)
    }

    fn push(&mut self, wamid: Option<&str>, provider_id: Option<&str>) {
        if let Some(w) = wamid.filter(|w| !w.is_empty()) {
            self.wamids.push(w.to_owned());
        }
        if let Some(p) = provider_id.filter(|p| !p.is_empty()) {
            self.provider_ids.push(p.to_owned());
        }
    }

    fn dedup(&mut self) {
        for v in [&mut self.wamids, &mut self.provider_ids] {
            v.sort_unstable();
            v.dedup();
        }
    }
}

/// One record of a batch: `handle` is the backend's own identity of a stored
/// record (a row key, an `_id` and revision), `None` for a new one.
#[derive(Debug, Clone)]
pub struct Slot<H> {
    pub handle: Option<H>,
    pub record: MessageRecord,
    pub dirty: bool,
}

/// The records of a batch, indexed by both keys.
#[derive(Debug)]
pub struct WorkingSet<H> {
    slots: Vec<Slot<H>>,
    by_wamid: HashMap<String, usize>,
    by_provider: HashMap<(String, String), usize>,
}

impl<H> Default for WorkingSet<H> {
    fn default() -> Self {
        WorkingSet {
            slots: Vec::new(),
            by_wamid: HashMap::new(),
            by_provider: HashMap::new(),
        }
    }
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// The event's message part, keyed by its event id when it carries no id
/// (adapters give every message event one; this is the last resort).
fn keyed(ev: &UnifiedEvent, m: &MessageEvent) -> MessageEvent {
    let mut m = m.clone();
    if m.key(ev.bsp).is_none() {
        m.bsp_message_id = Some(ev.event_id.clone());
    }
    m
}

impl<H> WorkingSet<H> {
    /// A working set over loaded records, oldest first: when legacy
    /// duplicates share a key, the first one given wins.
    pub fn new(loaded: impl IntoIterator<Item = (H, MessageRecord)>) -> Self {
        let mut set = WorkingSet::default();
        for (handle, record) in loaded {
            set.add(Slot {
                handle: Some(handle),
                record,
                dirty: false,
            });
        }
        set
    }

    fn add(&mut self, slot: Slot<H>) -> usize {
        let i = self.slots.len();
        self.slots.push(slot);
        self.index(i);
        i
    }

    fn index(&mut self, i: usize) {
        let rec = &self.slots[i].record;
        if let Some(w) = non_empty(&rec.wamid) {
            self.by_wamid.entry(w.to_owned()).or_insert(i);
        }
        if let Some(p) = non_empty(&rec.bsp_message_id) {
            self.by_provider
                .entry((rec.bsp.clone(), p.to_owned()))
                .or_insert(i);
        }
    }

    /// The slot an event or registration belongs to, created when none
    /// matches; the ids it may not take are removed from `wamid` /
    /// `provider_id` and returned as links to record.
    fn locate(
        &mut self, bsp: Bsp, wamid: &mut Option<String>, provider_id: &mut Option<String>,
        now: DateTime<Utc>,
    ) -> (usize, Vec<Value>) {
        let by_w = non_empty(wamid).and_then(|w| self.by_wamid.get(w)).copied();
        let by_p = non_empty(provider_id)
            .and_then(|p| {
                self.by_provider
                    .get(&(bsp.as_str().to_owned(), p.to_owned()))
            })
            .copied();
        let i = match by_w.or(by_p) {
            Some(i) => i,
            None => {
                let seed = MessageEvent {
                    wamid: wamid.clone(),
                    bsp_message_id: provider_id.clone(),
                    ..Default::default()
                };
                return (
                    self.add(Slot {
                        handle: None,
                        record: MessageRecord::new_for(bsp, &seed, now),
                        dirty: true,
                    }),
                    Vec::new(),
                );
            }
        };
        let mut links = Vec::new();
        let target = &self.slots[i].record;
        if let Some(w) = non_empty(wamid) {
            if let Some(&other) = self.by_wamid.get(w).filter(|&&o| o != i) {
                links.push(self.link_to(other, "wamid", w));
                *wamid = None;
            }
        }
        if let Some(p) = non_empty(provider_id) {
            // The id would be stored under the target's BSP, which may not
            // be the event's: that is the key that must stay unique.
            let key = (target.bsp.clone(), p.to_owned());
            let held_elsewhere = self.by_provider.get(&key).filter(|&&o| o != i).copied();
            let event_key_elsewhere = by_p.filter(|&o| o != i);
            if let Some(other) = held_elsewhere.or(event_key_elsewhere) {
                links.push(self.link_to(other, "bsp_message_id", p));
                *provider_id = None;
            }
        }
        (i, links)
    }

    fn link_to(&self, other: usize, field: &str, id: &str) -> Value {
        let rec = &self.slots[other].record;
        json!({"bsp": rec.bsp, field: id, "message_id": rec.message_id})
    }

    /// Applies message events in order (events without a message part yield
    /// `None`).
    pub fn apply(&mut self, events: &[UnifiedEvent], now: DateTime<Utc>) -> Vec<Option<Applied>> {
        let outcomes: Vec<Option<(usize, bool, bool)>> = events
            .iter()
            .map(|ev| {
                let m = ev.message.as_ref()?;
                let mut msg = keyed(ev, m);
                let (i, links) = self.locate(ev.bsp, &mut msg.wamid, &mut msg.bsp_message_id, now);
                let slot = &mut self.slots[i];
                let outcome = slot.record.apply(ev.bsp, &ev.event_id, &msg, now);
                let (duplicate, redelivery) = match outcome {
                    ApplyOutcome::Applied => (false, false),
                    ApplyOutcome::Duplicate { redelivery } => (true, redelivery),
                };
                if !duplicate {
                    record_links(&mut slot.record, links);
                    slot.dirty = true;
                }
                self.index(i);
                Some((i, duplicate, redelivery))
            })
            .collect();
        // One shared copy per record touched, as the batch left it.
        let mut shared: HashMap<usize, Arc<MessageRecord>> = HashMap::new();
        outcomes
            .into_iter()
            .map(|o| {
                let (i, duplicate, redelivery) = o?;
                let record = shared
                    .entry(i)
                    .or_insert_with(|| Arc::new(self.slots[i].record.clone()))
                    .clone();
                Some(Applied {
                    duplicate,
                    redelivery,
                    record,
                })
            })
            .collect()
    }

    /// Registers an outbound message; returns the record and whether it is
    /// new.
    pub fn register(
        &mut self, reg: &OutboundRegistration, now: DateTime<Utc>,
    ) -> (MessageRecord, bool) {
        let mut reg = reg.clone();
        let (i, links) = self.locate(reg.bsp, &mut reg.wamid, &mut reg.bsp_message_id, now);
        let slot = &mut self.slots[i];
        slot.record.register(&reg, now);
        record_links(&mut slot.record, links);
        slot.dirty = true;
        let created = slot.handle.is_none();
        let record = slot.record.clone();
        self.index(i);
        (record, created)
    }

    /// The records that must be written: new ones have no handle.
    pub fn changed(&self) -> impl Iterator<Item = &Slot<H>> {
        self.slots.iter().filter(|s| s.dirty)
    }
}

/// Adds links not yet on the record, up to [`MAX_LINKS`].
fn record_links(record: &mut MessageRecord, links: Vec<Value>) {
    if links.is_empty() {
        return;
    }
    let slot = record.bsp_data_entry("linked", Value::Array(Vec::new()));
    if let Some(list) = slot.and_then(Value::as_array_mut) {
        for link in links {
            if list.len() >= MAX_LINKS {
                break;
            }
            if !list.contains(&link) {
                list.push(link);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Direction, Status};
    use chrono::TimeZone;

    fn event(bsp: Bsp, n: u32, wamid: Option<&str>, id: Option<&str>) -> UnifiedEvent {
        let at = Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap();
        UnifiedEvent {
            event_id: format!("e{n}"),
            bsp,
            legacy_type: String::new(),
            unified_type: String::new(),
            received_at: at,
            raw: Value::Null,
            contact: None,
            message: Some(MessageEvent {
                wamid: wamid.map(str::to_owned),
                bsp_message_id: id.map(str::to_owned),
                direction: Direction::Outbound,
                status: Some(Status::Delivered),
                raw_status: Some("delivered".into()),
                occurred_at: at,
                dedup_key: format!("k{n}"),
                ..Default::default()
            }),
        }
    }

    /// The three webhooks that once stopped the pipeline: a wamid record and
    /// a provider-id record of one BSP, then another BSP's event linking the
    /// two ids. The records stay apart; no unique key is broken.
    #[test]
    fn a_cross_bsp_link_never_duplicates_a_provider_id() {
        let now = Utc::now();
        let mut set: WorkingSet<()> = WorkingSet::default();
        set.apply(
            &[
                event(Bsp::Aisensy, 1, Some("W"), None),
                event(Bsp::Aisensy, 2, None, Some("P")),
                event(Bsp::Karix, 3, Some("W"), Some("P")),
            ],
            now,
        );
        let recs: Vec<_> = set.changed().map(|s| s.record.clone()).collect();
        assert_eq!(recs.len(), 2);
        let w = recs
            .iter()
            .find(|r| r.wamid.as_deref() == Some("W"))
            .unwrap();
        assert_eq!(w.bsp_message_id, None);
        assert_eq!(w.status_history.len(), 2);
        let linked = &w.bsp_data.as_ref().unwrap()["linked"];
        assert_eq!(linked[0]["bsp_message_id"], "P");
        assert_eq!(linked[0]["bsp"], "aisensy");
        let p = recs
            .iter()
            .find(|r| r.bsp_message_id.as_deref() == Some("P"))
            .unwrap();
        assert_eq!(p.wamid, None);
    }

    #[test]
    fn a_provider_record_takes_a_free_wamid() {
        let now = Utc::now();
        let mut set: WorkingSet<()> = WorkingSet::default();
        set.apply(
            &[
                event(Bsp::Karix, 1, None, Some("P")),
                event(Bsp::Karix, 2, Some("W"), Some("P")),
            ],
            now,
        );
        let recs: Vec<_> = set.changed().collect();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].record.wamid.as_deref(), Some("W"));
        assert_eq!(recs[0].record.bsp_message_id.as_deref(), Some("P"));
    }

    #[test]
    fn the_wamid_record_wins_and_links_the_provider_record() {
        let now = Utc::now();
        let mut set: WorkingSet<()> = WorkingSet::default();
        let applied = set.apply(
            &[
                event(Bsp::Karix, 1, Some("W"), None),
                event(Bsp::Karix, 2, None, Some("P")),
                event(Bsp::Karix, 3, Some("W"), Some("P")),
                event(Bsp::Karix, 3, Some("W"), Some("P")),
            ],
            now,
        );
        assert!(applied[3].as_ref().unwrap().duplicate);
        let w = set
            .changed()
            .find(|s| s.record.wamid.as_deref() == Some("W"))
            .unwrap();
        assert_eq!(w.record.bsp_message_id, None);
        let linked = w.record.bsp_data.as_ref().unwrap()["linked"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(linked, 1);
    }
}
