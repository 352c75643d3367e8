//! Token buckets for publish and dispatch rates: a pure core (time comes in as
//! an argument), shared behind a lock where several tasks draw from one limit.
//!
//! A bucket may go into debt: a message is admitted while the bucket is not
//! negative and its whole cost is taken, so a message larger than the bucket
//! still passes, and the next one waits until the debt is paid. Over any
//! window the amount admitted is at most `rate × window + capacity + one
//! message`, which is what makes the limit precise.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One dimension of a rate: so many units per period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rate {
    pub per_period: u64,
    pub period: Duration,
}

impl Rate {
    pub(crate) fn per_second(n: u64) -> Self {
        Rate {
            per_period: n,
            period: Duration::from_secs(1),
        }
    }

    fn per_sec(&self) -> f64 {
        self.per_period as f64 / self.period.as_secs_f64().max(1e-3)
    }
}

/// A rate in messages and bytes; `None`: that dimension is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RateLimits {
    pub messages: Option<Rate>,
    pub bytes: Option<Rate>,
}

impl RateLimits {
    pub(crate) fn is_unlimited(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    rate_per_sec: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Rate, burst: Duration, now: Instant) -> Self {
        let rate_per_sec = rate.per_sec();
        let capacity = (rate_per_sec * burst.as_secs_f64()).max(1.0);
        Bucket {
            rate_per_sec,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.capacity);
        self.last = now;
    }

    /// How long until the bucket holds `want` tokens (zero if it does).
    fn wait_for(&self, want: f64) -> Duration {
        if self.tokens >= want || self.rate_per_sec <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((want - self.tokens) / self.rate_per_sec)
    }
}

