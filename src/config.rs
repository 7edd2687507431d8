//! Configuration: defaults < `Keys.json` (legacy keys) < environment.
//!
//! The legacy gateway read `mongo_uri`, `database_name` and `port` from
//! `Keys.json` and `MONGO_URI`, `DATABASE_NAME`, `SERVER_PORT`, `REDIS_URL`,
//! `RABBITMQ_URL` from the environment; those names are kept. Every setting
//! has one environment variable, listed in [`ENV_KEYS`] and `.env.example`.
//! There are no remote defaults: an unset backend URL selects the embedded
//! backend for that role.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backends::sqlite::Synchronous;
use crate::inbound_auth::InboundCredentials;
use crate::model::Bsp;

/// Environment variable → configuration key. The key is also the
/// `Keys.json` name where the legacy gateway had one (`port`, `mongo_uri`,
/// `database_name`).
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("SERVER_PORT", "port"),
    ("BIND_ADDRESS", "bind_address"),
    ("MONGO_URI", "mongo_uri"),
    ("DATABASE_NAME", "database_name"),
    ("REDIS_URL", "redis_url"),
    ("RABBITMQ_URL", "rabbitmq_url"),
    ("ADMIN_API_KEY", "admin_api_key"),
    ("DATA_DIR", "data_dir"),
    ("BODY_LIMIT_BYTES", "body_limit_bytes"),
    ("INGEST_ACK_TIMEOUT_MS", "ingest_ack_timeout_ms"),
    ("INBOX_WRITE_QUEUE", "inbox_write_queue"),
    ("INBOX_WRITE_QUEUE_BYTES", "inbox_write_queue_bytes"),
    ("SQLITE_SYNCHRONOUS", "sqlite_synchronous"),
    ("PROCESSOR_BATCH_SIZE", "processor_batch_size"),
    ("PROCESSOR_BATCH_BYTES", "processor_batch_bytes"),
    ("PROCESSOR_MAX_ATTEMPTS", "processor_max_attempts"),
    ("REDIS_KEY_PREFIX", "redis_key_prefix"),
    ("FORWARD_PROXY", "forward_proxy"),
    ("BACKGROUND_NICE", "background_nice"),
    ("SHUTDOWN_TIMEOUT_SECS", "shutdown_timeout_secs"),
    ("REQUEST_TIMEOUT_SECS", "request_timeout_secs"),
    ("CACHE_MAX_ENTRIES", "cache_max_entries"),
    ("LOG_FORMAT", "log_format"),
    ("RABBITMQ_QUEUE_PREFIX", "rabbitmq_queue_prefix"),
    ("RABBITMQ_PREFETCH", "rabbitmq_prefetch"),
    ("RABBITMQ_PUBLISH_CHANNELS", "rabbitmq_publish_channels"),
    ("FORWARD_RETRY_DELAYS_MS", "forward_retry_delays_ms"),
    ("FORWARD_RETRY_BACKOFF", "forward_retry_backoff"),
    ("FORWARD_CONCURRENCY", "forward_concurrency"),
    ("FORWARD_CONNECT_TIMEOUT_MS", "forward_connect_timeout_ms"),
    ("FORWARD_TIMEOUT_MS", "forward_timeout_ms"),
    (
        "FORWARD_MAX_RETRY_AFTER_SECS",
        "forward_max_retry_after_secs",
    ),
    ("FORWARD_MAX_PARKED_SECS", "forward_max_parked_secs"),
    ("FORWARD_ALLOW_PRIVATE", "forward_allow_private"),
    ("BREAKER_THRESHOLD", "breaker_threshold"),
    ("BREAKER_COOLDOWN_SECS", "breaker_cooldown_secs"),
    ("ROLES", "roles"),
    ("HEADER_READ_TIMEOUT_SECS", "header_read_timeout_secs"),
    ("IDLE_TIMEOUT_SECS", "idle_timeout_secs"),
    ("MAX_CONNECTIONS", "max_connections"),
];

