//! Bounded memory of recent entries, so tailing readers never touch the disk.
//!
//! One cache is shared by every managed log of a broker and bounded in bytes.
//! Entries leave it three ways, so that it holds what readers are about to ask
//! for and never more than its budget:
//! * the owning log evicts everything before a position — the slowest active
//!   reader's read position (default) or the slowest mark-delete position,
//!   chosen by [`EvictionStrategy`];
//! * [`EntryCache::evict_older_than`] drops entries published before a threshold;
//! * when over its byte budget, the oldest-inserted entries go first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::entry::Entry;
use crate::position::Position;

/// Which position a log evicts its cached entries before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EvictionStrategy {
    /// Before the slowest active cursor's read position: nobody will read them again soon.
    #[default]
    SlowestReader,
    /// Before the slowest mark-delete position: keeps unacked entries for fast redelivery.
    SlowestMarkDelete,
}

type Key = (u64, Position);

#[derive(Default)]
struct Inner {
    entries: BTreeMap<Key, (u64, Entry)>,
    by_age: BTreeMap<u64, Key>,
    bytes: usize,
    seq: u64,
}

impl Inner {
    fn remove(&mut self, key: &Key) {
        if let Some((seq, e)) = self.entries.remove(key) {
            self.by_age.remove(&seq);
            self.bytes -= e.size();
        }
    }
}

/// Counters of a cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// A byte-bounded cache of entries keyed by (log id, position).
pub struct EntryCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl EntryCache {
    pub fn new(max_bytes: usize) -> Self {
        EntryCache {
            max_bytes,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn insert(&self, log: u64, entry: Entry) {
        if entry.size() > self.max_bytes {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key = (log, entry.position);
        inner.remove(&key);
        inner.seq += 1;
        let seq = inner.seq;
        inner.bytes += entry.size();
        inner.by_age.insert(seq, key);
        inner.entries.insert(key, (seq, entry));
        while inner.bytes > self.max_bytes {
            let Some((_, oldest)) = inner.by_age.first_key_value().map(|(s, k)| (*s, *k)) else {
                break;
            };
            inner.remove(&oldest);
        }
    }

    /// The cached entry, counting a hit or a miss.
    pub fn get(&self, log: u64, position: Position) -> Option<Entry> {
        let found = self
            .inner
            .lock()
            .ok()
            .and_then(|i| i.entries.get(&(log, position)).map(|(_, e)| e.clone()));
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Drops the log's entries before `position`.
    pub fn evict_before(&self, log: u64, position: Position) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let keys: Vec<Key> = inner
            .entries
            .range((log, Position::default())..(log, position))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            inner.remove(&k);
        }
    }

    /// Drops every entry of the log.
    pub fn evict_log(&self, log: u64) {
        self.evict_before(log, Position::new(u64::MAX, u64::MAX));
    }

    /// Drops entries published before `threshold_ms`.
    pub fn evict_older_than(&self, threshold_ms: u64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let keys: Vec<Key> = inner
            .entries
            .iter()
            .filter(|(_, (_, e))| e.publish_time_ms < threshold_ms)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            inner.remove(&k);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = self
            .inner
            .lock()
            .map(|i| (i.entries.len() as u64, i.bytes as u64))
            .unwrap_or_default();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(seg: u64, e: u64, len: usize, t: u64) -> Entry {
        Entry {
            position: Position::new(seg, e),
            publish_time_ms: t,
            message_index: e,
            message_count: 1,
            data: Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn stays_within_its_byte_budget_dropping_the_oldest_first() {
        let c = EntryCache::new(1000);
        for e in 0..20 {
            c.insert(1, entry(1, e, 80, e));
        }
        let s = c.stats();
        assert!(s.bytes <= 1000, "{s:?}");
        assert!(c.get(1, Position::new(1, 0)).is_none());
        assert!(c.get(1, Position::new(1, 19)).is_some());
        assert_eq!(c.stats().hits, 1);
        assert_eq!(c.stats().misses, 1);
    }

    #[test]
    fn evicts_before_a_position_only_for_that_log() {
        let c = EntryCache::new(1 << 20);
        for e in 0..10 {
            c.insert(1, entry(5, e, 10, e));
            c.insert(2, entry(5, e, 10, e));
        }
        c.evict_before(1, Position::new(5, 6));
        assert!(c.get(1, Position::new(5, 5)).is_none());
        assert!(c.get(1, Position::new(5, 6)).is_some());
        assert!(c.get(2, Position::new(5, 0)).is_some());
        c.evict_older_than(8);
        assert!(c.get(2, Position::new(5, 7)).is_none());
        assert!(c.get(2, Position::new(5, 8)).is_some());
    }
}
