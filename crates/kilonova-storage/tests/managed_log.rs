//! Managed log behaviour: roll-over, message index, cursors, retention, TTL, cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;

use bytes::Bytes;
use kilonova_storage::state_store::key_component;
use kilonova_storage::{
    DirStateStore, InitialPosition, ManagedLog, ManagedLogConfig, Position, Retention, StateStore,
};

mod common;
use common::{crash, env, env_with, msg, open, publish, small_segments, Env, FailingWrites};

async fn close_store(e: Env) {
    tokio::task::spawn_blocking(move || e.store.close())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn entries_roll_over_segments_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let positions = publish(&mut log, 0, 35).await;
    assert!(log.segments().len() >= 4, "{:?}", log.segments());
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let all = log.read_from(log.first_position(), 100).unwrap();
    assert_eq!(all.len(), 35);
    for (i, entry) in all.iter().enumerate() {
        assert_eq!(entry.data, msg(i as u64));
        assert_eq!(entry.message_index, i as u64);
        assert_eq!(entry.position, positions[i]);
    }
    assert_eq!(log.last_position(), Some(positions[34]));
}

#[tokio::test]
async fn the_durable_end_leaves_out_appends_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    // A group waits a second for more appends: an append stays in flight
    // while the test looks at the log.
    let e = env_with(dir.path(), |c| c.group_commit_max_delay_us = 1_000_000);
    let mut log = open(&e, 1, small_segments(), 0).await;
    log.append(msg(0), 3, 1).await.unwrap().await.unwrap();
    let ends = |log: &ManagedLog| (log.next_message_index(), log.durable_next_message_index());
    assert_eq!(ends(&log), (3, 3));
    let in_flight = log.append(msg(1), 2, 2).await.unwrap();
    assert_eq!(ends(&log), (5, 3), "one append of two messages in flight");
    in_flight.await.unwrap();
    assert_eq!(ends(&log), (5, 5));
    // The first append of a new segment, in flight: the end is the last
    // segment's.
    let mut queued = Vec::new();
    for i in 2..10 {
        queued.push(log.append(msg(i), 1, i).await.unwrap());
    }
    for q in queued {
        q.await.unwrap();
    }
    let segments = log.segments().len();
    let in_flight = log.append(msg(10), 1, 10).await.unwrap();
    assert_eq!(log.segments().len(), segments + 1, "rolled");
    assert_eq!(ends(&log), (14, 13));
    in_flight.await.unwrap();
    assert_eq!(ends(&log), (14, 14));
}

#[tokio::test]
async fn appends_answered_by_a_call_are_answered_in_order_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..35u64 {
        let (tx, store) = (tx.clone(), e.store.clone());
        log.append_then(msg(i), 1, i, move |r| {
            let (p, _) = r.expect("stored");
            // Called once readers see it: the segment counts it as durable.
            let durable = store.segment(p.segment).map_or(0, |s| s.entries);
            tx.send((i, p, p.entry < durable)).unwrap();
        })
        .await
        .unwrap();
    }
    drop(tx);
    let answers: Vec<_> = rx.iter().collect();
    assert_eq!(answers.len(), 35);
    assert!(
        answers.iter().all(|(_, _, durable)| *durable),
        "{answers:?}"
    );
    let stored = log.read_from(log.first_position(), 100).unwrap();
    assert!(
        log.segments().len() >= 4,
        "rolled over: {:?}",
        log.segments()
    );
    for ((i, p, _), entry) in answers.iter().zip(&stored) {
        assert_eq!(
            (entry.position, &entry.data),
            (*p, &msg(*i)),
            "in append order"
        );
    }
}

#[tokio::test]
async fn an_append_the_journal_never_took_is_refused_without_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let called = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    close_store(e).await;
    let c = called.clone();
    let r = log
        .append_then(msg(0), 1, 0, move |_| c.store(true, SeqCst))
        .await;
    assert!(r.is_err(), "{r:?}");
    assert!(!called.load(SeqCst), "told twice: by Err and by the call");
}

#[tokio::test]
async fn an_append_after_the_store_closed_the_current_segment_goes_to_a_new_one() {
    // The log checks its current segment in the store's index only when a
    // segment closed since its last look: a seal it did not make must still
    // move it on, at the very next append.
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, ManagedLogConfig::default(), 0).await;
    let first = log.append(msg(0), 1, 1).await.unwrap().await.unwrap();
    let again = log.append(msg(1), 1, 2).await.unwrap().await.unwrap();
    assert_eq!(again.segment, first.segment, "no reason to roll yet");
    e.store.seal(first.segment).await.unwrap();
    let after = log.append(msg(2), 1, 3).await.unwrap().await.unwrap();
    assert_ne!(after.segment, first.segment, "appended to a sealed segment");
    let read: Vec<Bytes> = log
        .read_from(log.first_position(), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(read, vec![msg(0), msg(1), msg(2)]);
}

