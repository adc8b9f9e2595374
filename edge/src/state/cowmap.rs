//! A hash map whose clone costs two reference counts and whose change copies ~1/4096th of it.
//!
//! Why not one `HashMap` (before issue 17): every batch of changes cloned every map, 1M sandboxes' worth
//! of entries and reference counts for one changed sandbox.
//!
//! Why not a HAMT (`imbl::HashMap`, `rpds::HashTrieMap`): a lookup walks 4–5 levels of pointers at 1M
//! entries (a cache miss each), and the nodes carry per-node arrays and reference counts that cost more
//! memory per entry than a flat table; both matter here, the hot path does two to three gets per request
//! and an edge holds millions of entries.
//!
//! This is a shallow copy-on-write tree instead: [`SHARDS`] (4096) `hashbrown` tables, each behind its
//! own `Arc`, in 64 `Arc`'d groups of 64, in one `Arc`'d array. Bits of the key's hash pick the table.
//! - Lookup: one hash, two extra pointer hops, then a flat SwissTable probe: as fast as a plain `HashMap`.
//! - Clone (a new snapshot): two reference counts.
//! - Change: copies, once per snapshot and map, the top array and one group (64 + 64 reference counts),
//!   and the one table the key lives in (n/4096 entries: ~250 at 1M). Applying a change is a few hundred
//!   reference counts at the sizes an edge holds.
//! - Memory: the entries of a flat table, plus 4096 small headers per map.
//!
//! A small map (tenants, keys, domains: up to [`SMALL`] entries) is one table instead, which a change
//! copies whole (a few µs at that size). Spread over 4096 tables, each of its entries sat in a table of its
//! own, header, control bytes and bucket in lines of their own: a route looks its tenant up on every
//! request, and those lines did not stay in cache next to a million sandboxes' traffic. It is split into
//! shards once it outgrows that.
//!
//! Two forms over the same tables: [`CowMap`], `Arc<str>` keys to values, and [`CowIndex`], records
//! (`Arc<T>`) found by one of their own fields. An index stores one pointer per entry and no key of its
//! own: at a million sandboxes the keys' separate allocations were a third of the edge's memory.
//!
//! The hash is foldhash (hashbrown's own default) seeded at random per process and per map, not the
//! standard library's SipHash: SipHash was a fifth of a route lookup at 1M sandboxes, and a lookup hashes
//! two or three keys. The random seed is what matters here: keys come from tenants (sandbox ids, domains)
//! and lookups from clients (hosts), and neither can build colliding keys without knowing the seed, which
//! nothing the edge answers reveals (no response depends on a table's order). foldhash does not claim to
//! withstand an attacker who can observe hash values; nobody outside can. Its own default seed is only
//! address-space layout and the clock, so the seeds here come from the OS's random source instead (through
//! the standard library's `RandomState`), one shared per process and one per map.

use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use foldhash::quality::SeedableRandomState;
use foldhash::SharedSeed;
use hashbrown::HashTable;

/// How many tables a map is split into (a power of two): `GROUPS` groups of `PER_GROUP`, so that a change
/// copies one group's pointers (64), not all of them.
pub const SHARDS: usize = GROUPS * PER_GROUP;
const GROUPS: usize = 64;
const PER_GROUP: usize = 64;
/// The most entries a map holds in one table (see the module's summary).
const SMALL: usize = 1024;

/// A hasher with a seed no client can know (see the module's summary for why); the rate limiter's too.
#[derive(Clone)]
pub struct Seeded(SeedableRandomState);

impl Seeded {
    pub fn new() -> Self {
        static SHARED: OnceLock<SharedSeed> = OnceLock::new();
        // std's `RandomState` keys come from the OS's random source; what they hash to is as random.
        let random = || std::collections::hash_map::RandomState::new().hash_one(0u64);
        let shared = SHARED.get_or_init(|| SharedSeed::from_u64(random()));
        Self(SeedableRandomState::with_seed(random(), shared))
    }

    #[inline]
    fn hash_one<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.0.hash_one(key)
    }
}

impl Default for Seeded {
    fn default() -> Self {
        Self::new()
    }
}

