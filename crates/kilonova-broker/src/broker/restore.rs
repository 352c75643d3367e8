//! Restoring a topic from the object store alone (`topics restore`): after
//! the broker's data directory is lost, a topic's offloaded history is
//! read again from its manifest (`tiering/manifest.rs`) and the objects it
//! lists. What was never offloaded (the local tail) and subscriptions are
//! not in the object store and do not come back.

use serde::Serialize;

use kilonova_metadata::names::TopicName;
use kilonova_metadata::{MetadataError, TopicRecord};
use kilonova_storage::{ManagedLog, Offloaded, RestoredSegment};

use super::Broker;
use crate::error::BrokerError;
use crate::tiering::{Tiering, TopicManifest};

/// What `topics restore` did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub topic: String,
    /// Partitions of the restored partitioned topic (0: not partitioned).
    pub partitions: u32,
    /// Each topic restored: the topic itself, or the partitions that had a manifest.
    pub restored: Vec<RestoredTopic>,
}

/// One topic restored.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoredTopic {
    pub topic: String,
    pub segments: u64,
    pub entries: u64,
    pub bytes: u64,
    /// When its manifest was written (ms): what it held then is what is back.
    pub exported_at_ms: u64,
    /// Its first message id now (`ledgerId:entryId`; message ids change).
    pub first_message_id: String,
}

