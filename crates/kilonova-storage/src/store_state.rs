//! The segment store's shared state: its configuration, the in-memory index
//! of every live entry, activity counters, recycled journal files, seal
//! progress and health — what the journal's threads and the store's readers
//! all see, behind one `Arc`.
//!
//! Dependencies point one way: `store` opens the store with `recovery` and
//! runs it with `journal`; all three use this module, and it uses none of
//! them (nor do `journal` and `recovery` use each other).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Duration;

use crate::health::HealthState;
use crate::histogram::{Histogram, COUNT_BOUNDS, MICROS_BOUNDS, STAGE_MICROS_BOUNDS};
use crate::index::Index;
use crate::record;
use crate::trash::Trash;

/// Settings of a segment store. Units are in the names.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory holding the journal files, their indexes and the checkpoint.
    pub dir: PathBuf,
    /// Further data directories, each with a journal of its own (one per
    /// disk); a log's segments stay in one of them (`segment_store.rs`).
    pub more_dirs: Vec<PathBuf>,
    /// Size each journal file is preallocated to.
    pub log_file_bytes: u64,
    /// Largest entry accepted.
    pub max_entry_bytes: usize,
    /// A group closes once it holds this many payload bytes.
    pub group_commit_max_bytes: usize,
    /// How long a group may wait for more appends before it is written (0: write at once;
    /// appends that arrive during an fdatasync still share the next one).
    pub group_commit_max_delay_us: u64,
    /// Requests the journal queue holds before appenders wait.
    pub queue_depth: usize,
    /// GC compacts a sealed file when its live entries fall below this fraction.
    pub compaction_live_ratio: f64,
    /// Dead journal files GC keeps (renamed) for reuse instead of deleting. Writing
    /// into a recycled file overwrites blocks the file system has already allocated,
    /// which on ext4 costs about half of appending to fresh space (docs/benchmarks.md).
    pub recycle_files: usize,
    /// The most compaction copies through the journal per second, so moving
    /// live entries out of mostly-dead files never takes the appenders'
    /// bandwidth (0: unlimited). Bursts of a tenth of a second's worth.
    pub gc_max_bytes_per_sec: u64,
    /// Journal writes bypass the page cache (`O_DIRECT`, where the file
    /// system supports it): no copy of every entry into the page cache.
    pub direct_io: bool,
    /// A journal file made ahead of need is written with zeros (not only
    /// allocated, whose unwritten extents cost every fdatasync a metadata
    /// write) when the file before it lasted at least this long, so the
    /// zeros stay a small share of the disk's writes. `None`: never.
    pub zero_fill_after: Option<std::time::Duration>,
}

impl StoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            dir: dir.into(),
            more_dirs: Vec::new(),
            log_file_bytes: 128 << 20,
            max_entry_bytes: 8 << 20,
            group_commit_max_bytes: 4 << 20,
            group_commit_max_delay_us: 0,
            queue_depth: 16_384,
            compaction_live_ratio: 0.2,
            recycle_files: 16,
            gc_max_bytes_per_sec: 64 << 20,
            direct_io: true,
            zero_fill_after: Some(std::time::Duration::from_secs(10)),
        }
    }

    pub(crate) fn max_record_bytes(&self) -> usize {
        record::encoded_len(self.max_entry_bytes)
    }
}

/// Counters of the store's activity (monotonic).
#[derive(Debug)]
pub(crate) struct Stats {
    pub fsyncs: AtomicU64,
    pub groups: AtomicU64,
    pub bytes_written: AtomicU64,
    pub entries_appended: AtomicU64,
    pub write_errors: AtomicU64,
    /// Time the journal thread spent in write + fdatasync, and handling groups in all.
    pub sync_ns: AtomicU64,
    pub busy_ns: AtomicU64,
    /// Duration of each journal fdatasync, µs.
    pub fsync_us: Histogram,
    /// Entries made durable by each fdatasync (a group commit).
    pub group_commit_entries: Histogram,
    /// Each append's stages, µs: queued → its group written (queue, encode,
    /// `pwrite`), and written → the fdatasync covering it done.
    pub append_written_us: Histogram,
    pub append_durable_us: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            fsyncs: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            entries_appended: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            sync_ns: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            fsync_us: Histogram::new(MICROS_BOUNDS),
            group_commit_entries: Histogram::new(COUNT_BOUNDS),
            append_written_us: Histogram::new(STAGE_MICROS_BOUNDS),
            append_durable_us: Histogram::new(STAGE_MICROS_BOUNDS),
        }
    }
}

