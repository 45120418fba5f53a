//! The client's real address behind a reverse proxy. `X-Forwarded-For` is believed only
//! when the TCP peer is a proxy the operator named (`--trusted-proxy`): anyone else could
//! write any address into it.

use std::net::{IpAddr, SocketAddr};

/// Networks whose members are trusted proxies.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// Parses `--trusted-proxy` values: an address (`10.0.0.5`, `::1`) or a network in
    /// CIDR form (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse(values: &[String]) -> Result<TrustedProxies, String> {
        let mut nets = Vec::with_capacity(values.len());
        for value in values {
            let bad = || format!("--trusted-proxy: expected an IP address or CIDR, got '{value}'");
            let (ip, prefix) = match value.split_once('/') {
                Some((ip, prefix)) => (ip, Some(prefix)),
                None => (value.as_str(), None),
            };
            let ip: IpAddr = ip.trim().parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|&p| p <= max)
                    .ok_or_else(bad)?,
                None => max,
            };
            nets.push((ip, prefix));
        }
        Ok(TrustedProxies { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets
            .iter()
            .any(|&(net, prefix)| in_net(ip, canonical(net), prefix))
    }

    /// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
    /// nearest address in `X-Forwarded-For` (read right to left, the order proxies append
    /// in) that is not itself a trusted proxy. A header that does not parse is ignored.
    pub fn client(&self, peer: SocketAddr, forwarded_for: Option<&[u8]>) -> IpAddr {
        let peer_ip = peer.ip();
        if !self.contains(peer_ip) {
            return peer_ip;
        }
        let Some(header) = forwarded_for.and_then(|h| std::str::from_utf8(h).ok()) else {
            return peer_ip;
        };
        let mut client = peer_ip;
        for hop in header.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses (what a dual-stack socket reports) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Whether a browser's `Origin` is on the `--origin` allow-list. An empty list allows
/// every origin. A request without `Origin` is not from a browser page (browsers always
/// send it on WebSocket upgrades), and the allow-list exists to stop other sites' pages
/// from using a visitor's credentials, so it is let through.
pub fn origin_allowed(allowed: &[String], origin: Option<&[u8]>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed.is_empty() {
        return true;
    }
    let origin = String::from_utf8_lossy(origin);
    let origin = origin.trim().trim_end_matches('/');
    allowed
        .iter()
        .any(|a| a.trim().trim_end_matches('/').eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    #[test]
    fn forwarded_for_is_ignored_from_an_untrusted_peer() {
        let trusted = proxies(&["10.0.0.1"]);
        let client = trusted.client(peer("203.0.113.9"), Some(b"1.2.3.4"));
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let xff = b"6.6.6.6, 198.51.100.7, 10.1.2.3";
        let client = trusted.client(peer("10.0.0.1"), Some(xff));
        assert_eq!(
            client,
            "198.51.100.7".parse::<IpAddr>().unwrap(),
            "6.6.6.6 is client-written"
        );
        assert_eq!(
            trusted.client(peer("10.0.0.1"), None),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client(peer("10.0.0.1"), Some(b"not an address")),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn networks_and_mapped_addresses() {
        let trusted = proxies(&["192.168.0.0/16", "fd00::/8", "127.0.0.1"]);
        assert!(trusted.contains("192.168.44.1".parse().unwrap()));
        assert!(!trusted.contains("192.169.0.1".parse().unwrap()));
        assert!(trusted.contains("fd12::1".parse().unwrap()));
        assert!(trusted.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!trusted.contains("127.0.0.2".parse().unwrap()));
        assert!(proxies(&["0.0.0.0/0"]).contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn bad_proxy_values_are_refused() {
        for bad in ["", "10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x"] {
            assert!(TrustedProxies::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let list = vec!["https://chat.example".to_string()];
        assert!(origin_allowed(&list, Some(b"https://chat.example")));
        assert!(origin_allowed(&list, Some(b"HTTPS://Chat.Example/")));
        assert!(!origin_allowed(&list, Some(b"https://evil.example")));
        assert!(!origin_allowed(&list, Some(b"https://chat.example.evil")));
        assert!(origin_allowed(&list, None), "not a browser");
        assert!(origin_allowed(&[], Some(b"https://anything")));
    }
}
