//! Tiered storage in the broker: the object store topics offload their
//! sealed segments to (`[offload]` in the configuration), shared by every
//! topic. What a topic offloads and when is the topic's business
//! (`topic/offload.rs`); this holds the store, and does each piece of work
//! off the topic's task: copying a segment, fetching offloaded entries,
//! deleting objects no longer referenced, exporting a topic's manifest
//! (`manifest.rs`).

mod manifest;

pub use manifest::{manifest_key, ManifestSegment, TopicManifest, MANIFEST_VERSION};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use kilonova_objstore::{
    Bucket, ObjectStoreConfig, ObjectStoreError, OffloadConfig, OffloadedReader, OffloadedSegment,
    Offloader, ReaderConfig,
};
use kilonova_storage::{Offloaded, SegmentId, SegmentStore};

/// The `[offload]` section: the object store, and how it is read.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OffloadSettings {
    /// The object store (`[offload.store]`); without it, nothing is offloaded.
    pub store: Option<ObjectStoreConfig>,
    /// A read of offloaded entries fetches this many more after them.
    pub read_ahead_entries: u64,
    /// Memory for offloaded entries read back, per topic (MiB).
    pub topic_cache_mib: usize,
    /// Memory for offloaded entries the object-store reader keeps (MiB), shared.
    pub reader_cache_mib: usize,
}

impl Default for OffloadSettings {
    fn default() -> Self {
        OffloadSettings {
            store: None,
            read_ahead_entries: 100,
            topic_cache_mib: 16,
            reader_cache_mib: 64,
        }
    }
}

/// The object store topics offload to.
pub struct Tiering {
    offloader: Offloader,
    reader: OffloadedReader,
    settings: OffloadSettings,
    counters: Counters,
}

/// Tiered storage's own counts (the object store's are the bucket's).
#[derive(Debug, Default)]
struct Counters {
    manifest_exports: AtomicU64,
    manifest_export_errors: AtomicU64,
    restored_topics: AtomicU64,
}

impl std::fmt::Debug for Tiering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiering")
            .field("store", &self.offloader.bucket().describe())
            .finish()
    }
}

impl Tiering {
    /// The configured object store, if one is (`None` without `[offload.store]`).
    pub fn open(settings: &OffloadSettings) -> Result<Option<Arc<Tiering>>, ObjectStoreError> {
        let Some(store) = settings.store.as_ref() else {
            return Ok(None);
        };
        let bucket = Bucket::open(store)?;
        let reader = OffloadedReader::new(
            bucket.clone(),
            ReaderConfig {
                cache_bytes: settings.reader_cache_mib << 20,
                ..ReaderConfig::default()
            },
        );
        let offloader = Offloader::new(bucket, OffloadConfig::default())?;
        tracing::info!(store = %offloader.bucket().describe(), "tiered storage: offloading to an object store");
        Ok(Some(Arc::new(Tiering {
            offloader,
            reader,
            settings: settings.clone(),
            counters: Counters::default(),
        })))
    }

    pub fn settings(&self) -> &OffloadSettings {
        &self.settings
    }

    pub fn bucket(&self) -> &Bucket {
        self.offloader.bucket()
    }

    /// Checks that the object at `object` is a whole offloaded segment of
    /// `entries` entries holding `bytes` bytes (its index read and verified):
    /// `NotFound` if it is gone, `Corrupt` if it is not that segment.
    pub async fn verify(
        &self,
        object: &str,
        entries: u64,
        bytes: u64,
    ) -> Result<(), ObjectStoreError> {
        let index = self.reader.index(object).await?;
        if index.entry_count() != entries || index.data_bytes() != bytes {
            return Err(ObjectStoreError::Corrupt {
                key: object.to_string(),
                detail: format!(
                    "it holds {} entries of {} bytes, not the {entries} entries of {bytes} bytes recorded",
                    index.entry_count(),
                    index.data_bytes()
                ),
            });
        }
        Ok(())
    }

    /// Copies sealed segment `segment` of log `log` into a new object.
    pub async fn offload(
        &self,
        store: &SegmentStore,
        log: u64,
        segment: SegmentId,
    ) -> Result<OffloadedSegment, ObjectStoreError> {
        self.offloader.offload(store, log, segment).await
    }

    /// Entries `first..` (up to the read-ahead, within `entries`) of the
    /// offloaded segment at `object`, as the local store held them.
    pub async fn fetch(
        &self,
        object: &str,
        first: u64,
        entries: u64,
    ) -> Result<Vec<Bytes>, ObjectStoreError> {
        let last = first
            .saturating_add(self.settings.read_ahead_entries)
            .min(entries.saturating_sub(1));
        self.reader.read(object, first..=last).await
    }

