//! What a proxy tells clients about the federation: the brokers (the
//! proxies of the client's group, by the name service), each logical
//! topic's partitions as the client's side sees them with leadership spread
//! over those proxies, and which proxy coordinates a group.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kilonova_kafka::metadata;
use kilonova_kafka_groups::answers::Node;

use super::{Shared, View};
use crate::map::{Seen, Side};

/// The proxies a client is to use, as Kafka nodes on the client's side:
/// its group's (by its SASL identity or client id), or (none live) every live proxy, or (none listed yet) this
/// one. Sorted by node id.
pub fn nodes_for(shared: &Shared, view: &View, identity: &str, side: Side) -> Vec<Node> {
    let group = view.map.group_of(identity).unwrap_or(crate::DEFAULT_GROUP);
    let addr = |p: &crate::api::ProxyInfo| match side {
        Side::Produce => p.producer_addr.clone(),
        Side::Consume => p.consumer_addr.clone(),
    };
    let mut listed: Vec<(i32, String)> = view
        .proxies
        .iter()
        .filter(|p| p.group == group)
        .map(|p| (p.node_id, addr(p)))
        .collect();
    if listed.is_empty() {
        listed = view.proxies.iter().map(|p| (p.node_id, addr(p))).collect();
    }
    if listed.is_empty() {
        let own = match side {
            Side::Produce => shared.config.producer_listen.port(),
            Side::Consume => shared.config.consumer_listen.port(),
        };
        listed.push((
            shared.config.node_id,
            format!("{}:{own}", shared.config.advertised_host),
        ));
    }
    listed.sort();
    listed.dedup_by_key(|(id, _)| *id);
    listed
        .into_iter()
        .filter_map(|(id, addr)| {
            let (host, port) = addr.rsplit_once(':')?;
            Some(Node {
                id,
                host: host.to_string(),
                port: port.parse().ok()?,
            })
        })
        .collect()
}

/// FNV-1a: a hash every proxy computes alike.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The proxy that coordinates `group` among `nodes`.
pub fn coordinator_of<'a>(nodes: &'a [Node], group: &str) -> Option<&'a Node> {
    if nodes.is_empty() {
        return None;
    }
    nodes.get((stable_hash(group) % nodes.len() as u64) as usize)
}

/// The Metadata answer for a client on `side`.
pub fn metadata(
    shared: &Shared,
    view: &View,
    m: &MetadataRequest,
    version: i16,
    side: Side,
    identity: &str,
) -> MetadataResponse {
    let nodes = nodes_for(shared, view, identity, side);
    let map = &view.map;
    let every = match &m.topics {
        Some(ts) => version == 0 && ts.is_empty(),
        None => true,
    };
    let names: Vec<String> = match &m.topics {
        Some(ts) if !every => ts
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect(),
        _ => map.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|name| {
            let topic = MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.clone()))));
            let Some(t) = map.topics.get(&name) else {
                // Topics are created through the controller, not by clients.
                return topic.with_error_code(ResponseError::UnknownTopicOrPartition.code());
            };
            let count = map.partition_count(t, side) as i32;
            let partitions = (0..count)
                .map(|i| {
                    let leader = nodes.get(i as usize % nodes.len().max(1)).map(|n| n.id);
                    // Every partition has a leader: a producer's records for
                    // one on a drained or unreachable cluster are written
                    // elsewhere by the proxy (`FederationMap::write_target`).
                    // No epoch (-1): clients do not validate offsets against
                    // epochs the physical clusters keep.
                    let led = match (map.seen(t, i), leader) {
                        (Some(Seen::Live(_) | Seen::Retired(_)), Some(id)) => Ok((id, -1)),
                        _ => Err(ResponseError::LeaderNotAvailable.code()),
                    };
                    metadata::partition(i, led)
                })
                .collect();
            topic.with_partitions(partitions)
        })
        .collect();
    let brokers = nodes
        .iter()
        .map(|n| metadata::broker(n.id, &n.host, n.port))
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_static_str("kilonova-federation")))
        .with_controller_id(BrokerId(nodes.first().map_or(-1, |n| n.id)))
        .with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i32) -> Node {
        Node {
            id,
            host: "127.0.0.1".into(),
            port: 9000 + id,
        }
    }

    #[test]
    fn every_proxy_picks_the_same_coordinator_and_groups_spread() {
        let nodes: Vec<Node> = (1..=3).map(node).collect();
        let picks: std::collections::HashSet<i32> = (0..100)
            .map(|g| coordinator_of(&nodes, &format!("group-{g}")).unwrap().id)
            .collect();
        assert_eq!(picks.len(), 3, "100 groups land on every proxy");
        assert_eq!(
            coordinator_of(&nodes, "g").map(|n| n.id),
            coordinator_of(&nodes.clone(), "g").map(|n| n.id)
        );
        assert_eq!(coordinator_of(&[], "g"), None);
    }
}
