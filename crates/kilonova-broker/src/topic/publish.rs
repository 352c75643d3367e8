//! Publishing on a topic: producers (access modes, names, admission), SEND →
//! append → receipt in the order sent, fencing after a failed append, and
//! deduplication's wiring (its state is [`crate::dedup`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use kilonova_objstore::wal::WalAppend;
use kilonova_pulsar_protocol::frame::SendReceipt;
use kilonova_pulsar_protocol::markers::Marker;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, BaseCommand, CommandProducerSuccess, ProducerAccessMode, ServerError,
};
use kilonova_storage::{Completion, Entry, Position, StorageError};

use super::direct_receipts::{self, Barrier};
use super::publish_lane::ProducerLane;
use super::{access, NewProducer, SendPayload, Topic};
use crate::clock::SharedClock;
use crate::commands;
use crate::dedup;
use crate::error::BrokerError;
use crate::metrics::TopicMetrics;
use crate::outbound::{Outbound, UNKNOWN_INDEX};
use crate::publish_stages::{PublishStages, Stage};

pub(super) struct Producer {
    pub(super) name: String,
    /// Another cluster's replicator (its name says so).
    pub(super) replicator: bool,
    pub(super) out: Outbound,
    pub(super) exclusive: bool,
    /// Messages and bytes published through the topic's task (the lane
    /// counts its own: [`Producer::published`]).
    pub(super) msg_in: u64,
    pub(super) bytes_in: u64,
    /// Shared with its connection (none: the Kafka edge's).
    pub(super) lane: Option<Arc<ProducerLane>>,
    pub(super) client: super::ClientInfo,
    /// Messages and bytes per second published.
    pub(super) meter_in: crate::rate_meter::FlowMeter,
}

impl Producer {
    /// The producer is no longer the topic's: its SENDs keep off the lane.
    fn leave(&self) {
        if let Some(lane) = &self.lane {
            lane.admit(false);
        }
    }

    /// Messages and bytes published, both ways.
    pub(super) fn published(&self) -> (u64, u64) {
        let (m, b) = self.lane.as_ref().map_or((0, 0), |l| l.published());
        (self.msg_in + m, self.bytes_in + b)
    }
}

/// What a SEND became.
enum Pending {
    /// Appended: durable when the completion resolves (and, with shared
    /// storage, once `shared` resolves too); a marker from another
    /// cluster's replicator is acted on then.
    Stored {
        local: Completion<Position>,
        shared: Shared,
        marker: Option<Box<Marker>>,
    },
    /// Already stored (deduplication): answered with the original's id.
    Duplicate,
    /// Refused before it was stored.
    Refused(ServerError, String),
}

/// An append's part in shared storage (a cluster's object store).
enum Shared {
    /// None, or done.
    Done,
    Queued(WalAppend),
    /// Not stored or not committed there, and why.
    Failed(String),
}

/// Where a SEND's answer goes.
#[derive(Clone)]
pub(crate) struct AnswerTo {
    pub(crate) out: Outbound,
    pub(crate) producer_id: u64,
    pub(crate) sequence_id: u64,
    pub(crate) highest_sequence_id: u64,
    /// The SEND was routed to the topic's task: its answer lets the
    /// producer's next SENDs take the lane again.
    pub(crate) routed: Option<Arc<ProducerLane>>,
}

impl AnswerTo {
    /// Answers the SEND as stored at `at`, its first message index
    /// `message_index`; `now` begins the receipt's stage.
    fn receipt(&self, at: Position, message_index: u64, now: std::time::Instant) {
        self.answered();
        self.out.receipt(self.send_receipt(at), message_index, now);
    }

    /// [`Self::receipt`] from one of the journal's calls (the journal's
    /// thread may write it to the socket itself).
    fn receipt_from_journal(&self, at: Position, message_index: u64, now: std::time::Instant) {
        self.answered();
        self.out
            .receipt_from_journal(self.send_receipt(at), message_index, now);
    }

    fn send_receipt(&self, at: Position) -> SendReceipt {
        SendReceipt {
            producer_id: self.producer_id,
            sequence_id: self.sequence_id,
            highest_sequence_id: self.highest_sequence_id,
            ledger_id: at.segment,
            entry_id: at.entry,
        }
    }

