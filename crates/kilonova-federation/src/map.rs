//! The federation's map: one versioned document that says which physical
//! clusters there are (and their state), which logical topics, and where
//! each logical partition lives. The controller changes it (every change
//! takes the next version) and pushes it to the proxies; a proxy answers
//! Kafka clients from the version it holds.
//!
//! A logical partition *is* one physical partition, for its whole life:
//! logical partition `i` of topic `t` is `t.partitions[i]`, offsets are the
//! physical partition's, and an expansion only appends (ADR 0024).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A physical cluster's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterState {
    /// Producers write to it, consumers read it.
    Active,
    /// Drained: producers no longer write to it; consumers read what it
    /// holds until every partition there is consumed or expired.
    ReadOnly,
    /// Gone: its partitions are retired (empty, at the offset they ended at).
    Removed,
}

/// One physical cluster, as the federation reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Its Kafka bootstrap addresses (`host:port`).
    pub bootstrap: Vec<String>,
    pub state: ClusterState,
    /// When it was added (ms since the epoch).
    pub added_ms: u64,
}

/// How a logical topic's keys meet an expansion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyPolicy {
    /// Producers keep seeing the partition count they saw until an explicit
    /// rebalance: a key keeps its partition (and its order) across an
    /// expansion; the new partitions take records after the rebalance.
    #[default]
    Keyed,
    /// Producers see every partition at once: capacity at once, keys move.
    Spread,
}

/// Where one logical partition lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalPartition {
    pub cluster: String,
    pub topic: String,
    pub partition: i32,
    /// Set when its cluster was removed: the partition is retired, empty,
    /// and answers as a partition whose log starts and ends at this offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<i64>,
}

/// A logical topic: its partitions, in logical order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalTopic {
    pub partitions: Vec<PhysicalPartition>,
    #[serde(default)]
    pub key_policy: KeyPolicy,
    /// How many of the partitions (the first ones) producers see.
    pub producer_partitions: u32,
    /// How many partitions each cluster gets when the topic expands onto it.
    pub partitions_per_cluster: u32,
}

/// The whole map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationMap {
    pub version: u64,
    pub clusters: BTreeMap<String, Cluster>,
    pub topics: BTreeMap<String, LogicalTopic>,
    /// The name service: a client id (or SASL principal) → the proxy group
    /// it should use.
    #[serde(default)]
    pub names: BTreeMap<String, String>,
}

/// Why a change to the map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("cluster {0} exists already")]
    ClusterExists(String),
    #[error("no cluster {0}")]
    NoCluster(String),
    #[error("cluster {0} is {1:?}: only an active cluster can be drained")]
    NotActive(String, ClusterState),
    #[error("cluster {0} is still active: drain it first")]
    StillActive(String),
    #[error("topic {0} exists already")]
    TopicExists(String),
    #[error("no topic {0}")]
    NoTopic(String),
    #[error("no active cluster to place topic {0} on")]
    NoActiveCluster(String),
    #[error("invalid name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("a topic needs 1 to {max} partitions per cluster, not {0}", max = MAX_PARTITIONS_PER_CLUSTER)]
    PartitionCount(u32),
}

/// The most partitions a topic gets on one cluster.
pub const MAX_PARTITIONS_PER_CLUSTER: u32 = 1_000;

/// Kafka's topic-name rule (1 to 249 of `[a-zA-Z0-9._-]`), which cluster
/// and group names follow too.
pub fn check_name(name: &str) -> Result<(), MapError> {
    let invalid = |why| Err(MapError::InvalidName(name.to_string(), why));
    if name.is_empty() || name.len() > 249 {
        return invalid("1 to 249 characters");
    }
    if name == "." || name == ".." {
        return invalid("not . or ..");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("letters, digits, '.', '_' and '-' only");
    }
    Ok(())
}

/// Which side of the proxy a client is on: producers and consumers see the
/// same partitions in a different light.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Produce,
    Consume,
}

/// One partition as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen<'a> {
    /// Served by its physical partition.
    Live(&'a PhysicalPartition),
    /// Retired: empty, at this offset.
    Retired(i64),
}

/// Why a produce to a logical partition has nowhere to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRefused {
    /// Past the partitions producers see.
    NoPartition,
    /// No partition of the topic is on a cluster that takes writes now.
    NothingWritable,
}

