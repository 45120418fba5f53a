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
    /// in) that is not itself a trusted proxy. Walking stops at an element that is not an
    /// address; the client is then the last address reached (the peer, at worst).
    ///
    /// `lines` are every `X-Forwarded-For` header line in the order received. They are one
    /// comma-separated list (RFC 9110 §5.3), as nginx's realip module reads them: a proxy
    /// that appends a line of its own (HAProxy's `option forwardfor`) puts the address it
    /// saw last, and reading only the first line would believe the one the client wrote.
    pub fn client<'a>(
        &self,
        peer: SocketAddr,
        lines: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let peer_ip = peer.ip();
        if !self.contains(peer_ip) {
            return peer_ip;
        }
        let mut client = peer_ip;
        // Per element, not per line: garbage the client wrote further left cannot hide
        // the addresses the proxies appended to its right.
        for hop in lines.rev().flat_map(|line| line.rsplit(|&b| b == b',')) {
            let Some(ip) = std::str::from_utf8(hop)
                .ok()
                .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
            else {
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

/// Whether a browser's `Origin` is on the `--origin` allow-list; `lines` are every `Origin`
/// header line of the request. An empty list allows every origin. A request without
/// `Origin` is not from a browser page (browsers always send it on WebSocket upgrades),
/// and the allow-list exists to stop other sites' pages from using a visitor's
/// credentials, so it is let through. A request with two `Origin` lines is refused, list
/// or not: RFC 6454 §7.3 gives a user agent one origin to send, so two come from no
/// browser, and a proxy in front may have judged the other one.
pub fn origin_allowed<'a>(allowed: &[String], mut lines: impl Iterator<Item = &'a [u8]>) -> bool {
    let Some(origin) = lines.next() else {
        return true;
    };
    if lines.next().is_some() {
        return false;
    }
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

    fn lines<'a>(list: &'a [&'a str]) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        list.iter().map(|l| l.as_bytes())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// HAProxy's `option forwardfor` adds a line of its own after the client's: the lines
    /// are one list, so the address the proxy saw is the one believed.
    #[test]
    fn every_forwarded_for_line_is_one_list_in_order() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let at = |xff: &[&str]| trusted.client(peer("10.0.0.1"), lines(xff));
        assert_eq!(at(&["6.6.6.6", "198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(
            at(&["6.6.6.6, 7.7.7.7", "198.51.100.7"]),
            ip("198.51.100.7")
        );
        // Two proxies, each appending a line: the walk crosses line boundaries.
        assert_eq!(
            at(&["6.6.6.6", "198.51.100.7", "10.9.9.9"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            at(&["6.6.6.6", "198.51.100.7, 10.2.2.2", "10.9.9.9"]),
            ip("198.51.100.7")
        );
        // What the client wrote left of the proxy's line never matters, however broken.
        assert_eq!(at(&["garbage", "198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(at(&["", "198.51.100.7"]), ip("198.51.100.7"));
        let not_utf8: [&[u8]; 2] = [b"\xff\xfe", b"198.51.100.7"];
        assert_eq!(
            trusted.client(peer("10.0.0.1"), not_utf8.into_iter()),
            ip("198.51.100.7")
        );
        // Only trusted hops to the right: the walk goes on to the client's own line.
        assert_eq!(at(&["6.6.6.6", "10.2.2.2"]), ip("6.6.6.6"));
        // A broken element on the right stops the walk where it is.
        assert_eq!(at(&["6.6.6.6", "10.2.2.2, junk"]), ip("10.0.0.1"));
        assert_eq!(at(&["6.6.6.6", "junk, 10.2.2.2"]), ip("10.2.2.2"));
        // From an untrusted peer no line counts.
        assert_eq!(
            trusted.client(peer("203.0.113.9"), lines(&["1.1.1.1", "2.2.2.2"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn forwarded_for_is_ignored_from_an_untrusted_peer() {
        let trusted = proxies(&["10.0.0.1"]);
        let client = trusted.client(peer("203.0.113.9"), lines(&["1.2.3.4"]));
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let xff = ["6.6.6.6, 198.51.100.7, 10.1.2.3"];
        let client = trusted.client(peer("10.0.0.1"), lines(&xff));
        assert_eq!(
            client,
            "198.51.100.7".parse::<IpAddr>().unwrap(),
            "6.6.6.6 is client-written"
        );
        assert_eq!(
            trusted.client(peer("10.0.0.1"), lines(&[])),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client(peer("10.0.0.1"), lines(&["not an address"])),
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
        let one = |origin: &'static str| std::iter::once(origin.as_bytes());
        assert!(origin_allowed(&list, one("https://chat.example")));
        assert!(origin_allowed(&list, one("HTTPS://Chat.Example/")));
        assert!(!origin_allowed(&list, one("https://evil.example")));
        assert!(!origin_allowed(&list, one("https://chat.example.evil")));
        assert!(origin_allowed(&list, std::iter::empty()), "not a browser");
        assert!(origin_allowed(&[], one("https://anything")));
    }

    #[test]
    fn two_origin_lines_are_refused_with_or_without_a_list() {
        let list = ["https://chat.example".to_string()];
        for allowed in [&list[..], &[]] {
            for pair in [
                ["https://chat.example", "https://chat.example"],
                ["https://chat.example", "https://evil.example"],
                ["https://evil.example", "https://chat.example"],
                ["", "https://chat.example"],
            ] {
                let lines = pair.iter().map(|o| o.as_bytes());
                assert!(!origin_allowed(allowed, lines), "{pair:?} {allowed:?}");
            }
        }
    }
}
