//! Pacing a stream of bytes to a rate, with time passed in.
//!
//! GC's compaction copies live entries through the journal the appenders use;
//! paced, it cannot take their bandwidth. The limiter reads no clock: the
//! caller passes the time and sleeps for what it is told, so tests drive it
//! with a clock of their own.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// At most `bytes_per_sec` on average, with bursts of at most `burst_bytes`
/// (plus the one charge that crosses it).
///
/// A virtual clock: each charge moves the time the bytes sent so far would
/// take at the rate (`paid_until`) forward by its own cost; the caller waits
/// until that time, less the burst allowance, has come.
#[derive(Debug)]
pub(crate) struct ByteRate {
    bytes_per_sec: u64,
    burst: Duration,
    /// When the bytes charged so far have been paid for at the rate.
    paid_until: Duration,
}

impl ByteRate {
    /// `bytes_per_sec` 0 means unlimited.
    pub fn new(bytes_per_sec: u64, burst_bytes: u64) -> Self {
        ByteRate {
            bytes_per_sec,
            burst: cost(burst_bytes, bytes_per_sec),
            paid_until: Duration::ZERO,
        }
    }

    /// Charges `bytes` sent at `now` (since any fixed moment); returns how long
    /// the caller must wait before sending them.
    pub fn charge(&mut self, now: Duration, bytes: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        // Time not used is not saved beyond the burst.
        let start = self.paid_until.max(now);
        self.paid_until = start + cost(bytes, self.bytes_per_sec);
        self.paid_until.saturating_sub(now + self.burst)
    }
}

/// How long `bytes` take at `bytes_per_sec` (0: no time).
fn cost(bytes: u64, bytes_per_sec: u64) -> Duration {
    if bytes_per_sec == 0 {
        return Duration::ZERO;
    }
    let nanos = u128::from(bytes) * NANOS_PER_SEC / u128::from(bytes_per_sec);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    /// Sends `sizes` through a limiter on a simulated clock that advances only
    /// by the waits it is told (plus `idle` before some sends); returns, after
    /// each send, (the time, the bytes sent so far).
    fn drive(limiter: &mut ByteRate, sizes: &[(u64, Duration)]) -> Vec<(Duration, u64)> {
        let (mut now, mut sent) = (Duration::ZERO, 0u64);
        let mut out = Vec::new();
        for (bytes, idle) in sizes {
            now += *idle;
            now += limiter.charge(now, *bytes);
            sent += bytes;
            out.push((now, sent));
        }
        out
    }

    #[test]
    fn a_steady_stream_is_held_to_the_rate() {
        let rate = 64 * MIB;
        let mut limiter = ByteRate::new(rate, rate / 10);
        let sends: Vec<_> = (0..10_000).map(|_| (64 << 10, Duration::ZERO)).collect();
        let trace = drive(&mut limiter, &sends);
        let (end, sent) = *trace.last().unwrap();
        // 625 MiB at 64 MiB/s: 9.77 s, less the 0.1 s burst.
        let expected =
            Duration::from_secs_f64(sent as f64 / rate as f64) - Duration::from_millis(100);
        let diff = end.abs_diff(expected);
        assert!(
            diff <= Duration::from_millis(1),
            "took {end:?}, expected {expected:?}"
        );
    }

    #[test]
    fn the_first_burst_goes_without_waiting() {
        let mut limiter = ByteRate::new(10 * MIB, MIB);
        assert_eq!(limiter.charge(Duration::ZERO, MIB), Duration::ZERO);
        assert_eq!(
            limiter.charge(Duration::ZERO, MIB),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn zero_means_unlimited() {
        let mut limiter = ByteRate::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(limiter.charge(Duration::ZERO, u64::MAX / 2), Duration::ZERO);
        }
    }

    proptest! {
        /// Whatever the sizes and pauses: in no window of time did more than
        /// the rate times its length, plus the burst, go out; and a sender that
        /// never pauses is held to the rate, not below it.
        #[test]
        fn no_window_exceeds_the_rate_plus_the_burst(
            rate in 1u64..(1 << 30),
            burst_divisor in 1u64..100,
            sends in proptest::collection::vec((1u64..(8 << 20), 0u64..2_000_000), 1..300),
        ) {
            let burst = rate / burst_divisor;
            let mut limiter = ByteRate::new(rate, burst);
            let sends: Vec<_> = sends
                .into_iter()
                .map(|(b, idle_us)| (b, Duration::from_micros(idle_us)))
                .collect();
            let max_send = sends.iter().map(|s| s.0).max().unwrap_or(0);
            let mut trace = vec![(Duration::ZERO, 0u64)];
            trace.extend(drive(&mut limiter, &sends));
            // Costs are whole nanoseconds, rounded down: a byte or so per send.
            let rounding = (sends.len() as f64 + 1.0) * (rate as f64 / 1e9 + 1.0);
            for (i, (t1, sent1)) in trace.iter().enumerate() {
                for (t2, sent2) in trace.iter().skip(i + 1) {
                    let window = (*t2 - *t1).as_secs_f64();
                    let allowed = window * rate as f64 + burst as f64 + rounding;
                    prop_assert!(
                        (sent2 - sent1) as f64 <= allowed,
                        "{} bytes between {t1:?} and {t2:?} at {rate} B/s, burst {burst}",
                        sent2 - sent1
                    );
                }
            }
            let busy: Vec<_> = sends.iter().map(|(b, _)| (*b, Duration::ZERO)).collect();
            let mut limiter = ByteRate::new(rate, burst);
            let (end, sent) = *drive(&mut limiter, &busy).last().unwrap();
            // Never paused: it ends exactly when the rate says, less the burst.
            let floor = (sent - sent.min(burst + max_send)) as f64 / rate as f64;
            prop_assert!(end.as_secs_f64() + 1e-6 >= floor, "held below the rate: {end:?} < {floor}");
            let ceiling = sent as f64 / rate as f64 + 1e-6;
            prop_assert!(end.as_secs_f64() <= ceiling, "held too long: {end:?} > {ceiling}");
        }
    }
}
