//! Consumers: flow control as the Java client does it (a receiver queue, refilled
//! when half is used), batches split into messages, individual acks grouped
//! into one ACK command.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_ack::AckType, command_subscribe, CommandAck, CommandCloseConsumer,
    CommandFlow, CommandMessage, CommandSubscribe, CompressionType, KeyValue, MessageIdData,
};
use tokio::sync::mpsc;

use crate::connection::{command, Conn, ConsumerEvent};
use crate::{ClientError, MessageId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionType {
    Exclusive,
    Shared,
    Failover,
    KeyShared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    Latest,
    Earliest,
}

/// Where a reader (a non-durable subscription) starts: at entry
/// `ledger_id:entry_id`, that entry itself delivered only if `inclusive`
/// (the broker starts at the entry; the client skips it otherwise, as
/// Pulsar's clients do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartMessageId {
    pub ledger_id: u64,
    pub entry_id: u64,
    pub inclusive: bool,
}

#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    pub subscription_type: SubscriptionType,
    pub initial_position: InitialPosition,
    /// Messages the broker may send ahead of `receive`.
    pub receiver_queue: u32,
    pub name: Option<String>,
    /// `false`: a reader's subscription, gone when its consumer closes.
    pub durable: bool,
    /// For a non-durable subscription: where it starts (else `initial_position`).
    pub start_message_id: Option<StartMessageId>,
}

impl Default for ConsumerOptions {
    fn default() -> ConsumerOptions {
        ConsumerOptions {
            subscription_type: SubscriptionType::Exclusive,
            initial_position: InitialPosition::Latest,
            receiver_queue: 1000,
            name: None,
            durable: true,
            start_message_id: None,
        }
    }
}

/// A received message.
#[derive(Clone, Debug, Default)]
pub struct Message {
    pub id: MessageId,
    pub payload: Bytes,
    pub key: Option<String>,
    /// Application properties, in the order the producer set them.
    pub properties: Vec<(String, String)>,
    /// Milliseconds since the epoch, as the producer stamped it.
    pub publish_time_ms: u64,
    pub redelivery_count: u32,
    /// Messages in the entry this one came in (1: not batched).
    batch_size: u32,
}

fn pairs(properties: &[KeyValue]) -> Vec<(String, String)> {
    properties
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect()
}

/// Acks are sent once this many are waiting, or when `receive` would wait.
const ACK_GROUP: usize = 256;

pub struct Consumer {
    conn: Arc<Conn>,
    id: u64,
    partition: i32,
    events: mpsc::UnboundedReceiver<ConsumerEvent>,
    queue: VecDeque<Message>,
    receiver_queue: u32,
    /// Messages handed out since the last FLOW.
    consumed: u32,
    /// Batched entries: messages of each still unacknowledged.
    batch_left: HashMap<(u64, u64), u32>,
    acks: Vec<MessageIdData>,
    closed: bool,
    /// A reader's exclusive start: that entry is skipped once.
    skip_entry: Option<(u64, u64)>,
}

