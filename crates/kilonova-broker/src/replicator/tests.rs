use bytes::Bytes;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{KeyValue, MessageMetadata};
use kilonova_storage::Position;

use super::*;

fn stored(meta: &MessageMetadata, data: &[u8]) -> Bytes {
    frame::build_payload(meta, data)
}

fn meta() -> MessageMetadata {
    MessageMetadata {
        producer_name: "p1".into(),
        sequence_id: 7,
        publish_time: 1234,
        partition_key: Some("k".into()),
        event_time: Some(99),
        properties: vec![KeyValue {
            key: "a".into(),
            value: "b".into(),
        }],
        ..Default::default()
    }
}

#[test]
fn a_copy_keeps_the_metadata_and_adds_where_it_came_from() {
    let p = Position::new(3, 41);
    let Copy::Send {
        sequence_id,
        metadata,
        payload,
    } = copy_for(p, &stored(&meta(), b"hello"), "a", "b")
    else {
        panic!("not sent");
    };
    assert_eq!(payload.as_ref(), b"hello");
    assert_eq!(sequence_id, (3 << 32) | 41);
    assert_eq!(metadata.replicated_from.as_deref(), Some("a"));
    assert_eq!(metadata.partition_key.as_deref(), Some("k"));
    assert_eq!(metadata.event_time, Some(99));
    assert_eq!(
        (metadata.producer_name.as_str(), metadata.sequence_id),
        ("p1", 7)
    );
    assert_eq!(metadata.properties[0].key, "a");
    // The remote rebuilds its deduplication state from what it stores.
    assert_eq!(
        replicated_source(&metadata),
        Some(("pulsar.repl.a".to_string(), sequence_id))
    );
}

#[test]
fn replicated_messages_markers_and_messages_for_other_clusters_are_not_sent() {
    let p = Position::new(0, 0);
    let mut m = meta();
    m.replicated_from = Some("c".into());
    assert_eq!(
        copy_for(p, &stored(&m, b"x"), "a", "b"),
        Copy::Skip,
        "no loops"
    );
    let mut m = meta();
    m.replicate_to = vec!["a".into(), "c".into()];
    assert_eq!(copy_for(p, &stored(&m, b"x"), "a", "b"), Copy::Skip);
    assert!(matches!(
        copy_for(p, &stored(&m, b"x"), "a", "c"),
        Copy::Send { .. }
    ));
    // disable_replication: the Python client's replicate_to = ["__local__"].
    let mut m = meta();
    m.replicate_to = vec!["__local__".into()];
    assert_eq!(copy_for(p, &stored(&m, b"x"), "a", "b"), Copy::Skip);
    let mut m = meta();
    m.marker_type = Some(1);
    assert_eq!(copy_for(p, &stored(&m, b"x"), "a", "b"), Copy::Skip);
    assert_eq!(
        copy_for(p, &Bytes::from_static(b"\x00\x00"), "a", "b"),
        Copy::Skip
    );
}

#[test]
fn sequence_ids_ascend_with_positions() {
    let ps = [
        Position::new(0, 0),
        Position::new(0, 1),
        Position::new(0, u64::from(u32::MAX)),
        Position::new(1, 0),
        Position::new(7, 3),
    ];
    for w in ps.windows(2) {
        assert!(sequence_id(w[0]) < sequence_id(w[1]), "{:?}", w);
    }
}

#[test]
fn replicated_subscription_markers_travel_to_the_clusters_they_name_and_snapshots_stay() {
    use kilonova_pulsar_protocol::proto::MarkerType as M;
    let p = Position::new(0, 0);
    for (kind, travels) in [
        (M::ReplicatedSubscriptionSnapshotRequest, true),
        (M::ReplicatedSubscriptionSnapshotResponse, true),
        (M::ReplicatedSubscriptionUpdate, true),
        (M::ReplicatedSubscriptionSnapshot, false),
    ] {
        let mut m = meta();
        m.marker_type = Some(kind as i32);
        m.replicate_to = vec!["b".into()];
        let to_b = copy_for(p, &stored(&m, b"x"), "a", "b");
        assert_eq!(matches!(to_b, Copy::Send { .. }), travels, "{kind:?} to b");
        assert_eq!(
            copy_for(p, &stored(&m, b"x"), "a", "c"),
            Copy::Skip,
            "{kind:?} to c"
        );
        // One that came by replication is never sent on.
        m.replicated_from = Some("c".into());
        assert_eq!(copy_for(p, &stored(&m, b"x"), "a", "b"), Copy::Skip);
    }
}
