//! Fuzzing on stable Rust for every decoder that sees network or disk bytes:
//! Pulsar frames, payloads, batches and protobuf metadata, journal records,
//! checkpoint and state files, store recovery, tokens and the admin API's
//! request bodies.
//!
//! Main types: [`targets::Target`] (a decoder with its input generator and
//! invariants), [`driver::Fuzzer`] (corpus, mutation, panic capture,
//! allocation limits), [`mutate::Input`] (bytes with their length fields).
//!
//! Inputs are valid encodings built by structured generation, then mutated:
//! bit flips, truncations, splices and length-field lies, with checksums
//! sometimes recomputed so the mutation reaches the decoding behind them.
//! Every input is a function of (seed, iteration), so a failure prints the
//! command that replays it. Each run counts the allocations of the thread
//! running it: a decoder must not allocate beyond its declared caps plus what
//! the input really holds, whatever its length fields claim.
//!
//! `cargo test -p kilonova-fuzz` runs every target briefly
//! (tests/smoke.rs); `scripts/fuzz --seconds 600` runs them at length.

pub mod alloc;
pub mod driver;
pub mod mutate;
pub mod rng;
pub mod targets;