    /// Answers the SEND with an error.
    pub(crate) fn error(&self, code: ServerError, why: impl Into<String>) {
        self.answered();
        self.out.command(commands::send_error(
            self.producer_id,
            self.sequence_id,
            code,
            why,
        ));
    }

    /// The answer is queued (next in the producer's order).
    fn answered(&self) {
        if let Some(lane) = &self.routed {
            lane.answered();
        }
    }
}

/// What the journal's calls that answer appends off the task share (one
/// per topic).
pub(crate) struct DurableCall {
    pub(super) direct: Arc<direct_receipts::Shared>,
    pub(super) metrics: Arc<TopicMetrics>,
    pub(super) stages: Arc<PublishStages>,
    pub(super) clock: SharedClock,
    pub(super) failures: Arc<std::sync::atomic::AtomicU64>,
}

/// The call that answers an append off the task once the journal made it
/// durable (or failed it): the receipt of an entry whose first message
/// index is `message_index`, asked for at `appended_at`, or an error.
pub(super) fn durable_call(
    calls: Arc<DurableCall>,
    answer: AnswerTo,
    message_index: u64,
    appended_at: std::time::Instant,
) -> impl FnOnce(Result<(Position, std::time::Instant), StorageError>) + Send + Sync + 'static {
    move |r| {
        let failed = match r {
            Ok(_) if calls.direct.after_failure() => {
                answer.error(ServerError::PersistenceError, FENCED);
                false
            }
            Ok((p, durable_at)) => {
                let now = calls.clock.now();
                calls
                    .metrics
                    .observe_write_latency(now.saturating_duration_since(appended_at));
                calls
                    .stages
                    .observe(Stage::Answered, now.saturating_duration_since(durable_at));
                if calls.direct.watched() {
                    // The task, woken by this call, sends what it dispatches
                    // through the connection's writer: the receipt goes with
                    // it, in the same vectored write where they share a
                    // connection.
                    answer.receipt(p, message_index, now);
                } else {
                    answer.receipt_from_journal(p, message_index, now);
                }
                false
            }
            Err(e) => {
                // The task, woken, logs the fence with the topic's name.
                tracing::warn!(error = %e, "append failed");
                calls
                    .failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                answer.error(ServerError::PersistenceError, e.to_string());
                true
            }
        };
        calls.direct.done(failed);
    }
}

/// What a SEND's answer is waiting for: the append's durability, or (for a
/// duplicate or a refusal) only the answers to the SENDs before it, so that
/// a producer's answers go out in the order it sent.
pub(super) struct PendingAppend {
    pending: Pending,
    to: AnswerTo,
    /// The producer's name, with deduplication on and a SEND that completes
    /// its message (not a chunk before the last).
    producer: Option<String>,
    /// When the append was asked for (the broker's clock).
    started: std::time::Instant,
    /// The entry's first message index (stored SENDs).
    message_index: u64,
    /// Appends answered off the task that were queued before it: answered
    /// first.
    after: Option<Barrier>,
}

enum Outcome {
    Stored(Result<Position, StorageError>, Option<Box<Marker>>),
    /// Stored locally, but not in shared storage.
    SharedFailed(String),
    Duplicate,
    Refused(ServerError, String),
}

/// A resolved [`PendingAppend`].
pub(super) struct Appended {
    outcome: Outcome,
    /// When the journal made it durable (a stored SEND).
    durable_at: Option<std::time::Instant>,
    to: AnswerTo,
    producer: Option<String>,
    started: std::time::Instant,
    message_index: u64,
}

