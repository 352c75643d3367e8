//! The object-store layer's error type: one variant per thing a caller can act on.

use kilonova_storage::{EntryId, SegmentId, StorageError};

/// Errors of the object-store layer and of offload.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// The settings are unusable (a bad bucket name, missing credentials).
    #[error("object store settings: {0}")]
    Config(String),
    /// The store could not be reached or answered with a server-side error
    /// (connection refused, timeout, 5xx, throttling) after the configured
    /// retries. Nothing was referenced: trying again later is safe.
    #[error("object store unavailable during {op} of {key:?} (retry later): {detail}")]
    Unavailable {
        op: &'static str,
        key: String,
        detail: String,
    },
    /// The store refused the request (credentials, permissions, a missing
    /// bucket): retrying will not help until the settings or the store change.
    #[error("object store refused {op} of {key:?}: {detail}")]
    Refused {
        op: &'static str,
        key: String,
        detail: String,
    },
    /// No object under this key.
    #[error("object {key:?} not found")]
    NotFound { key: String },
    /// A create-only write found an object under the key already.
    #[error("object {key:?} already exists")]
    AlreadyExists { key: String },
    /// An offloaded object's bytes do not match its checksums or its format.
    #[error("offloaded object {key:?} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    /// An entry id past the offloaded segment's last entry.
    #[error("entry {entry} is outside offloaded object {key:?} (it holds {entries} entries)")]
    NoSuchEntry {
        key: String,
        entry: EntryId,
        entries: u64,
    },
    /// Only sealed segments are offloaded: their entries no longer change.
    #[error("segment {0} is not sealed: only sealed segments can be offloaded")]
    NotSealed(SegmentId),
    /// Reading the segment from the local store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A write-ahead object is durable but its flush commit failed
    /// ([`crate::wal::FlushCommit`]): its appends are not acknowledged.
    /// [`crate::wal::CommitError::Deposed`] says the writer's broker lost a
    /// bundle; [`crate::wal::CommitError::Unavailable`] that the metadata
    /// store could not be reached (the commit may have landed).
    #[error("the flush commit of write-ahead object {key:?} failed: {error}")]
    FlushCommit {
        key: String,
        error: crate::wal::CommitError,
    },
    /// The log had entries in a failed write-ahead flush (a writer with a
    /// flush commit): its appends are refused until the caller resumes it
    /// (`WalWriter::resume_log`), having settled what was committed.
    #[error("log {log} is halted after a failed write-ahead flush (resume it first)")]
    LogHalted { log: u64 },
    /// Any other failure of the store (an I/O error of the filesystem driver,
    /// an unexpected answer).
    #[error("object store {op} of {key:?} failed: {detail}")]
    Failed {
        op: &'static str,
        key: String,
        detail: String,
    },
}

impl ObjectStoreError {
    /// Whether the same request may succeed later without any change on our
    /// side (the store was down, slow or overloaded).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ObjectStoreError::Unavailable { .. })
    }

    /// Classifies an `object_store` error of operation `op` on `key`.
    pub(crate) fn from_store(op: &'static str, key: &str, e: object_store::Error) -> Self {
        let key = key.to_string();
        match &e {
            object_store::Error::NotFound { .. } => return ObjectStoreError::NotFound { key },
            object_store::Error::AlreadyExists { .. } => {
                return ObjectStoreError::AlreadyExists { key }
            }
            object_store::Error::Precondition { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::PermissionDenied { .. } => {
                return ObjectStoreError::Refused {
                    op,
                    key,
                    detail: e.to_string(),
                }
            }
            _ => {}
        }
        let detail = e.to_string();
        let class = transport_class(&e).or_else(|| match &e {
            // An S3 answer with an error status that object_store maps to no
            // variant of its own: its status is only in the message.
            object_store::Error::Generic { store: "S3", .. } => Some(status_class(&detail)),
            _ => None,
        });
        match class {
            Some(Class::Transient) => ObjectStoreError::Unavailable { op, key, detail },
            Some(Class::Refused) => ObjectStoreError::Refused { op, key, detail },
            None => ObjectStoreError::Failed { op, key, detail },
        }
    }
}

pub type Result<T, E = ObjectStoreError> = std::result::Result<T, E>;

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Transient,
    Refused,
}

/// A transport failure (connect, send, timeout, interrupted) in the error's
/// source chain is transient; `None` when there is none.
fn transport_class(e: &(dyn std::error::Error + 'static)) -> Option<Class> {
    use object_store::client::HttpErrorKind as K;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<object_store::client::HttpError>() {
            return match h.kind() {
                K::Connect | K::Request | K::Timeout | K::Interrupted => Some(Class::Transient),
                _ => None,
            };
        }
        cur = err.source();
    }
    None
}

/// An HTTP error status found in an S3 error's message ("... status code:
/// 503 ..."): 5xx, 408 and 429 are transient, other statuses refusals.
/// Without a status (an error body in a 200 answer, which S3 sends for
/// internal errors) it is transient.
fn status_class(message: &str) -> Class {
    let status = message
        .split("status code: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => Class::Refused,
        _ => Class::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_in_s3_messages_are_classified() {
        let msg = |s: &str| {
            format!("Error performing PUT http://x/b/k in 2ms - Server returned non-2xx status code: {s}: <Error/>")
        };
        assert_eq!(
            status_class(&msg("503 Service Unavailable")),
            Class::Transient
        );
        assert_eq!(
            status_class(&msg("500 Internal Server Error")),
            Class::Transient
        );
        assert_eq!(
            status_class(&msg("429 Too Many Requests")),
            Class::Transient
        );
        assert_eq!(status_class(&msg("400 Bad Request")), Class::Refused);
        assert_eq!(
            status_class("Server returned error response: <InternalError/>"),
            Class::Transient
        );
    }

    #[test]
    fn not_found_and_permission_errors_keep_their_meaning() {
        let e = ObjectStoreError::from_store(
            "get",
            "k",
            object_store::Error::NotFound {
                path: "k".into(),
                source: "gone".into(),
            },
        );
        assert!(matches!(e, ObjectStoreError::NotFound { .. }));
        let e = ObjectStoreError::from_store(
            "put",
            "k",
            object_store::Error::PermissionDenied {
                path: "k".into(),
                source: "no".into(),
            },
        );
        assert!(matches!(e, ObjectStoreError::Refused { .. }) && !e.is_retryable());
    }
}
