//! Counting a cursor's backlog by reading it (Pulsar's analyze-backlog):
//! every entry from the cursor's first unacknowledged one (or a given start)
//! to the log's end as the scan began, skipping what the cursor has
//! acknowledged, counted as entries and as messages (a batch is one entry of
//! several messages).
//!
//! A scan is a value ([`BacklogScan`]) that remembers where it is and what it
//! has counted; [`ManagedLog::scan_backlog`] moves it a bounded number of
//! entries at a time, so the log's owner serves other work between steps and
//! only one entry is in memory at once. Like Pulsar's, it works on a copy of
//! the cursor taken when it starts: acknowledgements made during the scan do
//! not change what it counts.

use crate::error::Result;
use crate::position::Position;
use crate::range_set::RangeSet;

use super::cursor::Positions;
use super::ManagedLog;

/// What a scan has counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BacklogCounts {
    /// Entries not acknowledged.
    pub entries: u64,
    /// Messages in them (a batch counts its messages).
    pub messages: u64,
    /// The first entry counted.
    pub first: Option<Position>,
    /// The last entry counted.
    pub last: Option<Position>,
}

/// A scan of one cursor's backlog, in progress.
#[derive(Clone, Debug)]
pub struct BacklogScan {
    /// The next position to look at.
    next: Position,
    /// The log's end when the scan started: it counts nothing published after.
    end: Position,
    /// The cursor's first unacknowledged entry, when the scan started.
    floor: Position,
    /// The cursor's acknowledged entries at or after its floor, when the scan started.
    acked: RangeSet,
    counts: BacklogCounts,
}

impl BacklogScan {
    pub fn counts(&self) -> BacklogCounts {
        self.counts
    }
}

impl ManagedLog {
    /// Starts a scan of `cursor`'s backlog from its first unacknowledged
    /// entry, or from `start` (entries before the cursor's first
    /// unacknowledged one are still not counted: they are acknowledged).
    pub fn backlog_scan(&self, cursor: &str, start: Option<Position>) -> Result<BacklogScan> {
        let c = self.cursor(cursor)?;
        let positions = self.positions();
        let floor = positions.normalize(c.floor());
        let next = positions.normalize(start.map_or(floor, |s| s.max(floor)));
        Ok(BacklogScan {
            next,
            end: self.end_position(),
            floor,
            acked: c.acked().clone(),
            counts: BacklogCounts::default(),
        })
    }

    /// Counts up to `max_entries` more unacknowledged entries of `scan`,
    /// reading them one by one. Returns whether the scan is complete: no
    /// unacknowledged entry is left before the end it started with (so a
    /// scan that counted exactly its last entry knows it is done).
    pub fn scan_backlog(&self, scan: &mut BacklogScan, max_entries: u64) -> Result<bool> {
        let positions = self.positions();
        let mut counted = 0u64;
        loop {
            let p = positions.normalize(scan.next);
            scan.next = p;
            if p >= scan.end || !positions.is_readable(p) {
                return Ok(true);
            }
            if p < scan.floor {
                scan.next = scan.floor;
                continue;
            }
            if let Some((_, end)) = scan.acked.range_containing(p) {
                scan.next = positions.next(end);
                continue;
            }
            if counted >= max_entries {
                return Ok(false);
            }
            let entry = self.read_entry(p)?;
            let c = &mut scan.counts;
            c.entries += 1;
            c.messages += u64::from(entry.message_count.max(1));
            c.first.get_or_insert(p);
            c.last = Some(p);
            counted += 1;
            scan.next = positions.next(p);
        }
    }
}
