//! Metadata: this broker is the only one and the leader of every partition;
//! topics are the namespace's (partitions of partitioned topics folded into
//! their topic).

use kilonova_kafka::kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kilonova_kafka::kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, TopicName,
};
use kilonova_kafka::kafka_protocol::protocol::StrBytes;
use kilonova_metadata::names::{Domain, NamespaceName};

use super::connection::KafkaConnection;
use kilonova_auth::Want;

/// The node id this broker has in Kafka's eyes.
const NODE: BrokerId = BrokerId(0);

impl KafkaConnection {
    pub(super) async fn metadata(&mut self, m: MetadataRequest, version: i16) -> MetadataResponse {
        let names: Vec<String> = match &m.topics {
            // Version 0 has no null list: an empty one asks for every topic.
            Some(ts) if version == 0 && ts.is_empty() => self.all_topics().await,
            Some(ts) => ts
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                .collect(),
            None => self.all_topics().await,
        };
        let mut topics = Vec::with_capacity(names.len());
        for name in names {
            let topic = MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.clone()))));
            let allowed = match self.topic_name(&name) {
                Ok(t) => self.allowed(&t, Want::Lookup).await,
                Err(code) => Err(code),
            };
            if let Err(code) = allowed {
                topics.push(topic.with_error_code(code));
                continue;
            }
            let count = match self.partition_count(&name).await {
                Ok(n) => n,
                Err(code) => {
                    topics.push(topic.with_error_code(code));
                    continue;
                }
            };
            let partitions = (0..count.max(1) as i32)
                .map(|i| {
                    MetadataResponsePartition::default()
                        .with_partition_index(i)
                        .with_leader_id(NODE)
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![NODE])
                        .with_isr_nodes(vec![NODE])
                })
                .collect();
            topics.push(topic.with_partitions(partitions));
        }
        let broker = MetadataResponseBroker::default()
            .with_node_id(NODE)
            .with_host(StrBytes::from_string(self.settings.advertised_host.clone()))
            .with_port(i32::from(self.settings.advertised_port));
        MetadataResponse::default()
            .with_brokers(vec![broker])
            .with_cluster_id(Some(StrBytes::from_string(
                self.broker.config().cluster_name.clone(),
            )))
            .with_controller_id(NODE)
            .with_topics(topics)
    }

    /// The namespace's persistent topics, partitions folded into their topic.
    async fn all_topics(&self) -> Vec<String> {
        let Ok(ns) = NamespaceName::parse(&self.namespace) else {
            return Vec::new();
        };
        let listed = self
            .broker
            .resources()
            .topics_of_namespace(&ns, Some(Domain::Persistent))
            .await
            .unwrap_or_default();
        let prefix = format!("persistent://{ns}/");
        let mut names: Vec<String> = listed
            .iter()
            .filter_map(|t| t.strip_prefix(&prefix))
            .map(|local| match local.rsplit_once("-partition-") {
                Some((base, n)) if n.bytes().all(|b| b.is_ascii_digit()) => base.to_string(),
                _ => local.to_string(),
            })
            .filter(|n| kilonova_kafka::names::check(n).is_ok())
            .collect();
        names.dedup();
        names
    }
}
