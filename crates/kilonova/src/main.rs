//! The `kilonova` binary: one program for every role. Today: `standalone` (the
//! broker with embedded storage and metadata) and `perf storage` (the storage
//! engine's benchmark).

use clap::{Parser, Subcommand};

mod perf;
mod standalone;

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
    /// Run a broker with embedded storage and metadata on this machine.
    Standalone(standalone::StandaloneArgs),
    /// Benchmarks.
    Perf {
        #[command(subcommand)]
        what: perf::PerfCommand,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Servers log their lifecycle; tools stay quiet unless asked (RUST_LOG).
    let default_level = match cli.command {
        Command::Standalone(_) => "info",
        Command::Perf { .. } => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Standalone(args) => standalone::run(args),
        Command::Perf { what } => perf::run(what),
    }
}