#[tokio::test]
async fn segments_roll_by_bytes_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let cfg = ManagedLogConfig {
        max_segment_bytes: 100,
        max_segment_age_ms: 1_000_000,
        ..Default::default()
    };
    let mut log = open(&e, 1, cfg, 0).await;
    for i in 0..10 {
        log.append(Bytes::from(vec![0u8; 40]), 1, i)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert!(log.segments().len() >= 4, "by bytes: {:?}", log.segments());
    let cfg = ManagedLogConfig {
        max_segment_age_ms: 50,
        ..Default::default()
    };
    let mut log = open(&e, 2, cfg, 0).await;
    log.append(msg(0), 1, 10).await.unwrap().await.unwrap();
    log.append(msg(1), 1, 20).await.unwrap().await.unwrap();
    assert_eq!(log.segments().len(), 1);
    log.append(msg(2), 1, 60).await.unwrap().await.unwrap();
    assert_eq!(log.segments().len(), 2, "by age");
}

#[tokio::test]
async fn message_index_counts_batched_messages_and_maps_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    // 25 entries of 3 messages each: message indexes 0, 3, 6, ...
    let mut ps = Vec::new();
    for i in 0..25u64 {
        ps.push(
            log.append(msg(i), 3, 1000 + 10 * i)
                .await
                .unwrap()
                .await
                .unwrap(),
        );
    }
    assert_eq!(log.next_message_index(), 75);
    for (i, p) in ps.iter().enumerate() {
        let i = i as u64;
        assert_eq!(log.read_entry(*p).unwrap().message_index, 3 * i);
        for m in 3 * i..3 * i + 3 {
            assert_eq!(
                log.position_of_message_index(m).unwrap(),
                Some(*p),
                "message {m}"
            );
        }
        // Publish time t maps to the first entry at or after it.
        assert_eq!(log.position_of_publish_time(1000 + 10 * i).unwrap(), *p);
        assert_eq!(log.position_of_publish_time(1000 + 10 * i - 5).unwrap(), *p);
    }
    assert_eq!(log.position_of_message_index(75).unwrap(), None);
    assert_eq!(
        log.position_of_publish_time(99_999).unwrap(),
        log.end_position()
    );
}

#[tokio::test]
async fn cursor_skips_acked_entries_and_mark_delete_follows_contiguous_acks() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 25).await;
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    // Ack a scattered set first: they must be skipped on read.
    for i in [1, 2, 11, 12, 20] {
        log.ack("sub", ps[i]).unwrap();
    }
    let got: Vec<_> = log
        .read_next("sub", 100)
        .unwrap()
        .into_iter()
        .map(|e| e.position)
        .collect();
    let expect: Vec<_> = (0..25)
        .filter(|i| ![1, 2, 11, 12, 20].contains(i))
        .map(|i| ps[i])
        .collect();
    assert_eq!(got, expect);
    let info = log.cursor_info("sub").unwrap();
    assert_eq!(info.mark_delete, None, "entry 0 is not acked");
    assert_eq!(info.backlog_entries, 20);
    // Acking 0 folds 0..=2 into the mark-delete position.
    log.ack("sub", ps[0]).unwrap();
    assert_eq!(log.cursor_info("sub").unwrap().mark_delete, Some(ps[2]));
    // Cumulative ack across a segment boundary (ps[9] is the last of segment 1).
    log.ack_cumulative("sub", ps[10]).unwrap();
    let info = log.cursor_info("sub").unwrap();
    assert_eq!(
        info.mark_delete,
        Some(ps[12]),
        "11 and 12 were acked already"
    );
    assert_eq!(info.backlog_entries, 25 - 13 - 1);
    // Rewind redelivers exactly the unacked entries.
    log.rewind("sub").unwrap();
    let again: Vec<_> = log
        .read_next("sub", 100)
        .unwrap()
        .into_iter()
        .map(|e| e.position)
        .collect();
    let expect: Vec<_> = (13..25).filter(|i| *i != 20).map(|i| ps[i]).collect();
    assert_eq!(again, expect);
}

/// One ACK's entries acknowledged in one call leave the cursor as acking
/// them one by one does: across a segment's end, out of order, repeated, and
/// with the entries before the floor moving it.
#[tokio::test]
async fn entries_acknowledged_together_make_the_same_cursor_as_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 25).await;
    log.open_cursor("each", InitialPosition::Earliest, true)
        .unwrap();
    log.open_cursor("together", InitialPosition::Earliest, true)
        .unwrap();
    let acks = [11, 9, 3, 10, 1, 0, 2, 3, 20];
    for i in acks {
        log.ack("each", ps[i]).unwrap();
    }
    let together: Vec<_> = acks.iter().map(|i| ps[*i]).collect();
    log.ack_each("together", &together).unwrap();
    assert_eq!(
        log.cursor_info("together").unwrap().mark_delete,
        Some(ps[3])
    );
    assert_eq!(
        log.acked_ranges("together").unwrap(),
        log.acked_ranges("each").unwrap()
    );
    assert_eq!(
        log.cursor_info("together").unwrap().backlog_entries,
        log.cursor_info("each").unwrap().backlog_entries
    );
    // Nothing to acknowledge is no change, and a cursor that is not there
    // is an error.
    log.ack_each("together", &[]).unwrap();
    assert!(log.ack_each("missing", &[ps[4]]).is_err());
}

