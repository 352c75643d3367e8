//! A cursor: how far one reader of a log has acknowledged and read it, and
//! how the log keeps its durable cursors in the state store.
//!
//! Cursor state is an *ack floor* — every entry before it is acknowledged — plus
//! the individually acknowledged entries at or after it as a [`RangeSet`], and a
//! read position. Pulsar's mark-delete position is the entry just before the floor.
//! [`Cursor`] is the bookkeeping alone: it learns where segments end through
//! [`Positions`], so it can be driven without a store.
//!
//! A durable cursor is stored as one record under `logs/<log>/cursor-<id>`,
//! its name inside (any name fits, whatever its length), and the log's
//! metadata lists the ids. Metadata version 1 stored cursors under their
//! hex-encoded names instead; a log migrates them when it opens.

use std::collections::{BTreeMap, HashSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::entry_cache::EvictionStrategy;
use crate::error::{Result, StorageError};
use crate::position::Position;
use crate::range_set::RangeSet;
use crate::state_store::key_component;

use super::meta::{log_prefix, malformed, StoredCursors};
use super::ManagedLog;

/// What a cursor needs to know of its log: which entry a position stands
/// for, given where segments end and which segments are gone.
pub(super) trait Positions {
    /// The entry `p` stands for (moved past segment ends and deleted segments).
    fn normalize(&self, p: Position) -> Position;

    /// The entry after `p` (a client's id at the end of the id space
    /// stands for the end of its segment: it never wraps).
    fn next(&self, p: Position) -> Position {
        self.normalize(Position::new(p.segment, p.entry.saturating_add(1)))
    }
}

/// Where a new cursor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest entry still stored.
    Earliest,
    /// After the last durable entry.
    Latest,
    /// At this position (its entry is the first one read).
    At(Position),
}

/// A read-only view of a cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorInfo {
    pub name: String,
    pub durable: bool,
    /// Pulsar's mark-delete position: the last entry before which everything is acked.
    pub mark_delete: Option<Position>,
    pub read_position: Position,
    pub ack_ranges: usize,
    /// Entries not yet acknowledged.
    pub backlog_entries: u64,
    /// When the cursor was last marked active ([`ManagedLog::touch_cursor`]),
    /// ms since the epoch; `None`: not since it was stored in version 2.
    pub last_active_ms: Option<u64>,
    /// Its position is replicated ([`ManagedLog::set_cursor_replicated`]).
    pub replicated: bool,
}

/// A durable cursor's backlog as last persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredCursor {
    pub name: String,
    /// Entries not acknowledged.
    pub backlog_entries: u64,
    /// Their bytes, estimated as [`ManagedLog::backlog_bytes`] does.
    pub backlog_bytes: u64,
    /// Its position is replicated.
    pub replicated: bool,
}

/// A cursor's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Cursor {
    /// Where a durable cursor is stored (`logs/<log>/cursor-<id>`, its name
    /// inside), so any name fits a file name; `None`: not durable.
    id: Option<u64>,
    /// Every entry before this is acknowledged.
    floor: Position,
    /// Acknowledged entries at or after `floor`.
    acked: RangeSet,
    /// The next entry to read.
    read: Position,
    /// Changes made to it (counted, so that a write started before a change
    /// does not mark the change stored)…
    changes: u64,
    /// …and how many of them are stored.
    stored_changes: u64,
    /// Reads through the log's compacted view (a `readCompacted` reader);
    /// set by whoever opens it, never stored.
    read_compacted: bool,
    /// When its owner last marked it active (ms since the epoch; `None`:
    /// never, or stored before this was kept). Stored with the cursor, so
    /// that subscription expiration counts idle time across unloads and
    /// restarts, as Pulsar's cursor `lastActive` does.
    last_active_ms: Option<u64>,
    /// Pulsar's replicated subscription state: the subscription's position
    /// is kept in step with its namesakes in the replication clusters.
    /// Stored with the cursor.
    replicated: bool,
}

impl Cursor {
    /// A new cursor at `start`, stored under `id` if durable (and so not stored yet).
    pub(super) fn new(id: Option<u64>, start: Position) -> Self {
        Cursor {
            id,
            floor: start,
            acked: RangeSet::new(),
            read: start,
            changes: u64::from(id.is_some()),
            stored_changes: 0,
            read_compacted: false,
            last_active_ms: None,
            replicated: false,
        }
    }

    /// A durable cursor as loaded from storage; it reads from its floor on.
    pub(super) fn loaded(id: u64, record: CursorRecord, dirty: bool) -> Self {
        Cursor {
            id: Some(id),
            floor: record.floor,
            acked: record.acked,
            read: record.floor,
            changes: u64::from(dirty),
            stored_changes: 0,
            read_compacted: false,
            last_active_ms: record.last_active_ms,
            replicated: record.replicated,
        }
    }

