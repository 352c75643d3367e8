//! Segment store behaviour through its public API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use kilonova_storage::{SegmentStore, StorageError, StoreConfig};

fn config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.log_file_bytes = 1 << 20;
    c.max_entry_bytes = 64 << 10;
    c
}

fn payload(seg: u64, entry: u64, len: usize) -> Bytes {
    let mut v = format!("{seg}:{entry}:").into_bytes();
    v.resize(len.max(v.len()), (seg * 31 + entry) as u8);
    Bytes::from(v)
}

/// Appends `n` entries to `seg`, waiting for each group to be durable.
fn fill(store: &SegmentStore, seg: u64, n: u64, len: usize) {
    let cs: Vec<_> = (0..n)
        .map(|e| store.append_blocking(seg, payload(seg, e, len)).unwrap())
        .collect();
    for (e, c) in cs.into_iter().enumerate() {
        assert_eq!(c.wait().unwrap(), e as u64);
    }
}

#[test]
fn trash_a_crash_left_is_deleted_at_open_and_the_entries_stay() {
    let dir = tempfile::tempdir().unwrap();
    let seg;
    {
        let store = SegmentStore::open(config(dir.path())).unwrap();
        seg = store.create_segment_blocking().unwrap();
        fill(&store, seg, 3, 100);
        store.close().unwrap();
    }
    // A dead file the deleter had shrunk part of when the process died.
    let trash = dir.path().join("trash-0000000042.log");
    std::fs::write(&trash, vec![7u8; 4096]).unwrap();
    let store = SegmentStore::open(config(dir.path())).unwrap();
    assert!(!trash.exists());
    assert_eq!(store.read(seg, 2).unwrap(), payload(seg, 2, 100));
}

#[test]
fn entries_survive_a_clean_reopen_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let store = SegmentStore::open(config(dir.path())).unwrap();
        a = store.create_segment_blocking().unwrap();
        b = store.create_segment_blocking().unwrap();
        // Interleave two segments across several journal files.
        for e in 0..400 {
            store
                .append_blocking(a, payload(a, e, 3000))
                .unwrap()
                .wait()
                .unwrap();
            store
                .append_blocking(b, payload(b, e, 100))
                .unwrap()
                .wait()
                .unwrap();
        }
        assert!(store.stats().journal_files > 1);
        store.close().unwrap();
    }
    let store = SegmentStore::open(config(dir.path())).unwrap();
    assert_eq!(store.segment(a).unwrap().entries, 400);
    for e in 0..400 {
        assert_eq!(store.read(a, e).unwrap(), payload(a, e, 3000));
        assert_eq!(store.read(b, e).unwrap(), payload(b, e, 100));
    }
    assert!(matches!(
        store.read(a, 400),
        Err(StorageError::NoSuchEntry { .. })
    ));
    // New segment ids never reuse old ones.
    let c = store.create_segment_blocking().unwrap();
    assert!(c > b);
    store.close().unwrap();
}

#[test]
fn group_commit_covers_many_appends_with_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(config(dir.path())).unwrap();
    let seg = store.create_segment_blocking().unwrap();
    let before = store.stats().fsyncs;
    // Enqueue 2000 appends before waiting on any: they must share fsyncs.
    let cs: Vec<_> = (0..2000)
        .map(|e| store.append_blocking(seg, payload(seg, e, 100)).unwrap())
        .collect();
    for c in cs {
        c.wait().unwrap();
    }
    let fsyncs = store.stats().fsyncs - before;
    assert!(fsyncs < 1000, "2000 queued appends took {fsyncs} fsyncs");
    store.close().unwrap();
}

