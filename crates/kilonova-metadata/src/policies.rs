//! Cluster, tenant and namespace records and the policies, in Pulsar's JSON
//! shapes (field names as the Pulsar admin API sends them), with their checks.
//!
//! A policy left unset at topic level falls back to the namespace's, then to
//! the broker's default: [`resolve`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{MetadataError, Result};

pub use crate::schema::CompatibilityStrategy;
/// Grants are the authorizer's inputs; the namespace's record keeps them.
pub use kilonova_auth::grants::{AuthAction, AuthPolicies, UnknownAction};

/// A cluster: where its brokers are reached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterData {
    pub service_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_url_tls: Option<String>,
    pub broker_service_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_service_url_tls: Option<String>,
}

/// A tenant: who administers it and where its namespaces may live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TenantInfo {
    pub admin_roles: BTreeSet<String>,
    pub allowed_clusters: BTreeSet<String>,
}

/// A namespace's bundles (hash ranges owned by brokers; stored, used for ownership later).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BundlesData {
    pub boundaries: Vec<String>,
    pub num_bundles: u32,
}

/// The largest bundle count accepted.
pub const MAX_BUNDLES: u32 = 1024;
/// Bundles of a namespace created without a count.
pub const DEFAULT_BUNDLES: u32 = 4;

impl BundlesData {
    /// `n` equal ranges of the 32-bit hash space.
    pub fn even(n: u32) -> Result<Self> {
        if n == 0 || n > MAX_BUNDLES {
            return Err(MetadataError::Invalid(format!(
                "bundles must be between 1 and {MAX_BUNDLES}, not {n}"
            )));
        }
        // As Pulsar cuts them: equal steps of 2^32 / n, the last boundary
        // the top of the hash space whatever the rounding left.
        let step = (1u64 << 32) / u64::from(n);
        let boundaries = (0..=u64::from(n))
            .map(|i| match i == u64::from(n) {
                true => 0xffff_ffff,
                false => i * step,
            })
            .map(|b| format!("0x{b:08x}"))
            .collect();
        Ok(BundlesData {
            boundaries,
            num_bundles: n,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicies {
    /// -1: forever; 0: none.
    pub retention_time_in_minutes: i32,
    /// -1: unlimited; 0: none.
    #[serde(rename = "retentionSizeInMB")]
    pub retention_size_in_mb: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BacklogQuotaPolicy {
    ProducerRequestHold,
    ProducerException,
    ConsumerBacklogEviction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BacklogQuota {
    /// Bytes; -1: unlimited.
    #[serde(default = "minus_one")]
    pub limit_size: i64,
    /// Seconds; -1: unlimited.
    #[serde(default = "minus_one_i32")]
    pub limit_time: i32,
    pub policy: BacklogQuotaPolicy,
}

/// The backlog quota types (the keys of `backlog_quota_map`).
pub const BACKLOG_DESTINATION_STORAGE: &str = "destination_storage";
pub const BACKLOG_MESSAGE_AGE: &str = "message_age";

fn minus_one() -> i64 {
    -1
}

fn minus_one_i32() -> i32 {
    -1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishRate {
    /// Messages per second; -1 or 0: unlimited.
    #[serde(default = "minus_one_i32")]
    pub publish_throttling_rate_in_msg: i32,
    /// Bytes per second; -1 or 0: unlimited.
    #[serde(default = "minus_one")]
    pub publish_throttling_rate_in_byte: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchRate {
    #[serde(default = "minus_one_i32")]
    pub dispatch_throttling_rate_in_msg: i32,
    #[serde(default = "minus_one")]
    pub dispatch_throttling_rate_in_byte: i64,
    #[serde(default)]
    pub relative_to_publish_rate: bool,
    #[serde(default = "one")]
    pub rate_period_in_second: i32,
}

fn one() -> i32 {
    1
}

/// How often one consumer may subscribe (Pulsar's `SubscribeRate`): at most
/// `subscribe_throttling_rate_per_consumer` SUBSCRIBEs per
/// `rate_period_in_second` from one consumer (client address, consumer name
/// and id), to stop a reconnecting consumer from flooding the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeRate {
    /// -1 or 0: unlimited.
    #[serde(default = "minus_one_i32")]
    pub subscribe_throttling_rate_per_consumer: i32,
    #[serde(default = "thirty")]
    pub rate_period_in_second: i32,
}

fn thirty() -> i32 {
    30
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InactiveTopicDeleteMode {
    DeleteWhenNoSubscriptions,
    DeleteWhenSubscriptionsCaughtUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InactiveTopicPolicies {
    pub inactive_topic_delete_mode: InactiveTopicDeleteMode,
    pub max_inactive_duration_seconds: i32,
    pub delete_while_inactive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopicType {
    Partitioned,
    NonPartitioned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoTopicCreationOverride {
    pub allow_auto_topic_creation: bool,
    #[serde(default = "non_partitioned")]
    pub topic_type: TopicType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_num_partitions: Option<u32>,
}

fn non_partitioned() -> TopicType {
    TopicType::NonPartitioned
}

/// Delayed delivery (Pulsar's `DelayedDeliveryPolicies`): whether messages
/// with a delivery time are held back, and how finely that time is tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelayedDeliveryPolicies {
    pub active: bool,
    /// Milliseconds; accepted and stored (Kilonova tracks delivery times exactly).
    #[serde(default = "default_tick_time")]
    pub tick_time: i64,
}

fn default_tick_time() -> i64 {
    1000
}

/// A namespace's record: its bundles and policies (Pulsar's `Policies`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policies {
    pub bundles: BundlesData,
    pub replication_clusters: BTreeSet<String>,
    pub backlog_quota_map: BTreeMap<String, BacklogQuota>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_ttl_in_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_policies: Option<RetentionPolicies>,
    /// Per cluster, as Pulsar keys it.
    #[serde(rename = "publishMaxMessageRate")]
    pub publish_max_message_rate: BTreeMap<String, PublishRate>,
    #[serde(rename = "topicDispatchRate")]
    pub topic_dispatch_rate: BTreeMap<String, DispatchRate>,
    #[serde(rename = "subscriptionDispatchRate")]
    pub subscription_dispatch_rate: BTreeMap<String, DispatchRate>,
    /// Per cluster, as Pulsar keys it.
    #[serde(rename = "clusterSubscribeRate")]
    pub cluster_subscribe_rate: BTreeMap<String, SubscribeRate>,
    /// A durable subscription without consumers is deleted once it has been
    /// inactive this long (minutes; 0: never; unset: the broker's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_expiration_time_minutes: Option<i32>,
    /// What each replicator of the namespace's topics sends to a remote cluster.
    #[serde(rename = "replicatorDispatchRate")]
    pub replicator_dispatch_rate: BTreeMap<String, DispatchRate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inactive_topic_policies: Option<InactiveTopicPolicies>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_producers_per_topic: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consumers_per_topic: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consumers_per_subscription: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_topics_per_namespace: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delayed_delivery_policies: Option<DelayedDeliveryPolicies>,
    /// A consumer gets no more messages while it has this many unacknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unacked_messages_per_consumer: Option<i32>,
    /// A subscription dispatches nothing while it has this many unacknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unacked_messages_per_subscription: Option<i32>,
    #[serde(
        rename = "deduplicationEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub deduplication_enabled: Option<bool>,
    #[serde(
        rename = "autoTopicCreationOverride",
        skip_serializing_if = "Option::is_none"
    )]
    pub auto_topic_creation_override: Option<AutoTopicCreationOverride>,
    /// Permissions granted in the namespace and on its topics.
    pub auth_policies: AuthPolicies,
    /// Set while the namespace is being deleted.
    pub deleted: bool,
    /// How new schema versions of its topics are checked (`UNDEFINED`: the
    /// broker default, `FULL`).
    #[serde(skip_serializing_if = "CompatibilityStrategy::is_undefined")]
    pub schema_compatibility_strategy: CompatibilityStrategy,
    /// Bytes of uncompacted backlog that start a compaction (Pulsar's `compaction_threshold`; 0: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_threshold: Option<i64>,
    /// Bytes of a topic kept in local storage before older sealed segments
    /// are offloaded (Pulsar's `offload_threshold`; 0: offload every sealed
    /// segment, negative: never; unset: the broker's default). Pulsar stores
    /// -1 for "unset", so a -1 from the admin API unsets it ([`OFFLOAD_UNSET`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload_threshold: Option<i64>,
    /// Age (seconds) past which sealed segments are offloaded (Pulsar's
    /// `offload_threshold_in_seconds`; 0: at once, negative: never; unset:
    /// the broker's default; -1 unsets, as for `offload_threshold`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload_threshold_in_seconds: Option<i64>,
    /// How long the local copy of an offloaded segment is kept (Pulsar's
    /// `offload_deletion_lag_ms`; unset: the broker's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload_deletion_lag_ms: Option<i64>,
    /// The namespace's offload policies (Pulsar's `offload_policies`): where
    /// offloaded segments go, and thresholds and a deletion lag that take
    /// precedence over the three fields above, field by field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload_policies: Option<OffloadPolicies>,
}

impl Policies {
    /// The namespace's offload size threshold: its offload policies', else
    /// `offload_threshold` (whose -1 is unset, as Pulsar's
    /// `OffloadPoliciesImpl.oldPoliciesCompatible` reads it).
    pub fn namespace_offload_threshold_bytes(&self) -> Option<i64> {
        self.offload_policies
            .as_ref()
            .and_then(|o| o.managed_ledger_offload_threshold_in_bytes)
            .or(self.offload_threshold.filter(|v| *v != OFFLOAD_UNSET))
    }

    /// The namespace's offload age threshold (as [`Self::namespace_offload_threshold_bytes`]).
    pub fn namespace_offload_threshold_secs(&self) -> Option<i64> {
        self.offload_policies
            .as_ref()
            .and_then(|o| o.managed_ledger_offload_threshold_in_seconds)
            .or(self
                .offload_threshold_in_seconds
                .filter(|v| *v != OFFLOAD_UNSET))
    }

    /// The namespace's offload deletion lag: its offload policies', else
    /// `offload_deletion_lag_ms`.
    pub fn namespace_offload_deletion_lag_ms(&self) -> Option<i64> {
        self.offload_policies
            .as_ref()
            .and_then(|o| o.managed_ledger_offload_deletion_lag_in_millis)
            .or(self.offload_deletion_lag_ms)
    }
}

/// The value Pulsar's `Policies` holds for an offload threshold nobody set:
/// a namespace answers it when unset, and setting it unsets the threshold.
pub const OFFLOAD_UNSET: i64 = -1;

/// Topic-level offload policies (Pulsar's `OffloadPolicies`, as
/// `pulsar-admin topics set-offload-policies` sends them). Each field left
/// out (or `null`) falls back to the namespace's, then the broker's.
///
/// Only what Kilonova applies is kept: the thresholds, the deletion lag, and
/// where offloaded segments go (driver, bucket, region, endpoint). Other
/// fields Pulsar sends — credentials among them, which come only from the
/// broker's configuration here — are accepted and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OffloadPolicies {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_driver: Option<String>,
    /// Bytes kept locally (0: offload every sealed segment, negative: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_threshold_in_bytes: Option<i64>,
    /// Seconds (0: at once, negative: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_threshold_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_deletion_lag_in_millis: Option<i64>,
    /// Where the S3 drivers put offloaded segments (Pulsar's names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_managed_ledger_offload_bucket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_managed_ledger_offload_region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_managed_ledger_offload_service_endpoint: Option<String>,
    /// The same, under Pulsar's driver-neutral names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_bucket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_service_endpoint: Option<String>,
}

/// The offload drivers Pulsar knows (`OffloadPoliciesImpl.DRIVER_NAMES`).
pub const OFFLOAD_DRIVERS: [&str; 6] = [
    "S3",
    "aws-s3",
    "google-cloud-storage",
    "filesystem",
    "azureblob",
    "aliyun-oss",
];

/// Topic-level overrides: every field unset falls back to the namespace's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicPolicies {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_policies: Option<RetentionPolicies>,
    #[serde(
        rename = "messageTTLInSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub message_ttl_in_seconds: Option<i32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub back_log_quota_map: BTreeMap<String, BacklogQuota>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<PublishRate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch_rate: Option<DispatchRate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_dispatch_rate: Option<DispatchRate>,
    /// What each of the topic's replicators sends to a remote cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicator_dispatch_rate: Option<DispatchRate>,
    /// The clusters the topic replicates to, instead of its namespace's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_clusters: Option<BTreeSet<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe_rate: Option<SubscribeRate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inactive_topic_policies: Option<InactiveTopicPolicies>,
    #[serde(
        rename = "maxProducerPerTopic",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_producers_per_topic: Option<i32>,
    #[serde(
        rename = "maxConsumerPerTopic",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_consumers_per_topic: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consumers_per_subscription: Option<i32>,
    /// Bytes (metadata + payload) of the largest message a producer may send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deduplication_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delayed_delivery: Option<DelayedDeliveryPolicies>,
    /// Bytes of uncompacted backlog that start a compaction (0: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_threshold: Option<i64>,
    /// A consumer gets no more messages while it has this many unacknowledged
    /// (Pulsar's topic-level name differs from the namespace's `…PerConsumer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unacked_messages_on_consumer: Option<i32>,
    /// A subscription dispatches nothing while it has this many unacknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unacked_messages_on_subscription: Option<i32>,
    /// The topic's offload thresholds and deletion lag (Pulsar keeps them
    /// inside the topic's `offloadPolicies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload_policies: Option<OffloadPolicies>,
}

impl TopicPolicies {
    pub fn is_empty(&self) -> bool {
        *self == TopicPolicies::default()
    }
}

/// Picks the topic's value, else the namespace's, else the broker default.
pub fn resolve<T: Clone>(topic: Option<&T>, namespace: Option<&T>, broker: T) -> T {
    topic.or(namespace).cloned().unwrap_or(broker)
}

fn invalid(what: &str, value: impl std::fmt::Display, rule: &str) -> MetadataError {
    MetadataError::Invalid(format!("{what} {value} is out of range: {rule}"))
}

/// A count limit: 0 (unlimited) or more.
pub fn check_limit(what: &str, v: i32) -> Result<()> {
    if v < 0 {
        return Err(invalid(what, v, "must be 0 (no limit) or more"));
    }
    Ok(())
}

/// A compaction threshold: 0 (never) or more bytes.
pub fn check_compaction_threshold(bytes: i64) -> Result<()> {
    if bytes < 0 {
        return Err(invalid(
            "compaction threshold",
            bytes,
            "must be 0 (no automatic compaction) or more bytes",
        ));
    }
    Ok(())
}

/// An offload deletion lag: 0 (drop the local copy at once) or more milliseconds.
pub fn check_offload_deletion_lag(ms: i64) -> Result<()> {
    if ms < 0 {
        return Err(invalid(
            "offload deletion lag",
            ms,
            "must be 0 or more milliseconds",
        ));
    }
    Ok(())
}

/// A namespace's offload policies: as a topic's, and the driver and (but for
/// the filesystem driver) the bucket must be given — Pulsar's
/// `validateOffloadPolicies`, with its words and its 412.
pub fn check_namespace_offload_policies(o: &OffloadPolicies) -> Result<()> {
    let Some(driver) = &o.managed_ledger_offload_driver else {
        return Err(driver_not_supported());
    };
    check_offload_policies(o)?;
    let bucket = o
        .s3_managed_ledger_offload_bucket
        .as_ref()
        .or(o.managed_ledger_offload_bucket.as_ref());
    if !driver.eq_ignore_ascii_case("filesystem") && bucket.is_none_or(|b| b.is_empty()) {
        return Err(MetadataError::Precondition(
            "The bucket must be specified for namespace offload.".into(),
        ));
    }
    Ok(())
}

fn driver_not_supported() -> MetadataError {
    MetadataError::Precondition(format!(
        "The driver is not supported, support value: {}",
        OFFLOAD_DRIVERS.join(",")
    ))
}

/// Topic-level offload policies: a driver Pulsar knows (its words, 412),
/// and a deletion lag of 0 or more.
pub fn check_offload_policies(o: &OffloadPolicies) -> Result<()> {
    if let Some(driver) = &o.managed_ledger_offload_driver {
        if !OFFLOAD_DRIVERS
            .iter()
            .any(|d| d.eq_ignore_ascii_case(driver))
        {
            return Err(driver_not_supported());
        }
    }
    if let Some(ms) = o.managed_ledger_offload_deletion_lag_in_millis {
        check_offload_deletion_lag(ms)?;
    }
    Ok(())
}

pub fn check_ttl(seconds: i32) -> Result<()> {
    check_limit("message TTL", seconds)
}

pub fn check_retention(r: &RetentionPolicies) -> Result<()> {
    if r.retention_time_in_minutes < -1 {
        return Err(invalid(
            "retention time",
            r.retention_time_in_minutes,
            "-1 (forever) or more",
        ));
    }
    if r.retention_size_in_mb < -1 {
        return Err(invalid(
            "retention size",
            r.retention_size_in_mb,
            "-1 (unlimited) or more",
        ));
    }
    Ok(())
}

pub fn check_backlog_quota(q: &BacklogQuota) -> Result<()> {
    if q.limit_size < -1 || q.limit_time < -1 {
        return Err(MetadataError::Invalid(format!(
            "backlog quota limits must be -1 (unlimited) or more, not size {} / time {}",
            q.limit_size, q.limit_time
        )));
    }
    Ok(())
}

pub fn check_publish_rate(r: &PublishRate) -> Result<()> {
    if r.publish_throttling_rate_in_msg < -1 || r.publish_throttling_rate_in_byte < -1 {
        return Err(MetadataError::Invalid(
            "publish rates must be -1 (unlimited) or more".into(),
        ));
    }
    Ok(())
}

pub fn check_dispatch_rate(r: &DispatchRate) -> Result<()> {
    if r.dispatch_throttling_rate_in_msg < -1
        || r.dispatch_throttling_rate_in_byte < -1
        || r.rate_period_in_second < 1
    {
        return Err(MetadataError::Invalid(
            "dispatch rates must be -1 (unlimited) or more, over a period of 1 s or more".into(),
        ));
    }
    Ok(())
}

pub fn check_subscribe_rate(r: &SubscribeRate) -> Result<()> {
    if r.subscribe_throttling_rate_per_consumer < -1 || r.rate_period_in_second < 1 {
        return Err(MetadataError::Invalid(format!(
            "a subscribe rate must be -1 (unlimited) or more per consumer, over a period of 1 s or more, not {} per {} s",
            r.subscribe_throttling_rate_per_consumer, r.rate_period_in_second
        )));
    }
    Ok(())
}

/// A topic's replication clusters: at least one, and not Pulsar's
/// pseudo-cluster `global` (that they exist is the caller's check).
pub fn check_replication_clusters(clusters: &BTreeSet<String>) -> Result<()> {
    if clusters.is_empty() {
        return Err(MetadataError::Precondition(
            "ClusterIds should not be null or empty".into(),
        ));
    }
    if clusters.contains("global") {
        return Err(MetadataError::Precondition(
            "Cannot specify global in the list of replication clusters".into(),
        ));
    }
    Ok(())
}

/// A subscription expiration time: 0 (never) or more minutes.
pub fn check_subscription_expiration(minutes: i32) -> Result<()> {
    check_limit("subscription expiration time", minutes)
}

pub fn check_inactive_topic_policies(p: &InactiveTopicPolicies) -> Result<()> {
    if p.max_inactive_duration_seconds < 0 {
        return Err(invalid(
            "max inactive duration",
            p.max_inactive_duration_seconds,
            "0 or more seconds",
        ));
    }
    Ok(())
}

pub fn check_auto_topic_creation(o: &AutoTopicCreationOverride) -> Result<()> {
    match (o.topic_type, o.default_num_partitions) {
        (TopicType::Partitioned, None | Some(0)) if o.allow_auto_topic_creation => {
            Err(MetadataError::Invalid(
                "partitioned auto-creation needs defaultNumPartitions > 0".into(),
            ))
        }
        (_, Some(n)) if n > crate::MAX_PARTITIONS => Err(MetadataError::Invalid(format!(
            "defaultNumPartitions {n} is more than the {} a partitioned topic may have",
            crate::MAX_PARTITIONS
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulsar_shaped_json_round_trips() {
        let p: Policies = serde_json::from_str(
            r#"{"bundles":{"boundaries":["0x00000000","0xffffffff"],"numBundles":1},
                "retention_policies":{"retentionTimeInMinutes":180,"retentionSizeInMB":10240},
                "publishMaxMessageRate":{"standalone":{"publishThrottlingRateInMsg":30,"publishThrottlingRateInByte":-1}},
                "autoTopicCreationOverride":{"allowAutoTopicCreation":true,"topicType":"partitioned","defaultNumPartitions":2},
                "unknown_field_from_a_newer_pulsar":1}"#,
        )
        .unwrap();
        assert_eq!(p.retention_policies.unwrap().retention_size_in_mb, 10240);
        assert_eq!(
            p.publish_max_message_rate["standalone"].publish_throttling_rate_in_msg,
            30
        );
        let back: Policies = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let p: Policies = serde_json::from_str(
            r#"{"clusterSubscribeRate":{"standalone":{"subscribeThrottlingRatePerConsumer":2,"ratePeriodInSecond":10}},
                "subscription_expiration_time_minutes":30}"#,
        )
        .unwrap();
        assert_eq!(
            p.cluster_subscribe_rate["standalone"],
            SubscribeRate {
                subscribe_throttling_rate_per_consumer: 2,
                rate_period_in_second: 10
            }
        );
        assert_eq!(p.subscription_expiration_time_minutes, Some(30));
        let r: SubscribeRate = serde_json::from_str("{}").unwrap();
        assert_eq!(
            (
                r.subscribe_throttling_rate_per_consumer,
                r.rate_period_in_second
            ),
            (-1, 30),
            "Pulsar's defaults"
        );
        assert!(check_subscribe_rate(&r).is_ok());
        assert!(check_subscribe_rate(&SubscribeRate {
            subscribe_throttling_rate_per_consumer: 1,
            rate_period_in_second: 0
        })
        .is_err());
        assert!(check_subscription_expiration(-1).is_err());
        let q: BacklogQuota =
            serde_json::from_str(r#"{"limitSize":10,"policy":"consumer_backlog_eviction"}"#)
                .unwrap();
        assert_eq!(
            (q.limit_time, q.policy),
            (-1, BacklogQuotaPolicy::ConsumerBacklogEviction)
        );
        assert!(
            serde_json::from_str::<BacklogQuota>(r#"{"limitSize":1,"policy":"drop_it"}"#).is_err()
        );
    }

    #[test]
    fn offload_policies_take_what_pulsar_admin_sends() {
        // `pulsar-admin topics set-offload-policies -d aws-s3 -b bkt -r eu -oat 10M`
        // serializes every field of OffloadPoliciesImpl, nulls and secrets included.
        let o: OffloadPolicies = serde_json::from_str(
            r#"{"offloadersDirectory":"./offloaders","managedLedgerOffloadDriver":"aws-s3",
                "managedLedgerOffloadMaxThreads":2,"managedLedgerOffloadThresholdInBytes":10485760,
                "managedLedgerOffloadThresholdInSeconds":null,
                "managedLedgerOffloadDeletionLagInMillis":null,
                "managedLedgerOffloadedReadPriority":"TIERED_STORAGE_FIRST",
                "s3ManagedLedgerOffloadRegion":"eu","s3ManagedLedgerOffloadBucket":"bkt",
                "s3ManagedLedgerOffloadServiceEndpoint":null,
                "s3ManagedLedgerOffloadCredentialId":"id","s3ManagedLedgerOffloadCredentialSecret":"secret",
                "managedLedgerOffloadBucket":null,"managedLedgerOffloadRegion":null}"#,
        )
        .unwrap();
        assert_eq!(o.managed_ledger_offload_driver.as_deref(), Some("aws-s3"));
        assert_eq!(o.managed_ledger_offload_threshold_in_bytes, Some(10 << 20));
        assert_eq!(o.managed_ledger_offload_threshold_in_seconds, None);
        assert_eq!(o.s3_managed_ledger_offload_bucket.as_deref(), Some("bkt"));
        let back = serde_json::to_string(&o).unwrap();
        assert!(!back.contains("secret"), "credentials are not kept: {back}");
        assert!(check_offload_policies(&o).is_ok());

        let unknown = OffloadPolicies {
            managed_ledger_offload_driver: Some("tape".into()),
            ..OffloadPolicies::default()
        };
        assert!(matches!(
            check_offload_policies(&unknown),
            Err(MetadataError::Precondition(m)) if m.starts_with("The driver is not supported")
        ));
        let negative_lag = OffloadPolicies {
            managed_ledger_offload_deletion_lag_in_millis: Some(-5),
            ..OffloadPolicies::default()
        };
        assert!(check_offload_policies(&negative_lag).is_err());
        assert!(check_offload_deletion_lag(0).is_ok());

        let no_driver = OffloadPolicies::default();
        assert!(
            check_offload_policies(&no_driver).is_ok(),
            "a topic may leave it out"
        );
        assert!(matches!(
            check_namespace_offload_policies(&no_driver),
            Err(MetadataError::Precondition(m)) if m.starts_with("The driver is not supported")
        ));
        let no_bucket = OffloadPolicies {
            managed_ledger_offload_driver: Some("aws-s3".into()),
            ..OffloadPolicies::default()
        };
        assert!(matches!(
            check_namespace_offload_policies(&no_bucket),
            Err(MetadataError::Precondition(m)) if m == "The bucket must be specified for namespace offload."
        ));
        assert!(check_namespace_offload_policies(&o).is_ok());
        let filesystem = OffloadPolicies {
            managed_ledger_offload_driver: Some("filesystem".into()),
            ..OffloadPolicies::default()
        };
        assert!(check_namespace_offload_policies(&filesystem).is_ok());
    }

    #[test]
    fn a_namespaces_offload_policies_take_precedence_over_its_older_fields() {
        let mut p = Policies {
            offload_threshold: Some(OFFLOAD_UNSET),
            offload_threshold_in_seconds: Some(60),
            offload_deletion_lag_ms: Some(1000),
            ..Policies::default()
        };
        assert_eq!(p.namespace_offload_threshold_bytes(), None, "-1 is unset");
        assert_eq!(p.namespace_offload_threshold_secs(), Some(60));
        p.offload_policies = Some(OffloadPolicies {
            managed_ledger_offload_threshold_in_bytes: Some(-1),
            managed_ledger_offload_deletion_lag_in_millis: Some(0),
            ..OffloadPolicies::default()
        });
        assert_eq!(
            p.namespace_offload_threshold_bytes(),
            Some(-1),
            "in offload policies -1 is a value (never)"
        );
        assert_eq!(
            p.namespace_offload_threshold_secs(),
            Some(60),
            "field by field"
        );
        assert_eq!(p.namespace_offload_deletion_lag_ms(), Some(0));
    }

    #[test]
    fn bundles_split_the_hash_space_evenly() {
        let b = BundlesData::even(4).unwrap();
        assert_eq!(
            b.boundaries,
            [
                "0x00000000",
                "0x40000000",
                "0x80000000",
                "0xc0000000",
                "0xffffffff"
            ]
        );
        assert!(BundlesData::even(0).is_err());
        assert!(BundlesData::even(MAX_BUNDLES + 1).is_err());
    }

    #[test]
    fn bundles_of_any_count_end_at_the_top_of_the_hash_space() {
        // 2^32 / 6 leaves a remainder: the last bundle takes it, as in Pulsar.
        let six = BundlesData::even(6).unwrap();
        assert_eq!(
            six.boundaries,
            [
                "0x00000000",
                "0x2aaaaaaa",
                "0x55555554",
                "0x7ffffffe",
                "0xaaaaaaa8",
                "0xd5555552",
                "0xffffffff"
            ]
        );
        for n in 1..=MAX_BUNDLES.min(300) {
            let b = BundlesData::even(n).unwrap();
            assert_eq!(b.boundaries.len(), n as usize + 1, "{n}");
            assert_eq!(
                b.boundaries.last().map(String::as_str),
                Some("0xffffffff"),
                "{n}"
            );
            assert!(
                crate::bundles::ranges(&b).is_ok(),
                "{n}: {:?}",
                b.boundaries
            );
        }
    }

    #[test]
    fn topic_overrides_namespace_overrides_broker() {
        assert_eq!(resolve(Some(&1), Some(&2), 3), 1);
        assert_eq!(resolve(None, Some(&2), 3), 2);
        assert_eq!(resolve::<i32>(None, None, 3), 3);
    }
}
