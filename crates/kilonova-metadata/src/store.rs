//! The `MetadataStore` trait: what every metadata backend provides, and the
//! types of its calls.
//!
//! Keys are `/`-separated paths (`/tenants/public`). A key may hold a value and
//! have keys below it at the same time. Every change gets the next value of one
//! store-wide revision counter; a key's version is the revision of its last
//! change (as etcd's `mod_revision`), so versions only grow, also across a
//! delete and re-create. The behaviour is pinned down by the conformance suite
//! (`crate::conformance`), which every backend must pass.

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
    /// The revision of the change; events arrive in increasing revision order.
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
    /// Returns once the write is durable.
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        session: Option<SessionId>,
    ) -> Result<u64>;

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
}

/// Checks a key's form: starts with `/`, no empty components, no trailing `/`.
pub fn check_key(key: &str) -> Result<()> {
    let ok = key.len() > 1
        && key.starts_with('/')
        && !key.ends_with('/')
        && !key[1..].split('/').any(str::is_empty);
    if ok {
        Ok(())
    } else {
        Err(crate::MetadataError::InvalidKey(key.to_owned()))
    }
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
        for bad in ["", "/", "a", "/a/", "//a", "/a//b"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
