//! [`OffloadedReader`]: reads entries of offloaded segments with range
//! requests, verifying every entry's checksum.
//!
//! An object's index is fetched once (one suffix request for the tail;
//! a second only for an index larger than the prefetch) and kept in a
//! byte-bounded LRU. A read that misses fetches a *window*: the requested
//! entries plus up to `read_ahead_bytes` after them, in one range request.
//! Windows are kept in a second byte-bounded LRU. After each read, the
//! `prefetch_windows` windows that follow the one it ended in are fetched
//! in the background, concurrently, so a reader going forward finds them
//! there, or waits for the request already under way instead of making
//! another: reading overlaps fetching, and several requests hide each
//! one's latency. Both caches are the reader's own: reading old data never
//! evicts the entry cache of tailing consumers.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use bytes::{Bytes, BytesMut};
use kilonova_storage::EntryId;

use crate::bucket::Bucket;
use crate::error::{ObjectStoreError, Result};
use crate::format::{self, SegmentIndex, Tail};
use crate::lru::ByteLru;

/// How offloaded data is read. Units are in the names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderConfig {
    /// A read also fetches the entries after the requested ones, up to this
    /// many bytes more, in the same request.
    pub read_ahead_bytes: u64,
    /// Memory for fetched entries (read-ahead included), least recently used dropped first.
    pub cache_bytes: usize,
    /// Memory for objects' indexes (16 bytes per entry).
    pub index_cache_bytes: usize,
    /// The first request for an index fetches this many bytes from the end
    /// of the object: indexes of up to (this − 56) / 16 entries need no second request.
    pub index_prefetch_bytes: u64,
    /// After a read, make sure this many windows after it are fetched or
    /// being fetched in the background (each its own request, at most this
    /// many in flight per object); 0: no prefetch.
    pub prefetch_windows: usize,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            read_ahead_bytes: 4 << 20,
            cache_bytes: 64 << 20,
            index_cache_bytes: 16 << 20,
            index_prefetch_bytes: 256 << 10,
            prefetch_windows: 4,
        }
    }
}

/// The most one range request fetches: a read of more entries than this
/// spans takes several requests.
pub const MAX_FETCH_BYTES: u64 = 64 << 20;

/// A run of consecutive entries of one object, fetched by one range
/// request and verified: the unit the entry cache keeps.
#[derive(Debug)]
struct Window {
    object: Arc<str>,
    first: EntryId,
    last: EntryId,
    /// The object offset `data` starts at.
    base: u64,
    data: Bytes,
}

impl Window {
    /// Entry `id`'s bytes (`first <= id <= last`, verified when fetched).
    fn entry(&self, index: &SegmentIndex, id: EntryId) -> Bytes {
        debug_assert!((self.first..=self.last).contains(&id));
        match index.record(id) {
            Some(r) => self
                .data
                .slice((r.offset - self.base) as usize..(r.end() - self.base) as usize),
            None => Bytes::new(),
        }
    }
}

/// Fixed cost counted per cached window besides its bytes.
const WINDOW_OVERHEAD_BYTES: usize = 128;

/// Fetched windows, least recently used dropped first, found by object and entry.
#[derive(Debug)]
struct Windows {
    lru: ByteLru<u64, Arc<Window>>,
    /// Per object: first entry → window id.
    by_object: HashMap<Arc<str>, BTreeMap<EntryId, u64>>,
    next_id: u64,
}

impl Windows {
    fn new(max_bytes: usize) -> Self {
        Windows {
            lru: ByteLru::new(max_bytes),
            by_object: HashMap::new(),
            next_id: 0,
        }
    }

    /// The cached window holding entry `id` of `object`, and the first
    /// entry of the next cached window after `id` (where a fetch should stop).
    fn find(&mut self, object: &Arc<str>, id: EntryId) -> (Option<Arc<Window>>, Option<EntryId>) {
        let Some(starts) = self.by_object.get(object) else {
            return (None, None);
        };
        let next = starts
            .range(id.saturating_add(1)..)
            .next()
            .map(|(first, _)| *first);
        let Some((_, wid)) = starts.range(..=id).next_back() else {
            return (None, next);
        };
        match self.lru.get(wid) {
            Some(w) if w.last >= id => (Some(w), next),
            _ => (None, next),
        }
    }

