//! A bundle's committed history in shared storage, and its compaction
//! (ADR 0017, items 4 and 7).
//!
//! What a new owner reads to rebuild a topic is the bundle's *base* (its
//! history compacted: one object with the entries still needed, and where
//! each topic continues) and the flush records committed after it. Left
//! alone, the records would grow with every flush, and so would every
//! load. So the owner compacts each bundle it holds once enough records
//! piled up. Each topic's part of a base is a list of *runs* (consecutive
//! entries stored together in an object). A compaction:
//! - drops the leading runs whose messages every subscription acknowledged
//!   and retention no longer keeps (whole runs: a run partly needed is
//!   kept);
//! - reads the entries of the records it covers and writes them, as one
//!   new run per topic, into one new object (with no run left before them,
//!   their leading unneeded entries are dropped one by one);
//! - merges the new run with the runs before it while the last of those is
//!   no longer than it (size tiers, as a binary counter: O(log n) runs per
//!   topic, each entry rewritten O(log n) times — not the whole backlog at
//!   every compaction);
//! - replaces the base (a write guarded by the ownership epoch and the old
//!   base's version), then deletes the records it covers and the objects
//!   of the old base no run refers to any more.
//!
//! Write-ahead objects hold entries of many bundles, so no compaction can
//! tell when one is no longer needed: a sweep does
//! ([`Broker::sweep_write_ahead_objects`]), deleting the objects no flush
//! record of any bundle names any more, once they are older than any flush
//! still being committed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use kilonova_metadata::bundles::{Commit, Held};
use kilonova_metadata::names::{NamespaceName, TopicName};
use kilonova_metadata::wal_index::{BaseRun, BaseTopic, FlushBase, FlushRecord};
use kilonova_objstore::wal::tail::{read_tail, TailSlice};
use kilonova_objstore::wal::write_object;

use super::BundleKey;
use crate::broker::Broker;
use crate::error::BrokerError;
use kilonova_storage::{Entry, Position, Retention};

/// The most flush records one compaction covers (what it holds in memory
/// is their entries of the bundle); a bundle with more is compacted again
/// at once.
pub(crate) const MAX_COVERED_RECORDS: usize = 256;

/// Runs are merged only up to this many bytes (what a merge holds in memory).
pub(crate) const MAX_RUN_BYTES: u64 = 64 << 20;

/// How long a compaction waits for a loaded topic to move to its new runs
/// before it deletes the objects of the old ones.
const MOVE_RUNS_WAIT: Duration = Duration::from_secs(30);

/// Every this many checks, a bundle with any record is compacted, and
/// write-ahead objects no record names are swept.
pub(crate) const COMPACT_ANY_EVERY_PASSES: u64 = 30;

/// A write-ahead object younger than this is never swept: its flush may
/// still be committing (a commit times out well before).
pub(crate) const SWEEP_MIN_AGE: Duration = Duration::from_secs(600);

/// A bundle's committed history: its base (with its version) and the
/// flush records after it, in commit order.
pub(crate) struct History {
    base: Option<(FlushBase, u64)>,
    records: Vec<(String, FlushRecord)>,
}

/// One topic's part of a bundle's history.
pub(crate) struct TopicHistory {
    /// Its runs in the base, in order.
    pub(crate) runs: Vec<BaseRun>,
    /// Its slices in the flush records after the base, in order.
    pub(crate) records: Vec<TailSlice>,
    /// The index (write-ahead tag) of its first entry kept.
    pub(crate) first_index: u64,
    /// That entry's first message index.
    pub(crate) first_message_index: u64,
}

impl TopicHistory {
    /// Its base runs, when they hold its entries from the first kept on,
    /// one after the other (a compaction writes them so): a load can
    /// leave them in the object store, read on demand.
    pub(crate) fn contiguous_runs(&self) -> Option<&[BaseRun]> {
        let mut next = self.first_index;
        for r in &self.runs {
            if r.first_index != next || r.count == 0 {
                return None;
            }
            next = r.end_index();
        }
        (!self.runs.is_empty()).then_some(&self.runs[..])
    }