    /// Whether its position is replicated (Pulsar's `replicated` subscription).
    pub(super) fn replicated(&self) -> bool {
        self.replicated
    }

    /// Marks its position replicated or not (stored at the next persist).
    pub(super) fn set_replicated(&mut self, on: bool) {
        if self.replicated != on {
            self.replicated = on;
            self.changed();
        }
    }

    /// When the cursor was last marked active (ms since the epoch).
    pub(super) fn last_active_ms(&self) -> Option<u64> {
        self.last_active_ms
    }

    /// Marks the cursor active at `now_ms` (stored at the next persist).
    pub(super) fn touch(&mut self, now_ms: u64) {
        if self.last_active_ms != Some(now_ms) {
            self.last_active_ms = Some(now_ms);
            self.changed();
        }
    }

    pub(super) fn id(&self) -> Option<u64> {
        self.id
    }

    pub(super) fn durable(&self) -> bool {
        self.id.is_some()
    }

    /// Whether it reads through the compacted view.
    pub(super) fn read_compacted(&self) -> bool {
        self.read_compacted
    }

    pub(super) fn set_read_compacted(&mut self, on: bool) {
        self.read_compacted = on;
    }

    /// A durable cursor changed since it was last stored.
    pub(super) fn needs_persist(&self) -> bool {
        self.durable() && self.changes != self.stored_changes
    }

    #[cfg(test)]
    pub(super) fn mark_persisted(&mut self) {
        self.stored_changes = self.changes;
    }

    /// Its changes so far (what a write of its state now covers).
    pub(super) fn changes(&self) -> u64 {
        self.changes
    }

    /// A write that covered its first `changes` changes is durable.
    pub(super) fn mark_stored(&mut self, changes: u64) {
        self.stored_changes = self.stored_changes.max(changes.min(self.changes));
    }

    fn changed(&mut self) {
        self.changes += 1;
    }

    /// The first entry not acknowledged, as stored (not normalised).
    pub(super) fn floor(&self) -> Position {
        self.floor
    }

    /// Acknowledged entries at or after the floor.
    pub(super) fn acked(&self) -> &RangeSet {
        &self.acked
    }

    /// The next entry to read, as stored (it may lag behind the floor).
    pub(super) fn read_position(&self) -> Position {
        self.read
    }

    /// The cursor has read up to `p`.
    pub(super) fn set_read_position(&mut self, p: Position) {
        self.read = p;
    }

    /// Sends the read position back to the floor: every unacknowledged entry is read again.
    pub(super) fn rewind(&mut self) {
        self.read = self.floor;
    }

    /// Moves the read position back to `p`, not before the floor (never forward).
    pub(super) fn rewind_read_to(&mut self, p: Position) {
        if p < self.read {
            self.read = p.max(self.floor);
        }
    }

    /// Entries before `p` count as acknowledged, entries from it on as not;
    /// reading starts again at `p`.
    pub(super) fn reset(&mut self, p: Position) {
        self.floor = p;
        self.read = p;
        self.acked.clear();
        self.changed();
    }

    /// Acknowledges one entry (one before the floor is acknowledged already).
    pub(super) fn ack(&mut self, p: Position, log: &impl Positions) {
        if p >= self.floor {
            self.acked.insert(p);
            self.changed();
        }
        self.advance_floor(log);
    }

    /// Acknowledges entries `start..=end` of one segment (those before the
    /// floor are acknowledged already).
    pub(super) fn ack_range(&mut self, start: Position, end: Position, log: &impl Positions) {
        if start.segment == end.segment && start <= end && end >= self.floor {
            let from = if start < self.floor && self.floor.segment == start.segment {
                self.floor
            } else {
                start
            };
            self.acked.insert_range(from, end);
            self.changed();
        }
        self.advance_floor(log);
    }

    /// Acknowledges every entry up to and including `p`.
    pub(super) fn ack_cumulative(&mut self, p: Position, log: &impl Positions) {
        let next = log.next(p);
        if next > self.floor {
            self.floor = next;
            self.acked.remove_up_to(p);
            self.changed();
        }
        self.advance_floor(log);
    }

    /// Folds the acknowledged ranges that start at the floor into it, so the
    /// floor is the first unacknowledged entry; the read position follows it.
    fn advance_floor(&mut self, log: &impl Positions) {
        loop {
            self.floor = log.normalize(self.floor);
            let Some((_, end)) = self.acked.range_starting_at(self.floor) else {
                break;
            };
            self.acked.remove_up_to(end);
            self.floor = log.next(end);
        }
        if self.read < self.floor {
            self.read = self.floor;
        }
    }

