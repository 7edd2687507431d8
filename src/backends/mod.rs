//! The backends, one folder (or file) each, implementing every role trait
//! they serve; the role modules (`queue`, `store`, `forwarding`, `cache`)
//! hold the traits and the domain rules (docs/DESIGN.md has the map).
//!
//! [`Backends`] is the one factory: `serve`, `migrate` and the CLI commands
//! ask it for the roles they use, and it opens each backend once, on first
//! use. The embedded database is opened only when a role is served by it.

pub mod memory;
#[cfg(feature = "mongodb")]
pub mod mongo;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
pub mod sqlite;

use std::sync::Arc;
#[cfg(any(feature = "mongodb", feature = "rabbitmq"))]
use std::time::Duration;

use anyhow::Context;

use crate::cache::Cache;
use crate::config::{Roles, Settings};
use crate::contacts::ContactStore;
use crate::forwarding::{ForwardQueue, WebhookStore};
use crate::queue::Inbox;
use crate::sessions::SessionStore;
use crate::store::MessageStore;
#[cfg(feature = "mongodb")]
use crate::store::StoreError;
use memory::MemoryCache;
#[cfg(feature = "mongodb")]
use mongo::{MongoContactStore, MongoSessionStore, MongoStore, MongoWebhookStore};
#[cfg(feature = "rabbitmq")]
use rabbitmq::{RabbitForwardQueue, RabbitInbox, RabbitOptions};
#[cfg(feature = "redis")]
use redis::RedisCache;
use sqlite::contacts::SqliteContactStore;
use sqlite::{
    SqliteDb, SqliteForwardQueue, SqliteInbox, SqliteOptions, SqliteSessionStore, SqliteStore,
    SqliteWebhookStore,
};

/// Most writes the embedded writer commits in one transaction.
const SQLITE_MAX_BATCH: usize = 2048;

/// Longest start-up waits for MongoDB to say whose schema it holds.
#[cfg(feature = "mongodb")]
const SCHEMA_CHECK_WAIT: Duration = Duration::from_secs(5);

/// Longest a CLI command waits for the broker to answer.
#[cfg(feature = "rabbitmq")]
const COMMAND_BROKER_WAIT: Duration = Duration::from_secs(15);

/// What the opened backends are for.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// A gateway serving these roles: the broker consumes for the roles it
    /// runs, MongoDB indexes are built in the background, the data
    /// directory is locked, in-flight forwarding leases are recovered.
    Serve(Roles),
    /// A CLI command beside a gateway that may be running: nothing is
    /// consumed, nothing is locked, and the broker is waited for.
    Command,
}

/// Opens the backends a configuration selects, each once, on first use.
pub struct Backends<'a> {
    settings: &'a Settings,
    mode: Mode,
    sqlite: Option<SqliteDb>,
    data_lock: Option<std::fs::File>,
    #[cfg(feature = "rabbitmq")]
    rabbit: Option<Arc<RabbitInbox>>,
    #[cfg(feature = "mongodb")]
    mongo: Option<Arc<MongoStore>>,
}

/// What must be closed, in order, when a gateway stops; and the data
/// directory's lock, held until then.
pub struct Opened {
    pub sqlite: Option<SqliteDb>,
    #[cfg(feature = "rabbitmq")]
    pub rabbit: Option<Arc<RabbitInbox>>,
    pub data_lock: Option<std::fs::File>,
}

impl Opened {
    /// Closes the broker connection, then lets the embedded writer commit
    /// what it holds.
    pub async fn close(self) {
        #[cfg(feature = "rabbitmq")]
        if let Some(rabbit) = self.rabbit {
            rabbit.close().await;
        }
        if let Some(db) = self.sqlite {
            db.close().await;
        }
    }
}

impl<'a> Backends<'a> {
    pub fn from_settings(settings: &'a Settings, mode: Mode) -> Self {
        Backends {
            settings,
            mode,
            sqlite: None,
            data_lock: None,
            #[cfg(feature = "rabbitmq")]
            rabbit: None,
            #[cfg(feature = "mongodb")]
            mongo: None,
        }
    }

    /// The inbox: RabbitMQ with `RABBITMQ_URL`, else the embedded one.
    pub async fn inbox(&mut self) -> anyhow::Result<Arc<dyn Inbox>> {
        #[cfg(feature = "rabbitmq")]
        if let Some(broker) = self.rabbit().await? {
            return Ok(broker);
        }
        let db = self.sqlite()?;
        Ok(Arc::new(SqliteInbox::new(db).with_max_queued_bytes(
            self.settings.ingest.inbox_write_queue_bytes,
        )))
    }

