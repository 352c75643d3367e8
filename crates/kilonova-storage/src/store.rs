//! One data directory of the segment store: many segments' entries in one
//! shared, group-committed journal.
//!
//! [`DirStore`] opens the directory (`recovery` rebuilds the index), starts
//! the journal's threads (`journal`), serves reads from the index, and runs
//! GC. [`crate::SegmentStore`] routes to one `DirStore` per configured
//! directory (`segment_store.rs`). Dependencies point one way: this module
//! uses `journal`, `recovery` and `store_state` (the state they all share);
//! none of them uses this one.

use std::fs::{self, File};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::byte_rate::ByteRate;
use crate::checkpoint;
use crate::dir_lock::DirLock;
use crate::error::{Result, StorageError};
use crate::health::{HealthState, StoreHealth};
use crate::histogram::HistogramSnapshot;
use crate::index::MAX_FILE_BYTES;
use crate::journal::{remove_dead_files, Answer, Call, Op, Prefix, Reply, Request, Writer};
use crate::position::{self, EntryId, SegmentId};
use crate::record::{self, RecordKind, HEADER_LEN};
use crate::recovery;
pub use crate::store_state::GcReport;
use crate::store_state::{SealProgress, Stats, StoreConfig, StoreState};

/// A snapshot of the store's counters and sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub fsyncs: u64,
    pub groups: u64,
    pub bytes_written: u64,
    pub entries_appended: u64,
    pub write_errors: u64,
    /// Nanoseconds the journal thread spent writing and fsyncing.
    pub sync_ns: u64,
    /// Nanoseconds the journal thread spent on groups (encode, write, sync, publish).
    pub busy_ns: u64,
    pub segments: u64,
    pub journal_files: u64,
    /// Journal files the last open scanned record by record (the others' indexes
    /// were loaded), and their bytes: bounded by what followed the last checkpoint.
    pub recovery_replayed_files: u64,
    pub recovery_replayed_bytes: u64,
    pub disk_usage_bytes: u64,
}

impl StoreStats {
    /// Both stores' counters and sizes added up (one store over several directories).
    pub(crate) fn plus(&self, o: &StoreStats) -> StoreStats {
        StoreStats {
            fsyncs: self.fsyncs + o.fsyncs,
            groups: self.groups + o.groups,
            bytes_written: self.bytes_written + o.bytes_written,
            entries_appended: self.entries_appended + o.entries_appended,
            write_errors: self.write_errors + o.write_errors,
            sync_ns: self.sync_ns + o.sync_ns,
            busy_ns: self.busy_ns + o.busy_ns,
            segments: self.segments + o.segments,
            journal_files: self.journal_files + o.journal_files,
            recovery_replayed_files: self.recovery_replayed_files + o.recovery_replayed_files,
            recovery_replayed_bytes: self.recovery_replayed_bytes + o.recovery_replayed_bytes,
            disk_usage_bytes: self.disk_usage_bytes + o.disk_usage_bytes,
        }
    }
}

/// What a segment looks like now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: SegmentId,
    /// Durable entries: ids `0..entries`.
    pub entries: u64,
    pub sealed: bool,
    /// An append failed: the segment takes no more appends (seal it, continue in a new one).
    pub fenced: bool,
    /// Payload bytes of its entries.
    pub bytes: u64,
}

/// Compaction's pacing over one GC pass.
struct Pace {
    limiter: ByteRate,
    epoch: Instant,
}

/// Resolves once the journal has made the operation durable (or failed it).
pub struct Completion<T> {
    rx: oneshot::Receiver<Reply>,
    /// Context for `map` (the segment id of an append), so no closure is boxed.
    tag: u64,
    map: fn(u64, u64) -> T,
    /// Once resolved with success: when the journal made it durable.
    durable_at: Option<Instant>,
}

