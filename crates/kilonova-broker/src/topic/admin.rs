//! What the admin API asks of a loaded topic — stats, internal stats,
//! subscription management, peeking, unloading, deletion — answered by the
//! topic's own task, in Pulsar's JSON shapes.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

use kilonova_pulsar_protocol::frame;
use kilonova_storage::{BacklogScan, InitialPosition, Position};

use super::Topic;
use crate::commands;
use crate::error::BrokerError;
use crate::subscription::{SubKind, Subscription};

/// A request to one topic.
#[derive(Debug)]
pub enum AdminRequest {
    Stats,
    InternalStats,
    Subscriptions,
    /// A durable subscription with no consumer yet, starting at `start`.
    CreateSubscription {
        name: String,
        start: ResetTo,
    },
    DeleteSubscription {
        name: String,
        force: bool,
    },
    Skip {
        subscription: String,
        count: u64,
    },
    ResetCursor {
        subscription: String,
        to: ResetTo,
    },
    /// Acknowledges messages older than `seconds` on one subscription or all.
    Expire {
        subscription: Option<String>,
        seconds: u64,
    },
    /// The `n`-th (from 1) unacknowledged entry of a subscription.
    Peek {
        subscription: String,
        n: u64,
    },
    /// Acknowledges everything published so far on one subscription, or on
    /// every subscription (Pulsar's `skip_all` / clear-backlog).
    ClearBacklog {
        subscription: Option<String>,
    },
    /// Offload every sealed segment before the one holding this position
    /// to the object store (Pulsar's `triggerOffload`).
    Offload {
        before: Position,
    },
    /// How the last offload went (Pulsar's `offloadStatus`).
    OffloadStatus,
    /// Whether a subscription's position is replicated; with `set`, marks
    /// it so first (Pulsar's replicatedSubscriptionStatus).
    ReplicatedSubscription {
        subscription: String,
        set: Option<bool>,
    },
    /// The `n`-th (from 1) entry of the topic counted from its first
    /// (`from_latest` false) or its last entry (Pulsar's examinemessage).
    Examine {
        from_latest: bool,
        n: u64,
    },
    /// The entry at a position (Pulsar's `ledger/{l}/entry/{e}`).
    ReadEntry {
        position: Position,
    },
    LastMessageId,
    /// Closes every client (they reconnect) and unloads.
    Unload,
    /// Settles the topic before its bundle changes hands (in a cluster):
    /// appends stop, those in flight are answered, subscription positions
    /// are stored. An unload follows.
    PrepareHandover,
    /// The topic's history was compacted again (in a cluster): its part of
    /// the new base. Its segments left in the object store are now in these
    /// runs (the same entries, other objects) or were dropped (those before
    /// its first kept entry); the old objects are deleted after this.
    MoveSharedRuns {
        base: kilonova_metadata::wal_index::BaseTopic,
    },
    /// Unloads, telling every client to reconnect to `to` (the topic's
    /// next owner, in a cluster, at the URLs of the client's listener)
    /// without looking the topic up again.
    Handover {
        to: crate::listeners::NextOwner,
    },
    /// Deletes the topic's data and record; refused with clients unless `force`.
    Delete {
        force: bool,
    },
    /// Answers whether the topic has been inactive at least this long and its
    /// inactive-topic policy would let it go (a partitioned topic's deletion
    /// asks every partition before deleting any).
    InactiveCheck {
        min_inactive: std::time::Duration,
    },
    /// Deletes the topic if [`AdminRequest::InactiveCheck`] holds.
    DeleteIfInactive {
        min_inactive: std::time::Duration,
    },
    /// Terminates the topic: no more messages, for good; answers the last
    /// message's id. Handled by the serving loop (it waits for the appends
    /// in flight).
    Terminate,
    /// Counts up to `max_entries` more entries of a subscription's backlog
    /// (Pulsar's analyze-backlog, a step at a time: see
    /// [`crate::Broker::analyze_backlog`]).
    AnalyzeBacklog {
        subscription: String,
        step: BacklogStep,
        max_entries: u64,
    },
    /// Starts compacting the topic (409 while a compaction runs).
    Compact,
    /// How the running or last compaction is doing.
    CompactionStatus,
}

