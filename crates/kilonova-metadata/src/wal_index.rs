//! The flush index: which write-ahead objects hold which topics' entries,
//! recorded by one metadata transaction per flush of a broker (issue #26's
//! flush commit).
//!
//! A broker's write-ahead writer groups the appends of every topic it owns
//! into one object per flush. Once the object is durable, the broker records
//! the flush: one key per bundle the flush touches,
//! `/wal-index/<tenant>/<namespace>/<range>/<epoch:020>-<sequence:020>`,
//! holding a [`FlushRecord`] (the object, and per topic its entries'
//! indexes and places in the object), all written by
//! [`Resources::commit_flush`] in one transaction that also checks that the
//! broker still owns each of those bundles at the epoch it holds
//! ([`Resources::commit_if_owner`]): a deposed broker's commit writes
//! nothing, however late it arrives. A publish is acknowledged only after
//! that.
//!
//! Keys sort as the commits happened: by the ownership epoch (a later
//! owner's epoch is higher), then by the writer's flush sequence (one flush
//! in flight at a time, so an owner's commits land in sequence order), both
//! zero-padded to 20 digits so that byte order is numeric order. A new owner
//! of a bundle reads them in key order ([`Resources::flush_records`]) to
//! rebuild its topics' tails; records whose entries are stored elsewhere
//! (compacted) are deleted with [`Resources::delete_flush_records`].
//! Why a transaction per flush and a record per bundle:
//! docs/adr/0018-flush-commit-one-transaction-per-flush.md.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::bundles::{BundleRange, Commit, Held};
use crate::error::MetadataError;
use crate::names::{NamespaceName, TopicName};
use crate::resources::{from_json, to_json, Resources};
use crate::store::{Expect, TxnOp, MAX_TXN_OPS};

const ROOT: &str = "/wal-index";

/// The most bundles one flush commit may touch: each costs an ownership
/// check and a write in a transaction of at most [`MAX_TXN_OPS`] operations.
pub const MAX_FLUSH_BUNDLES: usize = MAX_TXN_OPS / 2;

/// The most bytes of records one flush commit writes: etcd refuses a
/// request over `--max-request-bytes` (1.5 MiB by default), and the
/// transaction carries keys and checks besides. A writer keeps its flushes
/// well below (kilonova-objstore's `WalConfig::max_object_entries`).
pub const MAX_FLUSH_COMMIT_BYTES: usize = 1 << 20;

/// Flush records [`Resources::flush_records`] reads at a time.
pub const FLUSH_READS_IN_FLIGHT: usize = 32;

/// One flush's entries of one bundle's topics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushRecord {
    /// The write-ahead object's full key in the bucket.
    pub object: String,
    /// The topics with entries in the object, in the order of their first
    /// entry.
    pub topics: Vec<FlushTopic>,
}

/// A topic's entries in one flush: `count` entries with consecutive
/// indexes from `first_index`, at `positions` in the object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushTopic {
    /// The topic's full name (`persistent://tenant/ns/local`).
    pub topic: String,
    /// The log id the writer gave the entries in the object (its index names
    /// it: a reader checks the places are this log's).
    pub log: u64,
    /// The topic's index of its first entry here.
    pub first_index: u64,
    /// How many entries (`positions.len()`).
    pub count: u64,
    /// Each entry's place in the object (0-based), increasing.
    pub positions: Vec<u32>,
}

impl FlushTopic {
    /// The index after this topic's last entry here.
    pub fn end_index(&self) -> u64 {
        self.first_index.saturating_add(self.count)
    }
}

/// A bundle's compacted history: the entries of its topics that flush
/// records up to `covers` (and earlier bases) held and that are still
/// needed, in objects of their own. A new owner reads it, then the flush
/// records after `covers`. `/wal-base/<tenant>/<namespace>/<range>`,
/// replaced by each compaction; its size grows with topics and runs, not
/// with entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushBase {
    /// The key of the last flush record it covers: records up to it are
    /// superseded (and deleted after it is written).
    pub covers: String,
    /// Every topic the covered records named and that still exists.
    pub topics: Vec<BaseTopic>,
}

