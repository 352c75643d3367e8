//! CreateTopics and CreatePartitions: a Kafka admin client makes topics.
//! A topic created here is a partitioned topic (so CreatePartitions can
//! grow it, as in Kafka), with Kafka's retention unless its configs say
//! otherwise (`retention.ms`, `retention.bytes`; other configs are refused
//! with `INVALID_CONFIG`). Creating needs the tenant's admin role.

use kilonova_auth::Need;
use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kilonova_kafka::kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kilonova_kafka::kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
};
use kilonova_kafka::kafka_protocol::protocol::StrBytes;
use kilonova_metadata::names::TopicName;
use kilonova_metadata::policies::RetentionPolicies;
use kilonova_metadata::MetadataError;

use super::connection::KafkaConnection;
use super::errors;

/// A refusal: the Kafka error code and what to tell the client.
type Refusal = (i16, String);

fn refusal(e: ResponseError, why: impl Into<String>) -> Refusal {
    (e.code(), why.into())
}

/// The retention `configs` ask for (none: the listener's default applies).
fn retention_of(
    configs: &[(String, Option<String>)],
) -> Result<Option<RetentionPolicies>, Refusal> {
    let mut minutes = None;
    let mut mb = None;
    for (name, value) in configs {
        let number = |v: &Option<String>| -> Result<i64, Refusal> {
            v.as_deref()
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| {
                    refusal(
                        ResponseError::InvalidConfig,
                        format!("{name} must be a number"),
                    )
                })
        };
        match name.as_str() {
            // -1: forever, as Kafka's; milliseconds rounded up to minutes.
            "retention.ms" => {
                let ms = number(value)?;
                minutes = Some(if ms < 0 {
                    -1
                } else {
                    i32::try_from((ms + 59_999) / 60_000).unwrap_or(i32::MAX)
                });
            }
            "retention.bytes" => {
                let b = number(value)?;
                mb = Some(if b < 0 { -1 } else { (b + (1 << 20) - 1) >> 20 });
            }
            other => {
                return Err(refusal(
                    ResponseError::InvalidConfig,
                    format!(
                        "config {other} is not supported (retention.ms and retention.bytes are)"
                    ),
                ))
            }
        }
    }
    Ok(
        (minutes.is_some() || mb.is_some()).then(|| RetentionPolicies {
            retention_time_in_minutes: minutes.unwrap_or(-1),
            retention_size_in_mb: mb.unwrap_or(-1),
        }),
    )
}

impl KafkaConnection {
    /// Whether this connection's role administers `topic`'s tenant.
    async fn may_administer(&self, topic: &TopicName) -> Result<(), Refusal> {
        self.broker
            .authorize(
                self.principal.as_ref(),
                Need::TenantAdmin,
                Some(&topic.tenant),
                Some(&topic.namespace()),
            )
            .await
            .map_err(|e| refusal(ResponseError::TopicAuthorizationFailed, e.to_string()))
    }

    pub(super) async fn create_topics(&mut self, r: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut results = Vec::with_capacity(r.topics.len());
        for t in &r.topics {
            let configs: Vec<(String, Option<String>)> = t
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                .collect();
            let partitions = match t.num_partitions {
                -1 => 1,
                n => n,
            };
            let result = self
                .create_topic(&t.name.0, partitions, &configs, r.validate_only)
                .await;
            let (code, message) = match result {
                Ok(()) => (0, None),
                Err((code, why)) => (code, Some(StrBytes::from_string(why))),
            };
            results.push(
                CreatableTopicResult::default()
                    .with_name(t.name.clone())
                    .with_error_code(code)
                    .with_error_message(message)
                    .with_num_partitions(partitions)
                    .with_replication_factor(1),
            );
        }
        CreateTopicsResponse::default().with_topics(results)
    }

