//! `kilonova perf storage`: appenders over many open segments, every append fsync'd
//! (group-committed) before it counts. Latency runs from the call to `append`
//! (so it includes waiting for queue space: the store's backpressure) to durable.
//! In fixed-rate mode the sender's lag behind its schedule is reported beside it:
//! tokio's timer has millisecond resolution, so that lag is the load generator's,
//! and a large value means the generator, not the store, fell behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use kilonova_storage::{SegmentStore, StoreConfig};
use serde::Serialize;

use super::args::{Output, Timing};
use super::recorder::Latency;

#[derive(clap::Args, Debug, Clone)]
pub struct StorageArgs {
    /// Directory for the store (a fresh subdirectory is created and removed).
    #[arg(long, default_value = "./perf-data")]
    pub dir: PathBuf,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 1024)]
    pub entry_bytes: usize,
    /// Open segments the appends are spread over.
    #[arg(long, default_value_t = 1)]
    pub segments: usize,
    /// Concurrent appenders (tasks).
    #[arg(long, default_value_t = 64)]
    pub appenders: usize,
    /// Appends each appender keeps in flight.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Total appends per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[command(flatten)]
    pub timing: Timing,
    /// Journal file size in MiB.
    #[arg(long, default_value_t = 128)]
    pub log_file_mib: u64,
    /// Steady state as on a broker with retention: a segment is replaced by a new one
    /// once it holds `--segment-mib`, and the oldest replaced segments are deleted
    /// (then GC runs) while they hold more than this many MiB. 0: keep everything.
    #[arg(long, default_value_t = 0)]
    pub retain_mib: u64,
    /// Segment size that triggers replacement when `--retain-mib` is set.
    #[arg(long, default_value_t = 32)]
    pub segment_mib: u64,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Serialize, Debug)]
struct Summary {
    entry_bytes: usize,
    segments: usize,
    appenders: usize,
    window: usize,
    target_rate: u64,
    seconds: f64,
    messages: u64,
    errors: u64,
    msgs_per_sec: f64,
    bytes_per_sec: f64,
    fsyncs_per_sec: f64,
    entries_per_fsync: f64,
    latency_us: Latency,
    /// Fixed-rate mode: p99 of how late the sender was against its schedule.
    schedule_lag_p99_us: u64,
    /// Share of wall time the journal thread spent in write + fdatasync, and busy at all.
    journal_sync_share: f64,
    journal_busy_share: f64,
    /// Resident memory added by creating the open segments (before any append).
    segments_rss_bytes: u64,
}

