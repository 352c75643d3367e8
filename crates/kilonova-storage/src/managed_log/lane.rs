//! The append side of a log, shared under a small lock, and the lane it
//! opens to appenders other than the log's owner.
//!
//! A log's owner (the topic's task) appends with `&mut self`. The append
//! side — the segment entries go to, the entries and bytes queued to it,
//! the next message index and the last publish time — sits behind a
//! `Mutex` so that an [`AppendLane`] can append too, from another task (the
//! connection that read the SEND), without the owner's turn. Both number
//! entries under that lock and queue them in the journal before letting it
//! go, so entry ids, message indexes and the journal's order agree.
//!
//! The lane appends only while the owner keeps it open and the current
//! segment is below where the owner must act: its roll-over limits, half
//! of them while no spare segment is ready (`spare.rs`), a segment the
//! store closed since the owner last looked (sealed, fenced by a failed
//! write). Anything else — a roll-over, a spare, a terminated or closed
//! log — is the owner's: the lane says no and the caller appends through
//! the owner instead. Its appends are answered only by their calls (no
//! completion), and it never waits: a full journal queue is a no as well.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;

use crate::entry::{self, Entry, ENTRY_HEADER_LEN};
use crate::entry_cache::EntryCache;
use crate::error::Result;
use crate::position::{Position, SegmentId};
use crate::segment_store::SegmentStore;

/// What a log's appends have queued so far (durable or not).
#[derive(Debug, Default)]
pub(super) struct AppendSide {
    /// Entries and bytes queued to the current (last) segment.
    pub(super) pending_entries: u64,
    pub(super) pending_bytes: u64,
    /// The current segment and the store's [`SegmentStore::segments_closed`]
    /// when it was last seen open: appends check the store's index again
    /// only when a segment closed since.
    pub(super) seen_open: Option<(SegmentId, u64)>,
    pub(super) next_message_index: u64,
    pub(super) last_publish_time_ms: u64,
    /// Appended entries go to the entry cache (someone reads the log).
    pub(super) cache_entries: bool,
    /// The lane may append to this segment (created at `.1` ms): none while
    /// closed.
    lane: Option<(SegmentId, u64)>,
    /// The next segment is ready (or will not be: its creation failed): the
    /// lane may fill the current one up to the roll-over limits, not only
    /// half way (where the owner starts the spare).
    pub(super) spare_ready: bool,
}

impl AppendSide {
    /// Nothing queued; the next message's index `next_message_index`.
    pub(super) fn starting_at(next_message_index: u64) -> Self {
        AppendSide {
            next_message_index,
            ..AppendSide::default()
        }
    }

    /// Numbers an entry of `count` messages published at `publish_time_ms`
    /// for `segment`, queues it with `queue` (given its header) and counts
    /// it. Returns what `queue` returned and the entry to cache, if entries
    /// are cached. Nothing is counted if `queue` fails.
    pub(super) fn number<R>(
        &mut self,
        segment: SegmentId,
        data: Bytes,
        count: u32,
        publish_time_ms: u64,
        queue: impl FnOnce(&[u8; ENTRY_HEADER_LEN], Bytes) -> Result<R>,
    ) -> Result<(R, Option<Entry>)> {
        // Never before the last entry's time: reads by time need order.
        let t = publish_time_ms.max(self.last_publish_time_ms);
        let index = self.next_message_index;
        let header = entry::encode_header(t, index, count);
        let len = data.len() as u64;
        let cached = self.cache_entries.then(|| data.clone());
        let r = queue(&header, data)?;
        let position = Position::new(segment, self.pending_entries);
        self.pending_entries += 1;
        self.pending_bytes += len;
        self.next_message_index += u64::from(count);
        self.last_publish_time_ms = t;
        let entry = cached.map(|data| Entry {
            position,
            publish_time_ms: t,
            message_index: index,
            message_count: count,
            data,
        });
        Ok((r, entry))
    }

    /// The lane may append to `segment`, created at `created_ms`.
    pub(super) fn open_lane(&mut self, segment: SegmentId, created_ms: u64) {
        self.lane = Some((segment, created_ms));
    }

    /// The lane appends no more until the owner opens it again.
    pub(super) fn close_lane(&mut self) {
        self.lane = None;
    }
}

/// The log's append side, locked.
pub(super) fn lock(side: &Mutex<AppendSide>) -> MutexGuard<'_, AppendSide> {
    // Every change under the lock is whole before it can panic.
    side.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Appends to a log without its owner, while the owner lets it
/// ([`crate::ManagedLog::lane`]). Cheap to clone.
#[derive(Clone)]
pub struct AppendLane {
    log: u64,
    side: Arc<Mutex<AppendSide>>,
    store: SegmentStore,
    cache: Arc<EntryCache>,
    /// The log's roll-over limits (entries, bytes, age).
    limits: (u64, u64, u64),
}

/// The lane said no: append through the log's owner.
#[derive(Debug, PartialEq, Eq)]
pub struct LaneClosed;

impl AppendLane {
    pub(super) fn new(
        log: u64,
        side: Arc<Mutex<AppendSide>>,
        store: SegmentStore,
        cache: Arc<EntryCache>,
        limits: (u64, u64, u64),
    ) -> Self {
        AppendLane {
            log,
            side,
            store,
            cache,
            limits,
        }
    }

    /// Appends an entry of `count` messages published at `publish_time_ms`
    /// if the lane is open; `answer(message index)` makes the call that answers it, as
    /// [`crate::ManagedLog::append_then`]'s `then` (on the journal's thread,
    /// in the log's order, short; called once whatever happens). `answer` is
    /// called under the lane's lock, only once the append is certain to be
    /// queued; the call it makes must not append to this log. Never waits.
    pub fn try_append_then<F>(
        &self,
        data: Bytes,
        count: u32,
        publish_time_ms: u64,
        answer: impl FnOnce(u64) -> F,
    ) -> std::result::Result<(), LaneClosed>
    where
        F: FnOnce(Result<(Position, Instant)>) + Send + Sync + 'static,
    {
        let mut side = lock(&self.side);
        let Some((segment, created_ms)) = side.lane else {
            return Err(LaneClosed);
        };
        let (max_entries, max_bytes, max_age_ms) = self.limits;
        let (max_entries, max_bytes) = match side.spare_ready {
            true => (max_entries, max_bytes),
            false => (max_entries / 2, max_bytes / 2),
        };
        let due = side.pending_entries >= max_entries
            || side.pending_bytes >= max_bytes
            || (side.pending_entries > 0
                && publish_time_ms.saturating_sub(created_ms) >= max_age_ms);
        // A segment closed since the owner last saw it open: the owner
        // looks (and rolls over).
        let closed = self.store.segments_closed(segment);
        if due || closed.is_none() || side.seen_open != closed.map(|c| (segment, c)) {
            return Err(LaneClosed);
        }
        let slot = match self.store.try_reserve(segment) {
            Ok(Some(slot)) => slot,
            Ok(None) | Err(_) => return Err(LaneClosed),
        };
        let then = answer(side.next_message_index);
        let queued = side.number(segment, data, count, publish_time_ms, |header, data| {
            slot.append_then(header, data, move |r| {
                then(r.map(|(entry, at)| (Position::new(segment, entry), at)))
            });
            Ok(())
        });
        drop(side);
        if let Ok(((), Some(entry))) = queued {
            self.cache.insert(self.log, entry);
        }
        Ok(())
    }
}
