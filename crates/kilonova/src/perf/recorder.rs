//! Latency and throughput recording shared by the perf commands: tasks record
//! into local histograms and merge into a shared one now and then, so a
//! measurement costs no lock per message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded: one minute, in microseconds.
const MAX_US: u64 = 60_000_000;

#[allow(clippy::expect_used)] // constant bounds, within hdrhistogram's limits
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

#[derive(Serialize, Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

struct Totals {
    interval: Histogram<u64>,
    total: Histogram<u64>,
}

/// One measured quantity (publish latency, end-to-end latency): counts and
/// histograms over the measured window, and per progress interval.
pub struct Recorder {
    measuring: Arc<AtomicBool>,
    messages: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    hist: Mutex<Totals>,
}

impl Recorder {
    /// Waits out `timing`'s warm-up, then measures for its duration with a
    /// progress line a second (`what`, messages of `size` bytes); returns
    /// the measured seconds. Recording stops when it returns. (The peers'
    /// commands use it, built with their features.)
    #[cfg(any(feature = "nats", feature = "kafka"))]
    pub async fn measure_window(
        &self,
        timing: &super::args::Timing,
        what: &str,
        size: usize,
    ) -> f64 {
        tokio::time::sleep(timing.warmup()).await;
        self.measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let mut last = 0;
        for sec in 1..=timing.duration_secs.max(1) {
            tokio::time::sleep_until((t0 + Duration::from_secs(sec)).into()).await;
            let now = self.messages();
            let l = self.take_interval();
            let bytes = (now - last) * size as u64;
            eprintln!("[{sec:>4}s]{}", interval_line(what, now - last, bytes, l));
            last = now;
        }
        let seconds = t0.elapsed().as_secs_f64();
        self.measuring.store(false, Ordering::Relaxed);
        seconds
    }

    pub fn new(measuring: Arc<AtomicBool>) -> Arc<Recorder> {
        Arc::new(Recorder {
            measuring,
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            hist: Mutex::new(Totals {
                interval: histogram(),
                total: histogram(),
            }),
        })
    }

    pub fn local(self: &Arc<Recorder>) -> LocalRecorder {
        LocalRecorder {
            shared: self.clone(),
            hist: histogram(),
            messages: 0,
            bytes: 0,
            since: Instant::now(),
        }
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Latency over the interval since the last call (and starts a new one).
    pub fn take_interval(&self) -> Latency {
        self.take_interval_histogram()
            .map(|h| Latency::of(&h))
            .unwrap_or_default()
    }

    /// The histogram of the interval since the last call (and starts a new one).
    pub fn take_interval_histogram(&self) -> Option<Histogram<u64>> {
        let mut t = self.hist.lock().ok()?;
        let h = t.interval.clone();
        t.interval.reset();
        Some(h)
    }

    pub fn total(&self) -> Latency {
        self.hist
            .lock()
            .map(|t| Latency::of(&t.total))
            .unwrap_or_default()
    }
}

/// A task's own recorder; merges into the shared one every 100 ms and when dropped.
pub struct LocalRecorder {
    shared: Arc<Recorder>,
    hist: Histogram<u64>,
    messages: u64,
    bytes: u64,
    since: Instant,
}

impl LocalRecorder {
    pub fn error(&self) {
        self.shared.error();
    }

    pub fn shared(&self) -> Arc<Recorder> {
        self.shared.clone()
    }

    /// Records one message of `bytes` that took `latency` (only while measuring).
    pub fn record(&mut self, latency: Duration, bytes: usize) {
        if !self.shared.measuring.load(Ordering::Relaxed) {
            return;
        }
        let us = (latency.as_micros() as u64).clamp(1, MAX_US);
        let _ = self.hist.record(us);
        self.messages += 1;
        self.bytes += bytes as u64;
        if self.since.elapsed() >= Duration::from_millis(100) {
            self.merge();
        }
    }

    /// Hands what was recorded to the shared recorder now: a task that goes
    /// idle calls it, so the live lines count what it recorded before.
    pub fn flush(&mut self) {
        self.merge();
    }

