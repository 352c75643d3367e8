//! Tiered storage's side of a log: which sealed segments live in an object
//! store, and reading them back.
//!
//! The log does not talk to the object store (the storage crate has no
//! network client): the broker copies a sealed segment with the object-store
//! layer, then records it here ([`ManagedLog::mark_offloaded`]), persisted
//! with the log's metadata. A segment is then *local and offloaded* until
//! the broker drops its local copy ([`ManagedLog::drop_local_copy`]); after
//! that it is *offloaded only*: its entry count and last publish time come
//! from the record, and a read of one of its entries is answered from the
//! log's offload cache or fails with [`StorageError::Offloaded`], telling
//! the caller which entry to fetch ([`ManagedLog::insert_offloaded`] puts
//! what it fetched in the cache and the read is retried). The offload cache
//! is separate from the broker's entry cache, so reading old data never
//! evicts what tailing consumers read.
//!
//! Deleting a segment (retention, deleting the topic) leaves its object
//! behind for the broker to delete: [`ManagedLog::take_released_objects`].

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::entry::{self, Entry};
use crate::error::{Result, StorageError};
use crate::position::{Position, SegmentId};
use crate::segment_store::SegmentStore;
use crate::state_store::StateStore;

use super::meta::{self, meta_key};
use super::{ManagedLog, SegmentMeta};

/// Where an offloaded segment lives, as the log's metadata records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offloaded {
    /// The object's key in the object store.
    pub object: String,
    /// The segment's entries (`0..entries`).
    pub entries: u64,
    /// Bytes of its entries.
    pub bytes: u64,
    /// Publish time of its last entry (ms), for retention and TTL without
    /// reading it (the log fills it in when the offload is recorded).
    pub last_publish_ms: u64,
    /// The message index after its last message (the log fills it in).
    pub end_message_index: u64,
    /// When the offload was recorded (ms): the local copy goes after the
    /// deletion lag.
    pub offloaded_at_ms: u64,
    /// `Some(place)`: the entries are places `place..place + entries` of
    /// an object the log shares with others (a cluster's compacted
    /// history), not a segment object of its own. The log never releases
    /// such an object: whoever wrote it deletes it.
    pub shared_at: Option<u32>,
}

impl Offloaded {
    /// Whether the log owns the object (deletes it when the segment goes).
    pub fn is_own_object(&self) -> bool {
        self.shared_at.is_none()
    }
}

/// A segment's place, as [`ManagedLog::segment_tiers`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentTier {
    pub id: SegmentId,
    /// Its entries are in the local store.
    pub local: bool,
    pub offloaded: Option<Offloaded>,
    /// Sealed (not the segment being appended to).
    pub sealed: bool,
    /// Local bytes (0 once the local copy is dropped).
    pub local_bytes: u64,
}

/// A segment of a log rebuilt from the object store alone
/// ([`ManagedLog::restore`]): where it is and what it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredSegment {
    /// Message index of its first message.
    pub first_message_index: u64,
    /// When the segment was started (ms), for retention by age.
    pub created_ms: u64,
    pub offloaded: Offloaded,
}

/// Entries of offloaded-only segments read back, bounded in bytes; the
/// oldest inserted go first.
#[derive(Debug, Default)]
pub(super) struct OffloadCache {
    entries: BTreeMap<Position, Entry>,
    order: VecDeque<Position>,
    bytes: usize,
    pub(super) max_bytes: usize,
}

impl OffloadCache {
    pub(super) fn with_max_bytes(max_bytes: usize) -> Self {
        OffloadCache {
            max_bytes,
            ..Default::default()
        }
    }

    pub(super) fn get(&self, p: Position) -> Option<Entry> {
        self.entries.get(&p).cloned()
    }

    fn insert(&mut self, e: Entry) {
        let p = e.position;
        let size = e.data.len();
        if self.entries.insert(p, e).is_some() {
            return; // the same entry again: already counted
        }
        self.order.push_back(p);
        self.bytes += size;
        while self.bytes > self.max_bytes && self.order.len() > 1 {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.entries.remove(&old) {
                self.bytes -= gone.data.len();
            }
        }
    }

    fn forget_segment(&mut self, segment: SegmentId) {
        let gone: Vec<Position> = self
            .entries
            .range(Position::new(segment, 0)..Position::new(segment.saturating_add(1), 0))
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            if let Some(e) = self.entries.remove(&p) {
                self.bytes -= e.data.len();
            }
        }
        self.order.retain(|p| p.segment != segment);
    }
}

