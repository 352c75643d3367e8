//! `kilonova federation proxy`: acts as a Kafka broker for clients and
//! forwards to the physical clusters the map names.
//!
//! A proxy listens on two ports: producers bootstrap from one, consumers
//! from the other, because the two sides see a topic differently — a keyed
//! topic's producers keep the partition count they had until it is
//! rebalanced, while its consumers see every partition — and a Kafka
//! client's Metadata request does not say which side it is on
//! ([`crate::map::Side`]). A drained or unreachable cluster's partitions
//! keep a leader for both: the proxy writes producers' batches for them to
//! another partition (`FederationMap::write_target`), consumers read them.
//!
//! The proxy holds the newest map the controller pushed (a long-polled
//! watch that doubles as its heartbeat), the live proxies (they are the
//! brokers Metadata names, partition leadership spread over them), the
//! leaders of the physical partitions it forwards to, and the consumer
//! groups it coordinates (the group state machine of `kilonova-kafka-groups`;
//! committed offsets live with the controller, per logical partition).

mod connection;
mod forward;
mod group_requests;
mod routing;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kilonova_kafka_groups::groups::{Coordinator, TICK};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{ControllerClient, ProxyHello, ProxyInfo};
use crate::map::{FederationMap, Side};
use crate::physical::{self, Leaders};
use crate::upstream::Pool;

/// How a proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Unique among the federation's proxies.
    pub id: String,
    /// The proxy group it belongs to (the name service's unit).
    pub group: String,
    /// Its node id in Metadata answers (unique among the proxies).
    pub node_id: i32,
    pub producer_listen: SocketAddr,
    pub consumer_listen: SocketAddr,
    /// The host clients are told to reach this proxy at.
    pub advertised_host: String,
    pub controllers: Vec<String>,
    /// Where /metrics and /status are served, if anywhere.
    pub http_listen: Option<SocketAddr>,
    /// Kafka's `group.initial.rebalance.delay.ms`.
    pub group_initial_rebalance_delay: Duration,
    /// The largest request accepted from a client.
    pub max_request_bytes: usize,
    /// The most client connections at once (past it, new ones are closed).
    pub max_connections: usize,
    /// With authentication on: what checks the tokens clients present as
    /// their SASL/PLAIN password.
    pub authenticator: Option<Arc<kilonova_auth::TokenAuthenticator>>,
    /// The bytes of requests and answers one connection holds at once, at
    /// most (a fetch reserves its answer's largest size); past it the
    /// connection stops reading. With `max_connections`, what bounds the
    /// proxy's memory; a client that never reads stalls only itself.
    pub max_connection_bytes: usize,
}

/// What the proxy currently serves from: the map and the live proxies.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub map: Arc<FederationMap>,
    pub proxies: Arc<Vec<ProxyInfo>>,
    pub proxies_version: u64,
}

#[derive(Default)]
pub(crate) struct ProxyMetrics {
    pub requests: AtomicU64,
    pub request_errors: AtomicU64,
    pub produced_batches: AtomicU64,
    pub fetches: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub connections: AtomicU64,
    pub refused_connections: AtomicU64,
    pub map_updates: AtomicU64,
}

/// Each partition's leader address (`None`: no leader).
type PartitionLeaders = Vec<Option<String>>;

pub(crate) struct Shared {
    pub config: ProxyConfig,
    pub view: watch::Sender<View>,
    pub pool: Pool,
    /// The leaders of physical partitions, by (cluster, topic).
    leaders: Mutex<HashMap<(String, String), PartitionLeaders>>,
    /// Clusters the proxy could not reach (until a probe reaches them).
    failing: Mutex<HashSet<String>>,
    pub groups: Arc<Coordinator>,
    pub controller: ControllerClient,
    pub metrics: ProxyMetrics,
    rebalances: Arc<AtomicU64>,
}