impl<T> Completion<T> {
    fn new(rx: oneshot::Receiver<Reply>, tag: u64, map: fn(u64, u64) -> T) -> Self {
        Completion {
            rx,
            tag,
            map,
            durable_at: None,
        }
    }

    /// The same completion mapped to another value type.
    pub(crate) fn remap<U>(self, map: fn(u64, u64) -> U) -> Completion<U> {
        Completion::new(self.rx, self.tag, map)
    }

    /// Blocks the calling (non-async) thread until the operation is durable.
    pub fn wait(self) -> Result<T> {
        let (map, tag) = (self.map, self.tag);
        self.rx
            .blocking_recv()
            .map_err(|_| StorageError::Closed)?
            .map(|d| map(d.value, tag))
    }

    /// When the journal made the operation durable, once this resolved
    /// with success (how long its answer then took is a stage of a publish).
    pub fn durable_at(&self) -> Option<Instant> {
        self.durable_at
    }
}

impl<T> Future for Completion<T> {
    type Output = Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (map, tag) = (self.map, self.tag);
        let reply = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        Poll::Ready(match reply {
            Ok(Ok(done)) => {
                self.durable_at = Some(done.at);
                Ok(map(done.value, tag))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StorageError::Closed),
        })
    }
}

/// Room for one append in a directory's journal queue, taken before the
/// entry is numbered: whoever numbers a log's entries under a lock queues
/// them, in that order, without waiting under it
/// ([`crate::managed_log::AppendLane`]). Dropped unused, the room is freed.
pub struct AppendSlot<'a> {
    permit: mpsc::Permit<'a, Request>,
    segment: SegmentId,
}

impl AppendSlot<'_> {
    /// Queues the append; its completion resolves once durable.
    pub(crate) fn append(self, prefix: &[u8], data: Bytes) -> Result<Completion<EntryId>> {
        let (done, rx) = oneshot::channel();
        let op = Op::Append {
            segment: self.segment,
            prefix: Prefix::new(prefix)?,
            data,
        };
        self.permit.send(Request::new(op, done));
        Ok(Completion::new(rx, self.segment, id))
    }

    /// Queues the append, answered by `then` on the journal's thread
    /// ([`crate::ManagedLog::append_then`]); `then` is called once whatever
    /// happens (at once, for a prefix too long).
    pub(crate) fn append_then(
        self,
        prefix: &[u8],
        data: Bytes,
        then: impl FnOnce(Result<(EntryId, Instant)>) + Send + Sync + 'static,
    ) {
        let prefix = match Prefix::new(prefix) {
            Ok(p) => p,
            Err(e) => return then(Err(e)),
        };
        let op = Op::Append {
            segment: self.segment,
            prefix,
            data,
        };
        let call = Call::new(move |reply: Reply| then(reply.map(|d| (d.value, d.at))));
        self.permit.send(Request::new(op, Answer::Call(call)));
    }
}

/// The segments of one data directory, in its journal. Cheap to share
/// (`Arc` inside); all methods take `&self`.
///
/// Appends are enqueued in call order per segment and complete only after the
/// fdatasync that covers them. Reads see only durable entries. The segments'
/// ids carry the directory's number ([`crate::position::dir_of`]).
#[derive(Clone)]
pub struct DirStore {
    shared: Arc<StoreState>,
    /// The directory's number: the top bits of its segments' ids.
    number: u8,
    tx: mpsc::Sender<Request>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// The directory's lock: held until the store stops (or the last clone drops).
    lock: Arc<Mutex<Option<DirLock>>>,
}

