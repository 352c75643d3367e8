//! A bundle's committed history in shared storage, and its compaction
//! (ADR 0017, items 4 and 7).
//!
//! What a new owner reads to rebuild a topic is the bundle's *base* (its
//! history compacted: one object with the entries still needed, and where
//! each topic continues) and the flush records committed after it. Left
//! alone, the records would grow with every flush, and so would every
//! load. So the owner compacts each bundle it holds once enough records
//! piled up: it reads the base and records, drops from each topic the
//! entries no subscription and no retention needs any more, writes what is
//! left into a new object, replaces the base (a write guarded by its
//! ownership epoch and the old base's version), then deletes the records
//! the new base covers, and the old base's object. Write-ahead objects
//! hold entries of many bundles: they are not deleted here.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kilonova_metadata::bundles::{Commit, Held};
use kilonova_metadata::names::TopicName;
use kilonova_metadata::wal_index::{BaseTopic, FlushBase, FlushRecord, FlushTopic};
use kilonova_objstore::wal::tail::{read_tail, TailSlice};
use kilonova_objstore::wal::write_object;

use super::shared::decode_entry;
use super::BundleKey;
use crate::broker::Broker;
use crate::error::BrokerError;

/// A bundle is compacted once this many flush records followed its base.
pub(crate) const COMPACT_AFTER_RECORDS: usize = 256;

/// How often an owner looks for bundles to compact.
pub(crate) const COMPACT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// A bundle's committed history: its base (with its version) and the
/// flush records after it, in commit order.
pub(crate) struct History {
    base: Option<(FlushBase, u64)>,
    records: Vec<(String, FlushRecord)>,
}

/// One topic's part of a bundle's history.
pub(crate) struct TopicHistory {
    /// Its entries' slices, in order.
    pub(crate) slices: Vec<TailSlice>,
    /// The index (write-ahead tag) of its first entry still kept.
    pub(crate) first_index: u64,
    /// That entry's first message index.
    pub(crate) first_message_index: u64,
}

impl History {
    pub(crate) async fn read(broker: &Broker, key: &BundleKey) -> Result<Self, BrokerError> {
        let resources = broker.resources();
        let base = resources.flush_base(&key.0, key.1).await?;
        let after = base.as_ref().map(|(b, _)| b.covers.as_str());
        let records = resources.flush_records_after(&key.0, key.1, after).await?;
        Ok(History { base, records })
    }

    /// Topic `name` whose log is `log` (a deleted topic's entries, under
    /// another log id, are not a re-created one's).
    pub(crate) fn topic(&self, name: &str, log: u64) -> TopicHistory {
        let mut out = TopicHistory {
            slices: Vec::new(),
            first_index: 0,
            first_message_index: 0,
        };
        if let Some((base, _)) = &self.base {
            if let Some(t) = base
                .topics
                .iter()
                .find(|t| t.entries.topic == name && t.entries.log == log)
            {
                out.first_index = t.entries.first_index;
                out.first_message_index = t.first_message_index;
                out.slices.push(slice(&base.object, &t.entries));
            }
        }
        for (_, r) in &self.records {
            for t in r.topics.iter().filter(|t| t.topic == name && t.log == log) {
                out.slices.push(slice(&r.object, t));
            }
        }
        out
    }

    /// Every (topic, log) the history names.
    fn topics(&self) -> Vec<(String, u64)> {
        let mut all = BTreeMap::new();
        let base = self
            .base
            .iter()
            .flat_map(|(b, _)| &b.topics)
            .map(|t| &t.entries);
        let records = self.records.iter().flat_map(|(_, r)| &r.topics);
        for t in base.chain(records) {
            all.insert((t.topic.clone(), t.log), ());
        }
        all.into_keys().collect()
    }
}

