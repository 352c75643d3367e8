//! Write-ahead objects: a cluster broker's appends, of every log it serves,
//! grouped into one object per flush (issue #26's write path, ADR 0006).
//!
//! [`WalWriter::append`] queues an entry and resolves once the object
//! holding it is durable in the object store — the moment a publish may be
//! acknowledged. A flush writes everything queued when the first queued
//! entry has waited `flush_interval`, or as soon as `max_object_bytes` or
//! `max_object_entries` are queued, whichever comes first. Up to
//! `flushes_in_flight` flushes are written at once (the next one's PUT
//! starts while earlier ones are still being written or committed). So
//! requests to the store grow with the flush rate (at most one per interval
//! at low load, one per `max_object_bytes` at high load), never with the
//! message rate or the number of logs.
//!
//! Each object is created only if absent, under
//! `<prefix>/<writer incarnation>/<sequence>.wal` (a random incarnation per
//! writer, sequence numbers from 1): nothing ever overwrites an object. A
//! failed flush fails every append it held (the store's own retries have
//! run by then); the caller decides what its publishes get. Appends queued
//! behind it go in the next flush.
//!
//! Which objects a log's entries are in is the caller's to record: a writer
//! started with [`WalWriter::start_with_commit`] hands each durable flush
//! to a [`FlushCommit`] (in cluster mode, one metadata transaction per
//! flush guarded by the bundles' ownership epochs) and resolves the flush's
//! appends only once that returned `Ok`; a failed commit fails every append
//! of the flush ([`ObjectStoreError::FlushCommit`]). A flush's commit
//! starts only once the previous flush's commit returned (or that flush
//! failed), so commits land one at a time, in sequence order. After a
//! failed flush (PUT or commit), the logs it held are halted: their appends
//! fail ([`ObjectStoreError::LogHalted`]) until the caller resumes each
//! ([`WalWriter::resume_log`]), and a later flush already in flight that
//! holds entries of them is not committed (it fails with `LogHalted`) —
//! otherwise a log's later entries could be committed after earlier ones
//! that were not, leaving a gap in its committed history. [`tail`] reads a log's committed entries back.

mod commit;
pub mod format;
mod reader;
pub mod tail;

pub use commit::{CommitError, CommitFuture, FlushCommit, FlushEntry, FlushSummary};
pub use reader::WalReader;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::PutPayload;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::bucket::Bucket;
use crate::error::{ObjectStoreError, Result};

/// How a [`WalWriter`] groups appends.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// The longest an append waits for its flush to start.
    pub flush_interval: Duration,
    /// A flush starts once this many bytes are queued.
    pub max_object_bytes: usize,
    /// A flush starts once this many entries are queued (it bounds what one
    /// flush commit records: a metadata transaction has a size limit).
    pub max_object_entries: usize,
    /// The longest a flush commit may take; past it the flush fails as
    /// [`CommitError::Unavailable`] (its outcome unknown) and the writer
    /// goes on.
    pub commit_timeout: Duration,
    /// Appends queued at most (then [`WalWriter::append`] waits).
    pub queue_entries: usize,
    /// Flushes written at once: the next flush's PUT starts while earlier
    /// ones are still being written or committed (commits stay one at a
    /// time, in sequence order). 1: one flush at a time.
    pub flushes_in_flight: usize,
    /// Key prefix of this writer's objects (relative to the bucket's).
    pub prefix: String,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            flush_interval: Duration::from_millis(5),
            max_object_bytes: 8 << 20,
            max_object_entries: 16_384,
            commit_timeout: Duration::from_secs(10),
            queue_entries: 65_536,
            flushes_in_flight: 4,
            prefix: "wal".into(),
        }
    }
}

/// Where an appended entry is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalPosition {
    /// The object's key.
    pub object: Arc<str>,
    /// The object's sequence number (per writer, from 1).
    pub sequence: u64,
    /// The entry's place in the object (0-based).
    pub index: u32,
}

