//! The rules of a client webhook's configuration, once for every surface
//! (the admin API and the console call them): what a new webhook must
//! have, what a change may change, a secret's rotation, and a test
//! delivery, signed as real ones are.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::signing::new_secret;
use super::{Endpoint, ForwardJob, Forwarding, WebhookConfig, WebhookStore, WebhookUpdate};
use crate::model::is_blank;
use crate::store::{StoreError, StoreResult};
use crate::telemetry::traces;

/// Why a webhook could not be created, changed or found.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A field is invalid; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error("webhook not found")]
    NotFound,
    /// Changed by others on every attempt to change it: try again.
    #[error("webhook changed concurrently {CHANGE_ATTEMPTS} times; retry")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Attempts of a read-change-write of a webhook that keeps finding it
/// changed since it was read, before [`WebhookError::Conflict`].
pub const CHANGE_ATTEMPTS: u32 = 5;

/// Reads a webhook, applies `change` to it, stamps it, and writes it only if
/// nobody changed it since it was read; else does it again on a fresh read.
/// So a rotation, an edit, a deactivation by the forwarder and another
/// replica's change never undo each other (the last writer wins only over
/// what it read).
pub async fn change_webhook<T>(
    store: &dyn WebhookStore, id: &str,
    mut change: impl FnMut(&mut WebhookConfig) -> Result<T, WebhookError>,
) -> Result<(WebhookConfig, T), WebhookError> {
    for _ in 0..CHANGE_ATTEMPTS {
        let mut w = store.get_webhook(id).await?.ok_or(WebhookError::NotFound)?;
        let read_at = w.updated_at;
        let out = change(&mut w)?;
        // Later than what was read, even within its millisecond: the next
        // writer of the old copy must see a difference.
        w.updated_at = Utc::now().timestamp_millis().max(read_at + 1);
        match store.update_webhook(&w, read_at).await? {
            WebhookUpdate::Updated => return Ok((w, out)),
            WebhookUpdate::NotFound => return Err(WebhookError::NotFound),
            WebhookUpdate::Stale => {
                tracing::debug!(webhook.id = %id, "webhook changed since read; reading it again");
            }
        }
    }
    Err(WebhookError::Conflict)
}

/// A webhook's attempt budget, in ms.
pub const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=120_000;
/// A webhook's deliveries in flight.
pub const MAX_IN_FLIGHT: std::ops::RangeInclusive<u32> = 1..=1000;

/// A new webhook, from the API's JSON or the console's form.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct NewWebhook {
    #[schema(min_length = 1, pattern = "[^\\x00-\\x20]")]
    pub project_owner_id: String,
    #[schema(schema_with = url_schema)]
    pub webhook_url: String,
    #[serde(default)]
    pub project_id: String,
    #[serde(flatten)]
    pub options: WebhookOptions,
}

/// Changes to a webhook: fields left out stay as they are (unlike the
/// legacy API, a change never silently turns signing off).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct WebhookChanges {
    #[schema(schema_with = url_schema)]
    pub webhook_url: Option<String>,
    pub project_id: Option<String>,
    #[serde(flatten)]
    pub options: WebhookOptions,
    /// Optional fields to remove (the console's emptied inputs).
    #[serde(skip)]
    pub clear: Cleared,
}

/// What a webhook may set, when it is created or changed.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct WebhookOptions {
    /// Event types to deliver (legacy or unified names, or `*`); default
    /// `["datagen.delivery"]`, the legacy subscription.
    #[schema(min_items = 1, inline, value_type = Option<Vec<Topic>>)]
    pub topics: Option<Vec<String>>,
    /// Sign deliveries (default true).
    pub enable_auth: Option<bool>,
    pub business_numbers: Option<Vec<String>>,
    /// Headers sent with every delivery (at most 32; the gateway's own
    /// signing and event headers win over a header of the same name).
    pub headers: Option<BTreeMap<String, String>>,
    pub active: Option<bool>,
    /// This webhook's time for one attempt, 100 to 120000 ms (default
    /// `FORWARD_TIMEOUT_MS`).
    #[schema(minimum = 100, maximum = 120000)]
    #[serde(default, deserialize_with = "whole_u64")]
    pub timeout_ms: Option<u64>,
    /// This webhook's most deliveries in flight, 1 to 1000 (default a share
    /// of `FORWARD_CONCURRENCY`).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "whole_u32")]
    pub max_in_flight: Option<u32>,
    /// Deliver only events whose delivery body (`event_type`, `event_id`,
    /// `data`, `message`) matches this document: fields by value, nested
    /// objects or dotted paths, operators `$eq $neq $in $nin $gt $gte $lt
    /// $lte $exist $regex $startsWith $endsWith $not`, logic `$and $or
    /// $not`; at most 8 KB and 8 levels deep. `{}` removes the filter.
    #[schema(value_type = Option<Object>, example = json!({"event_type": "message.failed", "data.errors.0.code": {"$in": [131026, 131047]}}))]
    pub filter: Option<serde_json::Value>,
}

