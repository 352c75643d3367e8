//! `kilonova perf …`: benchmarks that print live progress and a final summary.

use clap::Subcommand;

pub mod connect;
#[cfg(feature = "nats")]
pub mod nats;
pub mod pulsar;
pub mod recorder;
pub mod storage;
pub mod topics;

#[derive(Subcommand)]
pub enum PerfCommand {
    /// Durable appends straight into the segment store (no broker, no network).
    Storage(storage::StorageArgs),
    /// Publish to a broker and report publish (receipt) latency.
    Produce(pulsar::ProduceCmd),
    /// Consume from a broker and report throughput and latency from publish time.
    Consume(pulsar::ConsumeCmd),
    /// Publish and consume at once; latency is publish → delivery.
    E2e(pulsar::E2eCmd),
    /// Open connections as fast as possible (with or without a token): the connect rate.
    Connect(connect::ConnectArgs),
    /// Create many topics through the admin API (the metadata path), then list them page by page.
    Topics(topics::TopicsArgs),
    /// The same publish load against NATS JetStream (the benchmark suite's peer).
    #[cfg(feature = "nats")]
    Nats(nats::NatsArgs),
}

pub fn run(cmd: PerfCommand) -> anyhow::Result<()> {
    match cmd {
        PerfCommand::Storage(args) => storage::run(args),
        PerfCommand::Produce(c) => pulsar::run(pulsar::Mode::Produce(c)),
        PerfCommand::Consume(c) => pulsar::run(pulsar::Mode::Consume(c)),
        PerfCommand::E2e(c) => pulsar::run(pulsar::Mode::E2e(c)),
        PerfCommand::Topics(args) => topics::run(args),
        PerfCommand::Connect(args) => connect::run(args),
        #[cfg(feature = "nats")]
        PerfCommand::Nats(args) => nats::run(args),
    }
}