/// A writer's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    pub appends: u64,
    /// Flushes whose object is durable and whose commit (if any) returned Ok.
    pub flushes: u64,
    /// Flushes whose PUT or commit failed.
    pub failed_flushes: u64,
    /// Commits that failed (a subset of `failed_flushes`).
    pub failed_commits: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    flushes: AtomicU64,
    failed_flushes: AtomicU64,
    failed_commits: AtomicU64,
    bytes: AtomicU64,
}

struct Append {
    log: u64,
    tag: u64,
    data: Bytes,
    queued: Instant,
    done: oneshot::Sender<Result<WalPosition>>,
}

/// What the flushing task is sent, in the order callers send it.
enum Msg {
    Append(Append),
    /// Takes appends of `log` again after a failed flush.
    Resume {
        log: u64,
        done: oneshot::Sender<()>,
    },
}

/// Groups appends into write-ahead objects. Cheap to clone; the flushing
/// task ends when every clone is dropped (after flushing what is queued).
#[derive(Clone)]
pub struct WalWriter {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
    incarnation: Arc<str>,
}

impl WalWriter {
    /// Starts a writer (its flushing task) on the current tokio runtime; an
    /// append resolves once its object is durable.
    pub fn start(bucket: Bucket, config: WalConfig) -> Self {
        Self::spawn(bucket, config, None)
    }

    /// Starts a writer whose every flush is committed by `committer` after
    /// its object is durable: an append resolves `Ok` only once both are
    /// done, and fails with [`ObjectStoreError::FlushCommit`] if the commit
    /// failed.
    pub fn start_with_commit(
        bucket: Bucket,
        config: WalConfig,
        committer: Arc<dyn FlushCommit>,
    ) -> Self {
        Self::spawn(bucket, config, Some(committer))
    }

    fn spawn(bucket: Bucket, config: WalConfig, committer: Option<Arc<dyn FlushCommit>>) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_entries.max(1));
        let counters = Arc::new(Counters::default());
        let incarnation: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let flusher = Flusher {
            bucket,
            config,
            counters: counters.clone(),
            incarnation: incarnation.clone(),
            committer,
            sequence: 0,
            next: None,
            halted: Arc::default(),
            in_flight: VecDeque::new(),
            last_done: None,
        };
        tokio::spawn(flusher.run(rx));
        WalWriter {
            tx,
            counters,
            incarnation,
        }
    }

    /// Queues `data` for log `log` (tag 0); resolves once it is durable and
    /// committed (or its flush failed).
    pub async fn append(&self, log: u64, data: Bytes) -> Result<WalPosition> {
        self.append_tagged(log, 0, data).await
    }

    /// Queues `data` for log `log` with the caller's `tag` (its index in the
    /// log), which the flush commit receives with the entry's place
    /// ([`FlushEntry`]); resolves once it is durable and committed (or its
    /// flush failed).
    pub async fn append_tagged(&self, log: u64, tag: u64, data: Bytes) -> Result<WalPosition> {
        self.enqueue_tagged(log, tag, data).await?.await
    }

    /// Queues `data` for log `log` with `tag`, as [`WalWriter::append_tagged`],
    /// and returns once it is queued (waiting only for room in the queue):
    /// the [`WalAppend`] resolves once it is durable and committed. So a
    /// caller can queue a log's entries in order without waiting for each.
    pub async fn enqueue_tagged(&self, log: u64, tag: u64, data: Bytes) -> Result<WalAppend> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Msg::Append(Append {
                log,
                tag,
                data,
                queued: Instant::now(),
                done,
            }))
            .await
            .map_err(|_| writer_stopped("wal append"))?;
        Ok(WalAppend(answer))
    }

    /// Takes appends of `log` again after a failed flush halted it (a writer
    /// with a flush commit only: see [`ObjectStoreError::LogHalted`]).
    /// Appends sent after this returns are taken; those sent before were
    /// refused. The caller first settles where the log stands (what was
    /// committed), so that its next tag follows the last committed one.
    pub async fn resume_log(&self, log: u64) -> Result<()> {
        let (done, answer) = oneshot::channel();
        let closed = || writer_stopped("wal resume");
        self.tx
            .send(Msg::Resume { log, done })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())
    }

    /// This writer's random id, part of every key it writes.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    pub fn stats(&self) -> WalStats {
        let c = &self.counters;
        WalStats {
            appends: c.appends.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            failed_flushes: c.failed_flushes.load(Ordering::Relaxed),
            failed_commits: c.failed_commits.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Writes `entries` (log id, bytes) as one write-ahead object under
/// `relative` (a key relative to the bucket's prefix), created only if
/// absent, outside any writer: what a compaction rewrites from flushed
/// objects. Returns the object's full key.
pub async fn write_object(
    bucket: &Bucket,
    relative: &str,
    entries: &[(u64, Bytes)],
) -> Result<String> {
    let key = bucket.key(relative);
    let parts = format::encode_wal(0, entries).map_err(|e| ObjectStoreError::Failed {
        op: "wal encode",
        key: key.clone(),
        detail: e.to_string(),
    })?;
    bucket
        .put_if_absent(&key, PutPayload::from_iter(parts))
        .await?;
    Ok(key)
}

/// An append queued by [`WalWriter::enqueue_tagged`]: resolves once the
/// entry is durable and committed (or its flush failed).
pub struct WalAppend(oneshot::Receiver<Result<WalPosition>>);

impl std::future::Future for WalAppend {
    type Output = Result<WalPosition>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(writer_stopped("wal append"))))
    }
}

