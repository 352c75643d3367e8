#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
//! A segment store, a state store and an entry cache in a temp dir: what the
//! managed log tests open logs on.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use kilonova_storage::{
    DirStateStore, EntryCache, ManagedLog, ManagedLogConfig, Position, SegmentStore, StateStore,
    StoreConfig,
};

pub struct Env {
    pub store: SegmentStore,
    pub state: Arc<dyn StateStore>,
    pub cache: Arc<EntryCache>,
}

/// Small journal files (1 MiB) and entries up to 64 KiB.
pub fn env(dir: &Path) -> Env {
    env_with(dir, |_| {})
}

/// [`env`] with `tune` applied to the store's configuration.
pub fn env_with(dir: &Path, tune: impl FnOnce(&mut StoreConfig)) -> Env {
    let mut c = StoreConfig::new(dir.join("journal"));
    c.log_file_bytes = 1 << 20;
    c.max_entry_bytes = 64 << 10;
    tune(&mut c);
    Env {
        store: SegmentStore::open(c).unwrap(),
        state: Arc::new(DirStateStore::open(dir.join("state")).unwrap()),
        cache: Arc::new(EntryCache::new(1 << 20)),
    }
}

/// Stops the store as a crash would (no final checkpoint).
pub async fn crash(e: Env) {
    tokio::task::spawn_blocking(move || e.store.abandon())
        .await
        .unwrap()
        .unwrap();
}

/// Segments of 10 entries.
pub fn small_segments() -> ManagedLogConfig {
    ManagedLogConfig {
        max_segment_entries: 10,
        ..Default::default()
    }
}

pub async fn open(e: &Env, id: u64, cfg: ManagedLogConfig, now: u64) -> ManagedLog {
    ManagedLog::open(
        id,
        e.store.clone(),
        e.state.clone(),
        e.cache.clone(),
        cfg,
        now,
    )
    .await
    .unwrap()
}

pub fn msg(i: u64) -> Bytes {
    Bytes::from(format!("message-{i}"))
}

/// Appends `n` single-message entries published at t = start.., waiting for durability.
pub async fn publish(log: &mut ManagedLog, from: u64, n: u64) -> Vec<Position> {
    let mut cs = Vec::new();
    for i in from..from + n {
        cs.push(log.append(msg(i), 1, 1000 + i).await.unwrap());
    }
    let mut out = Vec::new();
    for c in cs {
        out.push(c.await.unwrap());
    }
    out
}

/// A state store whose writes of keys containing `part` fail while `fail` is
/// set, as "File name too long" or a full disk made them fail.
pub struct FailingWrites {
    inner: DirStateStore,
    part: &'static str,
    pub fail: AtomicBool,
}

impl FailingWrites {
    pub fn new(dir: &Path, part: &'static str, fail: bool) -> Arc<Self> {
        Arc::new(FailingWrites {
            inner: DirStateStore::open(dir.join("state")).unwrap(),
            part,
            fail: fail.into(),
        })
    }
}

impl StateStore for FailingWrites {
    fn load(&self, key: &str) -> kilonova_storage::Result<Option<Bytes>> {
        self.inner.load(key)
    }
    fn store(&self, key: &str, value: &[u8]) -> kilonova_storage::Result<()> {
        if key.contains(self.part) && self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(kilonova_storage::StorageError::DiskFull { context: "test" });
        }
        self.inner.store(key, value)
    }
    fn remove(&self, key: &str) -> kilonova_storage::Result<()> {
        self.inner.remove(key)
    }
    fn remove_all(&self, prefix: &str) -> kilonova_storage::Result<()> {
        self.inner.remove_all(prefix)
    }
    fn children(&self, prefix: &str) -> kilonova_storage::Result<Vec<String>> {
        self.inner.children(prefix)
    }
    fn subtrees(&self, prefix: &str) -> kilonova_storage::Result<Vec<String>> {
        self.inner.subtrees(prefix)
    }
}
