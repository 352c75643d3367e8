//! Crash safety: a child process appends under load and is SIGKILLed at a random
//! moment; after each reopen every entry whose append had completed must be
//! present and byte-identical, and nothing the store returns may be corrupt.
//!
//! The child is this test binary re-run with `KILONOVA_CRASH_CHILD_DIR` set: it
//! prints `ACK <segment> <entry>` on stdout after each append completes, so the
//! parent knows exactly what was acknowledged before the kill.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kilonova_storage::{SegmentStore, StorageError, StoreConfig};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "KILONOVA_CRASH_CHILD_DIR";
const ROUNDS: usize = 50;
const WRITERS: u64 = 4;

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.log_file_bytes = 1 << 20;
    c.max_entry_bytes = 16 << 10;
    c
}

/// The bytes of `(segment, entry)`: deterministic, of varying length.
fn payload(seg: u64, entry: u64) -> Bytes {
    let h = seg.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ entry.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let len = 1 + (h % 6000) as usize;
    let mut v = Vec::with_capacity(len);
    let mut x = h | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// Runs only as the child: append forever from several threads, report completions.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // not the child: nothing to do
    };
    let store = SegmentStore::open(config(dir.as_ref())).unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut threads = Vec::new();
    for _ in 0..WRITERS {
        let store = store.clone();
        let out = out.clone();
        let seg = store.create_segment_blocking().unwrap();
        threads.push(std::thread::spawn(move || {
            let mut inflight = std::collections::VecDeque::new();
            let mut next = 0u64;
            loop {
                while inflight.len() < 32 {
                    inflight.push_back((
                        next,
                        store.append_blocking(seg, payload(seg, next)).unwrap(),
                    ));
                    next += 1;
                }
                let (e, c) = inflight.pop_front().unwrap();
                assert_eq!(c.wait().unwrap(), e);
                let mut o = out.lock().unwrap();
                writeln!(o, "ACK {seg} {e}").unwrap();
                o.flush().unwrap();
            }
        }));
    }
    {
        let mut o = out.lock().unwrap();
        writeln!(o, "READY").unwrap();
        o.flush().unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn acknowledged_appends_survive_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("KILONOVA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("crash test seed {seed} (set KILONOVA_CRASH_SEED to replay the kill timings)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().unwrap();
    // segment -> acknowledged entry ids
    let mut acked: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut total_acked = 0usize;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // libtest may print "test crash_child ... " on the same line as the first output.
        while !lines.lock().unwrap().iter().any(|l| l.ends_with("READY")) {
            assert!(
                Instant::now() < deadline,
                "round {round}: child never became ready"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("round {round}: child exited early with {status}");
            }
            std::thread::yield_now();
        }
        // Kill at a random moment under load.
        std::thread::sleep(Duration::from_millis(rng.random_range(20..250)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        for line in lines.lock().unwrap().iter() {
            if let Some(rest) = line.find("ACK ").map(|i| &line[i + 4..]) {
                let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
                let (s, e) = (it.next().unwrap(), it.next().unwrap());
                if acked.entry(s).or_default().insert(e) {
                    total_acked += 1;
                }
            }
        }

        let store = SegmentStore::open(config(dir.path())).unwrap();
        for (seg, entries) in &acked {
            let info = store
                .segment(*seg)
                .unwrap_or_else(|| panic!("round {round}: segment {seg} lost"));
            for e in entries {
                assert!(
                    *e < info.entries,
                    "round {round}: acked entry {seg}:{e} missing"
                );
            }
        }
        // Every entry the store has, acknowledged or not, must be intact.
        for seg in store.segments() {
            let n = store.segment(seg).unwrap().entries;
            for e in 0..n {
                match store.read(seg, e) {
                    Ok(b) => assert_eq!(b, payload(seg, e), "round {round}: {seg}:{e} differs"),
                    Err(err @ StorageError::Corrupt { .. }) => panic!("round {round}: {err}"),
                    Err(err) => panic!("round {round}: reading {seg}:{e}: {err}"),
                }
            }
        }
        // Exercise deletion and GC across crashes: drop segments of older rounds.
        if acked.len() > 3 * WRITERS as usize {
            let old: Vec<u64> = acked.keys().take(WRITERS as usize).copied().collect();
            for s in old {
                store.delete_segment_blocking(s).unwrap();
                acked.remove(&s);
            }
            store.gc().unwrap();
        }
        store.close().unwrap();
    }
    assert!(
        total_acked > ROUNDS * 10,
        "too few appends were acknowledged ({total_acked}) for the test to mean anything"
    );
    println!("{ROUNDS} rounds, {total_acked} acknowledged appends verified");
}
