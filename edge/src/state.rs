//! The edge's routing state: one immutable [`Snapshot`] compiled from the wire form, behind one `ArcSwap`.
//! The feed builds a whole new snapshot (sharing unchanged records through `Arc`s) and swaps it in one
//! store; a request loads it once and sees one consistent version from start to end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use portico_wire::{self as wire, HostTemplate, TemplateError};

use crate::headers::frame_ancestors_directive;

/// A tenant as the edge uses it: the wire record plus its precomputed CSP directive.
#[derive(Debug)]
pub struct TenantEntry {
    pub tenant: wire::Tenant,
    /// `frame-ancestors …` for this tenant (its own sources or the platform default).
    pub frame_ancestors: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Template(#[from] TemplateError),
}

type Map<V> = HashMap<Arc<str>, V>;

/// Everything a request needs to be routed, compiled for lookups.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub version: u64,
    settings: wire::Settings,
    pub templates: Vec<HostTemplate>,
    /// `frame-ancestors …` for requests with no tenant (unknown hosts).
    pub default_frame_ancestors: String,
    pub tenants: Map<Arc<TenantEntry>>,
    pub sandboxes: Map<Arc<wire::Sandbox>>,
    /// Previews by slug: the key the hot path has.
    pub previews: Map<Arc<wire::Preview>>,
    /// Preview id → slug, to apply deletions, which name ids.
    preview_slugs: Map<Arc<str>>,
    /// Verified tenant preview domains → tenant id.
    pub preview_domains: Map<Arc<str>>,
}

impl Snapshot {
    /// The state of an edge that has never heard from control: routes nothing.
    pub fn empty() -> Self {
        let settings = wire::Settings { host_templates: Vec::new(), default_frame_ancestors: Vec::new() };
        Self {
            version: 0,
            default_frame_ancestors: frame_ancestors_directive(&settings.default_frame_ancestors),
            settings,
            templates: Vec::new(),
            tenants: Map::default(),
            sandboxes: Map::default(),
            previews: Map::default(),
            preview_slugs: Map::default(),
            preview_domains: Map::default(),
        }
    }

    pub fn from_wire(snapshot: wire::Snapshot) -> Result<Self, StateError> {
        let mut s = Self::empty();
        s.set_settings(snapshot.settings)?;
        for t in snapshot.tenants {
            s.upsert_tenant(t);
        }
        for sb in snapshot.sandboxes {
            s.sandboxes.insert(sb.id.as_str().into(), Arc::new(sb));
        }
        for p in snapshot.previews {
            s.upsert_preview(p);
        }
        s.version = snapshot.version;
        Ok(s)
    }

    /// A new snapshot: this one with `changes` applied, at `version`.
    pub fn apply(&self, version: u64, changes: Vec<wire::Change>) -> Result<Self, StateError> {
        let mut s = self.clone();
        for change in changes {
            match change {
                wire::Change::Settings { settings } => s.set_settings(settings)?,
                wire::Change::UpsertTenant { tenant } => s.upsert_tenant(tenant),
                wire::Change::DeleteTenant { id } => {
                    if let Some(old) = s.tenants.remove(id.as_str()) {
                        if let Some(d) = &old.tenant.preview_domain {
                            s.preview_domains.remove(d.as_str());
                        }
                    }
                }
                wire::Change::UpsertSandbox { sandbox } => {
                    s.sandboxes.insert(sandbox.id.as_str().into(), Arc::new(sandbox));
                }
                wire::Change::DeleteSandbox { id } => {
                    s.sandboxes.remove(id.as_str());
                }
                wire::Change::UpsertPreview { preview } => s.upsert_preview(preview),
                wire::Change::DeletePreview { id } => {
                    if let Some(slug) = s.preview_slugs.remove(id.as_str()) {
                        s.previews.remove(&slug);
                    }
                }
            }
        }
        s.version = version;
        Ok(s)
    }

    /// The wire form, for the state dir.
    pub fn to_wire(&self) -> wire::Snapshot {
        wire::Snapshot {
            version: self.version,
            settings: self.settings.clone(),
            tenants: self.tenants.values().map(|t| t.tenant.clone()).collect(),
            sandboxes: self.sandboxes.values().map(|s| (**s).clone()).collect(),
            previews: self.previews.values().map(|p| (**p).clone()).collect(),
        }
    }

    fn set_settings(&mut self, settings: wire::Settings) -> Result<(), StateError> {
        self.templates =
            settings.host_templates.iter().map(|t| HostTemplate::parse(t)).collect::<Result<_, _>>()?;
        self.default_frame_ancestors = frame_ancestors_directive(&settings.default_frame_ancestors);
        // Tenants without their own sources follow the default.
        let tenants: Vec<wire::Tenant> = self.tenants.values().map(|t| t.tenant.clone()).collect();
        self.settings = settings;
        for t in tenants {
            self.upsert_tenant(t);
        }
        Ok(())
    }

    fn upsert_tenant(&mut self, tenant: wire::Tenant) {
        if let Some(old) = self.tenants.get(tenant.id.as_str()) {
            if let Some(d) = &old.tenant.preview_domain {
                self.preview_domains.remove(d.as_str());
            }
        }
        if let Some(d) = &tenant.preview_domain {
            self.preview_domains.insert(d.as_str().into(), tenant.id.as_str().into());
        }
        let sources = tenant.frame_ancestors.as_ref().unwrap_or(&self.settings.default_frame_ancestors);
        let frame_ancestors = frame_ancestors_directive(sources);
        self.tenants.insert(tenant.id.as_str().into(), Arc::new(TenantEntry { tenant, frame_ancestors }));
    }

    fn upsert_preview(&mut self, preview: wire::Preview) {
        if let Some(old_slug) = self.preview_slugs.remove(preview.id.as_str()) {
            self.previews.remove(&old_slug);
        }
        let slug: Arc<str> = preview.slug.as_str().into();
        self.preview_slugs.insert(preview.id.as_str().into(), slug.clone());
        self.previews.insert(slug, Arc::new(preview));
    }
}

/// The live state: the current snapshot and when control last confirmed it.
pub struct EdgeState {
    snapshot: ArcSwap<Snapshot>,
    last_sync_unix_ms: AtomicU64,
}

impl EdgeState {
    pub fn new(snapshot: Snapshot) -> Self {
        Self { snapshot: ArcSwap::from_pointee(snapshot), last_sync_unix_ms: AtomicU64::new(0) }
    }

    /// The snapshot a request works with, loaded once per request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Control answered: the state is current as of now.
    pub fn mark_synced(&self) {
        self.set_synced_at(unix_ms(SystemTime::now()));
    }

    pub fn set_synced_at(&self, unix_ms: u64) {
        self.last_sync_unix_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// Seconds since control last confirmed the state; `None` if it never has.
    pub fn config_age_secs(&self) -> Option<f64> {
        let last = self.last_sync_unix_ms.load(Ordering::Relaxed);
        (last > 0).then(|| unix_ms(SystemTime::now()).saturating_sub(last) as f64 / 1000.0)
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests;
