//! Counters and latency histograms of the object-store layer, kept in
//! atomics and read as a [`MetricsSnapshot`]; the broker's `/metrics`
//! renders them (as it renders the segment store's), under the names
//! listed on each field: Pulsar's `brk_ledgeroffloader_*` where Pulsar has
//! the metric, `kilonova_offload_*` otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use kilonova_storage::histogram::MICROS_BOUNDS;
use kilonova_storage::{Histogram, HistogramSnapshot};

/// The requests the layer makes, each with its own latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// A single-request upload.
    Put,
    /// A whole multipart upload (all its parts and the completion).
    Upload,
    /// A (range) read.
    Get,
    Head,
    Delete,
    List,
}

impl Request {
    pub const ALL: [Request; 6] = [
        Request::Put,
        Request::Upload,
        Request::Get,
        Request::Head,
        Request::Delete,
        Request::List,
    ];

    /// The `op` label value.
    pub fn label(self) -> &'static str {
        match self {
            Request::Put => "put",
            Request::Upload => "upload",
            Request::Get => "get",
            Request::Head => "head",
            Request::Delete => "delete",
            Request::List => "list",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// The layer's metrics (one per [`crate::Bucket`], shared by its offloader and readers).
#[derive(Debug)]
pub struct Metrics {
    offloaded_bytes: AtomicU64,
    offloaded_segments: AtomicU64,
    offload_errors: AtomicU64,
    write_errors: AtomicU64,
    read_bytes: AtomicU64,
    read_errors: AtomicU64,
    checksum_errors: AtomicU64,
    deleted_objects: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    latency_us: [Histogram; Request::ALL.len()],
}

/// What the metrics held at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// `brk_ledgeroffloader_offload_bytes`: object bytes of completed offloads.
    pub offloaded_bytes: u64,
    /// `kilonova_offload_segments_total`: segments offloaded.
    pub offloaded_segments: u64,
    /// `brk_ledgeroffloader_offload_error`: offloads that failed (any cause).
    pub offload_errors: u64,
    /// `brk_ledgeroffloader_write_storage_error`: failed writes to the store.
    pub write_errors: u64,
    /// `brk_ledgeroffloader_read_offload_bytes`: bytes read from offloaded objects.
    pub read_bytes: u64,
    /// `brk_ledgeroffloader_read_offload_error`: reads of offloaded data that failed.
    pub read_errors: u64,
    /// `kilonova_offload_checksum_errors_total`: reads that found corrupt bytes.
    pub checksum_errors: u64,
    /// `brk_ledgeroffloader_delete_offload_ops`: objects deleted.
    pub deleted_objects: u64,
    /// `kilonova_offload_read_cache_hits_total` / `_misses_total`: entries
    /// served from the reader's cache, and entries it had to fetch.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// `kilonova_offload_request_latency_us{op}`: per request kind, in µs.
    pub latency_us: Vec<(Request, HistogramSnapshot)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            offloaded_bytes: AtomicU64::new(0),
            offloaded_segments: AtomicU64::new(0),
            offload_errors: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            checksum_errors: AtomicU64::new(0),
            deleted_objects: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            latency_us: Request::ALL.map(|_| Histogram::new(MICROS_BOUNDS)),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub(crate) fn observe(&self, request: Request, started: Instant) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(h) = self.latency_us.get(request.slot()) {
            h.observe(us);
        }
    }

    pub(crate) fn offloaded(&self, object_bytes: u64) {
        add(&self.offloaded_bytes, object_bytes);
        add(&self.offloaded_segments, 1);
    }

    pub(crate) fn offload_failed(&self) {
        add(&self.offload_errors, 1);
    }

    pub(crate) fn write_failed(&self) {
        add(&self.write_errors, 1);
    }

    pub(crate) fn read(&self, bytes: u64) {
        add(&self.read_bytes, bytes);
    }

    pub(crate) fn read_failed(&self, checksum: bool) {
        add(&self.read_errors, 1);
        if checksum {
            add(&self.checksum_errors, 1);
        }
    }

    pub(crate) fn deleted(&self) {
        add(&self.deleted_objects, 1);
    }

    pub(crate) fn cache(&self, hits: u64, misses: u64) {
        add(&self.cache_hits, hits);
        add(&self.cache_misses, misses);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            offloaded_bytes: get(&self.offloaded_bytes),
            offloaded_segments: get(&self.offloaded_segments),
            offload_errors: get(&self.offload_errors),
            write_errors: get(&self.write_errors),
            read_bytes: get(&self.read_bytes),
            read_errors: get(&self.read_errors),
            checksum_errors: get(&self.checksum_errors),
            deleted_objects: get(&self.deleted_objects),
            cache_hits: get(&self.cache_hits),
            cache_misses: get(&self.cache_misses),
            latency_us: Request::ALL
                .iter()
                .zip(&self.latency_us)
                .map(|(r, h)| (*r, h.snapshot()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_kind_has_its_own_histogram() {
        let m = Metrics::default();
        m.observe(Request::Delete, Instant::now());
        let s = m.snapshot();
        for (r, h) in &s.latency_us {
            assert_eq!(h.count, u64::from(*r == Request::Delete), "{}", r.label());
        }
    }
}
