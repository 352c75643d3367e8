//! A subscription: its consumers, which of them gets each entry, and what is
//! waiting for an acknowledgement or a redelivery.
//!
//! * Exclusive / Failover: one active consumer reads the cursor in order. Failover
//!   picks the active consumer by priority level, then name (for partition `i` of
//!   a partitioned topic, the `i mod n`-th), and announces changes. When the
//!   active consumer changes or asks for redelivery, the cursor rewinds to its
//!   first unacknowledged entry.
//! * Shared: round robin over consumers with permits, higher priority (lower level)
//!   first. Redelivered entries go out before new ones.
//! * Key_Shared: [`crate::key_shared::Selector`] owns keys. An entry whose owner has no
//!   permits waits in the redelivery set (so later entries of its key cannot pass
//!   it). A consumer that joins gets no entry at or after the read position it joined
//!   at until everything before that position is acknowledged: entries of its keys
//!   may still be in flight at the consumer that owned them before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::Notify;

use kilonova_storage::{Position, StorageError};

use crate::commands;
use crate::entry_source::EntrySource;
use crate::error::BrokerError;
use crate::key_shared::Selector;
use crate::metrics::TopicMetrics;
use crate::outbound::Outbound;
use crate::rate_limit::RateLimiter;
use crate::rate_meter::{FlowMeter, RateMeter};
use crate::topic::ClientInfo;

mod dispatcher;
mod snapshots;
#[cfg(test)]
mod tests;

pub(crate) use dispatcher::{Budget, CompactedLimits, DispatchLimits};

/// A consumer, unique in the broker: (connection id, the client's consumer id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ConsumerKey {
    pub conn: u64,
    pub id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SubKind {
    Exclusive,
    Shared,
    Failover,
    KeyShared,
}

impl SubKind {
    fn single_active(self) -> bool {
        matches!(self, SubKind::Exclusive | SubKind::Failover)
    }

    /// As Pulsar's stats name it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SubKind::Exclusive => "Exclusive",
            SubKind::Shared => "Shared",
            SubKind::Failover => "Failover",
            SubKind::KeyShared => "Key_Shared",
        }
    }
}

pub(crate) struct Consumer {
    pub key: ConsumerKey,
    pub name: String,
    pub priority: i32,
    pub permits: i64,
    pub out: Outbound,
    pub epoch: Option<u64>,
    /// Whether the client parses broker entry metadata (`0x0e02`) in front of payloads.
    pub wants_entry_metadata: bool,
    /// Whether the client is told REACHED_END_OF_TOPIC.
    pub hears_end_of_topic: bool,
    /// Key_Shared: entries at or after this wait until it is acknowledged up to it.
    pub joined_at: Option<Position>,
    pub sticky_ranges: Vec<(u32, u32)>,
    /// Messages and bytes dispatched to this consumer.
    pub msg_out: u64,
    pub bytes_out: u64,
    /// Messages dispatched again (after a negative ack, a timeout, a
    /// consumer leaving).
    pub msg_redeliver: u64,
    /// Messages dispatched to it and not acknowledged yet.
    pub unacked: u64,
    pub client: ClientInfo,
    pub meter_out: FlowMeter,
    pub meter_redeliver: RateMeter,
    /// The most unacknowledged messages it may have (the last dispatch
    /// pass's policy).
    pub max_unacked: Option<u64>,
    /// Its connection's outbound queue was full when last looked at (at the
    /// start of a dispatch pass and after each send): it gets nothing more in
    /// this pass, and the topic is woken when the queue drains.
    pub held: bool,
}

impl Consumer {
    /// Whether the consumer may be sent an entry now.
    fn ready(&self) -> bool {
        self.permits > 0 && !self.held && !self.blocked_on_unacked()
    }

    /// Whether it has as many unacknowledged messages as it may.
    pub(crate) fn blocked_on_unacked(&self) -> bool {
        self.max_unacked.is_some_and(|max| self.unacked >= max)
    }