    /// The position before which this cursor needs nothing cached.
    pub(super) fn cache_needed_from(&self, strategy: EvictionStrategy) -> Position {
        match strategy {
            EvictionStrategy::SlowestReader => self.read.max(self.floor),
            // Time-only eviction asks nothing by position: the floor is
            // what it would keep at most.
            EvictionStrategy::SlowestMarkDelete | EvictionStrategy::TimeOnly => self.floor,
        }
    }

    /// The cursor's record as stored by id: its name, floor and (the first
    /// `max_ranges` of) its acknowledged ranges. Ranges left out are
    /// redelivered after a restart, never lost.
    pub(super) fn encode(&self, name: &str, max_ranges: usize) -> BytesMut {
        let ranges: Vec<_> = self.acked.iter().take(max_ranges).collect();
        encode_cursor(
            name,
            self.floor,
            &ranges,
            self.last_active_ms,
            self.replicated,
        )
    }
}

/// The cursor of that name.
pub(super) fn named<'a>(cursors: &'a BTreeMap<String, Cursor>, name: &str) -> Result<&'a Cursor> {
    cursors
        .get(name)
        .ok_or_else(|| StorageError::NoSuchCursor(name.to_string()))
}

/// The cursor of that name, to change.
pub(super) fn named_mut<'a>(
    cursors: &'a mut BTreeMap<String, Cursor>,
    name: &str,
) -> Result<&'a mut Cursor> {
    cursors
        .get_mut(name)
        .ok_or_else(|| StorageError::NoSuchCursor(name.to_string()))
}

// ---- the stored record ----

/// The first byte of a cursor record stored by id (one stored by name has none).
pub(crate) const CURSOR_VERSION: u8 = 4;
/// Version 3 records lack the flags byte; they are read, never written.
const CURSOR_VERSION_WITHOUT_FLAGS: u8 = 3;
/// Version 2 records lack the last-active time too.
const CURSOR_VERSION_WITHOUT_ACTIVITY: u8 = 2;

/// [`CursorRecord::replicated`] in the flags byte.
const FLAG_REPLICATED: u8 = 1;

/// A cursor record as stored by id: version, name, ack floor, the
/// acknowledged ranges, each (segment, first entry, last entry) of one
/// segment, then the last-active time in ms (0: unknown), then a flags
/// byte (bit 0: replicated).
pub(crate) fn encode_cursor(
    name: &str,
    floor: Position,
    ranges: &[(Position, Position)],
    last_active_ms: Option<u64>,
    replicated: bool,
) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(CURSOR_VERSION);
    b.put_u32_le(name.len() as u32);
    b.put_slice(name.as_bytes());
    b.put_u64_le(floor.segment);
    b.put_u64_le(floor.entry);
    b.put_u32_le(ranges.len() as u32);
    for (s, e) in ranges {
        b.put_u64_le(s.segment);
        b.put_u64_le(s.entry);
        b.put_u64_le(e.entry);
    }
    b.put_u64_le(last_active_ms.unwrap_or(0));
    b.put_u8(if replicated { FLAG_REPLICATED } else { 0 });
    b
}

/// What a cursor record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CursorRecord {
    pub name: String,
    pub floor: Position,
    pub acked: RangeSet,
    pub last_active_ms: Option<u64>,
    pub replicated: bool,
}

/// A cursor record stored by id (version 4; version 3 without the flags,
/// version 2 without the last-active time either).
pub(crate) fn decode_cursor(b: &Bytes) -> Result<CursorRecord> {
    let mut b = b.clone();
    let err = || malformed("cursor state");
    if b.remaining() < 5 {
        return Err(err());
    }
    let version = b.get_u8();
    if !matches!(
        version,
        CURSOR_VERSION | CURSOR_VERSION_WITHOUT_FLAGS | CURSOR_VERSION_WITHOUT_ACTIVITY
    ) {
        return Err(err());
    }
    let len = b.get_u32_le() as usize;
    if b.remaining() < len {
        return Err(err());
    }
    let name = String::from_utf8(b.split_to(len).to_vec()).map_err(|_| err())?;
    let (floor, acked) = read_cursor_body(&mut b)?;
    let last_active_ms = if version >= CURSOR_VERSION_WITHOUT_FLAGS {
        if b.remaining() < 8 {
            return Err(err());
        }
        Some(b.get_u64_le()).filter(|ms| *ms > 0)
    } else {
        None
    };
    let flags = if version >= CURSOR_VERSION {
        if b.remaining() < 1 {
            return Err(err());
        }
        b.get_u8()
    } else {
        0
    };
    Ok(CursorRecord {
        name,
        floor,
        acked,
        last_active_ms,
        replicated: flags & FLAG_REPLICATED != 0,
    })
}

/// A cursor's ack floor and acknowledged ranges (all of a record stored by name).
pub(crate) fn decode_cursor_body(mut b: Bytes) -> Result<(Position, RangeSet)> {
    read_cursor_body(&mut b)
}

