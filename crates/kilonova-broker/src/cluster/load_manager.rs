//! The load manager (issue #29, docs/load-balancing.md): every broker
//! measures its load every `load_balancer_report_interval_ms` (CPU, memory,
//! message bandwidth against the configured NIC speed, rates, topics,
//! connections, each bundle's traffic) and, in a cluster, writes it to the
//! metadata store; one broker, elected through the store, leads: every
//! `load_balancer_shedding_interval_secs` it runs [`shedding`]'s decisions
//! over the reports and unloads each chosen bundle to its chosen broker.
//! Any broker takes the lead over when the leader's session ends.
//!
//! What is measured is this process: CPU time from `/proc/self/stat`,
//! resident memory against the machine's (or `load_balancer_memory_limit_mb`),
//! and the bytes its topics receive and send (not the NIC's counters, which
//! several brokers on one machine would share).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kilonova_metadata::bundles::{self, BundleRange};
use kilonova_metadata::load::{BundleStats, Leader, LoadReport, ResourceUsage};
use kilonova_metadata::names::TopicName;
use kilonova_metadata::NamespaceName;

use super::shedding::{self, BrokerReport, BundleLoad, Choices, Move, Shedder, ShedderConfig};
use super::BundleKey;
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::error::BrokerError;

/// A report older than this many report intervals is left out of a round
/// (its broker stopped reporting: it is leaving, or cut off).
const STALE_REPORTS: u32 = 3;

/// The load manager's state in a broker.
#[derive(Default)]
pub(crate) struct LoadManager {
    /// The last report made here.
    last: Mutex<Option<LoadReport>>,
    /// Process CPU seconds at the last report, and when.
    cpu: Mutex<Option<(Instant, f64)>>,
    /// The leader's memory between rounds (smoothed loads, recent moves).
    shedder: tokio::sync::Mutex<Option<(Shedder, Choices)>>,
    pub(crate) metrics: LoadMetrics,
}

/// The `pulsar_lb_*` series.
#[derive(Default)]
pub(crate) struct LoadMetrics {
    /// Usage in percent of the limit, as f64 bits: CPU, memory, bandwidth in, out.
    usage: [AtomicU64; 4],
    /// Bundles unloaded by shedding, and shedding rounds that unloaded from some broker.
    pub(crate) unloaded_bundles: AtomicU64,
    pub(crate) unloaded_brokers: AtomicU64,
    /// Shedding rounds run by the leader here.
    pub(crate) rounds: AtomicU64,
    /// Whether this broker leads (0 or 1).
    pub(crate) leader: AtomicU64,
    /// Bundles split here.
    splits: AtomicU64,
    /// Brokers above the overloaded threshold at the last round (leader).
    overloaded: AtomicU64,
}

impl LoadMetrics {
    /// CPU, memory, bandwidth in and out, in percent of their limits.
    pub(crate) fn usage(&self) -> [f64; 4] {
        [0, 1, 2, 3].map(|i| f64::from_bits(self.usage[i].load(Ordering::Relaxed)))
    }

