//! The tenants of a snapshot, each in a numbered slot.
//!
//! Why slots: a route found its tenant by hashing the tenant id in the sandbox's record and looking it up,
//! a chain of loads that could only start once the record had come from memory; at a million sandboxes
//! that was a sixth of a route's time. The sandbox and preview indexes keep each record's tenant slot
//! next to it instead, and the tenant is one index into a short array.
//!
//! A tenant id gets a slot the first time anything names it (the tenant, or a sandbox or preview of a
//! tenant not sent yet) and keeps it while the snapshot's descendants live, so nothing that holds a slot
//! needs re-pointing when its tenant changes, goes or comes back. A change to the tenants copies the
//! array of them, a pointer each: tenants change rarely and are few next to the sandboxes.

use std::sync::Arc;

use super::{CowMap, TenantEntry};

/// Where a tenant is, in [`Tenants`].
pub type Slot = usize;

#[derive(Clone, Debug, Default)]
pub struct Tenants {
    slots: CowMap<Slot>,
    entries: Arc<Vec<Option<Arc<TenantEntry>>>>,
    len: usize,
}

impl Tenants {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, id: &str) -> Option<&Arc<TenantEntry>> {
        self.at(*self.slots.get(id)?)
    }

    /// The tenant in `slot`, if it exists now.
    #[inline]
    pub fn at(&self, slot: Slot) -> Option<&Arc<TenantEntry>> {
        self.entries.get(slot)?.as_ref()
    }

    /// The slot of tenant `id`, given now if it has none yet.
    pub fn slot(&mut self, id: &str) -> Slot {
        if let Some(slot) = self.slots.get(id) {
            return *slot;
        }
        let slot = self.entries.len();
        Arc::make_mut(&mut self.entries).push(None);
        self.slots.insert(id.into(), slot);
        slot
    }

    /// Inserts or replaces the tenant with this id; returns the one it replaced.
    pub fn insert(&mut self, entry: TenantEntry) -> Option<Arc<TenantEntry>> {
        let slot = self.slot(&entry.tenant.id);
        let entries = Arc::make_mut(&mut self.entries);
        let old = entries.get_mut(slot)?.replace(Arc::new(entry));
        self.len += usize::from(old.is_none());
        old
    }

    /// Removes the tenant; its id keeps its slot, for whatever still names it.
    pub fn remove(&mut self, id: &str) -> Option<Arc<TenantEntry>> {
        let slot = *self.slots.get(id)?;
        let old = Arc::make_mut(&mut self.entries).get_mut(slot)?.take();
        self.len -= usize::from(old.is_some());
        old
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<TenantEntry>> + '_ {
        self.entries.iter().flatten()
    }
}

impl std::ops::Index<&str> for Tenants {
    type Output = Arc<TenantEntry>;

    /// Panics when the tenant is absent, like `HashMap`'s: for tests.
    fn index(&self, id: &str) -> &Arc<TenantEntry> {
        match self.get(id) {
            Some(t) => t,
            None => panic!("no tenant {id:?}"),
        }
    }
}
