//! A replicated subscription's snapshots: each says which position in every
//! other cluster corresponds to a local position (everything those clusters
//! had before theirs had reached this one before it). The dispatcher adds
//! each snapshot marker it reads; once the subscription's mark-delete
//! position passes a snapshot's local position, the newest such snapshot
//! tells where the other clusters' copies of the subscription may move.

use std::collections::VecDeque;

use kilonova_pulsar_protocol::proto::ReplicatedSubscriptionsSnapshot;
use kilonova_storage::Position;

/// Snapshots not yet passed, oldest first, at most `max`.
#[derive(Debug, Default)]
pub(crate) struct SnapshotCache {
    snapshots: VecDeque<(Position, ReplicatedSubscriptionsSnapshot)>,
}

impl SnapshotCache {
    /// Keeps a snapshot read from the log. Past `max`, the oldest goes (a
    /// later one serves once the position passes it).
    pub(crate) fn add(&mut self, snapshot: ReplicatedSubscriptionsSnapshot, max: usize) {
        let Some(local) = snapshot.local_message_id.as_ref() else {
            return;
        };
        let at = Position::new(local.ledger_id, local.entry_id);
        if self.snapshots.back().is_some_and(|(p, _)| *p >= at) {
            return; // read again (a rewind): already kept
        }
        self.snapshots.push_back((at, snapshot));
        while self.snapshots.len() > max.max(1) {
            self.snapshots.pop_front();
        }
    }

    /// The mark-delete position moved to `mark_delete`: the newest snapshot
    /// it passed, if any (it and older ones are dropped).
    pub(crate) fn passed(
        &mut self,
        mark_delete: Position,
    ) -> Option<ReplicatedSubscriptionsSnapshot> {
        let mut newest = None;
        while self
            .snapshots
            .front()
            .is_some_and(|(at, _)| *at <= mark_delete)
        {
            newest = self.snapshots.pop_front().map(|(_, s)| s);
        }
        newest
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.snapshots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilonova_pulsar_protocol::markers::cluster_position;
    use kilonova_pulsar_protocol::proto::MarkersMessageIdData;

    fn snapshot(id: &str, entry: u64) -> ReplicatedSubscriptionsSnapshot {
        ReplicatedSubscriptionsSnapshot {
            snapshot_id: id.into(),
            local_message_id: Some(MarkersMessageIdData {
                ledger_id: 1,
                entry_id: entry,
            }),
            clusters: vec![cluster_position("b", 9, entry * 10)],
        }
    }

    #[test]
    fn the_newest_snapshot_passed_is_answered_and_older_ones_dropped() {
        let mut c = SnapshotCache::default();
        for (id, e) in [("s1", 10), ("s2", 20), ("s3", 30)] {
            c.add(snapshot(id, e), 10);
        }
        assert_eq!(c.passed(Position::new(1, 9)), None, "none passed yet");
        assert_eq!(
            c.passed(Position::new(1, 25)).map(|s| s.snapshot_id),
            Some("s2".into())
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c.passed(Position::new(1, 29)), None);
        assert_eq!(
            c.passed(Position::new(2, 0)).map(|s| s.snapshot_id),
            Some("s3".into())
        );
    }

    #[test]
    fn at_most_max_are_kept_and_a_snapshot_read_again_is_kept_once() {
        let mut c = SnapshotCache::default();
        for e in 1..=5 {
            c.add(snapshot(&format!("s{e}"), e), 3);
        }
        c.add(snapshot("s4", 4), 3);
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.passed(Position::new(1, 3)).map(|s| s.snapshot_id),
            Some("s3".into())
        );
    }
}
