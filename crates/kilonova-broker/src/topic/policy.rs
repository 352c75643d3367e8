//! A topic applying its policies at run time: refreshing them from the policy
//! cache, admission limits for producers and consumers, dispatch rates,
//! message TTL, backlog quotas and inactive-topic deletion.

use std::time::{Duration, Instant};

use kilonova_metadata::policies::{BacklogQuotaPolicy, InactiveTopicDeleteMode, Policies};
use kilonova_storage::{ManagedLog, Position, StorageError};
use tokio::sync::mpsc;

use super::{now_ms, Topic, TopicCommand};
use crate::broker::Broker;
use crate::commands;
use crate::dedup;
use crate::error::BrokerError;
use crate::policies::{Effective, InactiveRule, Quota};
use crate::rate_limit::{RateLimiter, RateLimits};
use crate::subscription::{first_unacked, Budget, DispatchLimits, Subscription};
use kilonova_metadata::names::TopicName;

/// When the periodic checks run next.
pub(super) struct Checks {
    next_expiry: Instant,
    next_quota: Instant,
    next_inactive: Instant,
    /// A partition asked for its partitioned topic's deletion at this time.
    partitioned_attempt: Option<Instant>,
}

impl Checks {
    pub(super) fn new(now: Instant) -> Self {
        Checks {
            next_expiry: now,
            next_quota: now,
            next_inactive: now,
            partitioned_attempt: None,
        }
    }
}

/// A backlog quota with a producer policy is exceeded.
#[derive(Clone, Debug)]
pub(super) struct Exceeded {
    hold: bool,
    what: String,
}

impl Exceeded {
    pub(super) fn error(&self) -> BrokerError {
        BrokerError::BacklogQuotaExceeded {
            hold: self.hold,
            message: self.what.clone(),
        }
    }
}

/// What an idle topic does about inactive-topic deletion.
pub(super) enum Inactive {
    /// Delete it now.
    Delete,
    /// Stay loaded: it will be deletable once inactive long enough.
    Keep,
    /// Not deletable: unload when idle as usual.
    Unload,
}

/// The policies of `name` at load (the broker's defaults if metadata cannot be read).
pub(super) async fn load(broker: &Broker, name: &TopicName) -> Effective {
    match broker.effective_policies(name).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(topic = %name, error = %e, "cannot read the topic's policies: using the broker's defaults");
            Effective::resolve(broker.config(), &Policies::default(), &Default::default())
        }
    }
}

/// A dispatch limiter: up to one period's worth may go at once.
pub(crate) fn dispatch_limiter(limits: RateLimits, now: Instant) -> RateLimiter {
    let period = limits
        .messages
        .or(limits.bytes)
        .map_or(Duration::from_secs(1), |r| r.period);
    RateLimiter::new(limits, period, now)
}

