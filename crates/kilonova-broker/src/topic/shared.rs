//! A topic's side of the shared data path in a cluster
//! ([`crate::cluster::shared`]): every append goes to the object store too,
//! an append that did not reach it closes the topic (its next load rebuilds
//! it from what was committed), subscription positions are shared as they
//! change, and a handover first settles what is in flight.

use bytes::Bytes;
use kilonova_objstore::wal::WalAppend;
use kilonova_storage::{Completion, Entry, Position, StorageError};

use super::{AdminRequest, Topic, TopicCommand};

impl Topic {
    /// Appends an entry to the local log and, with shared storage, queues
    /// it for the object store. `Err` only if the local append failed; the
    /// shared part's own failure is in the second value (`Err(why)`).
    pub(super) async fn append_entry(
        &mut self,
        data: Bytes,
        message_count: u32,
        publish_time_ms: u64,
    ) -> Result<(Completion<Position>, Option<Result<WalAppend, String>>), StorageError> {
        let Some(log) = self.log.as_mut() else {
            return Err(StorageError::Log(
                "a non-persistent topic has no log".into(),
            ));
        };
        let message_index = log.next_message_index();
        let local = log
            .append(data.clone(), message_count, publish_time_ms)
            .await?;
        let shared = match self.shared.as_mut() {
            Some(s) => {
                let stored =
                    Entry::encode_stored(publish_time_ms, message_index, message_count, &data);
                Some(s.append(stored).await.map_err(|e| e.to_string()))
            }
            None => None,
        };
        Ok((local, shared))
    }

    /// An append did not reach shared storage (or was not committed): the
    /// local log now holds what the shared copy does not. The topic is
    /// fenced (producers closed, what is in flight answered with errors)
    /// and unloaded; its next load rebuilds it from what was committed.
    pub(super) fn shared_append_failed(&mut self, why: &str) {
        if self.shared_failed {
            return;
        }
        self.shared_failed = true;
        tracing::warn!(topic = %self.full_name, error = why, "an append did not reach shared storage: the topic closes and reloads from what was committed");
        self.fence();
        self.unload_soon();
    }

    /// Asks the topic's own task to unload (clients reconnect; the next
    /// load rebuilds it from the shared state).
    pub(super) fn unload_soon(&self) {
        let (broker, name) = (self.broker.clone(), self.full_name.clone());
        tokio::spawn(async move {
            let Some(handle) = broker.loaded_handle(&name) else {
                return;
            };
            let (reply, _) = tokio::sync::oneshot::channel();
            let _ = handle
                .send(TopicCommand::Admin {
                    request: AdminRequest::Unload,
                    reply,
                })
                .await;
        });
    }

    /// Hands the subscription positions to the shared path's writer (it
    /// writes them if they changed).
    pub(super) fn share_cursors(&mut self) {
        if let (Some(shared), Some(log)) = (self.shared.as_mut(), self.log.as_ref()) {
            shared.share_cursors(log);
            self.cursors_shared_at = self.broker.clock().now();
        }
    }

    /// [`Topic::share_cursors`] if `cursor_persist_interval_ms` passed since
    /// the last time.
    pub(super) fn share_cursors_if_due(&mut self) {
        if self.shared.is_none() {
            return;
        }
        let every =
            std::time::Duration::from_millis(self.broker.config().cursor_persist_interval_ms);
        let now = self.broker.clock().now();
        if now.saturating_duration_since(self.cursors_shared_at) >= every {
            self.share_cursors();
        }
    }

    /// Before the topic's bundle changes hands: stops taking appends (SENDs
    /// from now on are left unanswered; their producers resend them to the
    /// next owner after the close), waits for the appends in flight to be
    /// answered, and stores the subscription positions — all while this
    /// broker still owns the bundle, so that the next owner finds them.
    pub(super) async fn prepare_handover(&mut self) {
        self.handing_over = true;
        self.stop_lane();
        self.drain_appends().await;
        if let (Some(shared), Some(log)) = (self.shared.as_mut(), self.log.as_ref()) {
            shared.store_cursors_now(&self.broker, log).await;
        }
    }

    /// The topic closes: its last positions (as last shared) are written.
    pub(super) async fn finish_shared(&mut self) {
        self.share_cursors();
        if let Some(shared) = self.shared.take() {
            shared.finish().await;
        }
    }

    /// Points each of the log's segments left in the object store at the
    /// run of `base` (the topic's part of its bundle's new base) that holds
    /// its entries now; those before the base's first kept entry (every
    /// subscription acknowledged them and retention let them go) leave the
    /// log, as their objects are about to.
    pub(super) fn move_shared_runs(
        &mut self,
        base: &kilonova_metadata::wal_index::BaseTopic,
    ) -> Result<(), crate::error::BrokerError> {
        let (Some(log), Some(shared)) = (self.log.as_mut(), self.shared.as_ref()) else {
            return Ok(());
        };
        let left: Vec<(kilonova_storage::SegmentId, u64)> = log
            .segments()
            .iter()
            .filter_map(|s| {
                let o = log.offloaded(s.id).filter(|o| !o.is_own_object())?;
                Some((s.id, o.entries))
            })
            .collect();
        for (segment, entries) in left {
            let Some(first) = shared.entry_of(Position::new(segment, 0)) else {
                continue;
            };
            if first + entries <= base.first_index {
                log.drop_leading_shared(segment)?;
                continue;
            }
            let Some(run) = base
                .runs
                .iter()
                .find(|r| r.first_index <= first && first + entries <= r.end_index())
            else {
                continue;
            };
            let place = u32::try_from(first - run.first_index)
                .ok()
                .and_then(|d| run.first_position.checked_add(d));
            let Some(place) = place else {
                continue;
            };
            log.move_shared(segment, run.object.clone(), place)?;
        }
        Ok(())
    }
}
