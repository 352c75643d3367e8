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

/// Ticks every `period` on the runtime's timer, the first at the next
/// multiple of `grid` since the first such ticker of the process, so that
/// tickers made at different times fire together; a tick missed under load
/// is skipped, so they stay on the grid. The next tick may be put off or
/// brought forward, to a place in step with the first (a whole number of
/// periods after it). (When a task wakes is the runtime's time, not the
/// broker's clock: tests that drive the clock drive what the task does when
/// it wakes.)
pub(crate) struct SteppedTicks {
    first: tokio::time::Instant,
    period: Duration,
    ticks: tokio::time::Interval,
}

impl SteppedTicks {
    pub(crate) fn on_grid(period: Duration, grid: Duration) -> Self {
        let first = on_grid(tokio::time::Instant::now(), grid);
        let mut ticks = tokio::time::interval_at(first, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        SteppedTicks {
            first,
            period,
            ticks,
        }
    }

    /// The next tick (its scheduled time).
    pub(crate) async fn tick(&mut self) -> tokio::time::Instant {
        self.ticks.tick().await
    }

    /// Moves the next tick to the first place in step not before `wait`
    /// from now; the ticks after it come every period again.
    pub(crate) fn next_in(&mut self, wait: Duration) {
        let at = tokio::time::Instant::now() + wait;
        let period = self.period.as_nanos().max(1);
        let periods = at
            .saturating_duration_since(self.first)
            .as_nanos()
            .div_ceil(period);
        let after = u64::try_from(periods * period).unwrap_or(u64::MAX);
        self.ticks
            .reset_at(self.first + Duration::from_nanos(after));
    }
}

/// The first multiple of `grid` since the process's first use of the grid
/// that is not before `at` (the grid [`SteppedTicks::on_grid`] starts tickers on).
fn on_grid(at: tokio::time::Instant, grid: Duration) -> tokio::time::Instant {
    static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| at);
    let step = grid.as_nanos().max(1);
    let ahead = (step - at.saturating_duration_since(origin).as_nanos() % step) % step;
    at + Duration::from_nanos(u64::try_from(ahead).unwrap_or(0))
}

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

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Milliseconds since the epoch as an ISO-8601 UTC time with milliseconds,
/// `2027-12-01T10:00:00.123Z` (how Pulsar's stats write `connectedSince`).
pub fn utc_time_ms(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Paused time: the runtime's clock moves only as the test's timers
    // fire, so the two tickers are made exactly 3 ms apart, with no real wait.
    #[tokio::test(start_paused = true)]
    async fn tickers_made_at_different_times_tick_on_one_grid() {
        let (grid, period) = (Duration::from_millis(10), Duration::from_millis(20));
        let mut a = SteppedTicks::on_grid(period, grid);
        tokio::time::sleep(Duration::from_millis(3)).await;
        let made_b = tokio::time::Instant::now();
        let mut b = SteppedTicks::on_grid(period, grid);
        let (a1, b1) = (a.tick().await, b.tick().await);
        assert!(
            b1 >= made_b && b1 - made_b < grid,
            "b's first tick is the next grid point"
        );
        assert_eq!((b1 - a1).as_nanos() % grid.as_nanos(), 0, "one grid");
        assert_eq!(a.tick().await, a1 + period);
        assert_eq!(b.tick().await, b1 + period);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_put_off_or_brought_forward_stays_in_step_with_the_first() {
        let period = Duration::from_millis(100);
        let mut t = SteppedTicks::on_grid(period, Duration::from_millis(10));
        let first = t.tick().await;
        assert_eq!(t.tick().await, first + period);
        // 30 ms after a tick, put off by a second: the first place a
        // second on is 1.2 s after the first tick.
        tokio::time::sleep(Duration::from_millis(30)).await;
        t.next_in(Duration::from_secs(1));
        assert_eq!(t.tick().await, first + Duration::from_millis(1_200));
        // Put off again, then brought forward 250 ms later: the next place.
        t.next_in(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(250)).await;
        t.next_in(Duration::ZERO);
        assert_eq!(t.tick().await, first + Duration::from_millis(1_500));
        assert_eq!(t.tick().await, first + Duration::from_millis(1_600));
    }

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

    #[test]
    fn utc_times_have_milliseconds() {
        assert_eq!(super::utc_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::utc_time_ms(1_709_210_096_789),
            "2024-02-29T12:34:56.789Z"
        );
    }
}
