//! Where managed logs keep their small durable state (segment lists, cursors).
//!
//! A trait rather than a directory, so that this state can move to the
//! metadata store later without touching the managed log: there it sits beside
//! the rest of a topic's metadata, where Pulsar keeps cursor positions and
//! ledger lists too. The directory backend is what standalone and tests use
//! today.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

use crate::checkpoint;
use crate::error::{Result, StorageError};

/// A durable key → value map for small values. `store` returns once the value is durable.
pub trait StateStore: Send + Sync {
    fn load(&self, key: &str) -> Result<Option<Bytes>>;
    fn store(&self, key: &str, value: &[u8]) -> Result<()>;
    fn remove(&self, key: &str) -> Result<()>;
    /// Removes `prefix` and every key under it (`prefix/...`).
    fn remove_all(&self, prefix: &str) -> Result<()>;
    /// The names of the keys directly under `prefix` (`prefix/<name>`), in no order.
    fn children(&self, prefix: &str) -> Result<Vec<String>>;
    /// The names directly under `prefix` that have keys below them
    /// (`prefix/<name>/...`), in no order.
    fn subtrees(&self, prefix: &str) -> Result<Vec<String>>;
}

/// One file per key under a directory, written atomically with a CRC.
/// Keys are `/`-separated paths of `[A-Za-z0-9._-]` components.
#[derive(Clone, Debug)]
pub struct DirStateStore {
    dir: PathBuf,
}

impl DirStateStore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageError::io("creating the state directory", e))?;
        Ok(DirStateStore { dir })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        let ok = !key.is_empty()
            && key.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        if !ok {
            return Err(StorageError::Log(format!("invalid state key {key:?}")));
        }
        Ok(self.dir.join(key))
    }

    /// Names in `prefix`'s directory whose type `keep` accepts.
    fn list(&self, prefix: &str, keep: fn(std::fs::FileType) -> bool) -> Result<Vec<String>> {
        let dir = self.path(prefix)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::io("listing a state directory", e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("listing a state directory", e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // `write_atomic` leaves `<key>.tmp` behind only if it crashed mid-write.
            if entry.file_type().is_ok_and(keep) && !name.ends_with(".tmp") {
                out.push(name);
            }
        }
        Ok(out)
    }
}

impl StateStore for DirStateStore {
    fn load(&self, key: &str) -> Result<Option<Bytes>> {
        checkpoint::read_verified(&self.path(key)?)
    }

    fn store(&self, key: &str, value: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StorageError::io("creating a state directory", e))?;
        }
        checkpoint::write_atomic(&path, BytesMut::from(value))
    }

    fn remove(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("removing a state file", e)),
        }
    }

    fn remove_all(&self, prefix: &str) -> Result<()> {
        let path = self.path(prefix)?;
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("removing state", e)),
        }
    }

    fn children(&self, prefix: &str) -> Result<Vec<String>> {
        self.list(prefix, |t| t.is_file())
    }

    fn subtrees(&self, prefix: &str) -> Result<Vec<String>> {
        self.list(prefix, |t| t.is_dir())
    }
}

/// Hex form of arbitrary text, safe as a key component.
pub fn key_component(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStateStore::open(dir.path()).unwrap();
        s.store("log/1/cursor/ab", b"hello").unwrap();
        assert_eq!(s.load("log/1/cursor/ab").unwrap().unwrap(), &b"hello"[..]);
        s.store("log/1/cursor/cd", b"x").unwrap();
        let mut names = s.children("log/1/cursor").unwrap();
        names.sort();
        assert_eq!(names, ["ab", "cd"]);
        assert!(s.children("log/2").unwrap().is_empty());
        assert_eq!(s.subtrees("log").unwrap(), ["1"]);
        assert!(s.subtrees("log/1/cursor").unwrap().is_empty());
        s.remove("log/1/cursor/ab").unwrap();
        assert_eq!(s.load("log/1/cursor/ab").unwrap(), None);
        s.store("log/1/meta", b"m").unwrap();
        s.remove_all("log/1").unwrap();
        assert_eq!(s.load("log/1/meta").unwrap(), None);
        assert!(!dir.path().join("log/1").exists());
        s.remove_all("log/1").unwrap();
        for bad in ["", "../x", "a//b", "a/../b", "a b"] {
            assert!(s.store(bad, b"x").is_err(), "{bad:?} accepted");
        }
        assert_eq!(key_component("a/b"), "612f62");
    }
}
