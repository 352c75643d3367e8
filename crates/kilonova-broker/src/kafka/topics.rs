//! CreateTopics, CreatePartitions and DeleteTopics: a Kafka admin client
//! makes and removes topics. A topic created here is a partitioned topic
//! (so CreatePartitions can grow it, as in Kafka), with Kafka's retention
//! unless its configs say otherwise (the configs of `configs.rs`; others
//! are refused with `INVALID_CONFIG`). A deletion takes the
//! topic whatever is attached to it, as Kafka's does. Each needs the
//! tenant's admin role.

use kilonova_auth::Need;
use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kilonova_kafka::kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kilonova_kafka::kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kilonova_kafka::kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse,
};
use kilonova_metadata::names::TopicName;
use kilonova_metadata::MetadataError;

use super::configs::{Change, TopicConfigs};
use super::connection::KafkaConnection;
use super::errors::{outcome, refusal, refused, Refusal};

impl KafkaConnection {
    /// Kafka topic `name` as a Kilonova topic, or why it cannot be one.
    pub(super) fn named_topic(&self, name: &str) -> Result<TopicName, Refusal> {
        self.topic_name(name)
            .map_err(|code| (code, format!("{name:?} is not a valid topic name")))
    }

    /// Whether this connection's role administers `topic`'s tenant.
    pub(super) async fn may_administer(&self, topic: &TopicName) -> Result<(), Refusal> {
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
            let (code, message) = outcome(result);
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
        let topic = self.named_topic(name)?;
        let n = u32::try_from(partitions)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                refusal(
                    ResponseError::InvalidPartitions,
                    "partitions must be positive",
                )
            })?;
        let mut settings = TopicConfigs::default();
        for (name, value) in configs {
            settings.apply(name, value.as_deref().map_or(Change::Reset, Change::Set))?;
        }
        self.may_administer(&topic).await?;
        self.broker.check_partition_count(n).map_err(refused)?;
        self.broker
            .check_topic_quota(&topic.namespace(), n)
            .await
            .map_err(refused)?;
        let resources = self.broker.resources();
        if resources.topic(&topic).await.map_err(refused)?.is_some() {
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
            Err(e) => return Err(refused(e)),
        }
        tracing::info!(%topic, partitions = n, "Kafka client created a topic");
        if settings != TopicConfigs::default() {
            if let Err((_, why)) = self.store_configs(&topic, &settings).await {
                tracing::warn!(%topic, error = why, "the topic's configs were not set");
            }
        }
        if !settings.sets_retention() {
            self.give_kafka_retention(&topic).await;
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
            let (code, message) = outcome(result);
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
        let topic = self.named_topic(name)?;
        self.may_administer(&topic).await?;
        let resources = self.broker.resources();
        let record = resources
            .topic(&topic)
            .await
            .map_err(refused)?
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
        self.broker.check_partition_count(n).map_err(refused)?;
        if validate_only {
            return Ok(());
        }
        resources
            .update_partitions(&topic, n)
            .await
            .map_err(refused)?;
        self.forget_partitions(name);
        tracing::info!(%topic, partitions = n, "Kafka client grew a topic");
        Ok(())
    }
}

impl KafkaConnection {
    /// Deletes the topics named (v6 may name them by id: Kilonova topics
    /// have none, so those are `UNKNOWN_TOPIC_ID`).
    pub(super) async fn delete_topics(&mut self, r: DeleteTopicsRequest) -> DeleteTopicsResponse {
        let named = r.topic_names.iter().map(|n| (Some(n.clone()), None));
        let by_state = r.topics.iter().map(|t| (t.name.clone(), Some(t.topic_id)));
        let mut results = Vec::with_capacity(r.topic_names.len() + r.topics.len());
        for (name, id) in named.chain(by_state).collect::<Vec<_>>() {
            let result = match &name {
                Some(n) => self.delete_topic(&n.0).await,
                None => Err(refusal(
                    ResponseError::UnknownTopicId,
                    "topics are deleted by name here: Kilonova topics have no ids",
                )),
            };
            let (code, message) = outcome(result);
            results.push(
                DeletableTopicResult::default()
                    .with_name(name)
                    .with_topic_id(id.unwrap_or_default())
                    .with_error_code(code)
                    .with_error_message(message),
            );
        }
        DeleteTopicsResponse::default().with_responses(results)
    }

    async fn delete_topic(&mut self, name: &str) -> Result<(), Refusal> {
        let topic = self.named_topic(name)?;
        self.may_administer(&topic).await?;
        match self.broker.delete_topic_here(&topic, true).await {
            Ok(()) => {}
            Err(crate::BrokerError::TopicNotFound(_)) => {
                return Err(refusal(
                    ResponseError::UnknownTopicOrPartition,
                    format!("{topic} does not exist"),
                ))
            }
            Err(e) => return Err(refused(e)),
        }
        self.forget_partitions(name);
        tracing::info!(%topic, "Kafka client deleted a topic");
        Ok(())
    }
}
