//! Markers: entries a broker writes into a topic for itself (Pulsar's
//! `MessageMetadata.marker_type`). Consumers never receive them; brokers
//! act on them as they are stored or read. The replicated-subscription
//! markers travel between clusters with the topic's other entries.
//!
//! [`build`] makes a marker entry as stored, [`parse`] reads one back, and
//! [`marker_type`] tells a marker from a message without decoding (or
//! checksumming) the entry: dispatch asks it of every entry.

use bytes::Bytes;
use prost::Message;

use crate::frame::{self, DecodeError, Payload};
use crate::proto::{
    ClusterMessageId, MarkerType, MarkersMessageIdData, MessageMetadata,
    ReplicatedSubscriptionsSnapshot, ReplicatedSubscriptionsSnapshotRequest,
    ReplicatedSubscriptionsSnapshotResponse, ReplicatedSubscriptionsUpdate,
};

/// The producer name marker entries carry.
pub const MARKER_PRODUCER: &str = "pulsar.marker";

/// What a marker entry says.
#[derive(Clone, Debug, PartialEq)]
pub enum Marker {
    SnapshotRequest(ReplicatedSubscriptionsSnapshotRequest),
    SnapshotResponse(ReplicatedSubscriptionsSnapshotResponse),
    Snapshot(ReplicatedSubscriptionsSnapshot),
    Update(ReplicatedSubscriptionsUpdate),
}

impl Marker {
    pub fn marker_type(&self) -> MarkerType {
        match self {
            Marker::SnapshotRequest(_) => MarkerType::ReplicatedSubscriptionSnapshotRequest,
            Marker::SnapshotResponse(_) => MarkerType::ReplicatedSubscriptionSnapshotResponse,
            Marker::Snapshot(_) => MarkerType::ReplicatedSubscriptionSnapshot,
            Marker::Update(_) => MarkerType::ReplicatedSubscriptionUpdate,
        }
    }

    fn encode_body(&self) -> Vec<u8> {
        match self {
            Marker::SnapshotRequest(m) => m.encode_to_vec(),
            Marker::SnapshotResponse(m) => m.encode_to_vec(),
            Marker::Snapshot(m) => m.encode_to_vec(),
            Marker::Update(m) => m.encode_to_vec(),
        }
    }
}

/// A position in one cluster's copy of a topic, as markers carry it.
pub fn cluster_position(cluster: &str, ledger_id: u64, entry_id: u64) -> ClusterMessageId {
    ClusterMessageId {
        cluster: cluster.to_string(),
        message_id: MarkersMessageIdData {
            ledger_id,
            entry_id,
        },
    }
}

/// A marker entry as stored (and as a replicator sends it on):
/// `replicate_to` names the clusters it goes to (empty: all of them).
pub fn build(marker: &Marker, publish_time_ms: u64, replicate_to: Vec<String>) -> Bytes {
    let metadata = MessageMetadata {
        producer_name: MARKER_PRODUCER.to_string(),
        sequence_id: 0,
        publish_time: publish_time_ms,
        replicate_to,
        marker_type: Some(marker.marker_type() as i32),
        ..Default::default()
    };
    frame::build_payload(&metadata, &marker.encode_body())
}

/// The marker a decoded entry holds: `None` for a message or a marker type
/// this broker does not know.
pub fn parse(payload: &Payload) -> Result<Option<Marker>, DecodeError> {
    let Some(t) = payload.metadata.marker_type else {
        return Ok(None);
    };
    let body = payload.data.clone();
    Ok(Some(match MarkerType::try_from(t) {
        Ok(MarkerType::ReplicatedSubscriptionSnapshotRequest) => Marker::SnapshotRequest(
            ReplicatedSubscriptionsSnapshotRequest::decode(body).map_err(DecodeError::Metadata)?,
        ),
        Ok(MarkerType::ReplicatedSubscriptionSnapshotResponse) => Marker::SnapshotResponse(
            ReplicatedSubscriptionsSnapshotResponse::decode(body).map_err(DecodeError::Metadata)?,
        ),
        Ok(MarkerType::ReplicatedSubscriptionSnapshot) => Marker::Snapshot(
            ReplicatedSubscriptionsSnapshot::decode(body).map_err(DecodeError::Metadata)?,
        ),
        Ok(MarkerType::ReplicatedSubscriptionUpdate) => Marker::Update(
            ReplicatedSubscriptionsUpdate::decode(body).map_err(DecodeError::Metadata)?,
        ),
        Ok(MarkerType::UnknownMarker) | Err(_) => return Ok(None),
    }))
}

