use chrono::TimeZone;

use super::*;

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_780_000_000 + s, 0).single().unwrap()
}

fn id(phone: Option<&str>, user_id: Option<&str>, username: Option<&str>) -> UserIdentity {
    UserIdentity {
        phone: phone.map(Into::into),
        user_id: user_id.map(Into::into),
        parent_user_id: None,
        username: username.map(Into::into),
    }
}

fn seen(user: UserIdentity, at: i64) -> Sighting {
    Sighting {
        business_number: "15550001111".into(),
        user,
        previous: UserIdentity::default(),
        change: None,
        preference: None,
        at: t(at),
    }
}

fn changed_number(from: &str, to: &str, user_id: &str, at: i64) -> Sighting {
    Sighting {
        previous: id(Some(from), None, None),
        change: Some("phone"),
        ..seen(id(Some(to), Some(user_id), None), at)
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
        ..seen(id(None, Some(user_id), None), at)
    }
}

/// Applies sightings one batch at a time, as a store would, keeping the
/// contacts between batches.
fn run(batches: &[Vec<Sighting>]) -> Vec<Contact> {
    let mut kept: BTreeMap<String, Contact> = BTreeMap::new();
    for (n, batch) in batches.iter().enumerate() {
        let keys: BTreeSet<String> = batch.iter().flat_map(Sighting::keys).collect();
        let loaded: Vec<Contact> = kept
            .values()
            .filter(|c| c.keys().iter().any(|k| keys.contains(k)))
            .cloned()
            .collect();
        let changes = apply(loaded, batch, t(1000 + n as i64));
        for gone in changes.remove {
            kept.remove(&gone);
        }
        for c in changes.write {
            kept.insert(c.contact_id.clone(), c);
        }
    }
    kept.into_values()
        .map(|mut c| {
            c.updated_at = t(0);
            c
        })
        .collect()
}

#[test]
fn identifiers_seen_together_make_one_contact_whichever_came_first() {
    let by_phone = seen(id(Some("919800000001"), None, None), 10);
    let by_bsuid = seen(id(None, Some("IN.1502576394655843"), Some("asha")), 20);
    let together = seen(
        id(Some("919800000001"), Some("IN.1502576394655843"), None),
        30,
    );
    let orders = [
        vec![
            vec![by_phone.clone()],
            vec![by_bsuid.clone()],
            vec![together.clone()],
        ],
        vec![
            vec![together.clone()],
            vec![by_bsuid.clone()],
            vec![by_phone.clone()],
        ],
        vec![vec![by_bsuid.clone(), by_phone.clone(), together.clone()]],
        vec![
            vec![by_bsuid.clone()],
            vec![together.clone(), by_phone.clone()],
        ],
    ];
    let results: Vec<Vec<Contact>> = orders.iter().map(|o| run(o)).collect();
    assert_eq!(results[0].len(), 1, "{:#?}", results[0]);
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
    let c = &results[0][0];
    assert_eq!(c.current.phone.as_deref(), Some("919800000001"));
    assert_eq!(c.current.user_id.as_deref(), Some("IN.1502576394655843"));
    assert_eq!(c.current.username.as_deref(), Some("asha"));
    assert_eq!(c.identifiers.len(), 3);
}

#[test]
fn a_changed_number_links_old_and_new_and_keeps_the_history() {
    let before = seen(id(Some("919800000001"), Some("IN.1"), None), 10);
    let change = changed_number("919800000001", "919800000002", "IN.2", 20);
    let after = seen(id(Some("919800000002"), Some("IN.2"), None), 30);
    let a = run(&[
        vec![before.clone()],
        vec![change.clone()],
        vec![after.clone()],
    ]);
    let b = run(&[vec![after], vec![change], vec![before]]);
    assert_eq!(a, b);
    assert_eq!(a.len(), 1);
    let c = &a[0];
    assert_eq!(c.current.phone.as_deref(), Some("919800000002"));
    assert_eq!(c.current.user_id.as_deref(), Some("IN.2"));
    assert_eq!(c.changes.len(), 1);
    assert_eq!(c.changes[0].from, "919800000001");
    let keys = c.keys();
    for k in [
        "phone:919800000001",
        "phone:919800000002",
        "user_id:IN.1",
        "user_id:IN.2",
    ] {
        assert!(keys.contains(&k.to_owned()), "{k} in {keys:?}");
    }
}

#[test]
fn the_latest_preference_wins_whatever_the_arrival_order() {
    let stop = preference("IN.9", "stop", 50);
    let resume = preference("IN.9", "resume", 40);
    for batches in [
        vec![vec![stop.clone()], vec![resume.clone()]],
        vec![vec![resume.clone()], vec![stop.clone()]],
        vec![vec![resume.clone(), stop.clone()]],
    ] {
        let c = run(&batches);
        assert_eq!(c.len(), 1);
        let p = c[0].marketing_preference.as_ref().unwrap();
        assert_eq!((p.value.as_str(), p.at), ("stop", t(50)));
    }
}

#[test]
fn a_repeated_sighting_changes_nothing_and_business_numbers_stay_apart() {
    let s = seen(id(Some("919800000001"), None, None), 10);
    let loaded = run(&[vec![s.clone()]]);
    let again = apply(loaded, std::slice::from_ref(&s), t(99));
    assert!(
        again.write.is_empty() && again.remove.is_empty(),
        "{again:?}"
    );
    let other = Sighting {
        business_number: "15550002222".into(),
        ..s.clone()
    };
    assert_eq!(run(&[vec![s, other]]).len(), 2);
}

/// What a contact's messages are listed by (the console's contact page and
/// `GET /messages?user_id=`): every user id it had, oldest first, once each,
/// and nothing else it is known by.
#[test]
fn a_contact_lists_its_messages_by_every_user_id_it_had() {
    let contacts = run(&[
        vec![seen(
            id(Some("15550002222"), Some("IN.1"), Some("alice")),
            1,
        )],
        vec![seen(id(Some("15550002222"), Some("IN.2"), None), 2)],
        vec![seen(id(Some("15550002222"), Some("IN.1"), None), 3)],
    ]);
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert_eq!(contacts[0].user_ids(), ["IN.1", "IN.2"]);
}
