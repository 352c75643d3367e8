//! A log's compacted view: a copy of some of its entries, up to a horizon,
//! kept in a segment of its own ([ADR 0012](../../../../docs/adr/0012-compacted-view-segment.md)).
//!
//! The storage layer does not know what compaction keeps (the broker decides,
//! by message key); it keeps what it is given, under the entries' original
//! positions, and lets a cursor read the log *through* the view: entries up
//! to the horizon come from the view, later ones from the log. Pulsar's
//! model: the compacted ledger beside the topic's ledgers, and the horizon.
//!
//! The view is one sealed segment (entry `i` is the `i`-th kept entry, in
//! position order) and one record at `logs/<id>/compacted`: the segment id,
//! the horizon and every kept entry's original position. The segment is
//! listed by that record, so start-up reclaim keeps it; it is not one of
//! the log's segments, so retention never deletes it. A new view is written
//! in full to a new segment, sealed, then recorded; only then is the old one
//! deleted, so a crash leaves the old view or the new one, never neither.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::entry::{self, Entry};
use crate::error::{Result, StorageError};
use crate::position::{Position, SegmentId};
use crate::segment_store::SegmentStore;
use crate::state_store::StateStore;
use crate::store::Completion;

use super::cursor::Positions;
use super::meta::malformed;
use super::positions::SegmentList;
use super::ManagedLog;

const COMPACTED_VERSION: u8 = 1;

/// Where log `id` records its compacted view.
pub(crate) fn compacted_key(id: u64) -> String {
    format!("logs/{id}/compacted")
}

/// A log's compacted view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompactedView {
    pub segment: SegmentId,
    /// The last entry of the log the view covers.
    pub horizon: Position,
    /// The kept entries' original positions, ascending; the `i`-th is entry `i` of `segment`.
    pub positions: Vec<Position>,
}

impl CompactedView {
    fn encode(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(29 + self.positions.len() * 16);
        b.put_u8(COMPACTED_VERSION);
        b.put_u64_le(self.segment);
        b.put_u64_le(self.horizon.segment);
        b.put_u64_le(self.horizon.entry);
        b.put_u32_le(self.positions.len() as u32);
        for p in &self.positions {
            b.put_u64_le(p.segment);
            b.put_u64_le(p.entry);
        }
        b
    }

    fn decode(mut b: Bytes) -> Result<Self> {
        let err = || malformed("compacted view");
        if b.remaining() < 29 || b.get_u8() != COMPACTED_VERSION {
            return Err(err());
        }
        let segment = b.get_u64_le();
        let horizon = Position::new(b.get_u64_le(), b.get_u64_le());
        let n = b.get_u32_le() as usize;
        if b.remaining() != n.saturating_mul(16) {
            return Err(err());
        }
        let positions: Vec<Position> = (0..n)
            .map(|_| Position::new(b.get_u64_le(), b.get_u64_le()))
            .collect();
        let ordered = positions.windows(2).all(|w| w[0] < w[1]);
        if !ordered || positions.last().is_some_and(|p| *p > horizon) {
            return Err(err());
        }
        Ok(CompactedView {
            segment,
            horizon,
            positions,
        })
    }

    /// Index of the first kept entry at or after `p`.
    fn first_at_or_after(&self, p: Position) -> usize {
        self.positions.partition_point(|q| *q < p)
    }
}

/// The compacted view log `id`'s state records, if any.
pub(crate) fn load_view(state: &dyn StateStore, id: u64) -> Result<Option<CompactedView>> {
    state
        .load(&compacted_key(id))?
        .map(CompactedView::decode)
        .transpose()
}

/// A log's positions as a cursor reading through the compacted view sees
/// them: up to the horizon, only the view's entries exist; after it, the log's.
#[derive(Clone, Copy)]
pub(super) struct ThroughView<'a> {
    pub list: SegmentList<'a>,
    pub view: &'a CompactedView,
}

impl ThroughView<'_> {
    pub(super) fn is_readable(&self, p: Position) -> bool {
        if p <= self.view.horizon {
            return self.view.positions.binary_search(&p).is_ok();
        }
        self.list.is_readable(p)
    }
}

impl Positions for ThroughView<'_> {
    fn normalize(&self, p: Position) -> Position {
        let h = self.view.horizon;
        if p <= h {
            if let Some(q) = self.view.positions.get(self.view.first_at_or_after(p)) {
                return *q;
            }
            return self.list.normalize(Position::new(h.segment, h.entry + 1));
        }
        self.list.normalize(p)
    }
}

