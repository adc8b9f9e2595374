//! Previews, each held with the sandbox it opens.
//!
//! Why the sandbox rides along: a preview host found its preview by slug and then its sandbox by id, two
//! look-ups in tables of 100k and 1M, the second waiting on the first's record; at a million sandboxes it
//! was half of a preview route's time. An entry holds the sandbox's `Arc` instead, so that a preview host
//! costs one look-up. The price is on the change side and stays proportional to it: a sandbox's change
//! re-points its own previews (found through [`Previews::of_sandbox`]), a handful at most.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use portico_wire as wire;
use portico_wire::snapshot::CompactString;

use super::{by, CowIndex, KeyOf, Slot, Tenants};

/// A preview as the route step finds it.
#[derive(Debug)]
pub struct PreviewEntry {
    pub preview: wire::Preview,
    /// The sandbox it opens, as of this snapshot; `None` while control has not sent it (or deleted it).
    pub sandbox: Option<Arc<wire::Sandbox>>,
}

impl Deref for PreviewEntry {
    type Target = wire::Preview;
    fn deref(&self) -> &wire::Preview {
        &self.preview
    }
}

impl KeyOf<PreviewEntry> for by::Slug {
    type Key = str;
    fn key(r: &PreviewEntry) -> &str {
        &r.preview.slug
    }
}

impl KeyOf<PreviewEntry> for by::Id {
    type Key = str;
    fn key(r: &PreviewEntry) -> &str {
        &r.preview.id
    }
}

/// The previews that open one sandbox, by their ids.
#[derive(Debug)]
struct OfSandbox {
    sandbox_id: CompactString,
    previews: Box<[CompactString]>,
}

struct SandboxId;

impl KeyOf<OfSandbox> for SandboxId {
    type Key = str;
    fn key(r: &OfSandbox) -> &str {
        &r.sandbox_id
    }
}

/// The previews of a snapshot, found by slug (the key a host gives) and by id (the key changes give).
#[derive(Clone, Debug, Default)]
pub struct Previews {
    /// With each preview's tenant slot: a route needs the tenant next.
    by_slug: CowIndex<PreviewEntry, by::Slug, Slot>,
    by_id: CowIndex<PreviewEntry, by::Id>,
    /// Sandbox id → its previews: what a sandbox's change re-points. Kept whether or not the sandbox
    /// exists yet, since a batch of changes may name a preview before its sandbox.
    of_sandbox: CowIndex<OfSandbox, SandboxId>,
}

type Sandboxes = CowIndex<wire::Sandbox, by::Id, Slot>;

impl Previews {
    /// A whole snapshot's previews at once, each with its sandbox from `sandboxes`. Ids and slugs are
    /// unique in what control sends; were one repeated, the previews go in one by one instead, so that the
    /// last one wins everywhere.
    pub fn build(records: Vec<wire::Preview>, sandboxes: &Sandboxes, tenants: &mut Tenants) -> Self {
        let mut of: HashMap<&str, Vec<CompactString>> = HashMap::new();
        for p in &records {
            of.entry(p.sandbox_id.as_str()).or_default().push(p.id.clone());
        }
        let of_sandbox = CowIndex::build(
            of.into_iter()
                .map(|(id, previews)| {
                    Arc::new(OfSandbox { sandbox_id: id.into(), previews: previews.into_boxed_slice() })
                })
                .collect::<Vec<_>>()
                .into_iter(),
        );
        let entries: Vec<Arc<PreviewEntry>> = records
            .into_iter()
            .map(|preview| {
                Arc::new(PreviewEntry { sandbox: sandboxes.get(&preview.sandbox_id).cloned(), preview })
            })
            .collect();
        let entries = match super::indexed_twice(entries, |e| tenants.slot(&e.tenant_id)) {
            Ok((by_id, by_slug)) => return Self { by_slug, by_id, of_sandbox },
            Err(entries) => entries,
        };
        let mut previews = Self::default();
        for e in entries {
            let preview = Arc::try_unwrap(e).map_or_else(|e| e.preview.clone(), |e| e.preview);
            previews.upsert(preview, sandboxes, tenants);
        }
        previews
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The preview a host's slug names.
    pub fn get(&self, slug: &str) -> Option<&Arc<PreviewEntry>> {
        self.by_slug.get(slug)
    }

    /// The preview a host's slug names, with its tenant's slot.
    #[inline]
    pub fn get_with_tenant(&self, slug: &str) -> Option<(&Arc<PreviewEntry>, Slot)> {
        self.by_slug.get_with(slug)
    }

    pub fn contains_key(&self, slug: &str) -> bool {
        self.by_slug.contains_key(slug)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<PreviewEntry>> {
        self.by_id.get(id)
    }

    pub fn values(&self) -> impl Iterator<Item = &wire::Preview> + '_ {
        self.by_id.values().map(|e| &e.preview)
    }

    /// Inserts or replaces the preview with this id; the slug goes to it even if another preview had it.
    pub fn upsert(&mut self, preview: wire::Preview, sandboxes: &Sandboxes, tenants: &mut Tenants) {
        self.remove(&preview.id);
        self.link(&preview.sandbox_id, &preview.id);
        let tenant = tenants.slot(&preview.tenant_id);
        let entry = Arc::new(PreviewEntry { sandbox: sandboxes.get(&preview.sandbox_id).cloned(), preview });
        self.by_id.insert(entry.clone());
        self.by_slug.insert_with(entry, tenant);
    }

    pub fn remove(&mut self, id: &str) {
        let Some(old) = self.by_id.remove(id) else { return };
        // Only if the slug still names this preview.
        if self.by_slug.get(&old.slug).is_some_and(|p| p.id == id) {
            self.by_slug.remove(&old.slug);
        }
        self.unlink(&old.sandbox_id, id);
    }

    /// The sandbox `sandbox_id` is now `sandbox` (`None`: deleted): its previews open that one.
    pub fn repoint(&mut self, sandbox_id: &str, sandbox: Option<&Arc<wire::Sandbox>>) {
        let Some(of) = self.of_sandbox.get(sandbox_id).cloned() else { return };
        for id in of.previews.iter() {
            let Some(old) = self.by_id.get(id).cloned() else { continue };
            let entry = Arc::new(PreviewEntry { preview: old.preview.clone(), sandbox: sandbox.cloned() });
            if let Some((p, tenant)) = self.by_slug.get_with(&old.slug) {
                if Arc::ptr_eq(p, &old) {
                    self.by_slug.insert_with(entry.clone(), tenant);
                }
            }
            self.by_id.insert(entry);
        }
    }

    fn link(&mut self, sandbox_id: &str, id: &str) {
        let previews = match self.of_sandbox.get(sandbox_id) {
            Some(of) => of.previews.iter().cloned().chain([id.into()]).collect(),
            None => Box::new([id.into()]) as Box<[_]>,
        };
        self.of_sandbox.insert(Arc::new(OfSandbox { sandbox_id: sandbox_id.into(), previews }));
    }

    fn unlink(&mut self, sandbox_id: &str, id: &str) {
        let Some(of) = self.of_sandbox.get(sandbox_id) else { return };
        let previews: Box<[CompactString]> = of.previews.iter().filter(|p| *p != id).cloned().collect();
        if previews.is_empty() {
            self.of_sandbox.remove(sandbox_id);
        } else {
            self.of_sandbox.insert(Arc::new(OfSandbox { sandbox_id: sandbox_id.into(), previews }));
        }
    }
}