#[tokio::test]
async fn acked_ranges_given_back_by_ack_range_make_the_same_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 25).await;
    log.open_cursor("a", InitialPosition::Earliest, true)
        .unwrap();
    log.open_cursor("b", InitialPosition::Earliest, true)
        .unwrap();
    for i in [3, 4, 5, 9, 10, 17] {
        log.ack("a", ps[i]).unwrap();
    }
    let ranges = log.acked_ranges("a").unwrap();
    // Ranges stay within a segment (ps[9] ends segment 1, ps[10] starts 2).
    assert_eq!(
        ranges,
        vec![
            (ps[3], ps[5]),
            (ps[9], ps[9]),
            (ps[10], ps[10]),
            (ps[17], ps[17])
        ]
    );
    for (start, end) in &ranges {
        log.ack_range("b", *start, *end).unwrap();
    }
    assert_eq!(log.acked_ranges("b").unwrap(), ranges);
    assert_eq!(
        log.cursor_info("b").unwrap().backlog_entries,
        log.cursor_info("a").unwrap().backlog_entries
    );
    // A range starting at the first unacknowledged entry moves it.
    log.ack_range("b", ps[0], ps[2]).unwrap();
    assert_eq!(log.cursor_info("b").unwrap().mark_delete, Some(ps[5]));
    // Ranges before the floor, or across segments, acknowledge nothing more.
    log.ack_range("b", ps[0], ps[1]).unwrap();
    log.ack_range("b", ps[6], ps[12]).unwrap();
    assert_eq!(log.cursor_info("b").unwrap().backlog_entries, 25 - 6 - 3);
}

#[tokio::test]
async fn a_cumulative_ack_before_a_segments_first_entry_acks_the_segments_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 25).await;
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    // Pulsar's (segment, -1): before the first segment's first entry, nothing.
    log.ack_cumulative("sub", Position::new(ps[0].segment, u64::MAX))
        .unwrap();
    assert_eq!(log.cursor_info("sub").unwrap().mark_delete, None);
    // ps[10] starts the second segment: everything before it.
    assert_eq!(ps[10].entry, 0, "small segments hold 10 entries");
    log.ack_cumulative("sub", Position::new(ps[10].segment, u64::MAX))
        .unwrap();
    assert_eq!(log.cursor_info("sub").unwrap().mark_delete, Some(ps[9]));
    close_store(e).await;
}

#[tokio::test]
async fn cursors_start_latest_earliest_or_at_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 12).await;
    log.open_cursor("latest", InitialPosition::Latest, false)
        .unwrap();
    log.open_cursor("earliest", InitialPosition::Earliest, false)
        .unwrap();
    log.open_cursor("at", InitialPosition::At(ps[7]), false)
        .unwrap();
    assert!(log.read_next("latest", 10).unwrap().is_empty());
    assert!(!log.has_entries_to_read("latest"));
    let more = publish(&mut log, 12, 2).await;
    assert!(log.has_entries_to_read("latest"));
    let l: Vec<_> = log
        .read_next("latest", 10)
        .unwrap()
        .into_iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(l, more);
    assert_eq!(log.read_next("earliest", 100).unwrap().len(), 14);
    assert_eq!(
        log.read_next("at", 100).unwrap().first().unwrap().position,
        ps[7]
    );
}

#[tokio::test]
async fn durable_cursors_and_entries_survive_reopen_non_durable_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let ps;
    {
        let e = env(dir.path());
        let mut log = open(&e, 7, small_segments(), 0).await;
        ps = publish(&mut log, 0, 30).await;
        log.open_cursor("durable", InitialPosition::Earliest, true)
            .unwrap();
        log.open_cursor("reader", InitialPosition::Earliest, false)
            .unwrap();
        log.ack_cumulative("durable", ps[14]).unwrap();
        log.ack("durable", ps[20]).unwrap();
        log.close().unwrap();
        close_store(e).await;
    }
    let e = env(dir.path());
    let mut log = open(&e, 7, small_segments(), 0).await;
    assert!(log.has_cursor("durable"));
    assert!(!log.has_cursor("reader"));
    let info = log.cursor_info("durable").unwrap();
    assert_eq!(info.mark_delete, Some(ps[14]));
    let got: Vec<_> = log
        .read_next("durable", 100)
        .unwrap()
        .into_iter()
        .map(|e| e.position)
        .collect();
    let expect: Vec<_> = (15..30).filter(|i| *i != 20).map(|i| ps[i]).collect();
    assert_eq!(got, expect);
    // The message index continues after a reopen, in a new segment.
    let next = publish(&mut log, 30, 1).await;
    assert_eq!(log.read_entry(next[0]).unwrap().message_index, 30);
    assert!(next[0].segment > ps[29].segment);
}