/// The roles of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Roles {
    pub ingest: bool,
    pub processor: bool,
    pub forwarder: bool,
}

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
    /// HTTP port (`SERVER_PORT`; Keys.json `port`, used when > 0).
    pub port: u16,
    /// Address to listen on (`BIND_ADDRESS`).
    pub bind_address: String,
    /// MongoDB URI; unset = the embedded SQLite store.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub mongo_uri: Option<String>,
    /// MongoDB database name.
    pub database_name: String,
    /// Redis URL; unset = the in-process cache (degraded).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub redis_url: Option<String>,
    /// RabbitMQ URL; unset = the embedded SQLite inbox.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub rabbitmq_url: Option<String>,
    /// Bearer key of the admin API; unset = every `/api/v1` call is refused.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub admin_api_key: Option<String>,
    /// Directory of the embedded database (`zen.db`).
    pub data_dir: PathBuf,
    /// Largest accepted webhook body, in bytes (413 above).
    pub body_limit_bytes: usize,
    /// Longest an ingest request waits for durability before answering 503.
    pub ingest_ack_timeout_ms: u64,
    /// Embedded inbox: appends waiting for the writer before 503s begin.
    pub inbox_write_queue: usize,
    /// Embedded inbox: bytes of bodies waiting for the writer before 503s
    /// begin (bounds the queue's memory; one body is always let through).
    pub inbox_write_queue_bytes: usize,
    /// Embedded database fsync policy: `full` (survives power loss) or
    /// `normal` (survives process crashes).
    pub sqlite_synchronous: Synchronous,
    /// Inbox entries the processor takes at once.
    pub processor_batch_size: usize,
    /// Bytes of webhook bodies applied in one store batch (a batch of
    /// `PROCESSOR_BATCH_SIZE` entries is split past it).
    pub processor_batch_bytes: usize,
    /// Attempts of an inbox entry that the store refuses (an error retrying
    /// cannot cure) before it is quarantined; outages never count.
    pub processor_max_attempts: u32,
    /// Prefix of every key the gateway writes to Redis; unset = derived from
    /// the deployment's own store (`zen:<database name>:` on MongoDB,
    /// `zen:<id kept in the data file>:` on the embedded one), so two
    /// deployments sharing a Redis never see each other's keys.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub redis_key_prefix: Option<String>,
    /// Proxy for deliveries to client webhooks (`http://host:port`); unset =
    /// none, whatever `HTTP(S)_PROXY` says (the SSRF guard must see the
    /// target's own address). With a proxy the guard checks the target's
    /// resolved addresses before each request.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub forward_proxy: Option<String>,
    /// Nice value (0–19) of the processor's and forwarder's threads: when the
    /// CPU is saturated, acks get it first and the background catches up
    /// after the burst. 0 = the same priority as ingest.
    pub background_nice: i32,
    /// Longest graceful shutdown may take before in-flight work is abandoned
    /// (it stays in the inbox and is processed after restart).
    pub shutdown_timeout_secs: u64,
    /// Longest one HTTP request may take.
    pub request_timeout_secs: u64,
    /// Longest a client may take to send its request headers (slow loris).
    pub header_read_timeout_secs: u64,
    /// A client connection (HTTP/1 keep-alive or HTTP/2) with no request in
    /// flight for this long is closed.
    pub idle_timeout_secs: u64,
    /// Client connections open at once; past it new ones wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// Entries of the in-process cache.
    pub cache_max_entries: u64,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Prefix for every RabbitMQ exchange and queue name (empty: the legacy
    /// names; set it only to run several isolated gateways on one broker).
    #[serde(default)]
    pub rabbitmq_queue_prefix: String,
    /// Unacked inbox deliveries the broker pushes to one replica.
    pub rabbitmq_prefetch: u16,
    /// Confirm-mode channels that ingest publishes are spread over.
    pub rabbitmq_publish_channels: usize,
    /// Forwarding retry delays in ms, comma-separated: one per retry, so
    /// `3000,3000` is the legacy 3 attempts, 3 s apart.
    pub forward_retry_delays_ms: String,
    /// `fixed` (the schedule as given) or `exponential` (doubling, ±20 % jitter).
    pub forward_retry_backoff: Backoff,
    /// Deliveries in flight at once.
    pub forward_concurrency: usize,
    pub forward_connect_timeout_ms: u64,
    /// Total time one delivery attempt may take.
    pub forward_timeout_ms: u64,
    /// Upper bound for a client's `Retry-After`.
    pub forward_max_retry_after_secs: u64,
    /// Longest a job waits behind an open circuit before the DLQ.
    pub forward_max_parked_secs: u64,
    /// Allow forwarding to private / loopback / link-local addresses.
    pub forward_allow_private: bool,
    /// Consecutive failures that open a URL's circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit waits before its single probe.
    pub breaker_cooldown_secs: u64,
    /// What this process does: any of `ingest`, `processor`, `forwarder`,
    /// comma-separated (default all three). Splitting roles across replicas
    /// needs the shared backends (RabbitMQ, MongoDB).
    pub roles: String,
    /// Inbound webhook credentials by provider, from the environment
    /// variables each provider names (`<BSP>_WEBHOOK_TOKEN`,
    /// `<BSP>_WEBHOOK_SECRET`, …; see `Provider::credential_env`). Only
    /// providers with something configured are present.
    #[serde(skip_deserializing)]
    pub inbound: BTreeMap<Bsp, InboundCredentials>,
}

fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
}

/// A configuration problem, naming the key that caused it.
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
    match key {
        "port" | "mongo_uri" | "database_name" => format!("{env} (Keys.json `{key}`)"),
        _ => env.to_owned(),
    }
}

impl Settings {
    /// Loads from `keys_json` (if the file exists) and the process environment.
    pub fn load(keys_json: &Path) -> Result<Settings, ConfigError> {
        Self::load_from(keys_json, |name| std::env::var(name).ok())
    }

    /// Loads with an explicit environment lookup (tests use this instead of
    /// mutating the process environment).
    pub fn load_from(
        keys_json: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        for (key, value) in [
            ("port", "8080"),
            ("bind_address", "0.0.0.0"),
            ("database_name", "zen_messaging"),
            ("data_dir", "./data"),
            ("body_limit_bytes", "1048576"),
            ("ingest_ack_timeout_ms", "5000"),
            ("inbox_write_queue", "20000"),
            ("inbox_write_queue_bytes", "268435456"),
            ("sqlite_synchronous", "full"),
            ("processor_batch_size", "128"),
            ("processor_batch_bytes", "8388608"),
            ("processor_max_attempts", "5"),
            ("background_nice", "10"),
            ("shutdown_timeout_secs", "25"),
            ("request_timeout_secs", "30"),
            ("header_read_timeout_secs", "10"),
            ("idle_timeout_secs", "75"),
            ("max_connections", "10000"),
            ("cache_max_entries", "100000"),
            ("log_format", "text"),
            ("rabbitmq_prefetch", "512"),
            ("rabbitmq_publish_channels", "4"),
            ("forward_retry_delays_ms", "3000,3000"),
            ("forward_retry_backoff", "fixed"),
            ("forward_concurrency", "100"),
            ("forward_connect_timeout_ms", "5000"),
            ("forward_timeout_ms", "15000"),
            ("forward_max_retry_after_secs", "300"),
            ("forward_max_parked_secs", "86400"),
            ("forward_allow_private", "false"),
            ("breaker_threshold", "10"),
            ("breaker_cooldown_secs", "300"),
            ("roles", "ingest,processor,forwarder"),
        ] {
            builder = builder
                .set_default(key, value)
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
        settings.inbound = inbound_from_env(&env);
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{}: {why}", describe_key(key))));
        let scheme = |key: &str, value: &Option<String>, schemes: &[&str]| {
            if let Some(v) = value {
                if !schemes.iter().any(|s| v.starts_with(s)) {
                    return bad(key, &format!("must start with {}", schemes.join(" or ")));
                }
            }
            Ok(())
        };
        scheme(
            "mongo_uri",
            &self.mongo_uri,
            &["mongodb://", "mongodb+srv://"],
        )?;
        scheme("rabbitmq_url", &self.rabbitmq_url, &["amqp://", "amqps://"])?;
        scheme(
            "redis_url",
            &self.redis_url,
            &["redis://", "rediss://", "unix://"],
        )?;
        if self.body_limit_bytes == 0 {
            return bad("body_limit_bytes", "must be greater than 0");
        }
        if self.ingest_ack_timeout_ms == 0 {
            return bad("ingest_ack_timeout_ms", "must be greater than 0");
        }
        if self.inbox_write_queue == 0 {
            return bad("inbox_write_queue", "must be greater than 0");
        }
        if self.inbox_write_queue_bytes == 0 {
            return bad("inbox_write_queue_bytes", "must be greater than 0");
        }
        if self.processor_batch_size == 0 {
            return bad("processor_batch_size", "must be greater than 0");
        }
        if self.idle_timeout_secs == 0 {
            return bad("idle_timeout_secs", "must be greater than 0");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be greater than 0");
        }
        if self.processor_batch_bytes == 0 {
            return bad("processor_batch_bytes", "must be greater than 0");
        }
        if self.processor_max_attempts == 0 {
            return bad("processor_max_attempts", "must be greater than 0");
        }
        scheme(
            "forward_proxy",
            &self.forward_proxy,
            &["http://", "https://"],
        )?;
        if !(0..=19).contains(&self.background_nice) {
            return bad("background_nice", "must be between 0 and 19");
        }
        if self.database_name.trim().is_empty() {
            return bad("database_name", "must not be empty");
        }
        if self.retry_delays().is_none() {
            return bad(
                "forward_retry_delays_ms",
                "must be a comma-separated list of delays in ms (1..86400000)",
            );
        }
        if self.rabbitmq_publish_channels == 0 || self.rabbitmq_prefetch == 0 {
            return bad(
                "rabbitmq_publish_channels",
                "channels and prefetch must be > 0",
            );
        }
        if let Err(unknown) = self.parsed_roles() {
            return bad(
                "roles",
                &format!("unknown role {unknown:?} (expected ingest, processor, forwarder)"),
            );
        }
        if self
            .parsed_roles()
            .is_ok_and(|r| !r.ingest && !r.processor && !r.forwarder)
        {
            return bad("roles", "must name at least one role");
        }
        if self.bind_address.parse::<std::net::IpAddr>().is_err() {
            return bad("bind_address", "must be an IP address");
        }
        Ok(())
    }

    /// The forwarding retry delays, one per retry.
    pub fn retry_delays(&self) -> Option<Vec<u32>> {
        self.forward_retry_delays_ms
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u32>()
                    .ok()
                    .filter(|d| (1..=86_400_000).contains(d))
            })
            .collect()
    }

    /// The roles this process runs.
    pub fn parsed_roles(&self) -> Result<Roles, String> {
        let mut r = Roles::default();
        for role in self
            .roles
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match role {
                "ingest" => r.ingest = true,
                "processor" => r.processor = true,
                "forwarder" => r.forwarder = true,
                other => return Err(other.to_owned()),
            }
        }
        Ok(r)
    }

    /// The forwarder's settings.
    pub fn forwarder(&self) -> crate::forwarding::worker::ForwarderConfig {
        use std::time::Duration;
        crate::forwarding::worker::ForwarderConfig {
            concurrency: self.forward_concurrency.max(1),
            connect_timeout: Duration::from_millis(self.forward_connect_timeout_ms),
            total_timeout: Duration::from_millis(self.forward_timeout_ms),
            retry_delays: self
                .retry_delays()
                .unwrap_or_default()
                .into_iter()
                .map(|ms| Duration::from_millis(ms as u64))
                .collect(),
            exponential: self.forward_retry_backoff == Backoff::Exponential,
            max_retry_after: Duration::from_secs(self.forward_max_retry_after_secs),
            breaker_threshold: self.breaker_threshold.max(1),
            breaker_cooldown: Duration::from_secs(self.breaker_cooldown_secs),
            max_parked: Duration::from_secs(self.forward_max_parked_secs),
            allow_private: self.forward_allow_private,
            proxy: self.forward_proxy.clone(),
        }
    }

    /// The embedded database file.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("zen.db")
    }

    /// The configuration as JSON with secrets masked, for `check-config`.
    pub fn masked(&self) -> serde_json::Value {
        let mut copy = self.clone();
        copy.mongo_uri = copy.mongo_uri.as_deref().map(mask_url);
        copy.redis_url = copy.redis_url.as_deref().map(mask_url);
        copy.rabbitmq_url = copy.rabbitmq_url.as_deref().map(mask_url);
        copy.forward_proxy = copy.forward_proxy.as_deref().map(mask_url);
        if copy.admin_api_key.is_some() {
            copy.admin_api_key = Some("********".to_owned());
        }
        for creds in copy.inbound.values_mut() {
            for secret in [&mut creds.token, &mut creds.secret, &mut creds.verify_token] {
                if secret.is_some() {
                    *secret = Some("********".to_owned());
                }
            }
        }
        serde_json::to_value(copy).unwrap_or_default()
    }
}

