//! How often a topic's housekeeping tick comes. Every
//! `cursor_persist_interval_ms` while the topic has anything that pace
//! serves (cursors to persist, readers, TTL and quotas, replication,
//! deduplication, compaction, offloads, inactivity); every
//! `quiet_topic_tick_ms` while it is only written to, where a tick has only
//! rates, gauges, retention's trimming and threshold offloads to look at.
//! 10,000 topics each written once a second would otherwise wake 10,000
//! times a second for housekeeping alone.
//!
//! A policy change must not wait for the slow pace (a publish rate, a
//! deduplication switch): a slow topic waits on the policy cache's change
//! notification too, and the first change brings its next tick within the
//! frequent pace (one wake per frequent period at most, however many
//! changes come). Anything that makes the topic need the frequent pace
//! (a subscription, a consumer, the last producer leaving) brings it back at
//! the end of the turn that made it.

use std::time::Duration;

use tokio::time::{Instant, Interval};

use super::{Topic, TICK_GRID};

/// The pace of one topic's ticks.
pub(super) struct Pace {
    frequent: Duration,
    quiet: Duration,
    /// Whether the next tick was put off to the quiet pace.
    slowed: bool,
}

impl Pace {
    pub(super) fn new(config: &crate::config::BrokerConfig) -> Self {
        let frequent = Duration::from_millis(config.cursor_persist_interval_ms.max(10));
        Pace {
            frequent,
            quiet: Duration::from_millis(config.quiet_topic_tick_ms).max(frequent),
            slowed: false,
        }
    }

    /// The ticker at the frequent pace, on the shared grid.
    pub(super) fn ticks(&self) -> Interval {
        crate::clock::ticks_on_grid(self.frequent, TICK_GRID)
    }

    pub(super) fn slowed(&self) -> bool {
        self.slowed
    }

    /// Puts the next tick off to the quiet pace (on the grid).
    pub(super) fn slow(&mut self, ticks: &mut Interval) {
        if self.quiet > self.frequent {
            ticks.reset_at(crate::clock::on_grid(
                Instant::now() + self.quiet,
                TICK_GRID,
            ));
            self.slowed = true;
        }
    }

    /// Brings the next tick back within the frequent pace.
    pub(super) fn hurry(&mut self, ticks: &mut Interval) {
        if self.slowed {
            ticks.reset_at(crate::clock::on_grid(
                Instant::now() + self.frequent,
                TICK_GRID,
            ));
            self.slowed = false;
        }
    }

    /// Whether rates last sampled at `since` are older than a frequent tick
    /// would leave them (`now` on the broker's clock).
    pub(super) fn stale(&self, since: std::time::Instant, now: std::time::Instant) -> bool {
        now.saturating_duration_since(since) >= self.frequent
    }
}

impl Topic {
    /// Whether the topic's housekeeping may come at the quiet pace: it has
    /// producers (else its inactivity is watched), no subscription, cursor,
    /// reader or waiter, and neither replication, deduplication, compaction,
    /// an offload in progress, a cluster's shared log nor a fence or
    /// handover, and its policies were read at the cache's latest
    /// generation.
    pub(super) fn may_tick_slowly(&self) -> bool {
        !self.producers.is_empty()
            && self.subscriptions.is_empty()
            && self.consumer_subs.is_empty()
            && self.waiting_exclusive.is_empty()
            && self.index_waiters.is_empty()
            && self.log.as_ref().is_some_and(|l| l.cursor_count() == 0)
            && self.shared.is_none()
            && self.broker.membership().is_none()
            && self.replicators.is_empty()
            && !self.replicated_into
            && !self.repl_subs.writing()
            && self.dedup.is_none()
            && !self.dedup_all
            && !self.compaction.is_running()
            && !self.offload.awaits_events()
            && !self.fenced
            && !self.shared_failed
            && !self.handing_over
            && self.policies_seen == Some(self.broker.policies_generation())
    }
}