/// The positions a cursor moves along: the log's, or the log's through the
/// compacted view.
#[derive(Clone, Copy)]
pub(super) enum CursorView<'a> {
    Log(SegmentList<'a>),
    Compacted(ThroughView<'a>),
}

impl<'a> CursorView<'a> {
    /// The view of a cursor that reads through `compacted` when `through` is set
    /// and the log has a compacted view.
    pub(super) fn new(
        list: SegmentList<'a>,
        compacted: Option<&'a CompactedView>,
        through: bool,
    ) -> Self {
        match compacted.filter(|_| through) {
            Some(view) => CursorView::Compacted(ThroughView { list, view }),
            None => CursorView::Log(list),
        }
    }

    pub(super) fn is_readable(&self, p: Position) -> bool {
        match self {
            CursorView::Log(l) => l.is_readable(p),
            CursorView::Compacted(t) => t.is_readable(p),
        }
    }

    /// The compacted view, if `p` is in its part of the log.
    pub(super) fn view_at(&self, p: Position) -> Option<&'a CompactedView> {
        match self {
            CursorView::Compacted(t) if p <= t.view.horizon => Some(t.view),
            _ => None,
        }
    }
}

impl Positions for CursorView<'_> {
    fn normalize(&self, p: Position) -> Position {
        match self {
            CursorView::Log(l) => l.normalize(p),
            CursorView::Compacted(t) => t.normalize(p),
        }
    }
}

/// A compacted view being written: entries are appended in position order,
/// then [`ManagedLog::finish_compacted`] makes it the log's view (or
/// [`ManagedLog::abort_compacted`] drops it).
pub struct CompactedWriter {
    segment: SegmentId,
    positions: Vec<Position>,
    bytes: u64,
    last: Option<Completion<u64>>,
}

impl CompactedWriter {
    /// Entries appended so far.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Payload bytes appended so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl ManagedLog {
    /// The last entry the compacted view covers, if the log has one.
    pub fn compacted_horizon(&self) -> Option<Position> {
        self.compacted.as_ref().map(|v| v.horizon)
    }

    /// Entries in the compacted view.
    pub fn compacted_entries(&self) -> usize {
        self.compacted.as_ref().map_or(0, |v| v.positions.len())
    }

    /// Payload bytes of the compacted view.
    pub fn compacted_size_bytes(&self) -> u64 {
        self.compacted
            .as_ref()
            .and_then(|v| self.store.segment(v.segment))
            .map_or(0, |s| s.bytes)
    }

    /// The `i`-th entry of the compacted view, under its original position.
    pub fn read_compacted(&self, i: usize) -> Result<Entry> {
        let view = self.compacted.as_ref().ok_or(StorageError::NoSuchEntry {
            segment: 0,
            entry: i as u64,
        })?;
        read_view_entry(&self.store, view, i)
    }

    /// Starts writing a new compacted view (in a new segment).
    pub async fn begin_compacted(&self) -> Result<CompactedWriter> {
        let segment = self.create_segment().await?;
        Ok(CompactedWriter {
            segment,
            positions: Vec::new(),
            bytes: 0,
            last: None,
        })
    }

    /// Appends `e` (under its original position, which must follow the last
    /// one appended) to the view being written.
    pub async fn append_compacted(&self, w: &mut CompactedWriter, e: &Entry) -> Result<()> {
        if w.positions.last().is_some_and(|p| *p >= e.position) {
            return Err(StorageError::Log(format!(
                "compacted entries out of order at {:?}",
                e.position
            )));
        }
        let mut header = BytesMut::with_capacity(16 + entry::ENTRY_HEADER_LEN);
        header.put_u64_le(e.position.segment);
        header.put_u64_le(e.position.entry);
        header.put_slice(&entry::encode_header(
            e.publish_time_ms,
            e.message_index,
            e.message_count,
        ));
        let c = self
            .store
            .append_parts(w.segment, &header, e.data.clone())
            .await?;
        w.positions.push(e.position);
        w.bytes += e.data.len() as u64;
        w.last = Some(c);
        Ok(())
    }

