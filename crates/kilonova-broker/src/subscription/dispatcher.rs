//! Which consumer gets each entry, and when: a dispatch pass sends what the
//! consumers have permits for, within a rate budget and what their
//! connections can take, reading through an [`EntrySource`].
//!
//! * Exclusive / Failover: the active consumer reads the cursor in order; a
//!   change of active consumer rewinds the cursor first.
//! * Shared: redeliveries first (oldest first), then new entries, round robin
//!   over the consumers with permits, higher priority (lower level) first.
//! * Key_Shared: the consumer owning the entry's key slot, unless it is a
//!   newcomer whose joining position is not yet acknowledged up to; an entry
//!   whose owner cannot take it waits in the redelivery set.
//! * Delayed delivery (shared / key_shared): entries due later are held.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::markers::{self, Marker};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, BrokerEntryMetadata, CommandMessage, MarkerType,
};
use kilonova_storage::{Entry, Position, StorageError};

use super::{Consumer, Held, SubKind, Subscription};
use crate::commands;
use crate::compaction;
use crate::entry_source::{first_unacked, EntrySource};
use crate::key_shared;
use crate::outbound::MessageHead;

/// What a subscription needs from the topic to dispatch.
pub(crate) struct DispatchLimits {
    pub batch_entries: usize,
    pub max_redelivery_backlog: usize,
    /// Shared / key_shared: hold entries whose delivery time is after `now_ms`.
    pub delayed_delivery: bool,
    pub max_delayed: usize,
    pub now_ms: u64,
    /// Notified when a consumer held back for its connection's full outbound
    /// queue may take more (the topic then dispatches again).
    pub drained: Arc<Notify>,
    /// A consumer, or the subscription, gets nothing while it has this many
    /// messages unacknowledged (acknowledgements dispatch again).
    pub max_unacked_per_consumer: Option<u64>,
    pub max_unacked_per_subscription: Option<u64>,
    /// The topic's compacted view, if it has one: a compacted reader's
    /// entries up to its horizon come from the view.
    pub compacted: Option<CompactedLimits>,
    /// Snapshots a replicated subscription keeps at most.
    pub max_cached_snapshots: usize,
}

/// What a compacted reader's dispatch needs to know of the compacted view.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CompactedLimits {
    pub horizon: Position,
    /// The largest batch, uncompressed, looked into for compacted-out messages.
    pub max_batch_bytes: usize,
}

/// What a dispatch pass may send under the dispatch rates (`None`: no limit in
/// that dimension). The entry that crosses a limit still goes; the rate
/// limiter carries the excess as debt.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub messages: Option<u64>,
    pub bytes: Option<u64>,
}

impl Budget {
    pub(crate) const UNLIMITED: Budget = Budget {
        messages: None,
        bytes: None,
    };

    fn exhausted(&self) -> bool {
        self.messages == Some(0) || self.bytes == Some(0)
    }

    /// Entries worth reading for `want` (one entry may hold several messages).
    fn cap_entries(&self, want: usize) -> usize {
        self.messages
            .map_or(want, |m| want.min(usize::try_from(m).unwrap_or(usize::MAX)))
    }

    fn spend(&mut self, entry: &Entry) {
        if let Some(m) = self.messages.as_mut() {
            *m = m.saturating_sub(u64::from(entry.message_count));
        }
        if let Some(b) = self.bytes.as_mut() {
            *b = b.saturating_sub(entry.data.len() as u64);
        }
    }
}

impl Subscription {
    /// Whether some consumer may be sent an entry now.
    fn has_permits(&self) -> bool {
        self.consumers.iter().any(Consumer::ready)
    }

    /// Bytes the ready consumers' connections can still take: a read stops
    /// there (after one entry at least: a queue may cross its bound by one),
    /// so what permits allow is never read into memory beyond it.
    fn room_bytes(&self) -> usize {
        let single = self.kind.single_active();
        self.consumers
            .iter()
            .filter(|c| c.ready() && (!single || self.active == Some(c.key)))
            .map(|c| c.out.room_bytes())
            .sum()
    }

    /// Reads up to `want` entries for the cursor, as many as the consumers'
    /// connections can take.
    fn read_next(
        &self,
        log: &mut impl EntrySource,
        want: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        log.read_next_within(&self.name, want, self.room_bytes())
    }

