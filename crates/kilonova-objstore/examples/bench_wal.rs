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
//! With `--bundles N,M,…`, a run per count: 0 acknowledges on durability
//! alone; N > 0 commits every flush in the flush index of an embedded
//! metadata store (on disk, in a temp dir), the logs being topics of one
//! namespace spread over N bundles by their names' hash, all owned by this
//! "broker" — metadata transactions per second beside PUTs per second, and
//! the commit's latency.
//!
//! Usage: bench_wal [--rate N] [--logs N] [--bytes N] [--secs N]
//!                  [--flush-ms N] [--backend s3|filesystem|both]
//!                  [--bundles N,M,…]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kilonova_metadata::bundles::{
    bundle_of, ranges, Acquired, BundleOwner, BundleRange, Commit, Held,
};
use kilonova_metadata::policies::BundlesData;
use kilonova_metadata::wal_index::FlushRecords;
use kilonova_metadata::{EmbeddedStore, MetadataStore, NamespaceName, Resources, TopicName};
use kilonova_objstore::seaweed::SeaweedServer;
use kilonova_objstore::wal::CommitFuture;
use kilonova_objstore::{
    Bucket, CommitError, FlushCommit, FlushSummary, ObjectStoreConfig, WalConfig, WalWriter,
};
use tokio::sync::Mutex;

struct Args {
    rate: u64,
    logs: u64,
    bytes: usize,
    secs: u64,
    flush_ms: u64,
    backends: Vec<String>,
    bundles: Vec<u32>,
}

