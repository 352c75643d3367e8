//! Produce: each partition's records become one entry, sent through a
//! producer this connection opens on the partition's topic; the answer
//! (acks 1 or all: Kilonova makes every entry durable before it answers,
//! so both mean the same) waits for every entry's receipt.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kilonova_kafka::entries::{self, Stamp};
use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, TopicProduceResponse,
};
use kilonova_kafka::kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use kilonova_kafka::kafka_protocol::protocol::StrBytes;
use kilonova_kafka::records;
use kilonova_pulsar_protocol::proto::ProducerAccessMode;

use super::connection::KafkaConnection;
use super::errors;
use super::routes::Stored;
use crate::dedup::KAFKA_IDEMPOTENT_PREFIX;
use crate::outbound::UNKNOWN_INDEX;
use crate::topic::{ClientInfo, ConnCtx, NewProducer, SendPayload, TopicCommand};
use kilonova_auth::Want;

/// The longest a produce waits for its receipts when the client gives no
/// usable timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What happened to one partition's records.
enum Sent {
    /// Sent: the receipt answers it.
    Waiting(Stored),
    Done(Result<i64, i16>),
}

/// The answer to a produce (none with acks=0), once its entries are durable.
pub(super) type ProduceAnswer = Pin<Box<dyn Future<Output = Option<ProduceResponse>> + Send>>;

impl KafkaConnection {
    /// Sends every partition's records to its topic now (so entries of
    /// one connection are stored in the order their requests came), and
    /// returns the answer, which waits for their receipts.
    pub(super) async fn produce(&mut self, p: ProduceRequest) -> ProduceAnswer {
        let deadline = Instant::now()
            + u64::try_from(p.timeout_ms)
                .ok()
                .filter(|t| *t > 0)
                .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let acks = p.acks != 0;
        let mut sent: Vec<(StrBytes, Vec<(i32, Sent)>)> = Vec::with_capacity(p.topic_data.len());
        let mut throttle = Duration::ZERO;
        for t in &p.topic_data {
            let name = t.name.0.clone();
            let mut parts = Vec::with_capacity(t.partition_data.len());
            for pd in &t.partition_data {
                let outcome = self
                    .send_partition(
                        &name,
                        pd.index,
                        pd.records.as_ref(),
                        acks,
                        deadline,
                        &mut throttle,
                    )
                    .await;
                if let Sent::Done(Err(code)) = &outcome {
                    tracing::debug!(conn = self.id, topic = %name.as_str(), partition = pd.index, code, "Kafka produce refused");
                }
                parts.push((pd.index, outcome));
            }
            sent.push((name, parts));
        }
        Box::pin(async move {
            if !acks {
                // No answer at all (Kafka's acks=0).
                return None;
            }
            let until = tokio::time::Instant::from_std(deadline);
            let mut topics = Vec::with_capacity(sent.len());
            for (name, parts) in sent {
                let mut partitions = Vec::with_capacity(parts.len());
                for (index, s) in parts {
                    let result = match s {
                        Sent::Done(r) => r,
                        Sent::Waiting(rx) => match tokio::time::timeout_at(until, rx).await {
                            Ok(Ok(r)) => r.map(|index| match index {
                                UNKNOWN_INDEX => -1,
                                i => i64::try_from(i).unwrap_or(-1),
                            }),
                            Ok(Err(_)) => Err(ResponseError::NotLeaderOrFollower.code()),
                            Err(_) => {
                                tracing::debug!(topic = %name.as_str(), partition = index, "Kafka produce timed out waiting for its receipt");
                                Err(ResponseError::RequestTimedOut.code())
                            }
                        },
                    };
                    let (error_code, base_offset) = match result {
                        Ok(o) => (0, o),
                        Err(code) => (code, -1),
                    };
                    partitions.push(
                        PartitionProduceResponse::default()
                            .with_index(index)
                            .with_error_code(error_code)
                            .with_base_offset(base_offset)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(-1),
                    );
                }
                topics.push(
                    TopicProduceResponse::default()
                        .with_name(name.into())
                        .with_partition_responses(partitions),
                );
            }
            if !throttle.is_zero() {
                // The topic's publish rate was reached: the answer waits (as a
                // Pulsar producer's next reads would), and says how long.
                tokio::time::sleep(throttle).await;
            }
            Some(
                ProduceResponse::default()
                    .with_responses(topics)
                    .with_throttle_time_ms(throttle.as_millis() as i32),
            )
        })
    }

