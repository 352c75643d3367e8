//! The segment store: one journal per data directory, one store.
//!
//! [`SegmentStore`] opens every configured directory (`store_dirs` says
//! which is which; each recovers on its own thread) and routes each
//! operation by the segment's id, whose top bits are its directory's number.
//! A log's new segments go to the directory of its last one, or, for a new
//! log, to directory `log id mod n`: topics spread over the disks and each
//! stays on one, so its reads and its appends' fdatasyncs hit one disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::dir_lock::DirLock;
use crate::error::{Result, StorageError};
use crate::health::StoreHealth;
use crate::histogram::HistogramSnapshot;
use crate::position::{self, EntryId, SegmentId, MAX_DIRS};
use crate::store::{AppendSlot, Completion, DirStore, GcReport, SegmentInfo, StoreStats};
use crate::store_dirs;
use crate::store_state::StoreConfig;

/// A durable store of segments over one or more data directories. Cheap to
/// share (`Arc` inside); all methods take `&self`.
///
/// Appends are enqueued in call order per segment and complete only after the
/// fdatasync that covers them. Reads see only durable entries.
#[derive(Clone)]
pub struct SegmentStore {
    dirs: Arc<[DirStore]>,
    /// Position in `dirs` of each directory number (`u8::MAX`: none).
    by_number: Arc<[u8; MAX_DIRS]>,
    config: Arc<StoreConfig>,
    /// New segments get ids from here up within their directory's range
    /// ([`SegmentStore::raise_segment_ids`]).
    segment_id_floor: Arc<AtomicU64>,
}

impl SegmentStore {
    /// Opens (creating or recovering) the store in `config.dir` and
    /// `config.more_dirs`, each directory recovered on its own thread.
    pub fn open(config: StoreConfig) -> Result<Self> {
        crate::store::validate(&config)?;
        let paths: Vec<PathBuf> = std::iter::once(config.dir.clone())
            .chain(config.more_dirs.iter().cloned())
            .collect();
        // Before anything is read or written: another process's store in a
        // directory would have its checkpoint rewritten under it.
        let locks = paths
            .iter()
            .map(DirLock::acquire)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let numbers = store_dirs::assign(&paths)?;
        let opened: Vec<Result<DirStore>> = std::thread::scope(|s| {
            let handles: Vec<_> = paths
                .iter()
                .zip(numbers.iter().copied())
                .zip(locks)
                .map(|((path, number), lock)| {
                    let mut c = config.clone();
                    c.dir = path.clone();
                    c.more_dirs.clear();
                    s.spawn(move || DirStore::open(c, number, lock))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(StorageError::Log("recovery panicked".into())))
                })
                .collect()
        });
        let mut dirs = Vec::with_capacity(opened.len());
        let mut failure = None;
        for d in opened {
            match d {
                Ok(d) => dirs.push(d),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            // The directories that did open stop cleanly (and let go of their locks).
            for d in &dirs {
                let _ = d.close();
            }
            return Err(e);
        }
        let mut by_number = [u8::MAX; MAX_DIRS];
        for (i, d) in dirs.iter().enumerate() {
            by_number[usize::from(d.number())] = i as u8;
        }
        Ok(SegmentStore {
            dirs: dirs.into(),
            by_number: Arc::new(by_number),
            config: Arc::new(config),
            segment_id_floor: Arc::default(),
        })
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Its data directories, in configured order.
    pub fn dirs(&self) -> &[DirStore] {
        &self.dirs
    }

    /// The position in `dirs` of the directory holding `segment`.
    fn position_of(&self, segment: SegmentId) -> Option<usize> {
        let i = *self.by_number.get(usize::from(position::dir_of(segment)))?;
        (usize::from(i) < self.dirs.len()).then_some(usize::from(i))
    }

    fn dir(&self, segment: SegmentId) -> Result<&DirStore> {
        self.position_of(segment)
            .map(|i| &self.dirs[i])
            .ok_or(StorageError::NoSuchSegment(segment))
    }

    /// Whether every directory can write: the first trouble one reports
    /// ([`DirStore::health`]).
    pub fn health(&self) -> StoreHealth {
        self.dirs
            .iter()
            .map(DirStore::health)
            .find(|h| !matches!(h, StoreHealth::Ok))
            .unwrap_or(StoreHealth::Ok)
    }

    /// Enqueues an append. Awaiting this waits only for queue space (the order of
    /// appends is fixed when it returns); the completion resolves once durable,
    /// with the entry's id.
    pub async fn append(&self, segment: SegmentId, data: Bytes) -> Result<Completion<EntryId>> {
        self.dir(segment)?.append(segment, data).await
    }

    /// Appends `prefix` (at most 40 bytes, carried inline) followed by `data`
    /// as one entry (copied once, into the journal's buffer).
    pub async fn append_parts(
        &self,
        segment: SegmentId,
        prefix: &[u8],
        data: Bytes,
    ) -> Result<Completion<EntryId>> {
        self.dir(segment)?.append_parts(segment, prefix, data).await
    }

    /// Room for one append to `segment` in its directory's journal queue,
    /// waited for ([`AppendSlot`]).
    pub(crate) async fn reserve(&self, segment: SegmentId) -> Result<AppendSlot<'_>> {
        self.dir(segment)?.reserve(segment).await
    }

