//! A topic's storage: an ordered list of segments, a dense message index, and cursors.
//!
//! One task owns a `ManagedLog` (`&mut self` methods); the segment store underneath
//! is shared. Time comes in as arguments (`now_ms`, `publish_time_ms`): the log
//! reads no clock, so tests drive it deterministically.
//!
//! This file holds the log itself: opening, appends and roll-over, the cursor
//! operations by name, close and delete. Beside it:
//! * `cursor.rs`: a cursor's state and bookkeeping (ack floor, acknowledged
//!   ranges, read position), its stored record, and how the log loads,
//!   migrates and persists its durable cursors;
//! * `positions.rs`: positions over the segment list, and reads by position,
//!   message index or publish time;
//! * `retention.rs`: retention (deleting consumed segments) and TTL;
//! * `meta.rs`: where a log keeps its state, and its metadata record;
//! * `spare.rs`: the next segment, created and listed before a roll-over;
//! * `compacted.rs`: the compacted view (entries kept by compaction, up to a
//!   horizon, in a segment of their own) and reading through it;
//! * `backlog_scan.rs`: counting a cursor's backlog by reading it, a step at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::entry::{self, Entry};
use crate::entry_cache::{EntryCache, EvictionStrategy};
use crate::error::{Result, StorageError};
use crate::position::{Position, SegmentId};
use crate::segment_store::SegmentStore;
use crate::state_store::StateStore;
use crate::store::Completion;

mod backlog_scan;
pub(crate) mod compacted;
pub(crate) mod cursor;
mod lane;
pub(crate) mod meta;
mod positions;
mod retention;
mod spare;
mod termination;
mod tiering;

pub use backlog_scan::{BacklogCounts, BacklogScan};
pub use compacted::CompactedWriter;
use compacted::{CompactedView, CursorView};
use cursor::{named, named_mut, Cursor, Positions};
pub use cursor::{CursorInfo, CursorWrites, CursorsStored, InitialPosition, StoredCursor};
use lane::AppendSide;
pub use lane::{AppendLane, LaneClosed};
use meta::{log_prefix, meta_key, Meta, MetaOrder, StoredCursors};
use positions::SegmentList;
pub use retention::Retention;
pub use tiering::{Offloaded, RestoredSegment, SegmentTier};

/// Settings of a managed log. Units are in the names.
#[derive(Clone, Debug)]
pub struct ManagedLogConfig {
    /// Roll to a new segment after this many entries...
    pub max_segment_entries: u64,
    /// ...or this many bytes...
    pub max_segment_bytes: u64,
    /// ...or when the segment is this old (by publish time).
    pub max_segment_age_ms: u64,
    /// Which position cached entries are evicted before.
    pub cache_eviction: EvictionStrategy,
    /// A cursor more than this many entries behind the end no longer keeps
    /// entries cached for itself (0: every cursor does); Pulsar's
    /// `managedLedgerCursorBackloggedThreshold`.
    pub backlogged_cursor_entries: u64,
    /// Individually-acked ranges persisted per cursor (the rest may be redelivered after a crash).
    pub max_persisted_ack_ranges: usize,
}

impl Default for ManagedLogConfig {
    fn default() -> Self {
        ManagedLogConfig {
            max_segment_entries: 50_000,
            max_segment_bytes: 256 << 20,
            max_segment_age_ms: 4 * 3600 * 1000,
            cache_eviction: EvictionStrategy::SlowestReader,
            backlogged_cursor_entries: 1000,
            max_persisted_ack_ranges: 10_000,
        }
    }
}

/// Bytes of offloaded entries a log keeps read back, by default.
pub const DEFAULT_OFFLOAD_CACHE_BYTES: usize = 16 << 20;

/// One segment of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    pub id: SegmentId,
    /// Message index of the segment's first message.
    pub first_message_index: u64,
    pub created_ms: u64,
}

/// A log's stored state, read without opening it ([`ManagedLog::stored_summary`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredSummary {
    pub size_bytes: u64,
    pub entries: u64,
    /// Durable cursors, by name, as last persisted.
    pub cursors: Vec<StoredCursor>,
}

/// A topic's storage.
pub struct ManagedLog {
    id: u64,
    store: SegmentStore,
    state: Arc<dyn StateStore>,
    cache: Arc<EntryCache>,
    config: ManagedLogConfig,
    segments: Vec<SegmentMeta>,
    /// What appends queued to the current segment, shared with the log's
    /// [`AppendLane`] (`lane.rs`).
    side: Arc<std::sync::Mutex<AppendSide>>,
    /// The owner lets the lane append ([`Self::open_lane`]): it does so
    /// whenever the current segment can take appends.
    lane_wanted: bool,
    cursors: BTreeMap<String, Cursor>,
    /// The id the next durable cursor is stored under.
    next_cursor_id: u64,
    /// Orders this log's cursor writes, wherever they run.
    cursor_order: Arc<cursor::CursorWriteOrder>,
    /// What compaction kept, up to its horizon (`compacted.rs`).
    compacted: Option<CompactedView>,
    /// Terminated: no more appends (`termination.rs`).
    terminated: bool,
    /// Segments copied to the object store (`tiering.rs`).
    offloaded: BTreeMap<SegmentId, Offloaded>,
    /// Entries of offloaded-only segments read back.
    offload_cache: tiering::OffloadCache,
    /// Objects no longer referenced, for the broker to delete.
    released_objects: Vec<String>,
    /// Orders this log's metadata writes, wherever they run.
    meta_order: Arc<MetaOrder>,
    /// The newest metadata record left to the blocking pool.
    meta_written_later: u64,
    /// The record that first says where the current segment starts (a
    /// spare switched to is listed with an earlier index).
    current_listed_in: u64,
    /// The next segment, ready before the current one fills (`spare.rs`).
    spare: spare::Spare,
    /// Someone reads this log by message index (no cursor: the Kafka edge).
    index_readers: bool,
}

