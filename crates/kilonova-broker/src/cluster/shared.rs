//! A cluster broker's shared data path (ADR 0017): what makes a topic's
//! data and subscriptions follow it from broker to broker.
//!
//! - **Appends** go to the topic's local log (the broker's journal, a cache
//!   here: reads and dispatch work on it as in standalone) *and* to the
//!   broker's write-ahead writer, which groups the appends of every topic
//!   into one object per flush in the object store. A publish is
//!   acknowledged only once both are done and the flush is committed.
//! - **The flush commit** ([`Committer`]): one metadata transaction per
//!   flush, one record per bundle touched, guarded by the ownership epochs
//!   of those bundles (`Resources::commit_flush`): a deposed broker's flush
//!   records nothing and its appends fail.
//! - **Loading a topic** ([`Broker::load_shared`]): the local log is wiped
//!   (nothing local is relied on), the topic's committed entries are read
//!   back from its bundle's history (the compacted base and the flush
//!   records after it: [`super::history`]) and appended afresh, and its
//!   subscriptions are opened where the shared positions say.
//! - **Subscription positions** ([`CursorWriter`]) are stored by message
//!   index, written by the owner in the background whenever they change
//!   (latest value wins, one write at a time), guarded by the ownership epoch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use kilonova_metadata::bundles::{BundleRange, Commit, Held};
use kilonova_metadata::cursors::{ack_ranges_per_subscription, TopicCursors};
use kilonova_metadata::names::TopicName;
use kilonova_metadata::wal_index::{BaseRun, FlushIndexError, FlushRecords};
use kilonova_metadata::MetadataError;
use kilonova_objstore::wal::format::WalIndex;
use kilonova_objstore::wal::tail::{plan_tail, TailError};
use kilonova_objstore::wal::{
    CommitError, CommitFuture, FlushCommit, FlushSummary, WalAppend, WalReader,
};
use kilonova_objstore::{Bucket, ObjectStoreError, WalConfig, WalStats, WalWriter};
use kilonova_storage::{
    Entry, InitialPosition, ManagedLog, Offloaded, Position, RestoredSegment, StorageError,
};
use tokio::sync::watch;

use super::message_ids::{local_segments, MessageIds};
use super::{history, BundleKey};
use crate::broker::{Broker, WeakBroker};
use crate::error::BrokerError;

/// Entries a topic's load reads in one request.
const LOAD_CHUNK_ENTRIES: usize = 64;

/// Chunks a topic's load reads at once: with [`LOAD_CHUNK_ENTRIES`], at
/// most 1,024 entries in memory.
const LOAD_READS_IN_FLIGHT: usize = 16;

/// Entries a topic's load appends to its local log before it waits for them.
const LOAD_APPENDS_UNWAITED: usize = 1024;

/// Memory for the indexes of compacted histories' objects that reads of
/// segments left there keep (24 bytes an entry).
const SHARED_INDEX_CACHE_BYTES: usize = 16 << 20;

/// Reads of a topic's history a load makes when a compaction replaces it
/// meanwhile.
const LOAD_ATTEMPTS: u32 = 3;

/// A topic's local log rebuilt from its bundle's history.
struct Rebuilt {
    log: ManagedLog,
    /// The entry number of its first entry.
    first_index: u64,
    /// Entries of compacted runs left in the object store.
    left: u64,
    /// Entries read and appended, and their bytes.
    read: u64,
    read_bytes: u64,
    /// The bundle's flush records after its base.
    records: usize,
}

/// Why a rebuild did not finish.
enum Rebuild {
    /// An object of the history was gone, or records were missing between
    /// the base and the records after it: a compaction replaced the base
    /// while it was read (read it again).
    Replaced(String),
    Failed(BrokerError),
}

impl<E: Into<BrokerError>> From<E> for Rebuild {
    fn from(e: E) -> Self {
        Rebuild::Failed(e.into())
    }
}

/// Topics served here, by the id of their log: what a flush commit needs
/// to name an entry's topic and bundle.
type Served = Arc<Mutex<HashMap<u64, (TopicName, BundleRange)>>>;

/// The broker's write-ahead writer and what its commits need.
pub(crate) struct SharedLog {
    wal: WalWriter,
    reader: WalReader,
    bucket: Bucket,
    served: Served,
    /// Numbers the objects written besides the writer's (compactions).
    written: std::sync::atomic::AtomicU64,
    write_ahead_prefix: String,
    /// Flush records and bytes per bundle, for compactions as soon as they are due.
    busy: Arc<BusyBundles>,
    counts: HistoryCounts,
}