    /// Looks whether its connection can take more; if not, `wake` is
    /// notified once it can.
    fn check_room(&mut self, wake: &Arc<Notify>) {
        self.held = self.permits > 0 && !self.out.has_room(wake);
    }
}

pub(crate) struct Subscription {
    pub name: String,
    pub kind: SubKind,
    pub durable: bool,
    /// Its consumers read the compacted view (`readCompacted`; the first
    /// consumer decides).
    pub reads_compacted: bool,
    /// Its position is replicated (kept with the cursor; mirrored here).
    pub replicated: bool,
    /// A replicated subscription's snapshots read and not yet passed.
    pub snapshots: snapshots::SnapshotCache,
    pub consumers: Vec<Consumer>,
    /// Partition index of the topic (failover spreads partitions over consumers).
    partition: Option<u32>,
    active: Option<ConsumerKey>,
    /// Dispatched, not yet acknowledged: entry → consumer and the entry's
    /// messages (each consumer's `unacked` is its share).
    pending: BTreeMap<Position, (ConsumerKey, u32)>,
    /// Entries to send again (shared / key_shared), oldest first, with their key's
    /// slot once known (key_shared skips entries whose owner cannot take them
    /// without reading them again).
    replay: BTreeMap<Position, Option<u32>>,
    redeliveries: BTreeMap<Position, u32>,
    /// Batch entries partly acknowledged: the ack set of messages still unacknowledged.
    partial_acks: BTreeMap<Position, Vec<i64>>,
    selector: Selector<ConsumerKey>,
    round_robin: usize,
    /// The active consumer changed: rewind the cursor before the next dispatch.
    needs_rewind: bool,
    /// Messages and bytes dispatched (this load of the topic).
    pub msg_out: u64,
    pub bytes_out: u64,
    /// The subscription's dispatch rate.
    pub rate: RateLimiter,
    /// Messages dispatched again.
    pub msg_redeliver: u64,
    pub meter_out: FlowMeter,
    pub meter_redeliver: RateMeter,
    /// When a consumer last acknowledged (ms since the epoch).
    pub last_acked_ms: Option<u64>,
    /// The most unacknowledged messages it may have (the last dispatch
    /// pass's policy).
    max_unacked: Option<u64>,
    /// Shared / key_shared: entries read but held until their delivery time
    /// (ms), not acknowledged, so a restart reads and holds them again.
    delayed: BTreeSet<(u64, Position)>,
    metrics: Arc<TopicMetrics>,
}

impl Subscription {
    pub(crate) fn new(
        name: String,
        kind: SubKind,
        durable: bool,
        partition: Option<u32>,
        metrics: Arc<TopicMetrics>,
    ) -> Self {
        Subscription {
            name,
            kind,
            durable,
            reads_compacted: false,
            replicated: false,
            snapshots: Default::default(),
            consumers: Vec::new(),
            partition,
            active: None,
            pending: BTreeMap::new(),
            replay: BTreeMap::new(),
            redeliveries: BTreeMap::new(),
            partial_acks: BTreeMap::new(),
            selector: Selector::default(),
            round_robin: 0,
            needs_rewind: false,
            msg_out: 0,
            bytes_out: 0,
            rate: RateLimiter::default(),
            msg_redeliver: 0,
            meter_out: FlowMeter::default(),
            meter_redeliver: RateMeter::default(),
            last_acked_ms: None,
            max_unacked: None,
            delayed: BTreeSet::new(),
            metrics,
        }
    }

    /// When the next held entry is due (ms), if one is and a consumer could take it.
    pub(crate) fn next_delayed_ms(&self) -> Option<u64> {
        if self.consumers.is_empty() || self.kind.single_active() {
            return None;
        }
        self.delayed.first().map(|(t, _)| *t)
    }

    pub(crate) fn delayed_count(&self) -> usize {
        self.delayed.len()
    }

