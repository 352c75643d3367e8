//! `kilonova admin namespaces …` → `/admin/v2/namespaces`.
//!
//! Most verbs are a `set-X` / `get-X` / `remove-X` triple over one policy
//! route, `POST` / `GET` / `DELETE /admin/v2/namespaces/{t}/{ns}/{policy}`;
//! they share [`Policy`] and one request function. Flags are pulsar-admin's.

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::client::{AdminClient, AdminError, ApiPath};
use super::names::NamespaceName;
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
    #[command(flatten)]
    Policy(PolicyCmd),
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
    /// Keep acknowledged messages for a time and/or size.
    SetRetention(SetRetention),
    /// Show the retention policy.
    GetRetention(Ns),
    /// Remove the retention policy.
    RemoveRetention(Ns),
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
    /// Turn message deduplication on or off.
    SetDeduplication(SetDeduplication),
    /// Show the deduplication override.
    GetDeduplication(Ns),
    /// Remove the deduplication override.
    RemoveDeduplication(Ns),
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
    /// Messages per second per topic (-1: unlimited).
    #[arg(short = 'm', long, default_value_t = -1, allow_negative_numbers = true)]
    msg_publish_rate: i64,
    /// Bytes per second per topic (-1: unlimited).
    #[arg(short = 'b', long, default_value_t = -1, allow_negative_numbers = true)]
    byte_publish_rate: i64,
}

#[derive(Args)]
pub struct SetDispatchRate {
    namespace: NamespaceName,
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

#[derive(Args)]
pub struct SetRetention {
    namespace: NamespaceName,
    /// Retention time: seconds or 10m, 3h, 2d, 5w (-1: unlimited).
    #[arg(short = 't', long, allow_negative_numbers = true,
          value_parser = units::parse_retention_time_minutes)]
    time: i64,
    /// Retention size: bytes or 10K, 512M, 10G, 3T (-1: unlimited).
    #[arg(short = 's', long, allow_negative_numbers = true,
          value_parser = units::parse_retention_size_mb)]
    size: i64,
}

#[derive(Args)]
pub struct SetMessageTtl {
    namespace: NamespaceName,
    /// Seconds or 10m, 3h, 2d (0: no TTL). pulsar-admin's -ttl works too.
    #[arg(long = "messageTTL", value_name = "TTL", allow_negative_numbers = true,
          value_parser = units::parse_duration_secs_i32)]
    message_ttl: i32,
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
    fn as_str(self) -> &'static str {
        match self {
            BacklogQuotaType::DestinationStorage => "destination_storage",
            BacklogQuotaType::MessageAge => "message_age",
        }
    }
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

/// `--enable` or `--disable`, exactly one.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct EnableOrDisable {
    #[arg(short = 'e', long)]
    enable: bool,
    #[arg(short = 'd', long)]
    disable: bool,
}

