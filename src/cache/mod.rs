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

#[async_trait]
pub trait Cache: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<String>, CacheError>;
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError>;
    /// Sets `key` only when absent; `true` when this call set it.
    async fn set_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, CacheError>;
    async fn delete(&self, key: &str) -> Result<(), CacheError>;
    async fn health(&self) -> BackendHealth;

    /// Several gets; backends override it with one round trip.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, CacheError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }

    /// Several sets with one TTL; backends override it with one round trip.
    async fn set_many(
        &self,
        entries: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), CacheError> {
        for (k, v) in entries {
            self.set(k, v, ttl).await?;
        }
        Ok(())
    }
}
