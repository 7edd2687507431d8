//! One conformance suite for every `Inbox` backend: the embedded SQLite
//! inbox and RabbitMQ (the real broker), with the quarantine.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use zen_gateway::backends::rabbitmq::{RabbitInbox, RabbitOptions};
use zen_gateway::backends::sqlite::{SqliteDb, SqliteInbox, SqliteOptions, Synchronous};
use zen_gateway::model::Bsp;
use zen_gateway::queue::{Inbox, InboxDelivery, InboxEntry};

use crate::services;

/// Where an inbox lives, so that a test can close it and open it again (a
/// restart).
enum Place {
    Sqlite(tempfile::TempDir),
    Rabbit { url: String, prefix: String },
}

/// An open inbox and what closes it.
struct Open {
    inbox: Arc<dyn Inbox>,
    db: Option<SqliteDb>,
    broker: Option<Arc<RabbitInbox>>,
}

impl Open {
    async fn close(self) {
        if let Some(db) = self.db {
            db.close().await;
        }
        if let Some(b) = self.broker {
            b.close().await;
        }
    }
}

impl Place {
    fn sqlite() -> Place {
        Place::Sqlite(tempfile::tempdir().unwrap())
    }

    fn rabbit() -> Option<Place> {
        Some(Place::Rabbit {
            url: services::rabbitmq_url()?,
            prefix: services::unique_prefix(),
        })
    }

    async fn open(&self) -> Open {
        match self {
            Place::Sqlite(dir) => {
                let db = SqliteDb::open(&SqliteOptions {
                    path: dir.path().join("zen.db"),
                    synchronous: Synchronous::Normal,
                    queue_capacity: 1000,
                    max_batch: 64,
                    readers: 2,
                })
                .unwrap();
                Open {
                    inbox: Arc::new(SqliteInbox::new(db.clone())),
                    db: Some(db),
                    broker: None,
                }
            }
            Place::Rabbit { url, prefix } => {
                let broker = RabbitInbox::start(RabbitOptions {
                    url: url.clone(),
                    prefix: prefix.clone(),
                    consume: true,
                    prefetch: 64,
                    publish_channels: 1,
                    retry_delays_ms: vec![300],
                    forward_consume: false,
                    forward_prefetch: 1,
                    providers: zen_gateway::providers::Providers::new(),
                    queue_type: Default::default(),
                });
                assert!(broker.wait_connected(Duration::from_secs(15)).await);
                Open {
                    inbox: broker.clone(),
                    db: None,
                    broker: Some(broker),
                }
            }
        }
    }
}

fn entry(n: u32) -> InboxEntry {
    InboxEntry {
        event_id: format!("evt-{n}-{}", uuid::Uuid::new_v4().simple()),
        bsp: Bsp::Meta,
        received_at: Utc
            .timestamp_millis_opt(1_749_540_000_000 + n as i64)
            .unwrap(),
        body: Bytes::from(format!("{{\"n\":{n}}}")),
        priority: 0,
        batch_len: None,
        trace: None,
    }
}

