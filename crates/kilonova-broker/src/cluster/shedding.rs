//! The load manager's decisions (issue #29), as pure functions of the load
//! reports and the time: which bundles an overloaded broker sheds and where
//! each goes, and which bundles split. Nothing here reads a clock, a socket
//! or the metadata store, so a simulation can run it for thousands of rounds
//! (the tests below do).
//!
//! Shedding follows Pulsar's threshold semantics: a broker's load is the
//! largest of its weighted resource usages, smoothed over reports; a broker
//! more than `shedding_threshold_percent` above the cluster's average sheds
//! the excess (plus a small margin), in as few bundles as cover it, largest
//! first. Two rules keep it from ping-ponging, the failure operators report
//! with Pulsar:
//! - a bundle goes to a broker **below the average load**, chosen at random
//!   among them, and only if it ends no more than a quarter of the
//!   threshold above the average with the bundle — far from the shedding line, so it never
//!   sheds the bundle back (never to a broker that merely has fewer
//!   messages but more load);
//! - a bundle moved within `grace_period` is not moved again.
//!
//! Reports lag a move (the bundle unloads, loads at its new owner, and its
//! traffic shows in the next reports' rates): until the receiver reports the
//! bundle carrying traffic and the sender no longer reports it, or for
//! `transit_timeout`, a moved bundle's load counts at its receiver and not at
//! its sender, as Pulsar's leader counts bundles it has just assigned. Else
//! the next rounds see the receiver still idle (and send it more) and the
//! sender still overloaded (and shed more).

use std::collections::HashMap;
use std::time::Duration;

/// Usage of each resource, in percent of the broker's limit (0–100+).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu: f64,
    pub memory: f64,
    pub bandwidth_in: f64,
    pub bandwidth_out: f64,
}

/// How much each resource counts (Pulsar's `loadBalancer*ResourceWeight`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    pub cpu: f64,
    pub memory: f64,
    pub bandwidth_in: f64,
    pub bandwidth_out: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            cpu: 1.0,
            memory: 1.0,
            bandwidth_in: 1.0,
            bandwidth_out: 1.0,
        }
    }
}

impl Usage {
    /// The load: the largest weighted usage.
    pub fn load(&self, w: &Weights) -> f64 {
        [
            self.cpu * w.cpu,
            self.memory * w.memory,
            self.bandwidth_in * w.bandwidth_in,
            self.bandwidth_out * w.bandwidth_out,
        ]
        .into_iter()
        .fold(0.0, f64::max)
    }
}

/// One bundle's share of its broker's traffic, as the broker reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct BundleLoad {
    pub name: String,
    /// Bytes per second in plus out.
    pub throughput: f64,
    pub msg_rate: f64,
    pub topics: u64,
    /// Producers plus consumers.
    pub sessions: u64,
}

/// A broker's report.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerReport {
    pub broker: String,
    pub usage: Usage,
    pub bundles: Vec<BundleLoad>,
}

/// The shedder's settings, with Pulsar's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ShedderConfig {
    pub weights: Weights,
    /// A broker more than this above the average sheds (Pulsar's
    /// `loadBalancerBrokerThresholdShedderPercentage`, 10).
    pub shedding_threshold_percent: f64,
    /// Above this a broker is overloaded (`loadBalancerBrokerOverloadedThresholdPercentage`, 70).
    pub overloaded_threshold_percent: f64,
    /// How much of the previous smoothed load a new report keeps
    /// (`loadBalancerHistoryResourcePercentage`, 0.9).
    pub history: f64,
    /// A bundle moved is not moved again for this long
    /// (`loadBalancerSheddingGracePeriodMinutes`, 30 minutes).
    pub grace_period: Duration,
    /// Shed nothing smaller than this many bytes per second in total
    /// (`loadBalancerBundleUnloadMinThroughputThreshold`, 10 MB).
    pub min_throughput_to_shed: f64,
    /// How long a move's load is counted where it went when the reports do
    /// not show it there yet.
    pub transit_timeout: Duration,
}

impl Default for ShedderConfig {
    fn default() -> Self {
        ShedderConfig {
            weights: Weights::default(),
            shedding_threshold_percent: 10.0,
            overloaded_threshold_percent: 70.0,
            history: 0.9,
            grace_period: Duration::from_secs(30 * 60),
            min_throughput_to_shed: 10.0 * 1024.0 * 1024.0,
            transit_timeout: Duration::from_secs(30),
        }
    }
}

/// Shed a little more than the excess, so that a broker just over the line
/// does not come back to it at once (Pulsar's 5 % margin).
const MARGIN_PERCENT: f64 = 5.0;

