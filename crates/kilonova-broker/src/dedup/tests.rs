//! Deduplication state: verdicts, snapshots (round trips, damage), recovery
//! from a snapshot and the log after it.

use std::sync::Arc;

use kilonova_pulsar_protocol::proto::MessageMetadata;
use kilonova_storage::{DirStateStore, EntryCache, ManagedLogConfig, SegmentStore, StoreConfig};
use proptest::prelude::*;

use super::*;

type Row = (String, Option<u64>, Option<(u64, Position)>);

/// Every tracked producer, oldest update first.
fn rows(d: &Dedup) -> Vec<Row> {
    d.by_age
        .values()
        .map(|n| {
            let s = &d.producers[n];
            (n.clone(), s.pushed, s.persisted)
        })
        .collect()
}

fn p(segment: u64, entry: u64) -> Position {
    Position::new(segment, entry)
}

#[test]
fn a_sequence_id_at_or_below_the_pushed_one_is_a_duplicate() {
    let mut d = Dedup::new(10);
    assert_eq!(d.check("a", 0, 0), Verdict::New);
    d.pushed("a", 0);
    assert_eq!(d.check("a", 0, 0), Verdict::Duplicate);
    assert_eq!(d.check("a", 1, 1), Verdict::New);
    d.pushed("a", 5);
    assert_eq!(d.check("a", 3, 3), Verdict::Duplicate);
    assert_eq!(d.check("a", 5, 5), Verdict::Duplicate);
    assert_eq!(d.check("a", 6, 6), Verdict::New);
    assert_eq!(
        d.check("b", 0, 0),
        Verdict::New,
        "producers are independent"
    );
    // A highest below the sequence id (an old client leaving it 0) counts as the sequence id.
    assert_eq!(d.check("a", 6, 0), Verdict::New);
    assert_eq!(d.check("a", 4, 0), Verdict::Duplicate);
}

#[test]
fn a_gap_is_past_the_next_sequence_and_unknown_without_a_pushed_one() {
    let mut d = Dedup::new(10);
    assert_eq!(d.gap("k", 7), None, "nothing known of a new producer");
    d.pushed("k", 4);
    assert_eq!(d.gap("k", 5), None);
    assert_eq!(d.gap("k", 3), None, "a duplicate is not a gap");
    assert_eq!(d.gap("k", 6), Some(5));
    d.reset_pushed();
    assert_eq!(d.gap("k", 9), None, "after a fence nothing is pushed");
}

#[test]
fn only_the_last_chunk_completes_a_chunked_message() {
    let chunk = |id: i32| MessageMetadata {
        producer_name: "a".into(),
        sequence_id: 7,
        chunk_id: Some(id),
        num_chunks_from_msg: Some(3),
        ..Default::default()
    };
    assert!(!completes_message(&chunk(0)));
    assert!(!completes_message(&chunk(1)));
    assert!(completes_message(&chunk(2)));
    assert!(completes_message(&MessageMetadata::default()));
    // Replaying a message cut after two of its chunks leaves it unsent...
    let mut d = Dedup::new(10);
    d.replay(p(0, 0), &frame::build_payload(&chunk(0), b"x"));
    d.replay(p(0, 1), &frame::build_payload(&chunk(1), b"x"));
    assert_eq!(
        d.check("a", 7, 7),
        Verdict::New,
        "a resend of the cut message is stored"
    );
    // ...and its last chunk makes it sent.
    d.replay(p(0, 2), &frame::build_payload(&chunk(2), b"x"));
    assert_eq!(d.check("a", 7, 7), Verdict::Duplicate);
    assert_eq!(d.last_persisted("a"), Some((7, p(0, 2))));
}

#[test]
fn a_batch_is_a_duplicate_only_if_its_highest_sequence_id_was_pushed() {
    let mut d = Dedup::new(10);
    d.pushed("a", 9); // batch 0..=9
    assert_eq!(d.check("a", 0, 9), Verdict::Duplicate);
    assert_eq!(d.check("a", 5, 9), Verdict::Duplicate);
    assert_eq!(
        d.check("a", 5, 14),
        Verdict::New,
        "a batch reaching past is new"
    );
    assert_eq!(d.check("a", 10, 19), Verdict::New);
}

#[test]
fn pushed_counts_for_duplicates_before_it_is_persisted() {
    let mut d = Dedup::new(10);
    d.pushed("a", 1);
    d.pushed("a", 2);
    assert_eq!(d.check("a", 2, 2), Verdict::Duplicate, "in flight");
    assert_eq!(d.last_persisted("a"), None);
    assert_eq!(d.unsnapshotted(), 0);
    d.persisted("a", 1, p(3, 0));
    assert_eq!(d.last_persisted("a"), Some((1, p(3, 0))));
    assert_eq!(d.check("a", 2, 2), Verdict::Duplicate);
    d.persisted("a", 2, p(3, 1));
    assert_eq!(d.last_persisted("a"), Some((2, p(3, 1))));
    assert_eq!(d.unsnapshotted(), 2);
    assert_eq!(d.covered(), Some(p(3, 1)));
}

