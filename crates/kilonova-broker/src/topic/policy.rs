//! A topic applying its policies at run time: refreshing them from the policy
//! cache, admission limits for producers and consumers, dispatch rates,
//! message TTL, backlog quotas and inactive-topic deletion.

use std::time::{Duration, Instant};

use kilonova_metadata::policies::{BacklogQuotaPolicy, InactiveTopicDeleteMode, Policies};
use kilonova_storage::{ManagedLog, StorageError};
use tokio::sync::mpsc;

use super::{Topic, TopicCommand};
use crate::broker::Broker;
use crate::entry_source::first_unacked;
use crate::error::BrokerError;
use crate::policy_cache::{Effective, InactiveRule, Quota};
use crate::subscribe_rate::ConsumerIdentity;
use kilonova_metadata::names::TopicName;

/// When the periodic checks run next.
pub(super) struct Checks {
    next_expiry: Instant,
    next_quota: Instant,
    next_subscription_expiry: Instant,
    next_inactive: Instant,
    /// A partition asked for its partitioned topic's deletion at this time.
    partitioned_attempt: Option<Instant>,
}

impl Checks {
    pub(super) fn new(now: Instant) -> Self {
        Checks {
            next_expiry: now,
            next_quota: now,
            next_subscription_expiry: now,
            next_inactive: now,
            partitioned_attempt: None,
        }
    }

    /// Whether message expiry runs now (every `every`).
    fn expiry_due(&mut self, now: Instant, every: Duration) -> bool {
        due(&mut self.next_expiry, now, every)
    }

    /// Whether the backlog quotas are checked now (every `every`).
    fn quota_due(&mut self, now: Instant, every: Duration) -> bool {
        due(&mut self.next_quota, now, every)
    }

    /// Whether expired subscriptions are looked for now (every `every`).
    fn subscription_expiry_due(&mut self, now: Instant, every: Duration) -> bool {
        due(&mut self.next_subscription_expiry, now, every)
    }

    /// For a deletable idle topic, inactive since `since`: delete it once it
    /// has been inactive for the rule's time, looking at most every `every`.
    fn inactive(
        &mut self,
        rule: InactiveRule,
        since: Instant,
        now: Instant,
        every: Duration,
    ) -> Inactive {
        if !due(&mut self.next_inactive, now, every) {
            return Inactive::Keep;
        }
        if now.duration_since(since) >= rule.max_inactive {
            Inactive::Delete
        } else {
            Inactive::Keep
        }
    }

    /// A partition asks for its partitioned topic's deletion at most every `every`.
    fn partitioned_attempt_due(&mut self, now: Instant, every: Duration) -> bool {
        let due = self
            .partitioned_attempt
            .is_none_or(|t| now.duration_since(t) >= every);
        if due {
            self.partitioned_attempt = Some(now);
        }
        due
    }
}

/// Whether a periodic check planned for `*next` is due at `now`; if it is,
/// the next one is planned `every` later.
fn due(next: &mut Instant, now: Instant, every: Duration) -> bool {
    if now < *next {
        return false;
    }
    *next = now + every;
    true
}

/// A backlog quota with a producer policy is exceeded.
#[derive(Clone, Debug)]
pub(super) struct Exceeded {
    hold: bool,
    what: String,
}