impl Future for PendingAppend {
    type Output = Appended;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(b) = &this.after {
            std::task::ready!(b.poll_passed(cx));
            this.after = None;
        }
        let outcome = match &mut this.pending {
            Pending::Stored {
                local,
                shared,
                marker,
            } => {
                if let Shared::Queued(w) = shared {
                    match Pin::new(w).poll(cx) {
                        Poll::Ready(Ok(_)) => *shared = Shared::Done,
                        Poll::Ready(Err(e)) => *shared = Shared::Failed(e.to_string()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                match Pin::new(local).poll(cx) {
                    Poll::Ready(r) => match std::mem::replace(shared, Shared::Done) {
                        Shared::Failed(why) => Outcome::SharedFailed(why),
                        _ => Outcome::Stored(r, marker.take()),
                    },
                    Poll::Pending => return Poll::Pending,
                }
            }
            Pending::Duplicate => Outcome::Duplicate,
            Pending::Refused(code, why) => Outcome::Refused(*code, std::mem::take(why)),
        };
        let durable_at = match &this.pending {
            Pending::Stored { local, .. } => local.durable_at(),
            _ => None,
        };
        Poll::Ready(Appended {
            outcome,
            durable_at,
            to: this.to.clone(),
            producer: this.producer.take(),
            started: this.started,
            message_index: this.message_index,
        })
    }
}

impl Topic {
    pub(super) fn complete_append(&mut self, a: Appended) {
        if self.direct.failed() {
            // An append answered off the task before this one failed.
            self.fence();
        }
        if let Outcome::SharedFailed(why) = &a.outcome {
            let why = why.clone();
            self.shared_append_failed(&why);
        }
        if self.fenced {
            // Stored or not, its producer resends it (deduplication forgot it).
            let why = match &a.outcome {
                Outcome::Refused(_, why) => why.clone(),
                _ => FENCED.to_string(),
            };
            a.to.error(ServerError::PersistenceError, why);
            return;
        }
        let (result, marker) = match a.outcome {
            Outcome::Stored(r, marker) => (r, marker),
            Outcome::Duplicate => return self.answer_duplicate(&a),
            Outcome::SharedFailed(ref why) => {
                return a.to.error(ServerError::PersistenceError, why.clone())
            }
            Outcome::Refused(code, ref why) => return a.to.error(code, why.clone()),
        };
        match result {
            // Stored, but this broker may no longer own the topic (its
            // session lapsed: paused or cut off): a deposed owner
            // acknowledges nothing. The client resends to the new owner.
            Ok(_) if self.broker.ownership_lapsed() => a.to.error(
                ServerError::ServiceNotReady,
                "this broker may have lost the topic's bundle (its metadata session lapsed): look the topic up again",
            ),
            Ok(p) => {
                let now = self.broker.clock().now();
                self.metrics
                    .observe_write_latency(now.saturating_duration_since(a.started));
                if let Some(m) = marker {
                    self.repl_subs.received(p, *m);
                }
                if let (Some(d), Some(name)) = (self.dedup.as_mut(), a.producer.as_deref()) {
                    d.persisted(name, a.to.highest_sequence_id, p);
                    if d.unsnapshotted()
                        >= self.broker.config().deduplication_snapshot_interval_entries
                    {
                        self.snapshot_dedup();
                    }
                }
                // The journal stamps with the system clock, as the broker's
                // clock reads outside tests.
                if let Some(durable_at) = a.durable_at {
                    self.broker
                        .metrics()
                        .publish_stages()
                        .observe(Stage::Answered, now.saturating_duration_since(durable_at));
                }
                a.to.receipt(p, a.message_index, now)
            }
            Err(e) => {
                tracing::warn!(topic = %self.full_name, error = %e, "append failed");
                self.broker.metrics().count_append_failure();
                // Before the answer lets the producer's next SEND take the lane.
                self.stop_lane();
                a.to.error(ServerError::PersistenceError, e.to_string());
                if self.shared.is_some() {
                    // Its shared copy may hold the entry the local log
                    // lost: the topic reloads from the shared copy.
                    self.shared_append_failed(&e.to_string());
                }
                self.fence();
            }
        }
    }

    /// Closes every producer with CLOSE_PRODUCER (clients reconnect).
    pub(super) fn close_producers(&mut self) {
        let handover = self.handover.as_ref();
        for ((_, id), p) in self.producers.drain() {
            p.leave();
            let to = handover.and_then(|n| n.urls_for(&p.client.listener));
            p.out.command(commands::close_producer(id, to.as_ref()));
        }
    }

    /// Fences the topic after a failed append: producers are closed (clients
    /// reconnect and resend what was not acknowledged), new producers are
    /// refused as not ready, and what is still in flight is answered with
    /// errors; [`Self::unfence_when_drained`] lifts it.
    pub(super) fn fence(&mut self) {
        if self.fenced {
            return;
        }
        self.fenced = true;
        self.stop_lane();
        self.broker.metrics().count_topic_fenced();
        tracing::warn!(topic = %self.full_name, in_flight = self.appends.len(), "fenced after a failed append");
        self.close_producers();
    }

    /// Lifts the fence once no append is in flight.
    pub(super) fn unfence_when_drained(&mut self) {
        // A topic whose shared copy failed stays fenced until it unloads.
        let drained = self.appends.is_empty() && !self.direct.in_flight();
        if self.fenced && drained && !self.shared_failed {
            self.fenced = false;
            self.direct.clear_failure();
            if let Some(d) = self.dedup.as_mut() {
                d.reset_pushed();
            }
            tracing::info!(topic = %self.full_name, "fence lifted");
        }
    }

    pub(super) fn add_producer(&mut self, p: NewProducer) {
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
        if self.is_terminated() {
            let e = self.terminated_error();
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
        let same_name = self
            .producers
            .iter()
            .find(|(_, x)| x.name == name)
            .map(|(key, _)| *key);
        if let Some(key) = same_name.filter(|_| name.starts_with(dedup::KAFKA_IDEMPOTENT_PREFIX)) {
            // A Kafka producer that reconnected: its newer connection takes
            // over (the older one may not have noticed it is gone yet).
            if let Some(old) = self.producers.remove(&key) {
                old.leave();
                old.out.command(commands::close_producer(key.1, None));
            }
        } else if same_name.is_some() {
            let e = BrokerError::ProducerBusy(format!(
                "producer with name '{name}' is already connected to topic {}",
                self.full_name
            ));
            p.conn.out.command(commands::broker_error(p.request_id, &e));
            return;
        }
        if dedup::always_deduplicated(&name) && !self.replicated_into {
            // Its state must be whole before PRODUCER_SUCCESS tells the
            // replicator what is stored already (or before an idempotent
            // Kafka producer's retries arrive).
            self.replicated_into = true;
            self.set_dedup(self.dedup_all);
        }
        let holders = access::Holders {
            exclusive: self.producers.values().any(|x| x.exclusive),
            any: !self.producers.is_empty(),
            waiting: !self.waiting_exclusive.is_empty(),
            epoch: self.topic_epoch,
        };
        match access::admit(p.access_mode, p.topic_epoch, &self.full_name, holders) {
            access::Admission::Ready => {}
            access::Admission::Refused(e) => {
                tracing::debug!(topic = %self.full_name, error = %e, "producer refused by its access mode");
                p.conn.out.command(commands::broker_error(p.request_id, &e));
                return;
            }
            access::Admission::Wait => {
                // Tell the client it is queued, answer for real when the topic frees up.
                p.conn
                    .out
                    .command(self.producer_success(&p, name.clone(), false, None));
                let mut p = p;
                p.name = Some(name);
                self.waiting_exclusive.push_back(p);
                return;
            }
            access::Admission::FenceOthers => self.fence_out_producers(),
        }
        self.producer_ready(&p, name);
    }

    /// ExclusiveWithFencing takes the topic: producers waiting for it are
    /// refused as fenced, the connected ones are closed (their clients come
    /// back with their older epoch and are refused as fenced, or as busy for
    /// a shared one, as with Pulsar).
    fn fence_out_producers(&mut self) {
        for w in self.waiting_exclusive.drain(..) {
            let e = BrokerError::ProducerFenced(format!(
                "topic {}: fenced out by an ExclusiveWithFencing producer",
                self.full_name
            ));
            w.conn.out.command(commands::broker_error(w.request_id, &e));
        }
        tracing::info!(topic = %self.full_name, producers = self.producers.len(), "producers fenced out by an ExclusiveWithFencing producer");
        self.close_producers();
    }

    /// Registers the producer and answers PRODUCER_SUCCESS (or the schema's error).
    fn producer_ready(&mut self, p: &NewProducer, name: String) {
        let version = p.schema_version;
        let exclusive = p.access_mode != ProducerAccessMode::Shared;
        if exclusive {
            self.topic_epoch = access::next_epoch(self.topic_epoch, p.topic_epoch);
        }
        let replicator = name.starts_with(crate::replicator::REPLICATOR_PREFIX);
        if let Some(lane) = &p.lane {
            lane.admit(!replicator && !dedup::always_deduplicated(&name));
        }
        let key = (p.conn.id, p.producer_id);
        // A PRODUCER retried on its connection (its client stopped waiting
        // for the answer) goes on with the first one's counts and rates, as
        // its lane does (the connection keeps the first one's).
        let (msg_in, bytes_in, meter_in) = match self.producers.remove(&key) {
            Some(first) => (first.msg_in, first.bytes_in, first.meter_in),
            None => Default::default(),
        };
        self.producers.insert(
            key,
            Producer {
                replicator,
                name: name.clone(),
                out: p.conn.out.clone(),
                exclusive,
                msg_in,
                bytes_in,
                lane: p.lane.clone(),
                client: p.conn.client.registered_at(self.broker.clock().now_ms()),
                meter_in,
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
                schema_version: schema_version.map(commands::schema_version_bytes),
                topic_epoch: Some(self.topic_epoch),
                producer_ready: Some(ready),
            }));
        })
    }