/// A filter as given: checked, and `{}` (match everything) kept as none.
fn checked_filter(
    filter: Option<serde_json::Value>,
) -> Result<Option<serde_json::Value>, WebhookError> {
    let Some(f) = filter else { return Ok(None) };
    crate::forwarding::filter::Filter::compile(&f).map_err(|e| invalid(e.to_string()))?;
    Ok(Some(f).filter(|f| f.as_object().is_none_or(|o| !o.is_empty())))
}

/// An event type to deliver: any non-blank text.
#[derive(ToSchema)]
#[schema(pattern = "[^\\x00-\\x20]")]
#[allow(dead_code)]
struct Topic(String);

/// What a webhook URL looks like, as the API document states it: http(s),
/// a host name (its last label not a number) or an IPv4 address, an
/// optional port from 0 to 65535, then anything without a space or a
/// control character.
pub const URL_PATTERN: &str = concat!(
    "^https?://",
    "(([A-Za-z0-9-]+\\.)*[A-Za-z][A-Za-z0-9-]*",
    "|((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9]))",
    "(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    "([/?#][^\\x00-\\x20]*)?$"
);

/// The document's schema of a webhook URL.
fn url_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some("An http(s) URL with a host"))
        .pattern(Some(URL_PATTERN))
        .build()
}

/// The longest a rotated-out secret keeps signing.
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long it does when the rotation does not say.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Most custom headers on one webhook.
pub const MAX_HEADERS: usize = 32;

/// A whole number, also when written `5.0` (JSON Schema counts integer-
/// valued numbers as integers). Any other number reads as `out_of_range`,
/// which the limit's own check then refuses, naming the field.
fn whole_number<'de, D, T>(d: D, out_of_range: T) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
            .map(|f| f as u64)
    });
    Ok(Some(
        whole
            .and_then(|v| T::try_from(v).ok())
            .unwrap_or(out_of_range),
    ))
}

pub(crate) fn whole_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    whole_number(d, u64::MAX)
}

fn whole_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    whole_number(d, u32::MAX)
}

/// The optional fields a change removes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleared {
    pub business_numbers: bool,
    pub timeout_ms: bool,
    pub max_in_flight: bool,
}

/// What a webhook's endpoint answered to a test event.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    pub success: bool,
    pub status_code: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

fn invalid(message: impl Into<String>) -> WebhookError {
    WebhookError::Invalid(message.into())
}

/// The URL rule: [`URL_PATTERN`] (what the API document says), and a URL
/// the HTTP client can call.
fn validate_url(url: &str) -> Result<(), WebhookError> {
    static PATTERN: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(URL_PATTERN).expect("URL_PATTERN compiles"));
    if !PATTERN.is_match(url) {
        return Err(invalid(
            "webhook_url: must be http(s)://, a host name or IPv4 address, an optional port (0-65535), then no white space",
        ));
    }
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(invalid("webhook_url: must be an http(s) URL with a host")),
        Err(e) => Err(invalid(format!("webhook_url: {e}"))),
    }
}

fn validate_topics(topics: &[String]) -> Result<(), WebhookError> {
    if topics.is_empty() || topics.iter().any(|t| is_blank(t)) {
        return Err(invalid(
            "topics: must be a non-empty list of event types (or \"*\")",
        ));
    }
    Ok(())
}

/// Custom headers that can be sent as they are: names are HTTP tokens and
/// values hold no control character, checked here rather than dropped at
/// delivery.
fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), WebhookError> {
    if headers.len() > MAX_HEADERS {
        return Err(invalid(format!("headers: at most {MAX_HEADERS}")));
    }
    for (name, value) in headers {
        if reqwest::header::HeaderName::try_from(name.as_str()).is_err() {
            return Err(invalid(format!("headers: {name:?} is not a header name")));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(invalid(format!(
                "headers: the value of {name:?} holds a control character"
            )));
        }
    }
    Ok(())
}