/// Each provider's inbound credentials, from the variables it names; an
/// empty value is the same as an unset one.
fn inbound_from_env(env: &impl Fn(&str) -> Option<String>) -> BTreeMap<Bsp, InboundCredentials> {
    let read = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    crate::providers::Providers::new()
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
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ConfigError(format!("{} is not valid JSON: {e}", path.display())))?;
    let mut out = Vec::new();
    for key in ["mongo_uri", "database_name"] {
        match json.get(key) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => {}
            Some(serde_json::Value::String(s)) => out.push((key, s.clone())),
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
            Some(p) if p <= u16::MAX as u64 => out.push(("port", p.to_string())),
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

/// `scheme://user:password@host` → `scheme://user:****@host`.
fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "********".to_owned();
    };
    match rest.rsplit_once('@') {
        Some((creds, host)) => {
            let user = creds.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:****@{host}")
        }
        None => url.to_owned(),
    }
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

    #[test]
    fn defaults_are_legacy_and_embedded() {
        let s = load(&[], None).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.database_name, "zen_messaging");
        assert!(s.mongo_uri.is_none() && s.rabbitmq_url.is_none() && s.redis_url.is_none());
        assert_eq!(s.sqlite_path(), PathBuf::from("./data/zen.db"));
    }

    #[test]
    fn keys_json_is_read_and_the_environment_wins() {
        let keys = r#"{"mongo_uri":"mongodb://a:b@db:27017","database_name":"legacy","port":9090,"smtp":{"host":"x"}}"#;
        let s = load(&[], Some(keys)).unwrap();
        assert_eq!(s.port, 9090);
        assert_eq!(s.database_name, "legacy");
        assert_eq!(s.mongo_uri.as_deref(), Some("mongodb://a:b@db:27017"));
        let s = load(
            &[("SERVER_PORT", "7070"), ("DATABASE_NAME", "env")],
            Some(keys),
        )
        .unwrap();
        assert_eq!(s.port, 7070);
        assert_eq!(s.database_name, "env");
        // Legacy: a Keys.json port of 0 means "not set".
        let s = load(&[], Some(r#"{"port":0}"#)).unwrap();
        assert_eq!(s.port, 8080);
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
        assert!(s.mongo_uri.is_none());
        let masked = s.masked().to_string();
        assert!(
            !masked.contains("pw@") && !masked.contains("\"k\""),
            "{masked}"
        );
        assert!(masked.contains("amqp://user:****@mq:5672/"), "{masked}");
    }
}
