//! [`Offloader`]: copies a sealed segment from the local segment store into
//! one object (format.rs), and finds and deletes offloaded objects.
//!
//! Crash safety rests on one rule: every offload writes a fresh key
//! (`…/<segment id>/<uuid>.seg`) and an object becomes visible only whole
//! (a single PUT, or a multipart upload's completion). The caller records
//! the returned key in the log's metadata after `offload` succeeds; only a
//! recorded key is ever read. A crash before the record leaves an orphan
//! that [`Offloader::find_offloaded`] can adopt or
//! [`Offloader::delete_orphans`] removes; a crash during the upload leaves
//! no object at all.

use std::collections::HashSet;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use kilonova_storage::{EntryId, SegmentId, SegmentStore, StorageError};
use object_store::PutPayloadMut;

use crate::bucket::{Bucket, ObjectInfo};
use crate::error::{ObjectStoreError, Result};
use crate::format::{FormatError, Header, IndexBuilder};
use crate::reader::fetch_index;

/// How offloads upload. Units are in the names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffloadConfig {
    /// Objects up to this size go in one PUT; larger ones in a multipart
    /// upload of parts this size (S3 wants at least 5 MiB per part).
    pub part_bytes: usize,
    /// Parts of one upload in flight at once.
    pub upload_concurrency: usize,
    /// Entries are read from the local store in batches of about this many bytes.
    pub read_batch_bytes: usize,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            part_bytes: 8 << 20,
            upload_concurrency: 4,
            read_batch_bytes: 4 << 20,
        }
    }
}

/// The smallest part S3 accepts (all but the last part of an upload).
pub const MIN_PART_BYTES: usize = 5 << 20;

/// A segment as it now lives in the object store: what the caller records
/// (serialisable, for the log's metadata).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OffloadedSegment {
    /// The object's full key in the bucket.
    pub key: String,
    pub log_id: u64,
    pub segment_id: SegmentId,
    /// Entries `0..entries`.
    pub entries: u64,
    /// Bytes of the entries themselves.
    pub data_bytes: u64,
    /// Size of the object (entries, header, index and footer).
    pub object_bytes: u64,
}

/// What [`Offloader::delete_orphans`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrphanReport {
    /// Keys deleted.
    pub deleted: Vec<String>,
    /// Unreferenced objects kept because they were modified at or after the cut-off.
    pub too_recent: Vec<String>,
}

/// Offloads sealed segments into a [`Bucket`], and finds and deletes them.
#[derive(Clone, Debug)]
pub struct Offloader {
    bucket: Bucket,
    config: OffloadConfig,
}

