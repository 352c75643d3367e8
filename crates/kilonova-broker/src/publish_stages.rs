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
//! 5. `sent`: → the connection's writer wrote the receipt to the socket.
//!
//! Stages 2 and 3 are the segment store's ([`SegmentStore::append_stages`]),
//! the others the broker's. Each is observed once per SEND (per entry for
//! the store's), so their counts match under a steady load.

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
}

impl Default for PublishStages {
    fn default() -> Self {
        PublishStages {
            appended: Histogram::new(STAGE_MICROS_BOUNDS),
            answered: Histogram::new(STAGE_MICROS_BOUNDS),
            sent: Histogram::new(STAGE_MICROS_BOUNDS),
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
    }
}
