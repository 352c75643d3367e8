//! The load manager's metadata: each cluster broker's load report under
//! `/loadbalance/brokers/<cluster>/<id>` (an ephemeral key of its session,
//! rewritten every few seconds), and the cluster's load-manager leader
//! under `/loadbalance/leader/<cluster>` (an ephemeral key too: the first
//! broker to create it leads until its session ends, then any other takes
//! it), and the bundles the leader moved recently under
//! `/loadbalance/moves/<cluster>` (a new leader keeps their grace periods).
//!
//! A report's JSON follows Pulsar's `LocalBrokerData` (what its
//! `broker-stats/load-report` answers): the same field names for the same
//! figures, so tools reading Pulsar's reports read these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::resources::{from_json, to_json, Resources};
use crate::store::{Expect, SessionId};
use crate::MetadataError;

/// A resource's usage against its limit, in the resource's unit (CPU in
/// percent of one core, memory in MB, bandwidth in KB/s — Pulsar's units).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceUsage {
    pub usage: f64,
    pub limit: f64,
}

impl ResourceUsage {
    /// Usage in percent of the limit (0 without a limit).
    pub fn percent(&self) -> f64 {
        if self.limit > 0.0 {
            self.usage / self.limit * 100.0
        } else {
            0.0
        }
    }
}

/// One bundle's traffic (Pulsar's `NamespaceBundleStats`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BundleStats {
    pub msg_rate_in: f64,
    pub msg_throughput_in: f64,
    pub msg_rate_out: f64,
    pub msg_throughput_out: f64,
    pub consumer_count: u64,
    pub producer_count: u64,
    pub topics: u64,
}

/// A broker's load, as it last reported it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadReport {
    pub web_service_url: Option<String>,
    pub web_service_url_tls: Option<String>,
    pub pulsar_service_url: Option<String>,
    pub pulsar_service_url_tls: Option<String>,
    pub cpu: ResourceUsage,
    pub memory: ResourceUsage,
    pub bandwidth_in: ResourceUsage,
    pub bandwidth_out: ResourceUsage,
    /// Bytes per second.
    pub msg_throughput_in: f64,
    pub msg_throughput_out: f64,
    /// Messages per second.
    pub msg_rate_in: f64,
    pub msg_rate_out: f64,
    pub num_topics: u64,
    pub num_bundles: u64,
    pub num_consumers: u64,
    pub num_producers: u64,
    /// Client connections (Pulsar and Kafka protocols).
    pub num_connections: u64,
    /// The bundles owned, as `tenant/namespace/0x…_0x…`.
    pub bundles: Vec<String>,
    /// Each owned bundle's traffic, by the same names.
    pub last_stats: BTreeMap<String, BundleStats>,
    /// When the report was made (ms since the Unix epoch).
    pub last_update: u64,
    pub broker_version_string: String,
    /// Always `LocalBrokerData`, as Pulsar names the report's type.
    pub load_report_type: String,
}

impl BundleStats {
    /// Adds `o`'s rates and counts to these.
    pub fn add(&mut self, o: &BundleStats) {
        self.msg_rate_in += o.msg_rate_in;
        self.msg_throughput_in += o.msg_throughput_in;
        self.msg_rate_out += o.msg_rate_out;
        self.msg_throughput_out += o.msg_throughput_out;
        self.consumer_count += o.consumer_count;
        self.producer_count += o.producer_count;
        self.topics += o.topics;
    }
}

impl LoadReport {
    /// Sets the broker's totals: every topic's rates and counts, summed.
    pub fn set_totals(&mut self, t: &BundleStats) {
        (self.msg_rate_in, self.msg_rate_out) = (t.msg_rate_in, t.msg_rate_out);
        (self.msg_throughput_in, self.msg_throughput_out) =
            (t.msg_throughput_in, t.msg_throughput_out);
        (self.num_producers, self.num_consumers) = (t.producer_count, t.consumer_count);
        self.num_topics = t.topics;
    }
}

fn report_key(cluster: &str, id: &str) -> String {
    format!("/loadbalance/brokers/{cluster}/{id}")
}

fn moves_key(cluster: &str) -> String {
    format!("/loadbalance/moves/{cluster}")
}

fn leader_key(cluster: &str) -> String {
    format!("/loadbalance/leader/{cluster}")
}

/// Who leads the load manager.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Leader {
    /// The leading broker's id.
    pub broker_id: String,
    /// Its admin URL.
    pub service_url: String,
}

impl Resources {
    /// Writes broker `id`'s load report, bound to its `session`.
    pub async fn put_load_report(
        &self,
        cluster: &str,
        id: &str,
        report: &LoadReport,
        session: SessionId,
    ) -> Result<()> {
        self.store()
            .put(
                &report_key(cluster, id),
                to_json("a load report", report)?,
                Expect::Any,
                Some(session),
            )
            .await
            .map(drop)
    }

    /// Broker `id`'s last report (`None`: it reported nothing, or left).
    pub async fn load_report(&self, cluster: &str, id: &str) -> Result<Option<LoadReport>> {
        match self.store().get(&report_key(cluster, id)).await? {
            Some(s) => Ok(Some(from_json("a load report", &s.value)?)),
            None => Ok(None),
        }
    }

