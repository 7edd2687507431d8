//! Wiring: builds the backends a configuration selects, the HTTP server and
//! the processor, and runs them until shutdown.
//!
//! Shutdown order matters for the durability promise: stop accepting
//! connections and let in-flight requests finish (their commits included),
//! then stop the processor after its current batch, then let the embedded
//! writer commit what it holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

use crate::backends::memory::MemoryCache;
use crate::backends::mongo::{MongoStore, MongoWebhookStore};
use crate::backends::rabbitmq::{RabbitForwardQueue, RabbitInbox, RabbitOptions};
use crate::backends::redis::RedisCache;
use crate::backends::sqlite::{
    SqliteDb, SqliteForwardQueue, SqliteInbox, SqliteOptions, SqliteStore, SqliteWebhookStore,
};
use crate::cache::Cache;
use crate::config::{Roles, Settings};
use crate::forwarding::cached::CachedWebhookStore;
use crate::forwarding::fanout::Fanout;
use crate::forwarding::worker::Forwarder;
use crate::forwarding::{ForwardQueue, WebhookStore};
use crate::http::{self, AppState};
use crate::inbound_auth::InboundAuth;
use crate::ingest::Ingest;
use crate::processor::Processor;
use crate::providers::Providers;
use crate::queue::Inbox;
use crate::store::{MessageStore, StoreError};

/// Most writes the embedded writer commits in one transaction.
const SQLITE_MAX_BATCH: usize = 2048;

/// A built gateway, bound to its listener, not yet running.
pub struct Application {
    listener: TcpListener,
    settings: Settings,
    state: AppState,
    processor: Processor,
    db: Option<SqliteDb>,
    rabbit: Option<Arc<RabbitInbox>>,
    forwarder: Arc<Forwarder>,
    roles: Roles,
    /// Held while this gateway serves: one `serve` per data file.
    _data_lock: std::fs::File,
}

