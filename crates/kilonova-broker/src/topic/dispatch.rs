//! When and how much a topic dispatches: subscriptions marked during a burst
//! of commands are dispatched once after it; every pass runs within the
//! topic's and the subscription's dispatch rates (a shared topic rate starts
//! each pass with the next subscription); a pass held back by a rate, or a
//! delayed message coming due, sets the topic's next wake-up. Which consumer
//! gets each entry is the subscription's dispatcher ([`crate::subscription`]).

use std::time::{Duration, Instant};

use kilonova_storage::{ManagedLog, StorageError};

use super::Topic;
use crate::rate_limit::{RateLimiter, RateLimits};
use crate::subscription::{Budget, CompactedLimits, ConsumerKey, DispatchLimits, Subscription};

impl Topic {
    pub(super) fn limits(&self) -> DispatchLimits {
        let c = self.broker.config();
        DispatchLimits {
            batch_entries: c.dispatch_batch_entries,
            max_redelivery_backlog: c.max_redelivery_backlog_entries,
            delayed_delivery: self.policies.delayed_delivery,
            max_delayed: c.max_delayed_messages_per_subscription,
            now_ms: self.broker.clock().now_ms(),
            drained: self.drained.clone(),
            max_unacked_per_consumer: self.policies.max_unacked_per_consumer.map(u64::from),
            max_unacked_per_subscription: self.policies.max_unacked_per_subscription.map(u64::from),
            compacted: self
                .log
                .as_ref()
                .and_then(|l| l.compacted_horizon())
                .map(|horizon| CompactedLimits {
                    horizon,
                    max_batch_bytes: self.max_batch_bytes(),
                }),
            max_cached_snapshots: c.replicated_subscriptions_snapshot_max_cached_per_subscription,
        }
    }

    pub(super) fn dispatch_of(&mut self, key: ConsumerKey) {
        if let Some(name) = self.consumer_subs.get(&key).cloned() {
            self.dispatch_sub(&name);
        }
    }

    pub(super) fn dispatch_sub(&mut self, name: &str) {
        if !self.to_dispatch.contains(name) {
            self.to_dispatch.insert(name.to_owned());
        }
    }

    pub(super) fn flush_dispatch(&mut self) {
        if self.to_dispatch.is_empty() {
            return;
        }
        let limits = self.limits();
        let Some(log) = self.log.as_mut() else {
            self.to_dispatch.clear();
            return;
        };
        let now = self.broker.clock().now();
        let mut failed = Vec::new();
        for name in self.to_dispatch.drain() {
            if let Some(sub) = self.subscriptions.get_mut(&name) {
                let rate = &mut self.dispatch_rate;
                if let Err(e) =
                    dispatch_within_rates(sub, log, &limits, rate, &mut self.dispatch_wake, now)
                {
                    failed.push((name, e));
                }
            }
        }
        self.dispatch_failed(failed);
    }

    pub(super) fn dispatch_all(&mut self) {
        self.to_dispatch.clear();
        let limits = self.limits();
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let now = self.broker.clock().now();
        let (rate, wake) = (&mut self.dispatch_rate, &mut self.dispatch_wake);
        let mut failed = Vec::new();
        if rate.is_unlimited() || self.subscriptions.len() < 2 {
            for (name, sub) in self.subscriptions.iter_mut() {
                if let Err(e) = dispatch_within_rates(sub, log, &limits, rate, wake, now) {
                    failed.push((name.clone(), e));
                }
            }
            return self.dispatch_failed(failed);
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
                if let Err(e) = dispatch_within_rates(sub, log, &limits, rate, wake, now) {
                    failed.push((name, e));
                }
            }
        }
        self.dispatch_failed(failed);
    }

    /// Dispatches that failed: an entry only the object store holds is
    /// fetched (the subscription is dispatched again once it is here);
    /// anything else is logged.
    fn dispatch_failed(&mut self, failed: Vec<(String, StorageError)>) {
        for (name, e) in failed {
            if !self.offload.want(&e) {
                tracing::warn!(topic = %self.full_name, subscription = %name, error = %e, "dispatch failed");
            }
        }
        self.start_fetches();
    }
}

/// Dispatches one subscription within the dispatch rates, and keeps in `wake`
/// when the topic must dispatch again (a rate held it back, or a delayed
/// message comes due).
fn dispatch_within_rates(
    sub: &mut Subscription,
    log: &mut ManagedLog,
    limits: &DispatchLimits,
    topic_rate: &mut RateLimiter,
    wake: &mut Option<Instant>,
    now: Instant,
) -> Result<(), StorageError> {
    let wait = rated_dispatch(sub, log, limits, topic_rate, now)?;
    wake_after(wake, now, wait);
    wake_after(wake, now, delayed_wait(sub, limits.now_ms));
    Ok(())
}

/// How long until the subscription's next delayed entry is due.
fn delayed_wait(sub: &Subscription, now_ms: u64) -> Option<Duration> {
    sub.next_delayed_ms()
        .map(|t| Duration::from_millis(t.saturating_sub(now_ms).max(1)))
}

/// Keeps the earliest of the dispatch wake-ups asked for.
pub(super) fn wake_after(wake: &mut Option<Instant>, now: Instant, wait: Option<Duration>) {
    if let Some(w) = wait {
        let at = now + w;
        if wake.is_none_or(|t| at < t) {
            *wake = Some(at);
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
fn rated_dispatch(
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