impl BuildHasher for Seeded {
    type Hasher = <SeedableRandomState as BuildHasher>::Hasher;

    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// What a table holds: something with a key (a string, or a digest's bytes).
pub trait Entry: Clone {
    type Key: ?Sized + Hash + Eq + std::fmt::Debug;
    fn key(&self) -> &Self::Key;
}

/// One group of tables.
type Group<E> = Arc<[Arc<HashTable<E>>]>;

/// The copy-on-write table both forms are made of.
struct Table<E> {
    shards: Arc<[Group<E>]>,
    /// `SHARDS - 1`, or 0 for a small map: one group of one table.
    mask: usize,
    hasher: Seeded,
    len: usize,
}

impl<E> Clone for Table<E> {
    fn clone(&self) -> Self {
        Self { shards: self.shards.clone(), mask: self.mask, hasher: self.hasher.clone(), len: self.len }
    }
}

impl<E> Default for Table<E> {
    /// A small map, empty.
    fn default() -> Self {
        let one: Group<E> = Arc::new([Arc::new(HashTable::new())]);
        Self { shards: Arc::new([one]), mask: 0, hasher: Seeded::new(), len: 0 }
    }
}

/// The group and the table in it.
#[inline]
fn shard_of(hash: u64, mask: usize) -> (usize, usize) {
    // hashbrown uses the top 7 bits (control bytes) and the low bits (bucket): take the middle ones.
    let i = (hash >> 32) as usize & mask;
    (i / PER_GROUP, i % PER_GROUP)
}

impl<E: Entry> Table<E> {
    #[inline]
    fn get(&self, key: &E::Key) -> Option<&E> {
        // Most edges have no custom domains, and an unknown host asks three such maps.
        if self.len == 0 {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        let (g, t) = shard_of(hash, self.mask);
        self.shards[g][t].find(hash, |e| e.key() == key)
    }

    /// A table of `entries`, none of which another table shares: each shard is sized once for its share of
    /// `hint` entries and filled in place, where inserting one by one would check every shard's sharing
    /// and grow (rehash) each table several times — most of a cold start's time at a million entries.
    /// A later entry with the same key replaces an earlier one, as [`Table::insert`] does.
    fn build(hint: usize, entries: impl IntoIterator<Item = E>) -> Self {
        if hint <= SMALL {
            let mut table = Self::default();
            entries.into_iter().for_each(|e| drop(table.insert(e)));
            return table;
        }
        let hasher = Seeded::new();
        // The mean share plus room for the spread (a shard's count varies by about its square root).
        let mean = hint / SHARDS;
        let per = mean + mean / 8 + 8;
        // Each entry goes to its shard's list first, and each table is then filled from its own list:
        // filling the tables straight from the entries touched one of 4096 tables at random per entry (tens
        // of MB at a million, more than the cache), a miss or two each, where the end of every list stays
        // in cache.
        let mut lists: Vec<Vec<(u64, E)>> = (0..SHARDS).map(|_| Vec::with_capacity(per)).collect();
        for entry in entries {
            let hash = hasher.hash_one(entry.key());
            let (g, t) = shard_of(hash, SHARDS - 1);
            lists[g * PER_GROUP + t].push((hash, entry));
        }
        let mut len = 0;
        let tables: Vec<HashTable<E>> = lists
            .into_iter()
            .map(|list| {
                let mut table = HashTable::with_capacity(list.len());
                for (hash, entry) in list {
                    match table.find_mut(hash, |e: &E| e.key() == entry.key()) {
                        Some(slot) => *slot = entry,
                        None => {
                            table.insert_unique(hash, entry, |e| hasher.hash_one(e.key()));
                            len += 1;
                        }
                    }
                }
                table
            })
            .collect();
        let mut tables = tables.into_iter().map(Arc::new);
        let shards = (0..GROUPS).map(|_| tables.by_ref().take(PER_GROUP).collect::<Group<E>>()).collect();
        Self { shards, mask: SHARDS - 1, hasher, len }
    }

    fn iter(&self) -> impl Iterator<Item = &E> + '_ {
        self.shards.iter().flat_map(|g| g.iter()).flat_map(|s| s.iter())
    }

    /// The table `hash` lives in, copied first if another snapshot shares it.
    fn shard_mut(&mut self, hash: u64) -> &mut HashTable<E> {
        let (g, t) = shard_of(hash, self.mask);
        if Arc::get_mut(&mut self.shards).is_none() {
            self.shards = self.shards.iter().cloned().collect();
        }
        // Just made if it was shared: this map holds the only reference.
        let groups = Arc::get_mut(&mut self.shards).unwrap_or_else(|| unreachable!());
        let group = &mut groups[g];
        if Arc::get_mut(group).is_none() {
            *group = group.iter().cloned().collect();
        }
        let group = Arc::get_mut(group).unwrap_or_else(|| unreachable!());
        Arc::make_mut(&mut group[t])
    }

    /// Inserts or replaces the entry with the same key; returns the one it replaced.
    fn insert(&mut self, entry: E) -> Option<E> {
        let hasher = self.hasher.clone();
        let hash = hasher.hash_one(entry.key());
        let shard = self.shard_mut(hash);
        match shard.find_mut(hash, |e| e.key() == entry.key()) {
            Some(slot) => Some(std::mem::replace(slot, entry)),
            None => {
                shard.insert_unique(hash, entry, |e| hasher.hash_one(e.key()));
                self.len += 1;
                if self.mask == 0 && self.len > SMALL {
                    *self = Self::build(self.len, self.iter().cloned().collect::<Vec<_>>());
                }
                None
            }
        }
    }

