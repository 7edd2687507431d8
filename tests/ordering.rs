//! Property: whatever the arrival order and however often each event is
//! delivered, a message ends in the same state (DESIGN §3).

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use zen_gateway::model::{Bsp, MessageEvent, MessageRecord, Status};

/// The provider's raw status strings and what they map to.
const RAW: &[(&str, Option<Status>)] = &[
    ("sent", Some(Status::Sent)),
    ("delivered", Some(Status::Delivered)),
    ("read", Some(Status::Read)),
    ("failed", Some(Status::Failed)),
    ("accepted", Some(Status::Accepted)),
    ("enqueued", None),
];

/// One event, fully determined by (raw status, provider time): two events
/// with the same pair are the same event delivered twice.
fn event(raw_index: usize, secs: i64) -> MessageEvent {
    let (raw, status) = RAW[raw_index];
    MessageEvent {
        wamid: Some("wamid.prop".into()),
        status,
        raw_status: Some(raw.into()),
        occurred_at: Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap(),
        phone_number: Some("919800000000".into()),
        error_code: (status == Some(Status::Failed)).then(|| "131026".into()),
        dedup_key: format!("{raw}|{secs}"),
        ..Default::default()
    }
}

fn final_state(events: &[MessageEvent]) -> MessageRecord {
    let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    let mut rec = MessageRecord::new_for(Bsp::Datagen, &events[0], now);
    for e in events {
        rec.apply(Bsp::Datagen, &e.dedup_key, e, now);
    }
    // Identity and bookkeeping fields are not part of the state.
    rec.message_id = String::new();
    rec
}

fn scenario() -> impl Strategy<Value = (Vec<MessageEvent>, Vec<MessageEvent>)> {
    prop::collection::vec((0..RAW.len(), 0i64..6), 1..12).prop_flat_map(|pairs| {
        let distinct: Vec<MessageEvent> = pairs.iter().map(|&(r, s)| event(r, s)).collect();
        // Deliver every event at least once, some of them again.
        let deliveries = prop::collection::vec(0..distinct.len(), 0..8).prop_map({
            let distinct = distinct.clone();
            move |extra| {
                let mut all = distinct.clone();
                all.extend(extra.into_iter().map(|i| distinct[i].clone()));
                all
            }
        });
        (Just(distinct), deliveries.prop_shuffle())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_order_and_any_duplication_give_the_same_record((in_order, shuffled) in scenario()) {
        let a = final_state(&in_order);
        let b = final_state(&shuffled);
        prop_assert_eq!(&a.current_status, &b.current_status);
        prop_assert_eq!(a.sent_at, b.sent_at);
        prop_assert_eq!(a.delivered_at, b.delivered_at);
        prop_assert_eq!(a.read_at, b.read_at);
        prop_assert_eq!(a.failed_at, b.failed_at);
        // History: one entry per distinct event, same set (and same order:
        // it is kept in provider-time order).
        prop_assert_eq!(&a.status_history, &b.status_history);
        let distinct: std::collections::HashSet<_> =
            in_order.iter().map(|e| e.dedup_key.clone()).collect();
        prop_assert_eq!(b.status_history.len(), distinct.len());
        prop_assert_eq!(a, b);
    }

    #[test]
    fn current_status_is_the_highest_ranked_known_status(events in prop::collection::vec((0..RAW.len(), 0i64..6), 1..12)) {
        let events: Vec<_> = events.into_iter().map(|(r, s)| event(r, s)).collect();
        let rec = final_state(&events);
        let best = events.iter().filter_map(|e| e.status).max();
        match best {
            Some(s) => prop_assert_eq!(rec.current_status, s.as_str()),
            None => prop_assert_eq!(rec.current_status, "unknown"),
        }
    }
}