#[test]
fn sealed_segments_refuse_appends_and_report_their_count() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SegmentStore::open(config(dir.path())).unwrap();
        let seg = store.create_segment().await.unwrap();
        store
            .append(seg, Bytes::from_static(b"x"))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(store.seal(seg).await.unwrap(), 1);
        assert_eq!(
            store.seal(seg).await.unwrap(),
            1,
            "sealing twice is idempotent"
        );
        let err = store
            .append(seg, Bytes::from_static(b"y"))
            .await
            .unwrap()
            .await;
        assert!(matches!(err, Err(StorageError::SegmentSealed(s)) if s == seg));
        let err = store
            .append(seg + 100, Bytes::from_static(b"y"))
            .await
            .unwrap()
            .await;
        assert!(matches!(err, Err(StorageError::NoSuchSegment(_))));
        let big = Bytes::from(vec![0u8; (64 << 10) + 1]);
        let seg2 = store.create_segment().await.unwrap();
        let err = store.append(seg2, big).await.unwrap().await;
        assert!(matches!(err, Err(StorageError::EntryTooLarge { .. })));
        tokio::task::spawn_blocking(move || store.close())
            .await
            .unwrap()
            .unwrap();
    });
    let store = SegmentStore::open(config(dir.path())).unwrap();
    assert!(store.segments().len() == 2);
    let info = store
        .segments()
        .into_iter()
        .map(|s| store.segment(s).unwrap())
        .find(|i| i.sealed)
        .unwrap();
    assert_eq!(info.entries, 1);
    store.close().unwrap();
}

#[test]
fn deleting_segments_gives_disk_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.recycle_files = 0; // every dead file goes back to the file system
    let store = SegmentStore::open(cfg).unwrap();
    let old = store.create_segment_blocking().unwrap();
    fill(&store, old, 2000, 2000); // ~4 MB: several 1 MiB files
    let keep = store.create_segment_blocking().unwrap();
    fill(&store, keep, 10, 100);
    let used = store.disk_usage_bytes();
    store.delete_segment_blocking(old).unwrap();
    // GC removes the dead files (unless the journal's reclaim at a roll,
    // which may run meanwhile, already did).
    store.gc().unwrap();
    assert!(store.disk_usage_bytes() < used / 2);
    for e in 0..10 {
        assert_eq!(store.read(keep, e).unwrap(), payload(keep, e, 100));
    }
    assert!(matches!(
        store.read(old, 0),
        Err(StorageError::NoSuchSegment(_))
    ));
    store.close().unwrap();
    // The removal is durable and consistent after a reopen.
    let store = SegmentStore::open(config(dir.path())).unwrap();
    assert_eq!(store.segments(), vec![keep]);
    assert_eq!(store.read(keep, 9).unwrap(), payload(keep, 9, 100));
    store.close().unwrap();
}

/// Journal files in `dir` (recycled spares not counted), oldest first.
fn journal_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.ends_with(".log") && !n.starts_with("spare-"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_journal_reclaims_dead_files_when_it_starts_a_new_one_without_a_gc_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.recycle_files = 0;
    let store = SegmentStore::open(cfg).unwrap();
    let old = store.create_segment_blocking().unwrap();
    // ~4 MB: several 1 MiB files. All but the active file (the next
    // segment's entries go there too) and the one made ahead of need hold
    // `old`'s entries only.
    fill(&store, old, 2000, 2000);
    let mut only_old = journal_files(dir.path());
    only_old.truncate(only_old.len().saturating_sub(2));
    assert!(only_old.len() >= 2, "{only_old:?}");
    store.delete_segment_blocking(old).unwrap();
    // Never calling `gc`: the journal's rolls while `new` is written
    // reclaim them.
    let new = store.create_segment_blocking().unwrap();
    fill(&store, new, 3000, 2000);
    let left: Vec<_> = journal_files(dir.path())
        .into_iter()
        .filter(|f| only_old.contains(f))
        .collect();
    assert!(left.is_empty(), "dead journal files left: {left:?}");
    for e in [0, 2999] {
        assert_eq!(store.read(new, e).unwrap(), payload(new, e, 2000));
    }
    store.close().unwrap();
}

#[test]
fn compaction_moves_live_entries_out_of_mostly_dead_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.recycle_files = 0;
    let (store, live) = mostly_dead_files(cfg);
    let used = store.disk_usage_bytes();
    let first = store.gc().unwrap();
    assert!(first.entries_moved > 0, "{first:?}");
    // Their files, now dead, go (by this pass or the journal's reclaim at
    // a roll of the compaction's writes).
    store.gc().unwrap();
    assert!(store.disk_usage_bytes() < used, "disk usage did not fall");
    for e in 0..1500 {
        assert_eq!(store.read(live, e).unwrap(), payload(live, e, 200));
    }
    store.close().unwrap();
    let store = SegmentStore::open(config(dir.path())).unwrap();
    for e in 0..1500 {
        assert_eq!(store.read(live, e).unwrap(), payload(live, e, 200));
    }
    store.close().unwrap();
}

