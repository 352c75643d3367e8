//! `kilonova client produce | consume | read`: pulsar-client's shell commands,
//! on the built-in lean client (`kilonova-client`), with tokens and TLS as
//! `kilonova admin` takes them.

use std::future::Future;

use anyhow::Context;
use clap::Subcommand;

pub mod args;
pub mod consume;
pub mod produce;
pub mod read;

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Send messages (`-m TEXT`, `-f FILE`) to a topic.
    Produce(produce::ProduceArgs),
    /// Subscribe and print messages, acknowledging each once printed.
    Consume(consume::ConsumeArgs),
    /// Print messages from a position without a subscription (a Reader).
    Read(read::ReadArgs),
}

pub fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Produce(a) => block_on(produce::run(a)),
        ClientCommand::Consume(a) => block_on(consume::run(a)),
        ClientCommand::Read(a) => block_on(read::run(a)),
    }
}

fn block_on(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(command)
}