impl Shared {
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    pub fn is_failing(&self, cluster: &str) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(cluster)
    }

    /// A cluster could not be reached: producers' batches for its
    /// partitions are written elsewhere until a probe reaches it again.
    pub fn mark_failing(&self, cluster: &str, why: &dyn std::fmt::Display) {
        let newly = self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.to_string());
        self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
        if newly {
            tracing::warn!(cluster, error = %why, "physical cluster unreachable: producers routed elsewhere");
        }
    }

    /// The leader address of physical partition `(cluster, topic, partition)`.
    pub async fn leader(
        &self,
        map: &FederationMap,
        cluster: &str,
        topic: &str,
        partition: i32,
    ) -> Option<String> {
        let key = (cluster.to_string(), topic.to_string());
        let cached = self
            .leaders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .and_then(|l| l.get(partition as usize).cloned().flatten());
        if cached.is_some() {
            return cached;
        }
        let bootstrap = map.clusters.get(cluster)?.bootstrap.clone();
        let found: Leaders =
            match physical::leaders(&self.pool, &bootstrap, &[topic.to_string()]).await {
                Ok(l) => l,
                Err(e) => {
                    self.mark_failing(cluster, &e);
                    return None;
                }
            };
        let leaders = found.get(topic).cloned().unwrap_or_default();
        let leader = leaders.get(partition as usize).cloned().flatten();
        self.leaders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, leaders);
        leader
    }

    /// Forgets where `(cluster, topic)`'s leaders are (one moved).
    pub fn forget_leaders(&self, cluster: &str, topic: &str) {
        self.leaders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(cluster.to_string(), topic.to_string()));
    }

    /// This proxy as the controller lists it.
    fn hello(&self, view: &View) -> ProxyHello {
        ProxyHello {
            id: self.config.id.clone(),
            group: self.config.group.clone(),
            node_id: self.config.node_id,
            producer_addr: format!(
                "{}:{}",
                self.config.advertised_host,
                self.config.producer_listen.port()
            ),
            consumer_addr: format!(
                "{}:{}",
                self.config.advertised_host,
                self.config.consumer_listen.port()
            ),
            map_version: view.map.version,
            proxies_version: view.proxies_version,
        }
    }
}

/// A proxy with its ports bound.
pub struct Proxy {
    shared: Arc<Shared>,
    producers: TcpListener,
    consumers: TcpListener,
    http: Option<TcpListener>,
}

/// The ports a proxy listens on (with 0 asked, the system chose them).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProxyPorts {
    pub producer: u16,
    pub consumer: u16,
    pub http: Option<u16>,
}

