//! The journal: two threads that own the active log file and group-commit.
//!
//! * The **writer** takes the first queued request, drains every request already
//!   queued (bounded by `group_commit_max_bytes`, optionally waiting up to
//!   `group_commit_max_delay_us` for more), validates them against its own view
//!   of the segments, encodes them into one buffer and writes it with one
//!   `pwrite`. It then hands the written group to the syncer and goes on.
//! * The **syncer** takes every group written so far and covers them all with
//!   one `fdatasync`; only then does it publish their locations to the shared
//!   index and complete the callers: a completion means durable.
//!
//! So encoding and writing the next group overlaps the fdatasync of the previous
//! ones (as BookKeeper's journal and force-write threads do), and everything that
//! arrives during one fdatasync is covered by the next.
//!
//! The writer is here; the syncer and the checkpointer are in `journal/syncer.rs`,
//! creating journal files and the space reserve in `journal/files.rs`.
//!
//! Dependencies point one way: `store` starts the journal and submits requests;
//! the journal sees the store only through `store_state` (config, index,
//! counters, health) and knows nothing of `store` or `recovery`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::IdxRecord;
use crate::error::{Result, StorageError};
use crate::position::SegmentId;
use crate::record::{self, RecordHeader, RecordKind};
use crate::store_state::StoreState;

mod direct;
mod files;
mod syncer;
pub(crate) mod wake_after;

pub(crate) use files::{ensure_reserve, remove_dead_files};
pub(crate) use syncer::write_checkpoint;

/// Tail bytes of each journal file that only control records may use.
pub(crate) const CONTROL_RESERVE_BYTES: u64 = 64 << 10;

/// How long the writer, on a full disk, waits for the checkpoints that let
/// dead journal files go before it refuses an append.
const RECLAIM_WAIT: Duration = Duration::from_secs(2);

/// The group buffer is kept for the next group up to this capacity (a group
/// holding one very large entry does not pin its memory).
const MAX_KEPT_GROUP_BUFFER: usize = 16 << 20;

/// Written groups the syncer may have queued before the writer waits.
const SYNC_QUEUE_GROUPS: usize = 8;

/// What a caller asks the journal to do.
pub(crate) enum Op {
    /// A new segment, its id at least `at_least` (and above every id
    /// before), refused if it would reach `below` (the directory's ids end).
    Create {
        at_least: SegmentId,
        below: SegmentId,
    },
    /// `prefix` and `data` are stored as one entry (the prefix is the managed log's header).
    Append {
        segment: SegmentId,
        prefix: Prefix,
        data: Bytes,
    },
    Seal {
        segment: SegmentId,
    },
    Delete {
        segment: SegmentId,
    },
    /// Compaction: copy an entry out of `from_file` into the active file.
    Move {
        segment: SegmentId,
        entry: u64,
        from_file: u32,
        data: Bytes,
    },
    /// Stop the writer; `checkpoint`: seal the active file first (a clean
    /// close), or leave its tail for recovery to replay (a simulated crash).
    Shutdown {
        checkpoint: bool,
    },
}

/// The most bytes an entry's prefix may have (a managed log's header, 20
/// bytes; a compacted view's, 36).
const MAX_PREFIX_BYTES: usize = 40;

/// An entry's prefix, carried inline: an append allocates nothing for it.
#[derive(Clone, Copy)]
pub(crate) struct Prefix {
    len: u8,
    bytes: [u8; MAX_PREFIX_BYTES],
}