#[tokio::test]
async fn a_cursors_last_active_time_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = env(dir.path());
        let mut log = open(&e, 8, small_segments(), 0).await;
        log.open_cursor("touched", InitialPosition::Earliest, true)
            .unwrap();
        log.open_cursor("untouched", InitialPosition::Earliest, true)
            .unwrap();
        assert_eq!(log.cursor_info("touched").unwrap().last_active_ms, None);
        log.touch_cursor("touched", 1_234_567).unwrap();
        assert!(log.touch_cursor("missing", 1).is_err());
        log.close().unwrap();
        close_store(e).await;
    }
    let e = env(dir.path());
    let log = open(&e, 8, small_segments(), 0).await;
    assert_eq!(
        log.cursor_info("touched").unwrap().last_active_ms,
        Some(1_234_567)
    );
    assert_eq!(log.cursor_info("untouched").unwrap().last_active_ms, None);
}

#[tokio::test]
async fn acks_not_yet_persisted_are_redelivered_after_a_crash_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let ps;
    {
        let e = env(dir.path());
        let mut log = open(&e, 3, small_segments(), 0).await;
        ps = publish(&mut log, 0, 20).await;
        log.open_cursor("sub", InitialPosition::Earliest, true)
            .unwrap();
        log.ack_cumulative("sub", ps[4]).unwrap();
        log.persist_cursors().unwrap();
        log.ack_cumulative("sub", ps[9]).unwrap(); // never persisted
        std::mem::forget(log); // crash: no close
        let store = e.store.clone();
        tokio::task::spawn_blocking(move || store.abandon())
            .await
            .unwrap()
            .unwrap();
    }
    let e = env(dir.path());
    let mut log = open(&e, 3, small_segments(), 0).await;
    let got = log.read_next("sub", 100).unwrap();
    assert_eq!(
        got.first().unwrap().position,
        ps[5],
        "resumes after the persisted mark-delete"
    );
    assert_eq!(got.len(), 15);
}

/// Reopens the log after a crash (no close) and answers the cursor's mark-delete position.
async fn mark_delete_after_crash(
    dir: &Path,
    id: u64,
    log: ManagedLog,
    e: Env,
    cursor: &str,
) -> Option<Position> {
    std::mem::forget(log);
    let store = e.store.clone();
    tokio::task::spawn_blocking(move || store.abandon())
        .await
        .unwrap()
        .unwrap();
    let e = env(dir);
    let log = open(&e, id, small_segments(), 0).await;
    log.cursor_info(cursor).unwrap().mark_delete
}

#[tokio::test]
async fn cursor_writes_taken_off_the_log_store_their_state_and_a_later_change_stays_to_persist() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 11, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 20).await;
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    log.ack_cumulative("sub", ps[4]).unwrap();
    let writes = log.cursor_writes();
    assert!(!writes.is_empty());
    // The log goes on changing while the batch is stored elsewhere.
    log.ack_cumulative("sub", ps[9]).unwrap();
    let stored = tokio::task::spawn_blocking(move || writes.store())
        .await
        .unwrap();
    assert_eq!(log.cursor_writes_done(stored).unwrap(), 1);
    // The change made after the batch was taken is still to be persisted.
    assert!(!log.cursor_writes().is_empty());
    assert_eq!(
        mark_delete_after_crash(dir.path(), 11, log, e, "sub").await,
        Some(ps[4]),
        "the batch stored the state it was taken with"
    );
}

#[tokio::test]
async fn an_older_cursor_write_landing_after_a_newer_one_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 12, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 20).await;
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    log.ack_cumulative("sub", ps[4]).unwrap();
    let older = log.cursor_writes();
    log.ack_cumulative("sub", ps[9]).unwrap();
    // A close's persist runs before the batch taken earlier gets its turn.
    log.persist_cursors().unwrap();
    let stored = older.store();
    log.cursor_writes_done(stored).unwrap();
    assert!(log.cursor_writes().is_empty());
    assert_eq!(
        mark_delete_after_crash(dir.path(), 12, log, e, "sub").await,
        Some(ps[9]),
        "the newer state stays stored"
    );
}

