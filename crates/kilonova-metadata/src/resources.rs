//! Typed resources over a [`MetadataStore`]: clusters, tenants, namespaces
//! (bundles and policies), topics (internal ids, partition counts, topic-level
//! policies) and schemas. Values are JSON in Pulsar's shapes.
//!
//! Layout (one key per resource, so the inventory scales with the store):
//! `/clusters/<c>`, `/tenants/<t>`, `/namespaces/<t>/<ns>`,
//! `/topics/<t>/<ns>/<domain>/<local>`, `/schemas/<t>/<ns>/<domain>/<local>`,
//! `/counters/topic-id` (ids are reserved in blocks).
//!
//! Updates are read-modify-write loops with compare-and-set, so concurrent
//! writers (admin calls, brokers) never lose each other's changes.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{MetadataError, Result};
use crate::names::{check, Domain, NamespaceName, TopicName};
use crate::policies::{BundlesData, ClusterData, Policies, TenantInfo, TopicPolicies};
use crate::schema::{self as schema_compat, CompatibilityStrategy};
use crate::store::{Expect, MetadataStore, Page};

/// Topic ids reserved per write of the counter.
const ID_BLOCK: u64 = 1024;
const TOPIC_IDS: &str = "/counters/topic-id";
/// Children listed per page when a whole list is wanted.
const LIST_PAGE: usize = 10_000;

/// The most partitions a partitioned topic may have, whatever the broker's
/// configured cap (`max_num_partitions_per_partitioned_topic` may only lower
/// it). Every list of a topic's partitions is at most this long: a record
/// above it (written before the cap existed) is *oversized*, and its
/// partitions are neither listed nor served, only deleted.
pub const MAX_PARTITIONS: u32 = 65_536;

/// A topic's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicRecord {
    /// Internal id: storage keys on it, never on the name.
    pub id: u64,
    /// 0 for a non-partitioned topic.
    #[serde(default)]
    pub partitions: u32,
    #[serde(default, skip_serializing_if = "TopicPolicies::is_empty")]
    pub policies: TopicPolicies,
}

impl TopicRecord {
    /// More partitions than [`MAX_PARTITIONS`]: a record from before the cap,
    /// whose partitions are not served or listed (it can only be deleted).
    pub fn is_oversized(&self) -> bool {
        self.partitions > MAX_PARTITIONS
    }
}

/// Refuses a partition count above [`MAX_PARTITIONS`].
fn check_partition_ceiling(partitions: u32) -> Result<()> {
    if partitions > MAX_PARTITIONS {
        return Err(MetadataError::Invalid(format!(
            "{partitions} partitions is more than the {MAX_PARTITIONS} a partitioned topic may have"
        )));
    }
    Ok(())
}

/// One version of a topic's schema.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SchemaRecord {
    pub name: String,
    /// `Schema.Type` of the protocol.
    pub kind: i32,
    pub data: Vec<u8>,
    pub properties: Vec<(String, String)>,
    /// When the version was registered (ms since the epoch; 0 if unknown).
    #[serde(default)]
    pub timestamp: u64,
    /// A deletion marker: the versions before it are deleted, and version
    /// numbers go on after it (Pulsar's soft delete).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// The most versions (deletion markers included) a topic's schema keeps:
/// they are one record in the store. Registering past it is refused; a
/// forced delete starts over.
pub const MAX_SCHEMA_VERSIONS: usize = 1_000;

/// What creating a schema version answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaOutcome {
    /// The schema is (now) stored as this version.
    Version(u64),
    /// The topic's compatibility strategy refuses it: why.
    Incompatible(String),
}

/// The live versions of a topic's schema: those after its last deletion
/// marker, with their version numbers, oldest first.
fn live_versions(versions: &[SchemaRecord]) -> Vec<(u64, &SchemaRecord)> {
    let start = versions
        .iter()
        .rposition(|s| s.deleted)
        .map_or(0, |i| i + 1);
    versions
        .iter()
        .enumerate()
        .skip(start)
        .map(|(i, s)| (i as u64, s))
        .collect()
}

struct IdBlock {
    next: u64,
    limit: u64,
}

/// The typed view of the metadata store. Cheap to clone.
#[derive(Clone)]
pub struct Resources {
    store: Arc<dyn MetadataStore>,
    ids: Arc<tokio::sync::Mutex<IdBlock>>,
}