impl FederationMap {
    /// The clusters new partitions go to.
    pub fn active_clusters(&self) -> impl Iterator<Item = &String> {
        self.clusters
            .iter()
            .filter(|(_, c)| c.state == ClusterState::Active)
            .map(|(n, _)| n)
    }

    /// Adds an active cluster; returns the physical partitions the topics
    /// gain on it (to be created on the cluster before the map is stored).
    pub fn add_cluster(
        &mut self,
        name: &str,
        bootstrap: Vec<String>,
        now_ms: u64,
    ) -> Result<Vec<PhysicalPartition>, MapError> {
        check_name(name)?;
        if self.clusters.contains_key(name) {
            return Err(MapError::ClusterExists(name.to_string()));
        }
        self.clusters.insert(
            name.to_string(),
            Cluster {
                bootstrap,
                state: ClusterState::Active,
                added_ms: now_ms,
            },
        );
        let mut added = Vec::new();
        for (topic, t) in self.topics.iter_mut() {
            let gained = expand(topic, t, name);
            added.extend(gained);
        }
        self.version += 1;
        Ok(added)
    }

    /// Makes a cluster read-only: producers stop writing there.
    pub fn drain_cluster(&mut self, name: &str) -> Result<(), MapError> {
        let c = self
            .clusters
            .get_mut(name)
            .ok_or_else(|| MapError::NoCluster(name.to_string()))?;
        if c.state != ClusterState::Active {
            return Err(MapError::NotActive(name.to_string(), c.state));
        }
        c.state = ClusterState::ReadOnly;
        self.version += 1;
        Ok(())
    }

    /// Removes a read-only cluster: each of its partitions retires at the
    /// end offset `end_of` gives it (the log end the controller read).
    pub fn remove_cluster(
        &mut self,
        name: &str,
        mut end_of: impl FnMut(&PhysicalPartition) -> i64,
    ) -> Result<(), MapError> {
        let c = self
            .clusters
            .get_mut(name)
            .ok_or_else(|| MapError::NoCluster(name.to_string()))?;
        if c.state == ClusterState::Active {
            return Err(MapError::StillActive(name.to_string()));
        }
        c.state = ClusterState::Removed;
        for t in self.topics.values_mut() {
            for p in t.partitions.iter_mut().filter(|p| p.cluster == name) {
                if p.retired_at.is_none() {
                    p.retired_at = Some(end_of(p));
                }
            }
        }
        self.version += 1;
        Ok(())
    }

    /// Creates a logical topic with `per_cluster` partitions on every active
    /// cluster; returns the physical partitions to create.
    pub fn create_topic(
        &mut self,
        name: &str,
        per_cluster: u32,
        key_policy: KeyPolicy,
    ) -> Result<Vec<PhysicalPartition>, MapError> {
        check_name(name)?;
        if !(1..=MAX_PARTITIONS_PER_CLUSTER).contains(&per_cluster) {
            return Err(MapError::PartitionCount(per_cluster));
        }
        if self.topics.contains_key(name) {
            return Err(MapError::TopicExists(name.to_string()));
        }
        let clusters: Vec<String> = self.active_clusters().cloned().collect();
        if clusters.is_empty() {
            return Err(MapError::NoActiveCluster(name.to_string()));
        }
        let mut t = LogicalTopic {
            partitions: Vec::new(),
            key_policy,
            producer_partitions: 0,
            partitions_per_cluster: per_cluster,
        };
        let mut added = Vec::new();
        for c in &clusters {
            added.extend(expand(name, &mut t, c));
        }
        // A new topic has no keys placed yet: producers see it whole.
        t.producer_partitions = t.partitions.len() as u32;
        self.topics.insert(name.to_string(), t);
        self.version += 1;
        Ok(added)
    }

    /// Shows a keyed topic's producers every partition: keys move now.
    pub fn rebalance_topic(&mut self, name: &str) -> Result<u32, MapError> {
        let t = self
            .topics
            .get_mut(name)
            .ok_or_else(|| MapError::NoTopic(name.to_string()))?;
        t.producer_partitions = t.partitions.len() as u32;
        self.version += 1;
        Ok(t.producer_partitions)
    }

    /// Maps a client id to a proxy group (the name service).
    pub fn set_name(&mut self, client: &str, group: &str) -> Result<(), MapError> {
        check_name(group)?;
        self.names.insert(client.to_string(), group.to_string());
        self.version += 1;
        Ok(())
    }

