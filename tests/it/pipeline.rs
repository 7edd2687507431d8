//! The processor's whole pipeline (inbox → adapters → store) on every store
//! backend, stepped with `Processor::drain`, not waited for: whatever order
//! a message's reports arrive in, and however often each comes, the record
//! ends the same, on SQLite and on MongoDB.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use zen_gateway::backends::sqlite::{SqliteDb, SqliteInbox, SqliteOptions, Synchronous};
use zen_gateway::model::Bsp;
use zen_gateway::processor::Processor;
use zen_gateway::providers::Providers;
use zen_gateway::queue::{Inbox, InboxEntry};
use zen_gateway::store::MessageStore;

use crate::helpers::datagen_status;
use crate::store_conformance::{Backend, mongo_backend, sqlite_backend};

/// A fresh embedded inbox.
fn inbox() -> (Arc<dyn Inbox>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&SqliteOptions {
        path: dir.path().join("zen.db"),
        synchronous: Synchronous::Normal,
        queue_capacity: 1000,
        max_batch: 256,
        readers: 1,
    })
    .unwrap();
    (Arc::new(SqliteInbox::new(db)), dir)
}

/// Appends `reports` (each a Datagen status body) and drains the processor.
async fn process(store: Arc<dyn MessageStore>, reports: &[String], batch_size: usize) {
    let (inbox, _dir) = inbox();
    for (n, body) in reports.iter().enumerate() {
        inbox
            .append(InboxEntry {
                event_id: format!("ev-{n}"),
                bsp: Bsp::Datagen,
                received_at: Utc::now(),
                body: Bytes::from(body.clone()),
                priority: 0,
                batch_len: None,
                trace: None,
            })
            .await
            .unwrap();
    }
    let processor = Processor::new(inbox.clone(), store, Providers::new(), batch_size);
    let report = processor.drain().await.unwrap();
    assert_eq!(report.entries, reports.len());
    assert_eq!(inbox.depth().await.unwrap(), 0, "drained");
}

async fn any_order_and_duplicates_give_one_final_record(make: impl AsyncFn() -> Backend) {
    let wamid = "wamid.pipeline-1";
    let reports: Vec<String> = [
        ("sent", 1_000),
        ("Delivered", 2_000),
        ("Read", 3_000),
        ("failed", 1_500),
    ]
    .iter()
    .map(|(s, t)| datagen_status(wamid, s, 1_749_540_000_000 + t))
    .collect();
    let orders: [Vec<usize>; 3] = [
        vec![0, 1, 2, 3],
        vec![2, 3, 1, 0, 2, 1],
        vec![3, 3, 2, 0, 1, 0, 1, 2],
    ];
    let mut finals = Vec::new();
    for (n, order) in orders.iter().enumerate() {
        let backend = make().await;
        let shuffled: Vec<String> = order.iter().map(|&i| reports[i].clone()).collect();
        // One entry per batch, then all in one: the batch's shape does not
        // matter either.
        process(
            backend.store.clone(),
            &shuffled,
            if n == 1 { 1 } else { 64 },
        )
        .await;
        let mut rec = backend.store.find_message(wamid).await.unwrap().unwrap();
        backend.finish().await;
        // Identity and bookkeeping fields are not part of the state.
        rec.message_id = String::new();
        rec.created_at = Utc::now();
        rec.updated_at = rec.created_at;
        finals.push(rec);
    }
    assert_eq!(finals[0].current_status, "read");
    assert_eq!(finals[0].status_history.len(), 4, "one entry per event");
    for other in &finals[1..] {
        assert_eq!(other.current_status, finals[0].current_status);
        assert_eq!(other.sent_at, finals[0].sent_at);
        assert_eq!(other.delivered_at, finals[0].delivered_at);
        assert_eq!(other.read_at, finals[0].read_at);
        assert_eq!(other.failed_at, finals[0].failed_at);
        let statuses = |r: &zen_gateway::model::MessageRecord| -> Vec<String> {
            r.status_history.iter().map(|h| h.status.clone()).collect()
        };
        assert_eq!(statuses(other), statuses(&finals[0]));
    }
}

#[tokio::test]
async fn sqlite_any_order_and_duplicates_give_one_final_record() {
    any_order_and_duplicates_give_one_final_record(async || sqlite_backend()).await;
}

#[tokio::test]
async fn mongo_any_order_and_duplicates_give_one_final_record() {
    if crate::services::mongo_uri().is_none() {
        return;
    }
    any_order_and_duplicates_give_one_final_record(async || mongo_backend().await.unwrap()).await;
}
