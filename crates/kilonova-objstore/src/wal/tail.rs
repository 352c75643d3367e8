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

/// What to read of one slice: its entries from `skip` on, which have
/// indexes from `first` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailRead {
    pub slice: TailSlice,
    pub skip: usize,
    pub first: u64,
}

/// Which slices (and which of their entries) hold the log's entries from
/// `from_index` on, checked for gaps and overlaps before anything is read.
/// Slices wholly below `from_index` are left out (before the first slice
/// reaching `from_index` they are old, not overlapping).
pub fn plan_tail(
    slices: impl IntoIterator<Item = TailSlice>,
    from_index: u64,
) -> Result<Vec<TailRead>, TailError> {
    let mut plan = Vec::new();
    let mut expected = from_index;
    for slice in slices {
        let end = slice
            .first_index
            .saturating_add(slice.positions.len() as u64);
        if slice.positions.is_empty() || (plan.is_empty() && end <= expected) {
            continue;
        }
        if slice.first_index > expected {
            return Err(TailError::Gap {
                expected,
                found: slice.first_index,
                object: slice.object,
            });
        }
        if !plan.is_empty() && slice.first_index < expected {
            return Err(TailError::Overlap {
                expected,
                found: slice.first_index,
                object: slice.object,
            });
        }
        // Only the first slice reached may start below `from_index`.
        let skip = (expected - slice.first_index) as usize;
        plan.push(TailRead {
            slice,
            skip,
            first: expected,
        });
        expected = end;
    }
    Ok(plan)
}

/// The log's entries `(index, bytes)` from `from_index` on, in order, from
/// `slices` in commit order. The indexes must follow each other without a
/// gap or an overlap from `from_index` on ([`TailError`], found before
/// anything is read: [`plan_tail`]); slices wholly below `from_index` are
/// skipped unread. Each object's index is read once (one or two requests),
/// then the log's entries in it with a range request per run, every entry
/// checked against its CRC32C and log id. The whole tail is returned at
/// once: it is what was not yet compacted, bounded by the caller's
/// compaction.
pub async fn read_tail(
    reader: &WalReader,
    slices: impl IntoIterator<Item = TailSlice>,
    from_index: u64,
) -> Result<Vec<(u64, Bytes)>, TailError> {
    let mut indexes: HashMap<String, WalIndex> = HashMap::new();
    let mut out = Vec::new();
    for TailRead { slice, skip, first } in plan_tail(slices, from_index)? {
        let index = match indexes.entry(slice.object.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(reader.index(&slice.object).await?),
        };
        let positions = slice.positions.get(skip..).unwrap_or_default();
        let entries = reader
            .read_entries(&slice.object, index, slice.log, positions)
            .await?;
        out.extend((first..).zip(entries));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Contiguous slices of `sizes` entries from index `start`.
    fn slices(start: u64, sizes: &[usize]) -> Vec<TailSlice> {
        let mut first = start;
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let s = TailSlice {
                    object: format!("o{i}"),
                    log: 1,
                    first_index: first,
                    positions: (0..n as u32).collect(),
                };
                first += n as u64;
                s
            })
            .collect()
    }

    /// The indexes a plan reads, in order.
    fn indexes(plan: &[TailRead]) -> Vec<u64> {
        plan.iter()
            .flat_map(|r| r.first..r.first + (r.slice.positions.len() - r.skip) as u64)
            .collect()
    }

    proptest! {
        #[test]
        fn contiguous_slices_give_every_index_from_the_one_asked(
            start in 0u64..1_000,
            sizes in proptest::collection::vec(0usize..20, 0..20),
            from in 0u64..1_500,
        ) {
            let all = slices(start, &sizes);
            let end = start + sizes.iter().sum::<usize>() as u64;
            match plan_tail(all, from) {
                Ok(plan) => {
                    prop_assert!(from >= start || end == start || end <= from);
                    let want: Vec<u64> = (from.max(start)..end).collect();
                    prop_assert_eq!(indexes(&plan), want);
                }
                Err(TailError::Gap { expected, found, .. }) => {
                    prop_assert!(from < start && from < end);
                    prop_assert_eq!((expected, found), (from, start));
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }

        #[test]
        fn a_missing_slice_is_a_gap_and_a_repeated_one_an_overlap(
            sizes in proptest::collection::vec(1usize..20, 3..20),
            pick in any::<proptest::sample::Index>(),
        ) {
            let all = slices(0, &sizes);
            // A slice after the first, missing: a gap at its first index.
            let i = 1 + pick.index(all.len() - 1);
            let mut missing = all.clone();
            let gone = missing.remove(i);
            if i < all.len() - 1 {
                match plan_tail(missing, 0) {
                    Err(TailError::Gap { expected, found, .. }) => {
                        prop_assert_eq!(expected, gone.first_index);
                        prop_assert_eq!(found, all[i + 1].first_index);
                    }
                    other => prop_assert!(false, "{:?}", other.map(|p| indexes(&p))),
                }
            }
            let mut twice = all.clone();
            twice.insert(i, all[i - 1].clone());
            let overlap = matches!(plan_tail(twice, 0), Err(TailError::Overlap { .. }));
            prop_assert!(overlap);
        }
    }

    #[test]
    fn only_the_first_slice_reached_is_read_from_the_middle() {
        let plan = plan_tail(slices(10, &[5, 5, 5]), 12).unwrap();
        assert_eq!(
            plan.iter().map(|r| (r.skip, r.first)).collect::<Vec<_>>(),
            vec![(2, 12), (0, 15), (0, 20)]
        );
        assert!(plan_tail(slices(10, &[5]), 15).unwrap().is_empty());
    }
}
