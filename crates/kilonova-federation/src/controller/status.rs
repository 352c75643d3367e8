//! What `federation status` shows, and the controller's metrics.

use super::*;

impl Controller {
    /// Everything `federation status` shows.
    pub async fn status(&self) -> Status {
        let map = self.map();
        let health = self
            .inner
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let ends = self
            .inner
            .ends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let committed = self.all_offsets().await.unwrap_or_default();
        let topics = map
            .topics
            .iter()
            .map(|(name, t)| TopicStatus {
                name: name.clone(),
                key_policy: t.key_policy,
                producer_partitions: t.producer_partitions,
                partitions: t
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let e = ends.get(&(p.cluster.clone(), p.topic.clone(), p.partition));
                        PartitionStatus {
                            logical: i as i32,
                            cluster: p.cluster.clone(),
                            topic: p.topic.clone(),
                            partition: p.partition,
                            retired_at: p.retired_at,
                            earliest: e.map(|e| e.earliest),
                            latest: e.map(|e| e.latest).or(p.retired_at),
                        }
                    })
                    .collect(),
            })
            .collect::<Vec<_>>();
        let lag = committed
            .iter()
            .map(|(g, offsets)| {
                let lag: i64 = topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
                    .filter_map(|(t, p)| {
                        let end = p.latest?;
                        let at = offsets
                            .get(&(t.name.clone(), p.logical))
                            .copied()
                            .unwrap_or(0);
                        Some((end - at).max(0))
                    })
                    .sum();
                (g.clone(), lag)
            })
            .collect();
        Status {
            federation: self.inner.config.name.clone(),
            version: map.version,
            leader: self.inner.leader.borrow().clone(),
            clusters: map
                .clusters
                .iter()
                .map(|(n, c)| ClusterStatus {
                    name: n.clone(),
                    state: c.state,
                    bootstrap: c.bootstrap.clone(),
                    health: health.get(n).cloned().unwrap_or_default(),
                })
                .collect(),
            topics,
            proxies: self.proxy_list(),
            group_lag: lag,
            names: map.names.clone(),
        }
    }

    /// The Prometheus text of the controller's metrics.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let m = &self.inner.metrics;
        let map = self.map();
        let mut out = String::new();
        crate::metrics::render(
            &mut out,
            &[
                (
                    "kilonova_federation_map_version",
                    "The federation map's version.",
                    map.version,
                    Kind::Gauge,
                ),
                (
                    "kilonova_federation_proxies",
                    "Proxies that called within the expiry.",
                    self.proxy_list().len() as u64,
                    Kind::Gauge,
                ),
                (
                    "kilonova_federation_leader",
                    "1 if this instance leads.",
                    u64::from(self.is_leader()),
                    Kind::Gauge,
                ),
                (
                    "kilonova_federation_changes_total",
                    "Map changes stored.",
                    m.changes.load(Ordering::Relaxed),
                    Kind::Counter,
                ),
                (
                    "kilonova_federation_change_failures_total",
                    "Map changes refused.",
                    m.change_failures.load(Ordering::Relaxed),
                    Kind::Counter,
                ),
                (
                    "kilonova_federation_scans_total",
                    "Scans of the physical clusters.",
                    m.scans.load(Ordering::Relaxed),
                    Kind::Counter,
                ),
                (
                    "kilonova_federation_scan_errors_total",
                    "Clusters a scan could not read.",
                    m.scan_errors.load(Ordering::Relaxed),
                    Kind::Counter,
                ),
                (
                    "kilonova_federation_watch_calls_total",
                    "Proxies' watch calls.",
                    m.watch_calls.load(Ordering::Relaxed),
                    Kind::Counter,
                ),
                (
                    "kilonova_federation_auto_removals_total",
                    "Drained clusters removed once empty.",
                    m.auto_removals.load(Ordering::Relaxed),
                    Kind::Counter,
                ),
            ],
        );
        let health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP kilonova_federation_cluster_up 1 if the last scan reached the cluster.\n# TYPE kilonova_federation_cluster_up gauge"
        );
        for (n, h) in health.iter() {
            let _ = writeln!(
                out,
                "kilonova_federation_cluster_up{{cluster=\"{n}\"}} {}",
                u8::from(h.reachable)
            );
        }
        out
    }
}

/// `federation status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub federation: String,
    pub version: u64,
    pub leader: Option<String>,
    pub clusters: Vec<ClusterStatus>,
    pub topics: Vec<TopicStatus>,
    pub proxies: Vec<ProxyInfo>,
    /// Each group's lag, summed over the partitions it committed on.
    pub group_lag: BTreeMap<String, i64>,
    pub names: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub state: ClusterState,
    pub bootstrap: Vec<String>,
    pub health: ClusterHealth,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicStatus {
    pub name: String,
    pub key_policy: crate::map::KeyPolicy,
    pub producer_partitions: u32,
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub logical: i32,
    pub cluster: String,
    pub topic: String,
    pub partition: i32,
    pub retired_at: Option<i64>,
    pub earliest: Option<i64>,
    pub latest: Option<i64>,
}
