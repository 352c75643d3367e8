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
//!
//! This module holds the task loop, the commands and the handle; the topic's
//! work is cut by concept: [`publish`] (producers, SEND → append → receipt,
//! fencing, deduplication), [`consumers`] (subscribe, flow, ack, redeliver,
//! seek, unsubscribe), [`dispatch`] (when and how much to dispatch, within
//! the dispatch rates), [`policy`] (TTL, backlog quotas, admission limits,
//! inactivity) and [`admin`] (admin requests and stats). The topic never
//! reads the time itself: it asks the broker's clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};

use kilonova_pulsar_protocol::proto::{
    CommandAck, CommandSubscribe, MessageIdData, ProducerAccessMode,
};
use kilonova_storage::ManagedLog;

mod access;
pub mod admin;
pub(crate) mod by_index;
mod compaction;
mod consumers;
mod direct_receipts;
mod dispatch;
mod in_order;
mod offload;
mod pace;
mod policy;
mod publish;
mod publish_lane;
mod replicated_subscriptions;
mod replication;
mod send_payload;
mod shared;
mod subscription_expiry;
mod termination;

pub use admin::{AdminReply, AdminRequest, BacklogStep, Peeked, ResetTo};
pub use compaction::CompactionStatus;
pub use offload::OffloadStatus;
pub(crate) use publish::AnswerTo;
pub(crate) use publish_lane::{ProducerLane, PublishLane};
pub use replication::ReplicatorStatsView;
pub(crate) use send_payload::SendPayload;

use crate::broker::Broker;
use crate::commands;
use crate::dedup::{self, Dedup};
use crate::error::BrokerError;
use crate::metrics::{Rates, TopicMetrics};
use crate::outbound::Outbound;
use crate::policy_cache::{Effective, PolicyScope};
use crate::rate_limit::{PublishGate, RateLimiter};
use crate::subscribe_rate::SubscribeRateLimiter;
use crate::subscription::{ConsumerKey, Subscription};
use kilonova_metadata::names::TopicName;
use kilonova_metadata::TopicRecord;
use publish::{PendingAppend, Producer};

/// The connection a producer or consumer lives on.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub id: u64,
    pub out: Outbound,
    pub wants_entry_metadata: bool,
    /// Whether the client is told REACHED_END_OF_TOPIC (see
    /// `connection::handshake`).
    pub hears_end_of_topic: bool,
    pub client: ClientInfo,
}

/// Who a producer or consumer is, as its stats show it.
#[derive(Clone, Debug)]
pub(crate) struct ClientInfo {
    /// The client's `ip:port`.
    pub address: std::sync::Arc<str>,
    /// What the client announced in CONNECT (at most 128 bytes).
    pub client_version: std::sync::Arc<str>,
    /// When the producer or consumer registered (ms since the epoch;
    /// Pulsar's `connectedSince`: a client re-registering on the same
    /// connection starts again). On the connection: when it completed CONNECT.
    pub connected_since_ms: u64,
    /// The advertised listener its connection looked topics up with: what
    /// a handover names to it.
    pub listener: crate::listeners::ClientListener,
}

impl ClientInfo {
    /// This client as a producer or consumer registered at `now_ms`.
    pub(crate) fn registered_at(&self, now_ms: u64) -> ClientInfo {
        ClientInfo {
            connected_since_ms: now_ms,
            ..self.clone()
        }
    }
}

impl Default for ClientInfo {
    fn default() -> Self {
        ClientInfo {
            address: std::sync::Arc::from(""),
            client_version: std::sync::Arc::from(""),
            connected_since_ms: 0,
            listener: Default::default(),
        }
    }
}

pub(crate) struct NewProducer {
    pub conn: ConnCtx,
    pub producer_id: u64,
    pub request_id: u64,
    pub name: Option<String>,
    pub access_mode: ProducerAccessMode,
    /// The topic epoch the producer last got (a reconnecting client sends
    /// it): an exclusive producer behind the topic's epoch was fenced out.
    pub topic_epoch: Option<u64>,
    /// The version of the producer's schema (registered by the connection).
    pub schema_version: Option<u64>,
    /// Shared with its connection, for SENDs appended by it (none: the
    /// Kafka edge's producers).
    pub lane: Option<Arc<ProducerLane>>,
}