/// What happened to bundle histories here (counters for `/metrics`).
#[derive(Default)]
pub(crate) struct HistoryCounts {
    pub(crate) compactions: std::sync::atomic::AtomicU64,
    pub(crate) compaction_failures: std::sync::atomic::AtomicU64,
    pub(crate) loads: std::sync::atomic::AtomicU64,
    pub(crate) load_retries: std::sync::atomic::AtomicU64,
    pub(crate) load_entries_read: std::sync::atomic::AtomicU64,
    pub(crate) load_entries_left: std::sync::atomic::AtomicU64,
}

/// [`HistoryCounts`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    pub compactions: u64,
    pub compaction_failures: u64,
    pub loads: u64,
    pub load_retries: u64,
    /// Entries loads read from the object store and appended locally.
    pub load_entries_read: u64,
    /// Entries of compacted runs loads left in the object store.
    pub load_entries_left: u64,
}

impl HistoryCounts {
    pub(crate) fn add(counter: &std::sync::atomic::AtomicU64) {
        Self::add_n(counter, 1);
    }

    fn add_n(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistoryStats {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        HistoryStats {
            compactions: get(&self.compactions),
            compaction_failures: get(&self.compaction_failures),
            loads: get(&self.loads),
            load_retries: get(&self.load_retries),
            load_entries_read: get(&self.load_entries_read),
            load_entries_left: get(&self.load_entries_left),
        }
    }
}

impl SharedLog {
    pub(crate) fn reader(&self) -> &WalReader {
        &self.reader
    }

    pub(super) fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// The key prefix (relative to the bucket's) of the writer's objects.
    pub(super) fn write_ahead_prefix(&self) -> &str {
        &self.write_ahead_prefix
    }

    /// A name no other object of this broker's has: the writer's
    /// incarnation (random per start) and a number.
    pub(super) fn unique_name(&self) -> String {
        let n = self
            .written
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:020}", self.wal.incarnation())
    }

    /// The write-ahead writer's counts (flushes, commits, failures).
    pub(crate) fn wal_stats(&self) -> WalStats {
        self.wal.stats()
    }

    /// Compactions and loads of bundle histories here.
    pub(crate) fn history_stats(&self) -> HistoryStats {
        self.counts.snapshot()
    }

    pub(crate) fn counts(&self) -> &HistoryCounts {
        &self.counts
    }
}

fn lock(served: &Served) -> std::sync::MutexGuard<'_, HashMap<u64, (TopicName, BundleRange)>> {
    served.lock().unwrap_or_else(|p| p.into_inner())
}

/// A topic's part in the shared data path while it is served here.
pub(crate) struct SharedTopic {
    log: u64,
    /// The index of the topic's next entry (the write-ahead tag).
    next_tag: u64,
    wal: WalWriter,
    served: Served,
    cursors: Option<CursorWriter>,
    /// Where its segments (and earlier owners') start in its entry numbering.
    ids: MessageIds,
    /// Each subscription's position at the load and its message index
    /// (read from the stored positions): what a position in a segment left
    /// in the object store stands for, without reading it.
    loaded_at: HashMap<String, (Position, u64)>,
}

impl Drop for SharedTopic {
    fn drop(&mut self) {
        lock(&self.served).remove(&self.log);
    }
}

impl SharedTopic {
    /// The subscription positions of `log` now: written in the background
    /// if they changed.
    pub(crate) fn share_cursors(&mut self, log: &ManagedLog) {
        let cursors = self.cursor_positions(log);
        if let Some(c) = &self.cursors {
            c.update(cursors);
        }
    }

    /// Writes the subscription positions of `log` now and waits for it (a
    /// handover: the next owner reads them once the bundle is its own).
    pub(crate) async fn store_cursors_now(&mut self, broker: &Broker, log: &ManagedLog) {
        let cursors = self.cursor_positions(log);
        if let Some(c) = &self.cursors {
            c.store_now(broker, cursors).await;
        }
    }

