//! After a group is written: the syncer thread covers written groups with one
//! fdatasync, publishes their locations to the shared index and completes
//! their callers; the checkpointer thread writes a sealed file's index and a
//! checkpoint, and creates the next journal file ahead of need.

use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use crate::checkpoint::{self, Checkpoint, IdxRecord, SegmentRow};
use crate::error::{Result, StorageError};
use crate::index::Loc;
use crate::record::RecordKind;
use crate::store_state::StoreState;

use super::files::{create_file, reclaim_dead_files};
use super::{fail_all, fence_and_fail, CkptMsg, Group, ReadySlot, SealJob, SyncMsg, SyncState};

/// The syncer thread's body: fdatasync, publish, complete — until the writer leaves.
/// Sealed files go on to a checkpointer thread, so their index and checkpoint
/// fsyncs never delay a completion.
pub(super) fn run_syncer(
    shared: Arc<StoreState>,
    sync: Arc<SyncState>,
    rx: std_mpsc::Receiver<SyncMsg>,
    ckpt: std_mpsc::Sender<CkptMsg>,
) {
    while let Ok(first) = rx.recv() {
        // Everything written so far is covered by the next fdatasync.
        let mut msgs = vec![first];
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
        }
        let mut groups = Vec::new();
        for m in msgs {
            match m {
                SyncMsg::Group(g) => groups.push(g),
                SyncMsg::Seal(job) => {
                    sync_and_publish(&shared, &sync, std::mem::take(&mut groups));
                    let _ = ckpt.send(CkptMsg::Seal(job));
                }
            }
        }
        sync_and_publish(&shared, &sync, groups);
    }
}

/// The checkpointer thread's body: seals files the writer left (index + checkpoint)
/// and creates the next journal file ahead of need, off the write path.
pub(super) fn run_checkpointer(
    shared: Arc<StoreState>,
    sync: Arc<SyncState>,
    rx: std_mpsc::Receiver<CkptMsg>,
) {
    for msg in rx {
        match msg {
            CkptMsg::Seal(job) => {
                if let Err(e) = checkpoint_file(&shared, &sync, &job) {
                    // The file keeps no index: recovery scans it instead. Nothing is lost.
                    tracing::warn!(file = job.file, error = %e, "could not checkpoint a sealed journal file");
                }
                shared.seals.checkpointed();
            }
            CkptMsg::Prepare(no, space) => {
                reclaim_dead_files(&shared);
                let made = create_file(&shared, no, shared.config.log_file_bytes, space);
                if let Ok(mut slot) = sync.ready.lock() {
                    *slot = match made {
                        Ok(f) => ReadySlot::Ready(f),
                        // The writer creates it itself when it needs it (and reports the error).
                        Err(e) => {
                            tracing::debug!(file = no, error = %e, "could not prepare a journal file");
                            ReadySlot::Empty
                        }
                    };
                }
                sync.ready_changed.notify_all();
            }
        }
    }
    // A prepared file never used stays empty: recovery reads it as an empty log.
}

/// Writes a sealed file's index and a checkpoint that starts replay after it.
///
/// The segment table is read from the index now, so it may already include
/// records of later files; replaying those again is idempotent (ADR 0001).
fn checkpoint_file(shared: &StoreState, sync: &SyncState, job: &SealJob) -> Result<()> {
    let records = sync
        .records
        .lock()
        .map_err(|_| StorageError::Log("journal records lock poisoned".into()))?
        .remove(&job.file)
        .unwrap_or_default();
    let dir = &shared.config.dir;
    let idx_bytes = checkpoint::write_idx(dir, job.file, &records)?;
    if let Ok(mut index) = shared.index.write() {
        if let Some(f) = index.files.get_mut(&job.file) {
            f.disk_bytes += idx_bytes;
        }
    }
    write_checkpoint(shared, job.file + 1, job.next_segment_id, job.next_lsn)?;
    // Only a file a checkpoint covers may be removed by GC: before that, its
    // control records (creates, deletes) are still needed by replay.
    if let Ok(mut index) = shared.index.write() {
        for (_, f) in index.files.range_mut(..=job.file) {
            f.checkpointed = true;
        }
    }
    Ok(())
}