pub(crate) async fn subscribe(
    conn: Arc<Conn>,
    topic: &str,
    subscription: &str,
    options: ConsumerOptions,
) -> Result<Consumer, ClientError> {
    let id = conn.next_id();
    let request_id = conn.next_id();
    let (tx, events) = mpsc::unbounded_channel();
    conn.register_consumer(id, tx);
    let sub_type = match options.subscription_type {
        SubscriptionType::Exclusive => command_subscribe::SubType::Exclusive,
        SubscriptionType::Shared => command_subscribe::SubType::Shared,
        SubscriptionType::Failover => command_subscribe::SubType::Failover,
        SubscriptionType::KeyShared => command_subscribe::SubType::KeyShared,
    };
    let initial = match options.initial_position {
        InitialPosition::Latest => command_subscribe::InitialPosition::Latest,
        InitialPosition::Earliest => command_subscribe::InitialPosition::Earliest,
    };
    let answer = conn
        .request(
            request_id,
            command(Type::Subscribe, |b| {
                b.subscribe = Some(Box::new(CommandSubscribe {
                    topic: topic.into(),
                    subscription: subscription.into(),
                    sub_type: sub_type as i32,
                    consumer_id: id,
                    request_id,
                    consumer_name: options.name.clone(),
                    initial_position: Some(initial as i32),
                    durable: Some(options.durable),
                    start_message_id: options.start_message_id.map(|s| MessageIdData {
                        ledger_id: s.ledger_id,
                        entry_id: s.entry_id,
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
            }),
        )
        .await;
    if let Err(e) = answer {
        conn.forget_consumer(id);
        return Err(e);
    }
    let receiver_queue = options.receiver_queue.max(1);
    conn.send(&flow(id, receiver_queue));
    let partition = topic
        .rsplit_once("-partition-")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(-1);
    Ok(Consumer {
        conn,
        id,
        partition,
        events,
        queue: VecDeque::new(),
        receiver_queue,
        consumed: 0,
        batch_left: HashMap::new(),
        acks: Vec::new(),
        closed: false,
        skip_entry: options
            .start_message_id
            .filter(|s| !s.inclusive)
            .map(|s| (s.ledger_id, s.entry_id)),
    })
}

fn flow(consumer_id: u64, permits: u32) -> kilonova_pulsar_protocol::proto::BaseCommand {
    command(Type::Flow, |b| {
        b.flow = Some(Box::new(CommandFlow {
            consumer_id,
            message_permits: permits,
        }))
    })
}

impl Consumer {
    /// The next message; waits for one.
    pub async fn receive(&mut self) -> Result<Message, ClientError> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                self.consumed += 1;
                if self.consumed >= self.receiver_queue / 2 {
                    self.conn.send(&flow(self.id, self.consumed));
                    self.consumed = 0;
                }
                return Ok(m);
            }
            if self.closed {
                return Err(ClientError::Closed);
            }
            self.flush_acks();
            match self.events.recv().await {
                Some(ConsumerEvent::Message(cmd, raw)) => self.unpack(cmd, raw)?,
                Some(ConsumerEvent::Closed) | None => self.closed = true,
            }
        }
    }

    fn unpack(&mut self, cmd: CommandMessage, raw: Bytes) -> Result<(), ClientError> {
        let payload =
            frame::decode_payload(raw).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let meta = &payload.metadata;
        let count = frame::message_count(meta);
        let id = &cmd.message_id;
        let redelivery_count = cmd.redelivery_count.unwrap_or(0);
        if self.skip_entry == Some((id.ledger_id, id.entry_id)) {
            // A reader's exclusive start: the broker starts at that entry.
            self.skip_entry = None;
            self.consumed += count;
            return Ok(());
        }
        let data = match meta.compression() {
            CompressionType::None => payload.data.clone(),
            kind => Bytes::from(crate::compression::decompress(
                kind,
                &payload.data,
                meta.uncompressed_size.unwrap_or(0),
                self.conn.max_frame,
            )?),
        };
        if meta.num_messages_in_batch.is_none() {
            self.queue.push_back(Message {
                id: MessageId {
                    ledger_id: id.ledger_id,
                    entry_id: id.entry_id,
                    partition: self.partition,
                    batch_index: -1,
                },
                payload: data,
                key: meta.partition_key.clone(),
                properties: pairs(&meta.properties),
                publish_time_ms: meta.publish_time,
                redelivery_count,
                batch_size: 1,
            });
            return Ok(());
        }
        let messages =
            frame::parse_batch(&data, count).map_err(|e| ClientError::Protocol(e.to_string()))?;
        // A redelivered, partly acknowledged batch: skip what was acknowledged
        // (a set bit in the ack set is a message still to deliver).
        let wanted = |i: usize| match cmd.ack_set.get(i / 64) {
            None if cmd.ack_set.is_empty() => true,
            None => false,
            Some(word) => word & (1i64 << (i % 64)) != 0,
        };
        let mut delivered = 0;
        for (i, (single, data)) in messages.into_iter().enumerate() {
            if !wanted(i) {
                continue;
            }
            delivered += 1;
            self.queue.push_back(Message {
                id: MessageId {
                    ledger_id: id.ledger_id,
                    entry_id: id.entry_id,
                    partition: self.partition,
                    batch_index: i as i32,
                },
                payload: data,
                key: single.partition_key,
                properties: pairs(&single.properties),
                publish_time_ms: meta.publish_time,
                redelivery_count,
                batch_size: count,
            });
        }
        self.batch_left
            .insert((id.ledger_id, id.entry_id), delivered);
        Ok(())
    }

    /// Acknowledges one message. A batch's entry is acknowledged once all of
    /// its messages are.
    pub fn ack(&mut self, m: &Message) {
        let entry = (m.id.ledger_id, m.id.entry_id);
        if m.batch_size > 1 {
            match self.batch_left.get_mut(&entry) {
                Some(left) if *left > 1 => {
                    *left -= 1;
                    return;
                }
                _ => {
                    self.batch_left.remove(&entry);
                }
            }
        }
        self.acks.push(MessageIdData {
            ledger_id: entry.0,
            entry_id: entry.1,
            ..Default::default()
        });
        if self.acks.len() >= ACK_GROUP {
            self.flush_acks();
        }
    }

    /// Sends the acks waiting to be grouped.
    pub fn flush_acks(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.acks);
        self.conn.send(&command(Type::Ack, |b| {
            b.ack = Some(Box::new(CommandAck {
                consumer_id: self.id,
                ack_type: AckType::Individual as i32,
                message_id: ids,
                ..Default::default()
            }))
        }));
    }

    /// Flushes acks and closes the consumer on the broker.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.flush_acks();
        let request_id = self.conn.next_id();
        let result = self
            .conn
            .request(
                request_id,
                command(Type::CloseConsumer, |b| {
                    b.close_consumer = Some(Box::new(CommandCloseConsumer {
                        consumer_id: self.id,
                        request_id,
                        ..Default::default()
                    }))
                }),
            )
            .await;
        result.map(|_| ())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.flush_acks();
        self.conn.forget_consumer(self.id);
    }
}
