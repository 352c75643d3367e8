//! The policies in force on a topic: its own overrides, else its namespace's,
//! else the broker's defaults ([`Effective::resolve`]), and the cache that
//! keeps namespace and topic policies in memory, kept fresh by a watch on the
//! metadata store (a change made through any broker's admin API reaches every
//! broker's topics within one policy check, without a restart).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use kilonova_metadata::policies::{
    self as p, BacklogQuotaPolicy, InactiveTopicDeleteMode, Policies, TopicPolicies,
};
use kilonova_metadata::{MetadataError, NamespaceName, Resources, Watch, Watched};
use kilonova_storage::Retention;

use crate::config::BrokerConfig;
use crate::rate_limit::{Rate, RateLimits};
use kilonova_metadata::names::TopicName;

/// A backlog quota in force: the limit and what happens beyond it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    pub limit: u64,
    pub policy: BacklogQuotaPolicy,
}

/// When an unused topic is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InactiveRule {
    pub mode: InactiveTopicDeleteMode,
    pub max_inactive: Duration,
}

/// Every policy a topic applies, resolved.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Effective {
    pub retention: Retention,
    /// `None`: messages never expire.
    pub ttl: Option<Duration>,
    pub publish_rate: RateLimits,
    pub dispatch_rate: RateLimits,
    pub subscription_dispatch_rate: RateLimits,
    /// What each replicator sends to its remote cluster.
    pub replicator_dispatch_rate: RateLimits,
    /// `None`: the topic is never deleted for being unused.
    pub inactive: Option<InactiveRule>,
    pub max_producers: Option<u32>,
    pub max_consumers: Option<u32>,
    pub max_consumers_per_subscription: Option<u32>,
    pub max_unacked_per_consumer: Option<u32>,
    pub max_unacked_per_subscription: Option<u32>,
    /// The topic's own message size limit (the broker's is the frame limit,
    /// told to clients in CONNECTED and checked by the connection).
    pub max_message_bytes: Option<usize>,
    /// Largest subscription backlog, in bytes.
    pub backlog_size: Option<Quota>,
    /// Age of the oldest unacknowledged message, in seconds.
    pub backlog_age: Option<Quota>,
    pub deduplication: bool,
    pub delayed_delivery: bool,
    /// Uncompacted backlog (bytes) that starts a compaction; `None`: never.
    pub compaction_threshold_bytes: Option<u64>,
    /// Bytes of the topic kept locally before older sealed segments are
    /// offloaded; `Some(0)`: offload every sealed segment; `None`: never.
    pub offload_threshold_bytes: Option<u64>,
    /// Age (seconds) past which sealed segments are offloaded; `None`: never.
    pub offload_threshold_secs: Option<u64>,
    /// How long the local copy of an offloaded segment is kept.
    pub offload_deletion_lag_ms: u64,
    /// The remote clusters the topic replicates to: its own replication
    /// clusters, else its namespace's, but this one.
    pub replication_clusters: Vec<String>,
    /// SUBSCRIBEs one consumer may send per period; `None`: unlimited.
    pub subscribe_rate: Option<Rate>,
    /// A durable subscription without consumers inactive this long is
    /// deleted; `None`: never.
    pub subscription_expiration: Option<Duration>,
}

fn positive(v: i64) -> Option<u64> {
    u64::try_from(v).ok().filter(|v| *v > 0)
}

fn count(v: Option<i32>, broker: u32) -> Option<u32> {
    match v {
        Some(v) => u32::try_from(v).ok().filter(|v| *v > 0),
        None => (broker > 0).then_some(broker),
    }
}

fn publish_limits(r: &p::PublishRate) -> RateLimits {
    RateLimits {
        messages: positive(i64::from(r.publish_throttling_rate_in_msg)).map(Rate::per_second),
        bytes: positive(r.publish_throttling_rate_in_byte).map(Rate::per_second),
    }
}

fn dispatch_limits(r: &p::DispatchRate) -> RateLimits {
    let period = Duration::from_secs(u64::try_from(r.rate_period_in_second).unwrap_or(1).max(1));
    let rate = |n| Rate {
        per_period: n,
        period,
    };
    RateLimits {
        messages: positive(i64::from(r.dispatch_throttling_rate_in_msg)).map(rate),
        bytes: positive(r.dispatch_throttling_rate_in_byte).map(rate),
    }
}

fn broker_limits(messages: u64, bytes: u64) -> RateLimits {
    RateLimits {
        messages: (messages > 0).then(|| Rate::per_second(messages)),
        bytes: (bytes > 0).then(|| Rate::per_second(bytes)),
    }
}

/// Pulsar's retention values: minutes / MiB, -1 unlimited, 0 none.
fn retention(minutes: i64, mib: i64) -> Retention {
    let dim = |v: i64, unit: u64| match u64::try_from(v) {
        Ok(v) => Some(v.saturating_mul(unit)),
        Err(_) => None,
    };
    Retention {
        time_ms: dim(minutes, 60_000),
        size_bytes: dim(mib, 1 << 20),
    }
}

