//! `kilonova admin namespaces …` → `/admin/v2/namespaces`.
//!
//! Most verbs are a `set-X` / `get-X` / `remove-X` triple over one policy
//! route, `POST` / `GET` / `DELETE /admin/v2/namespaces/{t}/{ns}/{policy}`;
//! they share [`Policy`] and its flag groups with the topic-level verbs
//! ([`super::policies`]). Flags are pulsar-admin's.

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{json, Map, Value};

use kilonova_metadata::NamespaceName;

use super::client::{AdminClient, AdminError, ApiPath, ResourcePath};
use super::policies::{
    self, BacklogQuotaType, DelayedDeliveryArgs, DispatchRateArgs, EnableOrDisable,
    InactiveTopicArgs, Op, Policy, PublishRateArgs, RetentionArgs, SubscribeRateArgs,
};
use super::{permissions, units, Output};

#[derive(Subcommand)]
pub enum NamespacesCmd {
    /// List a tenant's namespaces.
    List { tenant: String },
    /// Create a namespace.
    Create(CreateNamespace),
    /// Delete a namespace (with --force, with its topics).
    Delete {
        namespace: NamespaceName,
        /// Delete the namespace's topics too.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Show all of a namespace's policies.
    Policies(Ns),
    /// Grant a role actions (produce, consume, …) on the namespace.
    GrantPermission {
        namespace: NamespaceName,
        #[command(flatten)]
        grant: permissions::Grant,
    },
    /// Revoke a role's permissions on the namespace.
    RevokePermission {
        namespace: NamespaceName,
        #[command(flatten)]
        revoke: permissions::Revoke,
    },
    /// Show the roles granted permissions on the namespace.
    Permissions { namespace: NamespaceName },
    /// List the namespace's topics.
    Topics(NsTopics),
    /// Unload the namespace's bundles, or one (-b), on the brokers serving
    /// them: their topics are closed (clients look them up again) and, in a
    /// cluster, the bundles released for the next lookup to place.
    Unload(NsUnload),
    /// Split one bundle in two at its middle hash, on the broker serving
    /// it (which keeps both halves unless --unload).
    SplitBundle(NsSplitBundle),
    /// Clear the backlog of every topic of the namespace: of every
    /// subscription, or of one (-s).
    ClearBacklog(NsClearBacklog),
    #[command(flatten)]
    Policy(PolicyCmd),
    #[command(flatten)]
    Offload(super::offload::NamespaceOffloadCmd),
    #[command(flatten)]
    SchemaStrategy(super::schemas::NamespaceSchemaCmd),
}

#[derive(Args)]
pub struct NsTopics {
    namespace: NamespaceName,
    /// PERSISTENT, NON_PERSISTENT or ALL.
    #[arg(short = 'm', long, default_value = "PERSISTENT",
          value_parser = ["PERSISTENT", "NON_PERSISTENT", "ALL"])]
    mode: String,
}

#[derive(Args)]
pub struct NsClearBacklog {
    namespace: NamespaceName,
    /// Only this subscription.
    #[arg(short = 's', long = "sub")]
    subscription: Option<String>,
}