/// A store whose files hold ~10% live entries (interleaved with a deleted segment's): GC compacts them.
fn mostly_dead_files(cfg: StoreConfig) -> (SegmentStore, u64) {
    let store = SegmentStore::open(cfg).unwrap();
    let dead = store.create_segment_blocking().unwrap();
    let live = store.create_segment_blocking().unwrap();
    for e in 0..1500 {
        for i in 0..9 {
            store
                .append_blocking(dead, payload(dead, e * 9 + i, 200))
                .unwrap();
        }
        store
            .append_blocking(live, payload(live, e, 200))
            .unwrap()
            .wait()
            .unwrap();
    }
    store.delete_segment_blocking(dead).unwrap();
    (store, live)
}

#[test]
fn compaction_is_paced_to_gc_max_bytes_per_sec() {
    let rate = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.recycle_files = 0;
    cfg.gc_max_bytes_per_sec = rate;
    let (store, live) = mostly_dead_files(cfg);
    let started = std::time::Instant::now();
    let report = store.gc().unwrap();
    let took = started.elapsed();
    assert!(report.bytes_moved > 200 << 10, "{report:?}");
    // Sleeps never end early: the pass cannot be faster than the rate allows
    // (less the burst of a tenth of a second and the last record).
    let floor = (report.bytes_moved - rate / 10 - 512) as f64 / rate as f64;
    assert!(
        took.as_secs_f64() >= floor,
        "moved {} bytes in {took:?}, at most {rate} B/s allows {floor} s",
        report.bytes_moved
    );
    assert!(report.throttled > std::time::Duration::ZERO);
    for e in 0..1500 {
        assert_eq!(store.read(live, e).unwrap(), payload(live, e, 200));
    }
    store.close().unwrap();

    // 0: unlimited.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.recycle_files = 0;
    cfg.gc_max_bytes_per_sec = 0;
    let (store, _) = mostly_dead_files(cfg);
    let report = store.gc().unwrap();
    assert!(report.bytes_moved > 200 << 10, "{report:?}");
    assert_eq!(report.throttled, std::time::Duration::ZERO);
    store.close().unwrap();
}

/// The newest journal file holding records (the one a crash would leave unsealed;
/// a file created ahead of need is still empty).
fn newest_log(dir: &Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "log")
                && std::fs::read(p).unwrap().get(..4) == Some(&b"KNLG"[..])
        })
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

/// Writes entries and leaves without a clean close (as a crash would: no final checkpoint).
fn write_and_abandon(dir: &Path, seg_entries: u64, len: usize) -> u64 {
    let store = SegmentStore::open(config(dir)).unwrap();
    let seg = store.create_segment_blocking().unwrap();
    fill(&store, seg, seg_entries, len);
    store.abandon().unwrap(); // no close: the journal's tail stays un-checkpointed
    seg
}

#[test]
fn a_torn_tail_is_truncated_and_everything_before_it_survives() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_and_abandon(dir.path(), 20, 500);
    let log = newest_log(dir.path());
    // Tear the last record: overwrite its second half with garbage.
    let rec = kilonova_storage::record::encoded_len(500) as u64;
    let f = OpenOptions::new().write(true).open(&log).unwrap();
    let last_start = 19 * rec + kilonova_storage::record::encoded_len(0) as u64; // after the Create record
    f.write_all_at(&[0xAB; 300], last_start + 200).unwrap();
    drop(f);
    let store = SegmentStore::open(config(dir.path())).unwrap();
    let info = store.segment(seg).unwrap();
    assert_eq!(info.entries, 19, "the torn entry is dropped, the rest kept");
    for e in 0..19 {
        assert_eq!(store.read(seg, e).unwrap(), payload(seg, e, 500));
    }
    // The store keeps working after the truncation.
    assert_eq!(
        store
            .append_blocking(seg, payload(seg, 19, 500))
            .unwrap()
            .wait()
            .unwrap(),
        19
    );
    store.close().unwrap();
    let store = SegmentStore::open(config(dir.path())).unwrap();
    assert_eq!(store.read(seg, 19).unwrap(), payload(seg, 19, 500));
    store.close().unwrap();
}