impl ManagedLog {
    /// Writes the metadata of new log `id` whose history is `segments`
    /// (oldest first), all offloaded-only: a topic restored from the object
    /// store after its data directory was lost. Each segment gets a fresh id
    /// from `store` (created and deleted at once, so no segment of this store
    /// ever has it); the ids it had where it was offloaded from mean nothing
    /// here. [`ManagedLog::open`] then opens the log like any other, appends
    /// continuing after the restored end. Refused if log `id` has metadata.
    /// Returns the new segment ids, in order.
    pub async fn restore(
        id: u64,
        store: &SegmentStore,
        state: &dyn StateStore,
        segments: Vec<RestoredSegment>,
    ) -> Result<Vec<SegmentId>> {
        if state.load(&meta_key(id))?.is_some() {
            return Err(StorageError::Log(format!(
                "log {id} exists: only a new log can be restored into"
            )));
        }
        let mut metas = Vec::with_capacity(segments.len());
        let mut offloaded = BTreeMap::new();
        let mut next_message_index = 0;
        for s in segments.into_iter().filter(|s| s.offloaded.entries > 0) {
            // (Only its id is kept: in the directory a new log of this id gets.)
            let segment = store.create_segment_for(id, None).await?;
            store.delete_segment(segment).await?;
            metas.push(SegmentMeta {
                id: segment,
                first_message_index: s.first_message_index,
                created_ms: s.created_ms,
            });
            next_message_index = next_message_index.max(s.offloaded.end_message_index);
            offloaded.insert(segment, s.offloaded);
        }
        let record = meta::encode_meta(next_message_index, &metas, 0, &[], &offloaded);
        state.store(&meta_key(id), &record)?;
        Ok(metas.iter().map(|m| m.id).collect())
    }

    /// Writes the metadata of new, empty log `id` whose messages are
    /// numbered from `next_message_index` on (those before are gone: a
    /// cluster topic rebuilt from a compacted history). Refused if log `id`
    /// has metadata.
    pub fn create_at(id: u64, state: &dyn StateStore, next_message_index: u64) -> Result<()> {
        if state.load(&meta_key(id))?.is_some() {
            return Err(StorageError::Log(format!(
                "log {id} exists: only a new log can be created at a message index"
            )));
        }
        let record = meta::encode_meta(next_message_index, &[], 0, &[], &BTreeMap::new());
        state.store(&meta_key(id), &record)
    }

    /// Every segment with where it lives, oldest first.
    pub fn segment_tiers(&self) -> Vec<SegmentTier> {
        let last = self.segments.last().map(|s| s.id);
        self.segments
            .iter()
            .map(|s| {
                let info = self.store.segment(s.id);
                SegmentTier {
                    id: s.id,
                    local: info.is_some(),
                    offloaded: self.offloaded.get(&s.id).cloned(),
                    sealed: Some(s.id) != last || info.is_some_and(|i| i.sealed),
                    local_bytes: info.map_or(0, |i| i.bytes),
                }
            })
            .collect()
    }

    /// Sealed segments to offload so that at most `keep_local_bytes` of the
    /// log's local, not yet offloaded data stays only local (Pulsar's
    /// `offloadThreshold`: 0 offloads every sealed segment), oldest first.
    pub fn offload_candidates(&self, keep_local_bytes: u64) -> Vec<SegmentId> {
        let tiers = self.segment_tiers();
        let mut only_local: u64 = tiers
            .iter()
            .filter(|t| t.local && t.offloaded.is_none())
            .map(|t| t.local_bytes)
            .sum();
        let mut out = Vec::new();
        for t in tiers.iter().take(tiers.len().saturating_sub(1)) {
            if only_local <= keep_local_bytes {
                break;
            }
            if t.local && t.offloaded.is_none() && t.sealed {
                if self.positions().confirmed(t.id) > 0 {
                    out.push(t.id);
                }
                only_local = only_local.saturating_sub(t.local_bytes);
            }
        }
        out
    }

    /// Sealed, local, not yet offloaded segments whose last entry was
    /// published before `cutoff_ms` (Pulsar's `offloadThresholdInSeconds`).
    pub fn offload_candidates_published_before(&self, cutoff_ms: u64) -> Vec<SegmentId> {
        self.segment_tiers()
            .into_iter()
            .filter(|t| t.local && t.sealed && t.offloaded.is_none())
            .filter(|t| {
                let n = self.positions().confirmed(t.id);
                n > 0
                    && self
                        .last_publish_ms_of(t.id, n)
                        .is_ok_and(|ms| ms < cutoff_ms)
            })
            .map(|t| t.id)
            .collect()
    }

