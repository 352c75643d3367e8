//! The broker's metrics: per-topic counters and gauges kept in atomics (the
//! topic's task writes them, scrapes read them without asking the task), and
//! the Prometheus text exposition (format 0.0.4) of everything, with Pulsar's
//! metric names and labels where Pulsar has the metric.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kilonova_objstore::WalStats;
use kilonova_storage::{HistogramSnapshot, SegmentStore};

use crate::cache_metrics::{self, CacheMeter};
use crate::publish_stages::PublishStages;

/// One loaded topic's metrics.
#[derive(Debug, Default)]
pub struct TopicMetrics {
    pub msg_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Entries appended by the connections that read their SENDs, without
    /// the topic's task (ADR 0026).
    pub appends_by_connection: AtomicU64,
    pub msg_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub producers: AtomicU64,
    pub consumers: AtomicU64,
    pub subscriptions: AtomicU64,
    /// Entries not yet acknowledged, summed over subscriptions.
    pub backlog: AtomicU64,
    pub storage_bytes: AtomicU64,
    /// Delayed messages sent before their time because a subscription held
    /// as many as it may (`max_delayed_messages_per_subscription`).
    pub delayed_sent_early: AtomicU64,
    /// Bytes of the topic in the object store (tiered storage).
    pub offloaded_bytes: AtomicU64,
    /// Appends by time from request to durable, in Pulsar's buckets
    /// ([`WRITE_LATENCY_BUCKETS_MS`], the last one past the largest bound).
    write_latency: [AtomicU64; WRITE_LATENCY_BUCKETS_MS.len() + 1],
    /// Appends by entry size ([`ENTRY_SIZE_BUCKETS`], then overflow).
    entry_size: [AtomicU64; ENTRY_SIZE_BUCKETS.len() + 1],
    /// The subscriptions as the topic last sampled them.
    subscription_samples: Mutex<Vec<SubscriptionSample>>,
    /// The replicators, by remote cluster, as the topic last sampled them.
    replication_samples: Mutex<Vec<ReplicationSample>>,
    /// Compactions that succeeded and failed (this load of the topic), and
    /// the entries of the compacted view after the last one.
    pub compacted_entries: AtomicU64,
    pub compactions_succeeded: AtomicU64,
    pub compactions_failed: AtomicU64,
    /// Rates over the last housekeeping period, as f64 bits.
    rate_in: AtomicU64,
    rate_out: AtomicU64,
    throughput_in: AtomicU64,
    throughput_out: AtomicU64,
}

/// Per-second rates measured by a topic.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub msg_in: f64,
    pub msg_out: f64,
    pub bytes_in: f64,
    pub bytes_out: f64,
}

/// At most this many subscriptions of a topic get series (the first by
/// name), so a topic with many subscriptions cannot flood a scrape.
pub const MAX_SUBSCRIPTION_SERIES_PER_TOPIC: usize = 100;

/// Pulsar's `pulsar_storage_write_latency_le_*` bounds (ms) and labels.
pub const WRITE_LATENCY_BUCKETS_MS: [(f64, &str); 9] = [
    (0.5, "0_5"),
    (1.0, "1"),
    (5.0, "5"),
    (10.0, "10"),
    (20.0, "20"),
    (50.0, "50"),
    (100.0, "100"),
    (200.0, "200"),
    (1000.0, "1000"),
];

/// Pulsar's `pulsar_entry_size_le_*` bounds (bytes) and labels.
pub const ENTRY_SIZE_BUCKETS: [(u64, &str); 8] = [
    (128, "128"),
    (512, "512"),
    (1024, "1_kb"),
    (2 * 1024, "2_kb"),
    (4 * 1024, "4_kb"),
    (16 * 1024, "16_kb"),
    (100 * 1024, "100_kb"),
    (1024 * 1024, "1_mb"),
];

/// One subscription as `/metrics` shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscriptionSample {
    pub name: String,
    pub backlog: u64,
    pub delayed: u64,
    pub msg_rate_out: f64,
    pub msg_throughput_out: f64,
    pub msg_rate_redeliver: f64,
    pub unacked: u64,
    pub blocked: bool,
    pub consumers: u64,
    pub msg_out: u64,
}

/// One replicator (towards `remote`) as `/metrics` shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicationSample {
    pub remote: String,
    pub rate_in: f64,
    pub throughput_in: f64,
    pub backlog: u64,
    pub rate_out: f64,
    pub throughput_out: f64,
    pub connected: bool,
    pub delay_secs: u64,
}

fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

