//! Journal files: creating one (or taking a recycled one) preallocated to its
//! size, and the space reserve that lets a full disk still take the control
//! records (deletes) that free space.

use std::fs::OpenOptions;
use std::sync::Arc;

use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::index::{FileState, MAX_FILE_NO};
use crate::store_state::StoreState;

use super::{ActiveFile, CONTROL_RESERVE_BYTES};

/// Journal file `no` of the control reserve's size, for control records only:
/// what the disk has room for when a whole file does not fit. On a disk full to
/// the last block the store's reserve file gives its space up for it.
pub(super) fn create_control_file(shared: &StoreState, no: u32) -> Result<ActiveFile> {
    let made = match create_file(shared, no, CONTROL_RESERVE_BYTES) {
        Err(StorageError::DiskFull { .. }) if release_reserve(&shared.config.dir) => {
            create_file(shared, no, CONTROL_RESERVE_BYTES)
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

/// Creates (or takes from the recycled spares) journal file `no`, preallocated
/// to `len` bytes, its directory entry durable, registered in the index.
pub(super) fn create_file(shared: &StoreState, no: u32, len: u64) -> Result<ActiveFile> {
    {
        if no > MAX_FILE_NO {
            return Err(StorageError::Log("journal file numbers exhausted".into()));
        }
        let dir = &shared.config.dir;
        let path = checkpoint::log_path(dir, no);
        let spare = shared.spares.lock().ok().and_then(|mut s| s.pop());
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
