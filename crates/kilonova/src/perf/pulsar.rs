//! `kilonova perf produce | consume | e2e`: load against a Pulsar-protocol
//! broker, as `pulsar-perf` does, with Kilonova's own lean client.
//!
//! Publish latency runs from handing the message to the client to its receipt
//! (for Kilonova: durable). End-to-end latency runs from that same moment, which
//! the producer writes into the first 8 bytes of the payload (microseconds since
//! the epoch), to the consumer receiving it. `consume` alone measures from the
//! message's publish time (millisecond resolution).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use kilonova_client::{
    Batching, Client, Compression, ConsumerOptions, InitialPosition, OutgoingMessage, Producer,
    ProducerOptions, SubscriptionType,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::args::{AdminUrl, Credentials, Output, ServiceUrl, Timing};
use super::pacer::Pacer;
use super::recorder::{interval_line, HistogramLog, Latency, Recorder, Summary};

#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    pub service: ServiceUrl,
    /// Token and TLS trust, as `kilonova client` takes them.
    #[command(flatten)]
    pub credentials: Credentials,
    /// Used to create partitioned topics.
    #[command(flatten)]
    pub admin: AdminUrl,
    /// Topic name; with `--topics N` > 1, topics are `<topic>-0` … `<topic>-(N-1)`.
    /// Given several times (pulsar-perf's list of topics), exactly those
    /// topics (`--topics`, if given, must be their number).
    #[arg(long, default_value = "persistent://public/default/perf", action = clap::ArgAction::Append)]
    pub topic: Vec<String>,
    /// Number of topics.
    #[arg(short = 't', long, visible_alias = "num-topics", default_value_t = 1)]
    pub topics: usize,
    /// Partitions per topic (0: not partitioned). Partitioned topics are
    /// created through the admin API if they do not exist.
    #[arg(long, default_value_t = 0)]
    pub partitions: u32,
    /// Client connections the topics are spread over.
    #[arg(
        short = 'c',
        long,
        visible_alias = "max-connections",
        default_value_t = 1
    )]
    pub connections: usize,
    #[command(flatten)]
    pub timing: Timing,
    /// Write the latencies of every progress interval to this file as an
    /// HdrHistogram interval log (microseconds; the mode's headline latency).
    #[arg(long, value_name = "FILE")]
    pub histogram_file: Option<PathBuf>,
    #[command(flatten)]
    pub output: Output,
}