impl ManagedLog {
    /// Opens log `id` (creating it if new). A log left open by a crash gets its last
    /// segment sealed and continues in a new one. On a full disk (no new segment
    /// can be listed) it opens all the same, read-only until an append finds space.
    pub async fn open(
        id: u64,
        store: SegmentStore,
        state: Arc<dyn StateStore>,
        cache: Arc<EntryCache>,
        config: ManagedLogConfig,
        now_ms: u64,
    ) -> Result<Self> {
        let (mut log, stored_cursors) = Self::from_state(id, store, state, cache, config)?;
        // Its last segment (and the one before, when the last was a spare
        // listed ahead) may be open. (A restored log's last segment may be in
        // the object store only.)
        let open: Vec<SegmentId> = log
            .segments
            .iter()
            .filter(|s| log.store.segment(s.id).is_some_and(|i| !i.sealed))
            .map(|s| s.id)
            .collect();
        for id in open {
            log.store.seal(id).await?;
        }
        // Where the message index and publish time continue from.
        let first_of_last = log.segments.last().map_or(0, |s| s.first_message_index);
        let (mut index, mut time) = (log.next_message_index().max(first_of_last), 0);
        if let Some(p) = log.last_position() {
            match log.offloaded.get(&p.segment) {
                Some(o) if log.store.segment(p.segment).is_none() => {
                    (index, time) = (o.end_message_index, o.last_publish_ms);
                }
                _ => {
                    let e = log.read_entry(p)?;
                    index = e.message_index + u64::from(e.message_count);
                    time = e.publish_time_ms;
                }
            }
        }
        {
            let mut side = log.side();
            side.next_message_index = index;
            side.last_publish_time_ms = time;
        }
        let to_migrate = log.load_cursors(stored_cursors)?;
        log.migrate_cursors(&to_migrate)?;
        log.readers_changed();
        match log.start_segment(now_ms).await {
            Ok(()) => {}
            // Open for reading (and acknowledging, and deleting): on a full disk
            // that is how space is won back. Appends try again, and fail until then.
            Err(e @ StorageError::DiskFull { .. }) => {
                tracing::warn!(log = id, error = %e, "log opened read-only: appends fail until space is freed");
            }
            Err(e) => return Err(e),
        }
        log.remove_stale_cursor_state();
        Ok(log)
    }

    /// The log as its stored state describes it (segments still in the
    /// store), without cursors, touching nothing; and its stored cursors.
    fn from_state(
        id: u64,
        store: SegmentStore,
        state: Arc<dyn StateStore>,
        cache: Arc<EntryCache>,
        config: ManagedLogConfig,
    ) -> Result<(Self, StoredCursors)> {
        let Meta {
            mut segments,
            next_message_index: floor_index,
            cursors: stored_cursors,
            offloaded,
        } = match state.load(&meta_key(id))? {
            Some(b) => meta::decode_meta(b)?,
            None => Meta::default(),
        };
        // A segment only the object store holds is still the log's.
        segments.retain(|s| store.segment(s.id).is_some() || offloaded.contains_key(&s.id));
        let compacted = compacted::load_view(state.as_ref(), id)?
            .filter(|v| store.segment(v.segment).is_some());
        let terminated = termination::load(state.as_ref(), id)?;
        let mut log = ManagedLog {
            id,
            store,
            state,
            cache,
            config,
            segments,
            side: Arc::new(std::sync::Mutex::new(AppendSide::starting_at(floor_index))),
            lane_wanted: false,
            cursors: BTreeMap::new(),
            next_cursor_id: 0,
            cursor_order: Arc::default(),
            compacted,
            terminated,
            offloaded,
            offload_cache: tiering::OffloadCache::with_max_bytes(DEFAULT_OFFLOAD_CACHE_BYTES),
            released_objects: Vec::new(),
            meta_order: Arc::default(),
            meta_written_later: 0,
            current_listed_in: 0,
            spare: spare::Spare::None,
            index_readers: false,
        };
        log.start_of_last_segment();
        Ok((log, stored_cursors))
    }