impl DirStore {
    /// Opens (creating or recovering) the store in `config.dir`, whose
    /// segments' ids carry `number`.
    /// `lock` is the directory's, taken before anything in it was read.
    pub(crate) fn open(config: StoreConfig, number: u8, lock: DirLock) -> Result<Self> {
        validate(&config)?;
        let recovered = recovery::recover(&config)?;
        if let Some(other) = recovered
            .index
            .segments
            .keys()
            .find(|id| position::dir_of(**id) != number)
        {
            return Err(StorageError::DataDirs(format!(
                "{} holds segment {other} of directory {}, but is directory {number}",
                config.dir.display(),
                position::dir_of(*other)
            )));
        }
        // Dead files a crash left half deleted.
        crate::trash::delete_left_trash(&config.dir)?;
        let shared = Arc::new(StoreState {
            config: config.clone(),
            index: RwLock::new(recovered.index),
            stats: Stats::default(),
            active_file: AtomicU32::new(u32::MAX),
            recovery: (recovered.replayed_files, recovered.replayed_bytes),
            spares: Mutex::new(list_spares(&config.dir)?),
            seals: SealProgress::default(),
            health: HealthState::default(),
            trash: crate::trash::Trash::default(),
            segments_closed: AtomicU64::new(0),
        });
        // Cover everything recovery replayed with a checkpoint, so the next start
        // replays only what is written from now on. On a full disk this may fail:
        // then the next start replays the same files again, and GC leaves them alone.
        match crate::journal::write_checkpoint(
            &shared,
            recovered.next_file_no,
            recovered.next_segment_id,
            recovered.next_lsn,
        ) {
            Ok(()) => {
                if let Ok(mut index) = shared.index.write() {
                    for f in index.files.values_mut() {
                        f.checkpointed = true;
                    }
                }
            }
            Err(e) => {
                shared.health.failed(&e);
                tracing::warn!(error = %e, "could not checkpoint after recovery");
            }
        }
        // Room for control records on a disk that fills up (the journal's `RESERVE`).
        if let Err(e) = crate::journal::ensure_reserve(&config.dir) {
            shared.health.failed(&e);
            tracing::warn!(error = %e, "could not set the space reserve aside: deletes may fail if the disk fills");
        }
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let writer = Writer::new(
            shared.clone(),
            rx,
            recovered.next_file_no,
            recovered.next_lsn,
            recovered.next_segment_id,
        )?;
        let thread = std::thread::Builder::new()
            .name("kilonova-journal".into())
            .spawn(move || writer.run())
            .map_err(|e| StorageError::io("starting the journal thread", e))?;
        tracing::info!(
            dir = %config.dir.display(),
            segments = shared.index.read().map(|i| i.segments.len()).unwrap_or(0),
            "segment store open"
        );
        Ok(DirStore {
            shared,
            number,
            tx,
            thread: Arc::new(Mutex::new(Some(thread))),
            lock: Arc::new(Mutex::new(Some(lock))),
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.shared.config
    }

    /// The directory this store writes.
    pub fn path(&self) -> &std::path::Path {
        &self.shared.config.dir
    }

    /// The directory's number (the top bits of its segments' ids).
    pub fn number(&self) -> u8 {
        self.number
    }

    /// Whether the store can write: `Ok`, or the trouble (a full disk, an I/O
    /// error) its last write, fdatasync or journal file creation ran into, with
    /// when it began, until an append next becomes durable. A store on a full
    /// disk opens, serves reads and reports `DiskFull` here while appends fail.
    pub fn health(&self) -> StoreHealth {
        self.shared.health.get()
    }

    /// Bytes the file system holding the store can still give it, and the
    /// size of one journal file (what the next roll needs).
    pub fn free_bytes(&self) -> Result<(u64, u64)> {
        let st = rustix::fs::statvfs(&self.shared.config.dir)
            .map_err(|e| StorageError::io("reading free disk space", e.into()))?;
        Ok((
            st.f_bavail.saturating_mul(st.f_frsize),
            self.shared.config.log_file_bytes,
        ))
    }

    async fn submit(&self, op: Op) -> Result<oneshot::Receiver<Reply>> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Request::new(op, done))
            .await
            .map_err(|_| StorageError::Closed)?;
        Ok(rx)
    }

