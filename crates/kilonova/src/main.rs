//! The `kilonova` binary: one program for every role. Today: `standalone` (the
//! broker with embedded storage and metadata), `broker` (one broker of a
//! cluster, metadata in etcd), `proxy` (the gateway in front of a
//! cluster's brokers), `federation` (a Kafka federation's controller,
//! proxies and verbs), `admin` (pulsar-admin's verbs
//! over the admin REST API), `perf` (benchmarks) and `tokens` (keys and
//! tokens, as `pulsar tokens`).

use clap::{Parser, Subcommand};

mod admin;
mod client;
mod federation;
mod perf;
mod proxy;
mod standalone;
mod tokens;

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
    /// Run one broker of a cluster: metadata in etcd ([metadata] backend =
    /// "etcd"), shared with the cluster's other brokers; the same flags and
    /// configuration file as standalone (docs/cluster.md).
    Broker(standalone::StandaloneArgs),
    /// Run the proxy in front of a cluster's brokers: clients reach the
    /// cluster through its one address (docs/proxy.md).
    Proxy(proxy::ProxyArgs),
    /// Kafka federation: one logical Kafka cluster over many physical ones
    /// (docs/federation.md).
    Federation {
        #[command(subcommand)]
        role: federation::FederationCommand,
    },
    /// Administer a cluster through the admin REST API (pulsar-admin's verbs).
    Admin(admin::AdminArgs),
    /// Produce, consume and read messages from the shell (pulsar-client's verbs).
    Client {
        #[command(subcommand)]
        verb: client::ClientCommand,
    },
    /// Benchmarks.
    Perf {
        #[command(subcommand)]
        what: perf::PerfCommand,
    },
    /// Create keys and tokens, show and validate tokens (pulsar tokens' verbs).
    Tokens {
        #[command(subcommand)]
        verb: tokens::TokensCommand,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line (every cause, outermost first), never a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Colour codes only for a person at a terminal: never into a file, a pipe
/// or journald, and never when `NO_COLOR` is set (<https://no-color.org>).
fn log_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run() -> anyhow::Result<()> {
    // One TLS provider for every rustls user in the process (the admin and
    // perf HTTP clients): ring, as the servers' TLS. Fails only if one is
    // installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = admin::pulsar_style_args(std::env::args_os());
    let args =
        client::args::pulsar_style_args(args, "client", client::args::CLIENT_SINGLE_DASH_FLAGS);
    let args = client::args::pulsar_style_args(args, "perf", perf::args::PERF_SINGLE_DASH_FLAGS);
    let cli = Cli::parse_from(args);
    // Servers log their lifecycle; tools stay quiet unless asked (RUST_LOG).
    let default_level = match cli.command {
        Command::Standalone(_) | Command::Broker(_) | Command::Proxy(_) => "info",
        Command::Federation {
            role:
                federation::FederationCommand::Controller(_) | federation::FederationCommand::Proxy(_),
        } => "info",
        Command::Federation { .. } => "warn",
        Command::Admin(_)
        | Command::Client { .. }
        | Command::Perf { .. }
        | Command::Tokens { .. } => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_colours())
        .init();
    match cli.command {
        Command::Standalone(args) => standalone::run(args, standalone::Role::Standalone),
        Command::Broker(args) => standalone::run(args, standalone::Role::ClusterBroker),
        Command::Proxy(args) => proxy::run(args),
        Command::Federation { role } => federation::run(role),
        Command::Admin(args) => admin::run(args),
        Command::Client { verb } => client::run(verb),
        Command::Perf { what } => perf::run(what),
        Command::Tokens { verb } => tokens::run(verb),
    }
}