    /// The message store: MongoDB with `MONGO_URI`, else the embedded one.
    pub async fn store(&mut self) -> anyhow::Result<Arc<dyn MessageStore>> {
        #[cfg(feature = "mongodb")]
        if let Some(mongo) = self.mongo().await? {
            return Ok(mongo);
        }
        let store = SqliteStore::new(self.sqlite()?);
        // A broker inbox is acked after `apply`: that commit must be on disk
        // first (see `SqliteStore::synced`).
        Ok(if self.settings.backends.rabbitmq_url.is_some() {
            Arc::new(store.synced())
        } else {
            Arc::new(store)
        })
    }

    /// The client webhooks and delivery logs, beside the message store.
    pub async fn webhooks(&mut self) -> anyhow::Result<Arc<dyn WebhookStore>> {
        #[cfg(feature = "mongodb")]
        if let Some(mongo) = self.mongo().await? {
            return Ok(Arc::new(MongoWebhookStore::new(mongo.database())));
        }
        Ok(Arc::new(SqliteWebhookStore::new(self.sqlite()?)))
    }

    /// Contacts, beside the message store.
    pub async fn contacts(&mut self) -> anyhow::Result<Arc<dyn ContactStore>> {
        #[cfg(feature = "mongodb")]
        if let Some(mongo) = self.mongo().await? {
            return Ok(Arc::new(MongoContactStore::new(mongo.database())));
        }
        let contacts = SqliteContactStore::new(self.sqlite()?);
        // As the message store: a broker inbox is acked after the batch.
        Ok(if self.settings.backends.rabbitmq_url.is_some() {
            Arc::new(contacts.synced())
        } else {
            Arc::new(contacts)
        })
    }

    /// Operator sessions, beside the message store.
    pub async fn sessions(&mut self) -> anyhow::Result<Arc<dyn SessionStore>> {
        #[cfg(feature = "mongodb")]
        if let Some(mongo) = self.mongo().await? {
            return Ok(Arc::new(MongoSessionStore::new(mongo.database())));
        }
        Ok(Arc::new(SqliteSessionStore::new(self.sqlite()?)))
    }

    /// The forwarding queue: RabbitMQ with `RABBITMQ_URL`, else embedded.
    pub async fn forward_queue(&mut self) -> anyhow::Result<Arc<dyn ForwardQueue>> {
        #[cfg(feature = "rabbitmq")]
        if let Some(broker) = self.rabbit().await? {
            return Ok(Arc::new(RabbitForwardQueue::new(broker)));
        }
        let queue = SqliteForwardQueue::new(self.sqlite()?);
        if let Mode::Serve(roles) = self.mode {
            if roles.forwarder {
                let freed = queue
                    .release_stale_leases()
                    .await
                    .context("cannot recover the forwarding queue")?;
                if freed > 0 {
                    tracing::info!(
                        jobs = freed,
                        "forwarding jobs in flight at the last stop are due again"
                    );
                }
            }
        }
        Ok(Arc::new(queue))
    }

    /// The cache: Redis with `REDIS_URL` (every key under the deployment's
    /// prefix), else in-process.
    pub async fn cache(&mut self) -> anyhow::Result<Arc<dyn Cache>> {
        let b = &self.settings.backends;
        #[cfg(feature = "redis")]
        if let Some(url) = &b.redis_url {
            return self.redis(url).await;
        }
        Ok(Arc::new(MemoryCache::new(b.cache_max_entries)))
    }

    #[cfg(feature = "redis")]
    async fn redis(&mut self, url: &crate::config::SecretUrl) -> anyhow::Result<Arc<dyn Cache>> {
        let b = &self.settings.backends;
        let prefix = match (&b.redis_key_prefix, &b.mongo_uri) {
            (Some(p), _) => p.clone(),
            (None, Some(_)) => format!("zen:{}:", b.database_name),
            (None, None) => format!(
                "zen:{}:",
                self.sqlite()?
                    .deployment_id()
                    .await
                    .context("cannot read the data file's deployment id")?
            ),
        };
        tracing::info!(prefix = %prefix, "redis keys namespaced");
        Ok(Arc::new(
            RedisCache::start(url.expose(), &prefix).context("REDIS_URL")?,
        ))
    }