impl Proxy {
    /// Binds the proxy's ports.
    pub async fn bind(mut config: ProxyConfig) -> std::io::Result<Proxy> {
        let producers = TcpListener::bind(config.producer_listen).await?;
        let consumers = TcpListener::bind(config.consumer_listen).await?;
        let http = match config.http_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        // Port 0: the ports the system chose are the ones advertised.
        config.producer_listen = producers.local_addr()?;
        config.consumer_listen = consumers.local_addr()?;
        if let Some(h) = &http {
            config.http_listen = Some(h.local_addr()?);
        }
        let rebalances = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            groups: Arc::new(Coordinator::new(
                config.group_initial_rebalance_delay,
                rebalances.clone(),
            )),
            controller: ControllerClient::new(config.controllers.clone()),
            config,
            view: watch::channel(View::default()).0,
            pool: Pool::default(),
            leaders: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashSet::new()),
            metrics: ProxyMetrics::default(),
            rebalances,
        });
        Ok(Proxy {
            shared,
            producers,
            consumers,
            http,
        })
    }

    pub fn ports(&self) -> ProxyPorts {
        let c = &self.shared.config;
        ProxyPorts {
            producer: c.producer_listen.port(),
            consumer: c.consumer_listen.port(),
            http: c.http_listen.map(|a| a.port()),
        }
    }

    /// Fetches the first map (waiting for a controller), then serves until
    /// the process ends.
    pub async fn run(self) {
        self.first_map().await;
        let Proxy {
            shared: s,
            producers,
            consumers,
            http,
        } = self;
        tokio::spawn(watch_map(s.clone()));
        tokio::spawn(probe_failing(s.clone()));
        tokio::spawn(tick_groups(Arc::downgrade(&s.groups)));
        if let Some(http) = http {
            tokio::spawn(serve_http(s.clone(), http));
        }
        tracing::info!(
            id = %s.config.id,
            producers = %s.config.producer_listen,
            consumers = %s.config.consumer_listen,
            version = s.view().map.version,
            "federation proxy serving"
        );
        let limit = Arc::new(tokio::sync::Semaphore::new(s.config.max_connections));
        let p = tokio::spawn(accept(s.clone(), producers, Side::Produce, limit.clone()));
        let c = tokio::spawn(accept(s.clone(), consumers, Side::Consume, limit));
        let _ = tokio::join!(p, c);
    }

    /// Waits until a controller answers with the map.
    async fn first_map(&self) {
        let mut attempt = 0u32;
        loop {
            let hello = self.shared.hello(&self.shared.view());
            match self.shared.controller.watch(&hello).await {
                Ok(a) => {
                    apply(&self.shared, a);
                    return;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(attempt, error = %e, "waiting for the federation controller");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

fn apply(shared: &Shared, a: crate::api::WatchAnswer) {
    let before = shared.view().map.version;
    let version = a.map.version;
    shared.view.send_replace(View {
        map: Arc::new(a.map),
        proxies: Arc::new(a.proxies),
        proxies_version: a.proxies_version,
    });
    if version != before {
        shared.metrics.map_updates.fetch_add(1, Ordering::Relaxed);
        tracing::info!(version, "serving a new federation map");
    }
}

/// Holds a watch call open with the controller, for ever.
async fn watch_map(shared: Arc<Shared>) {
    loop {
        let hello = shared.hello(&shared.view());
        match shared.controller.watch(&hello).await {
            Ok(a) => apply(&shared, a),
            Err(e) => {
                tracing::warn!(error = %e, "federation controller watch failed: serving the map held");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Tries the unreachable clusters again every second.
async fn probe_failing(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let failing: Vec<String> = shared
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let map = shared.view().map;
        for cluster in failing {
            let Some(c) = map.clusters.get(&cluster) else {
                continue;
            };
            if physical::leaders(&shared.pool, &c.bootstrap, &[])
                .await
                .is_ok()
            {
                shared
                    .failing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&cluster);
                shared
                    .leaders
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|(c, _), _| c != &cluster);
                tracing::info!(cluster, "physical cluster reachable again");
            }
        }
    }
}

async fn tick_groups(groups: std::sync::Weak<Coordinator>) {
    let mut every = tokio::time::interval(TICK);
    loop {
        every.tick().await;
        let Some(g) = groups.upgrade() else { return };
        g.tick(std::time::Instant::now());
    }
}

async fn accept(
    shared: Arc<Shared>,
    listener: TcpListener,
    side: Side,
    limit: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared
                .metrics
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "too many connections: closed");
            continue;
        };
        shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        tokio::spawn(async move {
            connection::serve(s, stream, peer, side).await;
            drop(permit);
        });
    }
}

async fn serve_http(shared: Arc<Shared>, listener: TcpListener) {
    use axum::routing::get;
    let metrics = {
        let s = shared.clone();
        move || {
            let s = s.clone();
            async move { metrics_text(&s) }
        }
    };
    let status = {
        let s = shared.clone();
        move || {
            let s = s.clone();
            async move {
                let v = s.view();
                axum::Json(serde_json::json!({
                    "id": s.config.id,
                    "map_version": v.map.version,
                    "proxies": v.proxies.len(),
                    "failing_clusters": s.failing.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect::<Vec<_>>(),
                }))
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the proxy's HTTP port stopped");
    }
}

fn metrics_text(s: &Shared) -> String {
    use crate::metrics::Kind;
    let m = &s.metrics;
    let v = s.view();
    let failing = s.failing.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    let mut out = String::new();
    crate::metrics::render(
        &mut out,
        &[
            (
                "kilonova_federation_proxy_map_version",
                "The map version served.",
                v.map.version,
                Kind::Gauge,
            ),
            (
                "kilonova_federation_proxy_requests_total",
                "Kafka requests handled.",
                m.requests.load(Ordering::Relaxed),
                Kind::Counter,
            ),
            (
                "kilonova_federation_proxy_request_errors_total",
                "Kafka requests refused or undecodable.",
                m.request_errors.load(Ordering::Relaxed),
                Kind::Counter,
            ),
            (
                "kilonova_federation_proxy_produced_batches_total",
                "Record batches forwarded to physical partitions.",
                m.produced_batches.load(Ordering::Relaxed),
                Kind::Counter,
            ),
            (
                "kilonova_federation_proxy_fetches_total",
                "Fetches forwarded.",
                m.fetches.load(Ordering::Relaxed),
                Kind::Counter,
            ),
            (
                "kilonova_federation_proxy_upstream_errors_total",
                "Physical clusters not reached.",
                m.upstream_errors.load(Ordering::Relaxed),
                Kind::Counter,
            ),
            (
                "kilonova_federation_proxy_connections_total",
                "Client connections accepted.",
                m.connections.load(Ordering::Relaxed),
                Kind::Counter,
            ),
            (
                "kilonova_federation_proxy_refused_connections_total",
                "Client connections refused at the limit.",
                m.refused_connections.load(Ordering::Relaxed),
                Kind::Counter,
            ),
            (
                "kilonova_federation_proxy_map_updates_total",
                "New map versions received.",
                m.map_updates.load(Ordering::Relaxed),
                Kind::Counter,
            ),
            (
                "kilonova_federation_proxy_failing_clusters",
                "Physical clusters not reachable now.",
                failing,
                Kind::Gauge,
            ),
            (
                "kilonova_federation_proxy_group_rebalances_total",
                "Rebalances of the groups this proxy coordinates.",
                s.rebalances.load(Ordering::Relaxed),
                Kind::Counter,
            ),
        ],
    );
    out
}
