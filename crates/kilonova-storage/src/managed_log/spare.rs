//! The next segment, made ready before the current one fills.
//!
//! Appends may only go to a segment the stored metadata lists: one it does
//! not would be lost to a crash (start-up reclaims it as an orphan). Listing
//! a segment is a metadata write — a file written and fsync'd, renamed, its
//! directory fsync'd — and done at the roll-over it held the log's appends
//! for its whole length (10–25 ms measured under a publishing load, each
//! roll-over, 50,000 entries apart by default).
//!
//! So a busy log creates its next segment, the spare, once the current one
//! is half full, and lists it with a metadata write on the blocking pool;
//! the roll-over then only switches to it. The record lists the spare after
//! the current segment, with the message index and time of when it was
//! listed; at start-up the last listed segment takes its first message index
//! and time from its first entry, and an empty one is dropped
//! ([`ManagedLog::open`]). A log without a listed spare when it rolls over
//! (a quiet log rolling by age, a spare still being listed) lists its new
//! segment in line, as before.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::error::Result;
use crate::position::SegmentId;

use super::{ManagedLog, SegmentMeta};

/// Creating the spare in the journal (the create's answer, awaited by polls).
type Creating = Pin<Box<dyn Future<Output = Result<SegmentId>> + Send + Sync>>;

/// Where a log's spare segment is.
#[derive(Default)]
pub(super) enum Spare {
    #[default]
    None,
    /// Being created, since `since_ms`.
    Creating { since_ms: u64, creating: Creating },
    /// Created; listed once the stored metadata is record `listed_in` or newer.
    Created {
        id: SegmentId,
        since_ms: u64,
        listed_in: u64,
    },
    /// Its creation failed: no other until the next roll-over.
    Failed,
}

impl ManagedLog {
    /// Starts creating the spare once the current segment is half full, and
    /// moves its creation on (cheap: called by every append).
    pub(super) fn prepare_spare(&mut self, now_ms: u64) {
        match self.spare {
            Spare::None => {
                let half_full = {
                    let side = self.side();
                    side.pending_entries >= self.config.max_segment_entries / 2
                        || side.pending_bytes >= self.config.max_segment_bytes / 2
                };
                if !half_full {
                    return;
                }
                let (store, log) = (self.store.clone(), self.id);
                let last = self.current().map(|s| s.id);
                self.spare = Spare::Creating {
                    since_ms: now_ms,
                    creating: Box::pin(async move { store.create_segment_for(log, last).await }),
                };
                self.poll_spare();
            }
            Spare::Creating { .. } => self.poll_spare(),
            Spare::Created { .. } | Spare::Failed => {}
        }
    }

    /// Takes the created spare in, and starts listing it.
    fn poll_spare(&mut self) {
        let Spare::Creating { since_ms, creating } = &mut self.spare else {
            return;
        };
        let since_ms = *since_ms;
        let mut cx = Context::from_waker(Waker::noop());
        match creating.as_mut().poll(&mut cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(id)) => {
                self.spare = Spare::Created {
                    id,
                    since_ms,
                    listed_in: u64::MAX,
                };
                let number = self.save_meta_later();
                if let Spare::Created { listed_in, .. } = &mut self.spare {
                    *listed_in = number;
                }
            }
            Poll::Ready(Err(e)) => {
                tracing::warn!(log = self.id, error = %e, "creating the next segment ahead failed: the roll-over will create it");
                self.spare = Spare::Failed;
            }
        }
    }

    /// The spare for a roll-over (awaiting its creation if under way), and
    /// whether the stored metadata lists it; the next roll-over may prepare
    /// another. Segments of a log are numbered in order: a roll-over never
    /// passes over a spare it created.
    pub(super) async fn spare_for_roll(&mut self) -> Option<(SegmentId, bool)> {
        if let Spare::Creating { since_ms, creating } = &mut self.spare {
            let since_ms = *since_ms;
            match creating.await {
                Ok(id) => {
                    self.spare = Spare::Created {
                        id,
                        since_ms,
                        listed_in: u64::MAX,
                    }
                }
                Err(e) => {
                    tracing::warn!(log = self.id, error = %e, "creating the next segment ahead failed: the roll-over creates it");
                    self.spare = Spare::None;
                }
            }
        }
        match std::mem::take(&mut self.spare) {
            Spare::Created { id, listed_in, .. } => {
                Some((id, self.meta_order.stored() >= listed_in))
            }
            _ => None,
        }
    }

    /// The spare as the metadata record lists it: after the current segment.
    pub(super) fn spare_listing(&self) -> Option<SegmentMeta> {
        match self.spare {
            Spare::Created { id, since_ms, .. } => Some(SegmentMeta {
                id,
                first_message_index: self.next_message_index(),
                created_ms: since_ms,
            }),
            _ => None,
        }
    }

    /// Deletes the spare (with the log).
    pub(super) async fn delete_spare(&mut self) -> Result<()> {
        let id = match std::mem::take(&mut self.spare) {
            Spare::Creating { creating, .. } => creating.await.ok(),
            Spare::Created { id, .. } => Some(id),
            Spare::None | Spare::Failed => None,
        };
        if let Some(id) = id.filter(|id| self.store.segment(*id).is_some()) {
            self.store.delete_segment(id).await?;
        }
        Ok(())
    }
}