#[tokio::test]
async fn a_cursor_deleted_while_its_write_is_in_flight_is_not_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 13, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 5).await;
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    log.ack_cumulative("sub", ps[2]).unwrap();
    let in_flight = log.cursor_writes();
    log.delete_cursor("sub").unwrap();
    log.cursor_writes_done(in_flight.store()).unwrap();
    let state = e.state.clone();
    let children = state.children("logs/13").unwrap();
    assert!(
        children.iter().all(|c| !c.starts_with("cursor-")),
        "no cursor record left: {children:?}"
    );
    log.close().unwrap();
    close_store(e).await;
}

#[tokio::test]
async fn retention_deletes_only_consumed_segments_beyond_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 50).await; // 5 segments, publish times 1000..1049
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    let unlimited = Retention {
        time_ms: None,
        size_bytes: None,
    };
    let none = Retention {
        time_ms: Some(0),
        size_bytes: Some(0),
    };
    // Nothing consumed: nothing deleted, whatever retention says.
    assert!(log.trim(10_000, none).await.unwrap().is_empty());
    log.ack_cumulative("sub", ps[29]).unwrap(); // segments 1-3 consumed
    assert!(
        log.trim(10_000, unlimited).await.unwrap().is_empty(),
        "infinite retention keeps all"
    );
    // Time retention: only segments whose last entry is older than 1019 + 15 at now = 1035.
    let time = Retention {
        time_ms: Some(15),
        size_bytes: None,
    };
    let deleted = log.trim(1035, time).await.unwrap();
    assert_eq!(deleted, vec![ps[0].segment, ps[10].segment]);
    // Zero retention: every consumed segment goes.
    let deleted = log.trim(1035, none).await.unwrap();
    assert_eq!(deleted, vec![ps[20].segment]);
    assert_eq!(log.first_position(), ps[30]);
    assert!(log.read_entry(ps[0]).is_err());
    assert_eq!(log.read_next("sub", 100).unwrap().len(), 20);
    // Space returns to the disk once the store collects.
    let before = e.store.disk_usage_bytes();
    let store = e.store.clone();
    tokio::task::spawn_blocking(move || store.gc())
        .await
        .unwrap()
        .unwrap();
    assert!(e.store.disk_usage_bytes() <= before);
}

#[tokio::test]
async fn size_retention_keeps_the_newest_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    for i in 0..40 {
        log.append(Bytes::from(vec![1u8; 100]), 1, i)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    log.open_cursor("sub", InitialPosition::Latest, true)
        .unwrap();
    // 40 entries x 100 B in 4 segments; keep at most 2500 bytes.
    let keep = Retention {
        time_ms: None,
        size_bytes: Some(2500),
    };
    let deleted = log.trim(0, keep).await.unwrap();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    assert!(log.size_bytes() <= 2500);
}

#[tokio::test]
async fn ttl_acknowledges_messages_older_than_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 30).await; // publish times 1000..1029
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    // At now = 1120 with a ttl of 100, messages published before 1020 expire.
    assert_eq!(log.expire(1120, 100).unwrap(), 1);
    let info = log.cursor_info("sub").unwrap();
    assert_eq!(info.mark_delete, Some(ps[19]));
    assert_eq!(info.backlog_entries, 10);
    assert_eq!(log.expire(1120, 100).unwrap(), 0, "nothing more to expire");
}

#[tokio::test]
async fn tailing_reads_are_served_from_the_cache_and_acked_entries_leave_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    log.open_cursor("tail", InitialPosition::Latest, true)
        .unwrap();
    let before = e.cache.stats();
    let ps = publish(&mut log, 0, 8).await;
    let got = log.read_next("tail", 100).unwrap();
    assert_eq!(got.len(), 8);
    let after = e.cache.stats();
    assert_eq!(
        after.hits - before.hits,
        8,
        "every tailing read hits the cache"
    );
    assert_eq!(after.misses, before.misses);
    // With the default strategy, entries before the slowest reader leave the cache.
    assert_eq!(after.entries, 0, "read entries are evicted: {after:?}");
    let _ = ps;
}

#[tokio::test]
async fn a_backlogged_cursor_does_not_pin_the_cache_and_time_only_evicts_nothing_by_position() {
    use kilonova_storage::EvictionStrategy;
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    // (strategy, backlogged threshold, entries left cached once the tailing
    // cursor read all 20 while the other read none)
    let cases = [
        (EvictionStrategy::SlowestReader, 0, 20),
        (EvictionStrategy::SlowestReader, 10, 0),
        (EvictionStrategy::SlowestReader, 30, 20),
        (EvictionStrategy::TimeOnly, 10, 20),
    ];
    for (i, (strategy, threshold, cached)) in cases.into_iter().enumerate() {
        let config = kilonova_storage::ManagedLogConfig {
            cache_eviction: strategy,
            backlogged_cursor_entries: threshold,
            ..small_segments()
        };
        let id = 20 + i as u64;
        let mut log = open(&e, id, config, 0).await;
        log.open_cursor("tail", InitialPosition::Latest, true)
            .unwrap();
        log.open_cursor("lagging", InitialPosition::Latest, true)
            .unwrap();
        publish(&mut log, 0, 20).await;
        assert_eq!(log.read_next("tail", 100).unwrap().len(), 20);
        let left = e.cache.stats().entries;
        assert_eq!(
            left, cached,
            "{strategy:?} with a threshold of {threshold} entries"
        );
        log.close().unwrap();
    }
}

