//! A log's lane (`managed_log/lane.rs`): appends without the log's owner,
//! numbered with the owner's own in one order, refused wherever the owner
//! must act (a roll-over, a segment the store closed, termination, close),
//! and as durable as the owner's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use kilonova_storage::{
    AppendLane, InitialPosition, LaneClosed, ManagedLog, ManagedLogConfig, Position,
};

mod common;
use common::{crash, env, msg, small_segments, Env};

/// An answer of a lane append: its message index and position.
type Answer = (u64, kilonova_storage::Result<Position>);

/// Appends message `i` through `lane` (published at 1000 + `i`); its answer
/// goes to `answers`.
fn lane_append(
    lane: &AppendLane,
    i: u64,
    answers: &mpsc::Sender<Answer>,
) -> Result<(), LaneClosed> {
    let answers = answers.clone();
    lane.try_append_then(msg(i), 1, 1000 + i, move |index| {
        move |r: kilonova_storage::Result<(Position, std::time::Instant)>| {
            let _ = answers.send((index, r.map(|(p, _)| p)));
        }
    })
}

/// The next answer, within 10 s.
fn answer(answers: &mpsc::Receiver<Answer>) -> Answer {
    answers
        .recv_timeout(Duration::from_secs(10))
        .expect("the journal answers a queued append")
}

/// Every entry of `log`, read from the start: (message index, data).
fn everything(log: &mut ManagedLog) -> Vec<(u64, Bytes)> {
    log.open_cursor("check", InitialPosition::Earliest, false)
        .unwrap();
    let read = log.read_next("check", 1000).unwrap();
    log.delete_cursor("check").unwrap();
    read.into_iter()
        .map(|e| (e.message_index, e.data))
        .collect()
}

fn expected(n: u64) -> Vec<(u64, Bytes)> {
    (0..n).map(|i| (i, msg(i))).collect()
}

async fn open(e: &Env, cfg: ManagedLogConfig) -> ManagedLog {
    common::open(e, 1, cfg, 0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_and_the_owner_append_into_one_numbered_log_across_roll_overs() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    // Segments of 10 entries: the lane stops at 5 until a spare is ready,
    // and at 10, where the owner rolls over.
    let mut log = open(&e, small_segments()).await;
    log.open_lane();
    let lane = log.lane();
    let (tx, rx) = mpsc::channel();
    let (mut by_lane, mut by_owner, mut completions) = (0, 0, Vec::new());
    for i in 0..95u64 {
        // Every third message is the owner's; the others take the lane
        // when it lets them.
        if i % 3 != 0 && lane_append(&lane, i, &tx).is_ok() {
            by_lane += 1;
            continue;
        }
        by_owner += 1;
        completions.push((i, log.append(msg(i), 1, 1000 + i).await.unwrap()));
    }
    let mut positions = Vec::new();
    for _ in 0..by_lane {
        let (index, p) = answer(&rx);
        positions.push((index, p.unwrap()));
    }
    for (i, c) in completions {
        positions.push((i, c.await.unwrap()));
    }
    positions.sort();
    assert!(
        positions.windows(2).all(|w| w[0].1 < w[1].1),
        "positions rise with the message index: {positions:?}"
    );
    assert!(by_lane > 20 && by_owner > 30, "{by_lane} / {by_owner}");
    assert!(log.segments().len() >= 9, "the log rolled over");
    assert_eq!(log.next_message_index(), 95);
    assert_eq!(everything(&mut log), expected(95));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_says_no_until_opened_and_where_the_owner_must_act() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, small_segments()).await;
    let lane = log.lane();
    let (tx, rx) = mpsc::channel();
    assert_eq!(lane_append(&lane, 0, &tx), Err(LaneClosed), "not opened");
    log.open_lane();
    for i in 0..5 {
        assert_eq!(lane_append(&lane, i, &tx), Ok(()));
    }
    assert_eq!(
        lane_append(&lane, 5, &tx),
        Err(LaneClosed),
        "half full without a spare: the owner starts one"
    );
    for _ in 0..5 {
        answer(&rx).1.unwrap();
    }
    // The store closes the current segment (as a failed write fences it):
    // the lane leaves it to the owner, who rolls over and opens it again.
    let current = log.segments().last().unwrap().id;
    e.store.seal(current).await.unwrap();
    assert_eq!(lane_append(&lane, 5, &tx), Err(LaneClosed), "sealed");
    log.append(msg(5), 1, 1005).await.unwrap().await.unwrap();
    assert_ne!(log.segments().last().unwrap().id, current, "rolled over");
    assert_eq!(
        lane_append(&lane, 6, &tx),
        Ok(()),
        "open on the new segment"
    );
    assert_eq!(answer(&rx).0, 6, "numbered after the owner's append");
    log.close_lane();
    assert_eq!(lane_append(&lane, 7, &tx), Err(LaneClosed), "closed");
    log.open_lane();
    log.terminate().unwrap();
    assert_eq!(lane_append(&lane, 7, &tx), Err(LaneClosed), "terminated");
    assert_eq!(everything(&mut log), expected(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_closes_its_lane() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, ManagedLogConfig::default()).await;
    log.open_lane();
    let lane = log.lane();
    let (tx, _rx) = mpsc::channel();
    log.close().unwrap();
    assert_eq!(lane_append(&lane, 0, &tx), Err(LaneClosed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_lane_acknowledged_survives_a_crash_with_its_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = env(dir.path());
        let mut log = open(&e, ManagedLogConfig::default()).await;
        log.open_lane();
        let lane = log.lane();
        let (tx, rx) = mpsc::channel();
        for i in 0..40 {
            lane_append(&lane, i, &tx).unwrap();
        }
        for i in 0..40 {
            let (index, p) = answer(&rx);
            assert_eq!(index, i, "answered in the order appended");
            p.unwrap();
        }
        std::mem::forget(log);
        crash(e).await;
    }
    let e = env(dir.path());
    let mut log = open(&e, ManagedLogConfig::default()).await;
    assert_eq!(log.next_message_index(), 40);
    assert_eq!(everything(&mut log), expected(40));
}