impl Offloader {
    pub fn new(bucket: Bucket, config: OffloadConfig) -> Result<Self> {
        if config.part_bytes < MIN_PART_BYTES {
            return Err(ObjectStoreError::Config(format!(
                "part_bytes {} is below S3's minimum part size ({MIN_PART_BYTES})",
                config.part_bytes
            )));
        }
        Ok(Offloader { bucket, config })
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// The key prefix of everything offloaded for log `log_id`.
    pub fn log_prefix(&self, log_id: u64) -> String {
        self.bucket.key(&format!("logs/{log_id}"))
    }

    /// The key prefix of segment `segment_id`'s objects in log `log_id`.
    pub fn segment_prefix(&self, log_id: u64, segment_id: SegmentId) -> String {
        self.bucket
            .key(&format!("logs/{log_id}/segments/{segment_id}"))
    }

    /// Copies sealed segment `segment_id` of log `log_id` from `store` into a
    /// new object and returns where it is. Each call writes a new object
    /// (a retry after a failure, or a second offload of the same segment,
    /// never touches an object another call wrote); on failure nothing
    /// readable is left behind.
    pub async fn offload(
        &self,
        store: &SegmentStore,
        log_id: u64,
        segment_id: SegmentId,
    ) -> Result<OffloadedSegment> {
        let r = self.offload_inner(store, log_id, segment_id).await;
        match &r {
            Ok(o) => {
                self.bucket.metrics().offloaded(o.object_bytes);
                tracing::info!(log = log_id, segment_id, key = %o.key, entries = o.entries, bytes = o.object_bytes, "segment offloaded");
            }
            Err(e) => {
                self.bucket.metrics().offload_failed();
                tracing::warn!(log = log_id, segment_id, error = %e, retryable = e.is_retryable(), "segment offload failed");
            }
        }
        r
    }

    async fn offload_inner(
        &self,
        store: &SegmentStore,
        log_id: u64,
        segment_id: SegmentId,
    ) -> Result<OffloadedSegment> {
        let info = store
            .segment(segment_id)
            .ok_or(StorageError::NoSuchSegment(segment_id))?;
        if !info.sealed {
            return Err(ObjectStoreError::NotSealed(segment_id));
        }
        let key = format!(
            "{}/{}.seg",
            self.segment_prefix(log_id, segment_id),
            uuid::Uuid::new_v4().simple()
        );
        let header = Header {
            log_id,
            segment_id,
            entry_count: info.entries,
        };
        let mut index = IndexBuilder::new(header);
        let mut batches = Batches::new(
            store.clone(),
            segment_id,
            info.entries,
            self.config.read_batch_bytes,
        );

        // Buffer the first part's worth: a segment that fits goes in one PUT.
        let mut first = PutPayloadMut::new();
        first.push(header.encode());
        let mut pending: Option<Bytes> = None;
        while first.content_length() < self.config.part_bytes {
            let Some(batch) = batches.next().await? else {
                break;
            };
            batch.index_into(&mut index, &key)?;
            if first.content_length() + batch.data.len() > self.config.part_bytes {
                pending = Some(batch.data);
                break;
            }
            first.push(batch.data);
        }
        if pending.is_none() && batches.done() {
            let data_bytes = index.data_bytes();
            let tail = index.finish().map_err(|e| corrupt_local(&key, e))?;
            first.push(tail);
            let object_bytes = first.content_length() as u64;
            self.bucket.put(&key, first.freeze()).await?;
            return Ok(OffloadedSegment {
                key,
                log_id,
                segment_id,
                entries: info.entries,
                data_bytes,
                object_bytes,
            });
        }

        let mut upload = self
            .bucket
            .upload(&key, self.config.part_bytes, self.config.upload_concurrency)
            .await?;
        let streamed = async {
            let start: Vec<Bytes> = first.freeze().into_iter().chain(pending).collect();
            let mut object_bytes: u64 = start.iter().map(|b| b.len() as u64).sum();
            upload.write_all(start).await?;
            while let Some(batch) = batches.next().await? {
                batch.index_into(&mut index, &key)?;
                object_bytes += batch.data.len() as u64;
                upload.write(batch.data).await?;
            }
            let data_bytes = index.data_bytes();
            let tail = index.finish().map_err(|e| corrupt_local(&key, e))?;
            object_bytes += tail.len() as u64;
            upload.write(tail).await?;
            Ok::<_, ObjectStoreError>((data_bytes, object_bytes))
        }
        .await;
        let (data_bytes, object_bytes) = match streamed {
            Ok(sizes) => sizes,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        upload.finish().await?;
        Ok(OffloadedSegment {
            key,
            log_id,
            segment_id,
            entries: info.entries,
            data_bytes,
            object_bytes,
        })
    }

    /// The complete, readable objects already offloaded for a segment (after
    /// a crash between an upload and its record: adopt one instead of
    /// uploading again). Objects that are not valid offloaded segments of
    /// this log and segment are left out.
    pub async fn find_offloaded(
        &self,
        log_id: u64,
        segment_id: SegmentId,
    ) -> Result<Vec<OffloadedSegment>> {
        self.find_under(
            &self.segment_prefix(log_id, segment_id),
            log_id,
            Some(segment_id),
        )
        .await
    }

    /// Every complete, readable offloaded segment of log `log_id`, by
    /// segment id (a segment offloaded twice appears twice): what a bucket
    /// holds of a topic when its local data and metadata are gone.
    pub async fn find_log(&self, log_id: u64) -> Result<Vec<OffloadedSegment>> {
        let mut found = self
            .find_under(&self.log_prefix(log_id), log_id, None)
            .await?;
        found.sort_by(|a, b| (a.segment_id, &a.key).cmp(&(b.segment_id, &b.key)));
        Ok(found)
    }

    /// The valid offloaded segments under `prefix` whose footer names log
    /// `log_id` (and segment `segment_id`, if given); others are logged and skipped.
    async fn find_under(
        &self,
        prefix: &str,
        log_id: u64,
        segment_id: Option<SegmentId>,
    ) -> Result<Vec<OffloadedSegment>> {
        let mut out = Vec::new();
        for obj in self.bucket.list(prefix).await? {
            if !obj.key.ends_with(".seg") {
                continue;
            }
            match fetch_index(&self.bucket, &obj.key, 64 << 10).await {
                Ok(index)
                    if index.log_id == log_id
                        && segment_id.is_none_or(|s| s == index.segment_id) =>
                {
                    out.push(OffloadedSegment {
                        key: obj.key,
                        log_id,
                        segment_id: index.segment_id,
                        entries: index.entry_count(),
                        data_bytes: index.data_bytes(),
                        object_bytes: index.object_len,
                    })
                }
                Ok(_) | Err(ObjectStoreError::Corrupt { .. }) => {
                    tracing::warn!(key = %obj.key, "not a valid offloaded segment of this log and segment: ignored");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every object under log `log_id`'s prefix.
    pub async fn list_log(&self, log_id: u64) -> Result<Vec<ObjectInfo>> {
        self.bucket.list(&self.log_prefix(log_id)).await
    }

    /// Deletes one object (a trimmed segment's). Deleting a missing key succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.bucket.delete(key).await
    }

    /// Deletes every object of log `log_id` (the topic is deleted); returns how many.
    pub async fn delete_log(&self, log_id: u64) -> Result<u64> {
        let objects = self.list_log(log_id).await?;
        for o in &objects {
            self.bucket.delete(&o.key).await?;
        }
        Ok(objects.len() as u64)
    }

    /// Deletes the objects of log `log_id` that `keep` does not list (the
    /// keys its metadata records) and that were last modified before
    /// `modified_before`. The cut-off protects an offload that completed but
    /// is not recorded yet: pass a time before any offload still in flight began.
    /// Beware: a store whose data directory was lost hands out the same log
    /// ids again, so an earlier log's objects (what a restore reads) count
    /// as orphans of a new log with the same id.
    pub async fn delete_orphans(
        &self,
        log_id: u64,
        keep: &HashSet<String>,
        modified_before: SystemTime,
    ) -> Result<OrphanReport> {
        let mut report = OrphanReport::default();
        for o in self.list_log(log_id).await? {
            if keep.contains(&o.key) {
                continue;
            }
            if o.last_modified >= modified_before {
                report.too_recent.push(o.key);
                continue;
            }
            self.bucket.delete(&o.key).await?;
            tracing::info!(log = log_id, key = %o.key, "orphaned offload object deleted");
            report.deleted.push(o.key);
        }
        Ok(report)
    }
}

fn corrupt_local(key: &str, e: FormatError) -> ObjectStoreError {
    ObjectStoreError::Failed {
        op: "encoding",
        key: key.to_string(),
        detail: e.to_string(),
    }
}

/// Consecutive entries read from the local store: their bytes back to
/// back (one buffer, so uploads move large buffers, not one per entry), and
/// each entry's length and CRC32C.
struct Batch {
    data: Bytes,
    records: Vec<(usize, u32)>,
}

impl Batch {
    fn index_into(&self, index: &mut IndexBuilder, key: &str) -> Result<()> {
        for &(len, crc) in &self.records {
            index
                .push_record(len, crc)
                .map_err(|e| corrupt_local(key, e))?;
        }
        Ok(())
    }
}

/// A sealed segment's entries, read from the local store in batches of
/// about `batch_bytes` on a blocking thread (reads are `pread`s; checksums
/// are computed there too), one batch ahead of the caller: the next batch
/// is read while the caller uploads the last one.
struct Batches {
    store: SegmentStore,
    segment: SegmentId,
    /// The first entry not yet handed to the caller.
    next: EntryId,
    end: EntryId,
    batch_bytes: usize,
    ahead: Option<tokio::task::JoinHandle<std::result::Result<Batch, StorageError>>>,
}

impl Batches {
    fn new(store: SegmentStore, segment: SegmentId, end: EntryId, batch_bytes: usize) -> Self {
        Batches {
            store,
            segment,
            next: 0,
            end,
            batch_bytes: batch_bytes.max(1),
            ahead: None,
        }
    }

    fn done(&self) -> bool {
        self.next >= self.end
    }

    fn spawn_read(&self) -> tokio::task::JoinHandle<std::result::Result<Batch, StorageError>> {
        let (store, segment, from, end, max) = (
            self.store.clone(),
            self.segment,
            self.next,
            self.end,
            self.batch_bytes,
        );
        tokio::task::spawn_blocking(move || {
            let mut data = BytesMut::with_capacity(max);
            let mut records = Vec::new();
            let mut id = from;
            while id < end && (data.len() < max || records.is_empty()) {
                let e = store.read(segment, id)?;
                records.push((e.len(), crc32c::crc32c(&e)));
                data.extend_from_slice(&e);
                id += 1;
            }
            Ok(Batch {
                data: data.freeze(),
                records,
            })
        })
    }

    async fn next(&mut self) -> Result<Option<Batch>> {
        if self.done() {
            return Ok(None);
        }
        let read = match self.ahead.take() {
            Some(r) => r,
            None => self.spawn_read(),
        };
        let batch = read.await.map_err(|e| ObjectStoreError::Failed {
            op: "reading the segment",
            key: String::new(),
            detail: e.to_string(),
        })??;
        self.next += batch.records.len() as u64;
        if !self.done() {
            self.ahead = Some(self.spawn_read());
        }
        Ok(Some(batch))
    }
}
