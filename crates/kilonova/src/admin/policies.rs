//! What the namespace-level and topic-level policy verbs share: the policy
//! routes ([`Policy`]: `GET` / `POST` / `DELETE {base}/{segment}`, where the
//! base is a namespace's or a topic's path), the request one verb makes
//! ([`Op`]), and the flag groups both levels take with pulsar-admin's names.

use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::{json, Value};

use super::client::{AdminClient, AdminError, ApiPath};
use super::units;

/// A policy with its own route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Replication,
    PublishRate,
    DispatchRate,
    SubscriptionDispatchRate,
    ReplicatorDispatchRate,
    Retention,
    MessageTtl,
    /// Set and removed per type; read as one map of every type.
    BacklogQuota(BacklogQuotaType),
    MaxProducersPerTopic,
    MaxConsumersPerTopic,
    MaxConsumersPerSubscription,
    MaxUnackedPerConsumer,
    MaxUnackedPerSubscription,
    /// The topic-level form of `MaxUnackedPerConsumer` (Pulsar's route name).
    MaxUnackedOnConsumer,
    /// The topic-level form of `MaxUnackedPerSubscription`.
    MaxUnackedOnSubscription,
    MaxTopicsPerNamespace,
    MaxMessageSize,
    Deduplication,
    DelayedDelivery,
    InactiveTopicPolicies,
    AutoTopicCreation,
    CompactionThreshold,
    SubscribeRate,
    SubscriptionExpirationTime,
    OffloadThreshold,
    OffloadThresholdInSeconds,
    OffloadDeletionLag,
    /// The topic-level offload policies (thresholds, lag, driver, bucket).
    OffloadPolicies,
}

/// What a verb does with its policy.
pub enum Op {
    Set(Value),
    /// Set with PUT, for the few policies Pulsar sets that way.
    Put(Value),
    Get,
    Remove,
}

impl Policy {
    /// The policy's route under `base` (a namespace's or a topic's path).
    pub fn path(self, base: ApiPath, op: &Op) -> ApiPath {
        let segment = match (self, op) {
            (Policy::BacklogQuota(_), Op::Get) => "backlogQuotaMap",
            (Policy::BacklogQuota(t), _) => {
                return base
                    .join("backlogQuota")
                    .query("backlogQuotaType", t.as_str())
            }
            (Policy::Replication, _) => "replication",
            (Policy::PublishRate, _) => "publishRate",
            (Policy::DispatchRate, _) => "dispatchRate",
            (Policy::SubscriptionDispatchRate, _) => "subscriptionDispatchRate",
            (Policy::ReplicatorDispatchRate, _) => "replicatorDispatchRate",
            (Policy::Retention, _) => "retention",
            (Policy::MessageTtl, _) => "messageTTL",
            (Policy::MaxProducersPerTopic, _) => "maxProducersPerTopic",
            (Policy::MaxConsumersPerTopic, _) => "maxConsumersPerTopic",
            (Policy::MaxConsumersPerSubscription, _) => "maxConsumersPerSubscription",
            (Policy::MaxUnackedPerConsumer, _) => "maxUnackedMessagesPerConsumer",
            (Policy::MaxUnackedPerSubscription, _) => "maxUnackedMessagesPerSubscription",
            (Policy::MaxUnackedOnConsumer, _) => "maxUnackedMessagesOnConsumer",
            (Policy::MaxUnackedOnSubscription, _) => "maxUnackedMessagesOnSubscription",
            (Policy::MaxTopicsPerNamespace, _) => "maxTopicsPerNamespace",
            (Policy::MaxMessageSize, _) => "maxMessageSize",
            (Policy::Deduplication, _) => "deduplication",
            (Policy::DelayedDelivery, _) => "delayedDelivery",
            (Policy::InactiveTopicPolicies, _) => "inactiveTopicPolicies",
            (Policy::AutoTopicCreation, _) => "autoTopicCreation",
            (Policy::CompactionThreshold, _) => "compactionThreshold",
            (Policy::SubscribeRate, _) => "subscribeRate",
            (Policy::SubscriptionExpirationTime, _) => "subscriptionExpirationTime",
            (Policy::OffloadThreshold, _) => "offloadThreshold",
            (Policy::OffloadThresholdInSeconds, _) => "offloadThresholdInSeconds",
            (Policy::OffloadDeletionLag, _) => "offloadDeletionLagMs",
            (Policy::OffloadPolicies, _) => "offloadPolicies",
        };
        base.join(segment)
    }
}