#[tokio::test]
async fn a_cursor_with_a_1000_byte_name_survives_close_and_reopen_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    // Multi-byte characters too: the name is bytes to the store, never a file name.
    let long: String = "é".repeat(300) + &"s".repeat(400);
    assert_eq!(long.len(), 1000);
    let ps;
    {
        let e = env(dir.path());
        let mut log = open(&e, 9, small_segments(), 0).await;
        ps = publish(&mut log, 0, 20).await;
        log.open_cursor(&long, InitialPosition::Earliest, true)
            .unwrap();
        log.ack_cumulative(&long, ps[6]).unwrap();
        log.ack(&long, ps[9]).unwrap();
        log.close().unwrap();
        close_store(e).await;
    }
    {
        let e = env(dir.path());
        let mut log = open(&e, 9, small_segments(), 0).await;
        assert_eq!(log.cursor_names(), vec![long.clone()]);
        let info = log.cursor_info(&long).unwrap();
        assert_eq!(info.mark_delete, Some(ps[6]));
        assert_eq!(info.backlog_entries, 12);
        let next = log.read_next(&long, 1).unwrap();
        assert_eq!(next[0].position, ps[7]);
        log.delete_cursor(&long).unwrap();
        assert!(!log.has_cursor(&long));
        log.close().unwrap();
        close_store(e).await;
    }
    let e = env(dir.path());
    let log = open(&e, 9, small_segments(), 0).await;
    assert!(log.cursor_names().is_empty(), "{:?}", log.cursor_names());
    // Nothing of the deleted cursor is left in the log's state.
    let left = e.state.children("logs/9").unwrap();
    assert_eq!(left, vec!["meta".to_string()]);
}

/// A version-1 metadata record: cursors listed by name.
fn meta_v1(next_index: u64, segments: &[kilonova_storage::SegmentMeta], names: &[&str]) -> Vec<u8> {
    let mut b = vec![1u8];
    b.extend_from_slice(&next_index.to_le_bytes());
    b.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    for s in segments {
        b.extend_from_slice(&s.id.to_le_bytes());
        b.extend_from_slice(&s.first_message_index.to_le_bytes());
        b.extend_from_slice(&s.created_ms.to_le_bytes());
    }
    b.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for n in names {
        b.extend_from_slice(&(n.len() as u32).to_le_bytes());
        b.extend_from_slice(n.as_bytes());
    }
    b
}

/// A cursor record stored by name: ack floor and one acknowledged range.
fn cursor_v1(floor: Position, acked: Position) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&floor.segment.to_le_bytes());
    b.extend_from_slice(&floor.entry.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&acked.segment.to_le_bytes());
    b.extend_from_slice(&acked.entry.to_le_bytes());
    b.extend_from_slice(&acked.entry.to_le_bytes());
    b
}

#[tokio::test]
async fn cursors_stored_by_name_are_kept_when_a_log_opens_and_stored_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let (ps, segments);
    {
        let e = env(dir.path());
        let mut log = open(&e, 4, small_segments(), 0).await;
        ps = publish(&mut log, 0, 25).await;
        segments = log.segments().to_vec();
        log.close().unwrap();
        close_store(e).await;
    }
    // Rewrite the log's state as the previous version stored it.
    {
        let state = DirStateStore::open(dir.path().join("state")).unwrap();
        state
            .store("logs/4/meta", &meta_v1(25, &segments, &["a", "sub/2"]))
            .unwrap();
        for (name, floor, acked) in [("a", ps[3], ps[8]), ("sub/2", ps[12], ps[20])] {
            let key = format!("logs/4/cursors/{}", key_component(name));
            state.store(&key, &cursor_v1(floor, acked)).unwrap();
        }
    }
    for round in 0..2 {
        let e = env(dir.path());
        let mut log = open(&e, 4, small_segments(), 0).await;
        assert_eq!(log.cursor_names(), vec!["a".to_string(), "sub/2".into()]);
        assert_eq!(log.cursor_info("a").unwrap().mark_delete, Some(ps[2]));
        assert_eq!(log.cursor_info("sub/2").unwrap().mark_delete, Some(ps[11]));
        let a: Vec<_> = log
            .read_next("a", 100)
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        assert!(!a.contains(&ps[8]) && a.contains(&ps[9]), "round {round}");
        assert_eq!(a.len(), 21, "round {round}");
        assert!(
            !dir.path().join("state/logs/4/cursors").exists(),
            "round {round}: the storage by name is removed once migrated"
        );
        log.close().unwrap();
        close_store(e).await;
    }
}