/// A bundle to move.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    pub bundle: String,
    pub from: String,
    pub to: String,
}

/// The load manager's memory between rounds: smoothed loads, when each
/// bundle last moved, and the moves the reports do not show yet.
#[derive(Debug, Default)]
pub struct Shedder {
    smoothed: HashMap<String, f64>,
    moved_at: HashMap<String, Duration>,
    in_transit: Vec<Transit>,
}

/// A move the reports do not show yet, and its share of the load (in load
/// points).
#[derive(Debug)]
struct Transit {
    bundle: String,
    from: String,
    to: String,
    share: f64,
    at: Duration,
}

/// A small deterministic generator (SplitMix64) for the random choice of a
/// receiving broker: the same seed makes the same choices.
#[derive(Debug, Clone)]
pub struct Choices(u64);

impl Choices {
    pub fn new(seed: u64) -> Self {
        Choices(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (> 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `[-1, 1)`.
    pub fn signed_unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

impl Shedder {
    /// A shedder that remembers `moves` (bundle, when it moved): a new
    /// leader takes over its predecessor's grace periods.
    pub fn remembering(moves: impl IntoIterator<Item = (String, Duration)>) -> Self {
        Shedder {
            moved_at: moves.into_iter().collect(),
            ..Shedder::default()
        }
    }

    /// The bundles moved within the grace period before `now`, and when.
    pub fn recent_moves(&self, now: Duration, grace: Duration) -> Vec<(String, Duration)> {
        let mut out: Vec<(String, Duration)> = self
            .moved_at
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) < grace)
            .map(|(b, at)| (b.clone(), *at))
            .collect();
        out.sort();
        out
    }

    /// Each broker's load in this round's reports, with the moves the
    /// reports do not show yet counted where they went; forgets the moves
    /// they show (or that are older than the timeout).
    fn reported(&mut self, reports: &[BrokerReport], c: &ShedderConfig, now: Duration) -> Vec<f64> {
        let mut loads: Vec<f64> = reports.iter().map(|r| r.usage.load(&c.weights)).collect();
        let at = |broker: &str| reports.iter().position(|r| r.broker == broker);
        let carries = |i: Option<usize>, bundle: &str, traffic: bool| {
            i.is_some_and(|i| {
                reports[i]
                    .bundles
                    .iter()
                    .any(|b| b.name == bundle && (!traffic || b.throughput > 0.0))
            })
        };
        self.in_transit.retain(|t| {
            let (from, to) = (at(&t.from), at(&t.to));
            let at_receiver = carries(to, &t.bundle, true);
            let at_sender = carries(from, &t.bundle, false);
            if (at_receiver && !at_sender) || now.saturating_sub(t.at) >= c.transit_timeout {
                return false;
            }
            if let Some(to) = to.filter(|_| !at_receiver) {
                loads[to] += t.share;
            }
            if let Some(from) = from.filter(|_| at_sender) {
                loads[from] = (loads[from] - t.share).max(0.0);
            }
            true
        });
        loads
    }

    /// The smoothed load of each broker after this round's reports.
    fn smooth(&mut self, reports: &[BrokerReport], c: &ShedderConfig, now: Duration) -> Vec<f64> {
        self.smoothed
            .retain(|b, _| reports.iter().any(|r| &r.broker == b));
        let reported = self.reported(reports, c, now);
        reports
            .iter()
            .zip(reported)
            .map(|(r, load)| {
                let s = self
                    .smoothed
                    .entry(r.broker.clone())
                    .and_modify(|old| *old = *old * c.history + load * (1.0 - c.history))
                    .or_insert(load);
                *s
            })
            .collect()
    }

    /// Broker `broker`'s smoothed load (after the last round's moves).
    pub fn smoothed(&self, broker: &str) -> Option<f64> {
        self.smoothed.get(broker).copied()
    }

    /// The brokers above the overloaded threshold, by smoothed load.
    pub fn overloaded(&self, c: &ShedderConfig) -> Vec<String> {
        let mut out: Vec<String> = self
            .smoothed
            .iter()
            .filter(|(_, l)| **l > c.overloaded_threshold_percent)
            .map(|(b, _)| b.clone())
            .collect();
        out.sort();
        out
    }

    /// One round at time `now`: the moves that bring every broker within
    /// the threshold of the average, and records them (their bundles are
    /// not moved again within the grace period).
    pub fn round(
        &mut self,
        reports: &[BrokerReport],
        c: &ShedderConfig,
        now: Duration,
        choices: &mut Choices,
    ) -> Vec<Move> {
        let loads = self.smooth(reports, c, now);
        if reports.len() < 2 {
            return Vec::new();
        }
        let average = loads.iter().sum::<f64>() / loads.len() as f64;
        // What each receiving broker would carry once this round's moves land.
        let mut expected = loads.clone();
        let mut moves = Vec::new();
        let mut order: Vec<usize> = (0..reports.len()).collect();
        // The most loaded sheds first.
        order.sort_by(|a, b| loads[*b].total_cmp(&loads[*a]));
        for i in order {
            let r = &reports[i];
            let excess = loads[i] - average - c.shedding_threshold_percent;
            if excess <= 0.0 {
                continue;
            }
            let total: f64 = r.bundles.iter().map(|b| b.throughput).sum();
            let to_shed = total * (excess + MARGIN_PERCENT) / 100.0;
            if total <= 0.0 || to_shed < c.min_throughput_to_shed || r.bundles.len() < 2 {
                continue;
            }
            // A bundle without traffic in the report sheds nothing by moving
            // (its traffic may not show yet: a move would only churn it, and
            // hold it where it went for the grace period).
            let mut candidates: Vec<&BundleLoad> = r
                .bundles
                .iter()
                .filter(|b| {
                    b.throughput > 0.0
                        && self
                            .moved_at
                            .get(&b.name)
                            .is_none_or(|t| now.saturating_sub(*t) >= c.grace_period)
                })
                .collect();
            // Largest first: the fewest moves that cover the excess.
            candidates.sort_by(|a, b| b.throughput.total_cmp(&a.throughput));
            let mut shed = 0.0;
            let mut left = r.bundles.len();
            for b in candidates {
                if shed >= to_shed || left <= 1 {
                    break;
                }
                // The bundle's part of this broker's load, in load points.
                let share = loads[i] * b.throughput / total;
                // A receiver is below the average now, and ends no more than
                // a quarter of the threshold above it: never near the shedding line
                // (average + threshold), so it never sheds the bundle back,
                // while bundles of equal size can still even out.
                let ceiling = average + c.shedding_threshold_percent / 4.0;
                let below: Vec<usize> = (0..reports.len())
                    .filter(|j| {
                        *j != i && expected[*j] < average && expected[*j] + share <= ceiling
                    })
                    .collect();
                if below.is_empty() {
                    // Too big for any broker below the average: a smaller one may fit.
                    continue;
                }
                let j = below[choices.below(below.len())];
                expected[j] += share;
                expected[i] -= share;
                shed += b.throughput;
                left -= 1;
                self.moved_at.insert(b.name.clone(), now);
                self.in_transit.push(Transit {
                    bundle: b.name.clone(),
                    from: r.broker.clone(),
                    to: reports[j].broker.clone(),
                    share,
                    at: now,
                });
                moves.push(Move {
                    bundle: b.name.clone(),
                    from: r.broker.clone(),
                    to: reports[j].broker.clone(),
                });
            }
        }
        // The moves' effect is known now: the smoothed loads start from it,
        // or the next rounds would shed again what already left.
        for (r, e) in reports.iter().zip(&expected) {
            self.smoothed.insert(r.broker.clone(), *e);
        }
        moves
    }
}

/// When a bundle splits (Pulsar's `loadBalancerNamespaceBundleMax*`).
#[derive(Clone, Debug, PartialEq)]
pub struct SplitConfig {
    pub max_topics: u64,
    pub max_sessions: u64,
    pub max_msg_rate: f64,
    /// Bytes per second.
    pub max_bandwidth: f64,
    /// A namespace has at most this many bundles.
    pub max_bundles: usize,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            max_topics: 1000,
            max_sessions: 1000,
            max_msg_rate: 30_000.0,
            max_bandwidth: 100.0 * 1024.0 * 1024.0,
            max_bundles: 128,
        }
    }
}

/// Why a bundle splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitReason {
    Topics,
    Sessions,
    MsgRate,
    Bandwidth,
}

/// Whether `b`, one of its namespace's `bundles_in_namespace` bundles,
/// splits, and why. A bundle with one topic never splits (a split cannot
/// part it).
pub fn split_reason(
    b: &BundleLoad,
    bundles_in_namespace: usize,
    c: &SplitConfig,
) -> Option<SplitReason> {
    if bundles_in_namespace >= c.max_bundles || b.topics < 2 {
        return None;
    }
    if b.topics > c.max_topics {
        Some(SplitReason::Topics)
    } else if b.sessions > c.max_sessions {
        Some(SplitReason::Sessions)
    } else if b.msg_rate > c.max_msg_rate {
        Some(SplitReason::MsgRate)
    } else if b.throughput > c.max_bandwidth {
        Some(SplitReason::Bandwidth)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
