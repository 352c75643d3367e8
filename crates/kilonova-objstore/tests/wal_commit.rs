#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The write-ahead writer's flush commit, against a local directory and a
//! real SeaweedFS S3 server: each durable flush is committed once, with its
//! entries (log, tag, place) in append order, one commit at a time in
//! sequence order; an append resolves only after its commit returned, and a
//! failed commit fails exactly its flush's appends, saying whether the
//! broker was deposed or the metadata store unavailable (a commit that does
//! not return in time is the latter) and halts its logs until they are
//! resumed; a flush starts at an entry count.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kilonova_objstore::seaweed::SeaweedServer;
use kilonova_objstore::wal::format::decode_wal;
use kilonova_objstore::wal::CommitFuture;
use kilonova_objstore::{
    Bucket, CommitError, FlushCommit, FlushSummary, ObjectStoreError, WalConfig, WalWriter,
};
use tokio::sync::{mpsc, oneshot};

const BUCKET: &str = "kilonova-wal-commit-test";
const WAIT: Duration = Duration::from_secs(60);

mod common;
use common::filesystem;

async fn s3(test: &str) -> Option<(Bucket, SeaweedServer)> {
    common::s3(test, BUCKET, |_| {}).await
}

/// Records every commit; fails the sequences told to; notes whether a
/// commit ever overlapped another or saw its object missing.
struct Recording {
    bucket: Bucket,
    commits: Mutex<Vec<FlushSummary>>,
    fail: Mutex<HashMap<u64, CommitError>>,
    in_flight: AtomicBool,
    overlapped: AtomicBool,
    object_missing: AtomicBool,
}

impl Recording {
    fn new(bucket: Bucket) -> Arc<Self> {
        Arc::new(Recording {
            bucket,
            commits: Mutex::new(Vec::new()),
            fail: Mutex::new(HashMap::new()),
            in_flight: AtomicBool::new(false),
            overlapped: AtomicBool::new(false),
            object_missing: AtomicBool::new(false),
        })
    }

    fn commits(&self) -> Vec<FlushSummary> {
        self.commits.lock().unwrap().clone()
    }
}

impl FlushCommit for Recording {
    fn commit<'a>(&'a self, flush: &'a FlushSummary) -> CommitFuture<'a> {
        Box::pin(async move {
            if self.in_flight.swap(true, Ordering::SeqCst) {
                self.overlapped.store(true, Ordering::SeqCst);
            }
            // The object is durable before its commit starts.
            if self.bucket.head(&flush.object).await.is_err() {
                self.object_missing.store(true, Ordering::SeqCst);
            }
            self.commits.lock().unwrap().push(flush.clone());
            let outcome = self.fail.lock().unwrap().remove(&flush.sequence);
            self.in_flight.store(false, Ordering::SeqCst);
            outcome.map_or(Ok(()), Err)
        })
    }
}

fn data(log: u64, tag: u64) -> Bytes {
    Bytes::from(format!("log-{log}-entry-{tag:04}"))
}

