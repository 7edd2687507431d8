//! Configuration: defaults < `Keys.json` (legacy keys) < environment.
//!
//! The legacy gateway read `mongo_uri`, `database_name` and `port` from
//! `Keys.json` and `MONGO_URI`, `DATABASE_NAME`, `SERVER_PORT`, `REDIS_URL`,
//! `RABBITMQ_URL` from the environment; those names are kept. Every setting
//! has one environment variable, listed in [`ENV_KEYS`] and `.env.example`.
//! There are no remote defaults: an unset backend URL selects the embedded
//! backend for that role.
//!
//! Everything is parsed once, here: durations are [`Duration`]s, roles are
//! [`Roles`], secrets are [`Secret`]s that cannot print, and the rules that
//! span several keys are checked at load with a message naming the keys.

mod access;
mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backends::sqlite::Synchronous;
use crate::model::Bsp;

pub use access::{
    AccessSettings, InboundCredentials, RouteTrust, TrustReport, TrustedProxies, canonical,
    route_trust,
};
pub use types::{MASK, QueueType, RetryDelays, Roles, Secret, SecretUrl, broker_addresses};
use types::{millis, non_empty, secret, secret_url, secs};

/// Environment variable → configuration key (`section.key`). `port`,
/// `mongo_uri` and `database_name` are also read from the legacy
/// `Keys.json`.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("SERVER_PORT", "http.port"),
    ("BIND_ADDRESS", "http.bind_address"),
    ("ADMIN_API_KEY", "http.admin_api_key"),
    ("BODY_LIMIT_BYTES", "http.body_limit_bytes"),
    ("REQUEST_TIMEOUT_SECS", "http.request_timeout_secs"),
    ("HEADER_READ_TIMEOUT_SECS", "http.header_read_timeout_secs"),
    ("IDLE_TIMEOUT_SECS", "http.idle_timeout_secs"),
    ("MAX_CONNECTIONS", "http.max_connections"),
    ("SHUTDOWN_TIMEOUT_SECS", "http.shutdown_timeout_secs"),
    ("PUBLIC_BASE_URL", "http.public_base_url"),
    ("TRUST_FORWARDED_HEADERS", "http.trust_forwarded_headers"),
    ("CONSOLE_SESSION_TTL", "http.console_session_ttl"),
    ("INBOUND_REQUIRE_AUTH", "access.inbound_require_auth"),
    ("INBOUND_OPEN_ROUTES", "access.inbound_open_routes"),
    ("TRUSTED_PROXIES", "access.trusted_proxies"),
    ("AUTH_FAILURE_LIMIT", "access.auth_failure_limit"),
    ("AUTH_FAILURE_WINDOW", "access.auth_failure_window"),
    ("METRICS_TOKEN", "access.metrics_token"),
    ("MONGO_URI", "backends.mongo_uri"),
    ("DATABASE_NAME", "backends.database_name"),
    ("REDIS_URL", "backends.redis_url"),
    ("REDIS_KEY_PREFIX", "backends.redis_key_prefix"),
    ("RABBITMQ_URL", "backends.rabbitmq_url"),
    ("DATA_DIR", "backends.data_dir"),
    ("SQLITE_SYNCHRONOUS", "backends.sqlite_synchronous"),
    ("CACHE_MAX_ENTRIES", "backends.cache_max_entries"),
    ("INGEST_ACK_TIMEOUT_MS", "ingest.ack_timeout_ms"),
    ("INBOX_WRITE_QUEUE", "ingest.inbox_write_queue"),
    ("INBOX_WRITE_QUEUE_BYTES", "ingest.inbox_write_queue_bytes"),
    ("PROCESSOR_BATCH_SIZE", "processor.batch_size"),
    ("PROCESSOR_BATCH_BYTES", "processor.batch_bytes"),
    ("PROCESSOR_MAX_ATTEMPTS", "processor.max_attempts"),
    ("BACKGROUND_NICE", "processor.background_nice"),
    ("RABBITMQ_QUEUE_PREFIX", "rabbitmq.queue_prefix"),
    ("RABBITMQ_PREFETCH", "rabbitmq.prefetch"),
    ("RABBITMQ_PUBLISH_CHANNELS", "rabbitmq.publish_channels"),
    ("RABBITMQ_QUEUE_TYPE", "rabbitmq.queue_type"),
    ("FORWARD_RETRY_DELAYS_MS", "forward.retry_delays_ms"),
    ("FORWARD_RETRY_BACKOFF", "forward.retry_backoff"),
    ("FORWARD_CONCURRENCY", "forward.concurrency"),
    ("FORWARD_CONNECT_TIMEOUT_MS", "forward.connect_timeout_ms"),
    ("FORWARD_TIMEOUT_MS", "forward.timeout_ms"),
    (
        "FORWARD_MAX_RETRY_AFTER_SECS",
        "forward.max_retry_after_secs",
    ),
    ("FORWARD_MAX_PARKED_SECS", "forward.max_parked_secs"),
    ("FORWARD_ALLOW_PRIVATE", "forward.allow_private"),
    ("FORWARD_PROXY", "forward.proxy"),
    ("ENDPOINT_FAILING_AFTER", "forward.endpoint_failing_after"),
    ("OPERATIONS_WEBHOOK_URL", "forward.operations_webhook_url"),
    (
        "OPERATIONS_WEBHOOK_SECRET",
        "forward.operations_webhook_secret",
    ),
    ("BREAKER_THRESHOLD", "forward.breaker_threshold"),
    ("BREAKER_COOLDOWN_SECS", "forward.breaker_cooldown_secs"),
    ("MESSAGE_RETENTION", "retention.messages"),
    ("DELIVERY_LOG_RETENTION", "retention.delivery_logs"),
    ("UNRECOGNIZED_RETENTION", "retention.unrecognized"),
    ("NOTIFICATION_RETENTION", "retention.notifications"),
    ("DLQ_RETENTION", "retention.dlq"),
    ("QUARANTINE_RETENTION", "retention.quarantine"),
    ("PRUNE_INTERVAL", "retention.prune_interval"),
    ("ROLES", "roles"),
    ("LOG_FORMAT", "log_format"),
];