/// Takes the data directory's lock (`DATA_DIR/zen.lock`), or says who holds
/// it. An advisory lock: the CLI commands (which do not take it) still work
/// beside a running gateway, and the OS releases it when the process dies,
/// however it dies.
fn lock_data_dir(settings: &Settings) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create DATA_DIR {}", settings.data_dir.display()))?;
    let path = settings.data_dir.join("zen.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match try_lock(&file) {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => anyhow::bail!(
            "another zen-gateway already serves from DATA_DIR {} (it holds {}); \
             each gateway needs a data directory of its own",
            settings.data_dir.display(),
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

#[cfg(target_os = "linux")]
fn try_lock(file: &std::fs::File) -> std::io::Result<()> {
    use rustix::fs::{FlockOperation, flock};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(std::io::Error::from)
}

/// Elsewhere there is no lock (the supported platform is Linux).
#[cfg(not(target_os = "linux"))]
fn try_lock(_file: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

impl Application {
    /// Binds `BIND_ADDRESS:SERVER_PORT` and builds the gateway.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let addr = format!("{}:{}", settings.bind_address, settings.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        Self::build_with_listener(settings, listener).await
    }

    /// Builds the gateway on a listener the caller bound (tests bind port 0).
    pub async fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
    ) -> anyhow::Result<Application> {
        let data_lock = lock_data_dir(&settings)?;
        let db = SqliteDb::open(&SqliteOptions {
            path: settings.sqlite_path(),
            synchronous: settings.sqlite_synchronous,
            queue_capacity: settings.inbox_write_queue,
            max_batch: SQLITE_MAX_BATCH,
            readers: 4,
        })
        .with_context(|| {
            format!(
                "cannot open the embedded database {}",
                settings.sqlite_path().display()
            )
        })?;
        let roles = settings
            .parsed_roles()
            .map_err(|r| anyhow::anyhow!("ROLES: unknown role {r:?}"))?;
        let mut rabbit = None;
        let inbox: Arc<dyn Inbox> = match &settings.rabbitmq_url {
            Some(url) => {
                let mut delays = settings.retry_delays().unwrap_or_default();
                delays.sort_unstable();
                delays.dedup();
                let r = RabbitInbox::start(RabbitOptions {
                    url: url.clone(),
                    prefix: settings.rabbitmq_queue_prefix.clone(),
                    consume: roles.processor,
                    prefetch: settings.rabbitmq_prefetch,
                    publish_channels: settings.rabbitmq_publish_channels,
                    retry_delays_ms: delays,
                    forward_consume: roles.forwarder,
                    forward_prefetch: settings.forward_concurrency.clamp(1, u16::MAX as usize)
                        as u16,
                });
                rabbit = Some(r.clone());
                r
            }
            None => Arc::new(
                SqliteInbox::new(db.clone())
                    .with_max_queued_bytes(settings.inbox_write_queue_bytes),
            ),
        };
        let (store, webhooks): (Arc<dyn MessageStore>, Arc<dyn WebhookStore>) =
            match &settings.mongo_uri {
                Some(uri) => {
                    let mongo = Arc::new(
                        MongoStore::connect(uri, &settings.database_name)
                            .await
                            .context("MONGO_URI")?,
                    );
                    spawn_index_builder(mongo.clone());
                    let webhooks = Arc::new(MongoWebhookStore::new(mongo.database()));
                    (mongo, webhooks)
                }
                None => {
                    let store = SqliteStore::new(db.clone());
                    // A broker inbox is acked after `apply`: that commit
                    // must be on disk first (see `SqliteStore::synced`).
                    let store = if settings.rabbitmq_url.is_some() {
                        store.synced()
                    } else {
                        store
                    };
                    (
                        Arc::new(store),
                        Arc::new(SqliteWebhookStore::new(db.clone())),
                    )
                }
            };
        let cache: Arc<dyn Cache> = match &settings.redis_url {
            Some(url) => {
                let prefix = match &settings.redis_key_prefix {
                    Some(p) => p.clone(),
                    None if settings.mongo_uri.is_some() => {
                        format!("zen:{}:", settings.database_name)
                    }
                    None => format!(
                        "zen:{}:",
                        db.deployment_id()
                            .await
                            .context("cannot read the data file's deployment id")?
                    ),
                };
                tracing::info!(prefix = %prefix, "redis keys namespaced");
                Arc::new(RedisCache::start(url, &prefix).context("REDIS_URL")?)
            }
            None => Arc::new(MemoryCache::new(settings.cache_max_entries)),
        };

        let webhooks: Arc<dyn WebhookStore> =
            Arc::new(CachedWebhookStore::new(webhooks, cache.clone()));
        // Install the metrics recorder before anything records.
        let _ = crate::metrics::handle();
        let providers = Providers::new();
        let forward_queue: Arc<dyn ForwardQueue> = match &rabbit {
            Some(broker) => Arc::new(RabbitForwardQueue::new(broker.clone())),
            None => {
                let queue = SqliteForwardQueue::new(db.clone());
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
                Arc::new(queue)
            }
        };
        let forwarder = Arc::new(
            Forwarder::new(
                forward_queue.clone(),
                webhooks.clone(),
                settings.forwarder(),
            )
            .context("cannot build the HTTP client of the forwarder")?,
        );
        let mut fanout = Fanout::new(webhooks.clone(), forward_queue.clone(), cache.clone());
        if roles.forwarder {
            fanout = fanout.with_breakers(forwarder.breakers());
        }
        let state = AppState::new(http::Services {
            ingest: Ingest::new(
                inbox.clone(),
                Duration::from_millis(settings.ingest_ack_timeout_ms),
                providers.clone(),
            ),
            inbox: inbox.clone(),
            store: store.clone(),
            cache: cache.clone(),
            admin_key: settings.admin_api_key.as_deref().map(Arc::from),
            body_limit: settings.body_limit_bytes,
            ingest_enabled: roles.ingest,
            auth: InboundAuth::new(settings.inbound.clone(), providers.clone()),
            webhooks,
            forward_queue,
            forwarder: forwarder.clone(),
        });
        let processor = Processor::new(inbox, store, providers, settings.processor_batch_size)
            .with_batch_bytes(settings.processor_batch_bytes)
            .with_max_attempts(settings.processor_max_attempts)
            .with_fanout(fanout)
            .with_dedup(cache.clone());
        Ok(Application {
            listener,
            settings,
            state,
            processor,
            db: Some(db),
            _data_lock: data_lock,
            rabbit,
            forwarder,
            roles,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains (see module docs).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            _data_lock,
            listener,
            settings,
            state,
            processor,
            db,
            rabbit,
            forwarder,
            roles,
        } = self;
        let grace = Duration::from_secs(settings.shutdown_timeout_secs);
        let workers = CancellationToken::new();
        tracing::info!(?roles, "roles");
        let background = (roles.processor || roles.forwarder)
            .then(|| crate::background::runtime(settings.background_nice))
            .transpose()
            .context("cannot start the background runtime")?;
        let processor_task = background
            .as_ref()
            .filter(|_| roles.processor)
            .map(|rt| rt.spawn(processor.run(workers.clone())));
        let forwarder_task = background
            .as_ref()
            .filter(|_| roles.forwarder)
            .map(|rt| rt.spawn(forwarder.run(workers.clone())));

        let router = http::router(state, Duration::from_secs(settings.request_timeout_secs));
        let app = NormalizePathLayer::trim_trailing_slash().layer(router);
        tracing::info!(port = settings.port, "zen-gateway serving");
        // Stops accepting on `shutdown`, then drains connections (bounded).
        http::serve::serve(
            listener,
            app,
            http::serve::ServeLimits {
                header_read_timeout: Duration::from_secs(settings.header_read_timeout_secs),
                idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
                max_connections: settings.max_connections,
            },
            shutdown.clone(),
            grace,
        )
        .await;
        tracing::info!("http server stopped");

        workers.cancel();
        if let Some(task) = processor_task {
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!("processor did not stop in time; its batch stays in the inbox");
            }
        }
        if let Some(task) = forwarder_task {
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!(
                    "forwarder did not stop in time; unfinished jobs run again after restart"
                );
            }
        }
        // Whatever did not stop in time is abandoned here (see above).
        drop(background);
        if let Some(rabbit) = rabbit {
            rabbit.close().await;
        }
        if let Some(db) = db {
            db.close().await;
        }
        tracing::info!("zen-gateway stopped");
        Ok(())
    }
}

