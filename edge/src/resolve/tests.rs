#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::Hosts;
use portico_wire::Cidr;

use super::{Refused, Resolver, TIMEOUT};

/// A resolver that knows only `hosts` (a hosts file's text) and `localhost`: no name server, no network.
fn offline(hosts: &str) -> Resolver {
    let mut h = Hosts::default();
    h.read_hosts_conf(hosts.as_bytes()).expect("hosts");
    let config = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
    Resolver::build(config, ResolverOpts::default(), Some(h), TIMEOUT).expect("resolver")
}

fn policy(cidrs: &[&str]) -> impl Fn(IpAddr) -> bool {
    let allow: Vec<Cidr> = cidrs.iter().map(|c| c.parse().expect("cidr")).collect();
    move |ip| portico_wire::upstream::allowed(ip, &allow, None)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[tokio::test]
async fn an_ip_literal_is_dialled_as_it_is_without_a_lookup() {
    // A name server that never answers: any lookup would take the whole timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut ns = NameServerConfig::udp(ip("127.0.0.1"));
    for c in &mut ns.connections {
        c.port = silent.local_addr().expect("addr").port();
    }
    let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
    let r =
        Resolver::build(config, ResolverOpts::default(), None, Duration::from_secs(30)).expect("resolver");
    let started = Instant::now();
    let allow = policy(&["10.0.0.0/8", "fc00::/7"]);
    assert_eq!(r.dial_ip("10.1.2.3", &allow).await, Ok(ip("10.1.2.3")));
    assert_eq!(r.dial_ip("fd00::2", &allow).await, Ok(ip("fd00::2")));
    assert_eq!(r.dial_ip("[fd00::2]", &allow).await, Ok(ip("fd00::2")));
    assert!(started.elapsed() < Duration::from_secs(1), "no lookup for an IP literal");
}

#[tokio::test]
async fn an_ip_literal_outside_the_policy_is_refused() {
    let r = offline("");
    let refused = r.dial_ip("127.0.0.1", policy(&["10.0.0.0/8"])).await;
    assert_eq!(refused, Err(Refused::Outside { ip: ip("127.0.0.1") }));
    let refused = r.dial_ip("169.254.169.254", policy(&["0.0.0.0/0"])).await;
    assert_eq!(refused, Err(Refused::Outside { ip: ip("169.254.169.254") }), "metadata needs its own CIDR");
}

#[tokio::test]
async fn a_name_inside_the_policy_dials_its_first_ipv4_address() {
    let r = offline("10.0.0.7 web-1.internal\nfd00::7 web-1.internal\n");
    let got = r.dial_ip("web-1.internal", policy(&["10.0.0.0/8", "fc00::/7"])).await;
    assert_eq!(got, Ok(ip("10.0.0.7")));
}

#[tokio::test]
async fn a_name_resolving_outside_the_policy_is_refused() {
    let r = offline("127.0.0.1 sneaky.internal\n");
    let got = r.dial_ip("sneaky.internal", policy(&["10.0.0.0/8"])).await;
    assert_eq!(got, Err(Refused::NameOutside { name: "sneaky.internal".into(), ip: ip("127.0.0.1") }));
}

#[tokio::test]
async fn a_name_with_any_address_outside_the_policy_is_refused_even_when_another_is_inside() {
    let r = offline("10.0.0.7 half.internal\n::1 half.internal\n");
    let got = r.dial_ip("half.internal", policy(&["10.0.0.0/8"])).await;
    assert_eq!(
        got,
        Err(Refused::NameOutside { name: "half.internal".into(), ip: IpAddr::V6(Ipv6Addr::LOCALHOST) })
    );
}

#[tokio::test]
async fn localhost_is_both_loopbacks_and_needs_both_in_the_policy() {
    let r = offline("");
    let got = r.dial_ip("localhost", policy(&["127.0.0.0/8", "::1/128"])).await;
    assert_eq!(got, Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let got = r.dial_ip("localhost", policy(&["127.0.0.0/8"])).await;
    assert_eq!(
        got,
        Err(Refused::NameOutside { name: "localhost".into(), ip: IpAddr::V6(Ipv6Addr::LOCALHOST) })
    );
    let got = r.dial_ip("localhost", policy(&["10.0.0.0/8"])).await;
    assert!(matches!(got, Err(Refused::NameOutside { .. })), "{got:?}");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_refused() {
    let r = offline("");
    let allow = policy(&["0.0.0.0/0", "::/0"]);
    // `.invalid` never resolves (RFC 6761); a name server-less resolver knows no other name either.
    for name in ["nosuch.invalid", "web-2.internal", "not a name", ""] {
        let got = r.dial_ip(name, &allow).await;
        assert!(matches!(got, Err(Refused::Unresolved { .. })), "{name:?}: {got:?}");
    }
}

#[tokio::test]
async fn a_resolver_that_does_not_answer_times_out() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut ns = NameServerConfig::udp(ip("127.0.0.1"));
    for c in &mut ns.connections {
        c.port = silent.local_addr().expect("addr").port();
    }
    let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
    let timeout = Duration::from_millis(300);
    let r =
        Resolver::build(config, ResolverOpts::default(), Some(Hosts::default()), timeout).expect("resolver");
    let started = Instant::now();
    let got = r.dial_ip("slow.example.com", policy(&["0.0.0.0/0"])).await;
    assert_eq!(got, Err(Refused::TimedOut { name: "slow.example.com".into(), timeout }));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn the_system_resolver_is_built_outside_any_runtime() {
    // `portico edge` builds it before Pingora starts its runtimes.
    assert!(Resolver::from_system().is_ok());
}