/// Receives until `n` entries arrived (a broker may hand them out in
/// several goes) or 10 s passed.
async fn receive_n(inbox: &dyn Inbox, n: usize) -> Vec<InboxDelivery> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < n && tokio::time::Instant::now() < deadline {
        got.extend(
            inbox
                .receive(n - got.len(), Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    got
}

/// Polls `f` until it holds (broker counts settle asynchronously).
async fn eventually(f: impl AsyncFnMut() -> bool) -> bool {
    crate::helpers::eventually_within(Duration::from_secs(5), f).await
}

mod cases {
    use super::*;

    pub async fn appended_entries_are_handed_out_once_and_acked(place: Place) {
        let open = place.open().await;
        let inbox = &*open.inbox;
        let entries: Vec<InboxEntry> = (0..3).map(entry).collect();
        for e in &entries {
            inbox.append(e.clone()).await.unwrap();
        }
        let got = receive_n(inbox, 3).await;
        assert_eq!(got.len(), 3);
        for (d, e) in got.iter().zip(&entries) {
            assert_eq!(d.entry.event_id, e.event_id);
            assert_eq!(d.entry.bsp, e.bsp);
            assert_eq!(d.entry.body, e.body);
            assert_eq!(d.entry.received_at, e.received_at);
        }
        // Handed out once: nothing more while they are being processed.
        assert!(
            inbox
                .receive(10, Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty()
        );
        let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
        inbox.ack(&tags).await.unwrap();
        assert!(eventually(async || inbox.depth().await.unwrap() == 0).await);
        open.close().await;
        // Acked means gone, also after a restart.
        let open = place.open().await;
        assert!(
            open.inbox
                .receive(10, Duration::from_millis(500))
                .await
                .unwrap()
                .is_empty()
        );
        open.close().await;
    }

    pub async fn unacked_entries_come_back_after_a_restart(place: Place) {
        let open = place.open().await;
        let (a, b) = (entry(1), entry(2));
        open.inbox.append(a.clone()).await.unwrap();
        open.inbox.append(b.clone()).await.unwrap();
        let got = receive_n(&*open.inbox, 2).await;
        assert_eq!(got.len(), 2);
        open.inbox.ack(&[got[0].tag]).await.unwrap();
        open.close().await;
        let open = place.open().await;
        let again = receive_n(&*open.inbox, 1).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].entry.event_id, b.event_id);
        assert_eq!(again[0].entry.body, b.body);
        open.inbox.ack(&[again[0].tag]).await.unwrap();
        open.close().await;
    }

    pub async fn quarantine_keeps_an_entry_until_it_is_replayed(place: Place) {
        let open = place.open().await;
        let inbox = &*open.inbox;
        let (bad, good) = (entry(1), entry(2));
        inbox.append(bad.clone()).await.unwrap();
        inbox.append(good.clone()).await.unwrap();
        let got = receive_n(inbox, 2).await;
        inbox
            .quarantine(&got[0], "refused: a key the server does not take", 5)
            .await
            .unwrap();
        inbox.ack(&[got[1].tag]).await.unwrap();
        assert!(eventually(async || inbox.quarantine_depth().await.unwrap() == 1).await);
        assert!(eventually(async || inbox.depth().await.unwrap() == 0).await);
        let listed = inbox.list_quarantined(10, None).await.unwrap();
        assert_eq!(listed.len(), 1);
        let q = &listed[0];
        assert_eq!(q.event_id, bad.event_id);
        assert_eq!(q.bsp, bad.bsp);
        assert_eq!(q.attempts, 5);
        assert_eq!(q.error, "refused: a key the server does not take");
        assert_eq!(q.body, "{\"n\":1}");
        assert_eq!(q.received_at, bad.received_at);
        // Paging past the last entry gives nothing.
        assert!(
            inbox
                .list_quarantined(10, Some(&bad.event_id))
                .await
                .unwrap()
                .is_empty()
        );
        // Not handed out while quarantined.
        assert!(
            inbox
                .receive(10, Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty()
        );
        // Replaying an id that is not there does nothing.
        assert_eq!(
            inbox
                .replay_quarantined(Some(&["nope".to_owned()]))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            inbox
                .replay_quarantined(Some(std::slice::from_ref(&bad.event_id)))
                .await
                .unwrap(),
            1
        );
        let back = receive_n(inbox, 1).await;
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].entry.event_id, bad.event_id);
        assert_eq!(back[0].entry.body, bad.body);
        inbox.ack(&[back[0].tag]).await.unwrap();
        assert!(eventually(async || inbox.quarantine_depth().await.unwrap() == 0).await);
        assert_eq!(inbox.replay_quarantined(None).await.unwrap(), 0);
        open.close().await;
    }

    /// Retention takes quarantined entries set aside before the cutoff and
    /// keeps the newer ones.
    pub async fn retention_prunes_old_quarantined_entries(place: Place) {
        let open = place.open().await;
        let inbox = &*open.inbox;
        inbox.append(entry(21)).await.unwrap();
        inbox.append(entry(22)).await.unwrap();
        let got = receive_n(inbox, 2).await;
        inbox.quarantine(&got[0], "old", 5).await.unwrap();
        assert!(eventually(async || inbox.quarantine_depth().await.unwrap() == 1).await);
        let cutoff = chrono::Utc::now() + chrono::Duration::milliseconds(5);
        crate::helpers::wait_past(cutoff).await;
        inbox.quarantine(&got[1], "new", 5).await.unwrap();
        assert!(eventually(async || inbox.quarantine_depth().await.unwrap() == 2).await);
        assert_eq!(inbox.prune_quarantined(cutoff, 100).await.unwrap(), 1);
        assert!(eventually(async || inbox.quarantine_depth().await.unwrap() == 1).await);
        let left = inbox.list_quarantined(10, None).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].error, "new");
        open.close().await;
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::cases::$case(super::Place::sqlite()).await;
                }
            )*
        }
        mod rabbitmq {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(place) = super::Place::rabbit() else { return };
                    super::cases::$case(place).await;
                }
            )*
        }
    };
}

suite!(
    appended_entries_are_handed_out_once_and_acked,
    unacked_entries_come_back_after_a_restart,
    quarantine_keeps_an_entry_until_it_is_replayed,
    retention_prunes_old_quarantined_entries,
);
