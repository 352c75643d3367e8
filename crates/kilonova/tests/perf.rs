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

/// `GET …/{topic}/stats` (as `token`'s role when authentication is on):
/// `None` while the topic does not exist (404).
async fn try_topic_stats(
    broker: &Broker,
    topic: &str,
    token: Option<&str>,
) -> Option<serde_json::Value> {
    let path = format!("/admin/v2/{}/stats", topic.replacen("://", "/", 1));
    let (status, body) = common::http_request_as(broker.http_port, "GET", &path, "", token)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "GET {path}: {body}");
    Some(
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}")),
    )
}

async fn topic_stats(broker: &Broker, topic: &str, token: Option<&str>) -> serde_json::Value {
    try_topic_stats(broker, topic, token)
        .await
        .unwrap_or_else(|| panic!("{topic} does not exist"))
}

/// Polls a topic's stats until `ready` holds; fails naming `what` and the
/// last stats.
async fn wait_for_stats(
    broker: &Broker,
    topic: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + common::STEP;
    loop {
        let s = try_topic_stats(broker, topic, None).await;
        if let Some(s) = s.as_ref().filter(|s| ready(s)) {
            return s.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {:?} waiting for {what} on {topic}: {s:?}",
            common::STEP
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_flag_shrinks_what_the_broker_stores_and_readers_get_the_payloads_back() {
    let broker = Broker::start().await;
    let mut stored = Vec::new();
    for codec in ["none", "lz4", "zstd", "zlib", "snappy"] {
        let topic = format!("persistent://public/default/perf-z-{codec}");
        // Unbatched: each entry is one message compressed alone; the payload
        // (a timestamp, then one byte repeated) compresses well.
        let p = perf(
            &broker,
            &[
                "produce",
                "--topic",
                &topic,
                "-z",
                codec,
                "--no-batching",
                "-s",
                "1024",
                "-m",
                "200",
                "--warmup-secs",
                "0",
                "--duration-secs",
                "0",
            ],
        )
        .await;
        assert_eq!(p["messages"], 200, "{codec}: {p}");
        let size = topic_stats(&broker, &topic, None).await["storageSize"]
            .as_u64()
            .unwrap();
        stored.push((codec, size));
        let r = perf(
            &broker,
            &[
                "read",
                "--topic",
                &topic,
                "--warmup-secs",
                "0",
                "--duration-secs",
                "2",
            ],
        )
        .await;
        assert_eq!(r["messages"], 200, "{codec}: {r}");
        let per_message =
            r["bytes_per_sec"].as_f64().unwrap() / r["msgs_per_sec"].as_f64().unwrap();
        assert!(
            (per_message - 1024.0).abs() < 1e-6,
            "{codec}: readers get the 1024-byte payloads back, got {per_message} bytes per message"
        );
    }
    let plain = stored[0].1;
    assert!(
        plain >= 200 * 1024,
        "uncompressed, the 200 payloads are stored whole: {stored:?}"
    );
    for (codec, size) in &stored[1..] {
        assert!(
            size * 4 < plain,
            "-z {codec} stores less than a quarter of the uncompressed bytes: {stored:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_topics_flags_open_that_many_producers_on_that_many_topics() {
    use std::process::Stdio;
    let broker = Broker::start().await;
    let base = "persistent://public/default/perf-nt";
    let mut child = Command::new(env!("CARGO_BIN_EXE_kilonova"))
        .args(["perf", "produce", "--topic", base, "-t", "2", "-n", "3"])
        .args(["-r", "60", "--warmup-secs", "0", "--duration-secs", "30"])
        .args(["--output", "json", "--service-url", &broker.service_url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for topic in [format!("{base}-0"), format!("{base}-1")] {
        // Every producer of the topic publishes (-r 60 over 6 producers: 10/s each).
        let s = wait_for_stats(&broker, &topic, "3 publishers, each publishing", |s| {
            s["publishers"].as_array().is_some_and(|p| {
                p.len() == 3
                    && p.iter()
                        .all(|p| p["msgInCounter"].as_u64().is_some_and(|n| n > 0))
            })
        })
        .await;
        assert_eq!(s["publishers"].as_array().unwrap().len(), 3, "{s}");
    }
    assert!(
        try_topic_stats(&broker, base, None).await.is_none(),
        "with -t 2 the topics are {base}-0 and {base}-1, not {base}"
    );
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = common::within(common::STEP, "perf to exit after Ctrl-C", async {
        let mut stdout = String::new();
        tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout)
            .await
            .unwrap();
        (child.wait().await.unwrap(), stdout)
    })
    .await;
    assert!(out.0.success(), "{}", out.0);
    let v: serde_json::Value = serde_json::from_str(&out.1).expect("a JSON summary");
    assert!(v["messages"].as_u64().unwrap() > 0, "{v}");
}

/// Runs `perf produce` on `topic` for 2 s (no warm-up) with `flags`; returns
/// what the broker counted in and perf's summary.
async fn produce_for_two_seconds(
    broker: &Broker,
    topic: &str,
    flags: &[&str],
) -> (u64, serde_json::Value) {
    let mut args = vec!["produce", "--topic", topic];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--warmup-secs", "0", "--duration-secs", "2"]);
    let p = perf(broker, &args).await;
    let published = topic_stats(broker, topic, None).await["msgInCounter"]
        .as_u64()
        .unwrap();
    (published, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_flag_holds_the_publish_rate_over_all_producers() {
    let broker = Broker::start().await;
    let topic = "persistent://public/default/perf-rate";
    let (published, p) = produce_for_two_seconds(&broker, topic, &["-n", "2", "-r", "200"]).await;
    // 200/s for 2 s (the rate is the total over the 2 producers); unlimited,
    // a producer publishes thousands a second. The upper bound is the
    // limit; the lower one leaves room for a loaded machine falling behind.
    assert!(
        (100..=500).contains(&published),
        "-r 200 for 2 s published {published} messages: {p}"
    );
    assert!(p["messages"].as_u64().unwrap() <= published, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_pacing_holds_a_rate_faster_than_the_timer_ticks() {
    let broker = Broker::start().await;
    let topic = "persistent://public/default/perf-even-pacing";
    // One producer due every 500 µs: shorter than tokio's 1 ms timer, so
    // its sends are paced by the pacing thread.
    let (published, p) =
        produce_for_two_seconds(&broker, topic, &["-r", "2000", "--even-pacing"]).await;
    assert!(
        (1_000..=4_400).contains(&published),
        "-r 2000 --even-pacing for 2 s published {published} messages: {p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_a_token_on_a_broker_with_authentication() {
    let (broker, keys) = common::secured_broker("").await;
    let admin = common::token(&keys, "admin");
    let topic = "persistent://public/default/perf-auth";
    let p = perf(
        &broker,
        &[
            "produce",
            "--topic",
            topic,
            "--auth-token",
            &admin,
            "-m",
            "300",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "0",
        ],
    )
    .await;
    assert_eq!(p["messages"], 300, "{p}");
    let consume = |token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kilonova"));
        cmd.args(["perf", "consume", "--topic", topic])
            .args(["--initial-position", "earliest"])
            .args(["--warmup-secs", "0", "--duration-secs", "2"])
            .args(["--output", "json", "--service-url", &broker.service_url()]);
        if let Some(t) = token {
            cmd.args(["--auth-token", t]);
        }
        cmd.output()
    };
    let refused = common::within(common::STEP, "perf consume without a token", consume(None))
        .await
        .unwrap();
    assert!(
        !refused.status.success(),
        "a consumer without a token was let in: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let out = common::within(
        common::STEP,
        "perf consume with a token",
        consume(Some(&admin)),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "perf consume with a token: {stderr}");
    assert!(!stderr.contains(&admin), "the token was printed: {stderr}");
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["messages"], 300, "every message, with the token: {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_two_subscriptions_gets_every_message_on_each() {
    let broker = Broker::start().await;
    let topic = "persistent://public/default/perf-ns";
    let p = perf(
        &broker,
        &[
            "produce",
            "--topic",
            topic,
            "-m",
            "400",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "0",
        ],
    )
    .await;
    assert_eq!(p["messages"], 400, "{p}");
    let c = perf(
        &broker,
        &[
            "consume",
            "--topic",
            topic,
            "-ns",
            "2",
            "-s",
            "twice",
            "--initial-position",
            "earliest",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "2",
        ],
    )
    .await;
    assert_eq!(c["messages"], 800, "400 on each of 2 subscriptions: {c}");
    let s = wait_for_stats(&broker, topic, "both subscriptions acknowledged all", |s| {
        ["twice-0", "twice-1"]
            .iter()
            .all(|n| s["subscriptions"][n]["msgBacklog"].as_u64() == Some(0))
    })
    .await;
    let subs = s["subscriptions"].as_object().unwrap();
    assert_eq!(subs.len(), 2, "{s}");
    for name in ["twice-0", "twice-1"] {
        assert_eq!(
            s["subscriptions"][name]["msgOutCounter"], 400,
            "{name}: {s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_warmup_a_backlog_drained_while_other_topics_subscribe_is_counted() {
    let broker = Broker::start().await;
    let base = "persistent://public/default/perf-drained";
    let p = perf(
        &broker,
        &[
            "produce",
            "--topic",
            base,
            "-t",
            "20",
            "-m",
            "1000",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "0",
        ],
    )
    .await;
    assert_eq!(p["messages"], 1000, "{p}");
    // The first topics' readers and consumers drain their backlog while the
    // last ones subscribe, before the measurement loop starts: with no
    // warm-up, those messages count (they were all lost before).
    for mode in [
        &["read"][..],
        &["consume", "--initial-position", "earliest"][..],
    ] {
        let mut args = mode.to_vec();
        args.extend(["--topic", base, "-t", "20"]);
        args.extend(["--warmup-secs", "0", "--duration-secs", "2"]);
        let v = perf(&broker, &args).await;
        assert_eq!(v["messages"], 1000, "{mode:?}: {v}");
    }
}
