//! A full disk: appends fail with a clear error, nothing is corrupted, and appends
//! succeed again once space is freed. Uses a real 4 MiB tmpfs (needs root to mount;
//! `scripts/test` sets KILONOVA_REQUIRE_TMPFS=1 when it runs as root so the test
//! cannot silently skip there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use kilonova_storage::{SegmentStore, StorageError, StoreConfig, StoreHealth, StoreTrouble};

/// The tests of this file run one at a time. Each forks `mount` and
/// `umount`, and a forked child shares the parent's open files until it
/// execs — the lock file of a store among them: a test closing a store and
/// opening it again at once could find its own released lock still held by
/// another test's child (flock belongs to the open file, not the process).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A mounted tmpfs, and this test's turn (see [`ONE_AT_A_TIME`]), held
/// until the tmpfs is unmounted.
struct Tmpfs(
    tempfile::TempDir,
    #[allow(dead_code)] MutexGuard<'static, ()>,
);

impl Tmpfs {
    fn mount(bytes: u64) -> Option<Tmpfs> {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir, turn))
    }

    /// A 4 MiB tmpfs, or `None` (the test skips) where mounting needs root we lack.
    fn mount_4_mib() -> Option<Tmpfs> {
        let fs = Tmpfs::mount(4 << 20);
        if fs.is_none() {
            assert!(
                std::env::var_os("KILONOVA_REQUIRE_TMPFS").is_none(),
                "could not mount a tmpfs although KILONOVA_REQUIRE_TMPFS is set"
            );
            eprintln!("SKIPPED: mounting a tmpfs needs root");
        }
        fs
    }

    /// A store in it with 1 MiB journal files.
    fn store_config(&self) -> StoreConfig {
        let mut cfg = StoreConfig::new(self.0.path().join("store"));
        cfg.log_file_bytes = 1 << 20;
        cfg.max_entry_bytes = 64 << 10;
        cfg
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn data(seg: u64, e: u64) -> Bytes {
    Bytes::from(vec![(seg as u8) ^ (e as u8); 20_000])
}

#[test]
fn appends_fail_cleanly_when_the_disk_is_full_and_resume_after_space_frees() {
    let Some(fs) = Tmpfs::mount_4_mib() else {
        return;
    };
    let cfg = fs.store_config();
    let store = SegmentStore::open(cfg.clone()).unwrap();
    let keep = store.create_segment_blocking().unwrap();
    let nk = 10;
    for e in 0..nk {
        assert_eq!(
            store
                .append_blocking(keep, data(keep, e))
                .unwrap()
                .wait()
                .unwrap(),
            e
        );
    }
    let filler = store.create_segment_blocking().unwrap();
    let mut nf = 0u64;
    let err = loop {
        match store
            .append_blocking(filler, data(filler, nf))
            .unwrap()
            .wait()
        {
            Ok(e) => assert_eq!(e, nf),
            Err(e) => break e,
        }
        nf += 1;
        assert!(nf < 10_000, "the disk never filled");
    };
    assert!(matches!(err, StorageError::DiskFull { .. }), "got {err:?}");
    assert!(err.to_string().contains("disk full"), "{err}");
    // Still full: the next append fails the same way, not with a panic or corruption.
    let again = store.append_blocking(keep, data(keep, nk)).unwrap().wait();
    assert!(
        matches!(again, Err(StorageError::DiskFull { .. })),
        "{again:?}"
    );
    for e in 0..nk {
        assert_eq!(store.read(keep, e).unwrap(), data(keep, e));
    }
    for e in 0..nf {
        assert_eq!(store.read(filler, e).unwrap(), data(filler, e));
    }
    // Free space: deleting works on a full disk (the control reserve), then
    // GC (or the journal's own reclaim at the delete's roll, which may come
    // first: the appends below show the space is back either way).
    store.delete_segment_blocking(filler).unwrap();
    store.gc().unwrap();
    // A segment whose append failed takes no more (its owner counted the
    // failed entry): appends continue in a new segment.
    let refused = store.append_blocking(keep, data(keep, nk)).unwrap().wait();
    assert!(
        matches!(refused, Err(StorageError::SegmentFenced(s)) if s == keep),
        "{refused:?}"
    );
    let (target, start) = (store.create_segment_blocking().unwrap(), 0);
    for e in start..start + 20 {
        assert_eq!(
            store
                .append_blocking(target, data(target, e))
                .unwrap()
                .wait()
                .unwrap(),
            e
        );
    }
    store.close().unwrap();
    let store = SegmentStore::open(cfg).unwrap();
    for e in 0..nk {
        assert_eq!(store.read(keep, e).unwrap(), data(keep, e));
    }
    for e in start..start + 20 {
        assert_eq!(store.read(target, e).unwrap(), data(target, e));
    }
    store.close().unwrap();
}

/// Writes `path` until the file system refuses: the disk is full to the last block.
fn fill_to_the_last_block(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x55u8; 4096];
    loop {
        match f.write_all(&block).and_then(|()| f.sync_data()) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
                break;
            }
        }
    }
    // Partial blocks too.
    while f.write(&[1u8; 1]).is_ok_and(|n| n == 1) && f.sync_data().is_ok() {}
}