fn quota(q: Option<&p::BacklogQuota>, pick: fn(&p::BacklogQuota) -> i64) -> Option<Quota> {
    q.and_then(|q| {
        positive(pick(q)).map(|limit| Quota {
            limit,
            policy: q.policy,
        })
    })
}

impl Effective {
    /// The topic's policy, else the namespace's, else the broker's.
    pub(crate) fn resolve(c: &BrokerConfig, ns: &Policies, t: &TopicPolicies) -> Self {
        let retention = match t.retention_policies.or(ns.retention_policies) {
            Some(r) => retention(
                i64::from(r.retention_time_in_minutes),
                r.retention_size_in_mb,
            ),
            None => retention(c.retention_minutes, c.retention_size_mb),
        };
        let ttl_secs = match t.message_ttl_in_seconds.or(ns.message_ttl_in_seconds) {
            Some(s) => u64::try_from(s).unwrap_or(0),
            None => c.message_ttl_secs,
        };
        let rates = resolve_rates(c, ns, t);
        let inactive = resolve_inactive(c, ns, t);
        let (backlog_size, backlog_age) = resolve_quotas(c, ns, t);
        let max_message_bytes = t
            .max_message_size
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0);
        let topic_offload = t.offload_policies.as_ref();
        Effective {
            retention,
            ttl: (ttl_secs > 0).then(|| Duration::from_secs(ttl_secs)),
            publish_rate: rates.publish,
            dispatch_rate: rates.dispatch,
            subscription_dispatch_rate: rates.subscription_dispatch,
            replicator_dispatch_rate: rates.replicator_dispatch,
            inactive,
            max_producers: count(
                t.max_producers_per_topic.or(ns.max_producers_per_topic),
                c.max_producers_per_topic,
            ),
            max_consumers: count(
                t.max_consumers_per_topic.or(ns.max_consumers_per_topic),
                c.max_consumers_per_topic,
            ),
            max_consumers_per_subscription: count(
                t.max_consumers_per_subscription
                    .or(ns.max_consumers_per_subscription),
                c.max_consumers_per_subscription,
            ),
            max_unacked_per_consumer: count(
                t.max_unacked_messages_on_consumer
                    .or(ns.max_unacked_messages_per_consumer),
                c.max_unacked_messages_per_consumer,
            ),
            max_unacked_per_subscription: count(
                t.max_unacked_messages_on_subscription
                    .or(ns.max_unacked_messages_per_subscription),
                c.max_unacked_messages_per_subscription,
            ),
            max_message_bytes,
            backlog_size,
            backlog_age,
            deduplication: t
                .deduplication_enabled
                .or(ns.deduplication_enabled)
                .unwrap_or(c.deduplication_enabled),
            delayed_delivery: t
                .delayed_delivery
                .or(ns.delayed_delivery_policies)
                .map_or(c.delayed_delivery_enabled, |d| d.active),
            compaction_threshold_bytes: t
                .compaction_threshold
                .or(ns.compaction_threshold)
                .and_then(positive),
            replication_clusters: t
                .replication_clusters
                .as_ref()
                .unwrap_or(&ns.replication_clusters)
                .iter()
                .filter(|name| **name != c.cluster_name)
                .cloned()
                .collect(),
            offload_threshold_bytes: offload_threshold(
                topic_offload.and_then(|o| o.managed_ledger_offload_threshold_in_bytes),
                ns.namespace_offload_threshold_bytes(),
                c.offload_threshold_bytes,
            ),
            offload_threshold_secs: offload_threshold(
                topic_offload.and_then(|o| o.managed_ledger_offload_threshold_in_seconds),
                ns.namespace_offload_threshold_secs(),
                c.offload_threshold_secs,
            ),
            offload_deletion_lag_ms: topic_offload
                .and_then(|o| o.managed_ledger_offload_deletion_lag_in_millis)
                .or(ns.namespace_offload_deletion_lag_ms())
                .map_or(c.offload_deletion_lag_ms, |ms| {
                    u64::try_from(ms).unwrap_or(0)
                }),
            subscribe_rate: resolve_subscribe_rate(c, ns, t),
            subscription_expiration: match ns.subscription_expiration_time_minutes {
                Some(m) => positive(i64::from(m)),
                None => positive(
                    i64::try_from(c.subscription_expiration_time_minutes).unwrap_or(i64::MAX),
                ),
            }
            .map(|m| Duration::from_secs(m.saturating_mul(60))),
        }
    }
}

/// An offload threshold: the topic's, else the namespace's
/// ([`Policies::namespace_offload_threshold_bytes`]), else the broker's;
/// negative: never offload.
fn offload_threshold(topic: Option<i64>, namespace: Option<i64>, broker: i64) -> Option<u64> {
    u64::try_from(topic.or(namespace).unwrap_or(broker)).ok()
}

