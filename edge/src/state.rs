//! The edge's routing state: one immutable [`Snapshot`] compiled from the wire form, behind one `ArcSwap`.
//! The feed builds a whole new snapshot and swaps it in one store; a request loads it once and sees one
//! consistent version from start to end. A new snapshot shares with the old one everything the changes
//! did not touch: its maps are [`CowMap`]s, so applying a change costs in proportion to the change, not to
//! the million sandboxes around it (see `state/cowmap.rs` for the design and why).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::io::Read;

use arc_swap::ArcSwap;
use portico_wire::packed::PackedError;
use portico_wire::{self as wire, tokens, HostTemplate, TemplateError};

use crate::headers::{frame_ancestors_directive, frame_ancestors_header};

/// A tenant as the edge uses it: the wire record plus its precomputed CSP directive.
#[derive(Debug)]
pub struct TenantEntry {
    pub tenant: wire::Tenant,
    /// `frame-ancestors …` for this tenant (its own sources or the platform default), as the header value
    /// every response of the tenant carries; [`Self::frame_ancestors`] is its text.
    pub frame_ancestors_header: http::HeaderValue,
    /// The tenant's own limits or the platform default.
    pub rate_limits: wire::RateLimits,
    /// Its per-request metric series, found once.
    pub metrics: crate::metrics::TenantMetrics,
}

impl TenantEntry {
    /// The tenant's `frame-ancestors` directive as text, for the edge's own pages.
    pub fn frame_ancestors(&self) -> &str {
        // Made from a `&str`, so always text; the fallback is the header's own.
        self.frame_ancestors_header.to_str().unwrap_or("frame-ancestors 'none'")
    }
}

/// The first bytes of a zstd frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The most a decompressed snapshot may take: control is trusted with the state, not with the edge's
/// memory (a million sandboxes take a few hundred MB).
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Packed(#[from] PackedError),
}

pub use cowmap::{CowIndex, CowMap, KeyOf, Seeded};
pub use previews::{PreviewEntry, Previews};
pub use tenants::{Slot, Tenants};

type Map<V> = CowMap<V>;

/// The fields the snapshot's indexes find records by.
pub mod by {
    use portico_wire as wire;

    use super::KeyOf;

    pub struct Id;
    pub struct Slug;
    pub struct Sha256;

    impl KeyOf<wire::Sandbox> for Id {
        type Key = str;
        fn key(r: &wire::Sandbox) -> &str {
            &r.id
        }
    }

    /// Only sandboxes that have a preview-auth token are in an index by it.
    impl KeyOf<wire::Sandbox> for Sha256 {
        type Key = [u8; 32];
        fn key(r: &wire::Sandbox) -> &[u8; 32] {
            const NONE: [u8; 32] = [0; 32];
            r.preview_auth_sha256.as_ref().map_or(&NONE, |h| &h.0)
        }
    }

    impl KeyOf<wire::Share> for Id {
        type Key = str;
        fn key(r: &wire::Share) -> &str {
            &r.id
        }
    }

    impl KeyOf<wire::Share> for Sha256 {
        type Key = str;
        fn key(r: &wire::Share) -> &str {
            &r.sha256
        }
    }
}

/// Everything a request needs to be routed, compiled for lookups.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub version: u64,
    settings: wire::Settings,
    pub templates: Vec<HostTemplate>,
    /// `frame-ancestors …` for requests with no tenant (unknown hosts).
    pub default_frame_ancestors: String,
    pub tenants: Tenants,
    /// Sandboxes by id, each with its tenant's slot.
    pub sandboxes: CowIndex<wire::Sandbox, by::Id, Slot>,
    /// Previews by slug (the key the hot path has) and by id, each with its sandbox.
    pub previews: Previews,
    /// Verified tenant preview domains → tenant id.
    pub preview_domains: Map<Arc<str>>,
    /// Key id → raw Ed25519 public key, for `mp_` tokens.
    pub verify_keys: Map<Arc<[u8]>>,
    /// Revoked `mp_` token ids → when they would have expired (unix seconds).
    pub revocations: Map<u64>,
    /// Shares by their token's SHA-256: the key the hot path has.
    pub shares: CowIndex<wire::Share, by::Sha256>,
    /// Shares by id, to apply deletions.
    shares_by_id: CowIndex<wire::Share, by::Id>,
    /// Sandboxes by their preview-auth token's SHA-256: a known token of another sandbox needs no look-up.
    pub preview_auth: CowIndex<wire::Sandbox, by::Sha256>,
    /// Deployments by id.
    pub deployments: Map<Arc<wire::Deployment>>,
    /// `{app}.{workspace}` → deployment id.
    pub deployment_apps: Map<Arc<str>>,
    /// Custom domains (exact hosts) → deployment id.
    pub deployment_domains: Map<Arc<str>>,
    /// Custom domains not yet proven by their TXT record → deployment id: answered 404 `domain_unverified`.
    pub unverified_domains: Map<Arc<str>>,
    /// Certificates from control by hostname, behind an `Arc` so the TLS watcher sees whether they changed
    /// by comparing pointers. A plain map: one per custom domain, changed rarely, and the TLS watcher
    /// rebuilds its resolver from all of them whenever one changes anyway.
    pub certificates: Arc<std::collections::HashMap<Arc<str>, Arc<wire::Certificate>>>,
    /// ACME HTTP-01 tokens → key authorizations.
    pub acme_challenges: Map<Arc<str>>,
}