    fn submit_blocking(&self, op: Op) -> Result<oneshot::Receiver<Reply>> {
        let (done, rx) = oneshot::channel();
        self.tx
            .blocking_send(Request::new(op, done))
            .map_err(|_| StorageError::Closed)?;
        Ok(rx)
    }

    /// Enqueues an append. Awaiting this waits only for queue space (the order of
    /// appends is fixed when it returns); the completion resolves once durable,
    /// with the entry's id.
    pub(crate) async fn append(
        &self,
        segment: SegmentId,
        data: Bytes,
    ) -> Result<Completion<EntryId>> {
        self.append_parts(segment, &[], data).await
    }

    /// Appends `prefix` (at most 40 bytes, carried inline) followed by `data`
    /// as one entry (copied once, into the journal's buffer).
    pub(crate) async fn append_parts(
        &self,
        segment: SegmentId,
        prefix: &[u8],
        data: Bytes,
    ) -> Result<Completion<EntryId>> {
        self.reserve(segment).await?.append(prefix, data)
    }

    /// Room in the journal's queue for one append to `segment`, waited for.
    pub(crate) async fn reserve(&self, segment: SegmentId) -> Result<AppendSlot<'_>> {
        let permit = self.tx.reserve().await.map_err(|_| StorageError::Closed)?;
        Ok(AppendSlot { permit, segment })
    }

    /// [`DirStore::reserve`] without waiting: `None` while the queue is full.
    pub(crate) fn try_reserve(&self, segment: SegmentId) -> Result<Option<AppendSlot<'_>>> {
        match self.tx.try_reserve() {
            Ok(permit) => Ok(Some(AppendSlot { permit, segment })),
            Err(mpsc::error::TrySendError::Full(())) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(())) => Err(StorageError::Closed),
        }
    }

    /// [`DirStore::append`] for threads outside an async runtime.
    pub(crate) fn append_blocking(
        &self,
        segment: SegmentId,
        data: Bytes,
    ) -> Result<Completion<EntryId>> {
        let rx = self.submit_blocking(Op::Append {
            segment,
            prefix: Prefix::new(&[])?,
            data,
        })?;
        Ok(Completion::new(rx, segment, id))
    }

    /// Creates a segment (durably) and returns its id: the directory's
    /// number in the top bits, at least `floor` in the others.
    pub(crate) async fn create_segment(&self, floor: SegmentId) -> Result<SegmentId> {
        let rx = self.submit(self.create_op(floor)).await?;
        Completion::new(rx, 0, id).await
    }

    /// [`DirStore::create_segment`] for threads outside an async runtime.
    pub(crate) fn create_segment_blocking(&self, floor: SegmentId) -> Result<SegmentId> {
        Completion::new(self.submit_blocking(self.create_op(floor))?, 0, id).wait()
    }

    fn create_op(&self, floor: SegmentId) -> Op {
        let ids = position::dir_ids(self.number);
        Op::Create {
            at_least: ids.start.saturating_add(floor),
            below: ids.end,
        }
    }

    /// Seals a segment: no more appends; returns its entry count. Idempotent.
    pub(crate) async fn seal(&self, segment: SegmentId) -> Result<u64> {
        let rx = self.submit(Op::Seal { segment }).await?;
        Completion::new(rx, 0, id).await
    }

    /// Deletes a segment; its space returns at the next GC.
    pub(crate) async fn delete_segment(&self, segment: SegmentId) -> Result<()> {
        let rx = self.submit(Op::Delete { segment }).await?;
        Completion::new(rx, 0, |_, _| ()).await
    }

    /// [`DirStore::delete_segment`] for threads outside an async runtime.
    pub(crate) fn delete_segment_blocking(&self, segment: SegmentId) -> Result<()> {
        Completion::new(self.submit_blocking(Op::Delete { segment })?, 0, |_, _| ()).wait()
    }

    /// How many times a segment of this directory was sealed, fenced or
    /// removed so far ([`StoreState::segment_closed`]).
    pub(crate) fn segments_closed(&self) -> u64 {
        self.shared.segments_closed.load(Ordering::Acquire)
    }

    /// The segment's current state, if it exists.
    pub(crate) fn segment(&self, segment: SegmentId) -> Option<SegmentInfo> {
        let index = self.shared.index.read().ok()?;
        index.segments.get(&segment).map(|s| SegmentInfo {
            id: segment,
            entries: s.locs.len() as u64,
            sealed: s.sealed,
            fenced: s.fenced,
            bytes: s.bytes,
        })
    }

    /// Ids of every live segment, ascending.
    pub(crate) fn segments(&self) -> Vec<SegmentId> {
        let Ok(index) = self.shared.index.read() else {
            return Vec::new();
        };
        let mut v: Vec<_> = index.segments.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Reads one durable entry, verifying its checksum.
    pub(crate) fn read(&self, segment: SegmentId, entry: EntryId) -> Result<Bytes> {
        let (loc, handle) = {
            let index = self
                .shared
                .index
                .read()
                .map_err(|_| StorageError::Log("index lock poisoned".into()))?;
            let seg = index
                .segments
                .get(&segment)
                .ok_or(StorageError::NoSuchSegment(segment))?;
            let loc = *usize::try_from(entry)
                .ok()
                .and_then(|i| seg.locs.get(i))
                .ok_or(StorageError::NoSuchEntry { segment, entry })?;
            if loc.is_missing() {
                return Err(StorageError::Corrupt {
                    segment,
                    entry,
                    detail: "its record was lost to damage found at recovery".into(),
                });
            }
            let handle = index
                .files
                .get(&loc.file())
                .map(|f| f.handle.clone())
                .ok_or_else(|| StorageError::Corrupt {
                    segment,
                    entry,
                    detail: format!("journal file {} is gone", loc.file()),
                })?;
            (loc, handle)
        };
        read_record(
            &handle,
            loc.offset(),
            segment,
            entry,
            self.shared.config.max_record_bytes(),
        )
    }

    /// Reads entries `first..=last` of a segment.
    pub(crate) fn read_range(
        &self,
        segment: SegmentId,
        first: EntryId,
        last: EntryId,
    ) -> Result<Vec<Bytes>> {
        (first..=last).map(|e| self.read(segment, e)).collect()
    }

    /// Bytes the store occupies on disk (journal files as allocated, plus indexes).
    pub fn disk_usage_bytes(&self) -> u64 {
        let files: u64 = self
            .shared
            .index
            .read()
            .map(|i| i.files.values().map(|f| f.disk_bytes).sum())
            .unwrap_or(0);
        let spares: u64 = self
            .shared
            .spares
            .lock()
            .map(|s| s.iter().map(|(_, b)| *b).sum())
            .unwrap_or(0);
        files + spares + self.shared.trash.bytes()
    }

    /// fdatasync durations (µs) and entries per group commit.
    pub fn histograms(&self) -> (HistogramSnapshot, HistogramSnapshot) {
        let s = &self.shared.stats;
        (s.fsync_us.snapshot(), s.group_commit_entries.snapshot())
    }

    /// The journal's stages of every append, in µs: queued → its group
    /// written, and written → the fdatasync covering it done.
    pub fn append_stages(&self) -> [(&'static str, HistogramSnapshot); 2] {
        let s = &self.shared.stats;
        [
            ("written", s.append_written_us.snapshot()),
            ("durable", s.append_durable_us.snapshot()),
        ]
    }

    pub fn stats(&self) -> StoreStats {
        let s = &self.shared.stats;
        let (segments, journal_files) = self
            .shared
            .index
            .read()
            .map(|i| (i.segments.len() as u64, i.files.len() as u64))
            .unwrap_or_default();
        StoreStats {
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            groups: s.groups.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            entries_appended: s.entries_appended.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            sync_ns: s.sync_ns.load(Ordering::Relaxed),
            busy_ns: s.busy_ns.load(Ordering::Relaxed),
            segments,
            journal_files,
            recovery_replayed_files: self.shared.recovery.0,
            recovery_replayed_bytes: self.shared.recovery.1,
            disk_usage_bytes: self.disk_usage_bytes(),
        }
    }

    /// Waits, at most `limit`, until every journal file sealed so far has its
    /// checkpoint (its index is written): a reopen then loads those files'
    /// indexes instead of replaying them.
    pub(crate) fn wait_checkpointed(&self, limit: Duration) {
        self.shared.seals.wait_caught_up(limit);
    }

    /// Gives disk space back: removes sealed journal files that hold no live entry,
    /// and compacts sealed files whose live fraction is below
    /// `compaction_live_ratio` by moving their live entries to the active file.
    /// Blocking (file I/O); call it from a blocking thread.
    pub(crate) fn gc(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        // Files sealed a moment ago become collectable once their checkpoint is written.
        self.shared.seals.wait_caught_up(Duration::from_secs(5));
        // Free what is already dead first: on a full disk compaction cannot write.
        remove_dead_files(&self.shared, &mut report)?;
        let ratio = self.shared.config.compaction_live_ratio;
        let active = self.shared.active_file.load(Ordering::Acquire);
        let to_compact: Vec<u32> = {
            let index = self
                .shared
                .index
                .read()
                .map_err(|_| StorageError::Log("index lock poisoned".into()))?;
            index
                .files
                .iter()
                .filter(|(no, f)| {
                    **no != active
                        && f.checkpointed
                        && f.live_entries > 0
                        && (f.live_entries as f64) < ratio * f.written_entries as f64
                })
                .map(|(no, _)| *no)
                .collect()
        };
        let rate = self.shared.config.gc_max_bytes_per_sec;
        let mut pace = Pace {
            limiter: ByteRate::new(rate, rate / 10),
            epoch: Instant::now(),
        };
        for no in to_compact {
            match self.compact_file(no, &mut pace, &mut report) {
                Ok(()) => {}
                Err(e) => {
                    // Compaction is an optimisation: the file stays, nothing is lost.
                    tracing::warn!(file = no, error = %e, "journal compaction stopped");
                    break;
                }
            }
        }
        remove_dead_files(&self.shared, &mut report)?;
        // What went to the trash, here or at a roll, is deleted by return.
        self.shared.trash.empty_now()?;
        Ok(report)
    }

    /// Moves every live entry of journal file `no` to the active file, at the pace `pace` sets.
    fn compact_file(&self, no: u32, pace: &mut Pace, report: &mut GcReport) -> Result<()> {
        let Some(records) = checkpoint::read_idx(&self.shared.config.dir, no)? else {
            return Ok(());
        };
        let mut completions = Vec::new();
        for r in records {
            let live_here = self
                .shared
                .index
                .read()
                .ok()
                .and_then(|i| {
                    i.segments
                        .get(&r.segment)
                        .and_then(|s| s.locs.get(r.entry as usize).copied())
                })
                .is_some_and(|l| !l.is_missing() && l.file() == no && l.offset() == r.offset);
            if !live_here {
                continue;
            }
            let data = match self.read(r.segment, r.entry) {
                Ok(d) => d,
                Err(StorageError::NoSuchSegment(_)) | Err(StorageError::NoSuchEntry { .. }) => {
                    continue
                }
                Err(e) => return Err(e),
            };
            let bytes = record::encoded_len(data.len()) as u64;
            self.wait_for_pace(pace.limiter.charge(pace.epoch.elapsed(), bytes), report)?;
            let rx = self.submit_blocking(Op::Move {
                segment: r.segment,
                entry: r.entry,
                from_file: no,
                data,
            })?;
            completions.push(Completion::new(rx, 0, id));
            report.bytes_moved += bytes;
        }
        for c in completions {
            c.wait()?;
            report.entries_moved += 1;
        }
        Ok(())
    }

    /// Sleeps `wait` (compaction's pacing), in slices so that closing the
    /// store is not held up by it.
    fn wait_for_pace(&self, wait: Duration, report: &mut GcReport) -> Result<()> {
        const SLICE: Duration = Duration::from_millis(100);
        let until = Instant::now() + wait;
        loop {
            if self.tx.is_closed() {
                return Err(StorageError::Closed);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(SLICE));
        }
        report.throttled += wait;
        Ok(())
    }

    /// Stops the journal after everything already enqueued is durable, and writes a
    /// checkpoint so the next open replays nothing. Later calls fail with `Closed`.
    pub(crate) fn close(&self) -> Result<()> {
        self.stop(true)
    }

    /// Stops the store the way a crash leaves it (no final checkpoint: the
    /// active file's tail is replayed at the next open) but with every thread
    /// joined, so nothing touches the directory afterwards. For tests that
    /// crash a store in-process; a real crash is the child-process kill test.
    pub(crate) fn abandon(&self) -> Result<()> {
        self.stop(false)
    }

    fn stop(&self, checkpoint: bool) -> Result<()> {
        let (done, rx) = oneshot::channel();
        if self
            .tx
            .blocking_send(Request::new(Op::Shutdown { checkpoint }, done))
            .is_ok()
        {
            let _ = rx.blocking_recv();
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            h.join()
                .map_err(|_| StorageError::Log("journal thread panicked".into()))?;
        }
        // Nothing touches the directory any more: another opener may have it.
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
        Ok(())
    }
}

/// Checks settings the journal could not work with. (Here, not beside
/// `StoreConfig`, because the bound depends on the journal's control reserve.)
pub(crate) fn validate(config: &StoreConfig) -> Result<()> {
    let need =
        record::encoded_len(config.max_entry_bytes) as u64 + crate::journal::CONTROL_RESERVE_BYTES;
    if config.log_file_bytes < need || config.log_file_bytes >= MAX_FILE_BYTES {
        return Err(StorageError::Log(format!(
            "log_file_bytes ({}) must hold one maximal entry plus the control reserve ({} bytes) and stay below {}",
            config.log_file_bytes, need, MAX_FILE_BYTES
        )));
    }
    Ok(())
}

fn id(v: u64, _tag: u64) -> u64 {
    v
}

/// Reads and verifies the record of `(segment, entry)` at `offset`.
fn read_record(
    file: &File,
    offset: u64,
    segment: SegmentId,
    entry: EntryId,
    max: usize,
) -> Result<Bytes> {
    let corrupt = |detail: String| StorageError::Corrupt {
        segment,
        entry,
        detail,
    };
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, offset)
        .map_err(|e| StorageError::io("reading the journal", e))?;
    let total = record::peek_len(&head, max).map_err(|e| corrupt(e.to_string()))?;
    let mut buf = vec![0u8; total];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| StorageError::io("reading the journal", e))?;
    let buf = Bytes::from(buf);
    let (h, payload) = record::decode_bytes(&buf, max).map_err(|e| corrupt(e.to_string()))?;
    if !matches!(h.kind, RecordKind::Entry | RecordKind::Moved)
        || h.segment != segment
        || h.entry != entry
    {
        return Err(corrupt(format!(
            "index points at record {:?} {}:{}",
            h.kind, h.segment, h.entry
        )));
    }
    Ok(payload)
}

/// Recycled journal files in `dir`, with their sizes.
fn list_spares(dir: &std::path::Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| StorageError::io("listing the store directory", e))?;
    for ent in rd {
        let ent = ent.map_err(|e| StorageError::io("listing the store directory", e))?;
        let is_spare = ent
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("spare-") && n.ends_with(".log"));
        if is_spare {
            let size = ent.metadata().map_or(0, |m| m.len());
            out.push((ent.path(), size));
        }
    }
    Ok(out)
}
