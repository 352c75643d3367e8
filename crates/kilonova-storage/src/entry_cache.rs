//! Bounded memory of recent entries, so tailing readers never touch the disk.
//!
//! One cache is shared by every managed log of a broker and bounded in bytes.
//! A log puts its appended entries in while something reads it — a cursor,
//! or a reader by message index (the Kafka edge) — as Pulsar caches a
//! ledger's entries while it has active cursors: a log nobody reads would
//! fill it only to empty it at retention, a segment at a time.
//! Entries leave it three ways, so that it holds what readers are about to ask
//! for and never more than its budget:
//! * the owning log evicts everything before a position — the slowest active
//!   reader's read position (default) or the slowest mark-delete position,
//!   chosen by [`EvictionStrategy`] (or none: [`EvictionStrategy::TimeOnly`]);
//! * [`EntryCache::evict_cached_before`] drops entries cached longer than a
//!   time threshold (the broker calls it on a timer);
//! * when over its byte budget, the oldest-inserted entries go first.
//!
//! The budget counts what the cache holds, so an entry up to
//! [`COPIED_UP_TO_BYTES`] is copied when it goes in: the bytes it arrived
//! in are a slice of a connection's read buffer, shared with every other
//! frame read into it (one connection carries a client's producers of many
//! topics), and a slice kept would keep that whole buffer alive — a lagging
//! reader of one topic could hold a hundred times its budget in other
//! topics' frames. A larger entry came in a buffer about its own size and
//! is kept as it is.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

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
    /// Never by position: entries leave only by age (the broker's time
    /// threshold) or the byte budget, so read entries stay for consumers
    /// that lag or restart and read them again.
    TimeOnly,
}

type Key = (u64, Position);

/// Size classes of held entries, as Netty's pooled allocator (which holds
/// Pulsar's cache) names its allocations: small up to 28 KiB, normal up to a
/// 16 MiB chunk, huge beyond.
const SMALL_MAX_BYTES: usize = 28 << 10;
const NORMAL_MAX_BYTES: usize = 16 << 20;

fn size_class(bytes: usize) -> usize {
    match bytes {
        b if b <= SMALL_MAX_BYTES => 0,
        b if b <= NORMAL_MAX_BYTES => 1,
        _ => 2,
    }
}

/// Entries up to this size are copied when cached, not kept as slices of
/// the buffer they arrived in (a connection reads at most 64 KiB at a time,
/// so a larger entry's buffer is about its own size).
pub const COPIED_UP_TO_BYTES: usize = 64 << 10;

/// Evicting before a position pops up to this many entries one by one
/// before it splits the map for the rest.
const POPPED_AT_MOST: usize = 32;

/// Evicted entries at least this many are freed on the blocking pool.
const FREE_ELSEWHERE_ENTRIES: usize = 1024;

/// An entry held, with its number in insertion order.
struct Held {
    seq: u64,
    entry: Entry,
}

/// One log's entries, by position.
type LogEntries = BTreeMap<Position, Held>;

/// What the cache holds. A log's entries are a map of their own, so that
/// evicting many entries before a position splits the map instead of
/// removing them one by one (a segment's 50,000 entries went in 13 ms,
/// under the lock every topic inserts through); the few a reader's step
/// leaves behind are popped from its front (a split costs node allocations
/// whatever it takes). The insertion order is a queue of
/// (number, key, time) that evictions leave as it is: a record whose entry
/// is gone, or was inserted again, is skipped when it comes up, and the
/// queue is rebuilt when such records outnumber the entries.
#[derive(Default)]
struct Inner {
    logs: HashMap<u64, LogEntries>,
    by_age: VecDeque<(u64, Key, Instant)>,
    entries: usize,
    bytes: usize,
    seq: u64,
    /// Entries held by size class (small, normal, huge).
    by_class: [u64; 3],
}

impl Inner {
    fn get(&self, key: &Key) -> Option<&Held> {
        self.logs.get(&key.0)?.get(&key.1)
    }

    /// Counts an entry that left.
    fn forget(&mut self, e: &Entry) {
        self.entries -= 1;
        self.bytes -= e.size();
        let class = size_class(e.size());
        self.by_class[class] = self.by_class[class].saturating_sub(1);
    }

    /// Removes an entry; whether it was there.
    fn remove(&mut self, key: &Key) -> bool {
        let Some(log) = self.logs.get_mut(&key.0) else {
            return false;
        };
        let Some(held) = log.remove(&key.1) else {
            return false;
        };
        if log.is_empty() {
            self.logs.remove(&key.0);
        }
        self.forget(&held.entry);
        true
    }

