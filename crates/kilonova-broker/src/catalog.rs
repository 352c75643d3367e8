//! The broker's inventory: tenants, namespaces, topics with their internal ids,
//! partition counts and schemas.
//!
//! Kept in the [`StateStore`]: one key per topic (`catalog/v2/topics/<id>`),
//! so creating a topic writes one small record, and one key for the rest
//! (`catalog/v2/meta`: tenants, namespaces, schemas and the id allocator's
//! limit). Topic ids are reserved in blocks, so creating a topic rarely
//! rewrites the meta record. This is the standalone form; the metadata-store
//! issue (#13) moves it behind the `MetadataStore` trait.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use kilonova_storage::StateStore;

use crate::error::BrokerError;
use crate::topic_name::{TopicName, DEFAULT_NAMESPACE, DEFAULT_TENANT};

/// The first layout: everything in one document (read once, then migrated).
const V1_KEY: &str = "catalog/v1";
const META_KEY: &str = "catalog/v2/meta";
const TOPICS_PREFIX: &str = "catalog/v2/topics";
/// Topic ids reserved per meta write.
const ID_BLOCK: u64 = 1024;

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

/// The stored topic record: the name travels with it (keys are hex).
#[derive(Serialize, Deserialize)]
struct StoredTopic {
    name: String,
    #[serde(flatten)]
    record: TopicRecord,
}

/// Everything but the topics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    /// Ids below this may have been handed out; the next block starts here.
    id_limit: u64,
    tenants: BTreeSet<String>,
    namespaces: BTreeSet<String>,
    /// Per partitioned-topic base name: versions, oldest first (version = index).
    schemas: BTreeMap<String, Vec<SchemaRecord>>,
}

/// The v1 document, for migration.
#[derive(Deserialize)]
struct DocumentV1 {
    next_id: u64,
    tenants: BTreeSet<String>,
    namespaces: BTreeSet<String>,
    topics: BTreeMap<String, TopicRecord>,
    schemas: BTreeMap<String, Vec<SchemaRecord>>,
}

struct Inventory {
    meta: Meta,
    next_id: u64,
    topics: BTreeMap<String, TopicRecord>,
}

/// The inventory. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    state: Arc<dyn StateStore>,
    inner: Arc<Mutex<Inventory>>,
}

