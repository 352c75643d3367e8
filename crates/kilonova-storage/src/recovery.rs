//! Opening a store after a clean stop or a crash.
//!
//! 1. Load `CHECKPOINT`: the segment table and the first journal file to replay.
//! 2. For each journal file before that one, load its `.idx` (no scan).
//! 3. Replay the files from there on record by record, verifying CRCs, applying
//!    creates, seals, deletes and entry locations, until the end of the log.
//!
//! Recovery time is bounded by the data written since the last checkpoint,
//! which is at most one journal file. How a file is read record by record, and
//! how damage is told from a torn tail, is in `recovery/scan.rs`.
//!
//! Dependencies point one way: `store` calls `recover` and builds its
//! `store_state` from what it returns; recovery reads only the configuration
//! from `store_state` and uses neither `store` nor `journal`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{self, Checkpoint, IdxRecord};
use crate::error::{Result, StorageError};
use crate::index::{FileState, Index, Loc, SegmentState, MAX_FILE_BYTES, MAX_FILE_NO};
use crate::position::SegmentId;
use crate::record::{RecordKind, HEADER_LEN};
use crate::store_state::StoreConfig;

mod scan;

use scan::{scan, JournalReader};

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
    let mut slots = SlotBudget::for_files(&logs);

    // 1. The checkpoint's segment table, and every journal file.
    let (mut index, expected) = open_files(dir, &cp, &logs, &mut slots)?;

    // 2. Files covered by the checkpoint: their indexes.
    for (no, path) in logs.range(..cp.replay_from_file) {
        load_index(dir, *no, path, &mut index, &mut slots)?;
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
    let mut tail = Tail {
        last_lsn: cp.next_lsn.saturating_sub(1),
        next_segment_id: cp.next_segment_id,
    };
    let (mut replayed_files, mut replayed_bytes) = (0u64, 0u64);
    for (no, path) in logs.range(cp.replay_from_file..) {
        replayed_bytes += replay_file(dir, *no, path, &mut index, &mut slots, &mut tail)?;
        replayed_files += 1;
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
    let next_lsn = tail
        .last_lsn
        .checked_add(1)
        .ok_or_else(|| StorageError::Log("journal sequence numbers exhausted".into()))?;
    Ok(Recovered {
        replayed_files,
        replayed_bytes,
        index,
        next_file_no,
        next_lsn,
        next_segment_id: tail.next_segment_id,
    })
}

/// An index holding the checkpoint's segments (with room reserved for the
/// entries it counts) and every journal file, none of their entries yet;
/// and the checkpoint's (segment, entry count) rows.
fn open_files(
    dir: &Path,
    cp: &Checkpoint,
    logs: &BTreeMap<u32, PathBuf>,
    slots: &mut SlotBudget,
) -> Result<(Index, Vec<(SegmentId, u64)>)> {
    let mut index = Index::default();
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
    for (no, path) in logs {
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
    Ok((index, expected))
}

/// Applies the entry locations of journal file `no`, which a checkpoint
/// covers, from its index file, or from a scan of the file when the index
/// is missing or unreadable.
fn load_index(
    dir: &Path,
    no: u32,
    path: &Path,
    index: &mut Index,
    slots: &mut SlotBudget,
) -> Result<()> {
    match checkpoint::read_idx(dir, no) {
        Ok(Some(records)) => {
            for r in records {
                apply_loc(index, slots, no, r);
            }
        }
        other => {
            if let Err(e) = other {
                tracing::warn!(file = no, error = %e, "journal index unreadable; scanning the file instead");
            } else {
                tracing::warn!(
                    file = no,
                    "journal index missing; scanning the file instead"
                );
            }
            let mut reader = JournalReader::new(path)?;
            let mut lsn = 0;
            scan(no, &mut reader, &mut lsn, |h, offset, payload_len| {
                if matches!(h.kind, RecordKind::Entry | RecordKind::Moved) {
                    apply_loc(
                        index,
                        slots,
                        no,
                        IdxRecord {
                            segment: h.segment,
                            entry: h.entry,
                            offset,
                            payload_len,
                        },
                    );
                }
            })?;
        }
    }
    Ok(())
}

/// Where the replay of the journal's tail has got to.
struct Tail {
    /// The newest record applied.
    last_lsn: u64,
    next_segment_id: u64,
}

/// Replays journal file `no` (after the checkpoint) record by record into
/// the index, then writes its index file; returns the file's length.
fn replay_file(
    dir: &Path,
    no: u32,
    path: &Path,
    index: &mut Index,
    slots: &mut SlotBudget,
    tail: &mut Tail,
) -> Result<u64> {
    let mut reader = JournalReader::new(path)?;
    let len = reader.len();
    let mut records = Vec::new();
    let mut written = 0u64;
    let next_segment_id = &mut tail.next_segment_id;
    scan(
        no,
        &mut reader,
        &mut tail.last_lsn,
        |h, offset, payload_len| match h.kind {
            RecordKind::Create => {
                index.segments.entry(h.segment).or_default();
                *next_segment_id = (*next_segment_id).max(h.segment.saturating_add(1));
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
                apply_loc(index, slots, no, r);
            }
        },
    )?;
    if let Some(f) = index.files.get_mut(&no) {
        f.written_entries += written;
    }
    // From now on this file is immutable: give it its index so no later start scans it.
    match checkpoint::write_idx(dir, no, &records) {
        Ok(idx_bytes) => {
            if let Some(f) = index.files.get_mut(&no) {
                f.disk_bytes += idx_bytes;
            }
        }
        // Best effort (the disk may be full): without it the file is scanned again.
        Err(e) => tracing::warn!(file = no, error = %e, "could not write a journal index"),
    }
    tracing::info!(file = no, entries = records.len(), "replayed journal file");
    Ok(len)
}

/// Journal file numbers present in `dir`, ascending.
fn list_log_files(dir: &Path) -> Result<BTreeMap<u32, PathBuf>> {
    let mut out = BTreeMap::new();
    let rd = fs::read_dir(dir).map_err(|e| StorageError::io("listing the store directory", e))?;
    for ent in rd {
        let ent = ent.map_err(|e| StorageError::io("listing the store directory", e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name.strip_suffix(".log") {
            if let Ok(no) = num.parse::<u32>() {
                out.insert(no, ent.path());
            }
        }
    }
    Ok(out)
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
