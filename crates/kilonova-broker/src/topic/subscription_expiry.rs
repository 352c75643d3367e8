//! Subscription expiration (Pulsar's `checkInactiveSubscriptions`): a
//! durable subscription with no consumer connected whose last activity — a
//! consumer subscribing or leaving — is older than the expiration time is
//! deleted. The broker's own cursors are never expired: compaction's
//! (`__compaction`), and the replicator (`pulsar.repl.*`) and deduplication
//! (`pulsar.dedup`) cursors Pulsar keeps outside its subscriptions.
//!
//! The last-active time is stored with the cursor, so idle time counts
//! across unloads and restarts; a topic checks at load and then every
//! `subscription_expiry_check_interval_secs` while loaded. A subscription
//! whose cursor has no stored time (written before Kilonova kept it) counts
//! as active when its topic loaded.

use std::time::Duration;

use super::compaction::COMPACTION_CURSOR;
use super::Topic;

/// Cursors of Pulsar's geo-replicators start with this.
const REPLICATOR_PREFIX: &str = "pulsar.repl.";
/// Pulsar's deduplication cursor.
const DEDUP_CURSOR: &str = "pulsar.dedup";

/// A subscription as the expiry check sees it.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub name: String,
    pub durable: bool,
    pub has_consumers: bool,
    /// ms since the epoch; `None`: unknown.
    pub last_active_ms: Option<u64>,
}

/// Whether the broker keeps a cursor of this name for itself.
fn is_system_cursor(name: &str) -> bool {
    name == COMPACTION_CURSOR || name == DEDUP_CURSOR || name.starts_with(REPLICATOR_PREFIX)
}

/// The subscriptions to delete at `now_ms` under `expiration`; those with
/// no known last activity count as active at `loaded_at_ms`.
pub(super) fn expired(
    candidates: &[Candidate],
    expiration: Duration,
    now_ms: u64,
    loaded_at_ms: u64,
) -> Vec<String> {
    let limit_ms = u64::try_from(expiration.as_millis()).unwrap_or(u64::MAX);
    candidates
        .iter()
        .filter(|c| c.durable && !c.has_consumers && !is_system_cursor(&c.name))
        .filter(|c| {
            let since = c.last_active_ms.unwrap_or(loaded_at_ms);
            now_ms.saturating_sub(since) > limit_ms
        })
        .map(|c| c.name.clone())
        .collect()
}

impl Topic {
    /// Deletes the durable subscriptions that expired, if an expiration applies.
    pub(super) fn expire_subscriptions(&mut self) {
        let Some(expiration) = self.policies.subscription_expiration else {
            return;
        };
        let Some(log) = self.log.as_mut() else {
            // Non-persistent subscriptions end with their last consumer.
            return;
        };
        let candidates: Vec<Candidate> = log
            .cursor_names()
            .into_iter()
            .filter_map(|name| {
                let info = log.cursor_info(&name).ok()?;
                let has_consumers = self
                    .subscriptions
                    .get(&name)
                    .is_some_and(|s| !s.consumers.is_empty());
                Some(Candidate {
                    name,
                    durable: info.durable,
                    has_consumers,
                    last_active_ms: info.last_active_ms,
                })
            })
            .collect();
        let now_ms = self.broker.clock().now_ms();
        for name in expired(&candidates, expiration, now_ms, self.loaded_at_ms) {
            match log.delete_cursor(&name) {
                Ok(()) => {
                    self.subscriptions.remove(&name);
                    self.to_dispatch.remove(&name);
                    self.broker.metrics().count_subscription_expired();
                    tracing::info!(topic = %self.full_name, subscription = %name, expiration_secs = expiration.as_secs(), "subscription deleted: expired");
                }
                Err(e) => {
                    tracing::warn!(topic = %self.full_name, subscription = %name, error = %e, "deleting an expired subscription failed")
                }
            }
        }
    }

    /// Marks a durable subscription active now (a consumer came or went).
    pub(super) fn touch_subscription(&mut self, name: &str) {
        let now_ms = self.broker.clock().now_ms();
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if log.cursor_info(name).is_ok_and(|i| i.durable) {
            if let Err(e) = log.touch_cursor(name, now_ms) {
                tracing::debug!(topic = %self.full_name, subscription = name, error = %e, "marking a subscription active failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(name: &str, has_consumers: bool, last_active_ms: Option<u64>) -> Candidate {
        Candidate {
            name: name.into(),
            durable: true,
            has_consumers,
            last_active_ms,
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn an_idle_subscription_expires_once_older_than_the_expiration() {
        let c = [sub("s", false, Some(1_000))];
        assert!(
            expired(&c, MIN, 61_000, 0).is_empty(),
            "exactly the expiration"
        );
        assert_eq!(expired(&c, MIN, 61_001, 0), ["s"]);
    }

    #[test]
    fn subscriptions_with_consumers_readers_and_the_brokers_cursors_never_expire() {
        let old = Some(0);
        let mut reader = sub("reader", false, old);
        reader.durable = false;
        let c = [
            sub("connected", true, old),
            reader,
            sub(COMPACTION_CURSOR, false, old),
            sub("pulsar.repl.east", false, old),
            sub(DEDUP_CURSOR, false, old),
            sub("idle", false, old),
        ];
        assert_eq!(expired(&c, MIN, 10 * 60_000, 0), ["idle"]);
    }

    #[test]
    fn a_subscription_without_a_stored_time_counts_from_the_load() {
        let c = [sub("s", false, None)];
        assert!(expired(&c, MIN, 100_000, 50_000).is_empty());
        assert_eq!(expired(&c, MIN, 110_001, 50_000), ["s"]);
    }
}