    /// Every reporting broker's last report, by id.
    pub async fn load_reports(&self, cluster: &str) -> Result<Vec<(String, LoadReport)>> {
        let mut out = Vec::new();
        for id in self
            .list(&format!("/loadbalance/brokers/{cluster}"))
            .await?
        {
            if let Some(r) = self.load_report(cluster, &id).await? {
                out.push((id, r));
            }
        }
        Ok(out)
    }

    /// Makes `leader` the load manager's leader if nobody leads, bound to
    /// `session`; answers who leads afterwards.
    pub async fn try_lead(
        &self,
        cluster: &str,
        leader: &Leader,
        session: SessionId,
    ) -> Result<Leader> {
        let value = to_json("the load manager's leader", leader)?;
        match self
            .store()
            .put(&leader_key(cluster), value, Expect::Absent, Some(session))
            .await
        {
            Ok(_) => Ok(leader.clone()),
            Err(MetadataError::BadVersion { .. }) => match self.leader(cluster).await? {
                Some(l) => Ok(l),
                // Gone between the two requests: the next round takes it.
                None => Ok(Leader::default()),
            },
            Err(e) => Err(e),
        }
    }

    /// Records the bundles the leader moved within the grace period, and
    /// when (ms since the Unix epoch), for the next leader.
    pub async fn put_recent_moves(
        &self,
        cluster: &str,
        moves: &BTreeMap<String, u64>,
    ) -> Result<()> {
        self.store()
            .put(
                &moves_key(cluster),
                to_json("the load manager's recent moves", moves)?,
                Expect::Any,
                None,
            )
            .await
            .map(drop)
    }

    /// The bundles the last leader recorded as recently moved.
    pub async fn recent_moves(&self, cluster: &str) -> Result<BTreeMap<String, u64>> {
        match self.store().get(&moves_key(cluster)).await? {
            Some(s) => from_json("the load manager's recent moves", &s.value),
            None => Ok(BTreeMap::new()),
        }
    }

    /// The load manager's leader (`None`: nobody leads now).
    pub async fn leader(&self, cluster: &str) -> Result<Option<Leader>> {
        match self.store().get(&leader_key(cluster)).await? {
            Some(s) => Ok(Some(from_json("the load manager's leader", &s.value)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::EmbeddedStore;

    #[tokio::test]
    async fn one_broker_leads_until_its_session_ends_then_another_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("m.redb")).unwrap());
        let r = Resources::new(store);
        let s1 = r
            .store()
            .open_session(Duration::from_secs(30))
            .await
            .unwrap();
        let s2 = r
            .store()
            .open_session(Duration::from_secs(30))
            .await
            .unwrap();
        let b1 = Leader {
            broker_id: "b1:8080".into(),
            service_url: "http://b1:8080".into(),
        };
        let b2 = Leader {
            broker_id: "b2:8080".into(),
            service_url: "http://b2:8080".into(),
        };
        assert_eq!(r.leader("c").await.unwrap(), None);
        assert_eq!(r.try_lead("c", &b1, s1).await.unwrap(), b1);
        assert_eq!(r.try_lead("c", &b2, s2).await.unwrap(), b1);
        r.store().close_session(s1).await.unwrap();
        assert_eq!(r.leader("c").await.unwrap(), None);
        assert_eq!(r.try_lead("c", &b2, s2).await.unwrap(), b2);
        assert_eq!(r.leader("c").await.unwrap(), Some(b2));
        // The moves a leader records outlive it.
        assert!(r.recent_moves("c").await.unwrap().is_empty());
        let moves = BTreeMap::from([("t/ns/0x00000000_0x80000000".to_owned(), 42u64)]);
        r.put_recent_moves("c", &moves).await.unwrap();
        r.store().close_session(s2).await.unwrap();
        assert_eq!(r.recent_moves("c").await.unwrap(), moves);
    }

    #[tokio::test]
    async fn reports_are_read_back_and_gone_with_their_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("m.redb")).unwrap());
        let r = Resources::new(store);
        let s = r
            .store()
            .open_session(Duration::from_secs(30))
            .await
            .unwrap();
        let mut report = LoadReport {
            cpu: ResourceUsage {
                usage: 50.0,
                limit: 200.0,
            },
            num_topics: 3,
            ..LoadReport::default()
        };
        report.last_stats.insert(
            "public/default/0x00000000_0x40000000".into(),
            BundleStats {
                msg_rate_in: 10.0,
                topics: 3,
                ..BundleStats::default()
            },
        );
        r.put_load_report("c", "b1:8080", &report, s).await.unwrap();
        assert_eq!(
            r.load_reports("c").await.unwrap(),
            vec![("b1:8080".to_owned(), report.clone())]
        );
        assert_eq!(report.cpu.percent(), 25.0);
        // Pulsar's field names.
        let json = serde_json::to_value(&report).unwrap();
        assert!(json.get("msgThroughputIn").is_some());
        assert!(json["lastStats"]["public/default/0x00000000_0x40000000"]
            .get("msgRateIn")
            .is_some());
        r.store().close_session(s).await.unwrap();
        assert!(r.load_reports("c").await.unwrap().is_empty());
    }
}
