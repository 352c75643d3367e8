//! Tiered storage on a topic: which sealed segments go to the object store
//! and when, when their local copies go, and reading offloaded entries back.
//!
//! Every housekeeping tick, with an object store configured
//! ([`crate::tiering`]): local copies offloaded longer ago than the
//! deletion lag are dropped; objects no longer referenced (segments trimmed
//! by retention) are deleted; and if no copy is running, the oldest segment
//! due is copied (the size threshold, the age threshold, or a manual
//! offload up to a message), in a task of its own, the topic recording it
//! when the copy is complete (a crash before that leaves an unreferenced
//! object, never a reference to a missing one; such objects are not swept
//! yet: telling them from a lost data directory's objects, which reuse the
//! same log ids, needs an incarnation in the keys).
//!
//! Reads never wait on the object store in the topic's task: a dispatch
//! that meets an entry only the object store holds asks for it
//! ([`kilonova_storage::StorageError::Offloaded`]), a task fetches it (and
//! the entries after it), and the topic dispatches again once it is in the
//! log's offload cache. A failed fetch is retried after a pause, so a slow
//! or absent object store slows only the readers of offloaded data. Seeks
//! by time, TTL and resets by time, which search entries, wait for their
//! fetches ([`Topic::read_through`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use kilonova_objstore::{ObjectStoreError, OffloadedSegment};
use kilonova_storage::{ManagedLog, Offloaded, Position, SegmentId, StorageError};

use kilonova_metadata::names::TopicName;

use super::admin::{AdminReply, AdminRequest};
use super::Topic;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::tiering::{ManifestSegment, Tiering, TopicManifest, MANIFEST_VERSION};

/// A finished piece of offload work, back to the topic's task.
pub(super) enum OffloadEvent {
    Copied {
        segment: SegmentId,
        result: Result<OffloadedSegment, ObjectStoreError>,
    },
    Fetched {
        segment: SegmentId,
        first: u64,
        result: Result<Vec<Bytes>, ObjectStoreError>,
    },
    /// The manifest export failed: these objects, released, wait for the next.
    ExportFailed { error: String, objects: Vec<String> },
    /// The manifest is exported (and the objects it no longer lists deleted).
    Exported,
}

/// After a failure, the object store is asked again this much later.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The longest a search by time waits for one fetch (the topic's task
/// waits with it).
const READ_THROUGH_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches in flight per topic at most.
const MAX_FETCHES: usize = 4;

/// Pulsar's offload status, as `offload-status` shows it.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OffloadStatus {
    /// `NOT_RUN`, `RUNNING`, `SUCCESS` or `ERROR`.
    pub status: String,
    pub last_error: String,
    /// The first message not offloaded (`ledgerId:entryId`): where the
    /// local-only part of the topic starts.
    pub first_unoffloaded_message: String,
}

/// A topic's offload bookkeeping.
pub(super) struct OffloadState {
    events: mpsc::UnboundedSender<OffloadEvent>,
    /// The segment being copied.
    copying: Option<SegmentId>,
    /// Offloaded entries being fetched: (segment, first entry), and whether
    /// a read asked for them (else it is a read-ahead of the next block).
    fetching: HashMap<(SegmentId, u64), bool>,
    /// Entries reads asked for since the last look.
    wanted: Vec<(SegmentId, u64)>,
    /// Segments whose fetch failed: not asked for again before then.
    fetch_retry: HashMap<SegmentId, Instant>,
    /// No copy starts before then (the last one failed).
    copy_retry: Option<Instant>,
    /// A manual offload: every sealed segment before this one.
    manual_before: Option<SegmentId>,
    status: OffloadStatus,
    /// The manifest (`tiering/manifest.rs`) no longer matches the log.
    manifest_dirty: bool,
    /// A manifest export is running.
    exporting: bool,
    /// No export starts before then (the last one failed).
    export_retry: Option<Instant>,
    /// A manifest may exist (one was written, or the log had offloaded
    /// segments when it loaded): deleting the topic deletes it.
    manifest_maybe: bool,
    /// Objects released by the log: deleted once a manifest that no longer
    /// lists them is written.
    awaiting_export: Vec<String>,
}