    fn insert(&mut self, w: Arc<Window>) {
        let id = self.next_id;
        self.next_id += 1;
        let size = w.data.len() + WINDOW_OVERHEAD_BYTES;
        let starts = self.by_object.entry(w.object.clone()).or_default();
        if let Some(old) = starts.insert(w.first, id) {
            self.lru.remove(&old);
        }
        for (_, evicted) in self.lru.insert(id, w, size) {
            self.unlist(&evicted);
        }
    }

    /// Removes an evicted window from the per-object lists.
    fn unlist(&mut self, w: &Window) {
        if let Some(starts) = self.by_object.get_mut(&w.object) {
            starts.remove(&w.first);
            if starts.is_empty() {
                self.by_object.remove(&w.object);
            }
        }
    }

    fn forget(&mut self, object: &str) {
        if let Some(starts) = self.by_object.remove(object) {
            for wid in starts.values() {
                self.lru.remove(wid);
            }
        }
    }
}

fn no_such_entry(key: &str, entry: EntryId, index: &SegmentIndex) -> ObjectStoreError {
    ObjectStoreError::NoSuchEntry {
        key: key.to_string(),
        entry,
        entries: index.entry_count(),
    }
}

/// Reads offloaded segments of one [`Bucket`]. Cheap to clone (shared
/// inside): the readers of a broker share one, and its caches.
#[derive(Clone, Debug)]
pub struct OffloadedReader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bucket: Bucket,
    config: ReaderConfig,
    indexes: Mutex<ByteLru<Arc<str>, Arc<SegmentIndex>>>,
    windows: Mutex<Windows>,
    /// Background fetches under way: per object, first entry → last entry.
    inflight: Mutex<HashMap<Arc<str>, BTreeMap<EntryId, EntryId>>>,
    /// Woken whenever a background fetch ends (landed or failed).
    landed: Notify,
}

/// The reader's caches, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderCacheStats {
    pub indexes: usize,
    pub index_bytes: usize,
    /// Fetched runs of entries (read-ahead included) and their bytes.
    pub windows: usize,
    pub window_bytes: usize,
}

/// A background fetch's entry in `Inner::inflight`: removed, and waiting
/// readers woken, when the fetch ends — or when its task is dropped
/// unfinished (its runtime shut down), so no reader waits for it forever.
struct InFlight {
    inner: Arc<Inner>,
    key: Arc<str>,
    first: EntryId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut inflight = lock(&self.inner.inflight);
            if let Some(m) = inflight.get_mut(&self.key) {
                m.remove(&self.first);
                if m.is_empty() {
                    inflight.remove(&self.key);
                }
            }
        }
        self.inner.landed.notify_waiters();
    }
}

/// Where entry `next` is to be had.
enum Source {
    Cached(Arc<Window>),
    /// A background fetch covering it, through entry `last`, is under way.
    InFlight {
        last: EntryId,
    },
    /// Nowhere yet; the next cached window starts here (a fetch stops before it).
    Missing(Option<EntryId>),
}

impl OffloadedReader {
    pub fn new(bucket: Bucket, config: ReaderConfig) -> Self {
        OffloadedReader {
            inner: Arc::new(Inner {
                indexes: Mutex::new(ByteLru::new(config.index_cache_bytes)),
                windows: Mutex::new(Windows::new(config.cache_bytes)),
                inflight: Mutex::new(HashMap::new()),
                landed: Notify::new(),
                bucket,
                config,
            }),
        }
    }

    pub fn bucket(&self) -> &Bucket {
        &self.inner.bucket
    }

    /// The index of the object at `key` (cached after the first fetch).
    pub async fn index(&self, key: &str) -> Result<Arc<SegmentIndex>> {
        let inner = &self.inner;
        let k: Arc<str> = key.into();
        if let Some(i) = lock(&inner.indexes).get(&k) {
            return Ok(i);
        }
        let index = match fetch_index(&inner.bucket, key, inner.config.index_prefetch_bytes).await {
            Ok(i) => Arc::new(i),
            Err(e) => {
                inner
                    .bucket
                    .metrics()
                    .read_failed(matches!(e, ObjectStoreError::Corrupt { .. }));
                return Err(e);
            }
        };
        lock(&inner.indexes).insert(k, index.clone(), index.memory_bytes());
        Ok(index)
    }