/// Replaces full segments, deletes the oldest replaced ones beyond the retention
/// budget and runs GC, until `stop`.
async fn retention_loop(
    store: SegmentStore,
    slots: Arc<std::sync::RwLock<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    segment_bytes: u64,
    retain_bytes: u64,
) -> anyhow::Result<()> {
    let mut retired: std::collections::VecDeque<u64> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let current: Vec<u64> = slots.read().map_err(|_| anyhow::anyhow!("lock"))?.clone();
        for (i, seg) in current.iter().enumerate() {
            if store
                .segment(*seg)
                .is_some_and(|s| s.bytes >= segment_bytes)
            {
                let new = store.create_segment().await?;
                if let Ok(mut s) = slots.write() {
                    s[i] = new;
                }
                retired.push_back(*seg);
            }
        }
        let held = |r: &std::collections::VecDeque<u64>| -> u64 {
            r.iter()
                .filter_map(|s| store.segment(*s))
                .map(|s| s.bytes)
                .sum()
        };
        let mut deleted = false;
        while held(&retired) > retain_bytes {
            let Some(old) = retired.pop_front() else {
                break;
            };
            store.delete_segment(old).await?;
            deleted = true;
        }
        if deleted {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.gc()).await??;
        }
    }
    Ok(())
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs the command (on the runtime [`super::run`] starts).
pub async fn run(args: StorageArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.segments > 0 && args.appenders > 0 && args.window > 0,
        "segments, appenders and window must be > 0"
    );
    let dir = args
        .dir
        .join(format!("kilonova-perf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = StoreConfig::new(&dir);
    config.log_file_bytes = args.log_file_mib << 20;
    let store = SegmentStore::open(config).context("opening the store")?;

    let rss_before = rss_bytes();
    let mut segments = Vec::with_capacity(args.segments);
    for _ in 0..args.segments {
        segments.push(store.create_segment().await?);
    }
    let segments_rss_bytes = rss_bytes().saturating_sub(rss_before);
    let segments = Arc::new(std::sync::RwLock::new(segments));

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let live = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let lag = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let payload = Bytes::from(vec![0x5au8; args.entry_bytes]);
    let per_appender_interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.appenders as f64 / args.rate as f64));

    let mut tasks = Vec::new();
    for a in 0..args.appenders {
        let (store, segments, payload) = (store.clone(), segments.clone(), payload.clone());
        let (measuring, stop, done, errors) = (
            measuring.clone(),
            stop.clone(),
            done.clone(),
            errors.clone(),
        );
        let send_errors = errors.clone();
        let (hist, live, lag) = (hist.clone(), live.clone(), lag.clone());
        let window = args.window;
        tasks.push(tokio::spawn(async move {
            // The sender paces (or not) and enqueues; the collector awaits completions
            // in order. The bounded queue between them is the in-flight window.
            let (tx, mut rx) = tokio::sync::mpsc::channel(window);
            let sender_measuring = measuring.clone();
            let collector = tokio::spawn(async move {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
                while let Some((t0, c)) = rx.recv().await {
                    let c: kilonova_storage::Completion<u64> = c;
                    let t0: Instant = t0;
                    let ok = c.await.is_ok();
                    let us = t0.elapsed().as_micros() as u64;
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    } else if measuring.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                        if let Some(h) = local.as_mut() {
                            let _ = h.record(us.max(1));
                        }
                        if let Ok(mut l) = live.lock() {
                            let _ = l.record(us.max(1));
                        }
                    }
                }
                if let (Some(h), Ok(mut all)) = (local, hist.lock()) {
                    let _ = all.add(&h);
                }
            });
            let mut i = a;
            let start = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let scheduled = match per_appender_interval {
                    Some(iv) => {
                        let at = start + iv.mul_f64(sent as f64);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                let seg = match segments.read() {
                    Ok(s) => s[i % s.len()],
                    Err(_) => break,
                };
                i += 1;
                sent += 1;
                let enqueued = Instant::now();
                if per_appender_interval.is_some() && sender_measuring.load(Ordering::Relaxed) {
                    if let Ok(mut l) = lag.lock() {
                        let _ = l.record((enqueued - scheduled).as_micros().max(1) as u64);
                    }
                }
                match store.append(seg, payload.clone()).await {
                    Ok(c) => {
                        if tx.send((enqueued, c)).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => {
                        send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            drop(tx);
            let _ = collector.await;
        }));
    }

    let retention = (args.retain_mib > 0).then(|| {
        tokio::spawn(retention_loop(
            store.clone(),
            segments.clone(),
            stop.clone(),
            args.segment_mib << 20,
            args.retain_mib << 20,
        ))
    });

    tokio::time::sleep(args.timing.warmup()).await;
    let stats0 = store.stats();
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut last = 0u64;
    for sec in 1..=args.timing.duration_secs {
        tokio::time::sleep_until((t0 + Duration::from_secs(sec)).into()).await;
        let now = done.load(Ordering::Relaxed);
        let (p50, p99) = live
            .lock()
            .map(|mut l| {
                let v = (l.value_at_quantile(0.5), l.value_at_quantile(0.99));
                l.reset();
                v
            })
            .unwrap_or_default();
        let n = now - last;
        last = now;
        eprintln!(
            "[{sec:>3}s] {n:>8} appends/s  {:>8.1} MB/s  p50 {p50} us  p99 {p99} us",
            (n as f64 * args.entry_bytes as f64) / 1e6
        );
    }
    let seconds = t0.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    let messages = done.load(Ordering::Relaxed);
    let stats1 = store.stats();
    let fsyncs = stats1.fsyncs - stats0.fsyncs;
    let sync_share = (stats1.sync_ns - stats0.sync_ns) as f64 / (seconds * 1e9);
    let busy_share = (stats1.busy_ns - stats0.busy_ns) as f64 / (seconds * 1e9);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    if let Some(r) = retention {
        r.await??;
    }
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?
        .clone();
    let store2 = store.clone();
    tokio::task::spawn_blocking(move || store2.close()).await??;
    let _ = std::fs::remove_dir_all(&dir);

    let summary = Summary {
        entry_bytes: args.entry_bytes,
        segments: args.segments,
        appenders: args.appenders,
        window: args.window,
        target_rate: args.rate,
        seconds,
        messages,
        errors: errors.load(Ordering::Relaxed),
        msgs_per_sec: messages as f64 / seconds,
        bytes_per_sec: messages as f64 * args.entry_bytes as f64 / seconds,
        fsyncs_per_sec: fsyncs as f64 / seconds,
        entries_per_fsync: if fsyncs > 0 {
            messages as f64 / fsyncs as f64
        } else {
            0.0
        },
        latency_us: Latency::of(&h),
        schedule_lag_p99_us: lag.lock().map(|l| l.value_at_quantile(0.99)).unwrap_or(0),
        journal_sync_share: sync_share,
        journal_busy_share: busy_share,
        segments_rss_bytes,
    };
    args.output.print(&summary, || {
        format!(
            "{} B x {} segments: {:.0} appends/s, {:.1} MB/s, {:.1} appends/fsync, latency p50 {} us p99 {} us p99.9 {} us max {} us, errors {}, open-segment RSS {:.1} MB, journal busy {:.0}% (write+fsync {:.0}%), schedule lag p99 {} us",
            summary.entry_bytes,
            summary.segments,
            summary.msgs_per_sec,
            summary.bytes_per_sec / 1e6,
            summary.entries_per_fsync,
            summary.latency_us.p50,
            summary.latency_us.p99,
            summary.latency_us.p999,
            summary.latency_us.max,
            summary.errors,
            summary.segments_rss_bytes as f64 / 1e6,
            summary.journal_busy_share * 100.0,
            summary.journal_sync_share * 100.0,
            summary.schedule_lag_p99_us
        )
    })
}
