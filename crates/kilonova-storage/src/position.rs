//! Identifiers of stored entries.

use std::fmt;

/// A segment (ledger) id, unique within one segment store for its whole life.
pub type SegmentId = u64;
/// An entry id, dense within its segment, starting at 0.
pub type EntryId = u64;

/// Where an entry lives: Pulsar's `MessageId (ledgerId, entryId)` without batch index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub segment: SegmentId,
    pub entry: EntryId,
}

impl Position {
    pub const fn new(segment: SegmentId, entry: EntryId) -> Self {
        Position { segment, entry }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment, self.entry)
    }
}
