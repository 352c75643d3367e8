//! Start-up time and memory of a segment store holding a lot of journal.
//!
//! ```text
//! recovery_bench write DIR GIB [ENTRY_BYTES]   fill a store, then stop it as a crash would
//! recovery_bench open DIR [--replay-all] [--cold]
//! ```
//!
//! `open` times `SegmentStore::open` and prints the process's peak RSS.
//! `--replay-all` first removes every journal index and the checkpoint, so
//! recovery scans every journal file (the worst case: what a store whose
//! indexes were lost costs); `--cold` first drops the journal files from the
//! page cache (`posix_fadvise(DONTNEED)`), so the scan reads the disk.
//! The figures are in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use kilonova_storage::{SegmentStore, StoreConfig};

const SEGMENTS: u64 = 16;
const IN_FLIGHT: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: recovery_bench write DIR GIB [ENTRY_BYTES] | open DIR [--replay-all] [--cold]";
    match args.get(1).map(String::as_str) {
        Some("write") => {
            let dir = PathBuf::from(args.get(2).expect(usage));
            let gib: f64 = args.get(3).expect(usage).parse().expect("GIB is a number");
            let entry: usize = args
                .get(4)
                .map_or(4096, |s| s.parse().expect("ENTRY_BYTES"));
            write(&dir, (gib * (1u64 << 30) as f64) as u64, entry);
        }
        Some("open") => {
            let dir = PathBuf::from(args.get(2).expect(usage));
            let flags = &args[3..];
            open(
                &dir,
                flags.iter().any(|f| f == "--replay-all"),
                flags.iter().any(|f| f == "--cold"),
            );
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

fn write(dir: &Path, bytes: u64, entry: usize) {
    let store = SegmentStore::open(StoreConfig::new(dir)).unwrap();
    let segments: Vec<u64> = (0..SEGMENTS)
        .map(|_| store.create_segment_blocking().unwrap())
        .collect();
    let data = Bytes::from(vec![0xA5u8; entry]);
    let (mut written, mut i) = (0u64, 0usize);
    let mut in_flight = VecDeque::new();
    let started = Instant::now();
    while written < bytes {
        let seg = segments[i % segments.len()];
        in_flight.push_back(store.append_blocking(seg, data.clone()).unwrap());
        if in_flight.len() >= IN_FLIGHT {
            in_flight.pop_front().unwrap().wait().unwrap();
        }
        written += entry as u64;
        i += 1;
    }
    for c in in_flight {
        c.wait().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    store.wait_checkpointed(std::time::Duration::from_secs(60));
    // A crash: the last journal file has no index and no checkpoint covers it.
    store.abandon().unwrap();
    println!(
        "wrote {i} entries of {entry} bytes ({:.2} GiB) in {secs:.1} s",
        written as f64 / (1u64 << 30) as f64
    );
}

fn open(dir: &Path, replay_all: bool, cold: bool) {
    let mut journal_bytes = 0u64;
    for ent in std::fs::read_dir(dir).unwrap() {
        let path = ent.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if replay_all && (name.ends_with(".idx") || name == "CHECKPOINT") {
            std::fs::remove_file(&path).unwrap();
        }
        if name.ends_with(".log") {
            let f = std::fs::File::open(&path).unwrap();
            journal_bytes += f.metadata().unwrap().len();
            if cold {
                f.sync_all().unwrap();
                rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            }
        }
    }
    let started = Instant::now();
    let store = SegmentStore::open(StoreConfig::new(dir)).unwrap();
    let elapsed = started.elapsed();
    let stats = store.stats();
    let entries: u64 = store
        .segments()
        .iter()
        .filter_map(|s| store.segment(*s))
        .map(|s| s.entries)
        .sum();
    store.close().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ?");
    println!(
        "open: {:.2} s, {} journal files ({:.2} GiB), replayed {} files ({:.2} GiB), {} segments, {} entries, peak RSS {}",
        elapsed.as_secs_f64(),
        stats.journal_files,
        journal_bytes as f64 / (1u64 << 30) as f64,
        stats.recovery_replayed_files,
        stats.recovery_replayed_bytes as f64 / (1u64 << 30) as f64,
        stats.segments,
        entries,
        peak.trim_start_matches("VmHWM:").trim()
    );
}