async fn every_flush_is_committed_once_with_its_entries_in_append_order(bucket: Bucket) {
    let rec = Recording::new(bucket.clone());
    let w = WalWriter::start_with_commit(
        bucket.clone(),
        WalConfig {
            flush_interval: Duration::from_millis(10),
            ..WalConfig::default()
        },
        rec.clone(),
    );
    let (logs, per_log) = (20u64, 30u64);
    let mut handles = Vec::new();
    for log in 0..logs {
        let w = w.clone();
        // One producer per log, its publishes acknowledged in order.
        handles.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for tag in 0..per_log {
                positions.push(w.append_tagged(log, tag, data(log, tag)).await.unwrap());
            }
            positions
        }));
    }
    let mut positions = Vec::new();
    for h in handles {
        positions.push(h.await.unwrap());
    }
    let commits = rec.commits();
    let stats = w.stats();
    assert_eq!(commits.len() as u64, stats.flushes, "one commit per flush");
    assert_eq!((stats.failed_flushes, stats.failed_commits), (0, 0));
    assert!(commits.len() > 1, "the load took several flushes");
    assert_eq!(
        commits.iter().map(|c| c.sequence).collect::<Vec<_>>(),
        (1..=commits.len() as u64).collect::<Vec<_>>(),
        "commits in sequence order"
    );
    assert!(
        !rec.overlapped.load(Ordering::SeqCst),
        "one commit at a time"
    );
    assert!(
        !rec.object_missing.load(Ordering::SeqCst),
        "every object was durable before its commit"
    );
    // Each summary describes its object exactly, in append order.
    let mut tags: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for c in &commits {
        assert_eq!(&*c.incarnation, w.incarnation());
        let (seq, entries) = decode_wal(&bucket.get(&c.object).await.unwrap()).unwrap();
        assert_eq!(seq, c.sequence);
        assert_eq!(entries.len(), c.entries.len());
        for (i, (e, (log, bytes))) in c.entries.iter().zip(&entries).enumerate() {
            assert_eq!((e.index as usize, e.log), (i, *log));
            assert_eq!(*bytes, data(e.log, e.tag));
            tags.entry(e.log).or_default().push(e.tag);
        }
    }
    for log in 0..logs {
        assert_eq!(tags[&log], (0..per_log).collect::<Vec<_>>(), "log {log}");
    }
    // Each append's position is its entry in its flush's summary.
    for (log, ps) in positions.iter().enumerate() {
        for (tag, p) in ps.iter().enumerate() {
            let c = &commits[(p.sequence - 1) as usize];
            assert_eq!(*c.object, *p.object);
            let e = c.entries[p.index as usize];
            assert_eq!((e.log, e.tag), (log as u64, tag as u64));
        }
    }
}

/// Rounds of four concurrent appends of 1 KiB, each round one flush (by
/// size); the outcomes of every round's appends.
async fn rounds(w: &WalWriter, n: u64) -> Vec<Vec<Result<u64, ObjectStoreError>>> {
    let mut out = Vec::new();
    for round in 0..n {
        // A failed round halted the logs: the caller resumes them.
        for log in 0..4u64 {
            w.resume_log(log).await.unwrap();
        }
        let mut handles = Vec::new();
        for log in 0..4u64 {
            let w = w.clone();
            handles.push(tokio::spawn(async move {
                w.append_tagged(log, round, Bytes::from(vec![round as u8; 1024]))
                    .await
                    .map(|p| p.sequence)
            }));
        }
        let mut results = Vec::new();
        for h in handles {
            results.push(tokio::time::timeout(WAIT, h).await.unwrap().unwrap());
        }
        out.push(results);
    }
    out
}

