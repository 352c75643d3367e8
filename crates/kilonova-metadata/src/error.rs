//! The metadata layer's errors. Edges map them: `NotFound` → 404,
//! `AlreadyExists` / `BadVersion` → 409, `Precondition` → 412, `Invalid` → 400,
//! `Unavailable` → 503 (Pulsar's ServiceNotReady: clients retry).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum MetadataError {
    /// A conditional write found another version (or presence) than it expected.
    #[error("{key} changed concurrently (expected {expected}, found {found})")]
    BadVersion {
        key: String,
        expected: String,
        found: String,
    },
    #[error("invalid metadata key {0:?}")]
    InvalidKey(String),
    #[error("session {0} is unknown or expired")]
    SessionExpired(u64),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The state forbids the change (e.g. deleting a namespace that still has topics).
    #[error("{0}")]
    Precondition(String),
    /// A value out of range or of the wrong form.
    #[error("{0}")]
    Invalid(String),
    /// The backend failed (I/O, corruption, an answer it cannot read).
    #[error("metadata store: {0}")]
    Backend(String),
    /// The backend cannot be reached now (a remote store down, partitioned
    /// away or not answering in time): worth retrying later. A write that
    /// failed this way may or may not have happened.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("the metadata store is closed")]
    Closed,
}

pub type Result<T, E = MetadataError> = std::result::Result<T, E>;
