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
            if seg0 == 0x2002 {
                return forbidden_v4(embedded(seg[1], seg[2]));
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

/// Resolves a URL's host name and refuses it when any of its addresses is
/// not public (used when a proxy, not our resolver, connects to it).
pub async fn check_resolved_host(url: &reqwest::Url) -> Result<(), Refused> {
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(()); // literal IPs: see `check_literal_host`
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| {
            Refused(format!(
                "refused to forward to {host}: cannot resolve it: {e}"
            ))
        })?
        .collect();
    if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
        return Err(Refused(format!(
            "refused to forward to {host}: it resolves to the non-public address {}",
            bad.ip()
        )));
    }
    Ok(())
}

/// A resolver that drops non-public addresses, failing when none is left.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_forbidden(a.ip()))
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
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
            "2002:808:808::1",  // 6to4 of 8.8.8.8
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