fn sync_and_publish(shared: &StoreState, sync: &SyncState, groups: Vec<Group>) {
    // Groups are in write order; consecutive groups of one file share one fdatasync.
    let mut groups = groups.into_iter().peekable();
    while let Some(first) = groups.next() {
        let file = first.file;
        let mut run = vec![first];
        while let Some(g) = groups.next_if(|g| g.file == file) {
            run.push(g);
        }
        let result = if sync.broken_file.load(Ordering::Acquire) == file {
            // After a failed fdatasync a later one may falsely succeed: trust nothing more here.
            Err(StorageError::io(
                "fsyncing the journal",
                std::io::Error::other("an earlier fdatasync of this journal file failed"),
            ))
        } else {
            let t = Instant::now();
            shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            let r = run[0]
                .handle
                .sync_data()
                .map_err(|e| StorageError::io("fsyncing the journal", e));
            let took = t.elapsed();
            shared
                .stats
                .sync_ns
                .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            shared.stats.fsync_us.observe(took.as_micros() as u64);
            shared
                .stats
                .group_commit_entries
                .observe(run.iter().map(|g| g.pending.len() as u64).sum());
            r
        };
        match result {
            Ok(()) => {
                if let Some(last) = run.last() {
                    sync.durable_lsn.fetch_max(last.last_lsn, Ordering::AcqRel);
                }
                publish(shared, sync, run);
            }
            Err(e) => {
                shared.health.failed(&e);
                if sync.broken_file.swap(file, Ordering::AcqRel) != file {
                    tracing::warn!(error = %e, file, "journal fdatasync failed; the writer rolls to a new file");
                    shared.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
                for mut g in run {
                    fence_and_fail(shared, &mut g.pending, &e);
                }
            }
        }
    }
}

/// Makes durable groups visible in the shared index, then completes their callers.
fn publish(shared: &StoreState, sync: &SyncState, run: Vec<Group>) {
    let mut appended = 0u64;
    let failures_seen = run.last().map_or(0, |g| g.failures_seen);
    // Requests refused at publication: appends that would leave a gap in a segment
    // whose earlier append failed (the writer validated them before the fence).
    let mut refused: Vec<(usize, usize)> = Vec::new();
    {
        let Ok(mut index) = shared.index.write() else {
            for mut g in run {
                fail_all(
                    &mut g.pending,
                    &StorageError::Log("index lock poisoned".into()),
                );
            }
            return;
        };
        let Ok(mut records) = sync.records.lock() else {
            return;
        };
        for (gi, g) in run.iter().enumerate() {
            let file_records = records.entry(g.file).or_default();
            for (pi, p) in g.pending.iter().enumerate() {
                match p.kind {
                    RecordKind::Entry | RecordKind::Moved => {
                        if p.kind == RecordKind::Entry {
                            if let Some(seg) = index.segments.get_mut(&p.segment) {
                                if seg.locs.len() as u64 != p.entry {
                                    seg.fenced = true;
                                    shared.segment_closed();
                                    refused.push((gi, pi));
                                    continue;
                                }
                            }
                        }
                        if p.kind == RecordKind::Moved {
                            // Only if the entry still lives where compaction copied it from.
                            let still = index
                                .segments
                                .get(&p.segment)
                                .and_then(|x| x.locs.get(p.entry as usize))
                                .is_some_and(|l| l.file() == p.from_file);
                            if !still {
                                continue;
                            }
                        } else {
                            appended += 1;
                        }
                        index.set_loc(
                            p.segment,
                            p.entry,
                            Loc::new(g.file, p.offset),
                            p.payload_len,
                        );
                        if let Some(f) = index.files.get_mut(&g.file) {
                            f.written_entries += 1;
                        }
                        file_records.push(IdxRecord {
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
                        shared.segment_closed();
                    }
                    RecordKind::Delete => {
                        index.remove_segment(p.segment);
                        shared.segment_closed();
                    }
                }
            }
        }
    }
    shared
        .stats
        .groups
        .fetch_add(run.len() as u64, Ordering::Relaxed);
    shared
        .stats
        .entries_appended
        .fetch_add(appended, Ordering::Relaxed);
    if appended > 0 {
        shared.health.succeeded(failures_seen);
    }
    let durable_at = Instant::now();
    // Tasks woken by the calls are woken once, after the last answer.
    super::wake_after::answering(|| answer_run(shared, run, &refused, durable_at));
}

/// Answers a published run's requests, in order.
fn answer_run(
    shared: &StoreState,
    run: Vec<Group>,
    refused: &[(usize, usize)],
    durable_at: Instant,
) {
    for (gi, g) in run.into_iter().enumerate() {
        let synced = durable_at.saturating_duration_since(g.written_at);
        shared
            .stats
            .append_durable_us
            .observe_n(synced.as_micros() as u64, g.entries());
        for (pi, p) in g.pending.into_iter().enumerate() {
            if refused.contains(&(gi, pi)) {
                p.done.send(Err(StorageError::SegmentFenced(p.segment)));
                continue;
            }
            let value = match p.kind {
                RecordKind::Entry | RecordKind::Moved | RecordKind::Seal => p.entry,
                _ => p.segment,
            };
            p.done.send(Ok(super::Done {
                value,
                at: durable_at,
            }));
        }
    }
}

/// Writes a checkpoint of the shared index's segment table.
pub(crate) fn write_checkpoint(
    shared: &StoreState,
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