fn min_limit(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Dispatches `sub` within the topic's and its own dispatch rates. Returns
/// how long until a rate lets more go, if a rate held the pass back.
pub(super) fn rated_dispatch(
    sub: &mut Subscription,
    log: &mut ManagedLog,
    limits: &DispatchLimits,
    topic_rate: &mut RateLimiter,
    now: Instant,
) -> Result<Option<Duration>, StorageError> {
    if topic_rate.is_unlimited() && sub.rate.is_unlimited() {
        sub.dispatch(log, limits, Budget::UNLIMITED)?;
        return Ok(None);
    }
    let (tm, tb) = topic_rate.available(now);
    let (sm, sb) = sub.rate.available(now);
    let budget = Budget {
        messages: min_limit(tm, sm),
        bytes: min_limit(tb, sb),
    };
    let before = (sub.msg_out, sub.bytes_out);
    sub.dispatch(log, limits, budget)?;
    let (m, b) = (sub.msg_out - before.0, sub.bytes_out - before.1);
    topic_rate.consume(m, b, now);
    sub.rate.consume(m, b, now);
    if sub.consumers.is_empty() {
        return Ok(None);
    }
    let wait = topic_rate.wait_for_one(now).max(sub.rate.wait_for_one(now));
    Ok((wait > Duration::ZERO).then_some(wait))
}

/// Entries before a duplicate's last stored one searched for its original.
const DUPLICATE_SEARCH_ENTRIES: u64 = 1000;

impl Topic {
    /// Turns deduplication on (rebuilding its state from the snapshot and the
    /// log after it) or off.
    pub(super) fn set_dedup(&mut self, on: bool) {
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
    pub(super) fn answer_duplicate(&mut self, a: &super::Appended) {
        let name = a.producer.as_deref().unwrap_or_default();
        let stored = self
            .dedup
            .as_ref()
            .and_then(|d| d.last_persisted(name))
            .filter(|(seq, _)| *seq >= a.to.highest_sequence_id.max(a.to.sequence_id));
        let Some((last_seq, last_at)) = stored else {
            a.to.out.command(commands::send_error(
                a.to.producer_id,
                a.to.sequence_id,
                kilonova_pulsar_protocol::proto::ServerError::PersistenceError,
                "the original of this duplicate was not stored: send it again",
            ));
            return;
        };
        let original = if last_seq == a.to.highest_sequence_id.max(a.to.sequence_id) {
            Some(last_at)
        } else {
            self.find_original(name, a.to.sequence_id, last_at)
        };
        // Pulsar answers a duplicate whose original it cannot name with -1:-1.
        let id = original.map_or_else(
            || kilonova_pulsar_protocol::proto::MessageIdData {
                ledger_id: u64::MAX,
                entry_id: u64::MAX,
                ..Default::default()
            },
            |p| commands::message_id(p, None),
        );
        a.to.out.command(commands::send_receipt(
            a.to.producer_id,
            a.to.sequence_id,
            a.to.highest_sequence_id,
            id,
        ));
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

    /// Reads the policies again (from the cache: no metadata read unless they
    /// changed) and applies what changed.
    pub(super) async fn refresh_policies(&mut self) {
        let fresh = match self.broker.effective_policies(&self.name).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(topic = %self.full_name, error = %e, "policy refresh failed");
                return;
            }
        };
        if fresh == self.policies {
            return;
        }
        tracing::info!(topic = %self.full_name, "policies changed");
        let now = Instant::now();
        self.publish_gate.set(fresh.publish_rate, now);
        if fresh.dispatch_rate != self.policies.dispatch_rate {
            self.dispatch_rate = dispatch_limiter(fresh.dispatch_rate, now);
        }
        if fresh.subscription_dispatch_rate != self.policies.subscription_dispatch_rate {
            for sub in self.subscriptions.values_mut() {
                sub.rate = dispatch_limiter(fresh.subscription_dispatch_rate, now);
            }
        }
        if (fresh.backlog_size, fresh.backlog_age)
            != (self.policies.backlog_size, self.policies.backlog_age)
        {
            self.checks.next_quota = now;
        }
        if fresh.ttl != self.policies.ttl {
            self.checks.next_expiry = now;
        }
        let dedup = fresh.deduplication;
        self.policies = fresh;
        self.set_dedup(dedup);
        // A rate lifted lets a held dispatch go now.
        self.dispatch_wake = Some(now);
    }

    /// Message TTL and backlog quotas, each at its interval.
    pub(super) fn enforce_policies(&mut self) {
        let now = Instant::now();
        let config = self.broker.config();
        let expiry_every = Duration::from_secs(config.message_expiry_check_interval_secs.max(1));
        let quota_every = Duration::from_secs(config.backlog_quota_check_interval_secs.max(1));
        if now >= self.checks.next_expiry {
            self.checks.next_expiry = now + expiry_every;
            if let Some(ttl) = self.policies.ttl {
                self.expire(ttl);
            }
        }
        if now >= self.checks.next_quota {
            self.checks.next_quota = now + quota_every;
            self.check_backlog_quotas();
        }
    }

    fn expire(&mut self, ttl: Duration) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match log.expire(now_ms(), ttl_ms) {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(topic = %self.full_name, subscriptions = n, "messages expired (TTL)");
                self.settle_moved_cursors();
            }
            Err(e) => tracing::warn!(topic = %self.full_name, error = %e, "message expiry failed"),
        }
    }

    /// Cursors moved by the broker (TTL, eviction): subscriptions forget what
    /// they had in flight before the new floors, and may dispatch.
    fn settle_moved_cursors(&mut self) {
        let Some(log) = self.log.as_ref() else {
            return;
        };
        let floors: Vec<_> = self
            .subscriptions
            .keys()
            .map(|n| (n.clone(), first_unacked(log, n)))
            .collect();
        for (name, floor) in floors {
            if let Some(sub) = self.subscriptions.get_mut(&name) {
                sub.forget_before(floor);
            }
            self.dispatch_sub(&name);
        }
    }

    /// Checks every durable subscription's backlog against the quotas: evicts
    /// the oldest messages under `consumer_backlog_eviction`, otherwise marks
    /// the quota exceeded (producers are refused) and disconnects producers.
    pub(super) fn check_backlog_quotas(&mut self) {
        let (size, age) = (self.policies.backlog_size, self.policies.backlog_age);
        let Some(log) = self
            .log
            .as_mut()
            .filter(|_| size.is_some() || age.is_some())
        else {
            self.quota_exceeded = None;
            return;
        };
        let mut exceeded = None;
        let mut evicted = false;
        let now = now_ms();
        for name in log.cursor_names() {
            if !log.cursor_info(&name).is_ok_and(|i| i.durable) {
                continue;
            }
            if let Some(q) = size {
                match over_size(log, &name, q, &mut evicted) {
                    Ok(Some(e)) => exceeded = Some(e),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(topic = %self.full_name, error = %e, "backlog quota check failed")
                    }
                }
            }
            if let Some(q) = age {
                match over_age(log, &name, q, now, &mut evicted) {
                    Ok(Some(e)) => exceeded = Some(e),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(topic = %self.full_name, error = %e, "backlog quota check failed")
                    }
                }
            }
        }
        if evicted {
            self.settle_moved_cursors();
        }
        let newly = exceeded.is_some() && self.quota_exceeded.is_none();
        if self.quota_exceeded.is_some() && exceeded.is_none() {
            tracing::info!(topic = %self.full_name, "backlog back under its quota: producers accepted again");
        }
        self.quota_exceeded = exceeded;
        if newly {
            tracing::info!(topic = %self.full_name, "backlog quota exceeded: disconnecting producers");
            // As Pulsar: producers are closed; they reconnect and are refused
            // (producer_request_hold: with a retriable error) until the
            // backlog is back under its quota.
            for ((_, id), p) in self.producers.drain() {
                p.out.command(commands::close_producer(id));
            }
        }
    }

    /// Limits and quotas a new producer must pass.
    pub(super) fn admit_producer(&mut self) -> Result<(), BrokerError> {
        if let Some(max) = self.policies.max_producers {
            if self.producers.len() >= max as usize {
                return Err(BrokerError::ProducerBusy(format!(
                    "Topic reached max producers limit ({max}) on {}",
                    self.full_name
                )));
            }
        }
        let producer_quota = |q: Option<Quota>| {
            q.is_some_and(|q| q.policy != BacklogQuotaPolicy::ConsumerBacklogEviction)
        };
        if producer_quota(self.policies.backlog_size) || producer_quota(self.policies.backlog_age) {
            self.check_backlog_quotas();
        }
        match &self.quota_exceeded {
            Some(e) => Err(e.error()),
            None => Ok(()),
        }
    }

    /// Limits a new consumer of subscription `sub` must pass.
    pub(super) fn admit_consumer(&self, sub: &str) -> Result<(), BrokerError> {
        if let Some(max) = self.policies.max_consumers {
            if self.consumer_subs.len() >= max as usize {
                return Err(BrokerError::ConsumerBusy(format!(
                    "Topic reached max consumers limit ({max}) on {}",
                    self.full_name
                )));
            }
        }
        if let Some(max) = self.policies.max_consumers_per_subscription {
            if self
                .subscriptions
                .get(sub)
                .is_some_and(|s| s.consumers.len() >= max as usize)
            {
                return Err(BrokerError::ConsumerBusy(format!(
                    "Subscription reached max consumers limit ({max}) on {sub}"
                )));
            }
        }
        Ok(())
    }

    /// Whether an idle topic (no clients, no appends) could be deleted under
    /// `rule` apart from how long it has been inactive: its subscriptions
    /// allow it, and retention keeps none of its data.
    fn deletable(&self, rule: InactiveRule) -> bool {
        let Some(log) = self.log.as_ref() else {
            return match rule.mode {
                InactiveTopicDeleteMode::DeleteWhenNoSubscriptions => self.subscriptions.is_empty(),
                InactiveTopicDeleteMode::DeleteWhenSubscriptionsCaughtUp => true,
            };
        };
        let subscriptions_allow = match rule.mode {
            InactiveTopicDeleteMode::DeleteWhenNoSubscriptions => log.cursor_count() == 0,
            InactiveTopicDeleteMode::DeleteWhenSubscriptionsCaughtUp => log
                .cursor_names()
                .iter()
                .all(|n| log.cursor_info(n).is_ok_and(|i| i.backlog_entries == 0)),
        };
        let r = self.policies.retention;
        let retains = r.time_ms != Some(0) && r.size_bytes != Some(0) && log.entries() > 0;
        subscriptions_allow && !retains
    }

    /// For an idle topic, inactive since `since`: delete it, keep it loaded
    /// until it may be deleted, or let it unload.
    pub(super) fn inactive_check(&mut self, since: Instant) -> Inactive {
        let Some(rule) = self.policies.inactive else {
            return Inactive::Unload;
        };
        if !self.deletable(rule) {
            return Inactive::Unload;
        }
        let now = Instant::now();
        if now < self.checks.next_inactive {
            return Inactive::Keep;
        }
        let every = self
            .broker
            .config()
            .delete_inactive_topics_frequency_secs
            .max(1);
        self.checks.next_inactive = now + Duration::from_secs(every);
        if now.duration_since(since) >= rule.max_inactive {
            Inactive::Delete
        } else {
            Inactive::Keep
        }
    }

    /// An admin request's check before deleting for inactivity: idle for at
    /// least `min_inactive` and deletable under the topic's rule.
    pub(super) fn deletable_now(&self, min_inactive: Duration) -> bool {
        let (Some(rule), Some(since)) = (self.policies.inactive, self.idle_since) else {
            return false;
        };
        self.is_idle() && self.deletable(rule) && since.elapsed() >= min_inactive
    }

    /// Deletes the inactive topic (a partition asks for its whole partitioned
    /// topic instead). Returns whether the task must end.
    pub(super) async fn delete_inactive(&mut self, rx: &mut mpsc::Receiver<TopicCommand>) -> bool {
        let Some(rule) = self.policies.inactive else {
            return false;
        };
        if !rx.is_empty() {
            return false; // a client or request is on its way: not inactive
        }
        if self.name.partition().is_some() {
            let every = Duration::from_secs(
                self.broker
                    .config()
                    .delete_inactive_topics_frequency_secs
                    .max(1),
            );
            let due = self
                .checks
                .partitioned_attempt
                .is_none_or(|t| t.elapsed() >= every);
            if due {
                self.checks.partitioned_attempt = Some(Instant::now());
                let broker = self.broker.clone();
                let base = self.name.partitioned_topic();
                tokio::spawn(async move {
                    broker
                        .delete_inactive_partitioned(&base, rule.max_inactive)
                        .await
                });
            }
            return false;
        }
        let result = self.end(true, rx).await;
        match &result {
            Ok(()) => tracing::info!(topic = %self.full_name, "deleted inactive topic"),
            Err(e) => {
                tracing::warn!(topic = %self.full_name, error = %e, "deleting an inactive topic failed")
            }
        }
        self.broker
            .metrics()
            .count_inactive_deletion(result.is_ok());
        true
    }
}

