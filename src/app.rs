//! Wiring: builds the backends a configuration selects, the HTTP server and
//! the processor, and runs them until shutdown.
//!
//! Shutdown order matters for the durability promise: stop accepting
//! connections and let in-flight requests finish (their commits included),
//! then stop the processor after its current batch, then let the embedded
//! writer commit what it holds.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

use crate::backends::{Backends, Mode, Opened};
use crate::config::Settings;
use crate::forwarding::Forwarding;
use crate::http::{self, AppState};
use crate::inbound_auth::InboundAuth;
use crate::ingest::Ingest;
use crate::processor::Processor;
use crate::providers::Providers;
use crate::retention::Pruner;

/// A built gateway, bound to its listener, not yet running.
pub struct Application {
    listener: TcpListener,
    settings: Settings,
    state: AppState,
    processor: Processor,
    pruner: Pruner,
    /// The backends to close at the end, and the data directory's lock
    /// (one `serve` per data file), held until then.
    opened: Opened,
    forwarding: Arc<Forwarding>,
}

impl Application {
    /// Binds `BIND_ADDRESS:SERVER_PORT` and builds the gateway.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let addr = std::net::SocketAddr::new(settings.http.bind_address, settings.http.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        Self::build_with_listener(settings, listener).await
    }

    /// Builds the gateway on a listener the caller bound (tests bind port 0).
    pub async fn build_with_listener(
        settings: Settings, listener: TcpListener,
    ) -> anyhow::Result<Application> {
        let roles = settings.roles;
        for warning in settings.warnings() {
            tracing::warn!("{warning}");
        }
        let mut backends = Backends::from_settings(&settings, Mode::Serve(roles));
        let inbox = backends.inbox().await?;
        let store = backends.store().await?;
        let webhooks = backends.webhooks().await?;
        let cache = backends.cache().await?;
        let forward_queue = backends.forward_queue().await?;
        let sessions = backends.sessions().await?;
        let contacts = backends.contacts().await?;
        let opened = backends.into_opened();
        // Install the metrics recorder before anything records.
        let _ = crate::metrics::handle();
        let providers = settings.providers.clone();
        let forwarding = Arc::new(
            Forwarding::new(
                webhooks,
                forward_queue,
                cache.clone(),
                settings.forwarder(),
                roles.forwarder,
            )
            .context("cannot build the HTTP client of the forwarder")?,
        );
        let auth = InboundAuth::new(settings.inbound.clone(), providers.clone())
            .with_open_routes(&settings.access.inbound_open_routes)
            .with_public_url(
                settings.http.public_base_url.clone(),
                settings.http.trust_forwarded_headers,
            );
        log_inbound_trust(&auth, &providers, roles.ingest);
        let admin_key: Option<Arc<str>> = settings
            .http
            .admin_api_key
            .as_ref()
            .map(|k| Arc::from(k.expose()));
        let state = AppState::new(http::Services {
            ingest: Ingest::new(
                inbox.clone(),
                settings.ingest.ack_timeout,
                providers.clone(),
            ),
            inbox: inbox.clone(),
            store: store.clone(),
            contacts: contacts.clone(),
            cache: cache.clone(),
            admin_key: admin_key.clone(),
            console: http::console::Console::new(
                admin_key,
                settings.http.console_session_ttl,
                settings.http.public_base_url.as_deref(),
                settings.http.trust_forwarded_headers,
                sessions.clone(),
            ),
            attempts: http::attempts::FailedAttempts::new(
                settings.access.auth_failure_limit,
                settings.access.auth_failure_window,
            ),
            trusted_proxies: settings.access.trusted_proxies.clone(),
            metrics_token: settings.access.metrics_token.clone(),
            probes: http::health::Probes::default(),
            body_limit: settings.http.body_limit_bytes,
            ingest_enabled: roles.ingest,
            auth,
            forwarding: forwarding.clone(),
        });
        let pruner = Pruner {
            store: store.clone(),
            webhooks: forwarding.webhooks().clone(),
            forward_queue: forwarding.queue().clone(),
            inbox: inbox.clone(),
            sessions,
            contacts: contacts.clone(),
            retention: settings.retention.policy(),
        };
        let processor = Processor::new(inbox, store, providers, settings.processor.batch_size)
            .with_batch_bytes(settings.processor.batch_bytes)
            .with_max_attempts(settings.processor.max_attempts)
            .with_fanout(forwarding.fanout())
            .with_contacts(contacts.clone())
            .with_dedup(cache.clone());
        Ok(Application {
            listener,
            settings,
            state,
            processor,
            pruner,
            opened,
            forwarding,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains (see module docs).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = self.settings;
        let roles = settings.roles;
        let grace = settings.http.shutdown_timeout;
        let workers = CancellationToken::new();
        tracing::info!(?roles, "roles");
        let background = (roles.processor || roles.forwarder)
            .then(|| crate::background::runtime(settings.processor.background_nice))
            .transpose()
            .context("cannot start the background runtime")?;
        let processor_task = background
            .as_ref()
            .filter(|_| roles.processor)
            .map(|rt| rt.spawn(self.processor.run(workers.clone())));
        // Retention runs beside the processor (one per embedded file; on
        // shared backends every processor replica prunes, harmlessly).
        let pruner_task = background.as_ref().filter(|_| roles.processor).map(|rt| {
            rt.spawn(
                self.pruner
                    .run(settings.retention.prune_interval, workers.clone()),
            )
        });
        let forwarder_task = background
            .as_ref()
            .filter(|_| roles.forwarder)
            .map(|rt| rt.spawn(self.forwarding.run(workers.clone())));

        // The probes read the backends in the background, never per request
        // (the first reading before the first request).
        let state = self.state;
        http::health::refresh_now(&state).await;
        let probes = tokio::spawn(http::health::refresh_probes(state.clone(), workers.clone()));
        let router = http::router(state, settings.http.request_timeout);
        // The URI as the client sent it stays readable (`OriginalUri`):
        // Twilio signs the URL it called, trailing slash and all.
        let app = tower::util::MapRequestLayer::new(keep_original_uri)
            .layer(NormalizePathLayer::trim_trailing_slash().layer(router));
        tracing::info!(
            port = settings.http.port,
            built_with = %crate::config::Built::THIS,
            "zen-gateway serving"
        );
        // Stops accepting on `shutdown`, then drains connections (bounded).
        http::serve::serve(
            self.listener,
            app,
            http::serve::ServeLimits {
                header_read_timeout: settings.http.header_read_timeout,
                idle_timeout: settings.http.idle_timeout,
                max_connections: settings.http.max_connections,
            },
            shutdown.clone(),
            grace,
        )
        .await;
        tracing::info!("http server stopped");

        workers.cancel();
        let _ = probes.await;
        if let Some(task) = processor_task {
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!("processor did not stop in time; its batch stays in the inbox");
            }
        }
        if let Some(task) = pruner_task {
            let _ = tokio::time::timeout(grace, task).await;
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
        self.opened.close().await;
        tracing::info!("zen-gateway stopped");
        Ok(())
    }
}

/// Records the request's URI before the trailing slash is trimmed (the
/// router keeps an `OriginalUri` it finds).
fn keep_original_uri(mut req: axum::extract::Request) -> axum::extract::Request {
    let uri = req.uri().clone();
    req.extensions_mut().insert(axum::extract::OriginalUri(uri));
    req
}

/// Says at start, in one line, which webhook routes anyone can post to
/// (open), and which are refused because others are verified.
fn log_inbound_trust(auth: &InboundAuth, providers: &Providers, ingest: bool) {
    if !ingest {
        return;
    }
    let routes = |bsps: &[crate::model::Bsp]| -> String {
        bsps.iter()
            .filter_map(|b| providers.get(*b))
            .flat_map(|p| p.routes().iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let report = auth.report();
    if !report.open.is_empty() {
        tracing::warn!(
            open = %routes(&report.open),
            "webhook routes open: no token or signature is checked on them, so anyone who \
             can reach them can write into message records (set the provider's credentials, \
             or INBOUND_REQUIRE_AUTH=true to refuse to start like this; docs/SECURITY.md)"
        );
    }
    if !report.refused.is_empty() && !report.verified.is_empty() {
        tracing::info!(
            refused = %routes(&report.refused),
            "webhook routes without credentials refused (401), since others are verified; \
             name a route in INBOUND_OPEN_ROUTES to keep it open"
        );
    }
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
