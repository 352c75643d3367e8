//! Admin requests for a topic, routed to its task (loading it if it exists,
//! never creating it), and partitioned-topic stats summed over partitions
//! (from the stored summary for partitions that are not loaded).

use tokio::sync::oneshot;

use kilonova_metadata::names::TopicName;
use kilonova_storage::{ManagedLog, StorageError};

use super::Broker;
use crate::error::BrokerError;
use crate::topic::{self, AdminReply, AdminRequest, TopicCommand};

impl Broker {
    async fn is_partition_of_existing(&self, name: &TopicName) -> Result<bool, BrokerError> {
        let Some(i) = name.partition() else {
            return Ok(false);
        };
        Ok(self
            .resources()
            .topic(&name.partitioned_topic())
            .await?
            .is_some_and(|t| i < t.partitions))
    }

    /// Sends an admin request to a topic that exists (loading it if needed;
    /// never creating it). `Unload` of a topic not loaded does nothing.
    pub async fn topic_admin(
        &self,
        name: &TopicName,
        request: AdminRequest,
    ) -> Result<AdminReply, BrokerError> {
        match self.resources().topic(name).await? {
            // A partition not used yet exists if its partitioned topic does.
            None if self.is_partition_of_existing(name).await? => {}
            None => return Err(BrokerError::TopicNotFound(name.to_string())),
            Some(t) if t.partitions > 0 => {
                return Err(BrokerError::BadRequest(format!(
                    "{name} is a partitioned topic: ask its partitions"
                )))
            }
            Some(_) => {}
        }
        if matches!(request, AdminRequest::Unload) && !self.is_loaded(name) {
            // In a cluster, the owner has it loaded (a redirect there).
            self.served_elsewhere(name).await?;
            return Ok(AdminReply::Done);
        }
        let handle = self.topic(name).await?;
        let (reply, answer) = oneshot::channel();
        handle
            .send(TopicCommand::Admin { request, reply })
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        answer.await.map_err(|_| BrokerError::ShuttingDown)?
    }

    /// Partitioned topic `base`'s partitions that were ever used (have a
    /// record; the others hold nothing), found by paging the store, so an
    /// oversized record (more partitions than the cap, from before it) is
    /// covered too.
    pub async fn used_partitions(
        &self,
        base: &TopicName,
        partitions: u32,
    ) -> Result<Vec<TopicName>, BrokerError> {
        Ok(self
            .resources()
            .partition_records(base, partitions)
            .await?
            .into_iter()
            .map(|(i, _)| base.partition_name(i))
            .collect())
    }

    /// Whether `topic` is loaded here with producers or consumers attached.
    pub fn has_clients(&self, topic: &TopicName) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics()
            .get(&topic.to_string())
            .is_some_and(|m| m.producers.load(Relaxed) + m.consumers.load(Relaxed) > 0)
    }

    /// Deletes `name` — data and record; every partition of a partitioned
    /// topic — when this broker serves all of it (the admin API forwards a
    /// cluster's other owners their parts). Without `force`, a topic with
    /// producers or consumers is refused.
    pub async fn delete_topic_here(
        &self,
        name: &TopicName,
        force: bool,
    ) -> Result<(), BrokerError> {
        let record = self
            .resources()
            .topic(name)
            .await?
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))?;
        if record.partitions == 0 {
            self.topic_admin(name, AdminRequest::Delete { force })
                .await?;
            return Ok(());
        }
        let partitions = self.used_partitions(name, record.partitions).await?;
        if !force {
            if let Some(p) = partitions.iter().find(|p| self.has_clients(p)) {
                return Err(BrokerError::Precondition(format!(
                    "partition {p} has connected producers or consumers (use force)"
                )));
            }
        }
        for p in &partitions {
            if self.resources().topic(p).await?.is_some() {
                self.topic_admin(p, AdminRequest::Delete { force: true })
                    .await?;
            }
        }
        self.resources().delete_topic(name).await?;
        Ok(())
    }

    /// The stats of each of partitioned topic `base`'s first `partitions`
    /// partitions, by index, loading none of them: a loaded partition answers
    /// from its task; one that is not, from its log's stored state
    /// ([`crate::topic_admin::TopicStats`] of an idle topic: storage size and
    /// durable subscriptions' backlogs as last persisted); one never used (no
    /// record), zeros. `partitions` must be a served count ([`super::check_servable`]).
    pub async fn partition_stats(
        &self,
        base: &TopicName,
        partitions: u32,
    ) -> Result<Vec<topic::admin::TopicStats>, BrokerError> {
        if partitions > kilonova_metadata::MAX_PARTITIONS {
            return Err(BrokerError::Precondition(format!(
                "{base} has {partitions} partitions, more than the {} a broker serves",
                kilonova_metadata::MAX_PARTITIONS
            )));
        }
        let stored = self.resources().partition_records(base, partitions).await?;
        let mut out: Vec<topic::admin::TopicStats> = std::iter::repeat_with(Default::default)
            .take(partitions as usize)
            .collect();
        let mut unloaded = Vec::new();
        for (i, record) in stored {
            let name = base.partition_name(i);
            match self.loaded_stats(&name).await {
                Some(stats) => {
                    if let Some(slot) = out.get_mut(i as usize) {
                        *slot = stats?;
                    }
                }
                None if name.is_persistent() => unloaded.push((i, record.id)),
                None => {}
            }
        }
        if unloaded.is_empty() {
            return Ok(out);
        }
        // One blocking task reads every unloaded partition's state files.
        let (store, state, cache) = (
            self.inner.store.clone(),
            self.inner.state.clone(),
            self.inner.cache.clone(),
        );
        let summaries = tokio::task::spawn_blocking(move || {
            unloaded
                .into_iter()
                .map(|(i, id)| {
                    let s =
                        ManagedLog::stored_summary(id, store.clone(), state.clone(), cache.clone());
                    (i, s)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| StorageError::Log(format!("reading stored stats failed: {e}")))?;
        for (i, summary) in summaries {
            if let Some(slot) = out.get_mut(i as usize) {
                *slot = topic::admin::stored_stats(&summary?);
            }
        }
        Ok(out)
    }

    /// A loaded topic's stats from its task; `None` if it is not loaded (or
    /// unloads meanwhile). Never loads it.
    async fn loaded_stats(
        &self,
        name: &TopicName,
    ) -> Option<Result<topic::admin::TopicStats, BrokerError>> {
        let handle = self
            .topics()
            .live
            .get(&name.to_string())
            .filter(|h| !h.is_closed())
            .cloned()?;
        let (reply, answer) = oneshot::channel();
        let request = AdminRequest::Stats;
        handle
            .send(TopicCommand::Admin { request, reply })
            .await
            .ok()?;
        match answer.await.ok()? {
            Ok(AdminReply::Stats(s)) => Some(Ok(*s)),
            // A topic answers Stats with stats; anything else reads as not loaded.
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    }
}