impl Snapshot {
    /// Where the edge may dial (`--upstream-allow` of control).
    pub fn upstream_allow(&self) -> &[wire::Cidr] {
        &self.settings.upstream_allow
    }

    /// The state of an edge that has never heard from control: routes nothing.
    pub fn empty() -> Self {
        let settings = wire::Settings {
            host_templates: Vec::new(),
            default_frame_ancestors: Vec::new(),
            default_rate_limits: wire::RateLimits::default(),
            upstream_allow: Vec::new(),
        };
        Self {
            version: 0,
            default_frame_ancestors: frame_ancestors_directive(&settings.default_frame_ancestors),
            settings,
            templates: Vec::new(),
            tenants: Tenants::default(),
            sandboxes: CowIndex::default(),
            previews: Previews::default(),
            preview_domains: Map::default(),
            verify_keys: Map::default(),
            revocations: Map::default(),
            shares: CowIndex::default(),
            shares_by_id: CowIndex::default(),
            preview_auth: CowIndex::default(),
            deployments: Map::default(),
            deployment_apps: Map::default(),
            deployment_domains: Map::default(),
            unverified_domains: Map::default(),
            certificates: Arc::default(),
            acme_challenges: Map::default(),
        }
    }

    pub fn from_wire(mut snapshot: wire::Snapshot) -> Result<Self, StateError> {
        let sandboxes = std::mem::take(&mut snapshot.sandboxes).into_iter().map(Arc::new).collect();
        let previews = std::mem::take(&mut snapshot.previews);
        let shares = std::mem::take(&mut snapshot.shares).into_iter().map(Arc::new).collect();
        Self::from_parts(snapshot, sandboxes, previews, shares)
    }

    /// A packed snapshot (`wire::packed`) as control sends it and the state dir keeps it, zstd-compressed
    /// or not, compiled as it is decoded: a compressed one is decompressed as a stream, and each record
    /// goes straight into the `Arc` the maps hold. At a million sandboxes the whole decompressed snapshot,
    /// and a list of wire records, were each ~100 MB more to write once and read once on a cold start.
    pub fn from_packed(bytes: &[u8]) -> Result<Self, StateError> {
        if !bytes.starts_with(&ZSTD_MAGIC) {
            return Self::decode_packed(bytes);
        }
        let stream = zstd::stream::read::Decoder::with_buffer(bytes).map_err(PackedError::Read)?;
        // Past the limit the stream ends, and decoding says the snapshot is cut short.
        Self::decode_packed(std::io::BufReader::with_capacity(1 << 16, stream.take(MAX_SNAPSHOT_BYTES)))
    }

    fn decode_packed(packed: impl std::io::BufRead) -> Result<Self, StateError> {
        let (mut sandboxes, mut previews, mut shares) = (Vec::new(), Vec::new(), Vec::new());
        let rest = portico_wire::packed::decode_with(
            packed,
            |r| sandboxes.push(Arc::new(r)),
            |r| previews.push(r),
            |r| shares.push(Arc::new(r)),
        )?;
        Self::from_parts(rest, sandboxes, previews, shares)
    }

