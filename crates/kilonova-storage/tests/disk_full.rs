//! A full disk: appends fail with a clear error, nothing is corrupted, and appends
//! succeed again once space is freed. Uses a real 4 MiB tmpfs (needs root to mount;
//! `scripts/test` sets KILONOVA_REQUIRE_TMPFS=1 when it runs as root so the test
//! cannot silently skip there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use bytes::Bytes;
use kilonova_storage::{SegmentStore, StorageError, StoreConfig};

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
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
    let Some(fs) = Tmpfs::mount(4 << 20) else {
        assert!(
            std::env::var_os("KILONOVA_REQUIRE_TMPFS").is_none(),
            "could not mount a tmpfs although KILONOVA_REQUIRE_TMPFS is set"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let dir = fs.0.path().join("store");
    let mut cfg = StoreConfig::new(&dir);
    cfg.log_file_bytes = 1 << 20;
    cfg.max_entry_bytes = 64 << 10;
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
    // Free space: deleting works on a full disk (the control reserve), then GC.
    store.delete_segment_blocking(filler).unwrap();
    let report = store.gc().unwrap();
    assert!(
        report.files_removed + report.files_recycled > 0,
        "{report:?}"
    );
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
