//! Producers: per-message sequence ids, optional batching, an in-flight window,
//! and receipts resolved in order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, CommandCloseProducer, CommandProducer, CommandSend, KeyValue,
    MessageIdData, MessageMetadata, SingleMessageMetadata,
};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::connection::{command, Conn};
use crate::{ClientError, Compression, MessageId};

/// Client-side batching: a batch is sent when it holds `max_messages` or
/// `max_bytes`, or every `max_delay` (a periodic timer, as the Java client's).
/// A batch holds messages of one key (the Java client's key-based batcher, which
/// Key_Shared subscriptions need: the broker routes a whole batch by its key), so
/// a message whose key differs from the batch's sends the batch first.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub max_delay: Duration,
}

impl Default for Batching {
    /// The Java client's defaults: 1,000 messages, 128 KiB, 1 ms.
    fn default() -> Batching {
        Batching {
            max_messages: 1000,
            max_bytes: 128 << 10,
            max_delay: Duration::from_millis(1),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// Producer name; the broker picks one when `None`.
    pub name: Option<String>,
    /// `None`: every message is its own entry.
    pub batching: Option<Batching>,
    /// Messages sent and not yet acknowledged by a receipt; `send` waits for room.
    pub max_pending: usize,
    /// The codec of each entry's payload (a batch is compressed whole).
    pub compression: Compression,
}

impl Default for ProducerOptions {
    fn default() -> ProducerOptions {
        ProducerOptions {
            name: None,
            batching: Some(Batching::default()),
            max_pending: 1000,
            compression: Compression::None,
        }
    }
}

/// A message to send.
#[derive(Clone, Debug, Default)]
pub struct OutgoingMessage {
    pub payload: Bytes,
    pub key: Option<String>,
    /// Application properties, in order.
    pub properties: Vec<(String, String)>,
}

impl From<Bytes> for OutgoingMessage {
    fn from(payload: Bytes) -> OutgoingMessage {
        OutgoingMessage {
            payload,
            ..Default::default()
        }
    }
}

fn key_values(properties: Vec<(String, String)>) -> Vec<KeyValue> {
    properties
        .into_iter()
        .map(|(key, value)| KeyValue { key, value })
        .collect()
}

/// Resolves to the message's id once the broker's receipt arrives (for a
/// Kilonova broker: once the message is durable).
pub struct Receipt(oneshot::Receiver<Result<MessageId, ClientError>>);

impl Future for Receipt {
    type Output = Result<MessageId, ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

/// Called on the connection's reader task when a message's receipt (or error)
/// arrives, with the time from queuing the message to that moment.
pub type SendCallback = Box<dyn FnOnce(Result<MessageId, ClientError>, Duration) + Send>;

enum Notify {
    Receipt(oneshot::Sender<Result<MessageId, ClientError>>),
    Callback(SendCallback),
}

struct Waiter {
    notify: Notify,
    queued: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Waiter {
    fn done(self, result: Result<MessageId, ClientError>) {
        match self.notify {
            Notify::Receipt(tx) => {
                let _ = tx.send(result);
            }
            Notify::Callback(f) => f(result, self.queued.elapsed()),
        }
    }
}

/// One SEND on the wire, waiting for its receipt.
struct InFlight {
    sequence_id: u64,
    batched: bool,
    waiters: Vec<Waiter>,
}

struct State {
    next_sequence_id: u64,
    batch: Vec<Waiter>,
    batch_data: BytesMut,
    batch_first_sequence_id: u64,
    /// The key every message of the current batch has.
    batch_key: Option<String>,
    in_flight: VecDeque<InFlight>,
    failed: Option<ClientError>,
}

pub(crate) struct Shared {
    conn: Arc<Conn>,
    id: u64,
    name: String,
    partition: i32,
    batching: Option<Batching>,
    compression: Compression,
    state: Mutex<State>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    fn send_locked(&self, st: &mut State, msg: OutgoingMessage, waiter: Waiter) {
        let sequence_id = st.next_sequence_id;
        st.next_sequence_id += 1;
        match self.batching {
            None => {
                let payload = match self.compression.compress(&msg.payload) {
                    Ok(p) => p,
                    Err(e) => {
                        waiter.done(Err(e));
                        return;
                    }
                };
                let metadata = MessageMetadata {
                    producer_name: self.name.clone(),
                    sequence_id,
                    publish_time: now_ms(),
                    partition_key: msg.key,
                    properties: key_values(msg.properties),
                    compression: Some(self.compression.wire() as i32),
                    uncompressed_size: Some(msg.payload.len() as u32),
                    ..Default::default()
                };
                let cmd = send_command(self.id, sequence_id, 1, None);
                st.in_flight.push_back(InFlight {
                    sequence_id,
                    batched: false,
                    waiters: vec![waiter],
                });
                self.conn.send_message(&cmd, &metadata, &payload);
            }
            Some(b) => {
                if !st.batch.is_empty() && st.batch_key != msg.key {
                    self.flush_locked(st);
                }
                if st.batch.is_empty() {
                    st.batch_first_sequence_id = sequence_id;
                    st.batch_key.clone_from(&msg.key);
                }
                let single = SingleMessageMetadata {
                    partition_key: msg.key,
                    properties: key_values(msg.properties),
                    sequence_id: Some(sequence_id),
                    ..Default::default()
                };
                frame::push_batch_message(&mut st.batch_data, &single, &msg.payload);
                st.batch.push(waiter);
                if st.batch.len() >= b.max_messages || st.batch_data.len() >= b.max_bytes {
                    self.flush_locked(st);
                }
            }
        }
    }

    fn flush_locked(&self, st: &mut State) {
        if st.batch.is_empty() {
            return;
        }
        let count = st.batch.len();
        let first = st.batch_first_sequence_id;
        let last = first + count as u64 - 1;
        let waiters = std::mem::take(&mut st.batch);
        let packed = match self.compression {
            Compression::None => None,
            c => match c.compress(&st.batch_data) {
                Ok(p) => Some(p),
                Err(e) => {
                    st.batch_data.clear();
                    for w in waiters {
                        w.done(Err(e.clone()));
                    }
                    return;
                }
            },
        };
        let metadata = MessageMetadata {
            producer_name: self.name.clone(),
            sequence_id: first,
            publish_time: now_ms(),
            partition_key: st.batch_key.take(),
            num_messages_in_batch: Some(count as i32),
            compression: Some(self.compression.wire() as i32),
            uncompressed_size: Some(st.batch_data.len() as u32),
            highest_sequence_id: Some(last),
            ..Default::default()
        };
        let cmd = send_command(self.id, first, count as i32, Some(last));
        let data = packed.as_deref().unwrap_or(&st.batch_data);
        self.conn.send_message(&cmd, &metadata, data);
        st.batch_data.clear();
        st.in_flight.push_back(InFlight {
            sequence_id: first,
            batched: true,
            waiters,
        });
    }

    fn flush(&self) {
        if let Ok(mut st) = self.state.lock() {
            self.flush_locked(&mut st);
        }
    }

    /// A receipt: the oldest SEND in flight must be the one it names.
    pub(crate) fn on_receipt(&self, sequence_id: u64, id: Option<&MessageIdData>) {
        let done = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            match st.in_flight.front().map(|f| f.sequence_id) {
                Some(s) if s == sequence_id => st.in_flight.pop_front(),
                Some(s) if sequence_id < s => return, // a late duplicate
                _ => {
                    drop(st);
                    self.fail(ClientError::Protocol(format!(
                        "receipt for sequence id {sequence_id} out of order"
                    )));
                    return;
                }
            }
        };
        let (Some(done), Some(id)) = (done, id) else {
            return;
        };
        for (i, w) in done.waiters.into_iter().enumerate() {
            w.done(Ok(MessageId {
                ledger_id: id.ledger_id,
                entry_id: id.entry_id,
                partition: self.partition,
                batch_index: if done.batched { i as i32 } else { -1 },
            }));
        }
    }

    pub(crate) fn on_send_error(&self, sequence_id: u64, e: ClientError) {
        let done = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let at = st
                .in_flight
                .iter()
                .position(|f| f.sequence_id == sequence_id);
            at.and_then(|i| st.in_flight.remove(i))
        };
        for w in done.into_iter().flat_map(|d| d.waiters) {
            w.done(Err(e.clone()));
        }
    }

    /// The producer can send no more: every waiting message fails.
    pub(crate) fn fail(&self, e: ClientError) {
        let waiters: Vec<Waiter> = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            st.failed.get_or_insert(e.clone());
            let mut all: Vec<Waiter> = st.in_flight.drain(..).flat_map(|f| f.waiters).collect();
            all.append(&mut st.batch);
            st.batch_data.clear();
            all
        };
        for w in waiters {
            w.done(Err(e.clone()));
        }
    }
}

fn send_command(
    producer_id: u64,
    sequence_id: u64,
    count: i32,
    highest: Option<u64>,
) -> kilonova_pulsar_protocol::proto::BaseCommand {
    command(Type::Send, |b| {
        b.send = Some(Box::new(CommandSend {
            producer_id,
            sequence_id,
            num_messages: Some(count),
            highest_sequence_id: highest,
            ..Default::default()
        }))
    })
}

/// A producer on one topic or partition.
pub struct Producer {
    shared: Arc<Shared>,
    /// The broker's `last_sequence_id` at creation (deduplication's record
    /// of this producer name), `None` for -1.
    last_sequence_id: Option<u64>,
    window: Arc<Semaphore>,
    max_pending: u32,
    timer: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) async fn create(
    conn: Arc<Conn>,
    topic: &str,
    options: ProducerOptions,
) -> Result<Producer, ClientError> {
    let id = conn.next_id();
    let request_id = conn.next_id();
    let answer = conn
        .request(
            request_id,
            command(Type::Producer, |b| {
                b.producer = Some(Box::new(CommandProducer {
                    topic: topic.into(),
                    producer_id: id,
                    request_id,
                    producer_name: options.name.clone(),
                    ..Default::default()
                }))
            }),
        )
        .await?;
    let success = answer.producer_success.ok_or_else(|| {
        ClientError::Protocol("PRODUCER answered without PRODUCER_SUCCESS".into())
    })?;
    let partition = topic
        .rsplit_once("-partition-")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(-1);
    let last_sequence_id = success.last_sequence_id.and_then(|s| u64::try_from(s).ok());
    let next_sequence_id = last_sequence_id.map_or(0, |s| s + 1);
    let shared = Arc::new(Shared {
        conn: conn.clone(),
        id,
        name: success.producer_name,
        partition,
        batching: options.batching,
        compression: options.compression,
        state: Mutex::new(State {
            next_sequence_id,
            batch: Vec::new(),
            batch_data: BytesMut::new(),
            batch_first_sequence_id: 0,
            batch_key: None,
            in_flight: VecDeque::new(),
            failed: None,
        }),
    });
    conn.register_producer(id, shared.clone());
    let timer = options.batching.map(|b| {
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(b.max_delay.max(Duration::from_micros(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(s) => s.flush(),
                    None => break,
                }
            }
        })
    });
    let max_pending = u32::try_from(options.max_pending.max(1)).unwrap_or(u32::MAX >> 4);
    Ok(Producer {
        shared,
        last_sequence_id,
        window: Arc::new(Semaphore::new(max_pending as usize)),
        max_pending,
        timer,
    })
}