/// `MessageMetadata.marker_type`'s field number.
const MARKER_TYPE_FIELD: u64 = 20;

/// The marker type of a stored entry (`[0x0e01][crc][size][metadata]…`,
/// the checksum optional), or `None` for a message: a scan of the
/// metadata's fields that neither allocates nor checks the checksum. An
/// entry it cannot read is not a marker (dispatch delivers it as stored).
pub fn marker_type(entry: &[u8]) -> Option<i32> {
    let mut at = 0;
    if entry.get(..2) == Some(&frame::MAGIC_CRC32C.to_be_bytes()[..]) {
        at = 6;
    }
    let size = u32::from_be_bytes(entry.get(at..at + 4)?.try_into().ok()?) as usize;
    let meta = entry.get(at + 4..(at + 4).checked_add(size)?)?;
    let mut rest = meta;
    // As a protobuf decoder does, the field's last occurrence counts.
    let mut found = None;
    while !rest.is_empty() {
        let key = varint(&mut rest)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(&mut rest)?;
                if field == MARKER_TYPE_FIELD {
                    found = Some(v as i32);
                }
            }
            1 => rest = rest.get(8..)?,
            2 => {
                let len = usize::try_from(varint(&mut rest)?).ok()?;
                rest = rest.get(len..)?;
            }
            5 => rest = rest.get(4..)?,
            _ => return None,
        }
    }
    found
}

/// Reads a base-128 varint off the front of `b`.
fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Marker {
        Marker::SnapshotRequest(ReplicatedSubscriptionsSnapshotRequest {
            snapshot_id: "s-1".into(),
            source_cluster: Some("a".into()),
        })
    }

    #[test]
    fn a_marker_round_trips_with_its_type_and_destinations() {
        let update = Marker::Update(ReplicatedSubscriptionsUpdate {
            subscription_name: "sub".into(),
            clusters: vec![cluster_position("b", 7, 9)],
        });
        for m in [request(), update] {
            let stored = build(&m, 1_234, vec!["b".into()]);
            assert_eq!(marker_type(&stored), Some(m.marker_type() as i32));
            let p = frame::decode_payload(stored).unwrap();
            assert!(p.checksum_ok);
            assert_eq!(p.metadata.replicate_to, vec!["b".to_string()]);
            assert_eq!(p.metadata.publish_time, 1_234);
            assert_eq!(parse(&p).unwrap(), Some(m));
        }
    }

    #[test]
    fn a_message_is_not_a_marker_whatever_its_metadata_holds() {
        let meta = MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 300,
            publish_time: u64::MAX,
            partition_key: Some("k".repeat(200)),
            event_time: Some(5),
            num_messages_in_batch: Some(3),
            ..Default::default()
        };
        let stored = frame::build_payload(&meta, b"data");
        assert_eq!(marker_type(&stored), None);
        assert_eq!(
            parse(&frame::decode_payload(stored).unwrap()).unwrap(),
            None
        );
    }

    #[test]
    fn garbage_is_not_a_marker_and_never_panics() {
        let stored = build(&request(), 1, vec![]);
        for len in 0..stored.len() {
            // Truncated: whatever the scan finds, it does not panic.
            let _ = marker_type(&stored[..len]);
        }
        assert_eq!(marker_type(&[]), None);
        assert_eq!(marker_type(&[0xff; 64]), None);
    }

    #[test]
    fn an_unknown_marker_type_parses_as_nothing() {
        let meta = MessageMetadata {
            producer_name: MARKER_PRODUCER.into(),
            marker_type: Some(20), // a transaction marker
            ..Default::default()
        };
        let stored = frame::build_payload(&meta, b"");
        assert_eq!(marker_type(&stored), Some(20));
        assert_eq!(
            parse(&frame::decode_payload(stored).unwrap()).unwrap(),
            None
        );
    }
}
