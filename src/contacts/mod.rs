//! Contacts: one per WhatsApp user per business number, found by any
//! identifier the user ever had there (phone, business-scoped user id,
//! parent BSUID, username).
//!
//! The rules live here, whatever the backend:
//! - identifiers seen together in one event belong to one contact; when
//!   they were two contacts, the two become one;
//! - a changed number or BSUID links the old identifiers to the new, and
//!   the contact keeps every identifier with when it was first and last
//!   seen, plus the changes themselves;
//! - each current value (phone, user id, parent, username) is the one seen
//!   at the latest event time, and the marketing preference is the latest
//!   by its own time;
//! - a contact's id is derived from its identifiers (the smallest of their
//!   digests), so any arrival order of the same events ends in the same
//!   contact, with the same id.
//!
//! A backend loads the contacts that hold any identifier of a batch, hands
//! them to [`ContactSet`], and writes back what it reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{ContactEvent, MarketingPreference, UnifiedEvent, UserIdentity};
use crate::store::{BackendHealth, StoreResult};

/// The kinds of identifier, as they appear in a contact's keys
/// (`phone:9198…`, `user_id:IN.150…`, `parent_user_id:US.ENT.…`,
/// `username:…`).
pub const KINDS: [&str; 4] = ["phone", "user_id", "parent_user_id", "username"];

/// One identifier a contact had, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Identifier {
    /// `phone`, `user_id`, `parent_user_id` or `username`.
    pub kind: String,
    pub value: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// A reported change of identifier (`user_changed_number`,
/// `user_changed_user_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdentifierChange {
    pub kind: String,
    pub from: String,
    pub to: String,
    pub at: DateTime<Utc>,
}

/// One WhatsApp user of one business number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Contact {
    pub contact_id: String,
    /// The business's number the user talks to (empty when the provider
    /// did not say).
    pub business_number: String,
    /// The current identifiers (each the latest seen).
    pub current: UserIdentity,
    /// Every identifier the user had here, oldest first.
    pub identifiers: Vec<Identifier>,
    /// Reported changes, oldest first.
    #[serde(default)]
    pub changes: Vec<IdentifierChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketing_preference: Option<MarketingPreference>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Contact {
    /// Its lookup keys: `kind:value` of every identifier it had.
    pub fn keys(&self) -> Vec<String> {
        self.identifiers
            .iter()
            .map(|i| key(&i.kind, &i.value))
            .collect()
    }

    /// Every business-scoped user id it had, oldest first: what its
    /// messages are listed by (a changed BSUID keeps the old messages).
    pub fn user_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for i in self.identifiers.iter().filter(|i| i.kind == "user_id") {
            if !ids.contains(&i.value) {
                ids.push(i.value.clone());
            }
        }
        ids
    }
}

/// A lookup key.
pub fn key(kind: &str, value: &str) -> String {
    format!("{kind}:{value}")
}

/// The keys an identifier the API is given may be (any kind).
pub fn keys_of_any(id: &str) -> Vec<String> {
    KINDS.iter().map(|k| key(k, id)).collect()
}

fn parts(u: &UserIdentity) -> impl Iterator<Item = (&'static str, &str)> {
    [
        ("phone", u.phone.as_deref()),
        ("user_id", u.user_id.as_deref()),
        ("parent_user_id", u.parent_user_id.as_deref()),
        ("username", u.username.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.filter(|v| !v.trim().is_empty()).map(|v| (k, v)))
}

/// A sighting: identifiers seen together at a time, with what else the
/// event says.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub business_number: String,
    pub user: UserIdentity,
    pub previous: UserIdentity,
    pub change: Option<&'static str>,
    pub preference: Option<MarketingPreference>,
    pub at: DateTime<Utc>,
}

impl Sighting {
    /// What an event tells about a user: the identity on a message event,
    /// or the event's contact part (a change, a preference).
    pub fn of(ev: &UnifiedEvent) -> Option<Sighting> {
        if let Some(c) = &ev.contact {
            return Some(Sighting::from_contact(c, &ev.unified_type));
        }
        let m = ev.message.as_ref()?;
        let user = m.user.as_ref().filter(|u| !u.is_empty())?;
        Some(Sighting {
            business_number: m.business_number.clone().unwrap_or_default(),
            user: user.clone(),
            previous: UserIdentity::default(),
            change: None,
            preference: None,
            at: m.occurred_at,
        })
    }

    fn from_contact(c: &ContactEvent, kind: &str) -> Sighting {
        Sighting {
            business_number: c.business_number.clone().unwrap_or_default(),
            user: c.user.clone(),
            previous: c.previous.clone(),
            change: match kind {
                "contact.user_changed_number" => Some("phone"),
                "contact.user_changed_user_id" => Some("user_id"),
                _ => None,
            },
            preference: c.preference.clone(),
            at: c.at,
        }
    }

    /// Every key it names, old and new.
    pub fn keys(&self) -> Vec<String> {
        parts(&self.user)
            .chain(parts(&self.previous))
            .map(|(k, v)| key(k, v))
            .collect()
    }
}