fn writer_stopped(op: &'static str) -> ObjectStoreError {
    ObjectStoreError::Failed {
        op,
        key: String::new(),
        detail: "the write-ahead writer stopped".into(),
    }
}

struct Flusher {
    bucket: Bucket,
    config: WalConfig,
    counters: Arc<Counters>,
    incarnation: Arc<str>,
    committer: Option<Arc<dyn FlushCommit>>,
    sequence: u64,
    /// An append taken from the queue that did not fit the last flush.
    next: Option<Append>,
    /// Logs with entries in a failed flush (with a committer only): their
    /// appends are refused until [`WalWriter::resume_log`], so that no later
    /// entry of theirs is committed after ones that were not. Shared with
    /// the flushes in flight, which add to it as they fail and check it
    /// before committing.
    halted: Arc<Mutex<HashSet<u64>>>,
    /// Flushes started and not finished, oldest first.
    in_flight: VecDeque<tokio::task::JoinHandle<()>>,
    /// Resolves once the last flush started has committed or failed: the
    /// next one commits only then (commits land in sequence order).
    last_done: Option<oneshot::Receiver<()>>,
}

fn halted_logs(halted: &Mutex<HashSet<u64>>) -> std::sync::MutexGuard<'_, HashSet<u64>> {
    halted.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for the oldest flush in flight to end (and forgets it).
async fn first_done(in_flight: &mut VecDeque<tokio::task::JoinHandle<()>>) {
    if let Some(h) = in_flight.front_mut() {
        if let Err(e) = h.await {
            tracing::error!(error = %e, "a write-ahead flush task failed");
        }
        in_flight.pop_front();
    }
}

/// One flush, as its task runs it.
struct Flush {
    bucket: Bucket,
    committer: Option<Arc<dyn FlushCommit>>,
    commit_timeout: Duration,
    counters: Arc<Counters>,
    incarnation: Arc<str>,
    halted: Arc<Mutex<HashSet<u64>>>,
    key: String,
    sequence: u64,
    batch: Vec<Append>,
    bytes: usize,
    /// The previous flush's end (its commit, or its failure).
    previous: Option<oneshot::Receiver<()>>,
    /// Tells the next flush this one ended (dropped at the end).
    done: oneshot::Sender<()>,
}