    /// `snapshot` (its own record lists ignored) with these records.
    fn from_parts(
        snapshot: wire::Snapshot,
        sandboxes: Vec<Arc<wire::Sandbox>>,
        previews: Vec<wire::Preview>,
        shares: Vec<Arc<wire::Share>>,
    ) -> Result<Self, StateError> {
        let mut s = Self::empty();
        s.set_settings(snapshot.settings)?;
        for t in snapshot.tenants {
            s.upsert_tenant(t);
        }
        s.index_sandboxes(sandboxes);
        s.previews = Previews::build(previews, &s.sandboxes, &mut s.tenants);
        for k in snapshot.verify_keys {
            s.upsert_verify_key(k);
        }
        for r in snapshot.revocations {
            s.revocations.insert(r.jti.as_str().into(), r.expires_at);
        }
        s.index_shares(shares);
        for d in snapshot.deployments {
            s.upsert_deployment(d);
        }
        s.certificates = Arc::new(
            snapshot.certificates.into_iter().map(|c| (c.hostname.as_str().into(), Arc::new(c))).collect(),
        );
        for c in snapshot.acme_challenges {
            s.acme_challenges.insert(c.token.as_str().into(), c.key_authorization.as_str().into());
        }
        s.version = snapshot.version;
        Ok(s)
    }

    /// A new snapshot: this one with `changes` applied, at `version`.
    pub fn apply(&self, version: u64, changes: Vec<wire::Change>) -> Result<Self, StateError> {
        let mut s = self.clone();
        s.apply_in_place(version, changes)?;
        Ok(s)
    }

