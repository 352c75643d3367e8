//! Identifiers of stored entries.

use std::fmt;

/// A segment (ledger) id, unique within one segment store for its whole
/// life. Its top bits are the number of the data directory holding it
/// ([`dir_of`]); the rest count up within that directory.
pub type SegmentId = u64;

/// Where a segment id's directory number starts.
const DIR_SHIFT: u32 = 56;
/// The most data directories one store has: numbers `0..MAX_DIRS`, which
/// keeps every id below 2^62 (Pulsar's ledger ids are signed 64-bit).
pub const MAX_DIRS: usize = 64;

/// The number of the data directory holding segment `id`.
pub fn dir_of(id: SegmentId) -> u8 {
    (id >> DIR_SHIFT) as u8
}

/// The ids of data directory `number`'s segments.
pub(crate) fn dir_ids(number: u8) -> std::ops::Range<SegmentId> {
    let start = u64::from(number) << DIR_SHIFT;
    start..start + (1 << DIR_SHIFT)
}
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
