//! Who may do what at the door: which webhook routes are verified, open or
//! refused, which proxies may name the client, and the limits on guessing
//! keys. Data and the rules over it; the HTTP edge applies them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::types::{Secret, humantime_duration, secret};
use crate::model::Bsp;

/// What one provider's webhooks must present.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InboundCredentials {
    pub token: Option<Secret>,
    pub secret: Option<Secret>,
    /// The `hub.verify_token` of the provider's subscription handshake (it
    /// authenticates nothing posted).
    pub verify_token: Option<Secret>,
}

impl InboundCredentials {
    pub fn is_configured(&self) -> bool {
        self.token.is_some() || self.secret.is_some() || self.verify_token.is_some()
    }

    /// A token or a signature is checked on every webhook posted.
    pub fn verifies(&self) -> bool {
        self.token.is_some() || self.secret.is_some()
    }
}

/// How a provider's webhook routes treat a request (docs/SECURITY.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteTrust {
    /// Its token or signature is configured and checked.
    Verified,
    /// Anyone who reaches it may post: nothing is verified anywhere, or the
    /// operator named it in `INBOUND_OPEN_ROUTES`.
    Open,
    /// Other routes are verified and this one is not named open: refused
    /// (401), so an unauthenticated sender cannot write into records that a
    /// verified provider keeps.
    Refused,
}

/// The trust rule, once: a route with credentials is verified; without,
/// it is open while no route is verified (the legacy gateway's behaviour)
/// or when the operator names it, and refused otherwise.
pub fn route_trust(
    credentials: &BTreeMap<Bsp, InboundCredentials>, open_routes: &BTreeSet<Bsp>, bsp: Bsp,
) -> RouteTrust {
    if credentials
        .get(&bsp)
        .is_some_and(InboundCredentials::verifies)
    {
        RouteTrust::Verified
    } else if open_routes.contains(&bsp) || !credentials.values().any(InboundCredentials::verifies)
    {
        RouteTrust::Open
    } else {
        RouteTrust::Refused
    }
}

/// Every provider by the trust of its routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrustReport {
    pub verified: Vec<Bsp>,
    pub open: Vec<Bsp>,
    pub refused: Vec<Bsp>,
}

impl TrustReport {
    pub fn of(
        credentials: &BTreeMap<Bsp, InboundCredentials>, open_routes: &BTreeSet<Bsp>,
    ) -> TrustReport {
        let mut report = TrustReport::default();
        for bsp in Bsp::ALL {
            match route_trust(credentials, open_routes, bsp) {
                RouteTrust::Verified => report.verified.push(bsp),
                RouteTrust::Open => report.open.push(bsp),
                RouteTrust::Refused => report.refused.push(bsp),
            }
        }
        report
    }
}

/// The access settings (`INBOUND_*`, `TRUSTED_PROXIES`, `AUTH_FAILURE_*`,
/// `METRICS_TOKEN`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AccessSettings {
    /// Refuse to start while any webhook route is open.
    pub inbound_require_auth: bool,
    /// Routes without credentials that stay open although others are
    /// verified (provider names, comma-separated).
    #[serde(with = "bsp_set")]
    pub inbound_open_routes: BTreeSet<Bsp>,
    /// Proxies whose `X-Forwarded-For` names the client (addresses or
    /// CIDR blocks, comma-separated); from anyone else it is ignored.
    pub trusted_proxies: TrustedProxies,
    /// Failed admin-key attempts (API or console) one client may make per
    /// window before 429.
    pub auth_failure_limit: u32,
    #[serde(with = "humantime_duration")]
    pub auth_failure_window: Duration,
    /// Bearer token `GET /metrics` requires; unset: open (scrapers inside
    /// the cluster).
    #[serde(default, deserialize_with = "secret")]
    pub metrics_token: Option<Secret>,
}

mod bsp_set {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<Bsp>, D::Error> {
        let v = String::deserialize(d)?;
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                Bsp::parse(name).ok_or_else(|| {
                    let known: Vec<&str> = Bsp::ALL.iter().map(|b| b.as_str()).collect();
                    de::Error::custom(format!(
                        "unknown provider {name:?} (expected one of {})",
                        known.join(", ")
                    ))
                })
            })
            .collect()
    }

    pub fn serialize<S: Serializer>(v: &BTreeSet<Bsp>, s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<&str> = v.iter().map(|b| b.as_str()).collect();
        s.serialize_str(&names.join(","))
    }
}

/// Networks whose peers are proxies we trust to say who the client is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An IPv4 address written as IPv4-mapped IPv6 is the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                item.parse::<ipnet::IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("{item:?} is not an address or CIDR block (10.0.0.0/8, ::1)")
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let nets: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        s.serialize_str(&nets.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(token: bool) -> InboundCredentials {
        InboundCredentials {
            token: token.then(|| "t".into()),
            ..Default::default()
        }
    }

    #[test]
    fn one_verified_route_closes_the_unnamed_others() {
        let none = BTreeMap::new();
        let open = BTreeSet::new();
        assert_eq!(route_trust(&none, &open, Bsp::Meta), RouteTrust::Open);
        let datagen = BTreeMap::from([(Bsp::Datagen, creds(true))]);
        assert_eq!(
            route_trust(&datagen, &open, Bsp::Datagen),
            RouteTrust::Verified
        );
        assert_eq!(route_trust(&datagen, &open, Bsp::Meta), RouteTrust::Refused);
        let named = BTreeSet::from([Bsp::Meta]);
        assert_eq!(route_trust(&datagen, &named, Bsp::Meta), RouteTrust::Open);
        // A handshake token alone verifies nothing that is posted.
        let handshake = BTreeMap::from([(
            Bsp::Meta,
            InboundCredentials {
                verify_token: Some("v".into()),
                ..Default::default()
            },
        )]);
        assert_eq!(route_trust(&handshake, &open, Bsp::Meta), RouteTrust::Open);
        let report = TrustReport::of(&datagen, &named);
        assert_eq!(report.verified, [Bsp::Datagen]);
        assert_eq!(report.open, [Bsp::Meta]);
        assert_eq!(report.refused.len(), Bsp::ALL.len() - 2);
    }

    #[test]
    fn trusted_proxies_take_addresses_and_blocks() {
        let p: TrustedProxies = "10.0.0.0/8, 127.0.0.1,::1".parse().unwrap();
        assert!(p.contains("10.1.2.3".parse().unwrap()));
        assert!(p.contains("127.0.0.1".parse().unwrap()));
        assert!(p.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(p.contains("::1".parse().unwrap()));
        assert!(!p.contains("127.0.0.2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("proxy.internal".parse::<TrustedProxies>().is_err());
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
    }
}