fn args() -> Args {
    let mut a = Args {
        rate: 10_000,
        logs: 1_000,
        bytes: 1024,
        secs: 10,
        flush_ms: 5,
        backends: vec!["s3".into(), "filesystem".into()],
        bundles: vec![0],
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
            "--bundles" => a.bundles = v.split(',').map(|n| n.parse().unwrap()).collect(),
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

/// Commits flushes in an embedded store's flush index, timing each.
struct Committer {
    resources: Resources,
    held: Vec<Held>,
    /// log → its topic and bundle.
    logs: Vec<(TopicName, BundleRange)>,
    /// Each log's next entry index. The bench's appends of one log may
    /// reach the writer out of order (a task each): the committer numbers
    /// them as they come, which records the same shape.
    next: std::sync::Mutex<HashMap<u64, u64>>,
    commit_ms: std::sync::Mutex<Vec<f64>>,
    records: std::sync::atomic::AtomicU64,
    record_bytes: std::sync::atomic::AtomicU64,
}

impl Committer {
    async fn new(dir: &std::path::Path, logs: u64, bundles: u32) -> Arc<Self> {
        let store: Arc<dyn MetadataStore> =
            Arc::new(EmbeddedStore::open(&dir.join("metadata.redb")).unwrap());
        let resources = Resources::new(store.clone());
        let ns = NamespaceName::parse("bench/wal").unwrap();
        let data = BundlesData::even(bundles).unwrap();
        let session = store.open_session(Duration::from_secs(3600)).await.unwrap();
        let me = BundleOwner {
            broker: "bench:8080".into(),
            ..Default::default()
        };
        let mut held = Vec::new();
        for range in ranges(&data).unwrap() {
            match resources
                .acquire_bundle(&ns, range, &me, session)
                .await
                .unwrap()
            {
                Acquired::Owned { epoch } => held.push(Held {
                    ns: ns.clone(),
                    range,
                    epoch,
                }),
                other => panic!("bundle {range} not taken: {other:?}"),
            }
        }
        let logs = (0..logs)
            .map(|i| {
                let t = TopicName::parse(&format!("persistent://bench/wal/topic-{i}")).unwrap();
                let range = bundle_of(&data, &t).unwrap();
                (t, range)
            })
            .collect();
        Arc::new(Committer {
            resources,
            held,
            logs,
            next: Default::default(),
            commit_ms: Default::default(),
            records: Default::default(),
            record_bytes: Default::default(),
        })
    }
}

impl FlushCommit for Committer {
    fn commit<'a>(&'a self, flush: &'a FlushSummary) -> CommitFuture<'a> {
        Box::pin(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let t = Instant::now();
            let mut records = FlushRecords::new(&flush.object);
            {
                let mut next = self.next.lock().unwrap();
                for e in &flush.entries {
                    let (topic, range) = &self.logs[e.log as usize];
                    let n = next.entry(e.log).or_default();
                    records.push(topic, *range, e.log, *n, e.index).unwrap();
                    *n += 1;
                }
            }
            let records = records.finish();
            self.records.fetch_add(records.len() as u64, Relaxed);
            let bytes: usize = records
                .iter()
                .map(|(_, _, r)| serde_json::to_vec(r).unwrap().len())
                .sum();
            self.record_bytes.fetch_add(bytes as u64, Relaxed);
            let outcome = self
                .resources
                .commit_flush(&self.held, flush.sequence, records)
                .await;
            self.commit_ms
                .lock()
                .unwrap()
                .push(t.elapsed().as_secs_f64() * 1e3);
            match outcome {
                Ok(Commit::Committed { .. }) => Ok(()),
                other => Err(CommitError::Refused(format!("{other:?}"))),
            }
        })
    }
}

async fn run(bucket: Bucket, backend: &str, a: &Args, bundles: u32) {
    let per_flush = (a.rate as usize * a.bytes * a.flush_ms as usize / 1000).max(a.bytes);
    let before = raw_puts(&bucket, per_flush, 200, "before").await;
    let config = WalConfig {
        flush_interval: Duration::from_millis(a.flush_ms),
        prefix: format!("bench-wal-{bundles}"),
        ..WalConfig::default()
    };
    let metadata_dir = tempfile::tempdir().unwrap();
    let committer = match bundles {
        0 => None,
        n => Some(Committer::new(metadata_dir.path(), a.logs, n).await),
    };
    let w = match &committer {
        None => WalWriter::start(bucket.clone(), config),
        Some(c) => WalWriter::start_with_commit(bucket.clone(), config, c.clone()),
    };
    let latencies = Arc::new(Mutex::new(Vec::with_capacity((a.rate * a.secs) as usize)));
    let payload = Bytes::from(vec![0x42u8; a.bytes]);
    let per_tick = (a.rate / 1000).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut sent = 0u64;
    eprintln!(
        "{backend}: {} msg/s of {} B over {} logs in {bundles} bundles for {} s ...",
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
    let commits = match &committer {
        None => "– | – | – | –".to_string(),
        Some(c) => {
            use std::sync::atomic::Ordering::Relaxed;
            let mut ms = c.commit_ms.lock().unwrap().clone();
            ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let txns = ms.len() as f64;
            format!(
                "{:.0} | {:.1} | {:.1} | {:.2} / {:.2}",
                txns / elapsed,
                c.records.load(Relaxed) as f64 / txns.max(1.0),
                c.record_bytes.load(Relaxed) as f64 / txns.max(1.0) / 1024.0,
                percentile(&ms, 0.5),
                percentile(&ms, 0.99),
            )
        }
    };
    println!(
        "| {backend} | {bundles} | {:.0} | {:.0} | {commits} | {:.1} | {:.0} | {:.2} / {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {:.2} |",
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
    println!("| backend | bundles | msg/s | PUTs/s | metadata txns/s | record keys per txn | KiB of records per txn | commit p50 / p99 ms | msgs per PUT | KiB per PUT | raw PUT p50 / p99 ms (before) | append p50 ms | append p99 ms | raw PUT p50 / p99 ms (after) | append p99 / raw PUT p99 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for backend in &a.backends {
        match backend.as_str() {
            "s3" => {
                let Some(server) = SeaweedServer::start_or_skip("bench_wal").await else {
                    continue;
                };
                server.create_bucket("kilonova-bench-wal").await.unwrap();
                let bucket = Bucket::open(&server.config("kilonova-bench-wal")).unwrap();
                for &n in &a.bundles {
                    run(bucket.clone(), "s3 (SeaweedFS)", &a, n).await;
                }
            }
            "filesystem" => {
                let dir = tempfile::tempdir().unwrap();
                let bucket = Bucket::open(&ObjectStoreConfig::filesystem(dir.path())).unwrap();
                for &n in &a.bundles {
                    run(bucket.clone(), "filesystem", &a, n).await;
                }
            }
            other => panic!("unknown backend {other}"),
        }
    }
}
