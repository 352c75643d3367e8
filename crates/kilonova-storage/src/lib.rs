//! Kilonova's storage layer.
//!
//! * [`SegmentStore`]: entries of many segments (ledgers) appended to a shared,
//!   preallocated, append-only journal per data directory with group commit — a completion resolves
//!   only after the `fdatasync` that covers it. Per-file indexes, CRC32C on every
//!   record, recovery that replays only what follows the last checkpoint, GC that
//!   removes or compacts dead journal files.
//! * [`ManagedLog`]: a topic's storage — an ordered list of segments with roll-over,
//!   a dense message index, durable and non-durable cursors, retention and TTL.
//! * [`EntryCache`]: bounded memory of recent entries so tailing readers skip the disk.
//!
//! This crate never knows topic names or protocols: logs are keyed by opaque ids
//! given by the broker, and entries are opaque bytes plus a small header.

mod byte_rate;
mod checkpoint;
pub mod dir_lock;
mod entry;
pub mod entry_cache;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod health;
pub mod histogram;
mod index;
mod journal;
pub mod managed_log;
mod position;
pub mod range_set;
mod reclaim;
pub mod record;
mod recovery;
mod segment_store;
pub mod state_store;
mod store;
mod store_dirs;
mod store_state;
mod trash;

pub use dir_lock::{DirLock, DirLockError};
pub use entry::{Entry, ENTRY_HEADER_LEN};
pub use entry_cache::{CacheStats, EntryCache, EvictionStrategy};
pub use error::{Result, StorageError};
pub use health::{StoreFailure, StoreHealth, StoreTrouble};
pub use histogram::{Histogram, HistogramSnapshot};
pub use journal::wake_after::{answering, wake_after_answers};
pub use managed_log::{
    AppendLane, BacklogCounts, BacklogScan, CompactedWriter, CursorInfo, CursorWrites,
    CursorsStored, InitialPosition, LaneClosed, ManagedLog, ManagedLogConfig, Offloaded,
    RestoredSegment, Retention, SegmentMeta, SegmentTier, StoredCursor, StoredSummary,
};
pub use position::{dir_of, EntryId, Position, SegmentId, MAX_DIRS};
pub use range_set::RangeSet;
pub use reclaim::{reclaim_orphans, ReclaimReport};
pub use segment_store::SegmentStore;
pub use state_store::{DirStateStore, StateStore};
pub use store::{AppendSlot, Completion, DirStore, GcReport, SegmentInfo, StoreStats};
pub use store_state::StoreConfig;
