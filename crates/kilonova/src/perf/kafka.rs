//! `kilonova perf kafka` (built with `--features kafka`): load on a Kafka
//! listener with rskafka, a Kafka client nobody here wrote. `produce`
//! sends batches of records (acks=all) with a window of batches in flight;
//! `consume` fetches a partition from an offset on. A record counts once
//! its batch's answer arrives (produce) or once fetched (consume, latency
//! from its timestamp).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;
use serde::Serialize;

use super::args::{Output, Timing};
use super::recorder::{Recorder, Summary};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaMode {
    Produce,
    Consume,
}

#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// `produce` or `consume`.
    #[arg(long, value_enum, default_value = "produce")]
    pub mode: KafkaMode,
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// The Kafka topic (partition 0; created by the first produce).
    #[arg(long, default_value = "perf-kafka")]
    pub topic: String,
    /// Value bytes per record.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Records per produce batch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Produce batches waiting for their answer at once.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// consume: the first offset read.
    #[arg(long, default_value_t = 0)]
    pub from_offset: i64,
    /// consume: the most bytes one fetch asks for.
    #[arg(long, default_value_t = 4 << 20)]
    pub fetch_bytes: i32,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    client: &'static str,
    batch: usize,
    in_flight: usize,
    #[serde(flatten)]
    main: Summary,
}

/// Runs the command (on the runtime [`super::run`] starts).
pub async fn run(args: KafkaArgs) -> anyhow::Result<()> {
    let client = ClientBuilder::new(vec![args.bootstrap.clone()])
        .client_id("kilonova-perf")
        .build()
        .await
        .with_context(|| format!("connecting to {}", args.bootstrap))?;
    let partition = Arc::new(
        client
            .partition_client(args.topic.clone(), 0, UnknownTopicHandling::Retry)
            .await
            .with_context(|| format!("opening {} partition 0", args.topic))?,
    );
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = Recorder::new(measuring.clone());
    let mut tasks = Vec::new();
    match args.mode {
        KafkaMode::Produce => {
            for _ in 0..args.in_flight.max(1) {
                let (p, stop, mut local) = (partition.clone(), stop.clone(), recorder.local());
                let (size, batch) = (args.size, args.batch.max(1));
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let records: Vec<Record> = (0..batch)
                            .map(|_| Record {
                                key: None,
                                value: Some(vec![0x4b; size]),
                                headers: Default::default(),
                                timestamp: rskafka::chrono::Utc::now(),
                            })
                            .collect();
                        let t0 = Instant::now();
                        match p.produce(records, Compression::NoCompression).await {
                            Ok(offsets) => {
                                let took = t0.elapsed();
                                for _ in offsets {
                                    local.record(took, size);
                                }
                            }
                            Err(_) => local.error(),
                        }
                    }
                    local.flush();
                }));
            }
        }
        KafkaMode::Consume => {
            let next = Arc::new(AtomicI64::new(args.from_offset));
            let (p, stop, mut local) = (partition.clone(), stop.clone(), recorder.local());
            let max = args.fetch_bytes.max(1);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let offset = next.load(Ordering::Relaxed);
                    match p.fetch_records(offset, 1..max, 500).await {
                        Ok((records, _high)) => {
                            let now = rskafka::chrono::Utc::now();
                            for r in &records {
                                let age = (now - r.record.timestamp)
                                    .to_std()
                                    .unwrap_or(Duration::ZERO);
                                let bytes = r.record.value.as_ref().map_or(0, Vec::len);
                                local.record(age, bytes);
                                next.fetch_max(r.offset + 1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => local.error(),
                    }
                }
                local.flush();
            }));
        }
    }
    let what = match args.mode {
        KafkaMode::Produce => "produce",
        KafkaMode::Consume => "consume",
    };
    eprintln!(
        "kafka {what}: {} partition 0, {} B, batches of {}, {} in flight, warming up for {} s",
        args.topic, args.size, args.batch, args.in_flight, args.timing.warmup_secs
    );
    let seconds = recorder.measure_window(&args.timing, what, args.size).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let report = Report {
        mode: what,
        client: "rskafka 0.6",
        batch: args.batch,
        in_flight: args.in_flight,
        main: Summary::of(&recorder, seconds),
    };
    args.output
        .print(&report, || report.main.line(&format!("kafka {what}")))
}
