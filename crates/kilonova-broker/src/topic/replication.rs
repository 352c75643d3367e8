//! A topic's replicators: one per remote cluster its namespace replicates
//! to, each a durable cursor `pulsar.repl.<cluster>` that this task reads
//! and a [`crate::replicator`] task that sends what it is fed.
//!
//! The set follows the policies: replicators start when the topic loads and
//! when a cluster is added; a removed cluster's replicator stops and its
//! cursor is deleted. A new cursor starts at the end of the topic (as
//! Pulsar's): messages published before replication was configured stay
//! local. At most [`WINDOW_ENTRIES`] entries are fed and not yet confirmed
//! per replicator, so a slow or absent remote grows the cursor's backlog,
//! never the broker's memory, and never slows local publishing. A topic
//! whose replicators are behind stays loaded until they catch up.
//!
//! Each replicator feeds within its own dispatch rate (the policy
//! `replicatorDispatchRate`): held back, it sets the topic's dispatch wake-up
//! and goes on then. The rate only delays what the cursor reads, so local
//! publishing never waits for it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use kilonova_storage::InitialPosition;

use super::dispatch::{dispatch_limiter, wake_after};
use super::Topic;
use crate::metrics::ReplicationSample;
use crate::rate_limit::{RateLimiter, RateLimits};
use crate::rate_meter::FlowMeter;
use crate::replicator::{
    self, is_replicator, replicator_name, Feed, ReplicatorStats, Report, Spec, WINDOW_ENTRIES,
};

/// The topic's side of one replicator.
pub(super) struct Replicator {
    cursor: String,
    feed: mpsc::UnboundedSender<Feed>,
    task: tokio::task::JoinHandle<()>,
    /// The connection being fed; `None` while the replicator is not connected.
    epoch: Option<u64>,
    /// Asked to connect (there is something to send), not connected yet.
    connecting: bool,
    /// Entries fed and not yet reported done.
    in_flight: usize,
    stats: Arc<ReplicatorStats>,
    meter: FlowMeter,
    /// The replicator dispatch rate: what may be fed.
    rate: RateLimiter,
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A replicator as topic stats show it (Pulsar's `replication` section).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatorStatsView {
    /// Inbound: what the remote cluster's replicator publishes here.
    pub msg_rate_in: f64,
    pub msg_throughput_in: f64,
    /// The remote replicator's producer address, if it is connected here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_connection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_connected_since: Option<String>,
    pub msg_rate_out: f64,
    pub msg_throughput_out: f64,
    pub msg_out_counter: u64,
    pub bytes_out_counter: u64,
    /// Entries not yet confirmed by the remote cluster.
    pub replication_backlog: u64,
    pub connected: bool,
    /// How far behind the remote is: the age of the last entry it confirmed,
    /// while there is a backlog (0 without one).
    pub replication_delay_in_seconds: u64,
}

impl Topic {
    /// Starts and stops replicators to match the policies' remote clusters.
    pub(super) fn sync_replicators(&mut self) {
        let Some(log) = self.log.as_mut() else {
            return; // non-persistent topics are not replicated
        };
        let wanted: BTreeSet<&String> = self.policies.replication_clusters.iter().collect();
        let gone: Vec<String> = self
            .replicators
            .keys()
            .filter(|c| !wanted.contains(c))
            .cloned()
            .collect();
        for cluster in gone {
            self.replicators.remove(&cluster);
            tracing::info!(topic = %self.full_name, remote = %cluster, "replicator stopped: the cluster left the replication clusters");
        }
        // Cursors of clusters removed while the topic was not loaded, too.
        for name in log.cursor_names() {
            let stale = name
                .strip_prefix(replicator::REPLICATOR_PREFIX)
                .is_some_and(|c| !wanted.contains(&c.to_string()));
            if stale {
                if let Err(e) = log.delete_cursor(&name) {
                    tracing::warn!(topic = %self.full_name, cursor = %name, error = %e, "deleting a replicator cursor failed");
                }
            }
        }
        for cluster in wanted {
            if self.replicators.contains_key(cluster) {
                continue;
            }
            let cursor = replicator_name(cluster);
            if !log.has_cursor(&cursor) {
                if let Err(e) = log.open_cursor(&cursor, InitialPosition::Latest, true) {
                    tracing::warn!(topic = %self.full_name, remote = %cluster, error = %e, "cannot open the replicator's cursor");
                    continue;
                }
            }
            let (feed, fed) = mpsc::unbounded_channel();
            let stats = Arc::new(ReplicatorStats::default());
            let spec = Spec {
                broker: self.broker.clone(),
                topic: self.full_name.clone(),
                remote: cluster.clone(),
            };
            let task = tokio::spawn(replicator::run(
                spec,
                fed,
                self.replication_reports.clone(),
                stats.clone(),
            ));
            self.replicators_ran = true;
            tracing::info!(topic = %self.full_name, remote = %cluster, "replicator started");
            let now = self.broker.clock().now();
            self.replicators.insert(
                cluster.clone(),
                Replicator {
                    cursor,
                    feed,
                    task,
                    epoch: None,
                    connecting: false,
                    in_flight: 0,
                    stats,
                    meter: FlowMeter::default(),
                    rate: dispatch_limiter(self.policies.replicator_dispatch_rate, now),
                },
            );
        }
        // A backlog left from before (a restart, an outage) goes now.
        self.feed_replicators();
    }