impl Broker {
    /// Re-creates `name` (a topic, or a partitioned topic and its
    /// partitions) from the manifests and objects in the object store.
    /// The namespace must exist and the topic must not.
    pub async fn restore_topic(&self, name: &TopicName) -> Result<RestoreReport, BrokerError> {
        let Some(tiering) = self.tiering() else {
            return Err(BrokerError::NotAllowed(
                "no object store is configured ([offload.store]): there is nothing to restore from"
                    .into(),
            ));
        };
        if !name.is_persistent() {
            return Err(BrokerError::NotAllowed(
                "only persistent topics are offloaded, and restored".into(),
            ));
        }
        let resources = self.resources();
        if !resources.namespace_exists(&name.namespace()).await? {
            return Err(BrokerError::NamespaceNotFound(name.namespace_name()));
        }
        if resources.topic(name).await?.is_some() {
            return Err(BrokerError::Conflict(format!(
                "{name} exists: only a topic that does not exist is restored (delete it first)"
            )));
        }
        // The store being down is worth a retry; a manifest that cannot be
        // read (refused, corrupt) is not.
        let manifest_error = |e: kilonova_objstore::ObjectStoreError| {
            let why = format!("reading {name}'s manifest: {e}");
            if e.is_retryable() {
                BrokerError::Unavailable(why)
            } else {
                BrokerError::Precondition(why)
            }
        };
        if let Some(manifest) = tiering.read_manifest(name).await.map_err(manifest_error)? {
            verify_objects(&tiering, name, &manifest).await?;
            let restored = self.restore_one(name, manifest).await?;
            return Ok(RestoreReport {
                topic: name.to_string(),
                partitions: 0,
                restored: vec![restored],
            });
        }
        let found = match name.partition() {
            None => tiering
                .partition_manifests(name)
                .await
                .map_err(manifest_error)?,
            Some(_) => Vec::new(),
        };
        if found.is_empty() {
            return Err(BrokerError::NotFound(format!(
                "no manifest of {name} (or of its partitions) in the object store {}",
                tiering.bucket().describe()
            )));
        }
        // Every partition's manifest and objects first: nothing is created
        // unless all of them are there.
        let mut manifests = Vec::with_capacity(found.len());
        for i in found {
            let partition = name.partition_name(i);
            if let Some(m) = tiering
                .read_manifest(&partition)
                .await
                .map_err(manifest_error)?
            {
                verify_objects(&tiering, &partition, &m).await?;
                manifests.push((partition, m));
            }
        }
        let highest = manifests
            .iter()
            .filter_map(|(p, _)| p.partition())
            .max()
            .map_or(0, |i| i + 1);
        let partitions = manifests
            .iter()
            .map(|(_, m)| m.partitioned_topic_partitions)
            .max()
            .unwrap_or(0)
            .max(highest);
        self.check_partition_count(partitions)?;
        match resources.create_topic(name, partitions).await {
            Ok(_) => {}
            Err(MetadataError::AlreadyExists(_)) => {
                return Err(BrokerError::Conflict(format!(
                    "{name} was created meanwhile"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        let mut restored = Vec::with_capacity(manifests.len());
        for (partition, manifest) in manifests {
            restored.push(self.restore_one(&partition, manifest).await?);
        }
        Ok(RestoreReport {
            topic: name.to_string(),
            partitions,
            restored,
        })
    }

    /// Restores one (non-partitioned) topic from its manifest, whose
    /// objects were checked: creates the topic's record and a log of those
    /// segments. Loads of the topic wait meanwhile.
    async fn restore_one(
        &self,
        name: &TopicName,
        manifest: TopicManifest,
    ) -> Result<RestoredTopic, BrokerError> {
        let resources = self.resources();
        let closing = self.begin_closing(&name.to_string());
        let record = match resources.create_topic(name, 0).await {
            Ok(r) => r,
            Err(MetadataError::AlreadyExists(_)) => {
                return Err(BrokerError::Conflict(format!(
                    "{name} was created meanwhile"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let segments: Vec<RestoredSegment> = manifest
            .segments
            .iter()
            .map(|s| RestoredSegment {
                first_message_index: s.first_message_index,
                created_ms: s.created_ms,
                offloaded: Offloaded {
                    object: s.object.clone(),
                    entries: s.entries,
                    bytes: s.bytes,
                    last_publish_ms: s.last_publish_ms,
                    end_message_index: s.end_message_index,
                    offloaded_at_ms: self.clock().now_ms(),
                    shared_at: None,
                },
            })
            .collect();
        let written = self
            .write_restored(name, &record, &manifest, segments)
            .await;
        let ids = match written {
            Ok(ids) => ids,
            Err(e) => {
                if let Err(undo) = resources.delete_topic(name).await {
                    tracing::warn!(topic = %name, error = %undo, "removing the record of a topic whose restore failed");
                }
                return Err(e);
            }
        };
        drop(closing);
        if let Some(tiering) = self.tiering() {
            tiering.count_restore();
        }
        let report = RestoredTopic {
            topic: name.to_string(),
            segments: ids.len() as u64,
            entries: manifest.segments.iter().map(|s| s.entries).sum(),
            bytes: manifest.segments.iter().map(|s| s.bytes).sum(),
            exported_at_ms: manifest.exported_at_ms,
            first_message_id: ids.first().map(|s| format!("{s}:0")).unwrap_or_default(),
        };
        tracing::info!(topic = %name, segments = report.segments, entries = report.entries, exported_at_ms = report.exported_at_ms, "topic restored from the object store");
        Ok(report)
    }

    /// The restored topic's policies, schema and log.
    async fn write_restored(
        &self,
        name: &TopicName,
        record: &TopicRecord,
        manifest: &TopicManifest,
        segments: Vec<RestoredSegment>,
    ) -> Result<Vec<u64>, BrokerError> {
        let resources = self.resources();
        if !manifest.policies.is_empty() {
            let with_policies = TopicRecord {
                policies: manifest.policies.clone(),
                ..record.clone()
            };
            resources.put_topic(name, &with_policies).await?;
        }
        // A partitioned topic's partitions share one schema: stored once.
        if !manifest.schemas.is_empty() && resources.schema_history(name).await?.is_empty() {
            resources.put_schemas(name, &manifest.schemas).await?;
        }
        Ok(ManagedLog::restore(
            record.id,
            &self.inner.store,
            self.inner.state.as_ref(),
            segments,
        )
        .await?)
    }
}

/// Checks that every object `manifest` lists is there and whole (its footer
/// and index read and matching the manifest).
async fn verify_objects(
    tiering: &Tiering,
    name: &TopicName,
    manifest: &TopicManifest,
) -> Result<(), BrokerError> {
    for s in &manifest.segments {
        tiering
            .verify(&s.object, s.entries, s.bytes)
            .await
            .map_err(|e| {
                BrokerError::Precondition(format!(
                    "cannot restore {name}: its manifest lists segment {} in an object that is not whole: {e}",
                    s.segment_id
                ))
            })?;
    }
    Ok(())
}
