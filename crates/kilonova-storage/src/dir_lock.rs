//! An exclusive, advisory lock on a directory, held for as long as a process
//! uses it.
//!
//! Two processes writing one store destroy acknowledged data: the second one's
//! recovery rewrites the checkpoint under the first one's feet. So every
//! opener of a data directory takes this lock *before* it reads or writes
//! anything in it, and refuses to go on if another process holds it.
//!
//! The lock is `flock(2)` on a `LOCK` file in the directory: the kernel drops it
//! when the process dies (kill -9 included), so a crashed process never leaves
//! a stale lock behind. The file holds the owner's pid, for the error message only.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// The lock file's name inside a locked directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    /// Another process holds the lock.
    #[error("another kilonova ({holder}) is using {}", dir.display())]
    Held { dir: PathBuf, holder: String },
    /// The directory or its lock file could not be created or opened.
    #[error("cannot lock {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Holds the lock on a directory until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    // Holding the open file holds the lock.
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, or says which process holds it.
    pub fn acquire(dir: impl AsRef<Path>) -> Result<DirLock, DirLockError> {
        let dir = dir.as_ref().to_path_buf();
        let io = |source| DirLockError::Io {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE_NAME))
            .map_err(io)?;
        if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "another process".to_string(),
                };
                return Err(DirLockError::Held { dir, holder });
            }
            return Err(io(e.into()));
        }
        // Ours now: record who we are (best effort; the lock is what counts).
        let pid = std::process::id();
        let recorded = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()));
        if let Err(e) = recorded {
            tracing::warn!(dir = %dir.display(), error = %e, "could not record the lock holder's pid");
        }
        Ok(DirLock { dir, _file: file })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_locked_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in the
        // same process conflicts just as another process would.
        let err = DirLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        drop(first);
        DirLock::acquire(dir.path()).expect("free again once the holder dropped it");
    }

    #[test]
    fn a_missing_directory_is_created_and_locked() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let lock = DirLock::acquire(&nested).unwrap();
        assert_eq!(lock.dir(), nested);
        assert!(nested.join(LOCK_FILE_NAME).exists());
    }
}