/// A topic's entries in a [`FlushBase`]: runs of consecutive entries, in
/// order, from entry `first_index` (message `first_message_index`) on;
/// those before were dropped. With no run, where the topic continues.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseTopic {
    pub topic: String,
    /// The log id its entries were written under.
    pub log: u64,
    pub first_index: u64,
    pub first_message_index: u64,
    pub runs: Vec<BaseRun>,
}

/// Consecutive entries of a topic stored one after the other in an object:
/// `count` entries from place `first_position`, entry indexes from
/// `first_index`, their messages numbered `first_message_index` up to
/// `end_message_index` (excluded).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseRun {
    pub object: String,
    pub first_position: u32,
    pub count: u32,
    pub first_index: u64,
    pub first_message_index: u64,
    pub end_message_index: u64,
    /// Its entries' bytes.
    #[serde(default)]
    pub bytes: u64,
    /// The latest publish time of its entries (ms since the epoch).
    #[serde(default)]
    pub last_publish_ms: u64,
}

impl BaseRun {
    /// The entry index after its last.
    pub fn end_index(&self) -> u64 {
        self.first_index + u64::from(self.count)
    }

    /// Its entries' places in the object.
    pub fn positions(&self) -> Vec<u32> {
        (self.first_position..self.first_position.saturating_add(self.count)).collect()
    }
}

impl BaseTopic {
    /// The entry index after its last kept entry (where it continues).
    pub fn end_index(&self) -> u64 {
        self.runs
            .last()
            .map_or(self.first_index, BaseRun::end_index)
    }

    /// The message index after its last kept entry.
    pub fn end_message_index(&self) -> u64 {
        self.runs
            .last()
            .map_or(self.first_message_index, |r| r.end_message_index)
    }
}

fn base_key(ns: &NamespaceName, range: BundleRange) -> String {
    format!("/wal-base/{}/{}/{range}", ns.tenant, ns.namespace)
}

/// Why a flush commit cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum FlushIndexError {
    /// One transaction holds the ownership checks and records of at most
    /// [`MAX_FLUSH_BUNDLES`] bundles. Nothing was written; the writer must
    /// flush less at a time (or the broker own fewer bundles).
    #[error("a flush touching {bundles} bundles cannot be committed in one metadata transaction (at most {MAX_FLUSH_BUNDLES})")]
    TooManyBundles { bundles: usize },
    /// The records together are over [`MAX_FLUSH_COMMIT_BYTES`]. Nothing was
    /// written; the writer must flush fewer entries at a time.
    #[error("a flush's records of {bytes} bytes cannot be committed in one metadata transaction (at most {MAX_FLUSH_COMMIT_BYTES})")]
    TooLarge { bytes: usize },
    /// A record for a bundle the caller does not say it holds.
    #[error("flush record for bundle {ns}/{range}, which is not held")]
    NotHeld {
        ns: NamespaceName,
        range: BundleRange,
    },
    /// A topic's entries in a flush do not follow each other.
    #[error("topic {topic}: entry {found} follows entry {expected_before} in the same flush (indexes must be consecutive, places increasing)")]
    NotConsecutive {
        topic: String,
        expected_before: u64,
        found: u64,
    },
    /// The records are already there: the same epoch and sequence committed
    /// twice (a writer restarted without a new ownership). Nothing written.
    #[error("flush {epoch}-{sequence} of bundle {ns}/{range} is already recorded")]
    AlreadyRecorded {
        ns: NamespaceName,
        range: BundleRange,
        epoch: u64,
        sequence: u64,
    },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// The records of one flush, grouped by bundle as entries are added in
/// append order.
#[derive(Debug, Default)]
pub struct FlushRecords {
    object: String,
    bundles: BTreeMap<(NamespaceName, BundleRange), FlushRecord>,
    /// Each topic's bundle and place in its record's `topics`.
    topics: HashMap<String, ((NamespaceName, BundleRange), usize)>,
}

