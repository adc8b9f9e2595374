//! Step 1 of the pipeline: which sandbox port (or deployment) a host names, per SPEC §2.

use std::sync::Arc;

use portico_wire::{self as wire, normalize_host, HostMatch, Visibility};

use crate::error::EdgeError;
use crate::state::{app_key, Snapshot, TenantEntry};

/// The kind of route, as a bounded metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    SandboxPort,
    Preview,
    Deployment,
}

impl RouteKind {
    pub fn label(self) -> &'static str {
        self.index().1
    }

    /// Its place among the kinds, with its label: the tenant's metric handles are kept in that order.
    pub fn index(self) -> (usize, &'static str) {
        match self {
            Self::SandboxPort => (0, "sandbox_port"),
            Self::Preview => (1, "preview"),
            Self::Deployment => (2, "deployment"),
        }
    }
}

/// Where a routed request goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// A port of a sandbox (port hosts and previews).
    Sandbox { sandbox: Arc<wire::Sandbox>, port: u16 },
    /// A deployment; routed only while it has an active version (runtime instances or a static release).
    Deployment(Arc<wire::Deployment>),
}

/// A routed request: its target, with the tenant it belongs to.
#[derive(Clone, Debug)]
pub struct Route {
    pub kind: RouteKind,
    pub tenant: Arc<TenantEntry>,
    pub target: Target,
    pub visibility: Visibility,
}

impl Route {
    /// The sandbox, for the steps that only apply to sandboxes (credentials, waking, activity).
    pub fn sandbox(&self) -> Option<&Arc<wire::Sandbox>> {
        match &self.target {
            Target::Sandbox { sandbox, .. } => Some(sandbox),
            Target::Deployment(_) => None,
        }
    }

    /// The SHA-256 of the static release this route serves, if it is a static deployment.
    pub fn release(&self) -> Option<&str> {
        match &self.target {
            Target::Deployment(d) => match &d.active.as_ref()?.target {
                wire::VersionTarget::Release { sha256 } => Some(sha256),
                wire::VersionTarget::Runtime { .. } => None,
            },
            Target::Sandbox { .. } => None,
        }
    }

    pub fn port(&self) -> Option<u16> {
        match &self.target {
            Target::Sandbox { port, .. } => Some(*port),
            Target::Deployment(_) => None,
        }
    }
}

/// Resolves a `Host` header against the snapshot. Anything that does not name a live route is `NotFound`.
pub fn resolve(snap: &Snapshot, raw_host: &str) -> Result<Route, EdgeError> {
    let host = normalize_host(raw_host).ok_or(EdgeError::NotFound)?;
    let matched = snap.templates.iter().find_map(|t| t.matches(&host));
    match matched {
        Some(HostMatch::SandboxPort { sandbox, port }) => {
            let (sandbox, tenant) = snap.sandboxes.get_with(sandbox).ok_or(EdgeError::NotFound)?;
            let tenant = snap.tenants.at(tenant).ok_or(EdgeError::NotFound)?;
            Ok(Route {
                kind: RouteKind::SandboxPort,
                tenant: tenant.clone(),
                visibility: sandbox.default_visibility,
                target: Target::Sandbox { sandbox: sandbox.clone(), port },
            })
        }
        Some(HostMatch::Preview { slug }) => preview(snap, slug, None),
        Some(HostMatch::Deployment { app, workspace }) => {
            deployment(snap, snap.deployment_apps.get(app_key(app, workspace).as_str()))
        }
        None => {
            // A custom domain is an exact host: more specific than a preview domain's wildcard.
            if let Some(id) = snap.deployment_domains.get(host.as_ref()) {
                return deployment(snap, Some(id));
            }
            if snap.unverified_domains.contains_key(host.as_ref()) {
                return Err(EdgeError::DomainUnverified);
            }
            // `{slug}.<verified tenant preview domain>`
            let (slug, domain) = host.split_once('.').ok_or(EdgeError::NotFound)?;
            let tenant_id = snap.preview_domains.get(domain).ok_or(EdgeError::NotFound)?;
            preview(snap, slug, Some(tenant_id))
        }
    }
}

fn preview(snap: &Snapshot, slug: &str, tenant_id: Option<&Arc<str>>) -> Result<Route, EdgeError> {
    let (preview, tenant) = snap.previews.get_with_tenant(slug).ok_or(EdgeError::NotFound)?;
    if tenant_id.is_some_and(|t| **t != *preview.tenant_id) {
        return Err(EdgeError::NotFound);
    }
    // Held by the preview: no second look-up among the sandboxes.
    let sandbox = preview.sandbox.as_ref().ok_or(EdgeError::NotFound)?;
    let tenant = snap.tenants.at(tenant).ok_or(EdgeError::NotFound)?;
    Ok(Route {
        kind: RouteKind::Preview,
        tenant: tenant.clone(),
        visibility: preview.visibility,
        target: Target::Sandbox { sandbox: sandbox.clone(), port: preview.port },
    })
}

/// A deployment is public; one with no promoted version names nothing yet.
fn deployment(snap: &Snapshot, id: Option<&Arc<str>>) -> Result<Route, EdgeError> {
    let deployment = snap.deployments.get(id.ok_or(EdgeError::NotFound)?).ok_or(EdgeError::NotFound)?;
    if deployment.active.is_none() {
        return Err(EdgeError::NotFound);
    }
    let tenant = snap.tenants.get(deployment.tenant_id.as_str()).ok_or(EdgeError::NotFound)?;
    Ok(Route {
        kind: RouteKind::Deployment,
        tenant: tenant.clone(),
        visibility: Visibility::Public,
        target: Target::Deployment(deployment.clone()),
    })
}

#[cfg(test)]
mod tests;