#[test]
fn mid_file_corruption_is_reported_for_that_range_and_the_rest_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let store = SegmentStore::open(config(dir.path())).unwrap();
        a = store.create_segment_blocking().unwrap();
        b = store.create_segment_blocking().unwrap();
        for e in 0..10 {
            // One group per pair, so later records prove earlier ones durable.
            store
                .append_blocking(a, payload(a, e, 400))
                .unwrap()
                .wait()
                .unwrap();
            store
                .append_blocking(b, payload(b, e, 400))
                .unwrap()
                .wait()
                .unwrap();
        }
        store.abandon().unwrap();
    }
    let log = newest_log(dir.path());
    let rec = kilonova_storage::record::encoded_len(400) as u64;
    let start = 2 * kilonova_storage::record::encoded_len(0) as u64; // two Create records
                                                                     // Flip bytes inside the payload of a's entry 3 (record index 6).
    let f = OpenOptions::new().write(true).open(&log).unwrap();
    f.write_all_at(b"CORRUPTION", start + 6 * rec + 100)
        .unwrap();
    drop(f);
    let store = SegmentStore::open(config(dir.path())).unwrap();
    match store.read(a, 3) {
        Err(StorageError::Corrupt { segment, entry, .. }) => assert_eq!((segment, entry), (a, 3)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    for e in (0..10).filter(|e| *e != 3) {
        assert_eq!(store.read(a, e).unwrap(), payload(a, e, 400));
    }
    for e in 0..10 {
        assert_eq!(store.read(b, e).unwrap(), payload(b, e, 400));
    }
    store.close().unwrap();
}

#[test]
fn corruption_after_a_checkpoint_is_caught_by_the_read_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let seg;
    {
        let store = SegmentStore::open(config(dir.path())).unwrap();
        seg = store.create_segment_blocking().unwrap();
        fill(&store, seg, 5, 400);
        store.close().unwrap();
    }
    let log = newest_log(dir.path());
    let rec = kilonova_storage::record::encoded_len(400) as u64;
    let start = kilonova_storage::record::encoded_len(0) as u64;
    let f = OpenOptions::new().write(true).open(&log).unwrap();
    f.write_all_at(b"X", start + 2 * rec + 60).unwrap();
    drop(f);
    let store = SegmentStore::open(config(dir.path())).unwrap();
    assert!(matches!(
        store.read(seg, 2),
        Err(StorageError::Corrupt { .. })
    ));
    assert_eq!(store.read(seg, 1).unwrap(), payload(seg, 1, 400));
    assert_eq!(store.read(seg, 3).unwrap(), payload(seg, 3, 400));
    store.close().unwrap();
}

#[test]
fn recycled_journal_files_are_reused_and_their_stale_records_never_resurface() {
    const FRESH: u64 = 2100;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.recycle_files = 8;
    let (old, fresh);
    {
        let store = SegmentStore::open(cfg.clone()).unwrap();
        old = store.create_segment_blocking().unwrap();
        fill(&store, old, 1500, 2000); // ~3 MB: several files
        store.delete_segment_blocking(old).unwrap();
        // Recycled, by this pass or already by the journal at a roll.
        let report = store.gc().unwrap();
        assert_eq!(report.files_removed, 0);
        let spares = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_str()
                        .unwrap()
                        .starts_with("spare-")
                })
                .count()
        };
        let before = spares();
        assert!(before >= 2, "{before} spares");
        // New appends reuse the spares (full of the old segment's valid-looking
        // records). ~3 MB: at least two rolls, so the writer has moved into a
        // file prepared after the GC even if the one prepared before it was new.
        fresh = store.create_segment_blocking().unwrap();
        fill(&store, fresh, FRESH, 1500);
        assert!(spares() < before, "no spare was reused");
        store.abandon().unwrap(); // crash: the reused file's tail is replayed at open
    }
    let store = SegmentStore::open(cfg).unwrap();
    assert_eq!(
        store.segments(),
        vec![fresh],
        "the deleted segment must not come back"
    );
    assert_eq!(store.segment(fresh).unwrap().entries, FRESH);
    for e in 0..FRESH {
        assert_eq!(store.read(fresh, e).unwrap(), payload(fresh, e, 1500));
    }
    store.close().unwrap();
}