#[tokio::test]
async fn a_cursor_that_cannot_be_stored_is_not_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = env(dir.path());
    e.state = FailingWrites::new(dir.path(), "cursor", true);
    let mut log = open(&e, 2, small_segments(), 0).await;
    publish(&mut log, 0, 5).await;
    assert!(log
        .open_cursor("sub", InitialPosition::Earliest, true)
        .is_err());
    assert!(
        !log.has_cursor("sub"),
        "a failed subscribe leaves no cursor"
    );
    assert_eq!(log.cursor_count(), 0);
}

#[tokio::test]
async fn appends_never_go_to_a_segment_the_stored_metadata_does_not_list() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = FailingWrites::new(dir.path(), "/meta", false);
    let acked;
    {
        let mut e = env(dir.path());
        e.state = flaky.clone();
        let mut log = open(&e, 6, small_segments(), 0).await;
        publish(&mut log, 0, 10).await; // the first segment is full
        flaky.fail.store(true, SeqCst);
        let refused = log.append(msg(10), 1, 1010).await;
        assert!(refused.is_err(), "the roll's metadata could not be saved");
        flaky.fail.store(false, SeqCst);
        acked = publish(&mut log, 10, 3).await;
        std::mem::forget(log);
        crash(e).await;
    }
    let e = env(dir.path());
    let log = open(&e, 6, small_segments(), 0).await;
    for p in &acked {
        assert!(
            log.read_entry(*p).is_ok(),
            "acknowledged entry {p:?} is in a segment the log does not list"
        );
    }
}

#[tokio::test]
async fn a_closed_logs_stored_summary_matches_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 9, small_segments(), 0).await;
    let positions = publish(&mut log, 0, 25).await;
    log.open_cursor("behind", InitialPosition::Earliest, true)
        .unwrap();
    log.open_cursor("caught-up", InitialPosition::Latest, true)
        .unwrap();
    log.ack_cumulative("behind", positions[9]).unwrap();
    log.ack("behind", positions[15]).unwrap();
    let (size, entries) = (log.size_bytes(), log.entries());
    let behind = log.cursor_info("behind").unwrap().backlog_entries;
    let behind_bytes = log.backlog_bytes("behind").unwrap();
    assert_eq!(behind, 14);
    log.close().unwrap();
    let segments_before = e.store.stats().segments;

    let s =
        ManagedLog::stored_summary(9, e.store.clone(), e.state.clone(), e.cache.clone()).unwrap();
    assert_eq!((s.size_bytes, s.entries), (size, entries));
    let cursors: Vec<_> = s
        .cursors
        .iter()
        .map(|c| (c.name.as_str(), c.backlog_entries, c.backlog_bytes))
        .collect();
    assert_eq!(
        cursors,
        [("behind", behind, behind_bytes), ("caught-up", 0, 0)]
    );
    assert_eq!(
        e.store.stats().segments,
        segments_before,
        "reading the summary started no segment"
    );
    // A log never written has an empty summary.
    let none =
        ManagedLog::stored_summary(10, e.store.clone(), e.state.clone(), e.cache.clone()).unwrap();
    assert_eq!(none, Default::default());
    close_store(e).await;
}

#[tokio::test]
async fn a_read_stops_once_it_holds_its_byte_budget_and_reads_one_entry_at_least() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    let ps = publish(&mut log, 0, 10).await;
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    let len = msg(0).len();
    let positions =
        |v: Vec<kilonova_storage::Entry>| v.into_iter().map(|e| e.position).collect::<Vec<_>>();
    // Two entries hold less than the budget; the third reaches it.
    let got = log.read_next_within("sub", 100, 2 * len + 1).unwrap();
    assert_eq!(positions(got), ps[0..3]);
    let got = log.read_next_within("sub", 100, 0).unwrap();
    assert_eq!(positions(got), ps[3..4], "one entry even over budget");
    let got = log.read_next_within("sub", 2, usize::MAX).unwrap();
    assert_eq!(positions(got), ps[4..6], "the entry count still caps");
}

