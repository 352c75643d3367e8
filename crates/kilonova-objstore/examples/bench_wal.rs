#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Write-ahead objects under a steady publish load (issue #26): how many
//! requests the object store gets per second against messages per second,
//! and the append latency (queued → its object durable) beside the same
//! client's raw PUT latency for objects of the size the flushes write,
//! measured before and after in the same run.
//!
//! An open-loop load: every millisecond, `rate / 1000` appends of `bytes`
//! bytes, spread round-robin over `logs` logs, each in its own task (as
//! publishes of many producers arrive), for `secs` seconds.
//!
//! Usage: bench_wal [--rate N] [--logs N] [--bytes N] [--secs N]
//!                  [--flush-ms N] [--backend s3|filesystem|both]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kilonova_objstore::seaweed::SeaweedServer;
use kilonova_objstore::{Bucket, ObjectStoreConfig, WalConfig, WalWriter};
use tokio::sync::Mutex;

struct Args {
    rate: u64,
    logs: u64,
    bytes: usize,
    secs: u64,
    flush_ms: u64,
    backends: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        rate: 10_000,
        logs: 1_000,
        bytes: 1024,
        secs: 10,
        flush_ms: 5,
        backends: vec!["s3".into(), "filesystem".into()],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rate" => a.rate = v.parse().unwrap(),
            "--logs" => a.logs = v.parse().unwrap(),
            "--bytes" => a.bytes = v.parse().unwrap(),
            "--secs" => a.secs = v.parse().unwrap(),
            "--flush-ms" => a.flush_ms = v.parse().unwrap(),
            "--backend" if v == "both" => {}
            "--backend" => a.backends = vec![v.clone()],
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// p50 and p99 (ms) of `n` raw PUTs of `size`-byte objects.
async fn raw_puts(bucket: &Bucket, size: usize, n: usize, tag: &str) -> (f64, f64) {
    let body = Bytes::from(vec![0x5au8; size]);
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let key = bucket.key(&format!("bench-raw/{tag}/{i}"));
        let t = Instant::now();
        bucket.put(&key, body.clone().into()).await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

async fn run(bucket: Bucket, backend: &str, a: &Args) {
    let per_flush = (a.rate as usize * a.bytes * a.flush_ms as usize / 1000).max(a.bytes);
    let before = raw_puts(&bucket, per_flush, 200, "before").await;
    let w = WalWriter::start(
        bucket.clone(),
        WalConfig {
            flush_interval: Duration::from_millis(a.flush_ms),
            prefix: "bench-wal".into(),
            ..WalConfig::default()
        },
    );
    let latencies = Arc::new(Mutex::new(Vec::with_capacity((a.rate * a.secs) as usize)));
    let payload = Bytes::from(vec![0x42u8; a.bytes]);
    let per_tick = (a.rate / 1000).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut sent = 0u64;
    eprintln!(
        "{backend}: {} msg/s of {} B over {} logs for {} s ...",
        a.rate, a.bytes, a.logs, a.secs
    );
    while start.elapsed() < Duration::from_secs(a.secs) {
        tick.tick().await;
        for _ in 0..per_tick {
            let (w, p, lat) = (w.clone(), payload.clone(), latencies.clone());
            let log = sent % a.logs;
            sent += 1;
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                w.append(log, p).await.unwrap();
                lat.lock().await.push(t.elapsed().as_secs_f64() * 1e3);
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = raw_puts(&bucket, per_flush, 200, "after").await;
    let stats = w.stats();
    let mut lat = latencies.lock().await.clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "| {backend} | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} / {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {:.2} |",
        sent as f64 / elapsed,
        stats.flushes as f64 / elapsed,
        sent as f64 / stats.flushes.max(1) as f64,
        stats.bytes as f64 / stats.flushes.max(1) as f64 / 1024.0,
        before.0,
        before.1,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        after.0,
        after.1,
        percentile(&lat, 0.99) / before.1.max(after.1),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    println!("| backend | msg/s | PUTs/s | msgs per PUT | KiB per PUT | raw PUT p50 / p99 ms (before) | append p50 ms | append p99 ms | raw PUT p50 / p99 ms (after) | append p99 / raw PUT p99 |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for backend in &a.backends {
        match backend.as_str() {
            "s3" => {
                let Some(server) = SeaweedServer::start_or_skip("bench_wal").await else {
                    continue;
                };
                server.create_bucket("kilonova-bench-wal").await.unwrap();
                let bucket = Bucket::open(&server.config("kilonova-bench-wal")).unwrap();
                run(bucket, "s3 (SeaweedFS)", &a).await;
            }
            "filesystem" => {
                let dir = tempfile::tempdir().unwrap();
                let bucket = Bucket::open(&ObjectStoreConfig::filesystem(dir.path())).unwrap();
                run(bucket, "filesystem", &a).await;
            }
            other => panic!("unknown backend {other}"),
        }
    }
}
