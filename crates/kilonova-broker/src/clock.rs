//! The broker's clock. Topic, subscription, policy and connection code never
//! read the time themselves (`scripts/test` fails if they do): they ask the
//! [`Clock`] the broker owns, or take `now` from their caller. In production
//! that is [`SystemClock`]; tests drive TTL, quotas, throttling, delayed
//! delivery and inactive-topic deletion with a [`ManualClock`] instead.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where time comes from.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time: deadlines, rates, idle periods.
    fn now(&self) -> Instant;
    /// Wall-clock time in milliseconds since the Unix epoch: publish times,
    /// delivery times, message TTL and retention.
    fn now_ms(&self) -> u64;
}

/// The operating system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A shared handle on the broker's clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to; both of its readings move together.
#[derive(Clone, Debug)]
pub struct ManualClock {
    start: Instant,
    start_ms: u64,
    elapsed: Arc<Mutex<Duration>>,
}

impl ManualClock {
    /// A clock standing at `start_ms` (ms since the epoch).
    pub fn at_ms(start_ms: u64) -> Self {
        ManualClock {
            start: Instant::now(),
            start_ms,
            elapsed: Arc::default(),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut e = self.elapsed.lock().unwrap_or_else(PoisonError::into_inner);
        *e += d;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    fn now_ms(&self) -> u64 {
        let ms = u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.start_ms.saturating_add(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_readings_only_when_advanced() {
        let c = ManualClock::at_ms(1_000);
        let (t0, ms0) = (c.now(), c.now_ms());
        assert_eq!(ms0, 1_000);
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_millis(250));
        assert_eq!(c.now() - t0, Duration::from_millis(250));
        assert_eq!(c.now_ms(), 1_250);
    }

    #[test]
    fn the_system_clock_reads_wall_time_in_ms() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let ms = SystemClock.now_ms();
        assert!(ms >= before && ms < before + 60_000, "{ms} vs {before}");
    }
}