#[tokio::test]
async fn a_terminated_log_refuses_appends_keeps_its_entries_and_stays_terminated_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let ps;
    {
        let e = env(dir.path());
        let mut log = open(&e, 9, small_segments(), 0).await;
        assert!(!log.is_terminated());
        ps = publish(&mut log, 0, 12).await;
        assert_eq!(log.terminate().unwrap(), Some(ps[11]));
        // Idempotent: the same end again.
        assert_eq!(log.terminate().unwrap(), Some(ps[11]));
        assert!(matches!(
            log.append(msg(12), 1, 12).await,
            Err(kilonova_storage::StorageError::Terminated)
        ));
        crash(e).await;
    }
    let e = env(dir.path());
    let mut log = open(&e, 9, small_segments(), 0).await;
    assert!(log.is_terminated(), "the mark survives a crash");
    assert_eq!(log.last_position(), Some(ps[11]));
    assert!(matches!(
        log.append(msg(12), 1, 12).await,
        Err(kilonova_storage::StorageError::Terminated)
    ));
    let all = log.read_from(log.first_position(), 100).unwrap();
    assert_eq!(all.len(), 12);
    // An empty log terminates too, with no last entry.
    let mut empty = open(&e, 10, small_segments(), 0).await;
    assert_eq!(empty.terminate().unwrap(), None);
    // Deleting the log removes the mark with it: a new log under the id is open.
    log.delete().await.unwrap();
    let log = open(&e, 9, small_segments(), 0).await;
    assert!(!log.is_terminated());
}

#[tokio::test]
async fn backlog_scan_counts_unacked_entries_and_their_messages_a_step_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    // 25 entries over three segments; every fifth is a batch of 4 messages.
    let mut cs = Vec::new();
    for i in 0..25u64 {
        let n = if i % 5 == 0 { 4 } else { 1 };
        cs.push(log.append(msg(i), n, 1000 + i).await.unwrap());
    }
    let mut ps = Vec::new();
    for c in cs {
        ps.push(c.await.unwrap());
    }
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    log.ack_cumulative("sub", ps[2]).unwrap();
    for i in [5, 11, 12] {
        log.ack("sub", ps[i]).unwrap();
    }
    // Unacked: 3, 4, 6..=10, 13..=24 = 19 entries; batches among them: 10, 15, 20.
    let mut scan = log.backlog_scan("sub", None).unwrap();
    let mut steps = 0;
    while !log.scan_backlog(&mut scan, 4).unwrap() {
        steps += 1;
        assert!(steps < 10, "the scan makes progress");
        assert!(scan.counts().entries <= 4 * steps);
        // Acknowledging during the scan changes nothing it counts.
        log.ack("sub", ps[24]).unwrap();
    }
    let c = scan.counts();
    assert_eq!((c.entries, c.messages), (19, 19 + 3 * 3));
    assert_eq!((c.first, c.last), (Some(ps[3]), Some(ps[24])));
    assert_eq!(steps, 4, "19 entries, 4 a step: the fifth step ends it");

    // Exactly the remaining count: the step that counts the last one says so.
    let mut scan = log.backlog_scan("sub", None).unwrap();
    assert!(
        log.scan_backlog(&mut scan, 18).unwrap(),
        "ps[24] is acked now"
    );
    assert_eq!(scan.counts().entries, 18);

    // From a start position; one before the floor starts at the floor.
    let mut scan = log.backlog_scan("sub", Some(ps[20])).unwrap();
    assert!(log.scan_backlog(&mut scan, 100).unwrap());
    assert_eq!((scan.counts().entries, scan.counts().messages), (4, 7));
    let mut scan = log.backlog_scan("sub", Some(ps[0])).unwrap();
    assert!(log.scan_backlog(&mut scan, 100).unwrap());
    assert_eq!(scan.counts().first, Some(ps[3]));

    // Nothing published after the scan started is counted.
    let mut scan = log.backlog_scan("sub", None).unwrap();
    publish(&mut log, 25, 3).await;
    assert!(log.scan_backlog(&mut scan, 100).unwrap());
    assert_eq!(scan.counts().entries, 18);

    log.ack_cumulative("sub", log.last_position().unwrap())
        .unwrap();
    let mut scan = log.backlog_scan("sub", None).unwrap();
    assert!(
        log.scan_backlog(&mut scan, 0).unwrap(),
        "an empty backlog is done at once"
    );
    assert_eq!(scan.counts(), Default::default());
}

#[tokio::test]
async fn appended_entries_are_cached_only_while_something_reads_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let mut log = open(&e, 1, small_segments(), 0).await;
    publish(&mut log, 0, 5).await;
    assert_eq!(e.cache.stats().inserted, 0, "nobody reads: nothing cached");
    log.open_cursor("sub", InitialPosition::Latest, false)
        .unwrap();
    publish(&mut log, 5, 3).await;
    assert_eq!(e.cache.stats().inserted, 3, "a cursor reads");
    // Read back all the same, from the store.
    assert_eq!(log.read_entry(Position::new(0, 0)).unwrap().data, msg(0));

    let mut by_index = open(&e, 2, small_segments(), 0).await;
    by_index.note_index_reader();
    publish(&mut by_index, 0, 2).await;
    assert_eq!(e.cache.stats().inserted, 5, "a reader by message index");
}
