//! The journal writer: one thread that owns the active log file and group-commits.
//!
//! Requests arrive on a bounded channel. The thread takes the first, drains every
//! request already queued (bounded by `group_commit_max_bytes`, optionally
//! waiting up to `group_commit_max_delay_us` for more), encodes them into one
//! buffer, writes it with one `pwrite` and covers it with one `fdatasync`. Only
//! then does it publish the new locations to the shared index and complete the
//! callers: a completion means durable. Everything that arrives while one
//! fdatasync runs is covered by the next one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{self, Checkpoint, IdxRecord, SegmentRow};
use crate::error::{Result, StorageError};
use crate::index::{FileState, Loc, MAX_FILE_NO};
use crate::position::SegmentId;
use crate::record::{self, RecordHeader, RecordKind};
use crate::store::Shared;

/// What a caller asks the journal to do.
pub(crate) enum Op {
    Create,
    /// `prefix` and `data` are stored as one entry (the prefix is the managed log's header).
    Append {
        segment: SegmentId,
        prefix: Bytes,
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
    Shutdown,
}

pub(crate) struct Request {
    pub op: Op,
    pub done: oneshot::Sender<Result<u64>>,
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
    pos: u64,
    len: u64,
    /// Entry records written so far: becomes the file's index at roll.
    records: Vec<IdxRecord>,
}

/// A request accepted into the current group, with what it will change.
struct Pending {
    done: oneshot::Sender<Result<u64>>,
    kind: RecordKind,
    segment: SegmentId,
    entry: u64,
    offset: u64,
    payload_len: u64,
    from_file: u32,
}

/// Tail bytes of each journal file that only control records may use.
pub(crate) const CONTROL_RESERVE_BYTES: u64 = 64 << 10;

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

/// Changes a group makes to segments before they are visible in the shared index.
#[derive(Default)]
struct Overlay {
    next_entry: HashMap<SegmentId, u64>,
    created: HashMap<SegmentId, ()>,
    sealed: HashMap<SegmentId, ()>,
    deleted: HashMap<SegmentId, ()>,
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub rx: mpsc::Receiver<Request>,
    pub next_file_no: u32,
    pub next_lsn: u64,
    pub durable_lsn: u64,
    pub next_segment_id: u64,
    active: Option<ActiveFile>,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Request>,
        next_file_no: u32,
        next_lsn: u64,
        next_segment_id: u64,
    ) -> Self {
        Writer {
            shared,
            rx,
            next_file_no,
            next_lsn,
            durable_lsn: next_lsn.saturating_sub(1),
            next_segment_id,
            active: None,
        }
    }

    /// The thread's body: runs until `Shutdown` or until every sender is gone.
    pub fn run(mut self) {
        let max_bytes = self.shared.config.group_commit_max_bytes;
        let max_delay = Duration::from_micros(self.shared.config.group_commit_max_delay_us);
        while let Some(first) = self.rx.blocking_recv() {
            let started = Instant::now();
            let mut bytes = first.payload_len();
            let mut batch = vec![first];
            let mut shutdown = false;
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
            if let Some(i) = batch.iter().position(|r| matches!(r.op, Op::Shutdown)) {
                // Requests behind a shutdown are refused; the ones before it are served.
                for r in batch.drain(i..) {
                    if !matches!(r.op, Op::Shutdown) {
                        let _ = r.done.send(Err(StorageError::Closed));
                    } else {
                        shutdown = true;
                        let _ = r.done.send(Ok(0));
                    }
                }
            }
            let t = Instant::now();
            self.process(batch);
            self.shared
                .stats
                .busy_ns
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if shutdown {
                break;
            }
        }
        self.rx.close();
        while let Ok(r) = self.rx.try_recv() {
            let _ = r.done.send(Err(StorageError::Closed));
        }
        // A clean stop leaves a checkpoint that covers everything: restart replays nothing.
        if let Err(e) = self.seal_active() {
            tracing::warn!(error = %e, "could not checkpoint the journal at shutdown");
        }
    }