    /// [`SegmentStore::reserve`] without waiting: `None` while the queue is full.
    pub(crate) fn try_reserve(&self, segment: SegmentId) -> Result<Option<AppendSlot<'_>>> {
        self.dir(segment)?.try_reserve(segment)
    }

    /// [`SegmentStore::append`] for threads outside an async runtime.
    pub fn append_blocking(&self, segment: SegmentId, data: Bytes) -> Result<Completion<EntryId>> {
        self.dir(segment)?.append_blocking(segment, data)
    }

    /// Creates a segment (durably) in the first directory and returns its id.
    pub async fn create_segment(&self) -> Result<SegmentId> {
        self.create_segment_in(0).await
    }

    /// Creates a segment in the `i`-th configured directory.
    pub async fn create_segment_in(&self, i: usize) -> Result<SegmentId> {
        let dir = self.dirs.get(i).ok_or_else(|| {
            StorageError::Log(format!(
                "no data directory {i} (there are {})",
                self.dirs.len()
            ))
        })?;
        dir.create_segment(self.segment_id_floor.load(Ordering::Acquire))
            .await
    }

    /// Creates a segment for log `log` beside `last` (its last segment), or
    /// where a new log of that id goes ([`SegmentStore::create_segment_in`]).
    pub async fn create_segment_for(&self, log: u64, last: Option<SegmentId>) -> Result<SegmentId> {
        self.create_segment_in(self.home_of(log, last)).await
    }

    /// The position in [`SegmentStore::dirs`] of the directory a log's next
    /// segment goes to: its last segment's, while that is still configured;
    /// else `log mod n`.
    pub fn home_of(&self, log: u64, last: Option<SegmentId>) -> usize {
        last.and_then(|s| self.position_of(s))
            .unwrap_or((log % self.dirs.len() as u64) as usize)
    }

    /// [`SegmentStore::create_segment`] for threads outside an async runtime.
    pub fn create_segment_blocking(&self) -> Result<SegmentId> {
        self.dirs[0].create_segment_blocking(self.segment_id_floor.load(Ordering::Acquire))
    }

    /// Segments created from now on get ids of at least `floor` within
    /// their directory's range (ids only grow: a lower floor changes
    /// nothing). A cluster broker raises it to a range no other broker's
    /// store uses, so that a message id another broker handed out never
    /// names one of this store's entries.
    pub fn raise_segment_ids(&self, floor: SegmentId) {
        self.segment_id_floor.fetch_max(floor, Ordering::AcqRel);
    }

    /// Seals a segment: no more appends; returns its entry count. Idempotent.
    pub async fn seal(&self, segment: SegmentId) -> Result<u64> {
        self.dir(segment)?.seal(segment).await
    }

    /// Deletes a segment; its space returns at the next GC.
    pub async fn delete_segment(&self, segment: SegmentId) -> Result<()> {
        self.dir(segment)?.delete_segment(segment).await
    }

    /// [`SegmentStore::delete_segment`] for threads outside an async runtime.
    pub fn delete_segment_blocking(&self, segment: SegmentId) -> Result<()> {
        self.dir(segment)?.delete_segment_blocking(segment)
    }

    /// The segment's current state, if it exists.
    pub fn segment(&self, segment: SegmentId) -> Option<SegmentInfo> {
        self.dir(segment).ok()?.segment(segment)
    }

    /// A number that moves whenever a segment in `segment`'s directory is
    /// sealed, fenced or removed (none: no such directory). While it stays,
    /// a segment seen open is still open, without a look at the index.
    pub fn segments_closed(&self, segment: SegmentId) -> Option<u64> {
        Some(self.dir(segment).ok()?.segments_closed())
    }

    /// Ids of every live segment, ascending.
    pub fn segments(&self) -> Vec<SegmentId> {
        // Directories hold disjoint, ascending ranges of ids.
        let mut by_range: Vec<&DirStore> = self.dirs.iter().collect();
        by_range.sort_by_key(|d| d.number());
        by_range.iter().flat_map(|d| d.segments()).collect()
    }

    /// Reads one durable entry, verifying its checksum.
    pub fn read(&self, segment: SegmentId, entry: EntryId) -> Result<Bytes> {
        self.dir(segment)?.read(segment, entry)
    }

    /// Reads entries `first..=last` of a segment.
    pub fn read_range(
        &self,
        segment: SegmentId,
        first: EntryId,
        last: EntryId,
    ) -> Result<Vec<Bytes>> {
        self.dir(segment)?.read_range(segment, first, last)
    }

    /// Bytes the store occupies on disk, over all directories.
    pub fn disk_usage_bytes(&self) -> u64 {
        self.dirs.iter().map(DirStore::disk_usage_bytes).sum()
    }

    /// The journal's stages of every append, in µs, over all directories:
    /// queued → its group written, and written → the fdatasync covering it done.
    pub fn append_stages(&self) -> [(&'static str, HistogramSnapshot); 2] {
        let mut stages = self.dirs[0].append_stages();
        for d in &self.dirs[1..] {
            for (total, (_, h)) in stages.iter_mut().zip(d.append_stages()) {
                total.1.add(&h);
            }
        }
        stages
    }

    /// The counters of all directories, added up.
    pub fn stats(&self) -> StoreStats {
        self.dirs
            .iter()
            .map(DirStore::stats)
            .fold(StoreStats::default(), |a, b| a.plus(&b))
    }

    /// Waits, at most `limit` per directory, until every journal file sealed
    /// so far has its checkpoint (its index is written): a reopen then loads
    /// those files' indexes instead of replaying them.
    pub fn wait_checkpointed(&self, limit: Duration) {
        for d in self.dirs.iter() {
            d.wait_checkpointed(limit);
        }
    }

    /// Gives disk space back in every directory ([`DirStore`]'s GC: removes
    /// sealed journal files that hold no live entry, compacts mostly-dead
    /// ones). Blocking (file I/O); call it from a blocking thread.
    pub fn gc(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        for d in self.dirs.iter() {
            report.add(&d.gc()?);
        }
        Ok(report)
    }

    /// Stops every journal after everything already enqueued is durable, and
    /// writes checkpoints so the next open replays nothing. Later calls fail
    /// with `Closed`.
    pub fn close(&self) -> Result<()> {
        self.each(DirStore::close)
    }

    /// Stops the store the way a crash leaves it (no final checkpoint) but
    /// with every thread joined. For tests that crash a store in-process.
    pub fn abandon(&self) -> Result<()> {
        self.each(DirStore::abandon)
    }

    /// Runs `f` on every directory; the first error, after all have run.
    fn each(&self, f: fn(&DirStore) -> Result<()>) -> Result<()> {
        let mut first = Ok(());
        for d in self.dirs.iter() {
            let r = f(d);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
