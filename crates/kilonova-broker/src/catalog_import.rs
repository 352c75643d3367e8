//! Moves the inventory of earlier versions (kept in the storage layer's
//! `StateStore`: a `catalog/v1` document, or `catalog/v2` with one record per
//! topic) into the metadata store, once, at start-up. Ids are kept: storage
//! keys on them. The old keys are removed after everything is written, so an
//! import interrupted by a crash is simply done again.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use kilonova_metadata::{NamespaceName, Resources, SchemaRecord, TopicName, TopicRecord};
use kilonova_storage::StateStore;

use crate::error::BrokerError;

const V1_KEY: &str = "catalog/v1";
const V2_META_KEY: &str = "catalog/v2/meta";
const V2_TOPICS_PREFIX: &str = "catalog/v2/topics";

#[derive(Deserialize)]
struct OldTopic {
    id: u64,
    #[serde(default)]
    partitions: u32,
}

#[derive(Deserialize)]
struct V1 {
    next_id: u64,
    tenants: BTreeSet<String>,
    namespaces: BTreeSet<String>,
    topics: BTreeMap<String, OldTopic>,
    schemas: BTreeMap<String, Vec<SchemaRecord>>,
}

#[derive(Deserialize)]
struct V2Meta {
    id_limit: u64,
    tenants: BTreeSet<String>,
    namespaces: BTreeSet<String>,
    schemas: BTreeMap<String, Vec<SchemaRecord>>,
}

#[derive(Deserialize)]
struct V2Topic {
    name: String,
    #[serde(flatten)]
    record: OldTopic,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, BrokerError> {
    serde_json::from_slice(bytes)
        .map_err(|e| BrokerError::Metadata(format!("the old {what} is unreadable: {e}")))
}

/// Imports an old inventory if there is one; returns the number of topics moved.
pub async fn import_old_catalog(
    state: &dyn StateStore,
    resources: &Resources,
    cluster: &str,
) -> Result<usize, BrokerError> {
    let mut old_keys = Vec::new();
    let (next_id, tenants, namespaces, topics, schemas) =
        if let Some(b) = state.load(V2_META_KEY)? {
            let meta: V2Meta = decode("catalog", &b)?;
            let mut topics = BTreeMap::new();
            for key in state.children(V2_TOPICS_PREFIX)? {
                let key = format!("{V2_TOPICS_PREFIX}/{key}");
                if let Some(b) = state.load(&key)? {
                    let t: V2Topic = decode("topic record", &b)?;
                    topics.insert(t.name, t.record);
                }
                old_keys.push(key);
            }
            old_keys.push(V2_META_KEY.to_owned());
            (
                meta.id_limit,
                meta.tenants,
                meta.namespaces,
                topics,
                meta.schemas,
            )
        } else if let Some(b) = state.load(V1_KEY)? {
            let doc: V1 = decode("catalog", &b)?;
            old_keys.push(V1_KEY.to_owned());
            (
                doc.next_id,
                doc.tenants,
                doc.namespaces,
                doc.topics,
                doc.schemas,
            )
        } else {
            return Ok(0);
        };
    let info = kilonova_metadata::policies::TenantInfo {
        admin_roles: BTreeSet::new(),
        allowed_clusters: [cluster.to_owned()].into(),
    };
    for t in &tenants {
        match resources.create_tenant(t, &info).await {
            Ok(()) | Err(kilonova_metadata::MetadataError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for ns in &namespaces {
        let ns = NamespaceName::parse(ns)?;
        match resources.create_namespace(&ns, Default::default()).await {
            Ok(()) | Err(kilonova_metadata::MetadataError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let max_id = topics.values().map(|t| t.id + 1).max().unwrap_or(1);
    resources
        .reserve_topic_ids_below(next_id.max(max_id))
        .await?;
    for (name, t) in &topics {
        let record = TopicRecord {
            id: t.id,
            partitions: t.partitions,
            policies: Default::default(),
        };
        resources
            .put_topic(&TopicName::parse(name)?, &record)
            .await?;
    }
    for (name, versions) in &schemas {
        resources
            .put_schemas(&TopicName::parse(name)?, versions)
            .await?;
    }
    for key in old_keys {
        state.remove(&key)?;
    }
    tracing::info!(
        topics = topics.len(),
        "moved the old catalog into the metadata store"
    );
    Ok(topics.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilonova_metadata::{EmbeddedStore, MetadataStore};
    use kilonova_storage::DirStateStore;
    use std::sync::Arc;

    async fn resources(dir: &std::path::Path) -> Resources {
        let store: Arc<dyn MetadataStore> =
            Arc::new(EmbeddedStore::open(&dir.join("metadata.redb")).unwrap());
        let r = Resources::new(store);
        r.bootstrap("standalone", &Default::default())
            .await
            .unwrap();
        r
    }

    #[tokio::test]
    async fn a_v1_document_is_imported_with_its_ids() {
        let dir = tempfile::tempdir().unwrap();
        let state = DirStateStore::open(dir.path().join("state")).unwrap();
        let v1 = br#"{"next_id":8,"tenants":["public","acme"],"namespaces":["public/default","acme/ns"],
            "topics":{"persistent://public/default/old":{"id":7,"partitions":0},
                      "persistent://acme/ns/p":{"id":3,"partitions":2}},
            "schemas":{"persistent://acme/ns/p":[{"name":"p","kind":2,"data":[1],"properties":[]}]}}"#;
        state.store(V1_KEY, v1).unwrap();
        let r = resources(dir.path()).await;
        assert_eq!(
            import_old_catalog(&state, &r, "standalone").await.unwrap(),
            2
        );
        let old = r.topic(&TopicName::parse("old").unwrap()).await.unwrap();
        assert_eq!(old.map(|t| t.id), Some(7));
        let p = TopicName::parse("persistent://acme/ns/p").unwrap();
        assert_eq!(r.topic(&p).await.unwrap().map(|t| t.partitions), Some(2));
        assert_eq!(r.schema(&p, None).await.unwrap().map(|s| s.0), Some(0));
        assert!(
            state.load(V1_KEY).unwrap().is_none(),
            "the old document is gone"
        );
        let fresh = r
            .get_or_create_topic(&TopicName::parse("new").unwrap(), true)
            .await
            .unwrap();
        assert!(
            fresh.id >= 8,
            "ids continue after the old ones: {}",
            fresh.id
        );
        assert_eq!(
            import_old_catalog(&state, &r, "standalone").await.unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn v2_records_are_imported() {
        let dir = tempfile::tempdir().unwrap();
        let state = DirStateStore::open(dir.path().join("state")).unwrap();
        state
            .store(
                V2_META_KEY,
                br#"{"id_limit":2048,"tenants":["public"],"namespaces":["public/default"],"schemas":{}}"#,
            )
            .unwrap();
        state
            .store(
                &format!("{V2_TOPICS_PREFIX}/5"),
                br#"{"name":"persistent://public/default/t","id":5,"partitions":0}"#,
            )
            .unwrap();
        let r = resources(dir.path()).await;
        assert_eq!(
            import_old_catalog(&state, &r, "standalone").await.unwrap(),
            1
        );
        let t = r
            .topic(&TopicName::parse("t").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(t.id, 5);
        assert!(state.children(V2_TOPICS_PREFIX).unwrap().is_empty());
        let fresh = r
            .get_or_create_topic(&TopicName::parse("u").unwrap(), true)
            .await
            .unwrap();
        assert!(
            fresh.id >= 2048,
            "ids continue after the old limit: {}",
            fresh.id
        );
    }
}
