//! A small byte-bounded LRU map, used for the in-memory caches and the disk cache's index.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Least-recently-used map bounded by the sum of its entries' weights.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    map: HashMap<K, (V, u64, u64)>,
    order: BTreeMap<u64, K>,
    tick: u64,
    weight: u64,
    limit: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    pub(crate) fn new(limit: u64) -> Self {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            weight: 0,
            limit,
        }
    }

    /// The value, marked as just used.
    pub(crate) fn get(&mut self, k: &K) -> Option<V> {
        let (v, t, _) = self.map.get_mut(k)?;
        self.order.remove(t);
        self.tick += 1;
        *t = self.tick;
        self.order.insert(self.tick, k.clone());
        Some(v.clone())
    }

    /// Is `k` present? (Does not count as a use.)
    pub(crate) fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    /// Insert (or replace) `k`, then return what had to be evicted to stay within the limit.
    /// The entry just inserted is never evicted by its own insertion.
    pub(crate) fn insert(&mut self, k: K, v: V, weight: u64) -> Vec<(K, V)> {
        self.remove(&k);
        self.tick += 1;
        self.order.insert(self.tick, k.clone());
        self.map.insert(k.clone(), (v, self.tick, weight));
        self.weight += weight;
        let mut out = Vec::new();
        while self.weight > self.limit && self.map.len() > 1 {
            let (_, oldest) = self.order.pop_first().expect("order mirrors map");
            if oldest == k {
                // Only the new entry is left in order; put it back and stop.
                self.order.insert(self.tick, oldest);
                break;
            }
            let (v, _, w) = self.map.remove(&oldest).expect("order mirrors map");
            self.weight -= w;
            out.push((oldest, v));
        }
        out
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        let (v, t, w) = self.map.remove(k)?;
        self.order.remove(&t);
        self.weight -= w;
        Some(v)
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_by_weight() {
        let mut l = Lru::new(10);
        assert!(l.insert(1, 'a', 4).is_empty());
        assert!(l.insert(2, 'b', 4).is_empty());
        assert_eq!(l.get(&1), Some('a'));
        assert_eq!(l.insert(3, 'c', 4), vec![(2, 'b')]);
        assert!(l.contains(&1) && l.contains(&3) && !l.contains(&2));
        assert_eq!(l.weight(), 8);
        // An entry larger than the limit evicts everything else but stays.
        let gone = l.insert(4, 'd', 50);
        assert_eq!(gone.len(), 2);
        assert_eq!(l.get(&4), Some('d'));
    }
}