impl OffloadState {
    /// Whether a copy, a fetch or an export is out: each sends one event
    /// when it ends, and its mark here stays until that event is handled.
    pub(super) fn awaits_events(&self) -> bool {
        self.copying.is_some() || self.exporting || !self.fetching.is_empty()
    }

    /// Whether nothing of an offload is out, wanted, waiting for a retry
    /// or for an export: only then may the topic tick at the quiet pace.
    pub(super) fn settled(&self) -> bool {
        !self.awaits_events()
            && self.wanted.is_empty()
            && self.fetch_retry.is_empty()
            && self.copy_retry.is_none()
            && self.manual_before.is_none()
            && !self.manifest_dirty
            && self.export_retry.is_none()
            && self.awaiting_export.is_empty()
    }

    pub(super) fn new(events: mpsc::UnboundedSender<OffloadEvent>) -> Self {
        OffloadState {
            events,
            copying: None,
            fetching: HashMap::new(),
            wanted: Vec::new(),
            fetch_retry: HashMap::new(),
            copy_retry: None,
            manual_before: None,
            status: OffloadStatus {
                status: "NOT_RUN".into(),
                ..Default::default()
            },
            manifest_dirty: false,
            exporting: false,
            export_retry: None,
            manifest_maybe: false,
            awaiting_export: Vec::new(),
        }
    }

    /// The log as it loaded: with offloaded segments, its manifest is
    /// written again (a crash may have come between an offload and its export).
    pub(super) fn loaded(&mut self, log: &ManagedLog) {
        let offloaded = log.segment_tiers().iter().any(|t| t.offloaded.is_some());
        self.manifest_dirty = offloaded;
        self.manifest_maybe = offloaded;
    }

    /// A read met an entry only the object store holds.
    pub(super) fn want(&mut self, e: &StorageError) -> bool {
        match e {
            StorageError::Offloaded { segment, entry } => {
                self.wanted.push((*segment, *entry));
                true
            }
            _ => false,
        }
    }
}

impl Topic {
    fn tiering(&self) -> Option<Arc<Tiering>> {
        self.broker.tiering()
    }

    /// Every housekeeping tick: drops local copies past the deletion lag,
    /// exports the manifest if it changed (deleting the objects it no
    /// longer lists), and starts the next copy that is due.
    pub(super) async fn offload_tick(&mut self) {
        let Some(tiering) = self.tiering() else {
            return;
        };
        let now_ms = self.broker.clock().now_ms();
        let lag = self.policies.offload_deletion_lag_ms;
        let Some(log) = self.log.as_mut() else {
            return;
        };
        for segment in log.local_copies_to_drop(now_ms, lag) {
            if let Err(e) = log.drop_local_copy(segment).await {
                tracing::warn!(topic = %self.full_name, segment, error = %e, "dropping an offloaded segment's local copy failed");
            }
        }
        self.take_released_objects();
        self.start_export(&tiering);
        self.start_copy(&tiering);
        self.start_fetches();
    }

    /// Objects the log no longer references wait for the manifest to stop
    /// listing them.
    fn take_released_objects(&mut self) {
        let released = self
            .log
            .as_mut()
            .map(|log| log.take_released_objects())
            .unwrap_or_default();
        if !released.is_empty() {
            self.offload.awaiting_export.extend(released);
            self.offload.manifest_dirty = true;
        }
    }

    /// Writes the manifest again if the offloaded segments changed (one
    /// export at a time, so an older one never lands last), then deletes
    /// the objects it no longer lists; in a task of its own.
    pub(super) fn start_export(&mut self, tiering: &Arc<Tiering>) {
        let now = self.broker.clock().now();
        if !self.offload.manifest_dirty
            || self.offload.exporting
            || self.offload.export_retry.is_some_and(|t| now < t)
        {
            return;
        }
        let Some(log) = self.log.as_ref() else {
            return;
        };
        let segments = manifest_segments(log);
        self.offload.manifest_maybe |= !segments.is_empty();
        let objects = std::mem::take(&mut self.offload.awaiting_export);
        self.offload.manifest_dirty = false;
        self.offload.exporting = true;
        let (broker, tiering, name) = (self.broker.clone(), tiering.clone(), self.name.clone());
        let (log_id, events) = (log.id(), self.offload.events.clone());
        tokio::spawn(async move {
            let event = match export_manifest(&broker, &tiering, &name, log_id, segments).await {
                Ok(()) => {
                    delete_objects(&tiering, &name, objects).await;
                    OffloadEvent::Exported
                }
                Err(error) => OffloadEvent::ExportFailed { error, objects },
            };
            if let Err(e) = events.send(event) {
                if let OffloadEvent::ExportFailed { objects, .. } = e.0 {
                    tracing::warn!(topic = %name, objects = objects.len(), "the topic unloaded before its manifest was exported: objects it released are left behind");
                }
            }
        });
    }