#[test]
fn after_a_fenced_topic_drains_a_resend_of_a_failed_message_is_new_even_if_a_later_one_was_stored()
{
    let mut d = Dedup::new(10);
    d.pushed("a", 0);
    d.persisted("a", 0, p(1, 0));
    d.pushed("a", 1); // fails
    d.pushed("a", 2); // stored, but answered with an error while fenced
    assert_eq!(
        d.check("a", 1, 1),
        Verdict::Duplicate,
        "the hole the fence closes"
    );
    d.reset_pushed();
    assert_eq!(d.check("a", 1, 1), Verdict::New);
    assert_eq!(d.check("a", 2, 2), Verdict::New);
    assert_eq!(
        d.check("a", 0, 0),
        Verdict::Duplicate,
        "the persisted one stays"
    );
    assert_eq!(d.last_persisted("a"), Some((0, p(1, 0))));

    // A producer with nothing persisted keeps nothing pushed.
    d.pushed("b", 7);
    d.reset_pushed();
    assert_eq!(d.check("b", 7, 7), Verdict::New);
}

#[test]
fn last_persisted_keeps_the_highest_and_its_position() {
    let mut d = Dedup::new(10);
    assert_eq!(d.last_persisted("a"), None);
    d.persisted("a", 10, p(1, 0));
    // A lower id persisted later (dedup was bypassed) does not move it back.
    d.persisted("a", 4, p(1, 1));
    assert_eq!(d.last_persisted("a"), Some((10, p(1, 0))));
    assert_eq!(d.check("a", 10, 10), Verdict::Duplicate);
    d.persisted("a", 11, p(2, 0));
    assert_eq!(d.last_persisted("a"), Some((11, p(2, 0))));
    assert_eq!(d.covered(), Some(p(2, 0)));
}

#[test]
fn beyond_max_producers_the_one_updated_longest_ago_is_dropped() {
    let mut d = Dedup::new(3);
    d.persisted("a", 1, p(1, 0));
    d.persisted("b", 1, p(1, 1));
    d.persisted("c", 1, p(1, 2));
    d.pushed("a", 2); // a is now the most recent; b the oldest
    d.pushed("d", 1);
    assert_eq!(d.producer_count(), 3);
    assert_eq!(d.last_persisted("b"), None, "b evicted");
    assert_eq!(d.check("b", 1, 1), Verdict::New);
    assert_eq!(d.check("a", 2, 2), Verdict::Duplicate);
    assert_eq!(d.last_persisted("c"), Some((1, p(1, 2))));
    d.pushed("e", 1);
    assert_eq!(d.last_persisted("c"), None, "c evicted next");
    let names: Vec<String> = rows(&d).into_iter().map(|r| r.0).collect();
    assert_eq!(names, ["a", "d", "e"]);
    assert_eq!(Dedup::new(0).max_producers, 1);
}

#[test]
fn a_snapshot_round_trips_the_persisted_state_in_age_order() {
    let mut d = Dedup::new(10);
    let (empty, covered) = Dedup::decode_snapshot(&d.encode_snapshot(), 10).unwrap();
    assert_eq!((empty.producer_count(), covered), (0, None));

    d.persisted("a", 3, p(1, 0));
    d.persisted("bé", 7, p(1, 1));
    d.persisted("", 1, p(2, 0));
    d.persisted("a", 4, p(2, 1));
    d.pushed("a", 9); // in flight: not in the snapshot
    d.pushed("only-pushed", 1);
    assert_eq!(d.unsnapshotted(), 4);
    let bytes = d.encode_snapshot();
    assert_eq!(d.unsnapshotted(), 0);
    let (back, covered) = Dedup::decode_snapshot(&bytes, 10).unwrap();
    assert_eq!(covered, Some(p(2, 1)));
    assert_eq!(back.covered(), covered);
    assert_eq!(
        rows(&back),
        [
            ("bé".to_string(), Some(7), Some((7, p(1, 1)))),
            (String::new(), Some(1), Some((1, p(2, 0)))),
            ("a".to_string(), Some(4), Some((4, p(2, 1)))),
        ]
    );
    // A smaller limit keeps the most recent.
    let (small, _) = Dedup::decode_snapshot(&bytes, 1).unwrap();
    assert_eq!(
        rows(&small),
        [("a".to_string(), Some(4), Some((4, p(2, 1))))]
    );
}