    /// The subscription positions of `log` (first unacknowledged message,
    /// ranges acknowledged after it), and where its segments start.
    fn cursor_positions(&mut self, log: &ManagedLog) -> TopicCursors {
        self.ids.observe(&local_segments(log));
        let subscriptions = cursor_positions(log, &self.loaded_at);
        let per_subscription = ack_ranges_per_subscription(subscriptions.len());
        let acked = subscriptions
            .keys()
            .filter_map(|name| {
                let ranges: Vec<[u64; 2]> = log
                    .acked_ranges(name)
                    .ok()?
                    .into_iter()
                    .filter_map(|(a, b)| Some([self.ids.entry_of(a)?, self.ids.entry_of(b)?]))
                    .take(per_subscription)
                    .collect();
                (!ranges.is_empty()).then(|| (name.clone(), ranges))
            })
            .collect();
        TopicCursors {
            subscriptions,
            acked,
            segments: self.ids.stored(),
        }
    }

    /// The entry number (write-ahead tag) of this owner's position `p`, if
    /// its segment's start is known.
    pub(crate) fn entry_of(&self, p: Position) -> Option<u64> {
        self.ids.entry_of(p)
    }

    /// The position in `log` of the entry message id `p` names, which may
    /// be an id an earlier owner of the topic handed out
    /// ([`super::message_ids`]); `None` if it names nothing known here.
    pub(crate) fn translate(&self, p: Position, log: &ManagedLog) -> Option<Position> {
        if log.segments().iter().any(|s| s.id == p.segment) {
            return Some(p);
        }
        self.ids.translate(p, &local_segments(log), self.next_tag)
    }

    /// The topic closes: its last subscription positions are written.
    pub(crate) async fn finish(mut self) {
        if let Some(c) = self.cursors.take() {
            c.finish().await;
        }
    }

    /// Queues an entry (its stored form, as the local log holds it:
    /// [`Entry::encode_stored`]) for the object store; resolves once it is
    /// durable there and committed.
    pub(crate) async fn append(&mut self, stored: Bytes) -> Result<WalAppend, BrokerError> {
        let queued = self
            .wal
            .enqueue_tagged(self.log, self.next_tag, stored)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("the write-ahead writer: {e}")))?;
        self.next_tag += 1;
        Ok(queued)
    }
}

/// Flush records and entry bytes per bundle since the bundle was last
/// looked at for compaction, as this broker knows them (committed here, or
/// found by a topic's load): a bundle reaching `threshold`
/// (`cluster_compact_after_records`) or `byte_threshold`
/// (`cluster_compact_after_bytes`) is compacted at once, not at the next
/// look (a bundle that moved every few seconds was never compacted, and
/// each next owner read a longer history).
struct BusyBundles {
    threshold: usize,
    byte_threshold: u64,
    /// Per bundle: flush records and entry bytes since its last compaction.
    committed: Mutex<HashMap<BundleKey, (usize, u64)>>,
    due: tokio::sync::Notify,
}

impl BusyBundles {
    fn new(threshold: usize, byte_threshold: u64) -> Self {
        BusyBundles {
            threshold: threshold.max(1),
            byte_threshold: byte_threshold.max(1),
            committed: Mutex::default(),
            due: tokio::sync::Notify::new(),
        }
    }

    fn is_due(&self, (records, bytes): (usize, u64)) -> bool {
        records >= self.threshold || bytes >= self.byte_threshold
    }

    /// A load of a topic of bundle `key` found `records` flush records
    /// after its base, and read `bytes` of entries from them: at least as
    /// many are due.
    fn found(&self, key: &BundleKey, records: usize, bytes: u64) {
        let mut c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(key.clone()).or_default();
        *n = (n.0.max(records), n.1.max(bytes));
        if self.is_due(*n) {
            self.due.notify_one();
        }
    }

    /// A flush was committed with `bytes` of entries for each bundle.
    fn committed(&self, bundles: impl IntoIterator<Item = (BundleKey, u64)>) {
        let mut due = false;
        let mut c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        for (key, bytes) in bundles {
            let n = c.entry(key).or_default();
            *n = (n.0 + 1, n.1 + bytes);
            due |= self.is_due(*n);
        }
        if due {
            self.due.notify_one();
        }
    }

    /// The bundles due for compaction (`all`: every bundle counted); their
    /// counts start again.
    fn take_due(&self, all: bool) -> Vec<BundleKey> {
        let mut c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let due: Vec<BundleKey> = c
            .iter()
            .filter(|(_, n)| all || self.is_due(**n))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            c.remove(k);
        }
        due
    }
}

