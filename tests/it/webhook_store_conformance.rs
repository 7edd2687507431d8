//! The webhook store's conformance suite, on SQLite and on MongoDB
//! (FerretDB): configs, matching, delivery logs.

use std::sync::Arc;

use chrono::Utc;
use serde_json::json;
use zen_gateway::backends::mongo::MongoWebhookStore;
use zen_gateway::backends::sqlite::SqliteWebhookStore;
use zen_gateway::backends::sqlite::{SqliteDb, SqliteOptions, Synchronous};
use zen_gateway::forwarding::{
    Attempt, DeliveryLog, DeliveryStatus, WebhookConfig, WebhookStore, WebhookUpdate,
};

use crate::services;

struct Backend {
    store: Arc<dyn WebhookStore>,
    db: Option<mongodb::Database>,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&SqliteOptions {
        path: dir.path().join("zen.db"),
        synchronous: Synchronous::Normal,
        queue_capacity: 100,
        max_batch: 64,
        readers: 2,
    })
    .unwrap();
    Backend {
        store: Arc::new(SqliteWebhookStore::new(db)),
        db: None,
        _dir: Some(dir),
    }
}

async fn mongo() -> Option<Backend> {
    let uri = services::mongo_uri()?;
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    let db = client.database(&services::unique_db_name());
    Some(Backend {
        store: Arc::new(MongoWebhookStore::new(&db)),
        db: Some(db),
        _dir: None,
    })
}

fn hook(id: &str, owner: &str) -> WebhookConfig {
    WebhookConfig {
        id: id.into(),
        project_owner_id: owner.into(),
        project_id: String::new(),
        webhook_url: format!("https://example.com/{id}"),
        shared_secret: "s".repeat(64),
        topics: vec!["*".into()],
        created_at: 1,
        updated_at: 1,
        active: None,
        business_numbers: None,
        headers: None,
        // Per-webhook limits round-trip on every backend.
        timeout_ms: Some(2500),
        max_in_flight: Some(7),
        // A filter round-trips too, `$` keys and all.
        filter: Some(
            serde_json::json!({"data.errors.0.code": {"$in": [131026]}, "$or": [{"event_type": "message.failed"}]}),
        ),
        previous_secret: None,
        previous_secret_expires_at: None,
    }
}