/// The subscribe rate per consumer: the topic's, else the namespace's for
/// this cluster, else the broker's.
fn resolve_subscribe_rate(c: &BrokerConfig, ns: &Policies, t: &TopicPolicies) -> Option<Rate> {
    match t
        .subscribe_rate
        .as_ref()
        .or(ns.cluster_subscribe_rate.get(&c.cluster_name))
    {
        Some(r) => positive(i64::from(r.subscribe_throttling_rate_per_consumer)).map(|n| Rate {
            per_period: n,
            period: Duration::from_secs(u64::try_from(r.rate_period_in_second).unwrap_or(1).max(1)),
        }),
        None => (c.subscribe_throttling_rate_per_consumer > 0).then(|| Rate {
            per_period: u64::from(c.subscribe_throttling_rate_per_consumer),
            period: Duration::from_secs(c.subscribe_rate_period_per_consumer_secs.max(1)),
        }),
    }
}

/// The rates a topic applies, resolved.
struct Rates {
    publish: RateLimits,
    dispatch: RateLimits,
    subscription_dispatch: RateLimits,
    replicator_dispatch: RateLimits,
}

/// Publish, topic, subscription and replicator dispatch rates: the topic's,
/// else the namespace's for this cluster, else the broker's.
fn resolve_rates(c: &BrokerConfig, ns: &Policies, t: &TopicPolicies) -> Rates {
    let cluster = &c.cluster_name;
    let publish = match t
        .publish_rate
        .as_ref()
        .or(ns.publish_max_message_rate.get(cluster))
    {
        Some(r) => publish_limits(r),
        None => broker_limits(
            c.max_publish_rate_per_topic_messages,
            c.max_publish_rate_per_topic_bytes,
        ),
    };
    // A dispatch rate: the topic's, else the namespace's for this cluster,
    // else the broker's (messages/s, bytes/s).
    let dispatch = |topic: &Option<p::DispatchRate>,
                    namespace: &BTreeMap<String, p::DispatchRate>,
                    broker: (u64, u64)| {
        match topic.as_ref().or(namespace.get(cluster)) {
            Some(r) => dispatch_limits(r),
            None => broker_limits(broker.0, broker.1),
        }
    };
    Rates {
        publish,
        dispatch: dispatch(
            &t.dispatch_rate,
            &ns.topic_dispatch_rate,
            (
                c.dispatch_rate_per_topic_messages,
                c.dispatch_rate_per_topic_bytes,
            ),
        ),
        subscription_dispatch: dispatch(
            &t.subscription_dispatch_rate,
            &ns.subscription_dispatch_rate,
            (
                c.dispatch_rate_per_subscription_messages,
                c.dispatch_rate_per_subscription_bytes,
            ),
        ),
        replicator_dispatch: dispatch(
            &t.replicator_dispatch_rate,
            &ns.replicator_dispatch_rate,
            (
                c.dispatch_rate_per_replicator_messages,
                c.dispatch_rate_per_replicator_bytes,
            ),
        ),
    }
}

/// When the topic is deleted for inactivity, if it is.
fn resolve_inactive(c: &BrokerConfig, ns: &Policies, t: &TopicPolicies) -> Option<InactiveRule> {
    match t.inactive_topic_policies.or(ns.inactive_topic_policies) {
        Some(i) => i.delete_while_inactive.then(|| InactiveRule {
            mode: i.inactive_topic_delete_mode,
            max_inactive: Duration::from_secs(
                u64::try_from(i.max_inactive_duration_seconds).unwrap_or(0),
            ),
        }),
        None => c.delete_inactive_topics_enabled.then(|| InactiveRule {
            mode: c.delete_inactive_topics_mode,
            max_inactive: Duration::from_secs(c.delete_inactive_topics_max_inactive_secs),
        }),
    }
}

/// The backlog quotas (size, age): the topic's map, else the namespace's,
/// else the broker's defaults.
fn resolve_quotas(
    c: &BrokerConfig,
    ns: &Policies,
    t: &TopicPolicies,
) -> (Option<Quota>, Option<Quota>) {
    let quotas = if t.back_log_quota_map.is_empty() {
        &ns.backlog_quota_map
    } else {
        &t.back_log_quota_map
    };
    let default_quota = |limit: i64| {
        positive(limit).map(|limit| Quota {
            limit,
            policy: c.backlog_quota_policy,
        })
    };
    let backlog_size = if quotas.contains_key(p::BACKLOG_DESTINATION_STORAGE) {
        quota(quotas.get(p::BACKLOG_DESTINATION_STORAGE), |q| q.limit_size)
    } else {
        default_quota(c.backlog_quota_limit_bytes)
    };
    let backlog_age = if quotas.contains_key(p::BACKLOG_MESSAGE_AGE) {
        quota(quotas.get(p::BACKLOG_MESSAGE_AGE), |q| {
            i64::from(q.limit_time)
        })
    } else {
        default_quota(c.backlog_quota_limit_secs)
    };
    (backlog_size, backlog_age)
}

