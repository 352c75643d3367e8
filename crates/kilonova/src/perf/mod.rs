//! `kilonova perf …`: benchmarks that print live progress and a final summary.

use std::future::Future;

use anyhow::Context;
use clap::Subcommand;

pub mod args;
pub mod connect;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
mod pacer;
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
    /// Read with Readers (non-durable subscriptions) from earliest or latest.
    Read(pulsar::ReadCmd),
    /// Open connections as fast as possible (with or without a token): the connect rate.
    Connect(connect::ConnectArgs),
    /// Create many topics through the admin API (the metadata path), then list them page by page.
    Topics(topics::TopicsArgs),
    /// The same publish load against NATS JetStream (the benchmark suite's peer).
    #[cfg(feature = "nats")]
    Nats(nats::NatsArgs),
    /// Produce to or consume from the Kafka listener with a Kafka client (rskafka).
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaArgs),
}

pub fn run(cmd: PerfCommand) -> anyhow::Result<()> {
    match cmd {
        PerfCommand::Storage(args) => block_on(storage::run(args)),
        PerfCommand::Produce(c) => block_on(pulsar::run(pulsar::Mode::Produce(c))),
        PerfCommand::Consume(c) => block_on(pulsar::run(pulsar::Mode::Consume(c))),
        PerfCommand::E2e(c) => block_on(pulsar::run(pulsar::Mode::E2e(c))),
        PerfCommand::Read(c) => block_on(pulsar::run(pulsar::Mode::Read(c))),
        PerfCommand::Topics(args) => block_on(topics::run(args)),
        PerfCommand::Connect(args) => block_on(connect::run(args)),
        #[cfg(feature = "nats")]
        PerfCommand::Nats(args) => block_on(nats::run(args)),
        #[cfg(feature = "kafka")]
        PerfCommand::Kafka(args) => block_on(kafka::run(args)),
    }
}

