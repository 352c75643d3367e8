//! Inactive-topic deletion of a partitioned topic: broker-wide work, since it
//! spans partitions that are loaded (or not) independently. A partition whose
//! inactivity rule says "delete" asks the broker to run this pass.

use std::time::Duration;

use kilonova_metadata::names::TopicName;

use super::Broker;

impl Broker {
    /// Deletes the partitions of a partitioned topic whose partitions are all
    /// inactive: each partition deletes itself if it is (a partition that was
    /// not loaded had been idle long enough to unload). The partitioned
    /// topic's record stays, unless `delete_inactive_partitioned_topic_metadata`
    /// is on: then it goes once every partition is gone. A partition in use
    /// stops it (the partitions already deleted held nothing worth keeping,
    /// and come back empty on use).
    pub(crate) async fn delete_inactive_partitioned(
        &self,
        base: &TopicName,
        max_inactive: Duration,
    ) {
        let Some(_pass) = self.begin_partitioned_deletion(base) else {
            return; // another partition started this pass
        };
        let partitions = match self.resources().topic(base).await {
            Ok(Some(r)) if r.partitions > 0 && !r.is_oversized() => r.partitions,
            _ => return,
        };
        // A partition that was not loaded had been idle long enough to unload.
        let min_inactive: Vec<Duration> = (0..partitions)
            .map(|i| {
                if self.is_loaded(&base.partition_name(i)) {
                    max_inactive
                } else {
                    Duration::ZERO
                }
            })
            .collect();
        // Every partition must agree before any is deleted (a caught-up
        // subscription on one partition must not go while another partition
        // still has a backlog for it).
        for (i, min) in (0..partitions).zip(&min_inactive) {
            let request = crate::topic::AdminRequest::InactiveCheck { min_inactive: *min };
            if let Err(e) = self.topic_admin(&base.partition_name(i), request).await {
                tracing::debug!(topic = %base, partition = i, error = %e, "partitioned topic kept: a partition is in use");
                return;
            }
        }
        for (i, min) in (0..partitions).zip(&min_inactive) {
            let request = crate::topic::AdminRequest::DeleteIfInactive { min_inactive: *min };
            if let Err(e) = self.topic_admin(&base.partition_name(i), request).await {
                // A client came back between the check and the deletion.
                tracing::info!(topic = %base, partition = i, error = %e, "partitioned topic kept: a partition came back into use during its deletion");
                return;
            }
        }
        if !self.config().delete_inactive_partitioned_topic_metadata {
            // As Pulsar by default: the partitioned topic stays, so a
            // producer coming back gets its partitions (empty), not a
            // non-partitioned topic of the same name.
            tracing::info!(topic = %base, partitions, "deleted the partitions of an inactive partitioned topic; its metadata is kept");
            self.metrics().count_inactive_deletion(true);
            return;
        }
        match self.resources().delete_topic(base).await {
            Ok(()) => {
                tracing::info!(topic = %base, partitions, "deleted inactive partitioned topic");
                self.metrics().count_inactive_deletion(true);
            }
            Err(e) => {
                tracing::warn!(topic = %base, error = %e, "deleting an inactive partitioned topic failed")
            }
        }
    }
}