impl FlushRecords {
    pub fn new(object: &str) -> Self {
        FlushRecords {
            object: object.to_owned(),
            ..Default::default()
        }
    }

    /// Adds entry `index` of `topic` (in bundle `range` of its namespace),
    /// written by log `log` at `position` in the object. A topic's entries
    /// must come in order, with consecutive indexes.
    pub fn push(
        &mut self,
        topic: &TopicName,
        range: BundleRange,
        log: u64,
        index: u64,
        position: u32,
    ) -> Result<(), FlushIndexError> {
        let name = topic.to_string();
        let bundle = (topic.namespace(), range);
        if let Some((at, i)) = self.topics.get(&name) {
            let t = self
                .bundles
                .get_mut(at)
                .and_then(|r| r.topics.get_mut(*i))
                .ok_or_else(|| MetadataError::Backend("flush records out of step".into()))?;
            let follows = t.positions.last().is_none_or(|&p| p < position);
            if index != t.end_index() || !follows || *at != bundle || t.log != log {
                return Err(FlushIndexError::NotConsecutive {
                    topic: name,
                    expected_before: t.end_index(),
                    found: index,
                });
            }
            t.count += 1;
            t.positions.push(position);
            return Ok(());
        }
        let record = self
            .bundles
            .entry(bundle.clone())
            .or_insert_with(|| FlushRecord {
                object: self.object.clone(),
                topics: Vec::new(),
            });
        record.topics.push(FlushTopic {
            topic: name.clone(),
            log,
            first_index: index,
            count: 1,
            positions: vec![position],
        });
        self.topics.insert(name, (bundle, record.topics.len() - 1));
        Ok(())
    }

    /// The records, one per bundle touched, in bundle order.
    pub fn finish(self) -> Vec<(NamespaceName, BundleRange, FlushRecord)> {
        self.bundles
            .into_iter()
            .map(|((ns, range), r)| (ns, range, r))
            .collect()
    }
}

fn bundle_prefix(ns: &NamespaceName, range: BundleRange) -> String {
    format!("{ROOT}/{}/{}/{range}", ns.tenant, ns.namespace)
}

/// The key of the record of flush `sequence` of the owner at `epoch`.
pub fn flush_record_key(
    ns: &NamespaceName,
    range: BundleRange,
    epoch: u64,
    sequence: u64,
) -> String {
    format!("{}/{epoch:020}-{sequence:020}", bundle_prefix(ns, range))
}

/// The epoch and sequence a record's key (or its last component) names.
pub fn parse_flush_record_key(key: &str) -> Option<(u64, u64)> {
    let name = key.rsplit('/').next()?;
    let (epoch, sequence) = name.split_once('-')?;
    if epoch.len() != 20 || sequence.len() != 20 {
        return None;
    }
    Some((epoch.parse().ok()?, sequence.parse().ok()?))
}