/// What creating a schema version answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaOutcome {
    /// The schema is (now) stored as this version.
    Version(u64),
    /// The schema's type differs from the topic's: refused.
    Incompatible,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, BrokerError> {
    serde_json::from_slice(bytes)
        .map_err(|e| BrokerError::Metadata(format!("{what} is unreadable: {e}")))
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, BrokerError> {
    serde_json::to_vec(value).map_err(|e| BrokerError::Metadata(format!("encoding {what}: {e}")))
}

impl Catalog {
    /// Loads the inventory, creating `public` and `public/default` on first start.
    pub fn open(state: Arc<dyn StateStore>) -> Result<Self, BrokerError> {
        let (meta, topics) = match state.load(META_KEY)? {
            Some(b) => {
                let meta: Meta = decode("the catalog", &b)?;
                let mut topics = BTreeMap::new();
                for key in state.children(TOPICS_PREFIX)? {
                    if let Some(b) = state.load(&format!("{TOPICS_PREFIX}/{key}"))? {
                        let t: StoredTopic = decode("a topic record", &b)?;
                        topics.insert(t.name, t.record);
                    }
                }
                (meta, topics)
            }
            None => Self::migrate_v1(state.as_ref())?,
        };
        let next_id = topics
            .values()
            .map(|t| t.id + 1)
            .max()
            .unwrap_or(1)
            .max(meta.id_limit);
        let catalog = Catalog {
            state,
            inner: Arc::new(Mutex::new(Inventory {
                meta,
                next_id,
                topics,
            })),
        };
        catalog.update_meta(|m| {
            let fresh = m.tenants.insert(DEFAULT_TENANT.to_string());
            let ns = m
                .namespaces
                .insert(format!("{DEFAULT_TENANT}/{DEFAULT_NAMESPACE}"));
            Ok((fresh || ns, ()))
        })?;
        Ok(catalog)
    }

    /// Moves a v1 document (if any) to the per-key layout: topics first, then
    /// the meta record that makes the new layout current, then the old key goes.
    fn migrate_v1(
        state: &dyn StateStore,
    ) -> Result<(Meta, BTreeMap<String, TopicRecord>), BrokerError> {
        let Some(b) = state.load(V1_KEY)? else {
            return Ok((
                Meta {
                    id_limit: 1,
                    ..Meta::default()
                },
                BTreeMap::new(),
            ));
        };
        let doc: DocumentV1 = decode("the catalog", &b)?;
        for (name, record) in &doc.topics {
            store_topic(state, name, record)?;
        }
        let meta = Meta {
            id_limit: doc.next_id,
            tenants: doc.tenants,
            namespaces: doc.namespaces,
            schemas: doc.schemas,
        };
        state.store(META_KEY, &encode("the catalog", &meta)?)?;
        state.remove(V1_KEY)?;
        tracing::info!(
            topics = doc.topics.len(),
            "catalog moved to one record per topic"
        );
        Ok((meta, doc.topics))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inventory> {
        // Changes are persisted before they are applied in memory, so a panic
        // while holding the lock leaves a consistent inventory.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to a copy of the meta record; if it reports a change, persists
    /// the copy and only then makes it current.
    fn update_meta<T>(
        &self,
        f: impl FnOnce(&mut Meta) -> Result<(bool, T), BrokerError>,
    ) -> Result<T, BrokerError> {
        let mut inv = self.lock();
        let mut copy = inv.meta.clone();
        let (changed, out) = f(&mut copy)?;
        if changed {
            self.state.store(META_KEY, &encode("the catalog", &copy)?)?;
            inv.meta = copy;
        }
        Ok(out)
    }

    /// A new topic id; reserves the next block in the meta record when needed.
    fn allocate_id(&self, inv: &mut Inventory) -> Result<u64, BrokerError> {
        if inv.next_id >= inv.meta.id_limit {
            let mut meta = inv.meta.clone();
            meta.id_limit = inv.next_id + ID_BLOCK;
            self.state.store(META_KEY, &encode("the catalog", &meta)?)?;
            inv.meta = meta;
        }
        let id = inv.next_id;
        inv.next_id += 1;
        Ok(id)
    }

    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.lock().meta.namespaces.contains(namespace)
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
        let mut inv = self.lock();
        if !inv.meta.namespaces.contains(&ns) {
            return Err(BrokerError::NamespaceNotFound(ns));
        }
        if let Some(t) = inv.topics.get(&key) {
            return Ok(t.clone());
        }
        if !create {
            return Err(BrokerError::TopicNotFound(key));
        }
        let record = TopicRecord {
            id: self.allocate_id(&mut inv)?,
            partitions: 0,
        };
        store_topic(self.state.as_ref(), &key, &record)?;
        inv.topics.insert(key, record.clone());
        Ok(record)
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
        let mut inv = self.lock();
        if !inv.meta.namespaces.contains(&ns) {
            return Err(BrokerError::NamespaceNotFound(ns));
        }
        let record = match inv.topics.get(&key) {
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
            Some(t) => TopicRecord {
                id: t.id,
                partitions,
            },
            None if !create => return Err(BrokerError::TopicNotFound(key)),
            None => TopicRecord {
                id: self.allocate_id(&mut inv)?,
                partitions,
            },
        };
        store_topic(self.state.as_ref(), &key, &record)?;
        inv.topics.insert(key, record);
        Ok(())
    }

    /// Topics of a namespace (partitioned topics as their partitions' names), of one domain or all.
    pub fn topics_of_namespace(
        &self,
        namespace: &str,
        domain: Option<crate::Domain>,
    ) -> Result<Vec<String>, BrokerError> {
        let inv = self.lock();
        if !inv.meta.namespaces.contains(namespace) {
            return Err(BrokerError::NamespaceNotFound(namespace.to_string()));
        }
        let mut out = BTreeSet::new();
        for (name, record) in &inv.topics {
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
        let inv = self.lock();
        let versions = inv
            .meta
            .schemas
            .get(&topic.partitioned_topic().to_string())?;
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
        self.update_meta(|m| {
            let versions = m.schemas.entry(key).or_default();
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

/// Persists one topic record under its own key (its id: names can be longer
/// than a file name may be).
fn store_topic(
    state: &dyn StateStore,
    name: &str,
    record: &TopicRecord,
) -> Result<(), BrokerError> {
    let stored = StoredTopic {
        name: name.to_owned(),
        record: record.clone(),
    };
    state.store(
        &format!("{TOPICS_PREFIX}/{}", record.id),
        &encode("a topic record", &stored)?,
    )?;
    Ok(())
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
    fn ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path())
            .get_or_create_topic(&TopicName::parse("a").unwrap(), true)
            .unwrap();
        let second = open(dir.path())
            .get_or_create_topic(&TopicName::parse("b").unwrap(), true)
            .unwrap();
        assert!(second.id > first.id);
        let c = open(dir.path());
        let third = c
            .get_or_create_topic(&TopicName::parse("c").unwrap(), true)
            .unwrap();
        assert!(third.id > second.id);
        assert_eq!(
            c.topic(&TopicName::parse("a").unwrap()),
            Some(first),
            "records survive"
        );
    }

    #[test]
    fn a_v1_document_moves_to_one_record_per_topic() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(DirStateStore::open(dir.path()).unwrap());
        let v1 = br#"{"next_id":8,"tenants":["public"],"namespaces":["public/default"],
            "topics":{"persistent://public/default/old":{"id":7,"partitions":0},
                      "persistent://public/default/p":{"id":3,"partitions":2}},
            "schemas":{}}"#;
        state.store(V1_KEY, v1).unwrap();
        let c = Catalog::open(state.clone()).unwrap();
        assert_eq!(c.topic(&TopicName::parse("old").unwrap()).unwrap().id, 7);
        assert!(
            state.load(V1_KEY).unwrap().is_none(),
            "the v1 document is gone"
        );
        let fresh = c
            .get_or_create_topic(&TopicName::parse("new").unwrap(), true)
            .unwrap();
        assert!(fresh.id >= 8, "ids continue after v1's");
        drop(c);
        let c = open(dir.path());
        assert_eq!(
            c.topic(&TopicName::parse("p").unwrap()),
            Some(TopicRecord {
                id: 3,
                partitions: 2
            })
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