    /// Entries `range` of the offloaded segment at `key`, each verified
    /// against its checksum. An empty range reads nothing.
    pub async fn read(&self, key: &str, range: RangeInclusive<EntryId>) -> Result<Vec<Bytes>> {
        let inner = &self.inner;
        let (first, last) = (*range.start(), *range.end());
        let index = self.index(key).await?;
        if first > last {
            return Ok(Vec::new());
        }
        let entries = index.entry_count();
        if last >= entries {
            return Err(no_such_entry(key, last, &index));
        }
        let k: Arc<str> = key.into();
        let mut out = Vec::with_capacity(usize::try_from(last - first + 1).unwrap_or(0));
        let (mut hits, mut misses) = (0, 0);
        let mut next = first;
        let mut tail_window = None;
        while next <= last {
            // Registered before looking, so a fetch that lands in between still wakes us.
            let landed = inner.landed.notified();
            let window = match inner.source(&k, next) {
                Source::Cached(w) => {
                    hits += w.last.min(last) + 1 - next;
                    w
                }
                Source::InFlight { .. } => {
                    landed.await;
                    continue;
                }
                Source::Missing(before) => {
                    let fetch_last = inner.plan(&index, next, last, before)?;
                    match inner.load(&k, &index, next, fetch_last, Some(last)).await {
                        Ok(w) => {
                            misses += w.last.min(last) + 1 - next;
                            w
                        }
                        Err(e) => {
                            inner
                                .bucket
                                .metrics()
                                .read_failed(matches!(e, ObjectStoreError::Corrupt { .. }));
                            return Err(e);
                        }
                    }
                }
            };
            let upto = window.last.min(last);
            for id in next..=upto {
                out.push(window.entry(&index, id));
            }
            next = upto + 1;
            tail_window = Some(window);
        }
        inner.bucket.metrics().cache(hits, misses);
        if let Some(w) = tail_window {
            self.prefetch_after(&k, &index, &w);
        }
        Ok(out)
    }

    /// Makes sure the `prefetch_windows` windows after `w` are cached or
    /// under way, starting background fetches for those that are neither
    /// (at most `prefetch_windows` per object in flight).
    fn prefetch_after(&self, key: &Arc<str>, index: &Arc<SegmentIndex>, w: &Window) {
        let inner = &self.inner;
        let depth = inner.config.prefetch_windows;
        let mut first = w.last + 1;
        for _ in 0..depth {
            if first >= index.entry_count() {
                return;
            }
            let before = match inner.source(key, first) {
                Source::Cached(c) => {
                    first = c.last + 1;
                    continue;
                }
                Source::InFlight { last } => {
                    first = last + 1;
                    continue;
                }
                Source::Missing(before) => before,
            };
            let Ok(last) = inner.plan(index, first, first, before) else {
                return;
            };
            {
                let mut inflight = lock(&inner.inflight);
                let mine = inflight.entry(key.clone()).or_default();
                if mine.len() >= depth {
                    return;
                }
                mine.insert(first, last);
            }
            self.spawn_fetch(key, index, first, last);
            first = last + 1;
        }
    }

    fn spawn_fetch(
        &self,
        key: &Arc<str>,
        index: &Arc<SegmentIndex>,
        first: EntryId,
        last: EntryId,
    ) {
        let guard = InFlight {
            inner: self.inner.clone(),
            key: key.clone(),
            first,
        };
        let index = index.clone();
        tokio::spawn(async move {
            let InFlight { inner, key, .. } = &guard;
            if let Err(e) = inner.load(key, &index, first, last, None).await {
                tracing::debug!(key = %key, first, error = %e, "prefetch of an offloaded window failed; the read that needs it fetches it again");
            }
            drop(guard);
        });
    }

    /// Drops what the caches hold of `key` (its object was deleted).
    pub fn forget(&self, key: &str) {
        lock(&self.inner.indexes).remove(&Arc::from(key));
        lock(&self.inner.windows).forget(key);
    }

    pub fn cache_stats(&self) -> ReaderCacheStats {
        let i = lock(&self.inner.indexes);
        let w = lock(&self.inner.windows);
        ReaderCacheStats {
            indexes: i.len(),
            index_bytes: i.bytes(),
            windows: w.lru.len(),
            window_bytes: w.lru.bytes(),
        }
    }
}

