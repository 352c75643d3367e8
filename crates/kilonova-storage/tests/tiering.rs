//! Tiered storage's side of a managed log: offloaded segments recorded in
//! its metadata, local copies dropped, reads of offloaded-only entries
//! answered from what the caller fetched, retention across tiers, and all of
//! it across a reopen. The object store itself is the object-store crate's
//! (tested against SeaweedFS there): here the "objects" are the segments'
//! stored entries kept in memory, which is what an offload copies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use kilonova_storage::{
    InitialPosition, ManagedLog, Offloaded, Position, RestoredSegment, Retention, SegmentId,
    StorageError,
};

mod common;
use common::{env, msg, open, publish, small_segments, Env};

/// The entries of each offloaded segment, by object key.
type Objects = BTreeMap<String, Vec<Bytes>>;

/// Offloads every candidate segment as the broker would: copy, record.
fn offload_all(
    e: &Env,
    log: &mut ManagedLog,
    objects: &mut Objects,
    now_ms: u64,
) -> Vec<SegmentId> {
    let candidates = log.offload_candidates(0);
    for &seg in &candidates {
        let info = e.store.segment(seg).unwrap();
        let copy: Vec<Bytes> = (0..info.entries)
            .map(|i| e.store.read(seg, i).unwrap())
            .collect();
        let key = format!("objects/{seg}");
        objects.insert(key.clone(), copy);
        log.mark_offloaded(
            seg,
            Offloaded {
                object: key,
                entries: info.entries,
                bytes: info.bytes,
                last_publish_ms: 0,
                end_message_index: 0,
                offloaded_at_ms: now_ms,
                shared_at: None,
            },
        )
        .unwrap();
    }
    candidates
}

/// Runs `read`, fetching what it says is offloaded (a block of entries from
/// the one asked for, as a read-ahead would) until it succeeds.
fn fetching<T>(
    log: &mut ManagedLog,
    objects: &Objects,
    mut read: impl FnMut(&mut ManagedLog) -> Result<T, StorageError>,
) -> (T, usize) {
    let mut fetches = 0;
    loop {
        match read(log) {
            Err(StorageError::Offloaded { segment, entry }) => {
                let key = log.offloaded(segment).unwrap().object.clone();
                let all = &objects[&key];
                let block: Vec<Bytes> = all.iter().skip(entry as usize).take(4).cloned().collect();
                log.insert_offloaded(segment, entry, block).unwrap();
                fetches += 1;
                assert!(fetches < 1000, "no progress");
            }
            other => return (other.unwrap(), fetches),
        }
    }
}

