//! The `MetadataStore` trait: what every metadata backend provides, and the
//! types of its calls.
//!
//! Keys are `/`-separated paths (`/tenants/public`). A key may hold a value and
//! have keys below it at the same time. Every change gets the next value of one
//! store-wide revision counter; a key's version is the revision of its last
//! change (as etcd's `mod_revision`), so versions only grow, also across a
//! delete and re-create. A transaction ([`MetadataStore::txn`]) writes several
//! keys in one change: they all get the same revision. The behaviour is
//! pinned down by the conformance suite (`crate::conformance`), which every
//! backend must pass.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// A key's value with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub value: Bytes,
    /// The revision of the key's last change; never 0.
    pub version: u64,
    /// The session owning the key if it is ephemeral.
    pub session: Option<SessionId>,
}

/// What a conditional write expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Anything: an unconditional write.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this version.
    Version(u64),
}

impl Expect {
    /// Whether the expectation holds of a key found at `found` (`None`:
    /// absent); if not, the [`crate::MetadataError::BadVersion`] saying so.
    pub fn check(self, key: &str, found: Option<u64>) -> Result<()> {
        let ok = match self {
            Expect::Any => true,
            Expect::Absent => found.is_none(),
            Expect::Version(v) => found == Some(v),
        };
        if ok {
            return Ok(());
        }
        Err(crate::MetadataError::BadVersion {
            key: key.to_owned(),
            expected: match self {
                Expect::Any => "anything".into(),
                Expect::Absent => "no key".into(),
                Expect::Version(v) => format!("version {v}"),
            },
            found: found.map_or("no key".into(), |v| format!("version {v}")),
        })
    }
}

/// A session that ephemeral keys are bound to: when it is closed, or not kept
/// alive within its time-to-live, its keys are deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// One page of a key's children, in byte order of their names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Names (one path component each) of the children, at most the limit asked for.
    pub names: Vec<String>,
    /// Whether more children follow the last name.
    pub more: bool,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    /// The revision of the change; events arrive in revision order. The
    /// writes of one transaction share a revision: their events come
    /// together, in the order of the transaction's operations.
    pub revision: u64,
    /// The new value, or `None` if the key was deleted.
    pub value: Option<Bytes>,
}

/// What a watch yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    Event(WatchEvent),
    /// The watcher fell behind and `missed` events were dropped: re-read what it tracks.
    Lagged {
        missed: u64,
    },
}

/// One operation of a transaction ([`MetadataStore::txn`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// A condition only: `expect` must hold of `key`.
    Check { key: String, expect: Expect },
    /// Writes `value` (bound to `session` if given) if `expect` holds.
    Put {
        key: String,
        value: Bytes,
        expect: Expect,
        session: Option<SessionId>,
    },
    /// Deletes the key (if it exists) if `expect` holds.
    Delete { key: String, expect: Expect },
}

impl TxnOp {
    /// The key the operation is about.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Check { key, .. } | TxnOp::Put { key, .. } | TxnOp::Delete { key, .. } => key,
        }
    }

    /// What the operation expects of its key.
    pub fn expect(&self) -> Expect {
        match self {
            TxnOp::Check { expect, .. }
            | TxnOp::Put { expect, .. }
            | TxnOp::Delete { expect, .. } => *expect,
        }
    }

    /// Whether the operation writes its key.
    pub fn writes(&self) -> bool {
        !matches!(self, TxnOp::Check { .. })
    }
}

/// Operations in one transaction at most: etcd's default `--max-txn-ops`
/// (it refuses a transaction with more compares, or more operations in a
/// branch, than that).
pub const MAX_TXN_OPS: usize = 128;

/// Checks a transaction's form before a backend runs it: at most
/// [`MAX_TXN_OPS`] operations, every key well formed, no key written twice
/// (etcd refuses duplicate keys in a transaction's writes, and two writes of
/// one key in one revision would leave its version ambiguous).
pub fn check_txn(ops: &[TxnOp]) -> Result<()> {
    if ops.len() > MAX_TXN_OPS {
        return Err(crate::MetadataError::Invalid(format!(
            "a metadata transaction of {} operations (at most {MAX_TXN_OPS})",
            ops.len()
        )));
    }
    let mut written = std::collections::HashSet::new();
    for op in ops {
        check_key(op.key())?;
        if op.writes() && !written.insert(op.key()) {
            return Err(crate::MetadataError::Invalid(format!(
                "a metadata transaction writes {} twice",
                op.key()
            )));
        }
    }
    Ok(())
}

