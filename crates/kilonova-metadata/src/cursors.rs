//! Subscription positions shared by a cluster's brokers (issue #26): where
//! each subscription of a topic stands, by message index, so that the
//! broker a topic moves to resumes every subscription where its previous
//! owner left it. Message indexes are the one numbering every owner of a
//! topic shares (entry positions are local to a broker's journal).
//!
//! One key per topic, `/cursors/<topic id>`, holding every subscription's
//! first unacknowledged message index (all before it are acknowledged) and
//! the ranges acknowledged above it (by entry number, at most
//! [`MAX_SHARED_ACK_RANGES`]; what is left out is redelivered after a move,
//! as Pulsar redelivers what it could not persist). Written by the
//! topic's owner only while it owns the topic's bundle (a write guarded by
//! the ownership epoch), so a deposed owner's late write cannot move a
//! subscription back. Beside them, where the segments of the topic's
//! owners start in its entry numbering ([`SegmentStart`]): a new owner
//! translates message ids of earlier owners through them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bundles::{Commit, Held};
use crate::error::Result;
use crate::resources::{from_json, to_json, Resources};
use crate::store::{Expect, TxnOp};

/// A topic's subscriptions and their first unacknowledged message index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicCursors {
    pub subscriptions: BTreeMap<String, u64>,
    /// Per subscription, the entries acknowledged after its first
    /// unacknowledged message: closed ranges of entry numbers (the
    /// write-ahead tags), the first [`MAX_SHARED_ACK_RANGES`] of them (fewer
    /// when many subscriptions share [`MAX_TOPIC_ACK_RANGES`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acked: BTreeMap<String, Vec<[u64; 2]>>,
    /// Where the segments of the topic's owners (this one's and the last
    /// few before it) start in the topic's entry numbering (the
    /// write-ahead tags every owner shares): a message id a client got
    /// from an earlier owner names one of its segments, and a new owner
    /// finds the entry it meant through these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentStart>,
}

/// Acknowledged ranges kept per subscription (Pulsar keeps up to 1,000 in
/// its metadata store too, `managedLedgerMaxUnackedRangesToPersistInMetadataStore`):
/// the messages of ranges beyond are delivered again after a move.
pub const MAX_SHARED_ACK_RANGES: usize = 1000;

/// Acknowledged ranges kept per topic, over all its subscriptions (each
/// keeps at least [`MIN_SHARED_ACK_RANGES`]): the record stays far below
/// etcd's request limit (1.5 MiB) however many subscriptions there are.
pub const MAX_TOPIC_ACK_RANGES: usize = 10_000;

/// Acknowledged ranges a subscription keeps however many share the topic.
pub const MIN_SHARED_ACK_RANGES: usize = 16;

/// Acknowledged ranges each of a topic's `subscriptions` keeps.
pub fn ack_ranges_per_subscription(subscriptions: usize) -> usize {
    (MAX_TOPIC_ACK_RANGES / subscriptions.max(1))
        .clamp(MIN_SHARED_ACK_RANGES, MAX_SHARED_ACK_RANGES)
}

/// Segment `segment` of some owner's journal holds the topic's entries from
/// number `first_entry` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentStart {
    pub segment: u64,
    pub first_entry: u64,
}

fn cursors_key(topic_id: u64) -> String {
    format!("/cursors/{topic_id}")
}

impl Resources {
    /// The stored positions of topic `topic_id`'s subscriptions (none stored: empty).
    pub async fn topic_cursors(&self, topic_id: u64) -> Result<TopicCursors> {
        match self.store().get(&cursors_key(topic_id)).await? {
            Some(s) => from_json("a topic's cursors", &s.value),
            None => Ok(TopicCursors::default()),
        }
    }

    /// Stores topic `topic_id`'s subscription positions if the caller still
    /// owns the topic's bundle as `held` says ([`Commit::Deposed`] and
    /// nothing written if not).
    pub async fn put_topic_cursors(
        &self,
        topic_id: u64,
        cursors: &TopicCursors,
        held: &Held,
    ) -> Result<Commit> {
        let write = TxnOp::Put {
            key: cursors_key(topic_id),
            value: to_json("a topic's cursors", cursors)?,
            expect: Expect::Any,
            session: None,
        };
        self.commit_if_owner(std::slice::from_ref(held), vec![write])
            .await
    }

    /// Forgets topic `topic_id`'s subscription positions (the topic was deleted).
    pub async fn delete_topic_cursors(&self, topic_id: u64) -> Result<()> {
        self.store()
            .delete(&cursors_key(topic_id), Expect::Any)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topics_acknowledged_ranges_are_bounded_whatever_its_subscriptions() {
        assert_eq!(ack_ranges_per_subscription(0), MAX_SHARED_ACK_RANGES);
        assert_eq!(ack_ranges_per_subscription(1), MAX_SHARED_ACK_RANGES);
        assert_eq!(ack_ranges_per_subscription(10), 1000);
        assert_eq!(ack_ranges_per_subscription(40), 250);
        for subs in [1, 7, 100, 625] {
            assert!(subs * ack_ranges_per_subscription(subs) <= MAX_TOPIC_ACK_RANGES);
        }
        assert_eq!(ack_ranges_per_subscription(5000), MIN_SHARED_ACK_RANGES);
    }
}
