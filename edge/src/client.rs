//! Who the client is: the socket peer, or — only when the peer is a proxy named by `--trusted-proxy` — the
//! right-most address in `X-Forwarded-For` that is not itself a trusted proxy. Rate limits are keyed by
//! this address, and the sandbox receives it in `X-Forwarded-For`. PROXY protocol is not read.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use pingora::http::RequestHeader;
use pingora::proxy::Session;

/// Forwarded addresses past this many are not looked at: a client cannot make the edge walk a huge list.
const MAX_HOPS: usize = 32;

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a one-address block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address block (expected e.g. 10.0.0.0/8, 2001:db8::/32 or 192.0.2.1)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError(s.to_string());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let network = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(net.into(), ip.into(), 128, self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let shift = u32::from(bits - prefix);
    // A /0 compares nothing; `>> 128` would overflow.
    shift >= u32::from(bits) || (a >> shift) == (b >> shift)
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, what a dual-stack socket reports) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The proxies whose `X-Forwarded-For` the edge believes (`--trusted-proxy`, repeatable).
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(cidrs: Vec<Cidr>) -> Self {
        Self(cidrs)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client of this request (see the module comment); `None` only when the peer is not an IP socket.
    pub fn client_ip(&self, session: &Session) -> Option<IpAddr> {
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())?;
        Some(self.resolve(peer, session.req_header()))
    }

    /// Whether the socket peer is a trusted proxy, whose own headers (`X-Request-Id`) are believed.
    pub fn peer_trusted(&self, session: &Session) -> bool {
        // Most edges trust no proxy: then the peer's address is not worth fetching.
        !self.0.is_empty()
            && session.client_addr().and_then(|a| a.as_inet()).is_some_and(|a| self.trusts(canonical(a.ip())))
    }

    /// Walks `X-Forwarded-For` from the right while each hop is trusted. An entry that does not parse ends
    /// the walk at the last trusted hop: beyond it nothing can be believed.
    pub fn resolve(&self, peer: IpAddr, req: &RequestHeader) -> IpAddr {
        let mut client = canonical(peer);
        if self.0.is_empty() || !self.trusts(client) {
            return client;
        }
        let values: Vec<&str> =
            req.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
        // Several header lines form one list, in order.
        let hops = values.iter().rev().flat_map(|v| v.rsplit(',')).take(MAX_HOPS);
        for hop in hops {
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[2001:db8::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip =
        hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))?;
    Some(canonical(ip))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(xff: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in xff {
            r.append_header("x-forwarded-for", *v).unwrap();
        }
        r
    }

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|c| c.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match_both_families() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.255.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "mapped IPv4 is IPv4");
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        for bad in ["", "10.0.0.0/33", "::/129", "example.com/8", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(t.resolve(ip("198.51.100.1"), &req(&["203.0.113.9"])), ip("198.51.100.1"));
        assert_eq!(TrustedProxies::default().resolve(ip("10.0.0.1"), &req(&["203.0.113.9"])), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_yields_the_rightmost_untrusted_forwarded_address() {
        let t = trusted(&["10.0.0.0/8"]);
        // The left-most entry is whatever the client claimed; only the right-most untrusted one is known.
        let r = req(&["1.1.1.1, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(t.resolve(ip("10.0.0.1"), &r), ip("203.0.113.9"));
        let split = req(&["1.1.1.1", "203.0.113.9:4711, 10.0.0.2"]);
        assert_eq!(t.resolve(ip("10.0.0.1"), &split), ip("203.0.113.9"), "header lines join, ports drop");
        let v6 = req(&["[2001:db8::5]:80"]);
        assert_eq!(t.resolve(ip("::ffff:10.0.0.1"), &v6), ip("2001:db8::5"));
    }

    #[test]
    fn a_trusted_peer_without_a_usable_forwarded_address_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(t.resolve(ip("10.0.0.1"), &req(&[])), ip("10.0.0.1"));
        assert_eq!(t.resolve(ip("10.0.0.1"), &req(&["10.0.0.7"])), ip("10.0.0.7"), "all hops trusted");
        assert_eq!(
            t.resolve(ip("10.0.0.1"), &req(&["203.0.113.9, garbage, 10.0.0.7"])),
            ip("10.0.0.7"),
            "nothing left of an unparsable hop is believed"
        );
    }
}
