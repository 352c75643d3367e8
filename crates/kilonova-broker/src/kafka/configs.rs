//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs: a topic's
//! policies as Kafka topic configs, and the broker's settings as read-only
//! broker configs.
//!
//! A topic's configs: `retention.ms` and `retention.bytes` (its retention
//! policy, in whole minutes and MiB as Pulsar keeps it), `max.message.bytes`
//! (its largest entry: a Kafka record batch is one), and `cleanup.policy`
//! (`delete`, the only one). A value the topic does not set is its
//! namespace's policy or the broker's default, with the source saying which.
//! Altering needs the tenant's admin role; describing, a produce or consume
//! permission on the topic.

use kilonova_auth::Want;
use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kilonova_kafka::kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kilonova_kafka::kafka_protocol::protocol::StrBytes;
use kilonova_metadata::names::TopicName;
use kilonova_metadata::policies::{Policies, RetentionPolicies, TopicPolicies};

use super::connection::KafkaConnection;
use super::errors::{outcome, refusal, refused, Refusal};

/// Kafka's resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's config sources.
const SOURCE_TOPIC: i8 = 1;
/// The namespace's policy: a default every topic of it shares, set at run time.
const SOURCE_DYNAMIC_DEFAULT: i8 = 3;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's config types.
const TYPE_BOOLEAN: i8 = 1;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

/// IncrementalAlterConfigs' operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

fn invalid(why: impl Into<String>) -> Refusal {
    refusal(ResponseError::InvalidConfig, why)
}

/// What a topic sets itself, as Kafka configs (`None`: inherited).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TopicConfigs {
    retention_ms: Option<i64>,
    retention_bytes: Option<i64>,
    max_message_bytes: Option<i64>,
}

/// A change to one config.
#[derive(Clone, Copy, Debug)]
pub(super) enum Change<'a> {
    Set(&'a str),
    /// Back to the namespace's or the broker's value.
    Reset,
}

fn minutes_of_ms(ms: i64) -> i32 {
    if ms < 0 {
        -1
    } else {
        i32::try_from(ms.saturating_add(59_999) / 60_000).unwrap_or(i32::MAX)
    }
}

fn ms_of_minutes(minutes: i64) -> i64 {
    if minutes < 0 {
        -1
    } else {
        minutes.saturating_mul(60_000)
    }
}

fn mib_of_bytes(bytes: i64) -> i64 {
    if bytes < 0 {
        -1
    } else {
        bytes.saturating_add((1 << 20) - 1) >> 20
    }
}

fn bytes_of_mib(mib: i64) -> i64 {
    if mib < 0 {
        -1
    } else {
        mib.saturating_mul(1 << 20)
    }
}

impl TopicConfigs {
    /// What `p` sets. Pulsar's retention policy holds time and size
    /// together, so a topic that sets one sets both.
    pub(super) fn of(p: &TopicPolicies) -> Self {
        let r = p.retention_policies;
        TopicConfigs {
            retention_ms: r.map(|r| ms_of_minutes(i64::from(r.retention_time_in_minutes))),
            retention_bytes: r.map(|r| bytes_of_mib(r.retention_size_in_mb)),
            max_message_bytes: p.max_message_size.map(i64::from),
        }
    }

