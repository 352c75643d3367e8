//! `kilonova perf` against the real binary: every message it publishes is
//! counted once at the other end, and its JSON summary has the fields the
//! benchmark suite reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Broker;
use tokio::process::Command;

async fn perf(broker: &Broker, args: &[&str]) -> serde_json::Value {
    perf_with_progress(broker, args).await.0
}

/// Runs `kilonova perf ARGS` to its end: its JSON summary and its stderr (the
/// live lines).
async fn perf_with_progress(broker: &Broker, args: &[&str]) -> (serde_json::Value, String) {
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
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "perf output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (json, stderr.into_owned())
}

/// The messages the live lines counted for `what` (`publish`, `receive`),
/// summed over every `[ Ns]` line.
fn live_total(stderr: &str, what: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| {
            let rest = &l[l.find(what)? + what.len()..];
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
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
async fn topics_given_by_name_are_the_ones_produced_to() {
    let broker = Broker::start().await;
    let topics = [
        "persistent://public/default/perf-named-a",
        "persistent://public/default/perf-other-b",
    ];
    let p = perf(
        &broker,
        &[
            "produce",
            "--topic",
            topics[0],
            "--topic",
            topics[1],
            "--no-batching",
            "--messages",
            "2000",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "0",
        ],
    )
    .await;
    assert_eq!(p["messages"], 2000, "{p}");
    let mut total = 0;
    for topic in topics {
        let c = perf(
            &broker,
            &[
                "consume",
                "--topic",
                topic,
                "--initial-position",
                "earliest",
                "--duration-secs",
                "2",
                "--warmup-secs",
                "0",
            ],
        )
        .await;
        let n = c["messages"].as_u64().unwrap();
        assert!(n > 0, "nothing produced to {topic}: {c}");
        total += n;
    }
    assert_eq!(total, 2000, "every message on one of the two topics");
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
    let (c, progress) = perf_with_progress(
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
    // The live lines count the backlog as it drains, not only the summary.
    assert_eq!(
        live_total(&progress, "receive"),
        3000,
        "live lines: {progress}"
    );
}

/// Runs `kilonova client ARGS` against `broker`; its stdout.
async fn client(broker: &Broker, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kilonova"))
        .arg("client")
        .args(args)
        .args(["--url", &broker.service_url()])
        .output()
        .await
        .expect("run kilonova client");
    assert!(
        out.status.success(),
        "kilonova client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("client output is UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_file_is_an_hdrhistogram_log_of_every_publish() {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("publish.hgrm");
    let v = perf(
        &broker,
        &[
            "produce",
            "--topic",
            "persistent://public/default/perf-hist",
            "-m",
            "2000",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "0",
            "--histogram-file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(v["messages"], 2000, "{v}");
    let log = std::fs::read(&file).unwrap();
    let mut intervals = 0;
    let mut count = 0;
    let mut saw_start_time = false;
    for entry in IntervalLogIterator::new(&log) {
        match entry.expect("a valid interval log entry") {
            LogEntry::StartTime(_) => saw_start_time = true,
            LogEntry::Interval(i) => {
                intervals += 1;
                let bytes = decode_base64(i.encoded_histogram());
                let h: hdrhistogram::Histogram<u64> = Deserializer::new()
                    .deserialize(&mut bytes.as_slice())
                    .expect("a V2 deflate histogram");
                count += h.len();
            }
            LogEntry::BaseTime(_) => {}
        }
    }
    assert!(saw_start_time, "no StartTime header");
    assert!(intervals >= 1);
    assert_eq!(count, 2000, "every receipt is in the log once");
}

/// Standard base64 (the log's histogram encoding), for the test's own check.
fn decode_base64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_generation_mode_gives_every_message_a_key() {
    let broker = Broker::start().await;
    let topic = "persistent://public/default/perf-keys";
    let v = perf(
        &broker,
        &[
            "produce",
            "--topic",
            topic,
            "-mk",
            "autoIncrement",
            "-m",
            "20",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "0",
        ],
    )
    .await;
    assert_eq!(v["messages"], 20, "{v}");
    let out = client(
        &broker,
        &[
            "read", topic, "-m", "earliest", "-n", "20", "--output", "json",
        ],
    )
    .await;
    let keys: Vec<String> = out
        .lines()
        .map(|l| {
            let m: serde_json::Value = serde_json::from_str(l).unwrap();
            m["key"].as_str().expect("a key").to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(keys, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_shared_e2e_with_random_keys_and_lz4_receives_everything_on_two_subscriptions() {
    let broker = Broker::start().await;
    let v = perf(
        &broker,
        &[
            "e2e",
            "--topic",
            "persistent://public/default/perf-ks",
            "-mk",
            "random",
            "-st",
            "key_shared",
            "--consumers-per-topic",
            "2",
            "-ns",
            "2",
            "-z",
            "lz4",
            "-m",
            "1000",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "0",
        ],
    )
    .await;
    assert_eq!(v["publish"]["messages"], 1000, "{v}");
    assert_eq!(
        v["messages"], 2000,
        "every message once on each subscription: {v}"
    );
    assert_eq!(v["errors"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_mode_reads_the_topic_from_earliest_and_unknown_codecs_are_refused() {
    let broker = Broker::start().await;
    let topic = "persistent://public/default/perf-read";
    let p = perf(
        &broker,
        &[
            "produce",
            "--topic",
            topic,
            "-z",
            "zstd",
            "-b",
            "0",
            "-m",
            "500",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "0",
        ],
    )
    .await;
    assert_eq!(p["messages"], 500, "{p}");
    let (r, progress) = perf_with_progress(
        &broker,
        &[
            "read",
            "--topic",
            topic,
            "--warmup-secs",
            "0",
            "--duration-secs",
            "2",
        ],
    )
    .await;
    assert_eq!(r["mode"], "read");
    assert_eq!(r["messages"], 500, "{r}");
    assert_eq!(live_total(&progress, "receive"), 500, "{progress}");
    let out = Command::new(env!("CARGO_BIN_EXE_kilonova"))
        .args(["perf", "produce", "-z", "brotli", "--service-url"])
        .arg(broker.service_url())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown compression 'brotli'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_the_run_with_a_summary() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let broker = Broker::start().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kilonova"))
        .args(["perf", "produce", "--rate", "2000", "--warmup-secs", "0"])
        .args(["--duration-secs", "0", "--output", "json"])
        .args(["--service-url", &broker.service_url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    common::within(common::STEP, "a first live line", async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.starts_with("[   1s]") {
                return;
            }
        }
        panic!("perf ended before its first live line");
    })
    .await;
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    let status = common::within(common::STEP, "perf to exit after Ctrl-C", child.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON summary");
    assert!(v["messages"].as_u64().unwrap() > 0, "{v}");
    assert!(v["latency_us"]["p99"].as_u64().unwrap() > 0, "{v}");
}
