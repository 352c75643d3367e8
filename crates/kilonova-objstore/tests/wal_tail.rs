#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A topic's tail read back from committed flushes, as a new owner of its
//! bundle does (issue #26), against a local directory and a real SeaweedFS
//! S3 server, with the flush index in the embedded metadata store: two
//! owners in turn (epochs) append to one topic among others; the tail holds
//! exactly the committed entries in order, from any index; a deposed
//! owner's entries (durable, never committed) are not in it; a gap in the
//! committed indexes is an error naming it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kilonova_metadata::bundles::{Acquired, BundleOwner, BundleRange, Commit, Held};
use kilonova_metadata::wal_index::{FlushIndexError, FlushRecord, FlushRecords};
use kilonova_metadata::{
    EmbeddedStore, MetadataError, MetadataStore, NamespaceName, Resources, TopicName,
};
use kilonova_objstore::seaweed::SeaweedServer;
use kilonova_objstore::wal::tail::{read_tail, TailError, TailSlice};
use kilonova_objstore::wal::CommitFuture;
use kilonova_objstore::{
    Bucket, CommitError, FlushCommit, FlushSummary, ObjectStoreError, WalConfig, WalReader,
    WalWriter,
};

const BUCKET: &str = "kilonova-wal-tail-test";

mod common;
use common::filesystem;

async fn s3(test: &str) -> Option<(Bucket, SeaweedServer)> {
    common::s3(test, BUCKET, |_| {}).await
}

/// A broker's flush commit: its logs' topics, the bundle held, the flush
/// index (what the broker's wiring will do).
struct Broker {
    resources: Resources,
    held: Vec<Held>,
    /// log id → topic and its bundle.
    logs: Mutex<HashMap<u64, (TopicName, BundleRange)>>,
}

impl FlushCommit for Broker {
    fn commit<'a>(&'a self, flush: &'a FlushSummary) -> CommitFuture<'a> {
        Box::pin(async move {
            let mut records = FlushRecords::new(&flush.object);
            {
                let logs = self.logs.lock().unwrap();
                for e in &flush.entries {
                    let (topic, range) = logs
                        .get(&e.log)
                        .ok_or_else(|| CommitError::Refused(format!("unknown log {}", e.log)))?;
                    records
                        .push(topic, *range, e.log, e.tag, e.index)
                        .map_err(|e| CommitError::Refused(e.to_string()))?;
                }
            }
            match self
                .resources
                .commit_flush(&self.held, flush.sequence, records.finish())
                .await
            {
                Ok(Commit::Committed { .. }) => Ok(()),
                Ok(Commit::Deposed { ns, range }) => {
                    Err(CommitError::Deposed(format!("bundle {ns}/{range}")))
                }
                Err(FlushIndexError::Metadata(MetadataError::Unavailable(e))) => {
                    Err(CommitError::Unavailable(e))
                }
                Err(e) => Err(CommitError::Refused(e.to_string())),
            }
        })
    }
}

/// The topic's slices of the bundle's records, in commit order.
fn slices(records: &[(String, FlushRecord)], topic: &TopicName) -> Vec<TailSlice> {
    let name = topic.to_string();
    records
        .iter()
        .flat_map(|(_, r)| {
            r.topics
                .iter()
                .filter(|t| t.topic == name)
                .map(|t| TailSlice {
                    object: r.object.clone(),
                    log: t.log,
                    first_index: t.first_index,
                    positions: t.positions.clone(),
                })
        })
        .collect()
}

fn owner(name: &str) -> BundleOwner {
    BundleOwner {
        broker: name.into(),
        native_url: format!("pulsar://{name}"),
        http_url: format!("http://{name}"),
        ..Default::default()
    }
}

fn entry(who: &str, topic: &str, index: u64) -> Bytes {
    Bytes::from(format!("{who}:{topic}:{index:04}"))
}

/// Appends entries `indexes` of log `log` (one producer, in order) while
/// another producer appends to `other_log`.
async fn publish(
    w: &WalWriter,
    who: &str,
    log: u64,
    indexes: std::ops::Range<u64>,
    other_log: u64,
) -> Vec<Result<(), ObjectStoreError>> {
    let other = {
        let (w, who, indexes) = (w.clone(), who.to_string(), indexes.clone());
        tokio::spawn(async move {
            for i in indexes {
                w.append_tagged(other_log, i, entry(&who, "other", i))
                    .await
                    .map(|_| ())?;
            }
            Ok::<_, ObjectStoreError>(())
        })
    };
    let mut out = Vec::new();
    for i in indexes {
        out.push(
            w.append_tagged(log, i, entry(who, "t", i))
                .await
                .map(|_| ()),
        );
    }
    let _ = other.await.unwrap();
    out
}