    pub(super) fn remove_producer(&mut self, conn: u64, producer_id: u64) {
        if let Some(p) = self.producers.remove(&(conn, producer_id)) {
            p.leave();
        }
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

    /// SEND: checks the message, counts it, drops a duplicate (answered in
    /// order with its original's id), appends it; the receipt goes out when
    /// the append is durable ([`Self::complete_append`]).
    pub(super) async fn publish(
        &mut self,
        conn: u64,
        producer_id: u64,
        (sequence_id, highest_sequence_id): (u64, u64),
        mut payload: SendPayload,
        read_at: std::time::Instant,
    ) {
        let Some(p) = self.producers.get(&(conn, producer_id)) else {
            // (Its lane count stays: the producer's SENDs keep to the task.)
            tracing::debug!(topic = %self.full_name, producer_id, "send from an unknown producer");
            return;
        };
        let to = AnswerTo {
            out: p.out.clone(),
            producer_id,
            sequence_id,
            highest_sequence_id,
            routed: p.lane.clone(),
        };
        if self.handing_over {
            // Its producer resends it to the next owner after the close.
            to.answered();
            return;
        }
        if !payload.checksum_ok {
            return to.error(ServerError::ChecksumError, "checksum failed on the broker");
        }
        if self.is_terminated() {
            let e = self.terminated_error();
            return self.answer_in_order(
                to,
                Pending::Refused(e.server_error(), e.to_string()),
                None,
            );
        }
        let count = match self.admit_send(&payload) {
            Ok(n) => n,
            Err(why) => {
                return self.answer_in_order(
                    to,
                    Pending::Refused(ServerError::NotAllowedError, why),
                    None,
                )
            }
        };
        let bytes = payload.raw.len() as u64;
        self.metrics.add_in(u64::from(count), bytes);
        let name = match self.producers.get_mut(&(conn, producer_id)) {
            Some(p) => {
                p.msg_in += u64::from(count);
                p.bytes_in += bytes;
                p.name.clone()
            }
            None => String::new(),
        };
        let marker = self.received_marker(&name, &mut payload);
        let producer = match self.dedup_check(name, &to, &payload, count) {
            Ok(producer) => producer,
            Err(NotNew::Duplicate(name)) => {
                return self.answer_in_order(to, Pending::Duplicate, Some(name))
            }
            Err(NotNew::OutOfOrder(why)) => {
                return self.answer_in_order(
                    to,
                    Pending::Refused(ServerError::NotAllowedError, why),
                    None,
                )
            }
        };
        let publish_time = match payload.publish_time {
            0 => self.broker.clock().now_ms(),
            t => t,
        };
        if self.log.is_none() {
            return self.publish_transient(to, payload, count, publish_time);
        }
        self.metrics.observe_entry_size(payload.raw.len() as u64);
        let appended_at = self.broker.clock().now();
        self.broker.metrics().publish_stages().observe(
            Stage::Appended,
            appended_at.saturating_duration_since(read_at),
        );
        let message_index = self
            .log
            .as_ref()
            .map_or(UNKNOWN_INDEX, |l| l.next_message_index());
        if producer.is_none() && marker.is_none() && self.answers_off_the_task() {
            let entry = (count, publish_time, message_index);
            return self
                .append_answered_off_the_task(to, payload.raw, entry, appended_at)
                .await;
        }
        match self.append_entry(payload.raw, count, publish_time).await {
            Ok((local, shared)) => {
                let shared = match shared {
                    None => Shared::Done,
                    Some(Ok(w)) => Shared::Queued(w),
                    Some(Err(why)) => Shared::Failed(why),
                };
                let pending = Pending::Stored {
                    local,
                    shared,
                    marker,
                };
                self.answer_in_order_from(to, pending, producer, appended_at, message_index)
            }
            Err(e) => self.append_not_queued(to, &e),
        }
    }

    /// An append could not be queued: its SEND is refused in order, and
    /// everything after it too, by the fence.
    fn append_not_queued(&mut self, to: AnswerTo, e: &StorageError) {
        tracing::warn!(topic = %self.full_name, error = %e, "append failed");
        self.broker.metrics().count_append_failure();
        self.answer_in_order(
            to,
            Pending::Refused(ServerError::PersistenceError, e.to_string()),
            None,
        );
        self.fence();
    }

    /// Whether a plain SEND (no deduplication, no marker) is answered by the
    /// journal's call ([`super::direct_receipts`]): with a local log only,
    /// outside a cluster (whose owner checks its session before each
    /// receipt), not fenced, and with nothing of the topic's in flight. A
    /// topic with appends in flight is busy: one wake-up of its task answers
    /// a whole group commit of them, and the journal's thread, which makes
    /// the calls between two fdatasyncs, stays free for the next one (a call
    /// for every append cost a busy topic 8–15 % of its unbatched rate).
    fn answers_off_the_task(&self) -> bool {
        self.shared.is_none()
            && self.appends.is_empty()
            && !self.direct.in_flight()
            && !self.fenced
            && self.broker.membership().is_none()
    }

    /// Appends a plain SEND's entry (`count` messages published at
    /// `publish_time`, the first one's index `message_index`); its receipt
    /// (or error) is sent by the journal's call once durable, without the
    /// topic's task.
    async fn append_answered_off_the_task(
        &mut self,
        to: AnswerTo,
        data: bytes::Bytes,
        (count, publish_time, message_index): (u32, u64, u64),
        appended_at: std::time::Instant,
    ) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let call = durable_call(self.calls.clone(), to.clone(), message_index, appended_at);
        // Counted once queued: the task looks at the count only between
        // its own appends.
        match log.append_then(data, count, publish_time, call).await {
            Ok(()) => self.calls.direct.queued(),
            Err(e) => self.append_not_queued(to, &e),
        }
    }

