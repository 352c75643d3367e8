//! The next segment, created and listed before a roll-over (`spare.rs`):
//! a crash at any point of the roll-overs keeps every acknowledged entry
//! with its message index, and a spare nobody wrote to is not kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kilonova_storage::{reclaim_orphans, InitialPosition, ManagedLog};

mod common;
use common::{crash, env, small_segments, Env, FailingWrites};

/// Waits until the metadata writes left to the blocking pool are stored.
async fn settled(log: &ManagedLog) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !log.metadata_stored() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the metadata writes land");
}

async fn open(e: &Env) -> ManagedLog {
    common::open(e, 1, small_segments(), 0).await
}

/// Publishes `from..to`, each acknowledged before the next.
async fn publish(log: &mut ManagedLog, from: u64, to: u64) {
    for i in from..to {
        log.append(Bytes::from(format!("m{i}")), 1, 1000 + i)
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Start-up as the broker does it: orphans reclaimed, then the log opened.
async fn restart(e: &Env) -> ManagedLog {
    let (store, state) = (e.store.clone(), e.state.clone());
    tokio::task::spawn_blocking(move || reclaim_orphans(&store, state.as_ref()))
        .await
        .unwrap()
        .unwrap();
    open(e).await
}

/// Every entry of `log`, read from the start: (message index, data).
fn everything(log: &mut ManagedLog) -> Vec<(u64, Bytes)> {
    log.open_cursor("check", InitialPosition::Earliest, false)
        .unwrap();
    let read = log.read_next("check", 1000).unwrap();
    read.into_iter()
        .map(|e| (e.message_index, e.data))
        .collect()
}

fn expected(n: u64) -> Vec<(u64, Bytes)> {
    (0..n).map(|i| (i, Bytes::from(format!("m{i}")))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_point_of_the_roll_overs_keeps_every_acknowledged_entry_and_its_index() {
    // Segments of 10 entries: a spare is created at the 5th, listed in the
    // background, switched to at the 11th; each count stops somewhere else.
    for n in 1..=45 {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = env(dir.path());
            let mut log = open(&e).await;
            publish(&mut log, 0, n).await;
            std::mem::forget(log);
            crash(e).await;
        }
        let e = env(dir.path());
        let mut log = restart(&e).await;
        assert_eq!(everything(&mut log), expected(n), "after {n} entries");
        // The numbering goes on where it stopped.
        let p = log
            .append(Bytes::from("next"), 1, 5000)
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(
            log.read_entry(p).unwrap().message_index,
            n,
            "after {n} entries"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_spare_nobody_wrote_to_is_dropped_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = env(dir.path());
        let mut log = open(&e).await;
        // Half of the first segment: its spare is created and listed.
        publish(&mut log, 0, 7).await;
        settled(&log).await;
        std::mem::forget(log);
        crash(e).await;
    }
    let e = env(dir.path());
    let mut log = restart(&e).await;
    // The first segment, sealed, and the one start-up began; not the spare.
    let segments: Vec<_> = log.segments().iter().map(|s| s.id).collect();
    assert_eq!(segments.len(), 2, "{segments:?}");
    assert!(e.store.segment(segments[0]).unwrap().sealed);
    assert_eq!(everything(&mut log), expected(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_a_spare_whose_start_was_never_stored_keep_their_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut e = env(dir.path());
        let state = FailingWrites::new(dir.path(), "/meta", false);
        e.state = state.clone();
        let mut log = open(&e).await;
        publish(&mut log, 0, 9).await;
        settled(&log).await; // the spare is listed, at message index 5 or so
                             // The roll-over's record of where the spare starts (index 10) is
                             // lost; appends to the spare are acknowledged all the same.
        state.fail.store(true, Ordering::SeqCst);
        publish(&mut log, 9, 14).await;
        assert_eq!(log.segments().len(), 2);
        std::mem::forget(log);
        crash(e).await;
    }
    let e = env(dir.path());
    let mut log = restart(&e).await;
    assert_eq!(everything(&mut log), expected(14));
    let starts: Vec<u64> = log
        .segments()
        .iter()
        .map(|s| s.first_message_index)
        .collect();
    assert_eq!(starts[..2], [0, 10], "read from the spare's first entry");
}
