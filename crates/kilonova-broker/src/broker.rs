//! The broker: shared state behind every connection — storage, the metadata
//! resources, and the map of loaded topics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use tokio::sync::{mpsc, oneshot, watch};

use kilonova_storage::{
    EntryCache, ManagedLog, ManagedLogConfig, SegmentStore, StateStore, StorageError,
};

use kilonova_auth::{Need, Principal, Security, Want};
use kilonova_metadata::{NamespaceName, Resources, TopicRecord};

use crate::accept::ConnectionLimits;
use crate::clock::{self, SharedClock};
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::metrics::MetricsRegistry;
use crate::policies::{Effective, PolicyCache};
use crate::topic::{self, Topic, TopicCommand, TopicHandle};
use crate::topic::{AdminReply, AdminRequest};
use kilonova_metadata::names::TopicName;

struct Inner {
    config: BrokerConfig,
    store: SegmentStore,
    state: Arc<dyn StateStore>,
    cache: Arc<EntryCache>,
    resources: Resources,
    policies: Arc<PolicyCache>,
    security: Security,
    metrics: MetricsRegistry,
    topics: Mutex<TopicMap>,
    /// Where clients are told to connect (LOOKUP).
    urls: ServiceUrls,
    shutting_down: AtomicBool,
    /// Partitioned topics an inactive-topic deletion pass is running for.
    partitioned_deletions: Mutex<std::collections::HashSet<String>>,
    next_producer: AtomicU64,
    next_connection: AtomicU64,
    /// Pulsar connections open, on every port and per client address.
    connections: Arc<ConnectionLimits>,
    /// Distinguishes generated producer names across restarts.
    boot_id: String,
    /// Where topics, subscriptions, policies and connections read the time.
    clock: SharedClock,
}

/// The loaded topics, and those an admin request is unloading or deleting.
#[derive(Default)]
struct TopicMap {
    live: HashMap<String, TopicHandle>,
    /// Loads of these wait until the sender side drops (the old task is done
    /// with the log and, for a delete, the record).
    closing: HashMap<String, watch::Receiver<()>>,
    /// Bumped when a topic's record is deleted: a load that read a record
    /// before the bump reads it again.
    deletions: u64,
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

/// The connection limits of `config`, within 3/4 of the open-file limit
/// (the rest is for storage, metadata and the admin port).
fn connection_limits(config: &BrokerConfig) -> Arc<ConnectionLimits> {
    let max = crate::accept::within_open_files(config.max_connections, (3, 4));
    if max < config.max_connections {
        tracing::warn!(
            max_connections = config.max_connections,
            open_files_limit = crate::accept::open_files_limit(),
            using = max,
            "max_connections lowered to 3/4 of the open-file limit"
        );
    }
    ConnectionLimits::new(max, config.max_connections_per_ip)
}

fn want(w: Want) -> &'static str {
    match w {
        Want::Produce => "produce",
        Want::Consume => "consume",
        Want::Lookup => "look up topics",
    }
}

fn ns_name(ns: Option<&NamespaceName>) -> String {
    ns.map_or_else(|| "?".into(), |n| n.to_string())
}

fn tenant_name_of(tenant: Option<&str>, ns: Option<&NamespaceName>) -> String {
    tenant
        .map(str::to_owned)
        .or_else(|| ns.map(|n| n.tenant.clone()))
        .unwrap_or_else(|| "?".into())
}

/// A record read to decide an authorization: absent is `None` (the decision
/// is made without it, so refused unless granted otherwise); a failed read is
/// a server error (`MetadataError`, HTTP 500) — still refused, but not
/// reported as "not authorized", which would send the client to check its
/// grants instead of the broker.
fn authorization_read<T>(
    read: Result<T, kilonova_metadata::MetadataError>,
    what: &str,
    name: &str,
) -> Result<Option<T>, BrokerError> {
    match read {
        Ok(v) => Ok(Some(v)),
        Err(kilonova_metadata::MetadataError::NotFound(_)) => Ok(None),
        Err(e) => {
            tracing::debug!(%what, %name, error = %e, "reading a record to authorize a request failed");
            Err(BrokerError::Metadata(format!(
                "cannot authorize: reading {what} {name} failed: {e}"
            )))
        }
    }
}

