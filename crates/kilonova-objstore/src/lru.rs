//! A least-recently-used map bounded by the bytes of its values.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Values with their sizes; inserting past `max_bytes` evicts the least
/// recently used. A value larger than the whole bound is not kept.
#[derive(Debug)]
pub(crate) struct ByteLru<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Use tick → key, oldest first.
    order: BTreeMap<u64, K>,
    tick: u64,
    bytes: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    size: usize,
    tick: u64,
}

impl<K: Clone + Eq + Hash, V: Clone> ByteLru<K, V> {
    pub(crate) fn new(max_bytes: usize) -> Self {
        ByteLru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            max_bytes,
        }
    }

    /// The value (marked as just used).
    pub(crate) fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.map.get_mut(key)?;
        self.order.remove(&slot.tick);
        slot.tick = tick;
        self.order.insert(tick, key.clone());
        Some(slot.value.clone())
    }

    /// Inserts (replacing `key`'s value); returns what was evicted to make
    /// room. A value larger than the whole bound is returned at once, not kept.
    pub(crate) fn insert(&mut self, key: K, value: V, size: usize) -> Vec<(K, V)> {
        self.remove(&key);
        if size > self.max_bytes {
            return vec![(key, value)];
        }
        let mut evicted = Vec::new();
        while self.bytes + size > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(s) = self.map.remove(&oldest) {
                self.bytes -= s.size;
                evicted.push((oldest, s.value));
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.map.insert(
            key,
            Slot {
                value,
                size,
                tick: self.tick,
            },
        );
        self.bytes += size;
        debug_assert!(self.bytes <= self.max_bytes, "the bound holds");
        evicted
    }

    pub(crate) fn remove(&mut self, key: &K) {
        if let Some(s) = self.map.remove(key) {
            self.order.remove(&s.tick);
            self.bytes -= s.size;
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_to_stay_within_bytes() {
        let mut c = ByteLru::new(10);
        c.insert("a", 1, 4);
        c.insert("b", 2, 4);
        assert_eq!(c.get(&"a"), Some(1)); // b is now the oldest
        assert_eq!(c.insert("c", 3, 4), vec![("b", 2)]);
        assert_eq!(c.get(&"b"), None);
        assert_eq!((c.get(&"a"), c.get(&"c")), (Some(1), Some(3)));
        assert_eq!((c.bytes(), c.len()), (8, 2));
    }

    #[test]
    fn a_value_larger_than_the_bound_is_not_kept_and_replacing_recounts() {
        let mut c = ByteLru::new(10);
        assert_eq!(c.insert("a", 1, 11), vec![("a", 1)]);
        assert_eq!(c.len(), 0);
        c.insert("a", 1, 6);
        c.insert("a", 2, 3);
        assert_eq!((c.get(&"a"), c.bytes()), (Some(2), 3));
        c.remove(&"a");
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }
}