/// Bytes of backlog over the quota: evicts (returns `None`) or reports it.
fn over_size(
    log: &mut ManagedLog,
    name: &str,
    q: Quota,
    evicted: &mut bool,
) -> Result<Option<Exceeded>, StorageError> {
    let bytes = log.backlog_bytes(name)?;
    if bytes <= q.limit {
        return Ok(None);
    }
    if q.policy != BacklogQuotaPolicy::ConsumerBacklogEviction {
        return Ok(Some(Exceeded {
            hold: q.policy == BacklogQuotaPolicy::ProducerRequestHold,
            what: format!(
                "Cannot create producer on topic with backlog quota exceeded: subscription {name} holds {bytes} bytes, over the {} byte quota",
                q.limit
            ),
        }));
    }
    // Skip the oldest entries, in proportion to the excess (a few rounds:
    // sizes are estimated per segment).
    for _ in 0..4 {
        let bytes = log.backlog_bytes(name)?;
        let entries = log.cursor_info(name)?.backlog_entries;
        if bytes <= q.limit || entries == 0 {
            break;
        }
        let excess = u128::from(bytes - q.limit);
        let skip = (u128::from(entries) * excess).div_ceil(u128::from(bytes.max(1)));
        let skipped = log.skip(name, u64::try_from(skip).unwrap_or(u64::MAX).max(1))?;
        tracing::debug!(subscription = name, skipped, "backlog evicted (size quota)");
        *evicted = true;
    }
    Ok(None)
}