/// The contacts a batch touches, by business number and key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    pub keys: BTreeMap<String, BTreeSet<String>>,
}

impl Lookup {
    pub fn of(sightings: &[Sighting]) -> Lookup {
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in sightings {
            keys.entry(s.business_number.clone())
                .or_default()
                .extend(s.keys());
        }
        Lookup { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a batch does to the contacts: the contacts to write (whole), and
/// the ids of contacts merged into another (to remove).
#[derive(Debug, Default)]
pub struct ContactChanges {
    pub write: Vec<Contact>,
    pub remove: Vec<String>,
}

/// Applies sightings to the contacts loaded for them.
pub fn apply(loaded: Vec<Contact>, sightings: &[Sighting], now: DateTime<Utc>) -> ContactChanges {
    // Union-find over (business number, key).
    let mut parent: HashMap<(String, String), (String, String)> = HashMap::new();
    fn find(
        parent: &mut HashMap<(String, String), (String, String)>, x: (String, String),
    ) -> (String, String) {
        let p = parent.entry(x.clone()).or_insert_with(|| x.clone()).clone();
        if p == x {
            return x;
        }
        let root = find(parent, p);
        parent.insert(x, root.clone());
        root
    }
    let union = |parent: &mut HashMap<_, _>, a: (String, String), b: (String, String)| {
        let (ra, rb) = (find(parent, a), find(parent, b));
        if ra != rb {
            // The smaller root wins: the result does not depend on order.
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            parent.insert(hi, lo);
        }
    };
    for c in &loaded {
        let keys = c.keys();
        let business = c.business_number.clone();
        for k in &keys {
            union(
                &mut parent,
                (business.clone(), keys[0].clone()),
                (business.clone(), k.clone()),
            );
        }
    }
    for s in sightings {
        let keys = s.keys();
        for k in &keys {
            union(
                &mut parent,
                (s.business_number.clone(), keys[0].clone()),
                (s.business_number.clone(), k.clone()),
            );
        }
    }
    // Group contacts and sightings by their component.
    let mut groups: BTreeMap<(String, String), Group<'_>> = BTreeMap::new();
    let loaded_ids: BTreeSet<String> = loaded.iter().map(|c| c.contact_id.clone()).collect();
    for c in loaded {
        let Some(first) = c.keys().into_iter().next() else {
            continue;
        };
        let root = find(&mut parent, (c.business_number.clone(), first));
        groups.entry(root).or_default().0.push(c);
    }
    for s in sightings {
        let Some(first) = s.keys().into_iter().next() else {
            continue;
        };
        let root = find(&mut parent, (s.business_number.clone(), first));
        groups.entry(root).or_default().1.push(s);
    }
    let mut out = ContactChanges::default();
    for ((business, _), (contacts, seen)) in groups {
        if seen.is_empty() {
            continue;
        }
        let before: Vec<Contact> = contacts.clone();
        let merged = merge(&business, contacts, &seen, now);
        let unchanged = before.len() == 1 && same_content(&before[0], &merged);
        for old in &before {
            if old.contact_id != merged.contact_id && loaded_ids.contains(&old.contact_id) {
                out.remove.push(old.contact_id.clone());
            }
        }
        if !unchanged {
            out.write.push(merged);
        }
    }
    out
}

/// The contacts and sightings of one user (of one business number).
type Group<'a> = (Vec<Contact>, Vec<&'a Sighting>);

/// Equal but for `updated_at`.
fn same_content(a: &Contact, b: &Contact) -> bool {
    let mut b = b.clone();
    b.updated_at = a.updated_at;
    *a == b
}

/// One contact out of the contacts and sightings of one user.
fn merge(
    business: &str, contacts: Vec<Contact>, seen: &[&Sighting], now: DateTime<Utc>,
) -> Contact {
    let mut identifiers: BTreeMap<(String, String), (DateTime<Utc>, DateTime<Utc>)> =
        BTreeMap::new();
    let mut note = |kind: &str, value: &str, first: DateTime<Utc>, last: DateTime<Utc>| {
        let slot = identifiers
            .entry((kind.to_owned(), value.to_owned()))
            .or_insert((first, last));
        slot.0 = slot.0.min(first);
        slot.1 = slot.1.max(last);
    };
    // Current values: (time, value) per kind, the latest wins (ties: the
    // greater value, so that order does not matter).
    let mut current: BTreeMap<&'static str, (DateTime<Utc>, String)> = BTreeMap::new();
    let mut set_current = |kind: &'static str, value: &str, at: DateTime<Utc>| {
        let candidate = (at, value.to_owned());
        match current.get(kind) {
            Some(cur) if *cur >= candidate => {}
            _ => {
                current.insert(kind, candidate);
            }
        }
    };
    let mut changes: BTreeSet<(DateTime<Utc>, String, String, String)> = BTreeSet::new();
    let mut preference: Option<MarketingPreference> = None;
    let mut prefer = |p: &MarketingPreference| {
        let newer = preference
            .as_ref()
            .is_none_or(|cur| (p.at, &p.value) > (cur.at, &cur.value));
        if newer {
            preference = Some(p.clone());
        }
    };
    let mut created_at = None::<DateTime<Utc>>;
    for c in &contacts {
        for i in &c.identifiers {
            note(&i.kind, &i.value, i.first_seen, i.last_seen);
        }
        for (kind, value) in parts(&c.current) {
            let at = c
                .identifiers
                .iter()
                .find(|i| i.kind == kind && i.value == value)
                .map_or(c.updated_at, |i| i.last_seen);
            set_current(kind, value, at);
        }
        for ch in &c.changes {
            changes.insert((ch.at, ch.kind.clone(), ch.from.clone(), ch.to.clone()));
        }
        if let Some(p) = &c.marketing_preference {
            prefer(p);
        }
        created_at = Some(created_at.map_or(c.created_at, |t| t.min(c.created_at)));
    }
    for s in seen {
        for (kind, value) in parts(&s.user) {
            note(kind, value, s.at, s.at);
            set_current(kind, value, s.at);
        }
        for (kind, value) in parts(&s.previous) {
            // The old identifier was current until the change, not after.
            note(kind, value, s.at, s.at);
        }
        if let Some(kind) = s.change {
            let pick = |u: &UserIdentity| match kind {
                "phone" => u.phone.clone(),
                _ => u.user_id.clone(),
            };
            if let (Some(from), Some(to)) = (pick(&s.previous), pick(&s.user)) {
                if from != to {
                    changes.insert((s.at, kind.to_owned(), from, to));
                }
            }
        }
        if let Some(p) = &s.preference {
            prefer(p);
        }
    }
    // A value replaced by a reported change is not current any more, even
    // if it was seen later by an event that arrived out of order: the
    // change names what it became.
    for (at, kind, from, to) in &changes {
        if let Some((t, v)) = current.get(kind.as_str()) {
            if v == from && t <= at {
                current.insert(
                    if kind == "phone" { "phone" } else { "user_id" },
                    (*at, to.clone()),
                );
            }
        }
    }
    let value_of = |kind: &str| current.get(kind).map(|(_, v)| v.clone());
    let identifiers: Vec<Identifier> = {
        let mut list: Vec<Identifier> = identifiers
            .into_iter()
            .map(|((kind, value), (first_seen, last_seen))| Identifier {
                kind,
                value,
                first_seen,
                last_seen,
            })
            .collect();
        list.sort_by(|a, b| {
            (a.first_seen, &a.kind, &a.value).cmp(&(b.first_seen, &b.kind, &b.value))
        });
        list
    };
    let contact_id = contact_id(business, &identifiers);
    let first_seen = identifiers.iter().map(|i| i.first_seen).min();
    Contact {
        contact_id,
        business_number: business.to_owned(),
        current: UserIdentity {
            phone: value_of("phone"),
            user_id: value_of("user_id"),
            parent_user_id: value_of("parent_user_id"),
            username: value_of("username"),
        },
        identifiers,
        changes: changes
            .into_iter()
            .map(|(at, kind, from, to)| IdentifierChange { kind, from, to, at })
            .collect(),
        marketing_preference: preference,
        created_at: created_at
            .into_iter()
            .chain(first_seen)
            .min()
            .unwrap_or(now),
        updated_at: now,
    }
}

/// The smallest digest of its identifiers: the same set, the same id.
fn contact_id(business: &str, identifiers: &[Identifier]) -> String {
    identifiers
        .iter()
        .map(|i| {
            let mut h = Sha256::new();
            h.update(business.as_bytes());
            h.update([0]);
            h.update(key(&i.kind, &i.value).as_bytes());
            hex::encode(&h.finalize()[..12])
        })
        .min()
        .unwrap_or_default()
}

/// Where contacts are kept.
#[async_trait]
pub trait ContactStore: Send + Sync {
    /// Applies a batch's sightings: loads the contacts holding any of their
    /// keys, merges, writes back. Idempotent.
    async fn record_sightings(&self, sightings: &[Sighting]) -> StoreResult<()>;
    /// The contact that ever had `id` (any kind), on `business_number` when
    /// given, else the one updated last.
    async fn find_contact(
        &self, id: &str, business_number: Option<&str>,
    ) -> StoreResult<Option<Contact>>;
    /// Removes contacts not updated since `before` (retention), at most
    /// `limit`; returns how many.
    async fn prune_contacts(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<u64>;
    async fn health(&self) -> BackendHealth;

    /// The user ids a user's messages are listed by: `id`, and every user
    /// id the contact that had it ever had (a changed BSUID keeps the old
    /// messages).
    async fn user_ids_of(&self, id: &str) -> StoreResult<Vec<String>> {
        let mut ids = vec![id.to_owned()];
        if let Some(c) = self.find_contact(id, None).await? {
            ids.extend(c.user_ids());
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests;