    /// The message's count, or why it is refused: over the topic's size limit
    /// ([`SendPayload::over`]), or a batch whose claimed count its bytes
    /// cannot hold.
    fn admit_send(&self, payload: &SendPayload) -> Result<u32, String> {
        let max = self.policies.max_message_bytes;
        if let Some(max) = max.filter(|_| payload.over(max)) {
            return Err(format!(
                "Exceed maximum message size: {} bytes, the topic's limit is {max}",
                payload.raw.len()
            ));
        }
        payload.count.clone()
    }

    /// The marker a SEND carries, to act on once stored: only one that
    /// another cluster's replicator sent. A message tells the
    /// replicated-subscription snapshots that new data arrived.
    fn received_marker(
        &mut self,
        producer: &str,
        payload: &mut SendPayload,
    ) -> Option<Box<Marker>> {
        if !payload.is_marker {
            let now_ms = self.broker.clock().now_ms();
            self.repl_subs.data_stored(now_ms);
            return None;
        }
        if !crate::replicator::is_replicator(producer) {
            return None;
        }
        payload.replicated_marker.take()
    }

    /// With deduplication on: `Err(name)` if the SEND is a duplicate of
    /// `name`'s, else the producer name to record once it is stored (`None`
    /// for a chunk before the last: only the last makes the message sent).
    fn dedup_check(
        &mut self,
        name: String,
        to: &AnswerTo,
        payload: &SendPayload,
        count: u32,
    ) -> Result<Option<String>, NotNew> {
        if !self.dedup_all && !dedup::always_deduplicated(&name) {
            return Ok(None);
        }
        let Some(d) = self.dedup.as_mut() else {
            return Ok(None);
        };
        if d.check(&name, to.sequence_id, to.highest_sequence_id) == dedup::Verdict::Duplicate {
            self.broker.metrics().count_duplicates(u64::from(count));
            return Err(NotNew::Duplicate(name));
        }
        if name.starts_with(dedup::KAFKA_IDEMPOTENT_PREFIX) {
            // Kafka's sequences are dense: a batch after a gap is refused
            // (a batch before it failed), as Kafka does.
            if let Some(expected) = d.gap(&name, to.sequence_id) {
                return Err(NotNew::OutOfOrder(format!(
                    "{}: {name} sent {} where {expected} was expected",
                    dedup::KAFKA_OUT_OF_ORDER,
                    to.sequence_id
                )));
            }
        }
        Ok(payload.completes_message().then(|| {
            d.pushed(&name, to.highest_sequence_id);
            name
        }))
    }

