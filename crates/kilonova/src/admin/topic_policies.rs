//! Topic-level policies: `kilonova admin topics set-X / get-X / remove-X`, also
//! the `topicPolicies` group as pulsar-admin has it →
//! `POST` / `GET` / `DELETE /admin/v2/{domain}/{t}/{ns}/{topic}/{policy}`.
//!
//! A topic's value overrides its namespace's; `get-X` shows the topic's own
//! value only (nothing when it has none). A partitioned topic takes them on
//! its base name. Verb and flag names are pulsar-admin's, which differ from
//! the namespace verbs' in places (`set-max-producers -p`, `set-message-ttl
//! -t`). pulsar-admin's `--global` and `--applied` are not supported.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use kilonova_metadata::TopicName;

use super::client::{AdminClient, AdminError, ApiPath, ResourcePath};
use super::offload::OffloadPoliciesArgs;
use super::policies::{
    self, DelayedDeliveryArgs, DispatchRateArgs, EnableOrDisable, InactiveTopicArgs, Op, Policy,
    PublishRateArgs, RetentionArgs,
};
use super::{units, Output};

#[derive(Subcommand)]
pub enum TopicPolicyCmd {
    /// Keep the topic's acknowledged messages for a time and/or size.
    SetRetention(SetRetention),
    /// Show the topic's retention policy.
    GetRetention(Topic),
    /// Remove the topic's retention policy.
    RemoveRetention(Topic),
    /// Expire the topic's unacknowledged messages after a time.
    SetMessageTtl(SetMessageTtl),
    /// Show the topic's message TTL.
    GetMessageTtl(Topic),
    /// Remove the topic's message TTL.
    RemoveMessageTtl(Topic),
    /// Limit the topic's publish rate.
    SetPublishRate(SetPublishRate),
    /// Show the topic's publish rate.
    GetPublishRate(Topic),
    /// Remove the topic's publish rate.
    RemovePublishRate(Topic),
    /// Limit the topic's dispatch rate.
    SetDispatchRate(SetDispatchRate),
    /// Show the topic's dispatch rate.
    GetDispatchRate(Topic),
    /// Remove the topic's dispatch rate.
    RemoveDispatchRate(Topic),
    /// Limit the dispatch rate of each of the topic's subscriptions.
    SetSubscriptionDispatchRate(SetDispatchRate),
    /// Show the topic's subscription dispatch rate.
    GetSubscriptionDispatchRate(Topic),
    /// Remove the topic's subscription dispatch rate.
    RemoveSubscriptionDispatchRate(Topic),
    /// Limit what each of the topic's replicators sends to a remote cluster.
    SetReplicatorDispatchRate(SetDispatchRate),
    /// Show the topic's replicator dispatch rate.
    GetReplicatorDispatchRate(Topic),
    /// Remove the topic's replicator dispatch rate.
    RemoveReplicatorDispatchRate(Topic),
    /// Replicate the topic to these clusters instead of its namespace's.
    SetReplicationClusters(SetReplicationClusters),
    /// Show the topic's own replication clusters.
    GetReplicationClusters(Topic),
    /// Remove the topic's replication clusters (its namespace's apply again).
    RemoveReplicationClusters(Topic),
    /// Limit the topic's producers.
    SetMaxProducers(SetMaxProducers),
    /// Show the topic's producer limit.
    GetMaxProducers(Topic),
    /// Remove the topic's producer limit.
    RemoveMaxProducers(Topic),
    /// Limit the topic's consumers.
    SetMaxConsumers(SetMaxConsumers),
    /// Show the topic's consumer limit.
    GetMaxConsumers(Topic),
    /// Remove the topic's consumer limit.
    RemoveMaxConsumers(Topic),
    /// Limit the consumers of each of the topic's subscriptions.
    SetMaxConsumersPerSubscription(SetMaxConsumersPerSubscription),
    /// Show the topic's per-subscription consumer limit.
    GetMaxConsumersPerSubscription(Topic),
    /// Remove the topic's per-subscription consumer limit.
    RemoveMaxConsumersPerSubscription(Topic),
    /// Limit the size of the messages producers may send to the topic.
    SetMaxMessageSize(SetMaxMessageSize),
    /// Show the topic's message size limit.
    GetMaxMessageSize(Topic),
    /// Remove the topic's message size limit.
    RemoveMaxMessageSize(Topic),
    /// Turn message deduplication on or off for the topic.
    SetDeduplication(SetDeduplication),
    /// Show the topic's deduplication override.
    GetDeduplication(Topic),
    /// Remove the topic's deduplication override.
    RemoveDeduplication(Topic),
    /// Turn delayed delivery on or off for the topic.
    SetDelayedDelivery(SetDelayedDelivery),
    /// Show the topic's delayed delivery policy.
    GetDelayedDelivery(Topic),
    /// Remove the topic's delayed delivery policy.
    RemoveDelayedDelivery(Topic),
    /// Delete the topic after a time without activity.
    SetInactiveTopicPolicies(SetInactiveTopicPolicies),
    /// Show the topic's inactive-topic policy.
    GetInactiveTopicPolicies(Topic),
    /// Remove the topic's inactive-topic policy.
    RemoveInactiveTopicPolicies(Topic),
    /// Stop dispatching to a consumer of the topic with this many unacknowledged messages.
    #[command(alias = "set-max-unacked-messages-on-consumer")]
    SetMaxUnackedMessagesPerConsumer(SetMaxUnacked),
    /// Show the topic's per-consumer unacknowledged message limit.
    #[command(alias = "get-max-unacked-messages-on-consumer")]
    GetMaxUnackedMessagesPerConsumer(Topic),
    /// Remove the topic's per-consumer unacknowledged message limit.
    #[command(alias = "remove-max-unacked-messages-on-consumer")]
    RemoveMaxUnackedMessagesPerConsumer(Topic),
    /// Stop dispatching on a subscription of the topic with this many unacknowledged messages.
    #[command(alias = "set-max-unacked-messages-on-subscription")]
    SetMaxUnackedMessagesPerSubscription(SetMaxUnacked),
    /// Show the topic's per-subscription unacknowledged message limit.
    #[command(alias = "get-max-unacked-messages-on-subscription")]
    GetMaxUnackedMessagesPerSubscription(Topic),
    /// Remove the topic's per-subscription unacknowledged message limit.
    #[command(alias = "remove-max-unacked-messages-on-subscription")]
    RemoveMaxUnackedMessagesPerSubscription(Topic),
    /// Compact the topic automatically when its uncompacted backlog reaches a size.
    SetCompactionThreshold(SetCompactionThreshold),
    /// Show the topic's compaction threshold.
    GetCompactionThreshold(Topic),
    /// Remove the topic's compaction threshold.
    RemoveCompactionThreshold(Topic),
    /// Set the topic's offload policies: driver, bucket, thresholds, deletion lag.
    SetOffloadPolicies(SetOffloadPolicies),
    /// Show the topic's offload policies.
    GetOffloadPolicies(Topic),
    /// Remove the topic's offload policies.
    RemoveOffloadPolicies(Topic),
}