    /// Applies `change` to config `name`, or says why not.
    pub(super) fn apply(&mut self, name: &str, change: Change<'_>) -> Result<(), Refusal> {
        let number = |v: &str| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| invalid(format!("{name} must be a whole number, not {v:?}")))
        };
        match (name, change) {
            ("retention.ms", Change::Set(v)) => self.retention_ms = Some(number(v)?.max(-1)),
            ("retention.ms", Change::Reset) => self.retention_ms = None,
            ("retention.bytes", Change::Set(v)) => self.retention_bytes = Some(number(v)?.max(-1)),
            ("retention.bytes", Change::Reset) => self.retention_bytes = None,
            ("max.message.bytes", Change::Set(v)) => {
                let n = number(v)?;
                if !(1..=i64::from(i32::MAX)).contains(&n) {
                    return Err(invalid(format!(
                        "max.message.bytes must be between 1 and {}, not {n}",
                        i32::MAX
                    )));
                }
                self.max_message_bytes = Some(n);
            }
            ("max.message.bytes", Change::Reset) => self.max_message_bytes = None,
            ("cleanup.policy", Change::Set(v)) if v.trim() == "delete" => {}
            ("cleanup.policy", Change::Reset) => {}
            ("cleanup.policy", Change::Set(v)) => {
                return Err(invalid(format!(
                    "cleanup.policy {v:?} is not supported: topics keep records by retention \
                     (\"delete\"); compaction is Pulsar's topic compaction, run from the admin API"
                )))
            }
            (other, _) => {
                return Err(invalid(format!(
                    "config {other} is not supported (retention.ms, retention.bytes, \
                     max.message.bytes and cleanup.policy are)"
                )))
            }
        }
        Ok(())
    }

    /// Writes these configs into `p`. A retention set in part leaves the
    /// other dimension unlimited (Pulsar keeps a message while both allow,
    /// so the one set governs alone, as in Kafka, where each defaults to
    /// no bound but time's seven days).
    pub(super) fn write(&self, p: &mut TopicPolicies) {
        p.retention_policies = match (self.retention_ms, self.retention_bytes) {
            (None, None) => None,
            (ms, bytes) => Some(RetentionPolicies {
                retention_time_in_minutes: ms.map_or(-1, minutes_of_ms),
                retention_size_in_mb: bytes.map_or(-1, mib_of_bytes),
            }),
        };
        p.max_message_size = self
            .max_message_bytes
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    }

    /// Whether any retention config is set.
    pub(super) fn sets_retention(&self) -> bool {
        self.retention_ms.is_some() || self.retention_bytes.is_some()
    }
}

