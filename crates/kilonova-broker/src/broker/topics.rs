//! The broker's loaded topics: loading a topic (reading or creating its
//! record, opening its log, starting its task), routing commands to it,
//! unloading and deleting it while loads wait, lookups, partition counts, topic
//! auto-creation and quotas, and schema registration.

use std::collections::HashMap;

use tokio::sync::{mpsc, watch};

use kilonova_metadata::names::TopicName;
use kilonova_metadata::NamespaceName;
use kilonova_metadata::TopicRecord;
use kilonova_storage::{ManagedLog, ManagedLogConfig, StorageError};

use super::{check_servable, Broker};
use crate::error::BrokerError;
use crate::topic::{self, Topic, TopicCommand, TopicHandle};

/// The loaded topics, and those an admin request is unloading or deleting.
#[derive(Default)]
pub(super) struct TopicMap {
    pub(super) live: HashMap<String, TopicHandle>,
    /// Loads of these wait until the sender side drops (the old task is done
    /// with the log and, for a delete, the record).
    pub(super) closing: HashMap<String, watch::Receiver<()>>,
    /// Bumped when a topic's record is deleted: a load that read a record
    /// before the bump reads it again.
    pub(super) deletions: u64,
}

/// Held by a topic task while an admin request unloads or deletes it.
pub(crate) struct Closing {
    broker: Broker,
    name: String,
    _done: watch::Sender<()>,
    deleted: bool,
}

impl Closing {
    /// The topic's record was deleted (loads must not use a record read before).
    pub(crate) fn deleted(&mut self) {
        self.deleted = true;
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        let mut topics = self.broker.topics();
        if self.deleted {
            topics.deletions += 1;
        }
        topics.closing.remove(&self.name);
    }
}

/// An inactive-deletion pass over a partitioned topic; ends when dropped.
pub(crate) struct DeletionPass {
    broker: Broker,
    key: String,
}

