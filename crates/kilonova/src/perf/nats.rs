//! `kilonova perf nats` (built with `--features nats`): the same publish load
//! against NATS JetStream, the benchmark suite's peer. One file-backed stream;
//! a publish counts once JetStream's ack arrives (which, in nats-server's
//! default mode, precedes the fsync).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::args::{Output, Timing};
use super::recorder::{Recorder, Summary};

#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// The stream (created with file storage if missing) and its subject.
    #[arg(long, default_value = "perf")]
    pub stream: String,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Publishes waiting for their ack at once (1: strictly sequential).
    #[arg(long, default_value_t = 1000)]
    pub in_flight: usize,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    in_flight: usize,
    #[serde(flatten)]
    main: Summary,
}

/// Runs the command (on the runtime [`super::run`] starts).
pub async fn run(args: NatsArgs) -> anyhow::Result<()> {
    let client = async_nats::connect(&args.url)
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    let js = jetstream::new(client);
    let subject = format!("{}.data", args.stream);
    js.get_or_create_stream(stream::Config {
        name: args.stream.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating stream {}: {e}", args.stream))?;

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = Recorder::new(measuring.clone());
    let window = Arc::new(Semaphore::new(args.in_flight.max(1)));
    let payload = Bytes::from(vec![0x4eu8; args.size]);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut local = recorder.local();
    let size = args.size;
    let collector = tokio::spawn(async move {
        while let Some((t0, permit, ack)) = rx.recv().await {
            let t0: Instant = t0;
            let ack: jetstream::context::PublishAckFuture = ack;
            match ack.await {
                Ok(_) => local.record(t0.elapsed(), size),
                Err(_) => local.error(),
            }
            drop(permit);
        }
    });
    let sender = {
        let (stop, recorder) = (stop.clone(), recorder.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(permit) = window.clone().acquire_owned().await else {
                    break;
                };
                let t0 = Instant::now();
                match js.publish(subject.clone(), payload.clone()).await {
                    Ok(ack) => {
                        if tx.send((t0, permit, ack)).is_err() {
                            break;
                        }
                    }
                    Err(_) => recorder.error(),
                }
            }
        })
    };

    eprintln!(
        "nats: stream {}, {} B, {} in flight, warming up for {} s",
        args.stream, args.size, args.in_flight, args.timing.warmup_secs
    );
    let seconds = recorder
        .measure_window(&args.timing, "publish", args.size)
        .await;
    stop.store(true, Ordering::Relaxed);
    let _ = sender.await;
    let _ = collector.await;
    let report = Report {
        mode: "nats",
        in_flight: args.in_flight,
        main: Summary::of(&recorder, seconds),
    };
    args.output
        .print(&report, || report.main.line("nats publish"))
}