    /// Holds the entry at `p` until `t`, keeping at most `max` entries held:
    /// when full, the entries due soonest stay held and the one due last is
    /// sent early, so held messages never stop the subscription from reading
    /// (100,000 messages due at the end of time used to stall it for good).
    fn hold(&mut self, t: u64, p: Position, max: usize) -> Held {
        if self.delayed.len() < max.max(1) {
            self.delayed.insert((t, p));
            return Held::Yes;
        }
        self.metrics.count_delayed_sent_early();
        match self.delayed.last().copied() {
            Some(last) if last.0 > t => {
                self.delayed.pop_last();
                self.delayed.insert((t, p));
                Held::InsteadOf(last.1)
            }
            _ => Held::No,
        }
    }

    /// Held entries whose time has come join the redelivery set (sent first,
    /// oldest position first).
    fn release_due(&mut self, now_ms: u64) {
        while let Some(&(t, p)) = self.delayed.first() {
            if t > now_ms {
                break;
            }
            self.delayed.pop_first();
            // The key_shared slot is found when the entry is read again.
            self.replay.insert(p, None);
        }
    }

    /// Checks that `c` may join, then adds it. `read_position` is the cursor's read
    /// position now (where a key_shared newcomer's restriction starts).
    pub(crate) fn add_consumer(
        &mut self,
        kind: SubKind,
        mut c: Consumer,
        read_position: Option<Position>,
    ) -> Result<(), BrokerError> {
        if kind != self.kind && !self.consumers.is_empty() {
            return Err(BrokerError::ConsumerBusy(format!(
                "subscription {} is {:?}, not {kind:?}",
                self.name, self.kind
            )));
        }
        self.kind = kind;
        if kind == SubKind::Exclusive && !self.consumers.is_empty() {
            return Err(BrokerError::ConsumerBusy(format!(
                "exclusive subscription {} already has a consumer",
                self.name
            )));
        }
        if self.consumers.iter().any(|x| x.key == c.key) {
            return Err(BrokerError::ConsumerBusy(format!(
                "consumer id {} is already subscribed",
                c.key.id
            )));
        }
        if kind == SubKind::KeyShared {
            if c.sticky_ranges.is_empty() {
                let seed = format!("{}/{}/{}", c.name, c.key.conn, c.key.id);
                self.selector.add_auto(c.key, &seed);
            } else {
                self.selector
                    .add_sticky(c.key, &c.sticky_ranges)
                    .map_err(BrokerError::ConsumerAssign)?;
            }
            if !self.consumers.is_empty() {
                c.joined_at = read_position;
            }
        }
        self.consumers.push(c);
        // Announced by the topic after it answered the subscribe (`announce_active`).
        self.update_active(false);
        Ok(())
    }

    /// Removes a consumer; what it had not acknowledged goes to the others.
    pub(crate) fn remove_consumer(&mut self, key: ConsumerKey) {
        let Some(i) = self.consumers.iter().position(|c| c.key == key) else {
            return;
        };
        self.consumers.remove(i);
        self.selector.remove(key);
        if !self.kind.single_active() {
            let mine: Vec<Position> = self
                .pending
                .iter()
                .filter(|(_, (c, _))| *c == key)
                .map(|(p, _)| *p)
                .collect();
            for p in mine {
                self.unpend(p);
                self.replay.insert(p, None);
                *self.redeliveries.entry(p).or_default() += 1;
            }
        }
        self.update_active(true);
    }