/// How producers key their messages (pulsar-perf's `-mk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyMode {
    /// `0`, `1`, `2`, … per producer.
    #[value(
        name = "autoIncrement",
        alias = "autoincrement",
        alias = "auto-increment"
    )]
    AutoIncrement,
    /// A random number per message.
    #[value(name = "random")]
    Random,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Producers per topic (per partition for partitioned topics).
    #[arg(
        short = 'n',
        long,
        visible_alias = "num-producers",
        default_value_t = 1
    )]
    pub producers_per_topic: usize,
    /// Payload bytes per message (at least 8: the send timestamp).
    #[arg(short = 's', long, default_value_t = 1024)]
    pub size: usize,
    /// Total messages per second over all producers (0: as fast as possible).
    #[arg(short = 'r', long, default_value_t = 0)]
    pub rate: u64,
    /// With `--rate` faster than 1,000 msg/s per producer, space each
    /// producer's sends within the millisecond (a pacing thread ticking
    /// every 50 µs, as pulsar-perf's rate limiter spaces them) instead of
    /// sending each millisecond's messages together on the timer's tick.
    /// Spread sends cost client and broker more CPU.
    #[arg(long)]
    pub even_pacing: bool,
    /// Messages to send in all, warm-up included (0: no limit).
    #[arg(short = 'm', long, visible_alias = "num-messages", default_value_t = 0)]
    pub messages: u64,
    /// Turn client batching off: one entry (and one fsync share) per message.
    #[arg(long)]
    pub no_batching: bool,
    /// Batching: longest a message waits for its batch, in milliseconds
    /// (pulsar-perf's `-b`; 0 turns batching off). Overrides `--batch-max-delay-us`.
    #[arg(short = 'b', long, value_name = "MS")]
    pub batch_time_window: Option<f64>,
    /// Batching: longest a message waits for its batch, in microseconds.
    #[arg(long, default_value_t = 1000)]
    pub batch_max_delay_us: u64,
    /// Batching: most messages per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_max_messages: usize,
    /// Batching: most bytes per batch.
    #[arg(long, default_value_t = 128 << 10)]
    pub batch_max_bytes: usize,
    /// Messages each producer keeps in flight (sent, receipt not yet back).
    #[arg(
        short = 'p',
        short_alias = 'o',
        long,
        visible_alias = "max-outstanding",
        default_value_t = 1000
    )]
    pub max_pending: usize,
    /// Give every message a key (`-mk`): `autoIncrement` or `random`. A batch
    /// holds one key, so keyed messages are batched only while the key repeats.
    #[arg(long, value_enum)]
    pub message_key_generation_mode: Option<KeyMode>,
    /// Payload compression: none, lz4, zlib, zstd or snappy.
    #[arg(short = 'z', long, default_value = "none")]
    pub compression: Compression,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ConsumeArgs {
    /// Consumers per topic (per partition for partitioned topics) and subscription.
    #[arg(
        short = 'n',
        long,
        visible_alias = "num-consumers",
        default_value_t = 1
    )]
    pub consumers_per_topic: usize,
    /// The subscription; with `--num-subscriptions N` > 1, `<name>-0` … `<name>-(N-1)`.
    #[arg(
        short = 's',
        long,
        visible_alias = "subscriber-name",
        default_value = "perf-sub"
    )]
    pub subscription: String,
    /// Subscriptions per topic (`-ns`), each receiving every message.
    #[arg(long, default_value_t = 1)]
    pub num_subscriptions: usize,
    /// exclusive, shared, failover or key_shared (`-st`).
    #[arg(long, default_value = "exclusive")]
    pub subscription_type: String,
    /// Where a new subscription starts: latest or earliest (`-sp`).
    #[arg(
        long,
        visible_alias = "subscription-position",
        default_value = "latest"
    )]
    pub initial_position: String,
    /// Messages each consumer lets the broker send ahead.
    #[arg(
        short = 'q',
        long,
        visible_alias = "receiver-queue-size",
        default_value_t = 1000
    )]
    pub receiver_queue: u32,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReadArgs {
    /// Where each reader starts: earliest or latest.
    #[arg(short = 'm', long, default_value = "earliest")]
    pub start_message_id: String,
    /// Messages each reader lets the broker send ahead.
    #[arg(
        short = 'q',
        long,
        visible_alias = "receiver-queue-size",
        default_value_t = 1000
    )]
    pub receiver_queue: u32,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ProduceCmd {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub produce: ProduceArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ConsumeCmd {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub consume: ConsumeArgs,
}

/// Both sides at once: `-s` and `-n` would be ambiguous, so only their long
/// forms are taken here.
#[derive(clap::Args, Debug, Clone)]
#[command(
    mut_arg("subscription", |a| a.short(None)),
    mut_arg("consumers_per_topic", |a| a.short(None))
)]
pub struct E2eCmd {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub produce: ProduceArgs,
    #[command(flatten)]
    pub consume: ConsumeArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReadCmd {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub read: ReadArgs,
}

pub enum Mode {
    Produce(ProduceCmd),
    Consume(ConsumeCmd),
    E2e(E2eCmd),
    Read(ReadCmd),
}

/// The JSON summary: the headline figures are the mode's own (publish for
/// `produce`, delivery for `consume` and `e2e`); `e2e` adds the publish side.
#[derive(Serialize)]
struct Report {
    mode: &'static str,
    #[serde(flatten)]
    main: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<Summary>,
}

/// How long `e2e` waits at the end for consumers to receive what was published.
const DRAIN: Duration = Duration::from_secs(10);

/// How long a consumer waits for a message before it looks at the stop flag
/// and hands its counts to the live lines.
const IDLE: Duration = Duration::from_millis(100);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The topics `--topic` and `--topics` name (before partitions): one
/// topic numbered `-0` … `-(N-1)`, or the list given.
fn base_names(topic: &[String], topics: usize) -> anyhow::Result<Vec<String>> {
    match topic {
        [] => anyhow::bail!("no --topic given"),
        [one] if topics <= 1 => Ok(vec![one.clone()]),
        [one] => Ok((0..topics).map(|i| format!("{one}-{i}")).collect()),
        many if topics <= 1 || topics == many.len() => Ok(many.to_vec()),
        many => anyhow::bail!(
            "{} topics given with --topic but --topics {topics}: give one topic to number, or that many",
            many.len()
        ),
    }
}

/// Every topic (or partition) the run uses.
async fn topic_names(common: &CommonArgs) -> anyhow::Result<Vec<String>> {
    let bases = base_names(&common.topic, common.topics)?;
    if common.partitions == 0 {
        return Ok(bases);
    }
    let mut names = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        create_partitioned(&common.admin.url, base, common.partitions).await?;
        if bases.len() > 100 && i % 1000 == 0 {
            eprintln!("created {i} of {} partitioned topics", bases.len());
        }
        names.extend((0..common.partitions).map(|p| format!("{base}-partition-{p}")));
    }
    Ok(names)
}

