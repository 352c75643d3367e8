//! Kafka consumer groups' committed offsets, by namespace: what the Kafka
//! edge's OffsetCommit stores and OffsetFetch reads back. One key per
//! group (`/kafka-groups/<tenant>/<namespace>/<group, hex>`), a JSON map
//! topic → partition → offset; the group id is hex-encoded because Kafka
//! allows any characters in it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::NamespaceName;
use crate::resources::{from_json, to_json, Resources};
use crate::store::Expect;
use crate::{MetadataError, Result};

/// One partition's committed offset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// The next offset the group reads.
    pub offset: i64,
    /// What the client attached to the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// When it was committed (ms since the epoch).
    #[serde(default)]
    pub committed_ms: u64,
}

/// A group's committed offsets: Kafka topic → partition → offset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaGroupOffsets {
    pub topics: BTreeMap<String, BTreeMap<i32, CommittedOffset>>,
}

fn groups_prefix(ns: &NamespaceName) -> String {
    format!("/kafka-groups/{}/{}", ns.tenant, ns.namespace)
}

fn group_key(ns: &NamespaceName, group: &str) -> String {
    // An empty group id would make an empty key component.
    let hex: String = group.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{}/g{hex}", groups_prefix(ns))
}

fn group_of_key(component: &str) -> Option<String> {
    let hex = component.strip_prefix('g')?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Resources {
    /// Group `group`'s committed offsets (none committed: empty).
    pub async fn kafka_group_offsets(
        &self,
        ns: &NamespaceName,
        group: &str,
    ) -> Result<KafkaGroupOffsets> {
        let what = format!("Kafka group {group:?}");
        match self.store().get(&group_key(ns, group)).await? {
            Some(s) => from_json(&what, &s.value),
            None => Ok(KafkaGroupOffsets::default()),
        }
    }

    /// Stores `commits` ((topic, partition, offset)) for group `group`,
    /// beside what it committed before, durably; retried on concurrent
    /// commits of the same group.
    pub async fn commit_kafka_offsets(
        &self,
        ns: &NamespaceName,
        group: &str,
        commits: &[(String, i32, CommittedOffset)],
    ) -> Result<()> {
        let what = format!("Kafka group {group:?}");
        let key = group_key(ns, group);
        loop {
            let (mut offsets, expect) = match self.store().get(&key).await? {
                Some(s) => (
                    from_json::<KafkaGroupOffsets>(&what, &s.value)?,
                    Expect::Version(s.version),
                ),
                None => (KafkaGroupOffsets::default(), Expect::Absent),
            };
            for (topic, partition, c) in commits {
                offsets
                    .topics
                    .entry(topic.clone())
                    .or_default()
                    .insert(*partition, c.clone());
            }
            match self
                .store()
                .put(&key, to_json(&what, &offsets)?, expect, None)
                .await
            {
                Ok(_) => return Ok(()),
                Err(MetadataError::BadVersion { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The groups with committed offsets in a namespace.
    pub async fn kafka_groups(&self, ns: &NamespaceName) -> Result<Vec<String>> {
        Ok(self
            .list(&groups_prefix(ns))
            .await?
            .iter()
            .filter_map(|c| group_of_key(c))
            .collect())
    }

    /// Forgets a group's committed offsets; whether it had any.
    pub async fn delete_kafka_group(&self, ns: &NamespaceName, group: &str) -> Result<bool> {
        self.store()
            .delete(&group_key(ns, group), Expect::Any)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use std::sync::Arc;

    #[tokio::test]
    async fn commits_merge_survive_a_reopen_and_any_group_id_is_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let ns = NamespaceName::parse("public/default").unwrap();
        let c = |offset| CommittedOffset {
            offset,
            metadata: None,
            committed_ms: 1,
        };
        let group = "team/a b\u{e9}";
        {
            let r = Resources::new(Arc::new(EmbeddedStore::open(&path).unwrap()));
            r.commit_kafka_offsets(&ns, group, &[("t".into(), 0, c(5)), ("t".into(), 1, c(7))])
                .await
                .unwrap();
            r.commit_kafka_offsets(&ns, group, &[("t".into(), 0, c(9))])
                .await
                .unwrap();
            r.commit_kafka_offsets(&ns, "", &[("u".into(), 0, c(1))])
                .await
                .unwrap();
        }
        let r = Resources::new(Arc::new(EmbeddedStore::open(&path).unwrap()));
        let got = r.kafka_group_offsets(&ns, group).await.unwrap();
        assert_eq!(got.topics["t"][&0].offset, 9);
        assert_eq!(got.topics["t"][&1].offset, 7);
        let mut groups = r.kafka_groups(&ns).await.unwrap();
        groups.sort();
        assert_eq!(groups, vec!["".to_string(), group.to_string()]);
        assert!(r.delete_kafka_group(&ns, group).await.unwrap());
        assert!(r
            .kafka_group_offsets(&ns, group)
            .await
            .unwrap()
            .topics
            .is_empty());
    }
}