impl Inner {
    fn source(&self, key: &Arc<str>, id: EntryId) -> Source {
        // The in-flight set is locked first and held while the cache is
        // looked at: a fetch caches its window before it leaves the set, so
        // a fetch landing meanwhile is seen in one or the other, never in
        // neither (which would fetch the window a second time).
        let inflight = lock(&self.inflight);
        let (cached, before) = lock(&self.windows).find(key, id);
        if let Some(w) = cached {
            return Source::Cached(w);
        }
        let covering = inflight
            .get(key)
            .and_then(|m| m.range(..=id).next_back())
            .map(|(_, last)| *last)
            .filter(|last| *last >= id);
        match covering {
            Some(last) => Source::InFlight { last },
            // A fetch must also stop before a window under way.
            None => {
                let next_inflight = inflight
                    .get(key)
                    .and_then(|m| m.range(id..).next())
                    .map(|(first, _)| *first);
                Source::Missing(match (before, next_inflight) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                })
            }
        }
    }

    /// The last entry of the window to fetch from `first`: through `last`,
    /// then up to `read_ahead_bytes` more, stopping before `before` (the next
    /// cached window) and at [`MAX_FETCH_BYTES`] (at least entry `first`).
    fn plan(
        &self,
        index: &SegmentIndex,
        first: EntryId,
        last: EntryId,
        before: Option<EntryId>,
    ) -> Result<EntryId> {
        let rec = |id: EntryId| index.record(id).ok_or_else(|| no_such_entry("", id, index));
        let from = rec(first)?.offset;
        let want_end = rec(last)?.end();
        let end_limit = before.unwrap_or(index.entry_count());
        let mut fetch_last = first;
        while fetch_last + 1 < end_limit {
            let end = rec(fetch_last + 1)?.end();
            let within = end - from <= MAX_FETCH_BYTES
                && (fetch_last < last
                    || end.saturating_sub(want_end) <= self.config.read_ahead_bytes);
            if !within {
                break;
            }
            fetch_last += 1;
        }
        Ok(fetch_last)
    }

    /// Fetches entries `first..=fetch_last` in one request, verifies them
    /// and caches them as a window. Entries through `required` must be
    /// sound (a bad one is a `Corrupt` error); after it, the window ends
    /// before the first bad entry.
    async fn load(
        &self,
        key: &Arc<str>,
        index: &SegmentIndex,
        first: EntryId,
        fetch_last: EntryId,
        required: Option<EntryId>,
    ) -> Result<Arc<Window>> {
        let rec = |id: EntryId| {
            index
                .record(id)
                .ok_or_else(|| no_such_entry(key, id, index))
        };
        let from = rec(first)?.offset;
        let to = rec(fetch_last)?.end();
        let data = self.bucket.get_range(key, from..to).await?;
        self.bucket.metrics().read(to - from);
        let mut window_last = fetch_last;
        for id in first..=fetch_last {
            let r = rec(id)?;
            let bytes = &data[(r.offset - from) as usize..(r.end() - from) as usize];
            if let Err(e) = format::verify_entry(&r, bytes) {
                if id > first && required.is_none_or(|req| id > req) {
                    // Only read ahead: what was asked for is sound. The bad
                    // entry fails the read that asks for it.
                    window_last = id - 1;
                    break;
                }
                return Err(ObjectStoreError::Corrupt {
                    key: key.to_string(),
                    detail: format!("entry {id}: {e}"),
                });
            }
        }
        let end = rec(window_last)?.end();
        let window = Arc::new(Window {
            object: key.clone(),
            first,
            last: window_last,
            base: from,
            data: data.slice(..(end - from) as usize),
        });
        lock(&self.windows).insert(window.clone());
        Ok(window)
    }
}

/// Caches hold no invariant a panic elsewhere could break halfway: a
/// poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fetches and verifies the index of the object at `key`: the last
/// `prefetch` bytes, then the start of the index if it begins before them.
pub(crate) async fn fetch_index(bucket: &Bucket, key: &str, prefetch: u64) -> Result<SegmentIndex> {
    let corrupt = |e: format::FormatError| ObjectStoreError::Corrupt {
        key: key.to_string(),
        detail: e.to_string(),
    };
    let (tail, size) = bucket
        .get_suffix(key, prefetch.max(format::FOOTER_LEN))
        .await?;
    match format::decode_tail(&tail, size).map_err(corrupt)? {
        Tail::Index(i) => Ok(i),
        Tail::NeedFrom { offset } => {
            let tail_start = size - tail.len() as u64;
            let head = bucket.get_range(key, offset..tail_start).await?;
            let mut joined = BytesMut::with_capacity(head.len() + tail.len());
            joined.extend_from_slice(&head);
            joined.extend_from_slice(&tail);
            match format::decode_tail(&joined, size).map_err(corrupt)? {
                Tail::Index(i) => Ok(i),
                Tail::NeedFrom { .. } => Err(ObjectStoreError::Corrupt {
                    key: key.to_string(),
                    detail: "the index moved between two reads".into(),
                }),
            }
        }
    }
}