/// Compacts the histories of the bundles held here while the broker runs:
/// a bundle as soon as enough records are known to follow its base, and
/// every `cluster_compaction_interval_ms` those with enough records
/// whoever wrote them.
async fn compact_histories(broker: WeakBroker, busy: Arc<BusyBundles>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pass = 0u64;
    loop {
        let on_tick = tokio::select! {
            _ = tick.tick() => true,
            () = busy.due.notified() => false,
        };
        let Some(broker) = broker.upgrade() else {
            return;
        };
        if broker.is_shutting_down() {
            return;
        }
        if !on_tick {
            // Due by their records or by their bytes: compacted whatever
            // the number of records.
            let due = busy.take_due(false);
            broker.compact_held(1, Some(&due)).await;
            continue;
        }
        pass += 1;
        busy.take_due(true);
        // Busy bundles once enough records piled up; every bundle with any
        // record now and then, so that a quiet one's records do not linger.
        let now_and_then = pass % history::COMPACT_ANY_EVERY_PASSES == 0;
        let min_records = match now_and_then {
            true => 1,
            false => busy.threshold,
        };
        broker.compact_held_bundles(min_records).await;
        if now_and_then {
            match broker
                .sweep_write_ahead_objects(history::SWEEP_MIN_AGE)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    objects = n,
                    "write-ahead objects no flush record names deleted"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "sweeping write-ahead objects failed; tried again later")
                }
            }
        }
    }
}

/// Records each flush in the metadata store (ADR 0018).
struct Committer {
    broker: WeakBroker,
    served: Served,
    busy: Arc<BusyBundles>,
}

impl FlushCommit for Committer {
    fn commit<'a>(&'a self, flush: &'a FlushSummary) -> CommitFuture<'a> {
        Box::pin(self.record(flush))
    }
}

impl Committer {
    async fn record(&self, flush: &FlushSummary) -> Result<(), CommitError> {
        let broker = self
            .broker
            .upgrade()
            .ok_or_else(|| CommitError::Refused("the broker stopped".into()))?;
        let m = broker
            .membership()
            .ok_or_else(|| CommitError::Refused("not a cluster broker".into()))?;
        let mut records = FlushRecords::new(&flush.object);
        // Entry bytes per bundle (counted towards its next compaction).
        let mut bytes: HashMap<BundleKey, u64> = HashMap::new();
        {
            let served = lock(&self.served);
            let mut by_log: HashMap<u64, u64> = HashMap::new();
            for e in &flush.entries {
                *by_log.entry(e.log).or_default() += u64::from(e.bytes);
                let Some((topic, range)) = served.get(&e.log) else {
                    // Its topic closed with appends in flight: they fail.
                    return Err(CommitError::Deposed(format!(
                        "log {} is no longer served here",
                        e.log
                    )));
                };
                records
                    .push(topic, *range, e.log, e.tag, e.index)
                    .map_err(|e| CommitError::Refused(e.to_string()))?;
            }
            for (log, n) in by_log {
                if let Some((topic, range)) = served.get(&log) {
                    *bytes.entry((topic.namespace(), *range)).or_default() += n;
                }
            }
        }
        let records = records.finish();
        let bundles: Vec<BundleKey> = records
            .iter()
            .map(|(ns, range, _)| (ns.clone(), *range))
            .collect();
        let mut held = Vec::with_capacity(records.len());
        for (ns, range, _) in &records {
            let Some(epoch) = m.owned_epoch(&(ns.clone(), *range)) else {
                return Err(CommitError::Deposed(format!("{ns}/{range} is not held")));
            };
            held.push(Held {
                ns: ns.clone(),
                range: *range,
                epoch,
            });
        }
        match broker
            .resources()
            .commit_flush(&held, flush.sequence, records)
            .await
        {
            Ok(Commit::Committed { .. }) => {
                self.busy.committed(bundles.into_iter().map(|k| {
                    let n = bytes.get(&k).copied().unwrap_or(0);
                    (k, n)
                }));
                Ok(())
            }
            Ok(Commit::Deposed { ns, range }) => {
                Err(CommitError::Deposed(format!("{ns}/{range} changed owner")))
            }
            Err(FlushIndexError::Metadata(MetadataError::Unavailable(e))) => {
                Err(CommitError::Unavailable(e))
            }
            Err(FlushIndexError::Metadata(MetadataError::Backend(e))) => {
                Err(CommitError::Unavailable(e))
            }
            Err(e) => Err(CommitError::Refused(e.to_string())),
        }
    }
}

