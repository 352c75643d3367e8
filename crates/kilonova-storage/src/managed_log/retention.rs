//! Retention and TTL: what a log lets go of.
//!
//! Retention deletes whole segments that every durable cursor has consumed,
//! once they are older or the log larger than the policy keeps; TTL
//! acknowledges, on durable cursors, entries published too long ago. Both
//! run when the broker asks, with the time passed in.

use crate::error::Result;
use crate::position::{Position, SegmentId};

use super::cursor::Positions;
use super::ManagedLog;

/// How long acknowledged data is kept. `None` means unlimited in that dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub time_ms: Option<u64>,
    pub size_bytes: Option<u64>,
}

impl ManagedLog {
    /// Deletes segments that every durable cursor has consumed and that retention
    /// no longer keeps. Never deletes the current segment. Returns the segments deleted.
    pub async fn trim(&mut self, now_ms: u64, retention: Retention) -> Result<Vec<SegmentId>> {
        // Not before the stored metadata says where the current segment
        // starts: with every older segment gone, start-up could take the
        // message index from nowhere else.
        if self.meta_order.stored() < self.current_listed_in {
            return Ok(Vec::new());
        }
        let doomed = self.trimmable(now_ms, retention)?;
        for id in &doomed {
            if self.store.segment(*id).is_some() {
                self.store.delete_segment(*id).await?;
            }
            self.segments.retain(|s| s.id != *id);
            self.forget_offloaded(*id);
            tracing::debug!(log = self.id, segment = id, "deleted segment (retention)");
        }
        if !doomed.is_empty() {
            if let Some(first) = self.segments.first() {
                self.cache.evict_before(self.id, Position::new(first.id, 0));
            }
            // Off the task: a crash before it lands leaves a record listing
            // deleted segments, which start-up skips.
            self.save_meta_later();
        }
        Ok(doomed)
    }

    /// The segments [`ManagedLog::trim`] would delete now (it deletes nothing).
    pub fn trimmable(&self, now_ms: u64, retention: Retention) -> Result<Vec<SegmentId>> {
        // The current segment is never deleted: with only it, nothing to look at.
        if self.segments.len() <= 1 {
            return Ok(Vec::new());
        }
        let slowest = self
            .cursors
            .values()
            .filter(|c| c.durable())
            .map(|c| self.positions().normalize(c.floor()))
            .min()
            .unwrap_or_else(|| self.end_position());
        // Sizes across tiers: an offloaded-only segment counts its object's entries.
        let seg_bytes = |id: SegmentId| match self.store.segment(id) {
            Some(i) => i.bytes,
            None => self.offloaded.get(&id).map_or(0, |o| o.bytes),
        };
        let mut newer_bytes: u64 = self.segments.iter().map(|s| seg_bytes(s.id)).sum();
        let mut doomed = Vec::new();
        for s in self
            .segments
            .iter()
            .take(self.segments.len().saturating_sub(1))
        {
            let bytes = seg_bytes(s.id);
            let n = self.positions().confirmed(s.id);
            let consumed = slowest.segment > s.id;
            if !consumed {
                break;
            }
            let last_publish = if n > 0 {
                self.last_publish_ms_of(s.id, n)?
            } else {
                s.created_ms
            };
            let too_old = retention
                .time_ms
                .is_some_and(|t| last_publish.saturating_add(t) <= now_ms);
            let too_big = retention.size_bytes.is_some_and(|max| newer_bytes > max);
            if !(too_old || too_big) {
                break;
            }
            newer_bytes -= bytes;
            doomed.push(s.id);
        }
        Ok(doomed)
    }

    /// Message TTL: acknowledges, on every durable cursor, entries published before
    /// `now_ms - ttl_ms`. Returns how many cursors moved.
    pub fn expire(&mut self, now_ms: u64, ttl_ms: u64) -> Result<usize> {
        self.expire_cursors(now_ms, ttl_ms, None)
    }

    /// [`ManagedLog::expire`] for every durable cursor, or only the one named.
    pub fn expire_cursors(
        &mut self,
        now_ms: u64,
        ttl_ms: u64,
        only: Option<&str>,
    ) -> Result<usize> {
        if let Some(name) = only {
            self.cursor(name)?;
        }
        let cutoff = now_ms.saturating_sub(ttl_ms);
        let target = self.position_of_publish_time(cutoff)?;
        let Some(last_expired) = self.positions().prev(target) else {
            return Ok(0);
        };
        let names: Vec<String> = self
            .cursors
            .iter()
            .filter(|(n, c)| c.durable() && c.floor() < target && only.is_none_or(|o| o == *n))
            .map(|(n, _)| n.clone())
            .collect();
        for n in &names {
            self.ack_cumulative(n, last_expired)?;
        }
        Ok(names.len())
    }
}