async fn two_owners_in_turn_leave_exactly_the_committed_entries(bucket: Bucket) {
    let dir = tempfile::TempDir::new().unwrap();
    let store: Arc<dyn MetadataStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("metadata.redb")).unwrap());
    let r = Resources::new(store.clone());
    let ns = NamespaceName::parse("t/ns").unwrap();
    let range = BundleRange::FULL;
    let (t, other) = (
        TopicName::parse("persistent://t/ns/t").unwrap(),
        TopicName::parse("persistent://t/ns/other").unwrap(),
    );
    let ttl = Duration::from_secs(30);
    let (sa, sb) = (
        store.open_session(ttl).await.unwrap(),
        store.open_session(ttl).await.unwrap(),
    );
    let take = |me: &'static str, session| {
        let (r, ns) = (r.clone(), ns.clone());
        async move {
            match r
                .acquire_bundle(&ns, range, &owner(me), session)
                .await
                .unwrap()
            {
                Acquired::Owned { epoch } => Held {
                    ns: ns.clone(),
                    range,
                    epoch,
                },
                other => panic!("{me} could not take the bundle: {other:?}"),
            }
        }
    };
    let config = WalConfig {
        flush_interval: Duration::from_millis(2),
        ..WalConfig::default()
    };

    // Broker a owns the bundle (its log ids: 7 for t, 8 for other).
    let a_held = take("a:8080", sa).await;
    let a = WalWriter::start_with_commit(
        bucket.clone(),
        config.clone(),
        Arc::new(Broker {
            resources: r.clone(),
            held: vec![a_held.clone()],
            logs: Mutex::new(HashMap::from([
                (7, (t.clone(), range)),
                (8, (other.clone(), range)),
            ])),
        }),
    );
    assert!(publish(&a, "a", 7, 0..20, 8)
        .await
        .into_iter()
        .all(|r| r.is_ok()));

    // a loses the bundle, b takes it; a, unaware, appends on: its objects
    // are durable but its commits are refused, its appends fail.
    assert!(r
        .release_bundle(&ns, range, "a:8080", a_held.epoch)
        .await
        .unwrap());
    let b_held = take("b:8080", sb).await;
    assert!(b_held.epoch > a_held.epoch);
    // Its first failed flush halts the log: the rest are refused unwritten.
    let results = publish(&a, "a", 7, 20..25, 8).await;
    assert!(matches!(
        &results[0],
        Err(ObjectStoreError::FlushCommit {
            error: CommitError::Deposed(_),
            ..
        })
    ));
    for result in &results[1..] {
        match result {
            Err(ObjectStoreError::FlushCommit {
                error: CommitError::Deposed(_),
                ..
            })
            | Err(ObjectStoreError::LogHalted { log: 7 }) => {}
            other => panic!("a deposed owner's append: {other:?}"),
        }
    }
    assert!(a.stats().failed_commits > 0);

    // b rebuilds t's tail from the committed flushes: a's 20 entries.
    let reader = WalReader::new(bucket.clone());
    let records = r.flush_records(&ns, range).await.unwrap();
    let tail = read_tail(&reader, slices(&records, &t), 0).await.unwrap();
    let expected = |from: u64, a_to: u64, b_to: u64| -> Vec<(u64, Bytes)> {
        (from..b_to)
            .map(|i| (i, entry(if i < a_to { "a" } else { "b" }, "t", i)))
            .collect()
    };
    assert_eq!(tail, expected(0, 20, 20));

    // b appends from there with its own writer and log ids (3, 4).
    let b = WalWriter::start_with_commit(
        bucket.clone(),
        config,
        Arc::new(Broker {
            resources: r.clone(),
            held: vec![b_held],
            logs: Mutex::new(HashMap::from([
                (3, (t.clone(), range)),
                (4, (other.clone(), range)),
            ])),
        }),
    );
    assert!(publish(&b, "b", 3, 20..35, 4)
        .await
        .into_iter()
        .all(|r| r.is_ok()));
    let records = r.flush_records(&ns, range).await.unwrap();
    assert_eq!(
        read_tail(&reader, slices(&records, &t), 0).await.unwrap(),
        expected(0, 20, 35),
        "a's committed entries then b's, none of a's refused ones"
    );
    for from in [5, 19, 20, 21, 34] {
        assert_eq!(
            read_tail(&reader, slices(&records, &t), from)
                .await
                .unwrap(),
            expected(from, 20, 35),
            "from {from}"
        );
    }
    assert!(read_tail(&reader, slices(&records, &t), 35)
        .await
        .unwrap()
        .is_empty());
    // The other topic's tail is its own.
    let others = read_tail(&reader, slices(&records, &other), 0)
        .await
        .unwrap();
    assert_eq!(others.len(), 35);
    assert!(others
        .iter()
        .all(|(i, e)| e
            .starts_with(format!("{}:other:", if *i < 20 { "a" } else { "b" }).as_bytes())));

    // A committed index gap is an error naming it.
    b.append_tagged(3, 40, entry("b", "t", 40)).await.unwrap();
    let records = r.flush_records(&ns, range).await.unwrap();
    match read_tail(&reader, slices(&records, &t), 0).await {
        Err(TailError::Gap {
            expected: 35,
            found: 40,
            ..
        }) => {}
        other => panic!("a gap read as {other:?}"),
    }
    // Reading past it is fine.
    assert_eq!(
        read_tail(&reader, slices(&records, &t), 40).await.unwrap(),
        vec![(40, entry("b", "t", 40))]
    );
    // A record naming another log's entries is caught against the index
    // (the gap is found before any read: left out here).
    let mut wrong = slices(&records, &t);
    wrong.retain(|s| s.first_index < 40);
    if let Some(s) = wrong.first_mut() {
        s.log = 8_000;
    }
    assert!(matches!(
        read_tail(&reader, wrong, 0).await,
        Err(TailError::Store(ObjectStoreError::Corrupt { .. }))
    ));
    // Two records claiming the same entries are an overlap.
    let mut twice = slices(&records, &t);
    let first = twice[0].clone();
    twice.insert(1, first);
    assert!(matches!(
        read_tail(&reader, twice, 0).await,
        Err(TailError::Overlap { .. })
    ));
}

mod filesystem {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_owners_in_turn_leave_exactly_the_committed_entries() {
        let (b, _dir) = super::filesystem().await;
        super::two_owners_in_turn_leave_exactly_the_committed_entries(b).await;
    }
}

mod s3 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_owners_in_turn_leave_exactly_the_committed_entries() {
        if let Some((b, _server)) = super::s3("wal_tail_two_owners").await {
            super::two_owners_in_turn_leave_exactly_the_committed_entries(b).await;
        }
    }
}
