//! Positions in a log and reads by position.
//!
//! A position is (segment, entry). The same entry has several names — the
//! end of one segment is the start of the next, a deleted segment's entries
//! are the next stored one's first — so every position the log hands out or
//! compares is first *normalised* to the entry it stands for. [`SegmentList`]
//! does that over the log's segment list and the store's count of each
//! segment's durable entries; cursors move along it through [`Positions`].

use crate::entry::{self, Entry};
use crate::error::{Result, StorageError};
use crate::position::{Position, SegmentId};
use crate::segment_store::SegmentStore;

use std::collections::BTreeMap;

use super::cursor::Positions;
use super::tiering::Offloaded;
use super::{ManagedLog, SegmentMeta};

/// A log's segments as its positions see them: the list, in order, and the
/// durable entries the store holds of each.
#[derive(Clone, Copy)]
pub(super) struct SegmentList<'a> {
    segments: &'a [SegmentMeta],
    store: &'a SegmentStore,
    offloaded: &'a BTreeMap<SegmentId, Offloaded>,
}

impl<'a> SegmentList<'a> {
    pub(super) fn new(
        segments: &'a [SegmentMeta],
        store: &'a SegmentStore,
        offloaded: &'a BTreeMap<SegmentId, Offloaded>,
    ) -> Self {
        SegmentList {
            segments,
            store,
            offloaded,
        }
    }

    /// Durable entries of a segment (an offloaded-only one's, as recorded).
    pub(super) fn confirmed(&self, segment: SegmentId) -> u64 {
        match self.store.segment(segment) {
            Some(s) => s.entries,
            None => self.offloaded.get(&segment).map_or(0, |o| o.entries),
        }
    }

    /// The last durable entry, if any.
    pub(super) fn last_position(&self) -> Option<Position> {
        self.segments.iter().rev().find_map(|s| {
            let n = self.confirmed(s.id);
            (n > 0).then(|| Position::new(s.id, n - 1))
        })
    }

    /// The position after the last durable entry.
    pub(super) fn end_position(&self) -> Position {
        self.segments.last().map_or_else(Position::default, |s| {
            Position::new(s.id, self.confirmed(s.id))
        })
    }

    /// The entry before `p`, if any.
    pub(super) fn prev(&self, p: Position) -> Option<Position> {
        if p.entry > 0 {
            return Some(Position::new(p.segment, p.entry - 1));
        }
        self.segments
            .iter()
            .rev()
            .filter(|s| s.id < p.segment)
            .find_map(|s| {
                let n = self.confirmed(s.id);
                (n > 0).then(|| Position::new(s.id, n - 1))
            })
    }

    pub(super) fn is_readable(&self, p: Position) -> bool {
        self.segments
            .binary_search_by_key(&p.segment, |s| s.id)
            .is_ok()
            && p.entry < self.confirmed(p.segment)
    }

    /// Durable entries at or after `p`.
    pub(super) fn entries_from(&self, p: Position) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.id >= p.segment)
            .map(|s| {
                let n = self.confirmed(s.id);
                if s.id == p.segment {
                    n.saturating_sub(p.entry)
                } else {
                    n
                }
            })
            .sum()
    }
}

impl Positions for SegmentList<'_> {
    /// Moves a position past segment ends and deleted segments to the entry it stands for.
    fn normalize(&self, mut p: Position) -> Position {
        let Some(first) = self.segments.first() else {
            return p;
        };
        if p.segment < first.id {
            p = Position::new(first.id, 0);
        }
        let start = self.segments.partition_point(|s| s.id < p.segment);
        for (i, s) in self.segments.iter().enumerate().skip(start) {
            if s.id != p.segment {
                // A segment deleted or never in this log: the next one starts there.
                p = Position::new(s.id, 0);
            }
            let is_last = i + 1 == self.segments.len();
            if is_last || p.entry < self.confirmed(s.id) {
                return p;
            }
            if let Some(next) = self.segments.get(i + 1) {
                p = Position::new(next.id, 0);
            }
        }
        p
    }
}