    /// Applies a changed replicator dispatch rate to every replicator.
    pub(super) fn set_replicator_rates(&mut self, limits: RateLimits, now: Instant) {
        for r in self.replicators.values_mut() {
            r.rate = dispatch_limiter(limits, now);
        }
    }

    /// Feeds each connected replicator what it has room for within its
    /// dispatch rate (one held back by its rate sets the dispatch wake-up);
    /// one that is not connected moves past what is not for its remote and
    /// is asked to connect when something is.
    pub(super) fn feed_replicators(&mut self) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let batch = self.broker.config().dispatch_batch_entries.max(1);
        let now = self.broker.clock().now();
        for (cluster, r) in self.replicators.iter_mut() {
            let Some(epoch) = r.epoch else {
                if !r.connecting && wants_connection(log, r, cluster, batch) {
                    r.connecting = r.feed.send(Feed::Connect).is_ok();
                }
                continue;
            };
            while r.in_flight < WINDOW_ENTRIES {
                let Some(allowed) = rated_room(&mut r.rate, now) else {
                    wake_after(&mut self.dispatch_wake, now, Some(r.rate.wait_for_one(now)));
                    break;
                };
                // A batch entry may overdraw the rate; the next feed then
                // waits until the debt is paid.
                let room = (WINDOW_ENTRIES - r.in_flight).min(batch).min(allowed);
                let entries = match log.read_next(&r.cursor, room) {
                    Ok(e) => e,
                    Err(e) => {
                        // An offloaded entry is fetched; the feed goes on then.
                        if !self.offload.want(&e) {
                            tracing::warn!(topic = %self.full_name, remote = %cluster, error = %e, "replicator: reading the topic failed");
                        }
                        break;
                    }
                };
                if entries.is_empty() {
                    break;
                }
                let (mut messages, mut bytes) = (0u64, 0u64);
                for entry in entries {
                    messages += u64::from(entry.message_count.max(1));
                    bytes += entry.data.len() as u64;
                    r.in_flight += 1;
                    if r.feed.send(Feed::Entry { epoch, entry }).is_err() {
                        break;
                    }
                }
                r.rate.consume(messages, bytes, now);
            }
        }
        self.start_fetches();
    }

