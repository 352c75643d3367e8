#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Write-ahead objects against a local directory and a real SeaweedFS S3
//! server: appends of many logs grouped into few objects, each append
//! resolved once its object is durable, read back byte for byte and in
//! order; size-triggered flushes; a failed flush fails its appends and the
//! writer goes on; a reader gets an index (a large one too) and a log's
//! entries back (spread-out ones without the bytes between), and a flipped
//! byte as an error.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kilonova_objstore::seaweed::SeaweedServer;
use kilonova_objstore::wal::format::{decode_wal, decode_wal_index};
use kilonova_objstore::{Bucket, ObjectStoreError, Request, WalConfig, WalReader, WalWriter};

const BUCKET: &str = "kilonova-wal-test";

mod common;
use common::filesystem;

async fn s3(test: &str) -> Option<(Bucket, SeaweedServer)> {
    common::s3(test, BUCKET, |config| {
        // A store that is down fails a flush in about a second.
        config.max_retries = 1;
        config.retry_timeout_ms = 1_000;
        config.request_timeout_ms = 2_000;
        config.connect_timeout_ms = 500;
    })
    .await
}

fn data(task: u64, i: u64) -> Bytes {
    Bytes::from(format!("task-{task}-message-{i:05}-").repeat(3))
}

/// Every object the writer wrote, decoded, in sequence order: `(log, bytes)`.
async fn written(bucket: &Bucket, w: &WalWriter) -> Vec<Vec<(u64, Bytes)>> {
    let prefix = bucket.key(&format!("wal/{}", w.incarnation()));
    let mut objects: BTreeMap<u64, Vec<(u64, Bytes)>> = BTreeMap::new();
    for o in bucket.list(&prefix).await.unwrap() {
        let (seq, entries) = decode_wal(&bucket.get(&o.key).await.unwrap()).unwrap();
        objects.insert(seq, entries);
    }
    objects.into_values().collect()
}

async fn many_logs_share_few_objects_and_read_back_in_order(bucket: Bucket) {
    let w = WalWriter::start(
        bucket.clone(),
        WalConfig {
            flush_interval: Duration::from_millis(20),
            ..WalConfig::default()
        },
    );
    let (tasks, per_task) = (20u64, 50u64);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let w = w.clone();
        // Each task appends in order, one at a time, as a producer's
        // publishes of one topic are acknowledged in order.
        handles.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..per_task {
                positions.push(w.append(t % 10, data(t, i)).await.unwrap());
            }
            positions
        }));
    }
    let mut positions = Vec::new();
    for h in handles {
        positions.push(h.await.unwrap());
    }
    let stats = w.stats();
    assert_eq!(stats.appends, tasks * per_task);
    assert_eq!(stats.failed_flushes, 0);
    assert!(
        stats.flushes * 5 <= stats.appends,
        "requests follow the flushes, not the messages: {stats:?}"
    );
    let objects = written(&bucket, &w).await;
    assert_eq!(objects.len() as u64, stats.flushes);
    // Each position names the object and place holding exactly that entry.
    for (t, ps) in positions.iter().enumerate() {
        for (i, p) in ps.iter().enumerate() {
            let (log, bytes) = &objects[(p.sequence - 1) as usize][p.index as usize];
            assert_eq!((*log, bytes), (t as u64 % 10, &data(t as u64, i as u64)));
        }
    }
    // In sequence order, each task's entries come back in the order appended.
    for t in 0..tasks {
        let mine: Vec<Bytes> = objects
            .iter()
            .flatten()
            .filter(|(log, b)| *log == t % 10 && b.starts_with(format!("task-{t}-").as_bytes()))
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(mine, (0..per_task).map(|i| data(t, i)).collect::<Vec<_>>());
    }
}

