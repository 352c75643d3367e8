//! The storage layer's error type: one variant per thing a caller can act on.

use crate::position::{EntryId, SegmentId};

/// Errors returned by the segment store and the managed log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O error from the file system. `ENOSPC` is reported as [`StorageError::DiskFull`].
    #[error("storage I/O error during {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The disk (or its quota) is full; appends fail until space is freed.
    #[error("disk full while {context}: appends are refused until space is freed")]
    DiskFull { context: &'static str },
    /// The bytes stored for this entry failed their CRC check or could not be recovered.
    #[error("entry {segment}:{entry} is corrupt on disk ({detail})")]
    Corrupt {
        segment: SegmentId,
        entry: EntryId,
        detail: String,
    },
    /// The entry's segment lives in the object store only and the entry is
    /// not in the log's offload cache: fetch it, then read again.
    #[error("entry {segment}:{entry} is offloaded: fetch it from the object store")]
    Offloaded { segment: SegmentId, entry: EntryId },
    /// The segment does not exist (never created, or deleted).
    #[error("segment {0} does not exist")]
    NoSuchSegment(SegmentId),
    /// The entry id is beyond the segment's last durable entry.
    #[error("entry {segment}:{entry} does not exist")]
    NoSuchEntry { segment: SegmentId, entry: EntryId },
    /// Appends to a sealed segment are refused.
    #[error("segment {0} is sealed")]
    SegmentSealed(SegmentId),
    /// An earlier append to this segment failed; the segment accepts no more appends
    /// (seal it and continue in a new one) so that entry ids stay dense.
    #[error("segment {0} is fenced after a failed append")]
    SegmentFenced(SegmentId),
    /// The entry is larger than the configured maximum.
    #[error("entry of {size} bytes exceeds the limit of {max} bytes")]
    EntryTooLarge { size: usize, max: usize },
    /// A file the store depends on is malformed beyond automatic repair.
    #[error("store file {path} is invalid: {detail}")]
    InvalidFile { path: String, detail: String },
    /// The managed log has no cursor of that name.
    #[error("no cursor named {0:?}")]
    NoSuchCursor(String),
    /// The store (its journal thread) has shut down.
    #[error("the segment store is closed")]
    Closed,
    /// The log was terminated: it takes no more appends.
    #[error("the log is terminated")]
    Terminated,
    /// Another process uses the store's directory (or it cannot be locked).
    #[error(transparent)]
    Locked(#[from] crate::dir_lock::DirLockError),
    /// The configured data directories do not match what they hold (one
    /// missing, listed twice, or holding another directory's segments).
    #[error("data directories: {0}")]
    DataDirs(String),
    /// An internal failure (a poisoned lock, an invalid setting) with its description.
    #[error("{0}")]
    Log(String),
}

impl StorageError {
    /// Wraps an `io::Error`, turning `ENOSPC`/`EDQUOT` into [`StorageError::DiskFull`].
    pub fn io(context: &'static str, source: std::io::Error) -> Self {
        match source.raw_os_error() {
            Some(code)
                if code == rustix::io::Errno::NOSPC.raw_os_error()
                    || code == rustix::io::Errno::DQUOT.raw_os_error() =>
            {
                StorageError::DiskFull { context }
            }
            _ if source.kind() == std::io::ErrorKind::StorageFull => {
                StorageError::DiskFull { context }
            }
            _ => StorageError::Io { context, source },
        }
    }

    /// A copy of this error for fanning one failure out to every waiter of a batch.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            StorageError::Io { context, source } => StorageError::Io {
                context,
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StorageError::DiskFull { context } => StorageError::DiskFull { context },
            StorageError::Corrupt {
                segment,
                entry,
                detail,
            } => StorageError::Corrupt {
                segment: *segment,
                entry: *entry,
                detail: detail.clone(),
            },
            StorageError::NoSuchSegment(s) => StorageError::NoSuchSegment(*s),
            StorageError::Offloaded { segment, entry } => StorageError::Offloaded {
                segment: *segment,
                entry: *entry,
            },
            StorageError::NoSuchEntry { segment, entry } => StorageError::NoSuchEntry {
                segment: *segment,
                entry: *entry,
            },
            StorageError::SegmentSealed(s) => StorageError::SegmentSealed(*s),
            StorageError::SegmentFenced(s) => StorageError::SegmentFenced(*s),
            StorageError::EntryTooLarge { size, max } => StorageError::EntryTooLarge {
                size: *size,
                max: *max,
            },
            StorageError::InvalidFile { path, detail } => StorageError::InvalidFile {
                path: path.clone(),
                detail: detail.clone(),
            },
            StorageError::NoSuchCursor(n) => StorageError::NoSuchCursor(n.clone()),
            StorageError::Closed => StorageError::Closed,
            StorageError::Terminated => StorageError::Terminated,
            StorageError::Locked(e) => StorageError::Log(e.to_string()),
            StorageError::DataDirs(s) => StorageError::DataDirs(s.clone()),
            StorageError::Log(s) => StorageError::Log(s.clone()),
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
