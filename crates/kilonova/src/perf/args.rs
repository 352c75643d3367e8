//! The flags several perf commands share, each defined once and flattened into
//! the commands that take it. Their names and defaults are the ones
//! `scripts/bench*` and docs/benchmarks.md use.

use std::time::Duration;

use serde::Serialize;

pub use crate::client::args::Credentials;

/// Where the broker serves the Pulsar protocol.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceUrl {
    /// The broker's Pulsar service URL.
    #[arg(
        id = "service_url",
        short = 'u',
        long = "service-url",
        value_name = "SERVICE_URL",
        default_value = "pulsar://127.0.0.1:6650"
    )]
    pub url: String,
}

/// Where the broker serves its admin REST API.
#[derive(clap::Args, Debug, Clone)]
pub struct AdminUrl {
    /// The broker's admin REST API URL.
    #[arg(
        id = "admin_url",
        long = "admin-url",
        value_name = "ADMIN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
}

/// How long a run warms up, then measures.
#[derive(clap::Args, Debug, Clone)]
pub struct Timing {
    /// Seconds measured, after the warm-up (produce, e2e: 0 runs until
    /// `--messages`).
    #[arg(long, visible_alias = "test-duration", default_value_t = 10)]
    pub duration_secs: u64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
}

impl Timing {
    pub fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup_secs)
    }
}

/// How the final report is printed.
#[derive(clap::Args, Debug, Clone)]
pub struct Output {
    /// `text` or `json` (one JSON object on stdout at the end).
    #[arg(
        id = "output",
        long = "output",
        value_name = "OUTPUT",
        default_value = "text"
    )]
    pub format: String,
}

impl Output {
    /// Prints `report` as one JSON object with `--output json`, else `text()`.
    pub fn print(
        &self,
        report: &impl Serialize,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.format == "json" {
            println!("{}", serde_json::to_string(report)?);
        } else {
            println!("{}", text());
        }
        Ok(())
    }
}

/// pulsar-perf's single-dash long flags and the long flags they stand for.
pub const PERF_SINGLE_DASH_FLAGS: &[(&str, &str)] = &[
    ("-mk", "--message-key-generation-mode"),
    ("-ns", "--num-subscriptions"),
    ("-st", "--subscription-type"),
    ("-sp", "--subscription-position"),
    ("-time", "--test-duration"),
    ("-bm", "--batch-max-messages"),
    ("-bb", "--batch-max-bytes"),
];