    /// Every slice of its entries (the base's runs, then the records'), in order.
    pub(crate) fn slices(&self, log: u64) -> Vec<TailSlice> {
        let runs = self.runs.iter().map(|r| run_slice(r, log));
        runs.chain(self.records.iter().cloned()).collect()
    }
}

impl History {
    pub(crate) async fn read(broker: &Broker, key: &BundleKey) -> Result<Self, BrokerError> {
        let resources = broker.resources();
        let base = resources.flush_base(&key.0, key.1).await?;
        let after = base.as_ref().map(|(b, _)| b.covers.as_str());
        let records = resources.flush_records_after(&key.0, key.1, after).await?;
        Ok(History { base, records })
    }

    /// Topic `name`'s part of the base, if it has one.
    /// Flush records after the base.
    pub(crate) fn record_count(&self) -> usize {
        self.records.len()
    }

    fn base_topic(&self, name: &str, log: u64) -> Option<&BaseTopic> {
        self.base
            .as_ref()
            .and_then(|(b, _)| b.topics.iter().find(|t| t.topic == name && t.log == log))
    }

    /// The slices of topic `name` in the records after the base.
    fn record_slices(&self, name: &str, log: u64) -> Vec<TailSlice> {
        self.records
            .iter()
            .flat_map(|(_, r)| {
                r.topics
                    .iter()
                    .filter(|t| t.topic == name && t.log == log)
                    .map(|t| TailSlice {
                        object: r.object.clone(),
                        log,
                        first_index: t.first_index,
                        positions: t.positions.clone(),
                    })
            })
            .collect()
    }

    /// Topic `name` whose log is `log` (a deleted topic's entries, under
    /// another log id, are not a re-created one's).
    pub(crate) fn topic(&self, name: &str, log: u64) -> TopicHistory {
        let base = self.base_topic(name, log);
        TopicHistory {
            runs: base.map(|t| t.runs.clone()).unwrap_or_default(),
            records: self.record_slices(name, log),
            first_index: base.map_or(0, |t| t.first_index),
            first_message_index: base.map_or(0, |t| t.first_message_index),
        }
    }

    /// Every (topic, log) the history names.
    fn topics(&self) -> Vec<(String, u64)> {
        let mut all = BTreeMap::new();
        let base = self
            .base
            .iter()
            .flat_map(|(b, _)| &b.topics)
            .map(|t| (t.topic.clone(), t.log));
        let records = self
            .records
            .iter()
            .flat_map(|(_, r)| &r.topics)
            .map(|t| (t.topic.clone(), t.log));
        for t in base.chain(records) {
            all.insert(t, ());
        }
        all.into_keys().collect()
    }

    /// The objects the base's runs are in.
    fn base_objects(&self) -> BTreeSet<String> {
        self.base
            .iter()
            .flat_map(|(b, _)| &b.topics)
            .flat_map(|t| &t.runs)
            .map(|r| r.object.clone())
            .collect()
    }
}

fn run_slice(run: &BaseRun, log: u64) -> TailSlice {
    TailSlice {
        object: run.object.clone(),
        log,
        first_index: run.first_index,
        positions: run.positions(),
    }
}

/// What of a topic a compaction keeps: what a subscription has not
/// acknowledged (messages from `floor` on), and acknowledged messages as
/// retention says — Pulsar's rule: acknowledged data goes once it is older
/// than the retention time or the acknowledged data is larger than the
/// retention size (`None`: unlimited in that dimension), whole runs at a
/// time (a segment at a time, in Pulsar).
struct Needed {
    floor: u64,
    retention: Retention,
    now_ms: u64,
}

