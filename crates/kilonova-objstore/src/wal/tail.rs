//! Reading a log's tail back from committed flushes: what a new owner of a
//! topic does with the flush records of its bundle (issue #26). The records
//! themselves live in the metadata store, which this crate does not know:
//! the caller turns each record's part about the log into a [`TailSlice`],
//! in commit order.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use bytes::Bytes;

use super::format::WalIndex;
use super::WalReader;
use crate::error::ObjectStoreError;

/// A log's entries in one committed flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailSlice {
    /// The object's full key in the bucket.
    pub object: String,
    /// The log id the writer gave the entries (checked against the object's
    /// index).
    pub log: u64,
    /// The index (tag) of the first entry; the others follow one by one.
    pub first_index: u64,
    /// Each entry's place in the object, in order.
    pub positions: Vec<u32>,
}

/// Why a tail cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// No committed flush holds entries `expected..found` (the next one
    /// found starts at `found`, in `object`): they were never committed, or
    /// their records were removed.
    #[error("entries {expected}..{found} are in no committed flush (the next committed entry, {found}, is in {object:?})")]
    Gap {
        expected: u64,
        found: u64,
        object: String,
    },
    /// A committed flush starts at `found`, below `expected`, the index after
    /// the entries read before it: two commits claim the same entries.
    #[error("the flush in {object:?} starts at entry {found}, but entries up to {expected} were read already")]
    Overlap {
        expected: u64,
        found: u64,
        object: String,
    },
    /// Reading an object failed, or it does not match its record.
    #[error(transparent)]
    Store(#[from] ObjectStoreError),
}

/// The log's entries `(index, bytes)` from `from_index` on, in order, from
/// `slices` in commit order. Each object's index is read once (one or two
/// requests), then the log's entries in it with a range request per run, every
/// entry checked against its CRC32C. The indexes must follow each other
/// without a gap or an overlap from `from_index` on ([`TailError`]); slices
/// wholly below `from_index` are skipped unread. The whole tail is returned
/// at once: it is what was not yet compacted, bounded by the caller's
/// compaction.
pub async fn read_tail(
    reader: &WalReader,
    slices: impl IntoIterator<Item = TailSlice>,
    from_index: u64,
) -> Result<Vec<(u64, Bytes)>, TailError> {
    let mut indexes: HashMap<String, WalIndex> = HashMap::new();
    let mut out = Vec::new();
    let mut expected = from_index;
    // Whether an entry at or above `from_index` has been read (before, slices
    // below `from_index` are old, not overlapping).
    let mut reached = false;
    for slice in slices {
        let end = slice.first_index + slice.positions.len() as u64;
        if slice.positions.is_empty() || (!reached && end <= expected) {
            continue;
        }
        if slice.first_index > expected {
            return Err(TailError::Gap {
                expected,
                found: slice.first_index,
                object: slice.object,
            });
        }
        if reached && slice.first_index < expected {
            return Err(TailError::Overlap {
                expected,
                found: slice.first_index,
                object: slice.object,
            });
        }
        // Entries below `from_index` in the first slice reached are skipped.
        let skip = (expected - slice.first_index) as usize;
        let index = match indexes.entry(slice.object.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(reader.index(&slice.object).await?),
        };
        let positions = slice.positions.get(skip..).unwrap_or_default();
        let entries = reader
            .read_entries(&slice.object, index, slice.log, positions)
            .await?;
        out.extend((expected..).zip(entries));
        expected = end;
        reached = true;
    }
    Ok(out)
}