    fn insert(&mut self, key: Key, entry: Entry, now: Instant) {
        self.remove(&key);
        self.seq += 1;
        self.entries += 1;
        self.bytes += entry.size();
        self.by_class[size_class(entry.size())] += 1;
        self.by_age.push_back((self.seq, key, now));
        let held = Held {
            seq: self.seq,
            entry,
        };
        self.logs.entry(key.0).or_default().insert(key.1, held);
        if self.by_age.len() > 2 * self.entries + 1024 {
            self.drop_stale_ages();
        }
    }

    /// The oldest entry still held (its record in the insertion order
    /// comes off the queue, with the stale ones before it).
    fn pop_oldest_if(&mut self, keep: impl Fn(Instant) -> bool) -> Option<Key> {
        while let Some(&(seq, key, at)) = self.by_age.front() {
            if self.get(&key).is_none_or(|h| h.seq != seq) {
                self.by_age.pop_front();
                continue;
            }
            if keep(at) {
                return None;
            }
            self.by_age.pop_front();
            return Some(key);
        }
        None
    }

    fn drop_stale_ages(&mut self) {
        let by_age = std::mem::take(&mut self.by_age);
        self.by_age = by_age
            .into_iter()
            .filter(|(seq, key, _)| self.get(key).is_some_and(|h| h.seq == *seq))
            .collect();
    }

    /// Takes the log's entries from `from` up to (not including) `to` out.
    fn take_range(&mut self, log: u64, from: Position, to: Position) -> LogEntries {
        let Some(entries) = self.logs.get_mut(&log) else {
            return LogEntries::new();
        };
        let to = to.max(from);
        // Most calls find nothing to take (an acknowledgement that moved no
        // reader): no split, which allocates and moves nodes along both
        // edges of the map even when it takes nothing.
        if entries.range(from..to).next().is_none() {
            return LogEntries::new();
        }
        let mut taken = LogEntries::new();
        if from == Position::default() {
            // Evicting behind a reader that moved on: a few entries at the
            // front, popped one by one.
            while taken.len() < POPPED_AT_MOST {
                match entries.first_entry() {
                    Some(first) if *first.key() < to => {
                        let (position, held) = first.remove_entry();
                        taken.insert(position, held);
                    }
                    _ => break,
                }
            }
        }
        if entries.range(from..to).next().is_some() {
            let mut rest = entries.split_off(&from);
            let mut after = rest.split_off(&to);
            entries.append(&mut after);
            taken.append(&mut rest);
        }
        if entries.is_empty() {
            self.logs.remove(&log);
        }
        for held in taken.values() {
            self.forget(&held.entry);
        }
        taken
    }
}

/// Counters of a cache: totals since it was made (hits, misses, their
/// bytes, inserts, evictions) and what it holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    /// Bytes of the entries served from the cache.
    pub hit_bytes: u64,
    pub misses: u64,
    /// Bytes read from storage after a miss.
    pub miss_bytes: u64,
    /// Entries put in the cache.
    pub inserted: u64,
    /// Evictions that removed something (a log evicting before a position,
    /// the time threshold, the byte budget): Pulsar counts eviction runs.
    pub evictions: u64,
    /// Entries removed by evictions.
    pub evicted_entries: u64,
    pub entries: u64,
    pub bytes: u64,
    /// Entries held by size class: up to 28 KiB, up to 16 MiB, beyond.
    pub entries_small: u64,
    pub entries_normal: u64,
    pub entries_huge: u64,
}

/// A byte-bounded cache of entries keyed by (log id, position).
pub struct EntryCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    hit_bytes: AtomicU64,
    misses: AtomicU64,
    miss_bytes: AtomicU64,
    inserted: AtomicU64,
    evictions: AtomicU64,
    evicted_entries: AtomicU64,
}

impl EntryCache {
    pub fn new(max_bytes: usize) -> Self {
        EntryCache {
            max_bytes,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            hit_bytes: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            miss_bytes: AtomicU64::new(0),
            inserted: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            evicted_entries: AtomicU64::new(0),
        }
    }

