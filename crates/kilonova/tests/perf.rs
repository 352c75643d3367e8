//! `kilonova perf` against the real binary: every message it publishes is
//! counted once at the other end, and its JSON summary has the fields the
//! benchmark suite reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Broker;
use tokio::process::Command;

async fn perf(broker: &Broker, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kilonova"))
        .arg("perf")
        .args(args)
        .args(["--service-url", &broker.service_url()])
        .args([
            "--admin-url",
            &format!("http://127.0.0.1:{}", broker.http_port),
        ])
        .args(["--output", "json"])
        .output()
        .await
        .expect("run kilonova perf");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kilonova perf failed: {stderr}");
    assert!(
        stderr.contains("[   1s]") || stderr.contains("msg/s"),
        "no progress line: {stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "perf output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn assert_latency(v: &serde_json::Value) {
    let l = &v["latency_us"];
    let (p50, p99, p999, max) = (
        l["p50"].as_u64().unwrap(),
        l["p99"].as_u64().unwrap(),
        l["p999"].as_u64().unwrap(),
        l["max"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_receives_every_published_message_batched_and_partitioned() {
    let broker = Broker::start().await;
    let v = perf(
        &broker,
        &[
            "e2e",
            "--topic",
            "persistent://public/default/perf-e2e",
            "--partitions",
            "3",
            "--messages",
            "6000",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "0",
            "--size",
            "200",
        ],
    )
    .await;
    assert_eq!(v["mode"], "e2e");
    assert_eq!(v["publish"]["messages"], 6000, "{v}");
    assert_eq!(
        v["messages"], 6000,
        "every published message received once: {v}"
    );
    assert_eq!(v["errors"], 0);
    let per_message = v["bytes_per_sec"].as_f64().unwrap() / v["msgs_per_sec"].as_f64().unwrap();
    assert!(
        (per_message - 200.0).abs() < 1e-6,
        "bytes per message: {per_message}"
    );
    assert_latency(&v);
    assert_latency(&v["publish"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_unbatched_then_consume_from_earliest() {
    let broker = Broker::start().await;
    let topic = "persistent://public/default/perf-two-step";
    // A subscription that exists before the messages do keeps them.
    let c = perf(
        &broker,
        &[
            "consume",
            "--topic",
            topic,
            "--duration-secs",
            "1",
            "--warmup-secs",
            "0",
        ],
    )
    .await;
    assert_eq!(c["messages"], 0);
    let p = perf(
        &broker,
        &[
            "produce",
            "--topic",
            topic,
            "--no-batching",
            "--messages",
            "3000",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "0",
            "--producers-per-topic",
            "2",
        ],
    )
    .await;
    assert_eq!(p["mode"], "produce");
    assert_eq!(p["messages"], 3000, "{p}");
    assert_latency(&p);
    let c = perf(
        &broker,
        &[
            "consume",
            "--topic",
            topic,
            "--duration-secs",
            "2",
            "--warmup-secs",
            "0",
        ],
    )
    .await;
    assert_eq!(c["messages"], 3000, "the backlog, each message once: {c}");
}
