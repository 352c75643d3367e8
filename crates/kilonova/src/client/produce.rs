//! `kilonova client produce TOPIC`: sends messages given on the command line
//! (`-m`) or read from files (`-f`), as pulsar-client's `produce`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use kilonova_client::{Batching, Client, OutgoingMessage, Producer, ProducerOptions};

use super::args::Connection;

/// The largest file `-f` sends (the broker's default maximum message size).
const MAX_FILE_BYTES: u64 = 5 << 20;

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    /// The topic (`persistent://tenant/ns/name`, or a short name in public/default).
    pub topic: String,
    /// A message to send (repeatable; each one message, unless `--separator` splits it).
    #[arg(short = 'm', long = "messages", value_name = "MESSAGE")]
    pub messages: Vec<String>,
    /// A file whose bytes are sent as one message (repeatable).
    #[arg(
        short = 'f',
        long = "files",
        visible_alias = "file",
        value_name = "FILE"
    )]
    pub files: Vec<PathBuf>,
    /// Split each `-m` value at this string into several messages (pulsar-client
    /// splits at `,` by default; here nothing is split unless asked).
    #[arg(short = 's', long)]
    pub separator: Option<String>,
    /// Send the messages this many times.
    #[arg(short = 'n', long = "num-produce", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub num_produce: u64,
    /// Messages per second (0: as fast as the broker confirms them).
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub rate: f64,
    /// The messages' key (partition key: on a partitioned topic it picks the
    /// partition; on a Key_Shared subscription, the consumer).
    #[arg(short = 'k', long)]
    pub key: Option<String>,
    /// A property `KEY=VALUE` (repeatable, or several separated by commas).
    #[arg(short = 'p', long = "properties", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    /// One message per entry (no client batching).
    #[arg(long)]
    pub disable_batching: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `a=1`, `a=1,b=2` → pairs, in order.
pub fn parse_properties(values: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for v in values {
        for item in v.split(',').filter(|i| !i.is_empty()) {
            let (k, val) = item
                .split_once('=')
                .with_context(|| format!("property '{item}' is not KEY=VALUE"))?;
            anyhow::ensure!(!k.is_empty(), "property '{item}' has an empty key");
            out.push((k.to_owned(), val.to_owned()));
        }
    }
    Ok(out)
}

/// The payloads of one round, in order: `-m` values (split if asked), then files.
fn payloads(args: &ProduceArgs) -> anyhow::Result<Vec<Bytes>> {
    let mut out = Vec::new();
    for m in &args.messages {
        match args.separator.as_deref().filter(|s| !s.is_empty()) {
            Some(sep) => out.extend(m.split(sep).map(|p| Bytes::from(p.to_owned()))),
            None => out.push(Bytes::from(m.clone())),
        }
    }
    for f in &args.files {
        let len = std::fs::metadata(f)
            .with_context(|| format!("reading {}", f.display()))?
            .len();
        anyhow::ensure!(
            len <= MAX_FILE_BYTES,
            "{} has {len} bytes; a message holds at most {MAX_FILE_BYTES}",
            f.display()
        );
        out.push(Bytes::from(
            std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        ));
    }
    anyhow::ensure!(
        !out.is_empty(),
        "nothing to send: give messages with -m or files with -f"
    );
    Ok(out)
}

/// Java's `String.hashCode` (over UTF-16 units), made non-negative: the Java
/// client's default hashing scheme for choosing a key's partition.
pub fn java_string_hash(s: &str) -> u32 {
    let h = s
        .encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)));
    (h & i32::MAX) as u32
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let payloads = payloads(&args)?;
    let properties = parse_properties(&args.properties)?;
    anyhow::ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be 0 or more"
    );
    let client = args.connection.connect().await?;
    let producers = producers(&client, &args).await?;
    let total = payloads.len() as u64 * args.num_produce;
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let start = Instant::now();
    let mut receipts = Vec::new();
    let mut n = 0u64;
    for _ in 0..args.num_produce {
        for payload in &payloads {
            if let Some(iv) = interval {
                tokio::time::sleep_until((start + iv.mul_f64(n as f64)).into()).await;
            }
            // Without a key, round robin over the partitions; with one, its hash.
            let at = match &args.key {
                Some(k) => java_string_hash(k) as usize % producers.len(),
                None => n as usize % producers.len(),
            };
            let producer = producers.get(at).context("no producer")?;
            let msg = OutgoingMessage {
                payload: payload.clone(),
                key: args.key.clone(),
                properties: properties.clone(),
            };
            receipts.push(producer.send(msg).await?);
            n += 1;
            // Bounded: wait for what is in flight now and then.
            if receipts.len() >= 1000 {
                for r in receipts.drain(..) {
                    r.await.context("sending a message")?;
                }
            }
        }
    }
    for p in &producers {
        p.flush();
    }
    for r in receipts {
        r.await.context("sending a message")?;
    }
    for p in producers {
        p.close().await.context("closing the producer")?;
    }
    eprintln!("{total} messages successfully produced to {}", args.topic);
    Ok(())
}

/// One producer per partition of a partitioned topic, else one.
async fn producers(client: &Client, args: &ProduceArgs) -> anyhow::Result<Vec<Producer>> {
    let options = ProducerOptions {
        batching: (!args.disable_batching).then(Batching::default),
        ..Default::default()
    };
    let partitions = client
        .partitions(&args.topic)
        .await
        .with_context(|| format!("looking up {}", args.topic))?;
    let names: Vec<String> = if partitions == 0 {
        vec![args.topic.clone()]
    } else {
        (0..partitions)
            .map(|p| format!("{}-partition-{p}", args.topic))
            .collect()
    };
    let mut out = Vec::new();
    for name in names {
        out.push(
            client
                .create_producer(&name, options.clone())
                .await
                .with_context(|| format!("creating a producer on {name}"))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_repeated_and_comma_separated() {
        let p = parse_properties(&["a=1,b=2".into(), "c=x=y".into()]).unwrap();
        assert_eq!(
            p,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("c".into(), "x=y".into())
            ]
        );
        assert!(parse_properties(&["novalue".into()]).is_err());
        assert!(parse_properties(&["=v".into()]).is_err());
    }

    #[test]
    fn keys_hash_as_java_strings_do() {
        // "hello".hashCode() == 99162322; "" is 0; a negative hashCode is masked.
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash(""), 0);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE.
        assert_eq!(java_string_hash("polygenelubricants"), 0);
    }
}