/// A stream of changes to keys under a prefix. Dropping it stops the watch.
pub struct Watch {
    source: Source,
}

enum Source {
    /// Every change of the store, filtered here by prefix (the embedded store).
    Broadcast {
        prefix: String,
        rx: tokio::sync::broadcast::Receiver<std::sync::Arc<WatchEvent>>,
    },
    /// Changes sent by a backend's own task, already filtered and in order
    /// (etcd's watch streams).
    Channel(tokio::sync::mpsc::Receiver<Watched>),
}

impl Watch {
    /// A watch over a broadcast of every change of a store (backends' helper).
    pub fn new(
        prefix: &str,
        rx: tokio::sync::broadcast::Receiver<std::sync::Arc<WatchEvent>>,
    ) -> Self {
        Watch {
            source: Source::Broadcast {
                prefix: prefix.to_owned(),
                rx,
            },
        }
    }

    /// A watch fed by a backend's task, which sends only the changes under
    /// the watched prefix, in revision order, and stops once the receiver is
    /// dropped (the channel closes).
    pub fn from_channel(rx: tokio::sync::mpsc::Receiver<Watched>) -> Self {
        Watch {
            source: Source::Channel(rx),
        }
    }

    /// The next change under the prefix; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Watched> {
        use tokio::sync::broadcast::error::RecvError;
        let (prefix, rx) = match &mut self.source {
            Source::Broadcast { prefix, rx } => (prefix, rx),
            Source::Channel(rx) => return rx.recv().await,
        };
        loop {
            match rx.recv().await {
                Ok(e) if under(&e.key, prefix) => {
                    return Some(Watched::Event(WatchEvent::clone(&e)))
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => return Some(Watched::Lagged { missed }),
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Whether `key` is `prefix` itself or below it.
pub fn under(key: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || key == prefix
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The metadata store: a small, strongly consistent, watched key-value store.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// The key's value, if it exists.
    async fn get(&self, key: &str) -> Result<Option<Stored>>;

    /// Writes `value` if `expect` holds (else [`crate::MetadataError::BadVersion`]),
    /// bound to `session` if given (an ephemeral key). Returns the new version.
    /// Returns once the write is durable. A transaction of one write.
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        session: Option<SessionId>,
    ) -> Result<u64> {
        let put = TxnOp::Put {
            key: key.to_owned(),
            value,
            expect,
            session,
        };
        self.txn(vec![put]).await
    }

    /// Deletes the key if `expect` holds. Returns whether it existed.
    async fn delete(&self, key: &str, expect: Expect) -> Result<bool>;

    /// The names of `prefix`'s children after `start_after` (exclusive), at most
    /// `limit` of them. A child is the next path component of any key below the
    /// prefix, listed once however many keys are below it.
    async fn children(&self, prefix: &str, start_after: Option<&str>, limit: usize)
        -> Result<Page>;

    /// Changes to `prefix` and every key below it, from now on.
    fn watch(&self, prefix: &str) -> Watch;

    /// Opens a session that lives `ttl` past its last keep-alive.
    async fn open_session(&self, ttl: Duration) -> Result<SessionId>;

    /// Extends the session's life by its ttl; an error if it has expired.
    async fn keep_alive(&self, session: SessionId) -> Result<()>;

    /// Ends the session now, deleting its ephemeral keys.
    async fn close_session(&self, session: SessionId) -> Result<()>;

    /// Applies `ops` atomically, as etcd's `Txn`: every condition is
    /// evaluated against the store as it is before any of the writes, and
    /// either all hold and every write applies, or nothing applies.
    ///
    /// - The conditions are each operation's `expect` (a [`TxnOp::Check`] is
    ///   only a condition). Conditions on one key may repeat; a key may be
    ///   checked and written, but written once only.
    /// - If a condition fails: [`crate::MetadataError::BadVersion`] naming
    ///   the first operation's key (in the order given) whose condition
    ///   failed, with what it found. Then a [`TxnOp::Put`] bound to a session
    ///   that is closed or expired fails the whole transaction with
    ///   [`crate::MetadataError::SessionExpired`] (etcd checks leases only on
    ///   the branch it takes: a conflict wins over a dead session). With
    ///   puts bound to several sessions, etcd does not say whose lease is
    ///   gone: its backend names the first put's session.
    /// - All writes of a transaction that changes anything take one new
    ///   revision: every key put gets it as its version; a delete of an
    ///   absent key changes nothing. Watches see the changes under that one
    ///   revision, in the order of `ops`. Returns the revision the writes
    ///   took, or, when nothing changed (only checks, or deletes that found
    ///   nothing), the store's current revision.
    /// - More than [`MAX_TXN_OPS`] operations, a malformed key or a key
    ///   written twice are refused before anything is evaluated
    ///   ([`check_txn`]).
    ///
    /// Returns once the writes are durable.
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<u64>;
}

/// Checks a key's form: starts with `/`, no empty components, no trailing
/// `/`, no NUL byte. The embedded store keeps `/` as NUL (so that a key's
/// children are one contiguous range), and etcd's key layout separates
/// components with NUL too: a NUL inside a component would make `/a\0b` the
/// embedded store's `/a/b`.
pub fn check_key(key: &str) -> Result<()> {
    let ok = key.len() > 1
        && key.starts_with('/')
        && !key.ends_with('/')
        && !key.contains('\0')
        && !key[1..].split('/').any(str::is_empty);
    if ok {
        Ok(())
    } else {
        Err(crate::MetadataError::InvalidKey(key.to_owned()))
    }
}

/// Checks a children listing's arguments, as every backend must: the
/// prefix is a key (or the root) and the name it starts after one component,
/// as [`check_key`] allows (not empty, no `/`, no NUL). Returns the prefix
/// without its trailing `/`.
pub fn check_children<'a>(prefix: &'a str, start_after: Option<&str>) -> Result<&'a str> {
    let trimmed = prefix.trim_end_matches('/');
    if !trimmed.is_empty() {
        check_key(trimmed)?;
    }
    if let Some(name) = start_after {
        if name.is_empty() || name.contains(['/', '\0']) {
            return Err(crate::MetadataError::InvalidKey(format!(
                "{trimmed}/{name}"
            )));
        }
    }
    Ok(trimmed)
}

/// A default session time-to-live for brokers.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_matches_whole_components() {
        assert!(under("/a/b", "/a"));
        assert!(under("/a", "/a"));
        assert!(under("/a/b", "/a/"));
        assert!(under("/anything", ""));
        assert!(!under("/ab", "/a"));
    }

    #[test]
    fn keys_are_checked() {
        for good in ["/a", "/a/b", "/a.b/c-d"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/", "a", "/a/", "//a", "/a//b", "/a\0b", "/\0", "/a/b\0",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    fn put(key: &str) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: Bytes::new(),
            expect: Expect::Any,
            session: None,
        }
    }

    #[test]
    fn transactions_are_checked() {
        let check = |key: &str| TxnOp::Check {
            key: key.into(),
            expect: Expect::Absent,
        };
        let delete = |key: &str| TxnOp::Delete {
            key: key.into(),
            expect: Expect::Any,
        };
        assert!(check_txn(&[]).is_ok());
        assert!(check_txn(&[check("/a"), check("/a"), put("/a"), delete("/b")]).is_ok());
        let many: Vec<TxnOp> = (0..MAX_TXN_OPS).map(|i| put(&format!("/k{i}"))).collect();
        assert!(check_txn(&many).is_ok());
        let too_many: Vec<TxnOp> = (0..=MAX_TXN_OPS)
            .map(|i| check(&format!("/k{i}")))
            .collect();
        assert!(matches!(
            check_txn(&too_many),
            Err(crate::MetadataError::Invalid(_))
        ));
        for twice in [[put("/a"), put("/a")], [put("/a"), delete("/a")]] {
            assert!(matches!(
                check_txn(&twice),
                Err(crate::MetadataError::Invalid(_))
            ));
        }
        assert!(matches!(
            check_txn(&[check("/a\0b")]),
            Err(crate::MetadataError::InvalidKey(_))
        ));
    }
}
