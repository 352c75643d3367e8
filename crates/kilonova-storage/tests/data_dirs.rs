//! A segment store over several data directories: logs spread over them,
//! each directory recovers on its own, and a directory left out of the
//! configuration is refused rather than its segments lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kilonova_storage::{
    dir_of, DirStateStore, EntryCache, ManagedLog, SegmentStore, StateStore, StorageError,
    StoreConfig,
};

mod common;
use common::{msg, publish, small_segments};

struct Env {
    store: SegmentStore,
    state: Arc<dyn StateStore>,
    cache: Arc<EntryCache>,
}

fn config(dirs: &[PathBuf]) -> StoreConfig {
    let mut c = StoreConfig::new(&dirs[0]);
    c.more_dirs = dirs[1..].to_vec();
    c.log_file_bytes = 1 << 20;
    c.max_entry_bytes = 64 << 10;
    c
}

fn open_env(root: &Path, dirs: &[PathBuf]) -> Env {
    Env {
        store: SegmentStore::open(config(dirs)).unwrap(),
        state: Arc::new(DirStateStore::open(root.join("state")).unwrap()),
        cache: Arc::new(EntryCache::new(1 << 20)),
    }
}

async fn open_log(e: &Env, id: u64) -> ManagedLog {
    ManagedLog::open(
        id,
        e.store.clone(),
        e.state.clone(),
        e.cache.clone(),
        small_segments(),
        0,
    )
    .await
    .unwrap()
}

async fn stop(e: Env, crash: bool) {
    tokio::task::spawn_blocking(move || {
        if crash {
            e.store.abandon()
        } else {
            e.store.close()
        }
    })
    .await
    .unwrap()
    .unwrap();
}

fn dirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names.iter().map(|n| root.join(n)).collect()
}

/// The directory numbers of a log's segments.
fn dir_numbers(log: &ManagedLog) -> Vec<u8> {
    log.segments().iter().map(|s| dir_of(s.id)).collect()
}

/// Every entry of the log, read back in order.
fn contents(log: &ManagedLog) -> Vec<bytes::Bytes> {
    log.read_from(log.first_position(), 1_000)
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect()
}

fn journal_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            let n = n.to_string_lossy();
            n.ends_with(".log") && !n.starts_with("spare-")
        })
        .count()
}

#[tokio::test]
async fn logs_take_turns_over_the_directories_and_each_stays_in_one() {
    let root = tempfile::tempdir().unwrap();
    let ds = dirs(root.path(), &["a", "b"]);
    let e = open_env(root.path(), &ds);
    let mut logs = Vec::new();
    for id in 0..4u64 {
        let mut log = open_log(&e, id).await;
        // 25 entries in segments of 10: three segments each.
        publish(&mut log, 0, 25).await;
        assert!(log.segments().len() >= 3, "{:?}", log.segments());
        let home = (id % 2) as u8;
        assert!(
            dir_numbers(&log).iter().all(|d| *d == home),
            "log {id}: {:?}",
            dir_numbers(&log)
        );
        logs.push(log);
    }
    assert!(journal_files(&ds[0]) > 0 && journal_files(&ds[1]) > 0);
    let fsyncs: Vec<u64> = e.store.dirs().iter().map(|d| d.stats().fsyncs).collect();
    assert!(
        fsyncs.iter().all(|f| *f > 0),
        "each journal syncs its own appends: {fsyncs:?}"
    );
    assert_eq!(e.store.stats().fsyncs, fsyncs.iter().sum::<u64>());
    drop(logs);
    stop(e, false).await;

    // Reordered, the directories keep their numbers and the logs their data.
    let reversed = vec![ds[1].clone(), ds[0].clone()];
    let e = open_env(root.path(), &reversed);
    for id in 0..4u64 {
        let log = open_log(&e, id).await;
        assert_eq!(
            contents(&log),
            (0..25).map(msg).collect::<Vec<_>>(),
            "log {id}"
        );
        assert!(dir_numbers(&log).iter().all(|d| u64::from(*d) == id % 2));
    }
    stop(e, false).await;
}

