//! `kilonova federation controller`: holds the federation's map in a
//! metadata store (embedded or etcd), changes it on the operator's word
//! (every change a compare-and-set taking the next version), pushes each
//! version to the proxies (their watch calls are long polls), lists the
//! proxies by heartbeat, keeps consumer groups' committed offsets (per
//! logical partition), and scans the physical clusters: health, log ends,
//! and whether a drained cluster is empty yet (then it is removed).
//!
//! Several instances may share an etcd: one leads (a session key), the
//! others answer reads and offsets and redirect changes and proxies' watch
//! calls to the leader.
//!
//! Here: the map, its changes, leadership and the proxies' watch calls;
//! `offsets` (groups' committed offsets), `scan` (the clusters scanned,
//! drained ones removed), `status` (`federation status`, metrics), `http`
//! (the routes and handlers).

mod http;
mod offsets;
mod scan;
mod status;

pub use scan::{ClusterHealth, LogEnds};
pub use status::{ClusterStatus, PartitionStatus, Status, TopicStatus};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use kilonova_metadata::{Expect, MetadataStore, Watched};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::api::{
    AddCluster, Changed, CreateTopic, ErrorBody, NameAnswer, OffsetEntry, ProxyHello, ProxyInfo,
    SetName, WatchAnswer, WATCH_HOLD,
};
use crate::map::{check_name, ClusterState, FederationMap, MapError, PhysicalPartition};
use crate::metrics::Kind;
use crate::physical::{self, PhysicalError, EARLIEST, LATEST};
use crate::upstream::Pool;

/// The most proxies listed: past it a new one is refused (503), so callers
/// inventing proxy ids cannot grow the controller without bound.
const MAX_PROXIES: usize = 4096;
/// A proxy that has not called for this long is gone.
const PROXY_EXPIRY: Duration = Duration::from_secs(15);
/// The leader key's session lives this long past its last keep-alive.
const LEADER_TTL: Duration = Duration::from_secs(10);

/// How a controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The federation's name: its keys live under `/federation/<name>/`.
    pub name: String,
    /// The URL other instances and the proxies reach this one at.
    pub advertised_url: String,
    /// How often the physical clusters are scanned.
    pub scan_interval: Duration,
}