/// The defaults, by configuration key (README and `.env.example` state them).
const DEFAULTS: &[(&str, &str)] = &[
    ("http.port", "8080"),
    ("http.bind_address", "0.0.0.0"),
    ("http.body_limit_bytes", "4194304"),
    ("http.request_timeout_secs", "30"),
    ("http.header_read_timeout_secs", "10"),
    ("http.idle_timeout_secs", "75"),
    ("http.max_connections", "10000"),
    ("http.shutdown_timeout_secs", "25"),
    ("http.trust_forwarded_headers", "false"),
    ("http.console_session_ttl", "8h"),
    ("access.inbound_require_auth", "false"),
    ("access.inbound_open_routes", ""),
    ("access.trusted_proxies", ""),
    ("access.auth_failure_limit", "10"),
    ("access.auth_failure_window", "1m"),
    ("backends.database_name", "zen_messaging"),
    ("backends.data_dir", "./data"),
    ("backends.sqlite_synchronous", "full"),
    ("backends.cache_max_entries", "100000"),
    ("ingest.ack_timeout_ms", "5000"),
    ("ingest.inbox_write_queue", "20000"),
    ("ingest.inbox_write_queue_bytes", "268435456"),
    ("processor.batch_size", "128"),
    ("processor.batch_bytes", "8388608"),
    ("processor.max_attempts", "5"),
    ("processor.background_nice", "10"),
    ("rabbitmq.queue_prefix", ""),
    ("rabbitmq.prefetch", "512"),
    ("rabbitmq.publish_channels", "4"),
    ("rabbitmq.queue_type", "classic"),
    ("forward.retry_delays_ms", "3000,3000"),
    ("forward.retry_backoff", "fixed"),
    ("forward.concurrency", "100"),
    ("forward.connect_timeout_ms", "5000"),
    ("forward.timeout_ms", "15000"),
    ("forward.max_retry_after_secs", "300"),
    ("forward.max_parked_secs", "86400"),
    ("forward.allow_private", "false"),
    ("forward.breaker_threshold", "10"),
    ("forward.breaker_cooldown_secs", "300"),
    ("forward.endpoint_failing_after", "15m"),
    ("retention.messages", "0"),
    ("retention.delivery_logs", "30d"),
    ("retention.unrecognized", "30d"),
    ("retention.notifications", "90d"),
    ("retention.dlq", "0"),
    ("retention.quarantine", "0"),
    ("retention.prune_interval", "5m"),
    ("roles", "ingest,processor,forwarder"),
    ("log_format", "text"),
];

/// Retry backoff of the forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    Fixed,
    Exponential,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub http: HttpSettings,
    pub access: AccessSettings,
    pub backends: BackendSettings,
    pub ingest: IngestSettings,
    pub processor: ProcessorSettings,
    pub rabbitmq: RabbitSettings,
    pub forward: ForwardSettings,
    pub retention: RetentionSettings,
    /// What this process does (`ROLES`). Splitting the roles across
    /// replicas needs the shared backends (RabbitMQ, MongoDB).
    pub roles: Roles,
    pub log_format: LogFormat,
    /// Inbound webhook credentials by provider, from the environment
    /// variables each provider names (`<BSP>_WEBHOOK_TOKEN`,
    /// `<BSP>_WEBHOOK_SECRET`, …; see `Provider::credential_env`). Only
    /// providers with something configured are present.
    #[serde(skip_deserializing)]
    pub inbound: BTreeMap<Bsp, InboundCredentials>,
    /// The providers this gateway serves: the registry, built once here
    /// and handed on by the application.
    #[serde(skip, default = "crate::providers::Providers::empty")]
    pub providers: crate::providers::Providers,
}