impl TopicMetrics {
    pub fn add_in(&self, messages: u64, bytes: u64) {
        self.msg_in.fetch_add(messages, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_out(&self, messages: u64, bytes: u64) {
        self.msg_out.fetch_add(messages, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// An append became durable `took` after it was asked for.
    pub fn observe_write_latency(&self, took: std::time::Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let i = WRITE_LATENCY_BUCKETS_MS
            .iter()
            .position(|(bound, _)| ms <= *bound)
            .unwrap_or(WRITE_LATENCY_BUCKETS_MS.len());
        if let Some(b) = self.write_latency.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An entry of `bytes` was appended.
    pub fn observe_entry_size(&self, bytes: u64) {
        let i = ENTRY_SIZE_BUCKETS
            .iter()
            .position(|(bound, _)| bytes <= *bound)
            .unwrap_or(ENTRY_SIZE_BUCKETS.len());
        if let Some(b) = self.entry_size.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Replaces the subscriptions' sample (at most
    /// [`MAX_SUBSCRIPTION_SERIES_PER_TOPIC`] are kept).
    pub fn set_subscriptions(&self, mut samples: Vec<SubscriptionSample>) {
        samples.truncate(MAX_SUBSCRIPTION_SERIES_PER_TOPIC);
        *self
            .subscription_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = samples;
    }

    /// Replaces the replicators' sample.
    pub fn set_replication(&self, samples: Vec<ReplicationSample>) {
        *self
            .replication_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = samples;
    }

    fn replication(&self) -> Vec<ReplicationSample> {
        self.replication_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn subscriptions(&self) -> Vec<SubscriptionSample> {
        self.subscription_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn count_delayed_sent_early(&self) {
        self.delayed_sent_early.fetch_add(1, Ordering::Relaxed);
    }

    /// A compaction ended: with the compacted view's entry count, or failed.
    pub fn compaction_finished(&self, compacted_entries: Option<u64>) {
        match compacted_entries {
            Some(n) => {
                self.compactions_succeeded.fetch_add(1, Ordering::Relaxed);
                self.compacted_entries.store(n, Ordering::Relaxed);
            }
            None => {
                self.compactions_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn set_rates(&self, r: Rates) {
        self.rate_in.store(r.msg_in.to_bits(), Ordering::Relaxed);
        self.rate_out.store(r.msg_out.to_bits(), Ordering::Relaxed);
        self.throughput_in
            .store(r.bytes_in.to_bits(), Ordering::Relaxed);
        self.throughput_out
            .store(r.bytes_out.to_bits(), Ordering::Relaxed);
    }

    pub fn rates(&self) -> Rates {
        Rates {
            msg_in: load_f64(&self.rate_in),
            msg_out: load_f64(&self.rate_out),
            bytes_in: load_f64(&self.throughput_in),
            bytes_out: load_f64(&self.throughput_out),
        }
    }

    /// (messages in, bytes in, messages out, bytes out) so far.
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        (
            self.msg_in.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
            self.msg_out.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }
}

/// The loaded topics' metrics, by full topic name.
#[derive(Default)]
pub struct MetricsRegistry {
    topics: Mutex<HashMap<String, Arc<TopicMetrics>>>,
    /// Credentials checked: accepted, refused.
    authentications: [AtomicU64; 2],
    /// Authorization decisions: allowed, refused.
    authorizations: [AtomicU64; 2],
    /// Inactive topics deleted, and deletions that failed.
    inactive_deletions: [AtomicU64; 2],
    /// Times a connection stopped reading because of a publish rate.
    publish_throttled: AtomicU64,
    /// Topics' housekeeping ticks.
    housekeeping_ticks: AtomicU64,
    /// SUBSCRIBEs refused by a subscribe rate.
    subscribe_throttled: AtomicU64,
    /// Subscriptions deleted for having expired.
    subscriptions_expired: AtomicU64,
    /// Messages not stored because deduplication found them stored already.
    duplicates: AtomicU64,
    /// Topics fenced after a failed append.
    topics_fenced: AtomicU64,
    /// Appends the storage refused or failed (shared with the journal's
    /// calls, which count their own).
    append_failures: Arc<AtomicU64>,
    /// Replicated-subscription snapshots: started, completed, given up.
    snapshots: [AtomicU64; 3],
    /// Replicated subscriptions moved by another cluster's update.
    subscription_updates: AtomicU64,
    /// Lookups answered (connect or redirect), redirected, failed.
    lookups: [AtomicU64; 3],
    /// Metadata sessions lost (a cluster broker gave up its bundles).
    sessions_lost: AtomicU64,
    /// Pulsar-protocol connections open now.
    connections: AtomicU64,
    /// Pulsar-protocol connections opened and closed since the start.
    connections_created: AtomicU64,
    connections_closed: AtomicU64,
    /// Connections refused: by `max_connections`, by `max_connections_per_ip`.
    connections_refused: [AtomicU64; 2],
    /// The entry cache's rates, measured between scrapes.
    cache_meter: Mutex<CacheMeter>,
    /// Each stage of a publish.
    publish_stages: Arc<PublishStages>,
    /// The Kafka listener's.
    kafka: crate::kafka::metrics::KafkaMetrics,
}

/// A replicated-subscription snapshot's steps, as counted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SnapshotStep {
    Started = 0,
    Completed = 1,
    TimedOut = 2,
}

impl MetricsRegistry {
    /// The histograms of a publish's stages (connections' writers share them).
    pub(crate) fn publish_stages(&self) -> &Arc<PublishStages> {
        &self.publish_stages
    }

    pub fn count_authentication(&self, ok: bool) {
        self.authentications[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_authorization(&self, allowed: bool) {
        self.authorizations[usize::from(!allowed)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_inactive_deletion(&self, ok: bool) {
        self.inactive_deletions[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// The Kafka listener's metrics.
    pub(crate) fn kafka(&self) -> &crate::kafka::metrics::KafkaMetrics {
        &self.kafka
    }

    pub fn count_housekeeping_tick(&self) {
        self.housekeeping_ticks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_publish_throttled(&self) {
        self.publish_throttled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_subscribe_throttled(&self) {
        self.subscribe_throttled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_subscription_expired(&self) {
        self.subscriptions_expired.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a lookup's answer (`None`: it failed).
    pub fn lookup_answered(&self, answer: Option<&crate::cluster::LookupAnswer>) {
        let i = match answer {
            Some(_) => 0,
            None => 2,
        };
        self.lookups[i].fetch_add(1, Ordering::Relaxed);
        if answer.is_some_and(|a| a.redirect) {
            self.lookups[1].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_session_lost(&self) {
        self.sessions_lost.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_topic_fenced(&self) {
        self.topics_fenced.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_append_failure(&self) {
        self.append_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The counter of failed appends, for a call made off the broker's tasks.
    pub(crate) fn append_failures(&self) -> Arc<AtomicU64> {
        self.append_failures.clone()
    }

    pub(crate) fn count_snapshot(&self, step: SnapshotStep) {
        self.snapshots[step as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_subscription_update(&self) {
        self.subscription_updates.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_duplicates(&self, n: u64) {
        self.duplicates.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        self.connections_closed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_connection_refused(&self, why: crate::accept::Refusal) {
        let i = match why {
            crate::accept::Refusal::MaxConnections => 0,
            crate::accept::Refusal::MaxConnectionsPerIp => 1,
        };
        self.connections_refused[i].fetch_add(1, Ordering::Relaxed);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TopicMetrics>>> {
        // Entries are whole values: a panicking holder leaves the map consistent.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh set of metrics for a topic that loads (Pulsar's counters, too,
    /// start over when a topic loads).
    pub fn register(&self, topic: &str) -> Arc<TopicMetrics> {
        let m = Arc::new(TopicMetrics::default());
        self.map().insert(topic.to_owned(), m.clone());
        m
    }

    /// Drops a topic's metrics if they are still `m` (not a newer load's).
    pub fn unregister(&self, topic: &str, m: &Arc<TopicMetrics>) {
        let mut map = self.map();
        if map.get(topic).is_some_and(|cur| Arc::ptr_eq(cur, m)) {
            map.remove(topic);
        }
    }

    /// A loaded topic's metrics.
    pub fn get(&self, topic: &str) -> Option<Arc<TopicMetrics>> {
        self.map().get(topic).cloned()
    }

    /// Every loaded topic's metrics, by name.
    pub(crate) fn topic_snapshot(&self) -> Vec<(String, Arc<TopicMetrics>)> {
        self.snapshot()
    }

    /// Pulsar-protocol connections open now.
    pub(crate) fn open_connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> Vec<(String, Arc<TopicMetrics>)> {
        let mut v: Vec<_> = self
            .map()
            .iter()
            .map(|(k, m)| (k.clone(), m.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Escapes a label value (backslash, double quote, newline).
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A histogram whose recorded values are in units of `1/per_unit` of the
/// exported unit (`1e6` for microseconds exported as seconds). Dividing
/// (rather than multiplying by `1e-6`) gives the double nearest the decimal
/// value, so bounds print as `0.00005`, never `0.000049999999999999996`.
pub(crate) fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
    per_unit: f64,
) {
    header(out, name, "histogram", help);
    histogram_series(out, name, "", h, per_unit);
}

/// One histogram's series under `labels` (`key="value",…`, or empty), for
/// a family whose header is written.
pub(crate) fn histogram_series(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &HistogramSnapshot,
    per_unit: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, count) in &h.buckets {
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{}\"}} {count}",
            *bound as f64 / per_unit
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braced = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braced} {}", h.sum as f64 / per_unit);
    let _ = writeln!(out, "{name}_count{braced} {}", h.count);
}

/// Everything the broker measures, in Prometheus' text format, as of `now`
/// (the end of the entry cache's rate window).
pub fn render(
    cluster: &str,
    registry: &MetricsRegistry,
    store: &SegmentStore,
    cache: &kilonova_storage::EntryCache,
    now: std::time::Instant,
) -> String {
    let topics = registry.snapshot();
    let mut out = String::with_capacity(4096 + topics.len() * 1024);
    render_topics(&mut out, cluster, &topics);
    render_subscriptions(&mut out, cluster, &topics);
    render_replication(&mut out, cluster, &topics);
    render_topic_buckets(&mut out, cluster, &topics);
    render_broker_totals(&mut out, cluster, &topics);
    render_broker(&mut out, cluster, registry);
    render_storage(&mut out, store, cache);
    registry.publish_stages.render(&mut out, store);
    let stats = cache.stats();
    let rates = registry
        .cache_meter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .rates(&stats, now);
    // A loaded persistent topic owns one managed log.
    let managed_logs = topics
        .iter()
        .filter(|(name, _)| name.starts_with("persistent://"))
        .count() as u64;
    cache_metrics::render(&mut out, cluster, &stats, &rates, managed_logs);
    crate::process_metrics::render(&mut out);
    out
}

/// A cluster broker's shared data path (its write-ahead writer): flushes,
/// their commits, what they held. One committed flush is one object PUT
/// and one metadata transaction; the object-store requests themselves are
/// the `kilonova_offload_request_latency_seconds_*` histograms (the same
/// bucket).
pub(crate) fn render_shared_log(
    out: &mut String,
    cluster: &str,
    wal: WalStats,
    history: crate::cluster::shared::HistoryStats,
) {
    let counters = [
        (
            "kilonova_cluster_flush_commits_total",
            "Write-ahead flushes durable and recorded in the metadata store (one transaction each); their appends are acknowledged",
            wal.flushes,
        ),
        (
            "kilonova_cluster_flush_commit_failures_total",
            "Flush commits that failed after the object was durable: nothing recorded (deposed, refused) or the outcome unknown (metadata store unavailable, timed out); their appends fail",
            wal.failed_commits,
        ),
        (
            "kilonova_cluster_wal_flush_failures_total",
            "Write-ahead flushes that failed, at the PUT or at the commit; their appends fail",
            wal.failed_flushes,
        ),
        (
            "kilonova_cluster_wal_appends_total",
            "Entries written in write-ahead flushes, failed ones included (an entry is one SEND: one message or one batch)",
            wal.appends,
        ),
        (
            "kilonova_cluster_wal_bytes_total",
            "Entry bytes of the write-ahead flushes that succeeded",
            wal.bytes,
        ),
        (
            "kilonova_cluster_history_compactions_total",
            "Compactions of a bundle's history (flush records rewritten into its base) done here",
            history.compactions,
        ),
        (
            "kilonova_cluster_history_compaction_failures_total",
            "Compactions of a bundle's history that failed (tried again later)",
            history.compaction_failures,
        ),
        (
            "kilonova_cluster_topic_loads_total",
            "Topics rebuilt here from their bundle's history (each load of a topic)",
            history.loads,
        ),
        (
            "kilonova_cluster_topic_load_retries_total",
            "Topic loads that read the history again because a compaction replaced it meanwhile",
            history.load_retries,
        ),
        (
            "kilonova_cluster_topic_load_entries_read_total",
            "Entries topic loads here read from the object store and appended to the local log",
            history.load_entries_read,
        ),
        (
            "kilonova_cluster_topic_load_entries_left_total",
            "Entries of compacted runs topic loads here left in the object store (read when a reader reaches them)",
            history.load_entries_left,
        ),
    ];
    for (name, help, v) in counters {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {v}", escape(cluster));
    }
}

/// Reads one per-topic figure.
type Get = fn(&TopicMetrics) -> f64;

/// The per-topic series: name, kind, help, and how to read the figure.
const TOPIC_SERIES: [(&str, &str, &str, Get); 19] = [
    (
        "pulsar_in_messages_total",
        "counter",
        "Messages published to the topic",
        |m| m.msg_in.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_in_bytes_total",
        "counter",
        "Bytes published to the topic",
        |m| m.bytes_in.load(Ordering::Relaxed) as f64,
    ),
    (
        "kilonova_appends_by_connection_total",
        "counter",
        "Entries of the topic appended by the connections that read their SENDs, without the topic's task",
        |m| m.appends_by_connection.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_out_messages_total",
        "counter",
        "Messages dispatched to the topic's consumers",
        |m| m.msg_out.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_out_bytes_total",
        "counter",
        "Bytes dispatched to the topic's consumers",
        |m| m.bytes_out.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_rate_in",
        "gauge",
        "Messages published per second",
        |m| m.rates().msg_in,
    ),
    (
        "pulsar_rate_out",
        "gauge",
        "Messages dispatched per second",
        |m| m.rates().msg_out,
    ),
    (
        "pulsar_throughput_in",
        "gauge",
        "Bytes published per second",
        |m| m.rates().bytes_in,
    ),
    (
        "pulsar_throughput_out",
        "gauge",
        "Bytes dispatched per second",
        |m| m.rates().bytes_out,
    ),
    (
        "pulsar_producers_count",
        "gauge",
        "Producers connected to the topic",
        |m| m.producers.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_consumers_count",
        "gauge",
        "Consumers connected to the topic",
        |m| m.consumers.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_subscriptions_count",
        "gauge",
        "Subscriptions of the topic",
        |m| m.subscriptions.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_msg_backlog",
        "gauge",
        "Entries not yet acknowledged, summed over subscriptions",
        |m| m.backlog.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_storage_size",
        "gauge",
        "Bytes the topic stores",
        |m| m.storage_bytes.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_storage_offloaded_size",
        "gauge",
        "Bytes of the topic offloaded to the object store",
        |m| m.offloaded_bytes.load(Ordering::Relaxed) as f64,
    ),
    (
        "kilonova_delayed_messages_sent_early_total",
        "counter",
        "Delayed messages sent before their time: the subscription held its maximum",
        |m| m.delayed_sent_early.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_compaction_compacted_entries_count",
        "gauge",
        "Entries of the topic's compacted view after its last compaction",
        |m| m.compacted_entries.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_compaction_succeed_count",
        "counter",
        "Compactions of the topic that succeeded",
        |m| m.compactions_succeeded.load(Ordering::Relaxed) as f64,
    ),
    (
        "pulsar_compaction_failed_count",
        "counter",
        "Compactions of the topic that failed",
        |m| m.compactions_failed.load(Ordering::Relaxed) as f64,
    ),
];

/// Per-topic series (Pulsar's names) and the number of topics loaded.
fn render_topics(out: &mut String, cluster: &str, topics: &[(String, Arc<TopicMetrics>)]) {
    let labels: Vec<String> = topics
        .iter()
        .map(|(name, _)| topic_labels(cluster, name))
        .collect();
    for (name, kind, help, get) in TOPIC_SERIES {
        header(out, name, kind, help);
        for ((_, m), l) in topics.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{{{l}}} {}", get(m));
        }
    }
    header(
        out,
        "pulsar_topics_count",
        "gauge",
        "Topics loaded on this broker",
    );
    let _ = writeln!(
        out,
        "pulsar_topics_count{{cluster=\"{}\"}} {}",
        escape(cluster),
        topics.len()
    );
}

/// Broker-wide counters: authentication, authorization, deletions,
/// throttling, deduplication, fencing, connections.
fn render_broker(out: &mut String, cluster: &str, registry: &MetricsRegistry) {
    let counters = [
        (
            "pulsar_authentication_success_total",
            "Credentials accepted (CONNECT, AUTH_RESPONSE, HTTP)",
            &registry.authentications[0],
        ),
        (
            "pulsar_authentication_failures_total",
            "Credentials refused",
            &registry.authentications[1],
        ),
        (
            "kilonova_authorization_allowed_total",
            "Operations a role was authorized for",
            &registry.authorizations[0],
        ),
        (
            "kilonova_authorization_denied_total",
            "Operations refused for lack of permission",
            &registry.authorizations[1],
        ),
        (
            "kilonova_inactive_topics_deleted_total",
            "Topics deleted for being inactive (a partitioned topic counts once)",
            &registry.inactive_deletions[0],
        ),
        (
            "kilonova_inactive_topic_deletion_failures_total",
            "Inactive-topic deletions that failed",
            &registry.inactive_deletions[1],
        ),
        (
            "kilonova_topic_housekeeping_ticks_total",
            "Housekeeping ticks of loaded topics (each every cursor_persist_interval_ms, or quiet_topic_tick_ms while only written to)",
            &registry.housekeeping_ticks,
        ),
        (
            "kilonova_publish_throttled_total",
            "Times a connection stopped reading because a topic's publish rate was reached",
            &registry.publish_throttled,
        ),
        (
            "kilonova_subscribe_throttled_total",
            "SUBSCRIBEs refused because the consumer reached its topic's subscribe rate",
            &registry.subscribe_throttled,
        ),
        (
            "kilonova_subscriptions_expired_total",
            "Subscriptions deleted because they stayed inactive past their subscription expiration time",
            &registry.subscriptions_expired,
        ),
        (
            "kilonova_deduplicated_messages_total",
            "Messages not stored again because deduplication had stored them",
            &registry.duplicates,
        ),
        (
            "kilonova_topics_fenced_total",
            "Times a topic was fenced after a failed append (producers closed until in-flight appends drain)",
            &registry.topics_fenced,
        ),
        (
            "kilonova_append_failures_total",
            "Appends the storage refused or failed (a full disk, an I/O error); each fences its topic",
            registry.append_failures.as_ref(),
        ),
        (
            "kilonova_replicated_subscription_snapshots_started_total",
            "Replicated-subscription snapshots this cluster started",
            &registry.snapshots[SnapshotStep::Started as usize],
        ),
        (
            "kilonova_replicated_subscription_snapshots_completed_total",
            "Replicated-subscription snapshots every other cluster answered",
            &registry.snapshots[SnapshotStep::Completed as usize],
        ),
        (
            "kilonova_replicated_subscription_snapshots_timed_out_total",
            "Replicated-subscription snapshots given up because not every cluster answered in time",
            &registry.snapshots[SnapshotStep::TimedOut as usize],
        ),
        (
            "pulsar_broker_lookup_answers",
            "Lookups answered with a broker to connect to or to ask (a redirect)",
            &registry.lookups[0],
        ),
        (
            "pulsar_broker_lookup_redirects",
            "Lookups answered with a redirect to the broker chosen to serve the topic",
            &registry.lookups[1],
        ),
        (
            "pulsar_broker_lookup_failures",
            "Lookups answered with an error",
            &registry.lookups[2],
        ),
        (
            "kilonova_cluster_sessions_lost_total",
            "Times this cluster broker lost (or could no longer vouch for) its metadata session and gave up its bundles",
            &registry.sessions_lost,
        ),
        (
            "kilonova_replicated_subscription_updates_total",
            "Subscriptions moved by another cluster's replicated-subscription update",
            &registry.subscription_updates,
        ),
    ];
    for (name, help, v) in counters {
        header(out, name, "counter", help);
        let _ = writeln!(
            out,
            "{name}{{cluster=\"{}\"}} {}",
            escape(cluster),
            v.load(Ordering::Relaxed)
        );
    }
    registry.kafka.render(out, cluster);
    header(
        out,
        "pulsar_active_connections",
        "gauge",
        "Pulsar-protocol connections open (every port)",
    );
    let _ = writeln!(
        out,
        "pulsar_active_connections{{cluster=\"{}\"}} {}",
        escape(cluster),
        registry.connections.load(Ordering::Relaxed)
    );
    for (name, help, v) in [
        (
            "pulsar_connection_created_total_count",
            "Pulsar-protocol connections accepted since the broker started",
            &registry.connections_created,
        ),
        (
            "pulsar_connection_closed_total_count",
            "Pulsar-protocol connections closed since the broker started",
            &registry.connections_closed,
        ),
    ] {
        // Pulsar declares these as gauges (the name ends in `_count`, not
        // `_total`, which a counter's must in the OpenMetrics parsers).
        header(out, name, "gauge", help);
        let _ = writeln!(
            out,
            "{name}{{cluster=\"{}\"}} {}",
            escape(cluster),
            v.load(Ordering::Relaxed)
        );
    }
    header(
        out,
        "kilonova_connections_refused_total",
        "counter",
        "Pulsar-protocol connections closed at accept, by the limit that refused them",
    );
    for (reason, v) in [
        ("max_connections", &registry.connections_refused[0]),
        ("max_connections_per_ip", &registry.connections_refused[1]),
    ] {
        let _ = writeln!(
            out,
            "kilonova_connections_refused_total{{cluster=\"{}\",reason=\"{reason}\"}} {}",
            escape(cluster),
            v.load(Ordering::Relaxed)
        );
    }
}

/// The labels of a topic's series: cluster, namespace, topic.
fn topic_labels(cluster: &str, name: &str) -> String {
    let namespace = kilonova_metadata::TopicName::parse(name)
        .map(|t| t.namespace_name())
        .unwrap_or_default();
    format!(
        "cluster=\"{}\",namespace=\"{}\",topic=\"{}\"",
        escape(cluster),
        escape(&namespace),
        escape(name)
    )
}

/// Reads one per-subscription figure.
type SubGet = fn(&SubscriptionSample) -> f64;

/// Pulsar's per-subscription series.
const SUBSCRIPTION_SERIES: [(&str, &str, SubGet); 8] = [
    (
        "pulsar_subscription_back_log",
        "Entries the subscription has not acknowledged",
        |s| s.backlog as f64,
    ),
    (
        "pulsar_subscription_delayed",
        "Messages held for a later delivery time",
        |s| s.delayed as f64,
    ),
    (
        "pulsar_subscription_msg_rate_out",
        "Messages dispatched per second",
        |s| s.msg_rate_out,
    ),
    (
        "pulsar_subscription_msg_throughput_out",
        "Bytes dispatched per second",
        |s| s.msg_throughput_out,
    ),
    (
        "pulsar_subscription_msg_rate_redeliver",
        "Messages dispatched again per second",
        |s| s.msg_rate_redeliver,
    ),
    (
        "pulsar_subscription_unacked_messages",
        "Messages dispatched and not acknowledged",
        |s| s.unacked as f64,
    ),
    (
        "pulsar_subscription_blocked_on_unacked_messages",
        "1 while dispatch waits for acknowledgements (maximum unacknowledged messages reached)",
        |s| f64::from(u8::from(s.blocked)),
    ),
    (
        "pulsar_subscription_consumers_count",
        "Consumers connected to the subscription",
        |s| s.consumers as f64,
    ),
];

/// Per-subscription series, labelled cluster, namespace, topic, subscription.
fn render_subscriptions(out: &mut String, cluster: &str, topics: &[(String, Arc<TopicMetrics>)]) {
    let subs: Vec<(String, Vec<SubscriptionSample>)> = topics
        .iter()
        .map(|(name, m)| (topic_labels(cluster, name), m.subscriptions()))
        .collect();
    for (name, help, get) in SUBSCRIPTION_SERIES {
        header(out, name, "gauge", help);
        for (labels, samples) in &subs {
            for s in samples {
                let _ = writeln!(
                    out,
                    "{name}{{{labels},subscription=\"{}\"}} {}",
                    escape(&s.name),
                    get(s)
                );
            }
        }
    }
}

/// Reads one per-replicator figure.
type ReplGet = fn(&ReplicationSample) -> f64;

/// Pulsar's per-replicator series, inbound and outbound.
const REPLICATION_SERIES: [(&str, &str, ReplGet); 7] = [
    (
        "pulsar_replication_rate_in",
        "Messages the remote cluster's replicator published here per second",
        |s| s.rate_in,
    ),
    (
        "pulsar_replication_throughput_in",
        "Bytes the remote cluster's replicator published here per second",
        |s| s.throughput_in,
    ),
    (
        "pulsar_replication_backlog",
        "Entries not yet confirmed by the remote cluster",
        |s| s.backlog as f64,
    ),
    (
        "pulsar_replication_rate_out",
        "Messages replicated to the remote cluster per second",
        |s| s.rate_out,
    ),
    (
        "pulsar_replication_throughput_out",
        "Bytes replicated to the remote cluster per second",
        |s| s.throughput_out,
    ),
    (
        "pulsar_replication_connected_count",
        "1 while the replicator is connected to the remote cluster",
        |s| f64::from(u8::from(s.connected)),
    ),
    (
        "pulsar_replication_delay_in_seconds",
        "Age of the last entry the remote confirmed, while there is a backlog",
        |s| s.delay_secs as f64,
    ),
];

/// Per-replicator series, labelled cluster, namespace, topic, remote_cluster.
fn render_replication(out: &mut String, cluster: &str, topics: &[(String, Arc<TopicMetrics>)]) {
    let repl: Vec<(String, Vec<ReplicationSample>)> = topics
        .iter()
        .map(|(name, m)| (topic_labels(cluster, name), m.replication()))
        .filter(|(_, samples)| !samples.is_empty())
        .collect();
    for (name, help, get) in REPLICATION_SERIES {
        header(out, name, "gauge", help);
        for (labels, samples) in &repl {
            for s in samples {
                let _ = writeln!(
                    out,
                    "{name}{{{labels},remote_cluster=\"{}\"}} {}",
                    escape(&s.remote),
                    get(s)
                );
            }
        }
    }
}

/// Pulsar's per-topic bucket gauges: appends by write latency and by entry
/// size (counted since the topic loaded; Pulsar's reset every interval).
fn render_topic_buckets(out: &mut String, cluster: &str, topics: &[(String, Arc<TopicMetrics>)]) {
    let labels: Vec<String> = topics
        .iter()
        .map(|(name, _)| topic_labels(cluster, name))
        .collect();
    let latency = WRITE_LATENCY_BUCKETS_MS
        .iter()
        .map(|(_, l)| *l)
        .chain(["overflow"]);
    for (i, suffix) in latency.enumerate() {
        let name = format!("pulsar_storage_write_latency_le_{suffix}");
        header(
            out,
            &name,
            "gauge",
            "Appends made durable within this many ms (since the topic loaded)",
        );
        for ((_, m), l) in topics.iter().zip(&labels) {
            let v = m
                .write_latency
                .get(i)
                .map_or(0, |a| a.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}{{{l}}} {v}");
        }
    }
    let sizes = ENTRY_SIZE_BUCKETS
        .iter()
        .map(|(_, l)| *l)
        .chain(["overflow"]);
    for (i, suffix) in sizes.enumerate() {
        let name = format!("pulsar_entry_size_le_{suffix}");
        header(
            out,
            &name,
            "gauge",
            "Entries appended of at most this size (since the topic loaded)",
        );
        for ((_, m), l) in topics.iter().zip(&labels) {
            let v = m.entry_size.get(i).map_or(0, |a| a.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}{{{l}}} {v}");
        }
    }
}

/// Pulsar's `pulsar_broker_*` aggregates: the loaded topics' figures summed.
fn render_broker_totals(out: &mut String, cluster: &str, topics: &[(String, Arc<TopicMetrics>)]) {
    let sum = |get: Get| topics.iter().map(|(_, m)| get(m)).sum::<f64>();
    let totals: [(&str, &str, f64); 10] = [
        (
            "pulsar_broker_topics_count",
            "Topics loaded on this broker",
            topics.len() as f64,
        ),
        (
            "pulsar_broker_subscriptions_count",
            "Subscriptions of the loaded topics",
            sum(|m| m.subscriptions.load(Ordering::Relaxed) as f64),
        ),
        (
            "pulsar_broker_producers_count",
            "Producers of the loaded topics",
            sum(|m| m.producers.load(Ordering::Relaxed) as f64),
        ),
        (
            "pulsar_broker_consumers_count",
            "Consumers of the loaded topics",
            sum(|m| m.consumers.load(Ordering::Relaxed) as f64),
        ),
        (
            "pulsar_broker_rate_in",
            "Messages published per second, every topic",
            sum(|m| m.rates().msg_in),
        ),
        (
            "pulsar_broker_rate_out",
            "Messages dispatched per second, every topic",
            sum(|m| m.rates().msg_out),
        ),
        (
            "pulsar_broker_throughput_in",
            "Bytes published per second, every topic",
            sum(|m| m.rates().bytes_in),
        ),
        (
            "pulsar_broker_throughput_out",
            "Bytes dispatched per second, every topic",
            sum(|m| m.rates().bytes_out),
        ),
        (
            "pulsar_broker_storage_size",
            "Bytes the loaded topics store",
            sum(|m| m.storage_bytes.load(Ordering::Relaxed) as f64),
        ),
        (
            "pulsar_broker_msg_backlog",
            "Entries not acknowledged, every subscription of every loaded topic",
            sum(|m| m.backlog.load(Ordering::Relaxed) as f64),
        ),
    ];
    for (name, help, v) in totals {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {v}", escape(cluster));
    }
}

/// The segment store's and the entry cache's series.
fn render_storage(out: &mut String, store: &SegmentStore, cache: &kilonova_storage::EntryCache) {
    // One series per data directory, labelled with its path.
    let dirs: Vec<(String, &kilonova_storage::DirStore)> = store
        .dirs()
        .iter()
        .map(|d| {
            (
                format!("dir=\"{}\"", escape(&d.path().display().to_string())),
                d,
            )
        })
        .collect();
    let histograms: Vec<_> = dirs.iter().map(|(l, d)| (l, d.histograms())).collect();
    header(
        out,
        "kilonova_storage_fsync_seconds",
        "histogram",
        "Duration of each journal fdatasync",
    );
    for (labels, (fsync, _)) in &histograms {
        histogram_series(out, "kilonova_storage_fsync_seconds", labels, fsync, 1e6);
    }
    header(
        out,
        "kilonova_storage_group_commit_entries",
        "histogram",
        "Entries made durable by one fdatasync (a group commit)",
    );
    for (labels, (_, group)) in &histograms {
        histogram_series(
            out,
            "kilonova_storage_group_commit_entries",
            labels,
            group,
            1.0,
        );
    }
    let stats: Vec<_> = dirs.iter().map(|(l, d)| (l, d.stats())).collect();
    header(
        out,
        "kilonova_storage_written_bytes_total",
        "counter",
        "Bytes written to the journal",
    );
    for (labels, s) in &stats {
        let _ = writeln!(
            out,
            "kilonova_storage_written_bytes_total{{{labels}}} {}",
            s.bytes_written
        );
    }
    header(
        out,
        "kilonova_storage_disk_usage_bytes",
        "gauge",
        "Bytes the journal files take on disk",
    );
    for (labels, s) in &stats {
        let _ = writeln!(
            out,
            "kilonova_storage_disk_usage_bytes{{{labels}}} {}",
            s.disk_usage_bytes
        );
    }
    let c = cache.stats();
    header(
        out,
        "kilonova_entry_cache_hits_total",
        "counter",
        "Reads served by the entry cache",
    );
    let _ = writeln!(out, "kilonova_entry_cache_hits_total {}", c.hits);
    header(
        out,
        "kilonova_entry_cache_misses_total",
        "counter",
        "Reads the entry cache could not serve",
    );
    let _ = writeln!(out, "kilonova_entry_cache_misses_total {}", c.misses);
    header(
        out,
        "kilonova_entry_cache_miss_bytes_total",
        "counter",
        "Bytes read from storage after an entry cache miss",
    );
    let _ = writeln!(
        out,
        "kilonova_entry_cache_miss_bytes_total {}",
        c.miss_bytes
    );
    header(
        out,
        "kilonova_entry_cache_bytes",
        "gauge",
        "Bytes held by the entry cache",
    );
    let _ = writeln!(out, "kilonova_entry_cache_bytes {}", c.bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_logs_flushes_and_commits_are_rendered_as_counted() {
        let mut out = String::new();
        let wal = WalStats {
            appends: 700,
            flushes: 40,
            failed_flushes: 5,
            failed_commits: 2,
            bytes: 716_800,
        };
        let history = crate::cluster::shared::HistoryStats {
            compactions: 3,
            compaction_failures: 1,
            loads: 7,
            load_retries: 2,
            load_entries_read: 11,
            load_entries_left: 13,
        };
        render_shared_log(&mut out, "c1", wal, history);
        for line in [
            "kilonova_cluster_flush_commits_total{cluster=\"c1\"} 40",
            "kilonova_cluster_flush_commit_failures_total{cluster=\"c1\"} 2",
            "kilonova_cluster_wal_flush_failures_total{cluster=\"c1\"} 5",
            "kilonova_cluster_wal_appends_total{cluster=\"c1\"} 700",
            "kilonova_cluster_wal_bytes_total{cluster=\"c1\"} 716800",
            "kilonova_cluster_history_compactions_total{cluster=\"c1\"} 3",
            "kilonova_cluster_history_compaction_failures_total{cluster=\"c1\"} 1",
            "kilonova_cluster_topic_loads_total{cluster=\"c1\"} 7",
            "kilonova_cluster_topic_load_retries_total{cluster=\"c1\"} 2",
            "kilonova_cluster_topic_load_entries_read_total{cluster=\"c1\"} 11",
            "kilonova_cluster_topic_load_entries_left_total{cluster=\"c1\"} 13",
            "# TYPE kilonova_cluster_flush_commits_total counter",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line} missing from:\n{out}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_newer_load_keeps_its_metrics_when_the_old_one_unregisters() {
        let r = MetricsRegistry::default();
        let old = r.register("t");
        let new = r.register("t");
        r.unregister("t", &old);
        assert_eq!(r.snapshot().len(), 1);
        r.unregister("t", &new);
        assert!(r.snapshot().is_empty());
    }
}