/// What the journal's threads and the store's readers share.
pub(crate) struct StoreState {
    pub config: StoreConfig,
    pub index: RwLock<Index>,
    pub stats: Stats,
    pub active_file: AtomicU32,
    /// What the last open replayed: (journal files, bytes).
    pub recovery: (u64, u64),
    /// Recycled journal files waiting for reuse: (path, bytes).
    pub spares: Mutex<Vec<(PathBuf, u64)>>,
    pub seals: SealProgress,
    /// The last write failure, until an append next succeeds.
    pub health: HealthState,
    /// Dead journal files past the spares, being deleted in the background.
    pub trash: Trash,
    /// Bumped after a segment is sealed, fenced or removed in the index: a
    /// log checks its current segment's state in the index (under its lock)
    /// only when this moved since its last look.
    pub segments_closed: AtomicU64,
}

impl StoreState {
    /// A segment was sealed, fenced or removed (call after the index says so).
    pub fn segment_closed(&self) {
        self.segments_closed.fetch_add(1, Ordering::Release);
    }
}

/// Journal files sealed by the writer and checkpointed (in the background) so
/// far: GC may only take checkpointed files, so it first lets the
/// checkpointer catch up with what was sealed before it was called.
#[derive(Default)]
pub(crate) struct SealProgress {
    /// (sealed, checkpointed or given up on)
    counts: Mutex<(u64, u64)>,
    changed: Condvar,
}

impl SealProgress {
    pub fn sealed(&self) {
        if let Ok(mut c) = self.counts.lock() {
            c.0 += 1;
        }
    }

    pub fn checkpointed(&self) {
        if let Ok(mut c) = self.counts.lock() {
            c.1 += 1;
        }
        self.changed.notify_all();
    }

    /// Waits, at most `limit`, until every file sealed before the call is checkpointed.
    pub fn wait_caught_up(&self, limit: Duration) {
        let Ok(counts) = self.counts.lock() else {
            return;
        };
        let target = counts.0;
        let _ = self
            .changed
            .wait_timeout_while(counts, limit, |c| c.1 < target);
    }
}

/// What one GC pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Dead journal files deleted (their space returned to the file system).
    pub files_removed: u64,
    /// Dead journal files kept for reuse by the next roll.
    pub files_recycled: u64,
    pub bytes_freed: u64,
    pub entries_moved: u64,
    /// Bytes compaction copied (records, headers included).
    pub bytes_moved: u64,
    /// Time compaction waited to stay within `gc_max_bytes_per_sec`.
    pub throttled: Duration,
}

impl GcReport {
    /// Adds what another pass (another directory's) did.
    pub(crate) fn add(&mut self, o: &GcReport) {
        self.files_removed += o.files_removed;
        self.files_recycled += o.files_recycled;
        self.bytes_freed += o.bytes_freed;
        self.entries_moved += o.entries_moved;
        self.bytes_moved += o.bytes_moved;
        self.throttled += o.throttled;
    }
}

#[cfg(test)]
mod tests {
    /// Whether `source` names module `module` of this crate.
    fn uses(source: &str, module: &str) -> bool {
        [
            format!("crate::{module}::"),
            format!("crate::{module};"),
            format!("crate::{module}}}"),
            format!("crate::{{{module}"),
        ]
        .iter()
        .any(|p| source.contains(p.as_str()))
    }

    /// The direction the module headers describe, checked: the journal and
    /// recovery reach the store only through this module, and this module
    /// reaches none of the three.
    #[test]
    fn journal_and_recovery_use_neither_the_store_nor_each_other() {
        let journal = [
            include_str!("journal.rs"),
            include_str!("journal/files.rs"),
            include_str!("journal/syncer.rs"),
        ];
        for source in journal {
            assert!(!uses(source, "store") && !uses(source, "recovery"));
        }
        let recovery = [
            include_str!("recovery.rs"),
            include_str!("recovery/scan.rs"),
        ];
        for source in recovery {
            assert!(!uses(source, "store") && !uses(source, "journal"));
        }
        let this = include_str!("store_state.rs");
        for module in ["store", "journal", "recovery"] {
            assert!(!uses(this, module), "store_state uses crate::{module}");
        }
        let store = include_str!("store.rs");
        assert!(uses(store, "journal"), "the check itself is broken");
    }
}
