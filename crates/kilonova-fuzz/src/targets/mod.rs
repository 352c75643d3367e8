//! The fuzz targets: one per decoder that sees network or disk bytes.

mod admin;
mod protocol;
mod storage;
mod token;

use crate::mutate::Input;
use crate::rng::Rng;

/// A decoder under test.
pub trait Target {
    fn name(&self) -> &'static str;
    /// A valid input (structured generation), its length fields marked.
    fn generate(&mut self, rng: &mut Rng) -> Input;
    /// Runs one input; a broken invariant panics.
    fn run(&mut self, input: &[u8]);
    /// The most bytes one run may have live at once for an input of this
    /// size: the decoder's declared caps plus what the input really holds.
    fn alloc_limit(&self, input_len: usize) -> usize;
    /// Recomputes checksums after a mutation, so the input reaches the
    /// decoding behind them (applied to half the mutated inputs).
    fn fix_up(&self, _bytes: &mut Vec<u8>) {}
    /// A mutation that knows the format (JSON fields, token parts); false if
    /// it has none for this input.
    fn mutate_structured(&mut self, _rng: &mut Rng, _input: &mut Input) -> bool {
        false
    }
    /// Inputs in a thousand that are freshly generated rather than mutated.
    fn fresh_per_mille(&self) -> u32 {
        100
    }
}

/// Every target, in the order `--target all` runs them.
pub const NAMES: &[&str] = &[
    "frame",
    "payload",
    "batch",
    "metadata",
    "compression",
    "record",
    "checkpoint",
    "log-state",
    "recovery",
    "token",
    "admin",
];

/// The target called `name`.
pub fn make(name: &str) -> anyhow::Result<Box<dyn Target>> {
    Ok(match name {
        "frame" => Box::new(protocol::FrameTarget),
        "payload" => Box::new(protocol::PayloadTarget),
        "batch" => Box::new(protocol::BatchTarget),
        "metadata" => Box::new(protocol::MetadataTarget),
        "compression" => Box::new(protocol::CompressionTarget),
        "record" => Box::new(storage::RecordTarget),
        "checkpoint" => Box::new(storage::SmallFileTarget::checkpoint()),
        "log-state" => Box::new(storage::SmallFileTarget::log_state()),
        "recovery" => Box::new(storage::RecoveryTarget::new()?),
        "token" => Box::new(token::TokenTarget::new()?),
        "admin" => Box::new(admin::AdminTarget::new()?),
        other => anyhow::bail!("no target {other:?}; targets: {}", NAMES.join(", ")),
    })
}

/// A scratch directory on tmpfs when there is one (recovery and the admin
/// target's broker fsync; on tmpfs that costs nothing).
pub(crate) fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("kilonova-fuzz-")
            .tempdir_in(shm)
        {
            return Ok(d);
        }
    }
    tempfile::Builder::new().prefix("kilonova-fuzz-").tempdir()
}
