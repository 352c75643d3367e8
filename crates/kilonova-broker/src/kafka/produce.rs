//! Produce: each partition's records become one entry, sent through a
//! producer this connection opens on the partition's topic; the answer
//! (acks 1 or all: Kilonova makes every entry durable before it answers,
//! so both mean the same) waits for every entry's receipt.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kilonova_kafka::entries::{self, Stamp};
use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, TopicProduceResponse,
};
use kilonova_kafka::kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kilonova_kafka::kafka_protocol::protocol::StrBytes;
use kilonova_kafka::records;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{base_command::Type, ProducerAccessMode};

use super::connection::KafkaConnection;
use super::errors;
use crate::outbound::{Out, UNKNOWN_INDEX};
use crate::topic::{ClientInfo, ConnCtx, NewProducer, TopicCommand};

/// The longest a produce waits for its receipts when the client gives no
/// usable timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What happened to one partition's records.
enum Sent {
    /// Sent as entry `sequence_id`: the receipt answers it.
    Waiting(u64),
    Done(Result<i64, i16>),
}

/// Events a topic sent this connection's producers, not yet claimed.
#[derive(Default)]
pub(super) struct Events {
    /// Producer opened (or refused), by request id.
    opened: HashMap<u64, Result<(), i16>>,
    /// Entry stored (its first index) or refused, by sequence id.
    stored: HashMap<u64, Result<u64, i16>>,
}