impl Resources {
    /// Records flush `sequence` of the caller's write-ahead writer: one key
    /// per bundle of `records` (under the epoch at which `held` says the
    /// caller owns it), written in one transaction that also checks each of
    /// those bundles is still owned at that epoch — [`Commit::Deposed`] and
    /// nothing written if one is not. Bundles in `held` that the flush does
    /// not touch are not checked. At most [`MAX_FLUSH_BUNDLES`] bundles
    /// ([`FlushIndexError::TooManyBundles`]) and [`MAX_FLUSH_COMMIT_BYTES`]
    /// of records ([`FlushIndexError::TooLarge`]): refused whole, not split,
    /// so a flush is recorded entirely or not at all.
    pub async fn commit_flush(
        &self,
        held: &[Held],
        sequence: u64,
        records: Vec<(NamespaceName, BundleRange, FlushRecord)>,
    ) -> Result<Commit, FlushIndexError> {
        if records.len() > MAX_FLUSH_BUNDLES {
            return Err(FlushIndexError::TooManyBundles {
                bundles: records.len(),
            });
        }
        let mut guards = Vec::with_capacity(records.len());
        let mut writes = Vec::with_capacity(records.len());
        let mut bytes = 0;
        for (ns, range, record) in records {
            let Some(h) = held.iter().find(|h| h.ns == ns && h.range == range) else {
                return Err(FlushIndexError::NotHeld { ns, range });
            };
            let value = to_json("a flush record", &record)?;
            bytes += value.len();
            if bytes > MAX_FLUSH_COMMIT_BYTES {
                return Err(FlushIndexError::TooLarge { bytes });
            }
            writes.push(TxnOp::Put {
                key: flush_record_key(&ns, range, h.epoch, sequence),
                value,
                expect: Expect::Absent,
                session: None,
            });
            guards.push(h.clone());
        }
        match self.commit_if_owner(&guards, writes).await {
            Ok(c) => Ok(c),
            Err(MetadataError::BadVersion { key, .. }) => {
                let (epoch, sequence) = parse_flush_record_key(&key).unwrap_or((0, sequence));
                let g = guards
                    .iter()
                    .find(|g| key.starts_with(&bundle_prefix(&g.ns, g.range)))
                    .cloned();
                match g {
                    Some(g) => Err(FlushIndexError::AlreadyRecorded {
                        ns: g.ns,
                        range: g.range,
                        epoch,
                        sequence,
                    }),
                    None => Err(MetadataError::Backend(format!(
                        "a flush commit conflicted on {key}, which it does not write"
                    ))
                    .into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The bundle's flush records in commit order (key order: epoch, then
    /// sequence), with their keys. A record deleted while listing is left
    /// out. The keys are listed page by page, then read
    /// [`FLUSH_READS_IN_FLIGHT`] at a time (a new owner reads them all
    /// before serving the bundle's topics: one round trip each, one after
    /// the other, would take seconds for thousands).
    pub async fn flush_records(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
    ) -> crate::Result<Vec<(String, FlushRecord)>> {
        self.flush_records_after(ns, range, None).await
    }

    /// [`Resources::flush_records`] with keys after `after` only (the
    /// records a bundle's base does not cover: [`FlushBase::covers`]).
    pub async fn flush_records_after(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
        after: Option<&str>,
    ) -> crate::Result<Vec<(String, FlushRecord)>> {
        let prefix = bundle_prefix(ns, range);
        let keys: Vec<String> = self
            .list(&prefix)
            .await?
            .into_iter()
            .map(|name| format!("{prefix}/{name}"))
            .filter(|key| after.is_none_or(|a| key.as_str() > a))
            .collect();
        let mut values: Vec<Option<FlushRecord>> = vec![None; keys.len()];
        let mut reads = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while next < keys.len() && reads.len() < FLUSH_READS_IN_FLIGHT {
                let (store, key) = (self.store().clone(), keys[next].clone());
                let at = next;
                reads.spawn(async move { (at, store.get(&key).await) });
                next += 1;
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            let (at, got) =
                done.map_err(|e| MetadataError::Backend(format!("a flush record read: {e}")))?;
            if let (Some(s), Some(slot)) = (got?, values.get_mut(at)) {
                *slot = Some(from_json("a flush record", &s.value)?);
            }
        }
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| Some((k, v?)))
            .collect())
    }

    /// Every object a flush record of any bundle names: what a sweep of
    /// write-ahead objects must keep. Reads every record (after compaction
    /// a few hundred per bundle at most).
    pub async fn flush_record_objects(&self) -> crate::Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for tenant in self.list(ROOT).await? {
            for namespace in self.list(&format!("{ROOT}/{tenant}")).await? {
                let ns = NamespaceName::new(&tenant, &namespace).map_err(|e| {
                    MetadataError::Invalid(format!("a flush record's namespace: {e}"))
                })?;
                for range in self.list(&format!("{ROOT}/{tenant}/{namespace}")).await? {
                    let range: BundleRange = range.parse()?;
                    for (_, r) in self.flush_records(&ns, range).await? {
                        out.insert(r.object);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The bundle's compacted history, with its version (none yet: `None`).
    pub async fn flush_base(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
    ) -> crate::Result<Option<(FlushBase, u64)>> {
        match self.store().get(&base_key(ns, range)).await? {
            Some(s) => Ok(Some((from_json("a flush base", &s.value)?, s.version))),
            None => Ok(None),
        }
    }

    /// Replaces the bundle's compacted history with `base` if the caller
    /// still owns the bundle as `held` says and the base is still at
    /// `replacing` (its version; `None`: there was none) —
    /// [`Commit::Deposed`] and nothing written if the bundle changed
    /// owner; [`MetadataError::BadVersion`] if another base was written
    /// meanwhile. The flush records it covers are the caller's to delete
    /// next ([`Resources::delete_flush_records`]); readers skip them
    /// meanwhile ([`Resources::flush_records_after`]).
    pub async fn put_flush_base(
        &self,
        held: &Held,
        base: &FlushBase,
        replacing: Option<u64>,
    ) -> crate::Result<Commit> {
        let write = TxnOp::Put {
            key: base_key(&held.ns, held.range),
            value: to_json("a flush base", base)?,
            expect: replacing.map_or(Expect::Absent, Expect::Version),
            session: None,
        };
        self.commit_if_owner(std::slice::from_ref(held), vec![write])
            .await
    }

    /// Deletes the bundle's flush records up to `up_to_key` (included), in
    /// transactions of up to [`MAX_TXN_OPS`] deletes; returns how many
    /// existed. For the owner once the records' entries are stored
    /// elsewhere (compacted): nothing checks that here.
    pub async fn delete_flush_records(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
        up_to_key: &str,
    ) -> crate::Result<usize> {
        let prefix = bundle_prefix(ns, range);
        let last = up_to_key
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| {
                MetadataError::Invalid(format!(
                    "{up_to_key} is not a flush record key of bundle {ns}/{range}"
                ))
            })?;
        let names: Vec<String> = self
            .list(&prefix)
            .await?
            .into_iter()
            .take_while(|n| n.as_str() <= last)
            .collect();
        for chunk in names.chunks(MAX_TXN_OPS) {
            let ops = chunk
                .iter()
                .map(|n| TxnOp::Delete {
                    key: format!("{prefix}/{n}"),
                    expect: Expect::Any,
                })
                .collect();
            self.store().txn(ops).await?;
        }
        Ok(names.len())
    }
}

impl FlushBase {
    /// This base cut at a split of its bundle into `halves` (by each
    /// topic's hash): each half's base holds its topics' runs (naming the
    /// same objects) and covers the same record, spelled as a key of the
    /// half's own records so that the half's later records sort after it.
    pub fn split(
        &self,
        ns: &NamespaceName,
        halves: [BundleRange; 2],
    ) -> crate::Result<[FlushBase; 2]> {
        let (epoch, sequence) = parse_flush_record_key(&self.covers).ok_or_else(|| {
            MetadataError::Invalid(format!("{} is not a flush record key", self.covers))
        })?;
        let mut out = halves.map(|range| FlushBase {
            covers: flush_record_key(ns, range, epoch, sequence),
            topics: Vec::new(),
        });
        for t in &self.topics {
            let name = TopicName::parse(&t.topic)
                .map_err(|e| MetadataError::Invalid(format!("a base's topic {}: {e}", t.topic)))?;
            let hash = crate::bundles::topic_hash(&name);
            if let Some(i) = halves.iter().position(|h| h.contains(hash)) {
                out[i].topics.push(t.clone());
            }
        }
        Ok(out)
    }
}

impl Resources {
    /// Writes the bases of a split bundle's halves (`held`, the bundle
    /// split, still owned at its epoch: [`Commit::Deposed`] and nothing
    /// written otherwise). The bundle's own base is the caller's to delete
    /// once the split is in the namespace's policies ([`Resources::delete_flush_base`]).
    pub async fn put_split_bases(
        &self,
        held: &Held,
        halves: &[(BundleRange, FlushBase)],
    ) -> crate::Result<Commit> {
        let mut writes = Vec::with_capacity(halves.len());
        for (range, base) in halves {
            writes.push(TxnOp::Put {
                key: base_key(&held.ns, *range),
                value: to_json("a flush base", base)?,
                expect: Expect::Any,
                session: None,
            });
        }
        self.commit_if_owner(std::slice::from_ref(held), writes)
            .await
    }

    /// Deletes the bundle's base (it was split: its halves have theirs),
    /// if the caller still owns it at the epoch held.
    pub async fn delete_flush_base(&self, held: &Held) -> crate::Result<Commit> {
        let delete = TxnOp::Delete {
            key: base_key(&held.ns, held.range),
            expect: Expect::Any,
        };
        self.commit_if_owner(std::slice::from_ref(held), vec![delete])
            .await
    }

    /// The objects the bases of `ns`'s bundles other than `except` name:
    /// a compaction keeps them (halves of a split bundle share objects
    /// until each has compacted its part away).
    pub async fn objects_of_other_bases(
        &self,
        ns: &NamespaceName,
        except: BundleRange,
    ) -> crate::Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for range in self
            .list(&format!("/wal-base/{}/{}", ns.tenant, ns.namespace))
            .await?
        {
            let range: BundleRange = range.parse()?;
            if range == except {
                continue;
            }
            if let Some((base, _)) = self.flush_base(ns, range).await? {
                out.extend(
                    base.topics
                        .iter()
                        .flat_map(|t| &t.runs)
                        .map(|r| r.object.clone()),
                );
            }
        }
        Ok(out)
    }
}

/// What [`Resources::forget_namespace_history`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForgottenHistory {
    pub records: usize,
    pub bases: usize,
    /// The objects the bases' runs were in (the caller deletes them; the
    /// write-ahead objects the records named go with the next sweep).
    pub base_objects: BTreeSet<String>,
}

impl Resources {
    /// Forgets deleted namespace `ns`'s shared history: every flush record
    /// and compacted base of its bundles. Each transaction checks that the
    /// namespace is still absent: if it was created again meanwhile,
    /// nothing more is deleted and the answer is
    /// [`MetadataError::BadVersion`] (its new topics' records are kept).
    pub async fn forget_namespace_history(
        &self,
        ns: &NamespaceName,
    ) -> crate::Result<ForgottenHistory> {
        let mut out = ForgottenHistory::default();
        let mut keys = Vec::new();
        let records = format!("{ROOT}/{}/{}", ns.tenant, ns.namespace);
        for range in self.list(&records).await? {
            let bundle = format!("{records}/{range}");
            let names = self.list(&bundle).await?;
            out.records += names.len();
            keys.extend(names.into_iter().map(|n| format!("{bundle}/{n}")));
        }
        let bases = format!("/wal-base/{}/{}", ns.tenant, ns.namespace);
        for range in self.list(&bases).await? {
            let key = format!("{bases}/{range}");
            if let Some(stored) = self.store().get(&key).await? {
                let base: FlushBase = from_json("a flush base", &stored.value)?;
                let runs = base.topics.into_iter().flat_map(|t| t.runs);
                out.base_objects.extend(runs.map(|r| r.object));
                out.bases += 1;
                keys.push(key);
            }
        }
        for chunk in keys.chunks(MAX_TXN_OPS - 1) {
            let mut ops = vec![TxnOp::Check {
                key: crate::resources::namespace_key(ns),
                expect: Expect::Absent,
            }];
            ops.extend(chunk.iter().map(|key| TxnOp::Delete {
                key: key.clone(),
                expect: Expect::Any,
            }));
            self.store().txn(ops).await?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name).unwrap()
    }

    #[test]
    fn a_split_base_parts_topics_by_hash_and_covers_as_the_halves_records() {
        let ns = NamespaceName::new("t", "ns").unwrap();
        let whole = BundleRange::FULL;
        let run = |o: &str| BaseRun {
            object: o.into(),
            count: 1,
            end_message_index: 1,
            ..BaseRun::default()
        };
        let names: Vec<String> = (0..40).map(|i| format!("persistent://t/ns/x{i}")).collect();
        let base = FlushBase {
            covers: flush_record_key(&ns, whole, 7, 9),
            topics: names
                .iter()
                .map(|n| BaseTopic {
                    topic: n.clone(),
                    runs: vec![run("obj")],
                    ..BaseTopic::default()
                })
                .collect(),
        };
        let lo = BundleRange {
            lower: 0,
            upper: 0x8000_0000,
        };
        let hi = BundleRange {
            lower: 0x8000_0000,
            upper: crate::bundles::HASH_MAX,
        };
        let [a, b] = base.split(&ns, [lo, hi]).unwrap();
        assert_eq!(a.topics.len() + b.topics.len(), 40);
        assert!(!a.topics.is_empty() && !b.topics.is_empty());
        for (half, part) in [(lo, &a), (hi, &b)] {
            for t in &part.topics {
                let h = crate::bundles::topic_hash(&topic(&t.topic));
                assert!(half.contains(h), "{} in {half}", t.topic);
            }
            assert_eq!(part.covers, flush_record_key(&ns, half, 7, 9));
            // A later record of the half sorts after what the base covers.
            assert!(flush_record_key(&ns, half, 7, 10) > part.covers);
            assert!(flush_record_key(&ns, half, 8, 0) > part.covers);
        }
    }

    #[test]
    fn record_keys_sort_by_epoch_then_sequence() {
        let ns = NamespaceName::parse("t/ns").unwrap();
        let r = BundleRange::FULL;
        let keys = [
            flush_record_key(&ns, r, 9, 1),
            flush_record_key(&ns, r, 9, 10),
            flush_record_key(&ns, r, 10, 2),
            flush_record_key(&ns, r, 100, 1),
        ];
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert_eq!(
            keys[1],
            "/wal-index/t/ns/0x00000000_0xffffffff/00000000000000000009-00000000000000000010"
        );
        assert_eq!(parse_flush_record_key(&keys[2]), Some((10, 2)));
        assert_eq!(parse_flush_record_key("/wal-index/x/9-1"), None);
    }

    #[test]
    fn entries_are_grouped_by_bundle_and_topic_in_append_order() {
        let (low, high): (BundleRange, BundleRange) = (
            "0x00000000_0x80000000".parse().unwrap(),
            "0x80000000_0xffffffff".parse().unwrap(),
        );
        let (a, b, c) = (
            topic("persistent://t/ns/a"),
            topic("persistent://t/ns/b"),
            topic("persistent://t/other/c"),
        );
        let mut f = FlushRecords::new("wal/x/1.wal");
        f.push(&a, low, 1, 10, 0).unwrap();
        f.push(&b, high, 2, 0, 1).unwrap();
        f.push(&a, low, 1, 11, 2).unwrap();
        f.push(&c, low, 3, 5, 3).unwrap();
        let records = f.finish();
        let ns = NamespaceName::parse("t/ns").unwrap();
        let other = NamespaceName::parse("t/other").unwrap();
        let summary: Vec<_> = records
            .iter()
            .map(|(n, r, rec)| {
                let topics: Vec<_> = rec
                    .topics
                    .iter()
                    .map(|t| {
                        (
                            t.topic.as_str(),
                            t.first_index,
                            t.count,
                            t.positions.clone(),
                        )
                    })
                    .collect();
                (n.clone(), *r, topics)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    ns.clone(),
                    low,
                    vec![("persistent://t/ns/a", 10, 2, vec![0, 2])]
                ),
                (ns, high, vec![("persistent://t/ns/b", 0, 1, vec![1])]),
                (other, low, vec![("persistent://t/other/c", 5, 1, vec![3])]),
            ]
        );
    }

    #[test]
    fn a_topics_entries_must_follow_each_other() {
        let a = topic("persistent://t/ns/a");
        let r = BundleRange::FULL;
        let mut f = FlushRecords::new("o");
        f.push(&a, r, 1, 10, 0).unwrap();
        for (index, position) in [(12, 1), (10, 1), (11, 0)] {
            assert!(
                matches!(
                    f.push(&a, r, 1, index, position),
                    Err(FlushIndexError::NotConsecutive { .. })
                ),
                "{index} at {position}"
            );
        }
        f.push(&a, r, 1, 11, 1).unwrap();
    }
}