    fn process(&mut self, batch: Vec<Request>) {
        let mut buf = BytesMut::new();
        let mut pending: Vec<Pending> = Vec::with_capacity(batch.len());
        let mut overlay = Overlay::default();
        let max_entry = self.shared.config.max_entry_bytes;
        for req in batch {
            let (kind, segment, entry, from_file) = match self.validate(&req.op, &mut overlay) {
                Ok(Decision::Write {
                    kind,
                    segment,
                    entry,
                    from_file,
                }) => (kind, segment, entry, from_file),
                Ok(Decision::Answer(v)) => {
                    let _ = req.done.send(Ok(v));
                    continue;
                }
                Err(e) => {
                    let _ = req.done.send(Err(e));
                    continue;
                }
            };
            let (prefix, data): (&[u8], &[u8]) = match &req.op {
                Op::Append { prefix, data, .. } => (prefix, data),
                Op::Move { data, .. } => (&[], data),
                _ => (&[], &[]),
            };
            let payload_len = prefix.len() + data.len();
            if payload_len > max_entry {
                let _ = req.done.send(Err(StorageError::EntryTooLarge {
                    size: payload_len,
                    max: max_entry,
                }));
                continue;
            }
            let size = record::encoded_len(payload_len) as u64;
            // Entries may not use the file's reserve: it keeps room for deletes
            // (which free space) when no new file can be created.
            let reserve = match kind {
                RecordKind::Entry | RecordKind::Moved => CONTROL_RESERVE_BYTES,
                _ => 0,
            };
            let fits = self
                .active
                .as_ref()
                .is_some_and(|f| f.pos + buf.len() as u64 + size + reserve <= f.len);
            if !fits {
                if !buf.is_empty() {
                    self.commit(&mut buf, &mut pending);
                }
                // The overlay must not outlive the records it describes.
                overlay = Overlay::default();
                if let Err(e) = self.roll() {
                    let _ = req.done.send(Err(e));
                    continue;
                }
                // Re-validate against the now-published state.
                match self.validate(&req.op, &mut overlay) {
                    Ok(Decision::Write { .. }) => {}
                    Ok(Decision::Answer(v)) => {
                        let _ = req.done.send(Ok(v));
                        continue;
                    }
                    Err(e) => {
                        let _ = req.done.send(Err(e));
                        continue;
                    }
                }
            }
            let Some(active) = self.active.as_ref() else {
                let _ = req.done.send(Err(StorageError::Closed));
                continue;
            };
            let offset = active.pos + buf.len() as u64;
            let header = RecordHeader {
                kind,
                lsn: self.next_lsn,
                durable_lsn: self.durable_lsn,
                segment,
                entry,
            };
            self.next_lsn += 1;
            record::encode_parts(&header, prefix, data, &mut buf);
            pending.push(Pending {
                done: req.done,
                kind,
                segment,
                entry,
                offset,
                payload_len: payload_len as u64,
                from_file,
            });
        }
        if !pending.is_empty() {
            self.commit(&mut buf, &mut pending);
        }
    }

    /// Checks a request against the index plus this group's overlay and decides
    /// the record to write, or the answer when nothing needs writing.
    fn validate(&mut self, op: &Op, overlay: &mut Overlay) -> Result<Decision> {
        let index = self
            .shared
            .index
            .read()
            .map_err(|_| StorageError::Log("index lock poisoned".into()))?;
        let exists = |s: SegmentId, o: &Overlay| {
            !o.deleted.contains_key(&s)
                && (o.created.contains_key(&s) || index.segments.contains_key(&s))
        };
        Ok(match op {
            Op::Create => {
                let id = self.next_segment_id;
                self.next_segment_id += 1;
                overlay.created.insert(id, ());
                overlay.next_entry.insert(id, 0);
                Decision::Write {
                    kind: RecordKind::Create,
                    segment: id,
                    entry: 0,
                    from_file: 0,
                }
            }
            Op::Append { segment, .. } => {
                let s = *segment;
                if !exists(s, overlay) {
                    return Err(StorageError::NoSuchSegment(s));
                }
                if index.segments.get(&s).is_some_and(|x| x.fenced) {
                    return Err(StorageError::SegmentFenced(s));
                }
                let sealed = overlay.sealed.contains_key(&s)
                    || index.segments.get(&s).is_some_and(|x| x.sealed);
                if sealed {
                    return Err(StorageError::SegmentSealed(s));
                }
                let next = overlay
                    .next_entry
                    .entry(s)
                    .or_insert_with(|| index.segments.get(&s).map_or(0, |x| x.locs.len() as u64));
                let e = *next;
                *next += 1;
                Decision::Write {
                    kind: RecordKind::Entry,
                    segment: s,
                    entry: e,
                    from_file: 0,
                }
            }
            Op::Seal { segment } => {
                let s = *segment;
                if !exists(s, overlay) {
                    return Err(StorageError::NoSuchSegment(s));
                }
                let count =
                    overlay.next_entry.get(&s).copied().unwrap_or_else(|| {
                        index.segments.get(&s).map_or(0, |x| x.locs.len() as u64)
                    });
                if overlay.sealed.contains_key(&s)
                    || index.segments.get(&s).is_some_and(|x| x.sealed)
                {
                    return Ok(Decision::Answer(count));
                }
                overlay.sealed.insert(s, ());
                Decision::Write {
                    kind: RecordKind::Seal,
                    segment: s,
                    entry: count,
                    from_file: 0,
                }
            }
            Op::Delete { segment } => {
                let s = *segment;
                if !exists(s, overlay) {
                    return Err(StorageError::NoSuchSegment(s));
                }
                overlay.deleted.insert(s, ());
                Decision::Write {
                    kind: RecordKind::Delete,
                    segment: s,
                    entry: 0,
                    from_file: 0,
                }
            }
            Op::Move {
                segment,
                entry,
                from_file,
                ..
            } => {
                let still_there = index
                    .segments
                    .get(segment)
                    .and_then(|x| x.locs.get(*entry as usize))
                    .is_some_and(|l| !l.is_missing() && l.file() == *from_file);
                if !still_there || overlay.deleted.contains_key(segment) {
                    return Ok(Decision::Answer(*entry));
                }
                Decision::Write {
                    kind: RecordKind::Moved,
                    segment: *segment,
                    entry: *entry,
                    from_file: *from_file,
                }
            }
            Op::Shutdown => Decision::Answer(0),
        })
    }

