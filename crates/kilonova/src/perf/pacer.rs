//! Sub-millisecond pacing for fixed-rate producers (`--even-pacing`).
//!
//! tokio's timer fires on 1 ms ticks, so a producer due every 8 µs (120,000
//! msg/s) that sleeps on it sends a millisecond's messages in one burst.
//! pulsar-perf spaces them with a rate limiter that sleeps between messages.
//! Here a thread ticks every [`TICK`] and wakes the producers that wait for
//! the last part of their delay, so a run's sends come in bursts of a
//! tick's messages instead of a millisecond's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How often the pacing thread wakes the producers that wait (the kernel's
/// default timer slack, 50 µs, comes on top).
const TICK: Duration = Duration::from_micros(50);

/// tokio's timer resolution: longer delays sleep on it, all but their last
/// millisecond.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// The ticking thread and what its ticks wake; the thread ends when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Pacer {
    tick: Arc<Notify>,
    _running: Arc<Running>,
}

struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Pacer {
    /// Starts the ticking thread.
    pub fn start() -> std::io::Result<Self> {
        let tick = Arc::new(Notify::new());
        let running = Arc::new(AtomicBool::new(true));
        let (t, r) = (tick.clone(), running.clone());
        std::thread::Builder::new()
            .name("perf-pacer".into())
            .spawn(move || {
                while r.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    t.notify_waiters();
                }
            })?;
        Ok(Pacer {
            tick,
            _running: Arc::new(Running(running)),
        })
    }

    /// Waits until `deadline`: on tokio's timer while it is more than two
    /// ticks of that timer away, then tick by tick.
    pub async fn until(&self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            if deadline - now > 2 * TIMER_RESOLUTION {
                tokio::time::sleep_until((deadline - TIMER_RESOLUTION).into()).await;
                continue;
            }
            // Registered before the time is read again: a tick in between
            // is not missed.
            let notified = self.tick.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if Instant::now() >= deadline {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_never_ends_before_its_deadline() -> std::io::Result<()> {
        let pacer = Pacer::start()?;
        // Waits shorter than a tick, between a tick and the timer's
        // resolution, and long enough for tokio's timer.
        let mut deadline = Instant::now();
        for us in [10, 100, 700, 1_500, 3_000, 40] {
            deadline += Duration::from_micros(us);
            pacer.until(deadline).await;
            assert!(Instant::now() >= deadline, "woke before its deadline");
        }
        Ok(())
    }
}
