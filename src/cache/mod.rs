//! The cache role: project lookups, webhook configs, dedup keys.
//!
//! Redis in production (shared by replicas); without it, a bounded in-process
//! TTL cache serves and the gateway reports itself degraded (dedup then only
//! holds per replica). A cache is never the source of truth: losing it costs
//! lookups, never events.

use std::time::Duration;

use async_trait::async_trait;

use crate::health::BackendHealth;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache unavailable: {0}")]
    Unavailable(String),
}

/// The result of a cache operation.
pub type CacheResult<T> = Result<T, CacheError>;

#[async_trait]
pub trait Cache: Send + Sync {
    async fn get(&self, key: &str) -> CacheResult<Option<String>>;
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<()>;
    /// Sets `key` only when absent; `true` when this call set it.
    async fn set_if_absent(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<bool>;
    async fn delete(&self, key: &str) -> CacheResult<()>;
    async fn health(&self) -> BackendHealth;

    /// Several gets; backends override it with one round trip.
    async fn get_many(&self, keys: &[String]) -> CacheResult<Vec<Option<String>>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }

    /// Several sets with one TTL; backends override it with one round trip.
    async fn set_many(&self, entries: &[(String, String)], ttl: Duration) -> CacheResult<()> {
        for (k, v) in entries {
            self.set(k, v, ttl).await?;
        }
        Ok(())
    }
}
