//! Opening a store after a clean stop or a crash.
//!
//! 1. Load `CHECKPOINT`: the segment table and the first journal file to replay.
//! 2. For each journal file before that one, load its `.idx` (no scan).
//! 3. Replay the files from there on record by record, verifying CRCs, applying
//!    creates, seals, deletes and entry locations, until the end of the log.
//!
//! A damaged record ends the log (torn tail: the write was never acknowledged)
//! unless a later valid record's `durable_lsn` proves it was once durable; then
//! it is mid-file corruption: logged, skipped, and the entries it held read as
//! `Corrupt`. Recovery time is bounded by the data written since the last
//! checkpoint, which is at most one journal file.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use crate::checkpoint::{self, IdxRecord};
use crate::error::{Result, StorageError};
use crate::index::{FileState, Index, Loc, SegmentState, MAX_FILE_BYTES, MAX_FILE_NO};
use crate::record::{self, RecordError, RecordHeader, RecordKind, ALIGN, HEADER_LEN};
use crate::store::{list_log_files, StoreConfig};

pub(crate) struct Recovered {
    /// Journal files scanned record by record, and their bytes (the rest came from indexes).
    pub replayed_files: u64,
    pub replayed_bytes: u64,
    pub index: Index,
    pub next_file_no: u32,
    pub next_lsn: u64,
    pub next_segment_id: u64,
}

