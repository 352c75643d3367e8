//! Reading write-ahead objects back (recovering a log's tail, compacting):
//! an object's index from one suffix request (a second one for an index
//! larger than the first guess), a log's entries with one range request per
//! run of them (reading through gaps under 64 KiB),
//! every entry checked against its CRC32C.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::format::{self, WalIndex, WalRecord, WAL_FOOTER_LEN, WAL_INDEX_RECORD_LEN};
use crate::bucket::Bucket;
use crate::error::{ObjectStoreError, Result};
use crate::lru::ByteLru;

/// Bytes the first suffix request asks for: the footer and the index of
/// objects of up to ~2,700 entries.
const TAIL_GUESS: u64 = 64 << 10;

/// Reads write-ahead objects. Cheap to clone (clones share the index cache).
#[derive(Clone)]
pub struct WalReader {
    bucket: Bucket,
    /// Indexes read by [`WalReader::cached_index`], bounded in bytes.
    indexes: Arc<Mutex<ByteLru<String, Arc<WalIndex>>>>,
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> ObjectStoreError {
    ObjectStoreError::Corrupt {
        key: key.to_string(),
        detail: e.to_string(),
    }
}

impl WalReader {
    /// A reader without an index cache.
    pub fn new(bucket: Bucket) -> Self {
        Self::with_index_cache(bucket, 0)
    }

    /// A reader whose [`WalReader::cached_index`] keeps indexes of up to
    /// `max_bytes` in all (objects are written once: an index never changes).
    pub fn with_index_cache(bucket: Bucket, max_bytes: usize) -> Self {
        WalReader {
            bucket,
            indexes: Arc::new(Mutex::new(ByteLru::new(max_bytes))),
        }
    }

    fn indexes(&self) -> std::sync::MutexGuard<'_, ByteLru<String, Arc<WalIndex>>> {
        self.indexes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`WalReader::index`], from the cache when it holds it.
    pub async fn cached_index(&self, key: &str) -> Result<Arc<WalIndex>> {
        let key = key.to_string();
        if let Some(index) = self.indexes().get(&key) {
            return Ok(index);
        }
        let index = Arc::new(self.index(&key).await?);
        let size = index.records.len() * WAL_INDEX_RECORD_LEN + key.len();
        self.indexes().insert(key, index.clone(), size);
        Ok(index)
    }

    /// Entries `first..=last` of a run of log `log`'s entries stored
    /// one after the other from place `place` of object `key` (a compacted
    /// history's run), its index from the cache.
    pub async fn read_run(
        &self,
        key: &str,
        log: u64,
        place: u32,
        first: u64,
        last: u64,
    ) -> Result<Vec<Bytes>> {
        let out_of_range = || ObjectStoreError::NoSuchEntry {
            key: key.to_string(),
            entry: last,
            entries: u64::from(u32::MAX),
        };
        let from = u64::from(place)
            .checked_add(first)
            .ok_or_else(out_of_range)?;
        let to = u64::from(place)
            .checked_add(last)
            .ok_or_else(out_of_range)?;
        let (from, to) = (
            u32::try_from(from).map_err(|_| out_of_range())?,
            u32::try_from(to).map_err(|_| out_of_range())?,
        );
        let index = self.cached_index(key).await?;
        let places: Vec<u32> = (from..=to).collect();
        self.read_entries(key, &index, log, &places).await
    }

    /// The object's sequence number and index, checked.
    pub async fn index(&self, key: &str) -> Result<WalIndex> {
        let (tail, len) = self.bucket.get_suffix(key, TAIL_GUESS).await?;
        if tail.len() < WAL_FOOTER_LEN {
            return Err(corrupt(key, "shorter than a footer"));
        }
        if tail.len() as u64 > len {
            return Err(corrupt(
                key,
                format!("{} bytes of a suffix of a {len}-byte object", tail.len()),
            ));
        }
        let footer = format::decode_wal_footer(&tail[tail.len() - WAL_FOOTER_LEN..], len)
            .map_err(|e| corrupt(key, e))?;
        let range = footer.index_range();
        let tail_start = len - tail.len() as u64;
        let index = if range.start >= tail_start {
            let from = (range.start - tail_start) as usize;
            tail.slice(from..from + (range.end - range.start) as usize)
        } else {
            self.bucket.get_range(key, range).await?
        };
        let records = format::decode_wal_records(&index, &footer).map_err(|e| corrupt(key, e))?;
        Ok(WalIndex {
            sequence: footer.sequence,
            records,
        })
    }