// Just the topic (no doc comment: clap would show it as every verb's help).
#[derive(Args)]
pub struct Topic {
    /// persistent://tenant/namespace/topic
    topic: TopicName,
}

#[derive(Args)]
pub struct SetRetention {
    topic: TopicName,
    #[command(flatten)]
    retention: RetentionArgs,
}

#[derive(Args)]
pub struct SetMessageTtl {
    topic: TopicName,
    /// Seconds or 10m, 3h, 2d (0: no TTL).
    #[arg(short = 't', long, allow_negative_numbers = true,
          value_parser = units::parse_duration_secs_i32)]
    ttl: i32,
}

#[derive(Args)]
pub struct SetPublishRate {
    topic: TopicName,
    #[command(flatten)]
    rate: PublishRateArgs,
}

#[derive(Args)]
pub struct SetDispatchRate {
    topic: TopicName,
    #[command(flatten)]
    rate: DispatchRateArgs,
}

#[derive(Args)]
pub struct SetReplicationClusters {
    topic: TopicName,
    /// Comma-separated cluster names.
    #[arg(short = 'c', long, value_delimiter = ',', required = true)]
    clusters: Vec<String>,
}

#[derive(Args)]
pub struct SetMaxProducers {
    topic: TopicName,
    /// 0: unlimited.
    #[arg(short = 'p', long, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    max_producers: i32,
}

#[derive(Args)]
pub struct SetMaxConsumers {
    topic: TopicName,
    /// 0: unlimited.
    #[arg(short = 'c', long, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    max_consumers: i32,
}