impl Needed {
    /// Retention keeps no acknowledged message.
    fn keeps_nothing_acknowledged(&self) -> bool {
        self.retention.time_ms == Some(0) && self.retention.size_bytes == Some(0)
    }

    /// Whether leading run `r` goes, `acknowledged` bytes being retained
    /// from it on.
    fn drops(&self, r: &BaseRun, acknowledged: u64) -> bool {
        if r.end_message_index > self.floor {
            return false;
        }
        let age = self.now_ms.saturating_sub(r.last_publish_ms);
        let too_old = self.retention.time_ms.is_some_and(|t| age >= t);
        let too_big = self.retention.size_bytes.is_some_and(|s| acknowledged > s);
        too_old || too_big
    }
}

/// What one compaction writes: one object holding the new run of each
/// topic, and its report.
struct Rewrite {
    /// The object's full key.
    object: String,
    /// Its entries (log id, bytes), in place order.
    entries: Vec<(u64, Bytes)>,
    report: Compacted,
}

/// What one compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Compacted {
    pub(crate) records: usize,
    pub(crate) topics: usize,
    pub(crate) kept: usize,
    pub(crate) dropped: usize,
}

impl Broker {
    /// Compacts the history of every bundle held here that has at least
    /// `min_records` flush records after its base (a cluster broker with
    /// shared storage does it every `cluster_compaction_interval_ms` with
    /// `cluster_compact_after_records`). Failures are logged (the next pass tries
    /// again).
    pub async fn compact_held_bundles(&self, min_records: usize) {
        self.compact_held(min_records, None).await;
    }