    /// Entry `i` of the object whose index is `index`.
    pub async fn read(&self, key: &str, index: &WalIndex, i: u32) -> Result<Bytes> {
        let r = record(key, index, i)?;
        let bytes = self
            .bucket
            .get_range(key, r.offset..r.offset + u64::from(r.len))
            .await?;
        check(key, r, bytes)
    }

    /// Every entry of log `log` in the object, in the order appended (one
    /// range request per run of its entries, [`MAX_GAP_BYTES`] apart at
    /// most).
    pub async fn read_log(&self, key: &str, index: &WalIndex, log: u64) -> Result<Vec<Bytes>> {
        let mine: Vec<&WalRecord> = index.records.iter().filter(|r| r.log == log).collect();
        read_span(&self.bucket, key, &mine).await
    }

    /// The entries at `positions` of the object (increasing places, each an
    /// entry of log `log`), with one range request per run of them
    /// ([`MAX_GAP_BYTES`] apart at most). A place outside the object is [`ObjectStoreError::NoSuchEntry`];
    /// places out of order or an entry of another log is
    /// [`ObjectStoreError::Corrupt`] (the caller's record does not describe
    /// this object).
    pub async fn read_entries(
        &self,
        key: &str,
        index: &WalIndex,
        log: u64,
        positions: &[u32],
    ) -> Result<Vec<Bytes>> {
        let mut records = Vec::with_capacity(positions.len());
        for (n, &i) in positions.iter().enumerate() {
            if n > 0 && positions[n - 1] >= i {
                return Err(corrupt(key, format!("entry places out of order at {i}")));
            }
            let r = record(key, index, i)?;
            if r.log != log {
                return Err(corrupt(
                    key,
                    format!("entry {i} is log {}'s, not log {log}'s", r.log),
                ));
            }
            records.push(r);
        }
        read_span(&self.bucket, key, &records).await
    }
}

/// Entry `i`'s record in the index of object `key`.
fn record<'a>(key: &str, index: &'a WalIndex, i: u32) -> Result<&'a WalRecord> {
    index
        .records
        .get(i as usize)
        .ok_or_else(|| ObjectStoreError::NoSuchEntry {
            key: key.to_string(),
            entry: u64::from(i),
            entries: index.records.len() as u64,
        })
}

/// Bytes of other entries a range request reads through rather than
/// splitting in two.
const MAX_GAP_BYTES: u64 = 64 << 10;

/// The entries `records` (in object order), each checked: one range request
/// per run of entries less than [`MAX_GAP_BYTES`] apart (a log's entries
/// in an object of many logs' are spread out; reading from its first to its
/// last could read the whole object for each log).
async fn read_span(bucket: &Bucket, key: &str, records: &[&WalRecord]) -> Result<Vec<Bytes>> {
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records;
    while let Some(first) = rest.first() {
        let mut end = first.offset + u64::from(first.len);
        let mut n = 1;
        while let Some(r) = rest.get(n) {
            if r.offset < end || r.offset - end > MAX_GAP_BYTES {
                break;
            }
            end = r.offset + u64::from(r.len);
            n += 1;
        }
        let (run, tail) = rest.split_at(n);
        rest = tail;
        let start = first.offset;
        let span = bucket.get_range(key, start..end).await?;
        for r in run {
            let from = (r.offset - start) as usize;
            let bytes = span
                .get(from..from + r.len as usize)
                .map(|b| span.slice_ref(b))
                .ok_or_else(|| corrupt(key, "an entry outside the range read"))?;
            out.push(check(key, r, bytes)?);
        }
    }
    Ok(out)
}

fn check(key: &str, r: &WalRecord, bytes: Bytes) -> Result<Bytes> {
    if bytes.len() != r.len as usize || crc32c::crc32c(&bytes) != r.crc {
        return Err(corrupt(
            key,
            format!("the entry at {} does not match its checksum", r.offset),
        ));
    }
    Ok(bytes)
}