    /// Appends the `pulsar_lb_*` series (Pulsar's names).
    pub(crate) fn render(&self, out: &mut String, cluster: &str) {
        use std::fmt::Write as _;
        let cluster = crate::metrics::escape(cluster);
        let usage = self.usage();
        let gauges = [
            (
                "pulsar_lb_cpu_usage",
                "CPU used by this broker, percent of its cores",
                usage[0],
            ),
            (
                "pulsar_lb_memory_usage",
                "Resident memory, percent of the limit",
                usage[1],
            ),
            (
                "pulsar_lb_bandwidth_in_usage",
                "Bytes received by topics, percent of the NIC speed",
                usage[2],
            ),
            (
                "pulsar_lb_bandwidth_out_usage",
                "Bytes sent by topics, percent of the NIC speed",
                usage[3],
            ),
            (
                "kilonova_lb_leader",
                "1 while this broker leads the load manager",
                self.leader.load(Ordering::Relaxed) as f64,
            ),
            (
                "kilonova_lb_overloaded_brokers",
                "Brokers above the overloaded threshold at the last shedding round (on the leader)",
                self.overloaded.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, v) in gauges {
            crate::metrics::header(out, name, "gauge", help);
            let _ = writeln!(out, "{name}{{cluster=\"{cluster}\"}} {v}");
        }
        let counters = [
            (
                "pulsar_lb_unload_bundle_total",
                "Bundles unloaded by shedding (this broker leading)",
                &self.unloaded_bundles,
            ),
            (
                "pulsar_lb_unload_broker_total",
                "Brokers shed from, summed over shedding rounds (this broker leading)",
                &self.unloaded_brokers,
            ),
            (
                "kilonova_lb_shedding_rounds_total",
                "Shedding rounds run (this broker leading)",
                &self.rounds,
            ),
            (
                "pulsar_lb_bundles_split_total",
                "Bundles split on this broker (the leader's decision or an admin's)",
                &self.splits,
            ),
        ];
        for (name, help, v) in counters {
            crate::metrics::header(out, name, "counter", help);
            let _ = writeln!(
                out,
                "{name}{{cluster=\"{cluster}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }

    pub(crate) fn count_split(&self) {
        self.splits.fetch_add(1, Ordering::Relaxed);
    }

    fn set_usage(&self, r: &LoadReport) {
        let values = [&r.cpu, &r.memory, &r.bandwidth_in, &r.bandwidth_out];
        for (slot, v) in self.usage.iter().zip(values) {
            slot.store(v.percent().to_bits(), Ordering::Relaxed);
        }
    }
}

/// The shedder's settings from the broker's.
pub(crate) fn shedder_config(c: &BrokerConfig) -> ShedderConfig {
    ShedderConfig {
        weights: shedding::Weights {
            cpu: c.load_balancer_cpu_resource_weight,
            memory: c.load_balancer_memory_resource_weight,
            bandwidth_in: c.load_balancer_bandwidth_in_resource_weight,
            bandwidth_out: c.load_balancer_bandwidth_out_resource_weight,
        },
        shedding_threshold_percent: c.load_balancer_shedding_threshold_percent,
        overloaded_threshold_percent: c.load_balancer_overloaded_threshold_percent,
        history: c.load_balancer_history_resource_percentage.clamp(0.0, 1.0),
        grace_period: Duration::from_secs(c.load_balancer_shedding_grace_period_secs),
        min_throughput_to_shed: c.load_balancer_min_unload_throughput_mb * 1024.0 * 1024.0,
        // A moved bundle shows in its receiver's reports a few reports after
        // it loads there.
        transit_timeout: Duration::from_millis(
            c.load_balancer_report_interval_ms.saturating_mul(3),
        )
        .max(Duration::from_secs(10)),
    }
}

/// A report as the shedder reads it.
pub(crate) fn usage_of(r: &LoadReport) -> shedding::Usage {
    shedding::Usage {
        cpu: r.cpu.percent(),
        memory: r.memory.percent(),
        bandwidth_in: r.bandwidth_in.percent(),
        bandwidth_out: r.bandwidth_out.percent(),
    }
}

fn shedder_report(id: &str, r: &LoadReport) -> BrokerReport {
    BrokerReport {
        broker: id.to_owned(),
        usage: usage_of(r),
        bundles: r
            .last_stats
            .iter()
            .map(|(name, s)| BundleLoad {
                name: name.clone(),
                throughput: s.msg_throughput_in + s.msg_throughput_out,
                msg_rate: s.msg_rate_in + s.msg_rate_out,
                topics: s.topics,
                sessions: s.consumer_count + s.producer_count,
            })
            .collect(),
    }
}

/// A bundle's name in reports: `tenant/namespace/0x…_0x…`.
pub(crate) fn bundle_name(key: &BundleKey) -> String {
    format!("{}/{}", key.0, key.1)
}

/// The bundle a report's name stands for.
pub(crate) fn parse_bundle_name(name: &str) -> Result<BundleKey, BrokerError> {
    let bad = || BrokerError::BadRequest(format!("{name:?} is not tenant/namespace/0x…_0x…"));
    let (ns, range) = name.rsplit_once('/').ok_or_else(bad)?;
    let ns = NamespaceName::parse(ns).map_err(|_| bad())?;
    let range: BundleRange = range.parse().map_err(|_| bad())?;
    Ok((ns, range))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Broker {
    /// Measures this broker's load now (CPU over the time since the last
    /// measure) and keeps it as the last report.
    pub(crate) fn measure_load(&self) -> LoadReport {
        let c = self.config();
        let lm = &self.inner_load();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let now = Instant::now();
        let cpu_seconds = crate::process_metrics::cpu_seconds();
        let cpu = {
            let mut last = lm.cpu.lock().unwrap_or_else(|p| p.into_inner());
            let used = match (*last, cpu_seconds) {
                (Some((at, before)), Some(s)) => {
                    let wall = now.duration_since(at).as_secs_f64();
                    if wall > 0.0 {
                        (s - before).max(0.0) / wall * 100.0
                    } else {
                        0.0
                    }
                }
                _ => 0.0,
            };
            if let Some(s) = cpu_seconds {
                *last = Some((now, s));
            }
            used
        };
        let memory_limit_mb = match c.load_balancer_memory_limit_mb {
            0 => crate::process_metrics::total_memory_bytes().unwrap_or(0) as f64 / 1048576.0,
            mb => mb as f64,
        };
        let memory_mb = crate::process_metrics::resident_bytes().unwrap_or(0) as f64 / 1048576.0;
        // Kilobytes per second, as Pulsar counts bandwidth.
        let nic_kb = c.load_balancer_nic_speed_gbps * 1e9 / 8.0 / 1024.0;

        let held: Vec<BundleKey> = match self.membership() {
            Some(m) => m.held().into_iter().map(|(k, _)| k).collect(),
            None => Vec::new(),
        };
        let mut report = LoadReport {
            cpu: ResourceUsage {
                usage: cpu,
                limit: 100.0 * cores,
            },
            memory: ResourceUsage {
                usage: memory_mb,
                limit: memory_limit_mb,
            },
            num_bundles: held.len() as u64,
            bundles: held.iter().map(bundle_name).collect(),
            last_update: now_ms(),
            broker_version_string: env!("CARGO_PKG_VERSION").to_owned(),
            load_report_type: "LocalBrokerData".into(),
            num_connections: self.metrics().open_connections(),
            ..LoadReport::default()
        };
        let urls = self.service_urls();
        report.web_service_url = urls.http.clone();
        report.web_service_url_tls = urls.https.clone();
        report.pulsar_service_url = urls.plain.clone();
        report.pulsar_service_url_tls = urls.tls.clone();
        for name in &report.bundles {
            report
                .last_stats
                .insert(name.clone(), BundleStats::default());
        }
        let mut totals = BundleStats::default();
        for (name, m) in self.metrics().topic_snapshot() {
            let rates = m.rates();
            let topic_stats = BundleStats {
                msg_rate_in: rates.msg_in,
                msg_throughput_in: rates.bytes_in,
                msg_rate_out: rates.msg_out,
                msg_throughput_out: rates.bytes_out,
                consumer_count: m.consumers.load(Ordering::Relaxed),
                producer_count: m.producers.load(Ordering::Relaxed),
                topics: 1,
            };
            totals.add(&topic_stats);
            let Ok(topic) = TopicName::parse(&name) else {
                continue;
            };
            let ns = topic.namespace();
            let hash = bundles::topic_hash(&topic);
            let Some(key) = held.iter().find(|(n, r)| *n == ns && r.contains(hash)) else {
                continue;
            };
            if let Some(s) = report.last_stats.get_mut(&bundle_name(key)) {
                s.add(&topic_stats);
            }
        }
        report.set_totals(&totals);
        report.bandwidth_in = ResourceUsage {
            usage: report.msg_throughput_in / 1024.0,
            limit: nic_kb,
        };
        report.bandwidth_out = ResourceUsage {
            usage: report.msg_throughput_out / 1024.0,
            limit: nic_kb,
        };
        lm.metrics.set_usage(&report);
        *lm.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        report
    }

    /// The last load report made here (measured now if none was yet).
    pub fn load_report(&self) -> LoadReport {
        let last = self
            .inner_load()
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        last.unwrap_or_else(|| self.measure_load())
    }

    /// Broker `id`'s last stored report (cluster brokers).
    pub async fn stored_load_report(&self, id: &str) -> Result<Option<LoadReport>, BrokerError> {
        let Some(m) = self.membership() else {
            return Ok(None);
        };
        Ok(self.resources().load_report(&m.cluster, id).await?)
    }

    /// Who leads the load manager: outside a cluster, the broker itself
    /// (as it registered in its metadata: `host:port`).
    pub async fn load_manager_leader(&self) -> Result<Option<Leader>, BrokerError> {
        let Some(m) = self.membership() else {
            let mut ids = self
                .resources()
                .list_brokers(&self.config().cluster_name)
                .await?;
            ids.sort();
            return Ok(ids.into_iter().next().map(|id| Leader {
                service_url: format!("http://{id}"),
                broker_id: id,
            }));
        };
        Ok(self.resources().leader(&m.cluster).await?)
    }

    fn own_leader_record(&self, id: &str) -> Leader {
        let urls = self.service_urls();
        Leader {
            broker_id: id.to_owned(),
            service_url: urls.http.clone().or(urls.https.clone()).unwrap_or_default(),
        }
    }

    /// One round of the load manager here: measure and report; take the
    /// lead if nobody has it; as the leader, shed when `shed` (the
    /// interval came round). Returns the moves made.
    pub(crate) async fn load_manager_round(&self, shed: bool) -> Vec<Move> {
        let report = self.measure_load();
        let Some(m) = self.membership() else {
            return Vec::new();
        };
        let session = m.session();
        if let Err(e) = self
            .resources()
            .put_load_report(&m.cluster, &m.id, &report, session)
            .await
        {
            tracing::debug!(error = %e, "writing the load report failed");
            return Vec::new();
        }
        let me = self.own_leader_record(&m.id);
        let leads = match self.resources().try_lead(&m.cluster, &me, session).await {
            Ok(l) => l.broker_id == m.id,
            Err(e) => {
                tracing::debug!(error = %e, "reading the load manager's leader failed");
                false
            }
        };
        let lm = self.inner_load();
        let was = lm.metrics.leader.swap(u64::from(leads), Ordering::Relaxed) == 1;
        if leads != was {
            tracing::info!(leader = leads, "load manager leadership changed");
            // A new leader starts from fresh loads; its first round reads
            // its predecessor's recent moves from the store.
            *lm.shedder.lock().await = None;
        }
        if !leads || !shed {
            return Vec::new();
        }
        if self.config().load_balancer_auto_bundle_split_enabled {
            if let Err(e) = self.split_once().await {
                tracing::warn!(error = %e, "a bundle-split round failed");
            }
        }
        if !self.config().load_balancer_shedding_enabled {
            return Vec::new();
        }
        match self.shed_once().await {
            Ok(moves) => moves,
            Err(e) => {
                tracing::warn!(error = %e, "a shedding round failed");
                Vec::new()
            }
        }
    }

    /// Runs one shedding round now over the brokers' stored reports, as the
    /// leader, and makes its moves. Returns them.
    pub async fn shed_once(&self) -> Result<Vec<Move>, BrokerError> {
        let Some(m) = self.membership() else {
            return Err(BrokerError::NotAllowed(
                "a standalone broker has nothing to shed to".into(),
            ));
        };
        let c = self.config();
        let now = now_ms();
        let reports: Vec<BrokerReport> = self
            .fresh_reports(&m.cluster)
            .await?
            .iter()
            .map(|(id, r)| shedder_report(id, r))
            .collect();
        let lm = self.inner_load();
        let config = shedder_config(c);
        let at = Duration::from_millis(now);
        let moves = {
            let mut state = lm.shedder.lock().await;
            if state.is_none() {
                // A new leader keeps its predecessor's grace periods.
                let remembered = self.resources().recent_moves(&m.cluster).await?;
                let shedder = Shedder::remembering(
                    remembered
                        .into_iter()
                        .map(|(b, ms)| (b, Duration::from_millis(ms))),
                );
                let choices = Choices::new(crc32c::crc32c(m.id.as_bytes()) as u64 ^ now);
                *state = Some((shedder, choices));
            }
            let Some((shedder, choices)) = state.as_mut() else {
                return Ok(Vec::new());
            };
            let moves = shedder.round(&reports, &config, at, choices);
            if !moves.is_empty() {
                // What the round decided on: each broker's load as reported,
                // and as the shedder expects it once the moves land.
                let loads: Vec<String> = reports
                    .iter()
                    .map(|r| {
                        let expected = shedder.smoothed(&r.broker).unwrap_or_default();
                        let reported = r.usage.load(&config.weights);
                        format!("{} {reported:.1} -> {expected:.1}", r.broker)
                    })
                    .collect();
                tracing::info!(loads = ?loads, "shedding: a round with moves");
                let recent = shedder
                    .recent_moves(at, config.grace_period)
                    .into_iter()
                    .map(|(b, t)| (b, t.as_millis() as u64))
                    .collect();
                if let Err(e) = self.resources().put_recent_moves(&m.cluster, &recent).await {
                    tracing::warn!(error = %e, "recording the moves for the next leader failed");
                }
            }
            let overloaded = shedder.overloaded(&config);
            if !overloaded.is_empty() {
                tracing::warn!(brokers = ?overloaded, threshold = config.overloaded_threshold_percent, "brokers overloaded");
            }
            lm.metrics
                .overloaded
                .store(overloaded.len() as u64, Ordering::Relaxed);
            moves
        };
        lm.metrics.rounds.fetch_add(1, Ordering::Relaxed);
        let mut from: Vec<&str> = moves.iter().map(|mv| mv.from.as_str()).collect();
        from.dedup();
        if !moves.is_empty() {
            lm.metrics
                .unloaded_brokers
                .fetch_add(from.len() as u64, Ordering::Relaxed);
        }
        for mv in &moves {
            tracing::info!(bundle = %mv.bundle, from = %mv.from, to = %mv.to, "shedding: moving a bundle");
            match self.move_bundle(mv).await {
                Ok(()) => {
                    lm.metrics.unloaded_bundles.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(bundle = %mv.bundle, from = %mv.from, to = %mv.to, error = %e, "shedding: moving a bundle failed")
                }
            }
        }
        Ok(moves)
    }

    /// Runs a shedding round on the leader: here if this broker leads,
    /// else through the leader's admin API (as the caller,
    /// `authorization`). Answers the moves as JSON: `[{"bundle", "from", "to"}]`.
    pub async fn shed_on_leader(
        &self,
        authorization: Option<&str>,
    ) -> Result<serde_json::Value, BrokerError> {
        let Some(m) = self.membership() else {
            return Err(BrokerError::NotAllowed(
                "a standalone broker has nothing to shed to".into(),
            ));
        };
        let leader = self.resources().leader(&m.cluster).await?;
        match leader {
            Some(l) if l.broker_id != m.id => {
                let url = format!(
                    "{}/admin/v2/brokers/shed",
                    l.service_url.trim_end_matches('/')
                );
                let body = self
                    .forward_admin("POST", &url, authorization, None)
                    .await?;
                serde_json::from_slice(&body).map_err(|e| {
                    BrokerError::Unavailable(format!("the leader's answer to a shed: {e}"))
                })
            }
            Some(_) => {
                let moves = self.shed_once().await?;
                Ok(serde_json::Value::Array(
                    moves
                        .iter()
                        .map(|mv| {
                            serde_json::json!({"bundle": mv.bundle, "from": mv.from, "to": mv.to})
                        })
                        .collect(),
                ))
            }
            None => Err(BrokerError::Unavailable(
                "no broker leads the load manager yet: try again in a few seconds".into(),
            )),
        }
    }

    /// Unloads `mv.bundle` on its owner `mv.from` (here, or through its
    /// admin API as this broker) with `mv.to` as the next owner.
    async fn move_bundle(&self, mv: &Move) -> Result<(), BrokerError> {
        let (ns, range) = parse_bundle_name(&mv.bundle)?;
        let authorization = self.broker_authorization();
        self.unload_bundle_anywhere(&ns, range, authorization.as_deref(), Some(&mv.to))
            .await
            .map(drop)
    }

    /// The Authorization header this broker's own admin requests to other
    /// brokers carry (its `broker_client_auth_token`).
    fn broker_authorization(&self) -> Option<String> {
        self.security()
            .broker_client_token()
            .map(|t| format!("Bearer {t}"))
    }

    /// The reports of the cluster's brokers that are no older than
    /// [`STALE_REPORTS`] intervals, by broker id.
    async fn fresh_reports(&self, cluster: &str) -> Result<Vec<(String, LoadReport)>, BrokerError> {
        let stale_ms =
            u64::from(STALE_REPORTS) * self.config().load_balancer_report_interval_ms.max(1);
        let now = now_ms();
        let mut reports = self.resources().load_reports(cluster).await?;
        reports.retain(|(id, r)| {
            let age_ms = now.saturating_sub(r.last_update);
            let fresh = age_ms <= stale_ms;
            if !fresh {
                tracing::debug!(broker = %id, age_ms, stale_ms, "a stale load report left out of the round");
            }
            fresh
        });
        Ok(reports)
    }

    /// The leader's split round: each bundle past a threshold
    /// ([`shedding::split_reason`]) split on its owner, at most
    /// `load_balancer_max_bundles_to_split_per_round`. Returns how many.
    pub(crate) async fn split_once(&self) -> Result<usize, BrokerError> {
        let Some(m) = self.membership() else {
            return Ok(0);
        };
        let c = self.config();
        let limits = shedding::SplitConfig {
            max_topics: c.load_balancer_namespace_bundle_max_topics,
            max_sessions: c.load_balancer_namespace_bundle_max_sessions,
            max_msg_rate: c.load_balancer_namespace_bundle_max_msg_rate,
            max_bandwidth: c.load_balancer_namespace_bundle_max_bandwidth_mbytes * 1024.0 * 1024.0,
            max_bundles: c.load_balancer_namespace_maximum_bundles,
        };
        let authorization = self.broker_authorization();
        let mut bundle_counts: BTreeMap<NamespaceName, usize> = BTreeMap::new();
        let mut split = 0;
        for (id, report) in self.fresh_reports(&m.cluster).await? {
            for load in shedder_report(&id, &report).bundles {
                if split >= c.load_balancer_max_bundles_to_split_per_round {
                    return Ok(split);
                }
                let (ns, range) = parse_bundle_name(&load.name)?;
                let count = match bundle_counts.get(&ns) {
                    Some(n) => *n,
                    None => {
                        let policies = self.namespace_policies(&ns).await?;
                        bundles::ranges(&policies.bundles)?.len()
                    }
                };
                bundle_counts.insert(ns.clone(), count);
                let Some(reason) = shedding::split_reason(&load, count, &limits) else {
                    continue;
                };
                tracing::info!(bundle = %load.name, broker = %id, ?reason, "splitting a bundle");
                match self
                    .split_bundle_anywhere(&ns, range, false, authorization.as_deref())
                    .await
                {
                    Ok(()) => {
                        split += 1;
                        bundle_counts.insert(ns, count + 1);
                    }
                    Err(e) => {
                        tracing::warn!(bundle = %load.name, error = %e, "splitting a bundle failed")
                    }
                }
            }
        }
        Ok(split)
    }
}

/// Runs the load manager until the broker shuts down: a round every
/// `load_balancer_report_interval_ms`, shedding every
/// `load_balancer_shedding_interval_secs`.
pub async fn run(broker: Broker) {
    let c = broker.config();
    if !c.load_balancer_enabled {
        return;
    }
    let every = Duration::from_millis(c.load_balancer_report_interval_ms.max(100));
    let shed_every = Duration::from_secs(c.load_balancer_shedding_interval_secs.max(1));
    let mut last_shed = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        if broker.is_shutting_down() {
            return;
        }
        let shed = last_shed.elapsed() >= shed_every;
        if shed {
            last_shed = Instant::now();
        }
        broker.load_manager_round(shed).await;
    }
}

/// The last reports' loads and topics, by broker id, as placement reads them.
pub(crate) type Loads = BTreeMap<String, (f64, u64)>;

impl Broker {
    /// Each reporting broker's load (the largest weighted usage) and topics.
    pub(crate) async fn broker_loads(&self, cluster: &str) -> Result<Loads, BrokerError> {
        let weights = shedder_config(self.config()).weights;
        Ok(self
            .fresh_reports(cluster)
            .await?
            .into_iter()
            .map(|(id, r)| (id, (usage_of(&r).load(&weights), r.num_topics)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_names_read_back() {
        let key = (
            NamespaceName::parse("acme/orders").unwrap(),
            BundleRange {
                lower: 0x4000_0000,
                upper: 0x8000_0000,
            },
        );
        let name = bundle_name(&key);
        assert_eq!(name, "acme/orders/0x40000000_0x80000000");
        assert_eq!(parse_bundle_name(&name).unwrap(), key);
        assert!(parse_bundle_name("acme/0x40000000_0x80000000").is_err());
        assert!(parse_bundle_name("acme/orders/0x80000000_0x40000000").is_err());
    }

    #[test]
    fn the_shedder_reads_a_report_by_percent_and_bundle_traffic() {
        let mut r = LoadReport {
            cpu: ResourceUsage {
                usage: 150.0,
                limit: 200.0,
            },
            bandwidth_in: ResourceUsage {
                usage: 10.0,
                limit: 100.0,
            },
            ..LoadReport::default()
        };
        r.last_stats.insert(
            "a/b/0x00000000_0xffffffff".into(),
            BundleStats {
                msg_throughput_in: 100.0,
                msg_throughput_out: 50.0,
                msg_rate_in: 3.0,
                producer_count: 2,
                consumer_count: 1,
                topics: 4,
                ..BundleStats::default()
            },
        );
        let s = shedder_report("b1", &r);
        assert_eq!(s.usage.cpu, 75.0);
        assert_eq!(s.usage.bandwidth_in, 10.0);
        assert_eq!(s.usage.load(&shedding::Weights::default()), 75.0);
        assert_eq!(s.bundles[0].throughput, 150.0);
        assert_eq!(s.bundles[0].sessions, 3);
        assert_eq!(s.bundles[0].topics, 4);
    }
}
