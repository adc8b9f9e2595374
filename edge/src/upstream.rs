//! Where to dial: every address the edge is about to connect to is checked against the upstream policy
//! control sent (global `--upstream-allow`, narrowed by the tenant's `upstream_cidrs`).

use std::net::IpAddr;

use portico_wire as wire;

/// Whether the edge may dial `ip` for `tenant` under the global `allow` list.
pub fn allowed(ip: IpAddr, allow: &[wire::Cidr], tenant: &wire::Tenant) -> bool {
    wire::upstream::allowed(ip, allow, tenant.upstream_cidrs.as_deref())
}