#[tokio::test]
async fn a_directory_left_out_is_refused_and_its_data_kept_for_when_it_is_back() {
    let root = tempfile::tempdir().unwrap();
    let ds = dirs(root.path(), &["a", "b"]);
    let e = open_env(root.path(), &ds);
    let mut log = open_log(&e, 1).await;
    publish(&mut log, 0, 15).await;
    assert_eq!(dir_numbers(&log)[0], 1);
    drop(log);
    stop(e, false).await;

    let err = SegmentStore::open(config(&ds[..1])).err().expect("refused");
    assert!(matches!(err, StorageError::DataDirs(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("directory 1") && text.contains(&ds[1].display().to_string()),
        "{text}"
    );

    let e = open_env(root.path(), &ds);
    let log = open_log(&e, 1).await;
    assert_eq!(contents(&log), (0..15).map(msg).collect::<Vec<_>>());
    stop(e, false).await;
}

#[tokio::test]
async fn every_directory_recovers_what_it_acknowledged_after_a_crash() {
    let root = tempfile::tempdir().unwrap();
    let ds = dirs(root.path(), &["a", "b", "c"]);
    let e = open_env(root.path(), &ds);
    for id in 0..6u64 {
        let mut log = open_log(&e, id).await;
        publish(&mut log, 0, 12 + id).await;
    }
    stop(e, true).await;

    let e = open_env(root.path(), &ds);
    for id in 0..6u64 {
        let log = open_log(&e, id).await;
        assert_eq!(
            contents(&log),
            (0..12 + id).map(msg).collect::<Vec<_>>(),
            "log {id}"
        );
    }
    assert!(
        e.store.stats().recovery_replayed_files >= 3,
        "each directory replayed its tail"
    );
    stop(e, false).await;
}

#[tokio::test]
async fn a_directory_added_later_takes_new_logs_and_old_logs_stay_put() {
    let root = tempfile::tempdir().unwrap();
    let ds = dirs(root.path(), &["a", "b"]);
    let e = open_env(root.path(), &ds[..1]);
    let mut log = open_log(&e, 1).await;
    publish(&mut log, 0, 5).await;
    drop(log);
    stop(e, false).await;

    let e = open_env(root.path(), &ds);
    let mut old = open_log(&e, 1).await;
    publish(&mut old, 5, 20).await;
    assert!(
        dir_numbers(&old).iter().all(|d| *d == 0),
        "{:?}",
        dir_numbers(&old)
    );
    let mut new = open_log(&e, 3).await;
    publish(&mut new, 0, 5).await;
    assert!(
        dir_numbers(&new).iter().all(|d| *d == 1),
        "{:?}",
        dir_numbers(&new)
    );
    stop(e, false).await;
}

#[tokio::test]
async fn raised_segment_ids_stay_within_each_directorys_range() {
    let root = tempfile::tempdir().unwrap();
    let ds = dirs(root.path(), &["a", "b"]);
    let store = SegmentStore::open(config(&ds)).unwrap();
    store.raise_segment_ids(1 << 40);
    for i in 0..2 {
        let id = store.create_segment_in(i).await.unwrap();
        assert_eq!(usize::from(dir_of(id)), i);
        assert!(id & ((1 << 56) - 1) >= 1 << 40, "{id:#x}");
    }
    // A floor past a directory's range is refused, not spilled into the next.
    store.raise_segment_ids(1 << 56);
    assert!(store.create_segment_in(0).await.is_err());
    // An id naming a directory this store does not have is no segment of it.
    assert!(matches!(
        store.read(7 << 56, 0),
        Err(StorageError::NoSuchSegment(_))
    ));
    tokio::task::spawn_blocking(move || store.close())
        .await
        .unwrap()
        .unwrap();
}