    /// Writes and fsyncs `buf`, then publishes and completes `pending`.
    fn commit(&mut self, buf: &mut BytesMut, pending: &mut Vec<Pending>) {
        let Some(active) = self.active.as_mut() else {
            fail_all(pending, &StorageError::Closed);
            buf.clear();
            return;
        };
        let stats = &self.shared.stats;
        let t = Instant::now();
        let result = active
            .handle
            .write_all_at(buf, active.pos)
            .map_err(|e| StorageError::io("writing the journal", e))
            .and_then(|()| {
                stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                active
                    .handle
                    .sync_data()
                    .map_err(|e| StorageError::io("fsyncing the journal", e))
            });
        stats
            .sync_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                active.pos += buf.len() as u64;
                self.durable_lsn = self.next_lsn.saturating_sub(1);
                stats
                    .bytes_written
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                stats.groups.fetch_add(1, Ordering::Relaxed);
                let no = active.no;
                {
                    let Ok(mut index) = self.shared.index.write() else {
                        fail_all(pending, &StorageError::Log("index lock poisoned".into()));
                        buf.clear();
                        return;
                    };
                    for p in pending.iter() {
                        match p.kind {
                            RecordKind::Entry | RecordKind::Moved => {
                                if p.kind == RecordKind::Moved {
                                    let still = index
                                        .segments
                                        .get(&p.segment)
                                        .and_then(|x| x.locs.get(p.entry as usize))
                                        .is_some_and(|l| l.file() == p.from_file);
                                    if !still {
                                        continue;
                                    }
                                }
                                index.set_loc(
                                    p.segment,
                                    p.entry,
                                    Loc::new(no, p.offset),
                                    p.payload_len,
                                );
                                if let Some(f) = index.files.get_mut(&no) {
                                    f.written_entries += 1;
                                }
                                active.records.push(IdxRecord {
                                    segment: p.segment,
                                    entry: p.entry,
                                    offset: p.offset,
                                    payload_len: p.payload_len,
                                });
                            }
                            RecordKind::Create => {
                                index.segments.insert(p.segment, Default::default());
                            }
                            RecordKind::Seal => {
                                if let Some(s) = index.segments.get_mut(&p.segment) {
                                    s.sealed = true;
                                    s.locs.shrink_to_fit();
                                }
                            }
                            RecordKind::Delete => index.remove_segment(p.segment),
                        }
                    }
                }
                stats.entries_appended.fetch_add(
                    pending
                        .iter()
                        .filter(|p| p.kind == RecordKind::Entry)
                        .count() as u64,
                    Ordering::Relaxed,
                );
                for p in pending.drain(..) {
                    let value = match p.kind {
                        RecordKind::Entry | RecordKind::Moved | RecordKind::Seal => p.entry,
                        _ => p.segment,
                    };
                    let _ = p.done.send(Ok(value));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, file = active.no, "journal write failed; rolling to a new file");
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut index) = self.shared.index.write() {
                    for p in pending.iter().filter(|p| p.kind == RecordKind::Entry) {
                        if let Some(seg) = index.segments.get_mut(&p.segment) {
                            seg.fenced = true;
                        }
                    }
                }
                fail_all(pending, &e);
                // After a failed write or fsync the file's tail is unknown: never write
                // to it again. Its valid prefix is what the index says.
                if let Err(e) = self.seal_active() {
                    tracing::warn!(error = %e, "could not checkpoint the journal after a failed write");
                }
            }
        }
        buf.clear();
    }

    /// Opens the next journal file, then seals the active one (index + checkpoint).
    /// If no new file can be created the active one stays, so control records can
    /// still use its reserve.
    fn roll(&mut self) -> Result<()> {
        let next = self.create_file()?;
        if let Err(e) = self.seal_active() {
            // The old file keeps no index: recovery scans it instead. Nothing is lost.
            tracing::warn!(error = %e, "could not checkpoint a full journal file");
        }
        self.shared.active_file.store(next.no, Ordering::Release);
        self.active = Some(next);
        Ok(())
    }

    fn create_file(&mut self) -> Result<ActiveFile> {
        let no = self.next_file_no;
        if no > MAX_FILE_NO {
            return Err(StorageError::Log("journal file numbers exhausted".into()));
        }
        let dir = &self.shared.config.dir;
        let path = checkpoint::log_path(dir, no);
        let len = self.shared.config.log_file_bytes;
        let spare = self.shared.spares.lock().ok().and_then(|mut s| s.pop());
        let file = match spare {
            // Reuse a recycled file: its blocks are allocated already.
            Some((spare, _)) => {
                std::fs::rename(&spare, &path)
                    .map_err(|e| StorageError::io("reusing a recycled journal file", e))?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StorageError::io("opening a recycled journal file", e))?
            }
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| StorageError::io("creating a journal file", e))?,
        };
        // Preallocate so appends do not grow the file (a recycled file usually has its size).
        let size = file
            .metadata()
            .map_err(|e| StorageError::io("reading a journal file's size", e))?
            .len();
        if size < len {
            if let Err(e) =
                rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)
            {
                let _ = std::fs::remove_file(&path);
                let err = std::io::Error::from_raw_os_error(e.raw_os_error());
                return Err(StorageError::io("preallocating a journal file", err));
            }
        }
        checkpoint::sync_dir(dir)?;
        self.next_file_no += 1;
        let handle = Arc::new(file);
        {
            let mut index = self
                .shared
                .index
                .write()
                .map_err(|_| StorageError::Log("index lock poisoned".into()))?;
            index.files.insert(
                no,
                FileState {
                    handle: handle.clone(),
                    disk_bytes: len,
                    live_entries: 0,
                    written_entries: 0,
                    checkpointed: false,
                },
            );
        }
        tracing::debug!(file = no, bytes = len, "opened journal file");
        Ok(ActiveFile {
            no,
            handle,
            pos: 0,
            len,
            records: Vec::new(),
        })
    }

    /// Writes the active file's index and a checkpoint that starts replay after it.
    fn seal_active(&mut self) -> Result<()> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        let dir = &self.shared.config.dir;
        let idx_bytes = match checkpoint::write_idx(dir, active.no, &active.records) {
            Ok(n) => n,
            Err(e) => {
                // Without its index the file stays in the replay range: recovery scans it.
                return Err(e);
            }
        };
        write_checkpoint(
            &self.shared,
            active.no + 1,
            self.next_segment_id,
            self.next_lsn,
        )?;
        if let Ok(mut index) = self.shared.index.write() {
            if let Some(f) = index.files.get_mut(&active.no) {
                f.checkpointed = true;
                f.disk_bytes += idx_bytes;
            }
        }
        Ok(())
    }
}

/// Writes a checkpoint of the shared index's segment table.
pub(crate) fn write_checkpoint(
    shared: &Shared,
    replay_from_file: u32,
    next_segment_id: u64,
    next_lsn: u64,
) -> Result<()> {
    let segments = {
        let index = shared
            .index
            .read()
            .map_err(|_| StorageError::Log("index lock poisoned".into()))?;
        let mut rows: Vec<SegmentRow> = index
            .segments
            .iter()
            .map(|(id, s)| SegmentRow {
                id: *id,
                sealed: s.sealed,
                entries: s.locs.len() as u64,
            })
            .collect();
        rows.sort_by_key(|r| r.id);
        rows
    };
    checkpoint::write_checkpoint(
        &shared.config.dir,
        &Checkpoint {
            replay_from_file,
            next_segment_id,
            next_lsn,
            segments,
        },
    )
}

fn fail_all(pending: &mut Vec<Pending>, e: &StorageError) {
    for p in pending.drain(..) {
        let _ = p.done.send(Err(e.duplicate()));
    }
}