/// `PUT /admin/v2/{domain}/{tenant}/{ns}/{topic}/partitions` with the count as
/// the body; an existing topic (409) is fine.
async fn create_partitioned(admin_url: &str, topic: &str, partitions: u32) -> anyhow::Result<()> {
    let addr = admin_url
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .with_context(|| format!("admin URL {admin_url} must be http://host:port"))?;
    let (domain, rest) = topic
        .split_once("://")
        .with_context(|| format!("topic {topic} must be persistent://tenant/ns/name"))?;
    let body = partitions.to_string();
    let request = format!(
        "PUT /admin/v2/{domain}/{rest}/partitions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the admin API at {addr}"))?;
    s.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
    anyhow::ensure!(
        (200..300).contains(&status) || status == 409,
        "creating partitioned topic {topic}: {}",
        response.lines().next().unwrap_or("no answer")
    );
    Ok(())
}

async fn connect_all(common: &CommonArgs) -> anyhow::Result<Vec<Arc<Client>>> {
    let options = common.credentials.connect_options()?;
    let mut clients = Vec::new();
    for _ in 0..common.connections.max(1) {
        clients.push(Arc::new(
            Client::connect_with(&common.service.url, &options)
                .await
                .with_context(|| format!("connecting to {}", common.service.url))?,
        ));
    }
    Ok(clients)
}

struct Run {
    measuring: Arc<AtomicBool>,
    stop_producers: Arc<AtomicBool>,
    stop_consumers: Arc<AtomicBool>,
    /// Messages handed to producers so far, warm-up included (for `--messages`).
    sent: Arc<AtomicU64>,
    /// Receipts that came back, and messages received, warm-up included: at the
    /// end of `e2e` the consumers drain until they have everything published.
    published: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

fn subscription_type(s: &str) -> anyhow::Result<SubscriptionType> {
    Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "exclusive" => SubscriptionType::Exclusive,
        "shared" => SubscriptionType::Shared,
        "failover" => SubscriptionType::Failover,
        "key_shared" | "keyshared" => SubscriptionType::KeyShared,
        other => anyhow::bail!("unknown subscription type '{other}'"),
    })
}

/// What the consumers of a run subscribe as.
struct Subscribing {
    options: ConsumerOptions,
    /// Subscription names; each topic gets `per_topic` consumers on each.
    names: Vec<String>,
    per_topic: usize,
}

impl Subscribing {
    fn consume(args: &ConsumeArgs) -> anyhow::Result<Subscribing> {
        let options = ConsumerOptions {
            subscription_type: subscription_type(&args.subscription_type)?,
            initial_position: initial_position(&args.initial_position)?,
            receiver_queue: args.receiver_queue,
            ..Default::default()
        };
        let names = if args.num_subscriptions <= 1 {
            vec![args.subscription.clone()]
        } else {
            (0..args.num_subscriptions)
                .map(|i| format!("{}-{i}", args.subscription))
                .collect()
        };
        Ok(Subscribing {
            options,
            names,
            per_topic: args.consumers_per_topic.max(1),
        })
    }