    /// The object store's figures, in Prometheus' text format.
    pub fn render_metrics(&self, out: &mut String, cluster: &str) {
        use std::fmt::Write;
        let m = self.offloader.bucket().metrics().snapshot();
        let cluster = crate::metrics::escape(cluster);
        let counters = [
            (
                "brk_ledgeroffloader_offload_bytes",
                "Object bytes of completed offloads",
                m.offloaded_bytes,
            ),
            (
                "kilonova_offload_segments_total",
                "Segments offloaded",
                m.offloaded_segments,
            ),
            (
                "brk_ledgeroffloader_offload_error",
                "Offloads that failed",
                m.offload_errors,
            ),
            (
                "brk_ledgeroffloader_write_storage_error",
                "Failed writes to the object store",
                m.write_errors,
            ),
            (
                "brk_ledgeroffloader_read_offload_bytes",
                "Bytes read from offloaded objects",
                m.read_bytes,
            ),
            (
                "brk_ledgeroffloader_read_offload_error",
                "Reads of offloaded data that failed",
                m.read_errors,
            ),
            (
                "kilonova_offload_checksum_errors_total",
                "Reads of offloaded data that found corrupt bytes",
                m.checksum_errors,
            ),
            (
                "brk_ledgeroffloader_delete_offload_ops",
                "Offloaded objects deleted",
                m.deleted_objects,
            ),
            (
                "kilonova_offload_read_cache_hits_total",
                "Offloaded entries served from the reader's cache",
                m.cache_hits,
            ),
            (
                "kilonova_offload_read_cache_misses_total",
                "Offloaded entries fetched from the object store",
                m.cache_misses,
            ),
            (
                "kilonova_offload_manifest_exports_total",
                "Topic manifests written (or deleted, with nothing offloaded)",
                self.counters.manifest_exports.load(Ordering::Relaxed),
            ),
            (
                "kilonova_offload_manifest_export_errors_total",
                "Topic manifest exports that failed",
                self.counters.manifest_export_errors.load(Ordering::Relaxed),
            ),
            (
                "kilonova_offload_restored_topics_total",
                "Topics restored from the object store",
                self.counters.restored_topics.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            crate::metrics::header(out, name, "counter", help);
            let _ = writeln!(out, "{name}{{cluster=\"{cluster}\"}} {v}");
        }
        for (op, h) in &m.latency_us {
            let name = format!("kilonova_offload_request_latency_seconds_{}", op.label());
            crate::metrics::histogram(out, &name, "Object-store requests by time", h, 1e6);
        }
    }

    /// Counts a topic restored from the object store.
    pub fn count_restore(&self) {
        self.counters
            .restored_topics
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Deletes an object no longer referenced.
    pub async fn delete(&self, object: &str) -> Result<(), ObjectStoreError> {
        self.reader.forget(object);
        self.offloader.delete(object).await
    }
}

/// Entries a fetch brings after the one asked for when no `[offload]`
/// section sets `read_ahead_entries` (a cluster broker reading its compacted
/// history without tiered storage).
const DEFAULT_READ_AHEAD_ENTRIES: u64 = 100;

/// Reading a topic's segments that only the object store holds: its own
/// offloaded segments (tiered storage) or the runs of a cluster's compacted
/// history it was loaded with.
impl crate::broker::Broker {
    /// Entries a fetch of a segment left in the object store brings after
    /// the one asked for: `[offload] read_ahead_entries`, whatever the
    /// object (its own, or a compacted history's).
    pub(crate) fn read_ahead_entries(&self) -> u64 {
        self.tiering().map_or(DEFAULT_READ_AHEAD_ENTRIES, |t| {
            t.settings().read_ahead_entries
        })
    }

    /// Entries `first..` (up to a read-ahead) of log `log`'s segment `o`
    /// left in the object store: from its own object (tiered storage) or
    /// from its place in a compacted history's object.
    pub(crate) async fn fetch_offloaded(
        &self,
        log: u64,
        o: &Offloaded,
        first: u64,
    ) -> Result<Vec<Bytes>, ObjectStoreError> {
        match (o.shared_at, self.shared_log(), self.tiering()) {
            (Some(place), Some(shared), _) => {
                let last = first
                    .saturating_add(self.read_ahead_entries())
                    .min(o.entries.saturating_sub(1));
                shared
                    .reader()
                    .read_run(&o.object, log, place, first, last)
                    .await
            }
            (None, _, Some(tiering)) => tiering.fetch(&o.object, first, o.entries).await,
            _ => Err(ObjectStoreError::Config(format!(
                "{} is in an object store this broker is not configured with",
                o.object
            ))),
        }
    }

    /// Entry `entry` alone of log `log`'s segment `o` left in the object
    /// store (no read-ahead: what a search looks at, entries far apart).
    pub(crate) async fn fetch_offloaded_entry(
        &self,
        log: u64,
        o: &Offloaded,
        entry: u64,
    ) -> Result<Vec<Bytes>, ObjectStoreError> {
        let one = Offloaded {
            entries: o.entries.min(entry.saturating_add(1)),
            ..o.clone()
        };
        self.fetch_offloaded(log, &one, entry).await
    }
}