    /// The topic unloads: a manifest export still due starts now (its task
    /// outlives the topic's).
    pub(super) fn export_before_unload(&mut self) {
        if let Some(tiering) = self.tiering() {
            self.take_released_objects();
            self.start_export(&tiering);
        }
    }

    /// The topic is deleted: its manifest goes, then every object it
    /// referenced (in a task of its own).
    pub(super) fn delete_offloaded(&mut self, mut objects: Vec<String>) {
        objects.append(&mut self.offload.awaiting_export);
        let Some(tiering) = self.tiering() else {
            if !objects.is_empty() {
                tracing::warn!(topic = %self.full_name, objects = objects.len(), "offloaded objects left behind: no object store is configured any more");
            }
            return;
        };
        if objects.is_empty() && !self.offload.manifest_maybe {
            return;
        }
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = tiering.delete_manifest(&name).await {
                tracing::warn!(topic = %name, error = %e, "deleting a deleted topic's manifest failed");
            }
            delete_objects(&tiering, &name, objects).await;
        });
    }

    /// The sealed segments due for the object store, oldest first.
    fn due_for_offload(&self, log: &ManagedLog) -> Vec<SegmentId> {
        let now_ms = self.broker.clock().now_ms();
        let mut due: Vec<SegmentId> = Vec::new();
        if let Some(keep) = self.policies.offload_threshold_bytes {
            due.extend(log.offload_candidates(keep));
        }
        if let Some(secs) = self.policies.offload_threshold_secs {
            let cutoff = now_ms.saturating_sub(secs.saturating_mul(1000));
            due.extend(log.offload_candidates_published_before(cutoff));
        }
        if let Some(before) = self.offload.manual_before {
            due.extend(log.offload_candidates_before(before));
        }
        due.sort_unstable();
        due.dedup();
        due
    }

    /// Starts copying the next segment due, unless a copy is running or the
    /// last one failed moments ago.
    fn start_copy(&mut self, tiering: &Arc<Tiering>) {
        let now = self.broker.clock().now();
        if self.offload.copying.is_some() || self.offload.copy_retry.is_some_and(|t| now < t) {
            return;
        }
        let Some(log) = self.log.as_ref() else {
            return;
        };
        let Some(&segment) = self.due_for_offload(log).first() else {
            if self.offload.manual_before.take().is_some() {
                self.offload.status.status = "SUCCESS".into();
            }
            return;
        };
        let (tiering, store, id) = (tiering.clone(), self.broker.segment_store(), log.id());
        let events = self.offload.events.clone();
        self.offload.copying = Some(segment);
        self.offload.status.status = "RUNNING".into();
        tokio::spawn(async move {
            let result = tiering.offload(&store, id, segment).await;
            let _ = events.send(OffloadEvent::Copied { segment, result });
        });
    }

    /// Fetches what reads asked for (a few at a time), each from the entry
    /// asked for on, with read-ahead.
    pub(super) fn start_fetches(&mut self) {
        if self.offload.wanted.is_empty() {
            return;
        }
        let now = self.broker.clock().now();
        let wanted = std::mem::take(&mut self.offload.wanted);
        for (segment, first) in wanted {
            self.start_fetch(segment, first, true, now);
        }
    }

    /// Fetches entries `first..` of offloaded segment `segment` in a task,
    /// unless a fetch of them is running or the last one failed moments ago.
    fn start_fetch(&mut self, segment: SegmentId, first: u64, asked: bool, now: Instant) {
        let Some(log) = self.log.as_ref() else {
            return;
        };
        // A fetch in flight brings `read_ahead` entries after its first.
        let read_ahead = self.broker.read_ahead_entries();
        if self.offload.fetching.len() >= MAX_FETCHES
            || self
                .offload
                .fetching
                .keys()
                .any(|(s, f)| *s == segment && (*f..=f.saturating_add(read_ahead)).contains(&first))
            || self
                .offload
                .fetch_retry
                .get(&segment)
                .is_some_and(|t| now < *t)
        {
            return;
        }
        let Some(o) = log.offloaded(segment) else {
            return;
        };
        if first >= o.entries {
            return;
        }
        let (o, id) = (o.clone(), log.id());
        self.offload.fetching.insert((segment, first), asked);
        let (broker, events) = (self.broker.clone(), self.offload.events.clone());
        tokio::spawn(async move {
            let result = broker.fetch_offloaded(id, &o, first).await;
            let _ = events.send(OffloadEvent::Fetched {
                segment,
                first,
                result,
            });
        });
    }

    /// A copy or a fetch finished.
    pub(super) fn on_offload_event(&mut self, event: OffloadEvent) {
        let now = self.broker.clock().now();
        match event {
            OffloadEvent::Copied { segment, result } => {
                self.offload.copying = None;
                let recorded = match result {
                    Ok(copy) => self.record_copy(segment, copy),
                    Err(e) => Err(e.to_string()),
                };
                match recorded {
                    Ok(()) => {
                        self.offload.manifest_dirty = true;
                        self.offload.status.status = "SUCCESS".into();
                        self.offload.status.last_error.clear();
                        self.offload.copy_retry = None;
                        if let Some(tiering) = self.tiering() {
                            self.start_export(&tiering);
                            self.start_copy(&tiering);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic = %self.full_name, segment, error = %e, "offloading a segment failed; retried later");
                        self.offload.status.status = "ERROR".into();
                        self.offload.status.last_error = e;
                        self.offload.copy_retry = Some(now + RETRY_AFTER);
                    }
                }
                self.offload.status.first_unoffloaded_message = self.first_unoffloaded();
            }
            OffloadEvent::Exported => {
                self.offload.exporting = false;
                self.offload.export_retry = None;
                if let Some(tiering) = self.tiering() {
                    self.start_export(&tiering);
                }
            }
            OffloadEvent::ExportFailed { error, objects } => {
                tracing::warn!(topic = %self.full_name, error = %error, "exporting the topic's manifest failed; retried later");
                self.offload.exporting = false;
                self.offload.manifest_dirty = true;
                self.offload.awaiting_export.extend(objects);
                self.offload.export_retry = Some(now + RETRY_AFTER);
            }
            OffloadEvent::Fetched {
                segment,
                first,
                result,
            } => {
                let asked = self
                    .offload
                    .fetching
                    .remove(&(segment, first))
                    .unwrap_or(false);
                let inserted = match result {
                    Ok(entries) => {
                        let next = first + entries.len() as u64;
                        self.log
                            .as_mut()
                            .map_or(Ok(()), |log| log.insert_offloaded(segment, first, entries))
                            .map(|()| next)
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                match inserted {
                    Ok(next) => {
                        self.offload.fetch_retry.remove(&segment);
                        // A block a reader asked for: the next one is
                        // fetched while it reads this one.
                        if asked {
                            self.start_fetch(segment, next, false, now);
                        }
                        self.dispatch_all();
                        self.feed_replicators();
                    }
                    Err(e) => {
                        tracing::warn!(topic = %self.full_name, segment, first, error = %e, "reading offloaded entries failed; retried later");
                        self.offload.fetch_retry.insert(segment, now + RETRY_AFTER);
                        // Readers waiting for it try again then.
                        super::dispatch::wake_after(
                            &mut self.dispatch_wake,
                            now,
                            Some(RETRY_AFTER),
                        );
                    }
                }
            }
        }
    }

    /// Records a finished copy in the log's metadata.
    fn record_copy(&mut self, segment: SegmentId, copy: OffloadedSegment) -> Result<(), String> {
        let now_ms = self.broker.clock().now_ms();
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        let record = Offloaded {
            object: copy.key.clone(),
            entries: copy.entries,
            bytes: copy.data_bytes,
            last_publish_ms: 0,
            end_message_index: 0,
            offloaded_at_ms: now_ms,
            shared_at: None,
        };
        match log.mark_offloaded(segment, record) {
            Ok(()) => {
                tracing::info!(topic = %self.full_name, segment, object = %copy.key, entries = copy.entries, "segment offloaded");
                Ok(())
            }
            Err(e) => {
                // The object is referenced by nothing: delete it.
                log.release_object(copy.key);
                Err(e.to_string())
            }
        }
    }

    /// Where the local-only part of the log starts, as `ledgerId:entryId`.
    fn first_unoffloaded(&self) -> String {
        let Some(log) = self.log.as_ref() else {
            return String::new();
        };
        let first_local = log
            .segment_tiers()
            .into_iter()
            .find(|t| t.offloaded.is_none())
            .map_or_else(|| log.end_position(), |t| Position::new(t.id, 0));
        format!("{}:{}", first_local.segment, first_local.entry)
    }

    /// With offloaded entries, the policy checks that read entries by
    /// publish time — the TTL's search, a message-age backlog quota's look
    /// at each subscription's oldest unacknowledged message and its
    /// eviction's search — find them fetched already (at the next check).
    pub(super) async fn warm_policy_reads(&mut self) {
        if self.tiering().is_none() || self.log.as_ref().is_none_or(|l| l.offloaded_bytes() == 0) {
            return;
        }
        let now_ms = self.broker.clock().now_ms();
        let mut cutoffs = Vec::with_capacity(2);
        if let Some(ttl) = self.policies.ttl {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            cutoffs.push(now_ms.saturating_sub(ttl_ms));
        }
        if let Some(q) = self.policies.backlog_age {
            cutoffs.push(now_ms.saturating_sub(q.limit.saturating_mul(1000)));
            let names = self
                .log
                .as_ref()
                .map(|l| l.cursor_names())
                .unwrap_or_default();
            for name in names {
                if let Err(e) = self
                    .read_through(|l| l.oldest_unacked_publish_ms(&name))
                    .await
                {
                    tracing::debug!(topic = %self.full_name, subscription = %name, error = %e, "the backlog quota's look could not read offloaded entries");
                }
            }
        }
        for cutoff in cutoffs {
            if let Err(e) = self
                .read_through(|l| l.position_of_publish_time(cutoff))
                .await
            {
                tracing::debug!(topic = %self.full_name, error = %e, "a search by publish time could not read offloaded entries");
            }
        }
    }

    /// `topics offload`: every sealed segment before the one holding
    /// `before` goes to the object store.
    pub(super) fn offload_before(&mut self, before: Position) -> Result<(), BrokerError> {
        let Some(tiering) = self.tiering() else {
            return Err(BrokerError::NotAllowed(
                "no object store is configured ([offload.store])".into(),
            ));
        };
        if self.log.is_none() {
            return Err(BrokerError::NotAllowed(
                "offload is not supported on non-persistent topics".into(),
            ));
        }
        if self.offload.copying.is_some() || self.offload.manual_before.is_some() {
            return Err(BrokerError::Conflict(
                "an offload is running already".into(),
            ));
        }
        self.offload.manual_before = Some(before.segment);
        self.offload.copy_retry = None;
        self.offload.status = OffloadStatus {
            status: "RUNNING".into(),
            ..Default::default()
        };
        self.start_copy(&tiering);
        Ok(())
    }

    /// `topics offload-status`.
    pub(super) fn offload_status(&self) -> OffloadStatus {
        let mut s = self.offload.status.clone();
        s.first_unoffloaded_message = self.first_unoffloaded();
        s
    }

    /// A read-only admin request that reads an entry (peek, examine, get
    /// by id): an entry only the object store holds is fetched, and the
    /// request answered again.
    pub(super) async fn admin_read(
        &mut self,
        request: AdminRequest,
    ) -> Result<AdminReply, BrokerError> {
        const MAX_FETCHES_PER_REQUEST: usize = 4;
        for _ in 0..MAX_FETCHES_PER_REQUEST {
            let Some(copy) = request.entry_read_copy() else {
                break;
            };
            match self.admin(copy) {
                Err(BrokerError::Storage(StorageError::Offloaded { segment, entry })) => {
                    self.read_through(|l| l.read_entry(Position::new(segment, entry)))
                        .await?;
                }
                answer => return answer,
            }
        }
        self.admin(request)
    }

    /// Runs `read` over the log, fetching (and waiting for) what it finds
    /// only in the object store, until it answers: for searches by time,
    /// which may read several offloaded entries.
    pub(super) async fn read_through<T>(
        &mut self,
        read: impl Fn(&ManagedLog) -> Result<T, StorageError>,
    ) -> Result<T, BrokerError> {
        const MAX_FETCHES_PER_READ: usize = 64;
        for _ in 0..MAX_FETCHES_PER_READ {
            let Some(log) = self.log.as_ref() else {
                return Err(BrokerError::NotAllowed("not a persistent topic".into()));
            };
            let (segment, first) = match read(log) {
                Err(StorageError::Offloaded { segment, entry }) => (segment, entry),
                other => return other.map_err(BrokerError::from),
            };
            let now = self.broker.clock().now();
            let Some(o) = log.offloaded(segment) else {
                return Err(BrokerError::Storage(StorageError::Offloaded {
                    segment,
                    entry: first,
                }));
            };
            // The topic waits for this fetch: never long, and not again
            // right after one failed.
            if self
                .offload
                .fetch_retry
                .get(&segment)
                .is_some_and(|t| now < *t)
            {
                return Err(BrokerError::Unavailable(
                    "the object store failed a moment ago: try again later".into(),
                ));
            }
            // The entry alone: a search starts again after each fetch and
            // needs the entries it looked at before still in the offload
            // cache, which a read-ahead of large entries pushed out.
            let (o, id) = (o.clone(), log.id());
            let fetched = self.broker.fetch_offloaded_entry(id, &o, first);
            let fetched = tokio::time::timeout(READ_THROUGH_TIMEOUT, fetched)
                .await
                .map_err(|_| "the object store did not answer in time".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let entries = match fetched {
                Ok(entries) => entries,
                Err(e) => {
                    self.offload.fetch_retry.insert(segment, now + RETRY_AFTER);
                    return Err(BrokerError::Unavailable(e));
                }
            };
            if let Some(log) = self.log.as_mut() {
                log.insert_offloaded(segment, first, entries)?;
            }
        }
        Err(BrokerError::Unavailable(
            "reading offloaded entries took too many fetches".into(),
        ))
    }
}

/// The log's offloaded segments as the manifest lists them, oldest first.
fn manifest_segments(log: &ManagedLog) -> Vec<ManifestSegment> {
    log.segments()
        .iter()
        .filter_map(|s| {
            // A segment in a shared object (a cluster's compacted history)
            // is the cluster's, not this topic's to restore from.
            let o = log.offloaded(s.id).filter(|o| o.is_own_object())?;
            Some(ManifestSegment {
                segment_id: s.id,
                object: o.object.clone(),
                entries: o.entries,
                bytes: o.bytes,
                first_message_index: s.first_message_index,
                end_message_index: o.end_message_index,
                created_ms: s.created_ms,
                last_publish_ms: o.last_publish_ms,
            })
        })
        .collect()
}

/// Writes `name`'s manifest: `segments`, with its record and schema as the
/// metadata store holds them now.
async fn export_manifest(
    broker: &Broker,
    tiering: &Tiering,
    name: &TopicName,
    log_id: u64,
    segments: Vec<ManifestSegment>,
) -> Result<(), String> {
    let resources = broker.resources();
    let policies = match resources.topic(name).await {
        Ok(Some(record)) => record.policies,
        // Deleted meanwhile: its deletion removes the manifest.
        Ok(None) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let partitioned_topic_partitions = match name.partition() {
        Some(_) => resources
            .topic(&name.partitioned_topic())
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |r| r.partitions),
        None => 0,
    };
    let manifest = TopicManifest {
        version: MANIFEST_VERSION,
        topic: name.to_string(),
        log_id,
        exported_at_ms: broker.clock().now_ms(),
        partitioned_topic_partitions,
        policies,
        schemas: resources
            .schema_history(name)
            .await
            .map_err(|e| e.to_string())?,
        segments,
    };
    tiering
        .export_manifest(name, &manifest)
        .await
        .map_err(|e| e.to_string())
}

/// Deletes objects nothing references any more.
async fn delete_objects(tiering: &Tiering, topic: &TopicName, objects: Vec<String>) {
    for object in objects {
        match tiering.delete(&object).await {
            Ok(()) => tracing::debug!(topic = %topic, %object, "offloaded object deleted"),
            // Left behind: an unreferenced object (not swept yet).
            Err(e) => {
                tracing::warn!(topic = %topic, %object, error = %e, "deleting an offloaded object failed")
            }
        }
    }
}
