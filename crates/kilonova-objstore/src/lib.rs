//! Kilonova's object-store layer and tiered storage's offload.
//!
//! * [`Bucket`]: an S3-compatible store (S3, SeaweedFS, MinIO, Ceph RGW) or a
//!   local directory, under a key prefix, with typed errors
//!   ([`ObjectStoreError`], retryable or not), multipart uploads and request
//!   metrics. Settings: [`ObjectStoreConfig`] (secrets masked).
//! * [`Offloader`]: copies a sealed segment of the [`SegmentStore`] into one
//!   object in the offloaded segment format ([`format`], ADR 0013), keyed by
//!   the log's internal id and the segment id; finds, adopts and deletes
//!   offloaded objects (orphans included).
//! * [`OffloadedReader`]: reads entries back with range requests, read-ahead
//!   and byte-bounded caches, verifying every entry's CRC32C.
//! * [`WalWriter`]: groups appends of many logs into write-ahead objects, one
//!   per flush, each append resolving once its object is durable and its
//!   flush committed ([`FlushCommit`]) ([`wal`]; cluster mode's write path);
//!   [`wal::tail`] reads a log's committed entries back.
//!
//! It sits beside the storage crate, not in it: the S3 client brings sockets
//! and an HTTP stack, which the storage crate must not (scripts/check-layering).
//! It never knows topic names: logs are opaque ids, as in the storage crate.
//!
//! [`SegmentStore`]: kilonova_storage::SegmentStore

mod bucket;
mod config;
mod error;
pub mod format;
mod lru;
mod metrics;
mod offload;
mod reader;
#[cfg(feature = "test-support")]
pub mod seaweed;
pub mod wal;

pub use bucket::{Bucket, ObjectInfo, Upload};
pub use config::{validate_bucket, Credentials, Driver, ObjectStoreConfig, Secret, MASK};
pub use error::{ObjectStoreError, Result};
pub use metrics::{Metrics, MetricsSnapshot, Request};
pub use offload::{OffloadConfig, OffloadedSegment, Offloader, OrphanReport, MIN_PART_BYTES};
pub use reader::{OffloadedReader, ReaderCacheStats, ReaderConfig};
pub use wal::{
    CommitError, FlushCommit, FlushEntry, FlushSummary, WalConfig, WalPosition, WalReader,
    WalStats, WalWriter,
};