    fn merge(&mut self) {
        self.since = Instant::now();
        if self.messages == 0 {
            return;
        }
        if let Ok(mut t) = self.shared.hist.lock() {
            let _ = t.interval.add(&self.hist);
            let _ = t.total.add(&self.hist);
        }
        self.shared
            .messages
            .fetch_add(self.messages, Ordering::Relaxed);
        self.shared.bytes.fetch_add(self.bytes, Ordering::Relaxed);
        self.hist.reset();
        self.messages = 0;
        self.bytes = 0;
    }
}

impl Drop for LocalRecorder {
    fn drop(&mut self) {
        self.merge();
    }
}

/// The final figures of one recorder over `seconds`.
#[derive(Serialize, Debug)]
pub struct Summary {
    pub seconds: f64,
    pub messages: u64,
    pub errors: u64,
    pub msgs_per_sec: f64,
    pub bytes_per_sec: f64,
    pub latency_us: Latency,
}

impl Summary {
    pub fn of(r: &Recorder, seconds: f64) -> Summary {
        let seconds = seconds.max(1e-9);
        Summary {
            seconds,
            messages: r.messages(),
            errors: r.errors(),
            msgs_per_sec: r.messages() as f64 / seconds,
            bytes_per_sec: r.bytes() as f64 / seconds,
            latency_us: r.total(),
        }
    }

    pub fn line(&self, what: &str) -> String {
        format!(
            "{what}: {} messages in {:.1} s: {:.0} msg/s, {:.1} MB/s, latency p50 {} p99 {} p99.9 {} max {}, errors {}",
            self.messages,
            self.seconds,
            self.msgs_per_sec,
            self.bytes_per_sec / 1e6,
            ms(self.latency_us.p50),
            ms(self.latency_us.p99),
            ms(self.latency_us.p999),
            ms(self.latency_us.max),
            self.errors
        )
    }
}

/// One progress interval of one quantity, as the live lines show it:
/// ` publish    1234 msg/s     1.3 MB/s p50 … p99 … p99.9 …`.
pub fn interval_line(what: &str, messages: u64, bytes: u64, l: Latency) -> String {
    format!(
        " {what} {messages:>8} msg/s {:>7.1} MB/s p50 {} p99 {} p99.9 {}",
        bytes as f64 / 1e6,
        ms(l.p50),
        ms(l.p99),
        ms(l.p999)
    )
}

/// Microseconds as milliseconds with three decimals, e.g. "1.234 ms".
pub fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// `--histogram-file`: an HdrHistogram interval log (the format pulsar-perf
/// writes and HdrHistogram's tools read), one histogram of latencies in
/// microseconds per progress interval.
pub struct HistogramLog {
    file: std::io::BufWriter<std::fs::File>,
    serializer: hdrhistogram::serialization::V2DeflateSerializer,
    started: std::time::SystemTime,
    wrote_header: bool,
}

impl HistogramLog {
    pub fn create(path: &std::path::Path) -> anyhow::Result<HistogramLog> {
        use anyhow::Context;
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating the histogram file {}", path.display()))?;
        Ok(HistogramLog {
            file: std::io::BufWriter::new(file),
            serializer: hdrhistogram::serialization::V2DeflateSerializer::new(),
            started: std::time::SystemTime::now(),
            wrote_header: false,
        })
    }

    /// Appends the histogram of the interval `[start, start + length)`, times
    /// counted from the start of the log.
    pub fn write(
        &mut self,
        h: &Histogram<u64>,
        start: Duration,
        length: Duration,
    ) -> anyhow::Result<()> {
        use std::io::Write;
        let mut builder =
            hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder::new();
        // Headers once; a builder without them writes nothing of its own.
        if !self.wrote_header {
            builder
                .add_comment("kilonova perf: latency in microseconds")
                .with_start_time(self.started)
                .with_base_time(self.started);
        }
        let mut w = builder.begin_log_with(&mut self.file, &mut self.serializer)?;
        w.write_histogram(h, start, length, None)
            .map_err(|e| anyhow::anyhow!("writing the histogram file: {e}"))?;
        self.wrote_header = true;
        self.file.flush()?;
        Ok(())
    }
}
