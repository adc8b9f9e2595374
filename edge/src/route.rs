//! Step 1 of the pipeline: which sandbox port (or deployment) a host names, per SPEC §2.

use std::sync::Arc;

use portico_wire::{self as wire, normalize_host, HostMatch, Visibility};

use crate::error::EdgeError;
use crate::state::{Snapshot, TenantEntry};

/// The kind of route, as a bounded metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    SandboxPort,
    Preview,
}

impl RouteKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::SandboxPort => "sandbox_port",
            Self::Preview => "preview",
        }
    }
}

/// A routed request: a port of a sandbox, with the tenant it belongs to.
#[derive(Clone, Debug)]
pub struct Route {
    pub kind: RouteKind,
    pub tenant: Arc<TenantEntry>,
    pub sandbox: Arc<wire::Sandbox>,
    pub port: u16,
    pub visibility: Visibility,
}

/// Resolves a `Host` header against the snapshot. Anything that does not name a live route is `NotFound`.
pub fn resolve(snap: &Snapshot, raw_host: &str) -> Result<Route, EdgeError> {
    let host = normalize_host(raw_host).ok_or(EdgeError::NotFound)?;
    let matched = snap.templates.iter().find_map(|t| t.matches(&host));
    match matched {
        Some(HostMatch::SandboxPort { sandbox, port }) => {
            let sandbox = snap.sandboxes.get(sandbox).ok_or(EdgeError::NotFound)?;
            let tenant = snap.tenants.get(sandbox.tenant_id.as_str()).ok_or(EdgeError::NotFound)?;
            Ok(Route {
                kind: RouteKind::SandboxPort,
                tenant: tenant.clone(),
                sandbox: sandbox.clone(),
                port,
                visibility: sandbox.default_visibility,
            })
        }
        Some(HostMatch::Preview { slug }) => preview(snap, slug, None),
        // Deployments are routed once they exist; until then such a host names nothing.
        Some(HostMatch::Deployment { .. }) => Err(EdgeError::NotFound),
        None => {
            // `{slug}.<verified tenant preview domain>`
            let (slug, domain) = host.split_once('.').ok_or(EdgeError::NotFound)?;
            let tenant_id = snap.preview_domains.get(domain).ok_or(EdgeError::NotFound)?;
            preview(snap, slug, Some(tenant_id))
        }
    }
}

fn preview(snap: &Snapshot, slug: &str, tenant_id: Option<&Arc<str>>) -> Result<Route, EdgeError> {
    let preview = snap.previews.get(slug).ok_or(EdgeError::NotFound)?;
    if tenant_id.is_some_and(|t| **t != *preview.tenant_id) {
        return Err(EdgeError::NotFound);
    }
    let sandbox = snap.sandboxes.get(preview.sandbox_id.as_str()).ok_or(EdgeError::NotFound)?;
    let tenant = snap.tenants.get(preview.tenant_id.as_str()).ok_or(EdgeError::NotFound)?;
    Ok(Route {
        kind: RouteKind::Preview,
        tenant: tenant.clone(),
        sandbox: sandbox.clone(),
        port: preview.port,
        visibility: preview.visibility,
    })
}

#[cfg(test)]
mod tests;