async fn configs_and_matching(store: &dyn WebhookStore) {
    let mut by_number = hook("w2", "other");
    by_number.business_numbers = Some(vec!["+91 80712-34567".into()]);
    let mut by_project = hook("w3", "other");
    by_project.project_id = "prj-9".into();
    let mut inactive = hook("w4", "owner-1");
    inactive.active = Some(false);
    for w in [hook("w1", "owner-1"), by_number, by_project, inactive] {
        store.create_webhook(&w).await.unwrap();
    }
    assert_eq!(
        store.get_webhook("w1").await.unwrap().unwrap(),
        hook("w1", "owner-1")
    );
    assert_eq!(store.list_webhooks(Some("owner-1")).await.unwrap().len(), 2);
    assert_eq!(store.list_webhooks(None).await.unwrap().len(), 4);
    let ids = |v: Vec<WebhookConfig>| {
        let mut ids: Vec<String> = v.into_iter().map(|w| w.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(store
            .matching_webhooks(Some("owner-1"), None, None)
            .await
            .unwrap()),
        ["w1"]
    );
    assert_eq!(
        ids(store
            .matching_webhooks(None, None, Some("918071234567"))
            .await
            .unwrap()),
        ["w2"]
    );
    assert_eq!(
        ids(store
            .matching_webhooks(None, Some("prj-9"), None)
            .await
            .unwrap()),
        ["w3"]
    );
    assert_eq!(
        ids(store
            .matching_webhooks(Some("owner-1"), Some("prj-9"), Some("918071234567"))
            .await
            .unwrap()),
        ["w1", "w2", "w3"]
    );
    let mut changed = hook("w1", "owner-1");
    changed.topics = vec!["message.read".into()];
    changed.headers = Some([("x-tenant".to_string(), "t1".to_string())].into());
    assert_eq!(
        store.update_webhook(&changed, 1).await.unwrap(),
        WebhookUpdate::Updated
    );
    assert_eq!(store.get_webhook("w1").await.unwrap().unwrap(), changed);
    // A rotation's previous secret round-trips; then every optional field
    // cleared is gone, on every backend.
    changed.previous_secret = Some("p".repeat(64));
    changed.previous_secret_expires_at = Some(1_767_225_600_000);
    assert_eq!(
        store.update_webhook(&changed, 1).await.unwrap(),
        WebhookUpdate::Updated
    );
    assert_eq!(store.get_webhook("w1").await.unwrap().unwrap(), changed);
    // Its window closed long ago: the pruner's pass forgets it.
    assert_eq!(
        zen_gateway::forwarding::webhooks::forget_expired_secrets(store)
            .await
            .unwrap(),
        1
    );
    let forgotten = store.get_webhook("w1").await.unwrap().unwrap();
    assert_eq!(forgotten.previous_secret, None);
    assert_eq!(forgotten.previous_secret_expires_at, None);
    changed.timeout_ms = None;
    changed.max_in_flight = None;
    changed.filter = None;
    changed.previous_secret = None;
    changed.previous_secret_expires_at = None;
    assert_eq!(
        store.update_webhook(&changed, 1).await.unwrap(),
        WebhookUpdate::Updated
    );
    assert_eq!(store.get_webhook("w1").await.unwrap().unwrap(), changed);
    assert_eq!(
        store.update_webhook(&hook("nope", "x"), 1).await.unwrap(),
        WebhookUpdate::NotFound
    );
    assert!(store.delete_webhook("w1").await.unwrap());
    assert!(!store.delete_webhook("w1").await.unwrap());
    assert!(store.get_webhook("w1").await.unwrap().is_none());
}

/// A webhook is written only over the version it was read at: a change
/// made from a stale copy (another call, replica, or the forwarder's
/// deactivation) is refused, and a read-change-write retries on the fresh
/// one, so neither change is lost.
async fn an_update_from_a_stale_copy_is_refused(store: &dyn WebhookStore) {
    store.create_webhook(&hook("w-cas", "o")).await.unwrap();
    let first = store.get_webhook("w-cas").await.unwrap().unwrap();
    let second = first.clone();
    let mut moved = first.clone();
    moved.webhook_url = "https://example.com/moved".into();
    moved.updated_at = 2;
    assert_eq!(
        store
            .update_webhook(&moved, first.updated_at)
            .await
            .unwrap(),
        WebhookUpdate::Updated
    );
    // Rotated from the copy read before the move: refused, nothing written.
    let mut rotated = second.clone();
    rotated.shared_secret = "n".repeat(64);
    rotated.updated_at = 2;
    assert_eq!(
        store
            .update_webhook(&rotated, second.updated_at)
            .await
            .unwrap(),
        WebhookUpdate::Stale
    );
    assert_eq!(store.get_webhook("w-cas").await.unwrap().unwrap(), moved);
    assert_eq!(
        store.update_webhook(&hook("nope", "o"), 1).await.unwrap(),
        WebhookUpdate::NotFound
    );

    // Both changes land through the read-change-write, in either order.
    use zen_gateway::forwarding::webhooks::change_webhook;
    let (rotated, ()) = change_webhook(store, "w-cas", |w| {
        w.shared_secret = "n".repeat(64);
        Ok(())
    })
    .await
    .unwrap();
    assert!(rotated.updated_at > moved.updated_at);
    let now = store.get_webhook("w-cas").await.unwrap().unwrap();
    assert_eq!(now.webhook_url, "https://example.com/moved");
    assert_eq!(now.shared_secret, "n".repeat(64));
    // Within one millisecond too: each write stamps later than it read.
    let (off, ()) = change_webhook(store, "w-cas", |w| {
        w.active = Some(false);
        Ok(())
    })
    .await
    .unwrap();
    let mut stale = rotated.clone();
    stale.active = Some(true);
    assert_eq!(
        store
            .update_webhook(&stale, rotated.updated_at)
            .await
            .unwrap(),
        WebhookUpdate::Stale
    );
    assert_eq!(store.get_webhook("w-cas").await.unwrap().unwrap(), off);
}

#[tokio::test]
async fn sqlite_an_update_from_a_stale_copy_is_refused() {
    an_update_from_a_stale_copy_is_refused(&*sqlite().store).await;
}

#[tokio::test]
async fn mongo_an_update_from_a_stale_copy_is_refused() {
    let Some(b) = mongo().await else { return };
    an_update_from_a_stale_copy_is_refused(&*b.store).await;
    // Legacy documents hold `updated_at` as a date, or not at all: they are
    // compared as read all the same.
    let db = b.db.unwrap();
    let legacy = db.collection::<bson::Document>("webhooks");
    legacy
        .insert_one(bson::doc! {"_id": "w-date", "project_owner_id": "o",
        "webhook_url": "https://example.com/d", "shared_secret": "s", "topics": ["*"],
        "updated_at": bson::DateTime::from_millis(1_700_000_000_000)})
        .await
        .unwrap();
    legacy
        .insert_one(bson::doc! {"_id": "w-none", "project_owner_id": "o",
        "webhook_url": "https://example.com/n", "shared_secret": "s", "topics": ["*"]})
        .await
        .unwrap();
    for (id, read_at) in [("w-date", 1_700_000_000_000), ("w-none", 0)] {
        let mut w = b.store.get_webhook(id).await.unwrap().unwrap();
        assert_eq!(w.updated_at, read_at);
        w.webhook_url = "https://example.com/changed".into();
        w.updated_at = read_at + 1;
        assert_eq!(
            b.store.update_webhook(&w, read_at + 5).await.unwrap(),
            WebhookUpdate::Stale,
            "{id}"
        );
        assert_eq!(
            b.store.update_webhook(&w, read_at).await.unwrap(),
            WebhookUpdate::Updated,
            "{id}"
        );
        assert_eq!(b.store.get_webhook(id).await.unwrap().unwrap(), w);
    }
    db.drop().await.unwrap();
}

/// The pruner drops an expired previous secret without undoing what
/// happened since it read the webhook: a rotation, or another change.
async fn previous_secrets_are_forgotten_only_while_unchanged(store: &dyn WebhookStore) {
    let mut w = hook("w-rot", "o");
    w.previous_secret = Some("p".repeat(64));
    w.previous_secret_expires_at = Some(1_000);
    store.create_webhook(&w).await.unwrap();
    // As the pruner listed it (expired); then a rotation lands.
    let listed = store.get_webhook("w-rot").await.unwrap().unwrap();
    let mut rotated = listed.clone();
    rotated.previous_secret = Some(std::mem::replace(
        &mut rotated.shared_secret,
        "n".repeat(64),
    ));
    rotated.previous_secret_expires_at = Some(Utc::now().timestamp_millis() + 60_000);
    assert_eq!(
        store.update_webhook(&rotated, 1).await.unwrap(),
        WebhookUpdate::Updated
    );
    assert!(
        !store
            .forget_previous_secret("w-rot", listed.previous_secret_expires_at.unwrap())
            .await
            .unwrap()
    );
    let kept = store.get_webhook("w-rot").await.unwrap().unwrap();
    assert_eq!(kept.shared_secret, "n".repeat(64));
    assert_eq!(kept.previous_secret, rotated.previous_secret);
    assert_eq!(
        kept.previous_secret_expires_at,
        rotated.previous_secret_expires_at
    );

    // Unchanged since: forgotten, and only that (a URL changed meanwhile stays).
    let mut moved = kept.clone();
    moved.webhook_url = "https://example.com/moved".into();
    assert_eq!(
        store.update_webhook(&moved, 1).await.unwrap(),
        WebhookUpdate::Updated
    );
    assert!(
        store
            .forget_previous_secret("w-rot", kept.previous_secret_expires_at.unwrap())
            .await
            .unwrap()
    );
    let now = store.get_webhook("w-rot").await.unwrap().unwrap();
    assert_eq!(now.previous_secret, None);
    assert_eq!(now.previous_secret_expires_at, None);
    assert_eq!(now.webhook_url, "https://example.com/moved");
    assert_eq!(now.shared_secret, "n".repeat(64));
    // Gone, or nothing to forget: false.
    assert!(!store.forget_previous_secret("w-rot", 1_000).await.unwrap());
    assert!(!store.forget_previous_secret("nope", 1_000).await.unwrap());
}

#[tokio::test]
async fn sqlite_previous_secrets_are_forgotten_only_while_unchanged() {
    previous_secrets_are_forgotten_only_while_unchanged(&*sqlite().store).await;
}

#[tokio::test]
async fn mongo_previous_secrets_are_forgotten_only_while_unchanged() {
    let Some(b) = mongo().await else { return };
    previous_secrets_are_forgotten_only_while_unchanged(&*b.store).await;
    b.db.unwrap().drop().await.unwrap();
}

async fn delivery_logs(store: &dyn WebhookStore) {
    let now = Utc::now();
    let log = DeliveryLog {
        id: "65a1b2c3d4e5f6a7b8c9d0e1".into(),
        project_owner_id: "o".into(),
        webhook_id: "w".into(),
        event_id: "e".into(),
        event_type: "datagen.delivery".into(),
        webhook_url: "https://example.com".into(),
        payload: json!({"a": 1}),
        attempt_count: 0,
        status: DeliveryStatus::Pending,
        status_code: None,
        response_body: None,
        error_message: None,
        delivery_duration_ms: None,
        next_retry_at: None,
        created_at: now,
        last_attempt_at: now,
    };
    store
        .create_delivery_logs(std::slice::from_ref(&log))
        .await
        .unwrap();
    store
        .create_delivery_logs(std::slice::from_ref(&log))
        .await
        .unwrap(); // re-run: no error, no copy
    let attempt = |status, code, counts| Attempt {
        status,
        status_code: Some(code),
        response_body: Some("body".into()),
        error_message: None,
        duration_ms: 12,
        next_retry_at: None,
        at: Utc::now(),
        counts_as_attempt: counts,
    };
    assert_eq!(
        store.delivery_status(&log.id).await.unwrap(),
        Some(DeliveryStatus::Pending)
    );
    assert_eq!(
        store
            .delivery_status("65a1b2c3d4e5f6a7b8c9ffff")
            .await
            .unwrap(),
        None
    );
    let failed = Attempt {
        error_message: Some("HTTP 500".into()),
        next_retry_at: Some(Utc::now()),
        ..attempt(DeliveryStatus::Retrying, 500, true)
    };
    store.record_attempt(&log.id, &failed).await.unwrap();
    let logs = store.list_deliveries("w", 10).await.unwrap();
    assert_eq!(logs[0].error_message.as_deref(), Some("HTTP 500"));
    assert!(logs[0].next_retry_at.is_some());
    store
        .record_attempt(&log.id, &attempt(DeliveryStatus::Retrying, 500, false))
        .await
        .unwrap();
    store
        .record_attempt(&log.id, &attempt(DeliveryStatus::Success, 200, true))
        .await
        .unwrap();
    let logs = store.list_deliveries("w", 10).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].attempt_count, 2);
    assert_eq!(logs[0].status, DeliveryStatus::Success);
    assert_eq!(logs[0].status_code, Some(200));
    assert_eq!(logs[0].payload, json!({"a": 1}));
    // The same rule on every backend: a success after a failure clears the
    // error and the next retry.
    assert_eq!(logs[0].error_message, None);
    assert_eq!(logs[0].next_retry_at, None);
    assert_eq!(
        store.delivery_status(&log.id).await.unwrap(),
        Some(DeliveryStatus::Success)
    );

    // Secrets of legacy jobs, by delivery id.
    assert_eq!(store.legacy_secret(&log.id).await.unwrap(), None);
    store.keep_legacy_secret(&log.id, "s1").await.unwrap();
    store.keep_legacy_secret(&log.id, "s2").await.unwrap();
    assert_eq!(
        store.legacy_secret(&log.id).await.unwrap().as_deref(),
        Some("s2")
    );
}