    /// What log `id`'s stored state says — its size, entries and durable
    /// cursors' backlogs as last persisted — read without opening the log
    /// (no segment is sealed or started, nothing is written): the stats of a
    /// topic that is not loaded. Blocking (small state reads).
    pub fn stored_summary(
        id: u64,
        store: SegmentStore,
        state: Arc<dyn StateStore>,
        cache: Arc<EntryCache>,
    ) -> Result<StoredSummary> {
        let (mut log, stored) =
            Self::from_state(id, store, state, cache, ManagedLogConfig::default())?;
        log.load_cursors(stored)?;
        let mut cursors = Vec::with_capacity(log.cursors.len());
        for name in log.cursors.keys() {
            let info = log.cursor_info(name)?;
            cursors.push(StoredCursor {
                name: name.clone(),
                backlog_entries: info.backlog_entries,
                backlog_bytes: log.backlog_bytes(name)?,
                replicated: info.replicated,
            });
        }
        Ok(StoredSummary {
            size_bytes: log.size_bytes(),
            entries: log.entries(),
            cursors,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// What the store knows of one of this log's segments (entries, bytes).
    pub fn segment_info(&self, id: SegmentId) -> Option<crate::SegmentInfo> {
        self.store.segment(id)
    }

    pub fn segments(&self) -> &[SegmentMeta] {
        &self.segments
    }

    /// Messages appended so far (the next message's index).
    pub fn next_message_index(&self) -> u64 {
        self.side().next_message_index
    }

    /// The append side, locked (uncontended but while a lane appends).
    fn side(&self) -> std::sync::MutexGuard<'_, AppendSide> {
        lane::lock(&self.side)
    }

    /// A lane that appends to this log without its owner, while the owner
    /// lets it ([`Self::open_lane`]). Entries it appends count as the
    /// owner's own (positions, message indexes, the cache).
    pub fn lane(&self) -> AppendLane {
        let c = &self.config;
        let limits = (
            c.max_segment_entries,
            c.max_segment_bytes,
            c.max_segment_age_ms,
        );
        AppendLane::new(
            self.id,
            self.side.clone(),
            self.store.clone(),
            self.cache.clone(),
            limits,
        )
    }

    /// Lets the log's lanes append whenever the current segment can take
    /// appends: not during a roll-over, nor once the log is terminated or
    /// closed, nor while it has no segment (opened read-only).
    pub fn open_lane(&mut self) {
        self.lane_wanted = true;
        self.resume_lane();
    }

    /// Stops the log's lanes: appends go through the owner only (until
    /// [`Self::open_lane`]).
    pub fn close_lane(&mut self) {
        self.lane_wanted = false;
        self.side().close_lane();
    }

    /// Opens the lane on the current segment if the owner wants it and the
    /// segment takes appends.
    fn resume_lane(&mut self) {
        let Some(cur) = self.current() else {
            return;
        };
        if self.lane_wanted && !self.terminated && self.still_open(cur.id) {
            self.side().open_lane(cur.id, cur.created_ms);
        }
    }

    /// The message index after the last *durable* entry:
    /// [`Self::next_message_index`] less the messages of appends still in
    /// flight. What a position at the log's end stands for when it is
    /// stored elsewhere (an in-flight append may yet fail, and nobody has
    /// read it). If the last durable entry cannot be read, its segment's
    /// first message index (never a later one).
    pub fn durable_next_message_index(&self) -> u64 {
        let (next, pending) = {
            let side = self.side();
            (side.next_message_index, side.pending_entries)
        };
        let Some(current) = self.current() else {
            return next;
        };
        // Appends to one segment are durable in order: all of the current
        // segment's durable, nothing is in flight.
        if pending > 0 && self.end_position() == Position::new(current.id, pending) {
            return next;
        }
        match self.last_position() {
            Some(p) => self.read_entry(p).map_or_else(
                |_| {
                    self.segments
                        .iter()
                        .find(|s| s.id == p.segment)
                        .map_or(0, |s| s.first_message_index)
                },
                |e| e.message_index + u64::from(e.message_count),
            ),
            None => self
                .segments
                .first()
                .map_or(next, |s| s.first_message_index),
        }
    }

    fn current(&self) -> Option<SegmentMeta> {
        self.segments.last().copied()
    }

    /// Payload bytes stored for the log.
    pub fn size_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|s| self.store.segment(s.id))
            .map(|s| s.bytes)
            .sum()
    }