    /// Makes the written view the log's compacted view, covering the log up to
    /// `horizon`: waits until it is durable, seals it, records it, then
    /// deletes the view it replaces.
    pub async fn finish_compacted(
        &mut self,
        mut w: CompactedWriter,
        horizon: Position,
    ) -> Result<()> {
        let result = self.seal_and_record(&mut w, horizon).await;
        if result.is_err() {
            self.abort_compacted(w).await;
            return result;
        }
        let view = CompactedView {
            segment: w.segment,
            horizon,
            positions: w.positions,
        };
        if let Some(old) = self.compacted.replace(view) {
            if let Err(e) = self.store.delete_segment(old.segment).await {
                tracing::warn!(log = self.id, segment = old.segment, error = %e, "old compacted view left for start-up to reclaim");
            }
        }
        tracing::debug!(
            log = self.id,
            segment = w.segment,
            ?horizon,
            "compacted view replaced"
        );
        Ok(())
    }

    async fn seal_and_record(&self, w: &mut CompactedWriter, horizon: Position) -> Result<()> {
        if w.positions.last().is_some_and(|p| *p > horizon) {
            return Err(StorageError::Log(
                "compacted entry after the horizon".into(),
            ));
        }
        // Appends to one segment are durable in order: the last one covers all.
        if let Some(last) = w.last.take() {
            last.await?;
        }
        self.store.seal(w.segment).await?;
        let stored = self.store.segment(w.segment).map_or(0, |s| s.entries);
        if stored != w.positions.len() as u64 {
            return Err(StorageError::Log(format!(
                "compacted view holds {stored} entries, {} were written",
                w.positions.len()
            )));
        }
        let view = CompactedView {
            segment: w.segment,
            horizon,
            positions: std::mem::take(&mut w.positions),
        };
        let stored = self.state.store(&compacted_key(self.id), &view.encode());
        w.positions = view.positions;
        stored
    }

    /// Drops a view being written.
    pub async fn abort_compacted(&self, w: CompactedWriter) {
        if let Err(e) = self.store.delete_segment(w.segment).await {
            tracing::debug!(log = self.id, segment = w.segment, error = %e, "unfinished compacted view left for start-up to reclaim");
        }
    }

    /// Deletes the compacted view (the log is being deleted).
    pub(super) async fn delete_compacted(&mut self) -> Result<()> {
        if let Some(v) = self.compacted.take() {
            self.store.delete_segment(v.segment).await?;
        }
        Ok(())
    }
}

/// The `i`-th entry of `view`, under its original position.
pub(super) fn read_view_entry(
    store: &SegmentStore,
    view: &CompactedView,
    i: usize,
) -> Result<Entry> {
    let missing = || StorageError::NoSuchEntry {
        segment: view.segment,
        entry: i as u64,
    };
    let original = *view.positions.get(i).ok_or_else(missing)?;
    let mut stored = store.read(view.segment, i as u64)?;
    if stored.len() < 16 {
        return Err(StorageError::Corrupt {
            segment: view.segment,
            entry: i as u64,
            detail: "shorter than a compacted entry header".into(),
        });
    }
    let at = Position::new(stored.get_u64_le(), stored.get_u64_le());
    if at != original {
        return Err(StorageError::Corrupt {
            segment: view.segment,
            entry: i as u64,
            detail: format!("holds {at:?}, the view lists {original:?}"),
        });
    }
    entry::decode(original, stored).ok_or(StorageError::Corrupt {
        segment: view.segment,
        entry: i as u64,
        detail: "shorter than an entry header".into(),
    })
}

/// The entry at `p` of the view (`p` must be one of its positions).
pub(super) fn read_view_position(
    store: &SegmentStore,
    view: &CompactedView,
    p: Position,
) -> Result<Entry> {
    match view.positions.binary_search(&p) {
        Ok(i) => read_view_entry(store, view, i),
        Err(_) => Err(StorageError::NoSuchEntry {
            segment: p.segment,
            entry: p.entry,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn record_round_trips_and_refuses_disorder() {
        let v = CompactedView {
            segment: 7,
            horizon: Position::new(3, 9),
            positions: vec![
                Position::new(1, 2),
                Position::new(3, 0),
                Position::new(3, 9),
            ],
        };
        assert_eq!(CompactedView::decode(v.encode().freeze()).unwrap(), v);
        let mut bad = v.clone();
        bad.positions.swap(0, 1);
        assert!(CompactedView::decode(bad.encode().freeze()).is_err());
        let mut after = v.clone();
        after.horizon = Position::new(3, 8);
        assert!(CompactedView::decode(after.encode().freeze()).is_err());
        let b = v.encode().freeze();
        for n in 0..b.len() {
            assert!(CompactedView::decode(b.slice(..n)).is_err(), "{n}");
        }
    }
}