impl Flusher {
    /// The append a message brings, if it is one to write: a resume is
    /// done here (once every flush in flight ended: one of them may hold
    /// entries of the log queued before it halted), an append of a halted
    /// log refused.
    async fn admit(&mut self, msg: Msg) -> Option<Append> {
        match msg {
            Msg::Resume { log, done } => {
                self.wait_in_flight(0).await;
                halted_logs(&self.halted).remove(&log);
                let _ = done.send(());
                None
            }
            Msg::Append(a) if halted_logs(&self.halted).contains(&a.log) => {
                let _ = a.done.send(Err(ObjectStoreError::LogHalted { log: a.log }));
                None
            }
            Msg::Append(a) => Some(a),
        }
    }

    /// Waits until at most `most` flushes are in flight.
    async fn wait_in_flight(&mut self, most: usize) {
        self.in_flight.retain(|h| !h.is_finished());
        while self.in_flight.len() > most {
            if let Some(h) = self.in_flight.pop_front() {
                if let Err(e) = h.await {
                    tracing::error!(error = %e, "a write-ahead flush task failed");
                }
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            let first = match self.next.take() {
                Some(a) => a,
                None => match rx.recv().await {
                    Some(m) => match self.admit(m).await {
                        Some(a) => a,
                        None => continue,
                    },
                    None => {
                        self.wait_in_flight(0).await;
                        return;
                    }
                },
            };
            let deadline = first.queued + self.config.flush_interval;
            let mut bytes = first.data.len();
            let mut batch = vec![first];
            let max_entries = self
                .config
                .max_object_entries
                .clamp(1, format::MAX_WAL_ENTRIES);
            // While a flush is in flight, a batch waits for it past the
            // interval unless it reached this many bytes: at low load one
            // flush at a time, each object as large as the wait made it;
            // under load several, each a fair share of `max_object_bytes`.
            let early = self.config.max_object_bytes / self.config.flushes_in_flight.max(1);
            while bytes < self.config.max_object_bytes && batch.len() < max_entries {
                let next = match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                        // `None` once the interval is up (or the queue closed).
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(m) => m,
                            Err(_) => continue,
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.in_flight.retain(|h| !h.is_finished());
                        if self.in_flight.is_empty() || bytes >= early {
                            break;
                        }
                        tokio::select! {
                            m = rx.recv() => m,
                            () = first_done(&mut self.in_flight) => break,
                        }
                    }
                };
                let Some(m) = next else { break };
                let Some(a) = self.admit(m).await else {
                    continue;
                };
                if bytes + a.data.len() > self.config.max_object_bytes {
                    self.next = Some(a);
                    break;
                }
                bytes += a.data.len();
                batch.push(a);
            }
            let most = self.config.flushes_in_flight.max(1);
            self.wait_in_flight(most - 1).await;
            self.start(batch, bytes);
        }
    }

    /// Starts flushing `batch` (PUT, then commit after the previous
    /// flush's end) in a task of its own.
    fn start(&mut self, batch: Vec<Append>, bytes: usize) {
        self.sequence += 1;
        let sequence = self.sequence;
        let key = self.bucket.key(&format!(
            "{}/{}/{sequence:020}.wal",
            self.config.prefix, self.incarnation
        ));
        let (done, next_waits) = oneshot::channel();
        let flush = Flush {
            bucket: self.bucket.clone(),
            committer: self.committer.clone(),
            commit_timeout: self.config.commit_timeout,
            counters: self.counters.clone(),
            incarnation: self.incarnation.clone(),
            halted: self.halted.clone(),
            key,
            sequence,
            batch,
            bytes,
            previous: self.last_done.replace(next_waits),
            done,
        };
        self.in_flight.push_back(tokio::spawn(flush.run()));
    }
}