pub(crate) enum TopicCommand {
    /// Boxed: rare, and the largest (every command's slot in a topic's
    /// queue is the size of the largest variant).
    AddProducer(Box<NewProducer>),
    Send {
        conn: u64,
        producer_id: u64,
        sequence_id: u64,
        highest_sequence_id: u64,
        payload: SendPayload,
        /// When the connection read its frame (its first stage begins).
        read_at: std::time::Instant,
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
    /// Entries or offsets by message index (the Kafka edge).
    ByIndex {
        query: by_index::IndexQuery,
        reply: by_index::IndexReply,
    },
}

/// How connections reach a loaded topic: its queue, and its publish rate limit
/// (drawn from by the connections themselves, so a producer over the limit is
/// slowed where it reads, before its messages are queued).
#[derive(Clone)]
pub(crate) struct TopicHandle {
    tx: mpsc::Sender<TopicCommand>,
    pub publish_gate: Arc<PublishGate>,
    /// Plain SENDs appended by their connections (ADR 0026).
    pub lane: Arc<PublishLane>,
}

impl TopicHandle {
    pub(crate) fn new(tx: mpsc::Sender<TopicCommand>) -> Self {
        TopicHandle {
            tx,
            publish_gate: Arc::default(),
            lane: Arc::default(),
        }
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

/// The most commands a topic handles before it dispatches and looks at its
/// other duties (append completions, housekeeping).
const COMMAND_BURST: usize = 256;

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
    /// Readers' non-durable subscriptions whose consumers a seek or a cursor
    /// reset closed, and since when: kept for the reader's return (its
    /// resubscription takes the moved cursor), dropped by housekeeping if it
    /// does not come back within [`consumers::READER_RETURN_GRACE`]. At most
    /// one entry per subscription.
    parked_readers: HashMap<String, Instant>,
    /// Subscriptions whose consumers may take more entries: dispatched once
    /// after a burst of commands, so a FLOW followed at once by a REDELIVER
    /// (or many ACKs) costs one dispatch pass, not one per command.
    to_dispatch: HashSet<String>,
    appends: in_order::InOrder<PendingAppend>,
    /// Plain SENDs' appends, answered off the task by the journal's call.
    direct: direct_receipts::DirectReceipts,
    /// What those calls share.
    calls: Arc<publish::DurableCall>,
    /// Plain SENDs appended by their connections while the topic allows it
    /// ([`Self::lane_allowed`]).
    lane: Arc<PublishLane>,
    /// An append failed: every append still in flight is answered with an
    /// error (stored or not), producers were closed and new ones wait, until
    /// nothing is in flight (Pulsar fences a topic the same way). Without it,
    /// a message stored after a failed one would make deduplication drop the
    /// failed one's resend.
    fenced: bool,
    /// Where the clients go when the topic closes (its next owner, given
    /// by a handover, at the URLs of each client's listener); none: they
    /// look the topic up again.
    handover: Option<crate::listeners::NextOwner>,
    /// In a cluster with shared storage: the topic's appends also go to the
    /// object store, and its subscription positions to the metadata store
    /// ([`crate::cluster::shared`]).
    shared: Option<crate::cluster::shared::SharedTopic>,
    /// An append failed to reach shared storage: the topic closes once its
    /// appends in flight are answered, and its next load rebuilds it.
    shared_failed: bool,
    /// When subscription positions were last handed to the shared path.
    cursors_shared_at: std::time::Instant,
    /// The topic's bundle is about to change hands: SENDs are left
    /// unanswered (their producers resend them to the next owner).
    handing_over: bool,
    /// Non-persistent topics: the next synthetic entry id.
    next_transient_entry: u64,
    idle_since: Option<Instant>,
    metrics: Arc<TopicMetrics>,
    /// When rates were last computed, and the totals then.
    rates_since: (Instant, (u64, u64, u64, u64)),
    /// How often the housekeeping tick comes.
    pace: pace::Pace,
    /// What `policies` depend on: its generation moves (and it notifies)
    /// whenever they may have changed.
    policy_scope: Arc<PolicyScope>,
    /// The scope's generation `policies` were last resolved at (none: not
    /// yet by a tick): ticks skip the resolution while it stays.
    policies_seen: Option<u64>,
    /// `/metrics` shows replication of this topic (it had replicators, or
    /// remote clusters' replicators producing here, at the last tick).
    replication_shown: bool,
    /// A replicator ran on this topic: reports may arrive (and are dropped
    /// by the tick while none runs). Until then the channel stays untouched.
    replicators_ran: bool,
    /// The policies in force (refreshed from the policy cache every tick).
    policies: Effective,
    publish_gate: Arc<PublishGate>,
    /// The topic's dispatch rate (subscriptions have their own too).
    dispatch_rate: RateLimiter,
    /// A dispatch (or replicator feed) held back by a rate goes on at this time.
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
    /// The compaction running, and how the last one ended.
    compaction: compaction::Compaction,
    /// When the compaction threshold was last checked.
    compaction_checked: Instant,
    /// Deduplication applies to every producer (the policy); without it,
    /// only to replicators from other clusters and idempotent Kafka
    /// producers (`replicated_into`).
    dedup_all: bool,
    /// Replicators of other clusters, or idempotent Kafka producers, may
    /// produce here (the namespace is replicated, or one produced in this
    /// load): their messages are deduplicated whatever the policy.
    replicated_into: bool,
    /// Replicators to the namespace's remote clusters, by cluster.
    replicators: std::collections::BTreeMap<String, replication::Replicator>,
    /// Where the replicators report (the serving loop reads the other end).
    replication_reports: mpsc::UnboundedSender<crate::replicator::Report>,
    /// Replicated subscriptions: snapshots asked for, markers to act on.
    repl_subs: replicated_subscriptions::ReplicatedSubscriptions,
    /// Tiered storage: copies to the object store, fetches back.
    offload: offload::OffloadState,
    /// SUBSCRIBEs counted per consumer (persistent topics).
    subscribe_rate: SubscribeRateLimiter,
    /// When the topic loaded (ms since the epoch): a subscription whose
    /// cursor holds no last-active time counts as active then.
    loaded_at_ms: u64,
    /// Cursor states being stored on the blocking pool (one batch at a time).
    cursor_writes: Option<tokio::task::JoinHandle<kilonova_storage::CursorsStored>>,
    /// Reads by message index waiting for an entry to be stored.
    index_waiters: Vec<by_index::IndexWaiter>,
}

impl Topic {
    /// Loads the topic and serves it until it unloads or the broker shuts down.
    pub(crate) async fn run(
        broker: Broker,
        name: TopicName,
        record: TopicRecord,
        mut rx: mpsc::Receiver<TopicCommand>,
        publish_gate: Arc<PublishGate>,
        lane: Arc<PublishLane>,
    ) {
        let full_name = name.to_string();
        // Before the policies are read: a change after this moves it.
        let policy_scope = broker.policy_scope(&name);
        let policies = policy::load(&broker, &name).await;
        // A topic of a replicated namespace may be replicated into: its
        // deduplication state is rebuilt now, before anything is trimmed
        // (a replicator connecting later would find the entries it needs
        // gone once consumed).
        let replicated_into = !policies.replication_clusters.is_empty();
        // Deduplication replays every entry at the load: they must be local.
        let lazy = !(policies.deduplication || replicated_into);
        let (mut log, shared) = match Self::open(&broker, &name, &record, lazy).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::error!(topic = %full_name, error = %e, "cannot load topic");
                rx.close();
                broker.forget_topic(&full_name);
                let e = match e {
                    e @ BrokerError::Unavailable(_) => e,
                    e => BrokerError::Metadata(format!("cannot load topic: {e}")),
                };
                while let Ok(cmd) = rx.try_recv() {
                    refuse(cmd, &e);
                }
                return;
            }
        };
        tracing::debug!(topic = %full_name, id = record.id, "topic loaded");
        let now = broker.clock().now();
        publish_gate.set(policies.publish_rate, now);
        let dispatch_rate = dispatch::dispatch_limiter(policies.dispatch_rate, now);
        let subscribe_rate = SubscribeRateLimiter::new(policies.subscribe_rate, now);
        let loaded_at_ms = broker.clock().now_ms();
        let metrics = broker.metrics().register(&full_name);
        let direct = direct_receipts::DirectReceipts::default();
        let calls = Arc::new(publish::DurableCall {
            direct: direct.shared().clone(),
            metrics: metrics.clone(),
            stages: broker.metrics().publish_stages().clone(),
            clock: broker.clock().clone(),
            failures: broker.metrics().append_failures(),
        });
        if let Some(log) = log.as_mut() {
            lane.install(log.lane(), calls.clone());
            log.open_lane();
        }
        let (replication_reports, reports) = mpsc::unbounded_channel();
        let (offload_events, offloaded) = mpsc::unbounded_channel();
        let pace = pace::Pace::new(broker.config());
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
            parked_readers: HashMap::new(),
            to_dispatch: HashSet::new(),
            appends: in_order::InOrder::default(),
            direct,
            calls,
            lane,
            fenced: false,
            handover: None,
            shared,
            shared_failed: false,
            cursors_shared_at: now,
            handing_over: false,
            next_transient_entry: 0,
            idle_since: Some(now),
            metrics,
            rates_since: (now, (0, 0, 0, 0)),
            pace,
            policies,
            policy_scope,
            policies_seen: None,
            replication_shown: false,
            replicators_ran: false,
            publish_gate,
            dispatch_rate,
            dispatch_wake: None,
            drained: Arc::new(Notify::new()),
            dispatch_round: 0,
            checks: policy::Checks::new(now),
            quota_exceeded: None,
            dedup: None,
            compaction: compaction::Compaction::default(),
            compaction_checked: now,
            dedup_all: false,
            replicated_into,
            replicators: Default::default(),
            replication_reports,
            repl_subs: Default::default(),
            offload: offload::OffloadState::new(offload_events),
            subscribe_rate,
            loaded_at_ms,
            cursor_writes: None,
            index_waiters: Vec::new(),
        };
        topic.set_dedup(topic.policies.deduplication);
        // Subscriptions that expired while the topic was not loaded go
        // before any client or admin request sees them.
        topic.expire_subscriptions();
        topic.sync_replicators();
        if let (Some(log), Some(t)) = (topic.log.as_mut(), topic.broker.tiering()) {
            log.set_offload_cache_bytes(t.settings().topic_cache_mib << 20);
            topic.offload.loaded(log);
        }
        topic.serve(rx, reports, offloaded).await;
        topic
            .broker
            .metrics()
            .unregister(&topic.full_name, &topic.metrics);
    }

    /// The topic's log (none: non-persistent) and, in a cluster with shared
    /// storage, its part in the shared path (the log rebuilt from it, its
    /// compacted runs left in the object store when `lazy`).
    async fn open(
        broker: &Broker,
        name: &TopicName,
        record: &TopicRecord,
        lazy: bool,
    ) -> Result<
        (
            Option<ManagedLog>,
            Option<crate::cluster::shared::SharedTopic>,
        ),
        BrokerError,
    > {
        if !name.is_persistent() {
            return Ok((None, None));
        }
        let log = broker.open_log(record.id).await?;
        if broker.shared_log().is_none() {
            return Ok((Some(log), None));
        }
        let (log, shared) = broker.load_shared(name, log, lazy).await?;
        Ok((Some(log), Some(shared)))
    }

    async fn serve(
        &mut self,
        mut rx: mpsc::Receiver<TopicCommand>,
        mut reports: mpsc::UnboundedReceiver<crate::replicator::Report>,
        mut offloaded: mpsc::UnboundedReceiver<offload::OffloadEvent>,
    ) {
        let config = self.broker.config().clone();
        let mut tick = self.pace.ticks();
        let idle_limit = Duration::from_secs(config.topic_unload_idle_secs);
        let drained = self.drained.clone();
        // Made once and re-armed when it fires (a `Notify` keeps a wake-up
        // that comes between): not a new future at every turn of the loop.
        let mut drained_wake = std::pin::pin!(drained.notified());
        // Watched only while the ticks are slowed (`pace.rs`).
        let scope = self.policy_scope.clone();
        let mut policy_wake = std::pin::pin!(scope.changed().notified());
        loop {
            self.refresh_lane();
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
                    self.appends_completed().await;
                }
                // Polled always: a failed append's call wakes the task even
                // when it watches nothing else (it must fence at once).
                failed = self.direct.progress() => {
                    if failed {
                        self.fence();
                    }
                    self.appends_completed().await;
                }
                written = self.repl_subs.next_written(), if self.repl_subs.writing() => {
                    match written {
                        // Durable: subscriptions read past it (a replicated
                        // one keeps a snapshot), the replicators send it on.
                        Ok(_) => {
                            self.dispatch_all();
                            self.feed_replicators();
                        }
                        Err(e) => tracing::warn!(topic = %self.full_name, error = %e, "a replicated-subscription marker was not stored"),
                    }
                }
                // Reports matter only to replicators (without any, each
                // would be dropped: the tick drops them).
                Some(report) = reports.recv(), if !self.replicators.is_empty() => {
                    self.on_replication_report(report);
                }
                // Polled only while a copy, fetch or export is out (each
                // sends one event): a topic that offloads nothing does not
                // touch the channel at every turn.
                Some(event) = offloaded.recv(), if self.offload.awaits_events() => {
                    self.on_offload_event(event)
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
                    self.feed_replicators();
                }
                _ = drained_wake.as_mut() => {
                    drained_wake.set(drained.notified());
                    self.dispatch_all();
                }
                // Lowest priority: a compaction goes a step at a time between
                // everything else the topic does.
                _ = std::future::ready(()), if self.compaction.is_running() => {
                    self.compaction_step().await;
                }
                _ = policy_wake.as_mut(), if self.pace.slowed() => {
                    policy_wake.set(scope.changed().notified());
                    self.pace.hurry(&mut tick);
                }
                _ = tick.tick() => {
                    self.broker.metrics().count_housekeeping_tick();
                    if self.replicators.is_empty() && self.replicators_ran {
                        while reports.try_recv().is_ok() {}
                    }
                    self.housekeeping().await;
                    self.update_gauges();
                    self.update_backlog_and_rates();
                    if self.is_idle() {
                        let now = self.broker.clock().now();
                        let since = *self.idle_since.get_or_insert(now);
                        match self.inactive_check(since) {
                            policy::Inactive::Delete => {
                                if self.delete_inactive(&mut rx).await {
                                    return;
                                }
                            }
                            policy::Inactive::Keep => {}
                            policy::Inactive::Unload => {
                                if now.duration_since(since) >= idle_limit && self.unload(&mut rx).await {
                                    return;
                                }
                            }
                        }
                    } else {
                        self.idle_since = None;
                    }
                    let segment = self.log.as_ref().and_then(pace::current_segment);
                    self.pace.ticked_at(segment);
                    if self.pace.can_slow() {
                        // Made before the generation's look: a change after
                        // that look completes it (`notify_waiters` reaches a
                        // `Notified` from its creation on).
                        policy_wake.set(scope.changed().notified());
                        if self.may_tick_slowly() {
                            self.pace.slow(&mut tick);
                        }
                    }
                }
            }
            if self.pace.slowed() && !self.may_tick_slowly() {
                self.pace.hurry(&mut tick);
            }
            self.direct.watch(self.wants_every_completion());
        }
    }

    /// Work for entries that became durable: readers dispatched to and woken,
    /// replicators fed, markers acted on, the fence lifted once drained.
    async fn appends_completed(&mut self) {
        self.unfence_when_drained();
        self.dispatch_all();
        self.feed_replicators();
        self.wake_index_waiters();
        self.act_on_received_markers().await;
    }

    /// Whether the task must hear of every append answered off it: it has
    /// readers or replicators to serve what became durable, answers queued
    /// behind those appends (their barrier), or a fence to lift once they
    /// drain.
    fn wants_every_completion(&self) -> bool {
        !self.consumer_subs.is_empty()
            || !self.index_waiters.is_empty()
            || !self.replicators.is_empty()
            || (!self.appends.is_empty() && self.direct.in_flight())
            || self.fenced
    }

    /// Waits for every append in flight and answers what the task answers.
    async fn drain_appends(&mut self) {
        if self.direct.drained().await {
            self.fence();
        }
        while let Some(a) = self.appends.next().await {
            self.complete_append(a);
        }
    }

    fn is_idle(&self) -> bool {
        self.producers.is_empty()
            && self.consumer_subs.is_empty()
            && self.waiting_exclusive.is_empty()
            && self.appends.is_empty()
            && !self.direct.in_flight()
            && !self.compaction.is_running()
            && self.replication_caught_up()
    }

    /// Unloads if no command is queued. Commands that race in after the decision are
    /// forwarded to a fresh load of the topic.
    async fn unload(&mut self, rx: &mut mpsc::Receiver<TopicCommand>) -> bool {
        self.snapshot_dedup();
        self.export_before_unload();
        self.share_cursors();
        if !self.broker.unload_topic(&self.full_name, rx, &mut self.log) {
            return false;
        }
        self.finish_shared().await;
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
        self.share_cursors();
        self.refresh_policies().await;
        self.sync_replicators();
        self.replicated_subscriptions_tick().await;
        self.warm_policy_reads().await;
        self.enforce_policies();
        self.drop_unclaimed_readers();
        let now = self.broker.clock().now();
        let every = Duration::from_secs(self.broker.config().compaction_check_interval_secs);
        if now.duration_since(self.compaction_checked) >= every {
            self.compaction_checked = now;
            self.check_compaction_threshold();
        }
        self.write_cursors();
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let now_ms = self.broker.clock().now_ms();
        let retention = self.policies.retention;
        // Nothing to trim (most ticks): no snapshot, no second look.
        if log
            .trimmable(now_ms, retention)
            .map_or(true, |d| !d.is_empty())
        {
            // The deduplication state covers every entry before retention
            // deletes any: it could not be rebuilt from them afterwards.
            self.snapshot_dedup();
            if let Some(log) = self.log.as_mut() {
                if let Err(e) = log.trim(now_ms, retention).await {
                    tracing::warn!(topic = %self.full_name, error = %e, "trimming failed");
                }
            }
        }
        self.offload_tick().await;
    }

    /// Takes in what the last batch of cursor writes stored, and starts the
    /// next batch on the blocking pool: their fsyncs never hold the topic's
    /// task (a close still persists on it, after any batch in flight).
    fn write_cursors(&mut self) {
        if let Some(running) = self.cursor_writes.take() {
            if !running.is_finished() {
                self.cursor_writes = Some(running);
                return;
            }
            if let Some(done) = futures_util::FutureExt::now_or_never(running) {
                self.cursor_writes_done(done);
            }
        }
        let Some(log) = self.log.as_ref().filter(|l| l.cursor_count() > 0) else {
            return;
        };
        let writes = log.cursor_writes();
        if !writes.is_empty() {
            self.cursor_writes = Some(tokio::task::spawn_blocking(move || writes.store()));
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
        self.stop_lane();
        self.replicators.clear();
        self.close_producers();
        let handover = self.handover.as_ref();
        for p in self.waiting_exclusive.drain(..) {
            let to = handover.and_then(|n| n.urls_for(&p.conn.client.listener));
            p.conn
                .out
                .command(commands::close_producer(p.producer_id, to.as_ref()));
        }
        for sub in self.subscriptions.values() {
            for c in &sub.consumers {
                let to = handover.and_then(|n| n.urls_for(&c.client.listener));
                c.out
                    .command(commands::close_consumer(c.key.id, to.as_ref()));
            }
        }
        self.drain_appends().await;
        self.finish_shared().await;
        self.snapshot_dedup();
        self.consumer_subs.clear();
        self.drop_transient_cursors_of(None);
        self.subscriptions.clear();
        self.finish_cursor_writes().await;
    }

    /// Waits for the batch of cursor writes in flight on the blocking pool,
    /// if any, and takes in what it stored: a close persists after it, and
    /// a deletion must not remove the state directory while it writes there
    /// (the removal failed with "Directory not empty").
    async fn finish_cursor_writes(&mut self) {
        if let Some(running) = self.cursor_writes.take() {
            let done = running.await;
            self.cursor_writes_done(done);
        }
    }

    /// Takes in what a batch of cursor writes stored.
    fn cursor_writes_done(
        &mut self,
        done: Result<kilonova_storage::CursorsStored, tokio::task::JoinError>,
    ) {
        let applied = match (done, self.log.as_mut()) {
            (Ok(stored), Some(log)) => log.cursor_writes_done(stored).map(drop),
            (Err(e), _) => Err(kilonova_storage::StorageError::Log(format!(
                "the cursor writes stopped: {e}"
            ))),
            (Ok(_), None) => Ok(()),
        };
        if let Err(e) = applied {
            tracing::warn!(topic = %self.full_name, error = %e, "persisting cursors failed");
        }
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

    async fn handle(&mut self, cmd: TopicCommand) {
        match cmd {
            TopicCommand::AddProducer(p) => self.add_producer(*p),
            TopicCommand::ByIndex { query, reply } => self.by_index(query, reply),
            TopicCommand::Send {
                conn,
                producer_id,
                sequence_id,
                highest_sequence_id,
                payload,
                read_at,
            } => {
                self.publish(
                    conn,
                    producer_id,
                    (sequence_id, highest_sequence_id),
                    payload,
                    read_at,
                )
                .await
            }
            TopicCommand::RemoveProducer { conn, producer_id } => {
                self.remove_producer(conn, producer_id)
            }
            TopicCommand::Subscribe { conn, command } => {
                self.subscribe(conn, *command);
                self.share_cursors();
            }
            TopicCommand::Flow { key, permits } => self.flow(key, permits),
            TopicCommand::Ack { key, ack } => {
                self.ack(key, ack);
                // Under load the housekeeping tick may wait: positions are
                // shared from here too, at most once per persist interval.
                self.share_cursors_if_due();
            }
            TopicCommand::Redeliver { key, ids, epoch } => self.redeliver(key, &ids, epoch),
            TopicCommand::Seek {
                key,
                request_id,
                message_id,
                publish_time_ms,
            } => {
                if let Some(t) = publish_time_ms {
                    // The search may read offloaded entries: fetched first.
                    let _ = self.read_through(|l| l.position_of_publish_time(t)).await;
                }
                self.seek(key, request_id, message_id, publish_time_ms)
            }
            TopicCommand::GetLastMessageId { key, request_id } => {
                self.last_message_id(key, request_id)
            }
            TopicCommand::Unsubscribe { key, request_id } => {
                self.unsubscribe(key, request_id);
                self.share_cursors();
            }
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
        if let AdminRequest::Handover { to } = &request {
            self.handover = Some(to.clone());
        }
        let ends = match &request {
            AdminRequest::Unload | AdminRequest::Handover { .. } => Some(false),
            AdminRequest::Delete { .. } | AdminRequest::DeleteIfInactive { .. } => Some(true),
            _ => None,
        };
        if matches!(request, AdminRequest::Terminate) {
            let answer = self.terminate().await.map(AdminReply::LastMessageId);
            let _ = reply.send(answer);
            return false;
        }
        if matches!(request, AdminRequest::PrepareHandover) {
            self.prepare_handover().await;
            let _ = reply.send(Ok(AdminReply::Done));
            return false;
        }
        // A read of one entry, which the object store may hold, waits for it.
        let answer = match request.entry_read_copy() {
            Some(_) => self.admin_read(request).await,
            None => self.admin(request),
        };
        let Some(delete) = ends.filter(|_| answer.is_ok()) else {
            // Subscriptions may have been created, deleted or moved.
            self.share_cursors();
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
        if !delete {
            self.export_before_unload();
        }
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
            let objects = log.delete().await?;
            self.delete_offloaded(objects);
            self.dedup = None;
            self.broker.state_store().remove(&dedup::snapshot_key(id))?;
            if self.broker.shared_log().is_some() {
                self.broker.resources().delete_topic_cursors(id).await?;
            }
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
            self.metrics
                .offloaded_bytes
                .store(log.offloaded_bytes(), Ordering::Relaxed);
        }
        let now = self.broker.clock().now();
        let totals = self.metrics.totals();
        let (since, before) = self.rates_since;
        let secs = now.duration_since(since).as_secs_f64();
        for sub in self.subscriptions.values_mut() {
            sub.tick_meters(secs);
        }
        self.sample_subscriptions();
        for p in self.producers.values_mut() {
            let (msg_in, bytes_in) = p.published();
            p.meter_in.tick(msg_in, bytes_in, secs);
        }
        self.tick_replication_meters(secs);
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
}

/// Topics' housekeeping ticks start on a shared grid of this step, so that
/// the ticks of many topics fire together: 10,000 topics wake the runtime
/// 100 times a second, not at every millisecond of the timer wheel.
const TICK_GRID: Duration = Duration::from_millis(10);

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
        TopicCommand::ByIndex { reply, .. } => {
            let _ = reply.send(Err(BrokerError::Unavailable(format!(
                "the topic is not available: {e}"
            ))));
        }
        _ => {}
    }
}

#[cfg(test)]
mod command_size {
    /// Every slot of a topic's queue is a command's size, and every SEND is
    /// copied into one and out again: the hot variant stays small (it was
    /// 600 bytes with the whole decoded metadata in it).
    #[test]
    fn a_topic_command_stays_small() {
        let size = std::mem::size_of::<super::TopicCommand>();
        assert!(size <= 160, "TopicCommand is {size} bytes");
    }
}