/// Where a cursor goes (or a new subscription starts).
#[derive(Clone, Copy, Debug)]
pub enum ResetTo {
    PublishTime(u64),
    Position(Position),
    Earliest,
    Latest,
}

impl AdminRequest {
    /// A copy of a read-only request that reads one entry (peek, examine,
    /// get by id), to ask again once the entry is fetched; `None` for others.
    pub(super) fn entry_read_copy(&self) -> Option<AdminRequest> {
        match self {
            AdminRequest::Peek { subscription, n } => Some(AdminRequest::Peek {
                subscription: subscription.clone(),
                n: *n,
            }),
            AdminRequest::Examine { from_latest, n } => Some(AdminRequest::Examine {
                from_latest: *from_latest,
                n: *n,
            }),
            AdminRequest::ReadEntry { position } => Some(AdminRequest::ReadEntry {
                position: *position,
            }),
            _ => None,
        }
    }
}

/// Where a backlog scan step starts.
#[derive(Debug)]
pub enum BacklogStep {
    /// A new scan, from this position or from the first unacknowledged entry.
    Start(Option<Position>),
    /// The scan a previous step answered.
    Continue(Box<BacklogScan>),
}

/// What a topic answers.
#[derive(Debug)]
pub enum AdminReply {
    /// A backlog scan after a step, and whether it is complete.
    BacklogScan {
        scan: Box<BacklogScan>,
        done: bool,
    },
    Stats(Box<TopicStats>),
    InternalStats(Box<InternalStats>),
    Names(Vec<String>),
    Peeked(Option<Peeked>),
    LastMessageId(LastMessageId),
    Compaction(super::CompactionStatus),
    Flag(bool),
    Offload(super::OffloadStatus),
    Done,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicStats {
    pub msg_rate_in: f64,
    pub msg_throughput_in: f64,
    pub msg_rate_out: f64,
    pub msg_throughput_out: f64,
    pub msg_in_counter: u64,
    pub bytes_in_counter: u64,
    pub msg_out_counter: u64,
    pub bytes_out_counter: u64,
    pub average_msg_size: f64,
    pub storage_size: u64,
    /// Bytes in the object store (tiered storage).
    pub offloaded_storage_size: u64,
    /// Entries not acknowledged by the slowest subscription.
    pub backlog_size: u64,
    pub publishers: Vec<PublisherStats>,
    pub subscriptions: BTreeMap<String, SubscriptionStats>,
    /// Per remote cluster, the replicator's state (Pulsar's `replication`).
    pub replication: BTreeMap<String, super::ReplicatorStatsView>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublisherStats {
    pub producer_id: u64,
    pub producer_name: String,
    pub access_mode: String,
    pub msg_in_counter: u64,
    pub bytes_in_counter: u64,
    pub msg_rate_in: f64,
    pub msg_throughput_in: f64,
    pub average_msg_size: f64,
    /// The client's `ip:port`.
    pub address: String,
    /// When the producer registered, ISO-8601 UTC (as Pulsar writes it).
    pub connected_since: String,
    pub client_version: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStats {
    #[serde(rename = "type")]
    pub kind: String,
    pub is_durable: bool,
    /// Its position is replicated to the other replication clusters.
    pub is_replicated: bool,
    pub msg_backlog: u64,
    /// Bytes of the backlog (estimated per segment).
    pub backlog_size: u64,
    /// Messages held for a later delivery time.
    pub msg_delayed: u64,
    pub msg_out_counter: u64,
    pub bytes_out_counter: u64,
    pub msg_rate_out: f64,
    pub msg_throughput_out: f64,
    pub msg_rate_redeliver: f64,
    /// Messages dispatched to its consumers and not acknowledged yet.
    pub unacked_messages: u64,
    /// Whether dispatch stopped because the subscription reached its maximum
    /// of unacknowledged messages.
    pub blocked_subscription_on_unacked_msgs: bool,
    /// When a consumer last acknowledged (ms since the epoch; 0: never
    /// since the topic loaded).
    pub last_acked_timestamp: u64,
    /// Key_Shared only: `AUTO_SPLIT` or `STICKY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_shared_mode: Option<String>,
    pub consumers: Vec<ConsumerStats>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStats {
    pub consumer_name: String,
    pub available_permits: i64,
    pub msg_out_counter: u64,
    pub bytes_out_counter: u64,
    pub msg_rate_out: f64,
    pub msg_throughput_out: f64,
    pub msg_rate_redeliver: f64,
    /// Messages dispatched to it and not acknowledged yet.
    pub unacked_messages: u64,
    /// Whether it gets nothing more until it acknowledges (its maximum of
    /// unacknowledged messages is reached).
    pub blocked_consumer_on_unacked_msgs: bool,
    /// The client's `ip:port`.
    pub address: String,
    /// When the consumer registered, ISO-8601 UTC.
    pub connected_since: String,
    pub client_version: String,
    /// Key_Shared: the hash ranges it owns, `[start, end]` (inclusive).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_hash_ranges: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalStats {
    pub entries_added_counter: u64,
    pub number_of_entries: u64,
    pub total_size: u64,
    pub current_ledger_entries: u64,
    pub ledgers: Vec<LedgerInfo>,
    pub cursors: BTreeMap<String, CursorStats>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerInfo {
    pub ledger_id: u64,
    pub entries: u64,
    pub size: u64,
    pub first_message_index: u64,
    pub created_ms: u64,
    /// In the object store (Pulsar's `offloaded`).
    pub offloaded: bool,
    /// Its entries are in the local store too (false once the local copy
    /// is dropped after the deletion lag).
    pub local: bool,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CursorStats {
    /// `ledger:entry` of the last entry before which everything is acknowledged.
    pub mark_delete_position: String,
    pub read_position: String,
    pub individually_deleted_ranges: usize,
    pub messages_consumed_counter: u64,
    pub number_of_entries_since_first_not_acked_message: u64,
    pub durable: bool,
}

/// A peeked entry.
#[derive(Debug)]
pub struct Peeked {
    pub position: Position,
    pub publish_time_ms: u64,
    pub producer_name: String,
    pub sequence_id: u64,
    pub properties: Vec<(String, String)>,
    /// Messages in the entry if it is a batch.
    pub batch_size: Option<i32>,
    /// The payload (a batch's payload for a batch), without the frame's headers.
    pub data: Bytes,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastMessageId {
    pub ledger_id: i64,
    pub entry_id: i64,
    pub partition_index: i32,
}

/// The entry at `p` as the admin API shows it: metadata and payload.
fn peeked_at(log: &kilonova_storage::ManagedLog, p: Position) -> Result<Peeked, BrokerError> {
    let entry = log.read_entry(p)?;
    let payload = frame::decode_payload(entry.data)
        .map_err(|e| BrokerError::Metadata(format!("entry {} is unreadable: {e}", pos(p))))?;
    let m = payload.metadata;
    Ok(Peeked {
        position: p,
        publish_time_ms: entry.publish_time_ms,
        producer_name: m.producer_name,
        sequence_id: m.sequence_id,
        properties: m
            .properties
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect(),
        batch_size: m.num_messages_in_batch,
        data: payload.data,
    })
}

/// A client-given position, refused if it lies past the log's end (a cursor
/// there would skip every message still to come).
fn within_log(log: &kilonova_storage::ManagedLog, p: Position) -> Result<Position, BrokerError> {
    if p > log.end_position() {
        return Err(BrokerError::Precondition(format!(
            "position {} is past the end of the topic ({})",
            pos(p),
            pos(log.end_position())
        )));
    }
    Ok(p)
}

fn pos(p: Position) -> String {
    format!("{}:{}", p.segment, p.entry)
}

impl Topic {
    /// Answers an admin request. `Unload` and `Delete` are handled by the
    /// serving loop (they end the task); here they only check.
    pub(super) fn admin(&mut self, request: AdminRequest) -> Result<AdminReply, BrokerError> {
        match request {
            AdminRequest::Stats => Ok(AdminReply::Stats(Box::new(self.stats()))),
            AdminRequest::InternalStats => {
                Ok(AdminReply::InternalStats(Box::new(self.internal_stats())))
            }
            AdminRequest::Subscriptions => Ok(AdminReply::Names(self.subscription_names())),
            AdminRequest::CreateSubscription { name, start } => {
                self.create_subscription(name, start)
            }
            AdminRequest::DeleteSubscription { name, force } => {
                self.delete_subscription(&name, force)?;
                Ok(AdminReply::Done)
            }
            AdminRequest::Skip {
                subscription,
                count,
            } => {
                self.check_subscription(&subscription)?;
                let log = self.persistent_log("skip")?;
                log.skip(&subscription, count)?;
                self.after_cursor_moved(&subscription, false);
                Ok(AdminReply::Done)
            }
            AdminRequest::ResetCursor { subscription, to } => self.reset_cursor(subscription, to),
            AdminRequest::Expire {
                subscription,
                seconds,
            } => self.expire_messages(subscription, seconds),
            AdminRequest::Peek { subscription, n } => self.peek(subscription, n),
            AdminRequest::ClearBacklog { subscription } => self.clear_backlog(subscription),
            AdminRequest::Offload { before } => {
                self.offload_before(before).map(|()| AdminReply::Done)
            }
            AdminRequest::OffloadStatus => Ok(AdminReply::Offload(self.offload_status())),
            AdminRequest::MoveSharedRuns { base } => {
                self.move_shared_runs(&base).map(|()| AdminReply::Done)
            }
            AdminRequest::ReplicatedSubscription { subscription, set } => self
                .replicated_subscription(&subscription, set)
                .map(AdminReply::Flag),
            AdminRequest::Examine { from_latest, n } => self.examine(from_latest, n),
            AdminRequest::ReadEntry { position } => {
                let log = self.persistent_log("reading a message by id")?;
                if !log.is_readable(position) {
                    return Ok(AdminReply::Peeked(None));
                }
                Ok(AdminReply::Peeked(Some(peeked_at(log, position)?)))
            }
            AdminRequest::LastMessageId => {
                Ok(AdminReply::LastMessageId(self.last_message_id_stats()))
            }
            AdminRequest::Unload | AdminRequest::Handover { .. } => Ok(AdminReply::Done),
            AdminRequest::Terminate | AdminRequest::PrepareHandover => Err(
                BrokerError::NotAllowed("answered by the serving loop".into()),
            ),
            AdminRequest::AnalyzeBacklog {
                subscription,
                step,
                max_entries,
            } => self.analyze_backlog_step(&subscription, step, max_entries),
            AdminRequest::Compact => {
                self.start_compaction()?;
                Ok(AdminReply::Done)
            }
            AdminRequest::CompactionStatus => Ok(AdminReply::Compaction(self.compaction.status())),
            AdminRequest::Delete { force } => {
                if !force && !self.is_idle() {
                    return Err(BrokerError::Precondition(format!(
                        "topic {} has connected producers or consumers (use force)",
                        self.full_name
                    )));
                }
                Ok(AdminReply::Done)
            }
            AdminRequest::InactiveCheck { min_inactive }
            | AdminRequest::DeleteIfInactive { min_inactive } => {
                if !self.deletable_now(min_inactive) {
                    return Err(BrokerError::Precondition(format!(
                        "topic {} is in use",
                        self.full_name
                    )));
                }
                Ok(AdminReply::Done)
            }
        }
    }

    /// A durable subscription without consumers, starting at `start`.
    fn create_subscription(
        &mut self,
        name: String,
        start: ResetTo,
    ) -> Result<AdminReply, BrokerError> {
        if self.subscription_names().contains(&name) {
            return Err(BrokerError::Conflict(format!(
                "subscription {name} already exists on {}",
                self.full_name
            )));
        }
        let log = self.persistent_log("subscriptions without consumers")?;
        let initial = match start {
            ResetTo::Earliest => InitialPosition::Earliest,
            ResetTo::Latest => InitialPosition::Latest,
            ResetTo::Position(p) => InitialPosition::At(within_log(log, p)?),
            ResetTo::PublishTime(ms) => InitialPosition::At(log.position_of_publish_time(ms)?),
        };
        log.open_cursor(&name, initial, true)?;
        self.touch_subscription(&name);
        Ok(AdminReply::Done)
    }

    /// Moves the subscription's cursor; its consumers reconnect and read from there.
    fn reset_cursor(
        &mut self,
        subscription: String,
        to: ResetTo,
    ) -> Result<AdminReply, BrokerError> {
        self.check_subscription(&subscription)?;
        let log = self.persistent_log("reset-cursor")?;
        let target = match to {
            ResetTo::PublishTime(ms) => log.position_of_publish_time(ms)?,
            ResetTo::Position(p) => within_log(log, p)?,
            ResetTo::Earliest => log.first_position(),
            ResetTo::Latest => log.end_position(),
        };
        log.reset_cursor(&subscription, target)?;
        self.after_cursor_moved(&subscription, true);
        Ok(AdminReply::Done)
    }

    /// Acknowledges messages older than `seconds` (one subscription's, or all).
    fn expire_messages(
        &mut self,
        subscription: Option<String>,
        seconds: u64,
    ) -> Result<AdminReply, BrokerError> {
        if let Some(s) = &subscription {
            self.check_subscription(s)?;
        }
        let now_ms = self.broker.clock().now_ms();
        let log = self.persistent_log("expiry")?;
        log.expire_cursors(
            now_ms,
            seconds.saturating_mul(1000),
            subscription.as_deref(),
        )?;
        let names = match subscription {
            Some(s) => vec![s],
            None => self.subscriptions.keys().cloned().collect(),
        };
        for n in names {
            self.after_cursor_moved(&n, false);
        }
        Ok(AdminReply::Done)
    }

    /// The subscription's `n`-th unacknowledged message, if there is one.
    fn peek(&mut self, subscription: String, n: u64) -> Result<AdminReply, BrokerError> {
        self.check_subscription(&subscription)?;
        let log = self.persistent_log("peek")?;
        let p = match log.nth_unacked(&subscription, n)? {
            Some((p, found)) if found == n => p,
            _ => return Ok(AdminReply::Peeked(None)),
        };
        Ok(AdminReply::Peeked(Some(peeked_at(log, p)?)))
    }

    /// Acknowledges every entry published so far, on `subscription` or on
    /// every subscription; consumers stay connected and get what comes next.
    fn clear_backlog(&mut self, subscription: Option<String>) -> Result<AdminReply, BrokerError> {
        if let Some(s) = &subscription {
            self.check_subscription(s)?;
        }
        let names = match subscription {
            Some(s) => vec![s],
            None => self.subscription_names(),
        };
        let log = self.persistent_log("clear-backlog")?;
        let Some(last) = log.last_position() else {
            return Ok(AdminReply::Done);
        };
        for name in &names {
            if log.has_cursor(name) {
                log.ack_cumulative(name, last)?;
            }
        }
        for name in &names {
            self.after_cursor_moved(name, false);
        }
        Ok(AdminReply::Done)
    }

    /// One step of a backlog scan: at most `max_entries` entries read before
    /// the topic serves again.
    /// Whether `subscription` is replicated, after marking it `set`.
    fn replicated_subscription(
        &mut self,
        subscription: &str,
        set: Option<bool>,
    ) -> Result<bool, BrokerError> {
        let enabled = self.broker.config().enable_replicated_subscriptions;
        let log = self.persistent_log("replicated subscriptions")?;
        if !log.has_cursor(subscription) || !super::replication::is_subscription(subscription) {
            return Err(BrokerError::SubscriptionNotFound(subscription.to_string()));
        }
        if let Some(on) = set {
            if on && !enabled {
                return Err(BrokerError::NotAllowed(
                    "replicated subscriptions are disabled on this broker (enable_replicated_subscriptions)"
                        .into(),
                ));
            }
            log.set_cursor_replicated(subscription, on)?;
            log.persist_cursors()?;
            if let Some(sub) = self.subscriptions.get_mut(subscription) {
                sub.replicated = on;
            }
            tracing::info!(topic = %self.full_name, subscription, replicated = on, "replicated subscription status set");
        }
        let log = self.persistent_log("replicated subscriptions")?;
        Ok(log.cursor_info(subscription)?.replicated)
    }

    fn analyze_backlog_step(
        &mut self,
        subscription: &str,
        step: BacklogStep,
        max_entries: u64,
    ) -> Result<AdminReply, BrokerError> {
        self.check_subscription(subscription)?;
        let log = self.persistent_log("analyze-backlog")?;
        let mut scan = match step {
            BacklogStep::Start(start) => Box::new(log.backlog_scan(subscription, start)?),
            BacklogStep::Continue(scan) => scan,
        };
        let done = log.scan_backlog(&mut scan, max_entries)?;
        Ok(AdminReply::BacklogScan { scan, done })
    }

    /// The `n`-th entry from the first stored one or back from the last.
    fn examine(&mut self, from_latest: bool, n: u64) -> Result<AdminReply, BrokerError> {
        let log = self.persistent_log("examine-message")?;
        match log.nth_entry(from_latest, n.saturating_sub(1)) {
            Some(p) if log.is_readable(p) => Ok(AdminReply::Peeked(Some(peeked_at(log, p)?))),
            _ => Ok(AdminReply::Peeked(None)),
        }
    }

    /// The last message's id, as the admin API names it.
    pub(super) fn last_message_id_stats(&self) -> LastMessageId {
        let (ledger_id, entry_id) = match self.log.as_ref() {
            Some(log) => match log.last_position() {
                Some(p) => (p.segment as i64, p.entry as i64),
                None => (log.end_position().segment as i64, -1),
            },
            None => (0, self.next_transient_entry as i64 - 1),
        };
        LastMessageId {
            ledger_id,
            entry_id,
            partition_index: self.name.partition().map_or(-1, |p| p as i32),
        }
    }

    fn persistent_log(
        &mut self,
        what: &str,
    ) -> Result<&mut kilonova_storage::ManagedLog, BrokerError> {
        self.log.as_mut().ok_or_else(|| {
            BrokerError::NotAllowed(format!("{what} is not supported on non-persistent topics"))
        })
    }

    /// Every subscription: with consumers now, or with a durable cursor.
    fn subscription_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.subscriptions.keys().cloned().collect();
        if let Some(log) = &self.log {
            let cursors = log.cursor_names().into_iter();
            names.extend(cursors.filter(|c| super::replication::is_subscription(c)));
        }
        names.sort();
        names.dedup();
        names
    }

    fn check_subscription(&self, name: &str) -> Result<(), BrokerError> {
        if self.subscription_names().iter().any(|n| n == name) {
            Ok(())
        } else {
            Err(BrokerError::SubscriptionNotFound(format!(
                "{name} on {}",
                self.full_name
            )))
        }
    }

    fn delete_subscription(&mut self, name: &str, force: bool) -> Result<(), BrokerError> {
        self.check_subscription(name)?;
        let consumers: Vec<_> = self
            .subscriptions
            .get(name)
            .map(|s| s.consumers.iter().map(|c| (c.key, c.out.clone())).collect())
            .unwrap_or_default();
        if !consumers.is_empty() && !force {
            return Err(BrokerError::Precondition(format!(
                "subscription {name} has connected consumers (use force)"
            )));
        }
        for (key, out) in consumers {
            out.command(commands::close_consumer(key.id, None));
            self.consumer_subs.remove(&key);
        }
        self.subscriptions.remove(name);
        if let Some(log) = self.log.as_mut() {
            log.delete_cursor(name)?;
        }
        Ok(())
    }

    /// After an admin moved a cursor: forget what was dispatched and, for a
    /// reset, disconnect the consumers so they read again from the cursor
    /// (as Pulsar does); otherwise dispatch what they may now take.
    pub(super) fn after_cursor_moved(&mut self, name: &str, disconnect: bool) {
        if !disconnect {
            // Skip / expire moved the floor only: what is in flight or held
            // after it stays (the read position did not move).
            let floor = self
                .log
                .as_ref()
                .map(|l| crate::entry_source::first_unacked(l, name));
            if let (Some(sub), Some(floor)) = (self.subscriptions.get_mut(name), floor) {
                sub.forget_before(floor);
            }
            self.dispatch_sub(name);
            return;
        }
        self.disconnect_for_reset(name);
    }

    fn stats(&mut self) -> TopicStats {
        // Rates older than a frequent tick leaves them (a topic ticking at
        // the quiet pace, or hurried back from it) are computed when asked.
        if self
            .pace
            .stale(self.rates_since.0, self.broker.clock().now())
        {
            self.update_backlog_and_rates();
        }
        let (msg_in, bytes_in, msg_out, bytes_out) = self.metrics.totals();
        let rates = self.metrics.rates();
        let mut subscriptions = BTreeMap::new();
        let mut backlog_size = 0;
        for name in self.subscription_names() {
            let info = self.log.as_ref().and_then(|l| l.cursor_info(&name).ok());
            let backlog = info.as_ref().map_or(0, |i| i.backlog_entries);
            // Bytes, as Pulsar's: the largest subscription backlog.
            let bytes = self
                .log
                .as_ref()
                .and_then(|l| l.backlog_bytes(&name).ok())
                .unwrap_or(0);
            backlog_size = backlog_size.max(bytes);
            let sub = self.subscriptions.get(&name);
            let mut stats = subscription_stats(sub, backlog);
            stats.backlog_size = bytes;
            stats.is_replicated = info.is_some_and(|i| i.replicated);
            subscriptions.insert(name, stats);
        }
        let mut publishers: Vec<PublisherStats> = self
            .producers
            .iter()
            .map(|((_, id), p)| (id, p, p.published()))
            .map(|(id, p, (msg_in, bytes_in))| PublisherStats {
                producer_id: *id,
                producer_name: p.name.clone(),
                access_mode: if p.exclusive { "Exclusive" } else { "Shared" }.into(),
                msg_in_counter: msg_in,
                bytes_in_counter: bytes_in,
                msg_rate_in: p.meter_in.msgs.rate(),
                msg_throughput_in: p.meter_in.bytes.rate(),
                average_msg_size: if msg_in > 0 {
                    bytes_in as f64 / msg_in as f64
                } else {
                    0.0
                },
                address: p.client.address.to_string(),
                connected_since: crate::clock::utc_time_ms(p.client.connected_since_ms),
                client_version: p.client.client_version.to_string(),
            })
            .collect();
        publishers.sort_by_key(|p| p.producer_id);
        TopicStats {
            msg_rate_in: rates.msg_in,
            msg_throughput_in: rates.bytes_in,
            msg_rate_out: rates.msg_out,
            msg_throughput_out: rates.bytes_out,
            msg_in_counter: msg_in,
            bytes_in_counter: bytes_in,
            msg_out_counter: msg_out,
            bytes_out_counter: bytes_out,
            average_msg_size: if msg_in > 0 {
                bytes_in as f64 / msg_in as f64
            } else {
                0.0
            },
            storage_size: self.log.as_ref().map_or(0, |l| l.size_bytes()),
            offloaded_storage_size: self.log.as_ref().map_or(0, |l| l.offloaded_bytes()),
            backlog_size,
            publishers,
            subscriptions,
            replication: self.replication_stats(),
        }
    }

    /// Refreshes what `/metrics` shows of each subscription (at most
    /// [`crate::metrics::MAX_SUBSCRIPTION_SERIES_PER_TOPIC`], by name).
    pub(super) fn sample_subscriptions(&self) {
        let mut names = self.subscription_names();
        names.truncate(crate::metrics::MAX_SUBSCRIPTION_SERIES_PER_TOPIC);
        let samples = names
            .into_iter()
            .map(|name| {
                let backlog = self
                    .log
                    .as_ref()
                    .and_then(|l| l.cursor_info(&name).ok())
                    .map_or(0, |i| i.backlog_entries);
                let sub = self.subscriptions.get(&name);
                crate::metrics::SubscriptionSample {
                    backlog,
                    delayed: sub.map_or(0, |s| s.delayed_count() as u64),
                    msg_rate_out: sub.map_or(0.0, |s| s.meter_out.msgs.rate()),
                    msg_throughput_out: sub.map_or(0.0, |s| s.meter_out.bytes.rate()),
                    msg_rate_redeliver: sub.map_or(0.0, |s| s.meter_redeliver.rate()),
                    unacked: sub.map_or(0, Subscription::unacked),
                    blocked: sub.is_some_and(Subscription::blocked_on_unacked),
                    consumers: sub.map_or(0, |s| s.consumers.len() as u64),
                    msg_out: sub.map_or(0, |s| s.msg_out),
                    name,
                }
            })
            .collect();
        self.metrics.set_subscriptions(samples);
    }

    fn internal_stats(&self) -> InternalStats {
        let Some(log) = self.log.as_ref() else {
            return InternalStats::default();
        };
        let ledgers: Vec<LedgerInfo> = log
            .segments()
            .iter()
            .map(|s| {
                let info = log.segment_info(s.id);
                let offloaded = log.offloaded(s.id);
                LedgerInfo {
                    ledger_id: s.id,
                    entries: info
                        .as_ref()
                        .map(|i| i.entries)
                        .or(offloaded.map(|o| o.entries))
                        .unwrap_or(0),
                    size: info
                        .as_ref()
                        .map(|i| i.bytes)
                        .or(offloaded.map(|o| o.bytes))
                        .unwrap_or(0),
                    first_message_index: s.first_message_index,
                    created_ms: s.created_ms,
                    offloaded: offloaded.is_some(),
                    local: info.is_some(),
                }
            })
            .collect();
        let mut cursors = BTreeMap::new();
        for name in log.cursor_names() {
            if let Ok(c) = log.cursor_info(&name) {
                let md = c
                    .mark_delete
                    .map_or_else(|| format!("{}:-1", log.first_position().segment), pos);
                cursors.insert(
                    name.clone(),
                    CursorStats {
                        mark_delete_position: md,
                        read_position: pos(c.read_position),
                        individually_deleted_ranges: c.ack_ranges,
                        messages_consumed_counter: self
                            .subscriptions
                            .get(&name)
                            .map_or(0, |s| s.msg_out),
                        number_of_entries_since_first_not_acked_message: c.backlog_entries,
                        durable: c.durable,
                    },
                );
            }
        }
        InternalStats {
            entries_added_counter: log.entries(),
            number_of_entries: ledgers.iter().map(|l| l.entries).sum(),
            total_size: log.size_bytes(),
            current_ledger_entries: ledgers.last().map_or(0, |l| l.entries),
            ledgers,
            cursors,
        }
    }
}

/// The stats of a topic that is not loaded, from its log's stored state:
/// storage size, and each durable subscription's backlog as last persisted.
/// Counters, rates, publishers and consumers are those of an idle topic: none.
pub(crate) fn stored_stats(stored: &kilonova_storage::StoredSummary) -> TopicStats {
    let subscriptions: BTreeMap<String, SubscriptionStats> = stored
        .cursors
        .iter()
        .filter(|c| super::replication::is_subscription(&c.name))
        .map(|c| {
            let mut stats = subscription_stats(None, c.backlog_entries);
            stats.backlog_size = c.backlog_bytes;
            stats.is_replicated = c.replicated;
            (c.name.clone(), stats)
        })
        .collect();
    TopicStats {
        storage_size: stored.size_bytes,
        backlog_size: stored
            .cursors
            .iter()
            .map(|c| c.backlog_bytes)
            .max()
            .unwrap_or(0),
        subscriptions,
        ..TopicStats::default()
    }
}

fn subscription_stats(sub: Option<&Subscription>, backlog: u64) -> SubscriptionStats {
    let Some(sub) = sub else {
        return SubscriptionStats {
            kind: SubKind::Exclusive.as_str().into(),
            is_durable: true,
            msg_backlog: backlog,
            ..Default::default()
        };
    };
    SubscriptionStats {
        kind: sub.kind.as_str().into(),
        is_durable: sub.durable,
        is_replicated: sub.replicated,
        msg_backlog: backlog,
        msg_delayed: sub.delayed_count() as u64,
        backlog_size: 0,
        msg_out_counter: sub.msg_out,
        bytes_out_counter: sub.bytes_out,
        msg_rate_out: sub.meter_out.msgs.rate(),
        msg_throughput_out: sub.meter_out.bytes.rate(),
        msg_rate_redeliver: sub.meter_redeliver.rate(),
        unacked_messages: sub.unacked(),
        blocked_subscription_on_unacked_msgs: sub.blocked_on_unacked(),
        last_acked_timestamp: sub.last_acked_ms.unwrap_or(0),
        key_shared_mode: sub.key_shared_mode().map(str::to_owned),
        consumers: sub
            .consumers
            .iter()
            .map(|c| ConsumerStats {
                consumer_name: c.name.clone(),
                available_permits: c.permits,
                msg_out_counter: c.msg_out,
                bytes_out_counter: c.bytes_out,
                msg_rate_out: c.meter_out.msgs.rate(),
                msg_throughput_out: c.meter_out.bytes.rate(),
                msg_rate_redeliver: c.meter_redeliver.rate(),
                unacked_messages: c.unacked,
                blocked_consumer_on_unacked_msgs: c.blocked_on_unacked(),
                address: c.client.address.to_string(),
                connected_since: crate::clock::utc_time_ms(c.client.connected_since_ms),
                client_version: c.client.client_version.to_string(),
                key_hash_ranges: sub
                    .key_hash_ranges(c.key)
                    .into_iter()
                    .map(|(s, e)| format!("[{s}, {e}]"))
                    .collect(),
            })
            .collect(),
    }
}