/// The verbs that set, get or remove one policy.
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Set the clusters the namespace replicates to.
    SetClusters(SetClusters),
    /// Show the clusters the namespace replicates to.
    GetClusters(Ns),
    /// Limit the publish rate of each topic in the namespace.
    SetPublishRate(SetPublishRate),
    /// Show the publish rate.
    GetPublishRate(Ns),
    /// Remove the publish rate.
    RemovePublishRate(Ns),
    /// Limit the dispatch rate of each topic in the namespace.
    SetDispatchRate(SetDispatchRate),
    /// Show the dispatch rate.
    GetDispatchRate(Ns),
    /// Remove the dispatch rate.
    RemoveDispatchRate(Ns),
    /// Limit the dispatch rate of each subscription in the namespace.
    SetSubscriptionDispatchRate(SetDispatchRate),
    /// Show the subscription dispatch rate.
    GetSubscriptionDispatchRate(Ns),
    /// Remove the subscription dispatch rate.
    RemoveSubscriptionDispatchRate(Ns),
    /// Limit how often one consumer may subscribe to each topic.
    SetSubscribeRate(SetSubscribeRate),
    /// Show the subscribe rate.
    GetSubscribeRate(Ns),
    /// Remove the subscribe rate.
    RemoveSubscribeRate(Ns),
    /// Delete subscriptions without consumers after a time without activity.
    SetSubscriptionExpirationTime(SetSubscriptionExpirationTime),
    /// Show the subscription expiration time, in minutes.
    GetSubscriptionExpirationTime(Ns),
    /// Remove the subscription expiration time (the broker's default applies).
    RemoveSubscriptionExpirationTime(Ns),
    /// Limit what each replicator of the namespace's topics sends to a remote cluster.
    SetReplicatorDispatchRate(SetDispatchRate),
    /// Show the replicator dispatch rate.
    GetReplicatorDispatchRate(Ns),
    /// Remove the replicator dispatch rate.
    RemoveReplicatorDispatchRate(Ns),
    /// Keep acknowledged messages for a time and/or size.
    SetRetention(SetRetention),
    /// Show the retention policy.
    GetRetention(Ns),
    /// Remove the retention policy.
    RemoveRetention(Ns),
    /// Compact each topic once its uncompacted backlog is over a size.
    SetCompactionThreshold(SetCompactionThreshold),
    /// Show the compaction threshold.
    GetCompactionThreshold(Ns),
    /// Remove the compaction threshold.
    RemoveCompactionThreshold(Ns),
    /// Expire unacknowledged messages after a time.
    SetMessageTtl(SetMessageTtl),
    /// Show the message TTL.
    GetMessageTtl(Ns),
    /// Remove the message TTL.
    RemoveMessageTtl(Ns),
    /// Limit each topic's backlog, by size or by age.
    SetBacklogQuota(SetBacklogQuota),
    /// Show the backlog quotas, by type.
    GetBacklogQuotas(Ns),
    /// Remove a backlog quota.
    RemoveBacklogQuota(RemoveBacklogQuota),
    /// Limit the producers of each topic.
    SetMaxProducersPerTopic(SetMaxProducersPerTopic),
    /// Show the producer limit.
    GetMaxProducersPerTopic(Ns),
    /// Remove the producer limit.
    RemoveMaxProducersPerTopic(Ns),
    /// Limit the consumers of each topic.
    SetMaxConsumersPerTopic(SetMaxConsumersPerTopic),
    /// Show the consumer limit.
    GetMaxConsumersPerTopic(Ns),
    /// Remove the consumer limit.
    RemoveMaxConsumersPerTopic(Ns),
    /// Limit the consumers of each subscription.
    SetMaxConsumersPerSubscription(SetMaxConsumersPerSubscription),
    /// Show the per-subscription consumer limit.
    GetMaxConsumersPerSubscription(Ns),
    /// Remove the per-subscription consumer limit.
    RemoveMaxConsumersPerSubscription(Ns),
    /// Stop dispatching to a consumer while it has this many unacknowledged messages.
    SetMaxUnackedMessagesPerConsumer(SetMaxUnackedPerConsumer),
    /// Show the per-consumer unacknowledged-message limit.
    GetMaxUnackedMessagesPerConsumer(Ns),
    /// Remove the per-consumer unacknowledged-message limit.
    RemoveMaxUnackedMessagesPerConsumer(Ns),
    /// Stop dispatching to a subscription while it has this many unacknowledged messages.
    SetMaxUnackedMessagesPerSubscription(SetMaxUnackedPerSubscription),
    /// Show the per-subscription unacknowledged-message limit.
    GetMaxUnackedMessagesPerSubscription(Ns),
    /// Remove the per-subscription unacknowledged-message limit.
    RemoveMaxUnackedMessagesPerSubscription(Ns),
    /// Limit the namespace's topics (a partitioned topic counts its partitions).
    SetMaxTopicsPerNamespace(SetMaxTopicsPerNamespace),
    /// Show the topic limit.
    GetMaxTopicsPerNamespace(Ns),
    /// Remove the topic limit.
    RemoveMaxTopicsPerNamespace(Ns),
    /// Turn message deduplication on or off.
    SetDeduplication(SetDeduplication),
    /// Show the deduplication override.
    GetDeduplication(Ns),
    /// Remove the deduplication override.
    RemoveDeduplication(Ns),
    /// Turn delayed delivery on or off.
    SetDelayedDelivery(SetDelayedDelivery),
    /// Show the delayed delivery policy.
    GetDelayedDelivery(Ns),
    /// Remove the delayed delivery policy.
    RemoveDelayedDelivery(Ns),
    /// Delete topics after a time without activity.
    SetInactiveTopicPolicies(SetInactiveTopicPolicies),
    /// Show the inactive-topic policy.
    GetInactiveTopicPolicies(Ns),
    /// Remove the inactive-topic policy.
    RemoveInactiveTopicPolicies(Ns),
    /// Override the broker's automatic topic creation.
    SetAutoTopicCreation(SetAutoTopicCreation),
    /// Show the auto topic creation override.
    GetAutoTopicCreation(Ns),
    /// Remove the auto topic creation override.
    RemoveAutoTopicCreation(Ns),
}

// Just the namespace (no doc comment: clap would show it as every verb's help).
#[derive(Args)]
pub struct Ns {
    /// tenant/namespace
    namespace: NamespaceName,
}

#[derive(Args)]
pub struct NsUnload {
    /// tenant/namespace
    namespace: NamespaceName,
    /// Only this bundle (`0x00000000_0x40000000`, as `namespaces bundles` lists them).
    #[arg(short = 'b', long)]
    bundle: Option<String>,
}

#[derive(Args)]
pub struct NsSplitBundle {
    /// tenant/namespace
    namespace: NamespaceName,
    /// The bundle (`0x00000000_0x40000000`, as `namespaces bundles` lists them).
    #[arg(short = 'b', long)]
    bundle: String,
    /// Unload both halves after the split (the least loaded brokers take them).
    #[arg(short = 'u', long)]
    unload: bool,
}

#[derive(Args)]
pub struct CreateNamespace {
    namespace: NamespaceName,
    /// Number of bundles (the broker's default when absent).
    #[arg(short = 'b', long, value_parser = clap::value_parser!(u32).range(1..))]
    bundles: Option<u32>,
    /// Comma-separated clusters to replicate to.
    #[arg(short = 'c', long, value_delimiter = ',')]
    clusters: Option<Vec<String>>,
}

impl CreateNamespace {
    /// The Policies fields that were given; `None` for the broker's defaults.
    fn body(&self) -> Option<Value> {
        let mut policies = Map::new();
        if let Some(n) = self.bundles {
            policies.insert("bundles".into(), json!({ "numBundles": n }));
        }
        if let Some(clusters) = &self.clusters {
            policies.insert("replication_clusters".into(), json!(clusters));
        }
        (!policies.is_empty()).then_some(Value::Object(policies))
    }
}

#[derive(Args)]
pub struct SetClusters {
    namespace: NamespaceName,
    /// Comma-separated cluster names.
    #[arg(short = 'c', long, value_delimiter = ',', required = true)]
    clusters: Vec<String>,
}

#[derive(Args)]
pub struct SetPublishRate {
    namespace: NamespaceName,
    #[command(flatten)]
    rate: PublishRateArgs,
}

#[derive(Args)]
pub struct SetDispatchRate {
    namespace: NamespaceName,
    #[command(flatten)]
    rate: DispatchRateArgs,
}

#[derive(Args)]
pub struct SetSubscribeRate {
    namespace: NamespaceName,
    #[command(flatten)]
    rate: SubscribeRateArgs,
}

