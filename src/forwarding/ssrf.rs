//! Refuses to forward to private, loopback, link-local (cloud metadata),
//! CGNAT and other non-public addresses, checked where the address is known:
//! at DNS resolution (a resolver for the HTTP client) and for literal IPs in
//! the URL. `FORWARD_ALLOW_PRIVATE=true` turns it off (local receivers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is not a public unicast address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let seg = v6.segments();
            let seg0 = seg[0];
            // Addresses that carry an IPv4 one, which a gateway or the host
            // may reach: judged by it (and refused outright when it is not
            // public): NAT64 64:ff9b::/96, 6to4 2002::/16, IPv4-compatible
            // ::a.b.c.d (deprecated, but routed by some stacks).
            let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return forbidden_v4(embedded(seg[6], seg[7]));
            }
            // Local-use NAT64 64:ff9b:1::/48 (RFC 8215): an operator's own
            // translator, which reaches whatever IPv4 it is given. The
            // address sits after a /48 prefix (RFC 6052: bits 48-63 and
            // 72-87) or, with a /96 inside it, in the last 32 bits; refused
            // when either reading is not public.
            if seg[..3] == [0x64, 0xff9b, 0x1] {
                let o = v6.octets();
                let after_48 = Ipv4Addr::new(o[6], o[7], o[9], o[10]);
                return forbidden_v4(after_48) || forbidden_v4(embedded(seg[6], seg[7]));
            }
            if seg0 == 0x2002 {
                return forbidden_v4(embedded(seg[1], seg[2]));
            }
            // Teredo 2001::/32: the server's IPv4 in bits 32-63, the
            // client's, inverted, in the last 32.
            if seg0 == 0x2001 && seg[1] == 0 {
                return forbidden_v4(embedded(seg[2], seg[3]))
                    || forbidden_v4(embedded(!seg[6], !seg[7]));
            }
            if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return forbidden_v4(embedded(seg[6], seg[7]));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // link-local fe80::/10
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) // AWS metadata v6
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local() // 169.254.0.0/16, incl. 169.254.169.254 metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18.0.0/15
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments 192.0.0.0/24
        || a == 0
        || a >= 240
}

/// A target the guard refuses; it will not become allowed by retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Checks a URL's host when it is a literal IP (DNS never sees those).
pub fn check_literal_host(url: &reqwest::Url) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(d)) => match d.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return Ok(()),
        },
        None => return Err(Refused("refused to forward to a URL without a host".into())),
    };
    if is_forbidden(ip) {
        return Err(Refused(format!(
            "refused to forward to non-public address {ip}"
        )));
    }
    Ok(())
}

/// Why a target checked before a proxied delivery was not sent to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// It is not a public address: never allowed, not retried.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Its name did not resolve now (DNS down, a lapsed record): retried
    /// like any transport error.
    #[error("cannot resolve {0}")]
    Unresolved(String),
}

/// Resolves a URL's host name and refuses it when any of its addresses is
/// not public (used when a proxy, not our resolver, connects to it).
pub async fn check_resolved_host(url: &reqwest::Url) -> Result<(), TargetError> {
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(()); // literal IPs: see `check_literal_host`
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| TargetError::Unresolved(format!("{host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(TargetError::Unresolved(format!("{host}: no address")));
    }
    if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
        return Err(Refused(format!(
            "refused to forward to {host}: it resolves to the non-public address {}",
            bad.ip()
        ))
        .into());
    }
    Ok(())
}

/// A resolver that drops non-public addresses, failing when none is left.
/// The proxy's own host (`FORWARD_PROXY`), which the client resolves to
/// reach it, is the operator's and trusted: it is resolved as it is
/// (a proxy inside the network is the usual case), while every target
/// behind it is checked by [`check_resolved_host`].
#[derive(Debug, Clone, Default)]
pub struct PublicOnlyResolver {
    trusted_host: Option<String>,
}

impl PublicOnlyResolver {
    /// Resolves `proxy_host` without the guard.
    pub fn trusting(proxy_host: Option<String>) -> Self {
        PublicOnlyResolver {
            trusted_host: proxy_host.map(|h| h.to_ascii_lowercase()),
        }
    }
}

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let trusted = self
            .trusted_host
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(name.as_str()));
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // A lookup failure is an io error: the delivery is retried.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| trusted || !is_forbidden(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(Refused(format!(
                    "refused to forward to {host}: it resolves only to non-public addresses"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
            "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
            "64:ff9b::7f00:1",    // NAT64 of 127.0.0.1
            "2002:7f00:1::",      // 6to4 of 127.0.0.1
            "2002:c0a8:101::1",   // 6to4 of 192.168.1.1
            "::10.0.0.1",         // IPv4-compatible
            "::127.0.0.1",
            "64:ff9b:1:7f00:1::",       // local NAT64 /48 of 127.0.0.1
            "64:ff9b:1:a9fe:a9:fe00::", // local NAT64 /48 of 169.254.169.254
            "64:ff9b:1::a00:1",         // local NAT64 /96 of 10.0.0.1
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo, client 127.0.0.1
            "2001:0:c0a8:101::1",       // Teredo, server 192.168.1.1
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.8",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for ok in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "100.128.0.1",
            "64:ff9b::808:808",             // NAT64 of 8.8.8.8
            "2002:808:808::1",              // 6to4 of 8.8.8.8
            "64:ff9b:1:808:8:800:808:808",  // local NAT64 of 8.8.8.8 both ways
            "2001:0:808:808:0:0:f7f7:f7f7", // Teredo, 8.8.8.8 both ends
            "198.20.0.1",
            "192.0.1.1",
        ] {
            assert!(!is_forbidden(ok.parse().unwrap()), "{ok}");
        }
        let url = reqwest::Url::parse("http://[::1]:8080/x").unwrap();
        assert!(check_literal_host(&url).is_err());
        let url = reqwest::Url::parse("http://169.254.169.254/latest").unwrap();
        assert!(check_literal_host(&url).is_err());
        let url = reqwest::Url::parse("https://example.com/hook").unwrap();
        assert!(check_literal_host(&url).is_ok());
    }
}