    /// A replicator's report: connected (feed from what was confirmed),
    /// entries done (move the cursor), or connection lost (stop feeding).
    pub(super) fn on_replication_report(&mut self, report: Report) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        match report {
            Report::Ready { cluster, epoch } => {
                let Some(r) = self.replicators.get_mut(&cluster) else {
                    return;
                };
                r.epoch = Some(epoch);
                r.connecting = false;
                r.in_flight = 0;
                // Everything not confirmed goes again; the remote drops what it has.
                if let Err(e) = log.rewind(&r.cursor) {
                    tracing::warn!(topic = %self.full_name, remote = %cluster, error = %e, "replicator: rewinding its cursor failed");
                }
            }
            Report::Done {
                cluster,
                epoch,
                upto,
                entries,
            } => {
                let Some(r) = self.replicators.get_mut(&cluster) else {
                    return;
                };
                if r.epoch != Some(epoch) {
                    return;
                }
                r.in_flight = r.in_flight.saturating_sub(entries);
                if let Err(e) = log.ack_cumulative(&r.cursor, upto) {
                    tracing::warn!(topic = %self.full_name, remote = %cluster, error = %e, "replicator: moving its cursor failed");
                }
            }
            Report::Lost { cluster, epoch } => {
                if let Some(r) = self
                    .replicators
                    .get_mut(&cluster)
                    .filter(|r| r.epoch == Some(epoch))
                {
                    // Reconnecting after a failure, or idle until there is more.
                    r.epoch = None;
                    r.connecting = false;
                    r.in_flight = 0;
                }
            }
        }
        self.feed_replicators();
    }

    /// Whether every replicator has sent everything (an idle topic with a
    /// replication backlog stays loaded to send it).
    pub(super) fn replication_caught_up(&self) -> bool {
        let Some(log) = self.log.as_ref() else {
            return true;
        };
        self.replicators.values().all(|r| {
            log.cursor_info(&r.cursor)
                .map_or(true, |i| i.backlog_entries == 0)
        })
    }

    /// Ticks the replicators' rate meters and refreshes what `/metrics`
    /// shows of them.
    pub(super) fn tick_replication_meters(&mut self, secs: f64) {
        let replicating =
            !self.replicators.is_empty() || self.producers.values().any(|p| p.replicator);
        // No replication either way, now or at the last tick: nothing to show.
        if !replicating && !self.replication_shown {
            return;
        }
        self.replication_shown = replicating;
        for r in self.replicators.values_mut() {
            r.meter.tick(
                r.stats.msg_out.load(Ordering::Relaxed),
                r.stats.bytes_out.load(Ordering::Relaxed),
                secs,
            );
        }
        let samples = self
            .replication_stats()
            .into_iter()
            .map(|(remote, s)| ReplicationSample {
                remote,
                rate_in: s.msg_rate_in,
                throughput_in: s.msg_throughput_in,
                backlog: s.replication_backlog,
                rate_out: s.msg_rate_out,
                throughput_out: s.msg_throughput_out,
                connected: s.connected,
                delay_secs: s.replication_delay_in_seconds,
            })
            .collect();
        self.metrics.set_replication(samples);
    }

    /// The `replication` section of the topic's stats, by remote cluster:
    /// outbound (this topic's replicators) and inbound (remote clusters'
    /// replicators producing here).
    pub(super) fn replication_stats(&self) -> BTreeMap<String, ReplicatorStatsView> {
        let now_ms = self.broker.clock().now_ms();
        let mut views: BTreeMap<String, ReplicatorStatsView> = self
            .replicators
            .iter()
            .map(|(cluster, r)| {
                let backlog = self
                    .log
                    .as_ref()
                    .and_then(|l| l.cursor_info(&r.cursor).ok())
                    .map_or(0, |i| i.backlog_entries);
                let confirmed = r.stats.last_confirmed_publish_ms.load(Ordering::Relaxed);
                let delay_ms = if backlog > 0 && confirmed > 0 {
                    now_ms.saturating_sub(confirmed)
                } else {
                    0
                };
                let view = ReplicatorStatsView {
                    msg_rate_in: 0.0,
                    msg_throughput_in: 0.0,
                    inbound_connection: None,
                    inbound_connected_since: None,
                    msg_rate_out: r.meter.msgs.rate(),
                    msg_throughput_out: r.meter.bytes.rate(),
                    msg_out_counter: r.stats.msg_out.load(Ordering::Relaxed),
                    bytes_out_counter: r.stats.bytes_out.load(Ordering::Relaxed),
                    replication_backlog: backlog,
                    connected: r.stats.connected.load(Ordering::Relaxed),
                    replication_delay_in_seconds: delay_ms / 1000,
                };
                (cluster.clone(), view)
            })
            .collect();
        for p in self.producers.values() {
            let Some(cluster) = p.name.strip_prefix(replicator::REPLICATOR_PREFIX) else {
                continue;
            };
            let view = views.entry(cluster.to_string()).or_default();
            view.msg_rate_in += p.meter_in.msgs.rate();
            view.msg_throughput_in += p.meter_in.bytes.rate();
            view.inbound_connection = Some(p.client.address.to_string());
            view.inbound_connected_since =
                Some(crate::clock::utc_time_ms(p.client.connected_since_ms));
        }
        views
    }
}