/// One config as DescribeConfigs shows it.
struct Shown {
    name: &'static str,
    value: String,
    source: i8,
    read_only: bool,
    kind: i8,
    doc: &'static str,
    /// (name, value, source) of the levels it could come from, nearest first.
    synonyms: Vec<(&'static str, String, i8)>,
}

impl Shown {
    fn into_result(self, synonyms: bool, docs: bool) -> DescribeConfigsResourceResult {
        let synonyms = if synonyms {
            self.synonyms
                .into_iter()
                .map(|(name, value, source)| {
                    DescribeConfigsSynonym::default()
                        .with_name(StrBytes::from_static_str(name))
                        .with_value(Some(StrBytes::from_string(value)))
                        .with_source(source)
                })
                .collect()
        } else {
            Vec::new()
        };
        DescribeConfigsResourceResult::default()
            .with_name(StrBytes::from_static_str(self.name))
            .with_value(Some(StrBytes::from_string(self.value)))
            .with_read_only(self.read_only)
            .with_config_source(self.source)
            .with_config_type(self.kind)
            .with_documentation(docs.then(|| StrBytes::from_static_str(self.doc)))
            .with_synonyms(synonyms)
    }
}

/// A value set at the first level that has one: topic, namespace, broker.
fn layered(
    name: &'static str,
    broker_name: &'static str,
    levels: [Option<i64>; 3],
    kind: i8,
    doc: &'static str,
) -> Shown {
    let sources = [SOURCE_TOPIC, SOURCE_DYNAMIC_DEFAULT, SOURCE_STATIC_BROKER];
    let synonyms: Vec<(&'static str, String, i8)> = levels
        .iter()
        .zip(sources)
        .enumerate()
        .filter_map(|(i, (v, source))| {
            let named = if i == 0 { name } else { broker_name };
            v.map(|v| (named, v.to_string(), source))
        })
        .collect();
    let (value, source) = synonyms
        .first()
        .map_or((String::from("-1"), SOURCE_DEFAULT), |(_, v, s)| {
            (v.clone(), *s)
        });
    Shown {
        name,
        value,
        source,
        read_only: false,
        kind,
        doc,
        synonyms,
    }
}

/// A topic's configs, from its own policies, its namespace's, and the broker's.
fn topic_configs(
    own: &TopicPolicies,
    ns: &Policies,
    broker: &crate::config::BrokerConfig,
) -> Vec<Shown> {
    let mine = TopicConfigs::of(own);
    let ns_retention = ns.retention_policies;
    vec![
        layered(
            "retention.ms",
            "log.retention.ms",
            [
                mine.retention_ms,
                ns_retention.map(|r| ms_of_minutes(i64::from(r.retention_time_in_minutes))),
                Some(ms_of_minutes(broker.retention_minutes)),
            ],
            TYPE_LONG,
            "How long records are kept after every subscription acknowledged them \
             (Pulsar's retention; whole minutes; -1: forever)",
        ),
        layered(
            "retention.bytes",
            "log.retention.bytes",
            [
                mine.retention_bytes,
                ns_retention.map(|r| bytes_of_mib(r.retention_size_in_mb)),
                Some(bytes_of_mib(broker.retention_size_mb)),
            ],
            TYPE_LONG,
            "How many bytes are kept after every subscription acknowledged them \
             (Pulsar's retention; whole MiB; -1: unlimited)",
        ),
        layered(
            "max.message.bytes",
            "message.max.bytes",
            [
                mine.max_message_bytes,
                None,
                Some(i64::try_from(broker.max_message_bytes).unwrap_or(i64::MAX)),
            ],
            TYPE_INT,
            "The largest record batch (one entry) a producer may send",
        ),
        Shown {
            name: "cleanup.policy",
            value: "delete".into(),
            source: SOURCE_DEFAULT,
            read_only: true,
            kind: TYPE_LIST,
            doc: "Records are deleted by retention (compaction is Pulsar's, from the admin API)",
            synonyms: Vec::new(),
        },
    ]
}

/// The broker's settings Kafka names, read-only (they come from its config file).
fn broker_configs(c: &crate::config::BrokerConfig) -> Vec<Shown> {
    let fixed = |name, value: String, kind, doc| Shown {
        name,
        synonyms: vec![(name, value.clone(), SOURCE_STATIC_BROKER)],
        value,
        source: SOURCE_STATIC_BROKER,
        read_only: true,
        kind,
        doc,
    };
    vec![
        fixed(
            "log.retention.ms",
            ms_of_minutes(c.retention_minutes).to_string(),
            TYPE_LONG,
            "Retention time of topics whose namespace and topic set none",
        ),
        fixed(
            "log.retention.bytes",
            bytes_of_mib(c.retention_size_mb).to_string(),
            TYPE_LONG,
            "Retention size of topics whose namespace and topic set none",
        ),
        fixed(
            "message.max.bytes",
            c.max_message_bytes.to_string(),
            TYPE_INT,
            "The largest message (a Kafka record batch) the broker takes",
        ),
        fixed(
            "auto.create.topics.enable",
            c.allow_auto_topic_creation.to_string(),
            TYPE_BOOLEAN,
            "Whether producing to or fetching from a missing topic creates it",
        ),
        fixed(
            "num.partitions",
            c.default_num_partitions.to_string(),
            TYPE_INT,
            "Partitions of an auto-created partitioned topic",
        ),
    ]
}

impl KafkaConnection {
    pub(super) async fn describe_configs(
        &mut self,
        r: DescribeConfigsRequest,
    ) -> DescribeConfigsResponse {
        let mut results = Vec::with_capacity(r.resources.len());
        for res in &r.resources {
            let shown = match res.resource_type {
                RESOURCE_TOPIC => self.described_topic(&res.resource_name).await,
                RESOURCE_BROKER => self
                    .this_broker(&res.resource_name)
                    .map(|()| broker_configs(self.broker.config())),
                t => Err(unsupported_resource(t)),
            };
            let keys = res.configuration_keys.as_ref();
            let (configs, failed) = match shown {
                Ok(all) => (
                    all.into_iter()
                        .filter(|s| keys.is_none_or(|k| k.iter().any(|k| &**k == s.name)))
                        .map(|s| s.into_result(r.include_synonyms, r.include_documentation))
                        .collect(),
                    Ok(()),
                ),
                Err(e) => (Vec::new(), Err(e)),
            };
            let (code, message) = outcome(failed);
            results.push(
                DescribeConfigsResult::default()
                    .with_error_code(code)
                    .with_error_message(message)
                    .with_resource_type(res.resource_type)
                    .with_resource_name(res.resource_name.clone())
                    .with_configs(configs),
            );
        }
        DescribeConfigsResponse::default().with_results(results)
    }

    /// Kafka topic `name`'s configs, if it exists and this role may see it.
    async fn described_topic(&mut self, name: &str) -> Result<Vec<Shown>, Refusal> {
        let topic = self.named_topic(name)?;
        self.allowed(&topic, Want::Lookup)
            .await
            .map_err(|code| (code, format!("not allowed to see {topic}")))?;
        let own = self.topic_policies(&topic).await?;
        let ns = self.namespace_policies(&topic).await?;
        Ok(topic_configs(&own, &ns, self.broker.config()))
    }

    /// AlterConfigs: each resource's configs become exactly those given
    /// (the others go back to the namespace's or the broker's values).
    pub(super) async fn alter_configs(&mut self, r: AlterConfigsRequest) -> AlterConfigsResponse {
        let mut responses = Vec::with_capacity(r.resources.len());
        for res in &r.resources {
            let edits = Ok(res
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                .collect());
            let altered = self
                .alter(
                    res.resource_type,
                    &res.resource_name,
                    r.validate_only,
                    true,
                    edits,
                )
                .await;
            let (code, message) = outcome(altered);
            responses.push(
                alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(code)
                    .with_error_message(message)
                    .with_resource_type(res.resource_type)
                    .with_resource_name(res.resource_name.clone()),
            );
        }
        AlterConfigsResponse::default().with_responses(responses)
    }

    /// IncrementalAlterConfigs: each named config is set or deleted (back
    /// to the namespace's or the broker's value); the others stay. APPEND
    /// and SUBTRACT (for list configs) are refused: none is alterable.
    pub(super) async fn incremental_alter_configs(
        &mut self,
        r: IncrementalAlterConfigsRequest,
    ) -> IncrementalAlterConfigsResponse {
        let mut responses = Vec::with_capacity(r.resources.len());
        for res in &r.resources {
            let edits = res
                .configs
                .iter()
                .map(|c| {
                    let name = c.name.to_string();
                    match (c.config_operation, &c.value) {
                        (OP_SET, Some(v)) => Ok((name, Some(v.to_string()))),
                        (OP_SET, None) => Err(invalid(format!("{name}: no value"))),
                        (OP_DELETE, _) => Ok((name, None)),
                        (op, _) => Err(invalid(format!(
                            "{name}: operation {op} is not supported (SET and DELETE are)"
                        ))),
                    }
                })
                .collect();
            let altered = self
                .alter(
                    res.resource_type,
                    &res.resource_name,
                    r.validate_only,
                    false,
                    edits,
                )
                .await;
            let (code, message) = outcome(altered);
            responses.push(
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(code)
                    .with_error_message(message)
                    .with_resource_type(res.resource_type)
                    .with_resource_name(res.resource_name.clone()),
            );
        }
        IncrementalAlterConfigsResponse::default().with_responses(responses)
    }

    /// Gives a topic's configs the values in `edits` (`None`: back to the
    /// namespace's or the broker's), all others first going back too with
    /// `replace`, and stores them (unless only validating). Broker configs
    /// are read-only.
    async fn alter(
        &mut self,
        resource_type: i8,
        name: &str,
        validate_only: bool,
        replace: bool,
        edits: Result<Vec<(String, Option<String>)>, Refusal>,
    ) -> Result<(), Refusal> {
        match resource_type {
            RESOURCE_TOPIC => {}
            RESOURCE_BROKER => {
                self.this_broker(name)?;
                return Err(refusal(
                    ResponseError::InvalidRequest,
                    "broker configs come from the broker's config file and cannot be altered",
                ));
            }
            t => return Err(unsupported_resource(t)),
        }
        let topic = self.named_topic(name)?;
        self.may_administer(&topic).await?;
        let own = self.topic_policies(&topic).await?;
        let mut configs = match replace {
            true => TopicConfigs::default(),
            false => TopicConfigs::of(&own),
        };
        for (config, value) in edits? {
            configs.apply(&config, value.as_deref().map_or(Change::Reset, Change::Set))?;
        }
        if validate_only {
            return Ok(());
        }
        self.store_configs(&topic, &configs).await?;
        tracing::info!(%topic, ?configs, "Kafka client altered a topic's configs");
        Ok(())
    }

    /// Stores `configs` as `topic`'s policies.
    pub(super) async fn store_configs(
        &self,
        topic: &TopicName,
        configs: &TopicConfigs,
    ) -> Result<(), Refusal> {
        self.broker
            .resources()
            .update_topic(topic, |t| {
                configs.write(&mut t.policies);
                Ok(())
            })
            .await
            .map_err(refused)?;
        Ok(())
    }

    /// `topic`'s own policies, if it exists.
    async fn topic_policies(&self, topic: &TopicName) -> Result<TopicPolicies, Refusal> {
        self.broker
            .resources()
            .topic(topic)
            .await
            .map_err(refused)?
            .map(|r| r.policies)
            .ok_or_else(|| {
                refusal(
                    ResponseError::UnknownTopicOrPartition,
                    format!("{topic} does not exist"),
                )
            })
    }

    async fn namespace_policies(&self, topic: &TopicName) -> Result<Policies, Refusal> {
        self.broker
            .resources()
            .namespace(&topic.namespace())
            .await
            .map_err(refused)
    }

    /// Whether broker resource `name` is this broker (its node id).
    fn this_broker(&self, name: &str) -> Result<(), Refusal> {
        let own = self.own_node();
        if name == own.to_string() {
            Ok(())
        } else {
            Err(refusal(
                ResponseError::InvalidRequest,
                format!("broker {name:?} is not this broker (node {own})"),
            ))
        }
    }
}

fn unsupported_resource(t: i8) -> Refusal {
    refusal(
        ResponseError::InvalidRequest,
        format!("resource type {t} is not supported (topics and brokers are)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(t: &mut TopicConfigs, name: &str, v: &str) -> Result<(), Refusal> {
        t.apply(name, Change::Set(v))
    }

    #[test]
    fn retention_configs_become_a_policy_in_minutes_and_mib() {
        let mut t = TopicConfigs::default();
        set(&mut t, "retention.ms", "90000").unwrap();
        set(&mut t, "retention.bytes", "1048577").unwrap();
        let mut p = TopicPolicies::default();
        t.write(&mut p);
        assert_eq!(
            p.retention_policies,
            Some(RetentionPolicies {
                retention_time_in_minutes: 2,
                retention_size_in_mb: 2
            })
        );
        // Read back as Kafka shows it: rounded up to whole units.
        let back = TopicConfigs::of(&p);
        assert_eq!(back.retention_ms, Some(120_000));
        assert_eq!(back.retention_bytes, Some(2 << 20));
    }

    #[test]
    fn a_retention_set_in_part_leaves_the_other_dimension_unbounded() {
        let mut t = TopicConfigs::default();
        set(&mut t, "retention.ms", "3600000").unwrap();
        let mut p = TopicPolicies::default();
        t.write(&mut p);
        assert_eq!(
            p.retention_policies,
            Some(RetentionPolicies {
                retention_time_in_minutes: 60,
                retention_size_in_mb: -1
            })
        );
        // Resetting both gives the topic no policy of its own.
        let mut t = TopicConfigs::of(&p);
        t.apply("retention.ms", Change::Reset).unwrap();
        t.apply("retention.bytes", Change::Reset).unwrap();
        t.write(&mut p);
        assert_eq!(p.retention_policies, None);
    }

    #[test]
    fn forever_is_minus_one_both_ways() {
        let mut t = TopicConfigs::default();
        set(&mut t, "retention.ms", "-1").unwrap();
        let mut p = TopicPolicies::default();
        t.write(&mut p);
        assert_eq!(
            p.retention_policies.map(|r| r.retention_time_in_minutes),
            Some(-1)
        );
        assert_eq!(TopicConfigs::of(&p).retention_ms, Some(-1));
    }

    #[test]
    fn unknown_configs_bad_numbers_and_compaction_are_refused() {
        let mut t = TopicConfigs::default();
        let code = ResponseError::InvalidConfig.code();
        assert_eq!(set(&mut t, "segment.ms", "1").unwrap_err().0, code);
        assert_eq!(set(&mut t, "retention.ms", "soon").unwrap_err().0, code);
        assert_eq!(set(&mut t, "max.message.bytes", "0").unwrap_err().0, code);
        assert_eq!(
            set(&mut t, "cleanup.policy", "compact").unwrap_err().0,
            code
        );
        set(&mut t, "cleanup.policy", "delete").unwrap();
        assert_eq!(t, TopicConfigs::default());
    }

    #[test]
    fn a_config_shows_the_nearest_level_that_sets_it() {
        let own = TopicPolicies::default();
        let ns = Policies {
            retention_policies: Some(RetentionPolicies {
                retention_time_in_minutes: 10,
                retention_size_in_mb: -1,
            }),
            ..Default::default()
        };
        let broker = crate::config::BrokerConfig::default();
        let shown = topic_configs(&own, &ns, &broker);
        let ms = shown.iter().find(|s| s.name == "retention.ms").unwrap();
        assert_eq!(
            (ms.value.as_str(), ms.source),
            ("600000", SOURCE_DYNAMIC_DEFAULT)
        );
        assert_eq!(ms.synonyms.len(), 2, "namespace and broker levels");
        let max = shown
            .iter()
            .find(|s| s.name == "max.message.bytes")
            .unwrap();
        assert_eq!(max.source, SOURCE_STATIC_BROKER);
        assert_eq!(max.value, broker.max_message_bytes.to_string());
    }
}