/// Why a controller request failed; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("physical cluster {cluster}: {source}")]
    Physical {
        cluster: String,
        source: PhysicalError,
    },
    #[error(transparent)]
    Store(#[from] kilonova_metadata::MetadataError),
    #[error("cluster {cluster} still holds data ({remaining} partitions not consumed or expired): use --force to remove it anyway")]
    NotEmpty { cluster: String, remaining: usize },
    #[error("this instance does not lead and knows no leader yet")]
    NoLeader,
    #[error("{MAX_PROXIES} proxies are listed already")]
    TooManyProxies,
    #[error("{0}")]
    Invalid(String),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct ProxyEntry {
    hello: ProxyHello,
    seen: Instant,
}

#[derive(Default)]
struct Metrics {
    changes: AtomicU64,
    change_failures: AtomicU64,
    scans: AtomicU64,
    scan_errors: AtomicU64,
    watch_calls: AtomicU64,
    auto_removals: AtomicU64,
}

struct Inner {
    config: ControllerConfig,
    store: Arc<dyn MetadataStore>,
    map: watch::Sender<Arc<FederationMap>>,
    /// The map key's store version this instance last read or wrote.
    map_key_version: Mutex<Option<u64>>,
    /// One change at a time.
    changing: tokio::sync::Mutex<()>,
    /// The leader's URL, once known (this instance's own when it leads).
    leader: watch::Sender<Option<String>>,
    proxies: Mutex<BTreeMap<String, ProxyEntry>>,
    proxies_version: watch::Sender<u64>,
    pool: Pool,
    health: Mutex<BTreeMap<String, ClusterHealth>>,
    ends: Mutex<HashMap<(String, String, i32), LogEnds>>,
    metrics: Metrics,
}

/// A running controller (its tasks stop when it is dropped... with the
/// runtime: they hold only weak references where they loop).
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

impl Controller {
    fn key(&self, rest: &str) -> String {
        format!("/federation/{}/{rest}", self.inner.config.name)
    }

    /// Loads the map and starts leading (or following), scanning and
    /// expiring proxies.
    pub async fn start(
        config: ControllerConfig,
        store: Arc<dyn MetadataStore>,
    ) -> Result<Controller, ControllerError> {
        check_name(&config.name)?;
        let inner = Arc::new(Inner {
            config,
            store,
            map: watch::channel(Arc::new(FederationMap::default())).0,
            map_key_version: Mutex::new(None),
            changing: tokio::sync::Mutex::new(()),
            leader: watch::channel(None).0,
            proxies: Mutex::new(BTreeMap::new()),
            proxies_version: watch::channel(1).0,
            pool: Pool::default(),
            health: Mutex::new(BTreeMap::new()),
            ends: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
        });
        let c = Controller { inner };
        c.reload().await?;
        tokio::spawn(follow_map(Arc::downgrade(&c.inner), c.key("map")));
        tokio::spawn(lead(Arc::downgrade(&c.inner), c.key("leader")));
        tokio::spawn(expire_proxies(Arc::downgrade(&c.inner)));
        tokio::spawn(scan::scan(Arc::downgrade(&c.inner)));
        Ok(c)
    }

    /// Reads the map from the store.
    async fn reload(&self) -> Result<(), ControllerError> {
        reload(&self.inner, &self.key("map")).await
    }

    pub fn map(&self) -> Arc<FederationMap> {
        self.inner.map.borrow().clone()
    }

    fn is_leader(&self) -> bool {
        self.inner.leader.borrow().as_deref() == Some(&self.inner.config.advertised_url)
    }

    /// Where to send a change this instance does not make (it follows).
    fn leader_redirect(&self, uri: &Uri) -> Result<Option<Response>, ControllerError> {
        if self.is_leader() {
            return Ok(None);
        }
        match self.inner.leader.borrow().as_deref() {
            Some(leader) => {
                let to = format!(
                    "{leader}{}",
                    uri.path_and_query().map_or("", |p| p.as_str())
                );
                Ok(Some(Redirect::temporary(&to).into_response()))
            }
            None => Err(ControllerError::NoLeader),
        }
    }

    /// Applies `change` to the newest map and stores it (compare-and-set on
    /// the map key): the new version goes out to the proxies.
    async fn change<F>(&self, change: F) -> Result<u64, ControllerError>
    where
        F: FnOnce(&mut FederationMap) -> Result<(), ControllerError>,
    {
        let _one = self.inner.changing.lock().await;
        // Re-read: another instance may have led a moment ago.
        self.reload().await?;
        let mut next = (*self.map()).clone();
        let result = change(&mut next);
        if let Err(e) = result {
            self.inner
                .metrics
                .change_failures
                .fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let expect = match *self
            .inner
            .map_key_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(v) => Expect::Version(v),
            None => Expect::Absent,
        };
        let value =
            serde_json::to_vec(&next).map_err(|e| ControllerError::Invalid(e.to_string()))?;
        let stored = self
            .inner
            .store
            .put(&self.key("map"), Bytes::from(value), expect, None)
            .await?;
        *self
            .inner
            .map_key_version
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(stored);
        let version = next.version;
        self.inner.map.send_replace(Arc::new(next));
        self.inner.metrics.changes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(version, "federation map changed");
        Ok(version)
    }

    /// Creates `parts` on their clusters (before the map lists them).
    async fn create_physical(
        &self,
        map: &FederationMap,
        parts: &[PhysicalPartition],
        per_topic: &HashMap<String, u32>,
    ) -> Result<(), ControllerError> {
        let mut done: Vec<(&str, &str)> = Vec::new();
        for p in parts {
            if done.contains(&(p.cluster.as_str(), p.topic.as_str())) {
                continue;
            }
            done.push((&p.cluster, &p.topic));
            let bootstrap = map
                .clusters
                .get(&p.cluster)
                .map(|c| c.bootstrap.clone())
                .unwrap_or_default();
            let count = per_topic.get(&p.topic).copied().unwrap_or(1);
            physical::create_topic(&self.inner.pool, &bootstrap, &p.topic, count)
                .await
                .map_err(|source| ControllerError::Physical {
                    cluster: p.cluster.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    pub async fn add_cluster(&self, a: AddCluster) -> Result<u64, ControllerError> {
        if a.bootstrap.is_empty() {
            return Err(ControllerError::Invalid(
                "a cluster needs a bootstrap address".into(),
            ));
        }
        // It must answer before anything is changed.
        physical::leaders(&self.inner.pool, &a.bootstrap, &[])
            .await
            .map_err(|source| ControllerError::Physical {
                cluster: a.name.clone(),
                source,
            })?;
        let mut trial = (*self.map()).clone();
        let parts = trial.add_cluster(&a.name, a.bootstrap.clone(), now_ms())?;
        let per_topic = trial
            .topics
            .iter()
            .map(|(n, t)| (n.clone(), t.partitions_per_cluster))
            .collect();
        self.create_physical(&trial, &parts, &per_topic).await?;
        let started = Instant::now();
        let version = self
            .change(|m| {
                m.add_cluster(&a.name, a.bootstrap, now_ms())?;
                Ok(())
            })
            .await?;
        tracing::info!(cluster = %a.name, version, took = ?started.elapsed(), "physical cluster added");
        Ok(version)
    }

    pub async fn create_topic(&self, t: CreateTopic) -> Result<u64, ControllerError> {
        let mut trial = (*self.map()).clone();
        let parts = trial.create_topic(&t.name, t.partitions_per_cluster, t.key_policy)?;
        let per_topic = HashMap::from([(t.name.clone(), t.partitions_per_cluster)]);
        self.create_physical(&trial, &parts, &per_topic).await?;
        self.change(|m| {
            m.create_topic(&t.name, t.partitions_per_cluster, t.key_policy)?;
            Ok(())
        })
        .await
    }

    /// Partitions of `cluster` that still hold something a consumer has
    /// not read (by every group that reads its topic) and that has not
    /// expired, per the last scan; with the end offsets found.
    async fn remaining(
        &self,
        cluster: &str,
    ) -> Result<(Vec<PhysicalPartition>, HashMap<(String, i32), i64>), ControllerError> {
        let map = self.map();
        let committed = self.all_offsets().await?;
        let mut remaining = Vec::new();
        let mut ends = HashMap::new();
        for (name, t) in &map.topics {
            let bootstrap = map
                .clusters
                .get(cluster)
                .map(|c| c.bootstrap.clone())
                .unwrap_or_default();
            let parts: Vec<(usize, &PhysicalPartition)> = t
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.cluster == cluster && p.retired_at.is_none())
                .collect();
            if parts.is_empty() {
                continue;
            }
            let numbers: Vec<i32> = parts.iter().map(|(_, p)| p.partition).collect();
            let pool = &self.inner.pool;
            // The topic's physical name on the cluster (the logical name).
            let physical = &parts[0].1.topic;
            let first = physical::offsets(pool, &bootstrap, physical, &numbers, EARLIEST).await;
            let last = physical::offsets(pool, &bootstrap, physical, &numbers, LATEST).await;
            let (first, last) = match (first, last) {
                (Ok(f), Ok(l)) => (f, l),
                (Err(source), _) | (_, Err(source)) => {
                    return Err(ControllerError::Physical {
                        cluster: cluster.to_string(),
                        source,
                    })
                }
            };
            for (logical, p) in parts {
                let end = last.get(&p.partition).copied().unwrap_or(0);
                let start = first.get(&p.partition).copied().unwrap_or(end);
                ends.insert((p.topic.clone(), p.partition), end);
                let groups: Vec<i64> = committed
                    .values()
                    .filter_map(|g| g.get(&(name.clone(), logical as i32)).copied())
                    .collect();
                let consumed = !groups.is_empty() && groups.iter().all(|o| *o >= end);
                if start < end && !consumed {
                    remaining.push(p.clone());
                }
            }
        }
        Ok((remaining, ends))
    }

    pub async fn remove_cluster(&self, name: &str, force: bool) -> Result<u64, ControllerError> {
        let map = self.map();
        let Some(c) = map.clusters.get(name) else {
            return Err(MapError::NoCluster(name.to_string()).into());
        };
        if c.state == ClusterState::Active {
            return Err(MapError::StillActive(name.to_string()).into());
        }
        let (remaining, ends) = match self.remaining(name).await {
            Ok(r) => r,
            // Unreachable: only --force retires it (at the last ends scanned).
            Err(e) if !force => return Err(e),
            Err(_) => (Vec::new(), self.scanned_ends(name)),
        };
        if !remaining.is_empty() && !force {
            return Err(ControllerError::NotEmpty {
                cluster: name.to_string(),
                remaining: remaining.len(),
            });
        }
        self.change(|m| {
            m.remove_cluster(name, |p| {
                ends.get(&(p.topic.clone(), p.partition))
                    .copied()
                    .unwrap_or(0)
            })?;
            Ok(())
        })
        .await
    }

    /// A proxy's watch call: registers it and answers once something is
    /// newer than what it holds (or after [`WATCH_HOLD`]).
    pub async fn watch(&self, hello: ProxyHello) -> Result<WatchAnswer, ControllerError> {
        check_name(&hello.group)?;
        if hello.id.is_empty() || hello.id.len() > 256 {
            return Err(ControllerError::Invalid(
                "a proxy id is 1 to 256 characters".into(),
            ));
        }
        self.inner
            .metrics
            .watch_calls
            .fetch_add(1, Ordering::Relaxed);
        let mut maps = self.inner.map.subscribe();
        let mut proxies = self.inner.proxies_version.subscribe();
        {
            let mut list = self.inner.proxies.lock().unwrap_or_else(|p| p.into_inner());
            if !list.contains_key(&hello.id) && list.len() >= MAX_PROXIES {
                return Err(ControllerError::TooManyProxies);
            }
            let changed = list.get(&hello.id).is_none_or(|e| {
                e.hello.producer_addr != hello.producer_addr
                    || e.hello.consumer_addr != hello.consumer_addr
                    || e.hello.group != hello.group
                    || e.hello.node_id != hello.node_id
            });
            list.insert(
                hello.id.clone(),
                ProxyEntry {
                    hello: hello.clone(),
                    seen: Instant::now(),
                },
            );
            if changed {
                tracing::info!(proxy = %hello.id, addr = %hello.consumer_addr, "proxy registered");
                self.inner.proxies_version.send_modify(|v| *v += 1);
            }
        }
        let newer = |m: &Arc<FederationMap>, p: u64| {
            m.version > hello.map_version || p > hello.proxies_version
        };
        let deadline = tokio::time::Instant::now() + WATCH_HOLD;
        loop {
            let p = *proxies.borrow_and_update();
            let m = maps.borrow_and_update().clone();
            if newer(&m, p) {
                break;
            }
            tokio::select! {
                _ = maps.changed() => {}
                _ = proxies.changed() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Ok(WatchAnswer {
            map: (*self.map()).clone(),
            proxies: self.proxy_list(),
            proxies_version: *self.inner.proxies_version.borrow(),
        })
    }

    pub fn proxy_list(&self) -> Vec<ProxyInfo> {
        let list = self.inner.proxies.lock().unwrap_or_else(|p| p.into_inner());
        list.values()
            .map(|e| ProxyInfo {
                id: e.hello.id.clone(),
                group: e.hello.group.clone(),
                node_id: e.hello.node_id,
                producer_addr: e.hello.producer_addr.clone(),
                consumer_addr: e.hello.consumer_addr.clone(),
                map_version: e.hello.map_version,
                last_seen_ms: e.seen.elapsed().as_millis() as u64,
            })
            .collect()
    }

    /// The name service: the proxies a client should use.
    pub fn name(&self, client: &str) -> NameAnswer {
        let map = self.map();
        let group = map
            .group_of(client)
            .unwrap_or(crate::DEFAULT_GROUP)
            .to_string();
        let proxies: Vec<ProxyInfo> = self
            .proxy_list()
            .into_iter()
            .filter(|p| p.group == group)
            .collect();
        NameAnswer {
            client: client.to_string(),
            group,
            producer_addrs: proxies.iter().map(|p| p.producer_addr.clone()).collect(),
            consumer_addrs: proxies.iter().map(|p| p.consumer_addr.clone()).collect(),
        }
    }
}

async fn reload(inner: &Inner, key: &str) -> Result<(), ControllerError> {
    let stored = inner.store.get(key).await?;
    let (map, version) = match stored {
        Some(s) => {
            let map: FederationMap = serde_json::from_slice(&s.value)
                .map_err(|e| ControllerError::Invalid(format!("the stored map: {e}")))?;
            (map, Some(s.version))
        }
        None => (FederationMap::default(), None),
    };
    *inner
        .map_key_version
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = version;
    if map.version != inner.map.borrow().version {
        inner.map.send_replace(Arc::new(map));
    }
    Ok(())
}

/// Follows the map key: a change another instance made reaches this one's
/// proxies and readers.
async fn follow_map(inner: std::sync::Weak<Inner>, key: String) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let mut w = strong.store.watch(&key);
    drop(strong);
    while let Some(event) = w.next().await {
        let Some(inner) = inner.upgrade() else { return };
        if matches!(event, Watched::Event(_) | Watched::Lagged { .. }) {
            if let Err(e) = reload(&inner, &key).await {
                tracing::warn!(error = %e, "the federation map was not re-read");
            }
        }
    }
}

/// Takes the leader key when it is free, keeps it alive while leading.
async fn lead(inner: std::sync::Weak<Inner>, key: String) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let store = strong.store.clone();
        let url = strong.config.advertised_url.clone();
        drop(strong);
        let session = match store.open_session(LEADER_TTL).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no session for the controller's leadership");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let took = store
            .put(
                &key,
                Bytes::from(url.clone()),
                Expect::Absent,
                Some(session),
            )
            .await;
        match took {
            Ok(_) => {
                tracing::info!(%url, "this controller leads the federation");
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                let _ = reload(&strong, &format!("/federation/{}/map", strong.config.name)).await;
                strong.leader.send_replace(Some(url.clone()));
                drop(strong);
                loop {
                    tokio::time::sleep(LEADER_TTL / 3).await;
                    if inner.upgrade().is_none() {
                        let _ = store.close_session(session).await;
                        return;
                    }
                    if let Err(e) = store.keep_alive(session).await {
                        tracing::error!(error = %e, "the controller lost its leadership");
                        if let Some(strong) = inner.upgrade() {
                            strong.leader.send_replace(None);
                        }
                        break;
                    }
                }
            }
            Err(_) => {
                let _ = store.close_session(session).await;
                let current = store.get(&key).await.ok().flatten();
                if let Some(strong) = inner.upgrade() {
                    let leader = current.map(|s| String::from_utf8_lossy(&s.value).into_owned());
                    strong.leader.send_replace(leader);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn expire_proxies(inner: std::sync::Weak<Inner>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let mut list = inner.proxies.lock().unwrap_or_else(|p| p.into_inner());
        let before = list.len();
        list.retain(|id, e| {
            let live = e.seen.elapsed() < PROXY_EXPIRY;
            if !live {
                tracing::warn!(proxy = %id, "proxy expired (no watch call)");
            }
            live
        });
        if list.len() != before {
            inner.proxies_version.send_modify(|v| *v += 1);
        }
    }
}