async fn a_flush_starts_once_max_object_bytes_are_queued(bucket: Bucket) {
    // An interval no test waits for: only the size starts flushes.
    let w = WalWriter::start(
        bucket.clone(),
        WalConfig {
            flush_interval: Duration::from_secs(3600),
            max_object_bytes: 64 << 10,
            ..WalConfig::default()
        },
    );
    let entry = Bytes::from(vec![7u8; 8 << 10]);
    let mut handles = Vec::new();
    for i in 0..64u64 {
        let (w, e) = (w.clone(), entry.clone());
        handles.push(tokio::spawn(async move { w.append(i, e).await }));
    }
    // 64 entries of 8 KiB, 8 to an object: all eight flushes run at once
    // by size (the last one is full too).
    let all = async {
        for h in handles {
            h.await.unwrap().unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("size-triggered flushes");
    let objects = written(&bucket, &w).await;
    assert_eq!(objects.len(), 8);
    assert!(objects
        .iter()
        .all(|o| o.len() == 8 && o.iter().all(|(_, b)| *b == entry)));
}

async fn a_reader_reads_an_index_and_a_logs_entries_back(bucket: Bucket) {
    // 4,000 entries of 7 bytes in one object (it is flushed when its last
    // entry is queued): an index of 96,000 bytes, larger than the reader's
    // first suffix request, so its start is read with a second one.
    let n = 4_000u64;
    let w = WalWriter::start(
        bucket.clone(),
        WalConfig {
            flush_interval: Duration::from_secs(3600),
            max_object_bytes: (n * 7) as usize,
            ..WalConfig::default()
        },
    );
    let mut handles = Vec::new();
    for i in 0..n {
        let w = w.clone();
        handles.push(tokio::spawn(async move {
            w.append(i % 7, Bytes::from(format!("e-{i:05}"))).await
        }));
    }
    let mut positions = Vec::new();
    let all = async {
        for h in handles {
            positions.push(h.await.unwrap().unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("one size-triggered flush");
    let key = positions[0].object.to_string();
    assert!(positions.iter().all(|p| *p.object == *key), "one object");
    let whole = bucket.get(&key).await.unwrap();
    let reader = WalReader::new(bucket.clone());
    let index = reader.index(&key).await.unwrap();
    assert_eq!(index, decode_wal_index(&whole).unwrap());
    assert_eq!(index.records.len() as u64, n);
    let (_, entries) = decode_wal(&whole).unwrap();
    for log in 0..7 {
        let expected: Vec<Bytes> = entries
            .iter()
            .filter(|(l, _)| *l == log)
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(reader.read_log(&key, &index, log).await.unwrap(), expected);
    }
    assert!(reader.read_log(&key, &index, 99).await.unwrap().is_empty());
    let p = &positions[1234];
    assert_eq!(
        reader.read(&key, &index, p.index).await.unwrap(),
        Bytes::from("e-01234")
    );
    assert!(matches!(
        reader.read(&key, &index, n as u32).await,
        Err(ObjectStoreError::NoSuchEntry { .. })
    ));

    // A flipped entry byte is a Corrupt error, never wrong bytes.
    let mut bad = whole.to_vec();
    let r = index.records[10];
    bad[r.offset as usize] ^= 0x20;
    bucket.put(&key, Bytes::from(bad).into()).await.unwrap();
    assert!(matches!(
        reader.read_log(&key, &index, r.log).await,
        Err(ObjectStoreError::Corrupt { .. })
    ));
    assert!(matches!(
        reader.read(&key, &index, 10).await,
        Err(ObjectStoreError::Corrupt { .. })
    ));
}

async fn a_logs_spread_out_entries_are_read_without_the_gaps_between(bucket: Bucket) {
    // Log 1's entries at both ends of an object, 400 KiB of log 2's between.
    let w = WalWriter::start(
        bucket.clone(),
        WalConfig {
            flush_interval: Duration::from_secs(3600),
            max_object_entries: 102,
            ..WalConfig::default()
        },
    );
    let filler = Bytes::from(vec![2u8; 4 << 10]);
    let mut appends = vec![(1, Bytes::from_static(b"first"))];
    appends.extend((0..100).map(|_| (2, filler.clone())));
    appends.push((1, Bytes::from_static(b"last")));
    // join_all polls them in order the first time: each is queued then.
    let all =
        futures_util::future::join_all(appends.into_iter().map(|(log, data)| w.append(log, data)));
    let positions: Vec<_> = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("one flush of 102 entries")
        .into_iter()
        .map(|p| p.unwrap())
        .collect();
    assert_eq!((positions[0].index, positions[101].index), (0, 101));
    let key = positions[0].object.to_string();
    let reader = WalReader::new(bucket.clone());
    let index = reader.index(&key).await.unwrap();
    let mine: Vec<u32> = index
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.log == 1)
        .map(|(i, _)| i as u32)
        .collect();
    assert_eq!(mine, vec![0, 101]);
    let before = gets(&bucket);
    let entries = reader.read_log(&key, &index, 1).await.unwrap();
    assert_eq!(
        entries,
        vec![Bytes::from_static(b"first"), Bytes::from_static(b"last")]
    );
    let by_place = reader.read_entries(&key, &index, 1, &mine).await.unwrap();
    assert_eq!(by_place, entries);
    // Two requests each, one per entry: not one through the 400 KiB between.
    assert_eq!(gets(&bucket) - before, 4);
    // Places of another log's entries, or out of order, are refused.
    assert!(matches!(
        reader.read_entries(&key, &index, 2, &mine).await,
        Err(ObjectStoreError::Corrupt { .. })
    ));
    assert!(matches!(
        reader
            .read_entries(&key, &index, 1, &[mine[1], mine[0]])
            .await,
        Err(ObjectStoreError::Corrupt { .. })
    ));
}

/// GET requests `bucket` made so far.
fn gets(bucket: &Bucket) -> u64 {
    bucket
        .metrics()
        .snapshot()
        .latency_us
        .iter()
        .find(|(r, _)| *r == Request::Get)
        .map_or(0, |(_, h)| h.count)
}

async fn a_run_is_read_by_place_with_its_index_read_once(bucket: Bucket) {
    // Log 1's run at places 1..=3, between entries of log 2.
    let entries: Vec<(u64, Bytes)> = [(2, "a"), (1, "r0"), (1, "r1"), (1, "r2"), (2, "b")]
        .into_iter()
        .map(|(log, d)| (log, Bytes::from(d)))
        .collect();
    let key = kilonova_objstore::wal::write_object(&bucket, "base/run.wal", &entries)
        .await
        .unwrap();
    let reader = WalReader::with_index_cache(bucket.clone(), 1 << 20);
    let before = gets(&bucket);
    let run = reader.read_run(&key, 1, 1, 1, 2).await.unwrap();
    assert_eq!(run, [Bytes::from("r1"), Bytes::from("r2")]);
    assert_eq!(gets(&bucket) - before, 2, "the index, then the entries");
    let first = reader.read_run(&key, 1, 1, 0, 0).await.unwrap();
    assert_eq!(first, [Bytes::from("r0")]);
    assert_eq!(gets(&bucket) - before, 3, "the index came from the cache");
    // Another log's place, or a place past the object, is refused.
    assert!(matches!(
        reader.read_run(&key, 1, 1, 0, 3).await,
        Err(ObjectStoreError::Corrupt { .. })
    ));
    assert!(matches!(
        reader.read_run(&key, 1, 5, 0, 0).await,
        Err(ObjectStoreError::NoSuchEntry { .. })
    ));
    // Without a cache, every read reads the index again.
    let uncached = WalReader::new(bucket.clone());
    let before = gets(&bucket);
    uncached.read_run(&key, 1, 1, 0, 0).await.unwrap();
    uncached.read_run(&key, 1, 1, 0, 0).await.unwrap();
    assert_eq!(gets(&bucket) - before, 4);
}

mod filesystem {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_is_read_by_place_with_its_index_read_once() {
        let (b, _dir) = super::filesystem().await;
        super::a_run_is_read_by_place_with_its_index_read_once(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_logs_spread_out_entries_are_read_without_the_gaps_between() {
        let (b, _dir) = super::filesystem().await;
        super::a_logs_spread_out_entries_are_read_without_the_gaps_between(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_reads_an_index_and_a_logs_entries_back() {
        let (b, _dir) = super::filesystem().await;
        super::a_reader_reads_an_index_and_a_logs_entries_back(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_logs_share_few_objects_and_read_back_in_order() {
        let (b, _dir) = super::filesystem().await;
        super::many_logs_share_few_objects_and_read_back_in_order(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_starts_once_max_object_bytes_are_queued() {
        let (b, _dir) = super::filesystem().await;
        super::a_flush_starts_once_max_object_bytes_are_queued(b).await;
    }
}

mod s3 {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_logs_spread_out_entries_are_read_without_the_gaps_between() {
        if let Some((b, _server)) = s3("wal_spread_out").await {
            super::a_logs_spread_out_entries_are_read_without_the_gaps_between(b).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_reads_an_index_and_a_logs_entries_back() {
        if let Some((b, _server)) = s3("wal_reader").await {
            super::a_reader_reads_an_index_and_a_logs_entries_back(b).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_logs_share_few_objects_and_read_back_in_order() {
        if let Some((b, _server)) = s3("wal_many_logs").await {
            super::many_logs_share_few_objects_and_read_back_in_order(b).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_starts_once_max_object_bytes_are_queued() {
        if let Some((b, _server)) = s3("wal_by_size").await {
            super::a_flush_starts_once_max_object_bytes_are_queued(b).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_fails_its_appends_and_the_writer_goes_on() {
        let Some((b, mut server)) = s3("wal_outage").await else {
            return;
        };
        let w = WalWriter::start(b.clone(), WalConfig::default());
        let first = w.append(1, Bytes::from_static(b"before")).await.unwrap();
        server.kill();
        let failed = w.append(1, Bytes::from_static(b"while-down")).await;
        assert!(
            failed.is_err(),
            "an append whose flush failed is not acknowledged"
        );
        server.restart().await.unwrap();
        let after = w.append(1, Bytes::from_static(b"after")).await.unwrap();
        assert!(after.sequence > first.sequence);
        let objects = written(&b, &w).await;
        let entries: Vec<Bytes> = objects.into_iter().flatten().map(|(_, d)| d).collect();
        assert_eq!(
            entries,
            vec![Bytes::from_static(b"before"), Bytes::from_static(b"after")]
        );
        assert_eq!(w.stats().failed_flushes, 1);
    }
}