/// Refuses to serve the partitions of an oversized partitioned topic (a record
/// from before the partition cap): it can only be deleted.
pub fn check_servable(base: &TopicName, record: &TopicRecord) -> Result<(), BrokerError> {
    if record.is_oversized() {
        return Err(BrokerError::Precondition(format!(
            "{base} has {} partitions, more than the {} a broker serves: it can only be deleted",
            record.partitions,
            kilonova_metadata::MAX_PARTITIONS
        )));
    }
    Ok(())
}

/// The URLs LOOKUP answers with: `pulsar://host:port` and, with TLS,
/// `pulsar+ssl://host:port` (at least one).
#[derive(Clone, Debug, Default)]
pub struct ServiceUrls {
    pub plain: Option<String>,
    pub tls: Option<String>,
}

impl From<String> for ServiceUrls {
    fn from(plain: String) -> Self {
        ServiceUrls {
            plain: Some(plain),
            tls: None,
        }
    }
}

/// The broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// How long the health check's probe write may take.
const STORAGE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Broker {
    /// A broker over an open segment store, state store (the logs' small state)
    /// and metadata resources. `urls` are what LOOKUP answers
    /// (`pulsar://127.0.0.1:6650`); `security` authenticates and authorizes
    /// clients of every edge ([`Security::open`]: nobody is checked).
    pub fn new(
        config: BrokerConfig,
        store: SegmentStore,
        state: Arc<dyn StateStore>,
        resources: Resources,
        urls: impl Into<ServiceUrls>,
        security: Security,
    ) -> Result<Self, BrokerError> {
        Self::with_clock(
            config,
            store,
            state,
            resources,
            urls,
            security,
            clock::system(),
        )
    }

    /// [`Broker::new`] with the clock its topics and connections read.
    pub fn with_clock(
        config: BrokerConfig,
        store: SegmentStore,
        state: Arc<dyn StateStore>,
        resources: Resources,
        urls: impl Into<ServiceUrls>,
        security: Security,
        clock: SharedClock,
    ) -> Result<Self, BrokerError> {
        let max_partitions = config.max_partitions();
        if config.max_num_partitions_per_partitioned_topic > max_partitions {
            tracing::warn!(
                configured = config.max_num_partitions_per_partitioned_topic,
                max = max_partitions,
                "max_num_partitions_per_partitioned_topic is above the hard ceiling: the ceiling applies"
            );
        }
        if config.default_num_partitions > max_partitions {
            tracing::warn!(
                default_num_partitions = config.default_num_partitions,
                max = max_partitions,
                "default_num_partitions is above the partition cap: partitioned auto-creation will be refused"
            );
        }
        let cache = Arc::new(EntryCache::new(config.entry_cache_bytes));
        let policies = PolicyCache::watching(&resources);
        let connections = connection_limits(&config);
        Ok(Broker {
            inner: Arc::new(Inner {
                config,
                store,
                state,
                cache,
                resources,
                policies,
                security,
                metrics: MetricsRegistry::default(),
                topics: Mutex::new(TopicMap::default()),
                urls: urls.into(),
                shutting_down: AtomicBool::new(false),
                partitioned_deletions: Mutex::default(),
                next_producer: AtomicU64::new(0),
                next_connection: AtomicU64::new(1),
                connections,
                boot_id: format!("{:x}", clock.now_ms()),
                clock,
            }),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// The clock topics, subscriptions, policies and connections read.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// Whether storage can write, for the health check: `Err` says why not.
    /// While the store reports a failed write, the disk must have room for a
    /// journal file and one probe append (to a segment of its own, deleted at
    /// once) must succeed, so that a disk that has space again reports
    /// healthy without waiting for a client's publish.
    pub async fn storage_health(&self) -> Result<(), String> {
        let store = &self.inner.store;
        if let kilonova_storage::StoreHealth::Failing(f) = store.health() {
            // A small probe could still fit in the current journal file:
            // what matters is whether the next one can be made.
            if let Ok((free, needed)) = store.free_bytes() {
                if free < needed {
                    return Err(format!(
                        "storage cannot write: {} ({free} bytes free, a journal file needs {needed})",
                        f.detail
                    ));
                }
            }
            let probe = async {
                let segment = store.create_segment().await?;
                let written = match store.append(segment, Bytes::from_static(b"health")).await {
                    Ok(done) => done.await.map(|_| ()),
                    Err(e) => Err(e),
                };
                let deleted = store.delete_segment(segment).await;
                written.and(deleted)
            };
            return match tokio::time::timeout(STORAGE_PROBE_TIMEOUT, probe).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("storage cannot write: {e} ({} failures since the first, {})", f.count, f.detail)),
                Err(_) => Err(format!("storage did not answer a probe write within {STORAGE_PROBE_TIMEOUT:?} (last failure: {})", f.detail)),
            };
        }
        Ok(())
    }

    /// The largest uncompressed size a compressed batch may declare: clients
    /// batch up to their (compressed) message size limit, and compression
    /// rarely shrinks more than this.
    pub(crate) fn max_uncompressed_batch_bytes(&self) -> u64 {
        16 * self.inner.config.max_frame_bytes() as u64
    }

    pub fn resources(&self) -> &Resources {
        &self.inner.resources
    }

    pub fn security(&self) -> &Security {
        &self.inner.security
    }

    /// Who presents these credentials (`None` with authentication off).
    pub fn authenticate(
        &self,
        method: Option<&str>,
        data: Option<&[u8]>,
    ) -> Result<Option<Principal>, BrokerError> {
        let security = &self.inner.security;
        let result = security.authenticate(method, data);
        if security.authentication_enabled() {
            self.inner.metrics.count_authentication(result.is_ok());
        }
        Ok(result?)
    }

    /// Whether `principal` may do what `need` says in `tenant` (and, for
    /// namespace and topic needs, namespace `ns`): reads the tenant's and the
    /// namespace's records only when the decision depends on them.
    pub async fn authorize(
        &self,
        principal: Option<&Principal>,
        need: Need<'_>,
        tenant: Option<&str>,
        ns: Option<&NamespaceName>,
    ) -> Result<(), BrokerError> {
        let security = &self.inner.security;
        if !security.authentication_enabled() {
            return Ok(());
        }
        let Some(p) = principal else {
            return Err(kilonova_auth::AuthError::Missing.into());
        };
        let authz = security.authorizer();
        let cheap = !authz.enabled() || authz.is_super_user(&p.role);
        let allowed = cheap || {
            let tenant_name = tenant.or(ns.map(|n| n.tenant.as_str()));
            let tenant_info = match tenant_name.filter(|_| need.reads_tenant()) {
                Some(t) => authorization_read(self.resources().tenant(t).await, "tenant", t)?,
                None => None,
            };
            // Read from the store, not the policy cache: a grant revoked
            // through the admin API must refuse the very next request, and
            // the cache learns of changes only when its watch delivers them.
            let policies = match ns.filter(|_| need.reads_namespace()) {
                Some(n) => authorization_read(
                    self.resources().namespace(n).await,
                    "namespace",
                    &n.to_string(),
                )?,
                None => None,
            };
            authz.allows(
                &p.role,
                need,
                tenant_info.as_ref(),
                policies.as_ref().map(|p| &p.auth_policies),
            )
        };
        self.inner.metrics.count_authorization(allowed);
        if allowed {
            return Ok(());
        }
        let what = match need {
            Need::Authenticated => "do this".to_string(),
            Need::SuperUser => "do this (super-users only)".to_string(),
            Need::TenantAdmin => format!("administer tenant {}", tenant_name_of(tenant, ns)),
            Need::Namespace(w) => format!("{} in namespace {}", want(w), ns_name(ns)),
            Need::Topic(t, w) => format!("{} on {t}", want(w)),
        };
        tracing::debug!(role = %p.role, %what, "authorization refused");
        Err(BrokerError::Authorization(format!(
            "role {} is not authorized to {what}",
            p.role
        )))
    }

    pub fn metrics(&self) -> &MetricsRegistry {
        &self.inner.metrics
    }

    /// Every metric, in Prometheus' text format.
    pub fn render_metrics(&self) -> String {
        crate::metrics::render(
            &self.inner.config.cluster_name,
            &self.inner.metrics,
            &self.inner.store,
            &self.inner.cache,
        )
    }

    /// Whether a task serves the topic now.
    pub fn is_loaded(&self, name: &TopicName) -> bool {
        self.topics()
            .live
            .get(&name.to_string())
            .is_some_and(|h| !h.is_closed())
    }

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

    /// The stats of each of partitioned topic `base`'s first `partitions`
    /// partitions, by index, loading none of them: a loaded partition answers
    /// from its task; one that is not, from its log's stored state
    /// ([`crate::topic_admin::TopicStats`] of an idle topic: storage size and
    /// durable subscriptions' backlogs as last persisted); one never used (no
    /// record), zeros. `partitions` must be a served count ([`check_servable`]).
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

    pub fn service_urls(&self) -> &ServiceUrls {
        &self.inner.urls
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// The broker's Pulsar connections and their limits.
    pub(crate) fn connection_limits(&self) -> &Arc<ConnectionLimits> {
        &self.inner.connections
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.inner.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_producer_name(&self) -> String {
        let n = self.inner.next_producer.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}-{}-{n}",
            self.inner.config.cluster_name, self.inner.boot_id
        )
    }

    /// The policies in force on topic `name` now.
    pub(crate) async fn effective_policies(
        &self,
        name: &TopicName,
    ) -> Result<Effective, BrokerError> {
        let cache = &self.inner.policies;
        let ns = cache.namespace(self.resources(), &name.namespace()).await?;
        let topic = cache.topic(self.resources(), name).await?;
        Ok(Effective::resolve(self.config(), &ns, &topic))
    }

    pub(crate) fn state_store(&self) -> &Arc<dyn StateStore> {
        &self.inner.state
    }

    /// Topics loaded now (each has a task).
    pub fn loaded_topics(&self) -> usize {
        self.topics().live.len()
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, TopicMap> {
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
            let handle = TopicHandle::new(tx, Arc::default());
            topics.live.insert(key, handle.clone());
            drop(topics);
            tokio::spawn(Topic::run(
                self.clone(),
                name.clone(),
                record,
                rx,
                handle.publish_gate.clone(),
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

    /// Stops taking new work, closes every topic's producers and consumers with the
    /// protocol's close commands, waits for appends in flight, persists cursors,
    /// then closes the storage.
    /// Closes every topic and the store. An error says what could not be
    /// persisted (the process should then not exit as if all was well).
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        self.inner.shutting_down.store(true, Ordering::Release);
        let (handles, closing): (Vec<TopicHandle>, Vec<watch::Receiver<()>>) = {
            let mut topics = self.topics();
            let handles = topics.live.drain().map(|(_, h)| h).collect();
            (handles, topics.closing.values().cloned().collect())
        };
        // Admin unloads and deletes in progress finish first.
        for mut c in closing {
            let _ = c.changed().await;
        }
        let mut waits = Vec::new();
        for h in handles {
            let (done, wait) = oneshot::channel();
            if h.send(TopicCommand::Shutdown { done }).await.is_ok() {
                waits.push(wait);
            }
        }
        let mut failed = 0usize;
        for w in waits {
            if !w.await.unwrap_or(false) {
                failed += 1;
            }
        }
        let store = self.inner.store.clone();
        let closed = match tokio::task::spawn_blocking(move || store.close()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("closing storage failed: {e}")),
            Err(e) => Err(format!("closing storage panicked: {e}")),
        };
        let mut problems = Vec::new();
        if failed > 0 {
            problems.push(format!(
                "{failed} topic(s) could not persist their cursors (acknowledgements since the last persist will be redelivered)"
            ));
        }
        if let Err(e) = closed {
            problems.push(e);
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(BrokerError::Shutdown(problems.join("; "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilonova_metadata::MetadataError;
    use kilonova_pulsar_protocol::proto::ServerError;

    #[test]
    fn a_failed_read_to_authorize_is_a_metadata_error_and_an_absent_record_is_none() {
        assert_eq!(authorization_read(Ok(7), "tenant", "t").unwrap(), Some(7));
        let absent: Result<u8, _> = Err(MetadataError::NotFound("tenant t".into()));
        assert_eq!(authorization_read(absent, "tenant", "t").unwrap(), None);
        for failure in [
            MetadataError::Backend("namespace a/b is unreadable".into()),
            MetadataError::Closed,
            MetadataError::SessionExpired(3),
        ] {
            let what = failure.to_string();
            let e = authorization_read::<u8>(Err(failure), "namespace", "a/b").unwrap_err();
            assert!(matches!(e, BrokerError::Metadata(_)), "{what}: {e:?}");
            assert_eq!(e.server_error(), ServerError::MetadataError, "{what}");
            assert!(e.to_string().contains("namespace a/b"), "{e}");
        }
    }
}
