//! The in-memory index of a segment store: where every live entry is.
//!
//! Entry ids are dense within a segment, so a segment's index is an array of
//! packed locations: 8 bytes per entry (file number in the top 24 bits, byte
//! offset in the low 40). An open segment's `Vec` may hold up to 2x capacity
//! (≤ 16 bytes/entry); sealing shrinks it to exactly 8 bytes/entry.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::Arc;

use crate::position::SegmentId;

/// A packed (file number, offset) location. `MISSING` marks an entry whose record
/// was lost to corruption: reads of it fail with `StorageError::Corrupt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc(u64);

const OFFSET_BITS: u32 = 40;
pub(crate) const MAX_FILE_NO: u32 = (1 << (64 - OFFSET_BITS)) - 2;
pub(crate) const MAX_FILE_BYTES: u64 = 1 << OFFSET_BITS;

impl Loc {
    pub const MISSING: Loc = Loc(u64::MAX);

    pub fn new(file: u32, offset: u64) -> Self {
        debug_assert!(file <= MAX_FILE_NO && offset < MAX_FILE_BYTES);
        Loc(((file as u64) << OFFSET_BITS) | offset)
    }
    pub fn file(self) -> u32 {
        (self.0 >> OFFSET_BITS) as u32
    }
    pub fn offset(self) -> u64 {
        self.0 & (MAX_FILE_BYTES - 1)
    }
    pub fn is_missing(self) -> bool {
        self == Loc::MISSING
    }
}

/// One live segment.
#[derive(Debug, Default)]
pub(crate) struct SegmentState {
    pub locs: Vec<Loc>,
    pub sealed: bool,
    /// An append failed: it takes no more appends, so entry ids stay dense.
    pub fenced: bool,
    /// Payload bytes of its entries.
    pub bytes: u64,
}

/// One journal file.
#[derive(Debug)]
pub(crate) struct FileState {
    pub handle: Arc<File>,
    /// Bytes allocated on disk for the log file (and its index file, once written).
    pub disk_bytes: u64,
    /// Entries of live segments whose current copy is in this file.
    pub live_entries: u64,
    /// Entry records ever written to this file.
    pub written_entries: u64,
    /// Its index file is written and a checkpoint covers it: it is immutable.
    pub checkpointed: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    pub segments: HashMap<SegmentId, SegmentState>,
    pub files: BTreeMap<u32, FileState>,
}

impl Index {
    /// Points `(segment, entry)` at `loc`, growing the segment with `MISSING`
    /// slots if needed, and keeps the per-file live counts right.
    pub fn set_loc(&mut self, segment: SegmentId, entry: u64, loc: Loc, payload_len: u64) {
        let Some(seg) = self.segments.get_mut(&segment) else {
            return;
        };
        let Ok(i) = usize::try_from(entry) else {
            return;
        };
        if seg.locs.len() <= i {
            seg.locs.resize(i + 1, Loc::MISSING);
        }
        let old = std::mem::replace(&mut seg.locs[i], loc);
        if old.is_missing() {
            seg.bytes += payload_len;
        } else if let Some(f) = self.files.get_mut(&old.file()) {
            f.live_entries = f.live_entries.saturating_sub(1);
        }
        if let Some(f) = self.files.get_mut(&loc.file()) {
            f.live_entries += 1;
        }
    }

    /// Removes a segment and releases its entries from their files' live counts.
    pub fn remove_segment(&mut self, segment: SegmentId) {
        if let Some(seg) = self.segments.remove(&segment) {
            for loc in seg.locs.iter().filter(|l| !l.is_missing()) {
                if let Some(f) = self.files.get_mut(&loc.file()) {
                    f.live_entries = f.live_entries.saturating_sub(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn index_with_files(n: u32) -> Index {
        let mut idx = Index::default();
        for no in 0..n {
            let handle = Arc::new(tempfile::tempfile().unwrap());
            idx.files.insert(
                no,
                FileState {
                    handle,
                    disk_bytes: 0,
                    live_entries: 0,
                    written_entries: 0,
                    checkpointed: true,
                },
            );
        }
        idx
    }

    proptest! {
        #[test]
        fn loc_round_trips(file in 0..=MAX_FILE_NO, offset in 0..MAX_FILE_BYTES) {
            let l = Loc::new(file, offset);
            prop_assert_eq!((l.file(), l.offset()), (file, offset));
            prop_assert!(!l.is_missing());
        }

        /// GC trusts per-file live counts: they must equal the locations that point
        /// into each file, whatever sequence of sets, moves and deletes happened.
        #[test]
        fn live_counts_match_the_locations(
            ops in proptest::collection::vec((0u64..4, 0u64..30, 0u32..5, any::<bool>()), 1..200),
        ) {
            let mut idx = index_with_files(5);
            for seg in 0..4 {
                idx.segments.insert(seg, SegmentState::default());
            }
            for (seg, entry, file, delete) in ops {
                if delete && entry % 7 == 0 {
                    idx.remove_segment(seg);
                    idx.segments.insert(seg, SegmentState::default());
                } else {
                    idx.set_loc(seg, entry, Loc::new(file, entry * 64), 10);
                }
            }
            for (no, f) in &idx.files {
                let pointing = idx
                    .segments
                    .values()
                    .flat_map(|s| s.locs.iter())
                    .filter(|l| !l.is_missing() && l.file() == *no)
                    .count() as u64;
                prop_assert_eq!(f.live_entries, pointing, "file {}", no);
            }
        }
    }

    #[test]
    fn loc_packs_file_and_offset() {
        let l = Loc::new(MAX_FILE_NO, MAX_FILE_BYTES - 8);
        assert_eq!(l.file(), MAX_FILE_NO);
        assert_eq!(l.offset(), MAX_FILE_BYTES - 8);
        assert!(!l.is_missing());
        assert_eq!(std::mem::size_of::<Loc>(), 8);
    }
}
