//! Start-up reconciliation of the segment store against the managed logs.
//!
//! A log creates a segment in the store, then saves its metadata listing it:
//! a crash between the two leaves a segment no log knows, whose space would
//! never return. Deleting a log removes its segments, then its metadata, then
//! its state directory: a crash part way leaves a directory without
//! metadata. Both are found and removed here, before any log opens.

use std::collections::HashSet;

use crate::error::Result;
use crate::managed_log::meta::{log_prefix, stored_segments, LOGS_PREFIX};
use crate::position::SegmentId;
use crate::segment_store::SegmentStore;
use crate::state_store::StateStore;

/// What [`reclaim_orphans`] found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Logs whose metadata was read.
    pub logs: u64,
    /// Segments no log lists, deleted (their space returns at the next GC).
    pub orphan_segments: Vec<SegmentId>,
    /// Their entries and payload bytes.
    pub orphan_entries: u64,
    pub orphan_bytes: u64,
    /// State directories of logs without metadata (deleted logs), removed.
    pub stale_log_dirs: u64,
}

/// Deletes every segment of `store` that no managed log in `state` lists, and
/// the state left by logs deleted part way.
///
/// Every segment of the store must belong to a managed log kept in `state`, and
/// no log may be open: call it at start-up, before anything is served.
/// Metadata that cannot be read stops it before anything is deleted (that log
/// might list any segment). Blocking (file I/O): call it from a blocking thread.
pub fn reclaim_orphans(store: &SegmentStore, state: &dyn StateStore) -> Result<ReclaimReport> {
    let mut report = ReclaimReport::default();
    let mut listed = HashSet::new();
    let mut stale = Vec::new();
    for name in state.subtrees(LOGS_PREFIX)? {
        let Ok(id) = name.parse::<u64>() else {
            tracing::warn!(entry = %name, "unexpected entry among the logs' state: left alone");
            continue;
        };
        match stored_segments(state, id)? {
            Some(segments) => {
                report.logs += 1;
                listed.extend(segments);
            }
            None => stale.push(id),
        }
    }
    for id in stale {
        state.remove_all(&log_prefix(id))?;
        report.stale_log_dirs += 1;
    }
    for segment in store.segments() {
        if listed.contains(&segment) {
            continue;
        }
        if let Some(info) = store.segment(segment) {
            report.orphan_entries += info.entries;
            report.orphan_bytes += info.bytes;
        }
        store.delete_segment_blocking(segment)?;
        report.orphan_segments.push(segment);
    }
    if !report.orphan_segments.is_empty() || report.stale_log_dirs > 0 {
        tracing::info!(
            logs = report.logs,
            orphan_segments = report.orphan_segments.len(),
            orphan_entries = report.orphan_entries,
            orphan_bytes = report.orphan_bytes,
            stale_log_dirs = report.stale_log_dirs,
            "reclaimed storage no log owns"
        );
    }
    Ok(report)
}
