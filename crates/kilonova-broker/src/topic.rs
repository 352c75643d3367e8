//! A loaded topic: one task owns its managed log, producers and subscriptions;
//! connections talk to it through a bounded queue (a full queue makes the
//! connection stop reading its socket: backpressure, not buffering).
//!
//! Publish receipts go out only when the storage completion for the entry
//! resolves, i.e. after the fdatasync that covers it; completions resolve in
//! append order, so receipts do too. New entries are dispatched at the same point.
//!
//! A topic with no producers, consumers or appends in flight for
//! `topic_unload_idle_secs` unloads: it persists its cursors and its task ends,
//! so an idle topic costs no task and no memory beyond its catalog record.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, oneshot, Notify};

use kilonova_pulsar_protocol::frame::{self, Payload};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_ack::AckType, command_subscribe::InitialPosition as WireInitial,
    command_subscribe::SubType, BaseCommand, CommandAck, CommandAckResponse,
    CommandGetLastMessageIdResponse, CommandProducerSuccess, CommandSubscribe, KeySharedMode,
    MessageIdData, ProducerAccessMode, ServerError,
};
use kilonova_storage::{Completion, Entry, InitialPosition, ManagedLog, Position, StorageError};

pub mod admin;
mod policy;

pub use admin::{AdminReply, AdminRequest, Peeked, ResetTo};

use crate::broker::Broker;
use crate::commands::{self, schema_version_bytes};
use crate::dedup::{self, Dedup};
use crate::error::BrokerError;
use crate::metrics::{Rates, TopicMetrics};
use crate::outbound::Outbound;
use crate::policies::Effective;
use crate::rate_limit::{PublishGate, RateLimiter};
use crate::subscription::{Consumer, ConsumerKey, DispatchLimits, SubKind, Subscription};
use kilonova_metadata::names::TopicName;
use kilonova_metadata::TopicRecord;

/// The connection a producer or consumer lives on.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub id: u64,
    pub out: Outbound,
    pub wants_entry_metadata: bool,
}

pub(crate) struct NewProducer {
    pub conn: ConnCtx,
    pub producer_id: u64,
    pub request_id: u64,
    pub name: Option<String>,
    pub access_mode: ProducerAccessMode,
    /// The version of the producer's schema (registered by the connection).
    pub schema_version: Option<u64>,
}

// `Send` is the largest variant and the hot one: boxing it would cost an allocation
// per message, so the size difference is accepted.
#[allow(clippy::large_enum_variant)]
pub(crate) enum TopicCommand {
    AddProducer(NewProducer),
    Send {
        conn: u64,
        producer_id: u64,
        sequence_id: u64,
        highest_sequence_id: u64,
        payload: Payload,
    },
    /// CLOSE_PRODUCER (the connection answers it) or the connection went away.
    RemoveProducer {
        conn: u64,
        producer_id: u64,
    },
    Subscribe {
        conn: ConnCtx,
        command: Box<CommandSubscribe>,
    },
    Flow {
        key: ConsumerKey,
        permits: u32,
    },
    Ack {
        key: ConsumerKey,
        ack: CommandAck,
    },
    Redeliver {
        key: ConsumerKey,
        ids: Vec<MessageIdData>,
        epoch: Option<u64>,
    },
    Seek {
        key: ConsumerKey,
        request_id: u64,
        message_id: Option<MessageIdData>,
        publish_time_ms: Option<u64>,
    },
    GetLastMessageId {
        key: ConsumerKey,
        request_id: u64,
    },
    Unsubscribe {
        key: ConsumerKey,
        request_id: u64,
    },
    /// CLOSE_CONSUMER (the connection answers it) or the connection went away.
    RemoveConsumer {
        key: ConsumerKey,
    },
    /// Close every client with the protocol's close commands, persist, stop;
    /// `done` tells whether the topic's state was persisted.
    Shutdown {
        done: oneshot::Sender<bool>,
    },
    /// A request of the admin API.
    Admin {
        request: AdminRequest,
        reply: oneshot::Sender<Result<AdminReply, BrokerError>>,
    },
}

/// How connections reach a loaded topic: its queue, and its publish rate limit
/// (drawn from by the connections themselves, so a producer over the limit is
/// slowed where it reads, before its messages are queued).
#[derive(Clone)]
pub(crate) struct TopicHandle {
    tx: mpsc::Sender<TopicCommand>,
    pub publish_gate: Arc<PublishGate>,
}

impl TopicHandle {
    pub(crate) fn new(tx: mpsc::Sender<TopicCommand>, publish_gate: Arc<PublishGate>) -> Self {
        TopicHandle { tx, publish_gate }
    }

    pub(crate) async fn send(
        &self,
        cmd: TopicCommand,
    ) -> Result<(), mpsc::error::SendError<TopicCommand>> {
        self.tx.send(cmd).await
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) fn same_channel(&self, other: &TopicHandle) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

struct Producer {
    name: String,
    out: Outbound,
    exclusive: bool,
    msg_in: u64,
    bytes_in: u64,
}

/// What a SEND became.
enum Pending {
    /// Appended: durable when the completion resolves.
    Stored(Completion<Position>),
    /// Already stored (deduplication): answered with the original's id.
    Duplicate,
    /// Refused before it was stored.
    Refused(ServerError, String),
}

/// Where a SEND's answer goes.
#[derive(Clone)]
struct AnswerTo {
    out: Outbound,
    producer_id: u64,
    sequence_id: u64,
    highest_sequence_id: u64,
}

/// What a SEND's answer is waiting for: the append's durability, or (for a
/// duplicate or a refusal) only the answers to the SENDs before it, so that
/// a producer's answers go out in the order it sent.
struct PendingAppend {
    pending: Pending,
    to: AnswerTo,
    /// The producer's name, with deduplication on and a SEND that completes
    /// its message (not a chunk before the last).
    producer: Option<String>,
}

enum Outcome {
    Stored(Result<Position, StorageError>),
    Duplicate,
    Refused(ServerError, String),
}

/// A resolved [`PendingAppend`].
struct Appended {
    outcome: Outcome,
    to: AnswerTo,
    producer: Option<String>,
}

impl Future for PendingAppend {
    type Output = Appended;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let outcome = match &mut this.pending {
            Pending::Stored(c) => match Pin::new(c).poll(cx) {
                Poll::Ready(r) => Outcome::Stored(r),
                Poll::Pending => return Poll::Pending,
            },
            Pending::Duplicate => Outcome::Duplicate,
            Pending::Refused(code, why) => Outcome::Refused(*code, std::mem::take(why)),
        };
        Poll::Ready(Appended {
            outcome,
            to: this.to.clone(),
            producer: this.producer.take(),
        })
    }
}

