//! Message ids across a topic's owners (shared storage, ADR 0017).
//!
//! A message id names a position in the journal of the broker that
//! delivered it: (segment, entry). After the topic moves, its next owner
//! holds the same entries in segments of its own, so an id a client got
//! before the move names nothing there. What every owner shares is the
//! topic's entry numbering (the write-ahead tags: entry `n` of the topic is
//! the same entry on every owner). So each owner records where each of its
//! segments starts in that numbering, beside the subscription positions
//! (`TopicCursors::segments`), and keeps the starts of the last owners'
//! segments it read there: an id from an earlier owner becomes an entry
//! number, and the entry number a position in this owner's log.
//!
//! An id that cannot be translated (its segment was never recorded: the
//! owner died before its next position write, or too many owners ago) is
//! answered as before: an acknowledgement of it is ignored and the message
//! is delivered again.

use kilonova_metadata::cursors::SegmentStart;
use kilonova_storage::{ManagedLog, Position};

/// Starts of earlier owners' segments kept (the most recent ones).
const MAX_EARLIER: usize = 64;

/// One segment of this broker's log: its id, and how many entries it holds
/// for good (`None` while it may still grow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LocalSegment {
    pub id: u64,
    pub sealed_entries: Option<u64>,
}

/// The segments of `log`, in order (those left in the object store are
/// sealed, with the entries their record counts).
pub(crate) fn local_segments(log: &ManagedLog) -> Vec<LocalSegment> {
    log.segments()
        .iter()
        .map(|s| LocalSegment {
            id: s.id,
            sealed_entries: match log.segment_info(s.id) {
                Some(i) => i.sealed.then_some(i.entries),
                None => log.offloaded(s.id).map(|o| o.entries),
            },
        })
        .collect()
}

/// Where a topic's segments start in its entry numbering: this owner's and
/// the last owners' before it.
#[derive(Debug, Default)]
pub(crate) struct MessageIds {
    /// Earlier owners' segment starts, as read at the load (at most
    /// [`MAX_EARLIER`], the latest by entry number).
    earlier: Vec<SegmentStart>,
    /// This owner's segments, in log order.
    own: Vec<SegmentStart>,
}

impl MessageIds {
    /// For a log loaded with entries from number `first_entry` on, the
    /// earlier owners' starts being `stored` (what the positions record held).
    pub(crate) fn new(stored: &[SegmentStart], first_entry: u64, log: &[LocalSegment]) -> Self {
        let mut earlier: Vec<SegmentStart> = stored
            .iter()
            .filter(|s| !log.iter().any(|l| l.id == s.segment))
            .copied()
            .collect();
        earlier.sort_by_key(|s| s.first_entry);
        let extra = earlier.len().saturating_sub(MAX_EARLIER);
        earlier.drain(..extra);
        let mut ids = MessageIds {
            earlier,
            own: Vec::new(),
        };
        if let Some(first) = log.first() {
            ids.own.push(SegmentStart {
                segment: first.id,
                first_entry,
            });
        }
        ids.observe(log);
        ids
    }

    /// Records where the log's segments not known yet start: a segment's
    /// start is known once the one before it is sealed. Segments the log
    /// no longer has (retention dropped them) are forgotten.
    pub(crate) fn observe(&mut self, log: &[LocalSegment]) {
        self.own.retain(|s| log.iter().any(|l| l.id == s.segment));
        if self.own.is_empty() {
            // Every known segment was dropped: nothing to count from.
            return;
        }
        loop {
            let Some(last) = self.own.last().copied() else {
                return;
            };
            let Some(at) = log.iter().position(|l| l.id == last.segment) else {
                return;
            };
            let (Some(next), Some(entries)) = (log.get(at + 1), log[at].sealed_entries) else {
                return;
            };
            self.own.push(SegmentStart {
                segment: next.id,
                first_entry: last.first_entry + entries,
            });
        }
    }

    /// What the positions record holds: the earlier owners' starts and this one's.
    pub(crate) fn stored(&self) -> Vec<SegmentStart> {
        let mut all: Vec<SegmentStart> = self.earlier.iter().chain(&self.own).copied().collect();
        all.sort_by_key(|s| (s.first_entry, s.segment));
        all
    }

    /// The entry number of this owner's position `p`, if its segment's
    /// start is known.
    pub(crate) fn entry_of(&self, p: Position) -> Option<u64> {
        let start = self.own.iter().find(|s| s.segment == p.segment)?;
        start.first_entry.checked_add(p.entry)
    }

    /// Entries `first..=last` (those before `end`, the log's next entry) as
    /// closed ranges of this owner's positions, one segment each.
    pub(crate) fn local_ranges(
        &self,
        first: u64,
        last: u64,
        end: u64,
    ) -> Vec<(Position, Position)> {
        let last = last.min(end.saturating_sub(1));
        let mut out = Vec::new();
        for (k, start) in self.own.iter().enumerate() {
            let next = self.own.get(k + 1).map_or(u64::MAX, |n| n.first_entry);
            let (from, to) = (
                first.max(start.first_entry),
                last.min(next.saturating_sub(1)),
            );
            if from <= to && first <= last {
                out.push((
                    Position::new(start.segment, from - start.first_entry),
                    Position::new(start.segment, to - start.first_entry),
                ));
            }
        }
        out
    }

