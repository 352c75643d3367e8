//! A log's stored metadata: where a log keeps its state in the state store,
//! and the metadata record that lists its segments and durable cursors.
//!
//! Everything of log `id` is under `logs/<id>/`: the metadata record at
//! `logs/<id>/meta`, the cursor records beside it (`cursor.rs`). The record
//! is version 4 (cursors listed by id, then the offloaded segments, each
//! saying whether its object is its own); version 3 (offloaded segments,
//! all in objects of their own), version 2 (no offloaded segments) and
//! version 1 (cursors listed by name) still decode, and the log stores them
//! again as version 4 when it next saves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{Result, StorageError};
use crate::position::SegmentId;
use crate::state_store::StateStore;

use super::tiering::Offloaded;
use super::SegmentMeta;

/// Version 1 listed cursors by name (stored under their hex-encoded names);
/// version 2 by id. Version 1 is migrated when a log opens.
pub(crate) const META_VERSION_NAMES: u8 = 1;
/// Version 2: cursors by id, nothing offloaded.
pub(crate) const META_VERSION_IDS: u8 = 2;
/// Version 3: version 2, then the offloaded segments.
pub(crate) const META_VERSION_OFFLOADED: u8 = 3;
/// Version 4: version 3, each offloaded segment followed by where its
/// entries start in an object shared with other logs (a flag byte, then
/// the place when it is 1).
pub(crate) const META_VERSION: u8 = 4;

/// The prefix under which logs keep their state: `logs/<log id>/...`.
pub(crate) const LOGS_PREFIX: &str = "logs";

/// The segments log `id`'s stored metadata lists; `None` if it has none.
pub(crate) fn stored_segments(state: &dyn StateStore, id: u64) -> Result<Option<Vec<SegmentId>>> {
    let Some(b) = state.load(&meta_key(id))? else {
        return Ok(None);
    };
    let mut segments: Vec<SegmentId> = decode_meta(b)?.segments.iter().map(|s| s.id).collect();
    // The compacted view's segment belongs to the log too.
    if let Some(view) = super::compacted::load_view(state, id)? {
        segments.push(view.segment);
    }
    Ok(Some(segments))
}

/// Everything a log keeps in the state store is under this prefix.
pub(crate) fn log_prefix(id: u64) -> String {
    format!("{LOGS_PREFIX}/{id}")
}

pub(crate) fn meta_key(id: u64) -> String {
    format!("logs/{id}/meta")
}

/// Orders one log's metadata writes, wherever they run (on the log's task
/// or the blocking pool): each record is numbered when it is encoded, and a
/// record older than the one stored is dropped — the stored one already says
/// everything it would.
#[derive(Debug, Default)]
pub(crate) struct MetaOrder {
    /// The number the last record encoded got.
    issued: AtomicU64,
    /// The number of the record stored; the lock is held while one is written.
    stored: Mutex<u64>,
    /// `stored`, readable without the lock.
    stored_seen: AtomicU64,
}