/// Reads an ack floor and acknowledged ranges off the front of `b`.
fn read_cursor_body(b: &mut Bytes) -> Result<(Position, RangeSet)> {
    let err = || malformed("cursor state");
    if b.remaining() < 20 {
        return Err(err());
    }
    let floor = Position::new(b.get_u64_le(), b.get_u64_le());
    let n = b.get_u32_le() as usize;
    if b.remaining() < n.saturating_mul(24) {
        return Err(err());
    }
    let mut acked = RangeSet::new();
    for _ in 0..n {
        let seg = b.get_u64_le();
        let (s, e) = (b.get_u64_le(), b.get_u64_le());
        if s <= e {
            acked.insert_range(Position::new(seg, s), Position::new(seg, e));
        }
    }
    Ok((floor, acked))
}

// ---- where records are stored ----

const CURSOR_KEY_PREFIX: &str = "cursor-";

pub(super) fn cursor_key(log: u64, cursor: u64) -> String {
    format!("logs/{log}/{CURSOR_KEY_PREFIX}{cursor}")
}

/// Where metadata version 1 kept its cursors: one file named after the
/// hex-encoded cursor name, which fails for names of 126 bytes or more.
fn legacy_cursor_dir(log: u64) -> String {
    format!("logs/{log}/cursors")
}

fn legacy_cursor_key(log: u64, name: &str) -> String {
    format!("{}/{}", legacy_cursor_dir(log), key_component(name))
}

// ---- a log's durable cursors ----

impl ManagedLog {
    /// Loads the durable cursors the metadata lists, writing nothing; returns
    /// the names of cursors stored by name (metadata version 1), which
    /// [`Self::migrate_cursors`] stores again by id.
    pub(super) fn load_cursors(&mut self, stored: StoredCursors) -> Result<Vec<String>> {
        let mut migrate = Vec::new();
        match stored {
            StoredCursors::ById { next_id, ids } => {
                self.next_cursor_id = next_id;
                for cid in ids {
                    let Some(b) = self.state.load(&cursor_key(self.id, cid))? else {
                        tracing::warn!(
                            log = self.id,
                            cursor = cid,
                            "a listed cursor's state is missing"
                        );
                        continue;
                    };
                    let record = decode_cursor(&b)?;
                    self.insert_loaded_cursor(cid, record, false);
                }
            }
            StoredCursors::ByName(names) => {
                for name in names {
                    let key = legacy_cursor_key(self.id, &name);
                    if let Some(b) = self.state.load(&key)? {
                        let (floor, acked) = decode_cursor_body(b)?;
                        let cid = self.next_cursor_id;
                        let record = CursorRecord {
                            name: name.clone(),
                            floor,
                            acked,
                            last_active_ms: None,
                            replicated: false,
                        };
                        self.insert_loaded_cursor(cid, record, true);
                        migrate.push(name);
                    }
                }
            }
        }
        Ok(migrate)
    }