/// The most commands a topic handles before it dispatches and looks at its
/// other duties (append completions, housekeeping).
const COMMAND_BURST: usize = 256;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Earliest / latest as clients encode them in a `MessageIdData`.
fn special_position(id: &MessageIdData) -> Option<InitialPosition> {
    if id.ledger_id == u64::MAX {
        Some(InitialPosition::Earliest)
    } else if id.ledger_id >= i64::MAX as u64 {
        Some(InitialPosition::Latest)
    } else {
        None
    }
}

pub(crate) struct Topic {
    name: TopicName,
    full_name: String,
    broker: Broker,
    /// `None` for a non-persistent topic.
    log: Option<ManagedLog>,
    producers: HashMap<(u64, u64), Producer>,
    waiting_exclusive: VecDeque<NewProducer>,
    topic_epoch: u64,
    subscriptions: HashMap<String, Subscription>,
    consumer_subs: HashMap<ConsumerKey, String>,
    /// Subscriptions whose consumers may take more entries: dispatched once
    /// after a burst of commands, so a FLOW followed at once by a REDELIVER
    /// (or many ACKs) costs one dispatch pass, not one per command.
    to_dispatch: HashSet<String>,
    appends: FuturesOrdered<PendingAppend>,
    /// An append failed: every append still in flight is answered with an
    /// error (stored or not), producers were closed and new ones wait, until
    /// nothing is in flight (Pulsar fences a topic the same way). Without it,
    /// a message stored after a failed one would make deduplication drop the
    /// failed one's resend.
    fenced: bool,
    /// Non-persistent topics: the next synthetic entry id.
    next_transient_entry: u64,
    idle_since: Option<Instant>,
    metrics: Arc<TopicMetrics>,
    /// When rates were last computed, and the totals then.
    rates_since: (Instant, (u64, u64, u64, u64)),
    /// The policies in force (refreshed from the policy cache every tick).
    policies: Effective,
    publish_gate: Arc<PublishGate>,
    /// The topic's dispatch rate (subscriptions have their own too).
    dispatch_rate: RateLimiter,
    /// A dispatch held back by a dispatch rate goes on at this time.
    dispatch_wake: Option<Instant>,
    /// Notified by a connection's writer when a consumer held back for its
    /// full outbound queue may take more.
    drained: Arc<Notify>,
    /// Passes of `dispatch_all` (which subscription goes first under a topic rate).
    dispatch_round: usize,
    checks: policy::Checks,
    /// A backlog quota of a producer policy is exceeded: producers are refused.
    quota_exceeded: Option<policy::Exceeded>,
    /// Producer names and sequence ids seen, with deduplication on.
    dedup: Option<Dedup>,
}

impl Topic {
    /// Loads the topic and serves it until it unloads or the broker shuts down.
    pub(crate) async fn run(
        broker: Broker,
        name: TopicName,
        record: TopicRecord,
        mut rx: mpsc::Receiver<TopicCommand>,
        publish_gate: Arc<PublishGate>,
    ) {
        let full_name = name.to_string();
        let log = if name.is_persistent() {
            match broker.open_log(record.id).await {
                Ok(log) => Some(log),
                Err(e) => {
                    tracing::error!(topic = %full_name, error = %e, "cannot load topic");
                    rx.close();
                    broker.forget_topic(&full_name);
                    let e = BrokerError::Metadata(format!("cannot load topic: {e}"));
                    while let Ok(cmd) = rx.try_recv() {
                        refuse(cmd, &e);
                    }
                    return;
                }
            }
        } else {
            None
        };
        tracing::debug!(topic = %full_name, id = record.id, "topic loaded");
        let policies = policy::load(&broker, &name).await;
        let now = Instant::now();
        publish_gate.set(policies.publish_rate, now);
        let dispatch_rate = policy::dispatch_limiter(policies.dispatch_rate, now);
        let metrics = broker.metrics().register(&full_name);
        let mut topic = Topic {
            name,
            full_name,
            broker,
            log,
            producers: HashMap::new(),
            waiting_exclusive: VecDeque::new(),
            topic_epoch: 0,
            subscriptions: HashMap::new(),
            consumer_subs: HashMap::new(),
            to_dispatch: HashSet::new(),
            appends: FuturesOrdered::new(),
            fenced: false,
            next_transient_entry: 0,
            idle_since: Some(now),
            metrics,
            rates_since: (now, (0, 0, 0, 0)),
            policies,
            publish_gate,
            dispatch_rate,
            dispatch_wake: None,
            drained: Arc::new(Notify::new()),
            dispatch_round: 0,
            checks: policy::Checks::new(now),
            quota_exceeded: None,
            dedup: None,
        };
        topic.set_dedup(topic.policies.deduplication);
        topic.serve(rx).await;
        topic
            .broker
            .metrics()
            .unregister(&topic.full_name, &topic.metrics);
    }

