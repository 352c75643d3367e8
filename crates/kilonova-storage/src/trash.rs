//! Dead journal files past the recycled spares are deleted in the
//! background, a step at a time: a file system frees a deleted file's blocks
//! all at once, and while it does the journal's fdatasyncs wait (freeing a
//! 128 MiB file in one `unlink` held them ~25 ms on ext4; shrinking it by
//! 1 MiB per `ftruncate` first held none over 2 ms). A dead file is renamed
//! to a trash name, queued here and shrunk and unlinked by the store's
//! deleter thread; a caller that needs the space at once (a GC pass, a full
//! disk) empties the queue itself. Trash left by a crash is deleted at the
//! next open.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::{Result, StorageError};

/// Bytes a dead file shrinks by per step.
pub(crate) const DELETE_STEP_BYTES: u64 = 1 << 20;

/// Dead journal files waiting to be deleted.
#[derive(Default)]
pub(crate) struct Trash {
    state: Mutex<TrashState>,
    changed: Condvar,
}

#[derive(Default)]
struct TrashState {
    /// Queued files and their sizes.
    files: VecDeque<(PathBuf, u64)>,
    /// Files being deleted now (taken from the queue, not yet gone).
    deleting: usize,
    /// Bytes of queued files and of files being deleted.
    bytes: u64,
    /// No more files: the deleter stops once the queue is empty.
    closed: bool,
}

impl Trash {
    fn lock(&self) -> MutexGuard<'_, TrashState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renames dead journal file `path` to its trash name and queues it.
    pub(crate) fn put(&self, path: &Path, no: u32, bytes: u64) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let trash = trash_path(dir, no);
        match fs::rename(path, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(StorageError::io(
                    "moving a dead journal file to the trash",
                    e,
                ))
            }
        }
        let mut s = self.lock();
        s.files.push_back((trash, bytes));
        s.bytes += bytes;
        drop(s);
        self.changed.notify_all();
        Ok(())
    }

    /// Bytes still on disk in the trash.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Deletes every queued file on the calling thread and waits for the
    /// ones the deleter is on: their space is free on return.
    pub(crate) fn empty_now(&self) -> Result<()> {
        while let Some(file) = self.take(false) {
            self.delete(file)?;
        }
        let mut s = self.lock();
        while s.deleting > 0 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// No more files come: the deleter deletes what is queued and stops.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// The next queued file, marked as being deleted; with `wait`, blocks
    /// until there is one (`None` once closed and empty).
    fn take(&self, wait: bool) -> Option<(PathBuf, u64)> {
        let mut s = self.lock();
        loop {
            if let Some(f) = s.files.pop_front() {
                s.deleting += 1;
                return Some(f);
            }
            if !wait || s.closed {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Deletes a file [`Self::take`] gave.
    fn delete(&self, (path, bytes): (PathBuf, u64)) -> Result<()> {
        let deleted = delete_stepwise(&path);
        let mut s = self.lock();
        s.deleting -= 1;
        s.bytes = s.bytes.saturating_sub(bytes);
        drop(s);
        self.changed.notify_all();
        deleted
    }
}

/// The deleter thread's body: deletes queued files, one at a time, until
/// the trash is closed and empty.
pub(crate) fn run_deleter(trash: &Trash) {
    while let Some(file) = trash.take(true) {
        let path = file.0.clone();
        if let Err(e) = trash.delete(file) {
            // Left on disk: the next open deletes it.
            tracing::warn!(path = %path.display(), error = %e, "could not delete a dead journal file");
        }
    }
}

/// Where dead journal file `no` waits to be deleted.
fn trash_path(dir: &Path, no: u32) -> PathBuf {
    dir.join(format!("trash-{no:010}.log"))
}

/// Shrinks `path` by [`DELETE_STEP_BYTES`] at a time, then unlinks it.
fn delete_stepwise(path: &Path) -> Result<()> {
    let failed = |e| StorageError::io("deleting a dead journal file", e);
    match OpenOptions::new().write(true).open(path) {
        Ok(file) => {
            let mut len = file.metadata().map_err(failed)?.len();
            while len > DELETE_STEP_BYTES {
                len -= DELETE_STEP_BYTES;
                file.set_len(len).map_err(failed)?;
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(e)),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(failed(e)),
        _ => Ok(()),
    }
}

/// Deletes the trash a crash left in `dir` (nothing writes yet: at once).
pub(crate) fn delete_left_trash(dir: &Path) -> Result<()> {
    let listing = |e| StorageError::io("listing the store directory", e);
    for ent in fs::read_dir(dir).map_err(listing)? {
        let ent = ent.map_err(listing)?;
        let is_trash = ent
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("trash-") && n.ends_with(".log"));
        if is_trash {
            match fs::remove_file(ent.path()) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(StorageError::io("deleting a dead journal file", e))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_file_is_gone_once_the_trash_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000007.log");
        let file = fs::File::create(&path).unwrap();
        file.set_len(5 * DELETE_STEP_BYTES + 17).unwrap();
        drop(file);
        let trash = Trash::default();
        trash.put(&path, 7, 5 * DELETE_STEP_BYTES + 17).unwrap();
        assert!(!path.exists(), "moved to the trash");
        assert!(trash_path(dir.path(), 7).exists());
        assert_eq!(trash.bytes(), 5 * DELETE_STEP_BYTES + 17);
        trash.empty_now().unwrap();
        assert!(!trash_path(dir.path(), 7).exists());
        assert_eq!(trash.bytes(), 0);
    }

    #[test]
    fn the_deleter_deletes_what_is_queued_and_stops_when_closed() {
        let dir = tempfile::tempdir().unwrap();
        let trash = std::sync::Arc::new(Trash::default());
        let deleter = {
            let trash = trash.clone();
            std::thread::spawn(move || run_deleter(&trash))
        };
        for no in 0..3 {
            let path = dir.path().join(format!("{no:010}.log"));
            fs::File::create(&path)
                .unwrap()
                .set_len(3 * DELETE_STEP_BYTES)
                .unwrap();
            trash.put(&path, no, 3 * DELETE_STEP_BYTES).unwrap();
        }
        trash.close();
        deleter.join().unwrap();
        assert_eq!(trash.bytes(), 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn trash_a_crash_left_is_deleted_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "trash-0000000003.log",
            "0000000004.log",
            "spare-0000000002.log",
        ] {
            fs::File::create(dir.path().join(name)).unwrap();
        }
        delete_left_trash(dir.path()).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["0000000004.log", "spare-0000000002.log"]);
    }
}
