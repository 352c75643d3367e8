//! A managed log's compacted view: written beside the log, read through by
//! cursors that ask for it, kept across restarts, retention and start-up reclaim.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use kilonova_storage::{reclaim_orphans, Entry, InitialPosition, ManagedLog, Position, Retention};

mod common;
use common::{env, msg, open, publish, small_segments};

/// Keeps the entries at `keep` (positions of the log) as the view up to `horizon`.
async fn compact(log: &mut ManagedLog, keep: &[Position], horizon: Position) {
    let entries: Vec<Entry> = keep.iter().map(|p| log.read_entry(*p).unwrap()).collect();
    let mut w = log.begin_compacted().await.unwrap();
    for e in &entries {
        log.append_compacted(&mut w, e).await.unwrap();
    }
    log.finish_compacted(w, horizon).await.unwrap();
}

fn datas(entries: &[Entry]) -> Vec<Bytes> {
    entries.iter().map(|e| e.data.clone()).collect()
}

#[tokio::test]
async fn a_compacted_reader_sees_the_view_then_the_log_after_the_horizon() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let p = publish(&mut log, 0, 25).await;
    compact(&mut log, &[p[3], p[17], p[19]], p[19]).await;
    publish(&mut log, 25, 3).await;

    log.open_cursor_as("c", InitialPosition::Earliest, false, true)
        .unwrap();
    let read = log.read_next("c", 100).unwrap();
    let want: Vec<Bytes> = [3, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27]
        .into_iter()
        .map(msg)
        .collect();
    assert_eq!(datas(&read), want);
    assert_eq!(read[1].position, p[17], "view entries keep their positions");

    // A plain cursor still sees everything.
    log.open_cursor("plain", InitialPosition::Earliest, false)
        .unwrap();
    assert_eq!(log.read_next("plain", 100).unwrap().len(), 28);
}

#[tokio::test]
async fn acks_and_rewinds_move_along_the_view_after_the_log_was_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let p = publish(&mut log, 0, 25).await;
    compact(&mut log, &[p[1], p[5], p[12], p[24]], p[24]).await;
    // Every durable cursor is past the horizon: retention deletes the segments.
    log.open_cursor("__compaction", InitialPosition::Earliest, true)
        .unwrap();
    log.ack_cumulative("__compaction", p[24]).unwrap();
    publish(&mut log, 25, 2).await;
    let deleted = log
        .trim(
            10_000,
            Retention {
                time_ms: Some(0),
                size_bytes: None,
            },
        )
        .await
        .unwrap();
    assert!(!deleted.is_empty());
    assert!(log.read_entry(p[1]).is_err(), "trimmed from the log");

    log.open_cursor_as("c", InitialPosition::Earliest, false, true)
        .unwrap();
    let first = log.read_next("c", 2).unwrap();
    assert_eq!(datas(&first), vec![msg(1), msg(5)]);
    // A cumulative ack inside a trimmed segment does not skip the rest of the view.
    log.ack_cumulative("c", first[0].position).unwrap();
    log.rewind("c").unwrap();
    let rest = log.read_next("c", 100).unwrap();
    assert_eq!(
        datas(&rest),
        vec![msg(5), msg(12), msg(24), msg(25), msg(26)]
    );
}

#[tokio::test]
async fn the_view_survives_a_restart_and_start_up_reclaim() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = env(dir.path());
        let mut log = open(&e, 1, small_segments(), 0).await;
        let p = publish(&mut log, 0, 12).await;
        compact(&mut log, &[p[2], p[11]], p[11]).await;
        // A second compaction replaces the first view.
        compact(&mut log, &[p[4], p[11]], p[11]).await;
        log.close().unwrap();
        tokio::task::spawn_blocking(move || e.store.close())
            .await
            .unwrap()
            .unwrap();
    }
    let e = env(dir.path());
    let store = e.store.clone();
    let state = e.state.clone();
    let report = tokio::task::spawn_blocking(move || reclaim_orphans(&store, state.as_ref()))
        .await
        .unwrap()
        .unwrap();
    assert!(report.orphan_segments.is_empty(), "{report:?}");
    let mut log = open(&e, 1, small_segments(), 0).await;
    assert_eq!(log.compacted_entries(), 2);
    log.open_cursor_as("c", InitialPosition::Earliest, false, true)
        .unwrap();
    assert_eq!(
        datas(&log.read_next("c", 100).unwrap()),
        vec![msg(4), msg(11)]
    );
    let segments_before = e.store.segments().len();
    log.delete().await.unwrap();
    assert!(e.store.segments().len() < segments_before);
    assert!(e.store.segments().is_empty(), "{:?}", e.store.segments());
}

#[tokio::test]
async fn out_of_order_entries_are_refused_and_the_old_view_stays() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let p = publish(&mut log, 0, 5).await;
    compact(&mut log, &[p[1]], p[4]).await;
    let mut w = log.begin_compacted().await.unwrap();
    let late = log.read_entry(p[3]).unwrap();
    let early = log.read_entry(p[2]).unwrap();
    log.append_compacted(&mut w, &late).await.unwrap();
    assert!(log.append_compacted(&mut w, &early).await.is_err());
    log.abort_compacted(w).await;
    assert_eq!(log.compacted_horizon(), Some(p[4]));
    assert_eq!(log.read_compacted(0).unwrap().data, msg(1));
}
