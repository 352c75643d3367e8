//! `kilonova perf connect`: opens connections as fast as it can (TCP connect,
//! CONNECT, CONNECTED, close), optionally presenting a token, and reports the
//! connect rate and latency: what authentication costs a connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use kilonova_client::Client;

use super::args::{Output, ServiceUrl};
use super::recorder::{Recorder, Summary};

#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub service: ServiceUrl,
    /// Present this token at CONNECT (method `token`).
    #[arg(long, env = "KILONOVA_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Connections to open in all.
    #[arg(long, default_value_t = 5_000)]
    pub connections: u64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Serialize)]
struct Report {
    connections: u64,
    authenticated: bool,
    connects_per_sec: f64,
    #[serde(flatten)]
    summary: Summary,
}

/// Runs the command (on the runtime [`super::run`] starts).
pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    // One connection first: a wrong URL or token fails here, clearly.
    Client::connect_with_token(&args.service.url, args.auth_token.as_deref())
        .await
        .with_context(|| format!("connecting to {}", args.service.url))?;
    let recorder = Recorder::new(Arc::new(AtomicBool::new(true)));
    let started_n = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (args, recorder, n) = (args.clone(), recorder.clone(), started_n.clone());
        workers.push(tokio::spawn(async move {
            let mut local = recorder.local();
            while n.fetch_add(1, Ordering::Relaxed) < args.connections {
                let t = Instant::now();
                match Client::connect_with_token(&args.service.url, args.auth_token.as_deref())
                    .await
                {
                    Ok(client) => {
                        local.record(t.elapsed(), 0);
                        drop(client);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "connect failed");
                        local.error();
                    }
                }
            }
        }));
    }
    let progress = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let done = recorder.messages();
                let l = recorder.take_interval();
                eprintln!(
                    "{:>5.1} s  {:>7} connects/s  p50 {}  p99 {}  errors {}",
                    started.elapsed().as_secs_f64(),
                    done - last,
                    super::recorder::ms(l.p50),
                    super::recorder::ms(l.p99),
                    recorder.errors()
                );
                last = done;
            }
        })
    };
    for w in workers {
        w.await.context("a connect worker failed")?;
    }
    progress.abort();
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary::of(&recorder, seconds);
    let report = Report {
        connections: summary.messages,
        authenticated: args.auth_token.is_some(),
        connects_per_sec: summary.msgs_per_sec,
        summary,
    };
    args.output.print(&report, || {
        format!(
            "{} connections ({}) in {:.1} s: {:.0} connects/s, latency p50 {} p99 {} p99.9 {} max {}, errors {}",
            report.connections,
            if report.authenticated { "with a token" } else { "no token" },
            report.summary.seconds,
            report.connects_per_sec,
            super::recorder::ms(report.summary.latency_us.p50),
            super::recorder::ms(report.summary.latency_us.p99),
            super::recorder::ms(report.summary.latency_us.p999),
            super::recorder::ms(report.summary.latency_us.max),
            report.summary.errors
        )
    })
}