fn sample_snapshot() -> Vec<u8> {
    let mut d = Dedup::new(10);
    d.persisted("producer-1", 3, p(1, 0));
    d.persisted("producer-2", 7, p(1, 1));
    d.encode_snapshot()
}

#[test]
fn every_truncation_or_bit_flip_of_a_snapshot_is_an_error() {
    let good = sample_snapshot();
    for n in 0..good.len() {
        assert!(
            matches!(
                Dedup::decode_snapshot(&good[..n], 10),
                Err(DedupError::Corrupt(_))
            ),
            "truncated to {n} bytes"
        );
    }
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[i] ^= 1 << bit;
            assert!(
                Dedup::decode_snapshot(&bad, 10).is_err(),
                "byte {i} bit {bit}"
            );
        }
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(Dedup::decode_snapshot(&longer, 10).is_err());
}

/// Re-seals a body with a valid checksum, to reach the checks behind it.
fn sealed(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

#[test]
fn a_well_sealed_but_inconsistent_snapshot_is_an_error() {
    let good = sample_snapshot();
    let body = &good[..good.len() - 4];
    let header = |count: u32| {
        let mut b = body[..SNAPSHOT_HEADER_BYTES - 4].to_vec();
        b.extend_from_slice(&count.to_le_bytes());
        b
    };
    // A huge producer count is refused before allocating.
    assert!(Dedup::decode_snapshot(&sealed(header(u32::MAX)), 10).is_err());
    // A huge name length.
    let mut b = header(1);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    assert!(Dedup::decode_snapshot(&sealed(b), 10).is_err());
    // The same producer twice.
    let record = &body[SNAPSHOT_HEADER_BYTES..SNAPSHOT_HEADER_BYTES + 4 + 10 + 24];
    let mut b = header(2);
    b.extend_from_slice(record);
    b.extend_from_slice(record);
    assert!(Dedup::decode_snapshot(&sealed(b), 10).is_err());
    // An unknown version.
    let mut b = body.to_vec();
    b[0] = 2;
    assert!(Dedup::decode_snapshot(&sealed(b), 10).is_err());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Dedup::decode_snapshot(&bytes, 10);
        let _ = Dedup::decode_snapshot(&sealed(bytes), 10);
    }

    #[test]
    fn random_states_round_trip(ops in proptest::collection::vec((0u8..6, 0u64..100), 0..64)) {
        let mut d = Dedup::new(4);
        for (entry, (producer, seq)) in (0..).zip(ops) {
            d.persisted(&format!("p{producer}"), seq, p(1, entry));
        }
        let persisted: Vec<Row> = rows(&d).into_iter().filter(|r| r.2.is_some()).collect();
        let (back, covered) = Dedup::decode_snapshot(&d.encode_snapshot(), 4).unwrap();
        prop_assert_eq!(covered, d.covered());
        prop_assert_eq!(rows(&back), persisted);
    }
}

// ---- recovery from a real log ----

struct Env {
    _dir: tempfile::TempDir,
    store: SegmentStore,
    state: Arc<DirStateStore>,
    cache: Arc<EntryCache>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path().join("journal"));
    c.log_file_bytes = 1 << 20;
    c.max_entry_bytes = 64 << 10;
    Env {
        store: SegmentStore::open(c).unwrap(),
        state: Arc::new(DirStateStore::open(dir.path().join("state")).unwrap()),
        cache: Arc::new(EntryCache::new(1 << 20)),
        _dir: dir,
    }
}

async fn open_log(e: &Env, id: u64) -> ManagedLog {
    let config = ManagedLogConfig {
        max_segment_entries: 4, // replay crosses segments
        ..Default::default()
    };
    let state: Arc<dyn StateStore> = e.state.clone();
    ManagedLog::open(id, e.store.clone(), state, e.cache.clone(), config, 0)
        .await
        .unwrap()
}

async fn close_store(e: Env) {
    tokio::task::spawn_blocking(move || e.store.close())
        .await
        .unwrap()
        .unwrap();
}

