//! Start-up reconciliation: segments no log lists (a crash between creating a
//! segment and saving the log's metadata) and state left by deleted logs are
//! reclaimed; nothing a log lists is ever touched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use kilonova_storage::{reclaim_orphans, InitialPosition, ManagedLog, StorageError};

mod common;
use common::{crash, env, small_segments, Env};

async fn open(e: &Env, id: u64) -> ManagedLog {
    common::open(e, id, small_segments(), 0).await
}

async fn publish(log: &mut ManagedLog, n: u64) {
    for i in 0..n {
        log.append(Bytes::from(format!("m{i}")), 1, i)
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn reclaim(e: &Env) -> kilonova_storage::Result<kilonova_storage::ReclaimReport> {
    let (store, state) = (e.store.clone(), e.state.clone());
    tokio::task::spawn_blocking(move || reclaim_orphans(&store, state.as_ref()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_segment_created_before_a_crash_that_no_log_lists_is_reclaimed_and_listed_ones_are_kept()
{
    let dir = tempfile::tempdir().unwrap();
    let (listed, orphan);
    {
        let e = env(dir.path());
        let mut log = open(&e, 1).await;
        // Three segments, the last one open and less than half full (a
        // fuller one has a spare created, listed or not: `spare.rs`).
        publish(&mut log, 24).await;
        log.open_cursor("sub", InitialPosition::Earliest, true)
            .unwrap();
        listed = log.segments().iter().map(|s| s.id).collect::<Vec<_>>();
        // What a log does when it rolls, cut by a crash: the segment is created
        // and written to, the metadata listing it is never saved.
        orphan = e.store.create_segment().await.unwrap();
        for i in 0..5 {
            e.store
                .append(orphan, Bytes::from(vec![i; 100]))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        std::mem::forget(log);
        crash(e).await;
    }
    let e = env(dir.path());
    assert!(
        e.store.segment(orphan).is_some(),
        "the orphan survived the crash"
    );
    let report = reclaim(&e).await.unwrap();
    assert_eq!(report.logs, 1);
    assert_eq!(report.orphan_segments, vec![orphan]);
    assert_eq!(report.orphan_entries, 5);
    assert_eq!(report.orphan_bytes, 500);
    assert!(e.store.segment(orphan).is_none());
    for s in &listed {
        assert!(
            e.store.segment(*s).is_some(),
            "listed segment {s} was reclaimed"
        );
    }
    // The log is whole: every entry and its cursor.
    let mut log = open(&e, 1).await;
    assert_eq!(log.read_next("sub", 100).unwrap().len(), 24);
    // A second pass finds nothing (the log's new segment is listed).
    let again = reclaim(&e).await.unwrap();
    assert!(again.orphan_segments.is_empty(), "{again:?}");
}

#[tokio::test]
async fn a_log_that_never_saved_its_metadata_leaves_a_segment_that_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let orphan;
    {
        let e = env(dir.path());
        // A new log's first step, cut by a crash before its metadata exists.
        orphan = e.store.create_segment().await.unwrap();
        crash(e).await;
    }
    let e = env(dir.path());
    let report = reclaim(&e).await.unwrap();
    assert_eq!((report.logs, report.orphan_segments), (0, vec![orphan]));
    assert!(e.store.segments().is_empty());
}

#[tokio::test]
async fn state_left_by_a_log_deleted_part_way_is_removed_and_other_entries_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 3).await;
    publish(&mut log, 3).await;
    // Deleted up to its metadata, then a crash: a cursor record is left.
    e.state.store("logs/8/cursor-0", b"left").unwrap();
    std::fs::create_dir_all(dir.path().join("state/logs/not-a-log")).unwrap();
    let report = reclaim(&e).await.unwrap();
    assert_eq!(report.stale_log_dirs, 1);
    assert_eq!(report.logs, 1);
    assert!(report.orphan_segments.is_empty(), "{report:?}");
    assert!(!dir.path().join("state/logs/8").exists());
    assert!(dir.path().join("state/logs/3/meta").exists());
    assert!(dir.path().join("state/logs/not-a-log").exists());
}

#[tokio::test]
async fn unreadable_log_metadata_stops_reclaiming_before_anything_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1).await;
    publish(&mut log, 3).await;
    let unlisted = e.store.create_segment().await.unwrap();
    e.state.store("logs/2/meta", b"garbage").unwrap();
    let err = reclaim(&e).await.unwrap_err();
    assert!(matches!(err, StorageError::InvalidFile { .. }), "{err:?}");
    assert!(e.store.segment(unlisted).is_some(), "nothing deleted");
}

#[tokio::test]
async fn deleting_a_log_removes_all_of_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 5).await;
    publish(&mut log, 25).await;
    log.open_cursor("a", InitialPosition::Earliest, true)
        .unwrap();
    log.open_cursor("b", InitialPosition::Latest, true).unwrap();
    log.persist_cursors().unwrap();
    let segments: Vec<_> = log.segments().iter().map(|s| s.id).collect();
    log.delete().await.unwrap();
    assert!(
        !dir.path().join("state/logs/5").exists(),
        "the log's state directory is left: {:?}",
        std::fs::read_dir(dir.path().join("state/logs/5")).map(|d| d.count())
    );
    assert!(e.state.subtrees("logs").unwrap().is_empty());
    for s in segments {
        assert!(e.store.segment(s).is_none());
    }
}