    /// One reader (a non-durable subscription of its own) per topic.
    fn read(args: &ReadArgs) -> anyhow::Result<Subscribing> {
        let options = ConsumerOptions {
            initial_position: initial_position(&args.start_message_id)?,
            receiver_queue: args.receiver_queue,
            durable: false,
            ..Default::default()
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(Subscribing {
            options,
            names: vec![format!("perf-reader-{:x}-{nanos:x}", std::process::id())],
            per_topic: 1,
        })
    }
}

fn initial_position(s: &str) -> anyhow::Result<InitialPosition> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "earliest" => InitialPosition::Earliest,
        "latest" => InitialPosition::Latest,
        other => anyhow::bail!("unknown position '{other}': expected earliest or latest"),
    })
}

async fn start_consumers(
    clients: &[Arc<Client>],
    topics: &[String],
    sub: &Subscribing,
    run: &Run,
    recorder: &Arc<Recorder>,
    latency_from_payload: bool,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        for (s, name) in sub.names.iter().enumerate() {
            for k in 0..sub.per_topic {
                let client = clients
                    .get((i + s + k) % clients.len())
                    .context("no connection")?;
                let mut consumer = client
                    .subscribe(topic, name, sub.options.clone())
                    .await
                    .with_context(|| format!("subscribing {name} to {topic}"))?;
                let mut local = recorder.local();
                let (stop, received) = (run.stop_consumers.clone(), run.received.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let m = match tokio::time::timeout(IDLE, consumer.receive()).await {
                            Err(_) => {
                                // Nothing for a while: count what came before
                                // in the live lines, and look at `stop`.
                                local.flush();
                                continue;
                            }
                            Ok(Ok(m)) => m,
                            Ok(Err(_)) => {
                                local.error();
                                break;
                            }
                        };
                        let sent_us = match m.payload.get(..8) {
                            Some(b) if latency_from_payload => {
                                let mut t = [0u8; 8];
                                t.copy_from_slice(b);
                                u64::from_be_bytes(t)
                            }
                            _ => m.publish_time_ms * 1000,
                        };
                        let latency = Duration::from_micros(now_us().saturating_sub(sent_us));
                        local.record(latency, m.payload.len());
                        received.fetch_add(1, Ordering::Relaxed);
                        consumer.ack(&m);
                    }
                    consumer.flush_acks();
                }));
            }
        }
    }
    Ok(tasks)
}

async fn start_producers(
    clients: &[Arc<Client>],
    topics: &[String],
    args: &ProduceArgs,
    run: &Run,
    recorder: &Arc<Recorder>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    anyhow::ensure!(args.size >= 8, "--size must be at least 8 (the timestamp)");
    let delay_us = match args.batch_time_window {
        Some(ms) if !(ms.is_finite() && ms >= 0.0) => {
            anyhow::bail!("--batch-time-window must be 0 or more milliseconds")
        }
        Some(ms) => (ms * 1000.0) as u64,
        None => args.batch_max_delay_us,
    };
    let batching = !args.no_batching && delay_us > 0;
    let options = ProducerOptions {
        name: None,
        batching: batching.then_some(Batching {
            max_messages: args.batch_max_messages.max(1),
            max_bytes: args.batch_max_bytes.max(1),
            max_delay: Duration::from_micros(delay_us),
        }),
        max_pending: args.max_pending.max(1),
        compression: args.compression,
    };
    let count = topics.len() * args.producers_per_topic.max(1);
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(count as f64 / args.rate as f64));
    let mut producers = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        for k in 0..args.producers_per_topic.max(1) {
            let client = &clients[(i + k) % clients.len()];
            let p = client
                .create_producer(topic, options.clone())
                .await
                .with_context(|| format!("creating a producer on {topic}"))?;
            producers.push(p);
            if count > 1000 && producers.len() % 1000 == 0 {
                eprintln!("created {} of {count} producers", producers.len());
            }
        }
    }
    let filler = Bytes::from(vec![0x4bu8; args.size - 8]);
    // Only producers due more often than the timer ticks need the pacing
    // thread (10,000 slow ones waking at each of its ticks would not).
    let pacer = match interval {
        Some(iv) if args.even_pacing && iv < Duration::from_millis(1) => {
            Some(Pacer::start().context("starting the pacing thread")?)
        }
        _ => None,
    };
    let mut tasks = Vec::new();
    for (n, producer) in producers.into_iter().enumerate() {
        let counters = Counters {
            stop: run.stop_producers.clone(),
            sent: run.sent.clone(),
            published: run.published.clone(),
            limit: args.messages,
            keys: args
                .message_key_generation_mode
                .map(|m| Keys::new(m, n as u64)),
        };
        let filler = filler.clone();
        let local = recorder.local();
        let start = Instant::now();
        // Spread the first sends of fixed-rate producers over one interval.
        let pace = interval.map(|iv| Pace {
            every: iv,
            first: start + iv.mul_f64(n as f64 / count as f64),
            pacer: pacer.clone(),
        });
        tasks.push(tokio::spawn(produce_loop(
            producer, local, counters, filler, pace,
        )));
    }
    Ok(tasks)
}

