//! Fetch and ListOffsets: entries read by message index from each
//! partition's topic, converted to record batches; an empty fetch waits up
//! to `max_wait_ms` for the first partition that gets an entry.

use std::time::Duration;

use bytes::BytesMut;
use kilonova_kafka::entries;
use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, PartitionData,
};
use kilonova_kafka::kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kilonova_kafka::kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};
use kilonova_kafka::records;
use tokio::sync::oneshot;

use super::connection::KafkaConnection;
use super::errors;
use crate::topic::by_index::{IndexAnswer, IndexQuery};
use crate::topic::TopicCommand;
use kilonova_auth::Want;

/// The longest a fetch waits, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// The most record bytes one fetch answer holds, whatever the client asks
/// (at least one entry is always sent); the client fetches again for more.
const MAX_FETCH_BYTES: usize = 16 << 20;
/// ListOffsets' special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

impl KafkaConnection {
    /// Asks partition `(name, partition)`'s topic `query`.
    async fn ask(
        &mut self,
        name: &str,
        partition: i32,
        query: IndexQuery,
    ) -> Result<oneshot::Receiver<Result<IndexAnswer, crate::BrokerError>>, i16> {
        let want = match query {
            IndexQuery::Read { .. } => Want::Consume,
            IndexQuery::AtTime(_) | IndexQuery::Bounds => Want::Lookup,
        };
        let topic = self.partition_topic(name, partition, want).await?;
        let handle = self
            .broker
            .topic(&topic)
            .await
            .map_err(|e| errors::code(&e))?;
        let (reply, rx) = oneshot::channel();
        handle
            .send(TopicCommand::ByIndex { query, reply })
            .await
            .map_err(|_| ResponseError::NotLeaderOrFollower.code())?;
        Ok(rx)
    }

    async fn answer_of(
        &mut self,
        name: &str,
        partition: i32,
        query: IndexQuery,
    ) -> Result<IndexAnswer, i16> {
        let rx = self.ask(name, partition, query).await?;
        match rx.await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(errors::code(&e)),
            Err(_) => Err(ResponseError::NotLeaderOrFollower.code()),
        }
    }

    pub(super) async fn fetch(&mut self, f: FetchRequest, _version: i16) -> FetchResponse {
        let mut response = self.fetch_once(&f).await;
        let empty = response
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .all(|p| p.records.as_ref().is_none_or(|r| r.is_empty()));
        let wait = Duration::from_millis(u64::try_from(f.max_wait_ms).unwrap_or(0)).min(MAX_WAIT);
        if empty && !wait.is_zero() && f.min_bytes > 0 {
            // Park a read on every partition at its end; the first answer
            // (or the deadline) ends the wait, then everything is read again.
            let mut waiting = Vec::new();
            for t in &f.topics {
                for p in &t.partitions {
                    let query = IndexQuery::Read {
                        from: u64::try_from(p.fetch_offset).unwrap_or(0),
                        max_bytes: 1,
                        wait: true,
                    };
                    if let Ok(rx) = self.ask(&t.topic.0, p.partition, query).await {
                        waiting.push(Box::pin(rx));
                    }
                }
            }
            if !waiting.is_empty() {
                let first = futures_util::future::select_all(waiting);
                let _ = tokio::time::timeout(wait, first).await;
                response = self.fetch_once(&f).await;
            }
        }
        response
    }

    async fn fetch_once(&mut self, f: &FetchRequest) -> FetchResponse {
        let mut budget = usize::try_from(f.max_bytes)
            .unwrap_or(0)
            .clamp(1, MAX_FETCH_BYTES);
        let max_uncompressed = self.broker.max_uncompressed_batch_bytes() as usize;
        let mut topics = Vec::with_capacity(f.topics.len());
        for t in &f.topics {
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let mut data = PartitionData::default()
                    .with_partition_index(p.partition)
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    .with_preferred_read_replica(BrokerId(-1))
                    .with_aborted_transactions(Some(Vec::new()));
                let max_bytes = usize::try_from(p.partition_max_bytes)
                    .unwrap_or(0)
                    .min(budget)
                    .max(1);
                let Ok(from) = u64::try_from(p.fetch_offset) else {
                    partitions.push(data.with_error_code(ResponseError::OffsetOutOfRange.code()));
                    continue;
                };
                let query = IndexQuery::Read {
                    from,
                    max_bytes,
                    wait: false,
                };
                let a = match self.answer_of(&t.topic.0, p.partition, query).await {
                    Ok(a) => a,
                    Err(code) => {
                        partitions.push(data.with_error_code(code));
                        continue;
                    }
                };
                data = data
                    .with_high_watermark(a.end as i64)
                    .with_last_stable_offset(a.end as i64)
                    .with_log_start_offset(a.start as i64);
                if from < a.start || from > a.end {
                    partitions.push(data.with_error_code(ResponseError::OffsetOutOfRange.code()));
                    continue;
                }
                let mut out = BytesMut::new();
                for e in &a.entries {
                    let first = i64::try_from(e.message_index).unwrap_or(i64::MAX);
                    match entries::from_entry(&e.data, first, max_uncompressed) {
                        Ok(mut rs) => {
                            rs.retain(|r| r.offset >= p.fetch_offset);
                            if !rs.is_empty() && records::encode_batch(&rs, &mut out).is_err() {
                                break;
                            }
                        }
                        // An entry Kafka cannot read (a chunk, a corrupt
                        // batch) is skipped: its offsets are a gap.
                        Err(err) => {
                            tracing::debug!(conn = self.id, error = %err, "entry skipped for Kafka")
                        }
                    }
                }
                budget = budget.saturating_sub(out.len()).max(1);
                self.broker
                    .metrics()
                    .kafka()
                    .count_fetched(out.len() as u64);
                partitions.push(data.with_records(Some(out.freeze())));
            }
            topics.push(
                FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(partitions),
            );
        }
        // No fetch session is created (session id 0): clients send full fetches.
        FetchResponse::default().with_responses(topics)
    }

    pub(super) async fn list_offsets(&mut self, l: ListOffsetsRequest) -> ListOffsetsResponse {
        let mut topics = Vec::with_capacity(l.topics.len());
        for t in &l.topics {
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let query = match p.timestamp {
                    LATEST | EARLIEST => IndexQuery::Bounds,
                    ts => IndexQuery::AtTime(u64::try_from(ts).unwrap_or(0)),
                };
                let r = ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1);
                let r = match self.answer_of(&t.name.0, p.partition_index, query).await {
                    Err(code) => r.with_error_code(code),
                    Ok(a) => match p.timestamp {
                        LATEST => r.with_offset(a.end as i64),
                        EARLIEST => r.with_offset(a.start as i64),
                        // No message at or after the time: offset -1.
                        ts => match a.at_time.filter(|at| *at < a.end) {
                            Some(at) => r.with_offset(at as i64).with_timestamp(ts),
                            None => r,
                        },
                    },
                };
                partitions.push(r);
            }
            topics.push(
                ListOffsetsTopicResponse::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions),
            );
        }
        ListOffsetsResponse::default().with_topics(topics)
    }
}