#[test]
fn a_store_reopens_on_a_disk_full_to_the_last_block_serves_reads_deletes_and_appends_once_space_is_freed(
) {
    let Some(fs) = Tmpfs::mount_4_mib() else {
        return;
    };
    let cfg = fs.store_config();
    let store = SegmentStore::open(cfg.clone()).unwrap();
    assert!(store.health().is_ok());
    let keep = store.create_segment_blocking().unwrap();
    let nk = 10;
    for e in 0..nk {
        store
            .append_blocking(keep, data(keep, e))
            .unwrap()
            .wait()
            .unwrap();
    }
    let filler = store.create_segment_blocking().unwrap();
    let mut nf = 0u64;
    while store
        .append_blocking(filler, data(filler, nf))
        .unwrap()
        .wait()
        .is_ok()
    {
        nf += 1;
        assert!(nf < 10_000, "the disk never filled");
    }
    let StoreHealth::Failing(failure) = store.health() else {
        panic!("a failed append leaves the store healthy");
    };
    assert_eq!(failure.trouble, StoreTrouble::DiskFull, "{failure:?}");
    // Whatever the store left free, something else takes.
    fill_to_the_last_block(&fs.0.path().join("other"));
    store.close().unwrap();

    let store = SegmentStore::open(cfg.clone()).expect("a store opens on a full disk");
    for e in 0..nk {
        assert_eq!(store.read(keep, e).unwrap(), data(keep, e));
    }
    for e in 0..nf {
        assert_eq!(store.read(filler, e).unwrap(), data(filler, e));
    }
    let refused = store.append_blocking(keep, data(keep, nk)).unwrap().wait();
    assert!(
        matches!(refused, Err(StorageError::DiskFull { .. })),
        "{refused:?}"
    );
    let StoreHealth::Failing(failure) = store.health() else {
        panic!("appends fail but the store says it is healthy");
    };
    assert_eq!(failure.trouble, StoreTrouble::DiskFull, "{failure:?}");
    assert!(failure.detail.contains("disk full"), "{failure:?}");
    // Deleting is how space is freed, and it works on the full disk (the
    // appends below show the space is back, reclaimed by GC or already by
    // the journal at the delete's roll).
    store.delete_segment_blocking(filler).unwrap();
    store.gc().unwrap();
    // `keep`'s append failed, so it is fenced (its owner had counted the
    // entry): appends go on in a new segment.
    let next = store.create_segment_blocking().unwrap();
    for e in 0..20 {
        let c = store.append_blocking(next, data(next, e)).unwrap();
        assert_eq!(c.wait().unwrap(), e);
    }
    assert!(store.health().is_ok(), "{:?}", store.health());
    store.close().unwrap();
    let store = SegmentStore::open(cfg).unwrap();
    for e in 0..nk {
        assert_eq!(store.read(keep, e).unwrap(), data(keep, e));
    }
    for e in 0..20 {
        assert_eq!(store.read(next, e).unwrap(), data(next, e));
    }
    assert!(store.segment(filler).is_none());
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_opens_read_only_on_a_full_disk_and_can_be_drained_and_deleted() {
    use kilonova_storage::{DirStateStore, EntryCache, InitialPosition, ManagedLog, StateStore};
    use std::sync::Arc;

    let Some(fs) = Tmpfs::mount_4_mib() else {
        return;
    };
    let cfg = fs.store_config();
    let state: Arc<dyn StateStore> =
        Arc::new(DirStateStore::open(fs.0.path().join("state")).unwrap());
    let cache = Arc::new(EntryCache::new(1 << 20));
    let open = |store: &SegmentStore| {
        ManagedLog::open(
            1,
            store.clone(),
            state.clone(),
            cache.clone(),
            Default::default(),
            0,
        )
    };
    let store = SegmentStore::open(cfg.clone()).unwrap();
    let mut log = open(&store).await.unwrap();
    log.open_cursor("sub", InitialPosition::Earliest, true)
        .unwrap();
    let mut n = 0u64;
    loop {
        let appended = match log.append(data(1, n), 1, n).await {
            Ok(c) => c.await,
            Err(e) => Err(e),
        };
        match appended {
            Ok(_) => n += 1,
            Err(StorageError::DiskFull { .. }) => break,
            Err(e) => panic!("append {n}: {e}"),
        }
        assert!(n < 10_000, "the disk never filled");
    }
    assert!(n > 10, "only {n} entries fit");
    log.close().unwrap();
    fill_to_the_last_block(&fs.0.path().join("other"));
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.close())
        .await
        .unwrap()
        .unwrap();

    let store = SegmentStore::open(cfg).unwrap();
    let mut log = open(&store).await.expect("a log opens on a full disk");
    // Drained: every entry reads back, and acknowledging works.
    let got = log.read_next("sub", 100_000).unwrap();
    assert_eq!(got.len() as u64, n);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, e)| e.data == data(1, i as u64)));
    log.ack_cumulative("sub", got.last().unwrap().position)
        .unwrap();
    let refused = match log.append(data(1, n), 1, n).await {
        Ok(c) => c.await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        matches!(refused, Err(StorageError::DiskFull { .. })),
        "{refused:?}"
    );
    assert!(!store.health().is_ok());
    // Deleted: the space comes back.
    log.delete().await.unwrap();
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.gc())
        .await
        .unwrap()
        .unwrap();
    assert!(store.segments().is_empty(), "{:?}", store.segments());
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        let seg = s.create_segment_blocking().unwrap();
        for e in 0..60 {
            let done = s.append_blocking(seg, data(seg, e)).unwrap().wait();
            assert_eq!(done.as_ref().ok(), Some(&e), "after the delete: {done:?}");
        }
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || store.close())
        .await
        .unwrap()
        .unwrap();
}

/// Writes six times the file system's size through the store, deleting each
/// segment once written (what retention does to consumed topics) and never
/// calling `gc`: the journal reclaims the dead files itself (at each roll,
/// and on a full disk before refusing), so every append succeeds.
#[test]
fn dead_journal_files_are_reclaimed_without_a_gc_pass() {
    let Some(fs) = Tmpfs::mount_4_mib() else {
        return;
    };
    let store = SegmentStore::open(fs.store_config()).unwrap();
    for round in 0..30 {
        let seg = store.create_segment_blocking().unwrap();
        for e in 0..40 {
            let done = store.append_blocking(seg, data(seg, e)).unwrap().wait();
            assert_eq!(
                done.as_ref().ok(),
                Some(&e),
                "round {round}, entry {e}: {done:?}"
            );
        }
        assert_eq!(store.read(seg, 39).unwrap(), data(seg, 39));
        store.delete_segment_blocking(seg).unwrap();
    }
    assert!(store.health().is_ok(), "{:?}", store.health());
    store.close().unwrap();
}