impl Prefix {
    pub(crate) fn new(prefix: &[u8]) -> Result<Self> {
        let mut bytes = [0u8; MAX_PREFIX_BYTES];
        bytes
            .get_mut(..prefix.len())
            .ok_or_else(|| {
                StorageError::Log(format!(
                    "an entry prefix of {} bytes (at most {MAX_PREFIX_BYTES})",
                    prefix.len()
                ))
            })?
            .copy_from_slice(prefix);
        Ok(Prefix {
            len: prefix.len() as u8,
            bytes,
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn len(&self) -> usize {
        usize::from(self.len)
    }
}

pub(crate) struct Request {
    pub op: Op,
    pub done: Answer,
    /// When it was queued (the start of its append stages).
    pub queued_at: Instant,
}

impl Request {
    pub(crate) fn new(op: Op, done: impl Into<Answer>) -> Self {
        Request {
            op,
            done: done.into(),
            queued_at: Instant::now(),
        }
    }
}

/// The journal's answer to a request: a value (an entry id, a segment id, a
/// count) and when the request was done (for an append: durable).
pub(crate) type Reply = Result<Done>;

/// Where a request's answer goes.
pub(crate) enum Answer {
    /// A channel its owner awaits ([`crate::Completion`]).
    Channel(oneshot::Sender<Reply>),
    /// A call made on the journal's thread that answers, in the order the
    /// requests were queued.
    Call(Call),
}

/// A request's answer as a call ([`crate::ManagedLog::append_then`]). It
/// must be short and must not block: the journal's next group waits for it.
/// Dropped without an answer (a journal thread that stopped), it is called
/// with [`StorageError::Closed`], as a dropped channel tells its receiver.
pub(crate) struct Call(Option<Box<dyn FnOnce(Reply) + Send + Sync>>);

impl Call {
    pub(crate) fn new(f: impl FnOnce(Reply) + Send + Sync + 'static) -> Self {
        Call(Some(Box::new(f)))
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(StorageError::Closed));
        }
    }
}

impl Answer {
    pub(crate) fn send(self, reply: Reply) {
        match self {
            // The owner stopped waiting: nobody to tell.
            Answer::Channel(tx) => drop(tx.send(reply)),
            Answer::Call(mut call) => {
                if let Some(f) = call.0.take() {
                    f(reply);
                }
            }
        }
    }
}

impl From<oneshot::Sender<Reply>> for Answer {
    fn from(tx: oneshot::Sender<Reply>) -> Self {
        Answer::Channel(tx)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Done {
    pub value: u64,
    pub at: Instant,
}

impl Done {
    pub(crate) fn now(value: u64) -> Self {
        Done {
            value,
            at: Instant::now(),
        }
    }
}

impl Request {
    fn payload_len(&self) -> usize {
        match &self.op {
            Op::Append { prefix, data, .. } => prefix.len() + data.len(),
            Op::Move { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// The writer's open file.
struct ActiveFile {
    no: u32,
    handle: Arc<File>,
    /// The same file opened for direct writes (`journal/direct.rs`), where
    /// the store writes past the page cache and the file system allows it.
    direct: Option<File>,
    pos: u64,
    len: u64,
    /// A write to it failed: its tail is unknown, never write to it again.
    broken: bool,
}

/// A request written to the journal, waiting for its fdatasync.
struct Pending {
    done: Answer,
    queued_at: Instant,
    kind: RecordKind,
    segment: SegmentId,
    entry: u64,
    offset: u64,
    payload_len: u64,
    from_file: u32,
}

/// One written group, handed from the writer to the syncer.
struct Group {
    file: u32,
    handle: Arc<File>,
    pending: Vec<Pending>,
    last_lsn: u64,
    /// The store's failure count when the group was written: its sync clears
    /// the health failure only if nothing failed since.
    failures_seen: u64,
    /// When its write returned.
    written_at: Instant,
}

impl Group {
    /// Entries (appends) it holds, beside control records and moves.
    fn entries(&self) -> u64 {
        self.pending
            .iter()
            .filter(|p| p.kind == RecordKind::Entry)
            .count() as u64
    }
}

enum SyncMsg {
    Group(Group),
    /// The writer left this file: once its groups are published, write its index
    /// and a checkpoint that starts replay after it (in the background).
    Seal(SealJob),
}

/// A sealed journal file to checkpoint.
struct SealJob {
    file: u32,
    /// The writer's counters when it left the file: above everything the file holds.
    next_segment_id: u64,
    next_lsn: u64,
}

/// State the writer and the syncer share.
#[derive(Default)]
struct SyncState {
    /// Highest lsn covered by a successful fdatasync.
    durable_lsn: AtomicU64,
    /// A file whose fdatasync failed (`u32::MAX`: none): the writer must leave it.
    broken_file: AtomicU32,
    /// Entry records published per file: each file's index when it is sealed.
    records: Mutex<HashMap<u32, Vec<IdxRecord>>>,
    /// The next journal file, created ahead by the checkpointer so a roll does not wait.
    ready: Mutex<ReadySlot>,
    ready_changed: Condvar,
}

/// The hand-off of a journal file created ahead of need.
#[derive(Default)]
enum ReadySlot {
    #[default]
    Empty,
    Preparing(u32),
    Ready(ActiveFile),
}

/// Work for the checkpointer thread.
enum CkptMsg {
    Seal(SealJob),
    /// Create journal file `no` ahead of need, its space made as said.
    Prepare(u32, files::Space),
}

/// The writer's view of a segment, ahead of the shared index by the groups in flight.
#[derive(Clone, Copy)]
struct SegView {
    next_entry: u64,
    sealed: bool,
}

impl Decision {
    /// A record that does not come from another file (everything but `Moved`).
    fn write(kind: RecordKind, segment: SegmentId, entry: u64) -> Self {
        Decision::Write {
            kind,
            segment,
            entry,
            from_file: 0,
        }
    }
}

/// What to do with one request.
enum Decision {
    Write {
        kind: RecordKind,
        segment: SegmentId,
        entry: u64,
        from_file: u32,
    },
    /// Nothing to write (an idempotent repeat); answer at once.
    Answer(u64),
}

pub(crate) struct Writer {
    shared: Arc<StoreState>,
    rx: mpsc::Receiver<Request>,
    next_file_no: u32,
    next_lsn: u64,
    next_segment_id: u64,
    active: Option<ActiveFile>,
    /// When the writer began writing to `active`.
    active_since: Option<Instant>,
    segments: HashMap<SegmentId, SegView>,
    sync: Arc<SyncState>,
    sync_tx: Option<std_mpsc::SyncSender<SyncMsg>>,
    ckpt_tx: Option<std_mpsc::Sender<CkptMsg>>,
    syncer: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
    /// Deletes dead journal files ([`crate::trash`]).
    deleter: Option<JoinHandle<()>>,
    /// Aligns groups for files written with `O_DIRECT`.
    direct: direct::DirectWriter,
    /// The buffer groups are encoded into (empty between groups).
    group_buf: direct::GroupBuf,
}

impl Writer {
    pub fn new(
        shared: Arc<StoreState>,
        rx: mpsc::Receiver<Request>,
        next_file_no: u32,
        next_lsn: u64,
        next_segment_id: u64,
    ) -> Result<Self> {
        let segments = shared
            .index
            .read()
            .map_err(|_| StorageError::Log("index lock poisoned".into()))?
            .segments
            .iter()
            .map(|(id, s)| {
                let view = SegView {
                    next_entry: s.locs.len() as u64,
                    sealed: s.sealed,
                };
                (*id, view)
            })
            .collect();
        let sync = Arc::new(SyncState {
            durable_lsn: AtomicU64::new(next_lsn.saturating_sub(1)),
            broken_file: AtomicU32::new(u32::MAX),
            records: Mutex::default(),
            ready: Mutex::default(),
            ready_changed: Condvar::new(),
        });
        let (ckpt_tx, ckpt_rx) = std_mpsc::channel();
        // The first file too is made ahead of need (written with zeros, where
        // the file system has unwritten extents): the first append waits for
        // it only if it comes before it is ready.
        let first = match shared.config.zero_fill_after {
            Some(_) => files::Space::Written,
            None => files::Space::Allocated,
        };
        if let Ok(mut slot) = sync.ready.lock() {
            if ckpt_tx.send(CkptMsg::Prepare(next_file_no, first)).is_ok() {
                *slot = ReadySlot::Preparing(next_file_no);
            }
        }
        let checkpointer = {
            let (shared, sync) = (shared.clone(), sync.clone());
            std::thread::Builder::new()
                .name("kilonova-ckpt".into())
                .spawn(move || syncer::run_checkpointer(shared, sync, ckpt_rx))
                .map_err(|e| StorageError::io("starting the checkpoint thread", e))?
        };
        let deleter = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("kilonova-delete".into())
                .spawn(move || crate::trash::run_deleter(&shared.trash))
                .map_err(|e| StorageError::io("starting the journal file deleter", e))?
        };
        let (sync_tx, sync_rx) = std_mpsc::sync_channel(SYNC_QUEUE_GROUPS);
        let syncer = {
            let (shared, sync, ckpt) = (shared.clone(), sync.clone(), ckpt_tx.clone());
            std::thread::Builder::new()
                .name("kilonova-fsync".into())
                .spawn(move || syncer::run_syncer(shared, sync, sync_rx, ckpt))
                .map_err(|e| StorageError::io("starting the journal sync thread", e))?
        };
        Ok(Writer {
            direct: direct::DirectWriter::default(),
            group_buf: direct::GroupBuf::default(),
            shared,
            rx,
            next_file_no,
            next_lsn,
            next_segment_id,
            active: None,
            active_since: None,
            segments,
            sync,
            sync_tx: Some(sync_tx),
            ckpt_tx: Some(ckpt_tx),
            syncer: Some(syncer),
            checkpointer: Some(checkpointer),
            deleter: Some(deleter),
        })
    }

    /// The writer thread's body: runs until `Shutdown` or until every sender is gone.
    pub fn run(mut self) {
        let max_bytes = self.shared.config.group_commit_max_bytes;
        let max_delay = Duration::from_micros(self.shared.config.group_commit_max_delay_us);
        let mut shutdown_ack = None;
        let mut checkpoint = true;
        while let Some(first) = self.rx.blocking_recv() {
            let started = Instant::now();
            let mut bytes = first.payload_len();
            let mut batch = vec![first];
            while bytes < max_bytes {
                match self.rx.try_recv() {
                    Ok(r) => {
                        bytes += r.payload_len();
                        batch.push(r);
                    }
                    Err(mpsc::error::TryRecvError::Empty) if started.elapsed() < max_delay => {
                        std::thread::sleep(Duration::from_micros(20));
                    }
                    Err(_) => break,
                }
            }
            if let Some(i) = batch
                .iter()
                .position(|r| matches!(r.op, Op::Shutdown { .. }))
            {
                // Requests behind a shutdown are refused; the ones before it are served.
                for r in batch.drain(i..) {
                    if let Op::Shutdown { checkpoint: c } = r.op {
                        if shutdown_ack.is_none() {
                            checkpoint = c;
                        }
                        shutdown_ack.get_or_insert(r.done);
                    } else {
                        r.done.send(Err(StorageError::Closed));
                    }
                }
            }
            let t = Instant::now();
            self.process(batch);
            self.shared
                .stats
                .busy_ns
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if shutdown_ack.is_some() {
                break;
            }
        }
        self.rx.close();
        while let Ok(r) = self.rx.try_recv() {
            r.done.send(Err(StorageError::Closed));
        }
        // A clean stop leaves a checkpoint that covers everything: restart replays nothing.
        if checkpoint {
            self.seal_active();
        }
        drop(self.sync_tx.take());
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
        drop(self.ckpt_tx.take());
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
        self.shared.trash.close();
        if let Some(t) = self.deleter.take() {
            let _ = t.join();
        }
        if let Some(ack) = shutdown_ack {
            ack.send(Ok(Done::now(0)));
        }
    }

    fn process(&mut self, batch: Vec<Request>) {
        // The group is encoded into the buffer the last one used: no
        // reallocation (and copy) as it grows, once groups reached their size.
        let mut buf = std::mem::take(&mut self.group_buf);
        let mut pending: Vec<Pending> = Vec::with_capacity(batch.len());
        let max_entry = self.shared.config.max_entry_bytes;
        for req in batch {
            let (prefix, data): (&[u8], &[u8]) = match &req.op {
                Op::Append { prefix, data, .. } => (prefix.as_slice(), data),
                Op::Move { data, .. } => (&[], data),
                _ => (&[], &[]),
            };
            let payload_len = prefix.len() + data.len();
            if payload_len > max_entry {
                req.done.send(Err(StorageError::EntryTooLarge {
                    size: payload_len,
                    max: max_entry,
                }));
                continue;
            }
            // Make room before deciding anything, so a failed roll assigns no
            // entry id (it fences the appended segment, below).
            // Entries may not use the file's reserve: it keeps room for deletes
            // (which free space) when no new file can be created.
            let size = record::encoded_len(payload_len) as u64;
            let reserve = match req.op {
                Op::Append { .. } | Op::Move { .. } => CONTROL_RESERVE_BYTES,
                _ => 0,
            };
            if !self.fits(buf.len() as u64 + size + reserve) {
                self.write_group(&mut buf, &mut pending);
                let for_entries = reserve > 0;
                let rolled = self.roll(for_entries).and_then(|()| {
                    // A file made for control records only (the disk is full) takes no entry.
                    match self.fits(size + reserve) {
                        true => Ok(()),
                        false => Err(StorageError::DiskFull {
                            context: "creating a journal file",
                        }),
                    }
                });
                match &rolled {
                    Ok(()) if for_entries => self.shared.health.rolled(),
                    Ok(()) => {}
                    Err(e) if for_entries => self.shared.health.roll_failed(e),
                    Err(e) => self.shared.health.failed(e),
                }
                if let Err(e) = rolled {
                    // The entry is not written. Its segment's owner already
                    // counted it (positions, message index, cache), so the
                    // segment takes no more entries either: the owner seals it
                    // and goes on from what is durable, in a new segment.
                    if let Op::Append { segment, .. } = &req.op {
                        fence_segment(&self.shared, *segment);
                    }
                    req.done.send(Err(e));
                    continue;
                }
            }
            let (kind, segment, entry, from_file) = match self.validate(&req.op) {
                Ok(Decision::Write {
                    kind,
                    segment,
                    entry,
                    from_file,
                }) => (kind, segment, entry, from_file),
                Ok(Decision::Answer(v)) => {
                    req.done.send(Ok(Done::now(v)));
                    continue;
                }
                Err(e) => {
                    req.done.send(Err(e));
                    continue;
                }
            };
            let Some(active) = self.active.as_ref() else {
                req.done.send(Err(StorageError::Closed));
                continue;
            };
            if buf.is_empty() {
                buf.start(active.pos);
            }
            let offset = active.pos + buf.len() as u64;
            let header = RecordHeader {
                kind,
                lsn: self.next_lsn,
                durable_lsn: self.sync.durable_lsn.load(Ordering::Acquire),
                segment,
                entry,
            };
            self.next_lsn += 1;
            record::encode_parts(&header, prefix, data, buf.encoder());
            pending.push(Pending {
                done: req.done,
                queued_at: req.queued_at,
                kind,
                segment,
                entry,
                offset,
                payload_len: payload_len as u64,
                from_file,
            });
        }
        self.write_group(&mut buf, &mut pending);
        if buf.capacity() <= MAX_KEPT_GROUP_BUFFER {
            self.group_buf = buf;
        }
    }

    /// Whether `bytes` more fit in the active file (a broken file takes nothing).
    fn fits(&self, bytes: u64) -> bool {
        self.active.as_ref().is_some_and(|f| {
            !f.broken
                && self.sync.broken_file.load(Ordering::Acquire) != f.no
                && f.pos + bytes <= f.len
        })
    }

    /// Checks a request against the writer's view of the segments (which includes
    /// groups not yet durable) and decides the record to write.
    fn validate(&mut self, op: &Op) -> Result<Decision> {
        let fenced = |s: SegmentId| {
            self.shared
                .index
                .read()
                .map(|i| i.segments.get(&s).is_some_and(|x| x.fenced))
                .unwrap_or(true)
        };
        Ok(match op {
            Op::Create { at_least, below } => {
                let id = self.next_segment_id.max(*at_least);
                if id >= *below {
                    return Err(StorageError::Log(format!(
                        "no segment id left below {below} in {}",
                        self.shared.config.dir.display()
                    )));
                }
                self.next_segment_id = id + 1;
                self.segments.insert(
                    id,
                    SegView {
                        next_entry: 0,
                        sealed: false,
                    },
                );
                Decision::write(RecordKind::Create, id, 0)
            }
            Op::Append { segment, .. } => {
                let s = *segment;
                let Some(view) = self.segments.get(&s).copied() else {
                    return Err(StorageError::NoSuchSegment(s));
                };
                if view.sealed {
                    return Err(StorageError::SegmentSealed(s));
                }
                if fenced(s) {
                    return Err(StorageError::SegmentFenced(s));
                }
                if let Some(v) = self.segments.get_mut(&s) {
                    v.next_entry += 1;
                }
                Decision::write(RecordKind::Entry, s, view.next_entry)
            }
            Op::Seal { segment } => {
                let s = *segment;
                let Some(view) = self.segments.get_mut(&s) else {
                    return Err(StorageError::NoSuchSegment(s));
                };
                if view.sealed {
                    return Ok(Decision::Answer(view.next_entry));
                }
                view.sealed = true;
                Decision::write(RecordKind::Seal, s, view.next_entry)
            }
            Op::Delete { segment } => {
                let s = *segment;
                if self.segments.remove(&s).is_none() {
                    return Err(StorageError::NoSuchSegment(s));
                }
                Decision::write(RecordKind::Delete, s, 0)
            }
            Op::Move {
                segment,
                entry,
                from_file,
                ..
            } => {
                let still_there = self.segments.contains_key(segment)
                    && self.shared.index.read().is_ok_and(|i| {
                        i.segments
                            .get(segment)
                            .and_then(|x| x.locs.get(*entry as usize))
                            .is_some_and(|l| !l.is_missing() && l.file() == *from_file)
                    });
                if !still_there {
                    return Ok(Decision::Answer(*entry));
                }
                Decision::Write {
                    kind: RecordKind::Moved,
                    segment: *segment,
                    entry: *entry,
                    from_file: *from_file,
                }
            }
            Op::Shutdown { .. } => Decision::Answer(0),
        })
    }

    /// Writes the encoded group and hands it to the syncer.
    fn write_group(&mut self, buf: &mut direct::GroupBuf, pending: &mut Vec<Pending>) {
        if pending.is_empty() {
            buf.clear();
            return;
        }
        let Some(active) = self.active.as_mut() else {
            fail_all(pending, &StorageError::Closed);
            buf.clear();
            return;
        };
        // Before the write: a direct one pads the buffer to its block's end.
        let len = buf.len() as u64;
        let wrote = match &active.direct {
            Some(direct) => self
                .direct
                .write_group(direct, &active.handle, buf, active.pos),
            None => active.handle.write_all_at(buf.records(), active.pos),
        };
        match wrote {
            Ok(()) => {
                let written_at = Instant::now();
                for p in pending.iter().filter(|p| p.kind == RecordKind::Entry) {
                    let waited = written_at.saturating_duration_since(p.queued_at);
                    self.shared
                        .stats
                        .append_written_us
                        .observe(waited.as_micros() as u64);
                }
                active.pos += len;
                self.shared
                    .stats
                    .bytes_written
                    .fetch_add(len, Ordering::Relaxed);
                let group = Group {
                    file: active.no,
                    handle: active.handle.clone(),
                    pending: std::mem::take(pending),
                    last_lsn: self.next_lsn.saturating_sub(1),
                    failures_seen: self.shared.health.failures(),
                    written_at,
                };
                let sent = self
                    .sync_tx
                    .as_ref()
                    .is_some_and(|tx| tx.send(SyncMsg::Group(group)).is_ok());
                if !sent {
                    tracing::error!("journal sync thread is gone");
                }
            }
            Err(e) => {
                let e = StorageError::io("writing the journal", e);
                tracing::warn!(error = %e, file = active.no, "journal write failed; rolling to a new file");
                // After a failed write the file's tail is unknown: never write to it again.
                active.broken = true;
                self.shared.health.failed(&e);
                fence_and_fail(&self.shared, pending, &e);
            }
        }
        buf.clear();
    }

    /// Opens the next journal file, then hands the active one to be sealed in the
    /// background. If no new file can be created the active one stays, so control
    /// records can still use its reserve; if it has none left (or there is none,
    /// as after a start on a full disk), a control record (`for_entries` false)
    /// gets a file of the reserve's size, so deleting — the way to free space —
    /// works on a full disk.
    fn roll(&mut self, for_entries: bool) -> Result<()> {
        let want = self.next_file_no;
        let prepared =
            {
                let mut slot =
                    self.sync.ready.lock().map_err(|_| {
                        StorageError::Log("journal ready-file lock poisoned".into())
                    })?;
                while matches!(*slot, ReadySlot::Preparing(n) if n == want) {
                    slot = self.sync.ready_changed.wait(slot).map_err(|_| {
                        StorageError::Log("journal ready-file lock poisoned".into())
                    })?;
                }
                match std::mem::take(&mut *slot) {
                    ReadySlot::Ready(f) if f.no == want => Some(f),
                    _ => None,
                }
            };
        let next = match prepared {
            Some(f) => f,
            // Not prepared (first roll, or preparing failed): create it here.
            None => match files::create_file_reclaiming(
                &self.shared,
                want,
                self.shared.config.log_file_bytes,
                RECLAIM_WAIT,
            ) {
                Ok(f) => f,
                Err(StorageError::DiskFull { .. }) if !for_entries => {
                    files::create_control_file(&self.shared, want)?
                }
                Err(e) => return Err(e),
            },
        };
        self.next_file_no = want + 1;
        if let (Some(tx), Ok(mut slot)) = (&self.ckpt_tx, self.sync.ready.lock()) {
            *slot = ReadySlot::Preparing(self.next_file_no);
            // Written with zeros only when the file the writer leaves lasted
            // long enough: the zeros then cost little bandwidth beside the
            // appends, whose fdatasyncs each save a metadata write. A writer
            // that fills files fast writes big groups, and the zeros would
            // double its writes.
            let lasted = self.active_since.map(|at| at.elapsed());
            let space = match (self.shared.config.zero_fill_after, lasted) {
                (Some(min), Some(t)) if t >= min => files::Space::Written,
                (Some(_), None) => files::Space::Written,
                _ => files::Space::Allocated,
            };
            if tx.send(CkptMsg::Prepare(self.next_file_no, space)).is_err() {
                *slot = ReadySlot::Empty;
            }
        }
        self.seal_active();
        self.shared.active_file.store(next.no, Ordering::Release);
        self.active = Some(next);
        self.active_since = Some(Instant::now());
        Ok(())
    }

    /// Leaves the active file: the syncer seals it after its last group.
    fn seal_active(&mut self) {
        if let Some(active) = self.active.take() {
            let job = SealJob {
                file: active.no,
                next_segment_id: self.next_segment_id,
                next_lsn: self.next_lsn,
            };
            if let Some(tx) = &self.sync_tx {
                if tx.send(SyncMsg::Seal(job)).is_ok() {
                    self.shared.seals.sealed();
                }
            }
        }
    }
}

/// Fails a group's requests; segments that lost an append take no more (ids stay dense).
fn fence_segment(shared: &StoreState, segment: SegmentId) {
    if let Ok(mut index) = shared.index.write() {
        if let Some(seg) = index.segments.get_mut(&segment) {
            seg.fenced = true;
        }
    }
    shared.segment_closed();
}

fn fence_and_fail(shared: &StoreState, pending: &mut Vec<Pending>, e: &StorageError) {
    if let Ok(mut index) = shared.index.write() {
        for p in pending.iter().filter(|p| p.kind == RecordKind::Entry) {
            if let Some(seg) = index.segments.get_mut(&p.segment) {
                seg.fenced = true;
            }
        }
    }
    shared.segment_closed();
    fail_all(pending, e);
}

fn fail_all(pending: &mut Vec<Pending>, e: &StorageError) {
    for p in pending.drain(..) {
        p.done.send(Err(e.duplicate()));
    }
}
