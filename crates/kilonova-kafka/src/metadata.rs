//! Pieces of a Metadata answer that every server of the protocol builds
//! alike: a partition with its leader (or none), a broker entry.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;

/// Partition `index` led by `leader` (its node id and leader epoch; the
/// leader is the one replica and the in-sync set), or without a leader and
/// with `error`.
pub fn partition(index: i32, leader: Result<(i32, i32), i16>) -> MetadataResponsePartition {
    let p = MetadataResponsePartition::default().with_partition_index(index);
    match leader {
        Ok((id, epoch)) => p
            .with_leader_id(BrokerId(id))
            .with_leader_epoch(epoch)
            .with_replica_nodes(vec![BrokerId(id)])
            .with_isr_nodes(vec![BrokerId(id)]),
        Err(code) => p
            .with_error_code(code)
            .with_leader_id(BrokerId(-1))
            .with_leader_epoch(-1),
    }
}

/// A broker as Metadata lists it.
pub fn broker(id: i32, host: &str, port: i32) -> MetadataResponseBroker {
    MetadataResponseBroker::default()
        .with_node_id(BrokerId(id))
        .with_host(StrBytes::from_string(host.to_string()))
        .with_port(port)
}