/// The HTTP server.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HttpSettings {
    /// `SERVER_PORT`; Keys.json `port`, used when > 0.
    pub port: u16,
    pub bind_address: IpAddr,
    /// Bearer key of the admin API; unset = every `/api/v1` call is refused.
    #[serde(default, deserialize_with = "secret")]
    pub admin_api_key: Option<Secret>,
    /// Largest accepted webhook body, in bytes (413 above).
    pub body_limit_bytes: usize,
    /// Longest one HTTP request may take.
    #[serde(rename = "request_timeout_secs", with = "secs")]
    pub request_timeout: Duration,
    /// Longest a client may take to send its request headers (slow loris).
    #[serde(rename = "header_read_timeout_secs", with = "secs")]
    pub header_read_timeout: Duration,
    /// A client connection (HTTP/1 keep-alive or HTTP/2) with no request in
    /// flight for this long is closed.
    #[serde(rename = "idle_timeout_secs", with = "secs")]
    pub idle_timeout: Duration,
    /// Client connections open at once; past it new ones wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// Longest graceful shutdown may take before in-flight work is abandoned
    /// (it stays in the inbox and is processed after restart).
    #[serde(rename = "shutdown_timeout_secs", with = "secs")]
    pub shutdown_timeout: Duration,
    /// The gateway's public origin (`https://gw.example.com`), for providers
    /// that sign the URL they called (Twilio).
    #[serde(default, deserialize_with = "non_empty")]
    pub public_base_url: Option<String>,
    /// Read the public URL from `X-Forwarded-Proto` / `X-Forwarded-Host`
    /// when `public_base_url` is unset: only behind a proxy that sets them.
    pub trust_forwarded_headers: bool,
    /// How long a console sign-in lasts.
    #[serde(with = "types::humantime_duration")]
    pub console_session_ttl: Duration,
}

/// Which backend serves each role, and how to reach it. An unset URL
/// selects the embedded backend (one SQLite file in `data_dir`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BackendSettings {
    /// Message store and client webhooks; unset = embedded.
    #[serde(default, deserialize_with = "secret_url")]
    pub mongo_uri: Option<SecretUrl>,
    pub database_name: String,
    /// Shared cache; unset = in-process (each replica its own).
    #[serde(default, deserialize_with = "secret_url")]
    pub redis_url: Option<SecretUrl>,
    /// Prefix of every key the gateway writes to Redis; unset = derived from
    /// the deployment's own store (`zen:<database name>:` on MongoDB,
    /// `zen:<id kept in the data file>:` on the embedded one), so two
    /// deployments sharing a Redis never see each other's keys.
    #[serde(default, deserialize_with = "non_empty")]
    pub redis_key_prefix: Option<String>,
    /// Inbox and forwarding queue; unset = embedded.
    #[serde(default, deserialize_with = "secret_url")]
    pub rabbitmq_url: Option<SecretUrl>,
    /// Directory of the embedded database (`zen.db`).
    pub data_dir: PathBuf,
    /// Embedded database fsync policy: `full` (survives power loss) or
    /// `normal` (survives process crashes).
    pub sqlite_synchronous: Synchronous,
    /// Entries of the in-process cache.
    pub cache_max_entries: u64,
}

/// The webhook routes' path to durability.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IngestSettings {
    /// Longest an ingest request waits for durability before answering 503.
    #[serde(rename = "ack_timeout_ms", with = "millis")]
    pub ack_timeout: Duration,
    /// Embedded inbox: appends waiting for the writer before 503s begin.
    pub inbox_write_queue: usize,
    /// Embedded inbox: bytes of bodies waiting for the writer before 503s
    /// begin (bounds the queue's memory; one body is always let through).
    pub inbox_write_queue_bytes: usize,
}

/// The processor (inbox → store → fan-out).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ProcessorSettings {
    /// Inbox entries taken at once.
    pub batch_size: usize,
    /// Bytes of webhook bodies applied in one store batch (a batch of
    /// `batch_size` entries is split past it).
    pub batch_bytes: usize,
    /// Attempts of an inbox entry that the store refuses (an error retrying
    /// cannot cure) before it is quarantined; outages never count.
    pub max_attempts: u32,
    /// Nice value (0–19) of the processor's and forwarder's threads: when the
    /// CPU is saturated, acks get it first and the background catches up
    /// after the burst. 0 = the same priority as ingest.
    pub background_nice: i32,
}

/// RabbitMQ, when `RABBITMQ_URL` is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RabbitSettings {
    /// Prefix for every exchange and queue name (empty: the legacy names;
    /// set it only to run several isolated gateways on one broker).
    #[serde(default)]
    pub queue_prefix: String,
    /// Unacked inbox deliveries the broker pushes to one replica.
    pub prefetch: u16,
    /// Confirm-mode channels that ingest publishes are spread over.
    pub publish_channels: usize,
    /// `classic` (the legacy arguments, drop-in) or `quorum` (replicated, for
    /// a cluster; see DESIGN §2 for what changes and how to migrate).
    pub queue_type: QueueType,
}

