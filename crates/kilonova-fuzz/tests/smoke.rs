//! Every fuzz target for a short run with a fixed seed (so `cargo test` and
//! `./scripts/test` run them; `scripts/fuzz` runs them at length). A failure
//! prints the command that replays it. `KILONOVA_FUZZ_SEED` picks another seed.

use std::time::Duration;

use kilonova_fuzz::driver::{Budget, Fuzzer};
use kilonova_fuzz::targets;

fn smoke(name: &str, inputs: u64) {
    let seed = std::env::var("KILONOVA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_250_101);
    let target = targets::make(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut fuzzer = Fuzzer::new(target, seed);
    let out = fuzzer.run(0, Budget::iterations(inputs), Duration::MAX, &mut |_| {});
    if let Some(f) = out.failure {
        panic!("{f}");
    }
    assert_eq!(out.iterations, inputs);
}

#[test]
fn frame() {
    smoke("frame", 20_000);
}

#[test]
fn payload() {
    smoke("payload", 20_000);
}

#[test]
fn batch() {
    smoke("batch", 20_000);
}

#[test]
fn metadata() {
    smoke("metadata", 20_000);
}

#[test]
fn record() {
    smoke("record", 20_000);
}

#[test]
fn checkpoint() {
    smoke("checkpoint", 20_000);
}

#[test]
fn log_state() {
    smoke("log-state", 20_000);
}

#[test]
fn recovery() {
    smoke("recovery", 2_000);
}

#[test]
fn compression() {
    smoke("compression", 20_000);
}

#[test]
fn token() {
    smoke("token", 2_000);
}

#[test]
fn admin() {
    smoke("admin", 1_000);
}

#[test]
fn every_target_has_a_smoke_test() {
    let here = include_str!("smoke.rs");
    for name in targets::NAMES {
        assert!(
            here.contains(&format!("smoke(\"{name}\"")),
            "no smoke test for {name}"
        );
    }
}
