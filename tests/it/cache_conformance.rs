//! One conformance suite for every `Cache` backend: the in-process cache
//! and Redis (the real server, each test under its own key prefix).

use std::time::Duration;

use zen_gateway::backends::memory::MemoryCache;
use zen_gateway::backends::redis::RedisCache;
use zen_gateway::cache::Cache;

use crate::helpers::eventually_within;
use crate::services;

async fn redis(prefix: &str) -> Option<RedisCache> {
    let cache = RedisCache::start(&services::redis_url()?, prefix).unwrap();
    let up = eventually_within(Duration::from_secs(5), async || cache.health().await.up).await;
    assert!(up, "redis did not connect");
    Some(cache)
}

mod cases {
    use super::*;

    pub async fn values_round_trip_and_expire(c: &dyn Cache) {
        let long = Duration::from_secs(60);
        assert_eq!(c.get("a").await.unwrap(), None);
        c.set("a", "1", long).await.unwrap();
        assert_eq!(c.get("a").await.unwrap().as_deref(), Some("1"));
        c.set("a", "2", long).await.unwrap();
        assert_eq!(c.get("a").await.unwrap().as_deref(), Some("2"));
        c.delete("a").await.unwrap();
        assert_eq!(c.get("a").await.unwrap(), None);
        c.set("short", "x", Duration::from_millis(150))
            .await
            .unwrap();
        // Gone once its time is up (a TTL is a clock: polled, not slept).
        let expired = eventually_within(Duration::from_secs(2), async || {
            c.get("short").await.unwrap().is_none()
        })
        .await;
        assert!(expired);
    }

    pub async fn set_if_absent_sets_once(c: &dyn Cache) {
        let ttl = Duration::from_secs(60);
        assert!(c.set_if_absent("k", "first", ttl).await.unwrap());
        assert!(!c.set_if_absent("k", "second", ttl).await.unwrap());
        assert_eq!(c.get("k").await.unwrap().as_deref(), Some("first"));
    }

    pub async fn many_at_once(c: &dyn Cache) {
        let entries: Vec<(String, String)> =
            (0..5).map(|i| (format!("m{i}"), format!("v{i}"))).collect();
        c.set_many(&entries, Duration::from_secs(60)).await.unwrap();
        let keys: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
        let got = c.get_many(&keys).await.unwrap();
        assert_eq!(got.len(), 6);
        for (i, v) in got.iter().enumerate().take(5) {
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()));
        }
        assert_eq!(got[5], None);
        assert!(c.get_many(&[]).await.unwrap().is_empty());
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    let c = super::MemoryCache::new(1000);
                    super::cases::$case(&c).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let prefix = format!("zen-test-{}:", uuid::Uuid::new_v4().simple());
                    let Some(c) = super::redis(&prefix).await else { return };
                    super::cases::$case(&c).await;
                }
            )*
        }
    };
}

suite!(
    values_round_trip_and_expire,
    set_if_absent_sets_once,
    many_at_once
);

/// Two prefixes on one Redis never see each other's keys.
#[tokio::test]
async fn redis_prefixes_keep_deployments_apart() {
    let (pa, pb) = (
        format!("zen-test-{}:", uuid::Uuid::new_v4().simple()),
        format!("zen-test-{}:", uuid::Uuid::new_v4().simple()),
    );
    let (Some(a), Some(b)) = (redis(&pa).await, redis(&pb).await) else {
        return;
    };
    a.set("dedup:x", "1", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(b.get("dedup:x").await.unwrap(), None);
    assert!(
        b.set_if_absent("dedup:x", "2", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(a.get("dedup:x").await.unwrap().as_deref(), Some("1"));
}