/// Deliveries to client webhooks.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ForwardSettings {
    /// One delay per retry (`FORWARD_RETRY_DELAYS_MS`, in ms).
    #[serde(rename = "retry_delays_ms")]
    pub retry_delays: RetryDelays,
    /// `fixed` (the schedule as given) or `exponential` (doubling, ±20 % jitter).
    pub retry_backoff: Backoff,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// Total time one delivery attempt may take.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// Upper bound for a client's `Retry-After`.
    #[serde(rename = "max_retry_after_secs", with = "secs")]
    pub max_retry_after: Duration,
    /// Longest a job waits behind an open circuit before the DLQ.
    #[serde(rename = "max_parked_secs", with = "secs")]
    pub max_parked: Duration,
    /// Allow forwarding to private / loopback / link-local addresses.
    pub allow_private: bool,
    /// Proxy for deliveries (`http://host:port`); unset = none, whatever
    /// `HTTP(S)_PROXY` says (the SSRF guard must see the target's own
    /// address). With a proxy the guard checks the target's resolved
    /// addresses before each request.
    #[serde(default, deserialize_with = "secret_url")]
    pub proxy: Option<SecretUrl>,
    /// Where operational events (`endpoint.disabled`) are delivered, like
    /// any webhook; unset: they are only counted and logged.
    #[serde(default, deserialize_with = "secret_url")]
    pub operations_webhook_url: Option<SecretUrl>,
    /// The secret operational events are signed with (unset: unsigned).
    #[serde(default, deserialize_with = "secret")]
    pub operations_webhook_secret: Option<Secret>,
    /// A URL failing this long with its circuit open is reported as
    /// `endpoint.failing`.
    #[serde(with = "types::humantime_duration")]
    pub endpoint_failing_after: Duration,
    /// Consecutive failures that open a URL's circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit waits before its single probe.
    #[serde(rename = "breaker_cooldown_secs", with = "secs")]
    pub breaker_cooldown: Duration,
}

/// How long each kind is kept (`0`: forever) and how often the pruner runs.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RetentionSettings {
    #[serde(with = "types::retention")]
    pub messages: Option<Duration>,
    #[serde(with = "types::retention")]
    pub delivery_logs: Option<Duration>,
    #[serde(with = "types::retention")]
    pub unrecognized: Option<Duration>,
    #[serde(with = "types::retention")]
    pub notifications: Option<Duration>,
    #[serde(with = "types::retention")]
    pub dlq: Option<Duration>,
    #[serde(with = "types::retention")]
    pub quarantine: Option<Duration>,
    #[serde(with = "types::humantime_duration")]
    pub prune_interval: Duration,
}

impl RetentionSettings {
    pub fn policy(&self) -> crate::retention::Retention {
        crate::retention::Retention {
            messages: self.messages,
            delivery_logs: self.delivery_logs,
            unrecognized: self.unrecognized,
            notifications: self.notifications,
            dlq: self.dlq,
            quarantine: self.quarantine,
        }
    }
}

/// The shared backends and the trace exporter this binary was built with
/// (its cargo features); the embedded backends are always there. Shown by
/// `check-config` and on the "serving" log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Built {
    pub mongodb: bool,
    pub rabbitmq: bool,
    pub redis: bool,
    pub otlp: bool,
}

impl Built {
    /// This binary's.
    pub const THIS: Built = Built {
        mongodb: cfg!(feature = "mongodb"),
        rabbitmq: cfg!(feature = "rabbitmq"),
        redis: cfg!(feature = "redis"),
        otlp: cfg!(feature = "otlp"),
    };
}

impl fmt::Display for Built {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sqlite")?;
        for (name, built) in [
            ("mongodb", self.mongodb),
            ("rabbitmq", self.rabbitmq),
            ("redis", self.redis),
            ("otlp", self.otlp),
        ] {
            if built {
                write!(f, ", {name}")?;
            }
        }
        Ok(())
    }
}

/// A configuration problem, naming the keys that caused it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Names a key the way a user sets it: env var, and Keys.json key when legacy.
pub fn describe_key(key: &str) -> String {
    let env = ENV_KEYS
        .iter()
        .find(|(_, k)| *k == key)
        .map(|(e, _)| *e)
        .unwrap_or(key);
    match legacy_name(key) {
        Some(legacy) => format!("{env} (Keys.json `{legacy}`)"),
        None => env.to_owned(),
    }
}

/// The `Keys.json` name of a key the legacy gateway read from that file.
fn legacy_name(key: &str) -> Option<&'static str> {
    match key {
        "http.port" => Some("port"),
        "backends.mongo_uri" => Some("mongo_uri"),
        "backends.database_name" => Some("database_name"),
        _ => None,
    }
}

impl Settings {
    /// Loads from `keys_json` (if the file exists) and the process environment.
    pub fn load(keys_json: &Path) -> Result<Settings, ConfigError> {
        let settings = Self::load_from(keys_json, |name| std::env::var(name).ok())?;
        settings.check_built(Built::THIS)?;
        Ok(settings)
    }

    /// Refuses a backend this binary was built without: settings that ask
    /// for MongoDB must never quietly run on the embedded file instead.
    pub fn check_built(&self, built: Built) -> Result<(), ConfigError> {
        let b = &self.backends;
        for (key, wanted, present, feature) in [
            (
                "backends.mongo_uri",
                b.mongo_uri.is_some(),
                built.mongodb,
                "mongodb",
            ),
            (
                "backends.rabbitmq_url",
                b.rabbitmq_url.is_some(),
                built.rabbitmq,
                "rabbitmq",
            ),
            (
                "backends.redis_url",
                b.redis_url.is_some(),
                built.redis,
                "redis",
            ),
        ] {
            if wanted && !present {
                return Err(ConfigError(format!(
                    "{} is set, but this zen-gateway was built without that backend: build it \
                     with `--features {feature}` (or `full`, as the Docker image is)",
                    describe_key(key)
                )));
            }
        }
        Ok(())
    }