fn cluster_key(name: &str) -> String {
    format!("/clusters/{name}")
}

fn tenant_key(name: &str) -> String {
    format!("/tenants/{name}")
}

pub(crate) fn namespace_key(ns: &NamespaceName) -> String {
    format!("/namespaces/{}/{}", ns.tenant, ns.namespace)
}

fn topics_prefix(ns: &NamespaceName, domain: Domain) -> String {
    format!("/topics/{}/{}/{}", ns.tenant, ns.namespace, domain.as_str())
}

fn topic_key(t: &TopicName) -> String {
    format!(
        "/topics/{}/{}/{}/{}",
        t.tenant,
        t.namespace,
        t.domain.as_str(),
        t.local
    )
}

fn schema_key(t: &TopicName) -> String {
    let base = t.partitioned_topic();
    format!(
        "/schemas/{}/{}/{}/{}",
        base.tenant,
        base.namespace,
        base.domain.as_str(),
        base.local
    )
}

pub(crate) fn to_json<T: Serialize>(what: &str, v: &T) -> Result<Bytes> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| MetadataError::Backend(format!("encoding {what}: {e}")))
}

pub(crate) fn from_json<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b)
        .map_err(|e| MetadataError::Backend(format!("{what} is unreadable: {e}")))
}

fn name_error(e: crate::names::TopicNameError) -> MetadataError {
    MetadataError::Invalid(e.to_string())
}

