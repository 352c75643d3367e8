//! The `kilonova` binary: one program for every role. Today: `perf storage`
//! (the storage engine's benchmark). The broker (`standalone`) comes with issue #11.

use clap::{Parser, Subcommand};

mod perf;

#[derive(Parser)]
#[command(
    name = "kilonova",
    version,
    about = "Kilonova messaging and streaming platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks.
    Perf {
        #[command(subcommand)]
        what: perf::PerfCommand,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Perf { what } => perf::run(what),
    }
}
