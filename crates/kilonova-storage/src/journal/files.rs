//! Journal files: creating one (or taking a recycled one) preallocated to its
//! size, removing (or recycling) the ones no live entry is left in, and the
//! space reserve that lets a full disk still take the control records
//! (deletes) that free space.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::index::{FileState, MAX_FILE_NO};
use crate::store_state::{GcReport, StoreState};

use super::{ActiveFile, CONTROL_RESERVE_BYTES};

/// Journal file `no` of the control reserve's size, for control records only:
/// what the disk has room for when a whole file does not fit. On a disk full to
/// the last block the store's reserve file gives its space up for it.
pub(super) fn create_control_file(shared: &StoreState, no: u32) -> Result<ActiveFile> {
    let made = match create_file(shared, no, CONTROL_RESERVE_BYTES, Space::Allocated) {
        Err(StorageError::DiskFull { .. }) if release_reserve(&shared.config.dir) => {
            create_file(shared, no, CONTROL_RESERVE_BYTES, Space::Allocated)
        }
        other => other,
    };
    if made.is_ok() {
        tracing::warn!(
            file = no,
            "disk full: journal file {no} takes control records (deletes) only"
        );
    }
    made
}

/// Space the store sets aside (`RESERVE`, the size of a file's control reserve)
/// while it has room, given up on a disk full to the last block so that a
/// control file can still be created and segments deleted.
pub(crate) fn reserve_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("RESERVE")
}

/// Creates the reserve file if it is missing.
pub(crate) fn ensure_reserve(dir: &std::path::Path) -> Result<()> {
    let path = reserve_path(dir);
    let file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(StorageError::io("creating the space reserve", e)),
    };
    if let Err(e) = rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::empty(),
        0,
        CONTROL_RESERVE_BYTES,
    ) {
        let _ = std::fs::remove_file(&path);
        let err = std::io::Error::from_raw_os_error(e.raw_os_error());
        return Err(StorageError::io("preallocating the space reserve", err));
    }
    Ok(())
}

/// Gives the reserve's space back to the file system; whether there was one.
fn release_reserve(dir: &std::path::Path) -> bool {
    let released = std::fs::remove_file(reserve_path(dir)).is_ok();
    if released {
        tracing::warn!("disk full: released the store's space reserve for control records");
    }
    released
}

/// How a new journal file's space is made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Space {
    /// `fallocate` only: at once, for a file the writer needs now.
    Allocated,
    /// Allocated, then written with zeros ([`super::direct::fill_with_zeros`]):
    /// for a file made ahead of need, so appends write into written blocks.
    Written,
}

/// Creates (or takes from the recycled spares) journal file `no`, preallocated
/// to `len` bytes, its directory entry durable, registered in the index. A
/// recycled file's blocks are written already.
pub(super) fn create_file(
    shared: &StoreState,
    no: u32,
    len: u64,
    space: Space,
) -> Result<ActiveFile> {
    {
        if no > MAX_FILE_NO {
            return Err(StorageError::Log("journal file numbers exhausted".into()));
        }
        let dir = &shared.config.dir;
        let path = checkpoint::log_path(dir, no);
        let spare = shared.spares.lock().ok().and_then(|mut s| s.pop());
        let recycled = spare.is_some();
        let file = match spare {
            // Reuse a recycled file: its blocks are allocated already.
            Some((spare, _)) => {
                std::fs::rename(&spare, &path)
                    .map_err(|e| StorageError::io("reusing a recycled journal file", e))?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StorageError::io("opening a recycled journal file", e))?
            }
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| StorageError::io("creating a journal file", e))?,
        };
        // Preallocate so appends do not grow the file (a recycled file usually has its size).
        let size = file
            .metadata()
            .map_err(|e| StorageError::io("reading a journal file's size", e))?
            .len();
        if size < len {
            if let Err(e) =
                rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)
            {
                let _ = std::fs::remove_file(&path);
                let err = std::io::Error::from_raw_os_error(e.raw_os_error());
                return Err(StorageError::io("preallocating a journal file", err));
            }
        }
        if space == Space::Written && !recycled && shared.config.direct_io {
            match super::direct::fill_with_zeros(&path, len) {
                Ok(true) => {
                    tracing::debug!(file = no, bytes = len, "journal file written with zeros")
                }
                Ok(false) => {}
                // Appends into unwritten space are slower, not less safe.
                Err(e) => {
                    tracing::warn!(file = no, error = %e, "could not write a journal file with zeros: appends into it are slower")
                }
            }
        }
        checkpoint::sync_dir(dir)?;
        let handle = Arc::new(file);
        {
            let mut index = shared
                .index
                .write()
                .map_err(|_| StorageError::Log("index lock poisoned".into()))?;
            index.files.insert(
                no,
                FileState {
                    handle: handle.clone(),
                    disk_bytes: len,
                    live_entries: 0,
                    written_entries: 0,
                    checkpointed: false,
                },
            );
        }
        tracing::debug!(file = no, bytes = len, "opened journal file");
        if len == shared.config.log_file_bytes {
            // Space is back (or never left): set the reserve aside again.
            if let Err(e) = ensure_reserve(dir) {
                tracing::debug!(error = %e, "could not set the space reserve aside");
            }
        }
        let direct = if shared.config.direct_io {
            super::direct::open(&path)
        } else {
            None
        };
        Ok(ActiveFile {
            no,
            handle,
            direct,
            pos: 0,
            len,
            broken: false,
        })
    }
}