    /// Durable entries in the log.
    pub fn entries(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| self.positions().confirmed(s.id))
            .sum()
    }

    // ---- appends ----

    /// Enqueues an entry of `message_count` messages. The returned completion resolves
    /// with its position once durable. Entries are durable in call order.
    pub async fn append(
        &mut self,
        data: Bytes,
        message_count: u32,
        publish_time_ms: u64,
    ) -> Result<Completion<Position>> {
        let segment = self.before_append(publish_time_ms).await?;
        let slot = self.store.reserve(segment).await?;
        let (completion, entry) = self.side().number(
            segment,
            data,
            message_count,
            publish_time_ms,
            |header, data| slot.append(header, data),
        )?;
        self.after_append(entry, publish_time_ms);
        Ok(completion.remap(|entry, segment| Position::new(segment, entry)))
    }

    /// [`ManagedLog::append`] answered by `then` instead of a completion:
    /// called on the journal's thread once the entry is durable (or was not
    /// stored), in the order of the log's appends, with its position and
    /// when it became durable. `then` must be short and must not block (the
    /// journal's next group waits for it). `Err` without calling `then` if
    /// the append was not queued.
    pub async fn append_then(
        &mut self,
        data: Bytes,
        message_count: u32,
        publish_time_ms: u64,
        then: impl FnOnce(Result<(Position, std::time::Instant)>) + Send + Sync + 'static,
    ) -> Result<()> {
        let segment = self.before_append(publish_time_ms).await?;
        let slot = self.store.reserve(segment).await?;
        let ((), entry) = self.side().number(
            segment,
            data,
            message_count,
            publish_time_ms,
            |header, data| {
                slot.append_then(header, data, move |r| {
                    then(r.map(|(entry, at)| (Position::new(segment, entry), at)))
                });
                Ok(())
            },
        )?;
        self.after_append(entry, publish_time_ms);
        Ok(())
    }

    /// Rolls over if due; the segment the next entry goes to.
    async fn before_append(&mut self, publish_time_ms: u64) -> Result<SegmentId> {
        self.check_not_terminated()?;
        if self.needs_roll(publish_time_ms) {
            self.roll(publish_time_ms).await?;
        }
        let Some(current) = self.current() else {
            return Err(StorageError::Log("managed log has no segment".into()));
        };
        Ok(current.id)
    }

    /// After an entry was queued: caches it while something reads the log,
    /// and moves the next segment's preparation on.
    fn after_append(&mut self, entry: Option<Entry>, publish_time_ms: u64) {
        if let Some(e) = entry {
            self.cache.insert(self.id, e);
        }
        if !matches!(self.spare, spare::Spare::Created { .. }) {
            self.prepare_spare(publish_time_ms);
            let ready = matches!(
                self.spare,
                spare::Spare::Created { .. } | spare::Spare::Failed
            );
            self.side().spare_ready = ready;
        }
    }

    /// Whether appended entries are cached (someone reads the log), for
    /// the owner's appends and the lane's.
    fn readers_changed(&self) {
        self.side().cache_entries = self.index_readers || !self.cursors.is_empty();
    }

    fn needs_roll(&mut self, now_ms: u64) -> bool {
        let Some(cur) = self.current() else {
            return true;
        };
        let (entries, bytes) = {
            let side = self.side();
            (side.pending_entries, side.pending_bytes)
        };
        entries >= self.config.max_segment_entries
            || bytes >= self.config.max_segment_bytes
            || (entries > 0
                && now_ms.saturating_sub(cur.created_ms) >= self.config.max_segment_age_ms)
            || !self.still_open(cur.id)
    }

    /// Whether `segment` is still open in the store (not sealed, fenced by a
    /// failed write, or removed). The index is read under its lock only when
    /// a segment closed since the last look: not at every append.
    fn still_open(&mut self, segment: SegmentId) -> bool {
        // Read before the look: a close after it moves the number again.
        let closed = self.store.segments_closed(segment);
        let seen = closed.map(|c| (segment, c));
        if closed.is_some() && self.side().seen_open == seen {
            return true;
        }
        let open = self
            .store
            .segment(segment)
            .is_some_and(|s| !s.fenced && !s.sealed);
        self.side().seen_open = seen.filter(|_| open);
        open
    }

    /// Seals the current segment and starts a new one.
    async fn roll(&mut self, now_ms: u64) -> Result<()> {
        // The lane stays out until the next segment is current.
        self.side().close_lane();
        if let Some(cur) = self.current() {
            let fenced = self.store.segment(cur.id).is_some_and(|s| s.fenced);
            self.store.seal(cur.id).await?;
            if fenced {
                // Appends after the failure never happened: continue from what is durable.
                self.cache.evict_log(self.id);
                let mut next = cur.first_message_index;
                if let Some(p) = self.last_position() {
                    let e = self.read_entry(p)?;
                    next = e.message_index + u64::from(e.message_count);
                }
                self.side().next_message_index = next;
            }
        }
        self.switch_segment(now_ms).await?;
        self.resume_lane();
        Ok(())
    }

    /// [`Self::roll`] once the current segment is sealed: the spare, a
    /// segment listed now, or a new one.
    async fn switch_segment(&mut self, now_ms: u64) -> Result<()> {
        match self.spare_for_roll().await {
            Some((id, true)) => {
                self.drop_empty_current().await?;
                self.push_segment(id, now_ms);
                // Where it starts, stored off the task (start-up reads it
                // from its first entry meanwhile).
                self.current_listed_in = self.save_meta_later();
                tracing::debug!(log = self.id, segment = id, "switched to the spare segment");
                Ok(())
            }
            Some((id, false)) => {
                self.drop_empty_current().await?;
                self.list_segment(id, now_ms).await
            }
            None => self.start_segment(now_ms).await,
        }
    }

    /// A new segment of this log, in the data directory of its last local
    /// segment (or a new log's directory: [`SegmentStore::home_of`]).
    async fn create_segment(&self) -> Result<SegmentId> {
        let last = self
            .segments
            .iter()
            .rev()
            .map(|s| s.id)
            .find(|id| self.store.segment(*id).is_some());
        self.store.create_segment_for(self.id, last).await
    }

    /// An empty sealed segment holds nothing: dropped instead of kept listed.
    async fn drop_empty_current(&mut self) -> Result<()> {
        if let Some(cur) = self.current() {
            if self.positions().confirmed(cur.id) == 0 && self.segments.len() > 1 {
                self.store.delete_segment(cur.id).await?;
                self.segments.pop();
            }
        }
        Ok(())
    }

    /// Appends go to segment `id` from now on.
    fn push_segment(&mut self, id: SegmentId, now_ms: u64) {
        let mut side = lane::lock(&self.side);
        self.segments.push(SegmentMeta {
            id,
            first_message_index: side.next_message_index,
            created_ms: now_ms,
        });
        side.pending_entries = 0;
        side.pending_bytes = 0;
        side.spare_ready = false;
    }

    async fn start_segment(&mut self, now_ms: u64) -> Result<()> {
        self.drop_empty_current().await?;
        let id = self.create_segment().await?;
        self.list_segment(id, now_ms).await
    }

    /// Appends go to segment `id` once the stored metadata lists it.
    async fn list_segment(&mut self, id: SegmentId, now_ms: u64) -> Result<()> {
        self.push_segment(id, now_ms);
        // Appends go only to a segment the stored metadata lists: one it does
        // not would be lost to a crash (and reclaimed as an orphan at start).
        if let Err(e) = self.save_meta() {
            self.segments.pop();
            if let Err(d) = self.store.delete_segment(id).await {
                tracing::debug!(log = self.id, segment = id, error = %d, "unlisted segment left for start-up to reclaim");
            }
            return Err(e);
        }
        tracing::debug!(log = self.id, segment = id, "started segment");
        Ok(())
    }

    /// The metadata record as the log stands, and its number
    /// ([`MetaOrder`]); a spare is listed after the current segment.
    fn meta_record(&self) -> (u64, bytes::BytesMut) {
        let ids: Vec<u64> = self.cursors.values().filter_map(|c| c.id()).collect();
        let number = self.meta_order.next();
        let segments = match self.spare_listing() {
            Some(spare) => std::borrow::Cow::Owned([self.segments.as_slice(), &[spare]].concat()),
            None => std::borrow::Cow::Borrowed(self.segments.as_slice()),
        };
        let record = meta::encode_meta(
            self.next_message_index(),
            &segments,
            self.next_cursor_id,
            &ids,
            &self.offloaded,
        );
        (number, record)
    }

    /// Stores the metadata record; returns once it is durable.
    fn save_meta(&self) -> Result<()> {
        let (number, record) = self.meta_record();
        self.meta_order
            .store(self.state.as_ref(), self.id, number, &record)
    }

    /// Stores the metadata record on the blocking pool (in line outside a
    /// runtime), for changes that a crash may lose: the stored record then
    /// lists a segment retention deleted (start-up skips it) or a spare
    /// without its start (start-up reads it). Returns the record's number.
    fn save_meta_later(&mut self) -> u64 {
        let (number, record) = self.meta_record();
        self.meta_written_later = number;
        let (order, state, id) = (self.meta_order.clone(), self.state.clone(), self.id);
        let write = move || {
            if let Err(e) = order.store(state.as_ref(), id, number, &record) {
                tracing::warn!(log = id, error = %e, "storing the log's metadata failed: the next change stores it");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(write)),
            Err(_) => write(),
        }
        number
    }

    /// Someone reads this log by message index, without a cursor: appended
    /// entries are cached from now on, as they are while the log has a
    /// cursor. (A log nobody reads keeps none: they went only at retention
    /// or by the cache's budget, a segment's worth in one eviction.)
    pub fn note_index_reader(&mut self) {
        self.index_readers = true;
        self.readers_changed();
    }

    /// Whether every metadata record left to the blocking pool is stored
    /// (or a newer one).
    pub fn metadata_stored(&self) -> bool {
        self.meta_order.stored() >= self.meta_written_later
    }

    /// Waits for metadata writes left to the blocking pool, storing the
    /// record in line if they failed; none stored later replaces it (a log
    /// opened again, or deleted, must not see an older record land).
    fn retire_meta(&self) -> Result<()> {
        if !self.metadata_stored() {
            self.save_meta()?;
        }
        self.meta_order.retire()
    }

    /// The last listed segment may have been listed ahead of its use (a
    /// spare, `spare.rs`): its first entry says where it starts.
    fn start_of_last_segment(&mut self) {
        let Some(last) = self.segments.last().copied() else {
            return;
        };
        if self.store.segment(last.id).is_none_or(|s| s.entries == 0) {
            return;
        }
        let first = Position::new(last.id, 0);
        let Some(e) = self
            .store
            .read(last.id, 0)
            .ok()
            .and_then(|b| entry::decode(first, b))
        else {
            return;
        };
        if let Some(s) = self.segments.last_mut() {
            s.first_message_index = e.message_index;
            s.created_ms = e.publish_time_ms;
        }
    }

    // ---- cursors ----

    /// Opens a cursor. A durable cursor that exists keeps its position; a new one
    /// starts at `initial` and is persisted at once.
    pub fn open_cursor(
        &mut self,
        name: &str,
        initial: InitialPosition,
        durable: bool,
    ) -> Result<()> {
        self.open_cursor_as(name, initial, durable, false)
    }

    /// [`Self::open_cursor`], the cursor reading through the compacted view
    /// when `read_compacted` is set (an existing cursor is switched to it or
    /// back): up to the view's horizon it sees only what compaction kept,
    /// and `Earliest` is the view's first entry even when the log's segments
    /// before it were trimmed.
    pub fn open_cursor_as(
        &mut self,
        name: &str,
        initial: InitialPosition,
        durable: bool,
        read_compacted: bool,
    ) -> Result<()> {
        if let Some(c) = self.cursors.get_mut(name) {
            c.set_read_compacted(read_compacted);
            c.rewind();
            return Ok(());
        }
        let view = self.view(read_compacted);
        let start = match initial {
            InitialPosition::Earliest => view.normalize(Position::default()),
            InitialPosition::Latest => self.end_position(),
            InitialPosition::At(p) => view.normalize(p),
        };
        let id = durable.then_some(self.next_cursor_id);
        let mut cursor = Cursor::new(id, start);
        cursor.set_read_compacted(read_compacted);
        self.cursors.insert(name.to_string(), cursor);
        self.readers_changed();
        if let Some(cid) = id {
            self.next_cursor_id += 1;
            // Stored, then listed: a cursor that could not be stored does not exist.
            if let Err(e) = self.persist_cursor(name).and_then(|()| self.save_meta()) {
                self.cursors.remove(name);
                let _ = self.remove_cursor_state(cid);
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn has_cursor(&self, name: &str) -> bool {
        self.cursors.contains_key(name)
    }

    pub fn cursor_count(&self) -> usize {
        self.cursors.len()
    }

    pub fn cursor_names(&self) -> Vec<String> {
        self.cursors.keys().cloned().collect()
    }

    fn cursor(&self, name: &str) -> Result<&Cursor> {
        named(&self.cursors, name)
    }

    /// The positions a cursor moves along: through the compacted view for a
    /// cursor reading compacted, else the log's.
    fn view(&self, read_compacted: bool) -> CursorView<'_> {
        CursorView::new(self.positions(), self.compacted.as_ref(), read_compacted)
    }

    fn cursor_view(&self, name: &str) -> Result<CursorView<'_>> {
        Ok(self.view(self.cursor(name)?.read_compacted()))
    }

    /// The last entry the cursor can read: for a cursor reading compacted
    /// whose log ends at or before the horizon, the compacted view's last
    /// entry (Pulsar's last dispatchable position), else the log's.
    pub fn last_position_for(&self, name: &str) -> Result<Option<Position>> {
        let last = self.last_position();
        let Some(view) = self
            .compacted
            .as_ref()
            .filter(|_| self.cursor(name).is_ok_and(|c| c.read_compacted()))
        else {
            return Ok(last);
        };
        if last.is_some_and(|l| l > view.horizon) {
            return Ok(last);
        }
        Ok(view.positions.last().copied())
    }

    /// The entry at `p` as the cursor sees it (through the compacted view for
    /// a cursor reading compacted).
    pub fn read_entry_for(&self, name: &str, p: Position) -> Result<Entry> {
        let view = self.cursor_view(name)?;
        self.read_in(&view, p)
    }

    /// Reads the entry at `p` as `view` sees it (from the compacted view
    /// within its part of the log).
    fn read_in(&self, view: &CursorView<'_>, p: Position) -> Result<Entry> {
        match view.view_at(p) {
            Some(v) => compacted::read_view_position(&self.store, v, p),
            None => self.read_entry(p),
        }
    }

    /// Removes a cursor and its persisted state.
    pub fn delete_cursor(&mut self, name: &str) -> Result<()> {
        if let Some(c) = self.cursors.remove(name) {
            if let Some(cid) = c.id() {
                // Unlisted, then removed: the metadata never lists a missing record.
                if let Err(e) = self.save_meta() {
                    self.cursors.insert(name.to_string(), c);
                    return Err(e);
                }
                self.remove_cursor_state(cid)?;
            }
        }
        self.readers_changed();
        self.evict_cache();
        Ok(())
    }

    /// Reads up to `max` entries after the cursor's read position, skipping acked ones,
    /// and advances the read position past them.
    pub fn read_next(&mut self, name: &str, max: usize) -> Result<Vec<Entry>> {
        self.read_next_within(name, max, usize::MAX)
    }

    /// As [`Self::read_next`], stopping once the entries read hold `max_bytes`
    /// of data (the entry that reaches it included: at least one is read).
    pub fn read_next_within(
        &mut self,
        name: &str,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>> {
        let positions = self.cursor_view(name)?;
        let c = self.cursor(name)?;
        let floor = c.floor();
        let mut p = positions.normalize(c.read_position().max(floor));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max && (out.is_empty() || bytes < max_bytes) && positions.is_readable(p) {
            if p < floor {
                p = positions.normalize(floor);
                continue;
            }
            if let Some((_, end)) = c.acked().range_containing(p) {
                p = positions.next(end);
                continue;
            }
            let e = self.read_in(&positions, p)?;
            bytes = bytes.saturating_add(e.data.len());
            out.push(e);
            p = positions.next(p);
        }
        named_mut(&mut self.cursors, name)?.set_read_position(p);
        self.evict_cache();
        Ok(out)
    }

    /// The `n`-th (from 1) entry the cursor has not acknowledged, or the last
    /// one if there are fewer, with how many were found (at most `n`). Walks
    /// the acknowledged ranges without collecting anything.
    pub fn nth_unacked(&self, name: &str, n: u64) -> Result<Option<(Position, u64)>> {
        let positions = self.positions();
        let c = self.cursor(name)?;
        let mut p = positions.normalize(c.floor());
        let mut found: Option<(Position, u64)> = None;
        while found.map_or(0, |f| f.1) < n && positions.is_readable(p) {
            if let Some((_, end)) = c.acked().range_containing(p) {
                p = positions.next(end);
                continue;
            }
            found = Some((p, found.map_or(0, |f| f.1) + 1));
            p = positions.next(p);
        }
        Ok(found)
    }

    /// Acknowledges the first `n` unacknowledged entries; returns how many there were.
    pub fn skip(&mut self, name: &str, n: u64) -> Result<u64> {
        match self.nth_unacked(name, n)? {
            // Everything up to it is acknowledged or one of the skipped.
            Some((p, count)) => {
                self.ack_cumulative(name, p)?;
                Ok(count)
            }
            None => Ok(0),
        }
    }

    /// Whether the cursor has entries to read now.
    pub fn has_entries_to_read(&self, name: &str) -> bool {
        let (Ok(positions), Ok(c)) = (self.cursor_view(name), self.cursor(name)) else {
            return false;
        };
        positions.is_readable(positions.normalize(c.read_position().max(c.floor())))
    }

    /// Acknowledges one entry.
    pub fn ack(&mut self, name: &str, p: Position) -> Result<()> {
        self.ack_each(name, &[p])
    }

    /// Acknowledges each of `ps` (one ACK's entries): the cursor is looked
    /// up, and the cache evicted, once for all of them.
    pub fn ack_each(&mut self, name: &str, ps: &[Position]) -> Result<()> {
        if ps.is_empty() {
            return Ok(());
        }
        // The segment list and the cursor are borrowed apart: acks move the
        // floor across segment ends, which only the list knows.
        let through = self.cursor(name)?.read_compacted();
        let positions = CursorView::new(
            SegmentList::new(&self.segments, &self.store, &self.offloaded),
            self.compacted.as_ref(),
            through,
        );
        let cursor = named_mut(&mut self.cursors, name)?;
        for p in ps {
            cursor.ack(*p, &positions);
        }
        self.evict_cache();
        Ok(())
    }

    /// Acknowledges entries `start..=end` of one segment (a cursor's
    /// acknowledged ranges, as [`ManagedLog::acked_ranges`] gives them).
    pub fn ack_range(&mut self, name: &str, start: Position, end: Position) -> Result<()> {
        let through = self.cursor(name)?.read_compacted();
        let positions = CursorView::new(
            SegmentList::new(&self.segments, &self.store, &self.offloaded),
            self.compacted.as_ref(),
            through,
        );
        named_mut(&mut self.cursors, name)?.ack_range(start, end, &positions);
        self.evict_cache();
        Ok(())
    }

    /// The entries cursor `name` has acknowledged at or after its first
    /// unacknowledged one: closed ranges, one segment each, in order.
    pub fn acked_ranges(&self, name: &str) -> Result<Vec<(Position, Position)>> {
        Ok(self.cursor(name)?.acked().iter().collect())
    }

    /// Acknowledges every entry up to and including `p`. An entry id of
    /// `u64::MAX` is Pulsar's -1, "before the segment's first entry" (a
    /// client acknowledging the entry before a batch at entry 0 sends it):
    /// every entry of earlier segments.
    pub fn ack_cumulative(&mut self, name: &str, p: Position) -> Result<()> {
        let p = if p.entry == u64::MAX {
            let list = SegmentList::new(&self.segments, &self.store, &self.offloaded);
            match list.prev(Position::new(p.segment, 0)) {
                Some(before) => before,
                None => return Ok(()),
            }
        } else {
            p
        };
        let through = self.cursor(name)?.read_compacted();
        let positions = CursorView::new(
            SegmentList::new(&self.segments, &self.store, &self.offloaded),
            self.compacted.as_ref(),
            through,
        );
        named_mut(&mut self.cursors, name)?.ack_cumulative(p, &positions);
        self.evict_cache();
        Ok(())
    }

    /// Sends the cursor's read position back to its first unacknowledged entry
    /// (every unacked entry is read again).
    pub fn rewind(&mut self, name: &str) -> Result<()> {
        named_mut(&mut self.cursors, name)?.rewind();
        Ok(())
    }

    /// Moves the cursor's read position back to `p` (not before its first
    /// unacknowledged entry): entries read but not delivered are read again.
    pub fn rewind_read_to(&mut self, name: &str, p: Position) -> Result<()> {
        named_mut(&mut self.cursors, name)?.rewind_read_to(p);
        Ok(())
    }

    /// Bytes of the entries the cursor has not acknowledged, estimated from
    /// segment sizes (the first segment pro rata; acknowledged ranges beyond the
    /// first unacknowledged entry are not subtracted), as Pulsar estimates a
    /// backlog's size.
    pub fn backlog_bytes(&self, name: &str) -> Result<u64> {
        let positions = self.positions();
        let floor = positions.normalize(self.cursor(name)?.floor());
        Ok(self
            .segments
            .iter()
            .filter(|s| s.id >= floor.segment)
            .map(|s| {
                let n = positions.confirmed(s.id);
                // An offloaded-only segment's bytes are its record's.
                let bytes = match self.store.segment(s.id) {
                    Some(i) => i.bytes,
                    None => self.offloaded.get(&s.id).map_or(0, |o| o.bytes),
                };
                if s.id == floor.segment && n > 0 {
                    let left = n.saturating_sub(floor.entry);
                    (bytes as u128 * u128::from(left) / u128::from(n)) as u64
                } else {
                    bytes
                }
            })
            .sum())
    }

    /// Publish time of the cursor's first unacknowledged entry (`None`: nothing unacknowledged).
    pub fn oldest_unacked_publish_ms(&self, name: &str) -> Result<Option<u64>> {
        let floor = self.ack_floor(name)?;
        if !self.positions().is_readable(floor) {
            return Ok(None);
        }
        Ok(Some(self.read_entry(floor)?.publish_time_ms))
    }

    /// Moves the cursor (acks and read position) to `p`: entries before it count as
    /// acknowledged, entries from it on as not.
    pub fn reset_cursor(&mut self, name: &str, p: Position) -> Result<()> {
        let p = self.cursor_view(name)?.normalize(p);
        named_mut(&mut self.cursors, name)?.reset(p);
        self.evict_cache();
        Ok(())
    }

    /// The cursor's first unacknowledged entry (every entry before it is
    /// acknowledged), normalised like every position this log hands out, so
    /// it compares correctly with read positions whatever the first segment's
    /// id and wherever segments end.
    pub fn ack_floor(&self, name: &str) -> Result<Position> {
        Ok(self
            .cursor_view(name)?
            .normalize(self.cursor(name)?.floor()))
    }

    pub fn cursor_info(&self, name: &str) -> Result<CursorInfo> {
        let positions = self.positions();
        let c = self.cursor(name)?;
        let floor = positions.normalize(c.floor());
        Ok(CursorInfo {
            name: name.to_string(),
            durable: c.durable(),
            mark_delete: positions.prev(floor),
            read_position: self
                .view(c.read_compacted())
                .normalize(c.read_position().max(floor)),
            ack_ranges: c.acked().range_count(),
            backlog_entries: positions
                .entries_from(floor)
                .saturating_sub(c.acked().len()),
            last_active_ms: c.last_active_ms(),
            replicated: c.replicated(),
        })
    }

    /// Evicts the log's cached entries no cursor needs, as the strategy
    /// says; a cursor more than `backlogged_cursor_entries` behind the end
    /// needs none (it reads from storage, as Pulsar's inactive cursors do).
    fn evict_cache(&self) {
        let strategy = self.config.cache_eviction;
        if strategy == EvictionStrategy::TimeOnly {
            return;
        }
        let positions = self.positions();
        let threshold = self.config.backlogged_cursor_entries;
        let slowest = self
            .cursors
            .values()
            .map(|c| c.cache_needed_from(strategy))
            .filter(|p| threshold == 0 || positions.entries_from(*p) <= threshold)
            .min()
            .unwrap_or_else(|| self.end_position());
        self.cache.evict_before(self.id, slowest);
    }

    /// Persists cursors; the log's segments stay as they are.
    pub fn close(mut self) -> Result<()> {
        self.close_lane();
        self.persist_cursors()?;
        self.retire_meta()?;
        self.cache.evict_log(self.id);
        Ok(())
    }

    /// Deletes the whole log: segments, cursors and state. Answers the
    /// objects of its offloaded segments, for the caller to delete.
    pub async fn delete(mut self) -> Result<Vec<String>> {
        self.close_lane();
        for s in std::mem::take(&mut self.segments) {
            if self.store.segment(s.id).is_some() {
                self.store.delete_segment(s.id).await?;
            }
            self.forget_offloaded(s.id);
        }
        self.delete_spare().await?;
        let released = self.take_released_objects();
        self.delete_compacted().await?;
        self.cache.evict_log(self.id);
        self.meta_order.retire()?;
        // The metadata first: a crash part way leaves a directory without it,
        // which `reclaim_orphans` removes at the next start.
        self.state.remove(&meta_key(self.id))?;
        self.state.remove_all(&log_prefix(self.id))?;
        Ok(released)
    }
}

impl Drop for ManagedLog {
    /// A log dropped without `close` or `delete` (a load that failed half
    /// way, then opened again) lets no metadata record it left to the
    /// blocking pool land over its next instance's: a write under way is
    /// waited for, a later one dropped — as a crash would have.
    fn drop(&mut self) {
        self.close_lane();
        if let Err(e) = self.meta_order.retire() {
            tracing::debug!(log = self.id, error = %e, "metadata writes not retired");
        }
    }
}
