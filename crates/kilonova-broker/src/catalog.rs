//! The broker's inventory: tenants, namespaces, topics with their internal ids,
//! partition counts and schemas.
//!
//! Today one document kept in the [`StateStore`] (durable, atomic replace on every
//! change). That is fine for standalone and thousands of topics; the metadata-store
//! issue (#13) moves this behind the `MetadataStore` trait with per-key records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use kilonova_storage::StateStore;

use crate::error::BrokerError;
use crate::topic_name::{TopicName, DEFAULT_NAMESPACE, DEFAULT_TENANT};

const CATALOG_KEY: &str = "catalog/v1";

/// A topic's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicRecord {
    /// Internal id: storage keys on it, never on the name.
    pub id: u64,
    /// 0 for a non-partitioned topic.
    #[serde(default)]
    pub partitions: u32,
}

/// One version of a topic's schema.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SchemaRecord {
    pub name: String,
    /// `Schema.Type` of the protocol.
    pub kind: i32,
    pub data: Vec<u8>,
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Document {
    next_id: u64,
    tenants: BTreeSet<String>,
    namespaces: BTreeSet<String>,
    topics: BTreeMap<String, TopicRecord>,
    /// Per partitioned-topic base name: versions, oldest first (version = index).
    schemas: BTreeMap<String, Vec<SchemaRecord>>,
}

/// The inventory. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    state: Arc<dyn StateStore>,
    doc: Arc<Mutex<Document>>,
}

/// What creating a schema version answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaOutcome {
    /// The schema is (now) stored as this version.
    Version(u64),
    /// The schema's type differs from the topic's: refused.
    Incompatible,
}

