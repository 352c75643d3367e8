#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The offload conformance suite: every test runs against a local directory
//! and against a real SeaweedFS S3 server (`weed`, started per test; see
//! `kilonova_objstore::seaweed` for when it skips).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kilonova_objstore::format::{HEADER_LEN, INDEX_RECORD_LEN};
use kilonova_objstore::seaweed::SeaweedServer;
use kilonova_objstore::{
    Bucket, ObjectStoreConfig, ObjectStoreError, OffloadConfig, OffloadedReader, Offloader,
    ReaderConfig, Request, MIN_PART_BYTES,
};
use kilonova_storage::{SegmentId, SegmentStore, StoreConfig};
use tempfile::TempDir;

/// An object store to test against, a local segment store, and what keeps them alive.
struct Backend {
    bucket: Bucket,
    store: SegmentStore,
    server: Option<SeaweedServer>,
    _dirs: Vec<TempDir>,
}

fn segment_store(dir: &TempDir) -> SegmentStore {
    let mut c = StoreConfig::new(dir.path().join("journal"));
    c.log_file_bytes = 16 << 20;
    c.max_entry_bytes = 8 << 20;
    SegmentStore::open(c).unwrap()
}

async fn filesystem_backend() -> Option<Backend> {
    let objects = TempDir::new().unwrap();
    let local = TempDir::new().unwrap();
    let bucket = Bucket::open(&ObjectStoreConfig::filesystem(objects.path())).unwrap();
    Some(Backend {
        bucket,
        store: segment_store(&local),
        server: None,
        _dirs: vec![objects, local],
    })
}

async fn s3_backend(test: &str) -> Option<Backend> {
    let server = SeaweedServer::start_or_skip(test).await?;
    let local = TempDir::new().unwrap();
    server.create_bucket("kilonova-offload-test").await.unwrap();
    let bucket = Bucket::open(&server.config("kilonova-offload-test")).unwrap();
    Some(Backend {
        bucket,
        store: segment_store(&local),
        server: Some(server),
        _dirs: vec![local],
    })
}

/// Runs each named suite function once per backend: `filesystem::NAME` and `s3::NAME`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod filesystem {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(b) = super::filesystem_backend().await {
                        super::$name(b).await;
                    }
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(b) = super::s3_backend(stringify!($name)).await {
                        super::$name(b).await;
                    }
                }
            )*
        }
    };
}

on_every_backend!(
    many_entries_round_trip_byte_for_byte,
    a_sequential_reader_is_served_by_prefetch,
    a_small_segment_is_one_put,
    range_reads_in_the_middle_fetch_only_what_they_need,
    an_index_larger_than_the_prefetch_is_read_in_two_requests,
    a_flipped_data_byte_is_a_corrupt_entry_not_wrong_bytes,
    a_flipped_index_byte_makes_the_object_unreadable,
    offloading_again_writes_a_new_object_and_orphans_are_deleted,
    find_offloaded_adopts_complete_objects_and_ignores_others,
    an_unfinished_upload_leaves_no_object,
    unsealed_and_missing_segments_are_refused,
    a_create_only_put_never_overwrites,
    deleting_a_log_removes_all_its_objects,
);

/// Multipart with the smallest parts S3 allows, so a few MiB use several parts.
fn offloader(b: &Backend) -> Offloader {
    Offloader::new(
        b.bucket.clone(),
        OffloadConfig {
            part_bytes: MIN_PART_BYTES,
            upload_concurrency: 3,
            read_batch_bytes: 1 << 20,
        },
    )
    .unwrap()
}

fn reader(b: &Backend) -> OffloadedReader {
    OffloadedReader::new(b.bucket.clone(), ReaderConfig::default())
}

