//! Which IP to dial for a sandbox's `address` (SPEC §3 "Sandboxes", §7 "Upstream policy"). An IP literal is
//! used as it is; a host name is resolved here, asynchronously, by one caching resolver the whole edge
//! shares, set up like the system's own (`/etc/resolv.conf`, `/etc/hosts`). Either way the edge dials only
//! inside the upstream policy, and a name is trusted only when *every* address it resolves to lies inside
//! it: a name that also points elsewhere is refused rather than half-trusted.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::{Hosts, TokioResolver};

/// The longest a request waits for a name, search domains and retries included (as long as a connect may
/// take: a resolver that does not answer must not hold requests longer than a sandbox that does not).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long one query to one name server may take before hickory retries it.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// DNS answers kept at most; hickory evicts the least recently used beyond it.
const CACHE_SIZE: u64 = 4096;
/// A sandbox that moves keeps its name: an answer is reused at most this long, however long its TTL.
const MAX_TTL: Duration = Duration::from_secs(60);
/// A name that does not resolve yet (a container still starting) is asked again this soon.
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Why the edge will not dial an address: all of them answer 502 `upstream_unreachable`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{ip} is outside the upstream policy")]
    Outside { ip: IpAddr },
    #[error("{name} resolves to {ip}, outside the upstream policy")]
    NameOutside { name: String, ip: IpAddr },
    #[error("{name} does not resolve to any address")]
    Unresolved { name: String },
    #[error("resolving {name} took longer than {timeout:?}")]
    TimedOut { name: String, timeout: Duration },
}

/// The edge's one resolver: cheap to clone, its cache shared by every clone and every request.
#[derive(Clone)]
pub struct Resolver {
    dns: TokioResolver,
    timeout: Duration,
}

impl Resolver {
    /// Name servers, search domains and options from `/etc/resolv.conf`, names from `/etc/hosts`. Without a
    /// readable `/etc/resolv.conf` only `/etc/hosts` (and `localhost`) resolve: the edge still starts, and
    /// sandboxes addressed by IP work.
    pub fn from_system() -> Result<Self, NetError> {
        let (config, opts) = match hickory_resolver::system_conf::read_system_conf() {
            Ok(system) => system,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no DNS servers in /etc/resolv.conf: sandbox host names resolve from /etc/hosts only"
                );
                (ResolverConfig::from_parts(None, Vec::new(), Vec::new()), ResolverOpts::default())
            }
        };
        Self::build(config, opts, None, TIMEOUT)
    }

    /// `hosts`: instead of `/etc/hosts` (tests).
    fn build(
        config: ResolverConfig,
        mut opts: ResolverOpts,
        hosts: Option<Hosts>,
        timeout: Duration,
    ) -> Result<Self, NetError> {
        // Both families, IPv4 first: every address is checked, and the first is dialled.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.use_hosts_file = ResolveHosts::Always;
        opts.cache_size = CACHE_SIZE;
        opts.timeout = opts.timeout.min(QUERY_TIMEOUT);
        opts.positive_max_ttl = Some(MAX_TTL);
        opts.negative_max_ttl = Some(MAX_NEGATIVE_TTL);
        let mut dns = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()?;
        if let Some(hosts) = hosts {
            dns.set_hosts(Arc::new(hosts));
        }
        Ok(Self { dns, timeout })
    }

    /// The IP to dial for `address` (an IP literal or a host name), when `allowed` accepts it and, for a
    /// name, every other address the name resolves to.
    pub async fn dial_ip(&self, address: &str, allowed: impl Fn(IpAddr) -> bool) -> Result<IpAddr, Refused> {
        if let Some(ip) = ip_literal(address) {
            return if allowed(ip) { Ok(ip) } else { Err(Refused::Outside { ip }) };
        }
        let unresolved = || Refused::Unresolved { name: address.to_string() };
        let lookup = tokio::time::timeout(self.timeout, self.dns.lookup_ip(address))
            .await
            .map_err(|_| Refused::TimedOut { name: address.to_string(), timeout: self.timeout })?
            .map_err(|e| {
                tracing::debug!(name = address, error = %e, "resolving a sandbox address");
                unresolved()
            })?;
        let ips: Vec<IpAddr> = lookup.iter().collect();
        if let Some(&ip) = ips.iter().find(|&&ip| !allowed(ip)) {
            return Err(Refused::NameOutside { name: address.to_string(), ip });
        }
        ips.first().copied().ok_or_else(unresolved)
    }
}

/// `10.0.0.2`, `fd00::2`, or `[fd00::2]`.
fn ip_literal(address: &str) -> Option<IpAddr> {
    let bare = address.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(address);
    bare.parse().ok()
}

#[cfg(test)]
mod tests;