    fn remove(&mut self, key: &E::Key) -> Option<E> {
        let hash = self.hasher.hash_one(key);
        // Copy nothing for a key that is not there.
        let (g, t) = shard_of(hash, self.mask);
        self.shards[g][t].find(hash, |e| e.key() == key)?;
        let (entry, _) = self.shard_mut(hash).find_entry(hash, |e| e.key() == key).ok()?.remove();
        self.len -= 1;
        Some(entry)
    }
}

/// `Arc<str>` keys to values.
pub struct CowMap<V>(Table<(Arc<str>, V)>);

impl<V: Clone> Entry for (Arc<str>, V) {
    type Key = str;
    fn key(&self) -> &str {
        &self.0
    }
}

impl<V> Clone for CowMap<V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<V> Default for CowMap<V> {
    fn default() -> Self {
        Self(Table::default())
    }
}

impl<V: Clone + std::fmt::Debug> std::fmt::Debug for CowMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Clone> CowMap<V> {
    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.get(key).map(|(_, v)| v)
    }

    #[inline]
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> + '_ {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.0.iter().map(|(_, v)| v)
    }

    /// Inserts or replaces; returns the value it replaced.
    pub fn insert(&mut self, key: Arc<str>, value: V) -> Option<V> {
        self.0.insert((key, value)).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.0.remove(key).map(|(_, v)| v)
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

impl<V: Clone> std::ops::Index<&str> for CowMap<V> {
    type Output = V;

    /// Panics when the key is absent, like `HashMap`'s: for tests.
    fn index(&self, key: &str) -> &V {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no entry for key {key:?}"),
        }
    }
}

/// Which field of a `T` a [`CowIndex`] finds it by.
pub trait KeyOf<T> {
    type Key: ?Sized + Hash + Eq + std::fmt::Debug;
    fn key(record: &T) -> &Self::Key;
}

/// An entry of a [`CowIndex`]: the record (its key read from it) and a small value of the index's own.
pub struct Keyed<T, K, X>(Arc<T>, X, PhantomData<fn() -> K>);

impl<T, K, X: Copy> Clone for Keyed<T, K, X> {
    fn clone(&self) -> Self {
        Self(self.0.clone(), self.1, PhantomData)
    }
}

impl<T, K: KeyOf<T>, X: Copy> Entry for Keyed<T, K, X> {
    type Key = K::Key;
    fn key(&self) -> &K::Key {
        K::key(&self.0)
    }
}

/// Records found by one of their own fields (`K`), each with a small value `X` that is the index's, not
/// the record's (none by default): what a look-up wants next to the record without another look-up.
pub struct CowIndex<T, K, X = ()>(Table<Keyed<T, K, X>>);

impl<T, K, X> Clone for CowIndex<T, K, X> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T, K, X> Default for CowIndex<T, K, X> {
    fn default() -> Self {
        Self(Table::default())
    }
}

impl<T: std::fmt::Debug, K: KeyOf<T>, X: Copy> std::fmt::Debug for CowIndex<T, K, X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values()).finish()
    }
}

impl<T, K: KeyOf<T>, X: Copy> CowIndex<T, K, X> {
    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    #[inline]
    pub fn get(&self, key: &K::Key) -> Option<&Arc<T>> {
        self.0.get(key).map(|e| &e.0)
    }

    /// The record with the index's value for it.
    #[inline]
    pub fn get_with(&self, key: &K::Key) -> Option<(&Arc<T>, X)> {
        self.0.get(key).map(|e| (&e.0, e.1))
    }

    #[inline]
    pub fn contains_key(&self, key: &K::Key) -> bool {
        self.0.get(key).is_some()
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<T>> + '_ {
        self.0.iter().map(|e| &e.0)
    }

    /// An index of `records` built at once (see [`Table::build`]); a later record with the same key
    /// replaces an earlier one.
    pub fn build_with(records: impl ExactSizeIterator<Item = (Arc<T>, X)>) -> Self {
        Self(Table::build(records.len(), records.map(|(r, x)| Keyed(r, x, PhantomData))))
    }

    /// Inserts or replaces the record with the same key; returns the one it replaced.
    pub fn insert_with(&mut self, record: Arc<T>, x: X) -> Option<Arc<T>> {
        self.0.insert(Keyed(record, x, PhantomData)).map(|e| e.0)
    }

    pub fn remove(&mut self, key: &K::Key) -> Option<Arc<T>> {
        self.0.remove(key).map(|e| e.0)
    }
}