    /// Queues a SEND's answer behind those of the SENDs before it.
    fn answer_in_order(&mut self, to: AnswerTo, pending: Pending, producer: Option<String>) {
        let now = self.broker.clock().now();
        self.answer_in_order_from(to, pending, producer, now, UNKNOWN_INDEX);
    }

    /// [`Self::answer_in_order`] for a SEND whose append (of an entry
    /// whose first message index is `message_index`) was asked for at `started`.
    fn answer_in_order_from(
        &mut self,
        to: AnswerTo,
        pending: Pending,
        producer: Option<String>,
        started: std::time::Instant,
        message_index: u64,
    ) {
        self.appends.push_back(PendingAppend {
            pending,
            to,
            producer,
            started,
            message_index,
            after: self.direct.barrier(),
        });
    }

    /// Non-persistent: delivered now to consumers with permits, dropped for
    /// the others; the receipt goes at once.
    fn publish_transient(
        &mut self,
        to: AnswerTo,
        payload: SendPayload,
        count: u32,
        publish_time: u64,
    ) {
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
        to.receipt(position, UNKNOWN_INDEX, self.broker.clock().now());
    }
}

/// Why deduplication does not take a SEND as new.
enum NotNew {
    /// Producer `.0` sent it already.
    Duplicate(String),
    /// An idempotent Kafka producer's batch after a gap (why, for the client).
    OutOfOrder(String),
}