impl ManagedLog {
    /// The log's positions: a view of its segments.
    pub(super) fn positions(&self) -> SegmentList<'_> {
        SegmentList::new(&self.segments, &self.store, &self.offloaded)
    }

    /// The last durable entry, if any.
    pub fn last_position(&self) -> Option<Position> {
        self.positions().last_position()
    }

    /// The durable entry before `p`, if any (segments left empty are skipped).
    pub fn previous_position(&self, p: Position) -> Option<Position> {
        self.positions().prev(p)
    }

    /// The first stored entry's position (or the end, if the log is empty).
    pub fn first_position(&self) -> Position {
        let first = Position::new(self.segments.first().map_or(0, |s| s.id), 0);
        self.positions().normalize(first)
    }

    /// The position after the last durable entry: where `Latest` starts.
    pub fn end_position(&self) -> Position {
        self.positions().end_position()
    }

    /// Whether `p` is a durable entry still stored.
    pub fn is_readable(&self, p: Position) -> bool {
        self.positions().is_readable(p)
    }

    /// The durable entry `k` entries after the first stored one
    /// (`from_latest` false) or `k` entries before the last one (true), if
    /// the log holds that many. Walks the segment list, not the entries.
    pub fn nth_entry(&self, from_latest: bool, k: u64) -> Option<Position> {
        let positions = self.positions();
        let mut left = k;
        let counted: Vec<(SegmentId, u64)> = self
            .segments
            .iter()
            .map(|s| (s.id, positions.confirmed(s.id)))
            .collect();
        let pick = |(id, n): (SegmentId, u64), left: &mut u64| {
            if *left < n {
                let entry = if from_latest { n - 1 - *left } else { *left };
                Some(Position::new(id, entry))
            } else {
                *left -= n;
                None
            }
        };
        if from_latest {
            counted
                .into_iter()
                .rev()
                .find_map(|seg| pick(seg, &mut left))
        } else {
            counted.into_iter().find_map(|seg| pick(seg, &mut left))
        }
    }

    /// Reads one durable entry (from the cache when it is there). An entry
    /// of an offloaded-only segment comes from the offload cache, else the
    /// read fails with [`StorageError::Offloaded`] (fetch it, then retry).
    pub fn read_entry(&self, p: Position) -> Result<Entry> {
        if !self.positions().is_readable(p) {
            return Err(StorageError::NoSuchEntry {
                segment: p.segment,
                entry: p.entry,
            });
        }
        if let Some(e) = self.cache.get(self.id, p) {
            return Ok(e);
        }
        if self.store.segment(p.segment).is_none() && self.offloaded.contains_key(&p.segment) {
            return self.read_offloaded(p);
        }
        let stored = self.store.read(p.segment, p.entry)?;
        self.cache.count_miss_bytes(stored.len());
        entry::decode(p, stored).ok_or(StorageError::Corrupt {
            segment: p.segment,
            entry: p.entry,
            detail: "shorter than an entry header".into(),
        })
    }

    /// Up to `max` durable entries from `from` on.
    pub fn read_from(&self, from: Position, max: usize) -> Result<Vec<Entry>> {
        let positions = self.positions();
        let mut out = Vec::new();
        let mut p = positions.normalize(from);
        while out.len() < max && positions.is_readable(p) {
            out.push(self.read_entry(p)?);
            p = positions.next(p);
        }
        Ok(out)
    }

    /// The position of the entry holding message `index`, if stored.
    pub fn position_of_message_index(&self, index: u64) -> Result<Option<Position>> {
        let i = self
            .segments
            .partition_point(|s| s.first_message_index <= index);
        let Some(seg) = i.checked_sub(1).and_then(|i| self.segments.get(i)) else {
            return Ok(None);
        };
        let n = self.positions().confirmed(seg.id);
        // First entry whose range ends after `index`.
        let e = self.search(seg.id, n, |e| {
            e.message_index + u64::from(e.message_count) > index
        })?;
        Ok((e < n).then_some(Position::new(seg.id, e)))
    }

    /// The first entry published at or after `time_ms` (the end position if none).
    pub fn position_of_publish_time(&self, time_ms: u64) -> Result<Position> {
        for s in &self.segments {
            let n = self.positions().confirmed(s.id);
            if n == 0 {
                continue;
            }
            if self.last_publish_ms_of(s.id, n)? < time_ms {
                continue;
            }
            let e = self.search(s.id, n, |e| e.publish_time_ms >= time_ms)?;
            return Ok(Position::new(s.id, e));
        }
        Ok(self.end_position())
    }

    /// When segment `seg` (of `n` entries) last got an entry: from its
    /// offload record when only the object store holds it.
    pub(super) fn last_publish_ms_of(&self, seg: SegmentId, n: u64) -> Result<u64> {
        match self.offloaded.get(&seg) {
            Some(o) if self.store.segment(seg).is_none() => Ok(o.last_publish_ms),
            _ => Ok(self.read_entry(Position::new(seg, n - 1))?.publish_time_ms),
        }
    }

    /// Binary search in a segment of `n` entries for the first entry satisfying a
    /// predicate that is false then true along the segment.
    fn search(&self, seg: SegmentId, n: u64, pred: impl Fn(&Entry) -> bool) -> Result<u64> {
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(&self.read_entry(Position::new(seg, mid))?) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }
}