    /// Sends what the consumers have permits for. Returns how many entries went out.
    pub(crate) fn dispatch(
        &mut self,
        log: &mut impl EntrySource,
        limits: &DispatchLimits,
        mut budget: Budget,
    ) -> Result<usize, StorageError> {
        if !self.kind.single_active() {
            self.release_due(limits.now_ms);
        }
        if self.consumers.is_empty() || budget.exhausted() {
            return Ok(0);
        }
        // Whose connection can take more is decided once for the pass (and
        // after each send), so a queue draining meanwhile cannot let a later
        // entry of a key pass an earlier one held for redelivery.
        self.max_unacked = limits.max_unacked_per_subscription;
        for c in &mut self.consumers {
            c.max_unacked = limits.max_unacked_per_consumer;
            c.check_room(&limits.drained);
        }
        if self.blocked_on_unacked() {
            return Ok(0);
        }
        if self.kind.single_active() {
            if self.needs_rewind {
                self.rewind(Some(&mut *log));
            }
            return self.dispatch_single(log, limits, budget);
        }
        let floor = first_unacked(log, &self.name);
        // Redeliveries first, oldest first, then new entries.
        let sent = self.dispatch_replay(log, limits, &mut budget, floor)?;
        Ok(sent + self.dispatch_new(log, limits, &mut budget, floor)?)
    }

