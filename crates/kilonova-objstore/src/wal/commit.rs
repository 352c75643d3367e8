//! The flush commit: after a write-ahead object is durable, and before any
//! of its appends is acknowledged, the writer hands a summary of the flush
//! to a [`FlushCommit`] — in cluster mode, one metadata transaction
//! recording which topics' entries the object holds, guarded by the
//! ownership epochs of the bundles they belong to (issue #26). This crate
//! knows neither topics nor metadata: logs are opaque ids, and what a
//! commit records is the committer's business.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One entry of a flush, in the order appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushEntry {
    /// The log the entry was appended to.
    pub log: u64,
    /// The caller's number for the entry ([`super::WalWriter::append_tagged`]):
    /// its index in its log, so a reader can check it has every entry.
    pub tag: u64,
    /// The entry's place in the object (0-based).
    pub index: u32,
    /// The entry's bytes.
    pub bytes: u32,
}

/// What one flush wrote: the object and every entry in it, in append order
/// (so in each log's order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushSummary {
    /// The object's full key in the bucket.
    pub object: Arc<str>,
    /// The writer's incarnation (part of the key).
    pub incarnation: Arc<str>,
    /// The object's sequence number (per writer, from 1): commits arrive in
    /// this order.
    pub sequence: u64,
    pub entries: Vec<FlushEntry>,
}

/// Why a flush commit failed. Every append of the flush fails with it
/// ([`crate::ObjectStoreError::FlushCommit`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The writer's broker no longer owns a bundle the flush touches (its
    /// ownership expired, was released or taken at a higher epoch): nothing
    /// was recorded, and nothing it commits for that bundle ever will be.
    /// Its topics must be given up, not retried here.
    #[error("deposed: {0}")]
    Deposed(String),
    /// The metadata store could not be reached or did not answer in time.
    /// The commit may or may not have been recorded: before appending to the
    /// same topics again, the caller must find out (re-read the records) or
    /// give them up.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// The commit was refused and recorded nothing (a flush too large for
    /// one metadata transaction, records that cannot be built).
    #[error("refused: {0}")]
    Refused(String),
}

impl CommitError {
    /// Whether the writer's broker lost a bundle the flush touches.
    pub fn is_deposed(&self) -> bool {
        matches!(self, CommitError::Deposed(_))
    }
}

/// A boxed commit future (the trait stays object safe).
pub type CommitFuture<'a> = Pin<Box<dyn Future<Output = Result<(), CommitError>> + Send + 'a>>;

/// Records a durable flush. The writer calls it once per flush, after the
/// object is durable and before any append of the flush resolves, one call
/// at a time in sequence order; an append resolves `Ok` only if it returns
/// `Ok`.
pub trait FlushCommit: Send + Sync + 'static {
    fn commit<'a>(&'a self, flush: &'a FlushSummary) -> CommitFuture<'a>;
}
