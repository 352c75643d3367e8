//! A plain SEND appended by the connection that read it, without a turn of
//! its topic's task (ADR 0026).
//!
//! The topic shares a [`PublishLane`] with its connections: while every
//! condition for it holds (a local log, outside a cluster, no consumers, no
//! deduplication, no replication, not fenced, terminated or handing over:
//! [`super::Topic::lane_allowed`]) the topic keeps it open, and a
//! connection appends a SEND straight to the log's
//! [`kilonova_storage::AppendLane`]; the journal's call answers it, as for
//! the topic's own plain SENDs ([`super::direct_receipts`]).
//!
//! Order per producer: a producer's SENDs are stored and answered in the
//! order sent. Its [`ProducerLane`], shared by its connection and its
//! topic, counts SENDs routed to the task and not answered yet; a SEND
//! takes the lane only while that count is 0, so it never overtakes an
//! earlier SEND of its producer. Anything the lane does not take — a
//! marker, a checksum or size to refuse, a batch whose count is refused, a
//! segment due to roll over, a full journal queue — goes the task's way.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use kilonova_storage::AppendLane;

use super::publish::{durable_call, AnswerTo, DurableCall};
use super::SendPayload;
use crate::publish_stages::Stage;

/// One producer's part, shared by its connection and its topic.
#[derive(Default)]
pub(crate) struct ProducerLane {
    /// SENDs its connection routed to the topic's task, not answered yet.
    routed: AtomicU64,
    /// The topic registered the producer and lets it use the lane (its
    /// name is not one that deduplication always applies to).
    admitted: AtomicBool,
    /// Messages and bytes it published through the lane.
    msg_in: AtomicU64,
    bytes_in: AtomicU64,
}

impl ProducerLane {
    /// A SEND goes to the topic's task: later ones wait for its answer.
    pub(crate) fn routed(&self) {
        self.routed.fetch_add(1, Ordering::SeqCst);
    }

    /// A SEND routed to the task was answered (or will never be).
    pub(super) fn answered(&self) {
        self.routed.fetch_sub(1, Ordering::SeqCst);
    }

    pub(super) fn admit(&self, admitted: bool) {
        self.admitted.store(admitted, Ordering::SeqCst);
    }

    /// Messages and bytes published through the lane.
    pub(super) fn published(&self) -> (u64, u64) {
        (
            self.msg_in.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
        )
    }
}

/// What a topic shares with its connections for their appends.
#[derive(Default)]
pub(crate) struct PublishLane {
    /// Set once the topic's log is open (persistent topics only).
    parts: OnceLock<Parts>,
    /// The topic's conditions hold.
    open: AtomicBool,
    /// The topic's largest message in bytes (0: no limit of its own).
    max_message_bytes: AtomicUsize,
}

struct Parts {
    log: AppendLane,
    calls: Arc<DurableCall>,
}

impl PublishLane {
    /// The topic's log and what its calls share, once loaded.
    pub(super) fn install(&self, log: AppendLane, calls: Arc<DurableCall>) {
        let _ = self.parts.set(Parts { log, calls });
    }

    /// Opens or closes the lane (the topic's conditions, its size limit).
    /// Written only when they change: connections read them at every SEND.
    pub(super) fn set(&self, open: bool, max_message_bytes: Option<usize>) {
        let max = max_message_bytes.unwrap_or(0);
        if self.max_message_bytes.load(Ordering::Relaxed) != max {
            self.max_message_bytes.store(max, Ordering::SeqCst);
        }
        self.open_or_close(open);
    }

    fn open_or_close(&self, open: bool) {
        if self.open.load(Ordering::Relaxed) != open {
            self.open.store(open, Ordering::SeqCst);
        }
    }

