//! The cache on Redis (`REDIS_URL`), shared by replicas. Connecting happens
//! in the background and is retried, so a Redis that is down at start-up or
//! mid-run only degrades the gateway: calls fail fast, callers fall back,
//! `/ready` says "degraded". `redis::aio::ConnectionManager` reconnects by
//! itself once it has connected.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::RwLock;

use crate::cache::CacheResult;
use crate::cache::{Cache, CacheError};
use crate::health::BackendHealth;

pub struct RedisCache {
    conn: Arc<RwLock<Option<ConnectionManager>>>,
    /// Put before every key (`REDIS_KEY_PREFIX`): a Redis shared with other
    /// apps or deployments never mixes their keys with ours.
    prefix: String,
    /// Bounds every call: a slow Redis must not slow processing down.
    timeout: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> CacheError {
    CacheError::Unavailable(e.to_string())
}

impl RedisCache {
    /// Validates the URL now; connects in the background. Every key is
    /// written and read under `prefix`.
    pub fn start(url: &str, prefix: &str) -> CacheResult<RedisCache> {
        let client =
            redis::Client::open(url).map_err(|e| unavailable(format!("REDIS_URL: {e}")))?;
        let conn = Arc::new(RwLock::new(None));
        let slot = conn.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(1)))
                    .set_max_delay(Duration::from_secs(5));
                match ConnectionManager::new_with_config(client.clone(), config).await {
                    Ok(m) => {
                        tracing::info!("redis connected");
                        *slot.write().await = Some(m);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "cannot connect to redis; running degraded");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
        Ok(RedisCache {
            conn,
            prefix: prefix.to_owned(),
            timeout: Duration::from_millis(500),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> CacheResult<T> {
        let Some(mut conn) = self.conn.read().await.clone() else {
            return Err(unavailable("redis not connected"));
        };
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable("redis timed out")),
        }
    }
}

fn px(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> CacheResult<Option<String>> {
        self.run(redis::cmd("GET").arg(self.key(key)).clone()).await
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<()> {
        self.run::<()>(
            redis::cmd("SET")
                .arg(self.key(key))
                .arg(value)
                .arg("PX")
                .arg(px(ttl))
                .clone(),
        )
        .await
    }

    async fn set_if_absent(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<bool> {
        let r: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(self.key(key))
                    .arg(value)
                    .arg("PX")
                    .arg(px(ttl))
                    .arg("NX")
                    .clone(),
            )
            .await?;
        Ok(r.is_some())
    }

    async fn delete(&self, key: &str) -> CacheResult<()> {
        self.run::<()>(redis::cmd("DEL").arg(self.key(key)).clone())
            .await
    }

    async fn get_many(&self, keys: &[String]) -> CacheResult<Vec<Option<String>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.run(redis::cmd("MGET").arg(keys).clone()).await
    }

    async fn set_many(&self, entries: &[(String, String)], ttl: Duration) -> CacheResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let Some(mut conn) = self.conn.read().await.clone() else {
            return Err(unavailable("redis not connected"));
        };
        let mut pipe = redis::pipe();
        for (k, v) in entries {
            pipe.cmd("SET")
                .arg(self.key(k))
                .arg(v)
                .arg("PX")
                .arg(px(ttl))
                .ignore();
        }
        match tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn)).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable("redis timed out")),
        }
    }

    async fn health(&self) -> BackendHealth {
        let ping: Result<String, _> = self.run(redis::cmd("PING")).await;
        BackendHealth {
            backend: "redis",
            up: ping.is_ok(),
            detail: ping
                .err()
                .map(|e| format!("{e}; running degraded (local fallbacks)")),
        }
    }
}