/// The oldest unacknowledged message older than the quota: evicts or reports it.
fn over_age(
    log: &mut ManagedLog,
    name: &str,
    q: Quota,
    now_ms: u64,
    evicted: &mut bool,
) -> Result<Option<Exceeded>, StorageError> {
    let limit_ms = q.limit.saturating_mul(1000);
    let Some(oldest) = log.oldest_unacked_publish_ms(name)? else {
        return Ok(None);
    };
    if now_ms.saturating_sub(oldest) <= limit_ms {
        return Ok(None);
    }
    if q.policy != BacklogQuotaPolicy::ConsumerBacklogEviction {
        return Ok(Some(Exceeded {
            hold: q.policy == BacklogQuotaPolicy::ProducerRequestHold,
            what: format!(
                "Cannot create producer on topic with backlog quota exceeded: subscription {name}'s oldest message is older than {} s",
                q.limit
            ),
        }));
    }
    log.expire_cursors(now_ms, limit_ms, Some(name))?;
    *evicted = true;
    Ok(None)
}

impl Broker {
    /// Deletes a partitioned topic whose partitions are all inactive: each
    /// partition deletes itself if it is (a partition that was not loaded had
    /// been idle long enough to unload); the partitioned topic's record goes
    /// once every partition is gone. A partition in use stops it (the
    /// partitions already deleted held nothing worth keeping, and come back
    /// empty on use).
    pub(crate) async fn delete_inactive_partitioned(
        &self,
        base: &TopicName,
        max_inactive: Duration,
    ) {
        let Some(_pass) = self.begin_partitioned_deletion(base) else {
            return; // another partition started this pass
        };
        let partitions = match self.resources().topic(base).await {
            Ok(Some(r)) if r.partitions > 0 && !r.is_oversized() => r.partitions,
            _ => return,
        };
        // A partition that was not loaded had been idle long enough to unload.
        let min_inactive: Vec<Duration> = (0..partitions)
            .map(|i| {
                if self.is_loaded(&base.partition_name(i)) {
                    max_inactive
                } else {
                    Duration::ZERO
                }
            })
            .collect();
        // Every partition must agree before any is deleted (a caught-up
        // subscription on one partition must not go while another partition
        // still has a backlog for it).
        for (i, min) in (0..partitions).zip(&min_inactive) {
            let request = super::AdminRequest::InactiveCheck { min_inactive: *min };
            if let Err(e) = self.topic_admin(&base.partition_name(i), request).await {
                tracing::debug!(topic = %base, partition = i, error = %e, "partitioned topic kept: a partition is in use");
                return;
            }
        }
        for (i, min) in (0..partitions).zip(&min_inactive) {
            let request = super::AdminRequest::DeleteIfInactive { min_inactive: *min };
            if let Err(e) = self.topic_admin(&base.partition_name(i), request).await {
                // A client came back between the check and the deletion.
                tracing::info!(topic = %base, partition = i, error = %e, "partitioned topic kept: a partition came back into use during its deletion");
                return;
            }
        }
        match self.resources().delete_topic(base).await {
            Ok(()) => {
                tracing::info!(topic = %base, partitions, "deleted inactive partitioned topic");
                self.metrics().count_inactive_deletion(true);
            }
            Err(e) => {
                tracing::warn!(topic = %base, error = %e, "deleting an inactive partitioned topic failed")
            }
        }
    }
}
