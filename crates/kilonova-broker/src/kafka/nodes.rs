//! The Kafka nodes a client is told of. A standalone broker is node 0 and
//! leads every partition. In a cluster every registered broker with a Kafka
//! listener (of the kind the client came in by: plain or TLS) is a node,
//! its id a hash of its broker id; a partition's leader is the broker
//! serving its topic (placed as a Pulsar lookup places it), and a consumer
//! group's coordinator the node the group's name hashes to.

use std::collections::hash_map::{Entry, HashMap};
use std::time::{Duration, Instant};

use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_metadata::names::TopicName;

use super::connection::KafkaConnection;
use super::errors;

/// A standalone broker's node id.
pub(super) const STANDALONE_NODE: i32 = 0;

/// How long a connection keeps the node list it read (a FindCoordinator
/// and the group requests after it do not each list the brokers).
const NODES_FRESH_FOR: Duration = Duration::from_secs(1);

/// A Kafka node: its id and where clients reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Node {
    pub id: i32,
    pub host: String,
    pub port: i32,
    /// The cluster broker's id (none: standalone).
    pub broker: Option<String>,
}

/// The Kafka node id of cluster broker `broker_id`: a hash, the same on
/// every broker.
pub(super) fn node_id(broker_id: &str) -> i32 {
    (crc32c::crc32c(broker_id.as_bytes()) & 0x7fff_ffff) as i32
}

/// A bundle ownership's epoch (a metadata-store revision) as Kafka's
/// 31-bit leader epoch: it wraps after 2^31 revisions.
fn leader_epoch(epoch: i64) -> i32 {
    match epoch {
        e if e < 0 => -1,
        e => (e % i64::from(i32::MAX)) as i32,
    }
}

/// `host:port` split; none if it is not that.
fn host_port(address: &str) -> Option<(String, i32)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// The node `key` (a group id) is coordinated by, among `nodes` (sorted by
/// broker id, so every broker picks the same).
pub(super) fn coordinator_among<'a>(nodes: &'a [Node], key: &str) -> Option<&'a Node> {
    if nodes.is_empty() {
        return None;
    }
    let i = crc32c::crc32c(key.as_bytes()) as usize % nodes.len();
    nodes.get(i)
}

/// What one Metadata request learned of namespaces' bundles and of who
/// serves each bundle (by namespace name).
#[derive(Default)]
pub(super) struct Leaders {
    bundles: HashMap<String, Result<kilonova_metadata::policies::BundlesData, i16>>,
    served: HashMap<(String, kilonova_metadata::bundles::BundleRange), Result<(i32, i32), i16>>,
}

/// A connection's view of the nodes, read at most every [`NODES_FRESH_FOR`].
#[derive(Default)]
pub(super) struct NodeCache(Option<(Instant, Vec<Node>)>);

impl KafkaConnection {
    /// The Kafka nodes, sorted by broker id.
    pub(super) async fn nodes(&mut self) -> Result<Vec<Node>, i16> {
        if let Some((at, nodes)) = &self.nodes.0 {
            if at.elapsed() < NODES_FRESH_FOR {
                return Ok(nodes.clone());
            }
        }
        let nodes = match self.broker.cluster_broker_id() {
            None => vec![Node {
                id: STANDALONE_NODE,
                host: self.settings.advertised_host.clone(),
                port: i32::from(self.advertised_port),
                broker: None,
            }],
            Some(_) => {
                let brokers = self
                    .broker
                    .cluster_brokers()
                    .await
                    .map_err(|e| errors::code(&e))?;
                brokers
                    .into_iter()
                    .filter_map(|(id, r)| {
                        let address = if self.over_tls { r.kafka_tls } else { r.kafka };
                        let (host, port) = host_port(address.as_deref()?)?;
                        Some(Node {
                            id: node_id(&id),
                            host,
                            port,
                            broker: Some(id),
                        })
                    })
                    .collect()
            }
        };
        self.nodes.0 = Some((Instant::now(), nodes.clone()));
        Ok(nodes)
    }

    /// This broker's node id.
    pub(super) fn own_node(&self) -> i32 {
        self.broker
            .cluster_broker_id()
            .map_or(STANDALONE_NODE, node_id)
    }