    pub(crate) fn consumer_mut(&mut self, key: ConsumerKey) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|c| c.key == key)
    }

    /// Failover / exclusive: recomputes the active consumer; with `notify`, tells every
    /// consumer whether it is active when that changed. A change rewinds the cursor
    /// before the next dispatch, so the new active consumer gets what was in flight.
    fn update_active(&mut self, notify: bool) {
        if !self.kind.single_active() {
            self.active = None;
            return;
        }
        let mut order: Vec<&Consumer> = self.consumers.iter().collect();
        order.sort_by(|a, b| (a.priority, &a.name, a.key).cmp(&(b.priority, &b.name, b.key)));
        let new = if order.is_empty() {
            None
        } else {
            let i = self.partition.map_or(0, |p| p as usize % order.len());
            order.get(i).map(|c| c.key)
        };
        if new == self.active {
            return;
        }
        let previous = std::mem::replace(&mut self.active, new);
        if previous.is_some() {
            // The old active consumer may have had entries in flight: they go to the new one.
            self.rewind_pending();
        }
        if notify {
            self.announce_active();
        }
    }

    /// Failover: tells every consumer whether it is the active one.
    pub(crate) fn announce_active(&self) {
        if self.kind != SubKind::Failover {
            return;
        }
        for c in &self.consumers {
            c.out.command(commands::active_consumer_change(
                c.key.id,
                Some(c.key) == self.active,
            ));
        }
    }

    /// Counts every pending entry as redelivered and forgets it; the cursor rewinds
    /// before the next dispatch.
    fn rewind_pending(&mut self) {
        for p in std::mem::take(&mut self.pending).into_keys() {
            *self.redeliveries.entry(p).or_default() += 1;
        }
        for c in &mut self.consumers {
            c.unacked = 0;
        }
        // The cursor rewinds: held entries are read (and held) again.
        self.delayed.clear();
        self.replay.clear();
        self.needs_rewind = true;
    }

    /// Everything unacknowledged is sent again from the first unacknowledged entry.
    fn rewind(&mut self, log: Option<&mut impl EntrySource>) {
        self.rewind_pending();
        self.needs_rewind = false;
        if let Some(log) = log {
            if let Err(e) = log.rewind(&self.name) {
                tracing::warn!(subscription = %self.name, error = %e, "rewind failed");
            }
        }
    }

    /// The client asks for its unacknowledged entries again (negative acks, ack
    /// timeout): the listed ones, or all of this consumer's if none are listed.
    pub(crate) fn redeliver(
        &mut self,
        key: ConsumerKey,
        positions: &[Position],
        log: Option<&mut impl EntrySource>,
    ) {
        if self.kind.single_active() {
            if self.active == Some(key) {
                self.rewind(log);
            }
            return;
        }
        let chosen: Vec<Position> = if positions.is_empty() {
            self.pending
                .iter()
                .filter(|(_, (c, _))| *c == key)
                .map(|(p, _)| *p)
                .collect()
        } else {
            positions
                .iter()
                .copied()
                .filter(|p| self.pending.get(p).is_some_and(|(c, _)| *c == key))
                .collect()
        };
        for p in chosen {
            self.unpend(p);
            self.replay.insert(p, None);
            *self.redeliveries.entry(p).or_default() += 1;
        }
    }

    /// Individual acknowledgement of an entry, or of some messages of a batch entry
    /// (`ack_set`: the messages still unacknowledged, as a bit set).
    pub(crate) fn ack(
        &mut self,
        log: &mut impl EntrySource,
        p: Position,
        ack_set: &[i64],
    ) -> Result<(), StorageError> {
        self.ack_each(log, [(p, ack_set)])
    }

    /// Individual acknowledgements, as [`Subscription::ack`]: the log hears
    /// of the entries acknowledged whole in one call.
    pub(crate) fn ack_each<'a>(
        &mut self,
        log: &mut impl EntrySource,
        acks: impl IntoIterator<Item = (Position, &'a [i64])>,
    ) -> Result<(), StorageError> {
        let mut whole = Vec::new();
        for (p, ack_set) in acks {
            if !ack_set.is_empty() {
                let remaining = self
                    .partial_acks
                    .entry(p)
                    .or_insert_with(|| ack_set.to_vec());
                for (r, a) in remaining.iter_mut().zip(ack_set) {
                    *r &= *a;
                }
                if remaining.iter().any(|w| *w != 0) {
                    continue;
                }
            }
            self.forget(p);
            whole.push(p);
        }
        log.ack(&self.name, &whole)
    }

    pub(crate) fn ack_cumulative(
        &mut self,
        log: &mut impl EntrySource,
        p: Position,
    ) -> Result<(), StorageError> {
        self.forget_before(Position::new(p.segment, p.entry.saturating_add(1)));
        log.ack_cumulative(&self.name, p)
    }

    /// The cursor's floor moved to `floor` outside of an acknowledgement (TTL,
    /// backlog eviction): what was in flight before it is settled.
    pub(crate) fn forget_before(&mut self, floor: Position) {
        self.delayed.retain(|(_, p)| *p >= floor);
        let kept = self.pending.split_off(&floor);
        for (_, (key, n)) in std::mem::replace(&mut self.pending, kept) {
            self.settle(key, n);
        }
        self.redeliveries = self.redeliveries.split_off(&floor);
        self.partial_acks = self.partial_acks.split_off(&floor);
        self.replay = self.replay.split_off(&floor);
    }

    fn forget(&mut self, p: Position) {
        self.unpend(p);
        self.replay.remove(&p);
        self.redeliveries.remove(&p);
        self.partial_acks.remove(&p);
    }

    /// After the cursor was moved (seek): nothing in flight counts any more.
    pub(crate) fn reset(&mut self) {
        self.delayed.clear();
        self.pending.clear();
        for c in &mut self.consumers {
            c.unacked = 0;
        }
        self.replay.clear();
        self.redeliveries.clear();
        self.partial_acks.clear();
    }
}