pub(crate) fn recover(config: &StoreConfig) -> Result<Recovered> {
    let dir = &config.dir;
    let cp = checkpoint::read_checkpoint(dir)?.unwrap_or_default();
    let logs = list_log_files(dir)?;
    if let Some((no, path)) = logs.iter().find(|(no, _)| **no > MAX_FILE_NO) {
        // Locations pack the file number in 24 bits: the writer never makes such a file.
        return Err(StorageError::InvalidFile {
            path: path.display().to_string(),
            detail: format!("journal file number {no} is beyond the largest, {MAX_FILE_NO}"),
        });
    }
    let mut index = Index::default();
    let mut slots = SlotBudget::for_files(&logs);
    let mut expected = Vec::with_capacity(cp.segments.len());
    for row in &cp.segments {
        index.segments.insert(
            row.id,
            SegmentState {
                locs: Vec::with_capacity(slots.capacity_for(row.entries)),
                sealed: row.sealed,
                fenced: false,
                bytes: 0,
            },
        );
        expected.push((row.id, row.entries));
    }
    for (no, path) in &logs {
        let handle = File::open(path).map_err(|e| StorageError::io("opening a journal file", e))?;
        let mut disk_bytes = handle
            .metadata()
            .map_err(|e| StorageError::io("reading a journal file's size", e))?
            .len();
        if let Ok(m) = fs::metadata(checkpoint::idx_path(dir, *no)) {
            disk_bytes += m.len();
        }
        index.files.insert(
            *no,
            FileState {
                handle: Arc::new(handle),
                disk_bytes,
                live_entries: 0,
                written_entries: 0,
                checkpointed: *no < cp.replay_from_file,
            },
        );
    }

    // 2. Files covered by the checkpoint: their indexes.
    for (no, path) in logs.range(..cp.replay_from_file) {
        match checkpoint::read_idx(dir, *no) {
            Ok(Some(records)) => {
                for r in records {
                    apply_loc(&mut index, &mut slots, *no, r);
                }
            }
            other => {
                if let Err(e) = other {
                    tracing::warn!(file = *no, error = %e, "journal index unreadable; scanning the file instead");
                } else {
                    tracing::warn!(
                        file = *no,
                        "journal index missing; scanning the file instead"
                    );
                }
                let data = read_file(path)?;
                let mut lsn = 0;
                scan(*no, &data, &mut lsn, |h, offset, payload_len| {
                    if matches!(h.kind, RecordKind::Entry | RecordKind::Moved) {
                        apply_loc(
                            &mut index,
                            &mut slots,
                            *no,
                            IdxRecord {
                                segment: h.segment,
                                entry: h.entry,
                                offset,
                                payload_len,
                            },
                        );
                    }
                });
            }
        }
    }
    for (id, entries) in expected {
        if let Some(seg) = index.segments.get_mut(&id) {
            let n = usize::try_from(entries).unwrap_or(usize::MAX);
            if seg.locs.len() < n && slots.grow(id, seg.locs.len(), entries) {
                tracing::error!(
                    segment = id,
                    have = seg.locs.len(),
                    expected = n,
                    "entries missing from the journal indexes"
                );
                seg.locs.resize(n, Loc::MISSING);
            }
        }
    }

    // 3. Replay the tail.
    let mut last_lsn = cp.next_lsn.saturating_sub(1);
    let mut next_segment_id = cp.next_segment_id;
    let (mut replayed_files, mut replayed_bytes) = (0u64, 0u64);
    for (no, path) in logs.range(cp.replay_from_file..) {
        let data = read_file(path)?;
        replayed_files += 1;
        replayed_bytes += data.len() as u64;
        let mut records = Vec::new();
        let mut written = 0u64;
        scan(
            *no,
            &data,
            &mut last_lsn,
            |h, offset, payload_len| match h.kind {
                RecordKind::Create => {
                    index.segments.entry(h.segment).or_default();
                    next_segment_id = next_segment_id.max(h.segment.saturating_add(1));
                }
                RecordKind::Seal => {
                    if let Some(seg) = index.segments.get_mut(&h.segment) {
                        let n = usize::try_from(h.entry).unwrap_or(usize::MAX);
                        if seg.locs.len() < n && slots.grow(h.segment, seg.locs.len(), h.entry) {
                            seg.locs.resize(n, Loc::MISSING);
                        }
                        seg.sealed = true;
                        seg.locs.shrink_to_fit();
                    }
                }
                RecordKind::Delete => index.remove_segment(h.segment),
                RecordKind::Entry | RecordKind::Moved => {
                    let r = IdxRecord {
                        segment: h.segment,
                        entry: h.entry,
                        offset,
                        payload_len,
                    };
                    written += 1;
                    records.push(r);
                    apply_loc(&mut index, &mut slots, *no, r);
                }
            },
        );
        if let Some(f) = index.files.get_mut(no) {
            f.written_entries += written;
        }
        // From now on this file is immutable: give it its index so no later start scans it.
        match checkpoint::write_idx(dir, *no, &records) {
            Ok(idx_bytes) => {
                if let Some(f) = index.files.get_mut(no) {
                    f.disk_bytes += idx_bytes;
                }
            }
            // Best effort (the disk may be full): without it the file is scanned again.
            Err(e) => tracing::warn!(file = *no, error = %e, "could not write a journal index"),
        }
        tracing::info!(file = *no, entries = records.len(), "replayed journal file");
    }
    for (id, seg) in &index.segments {
        let missing = seg.locs.iter().filter(|l| l.is_missing()).count();
        if missing > 0 {
            tracing::error!(
                segment = id,
                missing,
                "entries lost to journal damage read as corrupt"
            );
        }
    }
    let next_file_no = logs
        .keys()
        .next_back()
        .map_or(0, |n| n + 1)
        .max(cp.replay_from_file);
    // Only a damaged (or forged) record could end the sequence: wrapping
    // around would make every later record look older than it, and replay
    // would stop before them.
    let next_lsn = last_lsn
        .checked_add(1)
        .ok_or_else(|| StorageError::Log("journal sequence numbers exhausted".into()))?;
    Ok(Recovered {
        replayed_files,
        replayed_bytes,
        index,
        next_file_no,
        next_lsn,
        next_segment_id,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| StorageError::io("reading a journal file", e))
}

fn apply_loc(index: &mut Index, slots: &mut SlotBudget, no: u32, r: IdxRecord) {
    if r.offset >= MAX_FILE_BYTES {
        tracing::error!(
            file = no,
            segment = r.segment,
            entry = r.entry,
            offset = r.offset,
            "an entry's offset is beyond any journal file: corrupt index ignored"
        );
        return;
    }
    if let Some(seg) = index.segments.get(&r.segment) {
        if slots.grow(r.segment, seg.locs.len(), r.entry.saturating_add(1)) {
            index.set_loc(r.segment, r.entry, Loc::new(no, r.offset), r.payload_len);
        }
    }
}

/// The entry slots recovery may add to the index: no more than the journal
/// files have room for records (each takes at least a header). Entry ids and
/// counts come from checksummed records and files, but a larger one is still
/// corruption (or a bug), and it must not size an allocation: the entry is
/// left out, logged, and reads as not found.
struct SlotBudget {
    left: u64,
    /// What may still be reserved ahead (capacity, not yet slots).
    reserve_left: u64,
}

impl SlotBudget {
    fn for_files(logs: &std::collections::BTreeMap<u32, std::path::PathBuf>) -> Self {
        let bytes: u64 = logs
            .values()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let left = bytes / HEADER_LEN as u64;
        SlotBudget {
            left,
            reserve_left: left,
        }
    }

    /// A capacity to reserve for a segment said to hold `entries`.
    fn capacity_for(&mut self, entries: u64) -> usize {
        let n = entries.min(self.reserve_left);
        self.reserve_left -= n;
        usize::try_from(n).unwrap_or(0)
    }

    /// Takes the slots for growing `segment` from `len` to `to` entries;
    /// false (and logged) if the journal cannot hold that many.
    fn grow(&mut self, segment: u64, len: usize, to: u64) -> bool {
        let extra = to.saturating_sub(len as u64);
        if extra > self.left {
            tracing::error!(
                segment,
                entries = to,
                "the journal cannot hold that many entries: corrupt record or checkpoint ignored"
            );
            return false;
        }
        self.left -= extra;
        true
    }
}

/// Walks the records of one journal file in order, calling `apply` for each valid
/// record with an lsn above `last_lsn`, and stops at the end of the log.
fn scan(no: u32, data: &[u8], last_lsn: &mut u64, mut apply: impl FnMut(&RecordHeader, u64, u64)) {
    let max = data.len();
    let mut pos = 0usize;
    while pos + HEADER_LEN <= data.len() {
        let rest = data.get(pos..).unwrap_or_default();
        let err = match record::decode(rest, max) {
            Ok((h, range, total)) if h.lsn > *last_lsn => {
                apply(&h, pos as u64, range.len() as u64);
                *last_lsn = h.lsn;
                pos += total;
                continue;
            }
            // An older record: leftovers beyond the end of the log.
            Ok(_) => return,
            Err(e) => e,
        };
        match resume_point(data, pos + ALIGN, *last_lsn) {
            Some(q) => {
                tracing::error!(
                    file = no,
                    offset = pos,
                    bytes = q - pos,
                    error = %err,
                    "corrupt region in the journal: entries stored there read as corrupt"
                );
                pos = q;
            }
            _ => {
                let zero = rest.iter().take(4096).all(|b| *b == 0);
                if !(zero && err == RecordError::NoMagic) {
                    tracing::warn!(
                        file = no,
                        offset = pos,
                        error = %err,
                        "torn tail in the journal (an unacknowledged write): log truncated here"
                    );
                }
                return;
            }
        }
    }
}

/// Where to resume after damage at `from`: the first later valid record, if some
/// later valid record was written after the damaged one was durable
/// (`durable_lsn > last_lsn`); `None` means the damage is a torn tail.
fn resume_point(data: &[u8], from: usize, last_lsn: u64) -> Option<usize> {
    let (first, _) = next_valid(data, from, last_lsn)?;
    let mut q = first;
    while let Some((at, h)) = next_valid(data, q, last_lsn) {
        if h.durable_lsn > last_lsn {
            return Some(first);
        }
        q = at + ALIGN;
    }
    None
}

/// The next offset at or after `from` (8-aligned) holding a valid record newer than `last_lsn`.
fn next_valid(data: &[u8], from: usize, last_lsn: u64) -> Option<(usize, RecordHeader)> {
    let magic = record::MAGIC.to_le_bytes();
    let mut q = from.next_multiple_of(ALIGN);
    while q + HEADER_LEN <= data.len() {
        if data.get(q..q + 4) == Some(&magic[..]) {
            if let Ok((h, _, _)) = record::decode(data.get(q..).unwrap_or_default(), data.len()) {
                if h.lsn > last_lsn {
                    return Some((q, h));
                }
            }
        }
        q += ALIGN;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn rec(buf: &mut BytesMut, lsn: u64, durable_lsn: u64, entry: u64) {
        let h = RecordHeader {
            kind: RecordKind::Entry,
            lsn,
            durable_lsn,
            segment: 1,
            entry,
        };
        record::encode(&h, &[7u8; 100], buf);
    }

    fn scanned(data: &[u8], mut last: u64) -> Vec<u64> {
        let mut seen = Vec::new();
        scan(0, data, &mut last, |h, _, _| seen.push(h.lsn));
        seen
    }

    #[test]
    fn a_recycled_files_stale_records_end_the_scan() {
        let mut b = BytesMut::new();
        for (i, lsn) in [10, 11, 12].into_iter().enumerate() {
            rec(&mut b, lsn, lsn - 1, i as u64);
        }
        // What the file held in its previous life: valid records with older lsns.
        for (i, lsn) in [3, 4, 5].into_iter().enumerate() {
            rec(&mut b, lsn, lsn - 1, 3 + i as u64);
        }
        assert_eq!(scanned(&b, 9), vec![10, 11, 12]);
    }

    #[test]
    fn damage_is_skipped_only_when_a_later_record_proves_it_durable() {
        let mut b = BytesMut::new();
        rec(&mut b, 10, 9, 0);
        let damaged_at = b.len();
        rec(&mut b, 11, 10, 1);
        rec(&mut b, 12, 10, 2); // written before 11 was known durable
        let mut torn = b.clone();
        torn[damaged_at + 60] ^= 0xff;
        // Nothing after the damage proves lsn 11 durable: a torn tail.
        assert_eq!(scanned(&torn, 9), vec![10]);

        rec(&mut b, 13, 12, 3); // written after 11 and 12 were fsync'd
        let mut corrupt = b.clone();
        corrupt[damaged_at + 60] ^= 0xff;
        assert_eq!(scanned(&corrupt, 9), vec![10, 12, 13]);
    }
}