fn slice(object: &str, t: &FlushTopic) -> TailSlice {
    TailSlice {
        object: object.to_owned(),
        log: t.log,
        first_index: t.first_index,
        positions: t.positions.clone(),
    }
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
    /// shared storage does it every [`COMPACT_CHECK_INTERVAL`] with
    /// [`COMPACT_AFTER_RECORDS`]). Failures are logged (the next pass tries
    /// again).
    pub async fn compact_held_bundles(&self, min_records: usize) {
        let Some(m) = self.membership() else {
            return;
        };
        for (key, epoch) in m.held() {
            match self.compact_bundle(&key, epoch, min_records).await {
                Ok(Some(c)) => {
                    tracing::info!(bundle = %format!("{}/{}", key.0, key.1), records = c.records, topics = c.topics, entries_kept = c.kept, entries_dropped = c.dropped, "bundle history compacted")
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(bundle = %format!("{}/{}", key.0, key.1), error = %e, "compacting a bundle's history failed; tried again later")
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
        let history = History::read(self, key).await?;
        if history.records.len() < min_records.max(1) {
            return Ok(None);
        }
        let Some(covers) = history.records.last().map(|(k, _)| k.clone()) else {
            return Ok(None);
        };
        let mut entries: Vec<(u64, Bytes)> = Vec::new();
        let mut topics = Vec::new();
        let mut report = Compacted {
            records: history.records.len(),
            ..Compacted::default()
        };
        for (name, log) in history.topics() {
            let Ok(topic) = TopicName::parse(&name) else {
                continue;
            };
            // A topic deleted (or deleted and re-created) since: its entries go.
            match self.resources().topic(&topic).await? {
                Some(r) if r.id == log => {}
                _ => continue,
            }
            let t = history.topic(&name, log);
            let read = read_tail(shared.reader(), t.slices, t.first_index)
                .await
                .map_err(|e| BrokerError::Unavailable(format!("reading {name}'s history: {e}")))?;
            let keep_from = self.needed_from(&topic, log).await?;
            // Entries from the first on, dropped while no message of theirs
            // is needed, kept from the first that is.
            let (mut first_index, mut first_message_index) = (t.first_index, t.first_message_index);
            let mut next_message_index = first_message_index;
            let mut kept = FlushTopic {
                topic: name.clone(),
                log,
                ..FlushTopic::default()
            };
            for (index, bytes) in read {
                let Some((_, count, _)) = decode_entry(bytes.clone()) else {
                    return Err(BrokerError::Unavailable(format!(
                        "{name}'s entry {index} is too short"
                    )));
                };
                let end = next_message_index + u64::from(count);
                if kept.count == 0 && end <= keep_from {
                    report.dropped += 1;
                    first_index = index + 1;
                    first_message_index = end;
                } else {
                    kept.count += 1;
                    kept.positions.push(entries.len() as u32);
                    entries.push((log, bytes));
                }
                next_message_index = end;
            }
            kept.first_index = first_index;
            report.kept += kept.count as usize;
            topics.push(BaseTopic {
                entries: kept,
                first_message_index,
            });
        }
        report.topics = topics.len();
        let object = match entries.is_empty() {
            true => String::new(),
            false => {
                let name = format!(
                    "wal-base/{}/{}/{}/{}.wal",
                    key.0.tenant,
                    key.0.namespace,
                    key.1,
                    shared.unique_name()
                );
                write_object(shared.bucket(), &name, &entries)
                    .await
                    .map_err(|e| {
                        BrokerError::Unavailable(format!("writing a compacted history: {e}"))
                    })?
            }
        };
        let base = FlushBase {
            covers: covers.clone(),
            object: object.clone(),
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
        match committed {
            Ok(Commit::Committed { .. }) => {}
            Ok(Commit::Deposed { .. }) => {
                self.delete_object(&object).await;
                return Ok(None);
            }
            Err(e) => {
                self.delete_object(&object).await;
                return Err(e.into());
            }
        }
        self.resources()
            .delete_flush_records(&key.0, key.1, &covers)
            .await?;
        if let Some((old, _)) = &history.base {
            self.delete_object(&old.object).await;
        }
        Ok(Some(report))
    }

    /// The first message index of `topic` (log `log`) that must be kept:
    /// every subscription's first unacknowledged message, unless retention
    /// keeps acknowledged messages (then everything is kept: retention by
    /// time and size is applied to the local copy only, for now).
    async fn needed_from(&self, topic: &TopicName, log: u64) -> Result<u64, BrokerError> {
        let retention = self.effective_policies(topic).await?.retention;
        let keeps_acknowledged = retention.time_ms != Some(0) || retention.size_bytes != Some(0);
        if keeps_acknowledged {
            return Ok(0);
        }
        let cursors = self.resources().topic_cursors(log).await?;
        Ok(cursors
            .subscriptions
            .values()
            .copied()
            .min()
            .unwrap_or(u64::MAX))
    }

    /// Deletes an object of a compacted history no base refers to any more.
    async fn delete_object(&self, object: &str) {
        let Some(shared) = self.shared_log() else {
            return;
        };
        if object.is_empty() {
            return;
        }
        if let Err(e) = shared.bucket().delete(object).await {
            tracing::debug!(object, error = %e, "deleting an unreferenced history object failed");
        }
    }
}
