//! A byte-bounded least-recently-used store of blobs by digest.
//!
//! The network task answers blob requests from here without asking the node: the node's own
//! published payloads, payloads fetched for announce-fetch topics and the chunks of checkpoints
//! it served. Its size is fixed by the config, so peers cannot grow it.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::Digest;

#[derive(Debug)]
pub(crate) struct BlobCache {
    capacity: usize,
    used: usize,
    tick: u64,
    entries: HashMap<Digest, (Bytes, u64)>,
    order: BTreeMap<u64, Digest>,
}

impl BlobCache {
    pub fn new(capacity: usize) -> Self {
        BlobCache {
            capacity,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Stores `bytes` (whose digest the caller has computed) as most recently used; evicts the
    /// least recently used until it fits. A blob larger than the capacity is not stored.
    pub fn insert(&mut self, digest: Digest, bytes: Bytes) {
        if bytes.len() > self.capacity {
            return;
        }
        self.remove(&digest);
        while self.used + bytes.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.used -= old.len();
            }
        }
        self.tick += 1;
        self.used += bytes.len();
        self.order.insert(self.tick, digest);
        self.entries.insert(digest, (bytes, self.tick));
    }

    /// The blob (shared, not copied), marking it recently used.
    pub fn get(&mut self, digest: &Digest) -> Option<Bytes> {
        let (bytes, tick) = self.entries.get_mut(digest)?;
        self.order.remove(tick);
        self.tick += 1;
        *tick = self.tick;
        self.order.insert(self.tick, *digest);
        Some(bytes.clone())
    }

    #[cfg(test)]
    pub fn contains(&self, digest: &Digest) -> bool {
        self.entries.contains_key(digest)
    }

    pub fn remove(&mut self, digest: &Digest) {
        if let Some((bytes, tick)) = self.entries.remove(digest) {
            self.order.remove(&tick);
            self.used -= bytes.len();
        }
    }

    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, len: usize) -> (Digest, Bytes) {
        let bytes = vec![n; len];
        (Digest::of(&bytes), bytes.into())
    }

    #[test]
    fn evicts_least_recently_used_to_stay_within_capacity() {
        let mut cache = BlobCache::new(100);
        let (a, ab) = blob(1, 40);
        let (b, bb) = blob(2, 40);
        let (c, cb) = blob(3, 40);
        cache.insert(a, ab.clone());
        cache.insert(b, bb);
        assert_eq!(cache.get(&a), Some(ab));
        cache.insert(c, cb);
        assert!(cache.contains(&a), "a was used recently");
        assert!(!cache.contains(&b), "b was the least recently used");
        assert!(cache.contains(&c));
        assert_eq!(cache.used(), 80);
    }

    #[test]
    fn oversized_blobs_and_reinserts_keep_accounting_exact() {
        let mut cache = BlobCache::new(100);
        let (big, bigb) = blob(9, 101);
        cache.insert(big, bigb);
        assert!(!cache.contains(&big));
        let (a, ab) = blob(1, 60);
        cache.insert(a, ab.clone());
        cache.insert(a, ab);
        assert_eq!(cache.used(), 60);
        cache.remove(&a);
        assert_eq!(cache.used(), 0);
        assert_eq!(cache.get(&a), None);
    }
}