/// Namespace records and topic policies, cached; entries are dropped when the
/// metadata store reports a change to them.
#[derive(Default)]
pub(crate) struct PolicyCache {
    namespaces: Mutex<HashMap<String, Arc<Policies>>>,
    topics: Mutex<HashMap<String, Arc<TopicPolicies>>>,
    /// Bumped on every change seen: a read that raced a change does not cache
    /// what it read.
    changes: AtomicU64,
    /// The scopes of the loaded topics, by partitioned topic name: a change
    /// moves only the scopes it may concern.
    scopes: Mutex<Scopes>,
}

/// What one topic's policies depend on — its namespace's record and its own
/// (or its partitioned topic's) — as a generation that moves whenever either
/// may have changed, and a notification at every move. A change elsewhere
/// (another topic's record created, another namespace's policy set) leaves
/// it alone, so a topic that ticks slowly (ADR 0027) is not woken by it.
#[derive(Debug, Default)]
pub(crate) struct PolicyScope {
    changes: AtomicU64,
    changed: tokio::sync::Notify,
}

impl PolicyScope {
    /// Moves whenever the policies of the scope's topics may have changed.
    pub(crate) fn generation(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Notified (`notify_waiters`) whenever [`PolicyScope::generation`] moves.
    pub(crate) fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    fn moved(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}

/// The scopes in use, held weakly (a topic's task holds its scope): dead
/// entries are dropped when the map has doubled since the last sweep.
#[derive(Default)]
struct Scopes {
    by_topic: HashMap<String, Weak<PolicyScope>>,
    sweep_at: usize,
}

impl Scopes {
    /// The live scopes `changed` selects (by partitioned topic name).
    fn live(&self, changed: impl Fn(&str) -> bool) -> Vec<Arc<PolicyScope>> {
        self.by_topic
            .iter()
            .filter(|(k, _)| changed(k))
            .filter_map(|(_, w)| w.upgrade())
            .collect()
    }
}

/// Which scopes a change to the metadata record at `key` concerns.
enum Concerns {
    /// `/topics/{tenant}/{namespace}/{domain}/{local}`: that topic's
    /// partitioned topic (a partition's own record or its parent's).
    Topic(String),
    /// `/namespaces/{tenant}/{namespace}`: every topic of it.
    Namespace(String),
    /// Anything else: every scope, to be safe.
    All,
}

fn concerns(key: &str, topic: bool) -> Concerns {
    let parts: Vec<&str> = key.trim_start_matches('/').split('/').collect();
    match (topic, parts.as_slice()) {
        (true, ["topics", tenant, ns, domain, local]) => {
            match TopicName::parse(&format!("{domain}://{tenant}/{ns}/{local}")) {
                Ok(name) => Concerns::Topic(name.partitioned_topic().to_string()),
                Err(_) => Concerns::All,
            }
        }
        (false, ["namespaces", tenant, ns]) => Concerns::Namespace(format!("{tenant}/{ns}")),
        _ => Concerns::All,
    }
}

/// The `tenant/namespace` of a full topic name (`domain://tenant/ns/local`).
fn namespace_of(topic: &str) -> Option<&str> {
    let rest = topic.split_once("://")?.1;
    let (ns, _) = rest.rsplit_once('/')?;
    Some(ns)
}

/// Cached entries are bounded; beyond this the cache starts over (it only
/// saves metadata reads).
const MAX_CACHED: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold whole values: a panicking holder leaves them consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn insert<T>(map: &Mutex<HashMap<String, Arc<T>>>, key: String, value: Arc<T>) {
    let mut m = lock(map);
    if m.len() >= MAX_CACHED {
        m.clear();
    }
    m.insert(key, value);
}

impl PolicyCache {
    /// A cache kept fresh by a watch over the namespace and topic records (a
    /// task on the current runtime; it ends when the store or the cache goes).
    pub(crate) fn watching(resources: &Resources) -> Arc<Self> {
        let cache = Arc::new(PolicyCache::default());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let namespaces = resources.store().watch("/namespaces");
            let topics = resources.store().watch("/topics");
            rt.spawn(watch(Arc::downgrade(&cache), namespaces, false));
            rt.spawn(watch(Arc::downgrade(&cache), topics, true));
        }
        cache
    }

    pub(crate) async fn namespace(
        &self,
        resources: &Resources,
        ns: &NamespaceName,
    ) -> Result<Arc<Policies>, MetadataError> {
        let key = ns.to_string();
        if let Some(p) = lock(&self.namespaces).get(&key) {
            return Ok(p.clone());
        }
        let before = self.changes.load(Ordering::Acquire);
        let p = Arc::new(resources.namespace(ns).await?);
        if self.changes.load(Ordering::Acquire) == before {
            insert(&self.namespaces, key, p.clone());
        }
        Ok(p)
    }

    /// The policies kept in `name`'s own record; empty if it has no record.
    async fn record(
        &self,
        resources: &Resources,
        name: &TopicName,
    ) -> Result<Arc<TopicPolicies>, MetadataError> {
        let key = name.to_string();
        if let Some(p) = lock(&self.topics).get(&key) {
            return Ok(p.clone());
        }
        let before = self.changes.load(Ordering::Acquire);
        let p = Arc::new(
            resources
                .topic(name)
                .await?
                .map(|r| r.policies)
                .unwrap_or_default(),
        );
        if self.changes.load(Ordering::Acquire) == before {
            insert(&self.topics, key, p.clone());
        }
        Ok(p)
    }

    /// The topic-level policies of `name`: a partition's own, if any were set
    /// on it, else its partitioned topic's.
    pub(crate) async fn topic(
        &self,
        resources: &Resources,
        name: &TopicName,
    ) -> Result<Arc<TopicPolicies>, MetadataError> {
        let own = self.record(resources, name).await?;
        if name.partition().is_none() || !own.is_empty() {
            return Ok(own);
        }
        self.record(resources, &name.partitioned_topic()).await
    }

    /// The scope of topic `name`'s policies (shared by the partitions of a
    /// partitioned topic): its generation is read before the policies are,
    /// and a topic re-resolves them only when it moved.
    pub(crate) fn scope(&self, name: &TopicName) -> Arc<PolicyScope> {
        let key = name.partitioned_topic().to_string();
        let mut scopes = lock(&self.scopes);
        if let Some(scope) = scopes.by_topic.get(&key).and_then(Weak::upgrade) {
            return scope;
        }
        let scope = Arc::new(PolicyScope::default());
        scopes.by_topic.insert(key, Arc::downgrade(&scope));
        if scopes.by_topic.len() >= scopes.sweep_at {
            scopes.by_topic.retain(|_, w| w.strong_count() > 0);
            scopes.sweep_at = (2 * scopes.by_topic.len()).max(1024);
        }
        scope
    }

    /// Drops a changed record. The cache's generation moves before the
    /// removal (a read that began earlier does not cache what it read); the
    /// generations of the scopes it concerns move after it (a topic that read
    /// its scope's generation before may have read the old record; one that
    /// reads it later finds the record gone), then their waiting topics are
    /// told.
    fn forget(&self, key: &str, topic: bool) {
        let concerned = concerns(key, topic);
        self.changes.fetch_add(1, Ordering::AcqRel);
        if topic {
            // `/topics/{tenant}/{namespace}/{domain}/{local}`
            let parts: Vec<&str> = key.trim_start_matches('/').split('/').collect();
            if let [_, tenant, ns, domain, local] = parts.as_slice() {
                lock(&self.topics).remove(&format!("{domain}://{tenant}/{ns}/{local}"));
            }
        } else if let Some(rest) = key.strip_prefix("/namespaces/") {
            lock(&self.namespaces).remove(rest);
        }
        self.changes.fetch_add(1, Ordering::AcqRel);
        let scopes = lock(&self.scopes);
        let moved = match &concerned {
            // One lookup: topic records change far more often than
            // namespaces (every topic created writes one).
            Concerns::Topic(name) => scopes
                .by_topic
                .get(name)
                .and_then(Weak::upgrade)
                .into_iter()
                .collect(),
            Concerns::Namespace(ns) => scopes.live(|k| namespace_of(k) == Some(ns.as_str())),
            Concerns::All => scopes.live(|_| true),
        };
        drop(scopes);
        moved.iter().for_each(|s| s.moved());
    }

    /// Drops every record (the watch lagged: any may have changed).
    fn clear(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        lock(&self.namespaces).clear();
        lock(&self.topics).clear();
        self.changes.fetch_add(1, Ordering::AcqRel);
        let moved = lock(&self.scopes).live(|_| true);
        moved.iter().for_each(|s| s.moved());
    }
}

async fn watch(cache: Weak<PolicyCache>, mut w: Watch, topics: bool) {
    while let Some(event) = w.next().await {
        let Some(cache) = cache.upgrade() else {
            return;
        };
        match event {
            Watched::Event(e) => cache.forget(&e.key, topics),
            Watched::Lagged { missed } => {
                tracing::debug!(missed, "policy watch lagged: dropping the cache");
                cache.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilonova_metadata::policies::{
        BacklogQuota, DispatchRate, InactiveTopicPolicies, PublishRate, RetentionPolicies,
    };

    #[test]
    fn broker_defaults_apply_when_nothing_is_set() {
        let c = BrokerConfig::default();
        let e = Effective::resolve(&c, &Policies::default(), &TopicPolicies::default());
        assert_eq!(
            e.retention,
            Retention {
                time_ms: Some(0),
                size_bytes: Some(0)
            }
        );
        assert_eq!(e.ttl, None);
        assert!(e.publish_rate.is_unlimited());
        assert_eq!(e.max_producers, None);
        assert_eq!(e.max_message_bytes, None);
        assert_eq!(e.backlog_size, None);
        assert!(!e.deduplication);
        assert!(e.delayed_delivery);
        assert_eq!(
            e.inactive,
            Some(InactiveRule {
                mode: InactiveTopicDeleteMode::DeleteWhenNoSubscriptions,
                max_inactive: Duration::from_secs(60)
            })
        );
    }

    #[test]
    fn topic_beats_namespace_beats_broker() {
        let c = BrokerConfig::default();
        let mut ns = Policies::default();
        ns.publish_max_message_rate.insert(
            c.cluster_name.clone(),
            PublishRate {
                publish_throttling_rate_in_msg: 30,
                publish_throttling_rate_in_byte: -1,
            },
        );
        ns.max_producers_per_topic = Some(3);
        ns.retention_policies = Some(RetentionPolicies {
            retention_time_in_minutes: -1,
            retention_size_in_mb: 10,
        });
        let mut t = TopicPolicies::default();
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(e.publish_rate.messages, Some(Rate::per_second(30)));
        assert_eq!(e.publish_rate.bytes, None);
        assert_eq!(e.max_producers, Some(3));
        assert_eq!(
            e.retention,
            Retention {
                time_ms: None,
                size_bytes: Some(10 << 20)
            }
        );
        t.max_producers_per_topic = Some(0);
        t.dispatch_rate = Some(DispatchRate {
            dispatch_throttling_rate_in_msg: 10,
            dispatch_throttling_rate_in_byte: -1,
            relative_to_publish_rate: false,
            rate_period_in_second: 5,
        });
        t.max_message_size = Some(1024);
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(e.max_producers, None, "0 at topic level is unlimited");
        assert_eq!(
            e.dispatch_rate.messages,
            Some(Rate {
                per_period: 10,
                period: Duration::from_secs(5)
            })
        );
        assert_eq!(e.max_message_bytes, Some(1024));
    }

    #[test]
    fn topic_unacked_limits_and_compaction_threshold_override_the_namespaces() {
        let c = BrokerConfig {
            max_unacked_messages_per_consumer: 1000,
            ..BrokerConfig::default()
        };
        let ns = Policies {
            max_unacked_messages_per_subscription: Some(500),
            compaction_threshold: Some(1 << 20),
            ..Policies::default()
        };
        let mut t = TopicPolicies::default();
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(e.max_unacked_per_consumer, Some(1000), "the broker's");
        assert_eq!(e.max_unacked_per_subscription, Some(500), "the namespace's");
        assert_eq!(e.compaction_threshold_bytes, Some(1 << 20));

        t.max_unacked_messages_on_consumer = Some(3);
        t.max_unacked_messages_on_subscription = Some(7);
        t.compaction_threshold = Some(4096);
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(e.max_unacked_per_consumer, Some(3));
        assert_eq!(e.max_unacked_per_subscription, Some(7));
        assert_eq!(e.compaction_threshold_bytes, Some(4096));

        t.max_unacked_messages_on_consumer = Some(0);
        t.max_unacked_messages_on_subscription = Some(0);
        t.compaction_threshold = Some(0);
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(
            e.max_unacked_per_consumer, None,
            "0 at topic level is unlimited"
        );
        assert_eq!(e.max_unacked_per_subscription, None);
        assert_eq!(e.compaction_threshold_bytes, None, "0: never compact");
    }

    #[test]
    fn topic_offload_policies_override_the_namespaces_which_override_the_brokers() {
        let c = BrokerConfig::default();
        let mut ns = Policies::default();
        let mut t = TopicPolicies::default();
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(e.offload_threshold_bytes, None, "the broker's -1: never");
        assert_eq!(e.offload_threshold_secs, None);
        assert_eq!(e.offload_deletion_lag_ms, 14_400_000, "the broker's 4 h");

        let c = BrokerConfig {
            offload_threshold_bytes: 1 << 30,
            offload_threshold_secs: 3600,
            offload_deletion_lag_ms: 60_000,
            ..BrokerConfig::default()
        };
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(e.offload_threshold_bytes, Some(1 << 30));
        assert_eq!(e.offload_threshold_secs, Some(3600));
        assert_eq!(e.offload_deletion_lag_ms, 60_000);

        ns.offload_threshold = Some(0);
        ns.offload_threshold_in_seconds = Some(-2);
        ns.offload_deletion_lag_ms = Some(5_000);
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(
            e.offload_threshold_bytes,
            Some(0),
            "0: every sealed segment"
        );
        assert_eq!(e.offload_threshold_secs, None, "negative: never");
        assert_eq!(e.offload_deletion_lag_ms, 5_000);

        ns.offload_threshold = Some(-1);
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(
            e.offload_threshold_bytes,
            Some(1 << 30),
            "a namespace's -1 is Pulsar's unset: the broker's applies"
        );
        ns.offload_policies = Some(p::OffloadPolicies {
            managed_ledger_offload_driver: Some("aws-s3".into()),
            managed_ledger_offload_threshold_in_bytes: Some(4096),
            ..p::OffloadPolicies::default()
        });
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(
            (e.offload_threshold_bytes, e.offload_deletion_lag_ms),
            (Some(4096), 5_000),
            "the namespace's offload policies first, then its older fields"
        );

        t.offload_policies = Some(p::OffloadPolicies {
            managed_ledger_offload_threshold_in_bytes: Some(-1),
            managed_ledger_offload_threshold_in_seconds: Some(60),
            managed_ledger_offload_deletion_lag_in_millis: Some(0),
            ..p::OffloadPolicies::default()
        });
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(e.offload_threshold_bytes, None, "the topic's -1: never");
        assert_eq!(e.offload_threshold_secs, Some(60));
        assert_eq!(e.offload_deletion_lag_ms, 0);

        t.offload_policies = Some(p::OffloadPolicies {
            managed_ledger_offload_driver: Some("aws-s3".into()),
            ..p::OffloadPolicies::default()
        });
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(
            (e.offload_threshold_bytes, e.offload_deletion_lag_ms),
            (Some(4096), 5_000),
            "fields the topic leaves out fall back, field by field"
        );
    }

    #[test]
    fn topic_replication_clusters_replace_the_namespaces() {
        let c = BrokerConfig {
            cluster_name: "a".into(),
            ..BrokerConfig::default()
        };
        let ns = Policies {
            replication_clusters: ["a", "b", "c"].map(String::from).into(),
            ..Policies::default()
        };
        let mut t = TopicPolicies::default();
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(
            e.replication_clusters,
            ["b", "c"],
            "the namespace's, less this cluster"
        );
        t.replication_clusters = Some(["a".to_string()].into());
        let e = Effective::resolve(&c, &ns, &t);
        assert!(
            e.replication_clusters.is_empty(),
            "the topic's own: local only"
        );
        t.replication_clusters = Some(["c".to_string()].into());
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(e.replication_clusters, ["c"]);
    }

    #[test]
    fn replicator_dispatch_rate_topic_beats_namespace_beats_broker() {
        let c = BrokerConfig {
            dispatch_rate_per_replicator_messages: 500,
            ..BrokerConfig::default()
        };
        let rate = |msgs, period| DispatchRate {
            dispatch_throttling_rate_in_msg: msgs,
            dispatch_throttling_rate_in_byte: -1,
            relative_to_publish_rate: false,
            rate_period_in_second: period,
        };
        let mut ns = Policies::default();
        let mut t = TopicPolicies::default();
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(
            e.replicator_dispatch_rate.messages,
            Some(Rate::per_second(500))
        );
        assert_eq!(e.replicator_dispatch_rate.bytes, None);
        ns.replicator_dispatch_rate
            .insert("other-cluster".into(), rate(1, 1));
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(
            e.replicator_dispatch_rate.messages,
            Some(Rate::per_second(500)),
            "another cluster's namespace rate does not apply here"
        );
        ns.replicator_dispatch_rate
            .insert(c.cluster_name.clone(), rate(20, 1));
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(
            e.replicator_dispatch_rate.messages,
            Some(Rate::per_second(20))
        );
        t.replicator_dispatch_rate = Some(rate(30, 2));
        let e = Effective::resolve(&c, &ns, &t);
        assert_eq!(
            e.replicator_dispatch_rate.messages,
            Some(Rate {
                per_period: 30,
                period: Duration::from_secs(2)
            })
        );
        t.replicator_dispatch_rate = Some(rate(-1, 1));
        let e = Effective::resolve(&c, &ns, &t);
        assert!(
            e.replicator_dispatch_rate.is_unlimited(),
            "-1 at topic level lifts it"
        );
    }

    #[test]
    fn quotas_and_inactive_rules_resolve() {
        let c = BrokerConfig::default();
        let mut ns = Policies::default();
        ns.backlog_quota_map.insert(
            p::BACKLOG_DESTINATION_STORAGE.into(),
            BacklogQuota {
                limit_size: 1000,
                limit_time: -1,
                policy: BacklogQuotaPolicy::ProducerException,
            },
        );
        ns.inactive_topic_policies = Some(InactiveTopicPolicies {
            inactive_topic_delete_mode: InactiveTopicDeleteMode::DeleteWhenSubscriptionsCaughtUp,
            max_inactive_duration_seconds: 5,
            delete_while_inactive: false,
        });
        let e = Effective::resolve(&c, &ns, &TopicPolicies::default());
        assert_eq!(
            e.backlog_size,
            Some(Quota {
                limit: 1000,
                policy: BacklogQuotaPolicy::ProducerException
            })
        );
        assert_eq!(e.backlog_age, None);
        assert_eq!(e.inactive, None, "deleteWhileInactive=false keeps topics");
    }

    #[test]
    fn subscription_expiration_is_the_namespaces_minutes_else_the_brokers() {
        let mut c = BrokerConfig::default();
        let mut ns = Policies::default();
        let t = TopicPolicies::default();
        assert_eq!(
            Effective::resolve(&c, &ns, &t).subscription_expiration,
            None
        );
        c.subscription_expiration_time_minutes = 10;
        assert_eq!(
            Effective::resolve(&c, &ns, &t).subscription_expiration,
            Some(Duration::from_secs(600))
        );
        ns.subscription_expiration_time_minutes = Some(2);
        assert_eq!(
            Effective::resolve(&c, &ns, &t).subscription_expiration,
            Some(Duration::from_secs(120))
        );
        ns.subscription_expiration_time_minutes = Some(0);
        assert_eq!(
            Effective::resolve(&c, &ns, &t).subscription_expiration,
            None,
            "0 in the namespace turns the broker's default off"
        );
    }

    #[test]
    fn subscribe_rate_is_the_topics_else_the_namespaces_else_the_brokers() {
        let mut c = BrokerConfig::default();
        let mut ns = Policies::default();
        let mut t = TopicPolicies::default();
        assert_eq!(Effective::resolve(&c, &ns, &t).subscribe_rate, None);
        c.subscribe_throttling_rate_per_consumer = 5;
        assert_eq!(
            Effective::resolve(&c, &ns, &t).subscribe_rate,
            Some(Rate {
                per_period: 5,
                period: Duration::from_secs(30)
            })
        );
        ns.cluster_subscribe_rate.insert(
            c.cluster_name.clone(),
            p::SubscribeRate {
                subscribe_throttling_rate_per_consumer: 2,
                rate_period_in_second: 10,
            },
        );
        assert_eq!(
            Effective::resolve(&c, &ns, &t).subscribe_rate,
            Some(Rate {
                per_period: 2,
                period: Duration::from_secs(10)
            })
        );
        t.subscribe_rate = Some(p::SubscribeRate {
            subscribe_throttling_rate_per_consumer: -1,
            rate_period_in_second: 30,
        });
        assert_eq!(
            Effective::resolve(&c, &ns, &t).subscribe_rate,
            None,
            "-1 at topic level is unlimited"
        );
    }

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name).unwrap()
    }

    #[test]
    fn a_change_moves_only_the_scopes_it_concerns() {
        let cache = PolicyCache::default();
        let a = cache.scope(&topic("persistent://t1/ns1/a"));
        let partition = cache.scope(&topic("persistent://t1/ns1/a-partition-2"));
        assert!(
            Arc::ptr_eq(&a, &partition),
            "partitions share their topic's scope"
        );
        let b = cache.scope(&topic("persistent://t1/ns1/b"));
        let elsewhere = cache.scope(&topic("non-persistent://t1/ns2/a"));
        let gens = || [a.generation(), b.generation(), elsewhere.generation()];

        let g0 = gens();
        cache.forget("/topics/t1/ns1/persistent/a-partition-2", true);
        let g1 = gens();
        assert!(
            g1[0] > g0[0],
            "a partition's own record moves its topic's scope"
        );
        assert_eq!(g1[1..], g0[1..], "and no other");

        cache.forget("/topics/t1/ns1/persistent/c", true);
        cache.forget("/namespaces/t1/ns3", false);
        assert_eq!(gens(), g1, "another topic's record, another namespace's");

        cache.forget("/namespaces/t1/ns1", false);
        let g2 = gens();
        assert!(
            g2[0] > g1[0] && g2[1] > g1[1],
            "the namespace's topics move"
        );
        assert_eq!(g2[2], g1[2], "another namespace's do not");

        cache.forget("/namespaces/t1", false);
        let g3 = gens();
        assert!(
            g3.iter().zip(g2).all(|(n, o)| *n > o),
            "a key of another shape moves all"
        );
        cache.clear();
        assert!(
            gens().iter().zip(g3).all(|(n, o)| *n > o),
            "so does a lagged watch"
        );
    }

    #[test]
    fn a_change_wakes_the_topics_waiting_on_its_scope() {
        use futures_util::FutureExt;
        let cache = PolicyCache::default();
        let a = cache.scope(&topic("persistent://t1/ns1/a"));
        let b = cache.scope(&topic("persistent://t1/ns1/b"));
        let mut on_a = std::pin::pin!(a.changed().notified());
        let mut on_b = std::pin::pin!(b.changed().notified());
        on_a.as_mut().enable();
        on_b.as_mut().enable();
        cache.forget("/topics/t1/ns1/persistent/a", true);
        assert!(on_a.now_or_never().is_some(), "a's waiter is woken");
        assert!(on_b.now_or_never().is_none(), "b's is not");
    }

    #[test]
    fn scopes_no_topic_holds_are_swept() {
        let cache = PolicyCache::default();
        let kept = cache.scope(&topic("persistent://t1/ns1/kept"));
        for i in 0..10_000 {
            drop(cache.scope(&topic(&format!("persistent://t1/ns1/t{i}"))));
        }
        let scopes = lock(&cache.scopes);
        assert!(
            scopes.by_topic.len() <= 1024,
            "{} scopes",
            scopes.by_topic.len()
        );
        assert!(scopes.by_topic.contains_key("persistent://t1/ns1/kept"));
        drop(scopes);
        assert!(Arc::ptr_eq(
            &kept,
            &cache.scope(&topic("persistent://t1/ns1/kept"))
        ));
    }
}