    /// The node id leading each of `topics` (partitions, or a
    /// non-partitioned topic, of one namespace) and its leader epoch: the
    /// bundle ownership's, which grows each time the bundle changes hands
    /// (clients take a leader with an older epoch than one they saw as
    /// stale). `asked` keeps what one request learned, so each namespace
    /// and bundle is asked about once per request however many topics it has.
    pub(super) async fn leaders_of(
        &self,
        topics: &[TopicName],
        asked: &mut Leaders,
    ) -> Vec<Result<(i32, i32), i16>> {
        let Some(first) = topics.first() else {
            return Vec::new();
        };
        if self.broker.cluster_broker_id().is_none() {
            return vec![Ok((STANDALONE_NODE, 0)); topics.len()];
        }
        let ns = first.namespace();
        let key = ns.to_string();
        let bundles = match asked.bundles.entry(key.clone()) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(match self.broker.namespace_policies(&ns).await {
                Ok(p) => Ok(p.bundles),
                Err(e) => Err(errors::code(&e)),
            }),
        };
        let bundles = match bundles {
            Ok(b) => b,
            Err(code) => return vec![Err(*code); topics.len()],
        };
        let mut out = Vec::with_capacity(topics.len());
        for t in topics {
            let range = match kilonova_metadata::bundles::bundle_of(bundles, t) {
                Ok(r) => r,
                Err(e) => {
                    out.push(Err(errors::code(&e.into())));
                    continue;
                }
            };
            let served = match asked.served.entry((key.clone(), range)) {
                Entry::Occupied(o) => *o.get(),
                Entry::Vacant(v) => *v.insert(
                    match self.broker.bundle_server(&(ns.clone(), range)).await {
                        Ok(Some((id, epoch))) => Ok((node_id(&id), leader_epoch(epoch))),
                        Ok(None) => Ok((STANDALONE_NODE, 0)),
                        Err(e) => Err(errors::code(&e)),
                    },
                ),
            };
            out.push(served);
        }
        out
    }

    /// The node coordinating group `group`.
    pub(super) async fn coordinator_of(&mut self, group: &str) -> Result<Node, i16> {
        let nodes = self.nodes().await?;
        coordinator_among(&nodes, group)
            .cloned()
            .ok_or(ResponseError::CoordinatorNotAvailable.code())
    }

    /// Whether this broker coordinates `group` (`NOT_COORDINATOR` if not:
    /// the client looks the coordinator up again).
    pub(super) async fn coordinates(&mut self, group: &str) -> Result<(), i16> {
        if self.broker.cluster_broker_id().is_none() {
            return Ok(());
        }
        let own = self.own_node();
        match self.coordinator_of(group).await? {
            n if n.id == own => Ok(()),
            _ => Err(ResponseError::NotCoordinator.code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node {
            id: node_id(id),
            host: "h".into(),
            port: 1,
            broker: Some(id.into()),
        }
    }

    #[test]
    fn node_ids_are_stable_and_positive() {
        assert_eq!(node_id("10.0.0.1:8080"), node_id("10.0.0.1:8080"));
        assert_ne!(node_id("10.0.0.1:8080"), node_id("10.0.0.2:8080"));
        assert!(node_id("x").is_positive() || node_id("x") == 0);
    }

    #[test]
    fn every_broker_picks_the_same_coordinator_and_groups_spread() {
        let nodes = vec![node("a:1"), node("b:1"), node("c:1")];
        let picked: std::collections::BTreeSet<i32> = (0..60)
            .map(|i| coordinator_among(&nodes, &format!("group-{i}")).unwrap().id)
            .collect();
        assert_eq!(picked.len(), 3, "60 groups land on every node");
        assert_eq!(
            coordinator_among(&nodes, "g"),
            coordinator_among(&nodes.clone(), "g")
        );
        assert!(coordinator_among(&[], "g").is_none());
    }

    #[test]
    fn addresses_split_at_the_last_colon() {
        assert_eq!(
            host_port("127.0.0.1:9092"),
            Some(("127.0.0.1".into(), 9092))
        );
        assert_eq!(host_port("[::1]:9092"), Some(("[::1]".into(), 9092)));
        assert_eq!(host_port("nohost"), None);
    }
}