/// Runs a command on a multi-threaded runtime of its own.
fn block_on(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Perf {
        #[command(subcommand)]
        what: PerfCommand,
    }

    /// Every subcommand's flags as `name --long[=default][ env]`, sorted.
    fn flags() -> Vec<String> {
        let mut out = Vec::new();
        for sub in Perf::command().get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if long == "help" {
                    continue;
                }
                let defaults: Vec<String> = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                let mut line = format!("{} --{long}", sub.get_name());
                if !defaults.is_empty() {
                    line += &format!("={}", defaults.join(","));
                }
                if let Some(env) = arg.get_env() {
                    line += &format!(" ${}", env.to_string_lossy());
                }
                out.push(line);
            }
        }
        out.sort();
        out
    }

    /// The flags and defaults `scripts/bench*`, docs/benchmarks.md and people
    /// type: sharing their definitions must not change them.
    const FLAGS: &str = "\
connect --auth-token $KILONOVA_AUTH_TOKEN
connect --concurrency=16
connect --connections=5000
connect --output=text
connect --service-url=pulsar://127.0.0.1:6650
consume --admin-url=http://127.0.0.1:8080
consume --auth-params
consume --auth-plugin
consume --auth-token $KILONOVA_AUTH_TOKEN
consume --connections=1
consume --consumers-per-topic=1
consume --duration-secs=10
consume --histogram-file
consume --initial-position=latest
consume --num-subscriptions=1
consume --output=text
consume --partitions=0
consume --receiver-queue=1000
consume --service-url=pulsar://127.0.0.1:6650
consume --subscription-type=exclusive
consume --subscription=perf-sub
consume --tls-trust-cert-path $KILONOVA_TLS_TRUST_CERT_PATH
consume --topic=persistent://public/default/perf
consume --topics=1
consume --warmup-secs=2
e2e --admin-url=http://127.0.0.1:8080
e2e --auth-params
e2e --auth-plugin
e2e --auth-token $KILONOVA_AUTH_TOKEN
e2e --batch-max-bytes=131072
e2e --batch-max-delay-us=1000
e2e --batch-max-messages=1000
e2e --batch-time-window
e2e --compression=none
e2e --connections=1
e2e --consumers-per-topic=1
e2e --duration-secs=10
e2e --even-pacing
e2e --histogram-file
e2e --initial-position=latest
e2e --max-pending=1000
e2e --message-key-generation-mode
e2e --messages=0
e2e --no-batching
e2e --num-subscriptions=1
e2e --output=text
e2e --partitions=0
e2e --producers-per-topic=1
e2e --rate=0
e2e --receiver-queue=1000
e2e --service-url=pulsar://127.0.0.1:6650
e2e --size=1024
e2e --subscription-type=exclusive
e2e --subscription=perf-sub
e2e --tls-trust-cert-path $KILONOVA_TLS_TRUST_CERT_PATH
e2e --topic=persistent://public/default/perf
e2e --topics=1
e2e --warmup-secs=2
produce --admin-url=http://127.0.0.1:8080
produce --auth-params
produce --auth-plugin
produce --auth-token $KILONOVA_AUTH_TOKEN
produce --batch-max-bytes=131072
produce --batch-max-delay-us=1000
produce --batch-max-messages=1000
produce --batch-time-window
produce --compression=none
produce --connections=1
produce --duration-secs=10
produce --even-pacing
produce --histogram-file
produce --max-pending=1000
produce --message-key-generation-mode
produce --messages=0
produce --no-batching
produce --output=text
produce --partitions=0
produce --producers-per-topic=1
produce --rate=0
produce --service-url=pulsar://127.0.0.1:6650
produce --size=1024
produce --tls-trust-cert-path $KILONOVA_TLS_TRUST_CERT_PATH
produce --topic=persistent://public/default/perf
produce --topics=1
produce --warmup-secs=2
read --admin-url=http://127.0.0.1:8080
read --auth-params
read --auth-plugin
read --auth-token $KILONOVA_AUTH_TOKEN
read --connections=1
read --duration-secs=10
read --histogram-file
read --output=text
read --partitions=0
read --receiver-queue=1000
read --service-url=pulsar://127.0.0.1:6650
read --start-message-id=earliest
read --tls-trust-cert-path $KILONOVA_TLS_TRUST_CERT_PATH
read --topic=persistent://public/default/perf
read --topics=1
read --warmup-secs=2
storage --appenders=64
storage --dir=./perf-data
storage --duration-secs=10
storage --entry-bytes=1024
storage --log-file-mib=128
storage --output=text
storage --rate=0
storage --retain-mib=0
storage --segment-mib=32
storage --segments=1
storage --warmup-secs=2
storage --window=32
topics --admin-url=http://127.0.0.1:8080
topics --concurrency=64
topics --count=10000
topics --list-only
topics --namespace=public/default
topics --output=text
topics --page=10000
topics --prefix=idle
";

    #[cfg(feature = "nats")]
    const NATS_FLAGS: &str = "\
nats --duration-secs=10
nats --in-flight=1000
nats --output=text
nats --size=1024
nats --stream=perf
nats --url=nats://127.0.0.1:4222
nats --warmup-secs=2
";

    #[cfg(feature = "kafka")]
    const KAFKA_FLAGS: &str = "\
kafka --batch=100
kafka --bootstrap=127.0.0.1:9092
kafka --duration-secs=10
kafka --fetch-bytes=4194304
kafka --from-offset=0
kafka --in-flight=16
kafka --mode=produce
kafka --output=text
kafka --size=1024
kafka --topic=perf-kafka
kafka --warmup-secs=2
";

    #[test]
    fn perf_flags_and_defaults_are_the_ones_users_type() {
        #[allow(unused_mut)]
        let mut expected: Vec<&str> = FLAGS.lines().collect();
        #[cfg(feature = "nats")]
        expected.extend(NATS_FLAGS.lines());
        #[cfg(feature = "kafka")]
        expected.extend(KAFKA_FLAGS.lines());
        expected.sort_unstable();
        assert_eq!(flags(), expected);
    }
}