#[derive(Args)]
pub struct SetMaxConsumersPerSubscription {
    topic: TopicName,
    /// 0: unlimited.
    #[arg(short = 'c', long, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    max_consumers_per_subscription: i32,
}

#[derive(Args)]
pub struct SetMaxMessageSize {
    topic: TopicName,
    /// Bytes (metadata and payload), or 512K, 5M; at most the broker's
    /// max_message_bytes (0: the broker's).
    #[arg(short = 'm', long, allow_negative_numbers = true,
          value_parser = units::parse_size_bytes_i32)]
    max_message_size: i32,
}

#[derive(Args)]
pub struct SetMaxUnacked {
    topic: TopicName,
    /// Messages (0: unlimited).
    #[arg(short = 'm', long = "maxNum", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    max_num: i32,
}

#[derive(Args)]
pub struct SetCompactionThreshold {
    topic: TopicName,
    /// Bytes, or 10K, 100M, 1G (0: no automatic compaction).
    #[arg(short = 't', long = "threshold", value_parser = units::parse_size_bytes)]
    threshold: u64,
}

#[derive(Args)]
pub struct SetOffloadPolicies {
    topic: TopicName,
    #[command(flatten)]
    policies: OffloadPoliciesArgs,
}

#[derive(Args)]
pub struct SetDeduplication {
    topic: TopicName,
    #[command(flatten)]
    switch: EnableOrDisable,
}

#[derive(Args)]
pub struct SetDelayedDelivery {
    topic: TopicName,
    #[command(flatten)]
    delayed: DelayedDeliveryArgs,
}

#[derive(Args)]
pub struct SetInactiveTopicPolicies {
    topic: TopicName,
    #[command(flatten)]
    policy: InactiveTopicArgs,
}

impl TopicPolicyCmd {
    /// The policy route and what to do there.
    fn request(&self) -> Result<(ApiPath, Op), AdminError> {
        let (topic, policy, op) = self.policy_op()?;
        Ok((policy.path(topic.path(), &op), op))
    }

