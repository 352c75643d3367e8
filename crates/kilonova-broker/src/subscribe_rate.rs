//! The subscribe rate per consumer (Pulsar's `SubscribeRateLimiter`): a
//! consumer, known by its client's IP address, its name and its id, may send
//! at most so many SUBSCRIBEs to a topic per period. It stops a consumer that
//! reconnects in a loop from flooding the topic; distinct consumers each
//! have their own allowance. As in Pulsar, the allowances are fixed windows:
//! every period all counts start again.
//!
//! A pure core: time comes in as an argument.

use std::collections::HashMap;
use std::time::Instant;

use crate::rate_limit::Rate;

/// Who a SUBSCRIBE comes from, as Pulsar's `ConsumerIdentifier` tells them
/// apart: the client's host (not its port), the consumer's name and id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConsumerIdentity {
    pub host: String,
    pub name: String,
    pub id: u64,
}

impl ConsumerIdentity {
    /// The identity of consumer `id` named `name` on a connection from
    /// `address` (`ip:port`, `[v6]:port`).
    pub(crate) fn new(address: &str, name: &str, id: u64) -> Self {
        let host = address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        ConsumerIdentity {
            host: host.to_owned(),
            name: name.to_owned(),
            id,
        }
    }
}

/// Consumers one topic keeps counts for within a period. A topic that sees
/// more distinct consumers subscribe within one period refuses the others
/// until the period ends (the counts are a map keyed by client input).
pub(crate) const MAX_TRACKED_CONSUMERS: usize = 10_000;

/// SUBSCRIBEs counted per consumer in the current window.
#[derive(Debug)]
pub(crate) struct SubscribeRateLimiter {
    /// `None`: unlimited.
    rate: Option<Rate>,
    window_start: Instant,
    counts: HashMap<ConsumerIdentity, u64>,
}

impl SubscribeRateLimiter {
    pub(crate) fn new(rate: Option<Rate>, now: Instant) -> Self {
        SubscribeRateLimiter {
            rate,
            window_start: now,
            counts: HashMap::new(),
        }
    }

    /// Applies a new rate; counting starts again (as Pulsar's limiter does
    /// when its policy changes).
    pub(crate) fn set_rate(&mut self, rate: Option<Rate>, now: Instant) {
        if rate != self.rate {
            *self = SubscribeRateLimiter::new(rate, now);
        }
    }

    /// Counts a SUBSCRIBE from `who` at `now`; whether it is within the rate.
    pub(crate) fn try_acquire(&mut self, who: ConsumerIdentity, now: Instant) -> bool {
        let Some(rate) = self.rate else {
            return true;
        };
        let elapsed = now.saturating_duration_since(self.window_start);
        if !rate.period.is_zero() && elapsed >= rate.period {
            // The window in which `now` falls, on the grid the first one set.
            let into = elapsed.as_nanos() % rate.period.as_nanos();
            self.window_start = now
                .checked_sub(std::time::Duration::from_nanos(
                    u64::try_from(into).unwrap_or(0),
                ))
                .unwrap_or(now);
            self.counts.clear();
        }
        if !self.counts.contains_key(&who) && self.counts.len() >= MAX_TRACKED_CONSUMERS {
            return false;
        }
        let count = self.counts.entry(who).or_insert(0);
        if *count >= rate.per_period {
            return false;
        }
        *count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn who(id: u64) -> ConsumerIdentity {
        ConsumerIdentity::new("10.0.0.1:40000", "c", id)
    }

    fn two_per_10s(now: Instant) -> SubscribeRateLimiter {
        SubscribeRateLimiter::new(
            Some(Rate {
                per_period: 2,
                period: Duration::from_secs(10),
            }),
            now,
        )
    }

    #[test]
    fn a_consumer_over_its_allowance_is_refused_until_the_period_ends() {
        let t0 = Instant::now();
        let mut l = two_per_10s(t0);
        assert!(l.try_acquire(who(1), t0));
        assert!(l.try_acquire(who(1), t0 + Duration::from_secs(1)));
        assert!(!l.try_acquire(who(1), t0 + Duration::from_secs(2)));
        assert!(!l.try_acquire(who(1), t0 + Duration::from_millis(9_999)));
        assert!(l.try_acquire(who(1), t0 + Duration::from_secs(10)));
    }

    #[test]
    fn consumers_are_told_apart_by_host_name_and_id_not_by_port() {
        let t0 = Instant::now();
        let mut l = two_per_10s(t0);
        let same_host_other_port = ConsumerIdentity::new("10.0.0.1:40001", "c", 1);
        assert!(l.try_acquire(who(1), t0));
        assert!(l.try_acquire(same_host_other_port, t0));
        assert!(
            !l.try_acquire(who(1), t0),
            "a new port is the same consumer"
        );
        assert!(l.try_acquire(who(2), t0), "another consumer id");
        assert!(l.try_acquire(ConsumerIdentity::new("10.0.0.1:1", "d", 1), t0));
        assert!(l.try_acquire(ConsumerIdentity::new("10.0.0.2:1", "c", 1), t0));
    }

    #[test]
    fn windows_stay_on_their_grid() {
        let t0 = Instant::now();
        let mut l = two_per_10s(t0);
        assert!(l.try_acquire(who(1), t0 + Duration::from_secs(15)));
        assert!(l.try_acquire(who(1), t0 + Duration::from_secs(16)));
        assert!(!l.try_acquire(who(1), t0 + Duration::from_secs(19)));
        assert!(
            l.try_acquire(who(1), t0 + Duration::from_secs(20)),
            "the window that began at 10 s ends at 20 s"
        );
    }

    #[test]
    fn no_rate_admits_everything_and_a_new_rate_starts_counting_again() {
        let t0 = Instant::now();
        let mut l = SubscribeRateLimiter::new(None, t0);
        for _ in 0..100 {
            assert!(l.try_acquire(who(1), t0));
        }
        l.set_rate(
            Some(Rate {
                per_period: 1,
                period: Duration::from_secs(10),
            }),
            t0,
        );
        assert!(l.try_acquire(who(1), t0));
        assert!(!l.try_acquire(who(1), t0));
    }

    #[test]
    fn the_tracked_consumers_are_bounded() {
        let t0 = Instant::now();
        let mut l = two_per_10s(t0);
        for id in 0..MAX_TRACKED_CONSUMERS as u64 {
            assert!(l.try_acquire(who(id), t0));
        }
        assert!(!l.try_acquire(who(u64::MAX), t0), "one more is refused");
        assert!(l.try_acquire(who(0), t0), "a known one keeps its allowance");
        assert!(l.try_acquire(who(u64::MAX), t0 + Duration::from_secs(10)));
    }

    #[test]
    fn ipv6_hosts_lose_their_brackets_and_port() {
        assert_eq!(ConsumerIdentity::new("[::1]:6650", "n", 1).host, "::1");
        assert_eq!(
            ConsumerIdentity::new("127.0.0.1:6650", "n", 1).host,
            "127.0.0.1"
        );
    }
}
