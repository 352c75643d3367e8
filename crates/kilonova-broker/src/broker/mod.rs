//! The broker: shared state behind every connection — storage, the metadata
//! resources, and the map of loaded topics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use tokio::sync::{oneshot, watch};

use kilonova_storage::{EntryCache, SegmentStore, StateStore};

use kilonova_auth::{Need, Principal, Security, Want};
use kilonova_metadata::{NamespaceName, Resources, TopicRecord};

mod analyze_backlog;
pub use analyze_backlog::BacklogAnalysis;
pub use restore::{RestoreReport, RestoredTopic};
mod inactive;
mod restore;
mod topic_admin;
mod topics;

use topics::TopicMap;

use crate::accept::ConnectionLimits;
use crate::clock::SharedClock;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::listeners::{AdvertisedListeners, ListenerUrls};
use crate::metrics::MetricsRegistry;
use crate::policy_cache::{Effective, PolicyCache};
use crate::topic::{TopicCommand, TopicHandle};
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
    /// The object store topics offload to, once configured ([`Broker::enable_tiering`]).
    tiering: std::sync::OnceLock<Arc<crate::tiering::Tiering>>,
    /// This broker's part in a cluster (none: a standalone, serving every topic).
    membership: std::sync::OnceLock<crate::cluster::Membership>,
    /// The load manager's measures and, as the leader, its memory.
    load: crate::cluster::load_manager::LoadManager,
    /// A cluster broker's shared data path ([`Broker::enable_shared_log`]).
    shared: std::sync::OnceLock<crate::cluster::shared::SharedLog>,
    /// The Kafka listener's consumer groups, once it runs (the admin API
    /// reads their state).
    pub(crate) kafka_groups: std::sync::OnceLock<Arc<kilonova_kafka_groups::groups::Coordinator>>,
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

/// Where clients are told to connect: LOOKUP answers `plain`
/// (`pulsar://host:port`) and `tls` (`pulsar+ssl://host:port`, with TLS) —
/// or, with advertised listeners, the URLs of the listener the client names
/// (the internal listener's when it names none); the HTTP lookup answers the
/// same and the admin ports' `http` and `https` URLs.
#[derive(Clone, Debug, Default)]
pub struct ServiceUrls {
    pub plain: Option<String>,
    pub tls: Option<String>,
    pub http: Option<String>,
    pub https: Option<String>,
    pub listeners: AdvertisedListeners,
    /// `host:port` of the Kafka listener and of its TLS port (none: off).
    pub kafka: Option<String>,
    pub kafka_tls: Option<String>,
}

impl From<String> for ServiceUrls {
    fn from(plain: String) -> Self {
        ServiceUrls {
            plain: Some(plain),
            ..Default::default()
        }
    }
}

impl ServiceUrls {
    /// The Pulsar URLs a client naming `listener` is told (see
    /// [`AdvertisedListeners::select`]).
    pub fn broker_urls(&self, listener: Option<&str>) -> Result<ListenerUrls, BrokerError> {
        let own = ListenerUrls {
            plain: self.plain.clone(),
            tls: self.tls.clone(),
        };
        self.listeners.select(listener, &own)
    }
}

/// The broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// A [`Broker`] handle that does not keep it alive (background tasks the
/// broker owns hold one).
#[derive(Clone)]
pub(crate) struct WeakBroker(std::sync::Weak<Inner>);

impl WeakBroker {
    pub(crate) fn upgrade(&self) -> Option<Broker> {
        self.0.upgrade().map(|inner| Broker { inner })
    }
}

