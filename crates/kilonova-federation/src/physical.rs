//! What the federation asks of a physical cluster, as a Kafka client:
//! where its partitions' leaders are (Metadata), a physical topic created
//! (CreateTopics), a partition's first and next offsets (ListOffsets).

use std::collections::HashMap;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, ListOffsetsRequest, MetadataRequest, RequestKind,
    ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::upstream::{Pool, UpstreamError};

/// Why a physical cluster did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhysicalError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{what}: Kafka error {code}")]
    Kafka { what: String, code: i16 },
    #[error("no bootstrap address answered")]
    NoBootstrap,
}

/// Listed `ListOffsets` timestamps.
pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;

const CALL_WAIT: Duration = Duration::from_secs(10);

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Each partition's leader address (`None`: no leader), by topic.
pub type Leaders = HashMap<String, Vec<Option<String>>>;

/// Asks the cluster (its first bootstrap address that answers) where the
/// leaders of `topics`' partitions are. A topic the cluster does not know
/// is left out.
pub async fn leaders(
    pool: &Pool,
    bootstrap: &[String],
    topics: &[String],
) -> Result<Leaders, PhysicalError> {
    let mut last = PhysicalError::NoBootstrap;
    for addr in bootstrap {
        match leaders_from(pool, addr, topics).await {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn leaders_from(
    pool: &Pool,
    addr: &str,
    topics: &[String],
) -> Result<Leaders, PhysicalError> {
    let up = pool.shared(addr).await?;
    let asked = MetadataRequest::default()
        .with_topics(Some(
            topics
                .iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                .collect(),
        ))
        .with_allow_auto_topic_creation(false);
    let answer = up
        .call(
            ApiKey::Metadata,
            9,
            RequestKind::Metadata(asked),
            true,
            CALL_WAIT,
        )
        .await?;
    let Some(ResponseKind::Metadata(m)) = answer else {
        return Err(PhysicalError::Kafka {
            what: "Metadata".into(),
            code: ResponseError::UnknownServerError.code(),
        });
    };
    let brokers: HashMap<BrokerId, String> = m
        .brokers
        .iter()
        .map(|b| (b.node_id, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let mut out = Leaders::new();
    for t in &m.topics {
        let Some(name) = &t.name else { continue };
        if t.error_code != 0 {
            continue;
        }
        // Partitions are 0..n: an index past the count listed is ignored
        // (never a table sized by a number the cluster sent).
        let mut leaders = vec![None; t.partitions.len()];
        for p in &t.partitions {
            if let Some(slot) = leaders.get_mut(p.partition_index as usize) {
                *slot = (p.error_code == 0)
                    .then(|| brokers.get(&p.leader_id).cloned())
                    .flatten();
            }
        }
        out.insert(name.0.to_string(), leaders);
    }
    Ok(out)
}

/// Creates `topic` with `partitions` partitions on the cluster; one that
/// exists already is fine.
pub async fn create_topic(
    pool: &Pool,
    bootstrap: &[String],
    topic: &str,
    partitions: u32,
) -> Result<(), PhysicalError> {
    let mut last = PhysicalError::NoBootstrap;
    for addr in bootstrap {
        let up = match pool.shared(addr).await {
            Ok(up) => up,
            Err(e) => {
                last = e.into();
                continue;
            }
        };
        let asked = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions as i32)
                .with_replication_factor(-1)])
            .with_timeout_ms(10_000);
        let answer = up
            .call(
                ApiKey::CreateTopics,
                5,
                RequestKind::CreateTopics(asked),
                true,
                CALL_WAIT,
            )
            .await?;
        let Some(ResponseKind::CreateTopics(r)) = answer else {
            continue;
        };
        let code = r.topics.first().map_or(0, |t| t.error_code);
        if code == 0 || code == ResponseError::TopicAlreadyExists.code() {
            return Ok(());
        }
        return Err(PhysicalError::Kafka {
            what: format!("CreateTopics {topic}"),
            code,
        });
    }
    Err(last)
}

/// The offsets at `timestamp` ([`EARLIEST`] or [`LATEST`]) of `topic`'s
/// partitions `partitions`, asked of each partition's leader.
pub async fn offsets(
    pool: &Pool,
    bootstrap: &[String],
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<HashMap<i32, i64>, PhysicalError> {
    let leaders = leaders(pool, bootstrap, &[topic.to_string()]).await?;
    let by_partition = leaders.get(topic).cloned().unwrap_or_default();
    let mut by_leader: HashMap<String, Vec<i32>> = HashMap::new();
    for p in partitions {
        let Some(Some(leader)) = by_partition.get(*p as usize) else {
            return Err(PhysicalError::Kafka {
                what: format!("{topic}-{p} has no leader"),
                code: ResponseError::LeaderNotAvailable.code(),
            });
        };
        by_leader.entry(leader.clone()).or_default().push(*p);
    }
    let mut out = HashMap::new();
    for (leader, ps) in by_leader {
        let up = pool.shared(&leader).await?;
        let asked = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    ps.iter()
                        .map(|p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(*p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                )]);
        let answer = up
            .call(
                ApiKey::ListOffsets,
                5,
                RequestKind::ListOffsets(asked),
                true,
                CALL_WAIT,
            )
            .await?;
        let Some(ResponseKind::ListOffsets(r)) = answer else {
            continue;
        };
        for p in r.topics.iter().flat_map(|t| &t.partitions) {
            if p.error_code != 0 {
                return Err(PhysicalError::Kafka {
                    what: format!("ListOffsets {topic}-{}", p.partition_index),
                    code: p.error_code,
                });
            }
            out.insert(p.partition_index, p.offset);
        }
    }
    Ok(out)
}