/// Like [`create_file`], but on a full disk it first gives back the space of
/// dead journal files (waiting at most `wait` for the checkpoints of files
/// sealed before, which only then can go) and tries once more: an append is
/// refused for a full disk only when nothing dead is left to reclaim.
///
/// For the writer: the checkpointer reclaims before every file it prepares
/// (and must not wait for the checkpoints it writes itself).
pub(super) fn create_file_reclaiming(
    shared: &StoreState,
    no: u32,
    len: u64,
    wait: Duration,
) -> Result<ActiveFile> {
    match create_file(shared, no, len, Space::Allocated) {
        Err(full @ StorageError::DiskFull { .. }) => {
            shared.seals.wait_caught_up(wait);
            let mut report = GcReport::default();
            let trashed = shared.trash.bytes();
            remove_dead_files(shared, &mut report)?;
            shared.trash.empty_now()?;
            if report.files_removed + report.files_recycled == 0 && trashed == 0 {
                return Err(full);
            }
            tracing::info!(
                file = no,
                removed = report.files_removed,
                recycled = report.files_recycled,
                "disk full: reclaimed dead journal files before making the next one"
            );
            create_file(shared, no, len, Space::Allocated)
        }
        other => other,
    }
}

/// Reclaims dead journal files now, before the next file is made: called
/// at each roll, so the next file can be a recycled one (its blocks already
/// written: cheaper to write again than fresh preallocated space) and a
/// writer outrunning the periodic GC does not fill the disk with files that
/// hold nothing live.
pub(super) fn reclaim_dead_files(shared: &StoreState) {
    let mut report = GcReport::default();
    match remove_dead_files(shared, &mut report) {
        Ok(()) if report.files_removed + report.files_recycled > 0 => tracing::debug!(
            removed = report.files_removed,
            recycled = report.files_recycled,
            "reclaimed dead journal files at a roll"
        ),
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, "could not reclaim dead journal files"),
    }
}

/// Removes (or keeps for reuse, up to `recycle_files`) the sealed,
/// checkpointed journal files that hold no live entry. Removed files go to
/// the store's trash, deleted in the background ([`crate::trash`]).
pub(crate) fn remove_dead_files(shared: &StoreState, report: &mut GcReport) -> Result<()> {
    let active = shared.active_file.load(Ordering::Acquire);
    let dead: Vec<(u32, u64)> = {
        let mut index = shared
            .index
            .write()
            .map_err(|_| StorageError::Log("index lock poisoned".into()))?;
        let dead: Vec<(u32, u64)> = index
            .files
            .iter()
            .filter(|(no, f)| **no != active && f.checkpointed && f.live_entries == 0)
            .map(|(no, f)| (*no, f.disk_bytes))
            .collect();
        for (no, _) in &dead {
            index.files.remove(no);
        }
        dead
    };
    let dir = &shared.config.dir;
    let remove = |path: &Path| match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("removing a journal file", e)),
    };
    for (no, bytes) in dead {
        // The index goes first: a log without its index is scanned, an index
        // without its log is ignored; either way nothing stale is trusted.
        remove(&checkpoint::idx_path(dir, no))?;
        let log = checkpoint::log_path(dir, no);
        let keep = shared
            .spares
            .lock()
            .map(|s| s.len() < shared.config.recycle_files)
            .unwrap_or(false);
        if keep {
            // Its stale records carry older lsns than anything written after
            // reuse, so a scan of the reused file stops at them (ADR 0001).
            let spare = spare_path(dir, no);
            fs::rename(&log, &spare)
                .map_err(|e| StorageError::io("recycling a journal file", e))?;
            let size = fs::metadata(&spare).map_or(bytes, |m| m.len());
            if let Ok(mut s) = shared.spares.lock() {
                s.push((spare, size));
            }
            report.files_recycled += 1;
            tracing::debug!(file = no, "recycled dead journal file");
        } else {
            // Deleted in the background, a step at a time (crate::trash).
            shared.trash.put(&log, no, bytes)?;
            report.files_removed += 1;
            report.bytes_freed += bytes;
            tracing::debug!(file = no, bytes, "dead journal file to the trash");
        }
    }
    Ok(())
}

/// Where dead journal file `no` waits for reuse.
pub(crate) fn spare_path(dir: &Path, no: u32) -> PathBuf {
    dir.join(format!("spare-{no:010}.log"))
}