    /// Counts one eviction of `n` entries (none: nothing to count).
    fn count_eviction(&self, n: u64) {
        if n > 0 {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            self.evicted_entries.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn insert(&self, log: u64, mut entry: Entry) {
        if entry.size() > self.max_bytes {
            return;
        }
        if entry.data.len() <= COPIED_UP_TO_BYTES {
            entry.data = bytes::Bytes::copy_from_slice(&entry.data);
        }
        let now = Instant::now();
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.insert((log, entry.position), entry, now);
        self.inserted.fetch_add(1, Ordering::Relaxed);
        let mut over_budget = 0;
        while inner.bytes > self.max_bytes {
            let Some(oldest) = inner.pop_oldest_if(|_| false) else {
                break;
            };
            inner.remove(&oldest);
            over_budget += 1;
        }
        drop(inner);
        self.count_eviction(over_budget);
    }

    /// The cached entry, counting a hit or a miss.
    pub fn get(&self, log: u64, position: Position) -> Option<Entry> {
        let found = self
            .inner
            .lock()
            .ok()
            .and_then(|i| i.get(&(log, position)).map(|h| h.entry.clone()));
        match &found {
            Some(e) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.hit_bytes.fetch_add(e.size() as u64, Ordering::Relaxed);
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        found
    }

    /// Counts the bytes a reader read from storage after a miss.
    pub fn count_miss_bytes(&self, bytes: usize) {
        self.miss_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Drops the log's entries before `position`.
    pub fn evict_before(&self, log: u64, position: Position) {
        self.evict_range(log, Position::default(), position);
    }

    /// Drops the log's entries from `from` up to (not including) `to`.
    pub fn evict_range(&self, log: u64, from: Position, to: Position) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let taken = inner.take_range(log, from, to);
        drop(inner);
        self.count_eviction(taken.len() as u64);
        // Freed outside the lock; many (a segment's, at retention) on the
        // blocking pool: 50,000 entries took 7.5 ms to free.
        if taken.len() >= FREE_ELSEWHERE_ENTRIES {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                drop(runtime.spawn_blocking(move || drop(taken)));
            }
        }
    }

    /// Drops every entry of the log.
    pub fn evict_log(&self, log: u64) {
        self.evict_before(log, Position::new(u64::MAX, u64::MAX));
    }

    /// Drops the entries inserted before `cutoff` (cached longer than the
    /// broker's time threshold), oldest first: as many steps as entries go.
    pub fn evict_cached_before(&self, cutoff: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let mut n = 0;
        while let Some(key) = inner.pop_oldest_if(|at| at >= cutoff) {
            inner.remove(&key);
            n += 1;
        }
        drop(inner);
        self.count_eviction(n);
    }

    pub fn stats(&self) -> CacheStats {
        let (entries, bytes, by_class) = self
            .inner
            .lock()
            .map(|i| (i.entries as u64, i.bytes as u64, i.by_class))
            .unwrap_or_default();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: load(&self.hits),
            hit_bytes: load(&self.hit_bytes),
            misses: load(&self.misses),
            miss_bytes: load(&self.miss_bytes),
            inserted: load(&self.inserted),
            evictions: load(&self.evictions),
            evicted_entries: load(&self.evicted_entries),
            entries,
            bytes,
            entries_small: by_class[0],
            entries_normal: by_class[1],
            entries_huge: by_class[2],
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

    /// Bytes whose buffer says when it is freed.
    struct Watched(Vec<u8>, std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl AsRef<[u8]> for Watched {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Watched {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_small_entry_cached_does_not_keep_the_buffer_it_arrived_in() {
        let c = EntryCache::new(1 << 20);
        let freed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A 64 KiB read holding a 100-byte frame among others.
        let mut read = vec![7u8; 64 << 10];
        read[1000..1100].fill(9);
        let buffer = Bytes::from_owner(Watched(read, freed.clone()));
        let mut e = entry(1, 0, 0, 0);
        e.data = buffer.slice(1000..1100);
        c.insert(1, e);
        drop(buffer);
        assert!(
            freed.load(Ordering::SeqCst),
            "the cache keeps the whole read buffer alive"
        );
        let cached = c.get(1, Position::new(1, 0)).expect("cached");
        assert_eq!(&cached.data[..], &[9u8; 100][..]);
        assert_eq!(c.stats().bytes as usize, cached.size());
    }

    #[test]
    fn a_large_entry_is_cached_without_a_copy() {
        let c = EntryCache::new(16 << 20);
        let data = Bytes::from(vec![3u8; COPIED_UP_TO_BYTES + 1]);
        let mut e = entry(1, 0, 0, 0);
        e.data = data.clone();
        c.insert(1, e);
        let cached = c.get(1, Position::new(1, 0)).expect("cached");
        assert_eq!(cached.data.as_ptr(), data.as_ptr());
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
    fn counts_hit_bytes_inserts_evictions_and_size_classes() {
        let c = EntryCache::new(1 << 20);
        for e in 0..4 {
            c.insert(1, entry(1, e, 100, e));
        }
        c.insert(1, entry(1, 4, 64 << 10, 4));
        let s = c.stats();
        assert_eq!((s.inserted, s.entries), (5, 5));
        assert_eq!(
            (s.entries_small, s.entries_normal, s.entries_huge),
            (4, 1, 0)
        );
        assert!(c.get(1, Position::new(1, 0)).is_some());
        assert!(c.get(1, Position::new(1, 9)).is_none());
        c.count_miss_bytes(300);
        let s = c.stats();
        assert_eq!(
            (s.hits, s.hit_bytes),
            (1, 100 + crate::ENTRY_HEADER_LEN as u64)
        );
        assert_eq!((s.misses, s.miss_bytes), (1, 300));

        c.evict_before(1, Position::new(1, 2));
        c.evict_before(1, Position::new(1, 2));
        let s = c.stats();
        assert_eq!(
            (s.evictions, s.evicted_entries, s.entries),
            (1, 2, 3),
            "an eviction that removes nothing is not counted"
        );
        c.evict_log(1);
        let s = c.stats();
        assert_eq!((s.evictions, s.evicted_entries, s.bytes), (2, 5, 0));
        assert_eq!((s.entries_small, s.entries_normal), (0, 0));

        let small = EntryCache::new(1000);
        for e in 0..20 {
            small.insert(1, entry(1, e, 80, e));
        }
        let s = small.stats();
        assert_eq!(s.evicted_entries, 20 - s.entries, "the byte budget evicts");
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
    }

    #[test]
    fn evicting_takes_exactly_the_range_asked_whether_popped_or_split() {
        let c = EntryCache::new(1 << 20);
        for e in 0..100 {
            c.insert(1, entry(5, e, 10, e));
        }
        let cached = |c: &EntryCache| -> Vec<u64> {
            (0..100)
                .filter(|e| c.get(1, Position::new(5, *e)).is_some())
                .collect()
        };
        // A few at the front (popped), then nothing (the same position
        // again), then more than are popped (the rest split off), then a
        // range in the middle.
        c.evict_before(1, Position::new(5, 3));
        c.evict_before(1, Position::new(5, 3));
        assert_eq!(c.stats().evicted_entries, 3);
        c.evict_before(1, Position::new(5, 80));
        c.evict_range(1, Position::new(5, 90), Position::new(5, 95));
        let left: Vec<u64> = (80..90).chain(95..100).collect();
        assert_eq!(cached(&c), left);
        let s = c.stats();
        assert_eq!(s.evicted_entries, 85);
        assert_eq!(s.entries, 15);
        assert_eq!(s.bytes as usize, 15 * entry(5, 0, 10, 0).size());
    }

    #[test]
    fn evicts_what_was_cached_before_a_moment_whatever_its_log() {
        let c = EntryCache::new(1 << 20);
        for e in 0..4 {
            c.insert(1, entry(5, e, 10, e));
        }
        let cutoff = Instant::now();
        while Instant::now() == cutoff {
            std::hint::spin_loop();
        }
        for e in 4..6 {
            c.insert(2, entry(5, e, 10, e));
        }
        // Inserted again after the cutoff: it stays.
        c.insert(1, entry(5, 3, 10, 3));
        c.evict_cached_before(cutoff);
        assert!((0..3).all(|e| c.get(1, Position::new(5, e)).is_none()));
        assert!(c.get(1, Position::new(5, 3)).is_some());
        assert!((4..6).all(|e| c.get(2, Position::new(5, e)).is_some()));
        assert_eq!(c.stats().evicted_entries, 3);
    }

    #[test]
    fn evictions_by_position_leave_the_insertion_order_bounded() {
        let c = EntryCache::new(1 << 30);
        for e in 0..100_000 {
            c.insert(1, entry(1, e, 10, e));
            c.evict_before(1, Position::new(1, e));
        }
        let inner = c.inner.lock().unwrap();
        assert_eq!(inner.entries, 1);
        assert!(
            inner.by_age.len() <= 2 * inner.entries + 1025,
            "{}",
            inner.by_age.len()
        );
    }

    #[test]
    fn an_entry_inserted_again_is_aged_from_its_last_insert() {
        let one = entry(1, 0, 100, 0).size();
        let c = EntryCache::new(3 * one);
        c.insert(1, entry(1, 0, 100, 0));
        c.insert(1, entry(1, 1, 100, 1));
        c.insert(1, entry(1, 0, 100, 0));
        c.insert(1, entry(1, 2, 100, 2));
        c.insert(1, entry(1, 3, 100, 3)); // over budget: the oldest goes
        assert!(c.get(1, Position::new(1, 1)).is_none());
        assert!([0, 2, 3]
            .iter()
            .all(|e| c.get(1, Position::new(1, *e)).is_some()));
        assert_eq!(c.stats().entries, 3);
    }
}
