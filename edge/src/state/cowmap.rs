//! A hash map whose clone costs a few allocations and whose change copies ~1/1024th of it.
//!
//! Why not one `HashMap` (before issue 17): every batch of changes cloned every map, 1M sandboxes' worth
//! of entries and reference counts for one changed sandbox.
//!
//! Why not a HAMT (`imbl::HashMap`, `rpds::HashTrieMap`): a lookup walks 4–5 levels of pointers at 1M
//! entries (a cache miss each), and the nodes carry per-node arrays and reference counts that cost more
//! memory per entry than a flat table; both matter here, the hot path does two to three gets per request
//! and an edge holds millions of entries.
//!
//! This is a two-level copy-on-write table instead: [`SHARDS`] `hashbrown` tables, each behind its own
//! `Arc`, in one `Arc`'d array. The top bits of the key's hash pick the table.
//! - Lookup: one hash, one extra pointer hop, then a flat SwissTable probe: as fast as a plain `HashMap`.
//! - Clone (a new snapshot): two reference counts.
//! - Change: copies the array of table pointers (1024 reference counts) once per snapshot and map, and
//!   the one table the key lives in (n/1024 entries: ~1,000 at 1M) once per snapshot. Applying a change
//!   is O(√n)-ish work at the sizes an edge holds, independent of how many other tables there are.
//! - Memory: the entries of a flat table, plus 1024 small headers per map.
//!   Small maps (tenants, keys) pay 1024 pointers to one shared empty table.
//!
//! The hash is the standard library's SipHash with a random key per map, as `HashMap` had: keys come
//! from tenants (slugs, hosts) and must not be able to degrade a table.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

/// How many tables a map is split into (a power of two).
pub const SHARDS: usize = 1024;

type Shard<V> = HashTable<(Arc<str>, V)>;

pub struct CowMap<V> {
    shards: Arc<[Arc<Shard<V>>]>,
    hasher: RandomState,
    len: usize,
}

impl<V> Clone for CowMap<V> {
    fn clone(&self) -> Self {
        Self { shards: self.shards.clone(), hasher: self.hasher.clone(), len: self.len }
    }
}

impl<V> Default for CowMap<V> {
    fn default() -> Self {
        let empty = Arc::new(HashTable::new());
        Self { shards: (0..SHARDS).map(|_| empty.clone()).collect(), hasher: RandomState::new(), len: 0 }
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for CowMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[inline]
fn shard_of(hash: u64) -> usize {
    // hashbrown uses the top 7 bits (control bytes) and the low bits (bucket): take the middle ones.
    (hash >> 32) as usize & (SHARDS - 1)
}

impl<V> CowMap<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<&V> {
        let hash = self.hasher.hash_one(key);
        self.shards[shard_of(hash)].find(hash, |(k, _)| **k == *key).map(|(_, v)| v)
    }

    #[inline]
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> + '_ {
        self.shards.iter().flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

impl<V: Clone> CowMap<V> {
    /// The table `hash` lives in, copied first if another snapshot shares it.
    fn shard_mut(&mut self, hash: u64) -> &mut Shard<V> {
        if Arc::get_mut(&mut self.shards).is_none() {
            self.shards = self.shards.iter().cloned().collect();
        }
        // Just made if it was shared: this map holds the only reference.
        let shards = Arc::get_mut(&mut self.shards).unwrap_or_else(|| unreachable!());
        Arc::make_mut(&mut shards[shard_of(hash)])
    }

    /// Inserts or replaces; returns the value it replaced.
    pub fn insert(&mut self, key: Arc<str>, value: V) -> Option<V> {
        let hasher = self.hasher.clone();
        let hash = hasher.hash_one(&*key);
        let shard = self.shard_mut(hash);
        match shard.find_mut(hash, |(k, _)| *k == key) {
            Some(slot) => Some(std::mem::replace(&mut slot.1, value)),
            None => {
                shard.insert_unique(hash, (key, value), |(k, _)| hasher.hash_one(&**k));
                self.len += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let hash = self.hasher.hash_one(key);
        // Copy nothing for a key that is not there.
        self.shards[shard_of(hash)].find(hash, |(k, _)| **k == *key)?;
        let entry = self.shard_mut(hash).find_entry(hash, |(k, _)| **k == *key).ok()?;
        let ((_, value), _) = entry.remove();
        self.len -= 1;
        Some(value)
    }
}

impl<V: Clone> FromIterator<(Arc<str>, V)> for CowMap<V> {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, V)>>(iter: I) -> Self {
        let mut map = Self::default();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<V> std::ops::Index<&str> for CowMap<V> {
    type Output = V;

    /// Panics when the key is absent, like `HashMap`'s: for tests.
    fn index(&self, key: &str) -> &V {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no entry for key {key:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_is_unchanged_by_changes_to_the_original() {
        let mut a: CowMap<u32> = (0..5000u32).map(|i| (Arc::from(i.to_string()), i)).collect();
        let b = a.clone();
        assert_eq!(a.insert("7".into(), 70), Some(7));
        assert_eq!(a.remove("8"), Some(8));
        assert_eq!(a.remove("nope"), None);
        assert_eq!(a.insert("new".into(), 1), None);
        assert_eq!((a.len(), b.len()), (5000, 5000));
        assert_eq!((a.get("7"), b.get("7")), (Some(&70), Some(&7)));
        assert_eq!((a.get("8"), b.get("8")), (None, Some(&8)));
        assert_eq!(a.iter().count(), 5000);
        assert_eq!(b.values().copied().map(u64::from).sum::<u64>(), (0..5000u64).sum::<u64>());
    }

    #[test]
    fn a_change_copies_one_table_and_shares_the_rest() {
        let mut a: CowMap<u32> = (0..5000u32).map(|i| (Arc::from(i.to_string()), i)).collect();
        let b = a.clone();
        a.insert("1".into(), 10);
        let shared = a.shards.iter().zip(b.shards.iter()).filter(|(x, y)| Arc::ptr_eq(x, y)).count();
        assert_eq!(shared, SHARDS - 1);
    }
}