/// Batches of entries one look for something to send reads at most: a long
/// run of entries not for the remote is moved past over several passes, so
/// the topic keeps serving between them.
const SCAN_BATCHES_PER_PASS: usize = 16;

/// For a replicator not connected: acknowledges the entries after its
/// cursor that are not for its remote (replicated here from elsewhere, or
/// sent to other clusters only) and says whether one that is comes next.
fn wants_connection(
    log: &mut kilonova_storage::ManagedLog,
    r: &Replicator,
    cluster: &str,
    batch: usize,
) -> bool {
    if let Err(e) = log.rewind(&r.cursor) {
        tracing::warn!(remote = %cluster, error = %e, "replicator: rewinding its cursor failed");
        return false;
    }
    for _ in 0..SCAN_BATCHES_PER_PASS {
        let entries = match log.read_next(&r.cursor, batch) {
            Ok(e) if !e.is_empty() => e,
            _ => return false,
        };
        for e in entries {
            if replicator::is_for(&e.data, cluster) {
                // Read again once connected.
                let _ = log.rewind(&r.cursor);
                return true;
            }
            if let Err(err) = log.ack_cumulative(&r.cursor, e.position) {
                tracing::warn!(remote = %cluster, error = %err, "replicator: moving its cursor failed");
                return false;
            }
        }
    }
    false // more next pass (every housekeeping tick and append)
}

/// How many entries a replicator may be fed now under its rate: `None` when
/// the rate holds it back. Every entry holds at least one message, so no more
/// entries than messages allowed; under a byte limit one at a time (an
/// entry's size is known once read), so at most one entry overdraws it.
fn rated_room(rate: &mut RateLimiter, now: Instant) -> Option<usize> {
    if rate.is_unlimited() {
        return Some(usize::MAX);
    }
    if rate.wait_for_one(now) > Duration::ZERO {
        return None;
    }
    match rate.available(now) {
        (_, Some(_)) => Some(1),
        (Some(messages), None) => Some(usize::try_from(messages).unwrap_or(usize::MAX)),
        (None, None) => Some(usize::MAX),
    }
}

/// Whether a cursor is a replicator's, not a subscription.
pub(super) fn is_subscription(cursor: &str) -> bool {
    !is_replicator(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Rate;

    fn limiter(messages: Option<u64>, bytes: Option<u64>, now: Instant) -> RateLimiter {
        dispatch_limiter(
            RateLimits {
                messages: messages.map(Rate::per_second),
                bytes: bytes.map(Rate::per_second),
            },
            now,
        )
    }

    #[test]
    fn an_unlimited_replicator_is_fed_whatever_its_window_allows() {
        let now = crate::clock::Clock::now(&crate::clock::ManualClock::at_ms(0));
        assert_eq!(
            rated_room(&mut limiter(None, None, now), now),
            Some(usize::MAX)
        );
    }

    #[test]
    fn a_message_rate_feeds_one_periods_worth_then_holds_until_it_refills() {
        let now = crate::clock::Clock::now(&crate::clock::ManualClock::at_ms(0));
        let mut rate = limiter(Some(20), None, now);
        assert_eq!(
            rated_room(&mut rate, now),
            Some(20),
            "one period's worth at once"
        );
        rate.consume(20, 2_000, now);
        assert_eq!(rated_room(&mut rate, now), None, "held back");
        assert!(
            rate.wait_for_one(now) > Duration::ZERO,
            "the wake-up is armed later"
        );
        let later = now + Duration::from_millis(500);
        assert_eq!(
            rated_room(&mut rate, later),
            Some(10),
            "half a second refills half"
        );
    }

    #[test]
    fn a_byte_rate_feeds_one_entry_at_a_time_and_holds_while_in_debt() {
        let now = crate::clock::Clock::now(&crate::clock::ManualClock::at_ms(0));
        let mut rate = limiter(Some(100), Some(1_000), now);
        assert_eq!(rated_room(&mut rate, now), Some(1));
        // One entry bigger than a period's worth overdraws the bytes...
        rate.consume(1, 3_000, now);
        assert_eq!(rated_room(&mut rate, now), None);
        // ...and nothing more goes until the debt is paid.
        assert_eq!(
            rated_room(&mut rate, now + Duration::from_millis(1_900)),
            None
        );
        assert_eq!(
            rated_room(&mut rate, now + Duration::from_millis(2_100)),
            Some(1)
        );
    }
}