/// A webhook's own limits, in range or refused naming the field.
fn validate_limits(
    timeout_ms: Option<u64>, max_in_flight: Option<u32>,
) -> Result<(), WebhookError> {
    if timeout_ms.is_some_and(|t| !TIMEOUT_MS.contains(&t)) {
        return Err(invalid(
            "timeout_ms: must be a whole number from 100 to 120000",
        ));
    }
    if max_in_flight.is_some_and(|m| !MAX_IN_FLIGHT.contains(&m)) {
        return Err(invalid(
            "max_in_flight: must be a whole number from 1 to 1000",
        ));
    }
    Ok(())
}

impl Forwarding {
    /// One webhook.
    pub async fn webhook(&self, id: &str) -> Result<WebhookConfig, WebhookError> {
        self.webhooks
            .get_webhook(id)
            .await?
            .ok_or(WebhookError::NotFound)
    }

    /// Checks and stores a new webhook with a fresh secret (unless signing
    /// is off).
    pub async fn create_webhook(&self, input: NewWebhook) -> Result<WebhookConfig, WebhookError> {
        if is_blank(&input.project_owner_id) {
            return Err(invalid("project_owner_id: required"));
        }
        validate_url(&input.webhook_url)?;
        let o = input.options;
        validate_limits(o.timeout_ms, o.max_in_flight)?;
        if let Some(headers) = &o.headers {
            validate_headers(headers)?;
        }
        // The legacy default subscription.
        let topics = o.topics.unwrap_or_else(|| vec!["datagen.delivery".into()]);
        validate_topics(&topics)?;
        let filter = checked_filter(o.filter)?;
        let now = Utc::now().timestamp_millis();
        let config = WebhookConfig {
            id: bson::oid::ObjectId::new().to_hex(),
            project_owner_id: input.project_owner_id,
            project_id: input.project_id,
            webhook_url: input.webhook_url,
            shared_secret: if o.enable_auth.unwrap_or(true) {
                new_secret()
            } else {
                String::new()
            },
            topics,
            created_at: now,
            updated_at: now,
            active: o.active,
            business_numbers: o.business_numbers,
            headers: o.headers,
            timeout_ms: o.timeout_ms,
            max_in_flight: o.max_in_flight,
            filter,
            previous_secret: None,
            previous_secret_expires_at: None,
        };
        self.webhooks.create_webhook(&config).await?;
        Ok(config)
    }

    /// Changes the given fields of a webhook; true when signing was turned
    /// on (its new secret is to be shown once).
    pub async fn update_webhook(
        &self, id: &str, input: WebhookChanges,
    ) -> Result<(WebhookConfig, bool), WebhookError> {
        let (o, clear) = (input.options, input.clear);
        if let Some(url) = &input.webhook_url {
            validate_url(url)?;
        }
        if let Some(topics) = &o.topics {
            validate_topics(topics)?;
        }
        validate_limits(o.timeout_ms, o.max_in_flight)?;
        if let Some(headers) = &o.headers {
            validate_headers(headers)?;
        }
        let filter = match o.filter {
            Some(f) => Some(checked_filter(Some(f))?),
            None => None,
        };
        // A value given replaces; a field cleared goes; the rest stays.
        let replace = |given: bool, cleared: bool| given || cleared;
        change_webhook(&*self.webhooks, id, |w| {
            let mut reveal = false;
            if let Some(url) = &input.webhook_url {
                w.webhook_url = url.clone();
            }
            if let Some(topics) = &o.topics {
                w.topics = topics.clone();
            }
            if let Some(p) = &input.project_id {
                w.project_id = p.clone();
            }
            match o.enable_auth {
                Some(true) if w.shared_secret.is_empty() => {
                    w.shared_secret = new_secret();
                    reveal = true;
                }
                Some(false) => w.shared_secret.clear(),
                _ => {}
            }
            if replace(o.business_numbers.is_some(), clear.business_numbers) {
                w.business_numbers = o.business_numbers.clone();
            }
            if o.headers.is_some() {
                w.headers = o.headers.clone();
            }
            if o.active.is_some() {
                w.active = o.active;
            }
            if replace(o.timeout_ms.is_some(), clear.timeout_ms) {
                w.timeout_ms = o.timeout_ms;
            }
            if replace(o.max_in_flight.is_some(), clear.max_in_flight) {
                w.max_in_flight = o.max_in_flight;
            }
            if let Some(f) = &filter {
                w.filter = f.clone();
            }
            Ok(reveal)
        })
        .await
    }