async fn a_failed_commit_fails_exactly_its_flushs_appends(bucket: Bucket) {
    let rec = Recording::new(bucket.clone());
    rec.fail.lock().unwrap().extend([
        (2, CommitError::Deposed("bundle t/ns/0x0_0x1 lost".into())),
        (4, CommitError::Unavailable("etcd timed out".into())),
    ]);
    let w = WalWriter::start_with_commit(
        bucket.clone(),
        WalConfig {
            // Only the size starts a flush: four appends each.
            flush_interval: Duration::from_secs(3600),
            max_object_bytes: 4 * 1024,
            ..WalConfig::default()
        },
        rec.clone(),
    );
    let outcomes = rounds(&w, 5).await;
    for (round, results) in outcomes.iter().enumerate() {
        let sequence = round as u64 + 1;
        for r in results {
            match (sequence, r) {
                (
                    2,
                    Err(ObjectStoreError::FlushCommit {
                        error: CommitError::Deposed(_),
                        ..
                    }),
                ) => {}
                (
                    4,
                    Err(ObjectStoreError::FlushCommit {
                        error: CommitError::Unavailable(_),
                        ..
                    }),
                ) => {}
                (1 | 3 | 5, Ok(s)) if *s == sequence => {}
                other => panic!("round {round}: unexpected outcome {other:?}"),
            }
        }
    }
    let stats = w.stats();
    assert_eq!(
        (stats.flushes, stats.failed_flushes, stats.failed_commits),
        (3, 2, 2)
    );
    assert_eq!(
        rec.commits().iter().map(|c| c.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "each flush committed once, in order, failed or not"
    );
    assert!(CommitError::Deposed(String::new()).is_deposed());
    assert!(!CommitError::Unavailable(String::new()).is_deposed());
}

/// Holds each commit until the test releases it.
struct Gated {
    called: mpsc::UnboundedSender<(u64, oneshot::Sender<()>)>,
}

impl FlushCommit for Gated {
    fn commit<'a>(&'a self, flush: &'a FlushSummary) -> CommitFuture<'a> {
        Box::pin(async move {
            let (release, released) = oneshot::channel();
            self.called
                .send((flush.sequence, release))
                .map_err(|_| CommitError::Unavailable("the test is gone".into()))?;
            released
                .await
                .map_err(|_| CommitError::Unavailable("not released".into()))
        })
    }
}

/// Commits the test releases one by one.
type Calls = mpsc::UnboundedReceiver<(u64, oneshot::Sender<()>)>;

/// A writer flushing each append after 1 ms (or, with `full`, as soon as
/// it is queued: one byte fills an object) whose commits wait for the test
/// ([`Gated`]).
fn gated_writer(bucket: &Bucket, full: bool) -> (WalWriter, Calls) {
    let (called, calls) = mpsc::unbounded_channel();
    let w = WalWriter::start_with_commit(
        bucket.clone(),
        WalConfig {
            flush_interval: Duration::from_millis(1),
            max_object_bytes: if full { 1 } else { 8 << 20 },
            ..WalConfig::default()
        },
        Arc::new(Gated { called }),
    );
    (w, calls)
}

async fn an_append_resolves_only_after_its_commit_returns(bucket: Bucket) {
    let (w, mut calls) = gated_writer(&bucket, false);
    let first = {
        let w = w.clone();
        tokio::spawn(async move { w.append_tagged(1, 0, Bytes::from_static(b"a")).await })
    };
    let (sequence, release) = tokio::time::timeout(WAIT, calls.recv())
        .await
        .expect("the first flush's commit")
        .unwrap();
    assert_eq!(sequence, 1);
    // Durable, committing: the append waits, and the next flush waits too.
    let second = {
        let w = w.clone();
        tokio::spawn(async move { w.append_tagged(1, 1, Bytes::from_static(b"b")).await })
    };
    tokio::task::yield_now().await;
    assert!(!first.is_finished(), "resolved before its commit returned");
    assert!(
        calls.try_recv().is_err(),
        "a second commit started while the first was in flight"
    );
    release.send(()).unwrap();
    let p = tokio::time::timeout(WAIT, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((p.sequence, p.index), (1, 0));
    let (sequence, release) = tokio::time::timeout(WAIT, calls.recv())
        .await
        .expect("the second flush's commit")
        .unwrap();
    assert_eq!(sequence, 2);
    assert!(!second.is_finished());
    release.send(()).unwrap();
    let p = tokio::time::timeout(WAIT, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.sequence, 2);
}

/// Waits until `n` objects of the writer are in the bucket.
async fn objects_written(bucket: &Bucket, w: &WalWriter, n: usize, what: &str) {
    let prefix = bucket.key(&format!("wal/{}", w.incarnation()));
    tokio::time::timeout(WAIT, async {
        while bucket.list(&prefix).await.unwrap().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"));
}

async fn later_flushes_are_written_while_one_commits_and_a_failure_fails_those_holding_its_logs(
    bucket: Bucket,
) {
    // Every append fills an object: under load flushes go in parallel.
    let (w, mut calls) = gated_writer(&bucket, true);
    let append = |log: u64, tag: u64| {
        let w = w.clone();
        tokio::spawn(async move { w.append_tagged(log, tag, data(log, tag)).await })
    };
    let first = append(1, 0);
    let (sequence, release_first) = tokio::time::timeout(WAIT, calls.recv())
        .await
        .expect("the first flush's commit")
        .unwrap();
    assert_eq!(sequence, 1);
    // While flush 1 commits, flushes 2 (log 1 again) and 3 (log 2) are
    // written: their objects are in the store before commit 1 returns.
    let second = append(1, 1);
    objects_written(&bucket, &w, 2, "flush 2 written while flush 1 commits").await;
    let third = append(2, 0);
    objects_written(&bucket, &w, 3, "flush 3 written while flush 1 commits").await;
    assert!(
        calls.try_recv().is_err(),
        "no commit started while flush 1's was in flight"
    );
    // Flush 1's commit fails: log 1 halts, so flush 2 (log 1's next entry)
    // is not committed at all; flush 3 (log 2 only) is, next.
    drop(release_first);
    let failed = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert!(
        matches!(failed, Err(ObjectStoreError::FlushCommit { .. })),
        "{failed:?}"
    );
    let second = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
    assert!(
        matches!(second, Err(ObjectStoreError::LogHalted { log: 1 })),
        "{second:?}"
    );
    let (sequence, release_third) = tokio::time::timeout(WAIT, calls.recv())
        .await
        .expect("the third flush's commit")
        .unwrap();
    assert_eq!(sequence, 3, "flush 2 was never committed");
    release_third.send(()).unwrap();
    let p = tokio::time::timeout(WAIT, third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.sequence, 3);
    let stats = w.stats();
    assert_eq!((stats.flushes, stats.failed_flushes), (1, 2));
}

async fn a_writer_without_a_committer_tags_nothing_and_acknowledges_on_durability(bucket: Bucket) {
    let w = WalWriter::start(bucket.clone(), WalConfig::default());
    let p = w
        .append_tagged(3, 42, Bytes::from_static(b"x"))
        .await
        .unwrap();
    let (_, entries) = decode_wal(&bucket.get(&p.object).await.unwrap()).unwrap();
    assert_eq!(entries, vec![(3, Bytes::from_static(b"x"))]);
    assert_eq!(w.stats().failed_commits, 0);
}

async fn a_flush_starts_once_max_object_entries_are_queued(bucket: Bucket) {
    let rec = Recording::new(bucket.clone());
    let w = WalWriter::start_with_commit(
        bucket.clone(),
        WalConfig {
            flush_interval: Duration::from_secs(3600),
            max_object_entries: 5,
            ..WalConfig::default()
        },
        rec.clone(),
    );
    let mut handles = Vec::new();
    for i in 0..15u64 {
        let w = w.clone();
        handles.push(tokio::spawn(async move {
            w.append_tagged(i, 0, Bytes::from_static(b"e")).await
        }));
    }
    for h in handles {
        tokio::time::timeout(WAIT, h)
            .await
            .expect("entry-count-triggered flushes")
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        rec.commits()
            .iter()
            .map(|c| c.entries.len())
            .collect::<Vec<_>>(),
        vec![5, 5, 5]
    );
}

async fn a_commit_that_does_not_return_in_time_fails_its_flush_as_unavailable(bucket: Bucket) {
    let (called, mut calls) = mpsc::unbounded_channel();
    let w = WalWriter::start_with_commit(
        bucket.clone(),
        WalConfig {
            flush_interval: Duration::from_millis(1),
            commit_timeout: Duration::from_millis(200),
            ..WalConfig::default()
        },
        Arc::new(Gated { called }),
    );
    // The first commit is never released.
    let stuck = w.append_tagged(1, 0, Bytes::from_static(b"a"));
    match tokio::time::timeout(WAIT, stuck).await.unwrap() {
        Err(ObjectStoreError::FlushCommit {
            error: CommitError::Unavailable(_),
            ..
        }) => {}
        other => panic!("a stuck commit's append: {other:?}"),
    }
    let (_, held) = calls.try_recv().expect("the first commit was called");
    drop(held);
    w.resume_log(1).await.unwrap();
    // The writer goes on: the next commit is answered.
    let next = {
        let w = w.clone();
        tokio::spawn(async move { w.append_tagged(1, 0, Bytes::from_static(b"b")).await })
    };
    let (sequence, release) = tokio::time::timeout(WAIT, calls.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sequence, 2);
    release.send(()).unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, next)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .sequence,
        2
    );
}

async fn a_failed_flush_halts_its_logs_until_they_are_resumed(bucket: Bucket) {
    let rec = Recording::new(bucket.clone());
    rec.fail
        .lock()
        .unwrap()
        .insert(1, CommitError::Deposed("lost".into()));
    let w = WalWriter::start_with_commit(
        bucket.clone(),
        WalConfig {
            flush_interval: Duration::from_secs(3600),
            max_object_entries: 2,
            ..WalConfig::default()
        },
        rec.clone(),
    );
    // Flush 1 (logs 1 and 2) fails.
    let (a, b) = tokio::join!(
        w.append_tagged(1, 10, Bytes::from_static(b"1:10")),
        w.append_tagged(2, 0, Bytes::from_static(b"2:0"))
    );
    assert!(matches!(a, Err(ObjectStoreError::FlushCommit { .. })));
    assert!(matches!(b, Err(ObjectStoreError::FlushCommit { .. })));
    // Log 1's next entry is refused, not committed past the failed one;
    // log 3, not in the failed flush, goes on.
    let a = w.append_tagged(1, 11, Bytes::from_static(b"1:11")).await;
    assert!(
        matches!(a, Err(ObjectStoreError::LogHalted { log: 1 })),
        "{a:?}"
    );
    // (Flush 2 waits for a second entry.)
    let c = {
        let w = w.clone();
        tokio::spawn(async move { w.append_tagged(3, 0, Bytes::from_static(b"3:0")).await })
    };
    // Resumed (its caller settled that entry 10 was not committed), log 1
    // starts again from 10, in the flush with log 3's entry.
    w.resume_log(1).await.unwrap();
    let a = w
        .append_tagged(1, 10, Bytes::from_static(b"1:10 again"))
        .await
        .unwrap();
    assert_eq!(c.await.unwrap().unwrap().sequence, 2);
    assert_eq!(a.sequence, 2);
    let mut committed: Vec<(u64, u64)> = rec.commits()[1]
        .entries
        .iter()
        .map(|e| (e.log, e.tag))
        .collect();
    committed.sort();
    assert_eq!(committed, vec![(1, 10), (3, 0)]);
    // Log 2 stays halted until resumed.
    assert!(matches!(
        w.append_tagged(2, 0, Bytes::from_static(b"2:0")).await,
        Err(ObjectStoreError::LogHalted { log: 2 })
    ));
}

mod filesystem {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn later_flushes_are_written_while_one_commits_and_a_failure_fails_those_holding_its_logs(
    ) {
        let (b, _dir) = super::filesystem().await;
        super::later_flushes_are_written_while_one_commits_and_a_failure_fails_those_holding_its_logs(b)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_halts_its_logs_until_they_are_resumed() {
        let (b, _dir) = super::filesystem().await;
        super::a_failed_flush_halts_its_logs_until_they_are_resumed(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_does_not_return_in_time_fails_its_flush_as_unavailable() {
        let (b, _dir) = super::filesystem().await;
        super::a_commit_that_does_not_return_in_time_fails_its_flush_as_unavailable(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_starts_once_max_object_entries_are_queued() {
        let (b, _dir) = super::filesystem().await;
        super::a_flush_starts_once_max_object_entries_are_queued(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_flush_is_committed_once_with_its_entries_in_append_order() {
        let (b, _dir) = super::filesystem().await;
        super::every_flush_is_committed_once_with_its_entries_in_append_order(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_exactly_its_flushs_appends() {
        let (b, _dir) = super::filesystem().await;
        super::a_failed_commit_fails_exactly_its_flushs_appends(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_resolves_only_after_its_commit_returns() {
        let (b, _dir) = super::filesystem().await;
        super::an_append_resolves_only_after_its_commit_returns(b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_without_a_committer_tags_nothing_and_acknowledges_on_durability() {
        let (b, _dir) = super::filesystem().await;
        super::a_writer_without_a_committer_tags_nothing_and_acknowledges_on_durability(b).await;
    }
}

mod s3 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn later_flushes_are_written_while_one_commits_and_a_failure_fails_those_holding_its_logs(
    ) {
        if let Some((b, _server)) = super::s3("wal_commit_pipelined").await {
            super::later_flushes_are_written_while_one_commits_and_a_failure_fails_those_holding_its_logs(b)
                .await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_flush_is_committed_once_with_its_entries_in_append_order() {
        if let Some((b, _server)) = super::s3("wal_commit_order").await {
            super::every_flush_is_committed_once_with_its_entries_in_append_order(b).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_exactly_its_flushs_appends() {
        if let Some((b, _server)) = super::s3("wal_commit_failed").await {
            super::a_failed_commit_fails_exactly_its_flushs_appends(b).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_resolves_only_after_its_commit_returns() {
        if let Some((b, _server)) = super::s3("wal_commit_gated").await {
            super::an_append_resolves_only_after_its_commit_returns(b).await;
        }
    }
}
