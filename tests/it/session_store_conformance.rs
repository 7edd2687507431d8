//! The session store's conformance suite, on SQLite and on MongoDB
//! (FerretDB): a session is live from its start until it ends or expires,
//! as every replica and every restart sees it.

use std::sync::Arc;

use chrono::Utc;
use zen_gateway::backends::mongo::MongoSessionStore;
use zen_gateway::backends::sqlite::{SqliteDb, SqliteOptions, SqliteSessionStore, Synchronous};
use zen_gateway::sessions::{SessionStore, id_hash};

use crate::services;

async fn sessions_start_end_and_expire(store: &dyn SessionStore) {
    let now = Utc::now();
    let (a, b, old) = (id_hash("nonce-a"), id_hash("nonce-b"), id_hash("nonce-old"));
    assert!(!store.session_live(&a, now).await.unwrap());
    store
        .start_session(&a, now + chrono::Duration::hours(1))
        .await
        .unwrap();
    store
        .start_session(&b, now + chrono::Duration::hours(1))
        .await
        .unwrap();
    store
        .start_session(&old, now - chrono::Duration::minutes(1))
        .await
        .unwrap();
    assert!(store.session_live(&a, now).await.unwrap());
    // Expired: not live, and pruned.
    assert!(!store.session_live(&old, now).await.unwrap());
    assert!(
        !store
            .session_live(&a, now + chrono::Duration::hours(2))
            .await
            .unwrap()
    );
    // Ended: not live, the others untouched; ending again is a no-op.
    store.end_session(&a).await.unwrap();
    store.end_session(&a).await.unwrap();
    assert!(!store.session_live(&a, now).await.unwrap());
    assert!(store.session_live(&b, now).await.unwrap());
    assert_eq!(store.prune_sessions(now, 100).await.unwrap(), 1);
    assert_eq!(store.prune_sessions(now, 100).await.unwrap(), 0);
    assert!(store.session_live(&b, now).await.unwrap());
}

#[tokio::test]
async fn sqlite_sessions_start_end_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&SqliteOptions {
        path: dir.path().join("zen.db"),
        synchronous: Synchronous::Normal,
        queue_capacity: 100,
        max_batch: 64,
        readers: 2,
    })
    .unwrap();
    let store = Arc::new(SqliteSessionStore::new(db));
    sessions_start_end_and_expire(&*store).await;
}

#[tokio::test]
async fn mongo_sessions_start_end_and_expire() {
    let Some(uri) = services::mongo_uri() else {
        return;
    };
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    let db = client.database(&services::unique_db_name());
    sessions_start_end_and_expire(&MongoSessionStore::new(&db)).await;
    db.drop().await.unwrap();
}