    /// Turns a webhook on or off.
    pub async fn set_active(&self, id: &str, active: bool) -> Result<WebhookConfig, WebhookError> {
        change_webhook(&*self.webhooks, id, |w| {
            w.active = Some(active);
            Ok(())
        })
        .await
        .map(|(w, ())| w)
    }

    /// Gives a webhook a new secret. For `grace`, every delivery is signed
    /// by both (the Standard Webhooks header carries both signatures; the
    /// legacy header the new one); then the old one is forgotten. A grace of
    /// zero retires the old secret at once.
    pub async fn rotate_secret(
        &self, id: &str, grace: Duration,
    ) -> Result<WebhookConfig, WebhookError> {
        if grace > MAX_GRACE {
            return Err(invalid(format!(
                "grace_period_seconds: at most {} (7 days)",
                MAX_GRACE.as_secs()
            )));
        }
        change_webhook(&*self.webhooks, id, |w| {
            let old = std::mem::replace(&mut w.shared_secret, new_secret());
            let until = Utc::now().timestamp_millis() + grace.as_millis() as i64;
            (w.previous_secret, w.previous_secret_expires_at) = if grace.is_zero() || old.is_empty()
            {
                (None, None)
            } else {
                (Some(old), Some(until))
            };
            Ok(())
        })
        .await
        .map(|(w, ())| w)
    }

    /// Sends a `test.webhook` event to a webhook now, signed as deliveries
    /// are, and says what its endpoint answered.
    pub async fn send_test(&self, id: &str) -> Result<TestOutcome, WebhookError> {
        let w = self.webhook(id).await?;
        let now = Utc::now();
        let job = ForwardJob {
            delivery_log_id: String::new(),
            project_owner_id: w.project_owner_id.clone(),
            webhook_id: w.id.clone(),
            webhook_url: w.webhook_url.clone(),
            shared_secret: None,
            event_type: "test.webhook".into(),
            event_id: format!("test_{}", now.timestamp_millis()),
            payload: json!({"test": true, "message": "This is a test webhook from zen-gateway", "timestamp": now.timestamp()}),
            timestamp: now.timestamp_millis(),
            attempt_count: 0,
            message: None,
            parked_since: None,
            v: 1,
            traceparent: None,
        };
        let o = self
            .forwarder
            .send(
                Endpoint {
                    url: &w.webhook_url,
                    secret: &w.shared_secret,
                    previous_secret: w.previous_secret_at(now.timestamp_millis()),
                    headers: w.headers.as_ref(),
                    timeout: w.timeout_ms.map(Duration::from_millis),
                },
                &job,
                &traces::carried(&tracing::Span::current(), None),
            )
            .await;
        Ok(TestOutcome {
            success: o.success(),
            status_code: o.status,
            response_body: o.body,
            error: o.error,
            duration_ms: o.duration.as_millis() as u64,
        })
    }
}

/// Forgets the previous secrets whose grace window closed (the pruner's
/// pass); returns how many. Signing already ignores them: this removes
/// them from the store.
pub async fn forget_expired_secrets(store: &dyn WebhookStore) -> StoreResult<u64> {
    let now = Utc::now().timestamp_millis();
    let mut n = 0;
    for w in store.list_webhooks(None).await? {
        // Conditional: a rotation since the list was read is not undone
        // (writing the listed webhook back would restore its old secret).
        if let (true, Some(expires)) = (w.holds_expired_secret(now), w.previous_secret_expires_at) {
            if store.forget_previous_secret(&w.id, expires).await? {
                n += 1;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read_beside_the_identity() {
        let n: NewWebhook = serde_json::from_str(
            r#"{"project_owner_id":"o","webhook_url":"https://x","topics":["a"],"timeout_ms":500}"#,
        )
        .unwrap();
        assert_eq!(n.options.topics, Some(vec!["a".to_owned()]));
        assert_eq!(n.options.timeout_ms, Some(500));
    }
}
