//! `kilonova client consume TOPIC -s SUB`: subscribes and prints each message,
//! acknowledging it once printed, as pulsar-client's `consume`. Also the
//! printing and the receive loop that `read` shares.
//!
//! Output (`--output text`, the default) is pulsar-client's:
//!
//! ```text
//! ----- got message -----
//! key:[k], properties:[a=1, b=2], content:hello
//! ```
//!
//! with `content(hex):…` for a payload that is not UTF-8. `--output json`
//! prints one JSON object per line: `topic`, `message_id`
//! (`ledger:entry:partition:batch`), `key` (or null), `properties` (an object),
//! `publish_time` (ms since the epoch), `redelivery_count`, and `payload` (the
//! text) or, for a payload that is not UTF-8, `payload_hex`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use kilonova_client::{
    Client, Consumer, ConsumerOptions, InitialPosition, Message, SubscriptionType,
};

use super::args::Connection;

/// How often a receive loop looks at the stop flag (Ctrl-C, enough printed).
const POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum SubType {
    Exclusive,
    Shared,
    Failover,
    #[value(name = "Key_Shared", alias = "KeyShared", alias = "key_shared")]
    KeyShared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum Position {
    Latest,
    Earliest,
}

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    /// The topic (a partitioned topic: every partition).
    pub topic: String,
    /// The subscription's name.
    #[arg(short = 's', long = "subscription-name")]
    pub subscription: String,
    /// The subscription's type.
    #[arg(
        short = 't',
        long,
        value_enum,
        ignore_case = true,
        default_value = "Exclusive"
    )]
    pub subscription_type: SubType,
    /// Where a new subscription starts.
    #[arg(
        short = 'p',
        long,
        value_enum,
        ignore_case = true,
        default_value = "Latest"
    )]
    pub subscription_position: Position,
    /// Start a new subscription at the earliest message (`-p Earliest`).
    #[arg(long)]
    pub earliest: bool,
    /// Messages to print, then exit (0: until Ctrl-C).
    #[arg(short = 'n', long = "num-messages", default_value_t = 1)]
    pub num_messages: u64,
    /// `text` (pulsar-client's lines) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: Connection,
}

/// `bytes` as lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// One message as `format` prints it, without the final newline.
pub fn render(topic: &str, m: &Message, format: OutputFormat) -> String {
    let text = std::str::from_utf8(&m.payload).ok();
    match format {
        OutputFormat::Text => {
            let props: Vec<String> = m
                .properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let content = match text {
                Some(t) => format!("content:{t}"),
                None => format!("content(hex):{}", hex(&m.payload)),
            };
            format!(
                "----- got message -----\nkey:[{}], properties:[{}], {content}",
                m.key.as_deref().unwrap_or("null"),
                props.join(", ")
            )
        }
        OutputFormat::Json => {
            let mut o = serde_json::Map::new();
            o.insert("topic".into(), topic.into());
            o.insert(
                "message_id".into(),
                format!(
                    "{}:{}:{}:{}",
                    m.id.ledger_id, m.id.entry_id, m.id.partition, m.id.batch_index
                )
                .into(),
            );
            o.insert("key".into(), m.key.clone().into());
            let props: serde_json::Map<String, serde_json::Value> = m
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            o.insert("properties".into(), props.into());
            o.insert("publish_time".into(), m.publish_time_ms.into());
            o.insert("redelivery_count".into(), m.redelivery_count.into());
            match text {
                Some(t) => o.insert("payload".into(), t.into()),
                None => o.insert("payload_hex".into(), hex(&m.payload).into()),
            };
            serde_json::Value::Object(o).to_string()
        }
    }
}

/// Every topic to subscribe: the partitions of a partitioned topic, else itself.
pub async fn partitions_of(client: &Client, topic: &str) -> anyhow::Result<Vec<String>> {
    let n = client
        .partitions(topic)
        .await
        .with_context(|| format!("looking up {topic}"))?;
    Ok(if n == 0 {
        vec![topic.to_owned()]
    } else {
        (0..n).map(|p| format!("{topic}-partition-{p}")).collect()
    })
}