    /// Sealed, local, not yet offloaded segments before segment `before`
    /// (a manual offload up to a message).
    pub fn offload_candidates_before(&self, before: SegmentId) -> Vec<SegmentId> {
        self.segment_tiers()
            .into_iter()
            .filter(|t| t.id < before && t.local && t.sealed && t.offloaded.is_none())
            .filter(|t| self.positions().confirmed(t.id) > 0)
            .map(|t| t.id)
            .collect()
    }

    /// An object nothing references (a copy that could not be recorded):
    /// released for deletion.
    pub fn release_object(&mut self, object: String) {
        self.released_objects.push(object);
    }

    /// Records that sealed segment `segment` is now in the object store
    /// (its metadata is persisted before this returns).
    pub fn mark_offloaded(&mut self, segment: SegmentId, mut record: Offloaded) -> Result<()> {
        if !self.segments.iter().any(|s| s.id == segment) {
            return Err(StorageError::NoSuchSegment(segment));
        }
        let entries = self.positions().confirmed(segment);
        if record.entries != entries {
            return Err(StorageError::Log(format!(
                "segment {segment} holds {entries} entries, its offloaded copy {}",
                record.entries
            )));
        }
        if entries > 0 {
            let last = self.read_entry(Position::new(segment, entries - 1))?;
            record.last_publish_ms = last.publish_time_ms;
            record.end_message_index = last.message_index + u64::from(last.message_count);
        }
        let old = self.offloaded.insert(segment, record);
        if let Err(e) = self.save_meta() {
            match old {
                Some(o) => self.offloaded.insert(segment, o),
                None => self.offloaded.remove(&segment),
            };
            return Err(e);
        }
        if let Some(o) = old.filter(Offloaded::is_own_object) {
            // Offloaded again: the earlier object is no longer referenced.
            self.released_objects.push(o.object);
        }
        Ok(())
    }

    /// Segment `segment`, in a shared object, is now at place `place` of
    /// object `object`, which holds the same entries (a cluster's history
    /// compacted again); persisted before this returns. Refused for a
    /// segment not in a shared object.
    pub fn move_shared(&mut self, segment: SegmentId, object: String, place: u32) -> Result<()> {
        let Some(o) = self
            .offloaded
            .get_mut(&segment)
            .filter(|o| !o.is_own_object())
        else {
            return Err(StorageError::Log(format!(
                "segment {segment} is not in a shared object"
            )));
        };
        let old = std::mem::replace(
            o,
            Offloaded {
                object,
                shared_at: Some(place),
                ..o.clone()
            },
        );
        if let Err(e) = self.save_meta() {
            self.offloaded.insert(segment, old);
            return Err(e);
        }
        Ok(())
    }

    /// Drops the log's first segment, `segment`, whose entries were in a
    /// shared object and are no longer kept there (a cluster's compaction
    /// dropped them once every subscription had acknowledged them and
    /// retention let them go); cursors in it move to the next segment.
    /// Refused for any other segment.
    pub fn drop_leading_shared(&mut self, segment: SegmentId) -> Result<()> {
        let leading = self.segments.len() > 1 && self.segments[0].id == segment;
        if !leading
            || self
                .offloaded
                .get(&segment)
                .is_none_or(Offloaded::is_own_object)
        {
            return Err(StorageError::Log(format!(
                "segment {segment} is not a leading segment in a shared object"
            )));
        }
        let meta = self.segments.remove(0);
        let Some(o) = self.offloaded.remove(&segment) else {
            return Ok(());
        };
        if let Err(e) = self.save_meta() {
            self.segments.insert(0, meta);
            self.offloaded.insert(segment, o);
            return Err(e);
        }
        self.offload_cache.forget_segment(segment);
        Ok(())
    }