impl Subscription {
    /// Takes `p` out of the pending entries; its consumer has that many
    /// fewer unacknowledged messages.
    fn unpend(&mut self, p: Position) {
        if let Some((key, n)) = self.pending.remove(&p) {
            self.settle(key, n);
        }
    }

    pub(super) fn settle(&mut self, key: ConsumerKey, n: u32) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.key == key) {
            c.unacked = c.unacked.saturating_sub(u64::from(n));
        }
    }

    /// Messages dispatched and not acknowledged, over every consumer.
    pub(crate) fn unacked(&self) -> u64 {
        self.consumers.iter().map(|c| c.unacked).sum()
    }

    /// Whether the subscription has as many unacknowledged messages as it may.
    pub(crate) fn blocked_on_unacked(&self) -> bool {
        self.max_unacked.is_some_and(|max| self.unacked() >= max)
    }

    /// Every rate over the last `secs` seconds: the subscription's and its
    /// consumers'.
    pub(crate) fn tick_meters(&mut self, secs: f64) {
        self.meter_out.tick(self.msg_out, self.bytes_out, secs);
        self.meter_redeliver.tick(self.msg_redeliver, secs);
        for c in &mut self.consumers {
            c.meter_out.tick(c.msg_out, c.bytes_out, secs);
            c.meter_redeliver.tick(c.msg_redeliver, secs);
        }
    }

    /// Key_Shared: `AUTO_SPLIT`, or `STICKY` when consumers brought ranges.
    pub(crate) fn key_shared_mode(&self) -> Option<&'static str> {
        (self.kind == SubKind::KeyShared).then(|| {
            if self.consumers.iter().any(|c| !c.sticky_ranges.is_empty()) {
                "STICKY"
            } else {
                "AUTO_SPLIT"
            }
        })
    }

    /// Key_Shared: the hash ranges `[start, end]` a consumer owns.
    pub(crate) fn key_hash_ranges(&self, key: ConsumerKey) -> Vec<(u32, u32)> {
        if self.kind != SubKind::KeyShared {
            return Vec::new();
        }
        self.selector.ranges_of(key)
    }
}

/// What [`Subscription::hold`] did with an entry.
enum Held {
    Yes,
    /// Held; the entry at this position, due later, is to be sent now instead.
    InsteadOf(Position),
    /// Not held: to be sent now.
    No,
}
