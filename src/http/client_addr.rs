//! Who the client is, for limits keyed per client: the connection's peer,
//! or, when the peer is one of `TRUSTED_PROXIES`, the rightmost
//! `X-Forwarded-For` hop that is not itself a trusted proxy. Anyone can
//! write `X-Forwarded-For`, so it counts only from proxies we trust, and
//! only the hops they appended (the rightmost ones).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use crate::config::{TrustedProxies, canonical};

/// The address a request's limits are keyed on.
pub fn client_ip(
    trusted: &TrustedProxies, peer: Option<SocketAddr>, headers: &HeaderMap,
) -> IpAddr {
    let peer = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| canonical(p.ip()));
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    // Every X-Forwarded-For line, in order, as one list of hops.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Not an address: what a trusted proxy received is unknown
            // beyond here, so the last trusted hop stands for the client.
            return client;
        };
        if !trusted.contains(ip) {
            return ip;
        }
        client = ip;
    }
    client
}

/// A hop as proxies write it: an address, maybe with a port
/// (`203.0.113.7:5411`, `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<SocketAddr>().ok().map(|a| canonical(a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies_and_from_the_right() {
        let none = TrustedProxies::default();
        let lb: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let spoofed = headers(&["1.2.3.4"]);
        // No trusted proxy: the peer, whatever the header says.
        assert_eq!(
            client_ip(&none, peer("203.0.113.9"), &spoofed),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A peer that is not a trusted proxy: the peer.
        assert_eq!(
            client_ip(&lb, peer("203.0.113.9"), &spoofed),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Through the load balancer: the rightmost untrusted hop, not the
        // leftmost one the client wrote itself.
        let through = headers(&["1.2.3.4, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            client_ip(&lb, peer("10.0.0.1"), &through),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Ports and brackets as proxies write them.
        assert_eq!(
            client_ip(&lb, peer("10.0.0.1"), &headers(&["[2001:db8::5]:443"])),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_ip(
                &lb,
                peer("10.0.0.1"),
                &headers(&["1.2.3.4, junk, 10.0.0.3"])
            ),
            "10.0.0.3".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(&lb, peer("10.0.0.1"), &HeaderMap::new()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
