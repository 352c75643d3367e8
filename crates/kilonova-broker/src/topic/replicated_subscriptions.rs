//! Replicated subscriptions (Pulsar's `replicateSubscriptionState`): a
//! subscription marked replicated keeps its position in step with its
//! namesakes in the other replication clusters, so a consumer that fails
//! over to another cluster resumes near where it left off.
//!
//! Clusters share no clock and no store, so positions are matched through
//! markers that travel with the replicated entries (Pulsar's protocol):
//!
//! 1. A topic with a replicated subscription and new messages since its last
//!    snapshot writes a *snapshot request* for every remote cluster (at most
//!    every `replicated_subscriptions_snapshot_frequency_millis`, one at a
//!    time).
//! 2. A cluster that receives a request answers with a *response* sent back
//!    to the asking cluster only: its cluster name and the position where
//!    the request landed in its copy. Everything that cluster had before
//!    that position is replicated ahead of the response.
//! 3. With every answer in (two rounds with more than one remote cluster,
//!    so that what the others exchanged meanwhile has arrived too), the
//!    asking topic writes a *snapshot* marker, kept local: "local position
//!    L (where the last answer landed) corresponds to these positions".
//! 4. A replicated subscription's dispatcher keeps the snapshots it reads
//!    ([`crate::subscription`]); once its mark-delete position passes a
//!    snapshot's L, the topic writes an *update* for the other clusters:
//!    the subscription's name and the position each of them may move to.
//! 5. A cluster that receives an update moves its copy of the subscription
//!    there (never back), creating it, marked replicated, if it has none.
//!
//! Markers are never delivered to consumers. Only markers that arrived from
//! another cluster's replicator are acted on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

use kilonova_pulsar_protocol::markers::{self, cluster_position, Marker};
use kilonova_pulsar_protocol::proto::{
    ClusterMessageId, MarkersMessageIdData, ReplicatedSubscriptionsSnapshot,
    ReplicatedSubscriptionsSnapshotRequest, ReplicatedSubscriptionsSnapshotResponse,
    ReplicatedSubscriptionsUpdate,
};
use kilonova_storage::{Completion, InitialPosition, Position, StorageError};

use super::Topic;
use crate::metrics::SnapshotStep;

/// A topic's replicated-subscription bookkeeping.
#[derive(Default)]
pub(super) struct ReplicatedSubscriptions {
    /// The snapshot this topic asked for, waiting for answers.
    pending: Option<PendingSnapshot>,
    /// When the last snapshot started (the next waits for the frequency).
    last_started: Option<Instant>,
    /// When the last completed snapshot started (ms): a new one is taken
    /// only if a message arrived since.
    last_completed_start_ms: u64,
    /// When the last message (not a marker) was stored (ms).
    last_data_ms: u64,
    /// Snapshots started by this load of the topic (their ids' suffix).
    started: u64,
    /// Markers that arrived from other clusters, stored, to act on.
    received: Vec<(Position, Marker)>,
    /// Markers this topic wrote, until durable.
    writing: FuturesUnordered<Completion<Position>>,
}

struct PendingSnapshot {
    id: String,
    started: Instant,
    started_ms: u64,
    remotes: BTreeSet<String>,
    missing: BTreeSet<String>,
    /// Each cluster's first answer.
    answers: BTreeMap<String, MarkersMessageIdData>,
    /// With more than one remote cluster the request goes twice.
    second_round: bool,
}

impl ReplicatedSubscriptions {
    /// A message (not a marker) was stored at `now_ms`.
    pub(super) fn data_stored(&mut self, now_ms: u64) {
        self.last_data_ms = now_ms;
    }

    /// A marker from another cluster was stored at `p`: acted on by
    /// [`Topic::act_on_received_markers`].
    pub(super) fn received(&mut self, p: Position, marker: Marker) {
        self.received.push((p, marker));
    }

    /// The next of this topic's markers to become durable (pending while
    /// none is being written).
    pub(super) async fn next_written(&mut self) -> Result<Position, StorageError> {
        match self.writing.next().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    pub(super) fn writing(&self) -> bool {
        !self.writing.is_empty()
    }
}

impl Topic {
    /// Writes one of this topic's markers, for `replicate_to` (the local
    /// cluster alone keeps it here).
    async fn write_marker(&mut self, marker: Marker, replicate_to: Vec<String>) {
        if self.log.is_none() {
            return;
        }
        let now_ms = self.broker.clock().now_ms();
        let data = markers::build(&marker, now_ms, replicate_to);
        // In shared storage too (so message indexes stay those of the
        // shared copy); a failure there shows on the next publish.
        match self.append_entry(data, 1, now_ms).await {
            Ok((done, _)) => self.repl_subs.writing.push(done),
            Err(e) => {
                tracing::warn!(topic = %self.full_name, error = %e, "writing a replicated-subscription marker failed")
            }
        }
    }