impl<T, K: KeyOf<T>> CowIndex<T, K> {
    /// See [`Self::build_with`].
    pub fn build(records: impl ExactSizeIterator<Item = Arc<T>>) -> Self {
        Self::build_with(records.map(|r| (r, ())))
    }

    /// See [`Self::insert_with`].
    pub fn insert(&mut self, record: Arc<T>) -> Option<Arc<T>> {
        self.insert_with(record, ())
    }
}

impl<T, K: KeyOf<T>, X: Copy> std::ops::Index<&K::Key> for CowIndex<T, K, X> {
    type Output = Arc<T>;

    /// Panics when the key is absent, like `HashMap`'s: for tests.
    fn index(&self, key: &K::Key) -> &Arc<T> {
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
        let tables = |m: &CowMap<u32>| m.0.shards.iter().flat_map(|g| g.iter().cloned()).collect::<Vec<_>>();
        let shared = tables(&a).iter().zip(tables(&b).iter()).filter(|(x, y)| Arc::ptr_eq(x, y)).count();
        assert_eq!(shared, SHARDS - 1);
        let groups = a.0.shards.iter().zip(b.0.shards.iter()).filter(|(x, y)| Arc::ptr_eq(x, y)).count();
        assert_eq!(groups, GROUPS - 1);
    }

    #[test]
    fn a_small_map_is_one_table_until_it_outgrows_it() {
        let mut a: CowMap<usize> = (0..SMALL).map(|i| (Arc::from(i.to_string()), i)).collect();
        assert_eq!((a.0.mask, a.0.shards.len()), (0, 1));
        let small = a.clone();
        a.insert("one more".into(), SMALL);
        assert_eq!((a.0.mask, a.0.shards.len(), a.len()), (SHARDS - 1, GROUPS, SMALL + 1));
        assert!((0..SMALL).all(|i| a.get(&i.to_string()) == Some(&i)) && a["one more"] == SMALL);
        assert_eq!((small.len(), small.get("one more")), (SMALL, None), "the clone is untouched");
        let built = CowIndex::<_, Name>::build((0..SMALL + 1).map(|i| Arc::new((format!("n{i}"), i as u32))));
        assert_eq!((built.0.mask, built.len()), (SHARDS - 1, SMALL + 1));
    }

    #[test]
    fn a_built_table_is_the_table_inserts_make() {
        let records: Vec<Arc<(String, u32)>> = (0..50_000).map(|i| Arc::new((format!("n{i}"), i))).collect();
        let mut inserted: CowIndex<(String, u32), Name> = CowIndex::default();
        for r in &records {
            inserted.insert(r.clone());
        }
        let mut built = CowIndex::<_, Name>::build(records.iter().cloned());
        assert_eq!((built.len(), inserted.len()), (50_000, 50_000));
        assert!(records.iter().all(|r| built.get(&r.0).is_some_and(|b| Arc::ptr_eq(b, r))));
        // A later duplicate replaces the earlier one, and the built index stays copy-on-write.
        let twice =
            CowIndex::<_, Name>::build([Arc::new(("a".into(), 1)), Arc::new(("a".into(), 2))].into_iter());
        assert_eq!((twice.len(), twice["a"].1), (1, 2));
        let copy = built.clone();
        built.insert(Arc::new(("n7".into(), 70)));
        assert_eq!((built["n7"].1, copy["n7"].1), (70, 7));
    }

    /// Entries past their shard's share wait apart while a big table is built: the last of a key still wins.
    #[test]
    fn a_built_table_keeps_the_last_of_each_key_however_they_crowd_one_shard() {
        let records = (0..5000u32).map(|i| Arc::new((format!("k{}", i % 10), i)));
        let built = CowIndex::<_, Name>::build(records);
        assert_eq!((built.0.mask, built.len()), (SHARDS - 1, 10));
        assert!((0..10u32).all(|k| built[format!("k{k}").as_str()].1 == 4990 + k));
    }

    struct Name;
    impl KeyOf<(String, u32)> for Name {
        type Key = str;
        fn key(record: &(String, u32)) -> &str {
            &record.0
        }
    }

    #[test]
    fn an_index_finds_records_by_their_own_field() {
        let mut a: CowIndex<(String, u32), Name> = CowIndex::default();
        for i in 0..3000 {
            a.insert(Arc::new((format!("n{i}"), i)));
        }
        let b = a.clone();
        assert_eq!(a.insert(Arc::new(("n5".into(), 50))).map(|r| r.1), Some(5));
        assert_eq!(a.remove("n6").map(|r| r.1), Some(6));
        assert_eq!((a.len(), b.len()), (2999, 3000));
        assert_eq!((a["n5"].1, b["n5"].1), (50, 5));
        assert!(!a.contains_key("n6") && b.contains_key("n6"));
        assert_eq!(a.values().count(), 2999);
    }
}
