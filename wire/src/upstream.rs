//! Where sandboxes and deployment instances may live: control checks addresses against it when it accepts
//! them, edges check every address they are about to dial (SPEC §7 "Upstream policy").

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `control`'s default: the private ranges, no loopback.
pub const DEFAULT_UPSTREAM_ALLOW: &[&str] =
    &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"];

/// What `portico up` adds, so sandboxes on the developer's machine are reachable.
pub const UP_UPSTREAM_ALLOW: &[&str] = &["127.0.0.0/8", "::1/128"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR such as 10.0.0.0/8 or fc00::/7 (an address alone is one host)")]
pub struct CidrError(String);

/// An IP network: the address with the host bits cleared, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Mapped IPv4 (`::ffff:a.b.c.d`) counts as the IPv4 address, so it cannot dodge a v4 rule.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask_v4(a, self.prefix) == n,
            (IpAddr::V6(n), IpAddr::V6(a)) => mask_v6(a, self.prefix) == n,
            _ => false,
        }
    }

    /// Whether every address of `self` lies in `outer`.
    pub fn within(&self, outer: &Cidr) -> bool {
        self.prefix >= outer.prefix && outer.contains(self.network)
    }

    fn special(network: IpAddr, prefix: u8) -> Self {
        Self { network, prefix }
    }
}

