//! The embedded backend: one `redb` file (a copy-on-write B-tree with ACID
//! transactions, pure Rust), for standalone and tests.
//!
//! Writes go to one writer thread that applies every write waiting for it in
//! one transaction and commits it with one fsync (group commit), so concurrent
//! writers share fsyncs. A put or delete is a metadata transaction of one
//! operation: the writer checks every condition of a transaction, then
//! applies all its writes under one revision (the single writer makes that
//! atomic without locks). Reads open their own read transaction and never wait
//! for the writer. Watches are fed after each commit, in revision order.
//!
//! Sessions live in this process: ephemeral keys left by an earlier process are
//! deleted when the store opens (their sessions died with it).
//!
//! Keys are stored with `/` replaced by NUL, so that every key below `/a` sorts
//! before a sibling such as `/a-b`: a key's children are then contiguous ranges.
//! `check_key` refuses keys holding NUL, so no two keys share a stored form.
//!
//! Why redb and group commit: docs/adr/0002-embedded-metadata-store.md.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::error::{MetadataError, Result};
use crate::store::{
    check_children, check_key, check_txn, Expect, MetadataStore, Page, SessionId, Stored, TxnOp,
    Watch, WatchEvent,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The ephemeral keys (stored form → session), so opening deletes them without
/// scanning every key.
const EPHEMERAL: TableDefinition<&str, u64> = TableDefinition::new("ephemeral");
const REVISION: &str = "revision";
/// Value header: version (u64 LE), session (u64 LE, 0 = not ephemeral).
const HEADER: usize = 16;
/// Writes applied in one transaction at most.
const MAX_BATCH: usize = 4096;
/// How often the writer looks for expired sessions when idle.
const TICK: Duration = Duration::from_millis(50);
/// Memory for cached B-tree pages (redb's default is 1 GiB): the store's
/// resident size stays bounded however many keys it holds.
const CACHE_BYTES: usize = 64 << 20;
/// Watch events buffered per watcher before it lags.
const WATCH_BUFFER: usize = 65_536;

fn backend(e: impl std::fmt::Display) -> MetadataError {
    MetadataError::Backend(e.to_string())
}

/// The stored form of a key.
fn internal(key: &str) -> String {
    key.replace('/', "\0")
}

fn decode(raw: &[u8]) -> Result<Stored> {
    if raw.len() < HEADER {
        return Err(backend("a value shorter than its header"));
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let session = word(8);
    Ok(Stored {
        version: word(0),
        session: (session != 0).then_some(SessionId(session)),
        value: Bytes::copy_from_slice(&raw[HEADER..]),
    })
}

fn encode(version: u64, session: Option<SessionId>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&session.map_or(0, |s| s.0).to_le_bytes());
    out.extend_from_slice(value);
    out
}

struct Session {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

#[derive(Default)]
struct Sessions {
    next: u64,
    live: HashMap<u64, Session>,
}

/// What a transaction did: the revision it wrote at (the current one if it
/// changed nothing) and, per operation, whether its key existed before.
struct Applied {
    revision: u64,
    existed: Vec<bool>,
}

enum Op {
    /// A checked transaction (a put or delete is one of one operation).
    Txn {
        ops: Vec<TxnOp>,
        reply: oneshot::Sender<Result<Applied>>,
    },
    CloseSession {
        session: SessionId,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A reply to send once the batch is durable.
enum Reply {
    Txn(oneshot::Sender<Result<Applied>>, Result<Applied>),
    Close(oneshot::Sender<Result<()>>, Result<()>),
}

impl Reply {
    fn fail(self, e: &MetadataError) -> Reply {
        let e = MetadataError::Backend(e.to_string());
        match self {
            Reply::Txn(tx, _) => Reply::Txn(tx, Err(e)),
            Reply::Close(tx, _) => Reply::Close(tx, Err(e)),
        }
    }

    fn send(self) {
        // A caller that went away does not care about the answer.
        match self {
            Reply::Txn(tx, r) => drop(tx.send(r)),
            Reply::Close(tx, r) => drop(tx.send(r)),
        }
    }
}

/// The embedded metadata store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    ops: Mutex<Option<std_mpsc::Sender<Op>>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    sessions: Arc<Mutex<Sessions>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every holder leaves the data consistent between statements.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in file `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(backend)?;
        let dropped = Self::drop_stale_ephemerals(&db)?;
        if dropped > 0 {
            tracing::info!(
                keys = dropped,
                "deleted ephemeral keys of an earlier process"
            );
        }
        let db = Arc::new(db);
        let (ops_tx, ops_rx) = std_mpsc::channel();
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let sessions = Arc::new(Mutex::new(Sessions {
            // Ids need not survive restarts (sessions do not), but distinct ones
            // make logs easier to read.
            next: (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
                << 20)
                .max(1),
            live: HashMap::new(),
        }));
        let writer = Writer {
            db: db.clone(),
            events: events.clone(),
            sessions: sessions.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("metadata-writer".into())
            .spawn(move || writer.run(ops_rx))
            .map_err(backend)?;
        Ok(EmbeddedStore {
            db,
            ops: Mutex::new(Some(ops_tx)),
            events,
            sessions,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Creates the tables if missing and deletes every ephemeral key.
    fn drop_stale_ephemerals(db: &Database) -> Result<usize> {
        let tx = db.begin_write().map_err(backend)?;
        let mut stale = Vec::new();
        {
            let mut meta = tx.open_table(META).map_err(backend)?;
            if meta.get(REVISION).map_err(backend)?.is_none() {
                meta.insert(REVISION, 0).map_err(backend)?;
            }
            let mut kv = tx.open_table(KV).map_err(backend)?;
            let mut eph = tx.open_table(EPHEMERAL).map_err(backend)?;
            for item in eph.iter().map_err(backend)? {
                let (k, _) = item.map_err(backend)?;
                stale.push(k.value().to_owned());
            }
            for k in &stale {
                kv.remove(k.as_str()).map_err(backend)?;
                eph.remove(k.as_str()).map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(stale.len())
    }

    async fn submit<T>(&self, op: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        {
            let ops = lock(&self.ops);
            let sender = ops.as_ref().ok_or(MetadataError::Closed)?;
            sender.send(op(tx)).map_err(|_| MetadataError::Closed)?;
        }
        rx.await.map_err(|_| MetadataError::Closed)?
    }

    /// Stops the writer after the writes already submitted; later calls fail
    /// with [`MetadataError::Closed`]. Also done on drop.
    pub fn close(&self) {
        lock(&self.ops).take();
        if let Some(h) = lock(&self.writer).take() {
            if h.join().is_err() {
                tracing::error!("the metadata writer thread panicked");
            }
        }
    }

    fn read<T>(&self, f: impl FnOnce(&redb::ReadOnlyTable<&str, &[u8]>) -> Result<T>) -> Result<T> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(KV).map_err(backend)?;
        f(&table)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl MetadataStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Stored>> {
        check_key(key)?;
        let k = internal(key);
        self.read(|t| match t.get(k.as_str()).map_err(backend)? {
            Some(v) => decode(v.value()).map(Some),
            None => Ok(None),
        })
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool> {
        check_key(key)?;
        let ops = vec![TxnOp::Delete {
            key: key.to_owned(),
            expect,
        }];
        let applied = self.submit(|reply| Op::Txn { ops, reply }).await?;
        Ok(applied.existed.first().copied().unwrap_or(false))
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<u64> {
        check_txn(&ops)?;
        let applied = self.submit(|reply| Op::Txn { ops, reply }).await?;
        Ok(applied.revision)
    }

    async fn children(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Page> {
        let trimmed = check_children(prefix, start_after)?;
        let base = format!("{}\0", internal(trimmed));
        // Everything below child `name` sorts before `base + name + "\x01"`.
        let past = |name: &str| format!("{base}{name}\u{1}");
        let mut from = start_after.map_or_else(|| base.clone(), past);
        self.read(|t| {
            let mut page = Page::default();
            loop {
                let mut range = t.range::<&str>(from.as_str()..).map_err(backend)?;
                let Some(item) = range.next() else { break };
                let (k, _) = item.map_err(backend)?;
                let Some(rest) = k.value().strip_prefix(base.as_str()) else {
                    break;
                };
                let name = rest.split('\0').next().unwrap_or(rest).to_owned();
                if page.names.len() == limit {
                    page.more = true;
                    break;
                }
                from = past(&name);
                page.names.push(name);
            }
            Ok(page)
        })
    }

    fn watch(&self, prefix: &str) -> Watch {
        Watch::new(prefix, self.events.subscribe())
    }

    async fn open_session(&self, ttl: Duration) -> Result<SessionId> {
        let mut s = lock(&self.sessions);
        s.next += 1;
        let id = s.next;
        s.live.insert(
            id,
            Session {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(SessionId(id))
    }

    async fn keep_alive(&self, session: SessionId) -> Result<()> {
        let mut s = lock(&self.sessions);
        let now = Instant::now();
        match s.live.get_mut(&session.0) {
            Some(live) if live.deadline > now => {
                live.deadline = now + live.ttl;
                Ok(())
            }
            _ => Err(MetadataError::SessionExpired(session.0)),
        }
    }

    async fn close_session(&self, session: SessionId) -> Result<()> {
        self.submit(|reply| Op::CloseSession { session, reply })
            .await
    }
}

/// The tables a write transaction changes; keeps the ephemeral index in step.
struct Tables<'a, 't> {
    kv: &'a mut redb::Table<'t, &'static str, &'static [u8]>,
    eph: &'a mut redb::Table<'t, &'static str, u64>,
}

impl Tables<'_, '_> {
    fn get(&self, key: &str) -> Result<Option<Stored>> {
        match self.kv.get(internal(key).as_str()).map_err(backend)? {
            Some(v) => decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put(
        &mut self,
        key: &str,
        version: u64,
        session: Option<SessionId>,
        value: &[u8],
    ) -> Result<Option<Stored>> {
        let k = internal(key);
        let old = match self
            .kv
            .insert(k.as_str(), encode(version, session, value).as_slice())
            .map_err(backend)?
        {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        match session {
            Some(s) => {
                self.eph.insert(k.as_str(), s.0).map_err(backend)?;
            }
            None if old.as_ref().is_some_and(|o| o.session.is_some()) => {
                self.eph.remove(k.as_str()).map_err(backend)?;
            }
            None => {}
        }
        Ok(old)
    }

    fn take(&mut self, key: &str) -> Result<Option<Stored>> {
        let k = internal(key);
        let old = match self.kv.remove(k.as_str()).map_err(backend)? {
            Some(v) => decode(v.value())?,
            None => return Ok(None),
        };
        if old.session.is_some() {
            self.eph.remove(k.as_str()).map_err(backend)?;
        }
        Ok(Some(old))
    }
}

/// Applies a transaction if every condition holds (see
/// [`MetadataStore::txn`]): all its writes at one new revision, recorded in
/// `events` in the order of `ops`. The outer error is the store failing
/// (the batch fails); the inner one is the transaction's answer.
fn apply_txn(
    t: &mut Tables<'_, '_>,
    revision: &mut u64,
    ops: Vec<TxnOp>,
    live: impl Fn(Option<SessionId>) -> Result<()>,
    events: &mut Vec<WatchEvent>,
    changes: &mut SessionChanges,
) -> Result<Result<Applied>> {
    // Every condition against the store as it was before any write.
    let mut found = Vec::with_capacity(ops.len());
    for op in &ops {
        let old = t.get(op.key())?;
        if let Err(e) = op.expect().check(op.key(), old.as_ref().map(|o| o.version)) {
            return Ok(Err(e));
        }
        found.push(old);
    }
    for op in &ops {
        if let TxnOp::Put { session, .. } = op {
            if let Err(e) = live(*session) {
                return Ok(Err(e));
            }
        }
    }
    let existed = found.iter().map(Option::is_some).collect();
    let changes_anything = ops
        .iter()
        .zip(&found)
        .any(|(op, old)| matches!(op, TxnOp::Put { .. }) || (op.writes() && old.is_some()));
    if !changes_anything {
        return Ok(Ok(Applied {
            revision: *revision,
            existed,
        }));
    }
    *revision += 1;
    let at = *revision;
    for (op, old) in ops.into_iter().zip(found) {
        // A key is written once per transaction (`check_txn`), so what was
        // read above is still what each write replaces.
        let old_session = old.as_ref().and_then(|o| o.session);
        match op {
            TxnOp::Check { .. } => continue,
            TxnOp::Put {
                key,
                value,
                session,
                ..
            } => {
                t.put(&key, at, session, &value)?;
                if let Some(s) = old_session {
                    changes.unbind.push((s.0, key.clone()));
                }
                if let Some(s) = session {
                    changes.bind.push((s.0, key.clone()));
                }
                events.push(WatchEvent {
                    key,
                    revision: at,
                    value: Some(value),
                });
            }
            TxnOp::Delete { key, .. } => {
                if t.take(&key)?.is_none() {
                    continue;
                }
                if let Some(s) = old_session {
                    changes.unbind.push((s.0, key.clone()));
                }
                events.push(WatchEvent {
                    key,
                    revision: at,
                    value: None,
                });
            }
        }
    }
    Ok(Ok(Applied {
        revision: at,
        existed,
    }))
}

/// Deletes `key`, recording the change; returns what it held.
fn remove(
    t: &mut Tables<'_, '_>,
    revision: &mut u64,
    key: &str,
    events: &mut Vec<WatchEvent>,
) -> Result<Option<Stored>> {
    let Some(old) = t.take(key)? else {
        return Ok(None);
    };
    *revision += 1;
    events.push(WatchEvent {
        key: key.to_owned(),
        revision: *revision,
        value: None,
    });
    Ok(Some(old))
}

/// Deletes `key` if `session` still owns it (it may have been rewritten since).
fn remove_owned(
    t: &mut Tables<'_, '_>,
    revision: &mut u64,
    key: &str,
    session: SessionId,
    events: &mut Vec<WatchEvent>,
) -> Result<()> {
    if t.get(key)?.is_some_and(|s| s.session == Some(session)) {
        remove(t, revision, key, events)?;
    }
    Ok(())
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    sessions: Arc<Mutex<Sessions>>,
}

/// What one batch did to sessions' key sets, applied after it commits.
#[derive(Default)]
struct SessionChanges {
    bind: Vec<(u64, String)>,
    unbind: Vec<(u64, String)>,
    ended: Vec<u64>,
}

impl Writer {
    fn run(self, ops: std_mpsc::Receiver<Op>) {
        loop {
            let mut batch = Vec::new();
            match ops.recv_timeout(TICK) {
                Ok(op) => batch.push(op),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < MAX_BATCH {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let expired = self.take_expired();
            if batch.is_empty() && expired.is_empty() {
                continue;
            }
            self.apply(batch, expired);
        }
    }

    /// Sessions past their deadline, removed from the live set with their keys.
    fn take_expired(&self) -> Vec<(u64, BTreeSet<String>)> {
        let now = Instant::now();
        let mut s = lock(&self.sessions);
        let ids: Vec<u64> = s
            .live
            .iter()
            .filter(|(_, v)| v.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        ids.into_iter()
            .filter_map(|id| s.live.remove(&id).map(|v| (id, v.keys)))
            .collect()
    }

    fn apply(&self, batch: Vec<Op>, expired: Vec<(u64, BTreeSet<String>)>) {
        let mut replies = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut changes = SessionChanges::default();
        let outcome = self.transact(batch, expired, &mut replies, &mut events, &mut changes);
        match outcome {
            Ok(()) => {
                self.apply_session_changes(changes);
                // Events first: a watch opened after a write returned never sees it.
                for e in events {
                    // No watcher is not an error.
                    let _ = self.events.send(Arc::new(e));
                }
                for r in replies {
                    r.send();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "metadata commit failed");
                for r in replies {
                    r.fail(&e).send();
                }
            }
        }
    }

    fn transact(
        &self,
        batch: Vec<Op>,
        expired: Vec<(u64, BTreeSet<String>)>,
        replies: &mut Vec<Reply>,
        events: &mut Vec<WatchEvent>,
        changes: &mut SessionChanges,
    ) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut kv = tx.open_table(KV).map_err(backend)?;
            let mut eph = tx.open_table(EPHEMERAL).map_err(backend)?;
            let t = &mut Tables {
                kv: &mut kv,
                eph: &mut eph,
            };
            let mut meta = tx.open_table(META).map_err(backend)?;
            let mut revision = meta
                .get(REVISION)
                .map_err(backend)?
                .map_or(0, |v| v.value());
            let start = revision;
            for (id, keys) in expired {
                for key in keys {
                    remove_owned(t, &mut revision, &key, SessionId(id), events)?;
                }
                tracing::info!(session = id, "metadata session expired");
            }
            for op in batch {
                match op {
                    Op::Txn { ops, reply } => {
                        let ended = changes.ended.clone();
                        let live = |s: Option<SessionId>| self.session_is_live(s, &ended);
                        let result = apply_txn(t, &mut revision, ops, live, events, changes)?;
                        replies.push(Reply::Txn(reply, result));
                    }
                    Op::CloseSession { session, reply } => {
                        let keys = lock(&self.sessions).live.remove(&session.0).map(|s| s.keys);
                        let result = match keys {
                            Some(keys) => {
                                // Keys bound earlier in this batch are not in the set yet.
                                let mut keys = keys;
                                for (s, k) in &changes.bind {
                                    if *s == session.0 {
                                        keys.insert(k.clone());
                                    }
                                }
                                for key in keys {
                                    remove_owned(t, &mut revision, &key, session, events)?;
                                }
                                changes.ended.push(session.0);
                                Ok(())
                            }
                            None => Err(MetadataError::SessionExpired(session.0)),
                        };
                        replies.push(Reply::Close(reply, result));
                    }
                }
            }
            if revision != start {
                meta.insert(REVISION, revision).map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(())
    }

    /// Whether `session` (if any) may bind keys: open, and not closed
    /// earlier in this batch (`ended`).
    fn session_is_live(&self, session: Option<SessionId>, ended: &[u64]) -> Result<()> {
        let Some(s) = session else { return Ok(()) };
        let live = lock(&self.sessions).live.contains_key(&s.0) && !ended.contains(&s.0);
        if live {
            Ok(())
        } else {
            Err(MetadataError::SessionExpired(s.0))
        }
    }

    fn apply_session_changes(&self, changes: SessionChanges) {
        let mut s = lock(&self.sessions);
        for (id, key) in changes.unbind {
            if let Some(live) = s.live.get_mut(&id) {
                live.keys.remove(&key);
            }
        }
        for (id, key) in changes.bind {
            if changes.ended.contains(&id) {
                continue;
            }
            match s.live.get_mut(&id) {
                Some(live) => {
                    live.keys.insert(key);
                }
                // The session expired between the write and now: the key must
                // go with it. The next tick sees the session gone, so delete via
                // a fresh expired entry.
                None => {
                    s.live.insert(
                        id,
                        Session {
                            ttl: Duration::ZERO,
                            deadline: Instant::now(),
                            keys: BTreeSet::from([key]),
                        },
                    );
                }
            }
        }
    }
}