/// Writes a topic's subscription positions to the metadata store in the
/// background: the latest positions given win, one write at a time.
struct CursorWriter {
    topic_id: u64,
    key: BundleKey,
    latest: watch::Sender<TopicCursors>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CursorWriter {
    fn start(broker: &Broker, topic_id: u64, key: BundleKey, stored: TopicCursors) -> Self {
        let (latest, mut changes) = watch::channel(stored);
        let weak = broker.downgrade();
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let cursors = changes.borrow_and_update().clone();
                let Some(broker) = weak.upgrade() else {
                    return;
                };
                broker.store_cursors(topic_id, &task_key, &cursors).await;
            }
        });
        CursorWriter {
            topic_id,
            key,
            latest,
            task: Some(task),
        }
    }

    /// Positions now: written unless they are those written last.
    fn update(&self, cursors: TopicCursors) {
        self.latest.send_if_modified(|old| {
            let changed = *old != cursors;
            *old = cursors;
            changed
        });
    }

    /// Writes `cursors` now and waits for it (a handover: the next owner
    /// reads them once the bundle is its own).
    async fn store_now(&self, broker: &Broker, cursors: TopicCursors) {
        self.latest.send_replace(cursors.clone());
        broker
            .store_cursors(self.topic_id, &self.key, &cursors)
            .await;
    }

    /// Writes the last positions given, if they changed, and stops (the
    /// topic closes).
    async fn finish(mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        let (latest, _) = watch::channel(TopicCursors::default());
        drop(std::mem::replace(&mut self.latest, latest));
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "the cursor writer failed");
        }
    }
}

/// Each durable subscription's first unacknowledged message index in `log`.
/// A position in a segment left in the object store is not read: it stands
/// for at least its segment's first message, or for the index it had at
/// the load (`loaded_at`) if it has not moved since — never for a later
/// message, so a move delivers again rather than skips.
fn cursor_positions(
    log: &ManagedLog,
    loaded_at: &HashMap<String, (Position, u64)>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for name in log.cursor_names() {
        if !log.cursor_info(&name).is_ok_and(|i| i.durable) {
            continue;
        }
        let Ok(floor) = log.ack_floor(&name) else {
            continue;
        };
        let index = if !log.is_readable(floor) {
            // At the end: everything durable is acknowledged. Not the end
            // appends in flight reach: a compaction would take their
            // messages as acknowledged and drop them.
            log.durable_next_message_index()
        } else {
            match log.read_entry(floor) {
                Ok(e) => e.message_index,
                Err(_) => {
                    let segment_first = log
                        .segments()
                        .iter()
                        .find(|s| s.id == floor.segment)
                        .map_or(0, |s| s.first_message_index);
                    match loaded_at.get(&name) {
                        Some((at, index)) if *at <= floor => segment_first.max(*index),
                        _ => segment_first,
                    }
                }
            }
        };
        out.insert(name, index);
    }
    out
}

impl Broker {
    /// Makes every append of this cluster broker's topics durable in
    /// `bucket` too, committed per flush, and every topic load read its
    /// data back from there (once, at start-up, after joining the cluster).
    /// A flush every `cluster_flush_interval_ms` at most, or at once when
    /// `cluster_flush_max_bytes` are queued.
    pub fn enable_shared_log(&self, bucket: Bucket) -> Result<(), BrokerError> {
        let c = self.config();
        let config = WalConfig {
            flush_interval: std::time::Duration::from_millis(c.cluster_flush_interval_ms.max(1)),
            max_object_bytes: c.cluster_flush_max_bytes.max(1),
            ..WalConfig::default()
        };
        let write_ahead_prefix = config.prefix.clone();
        if self.membership().is_none() {
            return Err(BrokerError::NotAllowed(
                "the shared data path is for cluster brokers".into(),
            ));
        }
        let served: Served = Arc::default();
        let busy = Arc::new(BusyBundles::new(
            c.cluster_compact_after_records,
            c.cluster_compact_after_bytes,
        ));
        let committer = Arc::new(Committer {
            broker: self.downgrade(),
            served: served.clone(),
            busy: busy.clone(),
        });
        let shared = SharedLog {
            wal: WalWriter::start_with_commit(bucket.clone(), config, committer),
            reader: WalReader::with_index_cache(bucket.clone(), SHARED_INDEX_CACHE_BYTES),
            bucket,
            served,
            written: Default::default(),
            write_ahead_prefix,
            busy: busy.clone(),
            counts: HistoryCounts::default(),
        };
        self.set_shared_log(shared)?;
        let every = Duration::from_millis(c.cluster_compaction_interval_ms.max(1));
        tokio::spawn(compact_histories(self.downgrade(), busy, every));
        Ok(())
    }

