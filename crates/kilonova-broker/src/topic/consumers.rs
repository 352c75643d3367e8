//! Consuming from a topic: subscribe (creating the cursor), flow permits,
//! acknowledgements, redelivery requests, seek, the last message id,
//! unsubscribe and consumers leaving.

use std::time::Duration;

use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_ack::AckType, command_subscribe::InitialPosition as WireInitial,
    command_subscribe::SubType, CommandAck, CommandAckResponse, CommandGetLastMessageIdResponse,
    CommandSubscribe, KeySharedMode, MessageIdData,
};
use kilonova_storage::{InitialPosition, Position};

use super::{ConnCtx, Topic};
use crate::commands;
use crate::compaction;
use crate::error::BrokerError;
use crate::outbound::Outbound;
use crate::subscription::{Consumer, ConsumerKey, SubKind, Subscription};

impl Topic {
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

    pub(super) fn subscribe(&mut self, conn: ConnCtx, cmd: CommandSubscribe) {
        let request_id = cmd.request_id;
        let out = conn.out.clone();
        match self.try_subscribe(conn, &cmd) {
            Ok(key) => {
                out.command(commands::success(request_id));
                if let Some(sub) = self.subscriptions.get(&cmd.subscription) {
                    sub.announce_active();
                }
                self.announce_end_of_topic(&cmd.subscription);
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
        let read_compacted = cmd.read_compacted.unwrap_or(false);
        if read_compacted && !matches!(kind, SubKind::Exclusive | SubKind::Failover) {
            // Pulsar's answer (NotAllowedError), readers being exclusive.
            return Err(BrokerError::NotAllowed(
                "readCompacted only allowed on failover or exclusive subscriptions".into(),
            ));
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
        self.admit_subscribe(&conn, cmd)?;
        self.admit_consumer(&cmd.subscription)?;
        let durable = cmd.durable.unwrap_or(true) && self.log.is_some();
        tracing::debug!(topic = %self.full_name, subscription = %cmd.subscription, durable, start = ?cmd.start_message_id, "subscribe");
        if !self.subscriptions.contains_key(&cmd.subscription) {
            self.open_subscription(cmd, kind, durable)?;
        } else if let Some(log) = self.log.as_mut() {
            if self
                .subscriptions
                .get(&cmd.subscription)
                .is_some_and(|s| s.consumers.is_empty())
            {
                // The first consumer decides how the subscription reads.
                log.open_cursor_as(
                    &cmd.subscription,
                    InitialPosition::Earliest,
                    durable,
                    read_compacted,
                )?;
                if let Some(sub) = self.subscriptions.get_mut(&cmd.subscription) {
                    sub.reads_compacted = read_compacted;
                }
            }
        }
        self.replicate_if_asked(cmd, durable)?;
        let read_position = self
            .log
            .as_ref()
            .and_then(|l| l.cursor_info(&cmd.subscription).ok())
            .map(|i| i.read_position);
        let consumer = new_consumer(key, conn, cmd, self.broker.clock().now_ms());
        let sub = self
            .subscriptions
            .get_mut(&cmd.subscription)
            .ok_or_else(|| BrokerError::SubscriptionNotFound(cmd.subscription.clone()))?;
        let result = sub.add_consumer(kind, consumer, read_position);
        if result.is_err() && sub.consumers.is_empty() && !sub.durable {
            self.drop_transient_cursors_of(Some(&cmd.subscription));
        }
        result?;
        self.parked_readers.remove(&cmd.subscription);
        self.consumer_subs.insert(key, cmd.subscription.clone());
        // Before the answer: SENDs after it go through the task.
        self.stop_lane();
        self.idle_since = None;
        self.touch_subscription(&cmd.subscription);
        Ok(key)
    }

    /// Creates the subscription (and, on a persistent topic, its cursor:
    /// where a reader asked to start, else the initial position).
    fn open_subscription(
        &mut self,
        cmd: &CommandSubscribe,
        kind: SubKind,
        durable: bool,
    ) -> Result<(), BrokerError> {
        let read_compacted = cmd.read_compacted.unwrap_or(false);
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
            log.open_cursor_as(&cmd.subscription, initial, durable, read_compacted)?;
        }
        let mut sub = Subscription::new(
            cmd.subscription.clone(),
            kind,
            durable,
            self.name.partition(),
            self.metrics.clone(),
        );
        sub.reads_compacted = read_compacted && self.log.is_some();
        sub.rate = super::dispatch::dispatch_limiter(
            self.policies.subscription_dispatch_rate,
            self.broker.clock().now(),
        );
        self.subscriptions.insert(cmd.subscription.clone(), sub);
        Ok(())
    }

    /// A durable subscription's consumer asking for `replicate_subscription_state`
    /// marks it replicated (kept with its cursor; as in Pulsar, asking
    /// again never unmarks it), with replicated subscriptions enabled.
    /// The subscription mirrors its cursor's mark.
    fn replicate_if_asked(
        &mut self,
        cmd: &CommandSubscribe,
        durable: bool,
    ) -> Result<(), BrokerError> {
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        let asked = durable && cmd.replicate_subscription_state == Some(true);
        if asked {
            if self.broker.config().enable_replicated_subscriptions {
                log.set_cursor_replicated(&cmd.subscription, true)?;
            } else {
                tracing::warn!(topic = %self.full_name, subscription = %cmd.subscription, "replicated subscription asked for, but replicated subscriptions are disabled");
            }
        }
        let replicated = log
            .cursor_info(&cmd.subscription)
            .is_ok_and(|i| i.replicated);
        if let Some(sub) = self.subscriptions.get_mut(&cmd.subscription) {
            sub.replicated = replicated;
        }
        Ok(())
    }

    pub(super) fn remove_consumer(&mut self, key: ConsumerKey) {
        let Some(name) = self.consumer_subs.remove(&key) else {
            return;
        };
        let Some(sub) = self.subscriptions.get_mut(&name) else {
            return;
        };
        sub.remove_consumer(key);
        let (durable, empty) = (sub.durable, sub.consumers.is_empty());
        if durable {
            self.touch_subscription(&name);
        }
        if empty {
            if durable {
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

    /// FLOW: the consumer may take `permits` more messages.
    pub(super) fn flow(&mut self, key: ConsumerKey, permits: u32) {
        if let Some(sub) = self.sub_of_mut(key) {
            if let Some(c) = sub.consumer_mut(key) {
                c.permits = c.permits.saturating_add(i64::from(permits));
            }
        }
        self.dispatch_of(key);
    }

    /// REDELIVER_UNACKNOWLEDGED_MESSAGES: the listed entries (all of the
    /// consumer's if none are listed) are sent again.
    pub(super) fn redeliver(
        &mut self,
        key: ConsumerKey,
        ids: &[MessageIdData],
        epoch: Option<u64>,
    ) {
        let positions: Vec<Position> = ids
            .iter()
            .filter_map(|m| self.local_position(Position::new(m.ledger_id, m.entry_id)))
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

    /// The position in this broker's log of the entry message id `p`
    /// names: `p` itself, unless the topic is on shared storage and `p` was
    /// handed out by an earlier owner ([`crate::cluster::message_ids`];
    /// `None` if it names nothing known here).
    fn local_position(&self, p: Position) -> Option<Position> {
        match (&self.shared, &self.log) {
            (Some(shared), Some(log)) => shared.translate(p, log),
            _ => Some(p),
        }
    }

    pub(super) fn ack(&mut self, key: ConsumerKey, ack: CommandAck) {
        let result = self.try_ack(key, &ack);
        if let Err(e) = &result {
            tracing::debug!(topic = %self.full_name, error = %e, "ack refused");
        } else if let Some(name) = self.consumer_subs.get(&key) {
            self.announce_end_of_topic(name);
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
        let now_ms = self.broker.clock().now_ms();
        // With shared storage, an id another owner of the topic handed out
        // names the same entry here; one naming nothing known here is
        // ignored (cluster brokers' segment ids never meet): the message is
        // delivered again, never another acknowledged in its place.
        let local: Vec<Option<Position>> = ack
            .message_id
            .iter()
            .map(|id| self.local_position(Position::new(id.ledger_id, id.entry_id)))
            .collect();
        let (Some(sub), Some(log)) = (self.subscriptions.get_mut(&name), self.log.as_mut()) else {
            return Ok(()); // non-persistent: nothing to acknowledge
        };
        sub.last_acked_ms = Some(now_ms);
        let cumulative = ack.ack_type() == AckType::Cumulative;
        if cumulative && matches!(sub.kind, SubKind::Shared | SubKind::KeyShared) {
            return Err(BrokerError::NotAllowed(
                "cumulative acknowledgement is not allowed on shared and key_shared subscriptions"
                    .into(),
            ));
        }
        let known = ack.message_id.iter().zip(local).filter_map(|(id, p)| {
            if p.is_none() {
                tracing::debug!(topic = %self.full_name, ledger = id.ledger_id, entry = id.entry_id, "acknowledgement of a message id from before the topic moved, unknown here: ignored");
            }
            Some((p?, id.ack_set.as_slice()))
        });
        if !cumulative {
            sub.ack_each(log, known)?;
            return Ok(());
        }
        for (p, ack_set) in known {
            if ack_set.iter().any(|w| *w != 0) {
                // Up to the batch before, and this batch's acknowledged messages.
                if let Some(prev) = p.entry.checked_sub(1) {
                    sub.ack_cumulative(log, Position::new(p.segment, prev))?;
                }
                sub.ack(log, p, ack_set)?;
            } else {
                sub.ack_cumulative(log, p)?;
            }
        }
        Ok(())
    }

    /// SEEK, by message id or publish time. As Pulsar's broker does, the
    /// subscription's consumers are closed *before* the cursor moves and the
    /// answer goes out: a client that hears of the close first treats the
    /// seek as completing with its reconnection and takes the sought id as
    /// where it starts, skipping what precedes it (the C++ client, hearing
    /// the answer first, restarted a reader from the last message it had
    /// taken instead: a seek to the 34th message returned the 3rd). The
    /// cursor is left at the sought entry and the client drops the messages
    /// up to the sought one (all of it, unless it asked for an inclusive
    /// start); an `ack_set` (the Java client's, for a message inside a batch)
    /// marks the batch's messages before it as acknowledged.
    pub(super) fn seek(
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
        let target = match self.seek_target(message_id.as_ref(), publish_time_ms) {
            Ok(t) => t,
            Err(e) => return out.command(commands::broker_error(request_id, &e)),
        };
        self.disconnect_for_reset(&name);
        let ack_set = message_id
            .filter(|id| !id.ack_set.is_empty() && special_position(id).is_none())
            .map(|id| id.ack_set);
        match self.move_cursor(&name, target, ack_set.as_deref()) {
            Ok(()) => out.command(commands::success(request_id)),
            Err(e) => out.command(commands::broker_error(request_id, &e)),
        }
    }

    /// Where a SEEK sends the cursor: the entry of the message id (earliest
    /// and latest as clients encode them), or of the first message published
    /// at or after the time.
    fn seek_target(
        &self,
        message_id: Option<&MessageIdData>,
        publish_time_ms: Option<u64>,
    ) -> Result<Position, BrokerError> {
        let log = self.log.as_ref().ok_or_else(|| {
            BrokerError::NotAllowed("seek is not supported on non-persistent topics".into())
        })?;
        match (message_id, publish_time_ms) {
            (Some(id), _) => Ok(match special_position(id) {
                Some(InitialPosition::Earliest) => log.first_position(),
                Some(_) => log.end_position(),
                // An id from before the topic moved that names nothing
                // here is taken as given: the log places it before or after
                // its own entries.
                None => {
                    let p = Position::new(id.ledger_id, id.entry_id);
                    self.local_position(p).unwrap_or(p)
                }
            }),
            (None, Some(t)) => Ok(log.position_of_publish_time(t)?),
            (None, None) => Err(BrokerError::BadRequest(
                "seek needs a message id or a publish time".into(),
            )),
        }
    }

    /// Resets the cursor to `target`; with an `ack_set` (the messages of the
    /// batch at `target` still unacknowledged), the others count as acknowledged.
    fn move_cursor(
        &mut self,
        name: &str,
        target: Position,
        ack_set: Option<&[i64]>,
    ) -> Result<(), BrokerError> {
        let log = self.log.as_mut().ok_or_else(|| {
            BrokerError::NotAllowed("seek is not supported on non-persistent topics".into())
        })?;
        log.reset_cursor(name, target)?;
        // Only on the very entry sought: a target past a segment's end or the
        // log's is normalised to another entry, which the bits do not describe.
        if let (Some(bits), Some(sub)) = (ack_set, self.subscriptions.get_mut(name)) {
            if log.ack_floor(name)? == target {
                sub.ack(log, target, bits)?;
            }
        }
        Ok(())
    }

    /// Closes the subscription's consumers because its cursor moves (seek,
    /// reset-cursor): they reconnect and read from the new position, with
    /// nothing of what was in flight counting any more. A reader's
    /// non-durable subscription is kept for its return, since Pulsar clients
    /// resubscribe a reader after a seek by time with no start position (a
    /// Pulsar broker keeps the cursor the same way); it is dropped if the
    /// reader has not come back within [`READER_RETURN_GRACE`].
    pub(super) fn disconnect_for_reset(&mut self, name: &str) {
        let Some(sub) = self.subscriptions.get_mut(name) else {
            return;
        };
        sub.reset();
        let keys: Vec<ConsumerKey> = sub.consumers.iter().map(|c| c.key).collect();
        for k in keys {
            if let Some(out) = sub.consumer_mut(k).map(|c| c.out.clone()) {
                out.command(commands::close_consumer(k.id, None));
            }
            sub.remove_consumer(k);
            self.consumer_subs.remove(&k);
        }
        if !sub.durable && self.log.is_some() {
            self.parked_readers
                .insert(name.to_owned(), self.broker.clock().now());
        }
    }

    /// Drops the parked readers' subscriptions (see [`Self::disconnect_for_reset`])
    /// whose reader did not come back in time.
    pub(super) fn drop_unclaimed_readers(&mut self) {
        if self.parked_readers.is_empty() {
            return;
        }
        let now = self.broker.clock().now();
        let expired: Vec<String> = self
            .parked_readers
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= READER_RETURN_GRACE)
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            self.parked_readers.remove(&name);
            let unclaimed = self
                .subscriptions
                .get(&name)
                .is_some_and(|s| s.consumers.is_empty() && !s.durable);
            if unclaimed {
                tracing::debug!(topic = %self.full_name, subscription = %name, "reader did not come back after a seek: its cursor is dropped");
                self.drop_transient_cursors_of(Some(&name));
            }
        }
    }

    pub(super) fn last_message_id(&mut self, key: ConsumerKey, request_id: u64) {
        let Some(out) = self.consumer_out(key) else {
            return;
        };
        let name = self.consumer_subs.get(&key).cloned().unwrap_or_default();
        let max_batch_bytes = self.max_batch_bytes();
        let (last, mark_delete) = match self.log.as_ref() {
            Some(log) => {
                // A compacted reader's last message is the last it can read
                // (Pulsar's last dispatchable position): else a reader whose
                // topic ends with compacted-out messages would wait for them.
                let last_position = log
                    .last_position_for(&name)
                    .unwrap_or_else(|_| log.last_position())
                    .and_then(|p| last_dispatchable(log, &name, p));
                let last = match last_position {
                    Some(p) => {
                        let entry = log
                            .read_entry_for(&name, p)
                            .or_else(|_| log.read_entry(p))
                            .ok();
                        // A batch of the compacted view ends at its last kept
                        // message (Pulsar's fix for readers waiting forever on
                        // a compacted-out last message).
                        let kept = entry
                            .as_ref()
                            .filter(|e| log.compacted_horizon().is_some_and(|h| e.position <= h))
                            .and_then(|e| compaction::retained_ack_set(e, max_batch_bytes))
                            .and_then(|set| compaction::last_in_ack_set(&set));
                        let batch_index = kept.or_else(|| {
                            entry
                                .and_then(|e| frame::decode_payload(e.data).ok())
                                .and_then(|pl| {
                                    pl.metadata.num_messages_in_batch.map(|n| (n - 1).max(0))
                                })
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

    pub(super) fn unsubscribe(&mut self, key: ConsumerKey, request_id: u64) {
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
}

/// How long a reader's non-durable subscription outlives a seek that closed
/// its consumer, waiting for the reader to resubscribe (clients reconnect
/// within a second or so; their back-off grows to a minute only while the
/// broker cannot be reached).
pub(super) const READER_RETURN_GRACE: Duration = Duration::from_secs(30);

/// The consumer a SUBSCRIBE describes, with no permits yet, registered at `now_ms`.
fn new_consumer(key: ConsumerKey, conn: ConnCtx, cmd: &CommandSubscribe, now_ms: u64) -> Consumer {
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
    Consumer {
        key,
        name: cmd.consumer_name.clone().unwrap_or_default(),
        priority: cmd.priority_level.unwrap_or(0),
        permits: 0,
        out: conn.out,
        epoch: cmd.consumer_epoch,
        wants_entry_metadata: conn.wants_entry_metadata,
        hears_end_of_topic: conn.hears_end_of_topic,
        joined_at: None,
        sticky_ranges,
        msg_out: 0,
        bytes_out: 0,
        msg_redeliver: 0,
        unacked: 0,
        client: conn.client.registered_at(now_ms),
        meter_out: Default::default(),
        meter_redeliver: Default::default(),
        max_unacked: None,
        held: false,
    }
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

/// Markers at the end of a log looked past at most, for the last message id.
const MARKERS_LOOKED_PAST: usize = 1_000;

/// The last entry at or before `last` that is not a marker, as the
/// cursor reads (Pulsar's last dispatchable position): a reader asking
/// whether a message is available must not wait for a marker it never
/// gets. `None` when only markers are there.
fn last_dispatchable(
    log: &kilonova_storage::ManagedLog,
    cursor: &str,
    last: Position,
) -> Option<Position> {
    let mut p = last;
    for _ in 0..MARKERS_LOOKED_PAST {
        let Ok(entry) = log.read_entry_for(cursor, p).or_else(|_| log.read_entry(p)) else {
            return Some(p);
        };
        if kilonova_pulsar_protocol::markers::marker_type(&entry.data).is_none() {
            return Some(p);
        }
        p = log.previous_position(p)?;
    }
    Some(p)
}
