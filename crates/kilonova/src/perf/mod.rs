//! `kilonova perf …`: benchmarks that print live progress and a final summary.

use clap::Subcommand;

pub mod storage;

#[derive(Subcommand)]
pub enum PerfCommand {
    /// Durable appends straight into the segment store (no broker, no network).
    Storage(storage::StorageArgs),
}

pub fn run(cmd: PerfCommand) -> anyhow::Result<()> {
    match cmd {
        PerfCommand::Storage(args) => storage::run(args),
    }
}