    /// Every housekeeping tick: gives up a snapshot that took too long,
    /// starts a new one when due, and sends updates for replicated
    /// subscriptions whose position passed a snapshot.
    pub(super) async fn replicated_subscriptions_tick(&mut self) {
        let config = self.broker.config();
        if !config.enable_replicated_subscriptions || self.log.is_none() {
            return;
        }
        let timeout = Duration::from_secs(config.replicated_subscriptions_snapshot_timeout_seconds);
        let every =
            Duration::from_millis(config.replicated_subscriptions_snapshot_frequency_millis);
        let now = self.broker.clock().now();
        if self
            .repl_subs
            .pending
            .as_ref()
            .is_some_and(|p| now.saturating_duration_since(p.started) >= timeout)
        {
            if let Some(p) = self.repl_subs.pending.take() {
                tracing::debug!(topic = %self.full_name, snapshot = %p.id, missing = ?p.missing, "replicated-subscription snapshot timed out");
            }
            self.broker.metrics().count_snapshot(SnapshotStep::TimedOut);
        }
        self.send_subscription_updates().await;
        let due = self
            .repl_subs
            .last_started
            .is_none_or(|t| now.saturating_duration_since(t) >= every);
        if due
            && self.repl_subs.pending.is_none()
            && self.repl_subs.last_data_ms >= self.repl_subs.last_completed_start_ms
            && self.repl_subs.last_data_ms > 0
            && self.has_replicated_subscription()
            && self.remotes_reachable()
        {
            self.start_snapshot(now).await;
        }
    }

    /// Whether a subscription of this topic is replicated.
    fn has_replicated_subscription(&self) -> bool {
        let Some(log) = self.log.as_ref() else {
            return false;
        };
        !self.replicators.is_empty() && log.any_cursor_replicated()
    }

    /// No remote cluster is known to be down (a replicator not connected
    /// with entries waiting): a snapshot could not complete (Pulsar waits
    /// for every replicator to be connected; ours connect when there is
    /// something to send, so an idle one counts as reachable).
    fn remotes_reachable(&self) -> bool {
        let stats = self.replication_stats();
        self.replicators.keys().all(|c| {
            stats
                .get(c)
                .is_none_or(|s| s.connected || s.replication_backlog == 0)
        })
    }

    async fn start_snapshot(&mut self, now: Instant) {
        let local = self.broker.config().cluster_name.clone();
        let remotes: BTreeSet<String> = self.replicators.keys().cloned().collect();
        self.repl_subs.started += 1;
        let id = format!("{local}-{}-{}", self.loaded_at_ms, self.repl_subs.started);
        self.repl_subs.last_started = Some(now);
        self.repl_subs.pending = Some(PendingSnapshot {
            id: id.clone(),
            started: now,
            started_ms: self.broker.clock().now_ms(),
            missing: remotes.clone(),
            remotes: remotes.clone(),
            answers: BTreeMap::new(),
            second_round: false,
        });
        self.broker.metrics().count_snapshot(SnapshotStep::Started);
        tracing::debug!(topic = %self.full_name, snapshot = %id, "replicated-subscription snapshot started");
        self.write_request(id, remotes).await;
    }

    async fn write_request(&mut self, id: String, remotes: BTreeSet<String>) {
        let request = ReplicatedSubscriptionsSnapshotRequest {
            snapshot_id: id,
            source_cluster: Some(self.broker.config().cluster_name.clone()),
        };
        self.write_marker(
            Marker::SnapshotRequest(request),
            remotes.into_iter().collect(),
        )
        .await;
    }

    /// Replicated subscriptions whose mark-delete position passed a
    /// snapshot: an update for the clusters the snapshot names.
    async fn send_subscription_updates(&mut self) {
        let Some(log) = self.log.as_ref() else {
            return;
        };
        let mut updates = Vec::new();
        for (name, sub) in self.subscriptions.iter_mut().filter(|(_, s)| s.replicated) {
            let Some(mark_delete) = log.cursor_info(name).ok().and_then(|i| i.mark_delete) else {
                continue;
            };
            if let Some(snapshot) = sub.snapshots.passed(mark_delete) {
                updates.push((name.clone(), snapshot));
            }
        }
        for (name, snapshot) in updates {
            let clusters: Vec<String> = snapshot
                .clusters
                .iter()
                .map(|c| c.cluster.clone())
                .collect();
            tracing::debug!(topic = %self.full_name, subscription = %name, snapshot = %snapshot.snapshot_id, "replicated subscription moved past a snapshot");
            let update = ReplicatedSubscriptionsUpdate {
                subscription_name: name,
                clusters: snapshot.clusters,
            };
            self.write_marker(Marker::Update(update), clusters).await;
        }
    }