#[tokio::test]
async fn offloaded_segments_read_back_after_their_local_copies_go_and_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    // A reader: appended entries are cached.
    log.open_cursor("reader", InitialPosition::Earliest, false)
        .unwrap();
    let positions = publish(&mut log, 0, 35).await;
    let mut objects = Objects::new();
    let offloaded = offload_all(&e, &mut log, &mut objects, 100);
    assert_eq!(
        offloaded.len(),
        3,
        "the sealed segments, not the one appended to"
    );
    assert_eq!(
        log.offload_candidates(0),
        Vec::<SegmentId>::new(),
        "offloaded once"
    );
    assert!(log.offloaded_bytes() > 0);

    // Within the deletion lag the local copies stay; after it they go.
    assert!(log.local_copies_to_drop(150, 100).is_empty());
    let drop = log.local_copies_to_drop(200, 100);
    assert_eq!(drop, offloaded);
    assert!(
        e.cache.get(1, positions[34]).is_some(),
        "the tail is cached"
    );
    let all_bytes = log.size_bytes();
    for seg in drop {
        log.drop_local_copy(seg).await.unwrap();
        assert!(e.store.segment(seg).is_none());
        assert!(e.cache.get(1, Position::new(seg, 0)).is_none());
    }
    assert!(
        e.cache.get(1, positions[34]).is_some(),
        "dropping old segments leaves the tail's cached entries"
    );
    // Positions, counts and the end stay as they were.
    assert_eq!(log.entries(), 35);
    assert_eq!(log.last_position(), Some(positions[34]));
    let first = log.first_position();
    assert_eq!(first, positions[0]);
    assert!(matches!(
        log.read_entry(first),
        Err(StorageError::Offloaded { entry: 0, .. })
    ));
    let (all, fetches) = fetching(&mut log, &objects, |l| l.read_from(first, 100));
    assert!(fetches >= 8, "read a block at a time: {fetches}");
    let data: Vec<Bytes> = all.iter().map(|en| en.data.clone()).collect();
    assert_eq!(data, (0..35).map(msg).collect::<Vec<_>>());
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, en)| en.position == positions[i] && en.message_index == i as u64));

    // A cursor reads through them too; a seek by publish time finds its entry.
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    assert_eq!(
        log.backlog_bytes("sub").unwrap(),
        all_bytes,
        "offloaded segments count in the backlog's bytes"
    );
    let mut got = Vec::new();
    while got.len() < 35 {
        let (batch, _) = fetching(&mut log, &objects, |l| l.read_next("sub", 7));
        got.extend(batch.into_iter().map(|en| en.data));
    }
    assert_eq!(got, (0..35).map(msg).collect::<Vec<_>>());
    log.close().unwrap();

    // Reopened: the offloaded segments are still the log's, read the same way.
    let mut log = open(&e, 1, small_segments(), 300).await;
    assert_eq!(log.entries(), 35);
    assert_eq!(
        log.next_message_index(),
        35,
        "the index continues after the offloaded end"
    );
    assert_eq!(
        log.offloaded(offloaded[0]).unwrap().object,
        format!("objects/{}", offloaded[0])
    );
    let (p, _) = fetching(&mut log, &objects, |l| {
        l.position_of_publish_time(1000 + 12)
    });
    assert_eq!(p, positions[12]);
    let (entry, _) = fetching(&mut log, &objects, |l| l.read_entry(positions[5]));
    assert_eq!(entry.data, msg(5));
    let appended = publish(&mut log, 35, 1).await;
    assert!(appended[0] > positions[34]);
}

#[tokio::test]
async fn retention_deletes_offloaded_segments_and_releases_their_objects() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 2, small_segments(), 0).await;
    let positions = publish(&mut log, 0, 35).await;
    let mut objects = Objects::new();
    let offloaded = offload_all(&e, &mut log, &mut objects, 0);
    // The first keeps only its object; the others keep both copies.
    log.drop_local_copy(offloaded[0]).await.unwrap();
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    log.ack_cumulative("sub", positions[29]).unwrap();
    // Everything consumed is older than retention keeps (publish times 1000..).
    let gone = log
        .trim(
            10_000,
            Retention {
                time_ms: Some(1),
                size_bytes: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        gone, offloaded,
        "consumed segments go, whichever tier holds them"
    );
    let mut released = log.take_released_objects();
    released.sort();
    let mut keys: Vec<String> = objects.keys().cloned().collect();
    keys.sort();
    assert_eq!(released, keys);
    assert!(log.take_released_objects().is_empty(), "released once");
    assert_eq!(log.offloaded_bytes(), 0);
}

