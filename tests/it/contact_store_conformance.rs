//! `ContactStore` conformance: the same cases on SQLite and MongoDB. One
//! contact per user per business number, found by any identifier; linked
//! identifiers merge contacts; changes are kept; the latest preference
//! wins by its own time; any order of the same sightings gives the same
//! contact; retention removes what was not seen.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use zen_gateway::backends::mongo::MongoContactStore;
use zen_gateway::backends::sqlite::contacts::SqliteContactStore;
use zen_gateway::backends::sqlite::{SqliteDb, SqliteOptions, Synchronous};
use zen_gateway::contacts::{Contact, ContactStore, Sighting};
use zen_gateway::model::{MarketingPreference, UserIdentity};

use crate::services;

const BIZ: &str = "918071234567";

struct Backend {
    store: Arc<dyn ContactStore>,
    cleanup: Option<mongodb::Database>,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&SqliteOptions {
        path: dir.path().join("zen.db"),
        synchronous: Synchronous::Normal,
        queue_capacity: 1000,
        max_batch: 256,
        readers: 2,
    })
    .unwrap();
    Backend {
        store: Arc::new(SqliteContactStore::new(db)),
        cleanup: None,
        _dir: Some(dir),
    }
}

async fn mongo() -> Option<Backend> {
    let uri = services::mongo_uri()?;
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    let db = client.database(&services::unique_db_name());
    let store = MongoContactStore::new(&db);
    store.ensure_indexes().await.unwrap();
    Some(Backend {
        store: Arc::new(store),
        cleanup: Some(db),
        _dir: None,
    })
}

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + s, 0).unwrap()
}

fn who(phone: Option<&str>, user_id: Option<&str>, username: Option<&str>) -> UserIdentity {
    UserIdentity {
        phone: phone.map(Into::into),
        user_id: user_id.map(Into::into),
        parent_user_id: None,
        username: username.map(Into::into),
    }
}

fn seen(user: UserIdentity, at: i64) -> Sighting {
    Sighting {
        business_number: BIZ.into(),
        user,
        previous: UserIdentity::default(),
        change: None,
        preference: None,
        at: t(at),
    }
}

fn preference(user_id: &str, value: &str, at: i64) -> Sighting {
    Sighting {
        preference: Some(MarketingPreference {
            value: value.into(),
            at: t(at),
            detail: None,
            category: Some("marketing_messages".into()),
        }),
        ..seen(who(None, Some(user_id), None), at)
    }
}

fn changed_number(from: &str, to: &str, user_id: &str, at: i64) -> Sighting {
    Sighting {
        previous: who(Some(from), Some(user_id), None),
        change: Some("phone"),
        ..seen(who(Some(to), Some(user_id), None), at)
    }
}

async fn find(store: &dyn ContactStore, id: &str) -> Contact {
    store
        .find_contact(id, Some(BIZ))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no contact for {id}"))
}

/// Two contacts (a phone, a BSUID with a username) become one when a
/// webhook shows them together; every identifier finds it.
async fn identifiers_seen_together_are_one_contact(store: &dyn ContactStore) {
    store
        .record_sightings(&[seen(who(Some("919800000001"), None, None), 1)])
        .await
        .unwrap();
    store
        .record_sightings(&[seen(who(None, Some("IN.1"), Some("asha.k")), 2)])
        .await
        .unwrap();
    let a = find(store, "919800000001").await;
    let b = find(store, "IN.1").await;
    assert_ne!(a.contact_id, b.contact_id, "not linked yet");
    store
        .record_sightings(&[seen(who(Some("919800000001"), Some("IN.1"), None), 3)])
        .await
        .unwrap();
    let one = find(store, "asha.k").await;
    for id in ["919800000001", "IN.1", "asha.k"] {
        assert_eq!(find(store, id).await.contact_id, one.contact_id, "{id}");
    }
    assert_eq!(one.identifiers.len(), 3, "{one:?}");
    assert!(
        store
            .find_contact("IN.1", Some("910000000000"))
            .await
            .unwrap()
            .is_none(),
        "another business"
    );
}

/// The same sightings in any order, and twice, give the same contact.
async fn any_order_gives_the_same_contact(store: &dyn ContactStore) {
    let all = [
        seen(who(Some("919800000002"), None, None), 1),
        seen(who(Some("919800000002"), Some("IN.2"), None), 2),
        seen(who(None, Some("IN.2"), Some("ravi")), 3),
        changed_number("919800000002", "919800000003", "IN.2", 4),
        preference("IN.2", "stop", 6),
        preference("IN.2", "resume", 5),
    ];
    let mut reversed = all.to_vec();
    reversed.reverse();
    // The same users under another business number, in reverse, one by one.
    for s in reversed.iter_mut() {
        s.business_number = "918000000000".into();
    }
    store.record_sightings(&all).await.unwrap();
    for s in &reversed {
        store
            .record_sightings(std::slice::from_ref(s))
            .await
            .unwrap();
        store
            .record_sightings(std::slice::from_ref(s))
            .await
            .unwrap();
    }
    let a = find(store, "IN.2").await;
    let b = store
        .find_contact("IN.2", Some("918000000000"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.current, b.current);
    assert_eq!(a.identifiers, b.identifiers);
    assert_eq!(a.changes, b.changes);
    assert_eq!(a.marketing_preference, b.marketing_preference);
    assert_eq!(a.current.phone.as_deref(), Some("919800000003"), "{a:?}");
    assert_eq!(a.current.username.as_deref(), Some("ravi"));
    assert_eq!(
        a.marketing_preference.as_ref().unwrap().value,
        "stop",
        "latest by its own time"
    );
    assert_eq!(a.changes.len(), 1);
    assert_eq!(
        (a.changes[0].from.as_str(), a.changes[0].to.as_str()),
        ("919800000002", "919800000003")
    );
    assert_eq!(
        find(store, "919800000002").await.contact_id,
        a.contact_id,
        "the old number still finds them"
    );
}

/// Retention removes contacts not seen since the cutoff, with their keys.
async fn retention_removes_contacts_not_seen(store: &dyn ContactStore) {
    store
        .record_sightings(&[seen(who(None, Some("IN.old"), None), 1)])
        .await
        .unwrap();
    let cutoff = Utc::now() + chrono::Duration::seconds(1);
    let n = store.prune_contacts(cutoff, 100).await.unwrap();
    assert!(n >= 1, "pruned {n}");
    assert!(
        store
            .find_contact("IN.old", Some(BIZ))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.find_contact("IN.old", None).await.unwrap().is_none());
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test]
                async fn $case() {
                    let b = super::sqlite();
                    super::$case(&*b.store).await;
                }
            )*
        }
        mod mongo_store {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(b) = super::mongo().await else { return };
                    super::$case(&*b.store).await;
                    if let Some(db) = b.cleanup {
                        let _ = db.drop().await;
                    }
                }
            )*
        }
    };
}

suite!(
    identifiers_seen_together_are_one_contact,
    any_order_gives_the_same_contact,
    retention_removes_contacts_not_seen,
);