    /// Rebuilds topic `name` (whose local log is `log`) from the shared
    /// state before it serves: `log` is wiped and built again from the
    /// topic's history (its compacted runs left in the object store when
    /// `lazy`, read on demand; the rest appended afresh:
    /// [`Broker::rebuild_from_history`]), and its subscriptions are opened
    /// where they were stored. Returns the log and the topic's part in the
    /// shared path.
    pub(crate) async fn load_shared(
        &self,
        name: &TopicName,
        log: ManagedLog,
        lazy: bool,
    ) -> Result<(ManagedLog, SharedTopic), BrokerError> {
        let Some(shared) = self.shared_log() else {
            return Err(BrokerError::NotAllowed("no shared data path".into()));
        };
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            BrokerError::Unavailable(format!("loading {name}: {what}: {e}"))
        };
        let key = self.bundle_of(name).await?;
        let id = log.id();
        // A compaction of the bundle (by this broker, while another of its
        // topics serves) may replace the base being read and delete its
        // objects: the history is read again.
        let mut log = Some(log);
        let mut attempt = 1;
        let rebuilt = loop {
            let current = match log.take() {
                Some(l) => l,
                None => self.open_log(id).await?,
            };
            match self
                .rebuild_from_history(shared, name, &key, current, lazy)
                .await
            {
                Ok(r) => break r,
                Err(Rebuild::Replaced(e)) if attempt < LOAD_ATTEMPTS => {
                    tracing::debug!(topic = %name, attempt, error = %e, "the history changed while it was read: reading it again");
                    HistoryCounts::add(&shared.counts.load_retries);
                    attempt += 1;
                }
                Err(Rebuild::Replaced(e)) => {
                    return Err(unavailable("reading its committed entries", &e))
                }
                Err(Rebuild::Failed(e)) => return Err(e),
            }
        };
        let Rebuilt {
            mut log,
            first_index,
            left,
            read,
            read_bytes,
            records,
        } = rebuilt;
        let entries = left + read;
        let cursors = self.resources().topic_cursors(id).await?;
        let end = first_index + entries;
        let ids = MessageIds::new(&cursors.segments, first_index, &local_segments(&log));
        let mut loaded_at = HashMap::new();
        for (sub, index) in &cursors.subscriptions {
            let found = self.position_of_message_index(&log, *index).await?;
            let at = match found {
                Some(p) => {
                    loaded_at.insert(sub.clone(), (p, *index));
                    InitialPosition::At(p)
                }
                None if *index >= log.next_message_index() => InitialPosition::Latest,
                // Before the first message kept.
                None => InitialPosition::Earliest,
            };
            log.open_cursor(sub, at, true)?;
            for [first, last] in cursors.acked.get(sub).into_iter().flatten() {
                for (from, to) in ids.local_ranges(*first, *last, end) {
                    log.ack_range(sub, from, to)?;
                }
            }
        }
        shared
            .wal
            .resume_log(id)
            .await
            .map_err(|e| unavailable("the write-ahead writer", &e))?;
        lock(&shared.served).insert(id, (name.clone(), key.1));
        // A long history is compacted now, while the topic serves, so that
        // the next load is short too (each owner of a bundle that moves
        // every few seconds commits too few records to start one).
        shared.busy.found(&key, records, read_bytes);
        HistoryCounts::add(&shared.counts.loads);
        HistoryCounts::add_n(&shared.counts.load_entries_read, read);
        HistoryCounts::add_n(&shared.counts.load_entries_left, left);
        tracing::info!(topic = %name, entries_left = left, entries_read = read, subscriptions = cursors.subscriptions.len(), "topic loaded from the shared state");
        let topic = SharedTopic {
            log: id,
            next_tag: end,
            wal: shared.wal.clone(),
            served: shared.served.clone(),
            cursors: Some(CursorWriter::start(self, id, key, cursors)),
            ids,
            loaded_at,
        };
        Ok((log, topic))
    }

    /// The position of the entry holding message `index` in `log`, if it
    /// holds it: [`ManagedLog::position_of_message_index`]'s binary search,
    /// with each entry it looks at fetched on its own when only the object
    /// store has it. (Retrying the whole search after each fetch, with a
    /// read-ahead, thrashed the log's offload cache on large entries: every
    /// fetch evicted the entries of the probes before it.)
    async fn position_of_message_index(
        &self,
        log: &ManagedLog,
        index: u64,
    ) -> Result<Option<Position>, BrokerError> {
        let segments = log.segments();
        let i = segments.partition_point(|s| s.first_message_index <= index);
        let Some(segment) = i.checked_sub(1).and_then(|i| segments.get(i)) else {
            return Ok(None);
        };
        let segment = segment.id;
        let entries = match log.segment_info(segment) {
            Some(info) => info.entries,
            None => log.offloaded(segment).map_or(0, |o| o.entries),
        };
        // The first entry whose messages end after `index`.
        let (mut lo, mut hi) = (0, entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self
                .read_entry_through(log, Position::new(segment, mid))
                .await?;
            if e.message_index + u64::from(e.message_count) > index {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok((lo < entries).then_some(Position::new(segment, lo)))
    }

    /// Entry `p` of `log`, fetched alone from the object store when only
    /// the object store has it.
    async fn read_entry_through(
        &self,
        log: &ManagedLog,
        p: Position,
    ) -> Result<Entry, BrokerError> {
        match log.read_entry(p) {
            Err(StorageError::Offloaded { segment, entry }) => {
                let Some(o) = log.offloaded(segment).cloned() else {
                    return Err(StorageError::Offloaded { segment, entry }.into());
                };
                let fetched = self
                    .fetch_offloaded_entry(log.id(), &o, entry)
                    .await
                    .map_err(|e| {
                        BrokerError::Unavailable(format!(
                            "reading a compacted run in {}: {e}",
                            o.object
                        ))
                    })?;
                let stored = fetched.into_iter().next().ok_or_else(|| {
                    BrokerError::Unavailable(format!("{} returned no entry {entry}", o.object))
                })?;
                Entry::from_stored(p, stored).ok_or_else(|| {
                    BrokerError::Unavailable(format!(
                        "entry {entry} in {} is shorter than its header",
                        o.object
                    ))
                })
            }
            other => Ok(other?),
        }
    }

    /// Wipes the topic's local log (what this broker's journal holds of it
    /// — an earlier ownership, appends never committed — is not relied on)
    /// and builds it again from the bundle's history: the base's runs
    /// become segments left in the object store, read on demand (`lazy`;
    /// nothing of them is read now), and the entries of the flush records
    /// after the base are read and appended. Without `lazy`, the runs' entries
    /// are read and appended too (what replays every entry at the load —
    /// deduplication — needs them local).
    async fn rebuild_from_history(
        &self,
        shared: &SharedLog,
        name: &TopicName,
        key: &BundleKey,
        log: ManagedLog,
        lazy: bool,
    ) -> Result<Rebuilt, Rebuild> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            BrokerError::Unavailable(format!("loading {name}: {what}: {e}"))
        };
        let id = log.id();
        let history = super::history::History::read(self, key).await?;
        let records = history.record_count();
        let history = history.topic(&name.to_string(), id);
        let left = if lazy {
            history.contiguous_runs()
        } else {
            None
        };
        let (slices, from) = match left {
            Some(runs) => (
                history.records.clone(),
                runs.last().map_or(history.first_index, BaseRun::end_index),
            ),
            None => (history.slices(id), history.first_index),
        };
        // Checked for gaps and overlaps before anything is read or wiped.
        let plan = match plan_tail(slices, from) {
            Ok(p) => p,
            Err(e @ TailError::Gap { .. }) => return Err(Rebuild::Replaced(e.to_string())),
            Err(e) => return Err(unavailable("its committed entries", &e).into()),
        };
        let stale = log.delete().await?;
        if !stale.is_empty() {
            tracing::debug!(topic = %name, objects = stale.len(), "a stale local log's offloaded objects are left to the shared copy");
        }
        let left_entries: u64 = left
            .iter()
            .flat_map(|r| r.iter())
            .map(|r| u64::from(r.count))
            .sum();
        if let Some(runs) = left {
            let now_ms = self.clock().now_ms();
            let segments = runs.iter().map(|r| RestoredSegment {
                first_message_index: r.first_message_index,
                created_ms: r.last_publish_ms,
                offloaded: Offloaded {
                    object: r.object.clone(),
                    entries: u64::from(r.count),
                    bytes: r.bytes,
                    last_publish_ms: r.last_publish_ms,
                    end_message_index: r.end_message_index,
                    offloaded_at_ms: now_ms,
                    shared_at: Some(r.first_position),
                },
            });
            ManagedLog::restore(
                id,
                &self.segment_store(),
                self.state_store().as_ref(),
                segments.collect(),
            )
            .await?;
        } else if history.first_message_index > 0 {
            // Its history was compacted: its first messages are gone.
            ManagedLog::create_at(id, self.state_store().as_ref(), history.first_message_index)?;
        }
        let mut log = self.open_log(id).await?;
        // Read in chunks of a bounded number of entries, several chunks in
        // flight (each a request or two to the object store: one after the
        // other, a history of many flushes took seconds), appended in order;
        // a long backlog is never held in memory whole. The local appends
        // are a cache: waited for in groups, not one fdatasync per chunk.
        // The chunks of one object share its index, fetched once.
        let mut indexes: HashMap<String, Arc<tokio::sync::OnceCell<WalIndex>>> = HashMap::new();
        let mut chunks = Vec::new();
        for read in &plan {
            let object = &read.slice.object;
            let index = indexes.entry(object.clone()).or_default().clone();
            let positions = read.slice.positions.get(read.skip..).unwrap_or_default();
            for c in positions.chunks(LOAD_CHUNK_ENTRIES) {
                chunks.push((object.clone(), index.clone(), read.slice.log, c.to_vec()));
            }
        }
        let reader = shared.reader.clone();
        let mut fetched = futures_util::stream::iter(chunks)
            .map(move |(object, index, log, chunk)| {
                let reader = reader.clone();
                async move {
                    let index = index.get_or_try_init(|| reader.index(&object)).await?;
                    reader.read_entries(&object, index, log, &chunk).await
                }
            })
            .buffered(LOAD_READS_IN_FLIGHT);
        let (mut entries, mut read_bytes) = (0u64, 0u64);
        let mut appended = Vec::new();
        while let Some(data) = fetched.next().await {
            let data = match data {
                Ok(d) => d,
                Err(e @ ObjectStoreError::NotFound { .. }) => {
                    return Err(Rebuild::Replaced(e.to_string()))
                }
                Err(e) => return Err(unavailable("reading its committed entries", &e).into()),
            };
            for bytes in data {
                read_bytes += bytes.len() as u64;
                let at = from + entries;
                let expected = log.next_message_index();
                let entry = Entry::from_stored(Position::default(), bytes)
                    .filter(|e| e.message_index == expected)
                    .ok_or_else(|| {
                        unavailable(
                            "its committed entries",
                            &format!("entry {at} is not message {expected}'s"),
                        )
                    })?;
                appended.push(
                    log.append(entry.data, entry.message_count, entry.publish_time_ms)
                        .await?,
                );
                entries += 1;
            }
            if appended.len() >= LOAD_APPENDS_UNWAITED {
                for c in appended.drain(..) {
                    c.await?;
                }
            }
        }
        for c in appended {
            c.await?;
        }
        Ok(Rebuilt {
            log,
            first_index: history.first_index,
            left: left_entries,
            read: entries,
            read_bytes,
            records,
        })
    }

    /// Stores topic `topic_id`'s subscription positions while this broker
    /// owns bundle `key` (a failure is logged: the next change writes again).
    async fn store_cursors(&self, topic_id: u64, key: &BundleKey, cursors: &TopicCursors) {
        let Some(epoch) = self.membership().and_then(|m| m.owned_epoch(key)) else {
            return;
        };
        let held = Held {
            ns: key.0.clone(),
            range: key.1,
            epoch,
        };
        match self
            .resources()
            .put_topic_cursors(topic_id, cursors, &held)
            .await
        {
            Ok(Commit::Committed { .. }) => {}
            Ok(Commit::Deposed { .. }) => {
                tracing::debug!(
                    topic_id,
                    "subscription positions not stored: the bundle changed owner"
                )
            }
            Err(e) => tracing::warn!(topic_id, error = %e, "storing subscription positions failed"),
        }
    }
}