/// Sends `op` to the policy route `path`. A GET of an unset policy is 204,
/// which prints nothing.
pub async fn send(client: &AdminClient, path: &ApiPath, op: Op) -> Result<Value, AdminError> {
    match op {
        Op::Set(body) => client.post(path, Some(&body)).await,
        Op::Put(body) => client.put(path, Some(&body)).await,
        Op::Get => client.get(path).await,
        Op::Remove => client.delete(path).await,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum BacklogQuotaType {
    /// Limits the backlog's size.
    DestinationStorage,
    /// Limits the age of the oldest unacknowledged message.
    MessageAge,
}

impl BacklogQuotaType {
    pub fn as_str(self) -> &'static str {
        match self {
            BacklogQuotaType::DestinationStorage => "destination_storage",
            BacklogQuotaType::MessageAge => "message_age",
        }
    }
}

/// `set-publish-rate`'s flags.
#[derive(Args)]
pub struct PublishRateArgs {
    /// Messages per second per topic (-1: unlimited).
    #[arg(short = 'm', long, default_value_t = -1, allow_negative_numbers = true)]
    msg_publish_rate: i64,
    /// Bytes per second per topic (-1: unlimited).
    #[arg(short = 'b', long, default_value_t = -1, allow_negative_numbers = true)]
    byte_publish_rate: i64,
}

impl PublishRateArgs {
    pub fn body(&self) -> Value {
        json!({
            "publishThrottlingRateInMsg": self.msg_publish_rate,
            "publishThrottlingRateInByte": self.byte_publish_rate,
        })
    }
}

/// The flags of `set-dispatch-rate`, `set-subscription-dispatch-rate` and
/// `set-replicator-dispatch-rate`.
#[derive(Args)]
pub struct DispatchRateArgs {
    /// Messages per period (-1: unlimited). pulsar-admin's -md works too.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    msg_dispatch_rate: i64,
    /// Bytes per period (-1: unlimited). pulsar-admin's -bd works too.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    byte_dispatch_rate: i64,
    /// The period, in seconds. pulsar-admin's -dt works too.
    #[arg(long, default_value_t = 1)]
    dispatch_rate_period: u32,
    /// Add the rates to the publish rate. pulsar-admin's -rp works too.
    #[arg(long)]
    relative_to_publish_rate: bool,
}

impl DispatchRateArgs {
    pub fn body(&self) -> Value {
        json!({
            "dispatchThrottlingRateInMsg": self.msg_dispatch_rate,
            "dispatchThrottlingRateInByte": self.byte_dispatch_rate,
            "ratePeriodInSecond": self.dispatch_rate_period,
            "relativeToPublishRate": self.relative_to_publish_rate,
        })
    }
}

/// `set-subscribe-rate`'s flags.
#[derive(Args)]
pub struct SubscribeRateArgs {
    /// SUBSCRIBEs one consumer may send per period (-1: unlimited).
    /// pulsar-admin's -sr works too.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-1..))]
    subscribe_rate: i32,
    /// The period, in seconds. pulsar-admin's -st works too.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i32).range(1..))]
    subscribe_rate_period: i32,
}

impl SubscribeRateArgs {
    pub fn body(&self) -> Value {
        json!({
            "subscribeThrottlingRatePerConsumer": self.subscribe_rate,
            "ratePeriodInSecond": self.subscribe_rate_period,
        })
    }
}

/// `set-retention`'s flags.
#[derive(Args)]
pub struct RetentionArgs {
    /// Retention time: seconds or 10m, 3h, 2d, 5w (-1: unlimited).
    #[arg(short = 't', long, allow_negative_numbers = true,
          value_parser = units::parse_retention_time_minutes)]
    time: i64,
    /// Retention size: bytes or 10K, 512M, 10G, 3T (-1: unlimited).
    #[arg(short = 's', long, allow_negative_numbers = true,
          value_parser = units::parse_retention_size_mb)]
    size: i64,
}

