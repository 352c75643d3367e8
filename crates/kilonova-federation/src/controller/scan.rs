//! Scans of the physical clusters: reachability, each partition's log
//! start and end, and drained clusters removed once empty.

use super::*;

/// A physical partition's log as the last scan found it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogEnds {
    pub earliest: i64,
    pub latest: i64,
}

/// A cluster's health as the last scan found it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterHealth {
    pub reachable: bool,
    pub error: Option<String>,
    pub scanned_ms: u64,
}

impl Controller {
    pub(super) fn scanned_ends(&self, cluster: &str) -> HashMap<(String, i32), i64> {
        self.inner
            .ends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((c, _, _), _)| c == cluster)
            .map(|((_, t, p), e)| ((t.clone(), *p), e.latest))
            .collect()
    }
}

/// Scans the clusters: health, log ends, and drained clusters that are
/// empty now (removed, their partitions retired).
pub(super) async fn scan(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let every = strong.config.scan_interval;
        let c = Controller { inner: strong };
        c.scan_once().await;
        drop(c);
        tokio::time::sleep(every).await;
    }
}

impl Controller {
    /// One scan of every cluster not removed.
    pub async fn scan_once(&self) {
        let map = self.map();
        self.inner.metrics.scans.fetch_add(1, Ordering::Relaxed);
        for (name, cluster) in &map.clusters {
            if cluster.state == ClusterState::Removed {
                continue;
            }
            let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for t in map.topics.values() {
                for p in t
                    .partitions
                    .iter()
                    .filter(|p| &p.cluster == name && p.retired_at.is_none())
                {
                    by_topic.entry(&p.topic).or_default().push(p.partition);
                }
            }
            let mut error = None;
            let pool = &self.inner.pool;
            if let Err(e) = physical::leaders(pool, &cluster.bootstrap, &[]).await {
                error = Some(e.to_string());
            }
            for (topic, parts) in &by_topic {
                if error.is_some() {
                    break;
                }
                let first =
                    physical::offsets(pool, &cluster.bootstrap, topic, parts, EARLIEST).await;
                let last = physical::offsets(pool, &cluster.bootstrap, topic, parts, LATEST).await;
                match (first, last) {
                    (Ok(f), Ok(l)) => {
                        let mut ends = self.inner.ends.lock().unwrap_or_else(|p| p.into_inner());
                        for p in parts {
                            let latest = l.get(p).copied().unwrap_or(0);
                            let earliest = f.get(p).copied().unwrap_or(latest);
                            ends.insert(
                                (name.clone(), topic.to_string(), *p),
                                LogEnds { earliest, latest },
                            );
                        }
                    }
                    (Err(e), _) | (_, Err(e)) => error = Some(e.to_string()),
                }
            }
            if error.is_some() {
                self.inner
                    .metrics
                    .scan_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.inner
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    name.clone(),
                    ClusterHealth {
                        reachable: error.is_none(),
                        error,
                        scanned_ms: now_ms(),
                    },
                );
            if cluster.state == ClusterState::ReadOnly && self.is_leader() {
                self.remove_if_empty(name).await;
            }
        }
    }

    async fn remove_if_empty(&self, name: &str) {
        match self.remaining(name).await {
            Ok((remaining, _)) if remaining.is_empty() => match self
                .remove_cluster(name, false)
                .await
            {
                Ok(version) => {
                    self.inner
                        .metrics
                        .auto_removals
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(cluster = name, version, "drained cluster is empty: removed");
                }
                Err(e) => tracing::warn!(cluster = name, error = %e, "drained cluster not removed"),
            },
            Ok((remaining, _)) => {
                tracing::debug!(
                    cluster = name,
                    remaining = remaining.len(),
                    "drained cluster not empty yet"
                )
            }
            Err(e) => tracing::debug!(cluster = name, error = %e, "drained cluster not checked"),
        }
    }
}