#[derive(Args)]
pub struct SetDeduplication {
    namespace: NamespaceName,
    #[command(flatten)]
    switch: EnableOrDisable,
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

#[derive(Args)]
pub struct SetInactiveTopicPolicies {
    namespace: NamespaceName,
    #[command(flatten)]
    switch: DeleteWhileInactive,
    /// Seconds or 10m, 1h, 3d.
    #[arg(short = 't', long, value_parser = units::parse_duration_secs_i32)]
    max_inactive_duration: i32,
    #[arg(short = 'm', long, value_enum)]
    delete_mode: InactiveTopicDeleteMode,
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
        let enable = self.switch.enable;
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

/// A namespace policy with its own route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Replication,
    PublishRate,
    DispatchRate,
    Retention,
    MessageTtl,
    /// Set and removed per type; read as one map of every type.
    BacklogQuota(BacklogQuotaType),
    MaxProducersPerTopic,
    MaxConsumersPerTopic,
    Deduplication,
    InactiveTopicPolicies,
    AutoTopicCreation,
}

enum Op {
    Set(Value),
    Get,
    Remove,
}

impl Policy {
    fn path(self, namespace: &NamespaceName, op: &Op) -> ApiPath {
        let base = namespace.policies_path();
        match (self, op) {
            (Policy::BacklogQuota(_), Op::Get) => base.join("backlogQuotaMap"),
            (Policy::BacklogQuota(t), _) => base
                .join("backlogQuota")
                .query("backlogQuotaType", t.as_str()),
            (Policy::Replication, _) => base.join("replication"),
            (Policy::PublishRate, _) => base.join("publishRate"),
            (Policy::DispatchRate, _) => base.join("dispatchRate"),
            (Policy::Retention, _) => base.join("retention"),
            (Policy::MessageTtl, _) => base.join("messageTTL"),
            (Policy::MaxProducersPerTopic, _) => base.join("maxProducersPerTopic"),
            (Policy::MaxConsumersPerTopic, _) => base.join("maxConsumersPerTopic"),
            (Policy::Deduplication, _) => base.join("deduplication"),
            (Policy::InactiveTopicPolicies, _) => base.join("inactiveTopicPolicies"),
            (Policy::AutoTopicCreation, _) => base.join("autoTopicCreation"),
        }
    }
}

impl PolicyCmd {
    /// The namespace, the policy and what to do with it.
    fn request(&self) -> Result<(&NamespaceName, Policy, Op), AdminError> {
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
            C::SetPublishRate(a) => (
                &a.namespace,
                P::PublishRate,
                Op::Set(json!({
                    "publishThrottlingRateInMsg": a.msg_publish_rate,
                    "publishThrottlingRateInByte": a.byte_publish_rate,
                })),
            ),
            C::GetPublishRate(n) => get(n, P::PublishRate),
            C::RemovePublishRate(n) => remove(n, P::PublishRate),
            C::SetDispatchRate(a) => (
                &a.namespace,
                P::DispatchRate,
                Op::Set(json!({
                    "dispatchThrottlingRateInMsg": a.msg_dispatch_rate,
                    "dispatchThrottlingRateInByte": a.byte_dispatch_rate,
                    "ratePeriodInSecond": a.dispatch_rate_period,
                    "relativeToPublishRate": a.relative_to_publish_rate,
                })),
            ),
            C::GetDispatchRate(n) => get(n, P::DispatchRate),
            C::RemoveDispatchRate(n) => remove(n, P::DispatchRate),
            C::SetRetention(a) => (
                &a.namespace,
                P::Retention,
                Op::Set(json!({
                    "retentionTimeInMinutes": a.time,
                    "retentionSizeInMB": a.size,
                })),
            ),
            C::GetRetention(n) => get(n, P::Retention),
            C::RemoveRetention(n) => remove(n, P::Retention),
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
            C::SetDeduplication(a) => (
                &a.namespace,
                P::Deduplication,
                Op::Set(json!(a.switch.enable)),
            ),
            C::GetDeduplication(n) => get(n, P::Deduplication),
            C::RemoveDeduplication(n) => remove(n, P::Deduplication),
            C::SetInactiveTopicPolicies(a) => (
                &a.namespace,
                P::InactiveTopicPolicies,
                Op::Set(json!({
                    "deleteWhileInactive": a.switch.enable,
                    "maxInactiveDurationSeconds": a.max_inactive_duration,
                    "inactiveTopicDeleteMode": a.delete_mode,
                })),
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
            let path = a.namespace.policies_path();
            client.put(&path, a.body().as_ref()).await?
        }
        NamespacesCmd::Delete { namespace, force } => {
            client
                .delete(&namespace.policies_path().force(force))
                .await?
        }
        NamespacesCmd::Policies(n) => client.get(&n.namespace.policies_path()).await?,
        NamespacesCmd::GrantPermission { namespace, grant } => {
            permissions::grant(client, namespace.policies_path(), &grant).await?
        }
        NamespacesCmd::RevokePermission { namespace, revoke } => {
            permissions::revoke(client, namespace.policies_path(), &revoke).await?
        }
        NamespacesCmd::Permissions { namespace } => {
            permissions::list(client, namespace.policies_path()).await?
        }
        NamespacesCmd::Policy(verb) => {
            let (namespace, policy, op) = verb.request()?;
            let path = policy.path(namespace, &op);
            match op {
                Op::Set(body) => client.post(&path, Some(&body)).await?,
                Op::Get => client.get(&path).await?,
                Op::Remove => client.delete(&path).await?,
            }
        }
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
        let c = policy_cmd(args);
        let (ns, policy, op) = c.request().unwrap();
        let path = policy.path(ns, &op);
        let (method, body) = match op {
            Op::Set(b) => ("POST", Some(b)),
            Op::Get => ("GET", None),
            Op::Remove => ("DELETE", None),
        };
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
        let (path, body) = permissions::grant_request(namespace.policies_path(), &grant);
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
