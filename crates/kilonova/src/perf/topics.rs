//! `kilonova perf topics`: creates many topics through the admin REST API (the
//! metadata path), concurrently, and reports the creation rate; then lists them
//! page by page and checks that every one is there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::args::{AdminUrl, Output};

#[derive(clap::Args, Debug, Clone)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub admin: AdminUrl,
    /// `tenant/namespace` to create the topics in (it must exist).
    #[arg(long, default_value = "public/default")]
    pub namespace: String,
    /// Topics are named `<prefix>-<i>`.
    #[arg(long, default_value = "idle")]
    pub prefix: String,
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Creations in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Only list and count what exists (after a restart, say); create nothing.
    #[arg(long)]
    pub list_only: bool,
    /// Topics per page when listing.
    #[arg(long, default_value_t = 10_000)]
    pub page: usize,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Serialize)]
struct Report {
    created: u64,
    errors: u64,
    create_seconds: f64,
    topics_per_sec: f64,
    listed: u64,
    pages: u64,
    list_seconds: f64,
}

/// Runs the command (on the runtime [`super::run`] starts).
pub async fn run(args: TopicsArgs) -> anyhow::Result<()> {
    let Some((tenant, ns)) = args.namespace.split_once('/') else {
        bail!("--namespace must be tenant/namespace");
    };
    let base = format!(
        "{}/admin/v2/persistent/{tenant}/{ns}",
        args.admin.url.trim_end_matches('/')
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let (created, errors, create_seconds) = if args.list_only {
        (0, 0, 0.0)
    } else {
        create(&http, &base, &args).await?
    };
    let (listed, pages, list_seconds) = list(&http, &base, &args).await?;
    let report = Report {
        created,
        errors,
        create_seconds,
        topics_per_sec: if create_seconds > 0.0 {
            created as f64 / create_seconds
        } else {
            0.0
        },
        listed,
        pages,
        list_seconds,
    };
    args.output.print(&report, || {
        format!(
            "created {created} topics in {create_seconds:.1} s ({:.0}/s, {errors} errors); listed {listed} in {pages} pages in {list_seconds:.1} s",
            report.topics_per_sec
        )
    })?;
    if errors > 0 {
        bail!("{errors} creations failed");
    }
    Ok(())
}

async fn create(
    http: &reqwest::Client,
    base: &str,
    args: &TopicsArgs,
) -> anyhow::Result<(u64, u64, f64)> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (http, next, done, errors) = (http.clone(), next.clone(), done.clone(), errors.clone());
        let (base, prefix, count) = (base.to_owned(), args.prefix.clone(), args.count);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let url = format!("{base}/{prefix}-{i}");
                match http.put(&url).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("PUT {url}: {}", r.status());
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("PUT {url}: {e}");
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let progress = {
        let done = done.clone();
        let count = args.count;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                let n = done.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                eprintln!(
                    "    [{secs:>5.0}s] created {n} of {count} topics ({:.0}/s)",
                    n as f64 / secs
                );
            }
        })
    };
    for w in workers {
        w.await.context("a creating task failed")?;
    }
    progress.abort();
    let errors = errors.load(Ordering::Relaxed);
    Ok((
        done.load(Ordering::Relaxed) - errors,
        errors,
        start.elapsed().as_secs_f64(),
    ))
}

/// Pages through the namespace's topics; counts those named `<prefix>-…`.
async fn list(
    http: &reqwest::Client,
    base: &str,
    args: &TopicsArgs,
) -> anyhow::Result<(u64, u64, f64)> {
    let start = Instant::now();
    let (mut listed, mut pages) = (0u64, 0u64);
    let mut after: Option<String> = None;
    let wanted = format!("/{}-", args.prefix);
    loop {
        // The names this tool makes are URL-safe (letters, digits, -).
        let url = match &after {
            Some(a) => format!("{base}?limit={}&after={a}", args.page),
            None => format!("{base}?limit={}", args.page),
        };
        let resp = http.get(&url).send().await.context("listing topics")?;
        if !resp.status().is_success() {
            bail!("listing topics: {}", resp.status());
        }
        let names: Vec<String> = resp.json().await.context("reading a page of topics")?;
        pages += 1;
        listed += names.iter().filter(|n| n.contains(&wanted)).count() as u64;
        match names.last() {
            Some(last) if names.len() >= args.page => {
                after = last.rsplit('/').next().map(str::to_owned);
            }
            _ => break,
        }
        if pages % 10 == 0 {
            eprintln!("    listed {listed} topics in {pages} pages");
        }
    }
    Ok((listed, pages, start.elapsed().as_secs_f64()))
}