    /// The position in this owner's log of the entry message id `p` names,
    /// `p` itself if it is one of this log's; `None` if it names nothing
    /// known here (or an entry no longer kept, or not yet written: `end`
    /// is the number of the log's next entry).
    pub(crate) fn translate(
        &self,
        p: Position,
        log: &[LocalSegment],
        end: u64,
    ) -> Option<Position> {
        if log.iter().any(|l| l.id == p.segment) {
            return Some(p);
        }
        let start = self.earlier.iter().find(|s| s.segment == p.segment)?;
        let entry = start.first_entry.checked_add(p.entry)?;
        if entry >= end {
            return None;
        }
        let own = self.own.iter().rev().find(|s| s.first_entry <= entry)?;
        Some(Position::new(own.segment, entry - own.first_entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u64, sealed_entries: Option<u64>) -> LocalSegment {
        LocalSegment { id, sealed_entries }
    }

    fn start(segment: u64, first_entry: u64) -> SegmentStart {
        SegmentStart {
            segment,
            first_entry,
        }
    }

    #[test]
    fn own_segments_start_where_the_one_before_ended() {
        let log = [seg(10, Some(5)), seg(11, Some(3)), seg(12, None)];
        let ids = MessageIds::new(&[], 100, &log);
        assert_eq!(
            ids.stored(),
            vec![start(10, 100), start(11, 105), start(12, 108)]
        );
    }

    #[test]
    fn a_segment_after_an_unsealed_one_waits_until_it_is_sealed() {
        let mut ids = MessageIds::new(&[], 0, &[seg(1, None)]);
        ids.observe(&[seg(1, None), seg(2, None)]);
        assert_eq!(ids.stored(), vec![start(1, 0)]);
        ids.observe(&[seg(1, Some(7)), seg(2, None)]);
        assert_eq!(ids.stored(), vec![start(1, 0), start(2, 7)]);
    }

    #[test]
    fn dropped_segments_are_forgotten() {
        let mut ids = MessageIds::new(&[], 0, &[seg(1, Some(4)), seg(2, None)]);
        ids.observe(&[seg(2, Some(6)), seg(3, None)]);
        assert_eq!(ids.stored(), vec![start(2, 4), start(3, 10)]);
    }

    #[test]
    fn an_earlier_owners_id_names_the_same_entry_here() {
        // The earlier owner: segment 7 held entries 0..10, segment 8 from 10.
        let earlier = [start(7, 0), start(8, 10)];
        // This owner loaded entries from 4 on: segment 50 holds 4..12, 51 from 12.
        let log = [seg(50, Some(8)), seg(51, None)];
        let ids = MessageIds::new(&earlier, 4, &log);
        let end = 15;
        let t = |s, e| ids.translate(Position::new(s, e), &log, end);
        assert_eq!(t(7, 4), Some(Position::new(50, 0)));
        assert_eq!(t(7, 9), Some(Position::new(50, 5)));
        assert_eq!(t(8, 1), Some(Position::new(50, 7)));
        assert_eq!(t(8, 2), Some(Position::new(51, 0)));
        assert_eq!(t(8, 4), Some(Position::new(51, 2)));
        assert_eq!(t(7, 3), None, "an entry no longer kept here");
        assert_eq!(t(8, 5), None, "an entry not written yet");
        assert_eq!(t(9, 0), None, "a segment nobody recorded");
        assert_eq!(t(51, 1), Some(Position::new(51, 1)), "this log's own");
        assert_eq!(t(8, u64::MAX), None);
    }

    #[test]
    fn entry_ranges_become_ranges_of_this_owners_segments() {
        let log = [seg(50, Some(8)), seg(51, Some(5)), seg(52, None)];
        let ids = MessageIds::new(&[], 4, &log);
        assert_eq!(ids.entry_of(Position::new(51, 2)), Some(14));
        assert_eq!(ids.entry_of(Position::new(7, 2)), None);
        let p = Position::new;
        assert_eq!(
            ids.local_ranges(10, 18, 100),
            vec![
                (p(50, 6), p(50, 7)),
                (p(51, 0), p(51, 4)),
                (p(52, 0), p(52, 1))
            ]
        );
        assert_eq!(ids.local_ranges(0, 5, 100), vec![(p(50, 0), p(50, 1))]);
        assert_eq!(ids.local_ranges(20, 30, 22), vec![(p(52, 3), p(52, 4))]);
        assert_eq!(ids.local_ranges(30, 40, 22), vec![]);
        assert_eq!(ids.local_ranges(9, 8, 100), vec![]);
    }

    #[test]
    fn the_record_keeps_the_latest_earlier_starts_and_this_owners() {
        let earlier: Vec<SegmentStart> = (0..100).map(|i| start(1000 + i, i * 10)).collect();
        let log = [seg(5, None)];
        let ids = MessageIds::new(&earlier, 990, &log);
        let stored = ids.stored();
        assert_eq!(stored.len(), MAX_EARLIER + 1);
        assert_eq!(stored.first(), Some(&start(1036, 360)));
        assert!(stored.contains(&start(5, 990)));
        // A later owner reading this record translates the latest ids.
        let next_log = [seg(9, None)];
        let next = MessageIds::new(&stored, 990, &next_log);
        assert_eq!(
            next.translate(Position::new(5, 3), &next_log, 1000),
            Some(Position::new(9, 3))
        );
        assert_eq!(
            next.translate(Position::new(1099, 1), &next_log, 1000),
            Some(Position::new(9, 1))
        );
    }
}
