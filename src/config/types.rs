//! The typed values of the configuration: secrets that cannot print, roles,
//! retry schedules and durations, each parsed once when the settings load.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// What a secret shows wherever it is printed: logs, `check-config`, Debug.
pub const MASK: &str = "********";

/// A secret (an API key, a token, an HMAC key). Debug and Serialize show
/// [`MASK`]; the value is read only through [`Secret::expose`].
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

/// A backend URL that may carry a password (`amqp://user:pw@host`). It
/// prints with the password masked; [`SecretUrl::expose`] gives it whole.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        SecretUrl(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL as logs may show it: `scheme://user:****@host`; each of a
    /// comma-separated list (`RABBITMQ_URL`'s nodes) masked alike.
    pub fn masked(&self) -> String {
        self.expose()
            .split(',')
            .map(|url| {
                let Some((scheme, rest)) = url.split_once("://") else {
                    return MASK.to_owned();
                };
                match rest.rsplit_once('@') {
                    Some((creds, host)) => {
                        let user = creds.split(':').next().unwrap_or("");
                        format!("{scheme}://{user}:****@{host}")
                    }
                    None => url.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// A string setting where empty (after trimming) means unset.
pub(super) fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
}

pub(super) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(non_empty(d)?.map(Secret::new))
}

pub(super) fn secret_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretUrl>, D::Error> {
    Ok(non_empty(d)?.map(SecretUrl::new))
}

/// The roles of one process (`ROLES`, comma-separated; default all three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub processor: bool,
    pub forwarder: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        ingest: true,
        processor: true,
        forwarder: true,
    };

    pub fn is_all(&self) -> bool {
        *self == Roles::ALL
    }

    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.ingest, "ingest"),
            (self.processor, "processor"),
            (self.forwarder, "forwarder"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

impl Default for Roles {
    fn default() -> Self {
        Roles::ALL
    }
}

impl std::str::FromStr for Roles {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut r = Roles {
            ingest: false,
            processor: false,
            forwarder: false,
        };
        for role in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match role {
                "ingest" => r.ingest = true,
                "processor" => r.processor = true,
                "forwarder" => r.forwarder = true,
                other => {
                    return Err(format!(
                        "unknown role {other:?} (expected ingest, processor, forwarder)"
                    ));
                }
            }
        }
        if r.names().is_empty() {
            return Err("must name at least one role".into());
        }
        Ok(r)
    }
}

impl<'de> Deserialize<'de> for Roles {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Roles {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.names().join(","))
    }
}

/// The forwarder's retry schedule: one delay per retry, so the legacy
/// `3000,3000` is 3 attempts 3 s apart. Each delay is 1 ms to 24 h.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryDelays(pub Vec<Duration>);

impl std::str::FromStr for RetryDelays {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|ms| {
                ms.parse::<u64>()
                    .ok()
                    .filter(|d| (1..=86_400_000).contains(d))
                    .map(Duration::from_millis)
                    .ok_or_else(|| {
                        format!(
                            "{ms:?} is not a delay; give a comma-separated list of delays in ms \
                             (1..86400000)"
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(RetryDelays)
    }
}

impl<'de> Deserialize<'de> for RetryDelays {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for RetryDelays {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms: Vec<String> = self.0.iter().map(|d| d.as_millis().to_string()).collect();
        s.serialize_str(&ms.join(","))
    }
}

/// Durations: a bare number in the unit the key names (`…_MS`, `…_SECS`),
/// or a humantime duration (`90s`, `15m`, `90d`).
pub(super) struct DurationVisitor {
    unit: Duration,
}

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, or a duration such as 30s, 15m or 90d")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        self.unit
            .checked_mul(u32::try_from(v).map_err(|_| E::custom("duration too long"))?)
            .ok_or_else(|| E::custom("duration too long"))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        let v = u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative"))?;
        self.visit_u64(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        let v = v.trim();
        match v.parse::<u64>() {
            Ok(n) => self.visit_u64(n),
            Err(_) => humantime::parse_duration(v)
                .map_err(|e| E::custom(format!("{v:?} is not a duration ({e})"))),
        }
    }
}

pub(super) mod millis {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor {
            unit: Duration::from_millis(1),
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

pub(super) mod secs {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor {
            unit: Duration::from_secs(1),
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

/// A retention age: a duration with its unit (`90d`, `12h`), or `0` to keep
/// forever.
pub(super) mod retention {
    use super::*;

    pub fn parse(v: &str) -> Result<Option<Duration>, String> {
        let v = v.trim();
        if v == "0" {
            return Ok(None);
        }
        if v.parse::<f64>().is_ok() {
            return Err(format!(
                "{v:?} has no unit; give one (90d, 12h), or 0 to keep forever"
            ));
        }
        humantime::parse_duration(v)
            .map(|d| (!d.is_zero()).then_some(d))
            .map_err(|e| format!("{v:?} is not a duration ({e})"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let v = String::deserialize(d)?;
        parse(&v).map_err(de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            None => s.serialize_str("0"),
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }
}

/// A duration with its unit (`5m`, `30s`).
pub(super) mod humantime_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = String::deserialize(d)?;
        humantime::parse_duration(v.trim())
            .map_err(|e| de::Error::custom(format!("{v:?} is not a duration ({e})")))
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), MASK);
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{MASK}\""));
        assert_eq!(s.expose(), "hunter2");
        let u = SecretUrl::new("amqp://user:pw@mq:5672/");
        assert_eq!(format!("{u:?}"), "amqp://user:****@mq:5672/");
        let nodes = SecretUrl::new("amqp://u:p1@mq1:5672/,amqp://u:p2@mq2:5672/");
        assert_eq!(
            nodes.masked(),
            "amqp://u:****@mq1:5672/,amqp://u:****@mq2:5672/"
        );
        assert_eq!(u.expose(), "amqp://user:pw@mq:5672/");
        assert_eq!(SecretUrl::new("no scheme").masked(), MASK);
    }

    #[test]
    fn roles_and_delays_parse_once() {
        let r: Roles = "ingest, forwarder".parse().unwrap();
        assert!(r.ingest && !r.processor && r.forwarder);
        assert!("".parse::<Roles>().is_err());
        assert!("router".parse::<Roles>().unwrap_err().contains("router"));
        let d: RetryDelays = "3000, 500".parse().unwrap();
        assert_eq!(
            d.0,
            [Duration::from_secs(3), Duration::from_millis(500)].to_vec()
        );
        assert!("0".parse::<RetryDelays>().is_err());
        assert!("3s".parse::<RetryDelays>().is_err());
    }

    #[test]
    fn retention_ages_need_a_unit_and_zero_keeps_forever() {
        assert_eq!(retention::parse("0"), Ok(None));
        assert_eq!(
            retention::parse("90d"),
            Ok(Some(Duration::from_secs(90 * 86_400)))
        );
        assert!(retention::parse("90").unwrap_err().contains("unit"));
        assert!(retention::parse("soon").is_err());
    }
}

/// How the gateway's queues are declared (`RABBITMQ_QUEUE_TYPE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Classic queues with the legacy arguments (drop-in).
    #[default]
    Classic,
    /// Replicated quorum queues (a cluster that outlives a node).
    Quorum,
}

/// The broker addresses of `RABBITMQ_URL`: one URI, or several separated
/// by commas (each a whole `amqp://` / `amqps://` URI with its own
/// credentials), tried in order.
pub fn broker_addresses(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect()
}