    /// `changes` applied to this snapshot itself, at `version`: for one nobody else holds yet (replaying
    /// the state dir), where nothing needs copying. On an error, the changes before it stay applied and
    /// the version stays the old one (control sends them again: every change carries a whole value).
    pub fn apply_in_place(&mut self, version: u64, changes: Vec<wire::Change>) -> Result<(), StateError> {
        let s = self;
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
                wire::Change::UpsertSandbox { sandbox } => s.upsert_sandbox(sandbox),
                wire::Change::DeleteSandbox { id } => s.remove_sandbox(&id),
                wire::Change::UpsertPreview { preview } => s.upsert_preview(preview),
                wire::Change::DeletePreview { id } => s.remove_preview(&id),
                wire::Change::UpsertCertificate { certificate } => {
                    Arc::make_mut(&mut s.certificates)
                        .insert(certificate.hostname.as_str().into(), Arc::new(certificate));
                }
                wire::Change::DeleteCertificate { hostname } => {
                    Arc::make_mut(&mut s.certificates).remove(hostname.as_str());
                }
                wire::Change::UpsertAcmeChallenge { challenge } => {
                    s.acme_challenges
                        .insert(challenge.token.as_str().into(), challenge.key_authorization.as_str().into());
                }
                wire::Change::DeleteAcmeChallenge { token } => {
                    s.acme_challenges.remove(token.as_str());
                }
                wire::Change::UpsertVerifyKey { key } => s.upsert_verify_key(key),
                wire::Change::DeleteVerifyKey { kid } => {
                    s.verify_keys.remove(kid.as_str());
                }
                wire::Change::UpsertRevocation { revocation } => {
                    s.revocations.insert(revocation.jti.as_str().into(), revocation.expires_at);
                }
                wire::Change::DeleteRevocation { jti } => {
                    s.revocations.remove(jti.as_str());
                }
                wire::Change::UpsertShare { share } => s.upsert_share(share),
                wire::Change::UpsertDeployment { deployment } => s.upsert_deployment(deployment),
                wire::Change::DeleteDeployment { id } => s.remove_deployment(&id),
                wire::Change::DeleteShare { id } => s.remove_share(&id),
            }
        }
        s.version = version;
        Ok(())
    }

    /// The wire form.
    pub fn to_wire(&self) -> wire::Snapshot {
        wire::Snapshot {
            sandboxes: self.sandboxes.values().map(|s| (**s).clone()).collect(),
            previews: self.previews.values().cloned().collect(),
            shares: self.shares.values().map(|s| (**s).clone()).collect(),
            ..self.to_wire_but_records()
        }
    }

    /// The wire form of all but the sandboxes, previews and shares (nearly all of it, by size): for the
    /// state dir's packed base, which writes those straight from the maps.
    pub fn to_wire_but_records(&self) -> wire::Snapshot {
        wire::Snapshot {
            version: self.version,
            settings: self.settings.clone(),
            tenants: self.tenants.values().map(|t| t.tenant.clone()).collect(),
            sandboxes: Vec::new(),
            previews: Vec::new(),
            verify_keys: self
                .verify_keys
                .iter()
                .map(|(kid, key)| wire::VerifyKey { kid: kid.to_string(), public_key: tokens::b64(key) })
                .collect(),
            revocations: self
                .revocations
                .iter()
                .map(|(jti, exp)| wire::Revocation { jti: jti.to_string(), expires_at: *exp })
                .collect(),
            shares: Vec::new(),
            deployments: self.deployments.values().map(|d| (**d).clone()).collect(),
            certificates: self.certificates.values().map(|c| (**c).clone()).collect(),
            acme_challenges: self
                .acme_challenges
                .iter()
                .map(|(t, k)| wire::AcmeChallenge { token: t.to_string(), key_authorization: k.to_string() })
                .collect(),
        }
    }

    pub fn share_by_id(&self, id: &str) -> Option<&Arc<wire::Share>> {
        self.shares_by_id.get(id)
    }

    /// The preview a share opens, if it still exists.
    pub fn preview_by_id(&self, id: &str) -> Option<&Arc<PreviewEntry>> {
        self.previews.by_id(id)
    }

    fn set_settings(&mut self, settings: wire::Settings) -> Result<(), StateError> {
        self.templates =
            settings.host_templates.iter().map(|t| HostTemplate::parse(t)).collect::<Result<_, _>>()?;
        self.default_frame_ancestors = frame_ancestors_directive(&settings.default_frame_ancestors);
        // Tenants without their own sources or limits follow the defaults.
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
        let frame_ancestors_header = frame_ancestors_header(&frame_ancestors_directive(sources));
        let rate_limits = tenant.rate_limits.unwrap_or(self.settings.default_rate_limits);
        self.tenants.insert(TenantEntry {
            tenant,
            frame_ancestors_header,
            rate_limits,
            metrics: Default::default(),
        });
    }

    /// A whole snapshot's sandboxes, indexed at once. Ids are unique in what control sends; were one
    /// repeated, the records go in one by one instead, so that the last one wins everywhere.
    fn index_sandboxes(&mut self, records: Vec<Arc<wire::Sandbox>>) {
        let tenants = &mut self.tenants;
        let by_id = CowIndex::build_with(records.iter().map(|r| (r.clone(), tenants.slot(&r.tenant_id))));
        if by_id.len() != records.len() {
            records.into_iter().for_each(|r| self.upsert_sandbox(Arc::unwrap_or_clone(r)));
            return;
        }
        let with_auth = records.iter().filter(|r| r.preview_auth_sha256.is_some());
        self.preview_auth = CowIndex::build(with_auth.cloned().collect::<Vec<_>>().into_iter());
        self.sandboxes = by_id;
    }

    /// A whole snapshot's shares, indexed at once (see [`Self::index_sandboxes`]).
    fn index_shares(&mut self, shares: Vec<Arc<wire::Share>>) {
        match indexed_twice(shares, |_| ()) {
            Ok((by_id, by_hash)) => (self.shares_by_id, self.shares) = (by_id, by_hash),
            Err(records) => records.into_iter().for_each(|r| self.upsert_share(Arc::unwrap_or_clone(r))),
        }
    }

    fn upsert_sandbox(&mut self, sandbox: wire::Sandbox) {
        self.unindex_sandbox(&sandbox.id);
        let sandbox = Arc::new(sandbox);
        if sandbox.preview_auth_sha256.is_some() {
            self.preview_auth.insert(sandbox.clone());
        }
        self.previews.repoint(&sandbox.id, Some(&sandbox));
        let tenant = self.tenants.slot(&sandbox.tenant_id);
        self.sandboxes.insert_with(sandbox, tenant);
    }

    fn remove_sandbox(&mut self, id: &str) {
        self.unindex_sandbox(id);
        self.previews.repoint(id, None);
    }

    /// Out of the sandbox indexes (its previews still hold it).
    fn unindex_sandbox(&mut self, id: &str) {
        if let Some(old) = self.sandboxes.remove(id) {
            if let Some(hash) = &old.preview_auth_sha256 {
                // Only if the token still names this sandbox.
                if self.preview_auth.get(&hash.0).is_some_and(|s| s.id == id) {
                    self.preview_auth.remove(&hash.0);
                }
            }
        }
    }

    fn upsert_verify_key(&mut self, key: wire::VerifyKey) {
        match tokens::b64_decode(&key.public_key) {
            Some(raw) => {
                self.verify_keys.insert(key.kid.as_str().into(), raw.into());
            }
            // One bad key must not stop the others from verifying.
            None => tracing::error!(kid = %key.kid, "control sent an undecodable verify key; ignored"),
        }
    }

    fn upsert_share(&mut self, share: wire::Share) {
        self.remove_share(&share.id);
        let share = Arc::new(share);
        self.shares_by_id.insert(share.clone());
        self.shares.insert(share);
    }

    fn remove_share(&mut self, id: &str) {
        if let Some(old) = self.shares_by_id.remove(id) {
            if self.shares.get(&old.sha256).is_some_and(|s| s.id == id) {
                self.shares.remove(&old.sha256);
            }
        }
    }

    fn upsert_deployment(&mut self, deployment: wire::Deployment) {
        self.remove_deployment(&deployment.id);
        let id: Arc<str> = deployment.id.as_str().into();
        self.deployment_apps.insert(app_key(&deployment.app, &deployment.workspace).into(), id.clone());
        for host in &deployment.domains {
            self.deployment_domains.insert(host.as_str().into(), id.clone());
        }
        for host in &deployment.unverified_domains {
            self.unverified_domains.insert(host.as_str().into(), id.clone());
        }
        self.deployments.insert(id, Arc::new(deployment));
    }

    fn remove_deployment(&mut self, id: &str) {
        if let Some(old) = self.deployments.remove(id) {
            // Only keys that still name this deployment: a host may have moved to another one.
            let app = app_key(&old.app, &old.workspace);
            if self.deployment_apps.get(app.as_str()).is_some_and(|d| **d == *id) {
                self.deployment_apps.remove(app.as_str());
            }
            for host in &old.domains {
                if self.deployment_domains.get(host.as_str()).is_some_and(|d| **d == *id) {
                    self.deployment_domains.remove(host.as_str());
                }
            }
            for host in &old.unverified_domains {
                if self.unverified_domains.get(host.as_str()).is_some_and(|d| **d == *id) {
                    self.unverified_domains.remove(host.as_str());
                }
            }
        }
    }

    fn upsert_preview(&mut self, preview: wire::Preview) {
        self.previews.upsert(preview, &self.sandboxes, &mut self.tenants);
    }

    fn remove_preview(&mut self, id: &str) {
        self.previews.remove(id);
    }
}

