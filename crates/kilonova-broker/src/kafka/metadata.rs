//! Metadata: the Kafka nodes ([`super::nodes`]) and each partition's
//! leader (a standalone broker leads every partition); topics are the
//! namespace's (partitions of partitioned topics folded into their topic).

use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kilonova_kafka::kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, TopicName,
};
use kilonova_kafka::kafka_protocol::protocol::StrBytes;
use kilonova_metadata::names::{Domain, NamespaceName};

use super::connection::KafkaConnection;
use kilonova_auth::Want;

impl KafkaConnection {
    pub(super) async fn metadata(&mut self, m: MetadataRequest, version: i16) -> MetadataResponse {
        // Every topic (its partition count from its record: nothing is
        // loaded or created), or the ones asked for (created if missing, the
        // request allows it and the broker's auto-creation does, as a Pulsar
        // lookup would).
        let every = match &m.topics {
            // Version 0 has no null list: an empty one asks for every topic.
            Some(ts) => version == 0 && ts.is_empty(),
            None => true,
        };
        let names: Vec<(String, Option<u32>)> = match &m.topics {
            Some(ts) if !every => ts
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| (n.0.to_string(), None)))
                .collect(),
            _ => self.all_topics().await,
        };
        let nodes = self.nodes().await.unwrap_or_default();
        // Before version 4 a request could not say: topics were created.
        let create = version < 4 || m.allow_auto_topic_creation;
        let mut asked = super::nodes::Leaders::default();
        let mut topics = Vec::with_capacity(names.len());
        for (name, known) in names {
            let topic = MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.clone()))));
            let allowed = match self.topic_name(&name) {
                Ok(t) => self.allowed(&t, Want::Lookup).await,
                Err(code) => Err(code),
            };
            match allowed {
                Ok(()) => {}
                // A listing of every topic leaves out those the role may not see.
                Err(_) if every => continue,
                Err(code) => {
                    topics.push(topic.with_error_code(code));
                    continue;
                }
            }
            let count = match known {
                Some(n) => n,
                None => match self.partition_count(&name, create).await {
                    Ok(n) => n,
                    Err(code) => {
                        topics.push(topic.with_error_code(code));
                        continue;
                    }
                },
            };
            let Ok(base) = self.topic_name(&name) else {
                topics.push(topic.with_error_code(ResponseError::InvalidTopicException.code()));
                continue;
            };
            let serving: Vec<_> = match count {
                0 => vec![base],
                n => (0..n).map(|i| base.partition_name(i)).collect(),
            };
            let leaders = self.leaders_of(&serving, &mut asked).await;
            let mut partitions = Vec::with_capacity(leaders.len());
            for (i, leader) in leaders.into_iter().enumerate() {
                // A leader that serves no Kafka listener of this kind is
                // not one the client can reach.
                let led = match leader {
                    Ok((id, epoch)) if nodes.iter().any(|n| n.id == id) => Ok((id, epoch)),
                    Ok(_) => Err(ResponseError::LeaderNotAvailable.code()),
                    Err(code) => Err(code),
                };
                partitions.push(kilonova_kafka::metadata::partition(i as i32, led));
            }
            topics.push(topic.with_partitions(partitions));
        }
        let brokers = nodes
            .iter()
            .map(|n| kilonova_kafka::metadata::broker(n.id, &n.host, n.port))
            .collect();
        MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(StrBytes::from_string(
                self.broker.config().cluster_name.clone(),
            )))
            .with_controller_id(BrokerId(self.own_node()))
            .with_topics(topics)
    }

    /// The namespace's persistent topics with their partition counts, from
    /// their records (a partition's own record is folded into its topic).
    async fn all_topics(&self) -> Vec<(String, Option<u32>)> {
        let Ok(ns) = NamespaceName::parse(&self.namespace) else {
            return Vec::new();
        };
        let records = self
            .broker
            .resources()
            .topics(&ns, Domain::Persistent)
            .await
            .unwrap_or_default();
        records
            .into_iter()
            .filter(|(name, _)| name.partition().is_none())
            .filter(|(name, _)| kilonova_kafka::names::check(&name.local).is_ok())
            .map(|(name, record)| (name.local, Some(record.partitions)))
            .collect()
    }
}