/// How long the health check's probe write may take.
const STORAGE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Broker {
    /// A broker over an open segment store, state store (the logs' small state)
    /// and metadata resources. `urls` are what LOOKUP answers
    /// (`pulsar://127.0.0.1:6650`); `security` authenticates and authorizes
    /// clients of every edge ([`Security::open`]: nobody is checked); `clock`
    /// is what its topics and connections read ([`crate::clock::system`] in production).
    pub fn new(
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
                tiering: std::sync::OnceLock::new(),
                membership: std::sync::OnceLock::new(),
                load: Default::default(),
                shared: std::sync::OnceLock::new(),
                kafka_groups: std::sync::OnceLock::new(),
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

    /// Drops the cached entries older than `cache_eviction_time_threshold_ms`
    /// (none when it is 0); run every `cache_eviction_interval_ms`.
    pub fn evict_old_cached_entries(&self) {
        let age = self.config().cache_eviction_time_threshold_ms;
        if age == 0 {
            return;
        }
        let cutoff = self
            .clock()
            .now()
            .checked_sub(std::time::Duration::from_millis(age));
        if let Some(cutoff) = cutoff {
            self.inner.cache.evict_cached_before(cutoff);
        }
    }

    /// Offloads to `tiering` from now on (set once, at start-up).
    pub fn enable_tiering(&self, tiering: Arc<crate::tiering::Tiering>) {
        if self.inner.tiering.set(tiering).is_err() {
            tracing::warn!("tiered storage was enabled already: the first object store stays");
        }
    }

    /// Makes this broker a member of a cluster (once, at start-up).
    pub(crate) fn set_membership(
        &self,
        membership: crate::cluster::Membership,
    ) -> Result<(), BrokerError> {
        self.inner
            .membership
            .set(membership)
            .map_err(|_| BrokerError::Conflict("this broker joined a cluster already".into()))
    }

    /// Sets the shared data path (once, at start-up).
    pub(crate) fn set_shared_log(
        &self,
        shared: crate::cluster::shared::SharedLog,
    ) -> Result<(), BrokerError> {
        self.inner
            .shared
            .set(shared)
            .map_err(|_| BrokerError::Conflict("the shared data path is set already".into()))
    }

    /// The shared data path (none: standalone, or a cluster broker without
    /// an object store).
    pub(crate) fn shared_log(&self) -> Option<&crate::cluster::shared::SharedLog> {
        self.inner.shared.get()
    }

    /// The Kafka listener's consumer groups, once it runs.
    pub(crate) fn kafka_groups(
        &self,
    ) -> &std::sync::OnceLock<Arc<kilonova_kafka_groups::groups::Coordinator>> {
        &self.inner.kafka_groups
    }

    /// A handle that does not keep the broker alive.
    pub(crate) fn downgrade(&self) -> WeakBroker {
        WeakBroker(Arc::downgrade(&self.inner))
    }

    /// Its part in a cluster (none: standalone).
    pub(crate) fn membership(&self) -> Option<&crate::cluster::Membership> {
        self.inner.membership.get()
    }

    pub(crate) fn inner_load(&self) -> &crate::cluster::load_manager::LoadManager {
        &self.inner.load
    }

    /// The object store topics offload to, if one is configured.
    pub(crate) fn tiering(&self) -> Option<Arc<crate::tiering::Tiering>> {
        self.inner.tiering.get().cloned()
    }

    /// The local segment store (offloads copy from it).
    pub(crate) fn segment_store(&self) -> kilonova_storage::SegmentStore {
        self.inner.store.clone()
    }

    /// Whether storage can write, for the health check: `Err` says why not.
    /// While the store reports a failed write, the disk must have room for a
    /// journal file and one probe append (to a segment of its own, deleted at
    /// once) must succeed, so that a disk that has space again reports
    /// healthy without waiting for a client's publish. Every data directory
    /// is checked.
    pub async fn storage_health(&self) -> Result<(), String> {
        let store = &self.inner.store;
        let several = store.dirs().len() > 1;
        for (i, dir) in store.dirs().iter().enumerate() {
            let kilonova_storage::StoreHealth::Failing(f) = dir.health() else {
                continue;
            };
            // Which directory, once there are several.
            let what = if several {
                format!("storage in {}", dir.path().display())
            } else {
                "storage".to_string()
            };
            // A small probe could still fit in the current journal file:
            // what matters is whether the next one can be made.
            if let Ok((free, needed)) = dir.free_bytes() {
                if free < needed {
                    return Err(format!(
                        "{what} cannot write: {} ({free} bytes free, a journal file needs {needed})",
                        f.detail
                    ));
                }
            }
            let probe = async {
                let segment = store.create_segment_in(i).await?;
                let written = match store.append(segment, Bytes::from_static(b"health")).await {
                    Ok(done) => done.await.map(|_| ()),
                    Err(e) => Err(e),
                };
                let deleted = store.delete_segment(segment).await;
                written.and(deleted)
            };
            match tokio::time::timeout(STORAGE_PROBE_TIMEOUT, probe).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("{what} cannot write: {e} ({} failures since the first, {})", f.count, f.detail)),
                Err(_) => return Err(format!("{what} did not answer a probe write within {STORAGE_PROBE_TIMEOUT:?} (last failure: {})", f.detail)),
            }
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
                tenant_info.as_ref().map(|t| &t.admin_roles),
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
        let mut out = crate::metrics::render(
            &self.inner.config.cluster_name,
            &self.inner.metrics,
            &self.inner.store,
            &self.inner.cache,
            self.inner.clock.now(),
        );
        if let Some(t) = self.tiering() {
            t.render_metrics(&mut out, &self.inner.config.cluster_name);
        }
        self.inner
            .load
            .metrics
            .render(&mut out, &self.inner.config.cluster_name);
        if let Some(shared) = self.shared_log() {
            crate::metrics::render_shared_log(
                &mut out,
                &self.inner.config.cluster_name,
                shared.wal_stats(),
                shared.history_stats(),
            );
        }
        out
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

    /// What topic `name`'s policies depend on: a generation that moves, and
    /// a notification, whenever they may have changed.
    pub(crate) fn policy_scope(&self, name: &TopicName) -> Arc<crate::policy_cache::PolicyScope> {
        self.inner.policies.scope(name)
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

    /// The schema compatibility strategy of namespace `ns` (as set: `UNDEFINED`
    /// stands for the broker default).
    pub async fn schema_compatibility_strategy(
        &self,
        ns: &kilonova_metadata::NamespaceName,
    ) -> Result<kilonova_metadata::policies::CompatibilityStrategy, BrokerError> {
        let policies = self.inner.policies.namespace(self.resources(), ns).await?;
        Ok(policies.schema_compatibility_strategy)
    }

    pub(crate) fn state_store(&self) -> &Arc<dyn StateStore> {
        &self.inner.state
    }

    /// Topics loaded now (each has a task).
    pub fn loaded_topics(&self) -> usize {
        self.topics().live.len()
    }

    /// The full names of the loaded topics of namespace `ns`, sorted.
    pub fn loaded_topics_of(&self, ns: &NamespaceName) -> Vec<String> {
        let prefix = format!("/{ns}/");
        let mut names: Vec<String> = self
            .topics()
            .live
            .keys()
            .filter(|name| {
                name.split_once("://")
                    .is_some_and(|(_, rest)| format!("/{rest}").starts_with(&prefix))
            })
            .cloned()
            .collect();
        names.sort();
        names
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