impl Drop for DeletionPass {
    fn drop(&mut self) {
        self.broker
            .inner
            .partitioned_deletions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl Broker {
    /// Whether a task serves the topic now.
    pub fn is_loaded(&self, name: &TopicName) -> bool {
        self.topics()
            .live
            .get(&name.to_string())
            .is_some_and(|h| !h.is_closed())
    }

    /// The task serving `name`, if one is loaded.
    pub(crate) fn loaded_handle(&self, name: &str) -> Option<TopicHandle> {
        self.topics().live.get(name).cloned()
    }

    pub(super) fn topics(&self) -> std::sync::MutexGuard<'_, TopicMap> {
        // The map stays consistent even if a holder panicked: entries are whole values.
        self.inner.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn open_log(&self, id: u64) -> Result<ManagedLog, StorageError> {
        let c = self.config();
        ManagedLog::open(
            id,
            self.inner.store.clone(),
            self.inner.state.clone(),
            self.inner.cache.clone(),
            ManagedLogConfig {
                max_segment_entries: c.max_segment_entries.max(1),
                max_segment_bytes: c.max_segment_bytes.max(1),
                max_segment_age_ms: c.max_segment_age_secs.saturating_mul(1000).max(1),
                cache_eviction: c.cache_eviction.into(),
                backlogged_cursor_entries: c.cache_backlogged_cursor_entries,
                ..ManagedLogConfig::default()
            },
            self.inner.clock.now_ms(),
        )
        .await
    }

    /// Refuses a partition count above the cap
    /// (`max_num_partitions_per_partitioned_topic`), with Pulsar's 406 and words.
    pub fn check_partition_count(&self, partitions: u32) -> Result<(), BrokerError> {
        let max = self.config().max_partitions();
        if partitions > max {
            return Err(BrokerError::NotAcceptable(format!(
                "Number of partitions should be less than or equal to {max}"
            )));
        }
        Ok(())
    }

    /// Partitions of `name` (0: not partitioned; a partition of a partitioned
    /// topic is a topic of its own, as Pulsar answers). With partitioned
    /// auto-creation, an unknown topic is created partitioned here, where
    /// clients ask first.
    pub async fn partitions(&self, name: &TopicName) -> Result<u32, BrokerError> {
        let resources = self.resources();
        if let Some(t) = resources.topic(name).await? {
            check_servable(name, &t)?;
            return Ok(t.partitions);
        }
        let ns = name.namespace();
        let Ok(policies) = resources.namespace(&ns).await else {
            return Err(BrokerError::NamespaceNotFound(ns.to_string()));
        };
        let auto = self.auto_creation(&policies);
        if auto.allow_auto_topic_creation
            && auto.topic_type == kilonova_metadata::policies::TopicType::Partitioned
            && name.partition().is_none()
        {
            let n = auto.default_num_partitions.unwrap_or(1).max(1);
            self.check_partition_count(n).map_err(|e| {
                BrokerError::NotAcceptable(format!(
                    "auto-creating {name} with {n} partitions (the namespace's or broker's default): {e}"
                ))
            })?;
            self.check_topic_quota(&ns, n).await?;
            return match resources.create_topic(name, n).await {
                Ok(_) => Ok(n),
                // Created concurrently: answer what is stored.
                Err(kilonova_metadata::MetadataError::AlreadyExists(_)) => {
                    Ok(resources.topic(name).await?.map_or(0, |t| t.partitions))
                }
                Err(e) => Err(e.into()),
            };
        }
        Ok(0)
    }

    /// Topic auto-creation for a namespace: its override, else the broker's setting.
    pub fn auto_creation(
        &self,
        ns: &kilonova_metadata::policies::Policies,
    ) -> kilonova_metadata::policies::AutoTopicCreationOverride {
        use kilonova_metadata::policies::{AutoTopicCreationOverride, TopicType};
        ns.auto_topic_creation_override.unwrap_or_else(|| {
            let c = self.config();
            AutoTopicCreationOverride {
                allow_auto_topic_creation: c.allow_auto_topic_creation,
                topic_type: match c.auto_topic_creation_type {
                    crate::config::AutoTopicType::Partitioned => TopicType::Partitioned,
                    crate::config::AutoTopicType::NonPartitioned => TopicType::NonPartitioned,
                },
                default_num_partitions: Some(c.default_num_partitions),
            }
        })
    }

    /// The topic's handle, loading it (and creating it, if auto-creation allows) first.
    ///
    /// Boxed with `Send` spelled out: a topic's task calls back into this (to
    /// forward commands that raced an unload), which the compiler cannot prove
    /// `Send` through two opaque futures.
    pub(crate) fn topic<'a>(
        &'a self,
        name: &'a TopicName,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<TopicHandle, BrokerError>> + Send + 'a>,
    > {
        Box::pin(self.load_topic(name))
    }

    async fn load_topic(&self, name: &TopicName) -> Result<TopicHandle, BrokerError> {
        let key = name.to_string();
        loop {
            if self.is_shutting_down() {
                return Err(BrokerError::ShuttingDown);
            }
            // A live task, or a close in progress to wait for.
            let (generation, closing) = {
                let topics = self.topics();
                if let Some(h) = topics.live.get(&key).filter(|h| !h.is_closed()) {
                    return Ok(h.clone());
                }
                (topics.deletions, topics.closing.get(&key).cloned())
            };
            if let Some(mut done) = closing {
                // Err once the closing side is dropped: the close is over.
                let _ = done.changed().await;
                continue;
            }
            self.ensure_owned(name).await?;
            let record = self.read_or_create_record(name).await?;
            if record.partitions > 0 {
                return Err(BrokerError::NotAllowed(format!(
                    "{key} is a partitioned topic: use its partitions"
                )));
            }
            let mut topics = self.topics();
            if let Some(h) = topics.live.get(&key).filter(|h| !h.is_closed()) {
                return Ok(h.clone());
            }
            if topics.deletions != generation || topics.closing.contains_key(&key) {
                // A record was deleted meanwhile (maybe this one): read again.
                continue;
            }
            let (tx, rx) = mpsc::channel(self.config().topic_queue_depth.max(1));
            let handle = TopicHandle::new(tx);
            topics.live.insert(key, handle.clone());
            drop(topics);
            tokio::spawn(Topic::run(
                self.clone(),
                name.clone(),
                record,
                rx,
                handle.publish_gate.clone(),
                handle.lane.clone(),
            ));
            return Ok(handle);
        }
    }

    /// The topic's record, created if auto-creation (or its partitioned topic) allows.
    async fn read_or_create_record(&self, name: &TopicName) -> Result<TopicRecord, BrokerError> {
        if let Some(r) = self.resources().topic(name).await? {
            return Ok(r);
        }
        let base = name.partitioned_topic();
        let parent = match name.partition() {
            Some(i) => self
                .resources()
                .topic(&base)
                .await?
                .filter(|t| i < t.partitions),
            None => None,
        };
        if let Some(p) = &parent {
            check_servable(&base, p)?;
        }
        let ns = name.namespace();
        let Ok(policies) = self.resources().namespace(&ns).await else {
            return Err(BrokerError::NamespaceNotFound(ns.to_string()));
        };
        let create = parent.is_some() || self.auto_creation(&policies).allow_auto_topic_creation;
        if create && parent.is_none() {
            self.check_topic_quota(&ns, 1).await?;
        }
        Ok(self.resources().get_or_create_topic(name, create).await?)
    }

    /// Refuses `adding` more topics (a partitioned topic counts its
    /// partitions) in a namespace at its topic limit (`maxTopicsPerNamespace`,
    /// else the broker's `max_topics_per_namespace`). Two creations racing
    /// may both pass the count.
    pub async fn check_topic_quota(
        &self,
        ns: &NamespaceName,
        adding: u32,
    ) -> Result<(), BrokerError> {
        // From the store: a limit set through the admin API holds for the very next creation.
        let policies = self.resources().namespace(ns).await?;
        let max = match policies.max_topics_per_namespace {
            Some(n) => u32::try_from(n).unwrap_or(0),
            None => self.config().max_topics_per_namespace,
        };
        if max == 0 {
            return Ok(());
        }
        let mut count: u64 = 0;
        for domain in [
            kilonova_metadata::Domain::Persistent,
            kilonova_metadata::Domain::NonPersistent,
        ] {
            for (name, record) in self.resources().topics(ns, domain).await? {
                count += match (record.partitions, name.partition()) {
                    (0, Some(_)) => 0, // a partition: counted with its partitioned topic
                    (0, None) => 1,
                    (n, _) => u64::from(n),
                };
            }
        }
        if count + u64::from(adding) > u64::from(max) {
            return Err(BrokerError::Precondition(format!(
                "Exceed maximum number of topics in namespace {ns}: {count} of {max}"
            )));
        }
        Ok(())
    }

    /// Sends a command that reached a topic as it unloaded to a fresh load of it.
    pub(crate) async fn forward(&self, name: &TopicName, cmd: TopicCommand) {
        match self.topic(name).await {
            Ok(h) => {
                let _ = h.send(cmd).await;
            }
            Err(e) => {
                tracing::debug!(topic = %name, error = %e, "refusing a command for a topic that went away");
                topic::refuse(cmd, &e);
            }
        }
    }

    /// Called by an idle topic's task: removes it from the map and closes its log,
    /// unless a command is queued for it. Holding the map lock while closing keeps a
    /// new load of the topic from opening the log before this one is closed.
    /// Returns whether it unloaded (then `log` was taken and closed).
    pub(crate) fn unload_topic(
        &self,
        name: &str,
        rx: &mpsc::Receiver<TopicCommand>,
        log: &mut Option<ManagedLog>,
    ) -> bool {
        let mut topics = self.topics();
        if !rx.is_empty() || self.is_shutting_down() {
            return false;
        }
        if let Some(log) = log.take() {
            if let Err(e) = log.close() {
                tracing::warn!(topic = name, error = %e, "closing an idle topic's log failed");
            }
        }
        topics.live.remove(name);
        true
    }

    /// Takes a topic out of the map for an admin unload or delete: loads of it
    /// wait until the returned guard drops (after the log is closed or deleted).
    pub(crate) fn begin_closing(&self, name: &str) -> Closing {
        let (done, waiting) = watch::channel(());
        let mut topics = self.topics();
        topics.live.remove(name);
        topics.closing.insert(name.to_owned(), waiting);
        Closing {
            broker: self.clone(),
            name: name.to_owned(),
            _done: done,
            deleted: false,
        }
    }

    /// Marks an inactive-deletion pass over `base` as running (`None`: one is).
    pub(crate) fn begin_partitioned_deletion(&self, base: &TopicName) -> Option<DeletionPass> {
        let key = base.to_string();
        let mut running = self
            .inner
            .partitioned_deletions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        running.insert(key.clone()).then(|| DeletionPass {
            broker: self.clone(),
            key,
        })
    }

    /// Removes a topic that failed to load (its receiver is closed already).
    pub(crate) fn forget_topic(&self, name: &str) {
        let mut topics = self.topics();
        if topics.live.get(name).is_some_and(|h| h.is_closed()) {
            topics.live.remove(name);
        }
    }
}
