//! Redis as the cache: the legacy project lookup key, dedup keys, readiness.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::services;

#[tokio::test]
async fn with_redis_the_gateway_is_ready_and_shares_lookups_and_dedup_keys() {
    let Some(url) = services::redis_url() else {
        return;
    };
    let prefix = format!("zen-test-{}:", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(|s| {
        s.backends.redis_url = Some(zen_gateway::config::SecretUrl::new(url.clone()));
        s.backends.redis_key_prefix = Some(prefix.clone());
    })
    .await;
    let ready = app.wait_ready(|r| r["cache"]["up"] == true).await;
    assert_eq!(ready["cache"]["backend"], "redis");
    assert_eq!(ready["status"], "ready", "{ready}");

    let wamid = format!("wamid.redis-{}", uuid::Uuid::new_v4().simple());
    let body = datagen_status(&wamid, "delivered", 1_749_540_000_000);
    app.post_webhook("/webhook/datagen", body.clone()).await;
    app.wait_for_message(&wamid, |m| m["current_status"] == "delivered")
        .await;
    app.post_webhook("/webhook/datagen", body).await;
    app.barrier().await;
    let rec: Value = app.get_message(&wamid).await.json().await.unwrap();
    assert_eq!(rec["status_history"].as_array().unwrap().len(), 1);

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let dedup: Option<String> = redis::cmd("GET")
        .arg(format!(
            "{prefix}dedup:datagen:{wamid}:delivered|1749540000000"
        ))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dedup.as_deref(), Some("1"));
    // No project for the number on the embedded backend: the legacy
    // NOT_FOUND marker, with its 10 minute TTL.
    let lookup: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}project:lookup:918071234567"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(lookup.as_deref(), Some("NOT_FOUND"));
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}project:lookup:918071234567"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 600, "{ttl}");
    app.stop().await;
}

/// Two deployments (each its own data file) on one Redis: each stores every
/// event, although both process the same webhooks (their dedup keys live in
/// their own namespaces, derived from their data files).
#[tokio::test]
async fn two_deployments_sharing_a_redis_both_store_every_event() {
    let Some(url) = services::redis_url() else {
        return;
    };
    let a = spawn_app_with(|s| {
        s.backends.redis_url = Some(zen_gateway::config::SecretUrl::new(url.clone()))
    })
    .await;
    let b = spawn_app_with(|s| {
        s.backends.redis_url = Some(zen_gateway::config::SecretUrl::new(url.clone()))
    })
    .await;
    for app in [&a, &b] {
        app.wait_ready(|r| r["cache"]["up"] == true).await;
    }
    let wamids: Vec<String> = (0..20)
        .map(|i| format!("wamid.shared-{i}-{}", uuid::Uuid::new_v4().simple()))
        .collect();
    for app in [&a, &b] {
        for w in &wamids {
            let body = datagen_status(w, "delivered", 1_749_540_000_000);
            assert_eq!(
                app.post_webhook("/webhook/datagen", body).await.status(),
                200
            );
        }
    }
    for app in [&a, &b] {
        for w in &wamids {
            app.wait_for_message(w, |m| m["current_status"] == "delivered")
                .await;
        }
    }
    a.stop().await;
    b.stop().await;
}

/// Webhook secrets and custom headers (often client tokens) never reach the
/// shared cache, whose match entries every replica (and anyone with access
/// to the Redis) can read.
#[tokio::test]
async fn secrets_and_custom_headers_are_not_cached_in_redis() {
    let Some(url) = services::redis_url() else {
        return;
    };
    let prefix = format!("zen-test-{}:", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(|s| {
        s.backends.redis_url = Some(zen_gateway::config::SecretUrl::new(url.clone()));
        s.backends.redis_key_prefix = Some(prefix.clone());
    })
    .await;
    app.wait_ready(|r| r["cache"]["up"] == true).await;
    let hook = app
        .create_webhook(serde_json::json!({
            "project_owner_id": "o", "webhook_url": "https://example.com/hook", "topics": ["*"],
            "business_numbers": ["918071234567"], "headers": {"X-Client-Token": "tok-very-secret"}}))
        .await;
    let secret = hook["shared_secret"].as_str().unwrap().to_owned();
    let wamid = format!("wamid.cache-{}", uuid::Uuid::new_v4().simple());
    app.post_webhook(
        "/webhook/datagen",
        datagen_status(&wamid, "delivered", 1_749_540_000_000),
    )
    .await;
    app.wait_for_message(&wamid, |m| m["current_status"] == "delivered")
        .await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The fan-out runs after the record is stored: wait for its entry.
    let mut keys: Vec<String> = Vec::new();
    eventually_within(Duration::from_secs(10), async || {
        keys = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.iter().any(|k| k.contains("webhooks:match"))
    })
    .await;
    assert!(
        keys.iter().any(|k| k.contains("webhooks:match")),
        "the match was never cached: {keys:?}"
    );
    for k in &keys {
        let v: Option<String> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        let v = v.unwrap_or_default();
        assert!(!v.contains("tok-very-secret"), "{k}: {v}");
        assert!(!v.contains(&secret), "{k}: {v}");
    }
    app.stop().await;
}
