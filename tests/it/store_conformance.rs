//! One conformance suite, run on every store backend: the embedded SQLite
//! store and the MongoDB store (against FerretDB in CI).

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use zen_gateway::backends::mongo::MongoStore;
use zen_gateway::backends::sqlite::SqliteStore;
use zen_gateway::backends::sqlite::{SqliteDb, SqliteOptions, Synchronous};
use zen_gateway::model::{
    Bsp, Direction, MessageEvent, OutboundRegistration, Status, UnifiedEvent, UnrecognizedEvent,
};
use zen_gateway::store::{MessageCursor, MessageQuery, MessageStore, StatsQuery};

use crate::services;

pub struct Backend {
    pub store: Arc<dyn MessageStore>,
    cleanup: Option<mongodb::Database>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    pub async fn finish(self) {
        if let Some(db) = self.cleanup {
            let _ = db.drop().await;
        }
    }
}

pub fn sqlite_backend() -> Backend {
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
        store: Arc::new(SqliteStore::new(db)),
        cleanup: None,
        _dir: Some(dir),
    }
}

pub async fn mongo_backend() -> Option<Backend> {
    let uri = services::mongo_uri()?;
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    let db = client.database(&services::unique_db_name());
    let store = MongoStore::new(db.clone());
    store.ensure_indexes().await.expect("indexes");
    Some(Backend {
        store: Arc::new(store),
        cleanup: Some(db),
        _dir: None,
    })
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let b = super::sqlite_backend();
                    super::cases::$case(&*b.store).await;
                    b.finish().await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(b) = super::mongo_backend().await else { return };
                    super::cases::$case(&*b.store).await;
                    b.finish().await;
                }
            )*
        }
    };
}

suite!(
    events_create_and_update_a_record,
    duplicates_change_nothing,
    order_across_batches_does_not_matter,
    provider_keyed_messages_are_separate_per_bsp,
    a_wamid_learned_later_joins_the_record,
    registration_before_and_after_events,
    unknown_statuses_and_non_message_events,
    unrecognized_bodies_round_trip,
    notifications_are_kept_once_and_listed_by_kind,
    retention_prunes_what_is_older_than_the_cutoff,
    stats_count_by_status_with_filters,
    a_large_mixed_batch_applies_every_event,
    inbound_messages_keep_their_content,
    messages_list_in_stable_pages_with_filters,
    a_link_between_two_records_keeps_them_apart,
    a_flood_of_statuses_leaves_a_bounded_record,
);

pub fn status(
    bsp: Bsp, wamid: Option<&str>, provider_id: Option<&str>, s: &str, secs: i64,
) -> UnifiedEvent {
    let mapped = Status::parse(&s.to_lowercase());
    UnifiedEvent {
        event_id: format!("evt-{s}-{secs}"),
        bsp,
        legacy_type: format!("{bsp}.delivery"),
        unified_type: mapped
            .map(Status::event_type)
            .unwrap_or("message.unknown")
            .into(),
        received_at: Utc::now(),
        raw: serde_json::json!({"status": s}),
        contact: None,
        message: Some(MessageEvent {
            wamid: wamid.map(Into::into),
            bsp_message_id: provider_id.map(Into::into),
            direction: Direction::Outbound,
            phone_number: Some("919800000001".into()),
            business_number: Some("918000000001".into()),
            status: mapped,
            raw_status: Some(s.into()),
            occurred_at: Utc.timestamp_opt(1_749_540_000 + secs, 0).unwrap(),
            error_code: (mapped == Some(Status::Failed)).then(|| "131026".into()),
            reason: (mapped == Some(Status::Failed)).then(|| "undeliverable".into()),
            campaign_id: Some("cmp-1".into()),
            dedup_key: format!("{}|{secs}", s.to_lowercase()),
            ..Default::default()
        }),
    }
}

mod cases {
    use super::*;