impl Flush {
    async fn run(mut self) {
        let entries: Vec<(u64, Bytes)> =
            self.batch.iter().map(|a| (a.log, a.data.clone())).collect();
        let stored = match format::encode_wal(self.sequence, &entries) {
            Ok(parts) => {
                self.bucket
                    .put_if_absent(&self.key, PutPayload::from_iter(parts))
                    .await
            }
            Err(e) => Err(ObjectStoreError::Failed {
                op: "wal encode",
                key: self.key.clone(),
                detail: e.to_string(),
            }),
        };
        // Commits land in sequence order: after the previous flush's.
        if let Some(previous) = self.previous.take() {
            let _ = previous.await;
        }
        let object: Arc<str> = self.key.clone().into();
        let result = match stored {
            Ok(()) => self.commit(&object).await,
            Err(e) => Err(e),
        };
        let c = &self.counters;
        c.appends
            .fetch_add(self.batch.len() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                c.flushes.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(self.bytes as u64, Ordering::Relaxed);
                let _ = self.done.send(());
                for (i, a) in self.batch.into_iter().enumerate() {
                    let _ = a.done.send(Ok(WalPosition {
                        object: object.clone(),
                        sequence: self.sequence,
                        index: i as u32,
                    }));
                }
            }
            Err(e) => {
                c.failed_flushes.fetch_add(1, Ordering::Relaxed);
                if matches!(e, ObjectStoreError::FlushCommit { .. }) {
                    c.failed_commits.fetch_add(1, Ordering::Relaxed);
                }
                // Halted before the next flush may commit, and before any
                // caller hears of the failure.
                if self.committer.is_some() {
                    halted_logs(&self.halted).extend(self.batch.iter().map(|a| a.log));
                }
                let _ = self.done.send(());
                tracing::warn!(key = %object, entries = self.batch.len(), error = %e, "a write-ahead flush failed: its appends fail");
                for a in self.batch {
                    let _ = a.done.send(Err(for_each_append(&object, &e)));
                }
            }
        }
    }

    /// Commits the durable flush `object` (Ok without a committer). Refused
    /// if a log of the flush was halted meanwhile (an earlier flush holding
    /// entries of it failed): its entries here must not be committed after
    /// ones that were not.
    async fn commit(&self, object: &Arc<str>) -> Result<()> {
        let Some(committer) = &self.committer else {
            return Ok(());
        };
        let halted = {
            let halted = halted_logs(&self.halted);
            self.batch
                .iter()
                .find(|a| halted.contains(&a.log))
                .map(|a| a.log)
        };
        if let Some(log) = halted {
            return Err(ObjectStoreError::LogHalted { log });
        }
        let summary = FlushSummary {
            object: object.clone(),
            incarnation: self.incarnation.clone(),
            sequence: self.sequence,
            entries: self
                .batch
                .iter()
                .enumerate()
                .map(|(i, a)| FlushEntry {
                    log: a.log,
                    tag: a.tag,
                    index: i as u32,
                    bytes: u32::try_from(a.data.len()).unwrap_or(u32::MAX),
                })
                .collect(),
        };
        let timeout = self.commit_timeout;
        let outcome = match tokio::time::timeout(timeout, committer.commit(&summary)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(CommitError::Unavailable(format!(
                "the flush commit took over {timeout:?}"
            ))),
        };
        outcome.map_err(|error| ObjectStoreError::FlushCommit {
            key: object.to_string(),
            error,
        })
    }
}

/// A failed flush's error, for each of its appends: a failed commit, a
/// halted log and an unavailable store keep their kind (what a caller acts
/// on), the rest say what failed.
fn for_each_append(object: &str, e: &ObjectStoreError) -> ObjectStoreError {
    match e {
        ObjectStoreError::FlushCommit { key, error } => ObjectStoreError::FlushCommit {
            key: key.clone(),
            error: error.clone(),
        },
        ObjectStoreError::LogHalted { log } => ObjectStoreError::LogHalted { log: *log },
        ObjectStoreError::Unavailable { op, key, detail } => ObjectStoreError::Unavailable {
            op,
            key: key.clone(),
            detail: detail.clone(),
        },
        other => ObjectStoreError::Failed {
            op: "wal flush",
            key: object.to_string(),
            detail: other.to_string(),
        },
    }
}