    /// Sends entries waiting for redelivery, oldest first, to consumers that
    /// can take them now.
    fn dispatch_replay(
        &mut self,
        log: &mut impl EntrySource,
        limits: &DispatchLimits,
        budget: &mut Budget,
        floor: Position,
    ) -> Result<usize, StorageError> {
        let mut sent = 0;
        let replay: Vec<(Position, Option<u32>)> =
            self.replay.iter().map(|(p, s)| (*p, *s)).collect();
        for (p, slot) in replay {
            if !self.has_permits() || budget.exhausted() {
                break;
            }
            if let Some(slot) = slot {
                if self.key_shared_target(slot, p, floor).is_none() {
                    continue;
                }
            }
            let entry = match log.read_entry(p) {
                Ok(e) => e,
                Err(StorageError::NoSuchEntry { .. }) => {
                    // Trimmed or acknowledged meanwhile.
                    self.forget(p);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(i) = self.pick(&entry, floor) {
                self.replay.remove(&p);
                self.send(i, &entry, limits);
                budget.spend(&entry);
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Reads and sends new entries while consumers have permits (holding
    /// delayed ones, keeping those a key_shared owner cannot take for later).
    fn dispatch_new(
        &mut self,
        log: &mut impl EntrySource,
        limits: &DispatchLimits,
        budget: &mut Budget,
        floor: Position,
    ) -> Result<usize, StorageError> {
        let mut sent = 0;
        while self.has_permits()
            && !budget.exhausted()
            && self.replay.len() < limits.max_redelivery_backlog
        {
            let want = budget.cap_entries(
                self.consumers
                    .iter()
                    .filter(|c| c.ready())
                    .map(|c| c.permits.max(0) as usize)
                    .sum::<usize>()
                    .min(limits.batch_entries),
            );
            let entries = self.read_next(log, want)?;
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                if budget.exhausted() || !self.has_permits() {
                    // Over the byte rate, or no consumer can take more now:
                    // what was read goes back to be read again.
                    log.rewind_read_to(&self.name, entry.position)?;
                    break;
                }
                if self.take_marker(log, &entry, limits)? {
                    continue;
                }
                if limits.delayed_delivery {
                    if let Some(t) = deliver_at_ms(&entry).filter(|t| *t > limits.now_ms) {
                        match self.hold(t, entry.position, limits.max_delayed) {
                            Held::Yes => continue,
                            Held::InsteadOf(later) => {
                                self.replay.insert(later, None);
                                continue;
                            }
                            // Over the cap and due after everything held: sent now.
                            Held::No => {}
                        }
                    }
                }
                match self.pick(&entry, floor) {
                    Some(i) => {
                        self.send(i, &entry, limits);
                        budget.spend(&entry);
                        sent += 1;
                    }
                    None => {
                        let slot = self.slot_of(&entry);
                        self.replay.insert(entry.position, slot);
                    }
                }
            }
        }
        Ok(sent)
    }

    fn dispatch_single(
        &mut self,
        log: &mut impl EntrySource,
        limits: &DispatchLimits,
        mut budget: Budget,
    ) -> Result<usize, StorageError> {
        let Some(i) = self
            .active
            .and_then(|k| self.consumers.iter().position(|c| c.key == k))
        else {
            return Ok(0);
        };
        let mut sent = 0;
        while let Some(permits) = self
            .consumers
            .get(i)
            .filter(|c| c.ready())
            .map(|c| c.permits)
        {
            if budget.exhausted() {
                break;
            }
            let want = budget.cap_entries((permits as usize).min(limits.batch_entries));
            let entries = self.read_next(log, want)?;
            if entries.is_empty() {
                break;
            }
            for entry in &entries {
                if budget.exhausted() || self.consumers.get(i).is_none_or(|c| c.held) {
                    log.rewind_read_to(&self.name, entry.position)?;
                    break;
                }
                if self.take_marker(log, entry, limits)? {
                    continue;
                }
                self.send(i, entry, limits);
                budget.spend(entry);
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Whether `entry` is a marker: never sent, acknowledged at once (so it
    /// holds nothing back), and a snapshot marker read by a replicated
    /// subscription is kept in its snapshots.
    fn take_marker(
        &mut self,
        log: &mut impl EntrySource,
        entry: &Entry,
        limits: &DispatchLimits,
    ) -> Result<bool, StorageError> {
        let Some(kind) = markers::marker_type(&entry.data) else {
            return Ok(false);
        };
        if self.replicated && kind == MarkerType::ReplicatedSubscriptionSnapshot as i32 {
            let snapshot = frame::decode_payload(entry.data.clone())
                .ok()
                .and_then(|p| markers::parse(&p).ok().flatten());
            if let Some(Marker::Snapshot(s)) = snapshot {
                self.snapshots.add(s, limits.max_cached_snapshots);
            }
        }
        log.ack(&self.name, &[entry.position])?;
        Ok(true)
    }

    /// Which consumer (index) gets `entry` now, if any.
    /// `floor`: the first unacknowledged entry of the subscription.
    fn pick(&mut self, entry: &Entry, floor: Position) -> Option<usize> {
        match self.kind {
            SubKind::KeyShared => {
                let slot = key_shared::slot(&entry_key(&entry.data));
                self.key_shared_target(slot, entry.position, floor)
            }
            _ => {
                // Highest priority (lowest level) with permits, round robin within it.
                let best = self
                    .consumers
                    .iter()
                    .filter(|c| c.ready())
                    .map(|c| c.priority)
                    .min()?;
                let n = self.consumers.len();
                for k in 0..n {
                    let i = (self.round_robin + k) % n;
                    let c = self.consumers.get(i)?;
                    if c.ready() && c.priority == best {
                        self.round_robin = (i + 1) % n;
                        return Some(i);
                    }
                }
                None
            }
        }
    }

    /// Key_Shared: the consumer (index) owning `slot` if it may take the entry at
    /// `position` now: it has permits, and it is not a newcomer waiting for the
    /// entries before its joining position to be acknowledged.
    fn key_shared_target(
        &mut self,
        slot: u32,
        position: Position,
        floor: Position,
    ) -> Option<usize> {
        let owner = self.selector.owner(slot)?;
        let i = self.consumers.iter().position(|c| c.key == owner)?;
        let c = self.consumers.get_mut(i)?;
        if let Some(j) = c.joined_at {
            if floor >= j {
                c.joined_at = None;
            } else if position >= j {
                return None;
            }
        }
        c.ready().then_some(i)
    }

    fn slot_of(&self, entry: &Entry) -> Option<u32> {
        (self.kind == SubKind::KeyShared).then(|| key_shared::slot(&entry_key(&entry.data)))
    }

    /// Non-persistent topics: sends `entry` to the consumer that would get it now, or
    /// drops it if that consumer has no permits or its connection's outbound
    /// queue is full. Nothing is kept for redelivery.
    pub(crate) fn deliver_or_drop(&mut self, entry: &Entry) -> bool {
        for c in &mut self.consumers {
            c.held = c.out.is_full();
        }
        let target = if self.kind.single_active() {
            self.active
                .and_then(|k| self.consumers.iter().position(|c| c.key == k))
                .filter(|i| self.consumers.get(*i).is_some_and(Consumer::ready))
        } else {
            self.pick(entry, Position::new(u64::MAX, u64::MAX))
        };
        let Some(c) = target.and_then(|i| self.consumers.get_mut(i)) else {
            return false;
        };
        c.permits -= i64::from(entry.message_count);
        send_entry(c, entry, 0, Vec::new());
        self.count_out(entry);
        true
    }

    fn count_out(&mut self, entry: &Entry) {
        let (n, b) = (u64::from(entry.message_count), entry.data.len() as u64);
        self.msg_out += n;
        self.bytes_out += b;
        self.metrics.add_out(n, b);
    }

    fn send(&mut self, i: usize, entry: &Entry, limits: &DispatchLimits) {
        let drained = &limits.drained;
        let redelivery_count = self.redeliveries.get(&entry.position).copied();
        let mut ack_set = self
            .partial_acks
            .get(&entry.position)
            .cloned()
            .unwrap_or_default();
        if let Some(retained) = self.retained_of_view_entry(entry, limits) {
            ack_set = intersect_ack_sets(&ack_set, &retained);
        }
        let n = entry.message_count;
        let Some(key) = self.consumers.get(i).map(|c| c.key) else {
            return;
        };
        // An entry sent again while still pending counts once, at its
        // latest consumer.
        if let Some((old, old_n)) = self.pending.insert(entry.position, (key, n)) {
            self.settle(old, old_n);
        }
        if redelivery_count.is_some() {
            self.msg_redeliver += u64::from(n);
        }
        let Some(c) = self.consumers.get_mut(i) else {
            return;
        };
        c.permits -= i64::from(n);
        c.unacked += u64::from(n);
        if redelivery_count.is_some() {
            c.msg_redeliver += u64::from(n);
        }
        send_entry(c, entry, redelivery_count.unwrap_or(0), ack_set);
        c.check_room(drained);
        self.count_out(entry);
        if self.blocked_on_unacked() {
            // The subscription reached its maximum: no consumer is ready for
            // the rest of the pass (the next pass, after acknowledgements,
            // decides again).
            for c in &mut self.consumers {
                c.held = true;
            }
        }
    }
}

impl Subscription {
    /// A compacted reader's entry from the compacted view whose batch holds
    /// compacted-out messages: the ack set of the messages it keeps, so that
    /// clients that do not look at `compacted_out` (the C++ and Python ones)
    /// skip the others as they skip acknowledged ones. Readers only (non-durable:
    /// TableView, `create_reader`): a durable consumer acknowledges, and the
    /// C++ client acknowledges a batch only once it acknowledged each of its
    /// messages, so it gets the compacted-out ones too, as from Pulsar.
    fn retained_of_view_entry(&self, entry: &Entry, limits: &DispatchLimits) -> Option<Vec<i64>> {
        let view = limits
            .compacted
            .filter(|_| self.reads_compacted && !self.durable)?;
        if entry.position > view.horizon || entry.message_count < 2 {
            return None;
        }
        compaction::retained_ack_set(entry, view.max_batch_bytes)
    }
}

/// The messages both ack sets leave unacknowledged (an empty set: all of them).
fn intersect_ack_sets(a: &[i64], b: &[i64]) -> Vec<i64> {
    if a.is_empty() {
        return b.to_vec();
    }
    a.iter().zip(b).map(|(x, y)| x & y).collect()
}

/// When the entry's producer asked it to be delivered (`deliver_at_time`,
/// ms since the epoch), if it did.
fn deliver_at_ms(entry: &Entry) -> Option<u64> {
    let p = frame::decode_payload(entry.data.clone()).ok()?;
    p.metadata
        .deliver_at_time
        .and_then(|t| u64::try_from(t).ok())
}

/// The key Key_Shared routes by: the ordering key, else the partition key.
fn entry_key(payload: &Bytes) -> Bytes {
    match frame::decode_payload(payload.clone()) {
        Ok(p) => p
            .metadata
            .ordering_key
            .or_else(|| p.metadata.partition_key.map(Bytes::from))
            .unwrap_or_default(),
        Err(_) => Bytes::new(),
    }
}

/// Sends one entry to a consumer as a MESSAGE frame with the stored payload bytes.
pub(crate) fn send_entry(
    c: &mut Consumer,
    entry: &Entry,
    redelivery_count: u32,
    ack_set: Vec<i64>,
) {
    c.msg_out += u64::from(entry.message_count);
    c.bytes_out += entry.data.len() as u64;
    let prefix = c.wants_entry_metadata.then(|| {
        frame::broker_entry_metadata_prefix(&BrokerEntryMetadata {
            broker_timestamp: Some(entry.publish_time_ms),
            index: Some((entry.message_index + u64::from(entry.message_count)).saturating_sub(1)),
        })
    });
    let head = if ack_set.is_empty() {
        MessageHead::Fields(frame::MessageFields {
            consumer_id: c.key.id,
            ledger_id: entry.position.segment,
            entry_id: entry.position.entry,
            redelivery_count,
            consumer_epoch: c.epoch,
        })
    } else {
        let command = commands::with_type(Type::Message, |b| {
            b.message = Some(Box::new(CommandMessage {
                consumer_id: c.key.id,
                message_id: commands::message_id(entry.position, None),
                redelivery_count: Some(redelivery_count),
                ack_set,
                consumer_epoch: c.epoch,
            }));
        });
        let raw_len = prefix.as_ref().map_or(0, Bytes::len) + entry.data.len();
        let mut header = BytesMut::new();
        frame::encode_header(&command, raw_len, &mut header);
        MessageHead::Encoded(header.freeze())
    };
    c.out.message(head, prefix, entry.data.clone());
}