/// Why a SEND stored (or not) after a failed one is answered with an error.
const FENCED: &str = "the topic is fenced after a failed write: send again";

/// Entries before a duplicate's last stored one searched for its original.
const DUPLICATE_SEARCH_ENTRIES: u64 = 1000;

impl Topic {
    /// Turns deduplication on (rebuilding its state from the snapshot and the
    /// log after it) or off.
    pub(super) fn set_dedup(&mut self, on: bool) {
        self.dedup_all = on;
        // Replicators from other clusters are deduplicated whatever the policy.
        let on = on || self.replicated_into;
        let Some(log) = self.log.as_ref().filter(|_| on) else {
            self.dedup = None;
            return;
        };
        if self.dedup.is_some() {
            return;
        }
        let key = dedup::snapshot_key(log.id());
        let max = self.broker.config().deduplication_max_producers;
        // Reads the entries after the last snapshot (all of them when
        // deduplication is turned on for an existing topic): the topic serves
        // nothing until its state is whole, and on a multi-threaded runtime the
        // worker is handed over for the blocking reads.
        let state = self.broker.state_store().clone();
        let recover = || dedup::recover(state.as_ref(), &key, log, max);
        let recovered = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(recover),
            _ => recover(),
        };
        match recovered {
            Ok(d) => {
                tracing::debug!(topic = %self.full_name, producers = d.producer_count(), "deduplication state recovered");
                self.dedup = Some(d);
            }
            Err(dedup::DedupError::Storage(StorageError::Offloaded { .. }))
                if self.shared.is_some() =>
            {
                // Loaded with its compacted runs left in the object store
                // (deduplication was off): the next load, with it on,
                // brings every entry local.
                tracing::info!(topic = %self.full_name, "deduplication needs the whole history local: the topic reloads");
                self.unload_soon();
            }
            Err(e) => {
                // Without its state, deduplication would let duplicates through
                // silently: it stays off, loudly.
                tracing::error!(topic = %self.full_name, error = %e, "cannot recover the deduplication state: deduplication is off for this load");
            }
        }
    }

    /// Stores the deduplication state (every snapshot interval, and when the
    /// topic closes), so a load replays few entries.
    pub(super) fn snapshot_dedup(&mut self) {
        let (Some(d), Some(log)) = (self.dedup.as_mut(), self.log.as_ref()) else {
            return;
        };
        if d.unsnapshotted() == 0 {
            return;
        }
        let key = dedup::snapshot_key(log.id());
        if let Err(e) = dedup::store_snapshot(self.broker.state_store().as_ref(), &key, d) {
            tracing::warn!(topic = %self.full_name, error = %e, "storing the deduplication snapshot failed");
        }
    }

    /// Answers a duplicate once what was appended before it resolved: with the
    /// original's message id if it is stored (Pulsar clients count the message
    /// as sent), else with an error the client retries on.
    fn answer_duplicate(&mut self, a: &Appended) {
        let name = a.producer.as_deref().unwrap_or_default();
        let stored = self
            .dedup
            .as_ref()
            .and_then(|d| d.last_persisted(name))
            .filter(|(seq, _)| *seq >= a.to.highest_sequence_id.max(a.to.sequence_id));
        let Some((last_seq, last_at)) = stored else {
            a.to.error(
                ServerError::PersistenceError,
                "the original of this duplicate was not stored: send it again",
            );
            return;
        };
        let original = if last_seq == a.to.highest_sequence_id.max(a.to.sequence_id) {
            Some(last_at)
        } else {
            self.find_original(name, a.to.sequence_id, last_at)
        };
        // The original's first message index (a Kafka producer's retry is
        // answered with the original's offset).
        let index = original
            .and_then(|p| self.log.as_ref()?.read_entry(p).ok())
            .map_or(UNKNOWN_INDEX, |e| e.message_index);
        // Pulsar answers a duplicate whose original it cannot name with -1:-1.
        a.to.receipt(
            original.unwrap_or(Position::new(u64::MAX, u64::MAX)),
            index,
            self.broker.clock().now(),
        );
    }

    /// The entry holding `producer`'s message `sequence_id`, searched backwards
    /// from `last` in its segment, a few entries at a time (bounded memory), at
    /// most [`DUPLICATE_SEARCH_ENTRIES`] back.
    fn find_original(&self, producer: &str, sequence_id: u64, last: Position) -> Option<Position> {
        const BATCH: u64 = 16;
        let log = self.log.as_ref()?;
        let floor = last.entry.saturating_sub(DUPLICATE_SEARCH_ENTRIES);
        let mut hi = last.entry;
        loop {
            let lo = hi.saturating_sub(BATCH - 1).max(floor);
            let n = usize::try_from(hi - lo + 1).ok()?;
            let entries = log.read_from(Position::new(last.segment, lo), n).ok()?;
            let found = entries
                .iter()
                .rev()
                .filter(|e| e.position.segment == last.segment && e.position.entry <= hi)
                .find_map(|e| {
                    let p = kilonova_pulsar_protocol::frame::decode_payload(e.data.clone()).ok()?;
                    let m = &p.metadata;
                    let first = m.sequence_id;
                    let count = u64::from(kilonova_pulsar_protocol::frame::message_count(m));
                    let highest = m
                        .highest_sequence_id
                        .unwrap_or_else(|| first.saturating_add(count.saturating_sub(1)))
                        .max(first);
                    (m.producer_name == producer && (first..=highest).contains(&sequence_id))
                        .then_some(e.position)
                });
            if found.is_some() || lo <= floor {
                return found;
            }
            hi = lo - 1;
        }
    }
}