impl KafkaConnection {
    pub(super) async fn produce(&mut self, p: ProduceRequest) -> Option<ProduceResponse> {
        let deadline = Instant::now()
            + u64::try_from(p.timeout_ms)
                .ok()
                .filter(|t| *t > 0)
                .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
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
                        deadline,
                        &mut throttle,
                    )
                    .await;
                parts.push((pd.index, outcome));
            }
            sent.push((name, parts));
        }
        if p.acks == 0 {
            // No answer at all (Kafka's acks=0); receipts are drained later.
            return None;
        }
        let mut topics = Vec::with_capacity(sent.len());
        for (name, parts) in sent {
            let mut partitions = Vec::with_capacity(parts.len());
            for (index, s) in parts {
                let result = match s {
                    Sent::Done(r) => r,
                    Sent::Waiting(seq) => self.stored(seq, deadline).await,
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
    }

    /// Stores one partition's records as one entry (sent, not yet durable).
    async fn send_partition(
        &mut self,
        name: &str,
        partition: i32,
        records: Option<&Bytes>,
        deadline: Instant,
        throttle: &mut Duration,
    ) -> Sent {
        let topic = match self.partition_topic(name, partition).await {
            Ok(t) => t,
            Err(code) => return Sent::Done(Err(code)),
        };
        let max = self.broker.max_uncompressed_batch_bytes() as usize;
        let sets = match records.map(|r| records::decode_batches(r, max)) {
            Some(Ok(sets)) if sets.iter().any(|s| !s.records.is_empty()) => sets,
            Some(Ok(_)) | None => return Sent::Done(Err(ResponseError::InvalidRecord.code())),
            Some(Err(_)) => return Sent::Done(Err(ResponseError::CorruptMessage.code())),
        };
        let records: Vec<_> = sets.into_iter().flat_map(|s| s.records).collect();
        if records.iter().any(|r| r.control || r.transactional) {
            return Sent::Done(Err(ResponseError::UnsupportedForMessageFormat.code()));
        }
        let (handle, producer_id) = match self.producer(&topic, deadline).await {
            Ok(p) => p,
            Err(code) => return Sent::Done(Err(code)),
        };
        let sequence_id = self.next_id();
        let producer_name = format!("kafka-{}-{producer_id}", self.id);
        let now_ms = self.broker.clock().now_ms();
        let entry = entries::to_entry(
            &records,
            &Stamp {
                producer_name,
                sequence_id,
                publish_time_ms: now_ms,
            },
        );
        let payload = match frame::decode_payload(entry) {
            Ok(p) => p,
            Err(_) => return Sent::Done(Err(ResponseError::CorruptMessage.code())),
        };
        let now = self.broker.clock().now();
        let wait = handle
            .publish_gate
            .charge(records.len() as u64, payload.raw.len() as u64, now);
        *throttle = (*throttle).max(wait.min(Duration::from_secs(1)));
        let cmd = TopicCommand::Send {
            conn: self.id,
            producer_id,
            sequence_id,
            highest_sequence_id: sequence_id,
            payload,
            read_at: now,
        };
        if handle.send(cmd).await.is_err() {
            self.producers.remove(topic.to_string().as_str());
            return Sent::Done(Err(ResponseError::NotLeaderOrFollower.code()));
        }
        Sent::Waiting(sequence_id)
    }

    /// This connection's producer on `topic`, opened if needed.
    async fn producer(
        &mut self,
        topic: &kilonova_metadata::names::TopicName,
        deadline: Instant,
    ) -> Result<(crate::topic::TopicHandle, u64), i16> {
        let full = topic.to_string();
        if let Some(p) = self.producers.get(&full) {
            if !p.0.is_closed() {
                return Ok(p.clone());
            }
        }
        let handle = self
            .broker
            .topic(topic)
            .await
            .map_err(|e| errors::code(&e))?;
        let (producer_id, request_id) = (self.next_id(), self.next_id());
        let cmd = TopicCommand::AddProducer(NewProducer {
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
            name: None,
            access_mode: ProducerAccessMode::Shared,
            topic_epoch: None,
            schema_version: None,
        });
        handle
            .send(cmd)
            .await
            .map_err(|_| ResponseError::NotLeaderOrFollower.code())?;
        loop {
            if let Some(r) = self.events.opened.remove(&request_id) {
                r?;
                break;
            }
            if !self.next_event(deadline).await {
                return Err(ResponseError::RequestTimedOut.code());
            }
        }
        self.producers.insert(full, (handle.clone(), producer_id));
        Ok((handle, producer_id))
    }

    /// Waits for entry `sequence_id`'s receipt: its base offset, or an error code.
    async fn stored(&mut self, sequence_id: u64, deadline: Instant) -> Result<i64, i16> {
        loop {
            if let Some(r) = self.events.stored.remove(&sequence_id) {
                return r.map(|index| match index {
                    UNKNOWN_INDEX => -1,
                    i => i64::try_from(i).unwrap_or(-1),
                });
            }
            if !self.next_event(deadline).await {
                return Err(ResponseError::RequestTimedOut.code());
            }
        }
    }

    /// Takes the next event the topics sent; false once `deadline` passed.
    async fn next_event(&mut self, deadline: Instant) -> bool {
        let until = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(until, self.out_rx.recv()).await {
            Ok(Some(out)) => {
                self.take(out);
                true
            }
            _ => false,
        }
    }

    /// Takes every event already queued (receipts of acks=0 produces).
    pub(super) fn drain_events(&mut self) {
        while let Some(out) = self.out_rx.try_recv() {
            self.take(out);
        }
        // Answers nobody waits for any more (acks=0) are not kept.
        if self.events.stored.len() > MAX_UNCLAIMED {
            self.events.stored.clear();
        }
    }

    fn take(&mut self, out: Out) {
        self.out_rx.written(out.cost(), 0);
        match out {
            Out::Receipt {
                receipt,
                message_index,
                ..
            } => {
                self.events
                    .stored
                    .insert(receipt.sequence_id, Ok(message_index));
            }
            Out::Frame(bytes) => self.take_command(bytes),
            Out::Message { .. } | Out::Close => {}
        }
    }

    fn take_command(&mut self, bytes: Bytes) {
        let mut b = BytesMut::from(&bytes[..]);
        let Ok(Some(f)) = frame::decode(&mut b, bytes.len()) else {
            return;
        };
        let c = f.command;
        match Type::try_from(c.r#type) {
            Ok(Type::ProducerSuccess) => {
                if let Some(s) = c.producer_success {
                    self.events.opened.insert(s.request_id, Ok(()));
                }
            }
            Ok(Type::Error) => {
                if let Some(e) = c.error {
                    let code = errors::from_server_error(e.error);
                    self.events.opened.insert(e.request_id, Err(code));
                }
            }
            Ok(Type::SendError) => {
                if let Some(e) = c.send_error {
                    let code = errors::from_server_error(e.error);
                    self.events.stored.insert(e.sequence_id, Err(code));
                }
            }
            Ok(Type::CloseProducer) => {
                if let Some(cp) = c.close_producer {
                    self.producers.retain(|_, (_, id)| *id != cp.producer_id);
                }
            }
            _ => {}
        }
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

/// Receipts of acks=0 produces kept before they are dropped unclaimed.
const MAX_UNCLAIMED: usize = 100_000;
