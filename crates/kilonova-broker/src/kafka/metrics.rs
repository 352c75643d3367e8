//! The Kafka listener's metrics: requests, errors and time to answer by
//! API (Kafka's `RequestsPerSec`, `ErrorsPerSec` and `TotalTimeMs` by
//! request), produced and fetched bytes, group joins and rebalances.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::ApiKey;
use kilonova_storage::histogram::STAGE_MICROS_BOUNDS;
use kilonova_storage::Histogram;

use crate::metrics::{escape, header, histogram_series};

/// API keys counted one by one (0..=92 today); larger ones share the last
/// slot, named `other`.
const API_SLOTS: usize = 128;

/// The Kafka listener's counters (one set per broker, shared by its ports).
pub(crate) struct KafkaMetrics {
    /// Requests decoded, by API key.
    requests: [AtomicU64; API_SLOTS],
    /// Time from a request decoded to its answer ready (µs), by API key.
    latency: Vec<Histogram>,
    /// Error codes answered (every one in a response), by (API key, code).
    errors: Mutex<BTreeMap<(i16, i16), u64>>,
    produced_records: AtomicU64,
    produced_bytes: AtomicU64,
    fetched_bytes: AtomicU64,
    group_joins: AtomicU64,
    /// Rebalances completed with members (a group's new generation).
    pub(crate) rebalances: Arc<AtomicU64>,
}

impl Default for KafkaMetrics {
    fn default() -> Self {
        KafkaMetrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: (0..API_SLOTS)
                .map(|_| Histogram::new(STAGE_MICROS_BOUNDS))
                .collect(),
            errors: Mutex::new(BTreeMap::new()),
            produced_records: AtomicU64::new(0),
            produced_bytes: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            group_joins: AtomicU64::new(0),
            rebalances: Arc::new(AtomicU64::new(0)),
        }
    }
}

fn slot(key: i16) -> usize {
    usize::try_from(key).unwrap_or(0).min(API_SLOTS - 1)
}

/// Kafka's name for an error code (`NOT_LEADER_OR_FOLLOWER`), or the number.
fn error_name(code: i16) -> String {
    let e = match ResponseError::try_from_code(code) {
        None | Some(ResponseError::Unknown(_)) => return code.to_string(),
        Some(e) => e,
    };
    let camel = format!("{e:?}");
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn api_name(key: usize) -> String {
    if key == API_SLOTS - 1 {
        return "other".into();
    }
    i16::try_from(key)
        .ok()
        .and_then(|k| ApiKey::try_from(k).ok())
        .map_or_else(|| key.to_string(), |k| format!("{k:?}"))
}

impl KafkaMetrics {
    pub(crate) fn count_request(&self, key: i16) {
        self.requests[slot(key)].fetch_add(1, Ordering::Relaxed);
    }

    /// An answer is ready after `took`, with `errors` in it.
    pub(crate) fn answered(&self, key: i16, took: Duration, errors: &[i16]) {
        if let Some(h) = self.latency.get(slot(key)) {
            h.observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
        if errors.is_empty() {
            return;
        }
        // Counts are whole numbers: a panicked holder left none half-added.
        let mut counts = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        for code in errors {
            *counts.entry((key, *code)).or_default() += 1;
        }
    }

    pub(crate) fn count_produced(&self, records: u64, bytes: u64) {
        self.produced_records.fetch_add(records, Ordering::Relaxed);
        self.produced_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn count_fetched(&self, bytes: u64) {
        self.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn count_join(&self) {
        self.group_joins.fetch_add(1, Ordering::Relaxed);
    }

    /// Every family, in Prometheus' text format.
    pub(crate) fn render(&self, out: &mut String, cluster: &str) {
        let cluster = escape(cluster);
        let counters = [
            (
                "kilonova_kafka_produced_records_total",
                "Records Kafka producers sent (stored or not)",
                &self.produced_records,
            ),
            (
                "kilonova_kafka_produced_bytes_total",
                "Record-batch bytes Kafka producers sent",
                &self.produced_bytes,
            ),
            (
                "kilonova_kafka_fetched_bytes_total",
                "Record-batch bytes Kafka fetches returned",
                &self.fetched_bytes,
            ),
            (
                "kilonova_kafka_group_joins_total",
                "Kafka JoinGroup requests (each member's part in a consumer group's rebalance)",
                &self.group_joins,
            ),
            (
                "kilonova_kafka_group_rebalances_total",
                "Kafka consumer-group rebalances completed with members (new generations)",
                &self.rebalances,
            ),
        ];
        for (name, help, v) in counters {
            header(out, name, "counter", help);
            let n = v.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{cluster=\"{cluster}\"}} {n}");
        }
        const REQUESTS: &str = "kilonova_kafka_requests_total";
        header(out, REQUESTS, "counter", "Kafka requests decoded, by API");
        for (key, v) in self.requests.iter().enumerate() {
            let n = v.load(Ordering::Relaxed);
            if n > 0 {
                let api = api_name(key);
                let _ = writeln!(out, "{REQUESTS}{{cluster=\"{cluster}\",api=\"{api}\"}} {n}");
            }
        }
        const ERRORS: &str = "kilonova_kafka_request_errors_total";
        header(
            out,
            ERRORS,
            "counter",
            "Error codes in Kafka answers (each topic's, partition's or group's), by API and error",
        );
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for ((key, code), n) in errors {
            let (api, error) = (api_name(slot(key)), error_name(code));
            let _ = writeln!(
                out,
                "{ERRORS}{{cluster=\"{cluster}\",api=\"{api}\",error=\"{error}\"}} {n}"
            );
        }
        const SECONDS: &str = "kilonova_kafka_request_seconds";
        header(
            out,
            SECONDS,
            "histogram",
            "Time from a Kafka request read to its answer ready (a produce's once durable, a fetch's long poll included), by API",
        );
        for (key, h) in self.latency.iter().enumerate() {
            let snapshot = h.snapshot();
            if snapshot.count > 0 {
                let labels = format!("cluster=\"{cluster}\",api=\"{}\"", api_name(key));
                histogram_series(out, SECONDS, &labels, &snapshot, 1e6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_named_as_kafka_names_them() {
        assert_eq!(
            error_name(ResponseError::NotLeaderOrFollower.code()),
            "NOT_LEADER_OR_FOLLOWER"
        );
        assert_eq!(
            error_name(ResponseError::OutOfOrderSequenceNumber.code()),
            "OUT_OF_ORDER_SEQUENCE_NUMBER"
        );
        assert_eq!(error_name(9999), "9999");
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(API_SLOTS - 1), "other");
    }

    #[test]
    fn requests_errors_and_latency_are_rendered_by_api() {
        let m = KafkaMetrics::default();
        m.count_request(ApiKey::Produce as i16);
        m.answered(
            ApiKey::Produce as i16,
            Duration::from_millis(3),
            &[ResponseError::MessageTooLarge.code()],
        );
        let mut out = String::new();
        m.render(&mut out, "c");
        assert!(out.contains("kilonova_kafka_requests_total{cluster=\"c\",api=\"Produce\"} 1"));
        assert!(out.contains(
            "kilonova_kafka_request_errors_total{cluster=\"c\",api=\"Produce\",error=\"MESSAGE_TOO_LARGE\"} 1"
        ));
        assert!(out.contains(
            "kilonova_kafka_request_seconds_bucket{cluster=\"c\",api=\"Produce\",le=\"0.005\"} 1"
        ));
        assert!(!out.contains("api=\"Fetch\""));
    }
}