    /// Stores cursors loaded from storage by name again by id, and the
    /// metadata in version 2, before anything of the old form is removed, so
    /// a crash at any point leaves one complete form to open from.
    pub(super) fn migrate_cursors(&mut self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            self.persist_cursor(name)?;
        }
        self.save_meta()?;
        tracing::info!(
            log = self.id,
            cursors = names.len(),
            "cursors stored by id (migrated from storage by name)"
        );
        Ok(())
    }

    fn insert_loaded_cursor(&mut self, cid: u64, mut record: CursorRecord, dirty: bool) {
        record.floor = self.positions().normalize(record.floor);
        self.next_cursor_id = self.next_cursor_id.max(cid + 1);
        let name = std::mem::take(&mut record.name);
        let cursor = Cursor::loaded(cid, record, dirty);
        if let Some(old) = self.cursors.insert(name, cursor) {
            // Two records of one name (cannot happen by design): keep the later id.
            tracing::warn!(log = self.id, cursor = ?old.id, "duplicate cursor record ignored");
        }
    }

    /// Removes cursor records the metadata no longer lists (a crash between
    /// storing a record and the metadata, or between the metadata and a
    /// removal) and the storage by name left after a migration. Best effort:
    /// what stays is only a few stale bytes.
    pub(super) fn remove_stale_cursor_state(&self) {
        let live: HashSet<u64> = self.cursors.values().filter_map(|c| c.id).collect();
        let dir = log_prefix(self.id);
        let result = self.state.children(&dir).and_then(|names| {
            for name in names {
                let stale = name
                    .strip_prefix(CURSOR_KEY_PREFIX)
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|cid| !live.contains(&cid));
                if stale {
                    self.state.remove(&format!("{dir}/{name}"))?;
                }
            }
            self.state.remove_all(&legacy_cursor_dir(self.id))
        });
        if let Err(e) = result {
            tracing::warn!(log = self.id, error = %e, "could not remove stale cursor state");
        }
    }

    /// Persists every durable cursor changed since its last persist, on
    /// the calling thread (it blocks on the writes); how many.
    pub fn persist_cursors(&mut self) -> Result<usize> {
        let stored = self.cursor_writes().store();
        self.cursor_writes_done(stored)
    }

    /// The states of the durable cursors changed since their last persist,
    /// to be stored by [`CursorWrites::store`] — on a thread that may block,
    /// so that the caller's task goes on serving meanwhile — and handed back
    /// to [`ManagedLog::cursor_writes_done`]. The cursors may change in
    /// between: a change made after this call stays to be persisted. One
    /// batch at a time per log: two in flight could store a cursor's older
    /// state over its newer one.
    pub fn cursor_writes(&self) -> CursorWrites {
        let writes = self
            .cursors
            .iter()
            .filter(|(_, c)| c.needs_persist())
            .filter_map(|(name, c)| self.cursor_write(name, c))
            .collect();
        self.writes_of(writes)
    }

    fn cursor_write(&self, name: &str, c: &Cursor) -> Option<CursorWrite> {
        let id = c.id()?;
        Some(CursorWrite {
            key: cursor_key(self.id, id),
            id,
            name: name.to_string(),
            changes: c.changes(),
            bytes: c.encode(name, self.config.max_persisted_ack_ranges),
        })
    }

    /// Removes a cursor's stored state; a write of it still in flight
    /// stores nothing after this.
    pub(super) fn remove_cursor_state(&self, id: u64) -> Result<()> {
        let mut covered = self
            .cursor_order
            .stored
            .lock()
            .map_err(|_| StorageError::Log("cursor write lock poisoned".into()))?;
        covered.insert(id, u64::MAX);
        self.state.remove(&cursor_key(self.id, id))
    }

    fn writes_of(&self, writes: Vec<CursorWrite>) -> CursorWrites {
        CursorWrites {
            state: self.state.clone(),
            order: self.cursor_order.clone(),
            writes,
        }
    }

    /// Marks what a [`CursorWrites::store`] stored as persisted (a cursor
    /// removed or replaced meanwhile is left alone); how many it stored, or
    /// the error it stopped at (what it did not store is persisted next time).
    pub fn cursor_writes_done(&mut self, done: CursorsStored) -> Result<usize> {
        let n = done.stored.len();
        for (name, id, changes) in done.stored {
            if let Some(c) = self.cursors.get_mut(&name).filter(|c| c.id() == Some(id)) {
                c.mark_stored(changes);
            }
        }
        match done.error {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Marks a cursor active at `now_ms` (a consumer came or went): the time
    /// is stored with the cursor at its next persist.
    pub fn touch_cursor(&mut self, name: &str, now_ms: u64) -> Result<()> {
        named_mut(&mut self.cursors, name)?.touch(now_ms);
        Ok(())
    }

    /// Marks a cursor's position replicated or not (Pulsar's replicated
    /// subscription state), stored with the cursor at its next persist.
    pub fn set_cursor_replicated(&mut self, name: &str, on: bool) -> Result<()> {
        named_mut(&mut self.cursors, name)?.set_replicated(on);
        Ok(())
    }

    /// Whether any cursor's position is replicated (without computing backlogs).
    pub fn any_cursor_replicated(&self) -> bool {
        self.cursors.values().any(Cursor::replicated)
    }

    /// Persists one cursor now (on the calling thread). A failed store
    /// leaves it to be persisted again; a close reports it.
    pub(super) fn persist_cursor(&mut self, name: &str) -> Result<()> {
        let c = named(&self.cursors, name)?;
        let writes = self.cursor_write(name, c).into_iter().collect();
        let stored = self.writes_of(writes).store();
        self.cursor_writes_done(stored).map(drop)
    }
}

/// Cursor states to store, from [`ManagedLog::cursor_writes`].
pub struct CursorWrites {
    state: std::sync::Arc<dyn crate::state_store::StateStore>,
    order: std::sync::Arc<CursorWriteOrder>,
    writes: Vec<CursorWrite>,
}

/// One log's cursor writes, one at a time, and the changes each cursor's
/// stored state covers: a write that would store an older state than the
/// one stored (a batch written off the topic's task racing the persist of a
/// close) is dropped as covered.
#[derive(Default)]
pub(super) struct CursorWriteOrder {
    /// Cursor id → the changes its stored state covers.
    stored: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
}

struct CursorWrite {
    key: String,
    id: u64,
    name: String,
    /// The cursor's changes this state covers.
    changes: u64,
    bytes: BytesMut,
}

/// What [`CursorWrites::store`] stored, for [`ManagedLog::cursor_writes_done`].
pub struct CursorsStored {
    /// (name, id, changes covered) of each cursor stored.
    stored: Vec<(String, u64, u64)>,
    /// The write it stopped at failed.
    error: Option<StorageError>,
}

impl CursorWrites {
    /// No cursor changed.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Stores every state, in turn (each durable before the next begins);
    /// blocks the calling thread on the writes. Stops at the first failure.
    pub fn store(self) -> CursorsStored {
        let mut stored = Vec::with_capacity(self.writes.len());
        let Ok(mut covered) = self.order.stored.lock() else {
            return CursorsStored {
                stored,
                error: Some(StorageError::Log("cursor write lock poisoned".into())),
            };
        };
        for w in self.writes {
            let newer_stored = covered.get(&w.id).is_some_and(|&c| c >= w.changes);
            if !newer_stored {
                if let Err(e) = self.state.store(&w.key, &w.bytes) {
                    return CursorsStored {
                        stored,
                        error: Some(e),
                    };
                }
                covered.insert(w.id, w.changes);
            }
            stored.push((w.name, w.id, w.changes));
        }
        CursorsStored {
            stored,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A log whose segments hold these many entries each (ids ascending);
    /// positions past a segment's end stand for the next segment's first
    /// entry, as the log's own do.
    struct Segments(Vec<(u64, u64)>);

    impl Positions for Segments {
        fn normalize(&self, mut p: Position) -> Position {
            for (i, &(id, entries)) in self.0.iter().enumerate() {
                if id < p.segment {
                    continue;
                }
                if id > p.segment {
                    p = Position::new(id, 0);
                }
                let is_last = i + 1 == self.0.len();
                if is_last || p.entry < entries {
                    return p;
                }
            }
            p
        }
    }

    /// One segment (1) of unlimited length.
    fn one_segment() -> Segments {
        Segments(vec![(1, u64::MAX)])
    }

    fn pos(entry: u64) -> Position {
        Position::new(1, entry)
    }

    fn ranges(c: &Cursor) -> Vec<(Position, Position)> {
        c.acked().iter().collect()
    }

    #[test]
    fn acks_after_a_gap_are_kept_as_ranges_and_the_floor_stays_at_the_gap() {
        let log = one_segment();
        let mut c = Cursor::new(None, pos(0));
        c.ack(pos(2), &log);
        c.ack(pos(3), &log);
        c.ack(pos(5), &log);
        assert_eq!(c.floor(), pos(0));
        assert_eq!(ranges(&c), vec![(pos(2), pos(3)), (pos(5), pos(5))]);
    }

    #[test]
    fn an_ack_at_the_floor_folds_every_contiguous_range_into_it() {
        let log = one_segment();
        let mut c = Cursor::new(None, pos(0));
        for e in [1, 2, 4] {
            c.ack(pos(e), &log);
        }
        c.ack(pos(0), &log);
        // 0..=2 acknowledged, 3 not: the floor stops at the gap.
        assert_eq!(c.floor(), pos(3));
        assert_eq!(ranges(&c), vec![(pos(4), pos(4))]);
        c.ack(pos(3), &log);
        assert_eq!(c.floor(), pos(5));
        assert!(c.acked().is_empty());
    }

    #[test]
    fn acks_behind_the_floor_change_nothing() {
        let log = one_segment();
        let mut c = Cursor::new(Some(7), pos(10));
        c.mark_persisted();
        c.ack(pos(4), &log);
        c.ack_cumulative(pos(3), &log);
        assert_eq!(c.floor(), pos(10));
        assert!(c.acked().is_empty());
        assert!(
            !c.needs_persist(),
            "an ack of nothing new must not dirty the cursor"
        );
    }

    #[test]
    fn a_cumulative_ack_drops_the_ranges_it_covers_and_folds_the_one_after_it() {
        let log = one_segment();
        let mut c = Cursor::new(None, pos(0));
        for e in [2, 3, 6, 7] {
            c.ack(pos(e), &log);
        }
        c.ack_cumulative(pos(4), &log);
        assert_eq!(c.floor(), pos(5));
        assert_eq!(ranges(&c), vec![(pos(6), pos(7))]);
        c.ack_cumulative(pos(5), &log);
        assert_eq!(c.floor(), pos(8), "the range right after the ack folds in");
        assert!(c.acked().is_empty());
    }

    #[test]
    fn acks_at_the_end_of_the_id_space_do_not_overflow() {
        // Segment 1 holds 3 entries, segment 2 holds 5.
        let log = Segments(vec![(1, 3), (2, 5)]);
        let mut c = Cursor::new(None, Position::new(1, 0));
        c.ack(Position::new(1, u64::MAX), &log);
        c.ack_cumulative(Position::new(1, u64::MAX), &log);
        assert_eq!(c.floor(), Position::new(2, 0), "past segment 1's end");
    }

    #[test]
    fn the_floor_crosses_segment_ends_and_deleted_segments() {
        // Segment 1 holds 2 entries, segment 2 was deleted, segment 3 holds 5.
        let log = Segments(vec![(1, 2), (3, 5)]);
        let mut c = Cursor::new(None, Position::new(1, 0));
        c.ack(Position::new(3, 0), &log);
        c.ack(Position::new(3, 1), &log);
        c.ack(Position::new(1, 1), &log);
        assert_eq!(c.floor(), Position::new(1, 0));
        c.ack(Position::new(1, 0), &log);
        // (1, 2) is past segment 1's end: it stands for (3, 0), acknowledged too.
        assert_eq!(c.floor(), Position::new(3, 2));
        assert!(c.acked().is_empty());
    }

    #[test]
    fn the_read_position_follows_the_floor_but_not_back() {
        let log = one_segment();
        let mut c = Cursor::new(None, pos(0));
        c.set_read_position(pos(3));
        c.ack_cumulative(pos(5), &log);
        assert_eq!(
            c.read_position(),
            pos(6),
            "read never stays behind the floor"
        );
        c.set_read_position(pos(9));
        c.ack_cumulative(pos(6), &log);
        assert_eq!(c.read_position(), pos(9), "read ahead of the floor stays");
    }

    #[test]
    fn rewinding_goes_back_to_the_floor_and_never_before_it() {
        let mut c = Cursor::new(None, pos(4));
        c.set_read_position(pos(10));
        c.rewind_read_to(pos(7));
        assert_eq!(c.read_position(), pos(7));
        c.rewind_read_to(pos(9));
        assert_eq!(c.read_position(), pos(7), "rewinding never moves forward");
        c.rewind_read_to(pos(1));
        assert_eq!(c.read_position(), pos(4), "nor before the floor");
        c.set_read_position(pos(10));
        c.rewind();
        assert_eq!(c.read_position(), pos(4));
    }

    #[test]
    fn a_reset_forgets_acks_and_moves_floor_and_read() {
        let log = one_segment();
        let mut c = Cursor::new(Some(3), pos(0));
        c.ack(pos(5), &log);
        c.set_read_position(pos(8));
        c.mark_persisted();
        c.reset(pos(2));
        assert_eq!((c.floor(), c.read_position()), (pos(2), pos(2)));
        assert!(c.acked().is_empty());
        assert!(c.needs_persist());
    }

    #[test]
    fn only_durable_cursors_that_changed_need_persisting() {
        let log = one_segment();
        assert!(
            Cursor::new(Some(0), pos(0)).needs_persist(),
            "a new durable cursor is stored at once"
        );
        let mut plain = Cursor::new(None, pos(0));
        plain.ack(pos(0), &log);
        assert!(!plain.needs_persist());
        let record = CursorRecord {
            name: String::new(),
            floor: pos(3),
            acked: RangeSet::new(),
            last_active_ms: None,
            replicated: false,
        };
        let mut loaded = Cursor::loaded(4, record, false);
        assert!(!loaded.needs_persist());
        assert_eq!(
            loaded.read_position(),
            pos(3),
            "a loaded cursor reads from its floor"
        );
        loaded.ack(pos(3), &log);
        assert!(loaded.needs_persist());
        loaded.mark_persisted();
        assert!(!loaded.needs_persist());
    }

    #[test]
    fn the_cache_is_needed_from_the_read_position_or_the_floor() {
        let mut c = Cursor::new(None, pos(4));
        c.set_read_position(pos(9));
        assert_eq!(c.cache_needed_from(EvictionStrategy::SlowestReader), pos(9));
        assert_eq!(
            c.cache_needed_from(EvictionStrategy::SlowestMarkDelete),
            pos(4)
        );
        c.set_read_position(pos(2));
        assert_eq!(c.cache_needed_from(EvictionStrategy::SlowestReader), pos(4));
    }

    #[test]
    fn a_record_keeps_name_floor_and_ranges() {
        let log = one_segment();
        let mut c = Cursor::new(Some(1), pos(3));
        for e in [5, 6, 9] {
            c.ack(pos(e), &log);
        }
        c.touch(1_700_000_000_123);
        c.set_replicated(true);
        let name = "sub/ü with a long name ".repeat(20);
        let r = decode_cursor(&c.encode(&name, 100).freeze()).unwrap();
        assert_eq!((r.name, r.floor, &r.acked), (name, pos(3), c.acked()));
        assert_eq!(r.last_active_ms, Some(1_700_000_000_123));
        assert!(r.replicated);
    }

    #[test]
    fn touching_a_cursor_marks_it_for_persisting_once_per_time() {
        let mut c = Cursor::loaded(
            1,
            CursorRecord {
                name: String::new(),
                floor: pos(0),
                acked: RangeSet::new(),
                last_active_ms: None,
                replicated: false,
            },
            false,
        );
        c.touch(5);
        assert!(c.needs_persist());
        assert_eq!(c.last_active_ms(), Some(5));
        c.mark_persisted();
        c.touch(5);
        assert!(!c.needs_persist(), "the same time again changes nothing");
    }

    #[test]
    fn a_version_3_record_is_not_replicated() {
        let mut v3 = encode_cursor("old", pos(1), &[], Some(7), true).to_vec();
        v3.truncate(v3.len() - 1);
        v3[0] = CURSOR_VERSION_WITHOUT_FLAGS;
        let r = decode_cursor(&Bytes::from(v3)).unwrap();
        assert_eq!(
            (r.floor, r.last_active_ms, r.replicated),
            (pos(1), Some(7), false)
        );
    }

    #[test]
    fn a_version_2_record_has_no_activity_time() {
        let mut v2 = encode_cursor("old", pos(1), &[(pos(2), pos(3))], None, false).to_vec();
        v2.truncate(v2.len() - 9);
        v2[0] = CURSOR_VERSION_WITHOUT_ACTIVITY;
        let r = decode_cursor(&Bytes::from(v2)).unwrap();
        assert_eq!((r.name.as_str(), r.floor), ("old", pos(1)));
        assert_eq!(r.acked.iter().collect::<Vec<_>>(), vec![(pos(2), pos(3))]);
        assert_eq!(r.last_active_ms, None);
    }

    #[test]
    fn a_record_holds_only_the_first_ranges_up_to_the_cap() {
        let log = one_segment();
        let mut c = Cursor::new(Some(1), pos(0));
        for e in [2, 4, 6, 8] {
            c.ack(pos(e), &log);
        }
        let r = decode_cursor(&c.encode("s", 2).freeze()).unwrap();
        assert_eq!(r.floor, pos(0));
        assert_eq!(
            r.acked.iter().collect::<Vec<_>>(),
            vec![(pos(2), pos(2)), (pos(4), pos(4))]
        );
    }

    #[test]
    fn a_truncated_or_foreign_record_is_refused() {
        let ranges = [(pos(2), pos(3))];
        let full = encode_cursor("name", pos(1), &ranges, Some(9), true).freeze();
        assert!(decode_cursor(&full).is_ok());
        for len in 0..full.len() {
            assert!(
                decode_cursor(&full.slice(..len)).is_err(),
                "{len} bytes of {}",
                full.len()
            );
        }
        let mut other_version = full.to_vec();
        other_version[0] = CURSOR_VERSION + 1;
        assert!(decode_cursor(&Bytes::from(other_version)).is_err());
    }

    #[test]
    fn a_record_stored_by_name_is_the_body_alone() {
        let full = encode_cursor("name", pos(1), &[(pos(2), pos(3))], None, false).freeze();
        // Version byte, name length, name.
        let body = full.slice(1 + 4 + 4..);
        let (floor, acked) = decode_cursor_body(body).unwrap();
        assert_eq!(floor, pos(1));
        assert_eq!(acked.iter().collect::<Vec<_>>(), vec![(pos(2), pos(3))]);
    }

    #[test]
    fn a_backwards_range_in_a_record_is_skipped() {
        let full = encode_cursor(
            "n",
            pos(0),
            &[(pos(5), pos(3)), (pos(7), pos(8))],
            None,
            false,
        )
        .freeze();
        let acked = decode_cursor(&full).unwrap().acked;
        assert_eq!(acked.iter().collect::<Vec<_>>(), vec![(pos(7), pos(8))]);
    }

    #[test]
    fn cursor_keys_are_per_log_and_legacy_keys_hex_encode_the_name() {
        assert_eq!(cursor_key(12, 3), "logs/12/cursor-3");
        assert_eq!(legacy_cursor_key(12, "ab"), "logs/12/cursors/6162");
        assert!(legacy_cursor_key(12, "ab").starts_with(&legacy_cursor_dir(12)));
    }

    proptest! {
        #[test]
        fn records_round_trip(
            name in ".{0,40}",
            floor in (0u64..4, 0u64..1000),
            acks in proptest::collection::vec((0u64..4, 0u64..1000), 0..64),
        ) {
            let log = one_segment();
            let mut c = Cursor::new(Some(0), Position::new(floor.0, floor.1));
            for (s, e) in acks {
                c.ack(Position::new(s, e), &log);
            }
            let r = decode_cursor(&c.encode(&name, usize::MAX).freeze()).unwrap();
            prop_assert_eq!(r.name, name);
            prop_assert_eq!(r.floor, c.floor());
            prop_assert_eq!(&r.acked, c.acked());
        }

        #[test]
        fn random_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let b = Bytes::from(bytes);
            let _ = decode_cursor(&b);
            let _ = decode_cursor_body(b);
        }
    }
}