/// Builds the MongoDB indexes in the background, retrying while the server
/// is unreachable: start-up never waits for (or crashes on) the database.
/// The forwarding queue of the configured backend, for the `dlq` command:
/// RabbitMQ when `RABBITMQ_URL` is set (nothing consumed), else the
/// embedded database under `DATA_DIR` (safe beside a running gateway:
/// SQLite serializes the writers).
pub async fn forward_queue_for_cli(settings: &Settings) -> anyhow::Result<Arc<dyn ForwardQueue>> {
    Ok(queues_for_cli(settings).await?.1)
}

/// The inbox (for its quarantine) for the CLI commands: as
/// [`forward_queue_for_cli`], nothing consumed.
pub async fn inbox_for_cli(settings: &Settings) -> anyhow::Result<Arc<dyn Inbox>> {
    Ok(queues_for_cli(settings).await?.0)
}

async fn queues_for_cli(
    settings: &Settings,
) -> anyhow::Result<(Arc<dyn Inbox>, Arc<dyn ForwardQueue>)> {
    match &settings.rabbitmq_url {
        Some(url) => {
            let broker = RabbitInbox::start(RabbitOptions {
                url: url.clone(),
                prefix: settings.rabbitmq_queue_prefix.clone(),
                consume: false,
                prefetch: settings.rabbitmq_prefetch,
                publish_channels: 1,
                retry_delays_ms: settings.retry_delays().unwrap_or_default(),
                forward_consume: false,
                forward_prefetch: 1,
            });
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
            while !broker.health().await.up {
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!("RABBITMQ_URL: the broker did not answer within 15 s");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok((broker.clone(), Arc::new(RabbitForwardQueue::new(broker))))
        }
        None => {
            let db = SqliteDb::open(&SqliteOptions {
                path: settings.sqlite_path(),
                synchronous: settings.sqlite_synchronous,
                queue_capacity: 64,
                max_batch: SQLITE_MAX_BATCH,
                readers: 1,
            })
            .with_context(|| {
                format!(
                    "cannot open the embedded database {}",
                    settings.sqlite_path().display()
                )
            })?;
            Ok((
                Arc::new(SqliteInbox::new(db.clone())),
                Arc::new(SqliteForwardQueue::new(db)),
            ))
        }
    }
}

fn spawn_index_builder(store: Arc<MongoStore>) {
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            match store.ensure_indexes().await {
                Ok(report) => {
                    tracing::info!(?report, "mongodb indexes ready");
                    return;
                }
                // Refused data, not an outage: duplicate keys, most likely.
                Err(e @ StoreError::Invalid(_)) => {
                    tracing::error!(
                        error = %e,
                        "the collection cannot take the unique indexes; if it holds duplicate \
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

/// Cancels `token` on SIGINT (ctrl-c) or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutdown signal received");
        token.cancel();
    });
}