impl MetaOrder {
    /// The number of the record about to be encoded.
    pub(crate) fn next(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The number of the newest record stored.
    pub(crate) fn stored(&self) -> u64 {
        self.stored_seen.load(Ordering::Acquire)
    }

    /// Stores record `number` of log `id`, unless a newer one is stored;
    /// returns once it is durable (or dropped).
    pub(crate) fn store(
        &self,
        state: &dyn StateStore,
        id: u64,
        number: u64,
        record: &[u8],
    ) -> Result<()> {
        let mut stored = self.lock()?;
        if *stored >= number {
            return Ok(());
        }
        state.store(&meta_key(id), record)?;
        *stored = number;
        self.stored_seen.store(number, Ordering::Release);
        Ok(())
    }

    /// Waits for a write under way; every later one is dropped.
    pub(crate) fn retire(&self) -> Result<()> {
        *self.lock()? = u64::MAX;
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, u64>> {
        self.stored
            .lock()
            .map_err(|_| StorageError::Log("a metadata write panicked".into()))
    }
}

/// A stored record that cannot be decoded.
pub(super) fn malformed(what: &str) -> StorageError {
    StorageError::InvalidFile {
        path: what.into(),
        detail: "truncated or malformed".into(),
    }
}

/// A log's metadata as stored.
#[derive(Debug, Default)]
pub(crate) struct Meta {
    pub segments: Vec<SegmentMeta>,
    pub next_message_index: u64,
    pub cursors: StoredCursors,
    pub offloaded: BTreeMap<SegmentId, Offloaded>,
}

/// How the metadata lists the durable cursors.
#[derive(Debug)]
pub(crate) enum StoredCursors {
    /// Version 1: by name, each under `legacy_cursor_key`.
    ByName(Vec<String>),
    /// Version 2: by id, each under `cursor_key` with its name inside.
    ById { next_id: u64, ids: Vec<u64> },
}

impl Default for StoredCursors {
    fn default() -> Self {
        StoredCursors::ById {
            next_id: 0,
            ids: Vec::new(),
        }
    }
}

/// What both versions of the record start with: the version, the next
/// message index and the segment table.
pub(crate) fn encode_head(
    version: u8,
    next_message_index: u64,
    segments: &[SegmentMeta],
) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(version);
    b.put_u64_le(next_message_index);
    b.put_u32_le(segments.len() as u32);
    for s in segments {
        b.put_u64_le(s.id);
        b.put_u64_le(s.first_message_index);
        b.put_u64_le(s.created_ms);
    }
    b
}

/// The metadata record (version 4): the head, then the id the next durable
/// cursor gets and the ids of the durable cursors, then the offloaded
/// segments: each its id, entries, bytes, last publish time, end message
/// index, when it was offloaded, its object's key (length, UTF-8), and
/// whether the object is shared (0, or 1 and the place of its first entry).
pub(crate) fn encode_meta(
    next_message_index: u64,
    segments: &[SegmentMeta],
    next_cursor_id: u64,
    cursor_ids: &[u64],
    offloaded: &BTreeMap<SegmentId, Offloaded>,
) -> BytesMut {
    let mut b = encode_head(META_VERSION, next_message_index, segments);
    b.put_u64_le(next_cursor_id);
    b.put_u32_le(cursor_ids.len() as u32);
    for id in cursor_ids {
        b.put_u64_le(*id);
    }
    b.put_u32_le(offloaded.len() as u32);
    for (id, o) in offloaded {
        b.put_u64_le(*id);
        b.put_u64_le(o.entries);
        b.put_u64_le(o.bytes);
        b.put_u64_le(o.last_publish_ms);
        b.put_u64_le(o.end_message_index);
        b.put_u64_le(o.offloaded_at_ms);
        b.put_u32_le(o.object.len() as u32);
        b.put_slice(o.object.as_bytes());
        match o.shared_at {
            None => b.put_u8(0),
            Some(place) => {
                b.put_u8(1);
                b.put_u32_le(place);
            }
        }
    }
    b
}

pub(crate) fn decode_meta(mut b: Bytes) -> Result<Meta> {
    let err = || malformed("managed log metadata");
    if b.remaining() < 13 {
        return Err(err());
    }
    let version = b.get_u8();
    if !matches!(
        version,
        META_VERSION | META_VERSION_OFFLOADED | META_VERSION_IDS | META_VERSION_NAMES
    ) {
        return Err(err());
    }
    let next_message_index = b.get_u64_le();
    let n = b.get_u32_le() as usize;
    if b.remaining() < n.saturating_mul(24) {
        return Err(err());
    }
    let segments = (0..n)
        .map(|_| SegmentMeta {
            id: b.get_u64_le(),
            first_message_index: b.get_u64_le(),
            created_ms: b.get_u64_le(),
        })
        .collect();
    let cursors = if version == META_VERSION_NAMES {
        StoredCursors::ByName(decode_names(&mut b).ok_or_else(err)?)
    } else {
        if b.remaining() < 12 {
            return Err(err());
        }
        let next_id = b.get_u64_le();
        let m = b.get_u32_le() as usize;
        let ids_end = m.saturating_mul(8);
        let exact = version == META_VERSION_IDS;
        if b.remaining() < ids_end || (exact && b.remaining() != ids_end) {
            return Err(err());
        }
        let ids = (0..m).map(|_| b.get_u64_le()).collect();
        StoredCursors::ById { next_id, ids }
    };
    let with_offloaded = version >= META_VERSION_OFFLOADED;
    let offloaded = if with_offloaded {
        decode_offloaded(&mut b, version == META_VERSION).ok_or_else(err)?
    } else {
        BTreeMap::new()
    };
    if with_offloaded && b.has_remaining() {
        return Err(err());
    }
    Ok(Meta {
        segments,
        next_message_index,
        cursors,
        offloaded,
    })
}

/// The offloaded segments of a version-3 record, or of a version-4 one
/// (`with_shared`).
fn decode_offloaded(b: &mut Bytes, with_shared: bool) -> Option<BTreeMap<SegmentId, Offloaded>> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32_le() as usize;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        if b.remaining() < 52 {
            return None;
        }
        let id = b.get_u64_le();
        let (entries, bytes, last_publish_ms, end_message_index, offloaded_at_ms) = (
            b.get_u64_le(),
            b.get_u64_le(),
            b.get_u64_le(),
            b.get_u64_le(),
            b.get_u64_le(),
        );
        let len = b.get_u32_le() as usize;
        if b.remaining() < len {
            return None;
        }
        let object = String::from_utf8(b.split_to(len).to_vec()).ok()?;
        let shared_at = match with_shared.then(|| b.try_get_u8().ok()) {
            None | Some(Some(0)) => None,
            Some(Some(1)) => Some(b.try_get_u32_le().ok()?),
            Some(_) => return None,
        };
        out.insert(
            id,
            Offloaded {
                object,
                entries,
                bytes,
                last_publish_ms,
                end_message_index,
                offloaded_at_ms,
                shared_at,
            },
        );
    }
    Some(out)
}

/// The cursor names of a version-1 metadata record.
fn decode_names(b: &mut Bytes) -> Option<Vec<String>> {
    if b.remaining() < 4 {
        return None;
    }
    let m = b.get_u32_le() as usize;
    let mut names = Vec::with_capacity(m.min(1024));
    for _ in 0..m {
        if b.remaining() < 4 {
            return None;
        }
        let len = b.get_u32_le() as usize;
        if b.remaining() < len {
            return None;
        }
        names.push(String::from_utf8(b.split_to(len).to_vec()).ok()?);
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_store::DirStateStore;

    #[test]
    fn an_older_record_never_replaces_a_newer_one_and_none_lands_after_retiring() {
        let dir = tempfile::tempdir().unwrap();
        let state = DirStateStore::open(dir.path()).unwrap();
        let order = MetaOrder::default();
        let (older, newer) = (order.next(), order.next());
        order.store(&state, 7, newer, b"newer").unwrap();
        order.store(&state, 7, older, b"older").unwrap();
        assert_eq!(state.load(&meta_key(7)).unwrap().unwrap(), &b"newer"[..]);
        assert_eq!(order.stored(), newer);
        order.retire().unwrap();
        let later = order.next();
        order.store(&state, 7, later, b"later").unwrap();
        assert_eq!(state.load(&meta_key(7)).unwrap().unwrap(), &b"newer"[..]);
    }
}
