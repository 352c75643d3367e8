//! Where a publish's time goes, stage by stage, so that a latency regression
//! points at its stage: `kilonova_publish_stage_seconds{stage}`.
//!
//! A persistent SEND passes, in order:
//! 1. `appended`: its frame read by the connection → the topic asks the
//!    journal to append it (the topic's queue and work, publish throttling);
//! 2. `written`: → the journal wrote the group holding it (the journal's
//!    queue, encoding, `pwrite`);
//! 3. `durable`: → the fdatasync covering it returned (a sync already
//!    running when it was written is waited for first);
//! 4. `answered`: → the topic queued its receipt on the connection (waking
//!    the topic, receipts in the order sent);
//! 5. `sent`: → the receipt was written to the socket: by the connection's
//!    writer, or by the journal's thread at the end of its run of answers
//!    (counted in `kilonova_receipts_sent_by_journal_total`, see
//!    [`crate::outbound`]).
//!
//! Stages 2 and 3 are the segment store's ([`SegmentStore::append_stages`]),
//! the others the broker's. Each is observed once per SEND (per entry for
//! the store's), so their counts match under a steady load.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kilonova_storage::histogram::STAGE_MICROS_BOUNDS;
use kilonova_storage::{Histogram, SegmentStore};

use crate::metrics::{header, histogram_series};

/// A broker-side stage.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stage {
    Appended,
    Answered,
    Sent,
}

/// The broker's stage histograms (µs).
pub(crate) struct PublishStages {
    appended: Histogram,
    answered: Histogram,
    sent: Histogram,
    /// Receipts the journal's thread wrote to the socket itself.
    sent_by_journal: AtomicU64,
}

impl Default for PublishStages {
    fn default() -> Self {
        PublishStages {
            appended: Histogram::new(STAGE_MICROS_BOUNDS),
            answered: Histogram::new(STAGE_MICROS_BOUNDS),
            sent: Histogram::new(STAGE_MICROS_BOUNDS),
            sent_by_journal: AtomicU64::new(0),
        }
    }
}

impl PublishStages {
    pub(crate) fn observe(&self, stage: Stage, took: Duration) {
        let h = match stage {
            Stage::Appended => &self.appended,
            Stage::Answered => &self.answered,
            Stage::Sent => &self.sent,
        };
        h.observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// A receipt the journal's thread wrote itself, `took` after it was made.
    pub(crate) fn observe_sent_by_journal(&self, took: Duration) {
        self.sent_by_journal.fetch_add(1, Ordering::Relaxed);
        self.observe(Stage::Sent, took);
    }

    /// Receipts the journal's thread wrote itself so far.
    pub(crate) fn sent_by_journal(&self) -> u64 {
        self.sent_by_journal.load(Ordering::Relaxed)
    }

    /// Every stage, in a publish's order, as one histogram family.
    pub(crate) fn render(&self, out: &mut String, store: &SegmentStore) {
        const NAME: &str = "kilonova_publish_stage_seconds";
        header(
            out,
            NAME,
            "histogram",
            "Time a persistent SEND spends in each stage: appended (frame read to append asked), written (to its journal group written), durable (to its fdatasync done), answered (to its receipt queued), sent (to the receipt written to the socket)",
        );
        let [written, durable] = store.append_stages();
        let stages = [
            ("appended", self.appended.snapshot()),
            written,
            durable,
            ("answered", self.answered.snapshot()),
            ("sent", self.sent.snapshot()),
        ];
        for (stage, h) in &stages {
            histogram_series(out, NAME, &format!("stage=\"{stage}\""), h, 1e6);
        }
        const BY_JOURNAL: &str = "kilonova_receipts_sent_by_journal_total";
        header(
            out,
            BY_JOURNAL,
            "counter",
            "SEND_RECEIPTs the journal's thread wrote to the socket itself at the end of a group commit's answers (the others were written by the connection's writer task)",
        );
        let _ = writeln!(out, "{BY_JOURNAL} {}", self.sent_by_journal());
    }
}