    /// Acts on the markers other clusters' replicators stored here.
    pub(super) async fn act_on_received_markers(&mut self) {
        if self.repl_subs.received.is_empty() {
            return;
        }
        let received = std::mem::take(&mut self.repl_subs.received);
        if !self.broker.config().enable_replicated_subscriptions {
            return;
        }
        for (p, marker) in received {
            match marker {
                Marker::SnapshotRequest(r) => self.answer_snapshot_request(p, r).await,
                Marker::SnapshotResponse(r) => self.snapshot_answered(p, r).await,
                Marker::Update(u) => self.subscription_updated(u),
                Marker::Snapshot(_) => {} // never sent between clusters
            }
        }
    }

    /// Another cluster asks where its request landed here: the answer goes
    /// back to it alone.
    async fn answer_snapshot_request(
        &mut self,
        p: Position,
        r: ReplicatedSubscriptionsSnapshotRequest,
    ) {
        let Some(source) = r
            .source_cluster
            .filter(|c| self.replicators.contains_key(c))
        else {
            return; // no replicator could carry the answer
        };
        let local = self.broker.config().cluster_name.clone();
        let response = ReplicatedSubscriptionsSnapshotResponse {
            snapshot_id: r.snapshot_id,
            cluster: Some(cluster_position(&local, p.segment, p.entry)),
        };
        self.write_marker(Marker::SnapshotResponse(response), vec![source])
            .await;
    }

    /// An answer to this topic's snapshot landed at `p`.
    async fn snapshot_answered(&mut self, p: Position, r: ReplicatedSubscriptionsSnapshotResponse) {
        let Some(ClusterMessageId {
            cluster,
            message_id,
        }) = r.cluster
        else {
            return;
        };
        let Some(pending) = self
            .repl_subs
            .pending
            .as_mut()
            .filter(|s| s.id == r.snapshot_id)
        else {
            return; // late: given up already
        };
        pending.answers.entry(cluster.clone()).or_insert(message_id);
        pending.missing.remove(&cluster);
        if !pending.missing.is_empty() {
            return;
        }
        if pending.remotes.len() > 1 && !pending.second_round {
            pending.second_round = true;
            pending.missing = pending.remotes.clone();
            let (id, remotes) = (pending.id.clone(), pending.remotes.clone());
            return self.write_request(id, remotes).await;
        }
        let Some(done) = self.repl_subs.pending.take() else {
            return;
        };
        self.repl_subs.last_completed_start_ms = done.started_ms;
        self.broker
            .metrics()
            .count_snapshot(SnapshotStep::Completed);
        let snapshot = ReplicatedSubscriptionsSnapshot {
            snapshot_id: done.id,
            local_message_id: Some(MarkersMessageIdData {
                ledger_id: p.segment,
                entry_id: p.entry,
            }),
            clusters: done
                .answers
                .into_iter()
                .map(|(c, id)| ClusterMessageId {
                    cluster: c,
                    message_id: id,
                })
                .collect(),
        };
        let local = self.broker.config().cluster_name.clone();
        self.write_marker(Marker::Snapshot(snapshot), vec![local])
            .await;
    }

    /// Another cluster's copy of a replicated subscription moved: this
    /// cluster's moves to the position named for it (never back), or is
    /// created there, marked replicated.
    fn subscription_updated(&mut self, u: ReplicatedSubscriptionsUpdate) {
        let local = &self.broker.config().cluster_name;
        let Some(to) = u
            .clusters
            .iter()
            .find(|c| &c.cluster == local)
            .map(|c| Position::new(c.message_id.ledger_id, c.message_id.entry_id))
        else {
            return;
        };
        let name = u.subscription_name;
        if replication_cursor(&name) {
            return;
        }
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let moved = if !log.has_cursor(&name) {
            let start = InitialPosition::At(Position::new(to.segment, to.entry.saturating_add(1)));
            log.open_cursor(&name, start, true)
                .and_then(|()| log.set_cursor_replicated(&name, true))
                .map(|()| tracing::info!(topic = %self.full_name, subscription = %name, position = %to, "replicated subscription created by another cluster's update"))
        } else {
            match self.subscriptions.get_mut(&name) {
                Some(sub) => sub.ack_cumulative(log, to),
                None => log.ack_cumulative(&name, to),
            }
        };
        match moved {
            Ok(()) => self.broker.metrics().count_subscription_update(),
            Err(e) => {
                tracing::warn!(topic = %self.full_name, subscription = %name, error = %e, "applying a replicated-subscription update failed")
            }
        }
    }
}

/// Names no update may touch: replicator cursors.
fn replication_cursor(name: &str) -> bool {
    !super::replication::is_subscription(name)
}