    /// Appends `payload` for `producer` if the lane takes it, answered to
    /// `to()` (made only then); `false`: it goes the task's way. `read_at`:
    /// when the connection read the frame.
    pub(crate) fn try_append(
        &self,
        producer: &ProducerLane,
        payload: &SendPayload,
        read_at: std::time::Instant,
        to: impl FnOnce() -> AnswerTo,
    ) -> bool {
        let Some(parts) = self.taking(producer, payload) else {
            return false;
        };
        let Ok(count) = payload.count else {
            return false;
        };
        let calls = &parts.calls;
        let publish_time = match payload.publish_time {
            0 => calls.clock.now_ms(),
            t => t,
        };
        let appended_at = calls.clock.now();
        let bytes = payload.raw.len() as u64;
        let appended =
            parts
                .log
                .try_append_then(payload.raw.clone(), count, publish_time, |index| {
                    calls.direct.queued();
                    durable_call(calls.clone(), to(), index, appended_at)
                });
        if appended.is_err() {
            return false;
        }
        calls.stages.observe(
            Stage::Appended,
            appended_at.saturating_duration_since(read_at),
        );
        calls.metrics.add_in(u64::from(count), bytes);
        calls
            .metrics
            .appends_by_connection
            .fetch_add(1, Ordering::Relaxed);
        calls.metrics.observe_entry_size(bytes);
        producer
            .msg_in
            .fetch_add(u64::from(count), Ordering::Relaxed);
        producer.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    /// The lane's parts if it may take this SEND (before the log's own
    /// checks): open, the producer admitted with nothing of its own routed
    /// to the task, no failure to fence for, and nothing to refuse or to
    /// act on in the payload.
    fn taking(&self, producer: &ProducerLane, payload: &SendPayload) -> Option<&Parts> {
        if !self.open.load(Ordering::SeqCst)
            || !producer.admitted.load(Ordering::SeqCst)
            || producer.routed.load(Ordering::SeqCst) != 0
            || !payload.checksum_ok
            || payload.is_marker
        {
            return None;
        }
        let max = self.max_message_bytes.load(Ordering::Relaxed);
        if payload.over(Some(max).filter(|m| *m > 0)) {
            return None;
        }
        let parts = self.parts.get()?;
        (!parts.calls.direct.after_failure()).then_some(parts)
    }
}

impl super::Topic {
    /// Whether connections may append plain SENDs themselves: the broker
    /// lets them (`connection_appends`), the topic has a local log only,
    /// outside a cluster (whose owner checks its session before each
    /// receipt), nothing deduplicated or replicated (the task checks and
    /// records every SEND then), the topic is not fenced, terminated or
    /// handing over, and it has no consumers. The log itself keeps the
    /// lane out of roll-overs.
    ///
    /// With consumers the task runs at every group commit anyway, to
    /// dispatch; measured at end-to-end saturation on two cores, SENDs that
    /// bypassed it let producers take the machine from a tailing reader
    /// (it fell hundreds of milliseconds behind for good), and closing the
    /// lane only while a reader lagged still delivered 10 % less at 13 %
    /// more CPU per message than the task alone.
    pub(super) fn lane_allowed(&self) -> bool {
        self.broker.config().connection_appends
            && self.log.is_some()
            && self.shared.is_none()
            && self.broker.membership().is_none()
            && self.dedup.is_none()
            && !self.dedup_all
            && !self.replicated_into
            && self.replicators.is_empty()
            && !self.fenced
            && !self.shared_failed
            && !self.handing_over
            && !self.is_terminated()
            && self.consumer_subs.is_empty()
    }

    /// Opens or closes the lane as the topic stands (at every turn of its
    /// loop, and at once where a change must stop it).
    pub(super) fn refresh_lane(&self) {
        let allowed = self.lane_allowed();
        self.lane.set(allowed, self.policies.max_message_bytes);
    }

    /// Closes the lane now, whatever the conditions: appends it queued
    /// before are still answered by their calls (counted in flight).
    pub(super) fn stop_lane(&self) {
        self.lane.open_or_close(false);
    }
}