impl Catalog {
    /// Loads the inventory, creating `public` and `public/default` on first start.
    pub fn open(state: Arc<dyn StateStore>) -> Result<Self, BrokerError> {
        let doc = match state.load(CATALOG_KEY)? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| BrokerError::Metadata(format!("catalog is unreadable: {e}")))?,
            None => Document {
                next_id: 1,
                ..Document::default()
            },
        };
        let catalog = Catalog {
            state,
            doc: Arc::new(Mutex::new(doc)),
        };
        catalog.update(|d| {
            let fresh = d.tenants.insert(DEFAULT_TENANT.to_string());
            let ns = d
                .namespaces
                .insert(format!("{DEFAULT_TENANT}/{DEFAULT_NAMESPACE}"));
            Ok((fresh || ns, ()))
        })?;
        Ok(catalog)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Document> {
        // A panic while holding the lock leaves a consistent document (every
        // change is applied to a copy first), so a poisoned lock is still usable.
        self.doc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to a copy of the document; if it reports a change, persists the
    /// copy and only then makes it current.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut Document) -> Result<(bool, T), BrokerError>,
    ) -> Result<T, BrokerError> {
        let mut doc = self.lock();
        let mut copy = Document {
            next_id: doc.next_id,
            tenants: doc.tenants.clone(),
            namespaces: doc.namespaces.clone(),
            topics: doc.topics.clone(),
            schemas: doc.schemas.clone(),
        };
        let (changed, out) = f(&mut copy)?;
        if changed {
            let bytes = serde_json::to_vec(&copy)
                .map_err(|e| BrokerError::Metadata(format!("encoding the catalog: {e}")))?;
            self.state.store(CATALOG_KEY, &bytes)?;
            *doc = copy;
        }
        Ok(out)
    }

    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.lock().namespaces.contains(namespace)
    }

    pub fn topic(&self, name: &TopicName) -> Option<TopicRecord> {
        self.lock().topics.get(&name.to_string()).cloned()
    }

    /// The topic's record, created (non-partitioned, with a new id) if it does not exist
    /// and `create` allows. Errors if the namespace does not exist.
    pub fn get_or_create_topic(
        &self,
        name: &TopicName,
        create: bool,
    ) -> Result<TopicRecord, BrokerError> {
        let key = name.to_string();
        let ns = name.namespace_name();
        self.update(|d| {
            if !d.namespaces.contains(&ns) {
                return Err(BrokerError::NamespaceNotFound(ns));
            }
            if let Some(t) = d.topics.get(&key) {
                return Ok((false, t.clone()));
            }
            if !create {
                return Err(BrokerError::TopicNotFound(key.clone()));
            }
            let record = TopicRecord {
                id: d.next_id,
                partitions: 0,
            };
            d.next_id += 1;
            d.topics.insert(key.clone(), record.clone());
            Ok((true, record))
        })
    }

    /// Creates partitioned topic `name` with `partitions` partitions (`create`), or
    /// changes an existing one's count (it may only grow, as in Pulsar).
    pub fn set_partitions(
        &self,
        name: &TopicName,
        partitions: u32,
        create: bool,
    ) -> Result<(), BrokerError> {
        let key = name.to_string();
        let ns = name.namespace_name();
        self.update(|d| {
            if !d.namespaces.contains(&ns) {
                return Err(BrokerError::NamespaceNotFound(ns));
            }
            match d.topics.get_mut(&key) {
                Some(_) if create => {
                    return Err(BrokerError::Conflict(format!("{key} already exists")))
                }
                Some(t) if t.partitions == 0 => {
                    return Err(BrokerError::Conflict(format!(
                        "{key} exists as a non-partitioned topic"
                    )))
                }
                Some(t) if partitions < t.partitions => {
                    return Err(BrokerError::BadRequest(format!(
                        "partitions can only grow: {key} has {}",
                        t.partitions
                    )))
                }
                Some(t) => t.partitions = partitions,
                None if !create => return Err(BrokerError::TopicNotFound(key.clone())),
                None => {
                    let id = d.next_id;
                    d.next_id += 1;
                    d.topics.insert(key.clone(), TopicRecord { id, partitions });
                }
            }
            Ok((true, ()))
        })
    }

    /// Topics of a namespace (partitioned topics as their partitions' names), of one domain or all.
    pub fn topics_of_namespace(
        &self,
        namespace: &str,
        domain: Option<crate::Domain>,
    ) -> Result<Vec<String>, BrokerError> {
        let doc = self.lock();
        if !doc.namespaces.contains(namespace) {
            return Err(BrokerError::NamespaceNotFound(namespace.to_string()));
        }
        let mut out = BTreeSet::new();
        for (name, record) in &doc.topics {
            let Ok(t) = TopicName::parse(name) else {
                continue;
            };
            if t.namespace_name() != namespace || domain.is_some_and(|d| d != t.domain) {
                continue;
            }
            if record.partitions > 0 {
                out.extend((0..record.partitions).map(|i| t.partition_name(i).to_string()));
            } else {
                out.insert(name.clone());
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The schema of `topic` at `version` (the latest if `None`).
    pub fn schema(&self, topic: &TopicName, version: Option<u64>) -> Option<(u64, SchemaRecord)> {
        let doc = self.lock();
        let versions = doc.schemas.get(&topic.partitioned_topic().to_string())?;
        let v = match version {
            Some(v) => v,
            None => versions.len().checked_sub(1)? as u64,
        };
        let s = versions.get(usize::try_from(v).ok()?)?;
        Some((v, s.clone()))
    }

    /// Finds `schema` among the topic's versions or adds it as the next version.
    /// A schema of another type than the latest version's is incompatible.
    pub fn get_or_create_schema(
        &self,
        topic: &TopicName,
        schema: SchemaRecord,
    ) -> Result<SchemaOutcome, BrokerError> {
        let key = topic.partitioned_topic().to_string();
        self.update(|d| {
            let versions = d.schemas.entry(key).or_default();
            if let Some(v) = versions
                .iter()
                .position(|s| s.kind == schema.kind && s.data == schema.data)
            {
                return Ok((false, SchemaOutcome::Version(v as u64)));
            }
            if versions.last().is_some_and(|s| s.kind != schema.kind) {
                return Ok((false, SchemaOutcome::Incompatible));
            }
            versions.push(schema);
            Ok((true, SchemaOutcome::Version(versions.len() as u64 - 1)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilonova_storage::DirStateStore;

    fn open(dir: &std::path::Path) -> Catalog {
        Catalog::open(Arc::new(DirStateStore::open(dir).unwrap())).unwrap()
    }

    #[test]
    fn topics_get_ids_that_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path());
        let a = TopicName::parse("a").unwrap();
        let b = TopicName::parse("b").unwrap();
        let ra = c.get_or_create_topic(&a, true).unwrap();
        let rb = c.get_or_create_topic(&b, true).unwrap();
        assert_ne!(ra.id, rb.id);
        let p = TopicName::parse("p").unwrap();
        c.set_partitions(&p, 2, true).unwrap();
        assert!(matches!(
            c.set_partitions(&p, 2, true),
            Err(BrokerError::Conflict(_))
        ));
        c.set_partitions(&p, 3, false).unwrap();
        assert!(c.set_partitions(&p, 1, false).is_err());
        drop(c);
        let c = open(dir.path());
        assert_eq!(c.get_or_create_topic(&a, false).unwrap(), ra);
        assert_eq!(
            c.topics_of_namespace("public/default", None).unwrap(),
            vec![
                "persistent://public/default/a",
                "persistent://public/default/b",
                "persistent://public/default/p-partition-0",
                "persistent://public/default/p-partition-1",
                "persistent://public/default/p-partition-2",
            ]
        );
    }

    #[test]
    fn unknown_namespace_and_disabled_creation_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path());
        let t = TopicName::parse("persistent://nosuch/ns/t").unwrap();
        assert!(matches!(
            c.get_or_create_topic(&t, true),
            Err(BrokerError::NamespaceNotFound(_))
        ));
        let t = TopicName::parse("x").unwrap();
        assert!(matches!(
            c.get_or_create_topic(&t, false),
            Err(BrokerError::TopicNotFound(_))
        ));
    }

    #[test]
    fn schemas_are_versioned_per_partitioned_topic() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path());
        let p0 = TopicName::parse("s-partition-0").unwrap();
        let p1 = TopicName::parse("s-partition-1").unwrap();
        let s = |kind, data: &[u8]| SchemaRecord {
            name: "s".into(),
            kind,
            data: data.to_vec(),
            properties: vec![],
        };
        assert_eq!(
            c.get_or_create_schema(&p0, s(2, b"v1")).unwrap(),
            SchemaOutcome::Version(0)
        );
        assert_eq!(
            c.get_or_create_schema(&p1, s(2, b"v1")).unwrap(),
            SchemaOutcome::Version(0)
        );
        assert_eq!(
            c.get_or_create_schema(&p1, s(2, b"v2")).unwrap(),
            SchemaOutcome::Version(1)
        );
        assert_eq!(
            c.get_or_create_schema(&p1, s(1, b"str")).unwrap(),
            SchemaOutcome::Incompatible
        );
        assert_eq!(c.schema(&p0, None).unwrap().0, 1);
        assert_eq!(c.schema(&p0, Some(0)).unwrap().1.data, b"v1");
    }
}
