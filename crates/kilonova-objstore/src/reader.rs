//! [`OffloadedReader`]: reads entries of offloaded segments with range
//! requests, verifying every entry's checksum.
//!
//! An object's index is fetched once (one suffix request for the tail;
//! a second only for an index larger than the prefetch) and kept in a
//! byte-bounded LRU. A read fetches the requested entries plus up to
//! `read_ahead_bytes` of the entries after them in one range request; what
//! it fetched is kept in a second byte-bounded LRU, so a reader going
//! forward finds its next entries there. Both caches are the reader's own:
//! reading old data never evicts the entry cache of tailing consumers.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

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
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            read_ahead_bytes: 4 << 20,
            cache_bytes: 64 << 20,
            index_cache_bytes: 16 << 20,
            index_prefetch_bytes: 256 << 10,
        }
    }
}

type EntryKey = (Arc<str>, EntryId);

/// Reads offloaded segments of one [`Bucket`]. Share it (`Arc`) between
/// the readers of a broker: its caches are shared too.
#[derive(Debug)]
pub struct OffloadedReader {
    bucket: Bucket,
    config: ReaderConfig,
    indexes: Mutex<ByteLru<Arc<str>, Arc<SegmentIndex>>>,
    entries: Mutex<ByteLru<EntryKey, Bytes>>,
}

/// The reader's caches, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderCacheStats {
    pub indexes: usize,
    pub index_bytes: usize,
    pub entries: usize,
    pub entry_bytes: usize,
}

impl OffloadedReader {
    pub fn new(bucket: Bucket, config: ReaderConfig) -> Self {
        OffloadedReader {
            indexes: Mutex::new(ByteLru::new(config.index_cache_bytes)),
            entries: Mutex::new(ByteLru::new(config.cache_bytes)),
            bucket,
            config,
        }
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// The index of the object at `key` (cached after the first fetch).
    pub async fn index(&self, key: &str) -> Result<Arc<SegmentIndex>> {
        let k: Arc<str> = key.into();
        if let Some(i) = lock(&self.indexes).get(&k) {
            return Ok(i);
        }
        let index = match fetch_index(&self.bucket, key, self.config.index_prefetch_bytes).await {
            Ok(i) => Arc::new(i),
            Err(e) => {
                self.bucket
                    .metrics()
                    .read_failed(matches!(e, ObjectStoreError::Corrupt { .. }));
                return Err(e);
            }
        };
        lock(&self.indexes).insert(k, index.clone(), index.memory_bytes());
        Ok(index)
    }

    /// Entries `range` of the offloaded segment at `key`, each verified
    /// against its checksum. An empty range reads nothing.
    pub async fn read(&self, key: &str, range: RangeInclusive<EntryId>) -> Result<Vec<Bytes>> {
        let (first, last) = (*range.start(), *range.end());
        let index = self.index(key).await?;
        if first > last {
            return Ok(Vec::new());
        }
        let entries = index.entry_count();
        if last >= entries {
            return Err(ObjectStoreError::NoSuchEntry {
                key: key.to_string(),
                entry: last,
                entries,
            });
        }
        let k: Arc<str> = key.into();
        let mut out = Vec::with_capacity(usize::try_from(last - first + 1).unwrap_or(0));
        let mut next = first;
        {
            let mut cache = lock(&self.entries);
            while next <= last {
                match cache.get(&(k.clone(), next)) {
                    Some(b) => out.push(b),
                    None => break,
                }
                next += 1;
            }
        }
        let hits = out.len() as u64;
        let misses = (last + 1) - next;
        if next <= last {
            match self.fetch(&k, &index, next, last).await {
                Ok(fetched) => out.extend(fetched),
                Err(e) => {
                    self.bucket
                        .metrics()
                        .read_failed(matches!(e, ObjectStoreError::Corrupt { .. }));
                    return Err(e);
                }
            }
        }
        self.bucket.metrics().cache(hits, misses);
        Ok(out)
    }

    /// Fetches entries `first..=last` and the read-ahead after them in one
    /// request; verifies, caches and returns `first..=last`.
    async fn fetch(
        &self,
        key: &Arc<str>,
        index: &SegmentIndex,
        first: EntryId,
        last: EntryId,
    ) -> Result<Vec<Bytes>> {
        let rec = |id: EntryId| {
            usize::try_from(id)
                .ok()
                .and_then(|i| index.records.get(i))
                .copied()
                .ok_or_else(|| ObjectStoreError::NoSuchEntry {
                    key: key.to_string(),
                    entry: id,
                    entries: index.entry_count(),
                })
        };
        let want_end = rec(last)?.end();
        let mut fetch_last = last;
        while fetch_last + 1 < index.entry_count()
            && rec(fetch_last + 1)?.end() - want_end <= self.config.read_ahead_bytes
        {
            fetch_last += 1;
        }
        let from = rec(first)?.offset;
        let to = rec(fetch_last)?.end();
        let data = self.bucket.get_range(key, from..to).await?;
        self.bucket.metrics().read(to - from);
        let mut fetched = Vec::with_capacity(usize::try_from(fetch_last - first + 1).unwrap_or(0));
        for id in first..=fetch_last {
            let r = rec(id)?;
            let bytes = data.slice((r.offset - from) as usize..(r.end() - from) as usize);
            if let Err(e) = format::verify_entry(&r, &bytes) {
                if id > last {
                    // Only read ahead: the requested entries are sound. The
                    // bad one fails the read that asks for it.
                    break;
                }
                return Err(ObjectStoreError::Corrupt {
                    key: key.to_string(),
                    detail: format!("entry {id}: {e}"),
                });
            }
            fetched.push(bytes);
        }
        let mut cache = lock(&self.entries);
        for (id, b) in (first..).zip(&fetched) {
            cache.insert((key.clone(), id), b.clone(), b.len().max(1));
        }
        drop(cache);
        fetched.truncate(usize::try_from(last - first + 1).unwrap_or(0));
        Ok(fetched)
    }

    /// Drops what the caches hold of `key` (its object was deleted).
    pub fn forget(&self, key: &str) {
        lock(&self.indexes).remove(&Arc::from(key));
        lock(&self.entries).retain(|(k, _)| &**k != key);
    }

    pub fn cache_stats(&self) -> ReaderCacheStats {
        let i = lock(&self.indexes);
        let e = lock(&self.entries);
        ReaderCacheStats {
            indexes: i.len(),
            index_bytes: i.bytes(),
            entries: e.len(),
            entry_bytes: e.bytes(),
        }
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