impl Producer {
    /// The name the broker knows this producer by.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Queues a message. Waits only for room in the in-flight window; the
    /// returned [`Receipt`] resolves when the broker confirms it.
    pub async fn send(&self, msg: impl Into<OutgoingMessage>) -> Result<Receipt, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.queue(msg.into(), Notify::Receipt(tx)).await?;
        Ok(Receipt(rx))
    }

    /// Like [`Producer::send`], but `callback` runs when the receipt arrives
    /// (on the connection's reader task: keep it short), given the time since
    /// the message was queued.
    pub async fn send_with_callback(
        &self,
        msg: impl Into<OutgoingMessage>,
        callback: SendCallback,
    ) -> Result<(), ClientError> {
        self.queue(msg.into(), Notify::Callback(callback)).await
    }

    /// Waits for room in the in-flight window, then locks the state of a
    /// producer that has not failed.
    async fn room(&self) -> Result<(OwnedSemaphorePermit, MutexGuard<'_, State>), ClientError> {
        let permit = self
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)?;
        let st = self.shared.state.lock().map_err(|_| ClientError::Closed)?;
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        Ok((permit, st))
    }

    async fn queue(&self, msg: OutgoingMessage, notify: Notify) -> Result<(), ClientError> {
        let (permit, mut st) = self.room().await?;
        let waiter = Waiter {
            notify,
            queued: Instant::now(),
            _permit: permit,
        };
        self.shared.send_locked(&mut st, msg, waiter);
        Ok(())
    }

    /// The highest sequence id the broker had stored for this producer's
    /// name when it was created (with deduplication on), `None` if none.
    pub fn last_sequence_id(&self) -> Option<u64> {
        self.last_sequence_id
    }

    /// Sends one entry exactly as given — its metadata (producer name,
    /// sequence ids, batch count and all) and its payload (a batch, maybe
    /// compressed) — under `sequence_id..=highest_sequence_id`, which the
    /// caller keeps ascending: a geo-replicator forwarding stored entries.
    /// Only for a producer created without batching.
    pub async fn send_entry(
        &self,
        sequence_id: u64,
        highest_sequence_id: u64,
        metadata: MessageMetadata,
        payload: Bytes,
    ) -> Result<Receipt, ClientError> {
        if self.shared.batching.is_some() {
            return Err(ClientError::Protocol(
                "send_entry needs a producer without batching".into(),
            ));
        }
        let (permit, mut st) = self.room().await?;
        let (tx, rx) = oneshot::channel();
        let count = kilonova_pulsar_protocol::frame::message_count(&metadata);
        let count = i32::try_from(count).unwrap_or(i32::MAX);
        let cmd = send_command(
            self.shared.id,
            sequence_id,
            count,
            Some(highest_sequence_id),
        );
        st.in_flight.push_back(InFlight {
            sequence_id,
            batched: count > 1,
            waiters: vec![Waiter {
                notify: Notify::Receipt(tx),
                queued: Instant::now(),
                _permit: permit,
            }],
        });
        st.next_sequence_id = st.next_sequence_id.max(highest_sequence_id + 1);
        self.shared.conn.send_message(&cmd, &metadata, &payload);
        Ok(Receipt(rx))
    }

    /// Sends the current batch now.
    pub fn flush(&self) {
        self.shared.flush();
    }

    /// Flushes, waits for every receipt, and closes the producer on the broker.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush();
        // Every permit back: every receipt arrived (or failed).
        let _all = self.window.acquire_many(self.max_pending).await;
        let conn = &self.shared.conn;
        let request_id = conn.next_id();
        let result = conn
            .request(
                request_id,
                command(Type::CloseProducer, |b| {
                    b.close_producer = Some(Box::new(CommandCloseProducer {
                        producer_id: self.shared.id,
                        request_id,
                        ..Default::default()
                    }))
                }),
            )
            .await;
        conn.forget_producer(self.shared.id);
        result.map(|_| ())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.shared.conn.forget_producer(self.shared.id);
    }
}
