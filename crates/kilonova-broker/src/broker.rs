//! The broker: shared state behind every connection — storage, the catalog, and
//! the map of loaded topics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use kilonova_storage::{
    EntryCache, ManagedLog, ManagedLogConfig, Retention, SegmentStore, StateStore, StorageError,
};

use crate::catalog::Catalog;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::topic::{self, Topic, TopicCommand, TopicHandle};
use crate::topic_name::TopicName;

struct Inner {
    config: BrokerConfig,
    store: SegmentStore,
    state: Arc<dyn StateStore>,
    cache: Arc<EntryCache>,
    catalog: Catalog,
    topics: Mutex<HashMap<String, TopicHandle>>,
    /// `pulsar://host:port` clients are told to connect to (LOOKUP).
    service_url: String,
    shutting_down: AtomicBool,
    next_producer: AtomicU64,
    next_connection: AtomicU64,
    /// Distinguishes generated producer names across restarts.
    boot_id: String,
}

/// The broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    /// A broker over an open segment store and state store. `service_url` is what
    /// LOOKUP answers (`pulsar://127.0.0.1:6650`).
    pub fn new(
        config: BrokerConfig,
        store: SegmentStore,
        state: Arc<dyn StateStore>,
        service_url: String,
    ) -> Result<Self, BrokerError> {
        let catalog = Catalog::open(state.clone())?;
        let cache = Arc::new(EntryCache::new(config.entry_cache_bytes));
        Ok(Broker {
            inner: Arc::new(Inner {
                config,
                store,
                state,
                cache,
                catalog,
                topics: Mutex::new(HashMap::new()),
                service_url,
                shutting_down: AtomicBool::new(false),
                next_producer: AtomicU64::new(0),
                next_connection: AtomicU64::new(1),
                boot_id: format!("{:x}", topic::now_ms()),
            }),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn service_url(&self) -> &str {
        &self.inner.service_url
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.inner.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_producer_name(&self) -> String {
        let n = self.inner.next_producer.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}-{}-{n}",
            self.inner.config.cluster_name, self.inner.boot_id
        )
    }

    pub(crate) fn retention(&self) -> Retention {
        topic::default_retention()
    }

    /// Topics loaded now (each has a task).
    pub fn loaded_topics(&self) -> usize {
        self.topics().len()
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, TopicHandle>> {
        // The map stays consistent even if a holder panicked: entries are whole values.
        self.inner.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn open_log(&self, id: u64) -> Result<ManagedLog, StorageError> {
        ManagedLog::open(
            id,
            self.inner.store.clone(),
            self.inner.state.clone(),
            self.inner.cache.clone(),
            ManagedLogConfig::default(),
            topic::now_ms(),
        )
        .await
    }

    /// Partitions of `name` (0: not partitioned). With partitioned auto-creation, an
    /// unknown topic is created partitioned here, where clients ask first.
    pub fn partitions(&self, name: &TopicName) -> Result<u32, BrokerError> {
        let base = name.partitioned_topic();
        if let Some(t) = self.catalog().topic(&base) {
            return Ok(t.partitions);
        }
        if !self.catalog().namespace_exists(&name.namespace_name()) {
            return Err(BrokerError::NamespaceNotFound(name.namespace_name()));
        }
        let c = self.config();
        if c.allow_auto_topic_creation
            && c.auto_topic_creation_type == crate::config::AutoTopicType::Partitioned
            && name.partition().is_none()
        {
            let n = c.default_num_partitions.max(1);
            self.catalog().set_partitions(name, n, true)?;
            return Ok(n);
        }
        Ok(0)
    }

    /// The topic's handle, loading it (and creating it, if auto-creation allows) first.
    pub(crate) fn topic(&self, name: &TopicName) -> Result<TopicHandle, BrokerError> {
        if self.is_shutting_down() {
            return Err(BrokerError::ShuttingDown);
        }
        let key = name.to_string();
        if let Some(h) = self.topics().get(&key) {
            if !h.is_closed() {
                return Ok(h.clone());
            }
        }
        let base = name.partitioned_topic();
        let parent = (base != *name)
            .then(|| self.catalog().topic(&base))
            .flatten()
            .filter(|t| name.partition().is_some_and(|i| i < t.partitions));
        let record = self.catalog().get_or_create_topic(
            name,
            self.config().allow_auto_topic_creation || parent.is_some(),
        )?;
        if record.partitions > 0 {
            return Err(BrokerError::NotAllowed(format!(
                "{key} is a partitioned topic: use its partitions"
            )));
        }
        let mut topics = self.topics();
        if let Some(h) = topics.get(&key) {
            if !h.is_closed() {
                return Ok(h.clone());
            }
        }
        let (tx, rx) = mpsc::channel(self.config().topic_queue_depth.max(1));
        topics.insert(key, tx.clone());
        drop(topics);
        tokio::spawn(Topic::run(self.clone(), name.clone(), record, rx));
        Ok(tx)
    }

    /// Sends a command that reached a topic as it unloaded to a fresh load of it.
    pub(crate) async fn forward(&self, name: &TopicName, cmd: TopicCommand) {
        match self.topic(name) {
            Ok(h) => {
                let _ = h.send(cmd).await;
            }
            Err(e) => {
                tracing::warn!(topic = %name, error = %e, "dropping a command for an unloading topic")
            }
        }
    }

    /// Called by an idle topic's task: removes it from the map and closes its log,
    /// unless a command is queued for it. Holding the map lock while closing keeps a
    /// new load of the topic from opening the log before this one is closed.
    /// Returns whether it unloaded (then `log` was taken and closed).
    pub(crate) fn unload_topic(
        &self,
        name: &str,
        rx: &mpsc::Receiver<TopicCommand>,
        log: &mut Option<ManagedLog>,
    ) -> bool {
        let mut topics = self.topics();
        if !rx.is_empty() || self.is_shutting_down() {
            return false;
        }
        if let Some(log) = log.take() {
            if let Err(e) = log.close() {
                tracing::warn!(topic = name, error = %e, "closing an idle topic's log failed");
            }
        }
        topics.remove(name);
        true
    }

    /// Removes a topic that failed to load (its receiver is closed already).
    pub(crate) fn forget_topic(&self, name: &str) {
        let mut topics = self.topics();
        if topics.get(name).is_some_and(|h| h.is_closed()) {
            topics.remove(name);
        }
    }

    /// Stops taking new work, closes every topic's producers and consumers with the
    /// protocol's close commands, waits for appends in flight, persists cursors,
    /// then closes the storage.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let handles: Vec<TopicHandle> = self.topics().drain().map(|(_, h)| h).collect();
        let mut waits = Vec::new();
        for h in handles {
            let (done, wait) = oneshot::channel();
            if h.send(TopicCommand::Shutdown { done }).await.is_ok() {
                waits.push(wait);
            }
        }
        for w in waits {
            let _ = w.await;
        }
        let store = self.inner.store.clone();
        match tokio::task::spawn_blocking(move || store.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "closing storage failed"),
            Err(e) => tracing::warn!(error = %e, "closing storage panicked"),
        }
    }
}
