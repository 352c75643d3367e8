//! The broker's settings. Units are in the names; every option is documented in
//! docs/configuration.md with its default.

use serde::{Deserialize, Serialize};

pub use kilonova_metadata::policies::{BacklogQuotaPolicy, InactiveTopicDeleteMode};

/// Which kind of topic auto-creation makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AutoTopicType {
    NonPartitioned,
    Partitioned,
}

/// Which position a topic evicts its cached entries before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheEviction {
    #[default]
    SlowestReader,
    SlowestMarkDelete,
    TimeOnly,
}

impl From<CacheEviction> for kilonova_storage::EvictionStrategy {
    fn from(c: CacheEviction) -> Self {
        match c {
            CacheEviction::SlowestReader => Self::SlowestReader,
            CacheEviction::SlowestMarkDelete => Self::SlowestMarkDelete,
            CacheEviction::TimeOnly => Self::TimeOnly,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// The cluster's name (in generated producer names).
    pub cluster_name: String,
    /// Largest message (metadata + payload) a producer may send; told to clients in CONNECTED.
    pub max_message_bytes: usize,
    /// Create topics on first use in an existing namespace.
    pub allow_auto_topic_creation: bool,
    pub auto_topic_creation_type: AutoTopicType,
    /// Partitions of an auto-created partitioned topic.
    pub default_num_partitions: u32,
    /// Most partitions a partitioned topic may be created or grown to (Pulsar's
    /// `maxNumPartitionsPerPartitionedTopic`). 0, or anything above
    /// [`kilonova_metadata::MAX_PARTITIONS`], means that hard ceiling.
    pub max_num_partitions_per_partitioned_topic: u32,
    /// The broker pings a connection silent this long, and closes it after twice as long.
    pub keep_alive_secs: u64,
    /// A topic with no producers or consumers is unloaded (its task ends) after this long.
    pub topic_unload_idle_secs: u64,
    /// Acknowledgements are persisted at least this often (and on close);
    /// a topic's housekeeping (policies, rates, retention, TTL, quotas,
    /// inactivity) runs at this pace.
    pub cursor_persist_interval_ms: u64,
    /// A topic that is only written to (producers, no subscription or
    /// cursor, no replication, deduplication or compaction) runs its
    /// housekeeping this often instead: rates and storage size in
    /// `/metrics`, and retention by time alone, may lag by this much (a
    /// policy change or a roll-over still brings the next tick within
    /// `cursor_persist_interval_ms`, and the stats API computes fresh rates).
    pub quiet_topic_tick_ms: u64,
    /// Cluster brokers with shared storage: the longest an append waits for
    /// its write-ahead flush to start (the object store's PUT rate at low load).
    pub cluster_flush_interval_ms: u64,
    /// Cluster brokers with shared storage: a write-ahead flush starts once
    /// this many bytes are queued.
    pub cluster_flush_max_bytes: usize,
    /// Cluster brokers with shared storage: a bundle's history is compacted
    /// once this many flush records followed its last compaction.
    pub cluster_compact_after_records: usize,
    /// Cluster brokers with shared storage: a bundle's history is compacted
    /// once this broker committed this many bytes of entries to it since
    /// its last compaction (a topic's load reads what follows the last
    /// compaction: this bounds it in bytes as the records bound it in
    /// requests).
    pub cluster_compact_after_bytes: u64,
    /// Cluster brokers with shared storage: how often the bundles held are
    /// looked at for compaction (also those whose records another broker
    /// wrote); a bundle this broker wrote enough records to is compacted at once.
    pub cluster_compaction_interval_ms: u64,
    /// Memory for recently written entries, shared by all topics.
    pub entry_cache_bytes: usize,
    /// Which position a topic evicts its cached entries before: the
    /// slowest reader's (Pulsar's default), the slowest mark-delete
    /// position (Pulsar's `cacheEvictionByMarkDeletedPosition`), or none
    /// (`time-only`: entries leave by age and the byte budget alone).
    pub cache_eviction: CacheEviction,
    /// Cached entries older than this leave the cache (0: none leave by
    /// age); Pulsar's `managedLedgerCacheEvictionTimeThresholdMillis`.
    pub cache_eviction_time_threshold_ms: u64,
    /// How often entries are evicted by age.
    pub cache_eviction_interval_ms: u64,
    /// A subscription more than this many entries behind its topic's end
    /// no longer keeps entries cached for itself (0: every one does);
    /// Pulsar's `managedLedgerCursorBackloggedThreshold`.
    pub cache_backlogged_cursor_entries: u64,
    /// Entries a subscription reads ahead per dispatch round.
    pub dispatch_batch_entries: usize,
    /// Shared / key_shared: entries held for redelivery before reading further stops.
    pub max_redelivery_backlog_entries: usize,
    /// Concurrent Pulsar-protocol connections, plain and TLS ports together;
    /// more are refused. At most 3/4 of the process's open-file limit is used.
    pub max_connections: usize,
    /// Concurrent connections from one IP address (0: no limit but `max_connections`).
    pub max_connections_per_ip: usize,
    /// Bytes queued for one connection (answers and messages not yet written
    /// to its socket) at which the broker stops reading its requests and stops
    /// dispatching to its consumers, until half of it is written.
    pub max_outbound_bytes_per_connection: usize,
    /// A connection must complete CONNECT within this long of being accepted.
    pub connect_timeout_secs: u64,
    /// Concurrent connections to the admin HTTP and HTTPS ports together; more
    /// wait to be accepted. At most 1/8 of the process's open-file limit is used.
    pub max_http_connections: usize,
    /// An admin HTTP connection that has not sent a whole request head within
    /// this long (of opening, or of its previous answer) is closed.
    pub http_header_read_timeout_secs: u64,
    /// Commands queued to one topic before connections wait (backpressure).
    pub topic_queue_depth: usize,
    /// A plain SEND (no deduplication, marker or replication, a local log,
    /// outside a cluster) is appended by the connection that read it, not
    /// by its topic's task (ADR 0026); `false`: every SEND goes through
    /// the task.
    pub connection_appends: bool,

    // ---- storage layout of a topic
    /// A segment (Pulsar: ledger) is sealed and a new one started after this
    /// many entries; retention deletes whole sealed segments.
    pub max_segment_entries: u64,
    /// ...or after this many bytes.
    pub max_segment_bytes: u64,
    /// ...or when it is this old.
    pub max_segment_age_secs: u64,

    // ---- policy defaults (a namespace's or topic's policy overrides them)
    /// Messages a topic keeps after every subscription acknowledged them, in minutes
    /// (-1: forever; 0: none).
    pub retention_minutes: i64,
    /// ...and in MiB (-1: unlimited; 0: none).
    pub retention_size_mb: i64,
    /// Unacknowledged messages older than this are acknowledged for every
    /// subscription (0: never).
    pub message_ttl_secs: u64,
    /// How often TTLs are applied.
    pub message_expiry_check_interval_secs: u64,
    /// Backlog quota, bytes of the largest subscription backlog (-1: unlimited).
    pub backlog_quota_limit_bytes: i64,
    /// Backlog quota, age of the oldest unacknowledged message in seconds (-1: unlimited).
    pub backlog_quota_limit_secs: i64,
    /// What happens when a backlog quota is exceeded.
    pub backlog_quota_policy: BacklogQuotaPolicy,
    /// How often backlog quotas are checked.
    pub backlog_quota_check_interval_secs: u64,
    /// Per-topic publish rate limits (0: unlimited).
    pub max_publish_rate_per_topic_messages: u64,
    pub max_publish_rate_per_topic_bytes: u64,
    /// Per-topic and per-subscription dispatch rate limits (0: unlimited).
    pub dispatch_rate_per_topic_messages: u64,
    pub dispatch_rate_per_topic_bytes: u64,
    pub dispatch_rate_per_subscription_messages: u64,
    pub dispatch_rate_per_subscription_bytes: u64,
    /// SUBSCRIBEs one consumer (client address, consumer name and id) may
    /// send to a persistent topic per `subscribe_rate_period_per_consumer_secs`
    /// (0: unlimited; Pulsar's `subscribeThrottlingRatePerConsumer`).
    pub subscribe_throttling_rate_per_consumer: u32,
    /// The period of that rate (Pulsar's `subscribeRatePeriodPerConsumerInSecond`).
    pub subscribe_rate_period_per_consumer_secs: u64,
    /// A durable subscription without consumers is deleted once inactive
    /// this long (0: never; Pulsar's `subscriptionExpirationTimeMinutes`).
    pub subscription_expiration_time_minutes: u64,
    /// How often loaded topics look for expired subscriptions (Pulsar's
    /// `subscriptionExpiryCheckIntervalInMinutes`, 5; in seconds here).
    pub subscription_expiry_check_interval_secs: u64,
    /// Rate limit of each replicator to a remote cluster (0: unlimited).
    pub dispatch_rate_per_replicator_messages: u64,
    pub dispatch_rate_per_replicator_bytes: u64,
    /// Count limits (0: unlimited).
    pub max_producers_per_topic: u32,
    pub max_consumers_per_topic: u32,
    pub max_consumers_per_subscription: u32,
    pub max_topics_per_namespace: u32,
    /// A consumer, or a subscription, gets no more messages while it has
    /// this many unacknowledged (0: unlimited; Pulsar's defaults are 50,000
    /// and 200,000).
    pub max_unacked_messages_per_consumer: u32,
    pub max_unacked_messages_per_subscription: u32,
    /// Deduplicate messages by producer name and sequence id.
    pub deduplication_enabled: bool,
    /// Producers whose deduplication state a topic keeps (the least recently
    /// active are forgotten beyond this).
    pub deduplication_max_producers: usize,
    /// The deduplication state is snapshotted after this many entries (a load
    /// replays at most this many entries to rebuild it).
    pub deduplication_snapshot_interval_entries: u64,
    /// Hold messages with a delivery time on shared and key_shared subscriptions.
    pub delayed_delivery_enabled: bool,
    /// Delayed messages a subscription tracks; reading further stops beyond this.
    pub max_delayed_messages_per_subscription: usize,
    /// Delete topics nobody uses (see docs/configuration.md for the rules).
    pub delete_inactive_topics_enabled: bool,
    /// How often loaded topics check whether they are inactive.
    pub delete_inactive_topics_frequency_secs: u64,
    /// How long a topic must have been inactive to be deleted.
    pub delete_inactive_topics_max_inactive_secs: u64,
    pub delete_inactive_topics_mode: InactiveTopicDeleteMode,
    /// When an inactive partitioned topic's partitions are deleted, delete
    /// its partitioned metadata too (Pulsar's
    /// `brokerDeleteInactivePartitionedTopicMetadataEnabled`, off by default:
    /// the topic stays partitioned and its partitions come back empty on use).
    pub delete_inactive_partitioned_topic_metadata: bool,
    /// How often loaded topics compare their compaction backlog with their
    /// compaction threshold (Pulsar's `brokerServiceCompactionMonitorIntervalInSeconds`).
    pub compaction_check_interval_secs: u64,
    /// Distinct keys one compaction keeps track of; past it the compaction fails.
    pub compaction_max_keys: usize,
    /// Bytes of a topic kept locally before older sealed segments are
    /// offloaded, where no namespace or topic policy says (Pulsar's
    /// `managedLedgerOffloadAutoTriggerSizeThresholdBytes`; 0: offload every
    /// sealed segment, negative: never).
    pub offload_threshold_bytes: i64,
    /// Age (seconds) past which sealed segments are offloaded, where no
    /// policy says (Pulsar's `managedLedgerOffloadThresholdInSeconds`;
    /// negative: never).
    pub offload_threshold_secs: i64,
    /// How long the local copy of an offloaded segment is kept, where no
    /// policy says (Pulsar's `managedLedgerOffloadDeletionLagMs`).
    pub offload_deletion_lag_ms: u64,
    /// The token each replicator presents to a remote cluster, by cluster
    /// name (its role needs `produce` on the namespace there). Kept out of
    /// the metadata, the admin API (never serialized) and logs.
    #[serde(skip_serializing)]
    pub replication_tokens: std::collections::BTreeMap<String, kilonova_auth::Secret<String>>,
    /// CA certificates (PEM) that remote clusters' `pulsar+ssl://` broker
    /// certificates must chain to.
    pub replication_tls_trust_certs: Option<std::path::PathBuf>,
    /// A replicator with nothing to send for this long disconnects from its
    /// remote cluster (it connects again when there is something to send).
    pub replicator_idle_timeout_secs: u64,
    /// Replicated subscriptions (Pulsar's `enableReplicatedSubscriptions`):
    /// a subscription marked replicated keeps its position in step with
    /// its namesakes in the other replication clusters.
    pub enable_replicated_subscriptions: bool,
    /// How often a topic with a replicated subscription and new messages
    /// takes a snapshot of the clusters' positions (Pulsar's
    /// `replicatedSubscriptionsSnapshotFrequencyMillis`; at most once per
    /// `cursor_persist_interval_ms` tick).
    pub replicated_subscriptions_snapshot_frequency_millis: u64,
    /// A snapshot whose answers have not all arrived by then is given up
    /// (Pulsar's `replicatedSubscriptionsSnapshotTimeoutSeconds`).
    pub replicated_subscriptions_snapshot_timeout_seconds: u64,
    /// Snapshots a replicated subscription keeps ahead of its position
    /// (Pulsar's `replicatedSubscriptionsSnapshotMaxCachedPerSubscription`).
    pub replicated_subscriptions_snapshot_max_cached_per_subscription: usize,
    /// Entries one analyze-backlog reads at most; past it the answer says
    /// `aborted` (Pulsar's `subscriptionBacklogScanMaxEntries`).
    pub subscription_backlog_scan_max_entries: u64,
    /// Time one analyze-backlog spends at most (Pulsar's `subscriptionBacklogScanMaxTimeMs`).
    pub subscription_backlog_scan_max_time_ms: u64,

    // ---- load balancing (cluster brokers; docs/load-balancing.md)
    /// Measure this broker's load every `load_balancer_report_interval_ms`;
    /// in a cluster, report it and take part in the leader's election
    /// (Pulsar's `loadBalancerEnabled`).
    pub load_balancer_enabled: bool,
    /// How often the load is measured and reported.
    pub load_balancer_report_interval_ms: u64,
    /// The leader moves bundles off brokers above the average load
    /// (Pulsar's `loadBalancerSheddingEnabled`); off, `kilonova admin
    /// brokers shed` still runs a round on demand.
    pub load_balancer_shedding_enabled: bool,
    /// How often the leader sheds (Pulsar's `loadBalancerSheddingIntervalMinutes`, 1).
    pub load_balancer_shedding_interval_secs: u64,
    /// A broker more than this many points above the average load sheds
    /// (Pulsar's `loadBalancerBrokerThresholdShedderPercentage`).
    pub load_balancer_shedding_threshold_percent: f64,
    /// A broker above this load is overloaded (logged and exported).
    pub load_balancer_overloaded_threshold_percent: f64,
    /// How much of the previous smoothed load each report keeps (Pulsar's
    /// `loadBalancerHistoryResourcePercentage`).
    pub load_balancer_history_resource_percentage: f64,
    /// A bundle moved is not moved again for this long (Pulsar's
    /// `loadBalancerSheddingGracePeriodMinutes`, 30).
    pub load_balancer_shedding_grace_period_secs: u64,
    /// A broker sheds nothing when what it would shed is less than this
    /// many MB/s (Pulsar's `loadBalancerBundleUnloadMinThroughputThreshold`).
    pub load_balancer_min_unload_throughput_mb: f64,
    /// How much each resource counts in a broker's load (Pulsar's
    /// `loadBalancer*ResourceWeight`).
    pub load_balancer_cpu_resource_weight: f64,
    pub load_balancer_memory_resource_weight: f64,
    pub load_balancer_bandwidth_in_resource_weight: f64,
    pub load_balancer_bandwidth_out_resource_weight: f64,
    /// The bandwidth limit, each way (Pulsar's `loadBalancerOverrideBrokerNicSpeedGbps`).
    pub load_balancer_nic_speed_gbps: f64,
    /// The memory limit (0: the machine's memory).
    pub load_balancer_memory_limit_mb: u64,
    /// New bundles are not placed on a broker serving this many topics
    /// while another serves fewer (Pulsar's `loadBalancerBrokerMaxTopics`).
    pub load_balancer_broker_max_topics: u64,
    /// An unload hands the bundle to its next owner before the topics close
    /// and names it to the clients (Pulsar's `loadBalancerTransferEnabled`);
    /// off, the bundle is released and clients look their topics up again.
    pub load_balancer_transfer_enabled: bool,
    /// The leader splits bundles past a threshold below, every shedding
    /// interval (Pulsar's `loadBalancerAutoBundleSplitEnabled`).
    pub load_balancer_auto_bundle_split_enabled: bool,
    /// A bundle with more topics, producers + consumers, messages per
    /// second (in + out) or MB per second (in + out) than these splits
    /// (Pulsar's `loadBalancerNamespaceBundleMax*`).
    pub load_balancer_namespace_bundle_max_topics: u64,
    pub load_balancer_namespace_bundle_max_sessions: u64,
    pub load_balancer_namespace_bundle_max_msg_rate: f64,
    pub load_balancer_namespace_bundle_max_bandwidth_mbytes: f64,
    /// A namespace is not split past this many bundles (Pulsar's
    /// `loadBalancerNamespaceMaximumBundles`).
    pub load_balancer_namespace_maximum_bundles: usize,
    /// Splits per round at most (Pulsar's `loadBalancerMaxNumberOfBundlesToSplitPerCycle`).
    pub load_balancer_max_bundles_to_split_per_round: usize,
}

impl BrokerConfig {
    /// The token the replicator to `cluster` presents, if one is configured.
    pub fn replication_token(&self, cluster: &str) -> Option<String> {
        self.replication_tokens
            .get(cluster)
            .map(|t| t.expose().clone())
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            cluster_name: "standalone".into(),
            max_message_bytes: 5 << 20,
            allow_auto_topic_creation: true,
            auto_topic_creation_type: AutoTopicType::NonPartitioned,
            default_num_partitions: 1,
            max_num_partitions_per_partitioned_topic: 4096,
            keep_alive_secs: 30,
            topic_unload_idle_secs: 60,
            cursor_persist_interval_ms: 1000,
            quiet_topic_tick_ms: 10_000,
            cluster_flush_interval_ms: 5,
            cluster_flush_max_bytes: 8 << 20,
            cluster_compact_after_records: 256,
            cluster_compact_after_bytes: 16 << 20,
            cluster_compaction_interval_ms: 10_000,
            entry_cache_bytes: 256 << 20,
            cache_eviction: CacheEviction::SlowestReader,
            cache_eviction_time_threshold_ms: 0,
            cache_eviction_interval_ms: 10,
            cache_backlogged_cursor_entries: 1000,
            dispatch_batch_entries: 100,
            max_redelivery_backlog_entries: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_outbound_bytes_per_connection: 4 << 20,
            connect_timeout_secs: 10,
            max_http_connections: 1024,
            http_header_read_timeout_secs: 30,
            topic_queue_depth: 1024,
            connection_appends: true,
            max_segment_entries: 50_000,
            max_segment_bytes: 256 << 20,
            max_segment_age_secs: 4 * 3600,
            retention_minutes: 0,
            retention_size_mb: 0,
            message_ttl_secs: 0,
            message_expiry_check_interval_secs: 60,
            backlog_quota_limit_bytes: -1,
            backlog_quota_limit_secs: -1,
            backlog_quota_policy: BacklogQuotaPolicy::ProducerRequestHold,
            backlog_quota_check_interval_secs: 60,
            max_publish_rate_per_topic_messages: 0,
            max_publish_rate_per_topic_bytes: 0,
            dispatch_rate_per_topic_messages: 0,
            dispatch_rate_per_topic_bytes: 0,
            dispatch_rate_per_subscription_messages: 0,
            dispatch_rate_per_subscription_bytes: 0,
            subscribe_throttling_rate_per_consumer: 0,
            subscribe_rate_period_per_consumer_secs: 30,
            subscription_expiration_time_minutes: 0,
            subscription_expiry_check_interval_secs: 300,
            dispatch_rate_per_replicator_messages: 0,
            dispatch_rate_per_replicator_bytes: 0,
            max_producers_per_topic: 0,
            max_consumers_per_topic: 0,
            max_consumers_per_subscription: 0,
            max_topics_per_namespace: 0,
            max_unacked_messages_per_consumer: 0,
            max_unacked_messages_per_subscription: 0,
            deduplication_enabled: false,
            deduplication_max_producers: 10_000,
            deduplication_snapshot_interval_entries: 1000,
            delayed_delivery_enabled: true,
            max_delayed_messages_per_subscription: 100_000,
            delete_inactive_topics_enabled: true,
            delete_inactive_topics_frequency_secs: 60,
            delete_inactive_topics_max_inactive_secs: 60,
            delete_inactive_topics_mode: InactiveTopicDeleteMode::DeleteWhenNoSubscriptions,
            delete_inactive_partitioned_topic_metadata: false,
            compaction_check_interval_secs: 60,
            compaction_max_keys: 1_000_000,
            offload_threshold_bytes: -1,
            offload_threshold_secs: -1,
            offload_deletion_lag_ms: 14_400_000,
            replication_tokens: Default::default(),
            replication_tls_trust_certs: None,
            replicator_idle_timeout_secs: 60,
            enable_replicated_subscriptions: true,
            replicated_subscriptions_snapshot_frequency_millis: 1_000,
            replicated_subscriptions_snapshot_timeout_seconds: 30,
            replicated_subscriptions_snapshot_max_cached_per_subscription: 10,
            subscription_backlog_scan_max_entries: 10_000,
            subscription_backlog_scan_max_time_ms: 120_000,
            load_balancer_enabled: true,
            load_balancer_report_interval_ms: 5_000,
            load_balancer_shedding_enabled: true,
            load_balancer_shedding_interval_secs: 60,
            load_balancer_shedding_threshold_percent: 10.0,
            load_balancer_overloaded_threshold_percent: 70.0,
            load_balancer_history_resource_percentage: 0.9,
            load_balancer_shedding_grace_period_secs: 30 * 60,
            load_balancer_min_unload_throughput_mb: 10.0,
            load_balancer_cpu_resource_weight: 1.0,
            load_balancer_memory_resource_weight: 1.0,
            load_balancer_bandwidth_in_resource_weight: 1.0,
            load_balancer_bandwidth_out_resource_weight: 1.0,
            load_balancer_nic_speed_gbps: 10.0,
            load_balancer_memory_limit_mb: 0,
            load_balancer_broker_max_topics: 50_000,
            load_balancer_transfer_enabled: true,
            load_balancer_auto_bundle_split_enabled: true,
            load_balancer_namespace_bundle_max_topics: 1000,
            load_balancer_namespace_bundle_max_sessions: 1000,
            load_balancer_namespace_bundle_max_msg_rate: 30_000.0,
            load_balancer_namespace_bundle_max_bandwidth_mbytes: 100.0,
            load_balancer_namespace_maximum_bundles: 128,
            load_balancer_max_bundles_to_split_per_round: 10,
        }
    }
}

impl BrokerConfig {
    /// The partition cap in force: the configured one, within the hard ceiling.
    pub fn max_partitions(&self) -> u32 {
        match self.max_num_partitions_per_partitioned_topic {
            0 => kilonova_metadata::MAX_PARTITIONS,
            n => n.min(kilonova_metadata::MAX_PARTITIONS),
        }
    }

    /// Largest frame accepted: a whole message plus room for the command and headers.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_message_bytes + (10 << 10)
    }

    /// The outbound bound in force (at least 64 KiB, so that answers flow).
    pub fn max_outbound_bytes(&self) -> usize {
        self.max_outbound_bytes_per_connection.max(64 << 10)
    }
}