/// Receives from every consumer at once and prints each message whole (the
/// output is shared), acknowledging it once printed if `ack`; stops after
/// `limit` messages in all (0: never) or on Ctrl-C, then closes the consumers
/// (which sends the last acks). Returns the count printed.
pub async fn print_messages(
    consumers: Vec<(String, Consumer)>,
    limit: u64,
    format: OutputFormat,
    ack: bool,
) -> anyhow::Result<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let printed = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(()));
    let mut tasks = tokio::task::JoinSet::new();
    for (topic, mut consumer) in consumers {
        let (stop, printed, out) = (stop.clone(), printed.clone(), out.clone());
        tasks.spawn(async move {
            let mut result = Ok(());
            while !stop.load(Ordering::Relaxed) {
                let m = match tokio::time::timeout(POLL, consumer.receive()).await {
                    Err(_) => continue,
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => {
                        result =
                            Err(anyhow::Error::new(e).context(format!("receiving from {topic}")));
                        break;
                    }
                };
                // A slot among the `limit`: a message past it stays unacknowledged.
                let n = printed.fetch_add(1, Ordering::SeqCst) + 1;
                if limit > 0 && n > limit {
                    break;
                }
                let line = render(&topic, &m, format);
                let written = {
                    let _guard = out.lock();
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{line}").and_then(|()| stdout.flush())
                };
                if written.is_err() {
                    // stdout is closed (e.g. `| head`): nothing more to print to.
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                if ack {
                    consumer.ack(&m);
                }
                if limit > 0 && n >= limit {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            let _ = consumer.close().await;
            result
        });
    }
    let mut first_error = None;
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
                Some(Err(e)) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(anyhow::anyhow!("a receive task failed: {e}"));
                }
            },
            _ = tokio::signal::ctrl_c(), if !stop.load(Ordering::Relaxed) => {
                // Ctrl-C: stop receiving, ack what was printed, close cleanly.
                stop.store(true, Ordering::Relaxed);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let n = printed.load(Ordering::SeqCst);
    Ok(if limit > 0 { n.min(limit) } else { n })
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = args.connection.connect().await?;
    let earliest = args.earliest || args.subscription_position == Position::Earliest;
    let options = ConsumerOptions {
        subscription_type: match args.subscription_type {
            SubType::Exclusive => SubscriptionType::Exclusive,
            SubType::Shared => SubscriptionType::Shared,
            SubType::Failover => SubscriptionType::Failover,
            SubType::KeyShared => SubscriptionType::KeyShared,
        },
        initial_position: if earliest {
            InitialPosition::Earliest
        } else {
            InitialPosition::Latest
        },
        ..Default::default()
    };
    let mut consumers = Vec::new();
    for topic in partitions_of(&client, &args.topic).await? {
        let c = client
            .subscribe(&topic, &args.subscription, options.clone())
            .await
            .with_context(|| format!("subscribing {} to {topic}", args.subscription))?;
        consumers.push((topic, c));
    }
    let n = print_messages(consumers, args.num_messages, args.output, true).await?;
    eprintln!("{n} messages successfully consumed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kilonova_client::MessageId;

    fn message(payload: &'static [u8]) -> Message {
        let mut m = Message::default();
        m.id = MessageId {
            ledger_id: 3,
            entry_id: 7,
            partition: -1,
            batch_index: -1,
        };
        m.payload = Bytes::from_static(payload);
        m.key = Some("k".into());
        m.properties = vec![("a".into(), "1".into()), ("b".into(), "2".into())];
        m.publish_time_ms = 1000;
        m
    }

    #[test]
    fn text_output_is_pulsar_clients() {
        assert_eq!(
            render("t", &message(b"hello"), OutputFormat::Text),
            "----- got message -----\nkey:[k], properties:[a=1, b=2], content:hello"
        );
        assert!(
            render("t", &message(b"\xff\x00"), OutputFormat::Text).ends_with("content(hex):ff00")
        );
    }

    #[test]
    fn json_output_is_one_object_per_message() {
        let v: serde_json::Value =
            serde_json::from_str(&render("t", &message(b"hi"), OutputFormat::Json)).unwrap();
        assert_eq!(v["message_id"], "3:7:-1:-1");
        assert_eq!(v["payload"], "hi");
        assert_eq!(v["properties"]["b"], "2");
        let v: serde_json::Value =
            serde_json::from_str(&render("t", &message(b"\xfe"), OutputFormat::Json)).unwrap();
        assert_eq!(v["payload_hex"], "fe");
        assert!(v.get("payload").is_none());
    }
}