#[derive(Args)]
pub struct SetSubscriptionExpirationTime {
    namespace: NamespaceName,
    /// Minutes without activity (0: subscriptions never expire).
    #[arg(short = 't', long = "time", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    minutes: i32,
}

#[derive(Args)]
pub struct SetRetention {
    namespace: NamespaceName,
    #[command(flatten)]
    retention: RetentionArgs,
}

#[derive(Args)]
pub struct SetCompactionThreshold {
    namespace: NamespaceName,
    /// Bytes, or 10K, 100M, 1G (0: no automatic compaction).
    #[arg(short = 't', long = "threshold", value_parser = units::parse_size_bytes)]
    threshold: u64,
}

#[derive(Args)]
pub struct SetMessageTtl {
    namespace: NamespaceName,
    /// Seconds or 10m, 3h, 2d (0: no TTL). pulsar-admin's -ttl works too.
    #[arg(long = "messageTTL", value_name = "TTL", allow_negative_numbers = true,
          value_parser = units::parse_duration_secs_i32)]
    message_ttl: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum BacklogQuotaPolicy {
    ProducerRequestHold,
    ProducerException,
    ConsumerBacklogEviction,
}

#[derive(Args)]
pub struct SetBacklogQuota {
    namespace: NamespaceName,
    /// Size limit: bytes or 10K, 512M, 10G (destination_storage).
    #[arg(short = 'l', long, allow_negative_numbers = true,
          value_parser = units::parse_size_limit_bytes)]
    limit: Option<i64>,
    /// Age limit: seconds or 10m, 3h (message_age). pulsar-admin's -lt works too.
    #[arg(long = "limitTime", value_name = "TIME", allow_negative_numbers = true,
          value_parser = units::parse_time_limit_secs)]
    limit_time: Option<i64>,
    /// What to do when the limit is reached.
    #[arg(short = 'p', long, value_enum)]
    policy: BacklogQuotaPolicy,
    #[arg(short = 't', long = "type", value_enum, default_value_t = BacklogQuotaType::DestinationStorage)]
    quota_type: BacklogQuotaType,
}

impl SetBacklogQuota {
    fn body(&self) -> Result<Value, AdminError> {
        let missing = match self.quota_type {
            BacklogQuotaType::DestinationStorage if self.limit.is_none() => Some("--limit"),
            BacklogQuotaType::MessageAge if self.limit_time.is_none() => Some("--limitTime"),
            _ => None,
        };
        if let Some(flag) = missing {
            return Err(AdminError::InvalidArgument(format!(
                "a {} backlog quota needs {flag}",
                self.quota_type.as_str()
            )));
        }
        let mut quota = Map::new();
        if let Some(bytes) = self.limit {
            quota.insert("limitSize".into(), bytes.into());
        }
        if let Some(secs) = self.limit_time {
            quota.insert("limitTime".into(), secs.into());
        }
        quota.insert("policy".into(), json!(self.policy));
        Ok(Value::Object(quota))
    }
}

#[derive(Args)]
pub struct RemoveBacklogQuota {
    namespace: NamespaceName,
    #[arg(short = 't', long = "type", value_enum, default_value_t = BacklogQuotaType::DestinationStorage)]
    quota_type: BacklogQuotaType,
}

#[derive(Args)]
pub struct SetMaxProducersPerTopic {
    namespace: NamespaceName,
    /// 0: unlimited.
    #[arg(short = 'p', long, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    max_producers_per_topic: i32,
}

#[derive(Args)]
pub struct SetMaxConsumersPerTopic {
    namespace: NamespaceName,
    /// 0: unlimited.
    #[arg(short = 'c', long, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    max_consumers_per_topic: i32,
}

#[derive(Args)]
pub struct SetMaxUnackedPerConsumer {
    namespace: NamespaceName,
    /// 0: unlimited.
    #[arg(short = 'c', long = "maxUnackedMessagesPerConsumer", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    max: i32,
}

#[derive(Args)]
pub struct SetMaxUnackedPerSubscription {
    namespace: NamespaceName,
    /// 0: unlimited.
    #[arg(short = 'm', long = "maxUnackedMessagesPerSubscription", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    max: i32,
}

#[derive(Args)]
pub struct SetMaxConsumersPerSubscription {
    namespace: NamespaceName,
    /// 0: unlimited.
    #[arg(short = 'c', long, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    max_consumers_per_subscription: i32,
}

#[derive(Args)]
pub struct SetMaxTopicsPerNamespace {
    namespace: NamespaceName,
    /// 0: unlimited.
    #[arg(short = 't', long, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    max_topics_per_namespace: i32,
}

#[derive(Args)]
pub struct SetDeduplication {
    namespace: NamespaceName,
    #[command(flatten)]
    switch: EnableOrDisable,
}

#[derive(Args)]
pub struct SetDelayedDelivery {
    namespace: NamespaceName,
    #[command(flatten)]
    delayed: DelayedDeliveryArgs,
}

#[derive(Args)]
pub struct SetInactiveTopicPolicies {
    namespace: NamespaceName,
    #[command(flatten)]
    policy: InactiveTopicArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopicType {
    Partitioned,
    NonPartitioned,
}

#[derive(Args)]
pub struct SetAutoTopicCreation {
    namespace: NamespaceName,
    #[command(flatten)]
    switch: EnableOrDisable,
    /// The type of topic created.
    #[arg(short = 't', long = "type", value_enum, default_value_t = TopicType::NonPartitioned)]
    topic_type: TopicType,
    /// Partitions of an auto-created partitioned topic.
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u32).range(1..))]
    num_partitions: Option<u32>,
}

