//! What a topic needs of a SEND's payload: its bytes as stored and the few
//! metadata fields the topic acts on, taken out by the edge that decoded it.
//!
//! A decoded [`Payload`] carries the whole `MessageMetadata` (some 450
//! bytes): queued as it is, every SEND copied it into its topic's channel
//! and out again, and each topic's channel kept blocks of slots that size
//! (32 slots per block, at least one block per loaded topic). This keeps
//! the command a quarter of that.

use bytes::Bytes;
use kilonova_pulsar_protocol::frame::Payload;
use kilonova_pulsar_protocol::markers::{self, Marker};

pub(crate) struct SendPayload {
    /// The entry as stored: the payload's bytes as received.
    pub raw: Bytes,
    /// The frame's checksum matched (or it carried none).
    pub checksum_ok: bool,
    /// The producer's publish time (0: unset, the broker's clock stamps it).
    pub publish_time: u64,
    /// The messages the entry holds, or why its claimed count is refused.
    pub count: Result<u32, String>,
    /// A chunk of a larger message: its number, and how many the message has.
    pub chunk_id: Option<i32>,
    pub num_chunks: Option<i32>,
    /// Carries a marker, not data.
    pub is_marker: bool,
    /// The marker another cluster's replicator sent (parsed here; the topic
    /// acts on it only if the producer is a replicator).
    pub replicated_marker: Option<Box<Marker>>,
}

impl SendPayload {
    /// Takes what the topic needs out of `payload`; a batch's count is
    /// checked against `max_uncompressed_batch_bytes`.
    pub(crate) fn new(payload: Payload, max_uncompressed_batch_bytes: u64) -> Self {
        let count = payload
            .checked_message_count(max_uncompressed_batch_bytes)
            .map_err(|e| e.to_string());
        let m = &payload.metadata;
        let replicated_marker = match (m.marker_type, &m.replicated_from) {
            (Some(_), Some(_)) => markers::parse(&payload).ok().flatten().map(Box::new),
            _ => None,
        };
        SendPayload {
            checksum_ok: payload.checksum_ok,
            publish_time: m.publish_time,
            count,
            chunk_id: m.chunk_id,
            num_chunks: m.num_chunks_from_msg,
            is_marker: m.marker_type.is_some(),
            replicated_marker,
            raw: payload.raw,
        }
    }

    /// Whether it is over a topic's size limit `max` (none: no limit).
    /// Chunks are parts of a larger message that the client cut to the
    /// broker's limit: as in Pulsar they are not checked.
    pub(crate) fn over(&self, max: Option<usize>) -> bool {
        max.is_some_and(|max| self.raw.len() > max && self.chunk_id.is_none())
    }

    /// Whether it completes its message: not a chunk before the last.
    pub(crate) fn completes_message(&self) -> bool {
        crate::dedup::chunk_completes(self.chunk_id, self.num_chunks)
    }
}

#[cfg(test)]
mod tests {
    use kilonova_pulsar_protocol::frame::{build_payload, decode_payload};
    use kilonova_pulsar_protocol::proto::{
        MessageMetadata, ReplicatedSubscriptionsSnapshotRequest,
    };

    use super::*;

    /// A payload as a client sends it, decoded as the connection does.
    fn payload(metadata: MessageMetadata, data: &[u8]) -> Payload {
        decode_payload(build_payload(&metadata, data)).unwrap()
    }

    fn metadata() -> MessageMetadata {
        MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 1,
            publish_time: 42,
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_message_keeps_its_bytes_time_and_count() {
        let p = payload(metadata(), b"hello");
        let raw = p.raw.clone();
        let s = SendPayload::new(p, 1 << 20);
        assert_eq!(s.raw, raw);
        assert!(s.checksum_ok);
        assert_eq!((s.publish_time, s.count.clone()), (42, Ok(1)));
        assert!(!s.is_marker && s.replicated_marker.is_none() && s.chunk_id.is_none());
        assert!(s.completes_message());
    }

    #[test]
    fn a_message_over_the_limit_is_over_but_a_chunk_never_is() {
        let s = SendPayload::new(payload(metadata(), b"hello"), 1 << 20);
        let len = s.raw.len();
        assert!(s.over(Some(len - 1)));
        assert!(!s.over(Some(len)) && !s.over(None));
        let chunk = MessageMetadata {
            chunk_id: Some(0),
            num_chunks_from_msg: Some(2),
            ..metadata()
        };
        let c = SendPayload::new(payload(chunk, b"hello"), 1 << 20);
        assert!(
            !c.over(Some(1)),
            "chunks are the client's cut of a larger message"
        );
    }

    #[test]
    fn a_batch_that_cannot_hold_its_count_is_refused_with_the_reason() {
        let m = MessageMetadata {
            num_messages_in_batch: Some(1000),
            ..metadata()
        };
        let s = SendPayload::new(payload(m, b"tiny"), 1 << 20);
        assert!(s.count.is_err(), "{:?}", s.count);
    }

    #[test]
    fn only_the_last_chunk_completes_its_message() {
        let chunk = |id: i32| MessageMetadata {
            chunk_id: Some(id),
            num_chunks_from_msg: Some(3),
            ..metadata()
        };
        let done: Vec<bool> = (0..3)
            .map(|id| SendPayload::new(payload(chunk(id), b"x"), 1 << 20).completes_message())
            .collect();
        assert_eq!(done, vec![false, false, true]);
    }

    #[test]
    fn a_marker_is_parsed_only_when_another_cluster_sent_it() {
        let marker = Marker::SnapshotRequest(ReplicatedSubscriptionsSnapshotRequest {
            snapshot_id: "s-1".into(),
            source_cluster: Some("east".into()),
        });
        let stored = markers::build(&marker, 7, vec![]);
        // Written here (no replicated_from): a marker, nothing to act on.
        let s = SendPayload::new(decode_payload(stored.clone()).unwrap(), 1 << 20);
        assert!(s.is_marker && s.replicated_marker.is_none());
        // Another cluster's replicator's copy: parsed.
        let mut p = decode_payload(stored).unwrap();
        p.metadata.replicated_from = Some("east".into());
        let s = SendPayload::new(p, 1 << 20);
        assert!(s.is_marker);
        assert_eq!(s.replicated_marker.as_deref(), Some(&marker));
    }
}