impl Exceeded {
    /// A quota with a producer policy exceeded, `why` (for the client).
    fn of(q: Quota, why: String) -> Self {
        Exceeded {
            hold: q.policy == BacklogQuotaPolicy::ProducerRequestHold,
            what: format!("Cannot create producer on topic with backlog quota exceeded: {why}"),
        }
    }

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

impl Topic {
    /// Reads the policies again (from the cache: no metadata read unless they
    /// changed) and applies what changed.
    pub(super) async fn refresh_policies(&mut self) {
        let generation = self.policy_scope.generation();
        if self.policies_seen == Some(generation) {
            return;
        }
        let fresh = match self.broker.effective_policies(&self.name).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(topic = %self.full_name, error = %e, "policy refresh failed");
                return;
            }
        };
        // Read at `generation` or later: a change after it moves it again.
        self.policies_seen = Some(generation);
        if fresh == self.policies {
            return;
        }
        tracing::info!(topic = %self.full_name, "policies changed");
        let now = self.broker.clock().now();
        self.publish_gate.set(fresh.publish_rate, now);
        if fresh.dispatch_rate != self.policies.dispatch_rate {
            self.dispatch_rate = super::dispatch::dispatch_limiter(fresh.dispatch_rate, now);
        }
        if fresh.subscription_dispatch_rate != self.policies.subscription_dispatch_rate {
            for sub in self.subscriptions.values_mut() {
                sub.rate = super::dispatch::dispatch_limiter(fresh.subscription_dispatch_rate, now);
            }
        }
        if fresh.replicator_dispatch_rate != self.policies.replicator_dispatch_rate {
            self.set_replicator_rates(fresh.replicator_dispatch_rate, now);
        }
        if (fresh.backlog_size, fresh.backlog_age)
            != (self.policies.backlog_size, self.policies.backlog_age)
        {
            self.checks.next_quota = now;
        }
        if fresh.ttl != self.policies.ttl {
            self.checks.next_expiry = now;
        }
        if fresh.subscription_expiration != self.policies.subscription_expiration {
            self.checks.next_subscription_expiry = now;
        }
        self.subscribe_rate.set_rate(fresh.subscribe_rate, now);
        let dedup = fresh.deduplication;
        self.policies = fresh;
        self.set_dedup(dedup);
        // A rate lifted lets a held dispatch (or replicator feed) go now.
        self.dispatch_wake = Some(now);
    }

    /// Message TTL, backlog quotas and subscription expiration, each at its interval.
    pub(super) fn enforce_policies(&mut self) {
        let now = self.broker.clock().now();
        let config = self.broker.config();
        let expiry_every = Duration::from_secs(config.message_expiry_check_interval_secs.max(1));
        let quota_every = Duration::from_secs(config.backlog_quota_check_interval_secs.max(1));
        let subscription_expiry_every =
            Duration::from_secs(config.subscription_expiry_check_interval_secs.max(1));
        if self
            .checks
            .subscription_expiry_due(now, subscription_expiry_every)
        {
            self.expire_subscriptions();
        }
        if self.checks.expiry_due(now, expiry_every) {
            if let Some(ttl) = self.policies.ttl {
                self.expire(ttl);
            }
        }
        if self.checks.quota_due(now, quota_every) {
            self.check_backlog_quotas();
        }
    }

    fn expire(&mut self, ttl: Duration) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match log.expire(self.broker.clock().now_ms(), ttl_ms) {
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
    fn check_backlog_quotas(&mut self) {
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
        let now = self.broker.clock().now_ms();
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
            self.close_producers();
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

    /// The subscribe rate a SUBSCRIBE on a persistent topic must pass (per
    /// consumer: client host, consumer name and id; Pulsar's answer).
    pub(super) fn admit_subscribe(
        &mut self,
        conn: &super::ConnCtx,
        cmd: &kilonova_pulsar_protocol::proto::CommandSubscribe,
    ) -> Result<(), BrokerError> {
        if self.log.is_none() {
            return Ok(());
        }
        let who = ConsumerIdentity::new(
            &conn.client.address,
            cmd.consumer_name.as_deref().unwrap_or(""),
            cmd.consumer_id,
        );
        if self
            .subscribe_rate
            .try_acquire(who, self.broker.clock().now())
        {
            return Ok(());
        }
        tracing::debug!(topic = %self.full_name, subscription = %cmd.subscription, consumer_id = cmd.consumer_id, "subscribe refused by the subscribe rate");
        self.broker.metrics().count_subscribe_throttled();
        Err(BrokerError::NotAllowed(
            "Subscribe limited by subscribe rate limit per consumer.".into(),
        ))
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
        // Replicators' cursors are not subscriptions; an idle topic's
        // replicators have caught up (`is_idle`), and its deletion is local.
        let subscriptions_allow = match rule.mode {
            InactiveTopicDeleteMode::DeleteWhenNoSubscriptions => !log
                .cursor_names()
                .iter()
                .any(|n| super::replication::is_subscription(n)),
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
        let every = self.inactive_check_every();
        self.checks
            .inactive(rule, since, self.broker.clock().now(), every)
    }

    fn inactive_check_every(&self) -> Duration {
        Duration::from_secs(
            self.broker
                .config()
                .delete_inactive_topics_frequency_secs
                .max(1),
        )
    }

    /// An admin request's check before deleting for inactivity: idle for at
    /// least `min_inactive` and deletable under the topic's rule.
    pub(super) fn deletable_now(&self, min_inactive: Duration) -> bool {
        let (Some(rule), Some(since)) = (self.policies.inactive, self.idle_since) else {
            return false;
        };
        self.is_idle()
            && self.deletable(rule)
            && self.broker.clock().now().duration_since(since) >= min_inactive
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
            let every = self.inactive_check_every();
            if self
                .checks
                .partitioned_attempt_due(self.broker.clock().now(), every)
            {
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
        return Ok(Some(Exceeded::of(
            q,
            format!(
                "subscription {name} holds {bytes} bytes, over the {} byte quota",
                q.limit
            ),
        )));
    }
    // Skip the oldest entries, in proportion to the excess (a few rounds:
    // sizes are estimated per segment).
    for _ in 0..4 {
        let bytes = log.backlog_bytes(name)?;
        let entries = log.cursor_info(name)?.backlog_entries;
        if bytes <= q.limit || entries == 0 {
            break;
        }
        let skipped = log.skip(name, entries_to_evict(entries, bytes, q.limit))?;
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
    let Some(oldest) = log.oldest_unacked_publish_ms(name)? else {
        return Ok(None);
    };
    if !older_than_quota(oldest, now_ms, q) {
        return Ok(None);
    }
    if q.policy != BacklogQuotaPolicy::ConsumerBacklogEviction {
        return Ok(Some(Exceeded::of(
            q,
            format!(
                "subscription {name}'s oldest message is older than {} s",
                q.limit
            ),
        )));
    }
    log.expire_cursors(now_ms, q.limit.saturating_mul(1000), Some(name))?;
    *evicted = true;
    Ok(None)
}

/// Entries to skip so that a backlog of `entries` holding `bytes` comes under
/// `limit` bytes, in proportion to the excess (at least one).
fn entries_to_evict(entries: u64, bytes: u64, limit: u64) -> u64 {
    let excess = u128::from(bytes.saturating_sub(limit));
    let skip = (u128::from(entries) * excess).div_ceil(u128::from(bytes.max(1)));
    u64::try_from(skip).unwrap_or(u64::MAX).max(1)
}

/// Whether a message published at `published_ms` is older than the age quota
/// (`q.limit` seconds) at `now_ms`.
fn older_than_quota(published_ms: u64, now_ms: u64, q: Quota) -> bool {
    now_ms.saturating_sub(published_ms) > q.limit.saturating_mul(1000)
}

#[cfg(test)]
mod tests;