impl SetAutoTopicCreation {
    fn body(&self) -> Result<Value, AdminError> {
        let enable = self.switch.enabled();
        if enable && self.topic_type == TopicType::Partitioned && self.num_partitions.is_none() {
            return Err(AdminError::InvalidArgument(
                "--type partitioned needs --num-partitions".into(),
            ));
        }
        let mut body = Map::new();
        body.insert("allowAutoTopicCreation".into(), enable.into());
        body.insert("topicType".into(), json!(self.topic_type));
        if let Some(n) = self.num_partitions {
            body.insert("defaultNumPartitions".into(), n.into());
        }
        Ok(Value::Object(body))
    }
}

impl PolicyCmd {
    /// The policy route and what to do there.
    fn request(&self) -> Result<(ApiPath, Op), AdminError> {
        let (namespace, policy, op) = self.policy_op()?;
        Ok((policy.path(namespace.path(), &op), op))
    }

    /// The namespace, the policy and what to do with it.
    fn policy_op(&self) -> Result<(&NamespaceName, Policy, Op), AdminError> {
        use Policy as P;
        use PolicyCmd as C;
        fn get(n: &Ns, p: Policy) -> (&NamespaceName, Policy, Op) {
            (&n.namespace, p, Op::Get)
        }
        fn remove(n: &Ns, p: Policy) -> (&NamespaceName, Policy, Op) {
            (&n.namespace, p, Op::Remove)
        }
        Ok(match self {
            C::SetClusters(a) => (&a.namespace, P::Replication, Op::Set(json!(a.clusters))),
            C::GetClusters(n) => get(n, P::Replication),
            C::SetPublishRate(a) => (&a.namespace, P::PublishRate, Op::Set(a.rate.body())),
            C::GetPublishRate(n) => get(n, P::PublishRate),
            C::RemovePublishRate(n) => remove(n, P::PublishRate),
            C::SetDispatchRate(a) => (&a.namespace, P::DispatchRate, Op::Set(a.rate.body())),
            C::GetDispatchRate(n) => get(n, P::DispatchRate),
            C::RemoveDispatchRate(n) => remove(n, P::DispatchRate),
            C::SetSubscriptionDispatchRate(a) => (
                &a.namespace,
                P::SubscriptionDispatchRate,
                Op::Set(a.rate.body()),
            ),
            C::GetSubscriptionDispatchRate(n) => get(n, P::SubscriptionDispatchRate),
            C::RemoveSubscriptionDispatchRate(n) => remove(n, P::SubscriptionDispatchRate),
            C::SetSubscribeRate(a) => (&a.namespace, P::SubscribeRate, Op::Set(a.rate.body())),
            C::GetSubscribeRate(n) => get(n, P::SubscribeRate),
            C::RemoveSubscribeRate(n) => remove(n, P::SubscribeRate),
            C::SetSubscriptionExpirationTime(a) => (
                &a.namespace,
                P::SubscriptionExpirationTime,
                Op::Set(json!(a.minutes)),
            ),
            C::GetSubscriptionExpirationTime(n) => get(n, P::SubscriptionExpirationTime),
            C::RemoveSubscriptionExpirationTime(n) => remove(n, P::SubscriptionExpirationTime),
            C::SetReplicatorDispatchRate(a) => (
                &a.namespace,
                P::ReplicatorDispatchRate,
                Op::Set(a.rate.body()),
            ),
            C::GetReplicatorDispatchRate(n) => get(n, P::ReplicatorDispatchRate),
            C::RemoveReplicatorDispatchRate(n) => remove(n, P::ReplicatorDispatchRate),
            C::SetRetention(a) => (&a.namespace, P::Retention, Op::Set(a.retention.body())),
            C::GetRetention(n) => get(n, P::Retention),
            C::RemoveRetention(n) => remove(n, P::Retention),
            C::SetCompactionThreshold(a) => (
                &a.namespace,
                P::CompactionThreshold,
                Op::Set(json!(a.threshold)),
            ),
            C::GetCompactionThreshold(n) => get(n, P::CompactionThreshold),
            C::RemoveCompactionThreshold(n) => remove(n, P::CompactionThreshold),
            C::SetMessageTtl(a) => (&a.namespace, P::MessageTtl, Op::Set(json!(a.message_ttl))),
            C::GetMessageTtl(n) => get(n, P::MessageTtl),
            C::RemoveMessageTtl(n) => remove(n, P::MessageTtl),
            C::SetBacklogQuota(a) => (
                &a.namespace,
                P::BacklogQuota(a.quota_type),
                Op::Set(a.body()?),
            ),
            // The quota type does not matter to the map of all types.
            C::GetBacklogQuotas(n) => get(n, P::BacklogQuota(BacklogQuotaType::DestinationStorage)),
            C::RemoveBacklogQuota(a) => (&a.namespace, P::BacklogQuota(a.quota_type), Op::Remove),
            C::SetMaxProducersPerTopic(a) => (
                &a.namespace,
                P::MaxProducersPerTopic,
                Op::Set(json!(a.max_producers_per_topic)),
            ),
            C::GetMaxProducersPerTopic(n) => get(n, P::MaxProducersPerTopic),
            C::RemoveMaxProducersPerTopic(n) => remove(n, P::MaxProducersPerTopic),
            C::SetMaxConsumersPerTopic(a) => (
                &a.namespace,
                P::MaxConsumersPerTopic,
                Op::Set(json!(a.max_consumers_per_topic)),
            ),
            C::GetMaxConsumersPerTopic(n) => get(n, P::MaxConsumersPerTopic),
            C::RemoveMaxConsumersPerTopic(n) => remove(n, P::MaxConsumersPerTopic),
            C::SetMaxConsumersPerSubscription(a) => (
                &a.namespace,
                P::MaxConsumersPerSubscription,
                Op::Set(json!(a.max_consumers_per_subscription)),
            ),
            C::GetMaxConsumersPerSubscription(n) => get(n, P::MaxConsumersPerSubscription),
            C::RemoveMaxConsumersPerSubscription(n) => remove(n, P::MaxConsumersPerSubscription),
            C::SetMaxUnackedMessagesPerConsumer(a) => (
                &a.namespace,
                P::MaxUnackedPerConsumer,
                Op::Set(json!(a.max)),
            ),
            C::GetMaxUnackedMessagesPerConsumer(n) => get(n, P::MaxUnackedPerConsumer),
            C::RemoveMaxUnackedMessagesPerConsumer(n) => remove(n, P::MaxUnackedPerConsumer),
            C::SetMaxUnackedMessagesPerSubscription(a) => (
                &a.namespace,
                P::MaxUnackedPerSubscription,
                Op::Set(json!(a.max)),
            ),
            C::GetMaxUnackedMessagesPerSubscription(n) => get(n, P::MaxUnackedPerSubscription),
            C::RemoveMaxUnackedMessagesPerSubscription(n) => {
                remove(n, P::MaxUnackedPerSubscription)
            }
            C::SetMaxTopicsPerNamespace(a) => (
                &a.namespace,
                P::MaxTopicsPerNamespace,
                Op::Set(json!(a.max_topics_per_namespace)),
            ),
            C::GetMaxTopicsPerNamespace(n) => get(n, P::MaxTopicsPerNamespace),
            C::RemoveMaxTopicsPerNamespace(n) => remove(n, P::MaxTopicsPerNamespace),
            C::SetDeduplication(a) => (
                &a.namespace,
                P::Deduplication,
                Op::Set(json!(a.switch.enabled())),
            ),
            C::GetDeduplication(n) => get(n, P::Deduplication),
            C::RemoveDeduplication(n) => remove(n, P::Deduplication),
            C::SetDelayedDelivery(a) => {
                (&a.namespace, P::DelayedDelivery, Op::Set(a.delayed.body()))
            }
            C::GetDelayedDelivery(n) => get(n, P::DelayedDelivery),
            C::RemoveDelayedDelivery(n) => remove(n, P::DelayedDelivery),
            C::SetInactiveTopicPolicies(a) => (
                &a.namespace,
                P::InactiveTopicPolicies,
                Op::Set(a.policy.body()),
            ),
            C::GetInactiveTopicPolicies(n) => get(n, P::InactiveTopicPolicies),
            C::RemoveInactiveTopicPolicies(n) => remove(n, P::InactiveTopicPolicies),
            C::SetAutoTopicCreation(a) => (&a.namespace, P::AutoTopicCreation, Op::Set(a.body()?)),
            C::GetAutoTopicCreation(n) => get(n, P::AutoTopicCreation),
            C::RemoveAutoTopicCreation(n) => remove(n, P::AutoTopicCreation),
        })
    }
}