impl RetentionArgs {
    pub fn body(&self) -> Value {
        json!({
            "retentionTimeInMinutes": self.time,
            "retentionSizeInMB": self.size,
        })
    }
}

/// `--enable` or `--disable`, exactly one.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct EnableOrDisable {
    #[arg(short = 'e', long)]
    enable: bool,
    #[arg(short = 'd', long)]
    disable: bool,
}

impl EnableOrDisable {
    /// `--enable` was given (clap lets exactly one of the two through).
    pub fn enabled(&self) -> bool {
        debug_assert!(self.enable != self.disable, "clap requires exactly one");
        self.enable
    }
}

/// `set-delayed-delivery`'s flags.
#[derive(Args)]
pub struct DelayedDeliveryArgs {
    #[command(flatten)]
    switch: EnableOrDisable,
    /// The tick time: seconds or 10s, 1m, 5h. Stored, not applied: Kilonova
    /// tracks delivery times exactly.
    #[arg(short = 't', long, default_value = "1s", value_parser = units::parse_duration_ms)]
    time: i64,
}

impl DelayedDeliveryArgs {
    pub fn body(&self) -> Value {
        json!({ "active": self.switch.enabled(), "tickTime": self.time })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum InactiveTopicDeleteMode {
    DeleteWhenNoSubscriptions,
    DeleteWhenSubscriptionsCaughtUp,
}

/// `--enable-delete-while-inactive` or `--disable-delete-while-inactive`.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct DeleteWhileInactive {
    #[arg(short = 'e', long = "enable-delete-while-inactive")]
    enable: bool,
    #[arg(short = 'd', long = "disable-delete-while-inactive")]
    disable: bool,
}

/// `set-inactive-topic-policies`'s flags.
#[derive(Args)]
pub struct InactiveTopicArgs {
    #[command(flatten)]
    switch: DeleteWhileInactive,
    /// Seconds or 10m, 1h, 3d.
    #[arg(short = 't', long, value_parser = units::parse_duration_secs_i32)]
    max_inactive_duration: i32,
    #[arg(short = 'm', long, value_enum)]
    delete_mode: InactiveTopicDeleteMode,
}

impl InactiveTopicArgs {
    pub fn body(&self) -> Value {
        json!({
            "deleteWhileInactive": self.switch.enable,
            "maxInactiveDurationSeconds": self.max_inactive_duration,
            "inactiveTopicDeleteMode": self.delete_mode,
        })
    }
}

#[cfg(test)]
impl Op {
    /// The HTTP method and the body, for tests that check a verb's request.
    pub fn method_and_body(self) -> (&'static str, Option<Value>) {
        match self {
            Op::Set(body) => ("POST", Some(body)),
            Op::Put(body) => ("PUT", Some(body)),
            Op::Get => ("GET", None),
            Op::Remove => ("DELETE", None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_quotas_are_read_as_a_map_and_written_per_type() {
        let base = || ApiPath::new(["namespaces", "t", "ns"]);
        let quota = Policy::BacklogQuota(BacklogQuotaType::MessageAge);
        assert_eq!(
            quota.path(base(), &Op::Get).to_string(),
            "/admin/v2/namespaces/t/ns/backlogQuotaMap"
        );
        assert_eq!(
            quota.path(base(), &Op::Remove).to_string(),
            "/admin/v2/namespaces/t/ns/backlogQuota?backlogQuotaType=message_age"
        );
        assert_eq!(
            Policy::DelayedDelivery
                .path(base(), &Op::Set(Value::Null))
                .to_string(),
            "/admin/v2/namespaces/t/ns/delayedDelivery"
        );
    }
}