    /// The proxy group a client id uses.
    pub fn group_of<'a>(&'a self, client: &str) -> Option<&'a str> {
        self.names.get(client).map(String::as_str)
    }

    /// How many partitions of `topic` the side sees.
    pub fn partition_count(&self, topic: &LogicalTopic, side: Side) -> u32 {
        match side {
            Side::Consume => topic.partitions.len() as u32,
            Side::Produce => topic.producer_partitions,
        }
    }

    /// Partition `i` of `topic` as a consumer sees it, or `None` past the
    /// partitions there are.
    pub fn seen<'a>(&'a self, topic: &'a LogicalTopic, i: i32) -> Option<Seen<'a>> {
        let p = topic.partitions.get(usize::try_from(i).ok()?)?;
        Some(match p.retired_at {
            Some(end) => Seen::Retired(end),
            None => Seen::Live(p),
        })
    }

    /// Whether `p` takes writes now: its cluster is active and reachable
    /// (`failing` names the clusters the proxy cannot reach).
    pub fn writable(&self, p: &PhysicalPartition, failing: &dyn Fn(&str) -> bool) -> bool {
        p.retired_at.is_none()
            && self
                .clusters
                .get(&p.cluster)
                .is_some_and(|c| c.state == ClusterState::Active)
            && !failing(&p.cluster)
    }

    /// Where records a producer sent to logical partition `i` are written:
    /// the partition itself if it takes writes; else (its cluster drained
    /// or unreachable) the same writable partition every time, chosen among
    /// those producers see (else among every writable one), so a key that
    /// was there stays together from then on.
    pub fn write_target<'a>(
        &'a self,
        topic: &'a LogicalTopic,
        i: i32,
        failing: &dyn Fn(&str) -> bool,
    ) -> Result<&'a PhysicalPartition, WriteRefused> {
        let seen = topic.producer_partitions as usize;
        let i = usize::try_from(i).map_err(|_| WriteRefused::NoPartition)?;
        if i >= seen {
            return Err(WriteRefused::NoPartition);
        }
        let p = topic.partitions.get(i).ok_or(WriteRefused::NoPartition)?;
        if self.writable(p, failing) {
            return Ok(p);
        }
        let mut candidates: Vec<&PhysicalPartition> = topic.partitions
            [..seen.min(topic.partitions.len())]
            .iter()
            .filter(|p| self.writable(p, failing))
            .collect();
        if candidates.is_empty() {
            candidates = topic
                .partitions
                .iter()
                .filter(|p| self.writable(p, failing))
                .collect();
        }
        if candidates.is_empty() {
            return Err(WriteRefused::NothingWritable);
        }
        Ok(candidates[i % candidates.len()])
    }
}