    /// Loads with an explicit environment lookup (tests use this instead of
    /// mutating the process environment).
    pub fn load_from(
        keys_json: &Path, env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder
                .set_default(*key, *value)
                .map_err(|e| ConfigError(e.to_string()))?;
        }
        if keys_json.exists() {
            let legacy = read_keys_json(keys_json)?;
            for (key, value) in legacy {
                builder = builder
                    .set_override(key, value)
                    .map_err(|e| ConfigError(e.to_string()))?;
            }
        }
        for (name, key) in ENV_KEYS {
            if let Some(value) = env(name) {
                builder = builder
                    .set_override(*key, value)
                    .map_err(|e| ConfigError(e.to_string()))?;
            }
        }
        let mut settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(name_keys(&e.to_string())))?;
        let providers = crate::providers::Providers::new();
        settings.inbound = inbound_from_env(&env, &providers);
        settings.providers = providers;
        settings.validate()?;
        Ok(settings)
    }

    /// The rules a value's type does not carry, and those across keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{}: {why}", describe_key(key))));
        let scheme = |key: &str, value: Option<&SecretUrl>, schemes: &[&str]| {
            if let Some(v) = value {
                // RABBITMQ_URL may list a cluster's nodes: each must be whole.
                let items: Vec<&str> = if key == "backends.rabbitmq_url" {
                    broker_addresses(v.expose())
                } else {
                    vec![v.expose()]
                };
                if items.is_empty()
                    || !items
                        .iter()
                        .all(|i| schemes.iter().any(|s| i.starts_with(s)))
                {
                    return bad(key, &format!("must start with {}", schemes.join(" or ")));
                }
            }
            Ok(())
        };
        let b = &self.backends;
        scheme(
            "backends.mongo_uri",
            b.mongo_uri.as_ref(),
            &["mongodb://", "mongodb+srv://"],
        )?;
        scheme(
            "backends.rabbitmq_url",
            b.rabbitmq_url.as_ref(),
            &["amqp://", "amqps://"],
        )?;
        scheme(
            "backends.redis_url",
            b.redis_url.as_ref(),
            &["redis://", "rediss://", "unix://"],
        )?;
        scheme(
            "forward.proxy",
            self.forward.proxy.as_ref(),
            &["http://", "https://"],
        )?;
        scheme(
            "forward.operations_webhook_url",
            self.forward.operations_webhook_url.as_ref(),
            &["http://", "https://"],
        )?;
        if self.http.console_session_ttl < std::time::Duration::from_secs(60) {
            return bad(
                "http.console_session_ttl",
                "must be at least 1m (a console sign-in would end at once)",
            );
        }
        for (key, value) in [
            ("http.body_limit_bytes", self.http.body_limit_bytes),
            ("http.max_connections", self.http.max_connections),
            ("ingest.inbox_write_queue", self.ingest.inbox_write_queue),
            (
                "ingest.inbox_write_queue_bytes",
                self.ingest.inbox_write_queue_bytes,
            ),
            ("processor.batch_size", self.processor.batch_size),
            ("processor.batch_bytes", self.processor.batch_bytes),
            (
                "processor.max_attempts",
                self.processor.max_attempts as usize,
            ),
            ("rabbitmq.prefetch", self.rabbitmq.prefetch as usize),
            ("rabbitmq.publish_channels", self.rabbitmq.publish_channels),
            ("forward.concurrency", self.forward.concurrency),
            (
                "forward.breaker_threshold",
                self.forward.breaker_threshold as usize,
            ),
        ] {
            if value == 0 {
                return bad(key, "must be greater than 0");
            }
        }
        for (key, value) in [
            ("ingest.ack_timeout_ms", self.ingest.ack_timeout),
            ("http.idle_timeout_secs", self.http.idle_timeout),
            ("http.request_timeout_secs", self.http.request_timeout),
            (
                "http.header_read_timeout_secs",
                self.http.header_read_timeout,
            ),
            ("forward.timeout_ms", self.forward.timeout),
            ("forward.connect_timeout_ms", self.forward.connect_timeout),
        ] {
            if value.is_zero() {
                return bad(key, "must be greater than 0");
            }
        }
        if self.retention.prune_interval.is_zero() {
            return bad("retention.prune_interval", "must be greater than 0");
        }
        if !(0..=19).contains(&self.processor.background_nice) {
            return bad("processor.background_nice", "must be between 0 and 19");
        }
        if b.database_name.trim().is_empty() {
            return bad("backends.database_name", "must not be empty");
        }
        if let Some(url) = &self.http.public_base_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return bad(
                    "http.public_base_url",
                    "must start with https:// or http://",
                );
            }
        }
        // Across keys.
        if self.http.public_base_url.is_none() && !self.http.trust_forwarded_headers {
            for (bsp, creds) in &self.inbound {
                let Some(p) = self.providers.get(*bsp) else {
                    continue;
                };
                if p.signs_public_url() && creds.secret.is_some() {
                    return Err(ConfigError(format!(
                        "{} is set but PUBLIC_BASE_URL is not: {} signs the public URL it \
                         calls, so set PUBLIC_BASE_URL to the gateway's public origin (or \
                         TRUST_FORWARDED_HEADERS=true behind a proxy that sets \
                         X-Forwarded-Proto and X-Forwarded-Host)",
                        p.credential_env().secret,
                        p.name()
                    )));
                }
            }
        }
        self.validate_inbound()?;
        if self.access.auth_failure_limit == 0 {
            return bad("access.auth_failure_limit", "must be greater than 0");
        }
        if self.access.auth_failure_window.is_zero() {
            return bad("access.auth_failure_window", "must be greater than 0");
        }
        if b.redis_key_prefix.is_some() && b.redis_url.is_none() {
            return Err(ConfigError(
                "REDIS_KEY_PREFIX is set but REDIS_URL is not: the in-process cache has no \
                 shared keys to prefix"
                    .into(),
            ));
        }
        let r = self.roles;
        if !r.is_all()
            && b.rabbitmq_url.is_some()
            && b.mongo_uri.is_none()
            && (r.processor || r.forwarder)
        {
            return Err(ConfigError(format!(
                "ROLES={} with RABBITMQ_URL needs MONGO_URI: replicas that split the roles \
                     must share the message store and the client webhooks, and the embedded \
                     store is this replica's alone",
                r.names().join(",")
            )));
        }
        Ok(())
    }

    /// Each provider's routes by trust (verified, open, refused).
    pub fn inbound_trust(&self) -> TrustReport {
        TrustReport::of(&self.inbound, &self.access.inbound_open_routes)
    }

    /// The inbound rules across keys: a route named open must have no
    /// credentials, and `INBOUND_REQUIRE_AUTH` refuses every open route.
    fn validate_inbound(&self) -> Result<(), ConfigError> {
        let providers = &self.providers;
        for bsp in &self.access.inbound_open_routes {
            if self
                .inbound
                .get(bsp)
                .is_some_and(InboundCredentials::verifies)
            {
                let env = providers
                    .get(*bsp)
                    .map(|p| p.credential_env())
                    .map(|e| format!("{} / {}", e.token, e.secret))
                    .unwrap_or_default();
                return Err(ConfigError(format!(
                    "INBOUND_OPEN_ROUTES names {bsp}, whose webhooks are verified ({env} is \
                     set); a verified route is never open: remove it from the list"
                )));
            }
        }
        let open = self.inbound_trust().open;
        // A replica without the ingest role serves no webhook route.
        if self.access.inbound_require_auth && self.roles.ingest && !open.is_empty() {
            let names: Vec<String> = open
                .iter()
                .filter_map(|b| providers.get(*b))
                .map(|p| {
                    let env = p.credential_env();
                    format!("{} ({} or {})", p.routes()[0], env.token, env.secret)
                })
                .collect();
            return Err(ConfigError(format!(
                "INBOUND_REQUIRE_AUTH is true but these webhook routes are open, so anyone who \
                 reaches them can write into records: {}. Configure their credentials, or \
                 remove them from INBOUND_OPEN_ROUTES (an unnamed route without credentials is \
                 refused once any route is verified)",
                names.join(", ")
            )));
        }
        Ok(())
    }

    /// Said at start, not refused: an embedded inbox that this process does
    /// not process waits for a process that does (on the same `DATA_DIR`).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let r = self.roles;
        if r.ingest && !r.processor && self.backends.rabbitmq_url.is_none() {
            out.push(
                "ROLES has ingest without processor on the embedded inbox: webhooks are kept \
                 in DATA_DIR until a gateway with the processor role runs on it"
                    .to_owned(),
            );
        }
        out
    }

    /// The forwarder's settings.
    pub fn forwarder(&self) -> crate::forwarding::worker::ForwarderConfig {
        let f = &self.forward;
        crate::forwarding::worker::ForwarderConfig {
            concurrency: f.concurrency,
            connect_timeout: f.connect_timeout,
            total_timeout: f.timeout,
            retry_delays: f.retry_delays.0.clone(),
            exponential: f.retry_backoff == Backoff::Exponential,
            max_retry_after: f.max_retry_after,
            breaker_threshold: f.breaker_threshold,
            breaker_cooldown: f.breaker_cooldown,
            max_parked: f.max_parked,
            allow_private: f.allow_private,
            proxy: f.proxy.as_ref().map(|p| p.expose().to_owned()),
            failing_after: f.endpoint_failing_after,
            operations: f.operations_webhook_url.as_ref().map(|url| {
                crate::forwarding::worker::OperationsTarget {
                    url: url.expose().to_owned(),
                    secret: f
                        .operations_webhook_secret
                        .as_ref()
                        .map(|s| s.expose().to_owned())
                        .unwrap_or_default(),
                }
            }),
        }
    }

    /// The embedded database file.
    pub fn sqlite_path(&self) -> PathBuf {
        self.backends.data_dir.join("zen.db")
    }

    /// The configuration as JSON, for `check-config`: every secret is a
    /// [`Secret`] or [`SecretUrl`], which serialize masked.
    pub fn masked(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Each provider's inbound credentials, from the variables it names; an
/// empty value is the same as an unset one.
fn inbound_from_env(
    env: &impl Fn(&str) -> Option<String>, providers: &crate::providers::Providers,
) -> BTreeMap<Bsp, InboundCredentials> {
    let read = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(Secret::new)
    };
    providers
        .all()
        .filter_map(|p| {
            let names = p.credential_env();
            let creds = InboundCredentials {
                token: read(names.token),
                secret: read(names.secret),
                verify_token: names.verify_token.and_then(read),
            };
            creds.is_configured().then_some((p.bsp(), creds))
        })
        .collect()
}