#[test]
fn recovery_replays_only_what_follows_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let seg;
    {
        let store = SegmentStore::open(config(dir.path())).unwrap();
        seg = store.create_segment_blocking().unwrap();
        fill(&store, seg, 4000, 2000); // ~8 MB: eight 1 MiB journal files
        assert!(store.stats().journal_files >= 8);
        // The checkpointer seals in the background and may lag by several
        // files on a busy machine; the property is about what it had written.
        store.wait_checkpointed(Duration::from_secs(30));
        store.abandon().unwrap(); // crash: no final checkpoint
    }
    let store = SegmentStore::open(config(dir.path())).unwrap();
    let stats = store.stats();
    // The checkpointed files were loaded from their indexes. Scanned: the file
    // being written and the one prepared after it.
    assert!(stats.recovery_replayed_files <= 2, "{stats:?}");
    assert!(stats.recovery_replayed_bytes <= 2 << 20, "{stats:?}");
    assert_eq!(store.segment(seg).unwrap().entries, 4000);
    for e in (0..4000).step_by(97) {
        assert_eq!(store.read(seg, e).unwrap(), payload(seg, e, 2000));
    }
    store.close().unwrap();
    // After a clean close only the (empty) prepared file remains to scan.
    let store = SegmentStore::open(config(dir.path())).unwrap();
    assert!(
        store.stats().recovery_replayed_files <= 1,
        "{:?}",
        store.stats()
    );
    store.close().unwrap();
}

#[test]
fn raised_segment_ids_stay_raised_across_a_reopen_and_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let floor = 7 << 40;
    let raised;
    {
        let store = SegmentStore::open(config(dir.path())).unwrap();
        let low = store.create_segment_blocking().unwrap();
        assert!(low < floor);
        store.raise_segment_ids(floor);
        raised = store.create_segment_blocking().unwrap();
        assert_eq!(raised, floor);
        // A lower floor changes nothing.
        store.raise_segment_ids(5);
        assert_eq!(store.create_segment_blocking().unwrap(), floor + 1);
        // Dropped without a clean close: the ids come back from the journal.
    }
    let store = SegmentStore::open(config(dir.path())).unwrap();
    assert!(store.segment(raised).is_some());
    assert_eq!(store.create_segment_blocking().unwrap(), floor + 2);
}

/// How many of `path`'s extents are allocated but unwritten, as `filefrag
/// -v` lists them; `None` where it cannot tell (no `filefrag`).
fn unwritten_extents(path: &Path) -> Option<usize> {
    let out = std::process::Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("unwritten"))
            .count()
    })
}

#[test]
fn journal_files_made_ahead_of_need_are_written_with_zeros_unless_the_writer_fills_them_fast() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    std::fs::write(&probe, [0u8; 4096]).unwrap();
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&probe);
    if direct.is_err() || unwritten_extents(&probe).is_none() {
        eprintln!("no O_DIRECT or no filefrag here: journal files are only allocated");
        return;
    }
    std::fs::remove_file(&probe).unwrap();
    // ~3 MB: the first file (made when the store opened) and those made at
    // each roll, every file lasting far less than a second.
    let files_after = |zero_fill_after: Option<Duration>, sub: &str| {
        let mut cfg = config(&dir.path().join(sub));
        cfg.recycle_files = 0;
        cfg.zero_fill_after = zero_fill_after;
        let store = SegmentStore::open(cfg).unwrap();
        let seg = store.create_segment_blocking().unwrap();
        fill(&store, seg, 1500, 2000);
        store.close().unwrap();
        let files = journal_files(&dir.path().join(sub));
        assert!(files.len() >= 3, "{files:?}");
        files
            .iter()
            .map(|f| unwritten_extents(&dir.path().join(sub).join(f)).unwrap())
            .collect::<Vec<usize>>()
    };
    // Every file written with zeros when each may be.
    let always = files_after(Some(Duration::ZERO), "always");
    assert!(
        always.iter().all(|u| *u == 0),
        "unwritten extents per file: {always:?}"
    );
    // The default: the first file written, the next ones (the writer fills
    // them fast) only allocated.
    let fast = files_after(Some(Duration::from_secs(10)), "fast");
    assert_eq!(fast[0], 0, "unwritten extents per file: {fast:?}");
    assert!(
        fast[1..].iter().any(|u| *u > 0),
        "unwritten extents per file: {fast:?}"
    );
    // Never: the first file only allocated too.
    let never = files_after(None, "never");
    assert!(never[0] > 0, "unwritten extents per file: {never:?}");
}