#[tokio::test]
async fn deleting_a_log_answers_its_objects_and_offloading_again_releases_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 3, small_segments(), 0).await;
    publish(&mut log, 0, 25).await;
    let mut objects = Objects::new();
    let offloaded = offload_all(&e, &mut log, &mut objects, 0);
    let seg = offloaded[0];
    let info = e.store.segment(seg).unwrap();
    log.mark_offloaded(
        seg,
        Offloaded {
            object: "objects/again".into(),
            entries: info.entries,
            bytes: info.bytes,
            last_publish_ms: 0,
            end_message_index: 0,
            offloaded_at_ms: 0,
            shared_at: None,
        },
    )
    .unwrap();
    assert_eq!(log.take_released_objects(), vec![format!("objects/{seg}")]);
    // A record that does not match the segment is refused.
    let wrong = Offloaded {
        object: "x".into(),
        entries: info.entries + 1,
        bytes: 0,
        last_publish_ms: 0,
        end_message_index: 0,
        offloaded_at_ms: 0,
        shared_at: None,
    };
    assert!(log.mark_offloaded(seg, wrong).is_err());
    let mut released = log.delete().await.unwrap();
    released.sort();
    let mut expected: Vec<String> = offloaded[1..]
        .iter()
        .map(|s| format!("objects/{s}"))
        .collect();
    expected.push("objects/again".into());
    expected.sort();
    assert_eq!(released, expected, "every object still referenced");
}

#[tokio::test]
async fn a_log_restored_from_its_offloaded_segments_alone_reads_them_and_continues_after_them() {
    // The data directory that offloaded them.
    let lost = tempfile::tempdir().unwrap();
    let e = env(lost.path());
    let mut log = open(&e, 4, small_segments(), 0).await;
    let positions = publish(&mut log, 0, 35).await;
    let mut objects = Objects::new();
    let offloaded = offload_all(&e, &mut log, &mut objects, 0);
    let restored: Vec<RestoredSegment> = log
        .segments()
        .iter()
        .filter_map(|s| {
            log.offloaded(s.id).map(|o| RestoredSegment {
                first_message_index: s.first_message_index,
                created_ms: s.created_ms,
                offloaded: o.clone(),
            })
        })
        .collect();
    let history = offloaded
        .iter()
        .map(|s| e.store.segment(*s).unwrap().entries)
        .sum::<u64>();
    assert_eq!(restored.len(), offloaded.len());
    log.close().unwrap();
    drop(e);

    // A new, empty data directory whose store hands out the same ids.
    let fresh = tempfile::tempdir().unwrap();
    let e = env(fresh.path());
    let mut other = open(&e, 1, small_segments(), 0).await;
    publish(&mut other, 0, 3).await;
    let ids = ManagedLog::restore(9, &e.store, e.state.as_ref(), restored.clone())
        .await
        .unwrap();
    assert_eq!(ids.len(), restored.len());
    assert!(
        ids.iter()
            .all(|id| e.store.segment(*id).is_none()
                && !other.segments().iter().any(|s| s.id == *id)),
        "fresh ids, held by no local segment"
    );
    assert!(
        ManagedLog::restore(9, &e.store, e.state.as_ref(), restored)
            .await
            .is_err(),
        "only a new log is restored into"
    );

    let mut log = open(&e, 9, small_segments(), 500).await;
    assert_eq!(log.entries(), history);
    assert_eq!(log.next_message_index(), history);
    let first = log.first_position();
    let (all, _) = fetching(&mut log, &objects, |l| l.read_from(first, 100));
    let data: Vec<Bytes> = all.iter().map(|en| en.data.clone()).collect();
    assert_eq!(data, (0..history).map(msg).collect::<Vec<_>>());
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, en)| en.message_index == i as u64
            && en.publish_time_ms == 1000 + i as u64
            && ids.contains(&en.position.segment)));
    let (p, _) = fetching(&mut log, &objects, |l| {
        l.position_of_publish_time(1000 + 12)
    });
    assert_eq!(p.entry, positions[12].entry);
    let appended = publish(&mut log, history, 2).await;
    assert!(appended[0] > all[all.len() - 1].position);
    log.close().unwrap();

    // The ids stay burnt after a restart: new segments never take them.
    other.close().unwrap();
    drop(e);
    let e = env(fresh.path());
    let report = kilonova_storage::reclaim_orphans(&e.store, e.state.as_ref()).unwrap();
    assert!(report.orphan_segments.is_empty());
    let mut log = open(&e, 9, small_segments(), 600).await;
    assert_eq!(log.entries(), history + 2);
    let more = publish(&mut log, history + 2, 25).await;
    assert!(more.iter().all(|p| !ids.contains(&p.segment)));
    let (entry, _) = fetching(&mut log, &objects, |l| {
        l.read_entry(Position::new(ids[1], 0))
    });
    assert_eq!(entry.data, msg(entry.message_index));
}