    /// DESIGN §3: an event linking a wamid record to a provider id another
    /// record holds (here under another BSP than the event's) keeps the two
    /// apart and records the link; in one batch or across batches.
    pub async fn a_link_between_two_records_keeps_them_apart(store: &dyn MessageStore) {
        for split in [false, true] {
            let tag = if split { "split" } else { "one" };
            let (w, p) = (format!("wamid.link-{tag}"), format!("P-{tag}"));
            let events = vec![
                status(Bsp::Aisensy, Some(&w), None, "sent", 1),
                status(Bsp::Aisensy, None, Some(&p), "sent", 2),
                status(Bsp::Karix, Some(&w), Some(&p), "delivered", 3),
            ];
            if split {
                for ev in &events {
                    store.apply(std::slice::from_ref(ev)).await.unwrap();
                }
            } else {
                store.apply(&events).await.unwrap();
            }
            let by_w = store.find_message(&w).await.unwrap().unwrap();
            let by_p = store.find_message(&p).await.unwrap().unwrap();
            assert_ne!(by_w.message_id, by_p.message_id, "{tag}");
            assert_eq!(by_w.bsp_message_id, None, "{tag}");
            assert_eq!(by_w.current_status, "delivered", "{tag}");
            assert_eq!(by_w.status_history.len(), 2, "{tag}");
            let linked = &by_w.bsp_data.as_ref().unwrap()["linked"];
            assert_eq!(linked[0]["bsp_message_id"], p.as_str(), "{tag}");
            assert_eq!(linked[0]["message_id"], by_p.message_id.as_str(), "{tag}");
            assert_eq!(by_p.wamid, None, "{tag}");
            // Applying it again changes nothing.
            let again = store.apply(&events[2..]).await.unwrap();
            assert!(again[0].as_ref().unwrap().duplicate, "{tag}");
        }
    }

    /// One message's record stays bounded, on every store.
    pub async fn a_flood_of_statuses_leaves_a_bounded_record(store: &dyn MessageStore) {
        let events: Vec<UnifiedEvent> = (0..1000)
            .map(|i| status(Bsp::Meta, Some("wamid.flood"), None, "delivered", i))
            .collect();
        for chunk in events.chunks(250) {
            store.apply(chunk).await.unwrap();
        }
        let rec = store.find_message("wamid.flood").await.unwrap().unwrap();
        assert!(rec.status_history.len() <= zen_gateway::model::HISTORY_CAP);
        let counted: u64 = rec.status_history.iter().map(|h| 1 + h.collapsed).sum();
        assert_eq!(counted, 1000);
        assert_eq!(
            rec.delivered_at,
            Some(Utc.timestamp_opt(1_749_540_000, 0).unwrap())
        );
    }