    /// The topic, the policy and what to do with it.
    fn policy_op(&self) -> Result<(&TopicName, Policy, Op), AdminError> {
        use Policy as P;
        use TopicPolicyCmd as C;
        fn get(t: &Topic, p: Policy) -> (&TopicName, Policy, Op) {
            (&t.topic, p, Op::Get)
        }
        fn remove(t: &Topic, p: Policy) -> (&TopicName, Policy, Op) {
            (&t.topic, p, Op::Remove)
        }
        fn set(t: &TopicName, p: Policy, body: Value) -> (&TopicName, Policy, Op) {
            (t, p, Op::Set(body))
        }
        Ok(match self {
            C::SetRetention(a) => set(&a.topic, P::Retention, a.retention.body()),
            C::GetRetention(t) => get(t, P::Retention),
            C::RemoveRetention(t) => remove(t, P::Retention),
            C::SetMessageTtl(a) => set(&a.topic, P::MessageTtl, json!(a.ttl)),
            C::GetMessageTtl(t) => get(t, P::MessageTtl),
            C::RemoveMessageTtl(t) => remove(t, P::MessageTtl),
            C::SetPublishRate(a) => set(&a.topic, P::PublishRate, a.rate.body()),
            C::GetPublishRate(t) => get(t, P::PublishRate),
            C::RemovePublishRate(t) => remove(t, P::PublishRate),
            C::SetDispatchRate(a) => set(&a.topic, P::DispatchRate, a.rate.body()),
            C::GetDispatchRate(t) => get(t, P::DispatchRate),
            C::RemoveDispatchRate(t) => remove(t, P::DispatchRate),
            C::SetSubscriptionDispatchRate(a) => {
                set(&a.topic, P::SubscriptionDispatchRate, a.rate.body())
            }
            C::GetSubscriptionDispatchRate(t) => get(t, P::SubscriptionDispatchRate),
            C::RemoveSubscriptionDispatchRate(t) => remove(t, P::SubscriptionDispatchRate),
            C::SetReplicatorDispatchRate(a) => {
                set(&a.topic, P::ReplicatorDispatchRate, a.rate.body())
            }
            C::GetReplicatorDispatchRate(t) => get(t, P::ReplicatorDispatchRate),
            C::RemoveReplicatorDispatchRate(t) => remove(t, P::ReplicatorDispatchRate),
            C::SetReplicationClusters(a) => set(&a.topic, P::Replication, json!(a.clusters)),
            C::GetReplicationClusters(t) => get(t, P::Replication),
            C::RemoveReplicationClusters(t) => remove(t, P::Replication),
            C::SetMaxProducers(a) => set(&a.topic, P::MaxProducersPerTopic, json!(a.max_producers)),
            C::GetMaxProducers(t) => get(t, P::MaxProducersPerTopic),
            C::RemoveMaxProducers(t) => remove(t, P::MaxProducersPerTopic),
            C::SetMaxConsumers(a) => set(&a.topic, P::MaxConsumersPerTopic, json!(a.max_consumers)),
            C::GetMaxConsumers(t) => get(t, P::MaxConsumersPerTopic),
            C::RemoveMaxConsumers(t) => remove(t, P::MaxConsumersPerTopic),
            C::SetMaxConsumersPerSubscription(a) => set(
                &a.topic,
                P::MaxConsumersPerSubscription,
                json!(a.max_consumers_per_subscription),
            ),
            C::GetMaxConsumersPerSubscription(t) => get(t, P::MaxConsumersPerSubscription),
            C::RemoveMaxConsumersPerSubscription(t) => remove(t, P::MaxConsumersPerSubscription),
            C::SetMaxMessageSize(a) => set(&a.topic, P::MaxMessageSize, json!(a.max_message_size)),
            C::GetMaxMessageSize(t) => get(t, P::MaxMessageSize),
            C::RemoveMaxMessageSize(t) => remove(t, P::MaxMessageSize),
            C::SetDeduplication(a) => set(&a.topic, P::Deduplication, json!(a.switch.enabled())),
            C::GetDeduplication(t) => get(t, P::Deduplication),
            C::RemoveDeduplication(t) => remove(t, P::Deduplication),
            C::SetDelayedDelivery(a) => set(&a.topic, P::DelayedDelivery, a.delayed.body()),
            C::GetDelayedDelivery(t) => get(t, P::DelayedDelivery),
            C::RemoveDelayedDelivery(t) => remove(t, P::DelayedDelivery),
            C::SetInactiveTopicPolicies(a) => {
                set(&a.topic, P::InactiveTopicPolicies, a.policy.body())
            }
            C::GetInactiveTopicPolicies(t) => get(t, P::InactiveTopicPolicies),
            C::RemoveInactiveTopicPolicies(t) => remove(t, P::InactiveTopicPolicies),
            C::SetMaxUnackedMessagesPerConsumer(a) => {
                set(&a.topic, P::MaxUnackedOnConsumer, json!(a.max_num))
            }
            C::GetMaxUnackedMessagesPerConsumer(t) => get(t, P::MaxUnackedOnConsumer),
            C::RemoveMaxUnackedMessagesPerConsumer(t) => remove(t, P::MaxUnackedOnConsumer),
            C::SetMaxUnackedMessagesPerSubscription(a) => {
                set(&a.topic, P::MaxUnackedOnSubscription, json!(a.max_num))
            }
            C::GetMaxUnackedMessagesPerSubscription(t) => get(t, P::MaxUnackedOnSubscription),
            C::RemoveMaxUnackedMessagesPerSubscription(t) => remove(t, P::MaxUnackedOnSubscription),
            C::SetCompactionThreshold(a) => {
                set(&a.topic, P::CompactionThreshold, json!(a.threshold))
            }
            C::GetCompactionThreshold(t) => get(t, P::CompactionThreshold),
            C::RemoveCompactionThreshold(t) => remove(t, P::CompactionThreshold),
            C::SetOffloadPolicies(a) => set(&a.topic, P::OffloadPolicies, a.policies.body()?),
            C::GetOffloadPolicies(t) => get(t, P::OffloadPolicies),
            C::RemoveOffloadPolicies(t) => remove(t, P::OffloadPolicies),
        })
    }
}