#[tokio::test]
async fn segments_in_shared_objects_keep_their_place_across_a_reopen_and_their_objects_are_never_released(
) {
    let lost = tempfile::tempdir().unwrap();
    let e = env(lost.path());
    let mut log = open(&e, 4, small_segments(), 0).await;
    publish(&mut log, 0, 35).await;
    let mut objects = Objects::new();
    offload_all(&e, &mut log, &mut objects, 0);
    // Each segment's entries as if they sat at place 7.. of one object
    // holding other logs' entries too (the reads below fetch by segment).
    let restored: Vec<RestoredSegment> = log
        .segments()
        .iter()
        .filter_map(|s| {
            log.offloaded(s.id).map(|o| RestoredSegment {
                first_message_index: s.first_message_index,
                created_ms: s.created_ms,
                offloaded: Offloaded {
                    shared_at: Some(7),
                    ..o.clone()
                },
            })
        })
        .collect();
    let history: u64 = restored.iter().map(|r| r.offloaded.entries).sum();
    log.close().unwrap();
    drop(e);

    let fresh = tempfile::tempdir().unwrap();
    let e = env(fresh.path());
    let ids = ManagedLog::restore(9, &e.store, e.state.as_ref(), restored.clone())
        .await
        .unwrap();
    let mut log = open(&e, 9, small_segments(), 500).await;
    assert!(
        ids.iter()
            .zip(&restored)
            .all(|(id, r)| log.offloaded(*id) == Some(&r.offloaded)),
        "the place in the shared object survives the metadata record"
    );
    let first = log.first_position();
    let (all, _) = fetching(&mut log, &objects, |l| l.read_from(first, 100));
    assert_eq!(all.len() as u64, history);
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    log.ack_cumulative("sub", all[all.len() - 1].position)
        .unwrap();
    let gone = log
        .trim(
            10_000,
            Retention {
                time_ms: Some(1),
                size_bytes: None,
            },
        )
        .await
        .unwrap();
    assert!(!gone.is_empty(), "consumed shared segments leave the log");
    assert!(
        log.take_released_objects().is_empty(),
        "but their objects are not the log's to delete"
    );
    assert!(log.delete().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_log_created_at_a_message_index_numbers_its_messages_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    ManagedLog::create_at(4, e.state.as_ref(), 100).unwrap();
    assert!(
        ManagedLog::create_at(4, e.state.as_ref(), 7).is_err(),
        "only a new log is created at an index"
    );
    let mut log = open(&e, 4, small_segments(), 0).await;
    assert_eq!((log.entries(), log.next_message_index()), (0, 100));
    let batch = log.append(msg(0), 3, 1000).await.unwrap().await.unwrap();
    let single = log.append(msg(1), 1, 1001).await.unwrap().await.unwrap();
    assert_eq!(log.read_entry(batch).unwrap().message_index, 100);
    assert_eq!(log.read_entry(single).unwrap().message_index, 103);
    assert_eq!(log.position_of_message_index(101).unwrap(), Some(batch));
    assert_eq!(log.position_of_message_index(99).unwrap(), None);
    log.open_cursor("s", InitialPosition::Earliest, true)
        .unwrap();
    let read = log.read_next("s", 10).unwrap();
    assert_eq!(
        read.iter().map(|en| en.message_index).collect::<Vec<_>>(),
        vec![100, 103]
    );
    log.close().unwrap();
    let log = open(&e, 4, small_segments(), 0).await;
    assert_eq!(log.next_message_index(), 104);
}
