//! The in-process cache: bounded, per-entry TTL (moka).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;

use crate::cache::Cache;
use crate::cache::CacheResult;
use crate::health::BackendHealth;

#[derive(Clone)]
struct Entry {
    value: String,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self, _key: &String, value: &Entry, _now: Instant, _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A bounded in-process TTL cache.
pub struct MemoryCache {
    entries: moka::sync::Cache<String, Entry>,
}

impl MemoryCache {
    pub fn new(max_entries: u64) -> Self {
        MemoryCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> CacheResult<Option<String>> {
        Ok(self.entries.get(key).map(|e| e.value))
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<()> {
        self.entries.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                ttl,
            },
        );
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<bool> {
        let entry = self.entries.entry(key.to_owned()).or_insert_with(|| Entry {
            value: value.to_owned(),
            ttl,
        });
        Ok(entry.is_fresh())
    }

    async fn delete(&self, key: &str) -> CacheResult<()> {
        self.entries.invalidate(key);
        Ok(())
    }

    async fn health(&self) -> BackendHealth {
        BackendHealth {
            backend: "memory",
            up: true,
            detail: Some("in-process cache: dedup and lookups are per replica".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_if_absent_sets_once() {
        let c = MemoryCache::new(100);
        let ttl = Duration::from_secs(60);
        assert!(c.set_if_absent("k", "1", ttl).await.unwrap());
        assert!(!c.set_if_absent("k", "2", ttl).await.unwrap());
        assert_eq!(c.get("k").await.unwrap().as_deref(), Some("1"));
        c.delete("k").await.unwrap();
        assert_eq!(c.get("k").await.unwrap(), None);
    }
}
