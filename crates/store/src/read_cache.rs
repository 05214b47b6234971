//! A bounded in-memory copy of small values the store commits under its write lock: the
//! accounts and the owners' usage counters that the relay reads for every write it accepts.
//!
//! Coherence rests on two rules:
//! - every commit that changes a cached keyspace calls [`ReadCache::committed`] for each key it
//!   changed, after the change is durable and visible and before the write lock is released, so
//!   an entry is never older than the store;
//! - a reader that missed fills the cache only if no commit came between the start of its read
//!   and its fill (checked under one lock, [`ReadCache::read_through`]): a value read just
//!   before a commit can never overwrite the value that commit put there.
//!
//! If a commit fails after part of it may have become visible, [`ReadCache::clear`] drops
//! everything, so the next reads go to the store.

use parking_lot::Mutex;

/// Keys are 32-byte x-only public keys.
pub(crate) type Key = [u8; 32];

/// A bounded, coherent read cache over one keyspace (see the module documentation).
pub(crate) struct ReadCache<V: Clone> {
    cache: quick_cache::sync::Cache<Key, V>,
    /// Counts commits that changed an entry; a fill happens only if it has not moved since the
    /// read began. The lock orders fills against commits.
    commits: Mutex<u64>,
}

impl<V: Clone> ReadCache<V> {
    /// A cache of at most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Self { cache: quick_cache::sync::Cache::new(capacity), commits: Mutex::new(0) }
    }

    /// The cached value of `key`, if any: the value of the latest commit that changed it.
    pub(crate) fn get(&self, key: &Key) -> Option<V> {
        self.cache.get(key)
    }

    /// The value of `key`: from the cache, or from `load` (a read of the store), which then
    /// fills the cache unless a commit changed this cache meanwhile. `None` is not cached.
    pub(crate) fn read_through<E>(
        &self,
        key: &Key,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E> {
        if let Some(value) = self.cache.get(key) {
            return Ok(Some(value));
        }
        let before = *self.commits.lock();
        let loaded = load()?;
        if let Some(value) = &loaded {
            let commits = self.commits.lock();
            if *commits == before {
                self.cache.insert(*key, value.clone());
            }
        }
        Ok(loaded)
    }

    /// Records the values a commit made durable and visible. Called under the store's write
    /// lock, after the commit and before any later one.
    pub(crate) fn committed(&self, changed: impl IntoIterator<Item = (Key, V)>) {
        let mut commits = self.commits.lock();
        *commits += 1;
        for (key, value) in changed {
            self.cache.insert(key, value);
        }
    }

    /// Forgets every entry (after a failed commit, whose effect on the store is unknown).
    pub(crate) fn clear(&self) {
        let mut commits = self.commits.lock();
        *commits += 1;
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_raced_a_commit_is_dropped() {
        let cache = ReadCache::<u64>::new(16);
        let key = [1; 32];
        // The read saw the old value, then a commit changed it before the fill.
        let got = cache.read_through::<()>(&key, || {
            cache.committed([(key, 2)]);
            Ok(Some(1))
        });
        assert_eq!(got, Ok(Some(1)), "the reader gets what it read");
        assert_eq!(cache.get(&key), Some(2), "the commit's value stays");

        // A read with no commit meanwhile fills the cache.
        let other = [2; 32];
        assert_eq!(cache.read_through::<()>(&other, || Ok(Some(7))), Ok(Some(7)));
        assert_eq!(cache.get(&other), Some(7));
        // A hit does not call `load`.
        assert_eq!(cache.read_through::<()>(&other, || panic!("loaded on a hit")), Ok(Some(7)));
    }

    #[test]
    fn misses_errors_and_clears_leave_nothing_behind() {
        let cache = ReadCache::<u64>::new(16);
        let key = [3; 32];
        assert_eq!(cache.read_through::<()>(&key, || Ok(None)), Ok(None));
        assert_eq!(cache.get(&key), None, "absence is not cached");
        assert_eq!(cache.read_through(&key, || Err("disk")), Err("disk"));
        assert_eq!(cache.get(&key), None);
        cache.committed([(key, 5)]);
        cache.clear();
        assert_eq!(cache.get(&key), None);
    }

    #[test]
    fn stays_within_its_capacity() {
        let cache = ReadCache::<u64>::new(64);
        for i in 0..10_000u32 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            cache.committed([(key, u64::from(i))]);
        }
        assert!(cache.cache.len() <= 64, "{} entries", cache.cache.len());
    }
}