/// Reads the legacy `Keys.json`; only its gateway keys are used (the
/// monolith's leftovers such as `smtp` are ignored). `port` counts when > 0.
fn read_keys_json(path: &Path) -> Result<Vec<(&'static str, String)>, ConfigError> {
    const KEYS: [(&str, &str); 2] = [
        ("mongo_uri", "backends.mongo_uri"),
        ("database_name", "backends.database_name"),
    ];
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ConfigError(format!("{} is not valid JSON: {e}", path.display())))?;
    let mut out = Vec::new();
    for (key, setting) in KEYS {
        match json.get(key) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => {}
            Some(serde_json::Value::String(s)) => out.push((setting, s.clone())),
            Some(_) => {
                return Err(ConfigError(format!(
                    "{}: `{key}` must be a string",
                    path.display()
                )));
            }
        }
    }
    match json.get("port") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(0) => {}
            Some(p) if p <= u16::MAX as u64 => out.push(("http.port", p.to_string())),
            _ => {
                return Err(ConfigError(format!(
                    "{}: `port` must be a port number",
                    path.display()
                )));
            }
        },
        Some(_) => {
            return Err(ConfigError(format!(
                "{}: `port` must be a number",
                path.display()
            )));
        }
    }
    Ok(out)
}

/// Rewrites "for key `x`" in a config-crate error into the names a user sets.
fn name_keys(message: &str) -> String {
    let mut out = message.to_owned();
    for (_, key) in ENV_KEYS {
        let needle = format!("`{key}`");
        if out.contains(&needle) {
            out = out.replace(&needle, &describe_key(key));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(env: &[(&str, &str)], keys: Option<&str>) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Keys.json");
        if let Some(k) = keys {
            std::fs::write(&path, k).unwrap();
        }
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(&path, |n| env.get(n).cloned())
    }

    /// Every default is settable by a variable, and every variable is in
    /// `.env.example` (the list operators read).
    #[test]
    fn every_setting_has_a_variable_listed_in_the_example() {
        let example = include_str!("../../.env.example");
        for (key, _) in DEFAULTS {
            assert!(
                ENV_KEYS.iter().any(|(_, k)| k == key),
                "{key} has a default but no environment variable"
            );
        }
        for (name, _) in ENV_KEYS {
            assert!(
                example.contains(&format!("{name}=")),
                "{name} is not in .env.example"
            );
        }
        let s = load(&[("ENDPOINT_FAILING_AFTER", "2m")], None).unwrap();
        assert_eq!(
            s.forward.endpoint_failing_after,
            std::time::Duration::from_secs(120)
        );
    }

    /// A build without a shared backend refuses the setting that asks for
    /// it, by name, rather than running on the embedded file instead.
    #[test]
    fn a_backend_the_build_lacks_is_refused_by_its_setting() {
        let none = Built {
            mongodb: false,
            rabbitmq: false,
            redis: false,
            otlp: false,
        };
        let all = Built {
            mongodb: true,
            rabbitmq: true,
            redis: true,
            otlp: true,
        };
        assert_eq!(none.to_string(), "sqlite");
        assert_eq!(all.to_string(), "sqlite, mongodb, rabbitmq, redis, otlp");
        load(&[], None).unwrap().check_built(none).unwrap();
        for (var, value, feature) in [
            ("MONGO_URI", "mongodb://db:27017", "mongodb"),
            ("RABBITMQ_URL", "amqp://mq:5672", "rabbitmq"),
            ("REDIS_URL", "redis://cache:6379", "redis"),
        ] {
            let s = load(&[(var, value)], None).unwrap();
            let e = s.check_built(none).unwrap_err().to_string();
            assert!(
                e.contains(var) && e.contains(&format!("--features {feature}")),
                "{e}"
            );
            s.check_built(all).unwrap();
        }
    }

    #[test]
    fn defaults_are_legacy_and_embedded() {
        let s = load(&[], None).unwrap();
        assert_eq!(s.http.port, 8080);
        assert_eq!(s.backends.database_name, "zen_messaging");
        let b = &s.backends;
        assert!(b.mongo_uri.is_none() && b.rabbitmq_url.is_none() && b.redis_url.is_none());
        assert!(s.roles.is_all());
        assert_eq!(s.forward.timeout, std::time::Duration::from_secs(15));
        assert_eq!(s.sqlite_path(), PathBuf::from("./data/zen.db"));
    }

    #[test]
    fn keys_json_is_read_and_the_environment_wins() {
        let keys = r#"{"mongo_uri":"mongodb://a:b@db:27017","database_name":"legacy","port":9090,"smtp":{"host":"x"}}"#;
        let s = load(&[], Some(keys)).unwrap();
        assert_eq!(s.http.port, 9090);
        assert_eq!(s.backends.database_name, "legacy");
        assert_eq!(
            s.backends.mongo_uri.as_ref().map(SecretUrl::expose),
            Some("mongodb://a:b@db:27017")
        );
        let s = load(
            &[("SERVER_PORT", "7070"), ("DATABASE_NAME", "env")],
            Some(keys),
        )
        .unwrap();
        assert_eq!(s.http.port, 7070);
        assert_eq!(s.backends.database_name, "env");
        // Legacy: a Keys.json port of 0 means "not set".
        let s = load(&[], Some(r#"{"port":0}"#)).unwrap();
        assert_eq!(s.http.port, 8080);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let e = load(&[("SERVER_PORT", "eighty")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SERVER_PORT"), "{e}");
        let e = load(&[("RABBITMQ_URL", "http://x")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("RABBITMQ_URL"), "{e}");
        let e = load(&[("SQLITE_SYNCHRONOUS", "sometimes")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SQLITE_SYNCHRONOUS"), "{e}");
        let e = load(&[("CONSOLE_SESSION_TTL", "10s")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CONSOLE_SESSION_TTL") && e.contains("1m"), "{e}");
        assert_eq!(
            load(&[("CONSOLE_SESSION_TTL", "12h")], None)
                .unwrap()
                .http
                .console_session_ttl,
            std::time::Duration::from_secs(12 * 3600)
        );
        let e = load(&[("ROLES", "ingest,router")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ROLES") && e.contains("router"), "{e}");
        let e = load(&[], Some("{not json")).unwrap_err().to_string();
        assert!(e.contains("Keys.json"), "{e}");
    }

    #[test]
    fn empty_urls_mean_unset_and_secrets_are_masked() {
        let s = load(
            &[
                ("MONGO_URI", ""),
                ("RABBITMQ_URL", "amqp://user:pw@mq:5672/"),
                ("ADMIN_API_KEY", "k"),
            ],
            None,
        )
        .unwrap();
        assert!(s.backends.mongo_uri.is_none());
        let masked = s.masked().to_string();
        assert!(
            !masked.contains("pw@") && !masked.contains("\"k\""),
            "{masked}"
        );
        assert!(masked.contains("amqp://user:****@mq:5672/"), "{masked}");
        assert!(!format!("{s:?}").contains("pw@"));
    }

    #[test]
    fn durations_take_numbers_in_the_keys_unit_or_humantime() {
        let s = load(
            &[
                ("FORWARD_TIMEOUT_MS", "2s"),
                ("BREAKER_COOLDOWN_SECS", "90"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(s.forward.timeout, std::time::Duration::from_secs(2));
        assert_eq!(
            s.forward.breaker_cooldown,
            std::time::Duration::from_secs(90)
        );
        let e = load(&[("FORWARD_TIMEOUT_MS", "soon")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("FORWARD_TIMEOUT_MS"), "{e}");
    }

    #[test]
    fn rules_across_keys_name_every_key() {
        let e = load(
            &[("ROLES", "processor"), ("RABBITMQ_URL", "amqp://mq/")],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ROLES") && e.contains("MONGO_URI"), "{e}");
        let e = load(&[("TWILIO_AUTH_TOKEN", "t")], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TWILIO_AUTH_TOKEN") && e.contains("PUBLIC_BASE_URL"),
            "{e}"
        );
        load(
            &[
                ("TWILIO_AUTH_TOKEN", "t"),
                ("PUBLIC_BASE_URL", "https://gw.example.com"),
            ],
            None,
        )
        .unwrap();
        let e = load(&[("REDIS_KEY_PREFIX", "x:")], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("REDIS_KEY_PREFIX") && e.contains("REDIS_URL"),
            "{e}"
        );
        // An ingest-only replica on RabbitMQ needs no shared store.
        load(&[("ROLES", "ingest"), ("RABBITMQ_URL", "amqp://mq/")], None).unwrap();
        let s = load(&[("ROLES", "ingest")], None).unwrap();
        assert_eq!(s.warnings().len(), 1);
    }

    #[test]
    fn rabbitmq_url_may_list_a_clusters_nodes_each_whole() {
        let s = load(
            &[("RABBITMQ_URL", "amqp://u:p@mq1:5672/, amqp://u:p@mq2:5672/")],
            None,
        )
        .unwrap();
        assert!(s.backends.rabbitmq_url.is_some());
        let e = load(&[("RABBITMQ_URL", "amqp://mq1/,mq2:5672")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("RABBITMQ_URL") && e.contains("amqp://"), "{e}");
    }
}
