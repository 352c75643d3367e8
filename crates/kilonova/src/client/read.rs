//! `kilonova client read TOPIC`: a Reader, as pulsar-client's `read`: a
//! non-durable subscription from a position, nothing acknowledged, nothing
//! left on the broker when it ends.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use kilonova_client::{ConsumerOptions, InitialPosition, StartMessageId};

use super::args::Connection;
use super::consume::{partitions_of, print_messages, OutputFormat};

#[derive(clap::Args, Debug)]
pub struct ReadArgs {
    /// The topic (a partitioned topic: every partition, from `earliest` or `latest`).
    pub topic: String,
    /// Where to start: `earliest`, `latest`, or a message id `LEDGER:ENTRY`
    /// (as `message_id` prints it; more fields after the entry are ignored).
    #[arg(short = 'm', long = "start-message-id", default_value = "latest")]
    pub start_message_id: String,
    /// Deliver the start message itself too (`LEDGER:ENTRY` starts after it otherwise).
    #[arg(short = 'i', long)]
    pub start_message_id_inclusive: bool,
    /// Messages to print, then exit (0: until Ctrl-C).
    #[arg(short = 'n', long = "num-messages", default_value_t = 1)]
    pub num_messages: u64,
    /// `text` (pulsar-client's lines) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: Connection,
}

/// Where a reader starts.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    Earliest,
    Latest,
    At(u64, u64),
}

fn parse_start(s: &str) -> anyhow::Result<Start> {
    match s.to_ascii_lowercase().as_str() {
        "earliest" => return Ok(Start::Earliest),
        "latest" => return Ok(Start::Latest),
        _ => {}
    }
    let mut parts = s.split(':');
    let mut number = |what: &str| -> anyhow::Result<u64> {
        parts
            .next()
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| {
                format!(
                    "--start-message-id '{s}': expected earliest, latest or LEDGER:ENTRY ({what})"
                )
            })
    };
    let ledger = number("ledger")?;
    let entry = number("entry")?;
    Ok(Start::At(ledger, entry))
}

/// A subscription name no other reader uses.
fn reader_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("kilonova-reader-{:x}-{nanos:08x}", std::process::id())
}

pub async fn run(args: ReadArgs) -> anyhow::Result<()> {
    let start = parse_start(&args.start_message_id)?;
    let client = args.connection.connect().await?;
    let topics = partitions_of(&client, &args.topic).await?;
    anyhow::ensure!(
        topics.len() == 1 || !matches!(start, Start::At(..)),
        "{} is partitioned: a message id names one partition; read TOPIC-partition-N",
        args.topic
    );
    let options = ConsumerOptions {
        durable: false,
        initial_position: match start {
            Start::Earliest => InitialPosition::Earliest,
            _ => InitialPosition::Latest,
        },
        start_message_id: match start {
            Start::At(ledger_id, entry_id) => Some(StartMessageId {
                ledger_id,
                entry_id,
                inclusive: args.start_message_id_inclusive,
            }),
            _ => None,
        },
        ..Default::default()
    };
    let name = reader_name();
    let mut readers = Vec::new();
    for topic in topics {
        let r = client
            .subscribe(&topic, &name, options.clone())
            .await
            .with_context(|| format!("opening a reader on {topic}"))?;
        readers.push((topic, r));
    }
    let n = print_messages(readers, args.num_messages, args.output, false).await?;
    eprintln!("{n} messages successfully read");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start("Earliest").unwrap(), Start::Earliest);
        assert_eq!(parse_start("latest").unwrap(), Start::Latest);
        assert_eq!(parse_start("12:34").unwrap(), Start::At(12, 34));
        assert_eq!(parse_start("12:34:-1:-1").unwrap(), Start::At(12, 34));
        assert!(parse_start("12").is_err());
        assert!(parse_start("a:b").is_err());
    }
}