struct Counters {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    published: Arc<AtomicU64>,
    limit: u64,
    keys: Option<Keys>,
}

/// A producer's message keys (`-mk`).
struct Keys {
    mode: KeyMode,
    next: u64,
    /// xorshift64 state for `random` (never 0).
    state: u64,
}

impl Keys {
    fn new(mode: KeyMode, producer: u64) -> Keys {
        let seed = now_us() ^ producer.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Keys {
            mode,
            next: 0,
            state: seed | 1,
        }
    }

    fn next_key(&mut self) -> String {
        match self.mode {
            KeyMode::AutoIncrement => {
                let k = self.next;
                self.next += 1;
                k.to_string()
            }
            KeyMode::Random => {
                let mut x = self.state;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.state = x;
                // A key space as pulsar-perf's: a random int.
                (x >> 33).to_string()
            }
        }
    }
}

/// A fixed-rate producer's schedule: its first send, then one every `every`.
struct Pace {
    every: Duration,
    first: Instant,
    pacer: Option<Pacer>,
}

impl Pace {
    /// Waits for the time of send `n`.
    async fn until(&self, n: u64) {
        let deadline = self.first + self.every.mul_f64(n as f64);
        match &self.pacer {
            Some(p) => p.until(deadline).await,
            None => tokio::time::sleep_until(deadline.into()).await,
        }
    }
}

async fn produce_loop(
    producer: Producer,
    local: super::recorder::LocalRecorder,
    counters: Counters,
    filler: Bytes,
    pace: Option<Pace>,
) {
    // Receipts are recorded where they arrive (the connection's reader task),
    // with the time from queuing the message to its receipt.
    let errors = local.shared();
    let local = Arc::new(std::sync::Mutex::new(local));
    let Counters {
        stop,
        sent,
        published,
        limit,
        mut keys,
    } = counters;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(pace) = &pace {
            pace.until(n).await;
        }
        if limit > 0 && sent.fetch_add(1, Ordering::Relaxed) >= limit {
            break;
        }
        n += 1;
        let mut payload = BytesMut::with_capacity(8 + filler.len());
        payload.put_u64(now_us());
        payload.put_slice(&filler);
        let len = payload.len();
        let (local, published) = (local.clone(), published.clone());
        let on_receipt = Box::new(move |result: Result<_, _>, latency| {
            if let Ok(mut l) = local.lock() {
                match result {
                    Ok(_) => {
                        l.record(latency, len);
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => l.error(),
                }
            }
        });
        let msg = OutgoingMessage {
            payload: payload.freeze(),
            key: keys.as_mut().map(Keys::next_key),
            properties: Vec::new(),
        };
        if producer.send_with_callback(msg, on_receipt).await.is_err() {
            errors.error();
            break;
        }
    }
    // Every receipt back (or failed) before the totals are read.
    let _ = producer.close().await;
}

