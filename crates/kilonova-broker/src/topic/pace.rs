//! How often a topic's housekeeping tick comes. Every
//! `cursor_persist_interval_ms` while the topic has anything that pace
//! serves (cursors to persist, readers, TTL and quotas, replication,
//! deduplication, compaction, offloads, inactivity); every
//! `quiet_topic_tick_ms` while it is only written to, where a tick has only
//! rates, gauges, retention's trimming and threshold offloads to look at
//! (and the last two are worth a look after a roll-over, which brings the
//! next tick back too).
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

use super::{Topic, TICK_GRID};
use crate::clock::SteppedTicks;

/// The pace of one topic's ticks.
pub(super) struct Pace {
    frequent: Duration,
    quiet: Duration,
    /// Whether the next tick was put off to the quiet pace.
    slowed: bool,
    /// The log's current segment at the last tick: a roll-over since makes
    /// retention's trimming and the offload threshold worth a look.
    segment_at_tick: Option<kilonova_storage::SegmentId>,
}

impl Pace {
    pub(super) fn new(config: &crate::config::BrokerConfig) -> Self {
        let frequent = Duration::from_millis(config.cursor_persist_interval_ms.max(10));
        Pace {
            frequent,
            quiet: Duration::from_millis(config.quiet_topic_tick_ms).max(frequent),
            slowed: false,
            segment_at_tick: None,
        }
    }

    /// The ticker at the frequent pace, on the shared grid. Every tick, at
    /// either pace, stays in step with its first, so that topics keep the
    /// places on the grid their loads gave them (one policy change does not
    /// gather every slowed topic's ticks into one instant).
    pub(super) fn ticks(&self) -> SteppedTicks {
        SteppedTicks::on_grid(self.frequent, TICK_GRID)
    }

    /// Whether the quiet pace is slower than the frequent one.
    pub(super) fn can_slow(&self) -> bool {
        self.quiet > self.frequent
    }

    pub(super) fn slowed(&self) -> bool {
        self.slowed
    }

    /// Puts the next tick off to the quiet pace.
    pub(super) fn slow(&mut self, ticks: &mut SteppedTicks) {
        if self.can_slow() {
            ticks.next_in(self.quiet);
            self.slowed = true;
        }
    }

    /// Brings the next tick back to the frequent pace: the first of the
    /// topic's places not before now.
    pub(super) fn hurry(&mut self, ticks: &mut SteppedTicks) {
        if self.slowed {
            ticks.next_in(Duration::ZERO);
            self.slowed = false;
        }
    }

    /// Notes the log's current segment at a tick.
    pub(super) fn ticked_at(&mut self, segment: Option<kilonova_storage::SegmentId>) {
        self.segment_at_tick = segment;
    }

    fn same_segment(&self, segment: Option<kilonova_storage::SegmentId>) -> bool {
        self.segment_at_tick == segment
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
    /// reader or waiter, no cursor writes out, no roll-over since the last
    /// tick (Pulsar, too, trims after a roll-over), and neither replication,
    /// deduplication, compaction, an offload in progress or due, a
    /// cluster's shared log nor a fence or handover, and its policies were
    /// read at their scope's latest generation (`PolicyScope`).
    pub(super) fn may_tick_slowly(&self) -> bool {
        !self.producers.is_empty()
            && self.subscriptions.is_empty()
            && self.consumer_subs.is_empty()
            && self.waiting_exclusive.is_empty()
            && self.index_waiters.is_empty()
            && self.log.as_ref().is_some_and(|l| {
                l.cursor_count() == 0 && self.pace.same_segment(current_segment(l))
            })
            && self.shared.is_none()
            && self.broker.membership().is_none()
            && self.replicators.is_empty()
            && !self.replicated_into
            && !self.repl_subs.writing()
            && self.dedup.is_none()
            && !self.dedup_all
            && !self.compaction.is_running()
            && self.offload.settled()
            && self.cursor_writes.is_none()
            && !self.fenced
            && !self.shared_failed
            && !self.handing_over
            && self.policies_seen == Some(self.policy_scope.generation())
    }
}

/// The log's current segment (the last listed).
pub(super) fn current_segment(
    log: &kilonova_storage::ManagedLog,
) -> Option<kilonova_storage::SegmentId> {
    log.segments().last().map(|s| s.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(frequent_ms: u64, quiet_ms: u64) -> Pace {
        let config = crate::config::BrokerConfig {
            cursor_persist_interval_ms: frequent_ms,
            quiet_topic_tick_ms: quiet_ms,
            ..Default::default()
        };
        Pace::new(&config)
    }

    // Paused time: the runtime's clock moves only as timers fire.
    #[tokio::test(start_paused = true)]
    async fn slowed_ticks_come_at_the_quiet_pace_and_hurried_ones_at_the_next_place() {
        let mut p = pace(100, 1_000);
        let mut ticks = p.ticks();
        let first = ticks.tick().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        p.slow(&mut ticks);
        assert!(p.slowed());
        assert_eq!(ticks.tick().await, first + Duration::from_millis(1_100));
        p.slow(&mut ticks);
        tokio::time::sleep(Duration::from_millis(250)).await;
        p.hurry(&mut ticks);
        assert!(!p.slowed());
        assert_eq!(ticks.tick().await, first + Duration::from_millis(1_400));
        assert_eq!(ticks.tick().await, first + Duration::from_millis(1_500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_pace_no_slower_than_the_frequent_one_never_slows() {
        let mut p = pace(100, 50);
        let mut ticks = p.ticks();
        let first = ticks.tick().await;
        assert!(!p.can_slow());
        p.slow(&mut ticks);
        assert!(!p.slowed());
        assert_eq!(ticks.tick().await, first + Duration::from_millis(100));
    }
}