/// Retention takes the delivery logs created before the cutoff (with the
/// legacy secrets kept for them) and leaves the newer ones.
async fn retention_prunes_old_delivery_logs(store: &dyn WebhookStore) {
    let old = Utc::now() - chrono::Duration::days(40);
    let log = |id: &str, at| DeliveryLog {
        id: id.into(),
        project_owner_id: "o".into(),
        webhook_id: "w-prune".into(),
        event_id: id.into(),
        event_type: "datagen.delivery".into(),
        webhook_url: "https://example.com".into(),
        payload: json!({}),
        attempt_count: 0,
        status: DeliveryStatus::Success,
        status_code: None,
        response_body: None,
        error_message: None,
        delivery_duration_ms: None,
        next_retry_at: None,
        created_at: at,
        last_attempt_at: at,
    };
    store
        .create_delivery_logs(&[
            log("65a1b2c3d4e5f6a7b8c9d0f1", old),
            log("65a1b2c3d4e5f6a7b8c9d0f2", Utc::now()),
        ])
        .await
        .unwrap();
    let cutoff = Utc::now() - chrono::Duration::days(30);
    assert_eq!(store.prune_delivery_logs(cutoff, 100).await.unwrap(), 1);
    assert_eq!(store.prune_delivery_logs(cutoff, 100).await.unwrap(), 0);
    assert!(
        store
            .delivery_status("65a1b2c3d4e5f6a7b8c9d0f1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .delivery_status("65a1b2c3d4e5f6a7b8c9d0f2")
            .await
            .unwrap()
            .is_some()
    );
}

/// A legacy job's secret lives as long as the DLQ entry of its delivery:
/// the delivery logs' retention leaves it while it is held, the DLQ's
/// retention (by when it died) takes it, and a delivery after a replay
/// releases it to the delivery logs' retention again.
async fn held_legacy_secrets_outlive_the_delivery_logs(store: &dyn WebhookStore) {
    let (dead, done) = ("65a1b2c3d4e5f6a7b8c9d0a1", "65a1b2c3d4e5f6a7b8c9d0a2");
    store.keep_legacy_secret(dead, "dead-secret").await.unwrap();
    store.keep_legacy_secret(done, "done-secret").await.unwrap();
    let died = Utc::now() - chrono::Duration::hours(1);
    store.hold_legacy_secret(dead, Some(died)).await.unwrap();
    // Every delivery log is past its retention: the held secret stays.
    let future = Utc::now() + chrono::Duration::days(1);
    store.prune_delivery_logs(future, 100).await.unwrap();
    assert_eq!(store.legacy_secret(done).await.unwrap(), None);
    assert_eq!(
        store.legacy_secret(dead).await.unwrap().as_deref(),
        Some("dead-secret")
    );
    // A DLQ retention older than its death keeps it; a newer one takes it.
    let two_hours = Utc::now() - chrono::Duration::hours(2);
    assert_eq!(
        store
            .prune_held_legacy_secrets(two_hours, 100)
            .await
            .unwrap(),
        0
    );
    assert!(store.legacy_secret(dead).await.unwrap().is_some());
    assert_eq!(
        store
            .prune_held_legacy_secrets(Utc::now(), 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.legacy_secret(dead).await.unwrap(), None);
    // Released after a delivery: the delivery logs' retention applies.
    store.keep_legacy_secret(dead, "again").await.unwrap();
    store.hold_legacy_secret(dead, Some(died)).await.unwrap();
    store.hold_legacy_secret(dead, None).await.unwrap();
    store.prune_delivery_logs(future, 100).await.unwrap();
    assert_eq!(store.legacy_secret(dead).await.unwrap(), None);
    // Holding a delivery that has no secret is a no-op.
    store
        .hold_legacy_secret("65a1b2c3d4e5f6a7b8c9d0a3", Some(died))
        .await
        .unwrap();
    assert_eq!(
        store
            .legacy_secret("65a1b2c3d4e5f6a7b8c9d0a3")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn sqlite_held_legacy_secrets_outlive_the_delivery_logs() {
    held_legacy_secrets_outlive_the_delivery_logs(&*sqlite().store).await;
}

#[tokio::test]
async fn mongo_held_legacy_secrets_outlive_the_delivery_logs() {
    let Some(b) = mongo().await else { return };
    held_legacy_secrets_outlive_the_delivery_logs(&*b.store).await;
    b.db.unwrap().drop().await.unwrap();
}

/// A message's deliveries: those of its events, to every webhook, newest
/// first, bounded.
async fn deliveries_of_events(store: &dyn WebhookStore) {
    let t0 = Utc::now() - chrono::Duration::minutes(10);
    let log = |event: &str, webhook: &str, minutes: i64| DeliveryLog {
        id: zen_gateway::forwarding::delivery_id(event, webhook),
        project_owner_id: "o".into(),
        webhook_id: webhook.into(),
        event_id: event.into(),
        event_type: "datagen.delivery".into(),
        webhook_url: "https://example.com".into(),
        payload: json!({"event": event}),
        attempt_count: 0,
        status: DeliveryStatus::Pending,
        status_code: None,
        response_body: None,
        error_message: None,
        delivery_duration_ms: None,
        next_retry_at: None,
        created_at: t0 + chrono::Duration::minutes(minutes),
        last_attempt_at: t0,
    };
    store
        .create_delivery_logs(&[
            log("ev-a", "w1", 1),
            log("ev-a", "w2", 2),
            log("ev-b", "w1", 3),
            log("ev-other", "w1", 4),
        ])
        .await
        .unwrap();
    let ids = ["ev-a".to_owned(), "ev-b".to_owned()];
    let found = store.deliveries_of_events(&ids, 10).await.unwrap();
    let seen: Vec<(&str, &str)> = found
        .iter()
        .map(|l| (l.event_id.as_str(), l.webhook_id.as_str()))
        .collect();
    assert_eq!(seen, [("ev-b", "w1"), ("ev-a", "w2"), ("ev-a", "w1")]);
    assert_eq!(store.deliveries_of_events(&ids, 2).await.unwrap().len(), 2);
    assert!(
        store
            .deliveries_of_events(&[], 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn sqlite_deliveries_of_events() {
    deliveries_of_events(&*sqlite().store).await;
}

#[tokio::test]
async fn mongo_deliveries_of_events() {
    let Some(b) = mongo().await else { return };
    deliveries_of_events(&*b.store).await;
    b.db.unwrap().drop().await.unwrap();
}

#[tokio::test]
async fn sqlite_retention_prunes_old_delivery_logs() {
    retention_prunes_old_delivery_logs(&*sqlite().store).await;
}

#[tokio::test]
async fn mongo_retention_prunes_old_delivery_logs() {
    let Some(b) = mongo().await else { return };
    retention_prunes_old_delivery_logs(&*b.store).await;
    b.db.unwrap().drop().await.unwrap();
}

#[tokio::test]
async fn sqlite_configs_and_matching() {
    configs_and_matching(&*sqlite().store).await;
}

#[tokio::test]
async fn sqlite_delivery_logs() {
    delivery_logs(&*sqlite().store).await;
}

#[tokio::test]
async fn mongo_configs_and_matching() {
    let Some(b) = mongo().await else { return };
    configs_and_matching(&*b.store).await;
    b.db.unwrap().drop().await.unwrap();
}

#[tokio::test]
async fn mongo_delivery_logs() {
    let Some(b) = mongo().await else { return };
    delivery_logs(&*b.store).await;
    // Legacy BSON types.
    let db = b.db.unwrap();
    let doc = db
        .collection::<bson::Document>("webhook_delivery_logs")
        .find_one(bson::doc! {})
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(doc.get("_id"), Some(bson::Bson::ObjectId(_))));
    assert!(matches!(
        doc.get("attempt_count"),
        Some(bson::Bson::Int32(2))
    ));
    assert!(matches!(
        doc.get("status_code"),
        Some(bson::Bson::Int32(200))
    ));
    assert!(matches!(
        doc.get("last_attempt_at"),
        Some(bson::Bson::DateTime(_))
    ));
    db.drop().await.unwrap();
}

#[tokio::test]
async fn mongo_projects_resolve_owners_and_webhooks_keep_legacy_types() {
    let Some(b) = mongo().await else { return };
    let db = b.db.clone().unwrap();
    db.collection::<bson::Document>("projects")
        .insert_one(bson::doc! {"_id": bson::oid::ObjectId::new(), "wa_number": "918071234567", "project_owner_id": "owner-P"})
        .await
        .unwrap();
    let p = b.store.project_of("+91 8071234567").await.unwrap().unwrap();
    assert_eq!(p.project_owner_id, "owner-P");
    assert_eq!(p.project_id.len(), 24);
    assert!(b.store.project_of("911111111111").await.unwrap().is_none());
    b.store
        .create_webhook(&hook("65a1b2c3d4e5f6a7b8c9d0ff", "owner-P"))
        .await
        .unwrap();
    let doc = db
        .collection::<bson::Document>("webhooks")
        .find_one(bson::doc! {})
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(doc.get("_id"), Some(bson::Bson::String(_))));
    assert!(matches!(doc.get("created_at"), Some(bson::Bson::Int64(1))));
    db.drop().await.unwrap();
}