/// The live state: the current snapshot and when control last confirmed it.
pub struct EdgeState {
    snapshot: ArcSwap<Snapshot>,
    last_sync_unix_ms: AtomicU64,
    /// When this process started: the age of a state never confirmed (`portico_config_age_seconds`).
    started_unix_ms: u64,
}

impl EdgeState {
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            last_sync_unix_ms: AtomicU64::new(0),
            started_unix_ms: unix_ms(SystemTime::now()),
        }
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

    /// When control last confirmed the state (or the saved state was written); `None` if never.
    pub fn last_sync_unix_ms(&self) -> Option<u64> {
        Some(self.last_sync_unix_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    pub fn started_unix_ms(&self) -> u64 {
        self.started_unix_ms
    }

    /// Seconds since control last confirmed the state; `None` if it never has.
    pub fn config_age_secs(&self) -> Option<f64> {
        let last = self.last_sync_unix_ms()?;
        Some(unix_ms(SystemTime::now()).saturating_sub(last) as f64 / 1000.0)
    }
}

/// The key of a deployment's template host in [`Snapshot::deployment_apps`].
pub fn app_key(app: &str, workspace: &str) -> String {
    // Built per request to a deployment host: three copies, not the formatting machinery.
    let mut key = String::with_capacity(app.len() + 1 + workspace.len());
    key.push_str(app);
    key.push('.');
    key.push_str(workspace);
    key
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

mod cowmap;
mod previews;
pub mod store;
mod tenants;

/// Two indexes of the same records, built at once, the second with a value `x` gives for each record;
/// the records back when a key repeats in either (then they go in one at a time, the last one winning
/// everywhere).
#[allow(clippy::type_complexity)]
fn indexed_twice<T, A: KeyOf<T>, B: KeyOf<T>, X: Copy>(
    records: Vec<Arc<T>>,
    mut x: impl FnMut(&T) -> X,
) -> Result<(CowIndex<T, A>, CowIndex<T, B, X>), Vec<Arc<T>>> {
    let a = CowIndex::build(records.iter().cloned());
    let b = CowIndex::build_with(records.iter().map(|r| (r.clone(), x(r))));
    if a.len() == records.len() && b.len() == records.len() {
        return Ok((a, b));
    }
    drop((a, b));
    Err(records)
}

#[cfg(test)]
mod tests;