pub async fn run(client: &AdminClient, cmd: NamespacesCmd) -> Result<Output, AdminError> {
    let doc = match cmd {
        NamespacesCmd::List { tenant } => {
            client.get(&ApiPath::new(["namespaces", &tenant])).await?
        }
        NamespacesCmd::Create(a) => {
            let path = a.namespace.path();
            client.put(&path, a.body().as_ref()).await?
        }
        NamespacesCmd::Delete { namespace, force } => {
            client.delete(&namespace.path().force(force)).await?
        }
        NamespacesCmd::Policies(n) => client.get(&n.namespace.path()).await?,
        NamespacesCmd::GrantPermission { namespace, grant } => {
            permissions::grant(client, namespace.path(), &grant).await?
        }
        NamespacesCmd::RevokePermission { namespace, revoke } => {
            permissions::revoke(client, namespace.path(), &revoke).await?
        }
        NamespacesCmd::Permissions { namespace } => {
            permissions::list(client, namespace.path()).await?
        }
        NamespacesCmd::Topics(t) => {
            let path = t.namespace.path().join("topics").query("mode", &t.mode);
            client.get(&path).await?
        }
        NamespacesCmd::Unload(n) => {
            let path = match &n.bundle {
                Some(b) => n.namespace.path().join(b).join("unload"),
                None => n.namespace.path().join("unload"),
            };
            client.put(&path, None).await?
        }
        NamespacesCmd::SplitBundle(n) => {
            let path = n
                .namespace
                .path()
                .join(&n.bundle)
                .join("split")
                .query("unload", n.unload);
            client.put(&path, None).await?
        }
        NamespacesCmd::ClearBacklog(c) => {
            let mut path = c.namespace.path().join("clearBacklog");
            if let Some(sub) = &c.subscription {
                path = path.join(sub);
            }
            client.post(&path, None).await?
        }
        NamespacesCmd::Policy(verb) => {
            let (path, op) = verb.request()?;
            policies::send(client, &path, op).await?
        }
        NamespacesCmd::SchemaStrategy(verb) => super::schemas::run_namespace(client, verb).await?,
        NamespacesCmd::Offload(verb) => return super::offload::run_namespace(client, verb).await,
    };
    Ok(Output::Document(doc))
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Group;
    use super::*;

    fn cmd(args: &[&str]) -> NamespacesCmd {
        let mut argv = vec!["namespaces"];
        argv.extend_from_slice(args);
        match parse(&argv) {
            Ok(a) => match a.group {
                Group::Namespaces { verb } => verb,
                _ => panic!("not a namespaces verb"),
            },
            Err(e) => panic!("{argv:?} should parse: {e}"),
        }
    }

    fn refused(args: &[&str]) -> bool {
        let mut argv = vec!["namespaces"];
        argv.extend_from_slice(args);
        parse(&argv).is_err()
    }

    fn policy_cmd(args: &[&str]) -> PolicyCmd {
        match cmd(args) {
            NamespacesCmd::Policy(p) => p,
            _ => panic!("{args:?} is not a policy verb"),
        }
    }

    /// The request a policy verb makes: method, path (after /admin/v2), body.
    fn request(args: &[&str]) -> (&'static str, String, Option<Value>) {
        let (path, op) = policy_cmd(args).request().unwrap();
        let (method, body) = op.method_and_body();
        (method, path.to_string(), body)
    }

    #[test]
    fn grant_permission_posts_the_actions_under_the_role() {
        let NamespacesCmd::GrantPermission { namespace, grant } = cmd(&[
            "grant-permission",
            "acme/ns",
            "--role",
            "app",
            "--actions",
            "produce,consume",
        ]) else {
            panic!("not grant-permission")
        };
        let (path, body) = permissions::grant_request(namespace.path(), &grant);
        assert_eq!(
            path.to_string(),
            "/admin/v2/namespaces/acme/ns/permissions/app"
        );
        assert_eq!(body, json!(["produce", "consume"]));
        assert!(refused(&["grant-permission", "acme/ns", "--role", "app"]));
        assert!(refused(&[
            "grant-permission",
            "acme/ns",
            "--role",
            "app",
            "--actions",
            "fly"
        ]));
    }

    #[test]
    fn publish_rate_defaults_the_missing_rate_to_minus_one() {
        assert_eq!(
            request(&["set-publish-rate", "t/ns", "-m", "30", "-b", "4096"]),
            (
                "POST",
                "/admin/v2/namespaces/t/ns/publishRate".into(),
                Some(
                    json!({"publishThrottlingRateInMsg": 30, "publishThrottlingRateInByte": 4096})
                )
            )
        );
        let (_, _, body) = request(&["set-publish-rate", "t/ns", "--msg-publish-rate", "10"]);
        assert_eq!(
            body,
            Some(json!({"publishThrottlingRateInMsg": 10, "publishThrottlingRateInByte": -1}))
        );
        assert_eq!(
            request(&["get-publish-rate", "t/ns"]),
            ("GET", "/admin/v2/namespaces/t/ns/publishRate".into(), None)
        );
        assert_eq!(
            request(&["remove-publish-rate", "t/ns"]),
            (
                "DELETE",
                "/admin/v2/namespaces/t/ns/publishRate".into(),
                None
            )
        );
    }

    #[test]
    fn dispatch_rate_takes_pulsar_admins_two_letter_flags() {
        let (_, path, body) = request(&[
            "set-dispatch-rate",
            "t/ns",
            "-md",
            "100",
            "-bd",
            "1048576",
            "-dt",
            "2",
            "-rp",
        ]);
        assert_eq!(path, "/admin/v2/namespaces/t/ns/dispatchRate");
        assert_eq!(
            body,
            Some(json!({
                "dispatchThrottlingRateInMsg": 100,
                "dispatchThrottlingRateInByte": 1048576,
                "ratePeriodInSecond": 2,
                "relativeToPublishRate": true,
            }))
        );
    }

    #[test]
    fn retention_converts_units() {
        let expect = |args: &[&str], minutes: i64, mb: i64| {
            let (_, path, body) = request(args);
            assert_eq!(path, "/admin/v2/namespaces/t/ns/retention");
            assert_eq!(
                body,
                Some(json!({"retentionTimeInMinutes": minutes, "retentionSizeInMB": mb}))
            );
        };
        expect(
            &["set-retention", "t/ns", "--size", "10G", "--time", "3h"],
            180,
            10240,
        );
        expect(
            &["set-retention", "t/ns", "-s", "512M", "-t", "2d"],
            2880,
            512,
        );
        expect(&["set-retention", "t/ns", "-s", "-1", "-t", "-1"], -1, -1);
        assert!(refused(&["set-retention", "t/ns", "-s", "10X", "-t", "3h"]));
        assert!(
            refused(&["set-retention", "t/ns", "-s", "10G"]),
            "--time is required"
        );
    }

    #[test]
    fn message_ttl_accepts_both_spellings_and_refuses_negatives() {
        for flag in ["--messageTTL", "-ttl"] {
            let (_, path, body) = request(&["set-message-ttl", "t/ns", flag, "3600"]);
            assert_eq!(path, "/admin/v2/namespaces/t/ns/messageTTL");
            assert_eq!(body, Some(json!(3600)));
        }
        let (_, _, body) = request(&["set-message-ttl", "t/ns", "--messageTTL", "2h"]);
        assert_eq!(body, Some(json!(7200)));
        assert!(refused(&["set-message-ttl", "t/ns", "--messageTTL=-5"]));
        assert!(refused(&["set-message-ttl", "t/ns", "-ttl", "-5"]));
    }

    #[test]
    fn backlog_quota_routes_carry_the_quota_type() {
        let (method, path, body) = request(&[
            "set-backlog-quota",
            "t/ns",
            "--limit",
            "10G",
            "-lt",
            "1h",
            "--policy",
            "producer_request_hold",
        ]);
        assert_eq!(method, "POST");
        assert_eq!(
            path,
            "/admin/v2/namespaces/t/ns/backlogQuota?backlogQuotaType=destination_storage"
        );
        assert_eq!(
            body,
            Some(
                json!({"limitSize": 10_i64 << 30, "limitTime": 3600, "policy": "producer_request_hold"})
            )
        );
        assert_eq!(
            request(&["get-backlog-quotas", "t/ns"]).1,
            "/admin/v2/namespaces/t/ns/backlogQuotaMap"
        );
        assert_eq!(
            request(&["remove-backlog-quota", "t/ns", "-t", "message_age"]).1,
            "/admin/v2/namespaces/t/ns/backlogQuota?backlogQuotaType=message_age"
        );
        assert!(refused(&[
            "set-backlog-quota",
            "t/ns",
            "-l",
            "1G",
            "-p",
            "drop_everything"
        ]));
        let no_limit = policy_cmd(&["set-backlog-quota", "t/ns", "-p", "producer_exception"]);
        assert!(
            no_limit.request().is_err(),
            "destination_storage needs --limit"
        );
        let age = policy_cmd(&[
            "set-backlog-quota",
            "t/ns",
            "--limitTime",
            "600",
            "-p",
            "consumer_backlog_eviction",
            "--type",
            "message_age",
        ]);
        assert!(age.request().is_ok());
    }

    #[test]
    fn max_producers_and_consumers_are_non_negative_counts() {
        assert_eq!(
            request(&["set-max-producers-per-topic", "t/ns", "-p", "5"]),
            (
                "POST",
                "/admin/v2/namespaces/t/ns/maxProducersPerTopic".into(),
                Some(json!(5))
            )
        );
        assert_eq!(
            request(&[
                "set-max-consumers-per-topic",
                "t/ns",
                "--max-consumers-per-topic",
                "7"
            ]),
            (
                "POST",
                "/admin/v2/namespaces/t/ns/maxConsumersPerTopic".into(),
                Some(json!(7))
            )
        );
        assert!(refused(&[
            "set-max-producers-per-topic",
            "t/ns",
            "-p",
            "-1"
        ]));
    }

    #[test]
    fn subscription_dispatch_rate_takes_the_dispatch_rate_flags() {
        assert_eq!(
            request(&[
                "set-subscription-dispatch-rate",
                "t/ns",
                "-md",
                "50",
                "--byte-dispatch-rate",
                "4096",
            ]),
            (
                "POST",
                "/admin/v2/namespaces/t/ns/subscriptionDispatchRate".into(),
                Some(json!({
                    "dispatchThrottlingRateInMsg": 50,
                    "dispatchThrottlingRateInByte": 4096,
                    "ratePeriodInSecond": 1,
                    "relativeToPublishRate": false,
                }))
            )
        );
        assert_eq!(
            request(&["get-subscription-dispatch-rate", "t/ns"]),
            (
                "GET",
                "/admin/v2/namespaces/t/ns/subscriptionDispatchRate".into(),
                None
            )
        );
        assert_eq!(
            request(&["remove-subscription-dispatch-rate", "t/ns"]),
            (
                "DELETE",
                "/admin/v2/namespaces/t/ns/subscriptionDispatchRate".into(),
                None
            )
        );
    }

    #[test]
    fn replicator_dispatch_rate_takes_the_dispatch_rate_flags() {
        let path = "/admin/v2/namespaces/t/ns/replicatorDispatchRate";
        assert_eq!(
            request(&[
                "set-replicator-dispatch-rate",
                "t/ns",
                "--msg-dispatch-rate",
                "20",
                "-bd",
                "4096",
                "--dispatch-rate-period",
                "2",
            ]),
            (
                "POST",
                path.into(),
                Some(json!({
                    "dispatchThrottlingRateInMsg": 20,
                    "dispatchThrottlingRateInByte": 4096,
                    "ratePeriodInSecond": 2,
                    "relativeToPublishRate": false,
                }))
            )
        );
        assert_eq!(
            request(&["get-replicator-dispatch-rate", "t/ns"]),
            ("GET", path.into(), None)
        );
        assert_eq!(
            request(&["remove-replicator-dispatch-rate", "t/ns"]),
            ("DELETE", path.into(), None)
        );
    }

    #[test]
    fn max_consumers_per_subscription_and_max_topics_are_non_negative_counts() {
        for flag in ["-c", "--max-consumers-per-subscription"] {
            assert_eq!(
                request(&["set-max-consumers-per-subscription", "t/ns", flag, "5"]),
                (
                    "POST",
                    "/admin/v2/namespaces/t/ns/maxConsumersPerSubscription".into(),
                    Some(json!(5))
                )
            );
        }
        for flag in ["-t", "--max-topics-per-namespace"] {
            assert_eq!(
                request(&["set-max-topics-per-namespace", "t/ns", flag, "100"]),
                (
                    "POST",
                    "/admin/v2/namespaces/t/ns/maxTopicsPerNamespace".into(),
                    Some(json!(100))
                )
            );
        }
        for (verb, segment) in [
            (
                "max-consumers-per-subscription",
                "maxConsumersPerSubscription",
            ),
            ("max-topics-per-namespace", "maxTopicsPerNamespace"),
        ] {
            let path = format!("/admin/v2/namespaces/t/ns/{segment}");
            assert_eq!(
                request(&[&format!("get-{verb}"), "t/ns"]),
                ("GET", path.clone(), None)
            );
            assert_eq!(
                request(&[&format!("remove-{verb}"), "t/ns"]),
                ("DELETE", path, None)
            );
        }
        assert!(refused(&[
            "set-max-consumers-per-subscription",
            "t/ns",
            "-c",
            "-1"
        ]));
        assert!(refused(&[
            "set-max-topics-per-namespace",
            "t/ns",
            "-t",
            "-1"
        ]));
        assert!(refused(&["set-max-topics-per-namespace", "t/ns"]));
    }

    #[test]
    fn delayed_delivery_sends_active_and_the_tick_in_milliseconds() {
        assert_eq!(
            request(&["set-delayed-delivery", "t/ns", "--enable", "--time", "2s"]),
            (
                "POST",
                "/admin/v2/namespaces/t/ns/delayedDelivery".into(),
                Some(json!({"active": true, "tickTime": 2000}))
            )
        );
        assert_eq!(
            request(&["set-delayed-delivery", "t/ns", "-d"]).2,
            Some(json!({"active": false, "tickTime": 1000})),
            "the tick defaults to 1s"
        );
        assert_eq!(
            request(&["get-delayed-delivery", "t/ns"]),
            (
                "GET",
                "/admin/v2/namespaces/t/ns/delayedDelivery".into(),
                None
            )
        );
        assert_eq!(
            request(&["remove-delayed-delivery", "t/ns"]),
            (
                "DELETE",
                "/admin/v2/namespaces/t/ns/delayedDelivery".into(),
                None
            )
        );
        assert!(refused(&["set-delayed-delivery", "t/ns"]));
        assert!(refused(&["set-delayed-delivery", "t/ns", "-e", "-d"]));
        assert!(refused(&[
            "set-delayed-delivery",
            "t/ns",
            "-e",
            "-t",
            "soon"
        ]));
    }

    #[test]
    fn subscription_expiration_time_sends_minutes() {
        assert_eq!(
            request(&["set-subscription-expiration-time", "t/ns", "-t", "30"]),
            (
                "POST",
                "/admin/v2/namespaces/t/ns/subscriptionExpirationTime".into(),
                Some(json!(30))
            )
        );
        assert_eq!(
            request(&["get-subscription-expiration-time", "t/ns"]),
            (
                "GET",
                "/admin/v2/namespaces/t/ns/subscriptionExpirationTime".into(),
                None
            )
        );
        assert_eq!(
            request(&["remove-subscription-expiration-time", "t/ns"]).0,
            "DELETE"
        );
        assert!(refused(&["set-subscription-expiration-time", "t/ns"]));
        assert!(refused(&[
            "set-subscription-expiration-time",
            "t/ns",
            "-t",
            "-1"
        ]));
    }

    #[test]
    fn subscribe_rate_takes_pulsar_admins_flags_and_defaults() {
        assert_eq!(
            request(&["set-subscribe-rate", "t/ns", "-sr", "2", "-st", "10"]),
            (
                "POST",
                "/admin/v2/namespaces/t/ns/subscribeRate".into(),
                Some(json!({"subscribeThrottlingRatePerConsumer": 2, "ratePeriodInSecond": 10}))
            )
        );
        assert_eq!(
            request(&["set-subscribe-rate", "t/ns"]).2,
            Some(json!({"subscribeThrottlingRatePerConsumer": -1, "ratePeriodInSecond": 30})),
            "pulsar-admin's defaults"
        );
        assert_eq!(
            request(&["get-subscribe-rate", "t/ns"]).1,
            "/admin/v2/namespaces/t/ns/subscribeRate"
        );
        assert_eq!(request(&["remove-subscribe-rate", "t/ns"]).0, "DELETE");
        assert!(refused(&["set-subscribe-rate", "t/ns", "-st", "0"]));
    }

    #[test]
    fn switches_need_exactly_one_of_enable_and_disable() {
        assert_eq!(
            request(&["set-deduplication", "t/ns", "--enable"]).2,
            Some(json!(true))
        );
        assert_eq!(
            request(&["set-deduplication", "t/ns", "-d"]).2,
            Some(json!(false))
        );
        assert!(refused(&["set-deduplication", "t/ns"]));
        assert!(refused(&["set-deduplication", "t/ns", "-e", "-d"]));
    }

    #[test]
    fn inactive_topic_policies_body() {
        let (_, path, body) = request(&[
            "set-inactive-topic-policies",
            "t/ns",
            "--enable-delete-while-inactive",
            "--max-inactive-duration",
            "1h",
            "--delete-mode",
            "delete_when_no_subscriptions",
        ]);
        assert_eq!(path, "/admin/v2/namespaces/t/ns/inactiveTopicPolicies");
        assert_eq!(
            body,
            Some(json!({
                "deleteWhileInactive": true,
                "maxInactiveDurationSeconds": 3600,
                "inactiveTopicDeleteMode": "delete_when_no_subscriptions",
            }))
        );
        assert!(refused(&[
            "set-inactive-topic-policies",
            "t/ns",
            "-e",
            "-t",
            "1h",
            "-m",
            "sometimes"
        ]));
    }

    #[test]
    fn auto_topic_creation_body() {
        let (_, path, body) = request(&[
            "set-auto-topic-creation",
            "t/ns",
            "--enable",
            "--type",
            "partitioned",
            "--num-partitions",
            "2",
        ]);
        assert_eq!(path, "/admin/v2/namespaces/t/ns/autoTopicCreation");
        assert_eq!(
            body,
            Some(
                json!({"allowAutoTopicCreation": true, "topicType": "partitioned", "defaultNumPartitions": 2})
            )
        );
        let (_, _, body) = request(&["set-auto-topic-creation", "t/ns", "-d"]);
        assert_eq!(
            body,
            Some(json!({"allowAutoTopicCreation": false, "topicType": "non-partitioned"}))
        );
        let partitioned_without_count =
            policy_cmd(&["set-auto-topic-creation", "t/ns", "-e", "-t", "partitioned"]);
        assert!(partitioned_without_count.request().is_err());
    }

    #[test]
    fn replication_clusters_are_a_comma_separated_list() {
        assert_eq!(
            request(&["set-clusters", "t/ns", "--clusters", "a,b"]),
            (
                "POST",
                "/admin/v2/namespaces/t/ns/replication".into(),
                Some(json!(["a", "b"]))
            )
        );
        assert_eq!(
            request(&["get-clusters", "t/ns"]).1,
            "/admin/v2/namespaces/t/ns/replication"
        );
        assert!(refused(&["set-clusters", "t/ns"]));
    }

    #[test]
    fn create_sends_policies_only_when_given() {
        let body = |args: &[&str]| match cmd(args) {
            NamespacesCmd::Create(c) => c.body(),
            _ => panic!("not create"),
        };
        assert_eq!(body(&["create", "t/ns"]), None);
        assert_eq!(
            body(&["create", "t/ns", "--bundles", "64"]),
            Some(json!({"bundles": {"numBundles": 64}}))
        );
        assert_eq!(
            body(&["create", "t/ns", "-b", "8", "-c", "a,b"]),
            Some(json!({"bundles": {"numBundles": 8}, "replication_clusters": ["a", "b"]}))
        );
        assert!(refused(&["create", "t/ns", "--bundles", "0"]));
        assert!(refused(&["create", "not-a-namespace"]));
    }

    #[test]
    fn delete_takes_force() {
        assert!(matches!(
            cmd(&["delete", "t/ns", "--force"]),
            NamespacesCmd::Delete { force: true, .. }
        ));
        assert!(matches!(
            cmd(&["delete", "t/ns"]),
            NamespacesCmd::Delete { force: false, .. }
        ));
    }
}