/// Entry `i` of the test segments: sizes vary (some empty), bytes depend on `i`.
fn entry(i: u64) -> Bytes {
    let len = match i % 7 {
        0 => 0,
        1 => 1,
        2 => 100,
        3 => 3_000,
        _ => (i * 37 % 1500) as usize,
    };
    Bytes::from(
        (0..len)
            .map(|j| (i as usize * 31 + j) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// A sealed segment of these entries in `store`.
async fn sealed_segment(store: &SegmentStore, entries: &[Bytes]) -> SegmentId {
    let seg = store.create_segment().await.unwrap();
    let mut done = Vec::new();
    for e in entries {
        done.push(store.append(seg, e.clone()).await.unwrap());
    }
    for (i, d) in done.into_iter().enumerate() {
        assert_eq!(d.await.unwrap(), i as u64);
    }
    assert_eq!(store.seal(seg).await.unwrap(), entries.len() as u64);
    seg
}

fn entries(n: u64) -> Vec<Bytes> {
    (0..n).map(entry).collect()
}

fn count(b: &Backend, r: Request) -> u64 {
    let s = b.bucket.metrics().snapshot();
    s.latency_us
        .iter()
        .find(|(k, _)| *k == r)
        .map_or(0, |(_, h)| h.count)
}

async fn many_entries_round_trip_byte_for_byte(b: Backend) {
    let mut want = entries(3000);
    // One large entry (6 MiB, more than a part) in the middle, empty ones around it.
    want[1500] = Bytes::from(
        (0..6 << 20)
            .map(|j: u32| (j % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    want[1499] = Bytes::new();
    want[1501] = Bytes::new();
    let seg = sealed_segment(&b.store, &want).await;
    let o = offloader(&b).offload(&b.store, 42, seg).await.unwrap();

    let data: u64 = want.iter().map(|e| e.len() as u64).sum();
    assert_eq!((o.log_id, o.segment_id, o.entries), (42, seg, 3000));
    assert_eq!(o.data_bytes, data);
    assert_eq!(
        o.object_bytes,
        HEADER_LEN + data + 3000 * INDEX_RECORD_LEN + 56
    );
    assert!(
        o.key
            .starts_with(&format!("kilonova/logs/42/segments/{seg}/")),
        "{}",
        o.key
    );
    assert!(
        o.object_bytes > MIN_PART_BYTES as u64 && count(&b, Request::Upload) == 1,
        "a multipart upload"
    );
    assert_eq!(b.bucket.head(&o.key).await.unwrap().size, o.object_bytes);

    let r = reader(&b);
    let mut got = Vec::new();
    for from in (0..3000).step_by(250) {
        got.extend(r.read(&o.key, from..=from + 249).await.unwrap());
    }
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g == w,
            "entry {i} differs ({} vs {} bytes)",
            g.len(),
            w.len()
        );
    }
    let m = b.bucket.metrics().snapshot();
    assert_eq!(
        (m.offloaded_segments, m.offloaded_bytes),
        (1, o.object_bytes)
    );
    assert!(m.read_bytes >= data, "{} read of {data}", m.read_bytes);
}

async fn a_small_segment_is_one_put(b: Backend) {
    let want = entries(20);
    let seg = sealed_segment(&b.store, &want).await;
    let o = offloader(&b).offload(&b.store, 1, seg).await.unwrap();
    assert_eq!(
        (count(&b, Request::Put), count(&b, Request::Upload)),
        (1, 0)
    );
    let got = reader(&b).read(&o.key, 0..=19).await.unwrap();
    assert_eq!(got, want);
}

async fn range_reads_in_the_middle_fetch_only_what_they_need(b: Backend) {
    let want = entries(2000);
    let seg = sealed_segment(&b.store, &want).await;
    let o = offloader(&b).offload(&b.store, 7, seg).await.unwrap();
    let r = OffloadedReader::new(
        b.bucket.clone(),
        ReaderConfig {
            read_ahead_bytes: 10_000,
            // The read-ahead of one request alone (prefetch has its own test).
            prefetch_windows: 0,
            ..ReaderConfig::default()
        },
    );
    let gets = count(&b, Request::Get);
    assert_eq!(r.read(&o.key, 1000..=1009).await.unwrap(), want[1000..1010]);
    assert_eq!(
        count(&b, Request::Get) - gets,
        2,
        "the index, then one range"
    );
    let fetched = b.bucket.metrics().snapshot().read_bytes;
    let asked: u64 = want[1000..1010].iter().map(|e| e.len() as u64).sum();
    assert!(
        fetched >= asked && fetched <= asked + 10_000,
        "read {fetched} for {asked} + read-ahead"
    );

    // The read-ahead serves the next entries without a request.
    let gets = count(&b, Request::Get);
    assert_eq!(r.read(&o.key, 1010..=1012).await.unwrap(), want[1010..1013]);
    assert_eq!(count(&b, Request::Get), gets, "served from the read-ahead");
    assert!(b.bucket.metrics().snapshot().cache_hits >= 3);

    // Single entries at the edges, an empty one, and past the end.
    assert_eq!(r.read(&o.key, 0..=0).await.unwrap(), want[..1]);
    assert_eq!(r.read(&o.key, 1999..=1999).await.unwrap(), want[1999..]);
    assert!(want[7].is_empty());
    assert_eq!(r.read(&o.key, 7..=7).await.unwrap(), vec![Bytes::new()]);
    match r.read(&o.key, 1990..=2000).await {
        Err(ObjectStoreError::NoSuchEntry {
            entry: 2000,
            entries: 2000,
            ..
        }) => {}
        other => panic!("read past the end: {other:?}"),
    }
    // A reader whose cache holds nothing answers the same.
    let cold = reader(&b);
    assert_eq!(
        cold.read(&o.key, 1500..=1600).await.unwrap(),
        want[1500..=1600]
    );
}

async fn a_sequential_reader_is_served_by_prefetch(b: Backend) {
    let want = entries(600);
    let seg = sealed_segment(&b.store, &want).await;
    let o = offloader(&b).offload(&b.store, 6, seg).await.unwrap();
    // Windows of a few entries, so the reader crosses many of them.
    let r = OffloadedReader::new(
        b.bucket.clone(),
        ReaderConfig {
            read_ahead_bytes: 8_000,
            ..ReaderConfig::default()
        },
    );
    for id in 0..600 {
        let got = r.read(&o.key, id..=id).await.unwrap();
        assert!(got[0] == want[id as usize], "entry {id}");
    }
    let m = b.bucket.metrics().snapshot();
    // Only the first read fetched for itself; every later entry was in a
    // window fetched in the background (landed, or awaited while under way).
    assert_eq!((m.cache_misses, m.cache_hits), (1, 599), "{m:?}");
    assert!(r.cache_stats().windows > 50, "{:?}", r.cache_stats());
}

async fn an_index_larger_than_the_prefetch_is_read_in_two_requests(b: Backend) {
    let want = entries(1000);
    let seg = sealed_segment(&b.store, &want).await;
    let o = offloader(&b).offload(&b.store, 3, seg).await.unwrap();
    let r = OffloadedReader::new(
        b.bucket.clone(),
        ReaderConfig {
            index_prefetch_bytes: 1024,
            ..ReaderConfig::default()
        },
    );
    let gets = count(&b, Request::Get);
    let index = r.index(&o.key).await.unwrap();
    assert_eq!(count(&b, Request::Get) - gets, 2);
    assert_eq!(
        (index.entry_count(), index.object_len),
        (1000, o.object_bytes)
    );
    assert_eq!(r.read(&o.key, 990..=999).await.unwrap(), want[990..]);
}

/// Rewrites the object at `key` with byte `at` flipped.
async fn flip_byte(bucket: &Bucket, key: &str, at: u64) {
    let mut obj = bucket.get(key).await.unwrap().to_vec();
    obj[at as usize] ^= 0x01;
    bucket.put(key, Bytes::from(obj).into()).await.unwrap();
}

async fn a_flipped_data_byte_is_a_corrupt_entry_not_wrong_bytes(b: Backend) {
    let want = entries(100);
    let seg = sealed_segment(&b.store, &want).await;
    let o = offloader(&b).offload(&b.store, 5, seg).await.unwrap();
    let index = reader(&b).index(&o.key).await.unwrap();
    let victim = 52;
    assert!(
        want[victim].len() > 3,
        "the flipped byte is inside entry {victim}"
    );
    flip_byte(&b.bucket, &o.key, index.records[victim].offset + 3).await;

    let r = reader(&b);
    match r.read(&o.key, 40..=60).await {
        Err(e @ ObjectStoreError::Corrupt { .. }) => {
            assert!(e.to_string().contains("entry 52"), "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("a flipped byte was not noticed: {other:?}"),
    }
    assert_eq!(
        r.read(&o.key, 40..=51).await.unwrap(),
        want[40..52],
        "entries before it are fine"
    );
    assert_eq!(
        r.read(&o.key, 53..=60).await.unwrap(),
        want[53..61],
        "entries after it are fine"
    );
    assert!(
        r.read(&o.key, 52..=52).await.is_err(),
        "nothing corrupt was cached"
    );
    assert!(b.bucket.metrics().snapshot().checksum_errors >= 2);
}

async fn a_flipped_index_byte_makes_the_object_unreadable(b: Backend) {
    let want = entries(100);
    let seg = sealed_segment(&b.store, &want).await;
    let o = offloader(&b).offload(&b.store, 5, seg).await.unwrap();
    let index_start = o.object_bytes - 56 - 100 * INDEX_RECORD_LEN;
    flip_byte(&b.bucket, &o.key, index_start + 20 * INDEX_RECORD_LEN + 9).await;
    match reader(&b).read(&o.key, 0..=0).await {
        Err(ObjectStoreError::Corrupt { detail, .. }) => {
            assert!(detail.contains("index"), "{detail}")
        }
        other => panic!("a flipped index byte was not noticed: {other:?}"),
    }
}

async fn offloading_again_writes_a_new_object_and_orphans_are_deleted(b: Backend) {
    let want = entries(300);
    let seg = sealed_segment(&b.store, &want).await;
    let off = offloader(&b);
    let first = off.offload(&b.store, 9, seg).await.unwrap();
    let second = off.offload(&b.store, 9, seg).await.unwrap();
    assert_ne!(first.key, second.key, "each offload writes a fresh key");
    assert_eq!(
        (first.entries, first.object_bytes),
        (second.entries, second.object_bytes)
    );
    assert_eq!(
        b.bucket.get(&first.key).await.unwrap(),
        b.bucket.get(&second.key).await.unwrap()
    );

    // Another log's objects are never touched.
    let other = off.offload(&b.store, 10, seg).await.unwrap();
    let keep: HashSet<String> = [second.key.clone()].into();

    // Objects modified after the cut-off (an offload that may still be recorded) stay.
    let early = SystemTime::now() - Duration::from_secs(3600);
    let r = off.delete_orphans(9, &keep, early).await.unwrap();
    assert_eq!(
        (r.deleted.len(), r.too_recent),
        (0, vec![first.key.clone()])
    );

    let later = SystemTime::now() + Duration::from_secs(5);
    let r = off.delete_orphans(9, &keep, later).await.unwrap();
    assert_eq!(r.deleted, vec![first.key.clone()]);
    assert!(matches!(
        b.bucket.head(&first.key).await,
        Err(ObjectStoreError::NotFound { .. })
    ));
    assert_eq!(reader(&b).read(&second.key, 0..=299).await.unwrap(), want);
    assert!(b.bucket.head(&other.key).await.is_ok());
    off.delete(&first.key).await.unwrap(); // deleting a missing key succeeds
}

async fn find_offloaded_adopts_complete_objects_and_ignores_others(b: Backend) {
    let want = entries(50);
    let seg = sealed_segment(&b.store, &want).await;
    let off = offloader(&b);
    assert!(off.find_offloaded(4, seg).await.unwrap().is_empty());
    let o = off.offload(&b.store, 4, seg).await.unwrap();
    // Not an offloaded segment, under the same prefix.
    let junk = format!("{}/junk.seg", off.segment_prefix(4, seg));
    b.bucket
        .put(
            &junk,
            Bytes::from_static(
                b"not a segment at all, but long enough to have a footer-sized tail....",
            )
            .into(),
        )
        .await
        .unwrap();
    let found = off.find_offloaded(4, seg).await.unwrap();
    assert_eq!(found, vec![o.clone()]);
    // A whole log, as a restore would find it: every segment, by id.
    let seg2 = sealed_segment(&b.store, &entries(5)).await;
    let o2 = off.offload(&b.store, 4, seg2).await.unwrap();
    let other_log = off.offload(&b.store, 40, seg2).await.unwrap();
    assert_eq!(off.find_log(4).await.unwrap(), vec![o, o2]);
    assert_eq!(off.find_log(40).await.unwrap(), vec![other_log]);
}

async fn an_unfinished_upload_leaves_no_object(b: Backend) {
    let off = offloader(&b);
    let key = format!("{}/crashed.seg", off.segment_prefix(11, 1));
    let mut up = b.bucket.upload(&key, MIN_PART_BYTES, 2).await.unwrap();
    up.write(Bytes::from(vec![7u8; MIN_PART_BYTES + 10]))
        .await
        .unwrap();
    drop(up); // the process died before completing it
    assert!(matches!(
        b.bucket.head(&key).await,
        Err(ObjectStoreError::NotFound { .. })
    ));
    assert!(off.list_log(11).await.unwrap().is_empty());
    assert!(off.find_offloaded(11, 1).await.unwrap().is_empty());
}

async fn unsealed_and_missing_segments_are_refused(b: Backend) {
    let seg = b.store.create_segment().await.unwrap();
    b.store.append(seg, entry(3)).await.unwrap().await.unwrap();
    let off = offloader(&b);
    assert!(
        matches!(off.offload(&b.store, 1, seg).await, Err(ObjectStoreError::NotSealed(s)) if s == seg)
    );
    assert!(matches!(
        off.offload(&b.store, 1, seg + 100).await,
        Err(ObjectStoreError::Storage(_))
    ));
    assert!(off.list_log(1).await.unwrap().is_empty());
    assert_eq!(b.bucket.metrics().snapshot().offload_errors, 2);
}

async fn a_create_only_put_never_overwrites(b: Backend) {
    let key = b.bucket.key("cluster/wal/0001");
    b.bucket
        .put_if_absent(&key, Bytes::from_static(b"first").into())
        .await
        .unwrap();
    match b
        .bucket
        .put_if_absent(&key, Bytes::from_static(b"second").into())
        .await
    {
        Err(ObjectStoreError::AlreadyExists { key: k }) => assert_eq!(k, key),
        other => panic!("a second create-only put: {other:?}"),
    }
    assert_eq!(&b.bucket.get(&key).await.unwrap()[..], b"first");
    assert_eq!(
        b.bucket.metrics().snapshot().write_errors,
        0,
        "a lost race is no write error"
    );
}

async fn deleting_a_log_removes_all_its_objects(b: Backend) {
    let off = offloader(&b);
    let s1 = sealed_segment(&b.store, &entries(10)).await;
    let s2 = sealed_segment(&b.store, &entries(20)).await;
    off.offload(&b.store, 12, s1).await.unwrap();
    off.offload(&b.store, 12, s2).await.unwrap();
    let kept = off.offload(&b.store, 13, s1).await.unwrap();
    assert_eq!(off.delete_log(12).await.unwrap(), 2);
    assert!(off.list_log(12).await.unwrap().is_empty());
    assert_eq!(off.list_log(13).await.unwrap().len(), 1);
    assert!(b.bucket.head(&kept.key).await.is_ok());
}

/// S3 only: the server is killed (as a crash) during reads and offloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_is_a_retryable_error_and_a_retry_after_restart_succeeds() {
    let Some(mut b) =
        s3_backend("s3_down_is_a_retryable_error_and_a_retry_after_restart_succeeds").await
    else {
        return;
    };
    let want = entries(500);
    let seg = sealed_segment(&b.store, &want).await;
    let off = offloader(&b);
    let o = off.offload(&b.store, 21, seg).await.unwrap();

    b.server.as_mut().unwrap().kill();
    let r = reader(&b);
    let started = std::time::Instant::now();
    match r.read(&o.key, 0..=10).await {
        Err(e) => assert!(e.is_retryable(), "read with the store down: {e:?}"),
        Ok(_) => panic!("a read succeeded with the store down"),
    }
    match off.offload(&b.store, 21, seg).await {
        Err(e) => assert!(e.is_retryable(), "offload with the store down: {e:?}"),
        Ok(o) => panic!("an offload succeeded with the store down: {o:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failures are reported within the retry budget"
    );
    let m = b.bucket.metrics().snapshot();
    assert!(
        m.read_errors >= 1 && m.offload_errors >= 1 && m.write_errors >= 1,
        "{m:?}"
    );

    b.server.as_mut().unwrap().restart().await.unwrap();
    assert_eq!(
        r.read(&o.key, 0..=499).await.unwrap(),
        want,
        "the same reader, after the restart"
    );
    let again = off.offload(&b.store, 21, seg).await.unwrap();
    assert_eq!(
        r.read(&again.key, 250..=260).await.unwrap(),
        want[250..=260]
    );
}

/// The same segment offloaded to S3 (multipart) and to a directory is the
/// same object, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_and_s3_hold_identical_objects_for_the_same_segment() {
    let Some(s3) =
        s3_backend("filesystem_and_s3_hold_identical_objects_for_the_same_segment").await
    else {
        return;
    };
    let fs = filesystem_backend().await.unwrap();
    let mut want = entries(2000);
    want[3] = Bytes::from(vec![1u8; 5 << 20]);
    let seg = sealed_segment(&s3.store, &want).await;
    let a = offloader(&s3).offload(&s3.store, 1, seg).await.unwrap();
    let b = offloader(&fs).offload(&s3.store, 1, seg).await.unwrap();
    let (x, y) = (
        s3.bucket.get(&a.key).await.unwrap(),
        fs.bucket.get(&b.key).await.unwrap(),
    );
    assert_eq!(x.len(), y.len());
    assert!(x == y, "the format does not depend on the backend");
}

/// The reader's cache stays within its bytes while a reader goes through a
/// segment many times its size, and what it evicts is fetched again intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_cache_stays_within_its_bound() {
    let b = filesystem_backend().await.unwrap();
    let want = entries(3000);
    let seg = sealed_segment(&b.store, &want).await;
    let o = offloader(&b).offload(&b.store, 8, seg).await.unwrap();
    let bound = 64 << 10;
    let r = OffloadedReader::new(
        b.bucket.clone(),
        ReaderConfig {
            read_ahead_bytes: 16 << 10,
            cache_bytes: bound,
            ..ReaderConfig::default()
        },
    );
    for pass in 0..2 {
        for from in (0..3000).step_by(30) {
            let got = r.read(&o.key, from..=from + 29).await.unwrap();
            assert!(
                got == want[from as usize..from as usize + 30],
                "pass {pass} at {from}"
            );
            let s = r.cache_stats();
            assert!(s.window_bytes <= bound, "{s:?}");
        }
    }
    assert!(
        o.data_bytes > 20 * bound as u64,
        "the segment is much larger than the cache"
    );
    let m = b.bucket.metrics().snapshot();
    assert!(m.cache_hits > 0 && m.cache_misses > 0, "{m:?}");
    r.forget(&o.key);
    assert_eq!(r.cache_stats().windows, 0);
}

/// Prefetches cut off by their runtime's shutdown do not leave a reader on
/// another runtime waiting for them.
#[test]
fn prefetches_dropped_with_their_runtime_do_not_block_later_reads() {
    let rt = |workers| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap()
    };
    let first = rt(1);
    let (b, key, want, reader) = first.block_on(async {
        let b = filesystem_backend().await.unwrap();
        let want = entries(400);
        let seg = sealed_segment(&b.store, &want).await;
        let o = offloader(&b).offload(&b.store, 2, seg).await.unwrap();
        let reader = OffloadedReader::new(
            b.bucket.clone(),
            ReaderConfig {
                read_ahead_bytes: 4_000,
                ..ReaderConfig::default()
            },
        );
        assert_eq!(reader.read(&o.key, 0..=0).await.unwrap(), want[..1]);
        (b, o.key, want, reader)
    });
    first.shutdown_background(); // prefetches still under way are dropped
    let second = rt(2);
    second.block_on(async {
        let all = tokio::time::timeout(Duration::from_secs(30), reader.read(&key, 0..=399))
            .await
            .expect("a read waited for a prefetch that will never land");
        assert_eq!(all.unwrap(), want);
    });
    drop(b);
}

/// A managed log's sealed segments, offloaded and read back, decode to the
/// same entries (position, publish time, message index and count, bytes)
/// as the log reads locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_logs_segments_read_back_as_the_same_entries() {
    use kilonova_storage::{
        DirStateStore, Entry, EntryCache, ManagedLog, ManagedLogConfig, Position,
    };
    let b = filesystem_backend().await.unwrap();
    let state_dir = TempDir::new().unwrap();
    let state = std::sync::Arc::new(DirStateStore::open(state_dir.path()).unwrap());
    let cache = std::sync::Arc::new(EntryCache::new(1 << 20));
    let config = ManagedLogConfig {
        max_segment_entries: 100,
        ..ManagedLogConfig::default()
    };
    let mut log = ManagedLog::open(77, b.store.clone(), state, cache, config, 1_000)
        .await
        .unwrap();
    let mut done = Vec::new();
    for i in 0..350u64 {
        let c = log
            .append(entry(i), 1 + (i % 3) as u32, 1_000 + i)
            .await
            .unwrap();
        done.push(c);
    }
    for d in done {
        d.await.unwrap();
    }
    let sealed: Vec<_> = log
        .segments()
        .iter()
        .map(|s| s.id)
        .filter(|id| log.segment_info(*id).is_some_and(|i| i.sealed))
        .collect();
    assert_eq!(
        sealed.len(),
        3,
        "350 entries in segments of 100: three sealed"
    );
    let off = offloader(&b);
    let r = reader(&b);
    for seg in sealed {
        let o = off.offload(&b.store, log.id(), seg).await.unwrap();
        let raw = r.read(&o.key, 0..=o.entries - 1).await.unwrap();
        for (e, stored) in raw.into_iter().enumerate() {
            let p = Position::new(seg, e as u64);
            let remote = Entry::from_stored(p, stored).expect("an entry header");
            assert_eq!(remote, log.read_entry(p).unwrap(), "entry {p}");
        }
    }
}

/// A start-up probe tells a working store from wrong credentials, a missing
/// bucket and a store that is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_tells_refusals_from_an_unreachable_store() {
    let fs = filesystem_backend().await.unwrap();
    fs.bucket.probe().await.unwrap();
    let Some(mut server) =
        SeaweedServer::start_or_skip("a_probe_tells_refusals_from_an_unreachable_store").await
    else {
        return;
    };
    server.create_bucket("kilonova-probe").await.unwrap();
    Bucket::open(&server.config("kilonova-probe"))
        .unwrap()
        .probe()
        .await
        .unwrap();

    let mut wrong = server.config("kilonova-probe");
    wrong.secret_access_key = Some(kilonova_objstore::Secret::new("not-the-secret"));
    match Bucket::open(&wrong).unwrap().probe().await {
        Err(e @ ObjectStoreError::Refused { .. }) => assert!(!e.is_retryable()),
        other => panic!("wrong credentials: {other:?}"),
    }
    match Bucket::open(&server.config("no-such-bucket"))
        .unwrap()
        .probe()
        .await
    {
        Err(e @ ObjectStoreError::Refused { .. }) => assert!(!e.is_retryable()),
        other => panic!("a missing bucket: {other:?}"),
    }
    server.kill();
    match Bucket::open(&server.config("kilonova-probe"))
        .unwrap()
        .probe()
        .await
    {
        Err(e) => assert!(e.is_retryable(), "{e:?}"),
        Ok(()) => panic!("a probe succeeded with the store down"),
    }
}

/// Bytes of the files under `dir` (recursively).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// S3 only: the server is killed while a multipart offload is uploading
/// parts. The offload fails with a retryable error, leaves no object, and
/// offloading again after the restart succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_killed_during_a_multipart_offload_leaves_nothing_and_a_retry_succeeds() {
    let Some(mut b) =
        s3_backend("s3_killed_during_a_multipart_offload_leaves_nothing_and_a_retry_succeeds")
            .await
    else {
        return;
    };
    // 80 MiB: sixteen parts of 5 MiB, one at a time (time to kill it mid-way).
    let want: Vec<Bytes> = (0..80u64)
        .map(|i| Bytes::from(vec![i as u8; 1 << 20]))
        .collect();
    let seg = sealed_segment(&b.store, &want).await;
    let off = Offloader::new(
        b.bucket.clone(),
        OffloadConfig {
            part_bytes: MIN_PART_BYTES,
            upload_concurrency: 1,
            read_batch_bytes: 1 << 20,
        },
    )
    .unwrap();
    let data_dir = b.server.as_ref().unwrap().data_dir();
    let before = dir_bytes(&data_dir);
    let task = {
        let (off, store) = (off.clone(), b.store.clone());
        tokio::spawn(async move { off.offload(&store, 31, seg).await })
    };
    // Wait until parts are arriving (the server's files grew by a part).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dir_bytes(&data_dir) < before + MIN_PART_BYTES as u64 {
        assert!(
            std::time::Instant::now() < deadline && !task.is_finished(),
            "no part reached the server within 60 s (or the offload ended first)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.server.as_mut().unwrap().kill();
    match task.await.unwrap() {
        Err(e) => assert!(e.is_retryable(), "{e:?}"),
        Ok(o) => panic!("the offload finished although the server died under it: {o:?}"),
    }
    b.server.as_mut().unwrap().restart().await.unwrap();
    assert!(
        off.find_offloaded(31, seg).await.unwrap().is_empty(),
        "no object left behind"
    );
    let o = off.offload(&b.store, 31, seg).await.unwrap();
    let got = reader(&b).read(&o.key, 0..=79).await.unwrap();
    assert!(got == want, "the retried offload reads back whole");
}