    async fn serve(&mut self, mut rx: mpsc::Receiver<TopicCommand>) {
        let config = self.broker.config().clone();
        let mut tick = tokio::time::interval(Duration::from_millis(
            config.cursor_persist_interval_ms.max(10),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle_limit = Duration::from_secs(config.topic_unload_idle_secs);
        let drained = self.drained.clone();
        loop {
            tokio::select! {
                biased;
                Some(appended) = self.appends.next(), if !self.appends.is_empty() => {
                    self.complete_append(appended);
                    // Drain every completion that is ready before dispatching once.
                    while let Some(Some(a)) =
                        futures_util::FutureExt::now_or_never(self.appends.next())
                    {
                        self.complete_append(a);
                    }
                    self.unfence_when_drained();
                    self.dispatch_all();
                }
                cmd = rx.recv() => {
                    let Some(mut cmd) = cmd else { break };
                    // Handle the burst of commands already queued, then dispatch.
                    let mut handled = 0;
                    loop {
                        match cmd {
                            TopicCommand::Shutdown { done } => {
                                let persisted = self.shutdown().await;
                                let _ = done.send(persisted);
                                return;
                            }
                            TopicCommand::Admin { request, reply } => {
                                if self.admin_request(request, reply, &mut rx).await {
                                    return;
                                }
                            }
                            cmd => self.handle(cmd).await,
                        }
                        handled += 1;
                        if handled == COMMAND_BURST {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(next) => cmd = next,
                            Err(_) => break,
                        }
                    }
                    self.flush_dispatch();
                    self.update_gauges();
                }
                _ = sleep_until(self.dispatch_wake), if self.dispatch_wake.is_some() => {
                    self.dispatch_wake = None;
                    self.dispatch_all();
                }
                _ = drained.notified() => self.dispatch_all(),
                _ = tick.tick() => {
                    self.housekeeping().await;
                    self.update_gauges();
                    self.update_backlog_and_rates();
                    if self.is_idle() {
                        let since = *self.idle_since.get_or_insert_with(Instant::now);
                        match self.inactive_check(since) {
                            policy::Inactive::Delete => {
                                if self.delete_inactive(&mut rx).await {
                                    return;
                                }
                            }
                            policy::Inactive::Keep => {}
                            policy::Inactive::Unload => {
                                if since.elapsed() >= idle_limit && self.unload(&mut rx).await {
                                    return;
                                }
                            }
                        }
                    } else {
                        self.idle_since = None;
                    }
                }
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.producers.is_empty()
            && self.consumer_subs.is_empty()
            && self.waiting_exclusive.is_empty()
            && self.appends.is_empty()
    }

    /// Unloads if no command is queued. Commands that race in after the decision are
    /// forwarded to a fresh load of the topic.
    async fn unload(&mut self, rx: &mut mpsc::Receiver<TopicCommand>) -> bool {
        self.snapshot_dedup();
        if !self.broker.unload_topic(&self.full_name, rx, &mut self.log) {
            return false;
        }
        {
            {
                tracing::debug!(topic = %self.full_name, "topic unloaded (idle)");
                rx.close();
                while let Ok(cmd) = rx.try_recv() {
                    self.broker.forward(&self.name, cmd).await;
                }
                true
            }
        }
    }

    async fn housekeeping(&mut self) {
        self.refresh_policies().await;
        self.enforce_policies();
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if let Err(e) = log.persist_cursors() {
            tracing::warn!(topic = %self.full_name, error = %e, "persisting cursors failed");
        }
        if let Err(e) = log.trim(now_ms(), self.policies.retention).await {
            tracing::warn!(topic = %self.full_name, error = %e, "trimming failed");
        }
    }

    /// Closes the topic; whether its state (cursors) was persisted.
    async fn shutdown(&mut self) -> bool {
        self.shutdown_keeping_log().await;
        let mut persisted = true;
        if let Some(log) = self.log.take() {
            if let Err(e) = log.close() {
                tracing::error!(topic = %self.full_name, error = %e, "closing the log failed: its cursors were not persisted");
                persisted = false;
            }
        }
        tracing::debug!(topic = %self.full_name, "topic closed");
        persisted
    }

    /// Closes every producer and consumer with the protocol's close commands,
    /// waits for appends in flight, drops non-durable cursors.
    async fn shutdown_keeping_log(&mut self) {
        for ((_, id), p) in self.producers.drain() {
            p.out.command(commands::close_producer(id));
        }
        for p in self.waiting_exclusive.drain(..) {
            p.conn.out.command(commands::close_producer(p.producer_id));
        }
        for sub in self.subscriptions.values() {
            for c in &sub.consumers {
                c.out.command(commands::close_consumer(c.key.id));
            }
        }
        while let Some(a) = self.appends.next().await {
            self.complete_append(a);
        }
        self.snapshot_dedup();
        self.consumer_subs.clear();
        self.drop_transient_cursors_of(None);
        self.subscriptions.clear();
    }

    fn drop_transient_cursors_of(&mut self, only: Option<&str>) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let doomed: Vec<String> = self
            .subscriptions
            .values()
            .filter(|s| !s.durable && only.is_none_or(|n| n == s.name))
            .map(|s| s.name.clone())
            .collect();
        for name in doomed {
            self.subscriptions.remove(&name);
            if let Err(e) = log.delete_cursor(&name) {
                tracing::warn!(topic = %self.full_name, error = %e, "deleting a cursor failed");
            }
        }
    }

    fn complete_append(&mut self, a: Appended) {
        if self.fenced {
            // Stored or not, its producer resends it (deduplication forgot it).
            let why = match &a.outcome {
                Outcome::Refused(_, why) => why.clone(),
                _ => "the topic is fenced after a failed write: send again".to_string(),
            };
            a.to.out.command(commands::send_error(
                a.to.producer_id,
                a.to.sequence_id,
                ServerError::PersistenceError,
                why,
            ));
            return;
        }
        let result = match a.outcome {
            Outcome::Stored(r) => r,
            Outcome::Duplicate => return self.answer_duplicate(&a),
            Outcome::Refused(code, ref why) => {
                a.to.out.command(commands::send_error(
                    a.to.producer_id,
                    a.to.sequence_id,
                    code,
                    why.clone(),
                ));
                return;
            }
        };
        match result {
            Ok(p) => {
                if let (Some(d), Some(name)) = (self.dedup.as_mut(), a.producer.as_deref()) {
                    d.persisted(name, a.to.highest_sequence_id, p);
                    if d.unsnapshotted()
                        >= self.broker.config().deduplication_snapshot_interval_entries
                    {
                        self.snapshot_dedup();
                    }
                }
                a.to.out.command(commands::send_receipt(
                    a.to.producer_id,
                    a.to.sequence_id,
                    a.to.highest_sequence_id,
                    commands::message_id(p, None),
                ))
            }
            Err(e) => {
                tracing::warn!(topic = %self.full_name, error = %e, "append failed");
                a.to.out.command(commands::send_error(
                    a.to.producer_id,
                    a.to.sequence_id,
                    ServerError::PersistenceError,
                    e.to_string(),
                ));
                self.fence();
            }
        }
    }

    /// Fences the topic after a failed append: producers are closed (clients
    /// reconnect and resend what was not acknowledged), new producers are
    /// refused as not ready, and what is still in flight is answered with
    /// errors; [`Self::unfence_when_drained`] lifts it.
    fn fence(&mut self) {
        if self.fenced {
            return;
        }
        self.fenced = true;
        self.broker.metrics().count_topic_fenced();
        tracing::warn!(topic = %self.full_name, in_flight = self.appends.len(), "fenced after a failed append");
        for ((_, id), p) in self.producers.drain() {
            p.out.command(commands::close_producer(id));
        }
    }

    /// Lifts the fence once no append is in flight.
    fn unfence_when_drained(&mut self) {
        if self.fenced && self.appends.is_empty() {
            self.fenced = false;
            if let Some(d) = self.dedup.as_mut() {
                d.reset_pushed();
            }
            tracing::info!(topic = %self.full_name, "fence lifted");
        }
    }

    async fn handle(&mut self, cmd: TopicCommand) {
        match cmd {
            TopicCommand::AddProducer(p) => self.add_producer(p),
            TopicCommand::Send {
                conn,
                producer_id,
                sequence_id,
                highest_sequence_id,
                payload,
            } => {
                self.publish(conn, producer_id, sequence_id, highest_sequence_id, payload)
                    .await
            }
            TopicCommand::RemoveProducer { conn, producer_id } => {
                self.remove_producer(conn, producer_id)
            }
            TopicCommand::Subscribe { conn, command } => self.subscribe(conn, *command),
            TopicCommand::Flow { key, permits } => {
                if let Some(sub) = self.sub_of_mut(key) {
                    if let Some(c) = sub.consumer_mut(key) {
                        c.permits = c.permits.saturating_add(i64::from(permits));
                    }
                }
                self.dispatch_of(key);
            }
            TopicCommand::Ack { key, ack } => self.ack(key, ack),
            TopicCommand::Redeliver { key, ids, epoch } => {
                let positions: Vec<Position> = ids
                    .iter()
                    .map(|m| Position::new(m.ledger_id, m.entry_id))
                    .collect();
                if let Some(name) = self.consumer_subs.get(&key).cloned() {
                    if let Some(sub) = self.subscriptions.get_mut(&name) {
                        // A client that counts epochs drops messages stamped with an
                        // older one: what was in flight before this request.
                        if let (Some(e), Some(c)) = (epoch, sub.consumer_mut(key)) {
                            c.epoch = Some(c.epoch.map_or(e, |old| old.max(e)));
                        }
                        sub.redeliver(key, &positions, self.log.as_mut());
                    }
                }
                self.dispatch_of(key);
            }
            TopicCommand::Seek {
                key,
                request_id,
                message_id,
                publish_time_ms,
            } => self.seek(key, request_id, message_id, publish_time_ms),
            TopicCommand::GetLastMessageId { key, request_id } => {
                self.last_message_id(key, request_id)
            }
            TopicCommand::Unsubscribe { key, request_id } => self.unsubscribe(key, request_id),
            TopicCommand::RemoveConsumer { key } => self.remove_consumer(key),
            // Handled by the serving loop.
            TopicCommand::Shutdown { .. } | TopicCommand::Admin { .. } => {}
        }
    }

    /// Answers an admin request; returns whether the topic's task must end
    /// (it was unloaded or deleted).
    async fn admin_request(
        &mut self,
        request: AdminRequest,
        reply: oneshot::Sender<Result<AdminReply, BrokerError>>,
        rx: &mut mpsc::Receiver<TopicCommand>,
    ) -> bool {
        let ends = match &request {
            AdminRequest::Unload => Some(false),
            AdminRequest::Delete { .. } | AdminRequest::DeleteIfInactive { .. } => Some(true),
            _ => None,
        };
        let answer = self.admin(request);
        let Some(delete) = ends.filter(|_| answer.is_ok()) else {
            let _ = reply.send(answer);
            return false;
        };
        let result = self.end(delete, rx).await;
        tracing::info!(topic = %self.full_name, deleted = delete, ok = result.is_ok(), "topic unloaded by the admin API");
        let _ = reply.send(result.map(|()| AdminReply::Done));
        true
    }

    /// Unloads the topic or deletes it with its data and record; the task ends.
    async fn end(
        &mut self,
        delete: bool,
        rx: &mut mpsc::Receiver<TopicCommand>,
    ) -> Result<(), BrokerError> {
        // Leave the broker's map; loads of this topic wait until the log is
        // closed (or deleted with its record), then close every client (they
        // reconnect, as after a Pulsar unload).
        let mut closing = self.broker.begin_closing(&self.full_name);
        rx.close();
        self.shutdown_keeping_log().await;
        let result = match (delete, self.log.take()) {
            (false, Some(log)) => log.close().map_err(BrokerError::from),
            (false, None) => Ok(()),
            (true, log) => self.delete_everything(log).await,
        };
        if delete && result.is_ok() {
            closing.deleted();
        }
        drop(closing);
        // Commands that raced in go to a fresh load (for a deleted topic, a
        // new topic if auto-creation allows, as in Pulsar).
        while let Ok(cmd) = rx.try_recv() {
            self.broker.forward(&self.name, cmd).await;
        }
        result
    }

    /// Deletes the topic's data, then its record.
    async fn delete_everything(&mut self, log: Option<ManagedLog>) -> Result<(), BrokerError> {
        if let Some(log) = log {
            let id = log.id();
            log.delete().await?;
            self.dedup = None;
            self.broker.state_store().remove(&dedup::snapshot_key(id))?;
        }
        match self.broker.resources().delete_topic(&self.name).await {
            Ok(()) | Err(kilonova_metadata::MetadataError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        m.producers
            .store(self.producers.len() as u64, Ordering::Relaxed);
        m.consumers
            .store(self.consumer_subs.len() as u64, Ordering::Relaxed);
        // Every subscription of a persistent topic has a cursor (readers' too).
        let subs = match &self.log {
            Some(log) => log.cursor_count(),
            None => self.subscriptions.len(),
        };
        m.subscriptions.store(subs as u64, Ordering::Relaxed);
    }

    fn update_backlog_and_rates(&mut self) {
        if let Some(log) = &self.log {
            let backlog: u64 = log
                .cursor_names()
                .iter()
                .filter_map(|n| log.cursor_info(n).ok())
                .map(|i| i.backlog_entries)
                .sum();
            self.metrics.backlog.store(backlog, Ordering::Relaxed);
            self.metrics
                .storage_bytes
                .store(log.size_bytes(), Ordering::Relaxed);
        }
        let now = Instant::now();
        let totals = self.metrics.totals();
        let (since, before) = self.rates_since;
        let secs = now.duration_since(since).as_secs_f64();
        if secs > 0.0 {
            let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            self.metrics.set_rates(Rates {
                msg_in: per_sec(totals.0, before.0),
                bytes_in: per_sec(totals.1, before.1),
                msg_out: per_sec(totals.2, before.2),
                bytes_out: per_sec(totals.3, before.3),
            });
        }
        self.rates_since = (now, totals);
    }

    // ---- producers ----

    fn add_producer(&mut self, p: NewProducer) {
        let key = (p.conn.id, p.producer_id);
        if self.producers.contains_key(&key) {
            // A client retrying a create it already got: answer again.
            let name = self.producers.get(&key).map(|x| x.name.clone());
            self.producer_ready(&p, name.unwrap_or_default());
            return;
        }
        if self.fenced {
            let e = BrokerError::TopicFenced(format!(
                "topic {} is fenced after a failed write; retry",
                self.full_name
            ));
            p.conn.out.command(commands::broker_error(p.request_id, &e));
            return;
        }
        if let Err(e) = self.admit_producer() {
            tracing::debug!(topic = %self.full_name, error = %e, "producer refused");
            p.conn.out.command(commands::broker_error(p.request_id, &e));
            return;
        }
        let name = p
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.broker.new_producer_name());
        if self.producers.values().any(|x| x.name == name) {
            let e = BrokerError::ProducerBusy(format!(
                "producer with name '{name}' is already connected to topic {}",
                self.full_name
            ));
            p.conn.out.command(commands::broker_error(p.request_id, &e));
            return;
        }
        let exclusive_held = self.producers.values().any(|x| x.exclusive);
        match p.access_mode {
            ProducerAccessMode::Shared if exclusive_held => {
                let e = BrokerError::ProducerBusy(format!(
                    "topic {} has an exclusive producer",
                    self.full_name
                ));
                p.conn.out.command(commands::broker_error(p.request_id, &e));
                return;
            }
            ProducerAccessMode::Exclusive if !self.producers.is_empty() => {
                let e = BrokerError::ProducerBusy(format!(
                    "topic {} already has producers",
                    self.full_name
                ));
                p.conn.out.command(commands::broker_error(p.request_id, &e));
                return;
            }
            ProducerAccessMode::WaitForExclusive if !self.producers.is_empty() => {
                // Tell the client it is queued, answer for real when the topic frees up.
                p.conn
                    .out
                    .command(self.producer_success(&p, name.clone(), false, None));
                let mut p = p;
                p.name = Some(name);
                self.waiting_exclusive.push_back(p);
                return;
            }
            ProducerAccessMode::ExclusiveWithFencing => {
                for ((_, id), old) in self.producers.drain() {
                    old.out.command(commands::close_producer(id));
                }
            }
            _ => {}
        }
        self.producer_ready(&p, name);
    }

    /// Registers the producer and answers PRODUCER_SUCCESS (or the schema's error).
    fn producer_ready(&mut self, p: &NewProducer, name: String) {
        let version = p.schema_version;
        let exclusive = p.access_mode != ProducerAccessMode::Shared;
        if exclusive {
            self.topic_epoch += 1;
        }
        self.producers.insert(
            (p.conn.id, p.producer_id),
            Producer {
                name: name.clone(),
                out: p.conn.out.clone(),
                exclusive,
                msg_in: 0,
                bytes_in: 0,
            },
        );
        self.idle_since = None;
        p.conn
            .out
            .command(self.producer_success(p, name, true, version));
    }

    fn producer_success(
        &self,
        p: &NewProducer,
        name: String,
        ready: bool,
        schema_version: Option<u64>,
    ) -> BaseCommand {
        // With deduplication, a producer that comes back under its name goes
        // on from the last sequence id stored (clients number from it).
        let last_sequence_id = self
            .dedup
            .as_ref()
            .and_then(|d| d.last_persisted(&name))
            .and_then(|(seq, _)| i64::try_from(seq).ok())
            .unwrap_or(-1);
        commands::with_type(Type::ProducerSuccess, |b| {
            b.producer_success = Some(Box::new(CommandProducerSuccess {
                request_id: p.request_id,
                producer_name: name,
                last_sequence_id: Some(last_sequence_id),
                schema_version: schema_version.map(schema_version_bytes),
                topic_epoch: Some(self.topic_epoch),
                producer_ready: Some(ready),
            }));
        })
    }

    fn remove_producer(&mut self, conn: u64, producer_id: u64) {
        self.producers.remove(&(conn, producer_id));
        if let Some(i) = self
            .waiting_exclusive
            .iter()
            .position(|p| p.conn.id == conn && p.producer_id == producer_id)
        {
            self.waiting_exclusive.remove(i);
        }
        if self.producers.is_empty() {
            if let Some(next) = self.waiting_exclusive.pop_front() {
                let name = next.name.clone().unwrap_or_default();
                self.producer_ready(&next, name);
            }
        }
    }

    async fn publish(
        &mut self,
        conn: u64,
        producer_id: u64,
        sequence_id: u64,
        highest_sequence_id: u64,
        payload: Payload,
    ) {
        let Some(out) = self
            .producers
            .get(&(conn, producer_id))
            .map(|p| p.out.clone())
        else {
            tracing::debug!(topic = %self.full_name, producer_id, "send from an unknown producer");
            return;
        };
        if !payload.checksum_ok {
            out.command(commands::send_error(
                producer_id,
                sequence_id,
                ServerError::ChecksumError,
                "checksum failed on the broker",
            ));
            return;
        }
        let to = AnswerTo {
            out: out.clone(),
            producer_id,
            sequence_id,
            highest_sequence_id,
        };
        // A topic's own limit; chunks are parts of a larger message that the
        // client cut to the broker's limit, as in Pulsar they are not checked.
        let too_big = self
            .policies
            .max_message_bytes
            .filter(|max| payload.raw.len() > *max && payload.metadata.chunk_id.is_none());
        if let Some(max) = too_big {
            let why = format!(
                "Exceed maximum message size: {} bytes, the topic's limit is {max}",
                payload.raw.len()
            );
            let pending = Pending::Refused(ServerError::NotAllowedError, why);
            self.appends.push_back(PendingAppend {
                pending,
                to,
                producer: None,
            });
            return;
        }
        let count = match payload.checked_message_count(self.broker.max_uncompressed_batch_bytes())
        {
            Ok(n) => n,
            Err(e) => {
                let pending = Pending::Refused(ServerError::NotAllowedError, e.to_string());
                self.appends.push_back(PendingAppend {
                    pending,
                    to,
                    producer: None,
                });
                return;
            }
        };
        let bytes = payload.raw.len() as u64;
        self.metrics.add_in(u64::from(count), bytes);
        if let Some(p) = self.producers.get_mut(&(conn, producer_id)) {
            p.msg_in += u64::from(count);
            p.bytes_in += bytes;
        }
        let publish_time = match payload.metadata.publish_time {
            0 => now_ms(),
            t => t,
        };
        let producer = match self.dedup.as_mut() {
            Some(d) => {
                let name = self
                    .producers
                    .get(&(conn, producer_id))
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                if d.check(&name, sequence_id, highest_sequence_id) == dedup::Verdict::Duplicate {
                    self.broker.metrics().count_duplicates(u64::from(count));
                    // Answered after the appends before it (the original among them).
                    self.appends.push_back(PendingAppend {
                        pending: Pending::Duplicate,
                        to,
                        producer: Some(name),
                    });
                    return;
                }
                // Chunks before the last carry the message's sequence id too:
                // only the last one makes the message count as sent.
                dedup::completes_message(&payload.metadata).then(|| {
                    d.pushed(&name, highest_sequence_id);
                    name
                })
            }
            None => None,
        };
        match self.log.as_mut() {
            Some(log) => match log.append(payload.raw, count, publish_time).await {
                Ok(completion) => self.appends.push_back(PendingAppend {
                    pending: Pending::Stored(completion),
                    to,
                    producer,
                }),
                Err(e) => {
                    // Answered in order; everything after it too, by the fence.
                    tracing::warn!(topic = %self.full_name, error = %e, "append failed");
                    let pending = Pending::Refused(ServerError::PersistenceError, e.to_string());
                    self.appends.push_back(PendingAppend {
                        pending,
                        to,
                        producer: None,
                    });
                    self.fence();
                }
            },
            None => {
                // Non-persistent: deliver now to consumers with permits, drop otherwise.
                let position = Position::new(0, self.next_transient_entry);
                self.next_transient_entry += 1;
                let entry = Entry {
                    position,
                    publish_time_ms: publish_time,
                    message_index: 0,
                    message_count: count,
                    data: payload.raw,
                };
                for sub in self.subscriptions.values_mut() {
                    sub.deliver_or_drop(&entry);
                }
                out.command(commands::send_receipt(
                    producer_id,
                    sequence_id,
                    highest_sequence_id,
                    commands::message_id(position, None),
                ));
            }
        }
    }

    // ---- consumers ----

    fn sub_of_mut(&mut self, key: ConsumerKey) -> Option<&mut Subscription> {
        let name = self.consumer_subs.get(&key)?;
        self.subscriptions.get_mut(name)
    }

    fn consumer_out(&self, key: ConsumerKey) -> Option<Outbound> {
        let name = self.consumer_subs.get(&key)?;
        let sub = self.subscriptions.get(name)?;
        sub.consumers
            .iter()
            .find(|c| c.key == key)
            .map(|c| c.out.clone())
    }

    fn subscribe(&mut self, conn: ConnCtx, cmd: CommandSubscribe) {
        let request_id = cmd.request_id;
        let out = conn.out.clone();
        match self.try_subscribe(conn, &cmd) {
            Ok(key) => {
                out.command(commands::success(request_id));
                if let Some(sub) = self.subscriptions.get(&cmd.subscription) {
                    sub.announce_active();
                }
                self.dispatch_of(key);
            }
            Err(e) => out.command(commands::broker_error(request_id, &e)),
        }
    }

    fn try_subscribe(
        &mut self,
        conn: ConnCtx,
        cmd: &CommandSubscribe,
    ) -> Result<ConsumerKey, BrokerError> {
        let key = ConsumerKey {
            conn: conn.id,
            id: cmd.consumer_id,
        };
        let kind = match cmd.sub_type() {
            SubType::Exclusive => SubKind::Exclusive,
            SubType::Shared => SubKind::Shared,
            SubType::Failover => SubKind::Failover,
            SubType::KeyShared => SubKind::KeyShared,
        };
        if cmd.subscription.is_empty() {
            return Err(BrokerError::BadRequest("empty subscription name".into()));
        }
        if let Some(existing) = self.consumer_subs.get(&key) {
            // Pulsar answers a repeated SUBSCRIBE for a live consumer with success:
            // clients re-send it when a reconnect and a seek race.
            if *existing == cmd.subscription {
                return Ok(key);
            }
            return Err(BrokerError::ConsumerBusy(format!(
                "consumer id {} is already subscribed to '{existing}' on this connection",
                cmd.consumer_id
            )));
        }
        self.admit_consumer(&cmd.subscription)?;
        let durable = cmd.durable.unwrap_or(true) && self.log.is_some();
        tracing::debug!(topic = %self.full_name, subscription = %cmd.subscription, durable, start = ?cmd.start_message_id, "subscribe");
        if !self.subscriptions.contains_key(&cmd.subscription) {
            if let Some(log) = self.log.as_mut() {
                let initial = match cmd.start_message_id.as_ref().filter(|_| !durable) {
                    // A reader starts at the given entry; the client skips it unless
                    // it asked for an inclusive start (and skips, within a batch, the
                    // messages before the batch index), as Pulsar clients do.
                    Some(id) => special_position(id).unwrap_or(InitialPosition::At(Position::new(
                        id.ledger_id,
                        id.entry_id,
                    ))),
                    None => match cmd.initial_position() {
                        WireInitial::Earliest => InitialPosition::Earliest,
                        WireInitial::Latest => InitialPosition::Latest,
                    },
                };
                if !durable && log.has_cursor(&cmd.subscription) {
                    return Err(BrokerError::ConsumerBusy(format!(
                        "subscription {} exists as a durable subscription",
                        cmd.subscription
                    )));
                }
                log.open_cursor(&cmd.subscription, initial, durable)?;
            }
            let mut sub = Subscription::new(
                cmd.subscription.clone(),
                kind,
                durable,
                self.name.partition(),
                self.metrics.clone(),
            );
            sub.rate =
                policy::dispatch_limiter(self.policies.subscription_dispatch_rate, Instant::now());
            self.subscriptions.insert(cmd.subscription.clone(), sub);
        }
        let read_position = self
            .log
            .as_ref()
            .and_then(|l| l.cursor_info(&cmd.subscription).ok())
            .map(|i| i.read_position);
        let sticky_ranges = cmd
            .key_shared_meta
            .as_ref()
            .filter(|m| m.key_shared_mode() == KeySharedMode::Sticky)
            .map(|m| {
                m.hash_ranges
                    .iter()
                    .map(|r| (r.start.max(0) as u32, r.end.max(0) as u32))
                    .collect()
            })
            .unwrap_or_default();
        let consumer = Consumer {
            key,
            name: cmd.consumer_name.clone().unwrap_or_default(),
            priority: cmd.priority_level.unwrap_or(0),
            permits: 0,
            out: conn.out,
            epoch: cmd.consumer_epoch,
            wants_entry_metadata: conn.wants_entry_metadata,
            joined_at: None,
            sticky_ranges,
            msg_out: 0,
            bytes_out: 0,
            held: false,
        };
        let sub = self
            .subscriptions
            .get_mut(&cmd.subscription)
            .ok_or_else(|| BrokerError::SubscriptionNotFound(cmd.subscription.clone()))?;
        let result = sub.add_consumer(kind, consumer, read_position);
        if result.is_err() && sub.consumers.is_empty() && !sub.durable {
            self.drop_transient_cursors_of(Some(&cmd.subscription));
        }
        result?;
        self.consumer_subs.insert(key, cmd.subscription.clone());
        self.idle_since = None;
        Ok(key)
    }

    fn remove_consumer(&mut self, key: ConsumerKey) {
        let Some(name) = self.consumer_subs.remove(&key) else {
            return;
        };
        let Some(sub) = self.subscriptions.get_mut(&name) else {
            return;
        };
        sub.remove_consumer(key);
        if sub.consumers.is_empty() {
            if sub.durable {
                return;
            }
            if self.log.is_some() {
                self.drop_transient_cursors_of(Some(&name));
            } else {
                self.subscriptions.remove(&name);
            }
            return;
        }
        self.dispatch_sub(&name);
    }

    fn ack(&mut self, key: ConsumerKey, ack: CommandAck) {
        let result = self.try_ack(key, &ack);
        if let Err(e) = &result {
            tracing::debug!(topic = %self.full_name, error = %e, "ack refused");
        }
        if let Some(request_id) = ack.request_id {
            if let Some(out) = self.consumer_out(key) {
                let (error, message) = match &result {
                    Ok(()) => (None, None),
                    Err(e) => (Some(e.server_error() as i32), Some(e.to_string())),
                };
                out.command(commands::with_type(Type::AckResponse, |b| {
                    b.ack_response = Some(Box::new(CommandAckResponse {
                        consumer_id: key.id,
                        request_id: Some(request_id),
                        error,
                        message,
                        ..Default::default()
                    }));
                }));
            }
        }
        self.dispatch_of(key);
    }

    fn try_ack(&mut self, key: ConsumerKey, ack: &CommandAck) -> Result<(), BrokerError> {
        let name = self
            .consumer_subs
            .get(&key)
            .cloned()
            .ok_or_else(|| BrokerError::NotAllowed("consumer is not subscribed".into()))?;
        let (Some(sub), Some(log)) = (self.subscriptions.get_mut(&name), self.log.as_mut()) else {
            return Ok(()); // non-persistent: nothing to acknowledge
        };
        let cumulative = ack.ack_type() == AckType::Cumulative;
        if cumulative && matches!(sub.kind, SubKind::Shared | SubKind::KeyShared) {
            return Err(BrokerError::NotAllowed(
                "cumulative acknowledgement is not allowed on shared and key_shared subscriptions"
                    .into(),
            ));
        }
        for id in &ack.message_id {
            let p = Position::new(id.ledger_id, id.entry_id);
            let partial = id.ack_set.iter().any(|w| *w != 0);
            if cumulative {
                if partial {
                    // Up to the batch before, and this batch's acknowledged messages.
                    if let Some(prev) = p.entry.checked_sub(1) {
                        sub.ack_cumulative(log, Position::new(p.segment, prev))?;
                    }
                    sub.ack(log, p, &id.ack_set)?;
                } else {
                    sub.ack_cumulative(log, p)?;
                }
            } else {
                sub.ack(log, p, &id.ack_set)?;
            }
        }
        Ok(())
    }

    fn seek(
        &mut self,
        key: ConsumerKey,
        request_id: u64,
        message_id: Option<MessageIdData>,
        publish_time_ms: Option<u64>,
    ) {
        let Some(out) = self.consumer_out(key) else {
            return;
        };
        let Some(name) = self.consumer_subs.get(&key).cloned() else {
            return;
        };
        let result = (|| -> Result<(), BrokerError> {
            let log = self.log.as_mut().ok_or_else(|| {
                BrokerError::NotAllowed("seek is not supported on non-persistent topics".into())
            })?;
            let target = match (message_id, publish_time_ms) {
                (Some(id), _) => match special_position(&id) {
                    Some(InitialPosition::Earliest) => log.first_position(),
                    Some(_) => log.end_position(),
                    None => Position::new(id.ledger_id, id.entry_id),
                },
                (None, Some(t)) => log.position_of_publish_time(t)?,
                (None, None) => {
                    return Err(BrokerError::BadRequest(
                        "seek needs a message id or a publish time".into(),
                    ))
                }
            };
            log.reset_cursor(&name, target)?;
            Ok(())
        })();
        match result {
            Err(e) => out.command(commands::broker_error(request_id, &e)),
            Ok(()) => {
                out.command(commands::success(request_id));
                // As Pulsar does: consumers reconnect and read from the new position.
                self.after_cursor_moved(&name, true);
            }
        }
    }

    fn last_message_id(&mut self, key: ConsumerKey, request_id: u64) {
        let Some(out) = self.consumer_out(key) else {
            return;
        };
        let name = self.consumer_subs.get(&key).cloned().unwrap_or_default();
        let (last, mark_delete) = match self.log.as_ref() {
            Some(log) => {
                let last = match log.last_position() {
                    Some(p) => {
                        let batch_index = log
                            .read_entry(p)
                            .ok()
                            .and_then(|e| frame::decode_payload(e.data).ok())
                            .and_then(|pl| {
                                pl.metadata.num_messages_in_batch.map(|n| (n - 1).max(0))
                            });
                        commands::message_id(p, batch_index)
                    }
                    None => MessageIdData {
                        ledger_id: log.end_position().segment,
                        entry_id: u64::MAX, // -1: no entry yet
                        ..Default::default()
                    },
                };
                let md = log
                    .cursor_info(&name)
                    .ok()
                    .and_then(|i| i.mark_delete)
                    .map(|p| commands::message_id(p, None));
                (last, md)
            }
            None => (
                MessageIdData {
                    ledger_id: 0,
                    entry_id: self.next_transient_entry.wrapping_sub(1),
                    ..Default::default()
                },
                None,
            ),
        };
        out.command(commands::with_type(Type::GetLastMessageIdResponse, |b| {
            b.get_last_message_id_response = Some(Box::new(CommandGetLastMessageIdResponse {
                last_message_id: last,
                request_id,
                consumer_mark_delete_position: mark_delete,
            }));
        }));
    }

    fn unsubscribe(&mut self, key: ConsumerKey, request_id: u64) {
        let Some(out) = self.consumer_out(key) else {
            return;
        };
        let Some(name) = self.consumer_subs.get(&key).cloned() else {
            return;
        };
        let others = self
            .subscriptions
            .get(&name)
            .is_some_and(|s| s.consumers.iter().any(|c| c.key != key));
        if others {
            let e = BrokerError::NotAllowed(format!(
                "subscription {name} has other consumers: cannot unsubscribe"
            ));
            out.command(commands::broker_error(request_id, &e));
            return;
        }
        self.consumer_subs.remove(&key);
        self.subscriptions.remove(&name);
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.delete_cursor(&name) {
                out.command(commands::broker_error(request_id, &BrokerError::from(e)));
                return;
            }
        }
        out.command(commands::success(request_id));
    }

    // ---- dispatch ----

    fn limits(&self) -> DispatchLimits {
        let c = self.broker.config();
        DispatchLimits {
            batch_entries: c.dispatch_batch_entries,
            max_redelivery_backlog: c.max_redelivery_backlog_entries,
            delayed_delivery: self.policies.delayed_delivery,
            max_delayed: c.max_delayed_messages_per_subscription,
            now_ms: now_ms(),
            drained: self.drained.clone(),
        }
    }

    fn dispatch_of(&mut self, key: ConsumerKey) {
        if let Some(name) = self.consumer_subs.get(&key).cloned() {
            self.dispatch_sub(&name);
        }
    }

    fn dispatch_sub(&mut self, name: &str) {
        if !self.to_dispatch.contains(name) {
            self.to_dispatch.insert(name.to_owned());
        }
    }

    fn flush_dispatch(&mut self) {
        if self.to_dispatch.is_empty() {
            return;
        }
        let limits = self.limits();
        let Some(log) = self.log.as_mut() else {
            self.to_dispatch.clear();
            return;
        };
        let now = Instant::now();
        for name in self.to_dispatch.drain() {
            if let Some(sub) = self.subscriptions.get_mut(&name) {
                let rate = &mut self.dispatch_rate;
                dispatch_within_rates(
                    &self.full_name,
                    sub,
                    log,
                    &limits,
                    rate,
                    &mut self.dispatch_wake,
                    now,
                );
            }
        }
    }

    fn dispatch_all(&mut self) {
        self.to_dispatch.clear();
        let limits = self.limits();
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let now = Instant::now();
        let (topic, rate, wake) = (
            &self.full_name,
            &mut self.dispatch_rate,
            &mut self.dispatch_wake,
        );
        if rate.is_unlimited() || self.subscriptions.len() < 2 {
            for sub in self.subscriptions.values_mut() {
                dispatch_within_rates(topic, sub, log, &limits, rate, wake, now);
            }
            return;
        }
        // The topic's rate is shared: each pass starts with the next
        // subscription, so that none takes every token.
        let mut names: Vec<String> = self.subscriptions.keys().cloned().collect();
        names.sort_unstable();
        self.dispatch_round = self.dispatch_round.wrapping_add(1);
        let first = self.dispatch_round % names.len();
        names.rotate_left(first);
        for name in names {
            if let Some(sub) = self.subscriptions.get_mut(&name) {
                dispatch_within_rates(topic, sub, log, &limits, rate, wake, now);
            }
        }
    }
}

/// Dispatches one subscription within the dispatch rates, and keeps in `wake`
/// when the topic must dispatch again (a rate held it back, or a delayed
/// message comes due).
fn dispatch_within_rates(
    topic: &str,
    sub: &mut Subscription,
    log: &mut ManagedLog,
    limits: &DispatchLimits,
    topic_rate: &mut RateLimiter,
    wake: &mut Option<Instant>,
    now: Instant,
) {
    match policy::rated_dispatch(sub, log, limits, topic_rate, now) {
        Ok(wait) => {
            wake_after(wake, now, wait);
            wake_after(wake, now, delayed_wait(sub, limits.now_ms));
        }
        Err(e) => {
            tracing::warn!(topic, subscription = %sub.name, error = %e, "dispatch failed")
        }
    }
}

/// How long until the subscription's next delayed entry is due.
fn delayed_wait(sub: &Subscription, now_ms: u64) -> Option<Duration> {
    sub.next_delayed_ms()
        .map(|t| Duration::from_millis(t.saturating_sub(now_ms).max(1)))
}

/// Keeps the earliest of the dispatch wake-ups asked for.
fn wake_after(wake: &mut Option<Instant>, now: Instant, wait: Option<Duration>) {
    if let Some(w) = wait {
        let at = now + w;
        if wake.is_none_or(|t| at < t) {
            *wake = Some(at);
        }
    }
}

/// Sleeps until `at` (forever if `None`; select arms guard on it being set).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Answers a command that reached a topic that could not load (or went away).
pub(crate) fn refuse(cmd: TopicCommand, e: &BrokerError) {
    match cmd {
        TopicCommand::Admin { reply, .. } => {
            let _ = reply.send(Err(BrokerError::Metadata(format!(
                "the topic is not available: {e}"
            ))));
        }
        TopicCommand::AddProducer(p) => p.conn.out.command(commands::broker_error(p.request_id, e)),
        TopicCommand::Subscribe { conn, command } => conn
            .out
            .command(commands::broker_error(command.request_id, e)),
        TopicCommand::Shutdown { done } => {
            // Refused before it loaded: nothing of it to persist.
            let _ = done.send(true);
        }
        _ => {}
    }
}