    /// Stores one partition's records as one entry (sent, not yet durable).
    async fn send_partition(
        &mut self,
        name: &str,
        partition: i32,
        records: Option<&Bytes>,
        acks: bool,
        deadline: Instant,
        throttle: &mut Duration,
    ) -> Sent {
        let topic = match self.partition_topic(name, partition, Want::Produce).await {
            Ok(t) => t,
            Err(code) => return Sent::Done(Err(code)),
        };
        let max = self.broker.max_uncompressed_batch_bytes() as usize;
        let raw_bytes = records.map_or(0, |r| r.len() as u64);
        let sets = match records.map(|r| records::decode_batches(r, max)) {
            Some(Ok(sets)) if sets.iter().any(|s| !s.records.is_empty()) => sets,
            Some(Ok(_)) | None => return Sent::Done(Err(ResponseError::InvalidRecord.code())),
            Some(Err(_)) => return Sent::Done(Err(ResponseError::CorruptMessage.code())),
        };
        let records: Vec<_> = sets.into_iter().flat_map(|s| s.records).collect();
        self.broker
            .metrics()
            .kafka()
            .count_produced(records.len() as u64, raw_bytes);
        if records.iter().any(|r| r.control || r.transactional) {
            return Sent::Done(Err(ResponseError::UnsupportedForMessageFormat.code()));
        }
        // An idempotent producer's batch: every record of one producer, with
        // sequences; stored under its name so the topic drops a retry.
        let idempotent = match records.first() {
            Some(r) if r.producer_id >= 0 => {
                let same = records.iter().all(|x| {
                    (x.producer_id, x.producer_epoch) == (r.producer_id, r.producer_epoch)
                });
                match (same, u64::try_from(r.sequence)) {
                    (true, Ok(base)) => Some((r.producer_id, r.producer_epoch, base)),
                    _ => return Sent::Done(Err(ResponseError::InvalidRecord.code())),
                }
            }
            _ => None,
        };
        let name =
            idempotent.map(|(id, epoch, _)| format!("{KAFKA_IDEMPOTENT_PREFIX}{id}-{epoch}"));
        let (handle, producer_id) = match self.producer(&topic, name.clone(), deadline).await {
            Ok(p) => p,
            Err(code) => return Sent::Done(Err(code)),
        };
        let (sequence_id, highest_sequence_id) = match idempotent {
            Some((_, _, base)) => (base, base + records.len() as u64 - 1),
            None => {
                let id = self.next_id();
                (id, id)
            }
        };
        // The entry names its producer and sequence as a Pulsar client's
        // does: deduplication's state is rebuilt from them after a restart.
        let producer_name = name.unwrap_or_else(|| format!("kafka-{}-{producer_id}", self.id));
        let now_ms = self.broker.clock().now_ms();
        let payload = entries::to_entry(
            &records,
            &Stamp {
                producer_name,
                sequence_id,
                publish_time_ms: now_ms,
            },
        );
        let now = self.broker.clock().now();
        let wait = handle
            .publish_gate
            .charge(records.len() as u64, payload.raw.len() as u64, now);
        *throttle = (*throttle).max(wait.min(Duration::from_secs(1)));
        let cmd = TopicCommand::Send {
            conn: self.id,
            producer_id,
            sequence_id,
            highest_sequence_id,
            payload: SendPayload::new(payload, self.broker.max_uncompressed_batch_bytes()),
            read_at: now,
        };
        // Asked for before it is sent: the receipt cannot come first.
        let stored = acks.then(|| self.routes.expect_stored(producer_id, sequence_id));
        if handle.send(cmd).await.is_err() {
            self.routes.forget_stored(producer_id, sequence_id);
            self.producers.retain(|_, (_, id)| *id != producer_id);
            return Sent::Done(Err(ResponseError::NotLeaderOrFollower.code()));
        }
        match stored {
            Some(rx) => Sent::Waiting(rx),
            None => Sent::Done(Ok(-1)),
        }
    }

    /// This connection's producer on `topic` (named `name`: an idempotent
    /// Kafka producer's; else the broker names it), opened if needed.
    async fn producer(
        &mut self,
        topic: &kilonova_metadata::names::TopicName,
        name: Option<String>,
        deadline: Instant,
    ) -> Result<(crate::topic::TopicHandle, u64), i16> {
        let full = match &name {
            Some(n) => format!("{topic}#{n}"),
            None => topic.to_string(),
        };
        let closed = self.routes.take_closed();
        if !closed.is_empty() {
            self.producers.retain(|_, (_, id)| !closed.contains(id));
        }
        if let Some(p) = self.producers.get(&full) {
            if !p.0.is_closed() {
                return Ok(p.clone());
            }
        }
        let handle = self.broker.topic(topic).await.map_err(|e| {
            tracing::debug!(conn = self.id, %topic, error = %e, "Kafka producer not opened");
            errors::code(&e)
        })?;
        let (producer_id, request_id) = (self.next_id(), self.next_id());
        let cmd = TopicCommand::AddProducer(Box::new(NewProducer {
            lane: None,
            conn: ConnCtx {
                id: self.id,
                out: self.out.clone(),
                wants_entry_metadata: false,
                hears_end_of_topic: false,
                client: ClientInfo {
                    address: std::sync::Arc::from(self.peer.to_string()),
                    client_version: std::sync::Arc::from(format!("kafka {}", self.client_id)),
                    connected_since_ms: self.broker.clock().now_ms(),
                    listener: Default::default(),
                },
            },
            producer_id,
            request_id,
            name,
            access_mode: ProducerAccessMode::Shared,
            topic_epoch: None,
            schema_version: None,
        }));
        let opened = self.routes.expect_open(request_id);
        handle
            .send(cmd)
            .await
            .map_err(|_| ResponseError::NotLeaderOrFollower.code())?;
        let until = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(until, opened).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(ResponseError::NotLeaderOrFollower.code()),
            Err(_) => return Err(ResponseError::RequestTimedOut.code()),
        }
        self.producers.insert(full, (handle.clone(), producer_id));
        Ok((handle, producer_id))
    }

    /// A producer id for an idempotent producer: unique across this
    /// broker's restarts (the clock's milliseconds, times 4,096, plus a
    /// count), with epoch 0. A producer asking again (after an error) gets
    /// a new id. Transactions are not served.
    pub(super) async fn init_producer_id(
        &self,
        r: InitProducerIdRequest,
    ) -> InitProducerIdResponse {
        if let Err(code) = self.namespace_allowed(Want::Produce).await {
            return InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
        }
        if r.transactional_id.is_some() {
            return InitProducerIdResponse::default()
                .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
        }
        let id = super::next_producer_id(self.broker.clock().now_ms());
        InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0)
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Detaches this connection's producers from their topics.
    pub(super) async fn release(&mut self) {
        for (_, (handle, producer_id)) in self.producers.drain() {
            let _ = handle
                .send(TopicCommand::RemoveProducer {
                    conn: self.id,
                    producer_id,
                })
                .await;
        }
    }
}
