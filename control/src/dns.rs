//! Preview-domain verification: does the tenant's host name CNAME to `--cname-target`? Asked of
//! `--dns-resolver` when set (tests run one on loopback), else of the system's resolvers.

use std::net::SocketAddr;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

#[derive(Debug, Clone)]
pub struct Dns {
    server: Option<SocketAddr>,
}

impl Dns {
    pub fn new(server: Option<SocketAddr>) -> Self {
        Self { server }
    }

    /// A fresh resolver per check: a tenant who just fixed their record must not get a cached answer.
    fn resolver(&self) -> Result<TokioResolver, String> {
        let builder = match self.server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("reading the system's DNS settings: {e}"))?,
        };
        builder.build().map_err(|e| format!("setting up DNS: {e}"))
    }

    /// `Ok(())` when `hostname` has a CNAME to `target`; otherwise why not, in words for the tenant.
    pub async fn check_cname(&self, hostname: &str, target: &str) -> Result<(), String> {
        let want = target.trim_end_matches('.').to_ascii_lowercase();
        let fqdn = format!("{}.", hostname.trim_end_matches('.'));
        let lookup = self
            .resolver()?
            .lookup(fqdn.as_str(), RecordType::CNAME)
            .await
            .map_err(|_| format!("{hostname} has no CNAME record; add {hostname} CNAME {want}"))?;
        let found: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::CNAME(c) => Some(c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        if found.contains(&want) {
            Ok(())
        } else if found.is_empty() {
            Err(format!("{hostname} has no CNAME record; add {hostname} CNAME {want}"))
        } else {
            Err(format!("{hostname} is a CNAME to {}, not to {want}", found.join(", ")))
        }
    }

    /// `Ok(())` when a TXT record at `name` holds exactly `value`; otherwise what was found, for the tenant.
    pub async fn check_txt(&self, name: &str, value: &str) -> Result<(), String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let missing = || format!("{name} has no TXT record; add {name} TXT \"{value}\"");
        let lookup = self.resolver()?.lookup(fqdn.as_str(), RecordType::TXT).await.map_err(|_| missing())?;
        let found: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                // A TXT record may be split in several strings; they form one value.
                RData::TXT(t) => {
                    Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>())
                }
                _ => None,
            })
            .collect();
        if found.iter().any(|f| f == value) {
            Ok(())
        } else if found.is_empty() {
            Err(missing())
        } else {
            Err(format!(
                "{name} holds TXT {}, not \"{value}\"",
                found.iter().map(|f| format!("\"{f}\"")).collect::<Vec<_>>().join(", ")
            ))
        }
    }
}