/// Appends `per_cluster` partitions of `topic` on `cluster`: the physical
/// topic has the logical topic's name, and its partitions number from 0.
fn expand(topic: &str, t: &mut LogicalTopic, cluster: &str) -> Vec<PhysicalPartition> {
    let gained: Vec<PhysicalPartition> = (0..t.partitions_per_cluster as i32)
        .map(|partition| PhysicalPartition {
            cluster: cluster.to_string(),
            topic: topic.to_string(),
            partition,
            retired_at: None,
        })
        .collect();
    t.partitions.extend(gained.iter().cloned());
    if t.key_policy == KeyPolicy::Spread {
        t.producer_partitions = t.partitions.len() as u32;
    }
    gained
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_clusters() -> FederationMap {
        let mut m = FederationMap::default();
        m.add_cluster("a", vec!["127.0.0.1:1".into()], 1).unwrap();
        m.add_cluster("b", vec!["127.0.0.1:2".into()], 2).unwrap();
        m
    }

    fn never(_: &str) -> bool {
        false
    }

    #[test]
    fn a_topic_spans_every_active_cluster_and_every_change_takes_a_version() {
        let mut m = two_clusters();
        assert_eq!(m.version, 2);
        let created = m.create_topic("t", 2, KeyPolicy::Keyed).unwrap();
        assert_eq!(m.version, 3);
        let placed: Vec<(&str, i32)> = created
            .iter()
            .map(|p| (p.cluster.as_str(), p.partition))
            .collect();
        assert_eq!(placed, [("a", 0), ("a", 1), ("b", 0), ("b", 1)]);
        assert_eq!(m.topics["t"].producer_partitions, 4);
        assert_eq!(
            m.create_topic("t", 2, KeyPolicy::Keyed),
            Err(MapError::TopicExists("t".into()))
        );
        assert!(m.create_topic("bad/name", 1, KeyPolicy::Keyed).is_err());
        assert!(m.create_topic("z", 0, KeyPolicy::Keyed).is_err());
        assert_eq!(m.version, 3, "a refused change takes no version");
    }

    #[test]
    fn an_expansion_appends_and_a_keyed_topic_keeps_its_producer_count_until_rebalanced() {
        let mut m = two_clusters();
        m.create_topic("keyed", 1, KeyPolicy::Keyed).unwrap();
        m.create_topic("spread", 1, KeyPolicy::Spread).unwrap();
        let before = m.topics["keyed"].partitions.clone();
        let gained = m.add_cluster("c", vec!["127.0.0.1:3".into()], 3).unwrap();
        assert_eq!(gained.len(), 2, "one partition per topic on c");
        let keyed = &m.topics["keyed"];
        assert_eq!(keyed.partitions[..2], before[..], "nothing renumbered");
        assert_eq!(keyed.partitions[2].cluster, "c");
        assert_eq!(m.partition_count(keyed, Side::Produce), 2);
        assert_eq!(m.partition_count(keyed, Side::Consume), 3);
        assert_eq!(m.partition_count(&m.topics["spread"], Side::Produce), 3);
        assert_eq!(m.rebalance_topic("keyed"), Ok(3));
        assert_eq!(m.partition_count(&m.topics["keyed"], Side::Produce), 3);
    }

    #[test]
    fn a_drained_cluster_takes_no_writes_and_is_read_until_removed() {
        let mut m = two_clusters();
        m.create_topic("t", 2, KeyPolicy::Spread).unwrap();
        m.drain_cluster("a").unwrap();
        assert!(matches!(m.drain_cluster("a"), Err(MapError::NotActive(..))));
        let t = &m.topics["t"];
        // Logical 0 and 1 are on a: their records go to b's partitions
        // (logical 2 and 3), each always to the same one.
        let target = |i| {
            m.write_target(t, i, &never)
                .map(|p| (p.cluster.clone(), p.partition))
        };
        assert_eq!(target(0), Ok(("b".into(), 0)));
        assert_eq!(target(1), Ok(("b".into(), 1)));
        assert_eq!(target(2), Ok(("b".into(), 0)));
        assert_eq!(target(4), Err(WriteRefused::NoPartition));
        assert!(matches!(m.seen(t, 0), Some(Seen::Live(p)) if p.cluster == "a"));
        assert_eq!(
            m.remove_cluster("b", |_| 0),
            Err(MapError::StillActive("b".into()))
        );
        m.remove_cluster("a", |p| 10 + p.partition as i64).unwrap();
        let t = &m.topics["t"];
        assert_eq!(m.seen(t, 1), Some(Seen::Retired(11)));
        assert_eq!(
            m.partition_count(t, Side::Consume),
            4,
            "counts never go down"
        );
        assert_eq!(m.seen(t, 4), None);
        // A cluster the proxy cannot reach: nothing writable is left.
        assert_eq!(
            m.write_target(t, 3, &|c| c == "b"),
            Err(WriteRefused::NothingWritable)
        );
        // New topics go to active clusters only.
        let created = m.create_topic("u", 1, KeyPolicy::Keyed).unwrap();
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].cluster, "b");
    }

    #[test]
    fn a_keyed_topic_writes_within_the_partitions_producers_see() {
        let mut m = two_clusters();
        m.create_topic("k", 1, KeyPolicy::Keyed).unwrap();
        m.add_cluster("c", vec!["127.0.0.1:3".into()], 3).unwrap();
        m.drain_cluster("a").unwrap();
        let t = &m.topics["k"];
        // Producers see a and b; a is drained: b takes a's keys, not c.
        assert_eq!(
            m.write_target(t, 0, &never).map(|p| p.cluster.as_str()),
            Ok("b")
        );
        // With b unreachable too, c (not yet seen by producers) takes them.
        assert_eq!(
            m.write_target(t, 0, &|c| c == "b")
                .map(|p| p.cluster.as_str()),
            Ok("c")
        );
    }

    #[test]
    fn the_map_round_trips_through_json() {
        let mut m = two_clusters();
        m.create_topic("t", 3, KeyPolicy::Keyed).unwrap();
        m.set_name("app-1", "edge").unwrap();
        let json = serde_json::to_vec(&m).unwrap();
        let back: FederationMap = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.group_of("app-1"), Some("edge"));
    }
}