/// A message as a producer sends it: `(producer, sequence id, explicit highest, batch size)`.
type Msg = (&'static str, u64, Option<u64>, Option<i32>);

/// Appends each message through `d` as the topic would, waiting for durability.
async fn publish(log: &mut ManagedLog, d: &mut Dedup, msgs: &[Msg]) {
    for &(producer, seq, highest, batch) in msgs {
        let meta = MessageMetadata {
            producer_name: producer.into(),
            sequence_id: seq,
            publish_time: 1,
            highest_sequence_id: highest,
            num_messages_in_batch: batch,
            ..Default::default()
        };
        let top = highest.unwrap_or(seq + batch.map_or(0, |n| n as u64 - 1));
        if d.check(producer, seq, top) == Verdict::Duplicate {
            continue;
        }
        d.pushed(producer, top);
        let payload = frame::build_payload(&meta, b"data");
        let count = frame::message_count(&meta);
        let at = log.append(payload, count, 1).await.unwrap().await.unwrap();
        d.persisted(producer, top, at);
    }
}

const FIRST: &[Msg] = &[
    ("a", 0, None, None),
    ("a", 1, None, None),
    ("b", 10, None, Some(5)),   // batch 10..=14, no highest in metadata
    ("a", 1, None, None),       // duplicate: not appended
    ("c", 0, Some(3), Some(4)), // batch with highest
];
const SECOND: &[Msg] = &[
    ("b", 15, None, None),
    ("d", 100, None, None),
    ("a", 3, Some(7), Some(5)),
    ("c", 4, None, None),
    ("a", 7, None, None), // duplicate of the batch 3..=7
    ("b", 16, None, Some(3)),
];

#[tokio::test]
async fn recovery_from_a_mid_log_snapshot_matches_a_full_replay() {
    let e = env();
    let key = snapshot_key(1);
    assert_eq!(key, "dedup/1");
    let mut log = open_log(&e, 1).await;
    let mut live = Dedup::new(DEFAULT_MAX_PRODUCERS);
    publish(&mut log, &mut live, FIRST).await;
    store_snapshot(e.state.as_ref(), &key, &mut live).unwrap();
    assert_eq!(live.unsnapshotted(), 0);
    let at_snapshot = live.covered();
    // The snapshot covers a segment's last entry: replay starts in the next one.
    assert_eq!(at_snapshot.map(|p| p.entry), Some(3));
    // An entry without Pulsar metadata is skipped, not fatal.
    let junk = log.append(Bytes::from_static(b"junk"), 1, 1).await.unwrap();
    let junk = junk.await.unwrap();
    publish(&mut log, &mut live, SECOND).await;
    assert!(log.segments().len() >= 3, "{:?}", log.segments());
    assert!(live.covered() > Some(junk));

    let full = recover(
        e.state.as_ref(),
        "dedup/absent",
        &log,
        DEFAULT_MAX_PRODUCERS,
    )
    .unwrap();
    let from_snapshot = recover(e.state.as_ref(), &key, &log, DEFAULT_MAX_PRODUCERS).unwrap();
    let expected: Vec<Row> = rows(&live);
    assert_eq!(rows(&full), expected);
    assert_eq!(
        rows(&from_snapshot),
        expected,
        "the entries after the snapshot are caught"
    );
    assert_eq!(full.covered(), live.covered());
    assert_eq!(from_snapshot.covered(), live.covered());
    assert_eq!(from_snapshot.last_persisted("b").map(|x| x.0), Some(18));
    assert_eq!(from_snapshot.last_persisted("a").map(|x| x.0), Some(7));
    assert_eq!(from_snapshot.check("d", 100, 100), Verdict::Duplicate);
    assert!(from_snapshot.unsnapshotted() < full.unsnapshotted());

    // A snapshot covering the whole log replays nothing and still matches.
    let mut d = from_snapshot;
    store_snapshot(e.state.as_ref(), &key, &mut d).unwrap();
    let again = recover(e.state.as_ref(), &key, &log, DEFAULT_MAX_PRODUCERS).unwrap();
    assert_eq!(rows(&again), expected);
    assert_eq!(again.unsnapshotted(), 0);
    assert!(at_snapshot < again.covered());

    // A corrupt stored snapshot is an error, not a silent empty state.
    e.state.store(&key, b"\x01garbage").unwrap();
    assert!(matches!(
        recover(e.state.as_ref(), &key, &log, DEFAULT_MAX_PRODUCERS),
        Err(DedupError::Corrupt(_))
    ));
    log.close().unwrap();
    close_store(e).await;
}

#[tokio::test]
async fn recovery_after_reopening_the_log_continues_numbering() {
    let e = env();
    let key = snapshot_key(2);
    let mut log = open_log(&e, 2).await;
    let mut live = Dedup::new(DEFAULT_MAX_PRODUCERS);
    publish(&mut log, &mut live, FIRST).await;
    store_snapshot(e.state.as_ref(), &key, &mut live).unwrap();
    publish(&mut log, &mut live, SECOND).await;
    // Crash: no snapshot at close; the log is reopened (its last segment sealed).
    drop(log);
    let log = open_log(&e, 2).await;
    let d = recover(e.state.as_ref(), &key, &log, DEFAULT_MAX_PRODUCERS).unwrap();
    assert_eq!(rows(&d), rows(&live));
    assert_eq!(d.last_persisted("c"), live.last_persisted("c"));
    log.close().unwrap();
    close_store(e).await;
}