impl Resources {
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        Resources {
            store,
            ids: Arc::new(tokio::sync::Mutex::new(IdBlock { next: 0, limit: 0 })),
        }
    }

    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    // ------------------------------------------------------------ generic

    async fn read<T: DeserializeOwned>(&self, what: &str, key: &str) -> Result<Option<(T, u64)>> {
        match self.store.get(key).await? {
            Some(s) => Ok(Some((from_json(what, &s.value)?, s.version))),
            None => Ok(None),
        }
    }

    async fn must_read<T: DeserializeOwned>(&self, what: &str, key: &str) -> Result<T> {
        self.read(what, key)
            .await?
            .map(|(v, _)| v)
            .ok_or_else(|| MetadataError::NotFound(what.to_owned()))
    }

    async fn create<T: Serialize>(&self, what: &str, key: &str, value: &T) -> Result<()> {
        match self
            .store
            .put(key, to_json(what, value)?, Expect::Absent, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(MetadataError::BadVersion { .. }) => {
                Err(MetadataError::AlreadyExists(what.to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    /// Applies `f` to the stored value and writes it back, retrying on
    /// concurrent changes. `NotFound` if the key is absent.
    async fn update<T: Serialize + DeserializeOwned>(
        &self,
        what: &str,
        key: &str,
        mut f: impl FnMut(&mut T) -> Result<()>,
    ) -> Result<T> {
        loop {
            let (mut value, version) = self
                .read::<T>(what, key)
                .await?
                .ok_or_else(|| MetadataError::NotFound(what.to_owned()))?;
            f(&mut value)?;
            match self
                .store
                .put(key, to_json(what, &value)?, Expect::Version(version), None)
                .await
            {
                Ok(_) => return Ok(value),
                Err(MetadataError::BadVersion { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn delete(&self, what: &str, key: &str) -> Result<()> {
        if self.store.delete(key, Expect::Any).await? {
            Ok(())
        } else {
            Err(MetadataError::NotFound(what.to_owned()))
        }
    }

    /// Every child of `prefix` (paged through the store).
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .children(prefix, after.as_deref(), LIST_PAGE)
                .await?;
            after = page.names.last().cloned();
            out.extend(page.names);
            if !page.more {
                return Ok(out);
            }
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.store.get(key).await?.is_some())
    }

    // ------------------------------------------------------------ clusters

    pub async fn list_clusters(&self) -> Result<Vec<String>> {
        self.list("/clusters").await
    }

    pub async fn cluster(&self, name: &str) -> Result<ClusterData> {
        self.must_read(&format!("cluster {name}"), &cluster_key(name))
            .await
    }

    pub async fn create_cluster(&self, name: &str, data: &ClusterData) -> Result<()> {
        check("cluster", name).map_err(name_error)?;
        self.create(&format!("cluster {name}"), &cluster_key(name), data)
            .await
    }

    pub async fn update_cluster(&self, name: &str, data: ClusterData) -> Result<()> {
        self.update::<ClusterData>(&format!("cluster {name}"), &cluster_key(name), |c| {
            *c = data.clone();
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Refused while a tenant allows the cluster.
    pub async fn delete_cluster(&self, name: &str) -> Result<()> {
        for t in self.list_tenants().await? {
            if let Ok(info) = self.tenant(&t).await {
                if info.allowed_clusters.contains(name) {
                    return Err(MetadataError::Precondition(format!(
                        "cluster {name} is still allowed for tenant {t}"
                    )));
                }
            }
        }
        self.delete(&format!("cluster {name}"), &cluster_key(name))
            .await
    }

    /// Every name must be a known cluster.
    async fn check_clusters<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Result<()> {
        for c in names {
            if !self.exists(&cluster_key(c)).await? {
                return Err(MetadataError::Precondition(format!(
                    "cluster {c} does not exist"
                )));
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ tenants

    pub async fn list_tenants(&self) -> Result<Vec<String>> {
        self.list("/tenants").await
    }

    pub async fn tenant(&self, name: &str) -> Result<TenantInfo> {
        self.must_read(&format!("tenant {name}"), &tenant_key(name))
            .await
    }

    pub async fn create_tenant(&self, name: &str, info: &TenantInfo) -> Result<()> {
        check("tenant", name).map_err(name_error)?;
        self.check_clusters(&info.allowed_clusters).await?;
        self.create(&format!("tenant {name}"), &tenant_key(name), info)
            .await
    }

    pub async fn update_tenant(&self, name: &str, info: TenantInfo) -> Result<()> {
        self.check_clusters(&info.allowed_clusters).await?;
        self.update::<TenantInfo>(&format!("tenant {name}"), &tenant_key(name), |t| {
            *t = info.clone();
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Refused while the tenant has namespaces.
    pub async fn delete_tenant(&self, name: &str) -> Result<()> {
        let what = format!("tenant {name}");
        if !self.exists(&tenant_key(name)).await? {
            return Err(MetadataError::NotFound(what));
        }
        let page = self
            .store
            .children(&format!("/namespaces/{name}"), None, 1)
            .await?;
        if !page.names.is_empty() {
            return Err(MetadataError::Precondition(format!(
                "tenant {name} still has namespaces"
            )));
        }
        self.delete(&what, &tenant_key(name)).await
    }

    // ------------------------------------------------------------ namespaces

    /// `tenant/ns` names of the tenant's namespaces.
    pub async fn list_namespaces(&self, tenant: &str) -> Result<Vec<String>> {
        if !self.exists(&tenant_key(tenant)).await? {
            return Err(MetadataError::NotFound(format!("tenant {tenant}")));
        }
        Ok(self
            .list(&format!("/namespaces/{tenant}"))
            .await?
            .into_iter()
            .map(|ns| format!("{tenant}/{ns}"))
            .collect())
    }

    pub async fn namespace_exists(&self, ns: &NamespaceName) -> Result<bool> {
        self.exists(&namespace_key(ns)).await
    }

    pub async fn namespace(&self, ns: &NamespaceName) -> Result<Policies> {
        self.must_read(&format!("namespace {ns}"), &namespace_key(ns))
            .await
    }

    /// Creates the namespace; bundles default to [`crate::policies::DEFAULT_BUNDLES`].
    pub async fn create_namespace(&self, ns: &NamespaceName, mut policies: Policies) -> Result<()> {
        let tenant = self.tenant(&ns.tenant).await?;
        if policies.bundles.num_bundles == 0 {
            policies.bundles = BundlesData::even(crate::policies::DEFAULT_BUNDLES)?;
        } else if policies.bundles.boundaries.len() != policies.bundles.num_bundles as usize + 1 {
            policies.bundles = BundlesData::even(policies.bundles.num_bundles)?;
        }
        if policies.replication_clusters.is_empty() {
            policies.replication_clusters = tenant.allowed_clusters.clone();
        }
        self.check_clusters(&policies.replication_clusters).await?;
        self.create(&format!("namespace {ns}"), &namespace_key(ns), &policies)
            .await
    }

    /// Changes the namespace's policies with `f` (retried on concurrent changes).
    pub async fn update_namespace(
        &self,
        ns: &NamespaceName,
        f: impl FnMut(&mut Policies) -> Result<()>,
    ) -> Result<Policies> {
        self.update(&format!("namespace {ns}"), &namespace_key(ns), f)
            .await
    }

    /// Sets the namespace's replication clusters (each must exist).
    pub async fn set_replication_clusters(
        &self,
        ns: &NamespaceName,
        clusters: std::collections::BTreeSet<String>,
    ) -> Result<()> {
        self.check_clusters(&clusters).await?;
        self.update_namespace(ns, |p| {
            p.replication_clusters = clusters.clone();
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Whether the namespace holds any topic record.
    pub async fn has_topics(&self, ns: &NamespaceName) -> Result<bool> {
        for d in [Domain::Persistent, Domain::NonPersistent] {
            if !self
                .store
                .children(&topics_prefix(ns, d), None, 1)
                .await?
                .names
                .is_empty()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes the namespace; refused while it has topics (delete them first).
    pub async fn delete_namespace(&self, ns: &NamespaceName) -> Result<()> {
        let what = format!("namespace {ns}");
        if !self.namespace_exists(ns).await? {
            return Err(MetadataError::NotFound(what));
        }
        if self.has_topics(ns).await? {
            return Err(MetadataError::Precondition(format!(
                "namespace {ns} still has topics"
            )));
        }
        self.delete(&what, &namespace_key(ns)).await
    }

    // ------------------------------------------------------------ topics

    /// A new topic id; reserves the next block of ids when needed.
    async fn allocate_topic_id(&self) -> Result<u64> {
        let mut ids = self.ids.lock().await;
        if ids.next >= ids.limit {
            loop {
                let current = self.store.get(TOPIC_IDS).await?;
                let (start, expect) = match &current {
                    Some(s) => (
                        from_json::<u64>("the topic id counter", &s.value)?,
                        Expect::Version(s.version),
                    ),
                    None => (1, Expect::Absent),
                };
                let limit = start + ID_BLOCK;
                match self
                    .store
                    .put(
                        TOPIC_IDS,
                        to_json("the topic id counter", &limit)?,
                        expect,
                        None,
                    )
                    .await
                {
                    Ok(_) => {
                        *ids = IdBlock { next: start, limit };
                        break;
                    }
                    Err(MetadataError::BadVersion { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    /// Raises the id counter to at least `floor` (an import of older records).
    pub async fn reserve_topic_ids_below(&self, floor: u64) -> Result<()> {
        loop {
            let current = self.store.get(TOPIC_IDS).await?;
            let (value, expect) = match &current {
                Some(s) => (
                    from_json::<u64>("the topic id counter", &s.value)?,
                    Expect::Version(s.version),
                ),
                None => (1, Expect::Absent),
            };
            if value >= floor {
                return Ok(());
            }
            match self
                .store
                .put(
                    TOPIC_IDS,
                    to_json("the topic id counter", &floor)?,
                    expect,
                    None,
                )
                .await
            {
                Ok(_) => {
                    let mut ids = self.ids.lock().await;
                    *ids = IdBlock { next: 0, limit: 0 };
                    return Ok(());
                }
                Err(MetadataError::BadVersion { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn topic(&self, name: &TopicName) -> Result<Option<TopicRecord>> {
        Ok(self
            .read(&format!("topic {name}"), &topic_key(name))
            .await?
            .map(|(t, _)| t))
    }

    /// Creates topic `name` with `partitions` (0: non-partitioned).
    pub async fn create_topic(&self, name: &TopicName, partitions: u32) -> Result<TopicRecord> {
        check_partition_ceiling(partitions)?;
        let ns = name.namespace();
        if !self.namespace_exists(&ns).await? {
            return Err(MetadataError::NotFound(format!("namespace {ns}")));
        }
        let key = topic_key(name);
        let what = format!("topic {name}");
        if self.exists(&key).await? {
            return Err(MetadataError::AlreadyExists(what));
        }
        let record = TopicRecord {
            id: self.allocate_topic_id().await?,
            partitions,
            policies: TopicPolicies::default(),
        };
        self.create(&what, &key, &record).await?;
        Ok(record)
    }

    /// Stores `record` as `name`'s record, whatever was there (imports).
    pub async fn put_topic(&self, name: &TopicName, record: &TopicRecord) -> Result<()> {
        let what = format!("topic {name}");
        self.store
            .put(&topic_key(name), to_json(&what, record)?, Expect::Any, None)
            .await
            .map(drop)
    }

    /// The topic's record; created non-partitioned if absent and `create`.
    pub async fn get_or_create_topic(&self, name: &TopicName, create: bool) -> Result<TopicRecord> {
        if let Some(t) = self.topic(name).await? {
            return Ok(t);
        }
        if !create {
            let ns = name.namespace();
            if !self.namespace_exists(&ns).await? {
                return Err(MetadataError::NotFound(format!("namespace {ns}")));
            }
            return Err(MetadataError::NotFound(format!("topic {name}")));
        }
        match self.create_topic(name, 0).await {
            // Another creator won the race: use its record.
            Err(MetadataError::AlreadyExists(what)) => {
                self.topic(name).await?.ok_or(MetadataError::NotFound(what))
            }
            other => other,
        }
    }

    /// Grows partitioned topic `name` to `partitions` (it may only grow, as in Pulsar).
    pub async fn update_partitions(&self, name: &TopicName, partitions: u32) -> Result<()> {
        check_partition_ceiling(partitions)?;
        let what = format!("topic {name}");
        self.update::<TopicRecord>(&what, &topic_key(name), |t| {
            if t.partitions == 0 {
                return Err(MetadataError::Precondition(format!(
                    "{name} is not a partitioned topic"
                )));
            }
            if partitions < t.partitions {
                return Err(MetadataError::Invalid(format!(
                    "partitions can only grow: {name} has {}",
                    t.partitions
                )));
            }
            t.partitions = partitions;
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Changes the topic's record (its policies) with `f`.
    pub async fn update_topic(
        &self,
        name: &TopicName,
        f: impl FnMut(&mut TopicRecord) -> Result<()>,
    ) -> Result<TopicRecord> {
        self.update(&format!("topic {name}"), &topic_key(name), f)
            .await
    }

    /// Deletes the topic's record (and its schemas, if it is not a partition).
    pub async fn delete_topic(&self, name: &TopicName) -> Result<()> {
        self.delete(&format!("topic {name}"), &topic_key(name))
            .await?;
        if name.partition().is_none() {
            self.store.delete(&schema_key(name), Expect::Any).await?;
        }
        Ok(())
    }

    /// Topic records of a namespace in one domain: (name, record), by name.
    pub async fn topics(
        &self,
        ns: &NamespaceName,
        domain: Domain,
    ) -> Result<Vec<(TopicName, TopicRecord)>> {
        let prefix = topics_prefix(ns, domain);
        let mut out = Vec::new();
        for local in self.list(&prefix).await? {
            let name = TopicName {
                domain,
                tenant: ns.tenant.clone(),
                namespace: ns.namespace.clone(),
                local,
            };
            if let Some(t) = self.topic(&name).await? {
                out.push((name, t));
            }
        }
        Ok(out)
    }

    /// One page of a namespace's topic local names in one domain.
    pub async fn topic_page(
        &self,
        ns: &NamespaceName,
        domain: Domain,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page> {
        self.store
            .children(&topics_prefix(ns, domain), after, limit)
            .await
    }

    /// The stored records of partitioned topic `base`'s partitions (a
    /// partition has one once it was used), by index. Pages through the
    /// store's children named `<base>-partition-…`, so the cost follows what is
    /// stored, never the partition count. Records with an index at or past
    /// `partitions` are left out.
    pub async fn partition_records(
        &self,
        base: &TopicName,
        partitions: u32,
    ) -> Result<Vec<(u32, TopicRecord)>> {
        let ns = base.namespace();
        let prefix = topics_prefix(&ns, base.domain);
        let stem = format!("{}{}", base.local, crate::names::PARTITION_SUFFIX);
        let mut after = stem.clone();
        let mut out = Vec::new();
        loop {
            let page = self
                .store
                .children(&prefix, Some(&after), LIST_PAGE)
                .await?;
            let mut past_stem = false;
            for local in &page.names {
                let Some(index) = local.strip_prefix(&stem) else {
                    past_stem = true;
                    break;
                };
                // `t-partition-007` is another topic's name, not partition 7.
                let Some(i) = index
                    .parse::<u32>()
                    .ok()
                    .filter(|i| *i < partitions && i.to_string() == index)
                else {
                    continue;
                };
                let name = base.partition_name(i);
                if let Some(record) = self.topic(&name).await? {
                    out.push((i, record));
                }
            }
            match page.names.last() {
                Some(last) if page.more && !past_stem => after = last.clone(),
                _ => break,
            }
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }

    /// The topics clients see in a namespace: non-partitioned topics and every
    /// partition of partitioned ones (as GET_TOPICS_OF_NAMESPACE and Pulsar's
    /// topic list answer), of one domain or both, sorted. An oversized
    /// record's partitions are left out (with a warning): listing them would
    /// cost memory in proportion to a number a client chose.
    pub async fn topics_of_namespace(
        &self,
        ns: &NamespaceName,
        domain: Option<Domain>,
    ) -> Result<Vec<String>> {
        if !self.namespace_exists(ns).await? {
            return Err(MetadataError::NotFound(format!("namespace {ns}")));
        }
        let mut out = std::collections::BTreeSet::new();
        for d in [Domain::Persistent, Domain::NonPersistent] {
            if domain.is_some_and(|want| want != d) {
                continue;
            }
            let records = self.topics(ns, d).await?;
            let partitioned: std::collections::HashMap<&str, u32> = records
                .iter()
                .filter(|(_, r)| r.partitions > 0)
                .map(|(n, r)| (n.local.as_str(), r.partitions))
                .collect();
            for (name, record) in &records {
                if record.is_oversized() {
                    tracing::warn!(
                        topic = %name,
                        partitions = record.partitions,
                        max = MAX_PARTITIONS,
                        "not listing the partitions of an oversized partitioned topic (delete it)"
                    );
                } else if record.partitions > 0 {
                    out.extend((0..record.partitions).map(|i| name.partition_name(i).to_string()));
                } else if name.partition().is_none()
                    || !partitioned.contains_key(name.partitioned_topic().local.as_str())
                {
                    out.insert(name.to_string());
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    // ------------------------------------------------------------ schemas

    async fn schema_versions(&self, topic: &TopicName) -> Result<Option<(Vec<SchemaRecord>, u64)>> {
        self.read(&format!("schemas of {topic}"), &schema_key(topic))
            .await
    }

    /// Every stored version of `topic`'s schema, deletion markers included,
    /// oldest first (exports; [`Self::put_schemas`] stores them back).
    pub async fn schema_history(&self, topic: &TopicName) -> Result<Vec<SchemaRecord>> {
        Ok(self
            .schema_versions(topic)
            .await?
            .map(|(versions, _)| versions)
            .unwrap_or_default())
    }

    /// The schema of `topic` at `version` (the latest if `None`); a deleted
    /// schema (the latest is a deletion marker) or a marker is none.
    pub async fn schema(
        &self,
        topic: &TopicName,
        version: Option<u64>,
    ) -> Result<Option<(u64, SchemaRecord)>> {
        let Some((versions, _)) = self.schema_versions(topic).await? else {
            return Ok(None);
        };
        let v = match version {
            Some(v) => v,
            None => match versions.len().checked_sub(1) {
                Some(v) => v as u64,
                None => return Ok(None),
            },
        };
        Ok(usize::try_from(v)
            .ok()
            .and_then(|i| versions.get(i))
            .filter(|s| !s.deleted)
            .map(|s| (v, s.clone())))
    }

    /// The live versions of `topic`'s schema (after its last deletion), oldest first.
    pub async fn schemas(&self, topic: &TopicName) -> Result<Vec<(u64, SchemaRecord)>> {
        let versions = match self.schema_versions(topic).await? {
            Some((versions, _)) => versions,
            None => return Ok(Vec::new()),
        };
        Ok(live_versions(&versions)
            .into_iter()
            .map(|(v, s)| (v, s.clone()))
            .collect())
    }

    /// Finds `schema` among the topic's live versions or adds it as the next
    /// version, if `strategy` allows it against the live versions.
    pub async fn get_or_create_schema(
        &self,
        topic: &TopicName,
        schema: SchemaRecord,
        strategy: CompatibilityStrategy,
    ) -> Result<SchemaOutcome> {
        let key = schema_key(topic);
        let what = format!("schemas of {topic}");
        loop {
            let (mut versions, expect) = match self.schema_versions(topic).await? {
                Some((v, version)) => (v, Expect::Version(version)),
                None => (Vec::new(), Expect::Absent),
            };
            let live = live_versions(&versions);
            if let Some((v, _)) = live
                .iter()
                .find(|(_, s)| s.kind == schema.kind && s.data == schema.data)
            {
                return Ok(SchemaOutcome::Version(*v));
            }
            if let Err(why) = schema_compat::check_new_version(&live, &schema, strategy) {
                return Ok(SchemaOutcome::Incompatible(why));
            }
            if versions.len() >= MAX_SCHEMA_VERSIONS {
                return Err(MetadataError::Precondition(format!(
                    "{topic} has {MAX_SCHEMA_VERSIONS} schema versions, the most it may keep; delete its schema with force to start over"
                )));
            }
            versions.push(schema.clone());
            match self
                .store
                .put(&key, to_json(&what, &versions)?, expect, None)
                .await
            {
                Ok(_) => return Ok(SchemaOutcome::Version(versions.len() as u64 - 1)),
                Err(MetadataError::BadVersion { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a consumer with `schema` may read `topic` under `strategy`
    /// (`Err`: why not); `Ok(None)`: the topic has no schema to check against.
    pub async fn check_reader_schema(
        &self,
        topic: &TopicName,
        schema: &SchemaRecord,
        strategy: CompatibilityStrategy,
    ) -> Result<Option<std::result::Result<(), String>>> {
        let versions = match self.schema_versions(topic).await? {
            Some((versions, _)) => versions,
            None => return Ok(None),
        };
        let live = live_versions(&versions);
        if live.is_empty() {
            return Ok(None);
        }
        Ok(Some(schema_compat::check_reader(&live, schema, strategy)))
    }

    /// Whether `schema` could be registered on `topic` under `strategy`.
    pub async fn check_schema_compatibility(
        &self,
        topic: &TopicName,
        schema: &SchemaRecord,
        strategy: CompatibilityStrategy,
    ) -> Result<std::result::Result<(), String>> {
        let versions = match self.schema_versions(topic).await? {
            Some((versions, _)) => versions,
            None => return Ok(Ok(())),
        };
        let live = live_versions(&versions);
        if live
            .iter()
            .any(|(_, s)| s.kind == schema.kind && s.data == schema.data)
        {
            return Ok(Ok(()));
        }
        Ok(schema_compat::check_new_version(&live, schema, strategy))
    }

    /// Deletes `topic`'s schema: appends a deletion marker (its version is
    /// returned) so version numbers go on, or with `force` removes every
    /// version. `None`: there was no live schema.
    pub async fn delete_schema(
        &self,
        topic: &TopicName,
        force: bool,
        timestamp: u64,
    ) -> Result<Option<u64>> {
        let key = schema_key(topic);
        let what = format!("schemas of {topic}");
        loop {
            let Some((mut versions, version)) = self.schema_versions(topic).await? else {
                return Ok(None);
            };
            let live = live_versions(&versions).len();
            let last = versions.len() as u64;
            if force {
                match self.store.delete(&key, Expect::Version(version)).await {
                    Ok(_) => return Ok((live > 0).then(|| last.saturating_sub(1))),
                    Err(MetadataError::BadVersion { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            if live == 0 {
                return Ok(None);
            }
            if versions.len() >= MAX_SCHEMA_VERSIONS {
                return Err(MetadataError::Precondition(format!(
                    "{topic} has {MAX_SCHEMA_VERSIONS} schema versions, the most it may keep; delete its schema with force"
                )));
            }
            versions.push(SchemaRecord {
                name: String::new(),
                kind: 0,
                data: Vec::new(),
                properties: Vec::new(),
                timestamp,
                deleted: true,
            });
            match self
                .store
                .put(
                    &key,
                    to_json(&what, &versions)?,
                    Expect::Version(version),
                    None,
                )
                .await
            {
                Ok(_) => return Ok(Some(last)),
                Err(MetadataError::BadVersion { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Stores a topic's schema versions whatever was there (imports).
    pub async fn put_schemas(&self, topic: &TopicName, versions: &[SchemaRecord]) -> Result<()> {
        self.store
            .put(
                &schema_key(topic),
                to_json("schemas", &versions)?,
                Expect::Any,
                None,
            )
            .await
            .map(drop)
    }

    // ------------------------------------------------------------ bootstrap

    /// Creates what a fresh standalone has: the cluster, the `public` tenant and
    /// the `public/default` namespace. Leaves existing ones as they are.
    pub async fn bootstrap(&self, cluster: &str, data: &ClusterData) -> Result<()> {
        ignore_exists(self.create_cluster(cluster, data).await)?;
        let info = TenantInfo {
            admin_roles: Default::default(),
            allowed_clusters: [cluster.to_owned()].into(),
        };
        ignore_exists(
            self.create_tenant(crate::names::DEFAULT_TENANT, &info)
                .await,
        )?;
        let ns = NamespaceName::new(
            crate::names::DEFAULT_TENANT,
            crate::names::DEFAULT_NAMESPACE,
        )
        .map_err(name_error)?;
        ignore_exists(self.create_namespace(&ns, Policies::default()).await)
    }
}

fn ignore_exists(r: Result<()>) -> Result<()> {
    match r {
        Err(MetadataError::AlreadyExists(_)) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedStore;

    async fn resources() -> (Resources, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("metadata.redb")).unwrap();
        let r = Resources::new(Arc::new(store));
        r.bootstrap("standalone", &ClusterData::default())
            .await
            .unwrap();
        (r, dir)
    }

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name).unwrap()
    }

    #[tokio::test]
    async fn partition_counts_above_the_ceiling_are_refused() {
        let (r, _dir) = resources().await;
        let t = topic("persistent://public/default/huge");
        assert!(matches!(
            r.create_topic(&t, MAX_PARTITIONS + 1).await,
            Err(MetadataError::Invalid(_))
        ));
        assert!(matches!(
            r.create_topic(&t, u32::MAX).await,
            Err(MetadataError::Invalid(_))
        ));
        assert_eq!(r.topic(&t).await.unwrap(), None, "nothing stored");
        r.create_topic(&t, 2).await.unwrap();
        assert!(matches!(
            r.update_partitions(&t, u32::MAX).await,
            Err(MetadataError::Invalid(_))
        ));
        assert_eq!(r.topic(&t).await.unwrap().unwrap().partitions, 2);
    }

    #[tokio::test]
    async fn an_oversized_record_does_not_crash_the_listing() {
        // A record written before the cap existed: u32::MAX partitions would
        // be 4 billion names (the broker aborted on a 343 GB allocation).
        let (r, _dir) = resources().await;
        let ns = NamespaceName::new("public", "default").unwrap();
        let huge = topic("persistent://public/default/huge");
        let record = TopicRecord {
            id: 77,
            partitions: u32::MAX,
            policies: TopicPolicies::default(),
        };
        r.put_topic(&huge, &record).await.unwrap();
        // A partition used before, and a neighbour.
        r.put_topic(&huge.partition_name(3), &TopicRecord::default())
            .await
            .unwrap();
        r.create_topic(&topic("persistent://public/default/small"), 2)
            .await
            .unwrap();
        r.create_topic(&topic("persistent://public/default/plain"), 0)
            .await
            .unwrap();

        let listed = r.topics_of_namespace(&ns, None).await.unwrap();
        assert_eq!(
            listed,
            [
                "persistent://public/default/plain",
                "persistent://public/default/small-partition-0",
                "persistent://public/default/small-partition-1",
            ]
        );
        // The stored partitions are found without walking u32::MAX indexes.
        let stored = r.partition_records(&huge, u32::MAX).await.unwrap();
        assert_eq!(stored.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [3]);
    }

    #[tokio::test]
    async fn partition_records_are_the_stored_partitions_only() {
        let (r, _dir) = resources().await;
        let base = topic("persistent://public/default/t");
        r.create_topic(&base, 12).await.unwrap();
        for i in [0, 2, 10, 11] {
            r.put_topic(&base.partition_name(i), &TopicRecord::default())
                .await
                .unwrap();
        }
        // Names that only look like partitions of `t`, and a neighbour.
        for other in [
            "t-partition-007",
            "t-partition-12",
            "t-partition-x",
            "t-partitions",
            "u",
        ] {
            r.put_topic(
                &topic(&format!("persistent://public/default/{other}")),
                &TopicRecord::default(),
            )
            .await
            .unwrap();
        }
        let found: Vec<u32> = r
            .partition_records(&base, 12)
            .await
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found, [0, 2, 10, 11]);
    }
}