    /// [`Broker::compact_held_bundles`], of `only` these bundles if given.
    pub(crate) async fn compact_held(&self, min_records: usize, only: Option<&[BundleKey]>) {
        let Some(m) = self.membership() else {
            return;
        };
        for (key, epoch) in m.held() {
            if only.is_some_and(|keys| !keys.contains(&key)) {
                continue;
            }
            loop {
                let result = self.compact_bundle(&key, epoch, min_records).await;
                if let Some(shared) = self.shared_log() {
                    let counts = shared.counts();
                    match &result {
                        Ok(Some(_)) => super::shared::HistoryCounts::add(&counts.compactions),
                        Err(_) => super::shared::HistoryCounts::add(&counts.compaction_failures),
                        Ok(None) => {}
                    }
                }
                match result {
                    Ok(Some(c)) => {
                        tracing::info!(bundle = %format!("{}/{}", key.0, key.1), records = c.records, topics = c.topics, entries_kept = c.kept, entries_dropped = c.dropped, "bundle history compacted");
                        if c.records < MAX_COVERED_RECORDS {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(bundle = %format!("{}/{}", key.0, key.1), error = %e, "compacting a bundle's history failed; tried again later");
                        break;
                    }
                }
            }
        }
    }

    /// Compacts bundle `key`, held here at `epoch`, if at least
    /// `min_records` flush records followed its base.
    pub(crate) async fn compact_bundle(
        &self,
        key: &BundleKey,
        epoch: u64,
        min_records: usize,
    ) -> Result<Option<Compacted>, BrokerError> {
        let Some(shared) = self.shared_log() else {
            return Ok(None);
        };
        let mut history = History::read(self, key).await?;
        if history.records.len() < min_records.max(1) {
            return Ok(None);
        }
        history.records.truncate(MAX_COVERED_RECORDS);
        let Some(covers) = history.records.last().map(|(k, _)| k.clone()) else {
            return Ok(None);
        };
        let relative = format!(
            "wal-base/{}/{}/{}/{}.wal",
            key.0.tenant,
            key.0.namespace,
            key.1,
            shared.unique_name()
        );
        let mut out = Rewrite {
            object: shared.bucket().key(&relative),
            entries: Vec::new(),
            report: Compacted {
                records: history.records.len(),
                ..Compacted::default()
            },
        };
        let mut topics = Vec::new();
        for (name, log) in history.topics() {
            let Ok(topic) = TopicName::parse(&name) else {
                continue;
            };
            // A topic deleted (or deleted and re-created) since: its entries go.
            match self.resources().topic(&topic).await? {
                Some(r) if r.id == log => {}
                _ => continue,
            }
            let needed = self.needed(&topic, log).await?;
            let t = self
                .compact_topic(&history, &name, log, &needed, &mut out)
                .await?;
            topics.push(t);
        }
        let Rewrite {
            object,
            entries: written,
            mut report,
        } = out;
        report.topics = topics.len();
        if !written.is_empty() {
            write_object(shared.bucket(), &relative, &written)
                .await
                .map_err(|e| {
                    BrokerError::Unavailable(format!("writing a compacted history: {e}"))
                })?;
        }
        let base = FlushBase {
            covers: covers.clone(),
            topics,
        };
        let held = Held {
            ns: key.0.clone(),
            range: key.1,
            epoch,
        };
        let replacing = history.base.as_ref().map(|(_, v)| *v);
        let committed = self
            .resources()
            .put_flush_base(&held, &base, replacing)
            .await;
        let unreferenced: Vec<String> = match committed {
            Ok(Commit::Committed { .. }) => {
                let now: BTreeSet<String> = base
                    .topics
                    .iter()
                    .flat_map(|t| &t.runs)
                    .map(|r| r.object.clone())
                    .collect();
                history.base_objects().difference(&now).cloned().collect()
            }
            Ok(Commit::Deposed { .. }) => {
                if !written.is_empty() {
                    self.delete_object(&object).await;
                }
                return Ok(None);
            }
            Err(e) => {
                if !written.is_empty() {
                    self.delete_object(&object).await;
                }
                return Err(e.into());
            }
        };
        // Topics loaded here read their compacted runs from the old objects:
        // they move to the new runs before those objects go.
        for t in &base.topics {
            self.move_shared_runs(t).await;
        }
        self.resources()
            .delete_flush_records(&key.0, key.1, &covers)
            .await?;
        // The halves of a split bundle share its base's objects until each
        // compacted its part away: an object another base names stays (the
        // last base to let it go deletes it). Unreadable: everything stays.
        let elsewhere = match self.resources().objects_of_other_bases(&key.0, key.1).await {
            Ok(named) => Some(named),
            Err(e) => {
                tracing::warn!(error = %e, "reading the namespace's other bases failed: a compaction's old objects are kept");
                None
            }
        };
        for o in unreferenced {
            if elsewhere.as_ref().is_some_and(|named| !named.contains(&o)) {
                self.delete_object(&o).await;
            }
        }
        Ok(Some(report))
    }

    /// Tells topic `base.topic`, if loaded here, that its part of the new
    /// base is `base`, and waits until it moved its segments to the new
    /// runs (or a while: a topic still loading answers once it serves; one
    /// that stops or does not answer reads its next load from the new base
    /// anyway).
    async fn move_shared_runs(&self, base: &BaseTopic) {
        let name = base.topic.as_str();
        let Some(handle) = self.loaded_handle(name) else {
            return;
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = crate::topic::AdminRequest::MoveSharedRuns { base: base.clone() };
        let asked = async {
            handle
                .send(crate::topic::TopicCommand::Admin { request, reply })
                .await
                .ok()?;
            answer.await.ok()
        };
        match tokio::time::timeout(MOVE_RUNS_WAIT, asked).await {
            Ok(Some(Err(e))) => {
                tracing::warn!(topic = name, error = %e, "a loaded topic could not move to its compacted runs");
            }
            Err(_) => {
                tracing::warn!(
                    topic = name,
                    "a loaded topic did not move to its compacted runs in time"
                );
            }
            Ok(_) => {}
        }
    }

    /// Topic `name`'s part of the new base: its base runs no longer
    /// needed dropped, its entries from the covered records (and the runs
    /// they merge with) appended to `out` as one run of its object.
    async fn compact_topic(
        &self,
        history: &History,
        name: &str,
        log: u64,
        needed: &Needed,
        out: &mut Rewrite,
    ) -> Result<BaseTopic, BrokerError> {
        let Some(shared) = self.shared_log() else {
            return Err(BrokerError::NotAllowed("no shared data path".into()));
        };
        let unavailable = |e: &dyn std::fmt::Display| {
            BrokerError::Unavailable(format!("compacting {name}'s history: {e}"))
        };
        let old = history.base_topic(name, log);
        let mut runs: Vec<BaseRun> = old.map(|t| t.runs.clone()).unwrap_or_default();
        let (mut first_index, mut first_message_index) =
            old.map_or((0, 0), |t| (t.first_index, t.first_message_index));
        // Whole runs no longer needed: acknowledged, and out of retention.
        let mut acknowledged: u64 = runs
            .iter()
            .take_while(|r| r.end_message_index <= needed.floor)
            .map(|r| r.bytes)
            .sum();
        while runs.first().is_some_and(|r| needed.drops(r, acknowledged)) {
            let r = runs.remove(0);
            acknowledged -= r.bytes;
            out.report.dropped += r.count as usize;
            (first_index, first_message_index) = (r.end_index(), r.end_message_index);
        }
        // The covered records' entries: the new run.
        let from = runs.last().map_or(first_index, BaseRun::end_index);
        let mut message = runs
            .last()
            .map_or(first_message_index, |r| r.end_message_index);
        let read = read_tail(shared.reader(), history.record_slices(name, log), from)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut pending: Vec<Bytes> = Vec::with_capacity(read.len());
        let mut pending_bytes = 0u64;
        let mut pending_publish_ms = 0u64;
        let (mut pending_index, mut pending_message) = (from, message);
        for (index, bytes) in read {
            let Some(Entry {
                publish_time_ms: publish_ms,
                message_count: count,
                ..
            }) = Entry::from_stored(Position::default(), bytes.clone())
            else {
                return Err(unavailable(&format!("entry {index} is too short")));
            };
            let end = message + u64::from(count);
            let unneeded = needed.keeps_nothing_acknowledged() && end <= needed.floor;
            if runs.is_empty() && pending.is_empty() && unneeded {
                // Nothing before it is kept either: dropped one by one.
                out.report.dropped += 1;
                (first_index, first_message_index) = (index + 1, end);
                (pending_index, pending_message) = (index + 1, end);
            } else {
                pending_bytes += bytes.len() as u64;
                pending_publish_ms = pending_publish_ms.max(publish_ms);
                pending.push(bytes);
            }
            message = end;
        }
        // Size tiers: the runs before it no longer than it merge into it.
        while let Some(last) = runs.last() {
            if pending.is_empty()
                || (last.count as usize) > pending.len()
                || last.bytes + pending_bytes > MAX_RUN_BYTES
            {
                break;
            }
            pending_bytes += last.bytes;
            pending_publish_ms = pending_publish_ms.max(last.last_publish_ms);
            let mut merged = self.read_run(last, log).await?;
            (pending_index, pending_message) = (last.first_index, last.first_message_index);
            merged.append(&mut pending);
            pending = merged;
            runs.pop();
        }
        if !pending.is_empty() {
            let count = u32::try_from(pending.len())
                .map_err(|_| unavailable(&"a run of more than 2^32 entries"))?;
            runs.push(BaseRun {
                object: out.object.clone(),
                first_position: u32::try_from(out.entries.len())
                    .map_err(|_| unavailable(&"an object of more than 2^32 entries"))?,
                count,
                first_index: pending_index,
                first_message_index: pending_message,
                end_message_index: message,
                bytes: pending_bytes,
                last_publish_ms: pending_publish_ms,
            });
            out.report.kept += pending.len();
            out.entries.extend(pending.into_iter().map(|b| (log, b)));
        }
        Ok(BaseTopic {
            topic: name.to_owned(),
            log,
            first_index,
            first_message_index,
            runs,
        })
    }

    /// A base run's entries.
    async fn read_run(&self, run: &BaseRun, log: u64) -> Result<Vec<Bytes>, BrokerError> {
        let Some(shared) = self.shared_log() else {
            return Err(BrokerError::NotAllowed("no shared data path".into()));
        };
        let failed = |e: kilonova_objstore::ObjectStoreError| {
            BrokerError::Unavailable(format!("reading a compacted run in {}: {e}", run.object))
        };
        let index = shared.reader().index(&run.object).await.map_err(failed)?;
        shared
            .reader()
            .read_entries(&run.object, &index, log, &run.positions())
            .await
            .map_err(failed)
    }

    /// Deletes the write-ahead objects (of every broker of the cluster)
    /// older than `min_age` that no flush record names: their entries were
    /// compacted into bases, or their flush was never committed. Objects are
    /// listed before records, so an object a record names is kept whatever
    /// is committed meanwhile. Returns how many were deleted.
    pub async fn sweep_write_ahead_objects(&self, min_age: Duration) -> Result<usize, BrokerError> {
        let Some(shared) = self.shared_log() else {
            return Ok(0);
        };
        let failed = |e: kilonova_objstore::ObjectStoreError| {
            BrokerError::Unavailable(format!("sweeping write-ahead objects: {e}"))
        };
        let now = std::time::SystemTime::now();
        let prefix = shared.bucket().key(shared.write_ahead_prefix());
        let old: Vec<String> = shared
            .bucket()
            .list(&prefix)
            .await
            .map_err(failed)?
            .into_iter()
            .filter(|o| {
                now.duration_since(o.last_modified)
                    .is_ok_and(|age| age >= min_age)
            })
            .map(|o| o.key)
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let named = self.resources().flush_record_objects().await?;
        let mut deleted = 0;
        for key in old.iter().filter(|k| !named.contains(*k)) {
            shared.bucket().delete(key).await.map_err(failed)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Forgets deleted namespace `ns`'s shared history (a cluster broker
    /// with shared storage; nothing otherwise): its bundles' flush records
    /// and bases in the metadata store, and the objects of the bases. The
    /// write-ahead objects the records named go with a later sweep, once
    /// no record of another bundle names them. A namespace created again
    /// meanwhile keeps what it wrote (a metadata error says so).
    pub async fn forget_namespace_history(&self, ns: &NamespaceName) -> Result<(), BrokerError> {
        if self.shared_log().is_none() {
            return Ok(());
        }
        let forgotten = self.resources().forget_namespace_history(ns).await?;
        for object in &forgotten.base_objects {
            self.delete_object(object).await;
        }
        tracing::info!(namespace = %ns, records = forgotten.records, bases = forgotten.bases, objects = forgotten.base_objects.len(), "a deleted namespace's shared history forgotten");
        Ok(())
    }

    /// What of `topic` (log `log`) must be kept: its subscriptions'
    /// positions and its retention.
    async fn needed(&self, topic: &TopicName, log: u64) -> Result<Needed, BrokerError> {
        let retention = self.effective_policies(topic).await?.retention;
        let cursors = self.resources().topic_cursors(log).await?;
        Ok(Needed {
            floor: cursors
                .subscriptions
                .values()
                .copied()
                .min()
                .unwrap_or(u64::MAX),
            retention,
            now_ms: self.clock().now_ms(),
        })
    }

    /// Deletes an object of a compacted history no base refers to (or of
    /// a deleted namespace's).
    async fn delete_object(&self, object: &str) {
        let Some(shared) = self.shared_log() else {
            return;
        };
        if let Err(e) = shared.bucket().delete(object).await {
            tracing::debug!(object, error = %e, "deleting an unreferenced history object failed");
        }
    }
}