pub async fn run(client: &AdminClient, cmd: TopicPolicyCmd) -> Result<Output, AdminError> {
    let (path, op) = cmd.request()?;
    Ok(Output::Document(policies::send(client, &path, op).await?))
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::{topics::TopicsCmd, Group};
    use super::*;

    /// `topics <args>` and `topicPolicies <args>`: the same verb either way.
    fn policy_cmds(args: &[&str]) -> [TopicPolicyCmd; 2] {
        let parsed = |group: &str| {
            let mut argv = vec![group];
            argv.extend_from_slice(args);
            match parse(&argv) {
                Ok(a) => a.group,
                Err(e) => panic!("{argv:?} should parse: {e}"),
            }
        };
        let via_topics = match parsed("topics") {
            Group::Topics {
                verb: TopicsCmd::Policy(p),
            } => p,
            _ => panic!("{args:?} is not a topic policy verb"),
        };
        let via_topic_policies = match parsed("topicPolicies") {
            Group::TopicPolicies { verb } => verb,
            _ => panic!("not a topicPolicies verb"),
        };
        [via_topics, via_topic_policies]
    }

    fn refused(args: &[&str]) -> bool {
        let mut argv = vec!["topics"];
        argv.extend_from_slice(args);
        parse(&argv).is_err()
    }

    /// The request a verb makes: method, path (after /admin/v2), body.
    fn request(args: &[&str]) -> (&'static str, String, Option<Value>) {
        let [via_topics, via_topic_policies] = policy_cmds(args).map(|c| {
            let (path, op) = c.request().unwrap();
            let (method, body) = op.method_and_body();
            (method, path.to_string(), body)
        });
        assert_eq!(via_topics, via_topic_policies, "{args:?}");
        via_topics
    }

    const T: &str = "/admin/v2/persistent/t/ns/x";

    /// `get-…` and `remove-…` of `segment` on persistent://t/ns/x.
    fn assert_get_and_remove(verb: &str, segment: &str) {
        let path = format!("{T}/{segment}");
        assert_eq!(
            request(&[&format!("get-{verb}"), "t/ns/x"]),
            ("GET", path.clone(), None)
        );
        assert_eq!(
            request(&[&format!("remove-{verb}"), "persistent://t/ns/x"]),
            ("DELETE", path, None)
        );
    }

    #[test]
    fn offload_policies_send_pulsars_offload_policies_body() {
        assert_eq!(
            request(&[
                "set-offload-policies",
                "t/ns/x",
                "-d",
                "aws-s3",
                "-b",
                "bkt",
                "-r",
                "eu",
                "-t",
                "10M",
                "-ts",
                "1h",
                "-dl",
                "0",
            ]),
            (
                "POST",
                format!("{T}/offloadPolicies"),
                Some(json!({
                    "managedLedgerOffloadDriver": "aws-s3",
                    "s3ManagedLedgerOffloadBucket": "bkt",
                    "s3ManagedLedgerOffloadRegion": "eu",
                    "managedLedgerOffloadThresholdInBytes": 10 << 20,
                    "managedLedgerOffloadThresholdInSeconds": 3600,
                    "managedLedgerOffloadDeletionLagInMillis": 0,
                }))
            )
        );
        assert_eq!(
            request(&[
                "set-offload-policies",
                "t/ns/x",
                "--driver",
                "filesystem",
                "--bucket",
                "b",
                "--offloadThresholdInBytes",
                "-1",
            ])
            .2,
            Some(json!({
                "managedLedgerOffloadDriver": "filesystem",
                "managedLedgerOffloadBucket": "b",
                "managedLedgerOffloadThresholdInBytes": -1,
            })),
            "driver-neutral names for the other drivers"
        );
        assert_get_and_remove("offload-policies", "offloadPolicies");
        assert!(
            refused(&["set-offload-policies", "t/ns/x", "-b", "bkt"]),
            "--driver is required"
        );
        assert!(
            refused(&["set-offload-policies", "t/ns/x", "-d", "S3", "-s", "secret"]),
            "no credentials"
        );
        let [cmd, _] = policy_cmds(&["set-offload-policies", "t/ns/x", "-d", "S3", "-b", "bkt"]);
        assert!(
            matches!(cmd.request(), Err(AdminError::InvalidArgument(m)) if m.starts_with("Either s3ManagedLedgerOffloadRegion")),
            "pulsar-admin's check: an S3 driver needs a region or an endpoint"
        );
    }

    #[test]
    fn max_message_size_is_bytes_or_a_size_with_a_unit() {
        assert_eq!(
            request(&[
                "set-max-message-size",
                "persistent://t/ns/x",
                "--max-message-size",
                "1048576"
            ]),
            ("POST", format!("{T}/maxMessageSize"), Some(json!(1048576)))
        );
        assert_eq!(
            request(&["set-max-message-size", "t/ns/x", "-m", "5M"]).2,
            Some(json!(5 << 20))
        );
        assert_get_and_remove("max-message-size", "maxMessageSize");
        assert!(refused(&["set-max-message-size", "t/ns/x", "-m", "-1"]));
        assert!(refused(&["set-max-message-size", "t/ns/x", "-m", "2G"]));
        assert!(refused(&["set-max-message-size", "t/ns/x"]));
    }

    #[test]
    fn max_consumers_per_subscription_takes_c() {
        for flag in ["-c", "--max-consumers-per-subscription"] {
            assert_eq!(
                request(&["set-max-consumers-per-subscription", "t/ns/x", flag, "2"]),
                (
                    "POST",
                    format!("{T}/maxConsumersPerSubscription"),
                    Some(json!(2))
                )
            );
        }
        assert_get_and_remove(
            "max-consumers-per-subscription",
            "maxConsumersPerSubscription",
        );
        assert!(refused(&[
            "set-max-consumers-per-subscription",
            "t/ns/x",
            "-c",
            "-1"
        ]));
    }

    #[test]
    fn max_producers_and_consumers_use_pulsar_admins_topic_flag_names() {
        assert_eq!(
            request(&["set-max-producers", "t/ns/x", "--max-producers", "3"]),
            ("POST", format!("{T}/maxProducersPerTopic"), Some(json!(3)))
        );
        assert_eq!(
            request(&["set-max-consumers", "t/ns/x", "-c", "4"]),
            ("POST", format!("{T}/maxConsumersPerTopic"), Some(json!(4)))
        );
        assert_get_and_remove("max-producers", "maxProducersPerTopic");
        assert_get_and_remove("max-consumers", "maxConsumersPerTopic");
        assert!(refused(&["set-max-producers", "t/ns/x", "-p", "-1"]));
    }

    #[test]
    fn delayed_delivery_sends_active_and_the_tick_in_milliseconds() {
        assert_eq!(
            request(&[
                "set-delayed-delivery",
                "t/ns/x",
                "--enable",
                "--time",
                "10s"
            ]),
            (
                "POST",
                format!("{T}/delayedDelivery"),
                Some(json!({"active": true, "tickTime": 10_000}))
            )
        );
        assert_eq!(
            request(&["set-delayed-delivery", "t/ns/x", "-d"]).2,
            Some(json!({"active": false, "tickTime": 1000})),
            "the tick defaults to 1s"
        );
        assert_get_and_remove("delayed-delivery", "delayedDelivery");
        assert!(refused(&["set-delayed-delivery", "t/ns/x"]));
        assert!(refused(&["set-delayed-delivery", "t/ns/x", "-e", "-d"]));
    }

    #[test]
    fn rates_take_the_namespace_verbs_flags() {
        assert_eq!(
            request(&["set-publish-rate", "t/ns/x", "-m", "30"]),
            (
                "POST",
                format!("{T}/publishRate"),
                Some(json!({"publishThrottlingRateInMsg": 30, "publishThrottlingRateInByte": -1}))
            )
        );
        let dispatch = json!({
            "dispatchThrottlingRateInMsg": 100,
            "dispatchThrottlingRateInByte": -1,
            "ratePeriodInSecond": 2,
            "relativeToPublishRate": false,
        });
        assert_eq!(
            request(&["set-dispatch-rate", "t/ns/x", "-md", "100", "-dt", "2"]),
            ("POST", format!("{T}/dispatchRate"), Some(dispatch.clone()))
        );
        assert_eq!(
            request(&[
                "set-subscription-dispatch-rate",
                "t/ns/x",
                "--msg-dispatch-rate",
                "100",
                "--dispatch-rate-period",
                "2"
            ]),
            (
                "POST",
                format!("{T}/subscriptionDispatchRate"),
                Some(dispatch)
            )
        );
        assert_get_and_remove("publish-rate", "publishRate");
        assert_get_and_remove("dispatch-rate", "dispatchRate");
        assert_get_and_remove("subscription-dispatch-rate", "subscriptionDispatchRate");
        assert_eq!(
            request(&["set-replicator-dispatch-rate", "t/ns/x", "-md", "20"]).1,
            format!("{T}/replicatorDispatchRate")
        );
        assert_get_and_remove("replicator-dispatch-rate", "replicatorDispatchRate");
    }

    #[test]
    fn replication_clusters_are_a_comma_separated_list() {
        for flag in ["-c", "--clusters"] {
            assert_eq!(
                request(&["set-replication-clusters", "t/ns/x", flag, "a,b"]),
                ("POST", format!("{T}/replication"), Some(json!(["a", "b"])))
            );
        }
        assert_get_and_remove("replication-clusters", "replication");
        assert!(refused(&["set-replication-clusters", "t/ns/x"]));
    }

    #[test]
    fn retention_and_ttl_convert_units() {
        assert_eq!(
            request(&["set-retention", "t/ns/x", "-s", "1G", "-t", "2h"]),
            (
                "POST",
                format!("{T}/retention"),
                Some(json!({"retentionTimeInMinutes": 120, "retentionSizeInMB": 1024}))
            )
        );
        for flag in ["-t", "--ttl"] {
            assert_eq!(
                request(&["set-message-ttl", "t/ns/x", flag, "1h"]),
                ("POST", format!("{T}/messageTTL"), Some(json!(3600)))
            );
        }
        assert_get_and_remove("retention", "retention");
        assert_get_and_remove("message-ttl", "messageTTL");
        assert!(refused(&["set-message-ttl", "t/ns/x", "-t", "-5"]));
    }

    #[test]
    fn deduplication_and_inactive_topic_policies() {
        assert_eq!(
            request(&["set-deduplication", "t/ns/x", "-e"]),
            ("POST", format!("{T}/deduplication"), Some(json!(true)))
        );
        assert!(refused(&["set-deduplication", "t/ns/x"]));
        assert_eq!(
            request(&[
                "set-inactive-topic-policies",
                "t/ns/x",
                "-d",
                "-t",
                "10m",
                "-m",
                "delete_when_subscriptions_caught_up"
            ]),
            (
                "POST",
                format!("{T}/inactiveTopicPolicies"),
                Some(json!({
                    "deleteWhileInactive": false,
                    "maxInactiveDurationSeconds": 600,
                    "inactiveTopicDeleteMode": "delete_when_subscriptions_caught_up",
                }))
            )
        );
        assert_get_and_remove("deduplication", "deduplication");
        assert_get_and_remove("inactive-topic-policies", "inactiveTopicPolicies");
    }

    #[test]
    fn max_unacked_limits_use_pulsars_topic_routes_and_max_num_flag() {
        for (verb, segment) in [
            (
                "max-unacked-messages-per-consumer",
                "maxUnackedMessagesOnConsumer",
            ),
            (
                "max-unacked-messages-per-subscription",
                "maxUnackedMessagesOnSubscription",
            ),
        ] {
            for flag in ["-m", "--maxNum"] {
                assert_eq!(
                    request(&[&format!("set-{verb}"), "t/ns/x", flag, "20"]),
                    ("POST", format!("{T}/{segment}"), Some(json!(20)))
                );
            }
            assert_get_and_remove(verb, segment);
            let on = verb.replace("-per-", "-on-");
            assert_get_and_remove(&on, segment);
            assert_eq!(
                request(&[&format!("set-{on}"), "t/ns/x", "-m", "0"]).2,
                Some(json!(0)),
                "pulsar-admin's older -on- names work too"
            );
            assert!(refused(&[&format!("set-{verb}"), "t/ns/x", "-m", "-1"]));
            assert!(refused(&[&format!("set-{verb}"), "t/ns/x"]));
        }
    }

    #[test]
    fn compaction_threshold_takes_a_size() {
        for flag in ["-t", "--threshold"] {
            assert_eq!(
                request(&["set-compaction-threshold", "t/ns/x", flag, "10M"]),
                (
                    "POST",
                    format!("{T}/compactionThreshold"),
                    Some(json!(10 << 20))
                )
            );
        }
        assert_eq!(
            request(&["set-compaction-threshold", "t/ns/x", "-t", "0"]).2,
            Some(json!(0))
        );
        assert_get_and_remove("compaction-threshold", "compactionThreshold");
        assert!(refused(&["set-compaction-threshold", "t/ns/x", "-t", "-1"]));
    }

    #[test]
    fn topic_policies_keep_the_topics_domain() {
        assert_eq!(
            request(&["get-max-message-size", "non-persistent://t/ns/x"]).1,
            "/admin/v2/non-persistent/t/ns/x/maxMessageSize"
        );
        assert_eq!(
            request(&["get-retention", "x"]).1,
            "/admin/v2/persistent/public/default/x/retention"
        );
        assert!(
            refused(&["get-retention", "t/ns"]),
            "a namespace is no topic"
        );
    }
}