    pub async fn events_create_and_update_a_record(store: &dyn MessageStore) {
        let out = store
            .apply(&[
                status(Bsp::Datagen, Some("wamid.A"), None, "sent", 1),
                status(Bsp::Datagen, Some("wamid.A"), None, "delivered", 2),
            ])
            .await
            .unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|a| !a.as_ref().unwrap().duplicate));
        let rec = store.find_message("wamid.A").await.unwrap().unwrap();
        assert_eq!(rec.current_status, "delivered");
        assert_eq!(rec.bsp, "datagen");
        assert_eq!(rec.phone_number, "919800000001");
        assert_eq!(rec.business_number, "918000000001");
        assert_eq!(rec.campaign_id.as_deref(), Some("cmp-1"));
        assert_eq!(
            rec.sent_at,
            Some(Utc.timestamp_opt(1_749_540_001, 0).unwrap())
        );
        assert_eq!(
            rec.delivered_at,
            Some(Utc.timestamp_opt(1_749_540_002, 0).unwrap())
        );
        assert_eq!(rec.status_history.len(), 2);
        assert_eq!(rec.status_history[0].status, "sent");
        assert_eq!(rec.status_history[0].source, "datagen");
        let by_id = store.find_message(&rec.message_id).await.unwrap().unwrap();
        assert_eq!(by_id.message_id, rec.message_id);
        assert!(store.find_message("wamid.nope").await.unwrap().is_none());
    }

    pub async fn duplicates_change_nothing(store: &dyn MessageStore) {
        let ev = status(Bsp::Datagen, Some("wamid.D"), None, "read", 5);
        let out = store.apply(&[ev.clone(), ev.clone()]).await.unwrap();
        let flags: Vec<bool> = out.iter().map(|a| a.as_ref().unwrap().duplicate).collect();
        assert_eq!(flags, [false, true]);
        let before = store.find_message("wamid.D").await.unwrap().unwrap();
        let out = store.apply(&[ev]).await.unwrap();
        assert!(out[0].as_ref().unwrap().duplicate);
        let after = store.find_message("wamid.D").await.unwrap().unwrap();
        assert_eq!(before, after);
        assert_eq!(after.status_history.len(), 1);
    }

    pub async fn order_across_batches_does_not_matter(store: &dyn MessageStore) {
        for (s, t) in [("read", 3), ("sent", 1), ("failed", 2), ("delivered", 4)] {
            store
                .apply(&[status(Bsp::Meta, Some("wamid.O"), None, s, t)])
                .await
                .unwrap();
        }
        let rec = store.find_message("wamid.O").await.unwrap().unwrap();
        assert_eq!(rec.current_status, "read");
        assert_eq!(
            rec.failed_at,
            Some(Utc.timestamp_opt(1_749_540_002, 0).unwrap())
        );
        assert_eq!(
            rec.read_at,
            Some(Utc.timestamp_opt(1_749_540_003, 0).unwrap())
        );
        assert_eq!(rec.status_history.len(), 4);
        let failed = rec
            .status_history
            .iter()
            .find(|h| h.status == "failed")
            .unwrap();
        assert_eq!(failed.error_code.as_deref(), Some("131026"));
        assert_eq!(failed.reason.as_deref(), Some("undeliverable"));
    }

    pub async fn provider_keyed_messages_are_separate_per_bsp(store: &dyn MessageStore) {
        store
            .apply(&[
                status(Bsp::Karix, None, Some("176900"), "sent", 1),
                status(Bsp::Karix, None, Some("176900"), "delivered", 2),
                status(Bsp::Aisensy, None, Some("176900"), "failed", 3),
            ])
            .await
            .unwrap();
        let rec = store.find_message("176900").await.unwrap().unwrap();
        assert_eq!(rec.bsp, "karix");
        assert_eq!(rec.current_status, "delivered");
        assert!(rec.wamid.is_none());
        let stats = store
            .stats(&StatsQuery {
                bsp: Some(Bsp::Aisensy),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(stats.total, 1);
        assert_eq!(stats.by_status["failed"], 1);
    }

    pub async fn a_wamid_learned_later_joins_the_record(store: &dyn MessageStore) {
        store
            .apply(&[status(Bsp::Aisensy, None, Some("ais-1"), "sent", 1)])
            .await
            .unwrap();
        store
            .apply(&[status(
                Bsp::Aisensy,
                Some("wamid.L"),
                Some("ais-1"),
                "read",
                2,
            )])
            .await
            .unwrap();
        let by_wamid = store.find_message("wamid.L").await.unwrap().unwrap();
        let by_provider = store.find_message("ais-1").await.unwrap().unwrap();
        assert_eq!(by_wamid.message_id, by_provider.message_id);
        assert_eq!(by_wamid.current_status, "read");
        assert_eq!(by_wamid.status_history.len(), 2);
    }

    pub async fn registration_before_and_after_events(store: &dyn MessageStore) {
        let reg = |w: &str| OutboundRegistration {
            bsp: Bsp::Datagen,
            wamid: Some(w.into()),
            campaign_id: Some("cmp-R".into()),
            project_id: Some("prj-R".into()),
            project_owner_id: Some("owner-R".into()),
            bsp_data: Some(serde_json::json!({"template": "diwali"})),
            ..Default::default()
        };
        let (rec, created) = store.register(&reg("wamid.R1")).await.unwrap();
        assert!(created);
        assert_eq!(rec.current_status, "accepted");
        store
            .apply(&[status(Bsp::Datagen, Some("wamid.R1"), None, "delivered", 1)])
            .await
            .unwrap();
        let rec = store.find_message("wamid.R1").await.unwrap().unwrap();
        assert_eq!(rec.current_status, "delivered");
        assert_eq!(rec.project_owner_id, "owner-R");
        assert_eq!(rec.bsp_data.as_ref().unwrap()["template"], "diwali");

        store
            .apply(&[status(Bsp::Datagen, Some("wamid.R2"), None, "read", 1)])
            .await
            .unwrap();
        let (rec, created) = store.register(&reg("wamid.R2")).await.unwrap();
        assert!(!created);
        assert_eq!(rec.current_status, "read");
        assert_eq!(rec.campaign_id.as_deref(), Some("cmp-R"));
        let stored = store.find_message("wamid.R2").await.unwrap().unwrap();
        assert_eq!(stored.project_owner_id, "owner-R");
        assert_eq!(stored.status_history.len(), 1);
    }

    pub async fn unknown_statuses_and_non_message_events(store: &dyn MessageStore) {
        store
            .apply(&[
                status(Bsp::Datagen, Some("wamid.U"), None, "sent", 1),
                status(Bsp::Datagen, Some("wamid.U"), None, "Enqueued", 2),
            ])
            .await
            .unwrap();
        let rec = store.find_message("wamid.U").await.unwrap().unwrap();
        assert_eq!(rec.current_status, "sent");
        assert_eq!(rec.status_history.len(), 2);
        assert_eq!(rec.status_history[1].status, "enqueued");
        assert_eq!(
            rec.status_history[1].raw_status.as_deref(),
            Some("Enqueued")
        );

        let mut contact = status(Bsp::Aisensy, None, None, "sent", 1);
        contact.message = None;
        let out = store.apply(&[contact]).await.unwrap();
        assert_eq!(out, vec![None]);
    }

    pub async fn unrecognized_bodies_round_trip(store: &dyn MessageStore) {
        let u = |id: &str| UnrecognizedEvent {
            event_id: id.into(),
            bsp: Bsp::Karix,
            received_at: Utc.timestamp_opt(1_749_540_000, 0).unwrap(),
            reason: "unknown shape".into(),
            body: format!("{{\"id\":\"{id}\"}}"),
        };
        store
            .record_unrecognized(&[u("u1"), u("u2")])
            .await
            .unwrap();
        let listed = store.list_unrecognized(10).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].event_id, "u2");
        assert_eq!(listed[1], u("u1"));
    }

    pub async fn notifications_are_kept_once_and_listed_by_kind(store: &dyn MessageStore) {
        use zen_gateway::model::Notification;
        use zen_gateway::store::NotificationQuery;
        let n = |id: &str, bsp: Bsp, kind: &str, secs: i64| Notification {
            event_id: id.into(),
            bsp,
            kind: kind.into(),
            received_at: Utc.timestamp_opt(1_749_540_000 + secs, 0).unwrap(),
            // Keys a document refuses are kept too.
            body: serde_json::json!({"value": {"$event": "APPROVED", "a.b": 1}}),
        };
        let all = [
            n("n1", Bsp::Meta, "message_template_status_update", 1),
            n("n2", Bsp::Meta, "account_alerts", 2),
            n("n3", Bsp::Gupshup, "user-event", 3),
        ];
        store.record_notifications(&all).await.unwrap();
        // A redelivery of one of them, with a new one: kept once each.
        store
            .record_notifications(&[all[0].clone(), n("n4", Bsp::Meta, "errors", 4)])
            .await
            .unwrap();
        let q = |bsp: Option<Bsp>, kind: Option<&str>| NotificationQuery {
            bsp,
            kind: kind.map(str::to_owned),
            limit: 10,
        };
        let listed = store.list_notifications(&q(None, None)).await.unwrap();
        let ids: Vec<_> = listed.iter().map(|n| n.event_id.as_str()).collect();
        assert_eq!(ids, ["n4", "n3", "n2", "n1"]);
        assert_eq!(listed[3], all[0]);
        let meta = store
            .list_notifications(&q(Some(Bsp::Meta), None))
            .await
            .unwrap();
        assert_eq!(meta.len(), 3);
        let alerts = store
            .list_notifications(&q(None, Some("account_alerts")))
            .await
            .unwrap();
        assert_eq!(alerts, [all[1].clone()]);
        let one = store
            .list_notifications(&NotificationQuery {
                limit: 1,
                ..q(Some(Bsp::Meta), None)
            })
            .await
            .unwrap();
        assert_eq!(one[0].event_id, "n4");
    }

    pub async fn retention_prunes_what_is_older_than_the_cutoff(store: &dyn MessageStore) {
        use zen_gateway::store::Kept;
        store
            .apply(&[status(Bsp::Meta, Some("wamid.old"), None, "sent", 1)])
            .await
            .unwrap();
        let cutoff = Utc::now() + chrono::Duration::milliseconds(5);
        crate::helpers::wait_past(cutoff).await;
        store
            .apply(&[status(Bsp::Meta, Some("wamid.new"), None, "sent", 2)])
            .await
            .unwrap();
        let u = |id: &str, at| UnrecognizedEvent {
            event_id: id.into(),
            bsp: Bsp::Karix,
            received_at: at,
            reason: "r".into(),
            body: "{}".into(),
        };
        let long_ago = Utc.timestamp_opt(1_600_000_000, 0).unwrap();
        store
            .record_unrecognized(&[u("u-old", long_ago), u("u-new", Utc::now())])
            .await
            .unwrap();
        assert_eq!(store.prune(Kept::Messages, cutoff, 100).await.unwrap(), 1);
        assert!(store.find_message("wamid.old").await.unwrap().is_none());
        assert!(store.find_message("wamid.new").await.unwrap().is_some());
        assert_eq!(
            store.prune(Kept::Unrecognized, cutoff, 100).await.unwrap(),
            1
        );
        let left = store.list_unrecognized(10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].event_id, "u-new");
        assert_eq!(
            store.prune(Kept::Notifications, cutoff, 100).await.unwrap(),
            0
        );
        // The pruned message's ids are free again: a new event makes a new record.
        store
            .apply(&[status(Bsp::Meta, Some("wamid.old"), None, "delivered", 3)])
            .await
            .unwrap();
        let again = store.find_message("wamid.old").await.unwrap().unwrap();
        assert_eq!(again.current_status, "delivered");
    }

    pub async fn stats_count_by_status_with_filters(store: &dyn MessageStore) {
        let mut events = Vec::new();
        for (i, s) in ["sent", "delivered", "delivered", "read", "failed"]
            .iter()
            .enumerate()
        {
            events.push(status(
                Bsp::Datagen,
                Some(&format!("wamid.S{i}")),
                None,
                s,
                i as i64,
            ));
        }
        store.apply(&events).await.unwrap();
        for i in 0..3 {
            store
                .register(&OutboundRegistration {
                    bsp: Bsp::Datagen,
                    wamid: Some(format!("wamid.S{i}")),
                    project_owner_id: Some("owner-S".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let all = store.stats(&StatsQuery::default()).await.unwrap();
        assert_eq!(all.total, 5);
        assert_eq!(all.by_status["delivered"], 2);
        assert_eq!(all.by_status["read"], 1);
        let owner = store
            .stats(&StatsQuery {
                project_owner_id: Some("owner-S".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(owner.total, 3);
        assert_eq!(owner.by_status["sent"], 1);
        assert_eq!(owner.by_status["read"], 0);
        let campaign = store
            .stats(&StatsQuery {
                campaign_id: Some("cmp-1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(campaign.total, 5);
        let future = store
            .stats(&StatsQuery {
                from: Some(Utc::now() + chrono::Duration::hours(1)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(future.total, 0);
        let past = store
            .stats(&StatsQuery {
                to: Some(Utc::now() + chrono::Duration::hours(1)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(past.total, 5);
    }

    pub async fn messages_list_in_stable_pages_with_filters(store: &dyn MessageStore) {
        // Two batches a few ms apart: ties on created_at within a batch are
        // broken by message_id.
        for batch in 0..2 {
            let events: Vec<_> = (0..13)
                .map(|i| {
                    let s = ["sent", "delivered", "read"][i % 3];
                    status(
                        Bsp::Datagen,
                        Some(&format!("wamid.L{batch}-{i:02}")),
                        None,
                        s,
                        i as i64,
                    )
                })
                .collect();
            store.apply(&events).await.unwrap();
            crate::helpers::wait_past(Utc::now() + chrono::Duration::milliseconds(5)).await;
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list_messages(&MessageQuery {
                    limit: 7,
                    after: after.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(page.items.len() <= 7);
            seen.extend(
                page.items
                    .iter()
                    .map(|r| (r.created_at, r.message_id.clone())),
            );
            match page.next_cursor {
                Some(c) => after = Some(MessageCursor::decode(&c).expect("cursor decodes")),
                None => break,
            }
        }
        assert_eq!(seen.len(), 26, "every message once");
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, sorted, "newest first, then message_id descending");
        sorted.dedup();
        assert_eq!(sorted.len(), 26, "no message on two pages");

        // A time range: created_at in [from, to), to the millisecond (as
        // every backend keeps it).
        let ms = |t: chrono::DateTime<chrono::Utc>| {
            chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
        };
        let (from, to) = (ms(seen[20].0), ms(seen[5].0));
        let expected = seen
            .iter()
            .filter(|(t, _)| ms(*t) >= from && ms(*t) < to)
            .count();
        let ranged = store
            .list_messages(&MessageQuery {
                from: Some(from),
                to: Some(to),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(expected > 0 && expected < 26);
        assert_eq!(ranged.items.len(), expected, "the time range is [from, to)");
        assert!(
            ranged
                .items
                .iter()
                .all(|r| ms(r.created_at) >= from && ms(r.created_at) < to)
        );

        let delivered = store
            .list_messages(&MessageQuery {
                status: Some("delivered".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(delivered.items.len(), 8);
        assert!(delivered.next_cursor.is_none());
        assert!(
            delivered
                .items
                .iter()
                .all(|r| r.current_status == "delivered")
        );

        store
            .register(&OutboundRegistration {
                bsp: Bsp::Datagen,
                wamid: Some("wamid.L1-03".into()),
                project_owner_id: Some("owner-L".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let owned = store
            .list_messages(&MessageQuery {
                project_owner_id: Some("owner-L".into()),
                campaign_id: Some("cmp-1".into()),
                phone_number: Some("919800000001".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(owned.items.len(), 1);
        assert_eq!(owned.items[0].wamid.as_deref(), Some("wamid.L1-03"));
        let none = store
            .list_messages(&MessageQuery {
                phone_number: Some("nobody".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(none.items.is_empty() && none.next_cursor.is_none());
    }

    pub async fn a_large_mixed_batch_applies_every_event(store: &dyn MessageStore) {
        let mut events = Vec::new();
        for i in 0..60 {
            let w = format!("wamid.big-{i}");
            for (s, t) in [("read", 3), ("sent", 1), ("delivered", 2)] {
                events.push(status(Bsp::Datagen, Some(&w), None, s, t));
            }
        }
        // A few duplicates in the same batch.
        events.extend(events[..10].to_vec());
        let out = store.apply(&events).await.unwrap();
        assert_eq!(
            out.iter().filter(|a| a.as_ref().unwrap().duplicate).count(),
            10
        );
        for i in 0..60 {
            let rec = store
                .find_message(&format!("wamid.big-{i}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(rec.current_status, "read", "{i}");
            assert_eq!(rec.status_history.len(), 3, "{i}");
        }
    }

    pub async fn inbound_messages_keep_their_content(store: &dyn MessageStore) {
        let mut ev = status(Bsp::Meta, Some("wamid.IN"), None, "received", 1);
        let m = ev.message.as_mut().unwrap();
        m.direction = Direction::Inbound;
        m.status = Some(Status::Received);
        m.content = Some(serde_json::json!({"type": "text", "text": {"body": "hello"}, "n": 1.5}));
        m.tags.insert("k".into(), "v".into());
        store.apply(&[ev]).await.unwrap();
        let rec = store.find_message("wamid.IN").await.unwrap().unwrap();
        assert_eq!(rec.direction, Direction::Inbound);
        assert_eq!(rec.current_status, "received");
        assert_eq!(rec.content.unwrap()["text"]["body"], "hello");
        assert_eq!(rec.bsp_data.unwrap()["tags"]["k"], "v");
    }
}