/// Waits `d`, or less if Ctrl-C comes first (then sets `interrupted`).
async fn pause(
    d: Duration,
    ctrl_c: &mut std::pin::Pin<&mut impl std::future::Future<Output = std::io::Result<()>>>,
    interrupted: &mut bool,
) {
    if *interrupted {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = ctrl_c.as_mut() => *interrupted = true,
    }
}

/// Runs the command (on the runtime [`super::run`] starts). Ctrl-C ends the
/// measurement early; the summary is printed all the same.
pub async fn run(mode: Mode) -> anyhow::Result<()> {
    let (common, produce, name) = match &mode {
        Mode::Produce(c) => (&c.common, Some(&c.produce), "produce"),
        Mode::Consume(c) => (&c.common, None, "consume"),
        Mode::E2e(c) => (&c.common, Some(&c.produce), "e2e"),
        Mode::Read(c) => (&c.common, None, "read"),
    };
    let subscribing = match &mode {
        Mode::Produce(_) => None,
        Mode::Consume(c) => Some(Subscribing::consume(&c.consume)?),
        Mode::E2e(c) => Some(Subscribing::consume(&c.consume)?),
        Mode::Read(c) => Some(Subscribing::read(&c.read)?),
    };
    let mut histogram_log = common
        .histogram_file
        .as_deref()
        .map(HistogramLog::create)
        .transpose()?;
    let topics = topic_names(common).await?;
    let clients = connect_all(common).await?;
    let run = Run {
        // Without a warm-up every message counts, those that arrive while
        // the other consumers and producers are still being set up too (a
        // reader can drain a backlog before the measurement loop starts).
        measuring: Arc::new(AtomicBool::new(common.timing.warmup_secs == 0)),
        stop_producers: Arc::new(AtomicBool::new(false)),
        stop_consumers: Arc::new(AtomicBool::new(false)),
        sent: Arc::new(AtomicU64::new(0)),
        published: Arc::new(AtomicU64::new(0)),
        received: Arc::new(AtomicU64::new(0)),
    };
    let publish = Recorder::new(run.measuring.clone());
    let deliver = Recorder::new(run.measuring.clone());
    let mut consumers = Vec::new();
    if let Some(sub) = &subscribing {
        consumers =
            start_consumers(&clients, &topics, sub, &run, &deliver, produce.is_some()).await?;
    }
    let mut producers = Vec::new();
    if let Some(p) = produce {
        producers = start_producers(&clients, &topics, p, &run, &publish).await?;
    }
    eprintln!(
        "{name}: {} topic(s)/partition(s), warming up for {} s",
        topics.len(),
        common.timing.warmup_secs
    );
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let limit = produce.map_or(0, |p| p.messages);
    let finished = |run: &Run| limit > 0 && run.sent.load(Ordering::Relaxed) >= limit;
    let warm_end = Instant::now() + common.timing.warmup();
    while Instant::now() < warm_end && !finished(&run) && !interrupted {
        pause(Duration::from_millis(50), &mut ctrl_c, &mut interrupted).await;
    }
    run.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut last = (0u64, 0u64, 0u64, 0u64);
    let mut sec = 0u64;
    // The end of the last interval the live lines (and the histogram log) cover.
    let mut logged_until = Duration::ZERO;
    while !interrupted {
        sec += 1;
        let tick = t0 + Duration::from_secs(sec);
        while Instant::now() < tick && !finished(&run) && !interrupted {
            let d = Duration::from_millis(20).min(tick.saturating_duration_since(Instant::now()));
            pause(d, &mut ctrl_c, &mut interrupted).await;
        }
        let now = (
            publish.messages(),
            publish.bytes(),
            deliver.messages(),
            deliver.bytes(),
        );
        let mut line = format!("[{sec:>4}s]");
        let interval_start = logged_until;
        logged_until = t0.elapsed();
        let interval_length = logged_until.saturating_sub(interval_start);
        if produce.is_some() {
            let h = publish.take_interval_histogram();
            if subscribing.is_none() {
                if let (Some(log), Some(h)) = (histogram_log.as_mut(), h.as_ref()) {
                    log.write(h, interval_start, interval_length)?;
                }
            }
            let l = h.as_ref().map(Latency::of).unwrap_or_default();
            line += &interval_line("publish", now.0 - last.0, now.1 - last.1, l);
        }
        if subscribing.is_some() {
            let h = deliver.take_interval_histogram();
            if let (Some(log), Some(h)) = (histogram_log.as_mut(), h.as_ref()) {
                log.write(h, interval_start, interval_length)?;
            }
            let l = h.as_ref().map(Latency::of).unwrap_or_default();
            if produce.is_some() {
                line += " |";
            }
            line += &interval_line("receive", now.2 - last.2, now.3 - last.3, l);
        }
        let errors = publish.errors() + deliver.errors();
        if errors > 0 {
            line += &format!(" errors {errors}");
        }
        eprintln!("{line}");
        last = now;
        let timed_out = common.timing.duration_secs > 0 && sec >= common.timing.duration_secs;
        if timed_out || finished(&run) {
            break;
        }
    }
    if interrupted {
        eprintln!("{name}: interrupted, stopping");
    }
    // Producers stop and wait for their receipts; in `e2e` the consumers then
    // drain what was published (for at most DRAIN), so every message is counted.
    run.stop_producers.store(true, Ordering::Relaxed);
    for t in producers {
        let _ = t.await;
    }
    // Each subscription receives every message.
    let copies = subscribing.as_ref().map_or(0, |s| s.names.len() as u64);
    if produce.is_some() && copies > 0 && !interrupted {
        let deadline = Instant::now() + DRAIN;
        while run.received.load(Ordering::Relaxed) < run.published.load(Ordering::Relaxed) * copies
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    run.measuring.store(false, Ordering::Relaxed);
    run.stop_consumers.store(true, Ordering::Relaxed);
    for t in consumers {
        let _ = t.await;
    }
    // What was recorded after the last live line (receipts and deliveries
    // that came while stopping) closes the histogram log.
    if let Some(log) = histogram_log.as_mut() {
        let main = if subscribing.is_some() {
            &deliver
        } else {
            &publish
        };
        if let Some(h) = main.take_interval_histogram() {
            log.write(&h, logged_until, t0.elapsed().saturating_sub(logged_until))?;
        }
    }
    let publish_summary = Summary::of(&publish, seconds);
    let deliver_summary = Summary::of(&deliver, seconds);
    let report = match mode {
        Mode::Produce(_) => Report {
            mode: name,
            main: publish_summary,
            publish: None,
        },
        Mode::Consume(_) | Mode::Read(_) => Report {
            mode: name,
            main: deliver_summary,
            publish: None,
        },
        Mode::E2e(_) => Report {
            mode: name,
            main: deliver_summary,
            publish: Some(publish_summary),
        },
    };
    common.output.print(&report, || {
        let what = match name {
            "produce" => "publish",
            "consume" | "read" => "receive",
            _ => "end-to-end",
        };
        match &report.publish {
            Some(p) => format!("{}\n{}", p.line("publish"), report.main.line(what)),
            None => report.main.line(what),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(topic: &[&str], topics: usize) -> anyhow::Result<Vec<String>> {
        let topic: Vec<String> = topic.iter().map(|t| t.to_string()).collect();
        base_names(&topic, topics)
    }

    #[test]
    fn one_topic_is_numbered_and_a_list_is_taken_as_given() {
        assert_eq!(names(&["t"], 1).unwrap(), ["t"]);
        assert_eq!(names(&["t"], 3).unwrap(), ["t-0", "t-1", "t-2"]);
        assert_eq!(names(&["a", "b"], 1).unwrap(), ["a", "b"]);
        assert_eq!(names(&["a", "b"], 2).unwrap(), ["a", "b"]);
        let e = names(&["a", "b"], 3).unwrap_err().to_string();
        assert!(e.contains("--topics 3"), "{e}");
    }
}