    async fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(String, Option<String>)],
        validate_only: bool,
    ) -> Result<(), Refusal> {
        let topic = self
            .topic_name(name)
            .map_err(|code| (code, format!("{name:?} is not a valid topic name")))?;
        let n = u32::try_from(partitions)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                refusal(
                    ResponseError::InvalidPartitions,
                    "partitions must be positive",
                )
            })?;
        let retention = retention_of(configs)?;
        self.may_administer(&topic).await?;
        let failed = |e: crate::BrokerError| (errors::code(&e), e.to_string());
        self.broker.check_partition_count(n).map_err(failed)?;
        self.broker
            .check_topic_quota(&topic.namespace(), n)
            .await
            .map_err(failed)?;
        let resources = self.broker.resources();
        if resources
            .topic(&topic)
            .await
            .map_err(|e| failed(e.into()))?
            .is_some()
        {
            return Err(refusal(
                ResponseError::TopicAlreadyExists,
                format!("{topic} exists"),
            ));
        }
        if validate_only {
            return Ok(());
        }
        match resources.create_topic(&topic, n).await {
            Ok(_) => {}
            Err(MetadataError::AlreadyExists(_)) => {
                return Err(refusal(
                    ResponseError::TopicAlreadyExists,
                    format!("{topic} exists"),
                ))
            }
            Err(e) => return Err(failed(e.into())),
        }
        tracing::info!(%topic, partitions = n, "Kafka client created a topic");
        match retention {
            Some(policy) => {
                let set = resources
                    .update_topic(&topic, |t| {
                        t.policies.retention_policies = Some(policy);
                        Ok(())
                    })
                    .await;
                if let Err(e) = set {
                    tracing::warn!(%topic, error = %e, "the topic's retention was not set");
                }
            }
            None => self.give_kafka_retention(&topic).await,
        }
        Ok(())
    }

    pub(super) async fn create_partitions(
        &mut self,
        r: CreatePartitionsRequest,
    ) -> CreatePartitionsResponse {
        let mut results = Vec::with_capacity(r.topics.len());
        for t in &r.topics {
            let result = self.grow(&t.name.0, t.count, r.validate_only).await;
            let (code, message) = match result {
                Ok(()) => (0, None),
                Err((code, why)) => (code, Some(StrBytes::from_string(why))),
            };
            results.push(
                CreatePartitionsTopicResult::default()
                    .with_name(t.name.clone())
                    .with_error_code(code)
                    .with_error_message(message),
            );
        }
        CreatePartitionsResponse::default().with_results(results)
    }

    async fn grow(&mut self, name: &str, count: i32, validate_only: bool) -> Result<(), Refusal> {
        let topic = self
            .topic_name(name)
            .map_err(|code| (code, format!("{name:?} is not a valid topic name")))?;
        self.may_administer(&topic).await?;
        let failed = |e: crate::BrokerError| (errors::code(&e), e.to_string());
        let resources = self.broker.resources();
        let record = resources
            .topic(&topic)
            .await
            .map_err(|e| failed(e.into()))?
            .ok_or_else(|| {
                refusal(
                    ResponseError::UnknownTopicOrPartition,
                    format!("{topic} does not exist"),
                )
            })?;
        let n = u32::try_from(count).unwrap_or(0);
        if record.partitions == 0 {
            return Err(refusal(
                ResponseError::InvalidPartitions,
                format!("{topic} is not partitioned: its partitions cannot grow"),
            ));
        }
        if n <= record.partitions {
            return Err(refusal(
                ResponseError::InvalidPartitions,
                format!(
                    "{topic} has {} partitions: the count can only grow",
                    record.partitions
                ),
            ));
        }
        self.broker.check_partition_count(n).map_err(failed)?;
        if validate_only {
            return Ok(());
        }
        resources
            .update_partitions(&topic, n)
            .await
            .map_err(|e| failed(e.into()))?;
        self.forget_partitions(name);
        tracing::info!(%topic, partitions = n, "Kafka client grew a topic");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
    }

    #[test]
    fn retention_configs_become_a_policy_and_others_are_refused() {
        assert_eq!(retention_of(&[]), Ok(None));
        let r = retention_of(&cfg(&[
            ("retention.ms", "90000"),
            ("retention.bytes", "1048577"),
        ]));
        assert_eq!(
            r,
            Ok(Some(RetentionPolicies {
                retention_time_in_minutes: 2,
                retention_size_in_mb: 2
            }))
        );
        let forever = retention_of(&cfg(&[("retention.ms", "-1")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                forever.retention_time_in_minutes,
                forever.retention_size_in_mb
            ),
            (-1, -1)
        );
        let bad = retention_of(&cfg(&[("cleanup.policy", "compact")])).unwrap_err();
        assert_eq!(bad.0, ResponseError::InvalidConfig.code());
        assert!(retention_of(&cfg(&[("retention.ms", "soon")])).is_err());
    }
}