    /// Offloaded segments whose local copy may go: recorded `lag_ms` or
    /// longer before `now_ms`.
    pub fn local_copies_to_drop(&self, now_ms: u64, lag_ms: u64) -> Vec<SegmentId> {
        self.offloaded
            .iter()
            .filter(|(id, o)| {
                o.offloaded_at_ms.saturating_add(lag_ms) <= now_ms
                    && self.store.segment(**id).is_some()
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Deletes the local copy of an offloaded segment: its entries are read
    /// from the object store from now on.
    pub async fn drop_local_copy(&mut self, segment: SegmentId) -> Result<()> {
        if !self.offloaded.contains_key(&segment) {
            return Err(StorageError::Log(format!(
                "segment {segment} is not offloaded: its local copy is its only one"
            )));
        }
        if self.store.segment(segment).is_none() {
            return Ok(());
        }
        self.store.delete_segment(segment).await?;
        // Only its own entries: what tailing readers have cached stays.
        self.cache.evict_range(
            self.id,
            Position::new(segment, 0),
            Position::new(segment.saturating_add(1), 0),
        );
        tracing::debug!(
            log = self.id,
            segment,
            "local copy of an offloaded segment deleted"
        );
        Ok(())
    }

    /// Where segment `segment` lives in the object store, if it is offloaded.
    pub fn offloaded(&self, segment: SegmentId) -> Option<&Offloaded> {
        self.offloaded.get(&segment)
    }

    /// Bytes of the log held in the object store.
    pub fn offloaded_bytes(&self) -> u64 {
        self.offloaded.values().map(|o| o.bytes).sum()
    }

    /// Entries of offloaded-only segment `segment` fetched from the object
    /// store, from entry `first` on, as the store held them: they go in the
    /// offload cache, for the read that asked for them to be retried.
    pub fn insert_offloaded(
        &mut self,
        segment: SegmentId,
        first: u64,
        stored: Vec<Bytes>,
    ) -> Result<()> {
        let mut decoded = Vec::with_capacity(stored.len());
        for (i, b) in stored.into_iter().enumerate() {
            let p = Position::new(segment, first + i as u64);
            decoded.push(entry::decode(p, b).ok_or(StorageError::Corrupt {
                segment,
                entry: p.entry,
                detail: "an offloaded entry shorter than an entry header".into(),
            })?);
        }
        // Last first: over the cache's bound the read-ahead goes before the
        // entry that was asked for.
        for e in decoded.into_iter().rev() {
            self.offload_cache.insert(e);
        }
        Ok(())
    }

    /// Bounds the offload cache (bytes; at least one entry is kept).
    pub fn set_offload_cache_bytes(&mut self, max: usize) {
        self.offload_cache.max_bytes = max;
    }

    /// Object keys no longer referenced (their segments deleted, or
    /// offloaded again): the broker deletes them.
    pub fn take_released_objects(&mut self) -> Vec<String> {
        std::mem::take(&mut self.released_objects)
    }

    /// A segment leaves the log (retention, deletion): its object, if any
    /// and its own, is released.
    pub(super) fn forget_offloaded(&mut self, segment: SegmentId) {
        if let Some(o) = self
            .offloaded
            .remove(&segment)
            .filter(Offloaded::is_own_object)
        {
            self.released_objects.push(o.object);
        }
        self.offload_cache.forget_segment(segment);
    }

    /// The read of an offloaded-only entry: from the offload cache, or the
    /// error that asks for it to be fetched.
    pub(super) fn read_offloaded(&self, p: Position) -> Result<Entry> {
        self.offload_cache.get(p).ok_or(StorageError::Offloaded {
            segment: p.segment,
            entry: p.entry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(segment: SegmentId, e: u64, size: usize) -> Entry {
        Entry {
            position: Position::new(segment, e),
            publish_time_ms: 0,
            message_index: e,
            message_count: 1,
            data: Bytes::from(vec![0u8; size]),
        }
    }

    #[test]
    fn the_offload_cache_keeps_its_byte_bound_oldest_first() {
        let mut c = OffloadCache {
            max_bytes: 250,
            ..Default::default()
        };
        for e in 0..5 {
            c.insert(entry(1, e, 100));
        }
        assert!(c.get(Position::new(1, 2)).is_none());
        assert!(c.get(Position::new(1, 3)).is_some() && c.get(Position::new(1, 4)).is_some());
        assert!(c.bytes <= 250);
        c.insert(entry(1, 4, 100));
        assert_eq!(c.bytes, 200, "an entry inserted again is counted once");
        c.forget_segment(1);
        assert_eq!((c.bytes, c.entries.len(), c.order.len()), (0, 0, 0));
        let mut tiny = OffloadCache::default();
        tiny.insert(entry(2, 0, 10));
        assert!(
            tiny.get(Position::new(2, 0)).is_some(),
            "at least one entry stays"
        );
    }
}