    /// MongoDB itself, for `migrate`; `None` without `MONGO_URI`.
    #[cfg(feature = "mongodb")]
    pub async fn mongo(&mut self) -> anyhow::Result<Option<Arc<MongoStore>>> {
        let b = &self.settings.backends;
        let Some(uri) = &b.mongo_uri else {
            return Ok(None);
        };
        if let Some(mongo) = &self.mongo {
            return Ok(Some(mongo.clone()));
        }
        let mongo = Arc::new(
            MongoStore::connect(uri.expose(), &b.database_name)
                .await
                .context("MONGO_URI")?,
        );
        // A database a newer gateway wrote is refused at once; one that
        // cannot be reached now is checked again by the index builder.
        match tokio::time::timeout(SCHEMA_CHECK_WAIT, mongo.check_schema()).await {
            Ok(Err(e @ StoreError::Invalid(_))) => {
                return Err(anyhow::Error::new(e).context("MONGO_URI"));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot check the database's schema yet"),
            Err(_) => tracing::warn!("the database did not answer the schema check in time"),
            Ok(Ok(_)) => {}
        }
        if let Mode::Serve(_) = self.mode {
            spawn_index_builder(mongo.clone());
        }
        self.mongo = Some(mongo.clone());
        Ok(Some(mongo))
    }

    /// What the caller must close when it stops (see [`Opened::close`]).
    pub fn into_opened(self) -> Opened {
        Opened {
            sqlite: self.sqlite,
            #[cfg(feature = "rabbitmq")]
            rabbit: self.rabbit,
            data_lock: self.data_lock,
        }
    }

    #[cfg(feature = "rabbitmq")]
    async fn rabbit(&mut self) -> anyhow::Result<Option<Arc<RabbitInbox>>> {
        let s = self.settings;
        let Some(url) = &s.backends.rabbitmq_url else {
            return Ok(None);
        };
        if let Some(broker) = &self.rabbit {
            return Ok(Some(broker.clone()));
        }
        let mut delays: Vec<u32> = s
            .forward
            .retry_delays
            .0
            .iter()
            .map(|d| d.as_millis().min(u32::MAX as u128) as u32)
            .collect();
        delays.sort_unstable();
        delays.dedup();
        let roles = match self.mode {
            Mode::Serve(roles) => Some(roles),
            Mode::Command => None,
        };
        let broker = RabbitInbox::start(RabbitOptions {
            url: url.expose().to_owned(),
            prefix: s.rabbitmq.queue_prefix.clone(),
            consume: roles.is_some_and(|r| r.processor),
            prefetch: s.rabbitmq.prefetch,
            publish_channels: if roles.is_some() {
                s.rabbitmq.publish_channels
            } else {
                1
            },
            retry_delays_ms: delays,
            forward_consume: roles.is_some_and(|r| r.forwarder),
            forward_prefetch: s.forward.concurrency.clamp(1, u16::MAX as usize) as u16,
            providers: s.providers.clone(),
            queue_type: s.rabbitmq.queue_type,
        });
        if roles.is_none() {
            // A command has one thing to do: say at once when it cannot.
            let deadline = tokio::time::Instant::now() + COMMAND_BROKER_WAIT;
            while !broker.health().await.up {
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!(
                        "RABBITMQ_URL: the broker did not answer within {COMMAND_BROKER_WAIT:?}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.rabbit = Some(broker.clone());
        Ok(Some(broker))
    }

    fn sqlite(&mut self) -> anyhow::Result<SqliteDb> {
        if let Some(db) = &self.sqlite {
            return Ok(db.clone());
        }
        let s = self.settings;
        let serving = matches!(self.mode, Mode::Serve(_));
        if serving {
            self.data_lock = Some(sqlite::lock_data_dir(&s.backends.data_dir)?);
        }
        let db = SqliteDb::open(&SqliteOptions {
            path: s.sqlite_path(),
            synchronous: s.backends.sqlite_synchronous,
            queue_capacity: if serving {
                s.ingest.inbox_write_queue
            } else {
                64
            },
            max_batch: SQLITE_MAX_BATCH,
            readers: if serving { 4 } else { 1 },
        })
        .with_context(|| {
            format!(
                "cannot open the embedded database {}",
                s.sqlite_path().display()
            )
        })?;
        self.sqlite = Some(db.clone());
        Ok(db)
    }
}

/// Builds the MongoDB indexes in the background, retrying while the server
/// is unreachable: start-up never waits for (or crashes on) the database.
#[cfg(feature = "mongodb")]
fn spawn_index_builder(store: Arc<MongoStore>) {
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            let built = match store.check_schema().await {
                Ok(_) => store.ensure_indexes().await,
                Err(e) => Err(e),
            };
            match built {
                Ok(report) => {
                    tracing::info!(?report, "mongodb indexes ready");
                    return;
                }
                // Refused, not an outage: a newer gateway's database, or
                // duplicate keys (most likely).
                Err(e @ StoreError::Invalid(_)) => {
                    tracing::error!(
                        error = %e,
                        "cannot build the indexes; if the collection holds duplicate \
                         messages written by the legacy gateway, run `zen-gateway migrate` to \
                         merge them and build the indexes"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot build mongodb indexes yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    });
}