/// A limiter over messages and bytes.
#[derive(Clone, Debug, Default)]
pub(crate) struct RateLimiter {
    limits: RateLimits,
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl RateLimiter {
    /// `burst`: how much unused rate may be saved up, as a duration of it
    /// (at least one unit).
    pub(crate) fn new(limits: RateLimits, burst: Duration, now: Instant) -> Self {
        RateLimiter {
            limits,
            messages: limits.messages.map(|r| Bucket::new(r, burst, now)),
            bytes: limits.bytes.map(|r| Bucket::new(r, burst, now)),
        }
    }

    pub(crate) fn limits(&self) -> RateLimits {
        self.limits
    }

    pub(crate) fn is_unlimited(&self) -> bool {
        self.limits.is_unlimited()
    }

    fn buckets(&mut self) -> impl Iterator<Item = &mut Bucket> {
        self.messages.iter_mut().chain(self.bytes.iter_mut())
    }

    /// Takes the cost of what was just sent (the buckets may go into debt).
    pub(crate) fn consume(&mut self, messages: u64, bytes: u64, now: Instant) {
        if let Some(b) = self.messages.as_mut() {
            b.refill(now);
            b.tokens -= messages as f64;
        }
        if let Some(b) = self.bytes.as_mut() {
            b.refill(now);
            b.tokens -= bytes as f64;
        }
    }

    /// Forgives debt beyond `max` of rate, so that no single charge (a batch
    /// that claims absurdly many messages, say) can pause its senders for longer.
    fn cap_debt(&mut self, max: Duration) {
        for b in self.buckets() {
            b.tokens = b.tokens.max(-b.rate_per_sec * max.as_secs_f64());
        }
    }

    /// How long until nothing is owed any more (zero: something may go now).
    pub(crate) fn wait(&mut self, now: Instant) -> Duration {
        self.buckets()
            .map(|b| {
                b.refill(now);
                b.wait_for(0.0)
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Whole messages and bytes that may go now (`None`: that dimension is unlimited).
    pub(crate) fn available(&mut self, now: Instant) -> (Option<u64>, Option<u64>) {
        let take = |b: &mut Option<Bucket>| {
            b.as_mut().map(|b| {
                b.refill(now);
                b.tokens.max(0.0).floor() as u64
            })
        };
        (take(&mut self.messages), take(&mut self.bytes))
    }

    /// How long until at least one message and one byte may go.
    pub(crate) fn wait_for_one(&mut self, now: Instant) -> Duration {
        self.buckets()
            .map(|b| {
                b.refill(now);
                b.wait_for(1.0)
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

/// The publish limit of one topic, drawn from by every connection that has a
/// producer on it: a connection that sends over the limit stops reading its
/// socket until the debt is paid.
#[derive(Debug, Default)]
pub(crate) struct PublishGate {
    limiter: Mutex<RateLimiter>,
}

/// How much unused publish rate a topic may save up: small, so that a burst
/// after a quiet spell stays within a few percent of the limit over seconds.
const PUBLISH_BURST: Duration = Duration::from_millis(100);

/// The longest one publish can pause its connections: a SEND's charge beyond
/// this much of the rate is forgiven (a 5 MiB message under a 1 MiB/s limit
/// still waits 5 s; a batch claiming 2^31 messages under 50 msg/s no longer
/// stops its connections for 497 days).
const MAX_PUBLISH_DEBT: Duration = Duration::from_secs(10);

impl PublishGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        // A limiter is plain numbers: whatever a panicking holder left is usable.
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the limits (keeping the current debt if they did not change).
    pub(crate) fn set(&self, limits: RateLimits, now: Instant) {
        let mut l = self.lock();
        if l.limits() != limits {
            *l = RateLimiter::new(limits, PUBLISH_BURST, now);
        }
    }

    /// Charges a publish of `messages` / `bytes`; returns how long the
    /// connection must stop reading (zero: not at all).
    pub(crate) fn charge(&self, messages: u64, bytes: u64, now: Instant) -> Duration {
        let mut l = self.lock();
        if l.is_unlimited() {
            return Duration::ZERO;
        }
        l.consume(messages, bytes, now);
        l.cap_debt(MAX_PUBLISH_DEBT);
        l.wait(now)
    }

    /// How long a connection that paused must still wait.
    pub(crate) fn wait(&self, now: Instant) -> Duration {
        self.lock().wait(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: Option<u64>, bytes: Option<u64>) -> RateLimits {
        RateLimits {
            messages: messages.map(Rate::per_second),
            bytes: bytes.map(Rate::per_second),
        }
    }

    #[test]
    fn one_publish_claiming_billions_of_messages_pauses_for_at_most_the_debt_cap() {
        let now = Instant::now();
        let gate = PublishGate::default();
        gate.set(limits(Some(50), None), now);
        let wait = gate.charge(i32::MAX as u64, 1, now);
        assert!(wait <= MAX_PUBLISH_DEBT, "{wait:?}");
        assert!(
            wait >= MAX_PUBLISH_DEBT - Duration::from_millis(200),
            "{wait:?}"
        );
        // A legitimate charge over the rate still waits its full time.
        let gate = PublishGate::default();
        gate.set(limits(None, Some(1 << 20)), now);
        let wait = gate.charge(1, 5 << 20, now);
        assert!(wait >= Duration::from_millis(4_800), "{wait:?}");
    }

    /// Simulates a sender that sends whenever it is allowed, for `secs` seconds.
    fn admitted(limits: RateLimits, burst: Duration, msg_bytes: u64, secs: u64) -> (u64, u64) {
        let start = Instant::now();
        let mut l = RateLimiter::new(limits, burst, start);
        let mut now = start;
        let end = start + Duration::from_secs(secs);
        let (mut msgs, mut bytes) = (0, 0);
        while now < end {
            let wait = l.wait(now);
            if wait > Duration::ZERO {
                now += wait;
                continue;
            }
            l.consume(1, msg_bytes, now);
            msgs += 1;
            bytes += msg_bytes;
        }
        (msgs, bytes)
    }

    #[test]
    fn a_sender_as_fast_as_allowed_gets_the_message_rate() {
        let (msgs, _) = admitted(
            limits(Some(30), None),
            Duration::from_millis(100),
            4 << 20,
            10,
        );
        // 30/s for 10 s, plus the saved-up burst (3) and the one message in debt.
        assert!((300..=304).contains(&msgs), "{msgs}");
    }

    #[test]
    fn the_byte_rate_holds_with_messages_larger_than_the_bucket() {
        // 120 MiB/s with 4 MiB messages, 100 ms burst (12 MiB).
        let (_, bytes) = admitted(
            limits(None, Some(120 << 20)),
            Duration::from_millis(100),
            4 << 20,
            10,
        );
        let expected = 1200u64 << 20;
        let over = bytes as f64 / expected as f64;
        assert!((1.0..1.03).contains(&over), "{over}");
    }

    #[test]
    fn both_dimensions_limit_and_the_tighter_one_wins() {
        // 100 msg/s but 10 KiB/s with 1 KiB messages: 10 msg/s.
        let (msgs, _) = admitted(
            limits(Some(100), Some(10 << 10)),
            Duration::from_millis(100),
            1 << 10,
            10,
        );
        assert!((100..=103).contains(&msgs), "{msgs}");
    }

    #[test]
    fn unlimited_never_waits() {
        let now = Instant::now();
        let mut l = RateLimiter::new(RateLimits::default(), Duration::from_secs(1), now);
        l.consume(1_000_000, 1 << 30, now);
        assert_eq!(l.wait(now), Duration::ZERO);
        assert_eq!(l.available(now), (None, None));
    }

    #[test]
    fn a_rate_per_period_spreads_over_the_period() {
        let now = Instant::now();
        let rate = Rate {
            per_period: 10,
            period: Duration::from_secs(5),
        };
        let limits = RateLimits {
            messages: Some(rate),
            bytes: None,
        };
        let mut l = RateLimiter::new(limits, Duration::from_secs(5), now);
        assert_eq!(l.available(now).0, Some(10));
        l.consume(10, 0, now);
        assert_eq!(l.available(now).0, Some(0));
        // 2 per second.
        assert_eq!(l.wait_for_one(now), Duration::from_millis(500));
        assert_eq!(l.available(now + Duration::from_secs(1)).0, Some(2));
    }

    #[test]
    fn the_gate_keeps_its_debt_when_the_same_limits_are_set_again() {
        let now = Instant::now();
        let g = PublishGate::default();
        assert_eq!(g.charge(1, 1, now), Duration::ZERO);
        let l = limits(Some(10), None);
        g.set(l, now);
        let w = g.charge(5, 0, now);
        assert!(w > Duration::ZERO);
        g.set(l, now);
        assert_eq!(g.wait(now), w);
        g.set(RateLimits::default(), now);
        assert_eq!(g.wait(now), Duration::ZERO);
    }
}
