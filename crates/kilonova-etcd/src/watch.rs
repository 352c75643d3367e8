//! A watch: one etcd watch stream over a prefix's key range, from a
//! revision, forwarded in order to the [`Watch`] the caller holds.
//!
//! etcd delivers a stream's events in revision order. When the stream breaks
//! (etcd restarting, a member lost), the task opens another from the revision
//! after the last one it forwarded, so nothing is lost or repeated. When etcd
//! has compacted past that revision, the events in between are gone: the
//! watcher gets [`Watched::Lagged`] and the watch goes on from the oldest
//! revision etcd still has.

use std::sync::Arc;
use std::time::Duration;

use kilonova_metadata::{Watch, WatchEvent, Watched};
use tokio::sync::mpsc;

use crate::key::Layout;
use crate::rpc::pb::watch_client::WatchClient;
use crate::rpc::pb::{self, event::EventType, watch_request};
use crate::rpc::Rpc;

/// Changes buffered per watcher; past it the stream is read no further until
/// the watcher catches up (etcd keeps the rest).
const WATCH_BUFFER: usize = 4096;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Starts watching `prefix` (and every key below it) from revision `start`,
/// until the watcher drops its [`Watch`] or the store goes (`store_gone`'s
/// sender is dropped): then the watcher's `next` gives `None`.
pub(crate) fn spawn(
    runtime: &tokio::runtime::Handle,
    store_gone: tokio::sync::watch::Receiver<()>,
    rpc: Arc<Rpc>,
    layout: Layout,
    prefix: &str,
    start: u64,
) -> Watch {
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let (from, end) = layout.subtree(prefix);
    let follower = Follower {
        rpc,
        layout,
        from,
        end,
        next: start,
        tx,
    };
    runtime.spawn(follower.run(store_gone));
    Watch::from_channel(rx)
}

/// Why a stream ended.
enum Ended {
    /// The watcher dropped its [`Watch`].
    Dropped,
    /// The stream failed or was cancelled: open another after a pause.
    Broken(String),
    /// etcd no longer has the revisions from `next` on.
    Compacted { compact_revision: u64 },
}

struct Follower {
    rpc: Arc<Rpc>,
    layout: Layout,
    from: Vec<u8>,
    end: Vec<u8>,
    /// The revision the next stream starts at: one past the last forwarded.
    next: u64,
    tx: mpsc::Sender<Watched>,
}

impl Follower {
    async fn run(mut self, mut store_gone: tokio::sync::watch::Receiver<()>) {
        let tx = self.tx.clone();
        tokio::select! {
            () = tx.closed() => {}
            // Nothing is ever sent: this returns when the store is dropped.
            _ = store_gone.changed() => {}
            () = self.follow_forever() => {}
        }
    }

    async fn follow_forever(&mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.follow(&mut backoff).await {
                Ended::Dropped => return,
                Ended::Broken(why) => {
                    tracing::debug!(revision = self.next, reason = %why, "etcd watch stream broke; reopening");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Ended::Compacted { compact_revision } => {
                    // An upper bound: the revisions skipped, not all under the prefix.
                    let missed = compact_revision.saturating_sub(self.next).max(1);
                    tracing::info!(
                        revision = self.next,
                        compact_revision,
                        "etcd compacted past a watch; the watcher must re-read"
                    );
                    if self.tx.send(Watched::Lagged { missed }).await.is_err() {
                        return;
                    }
                    self.next = compact_revision;
                }
            }
        }
    }

    /// Follows one stream until it ends.
    async fn follow(&mut self, backoff: &mut Duration) -> Ended {
        let create = pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: self.from.clone().into(),
                    range_end: self.end.clone().into(),
                    start_revision: i64::try_from(self.next).unwrap_or(i64::MAX),
                    // Progress reports while nothing under the prefix changes
                    // move `next` on, so a stream reopened after a long quiet
                    // spell does not start from a revision compacted since.
                    progress_notify: true,
                    ..pb::WatchCreateRequest::default()
                },
            )),
        };
        // The request stream ends after the create: etcd keeps the watch
        // (only the response stream matters from then on).
        let opened = self
            .rpc
            .call("watch", |ch| {
                let create = create.clone();
                async move {
                    WatchClient::new(ch)
                        .watch(tokio_stream::iter([create]))
                        .await
                }
            })
            .await;
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => return Ended::Broken(e.to_string()),
        };
        loop {
            let r = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ended::Broken("the stream ended".into()),
                Err(e) => return Ended::Broken(e.to_string()),
            };
            if let Ok(compact_revision @ 1..) = u64::try_from(r.compact_revision) {
                return Ended::Compacted { compact_revision };
            }
            if r.canceled {
                return Ended::Broken(format!("cancelled: {}", r.cancel_reason));
            }
            self.rpc.saw(r.header.as_ref());
            if r.created {
                *backoff = MIN_BACKOFF;
            } else if r.events.is_empty() {
                // A progress report: every later event of this stream is
                // above its revision (the created answer's revision is not
                // one: events from before it may still come).
                if let Some(r) = r.header.and_then(|h| u64::try_from(h.revision).ok()) {
                    self.next = self.next.max(r + 1);
                }
                continue;
            }
            for event in r.events {
                let Some(kv) = event.kv else {
                    return Ended::Broken("an event without a key".into());
                };
                let Some(key) = self.layout.decode(&kv.key) else {
                    continue; // bytes under the root that are no key of ours
                };
                let Ok(revision) = u64::try_from(kv.mod_revision) else {
                    return Ended::Broken("an event without a revision".into());
                };
                let value = (event.r#type != EventType::Delete as i32).then_some(kv.value);
                let e = WatchEvent {
                    key,
                    revision,
                    value,
                };
                if self.tx.send(Watched::Event(e)).await.is_err() {
                    return Ended::Dropped;
                }
                self.next = revision + 1;
            }
        }
    }
}