fn mask_v4(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(a);
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(a: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(a);
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
    Ipv6Addr::from(bits & mask)
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `a.b.c.d/n` or `v6/n`; a bare address is the one host. Host bits must be zero: `10.1.2.3/8` is
    /// more likely a typo than a wish for all of 10/8.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = addr.trim().parse().map_err(|_| err())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| err())?
            }
            Some(_) => return Err(err()),
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        let network = match ip {
            IpAddr::V4(a) => IpAddr::V4(mask_v4(a, prefix)),
            IpAddr::V6(a) => IpAddr::V6(mask_v6(a, prefix)),
        };
        if network != ip {
            return Err(err());
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> Self {
        c.to_string()
    }
}

/// Ranges a tenant must never reach by accident: the edge's own loopback services, cloud metadata on
/// link-local, and addresses that are not one host. Such an address passes only when a listed CIDR lies
/// inside the special range (so `127.0.0.0/8` allows loopback, `0.0.0.0/0` does not).
fn special_range(ip: IpAddr) -> Option<Cidr> {
    let v4 = |a: [u8; 4], p| Cidr::special(IpAddr::V4(Ipv4Addr::from(a)), p);
    let v6 = |a: u128, p| Cidr::special(IpAddr::V6(Ipv6Addr::from(a)), p);
    match ip.to_canonical() {
        IpAddr::V4(a) if a.is_loopback() => Some(v4([127, 0, 0, 0], 8)),
        IpAddr::V4(a) if a.is_link_local() => Some(v4([169, 254, 0, 0], 16)),
        IpAddr::V4(a) if a.is_unspecified() => Some(v4([0, 0, 0, 0], 32)),
        IpAddr::V4(a) if a.is_multicast() => Some(v4([224, 0, 0, 0], 4)),
        IpAddr::V4(a) if a.is_broadcast() => Some(v4([255, 255, 255, 255], 32)),
        IpAddr::V6(a) if a.is_loopback() => Some(v6(1, 128)),
        IpAddr::V6(a) if a.is_unspecified() => Some(v6(0, 128)),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some(v6(0xfe80 << 112, 10)),
        IpAddr::V6(a) if a.is_multicast() => Some(v6(0xff00 << 112, 8)),
        _ => None,
    }
}

/// Whether `ip` may be dialled under `allow` (the global list), narrowed by a tenant's `narrow` if set.
pub fn allowed(ip: IpAddr, allow: &[Cidr], narrow: Option<&[Cidr]>) -> bool {
    let special = special_range(ip);
    let admits = |c: &Cidr| c.contains(ip) && special.is_none_or(|s| c.within(&s));
    allow.iter().any(admits) && narrow.is_none_or(|n| n.iter().any(admits))
}

/// Parses a list such as the defaults above.
pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Cidr>, CidrError> {
    items.iter().map(|s| s.as_ref().parse()).collect()
}

pub fn default_allow() -> Vec<Cidr> {
    // The constants are well-formed; an entry that failed would only make the default stricter.
    DEFAULT_UPSTREAM_ALLOW.iter().filter_map(|s| s.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(items: &[&str]) -> Vec<Cidr> {
        parse_list(items).expect("valid CIDRs")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid IP")
    }

    #[test]
    fn cidr_parsing_accepts_networks_and_single_hosts() {
        assert_eq!("10.0.0.0/8".parse::<Cidr>().map(|c| c.to_string()), Ok("10.0.0.0/8".into()));
        assert_eq!("::1".parse::<Cidr>().map(|c| c.to_string()), Ok("::1/128".into()));
        assert_eq!("fc00::/7".parse::<Cidr>().map(|c| c.to_string()), Ok("fc00::/7".into()));
        assert_eq!("0.0.0.0/0".parse::<Cidr>().map(|c| c.to_string()), Ok("0.0.0.0/0".into()));
    }

    #[test]
    fn cidr_parsing_refuses_host_bits_oversized_prefixes_and_junk() {
        for bad in ["10.1.2.3/8", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "example.com/8", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn control_defaults_admit_private_ranges_only() {
        let allow = default_allow();
        for ok in ["10.1.2.3", "172.31.255.1", "192.168.1.1", "100.64.0.1", "fd12::1"] {
            assert!(allowed(ip(ok), &allow, None), "{ok} should be allowed");
        }
        for bad in ["127.0.0.1", "169.254.169.254", "8.8.8.8", "::1", "fe80::1", "0.0.0.0", "172.32.0.1"] {
            assert!(!allowed(ip(bad), &allow, None), "{bad} should be refused");
        }
    }

    #[test]
    fn special_ranges_need_a_cidr_that_names_them() {
        let everything = cidrs(&["0.0.0.0/0", "::/0"]);
        assert!(allowed(ip("8.8.8.8"), &everything, None));
        for bad in
            ["127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1"]
        {
            assert!(!allowed(ip(bad), &everything, None), "{bad} should need an explicit CIDR");
        }
        let with_loopback = cidrs(&["127.0.0.0/8", "::1"]);
        assert!(allowed(ip("127.0.0.5"), &with_loopback, None));
        assert!(allowed(ip("::1"), &with_loopback, None));
        assert!(allowed(ip("169.254.169.254"), &cidrs(&["169.254.169.254/32"]), None));
    }

    #[test]
    fn mapped_ipv4_is_judged_as_ipv4() {
        let allow = cidrs(&["10.0.0.0/8", "::/0"]);
        assert!(!allowed(ip("::ffff:127.0.0.1"), &allow, None));
        assert!(allowed(ip("::ffff:10.0.0.1"), &allow, None));
    }

    #[test]
    fn tenant_narrowing_refuses_what_lies_outside_it() {
        let allow = default_allow();
        let narrow = cidrs(&["10.1.0.0/16"]);
        assert!(allowed(ip("10.1.2.3"), &allow, Some(&narrow)));
        assert!(!allowed(ip("10.2.0.1"), &allow, Some(&narrow)));
        // Narrowing can't widen: a tenant list naming loopback doesn't help when the global one doesn't.
        assert!(!allowed(ip("127.0.0.1"), &allow, Some(&cidrs(&["127.0.0.0/8"]))));
    }

    #[test]
    fn within_compares_networks() {
        let outer: Cidr = "10.0.0.0/8".parse().expect("cidr");
        let inner: Cidr = "10.1.0.0/16".parse().expect("cidr");
        assert!(inner.within(&outer));
        assert!(!outer.within(&inner));
        assert!(!"11.0.0.0/16".parse::<Cidr>().expect("cidr").within(&outer));
    }

    #[test]
    fn cidrs_travel_as_strings() {
        let c: Cidr = "fc00::/7".parse().expect("cidr");
        assert_eq!(serde_json::to_string(&c).ok(), Some("\"fc00::/7\"".into()));
        assert!(serde_json::from_str::<Cidr>("\"10.1.2.3/8\"").is_err());
    }
}
