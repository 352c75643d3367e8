//! The namespace-scale check of the metadata path: 100,000 topics created
//! through the admin API are all listed page by page, and still are after a
//! restart (`kilonova perf topics` does the creating and the listing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Broker;
use tokio::process::Command;

const TOPICS: u64 = 100_000;

async fn perf_topics(broker: &Broker, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kilonova"))
        .args(["perf", "topics", "--output", "json", "--page", "7000"])
        .args([
            "--admin-url",
            &format!("http://127.0.0.1:{}", broker.http_port),
        ])
        .args(extra)
        .output()
        .await
        .expect("run kilonova perf topics");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kilonova perf topics failed: {stderr}"
    );
    serde_json::from_slice(&out.stdout).expect("perf topics prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_topics_are_listed_page_by_page_and_survive_a_restart() {
    let mut broker = Broker::start().await;
    let count = TOPICS.to_string();
    let created = perf_topics(&broker, &["--count", &count]).await;
    assert_eq!(created["created"], TOPICS, "{created}");
    assert_eq!(created["errors"], 0, "{created}");
    assert_eq!(created["listed"], TOPICS, "every topic listed: {created}");
    assert!(
        created["pages"].as_u64().unwrap() >= TOPICS / 7000,
        "listed in pages: {created}"
    );

    broker.restart().await;
    let relisted = perf_topics(&broker, &["--list-only"]).await;
    assert_eq!(relisted["listed"], TOPICS, "after a restart: {relisted}");
}
