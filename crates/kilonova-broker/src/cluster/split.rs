//! Bundle splits: one bundle of a namespace cut in two at its middle hash
//! (Pulsar's `range_equally_divide`), by `kilonova admin namespaces
//! split-bundle` or by the load manager's leader when a bundle exceeds its
//! thresholds ([`super::shedding::split_reason`]).
//!
//! In a cluster the split runs on the bundle's owner, which keeps both
//! halves: it takes the halves' ownership first, then changes the
//! namespace's boundaries (one conditional write), then gives the whole
//! bundle's ownership up a little later — a lookup that read the old
//! boundaries just before the change still finds this broker as the
//! owner. Clients notice nothing: their topics stay loaded here. With
//! `unload`, both halves are then unloaded (handed to the least loaded
//! other brokers), as Pulsar's `unload=true`.
//!
//! With shared storage a topic's history in the object store is kept per
//! bundle, so the split first carries it to the halves: the bundle's topics
//! settle (as before an unload), its history is compacted until its base
//! holds everything, and the base is cut in two by topic hash, each half's
//! base naming the same objects (a compaction deletes an object only once
//! no other base of the namespace names it). Then the topics are closed
//! and load again, on this broker, from their half's history: their
//! clients reconnect (an unload's gap), where without shared storage they
//! notice nothing.

use std::time::Duration;

use kilonova_metadata::bundles::{self, Acquired, BundleRange, Commit, Held};
use kilonova_metadata::NamespaceName;

use super::{BundleKey, Membership};
use crate::broker::Broker;
use crate::error::BrokerError;

/// How long the split bundle's ownership outlives the split (lookups that
/// read the old boundaries still find its owner).
const RETIRE_AFTER: Duration = Duration::from_secs(2);

impl Broker {
    /// Splits bundle `range` of `ns` here, where it is owned (a standalone
    /// broker owns everything; in a cluster an unowned bundle is taken
    /// first). Returns the halves.
    pub async fn split_bundle(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
        unload: bool,
    ) -> Result<(BundleRange, BundleRange), BrokerError> {
        let policies = self.namespace_policies(ns).await?;
        let (lo, hi) = bundles::split(&mut policies.bundles.clone(), range, None)?;
        let Some(m) = self.membership() else {
            self.resources()
                .update_namespace(ns, |p| {
                    bundles::split(&mut p.bundles, range, None).map(drop)
                })
                .await?;
            tracing::info!(bundle = %format!("{ns}/{range}"), halves = %format!("{lo}, {hi}"), "bundle split");
            self.inner_load().metrics.count_split();
            return Ok((lo, hi));
        };
        let key = (ns.clone(), range);
        let mut epoch = m.owned_epoch(&key);
        if epoch.is_none() {
            if let Acquired::Owned { epoch: e } = self.acquire(&key).await? {
                epoch = Some(e);
            }
        }
        let Some(epoch) = epoch else {
            return Err(BrokerError::Unavailable(format!(
                "bundle {ns}/{range} is owned by another broker: split it there"
            )));
        };
        let shared = self.shared_log().is_some();
        if shared {
            {
                let mut state = m.state();
                state.held.remove(&key);
                state.releasing.insert(key.clone(), epoch);
            }
            self.prepare_bundle_handover(&key).await;
            if let Err(e) = self.carry_history(&key, epoch, [lo, hi]).await {
                self.abandon_split(m, &key, epoch).await;
                return Err(e);
            }
        }
        let session = m.session();
        let mut halves = Vec::with_capacity(2);
        for half in [lo, hi] {
            match self
                .resources()
                .acquire_bundle(ns, half, &m.owner, session)
                .await
            {
                Ok(Acquired::Owned { epoch }) => halves.push((half, epoch)),
                other => {
                    self.release_halves(ns, &halves).await;
                    if shared {
                        self.abandon_split(m, &key, epoch).await;
                    }
                    return Err(match other {
                        Err(e) => e.into(),
                        _ => BrokerError::Conflict(format!(
                            "{ns}/{half} is owned already: a split of {range} is under way"
                        )),
                    });
                }
            }
        }
        if let Err(e) = self
            .resources()
            .update_namespace(ns, |p| {
                bundles::split(&mut p.bundles, range, None).map(drop)
            })
            .await
        {
            self.release_halves(ns, &halves).await;
            if shared {
                self.abandon_split(m, &key, epoch).await;
            }
            return Err(e.into());
        }
        let (record, session) = {
            let mut state = m.state();
            state.held.remove(&key);
            state.releasing.remove(&key);
            for (half, e) in &halves {
                state.held.insert((ns.clone(), *half), *e);
            }
            state.record.bundles = state.held.len() as u64;
            (state.record.clone(), state.session)
        };
        self.publish_record(m, &record, session).await;
        if shared {
            // The topics load again from their half's history.
            self.close_bundle_topics(&key, None).await;
            let held = Held {
                ns: ns.clone(),
                range,
                epoch,
            };
            if let Err(e) = self.resources().delete_flush_base(&held).await {
                tracing::warn!(error = %e, "deleting a split bundle's base failed (its halves have theirs)");
            }
        }
        self.inner_load().metrics.count_split();
        tracing::info!(bundle = %format!("{ns}/{range}"), halves = %format!("{lo}, {hi}"), unload, "bundle split");
        let (resources, id, retired) = (self.resources().clone(), m.id.clone(), ns.clone());
        tokio::spawn(async move {
            tokio::time::sleep(RETIRE_AFTER).await;
            if let Err(e) = resources.release_bundle(&retired, range, &id, epoch).await {
                tracing::debug!(error = %e, "releasing a split bundle failed (it frees with the session)");
            }
        });
        if unload {
            for half in [lo, hi] {
                self.unload_bundle(ns, half).await?;
            }
        }
        Ok((lo, hi))
    }

    /// Carries the history of bundle `key` (held here at `epoch`, its
    /// topics settled) to `halves`: compacted until its base holds all of
    /// it, the base cut in two and written as the halves' bases.
    async fn carry_history(
        &self,
        key: &BundleKey,
        epoch: u64,
        halves: [BundleRange; 2],
    ) -> Result<(), BrokerError> {
        while self.compact_bundle(key, epoch, 1).await?.is_some() {}
        let held = Held {
            ns: key.0.clone(),
            range: key.1,
            epoch,
        };
        let Some((base, _)) = self.resources().flush_base(&key.0, key.1).await? else {
            return Ok(()); // nothing was ever written to it
        };
        let [a, b] = base.split(&key.0, halves)?;
        match self
            .resources()
            .put_split_bases(&held, &[(halves[0], a), (halves[1], b)])
            .await?
        {
            Commit::Committed { .. } => Ok(()),
            Commit::Deposed { .. } => Err(BrokerError::Unavailable(format!(
                "bundle {}/{} changed hands during its split",
                key.0, key.1
            ))),
        }
    }

    /// A split that failed after its topics settled: the bundle is unloaded
    /// instead (topics closed, ownership released) — its history is whole,
    /// and the next owner loads it.
    async fn abandon_split(&self, m: &Membership, key: &BundleKey, epoch: u64) {
        self.close_bundle_topics(key, None).await;
        if let Err(e) = self
            .resources()
            .release_bundle(&key.0, key.1, &m.id, epoch)
            .await
        {
            tracing::debug!(error = %e, "releasing a bundle after a failed split (it frees with the session)");
        }
        let (record, session) = {
            let mut state = m.state();
            state.releasing.remove(key);
            state.record.bundles = state.held.len() as u64;
            (state.record.clone(), state.session)
        };
        self.publish_record(m, &record, session).await;
    }

    async fn release_halves(&self, ns: &NamespaceName, halves: &[(BundleRange, u64)]) {
        let Some(m) = self.membership() else {
            return;
        };
        for (half, epoch) in halves {
            if let Err(e) = self
                .resources()
                .release_bundle(ns, *half, &m.id, *epoch)
                .await
            {
                tracing::debug!(error = %e, "releasing half of a failed split (it frees with the session)");
            }
        }
    }

    /// Splits bundle `range` of `ns` on its owner: here, or through the
    /// owner's admin API as the caller (`authorization`).
    pub async fn split_bundle_anywhere(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
        unload: bool,
        authorization: Option<&str>,
    ) -> Result<(), BrokerError> {
        let Some(m) = self.membership() else {
            return self.split_bundle(ns, range, unload).await.map(drop);
        };
        match self.resources().bundle_owner(ns, range).await? {
            Some(o) if o.broker != m.id => {
                let base = Some(o.http_url.clone())
                    .filter(|u| !u.is_empty())
                    .or(o.http_url_tls.clone())
                    .ok_or_else(|| {
                        BrokerError::Unavailable(format!(
                            "{} owns {ns}/{range} but advertises no admin URL",
                            o.broker
                        ))
                    })?;
                let url = format!(
                    "{}/admin/v2/namespaces/{}/{}/{range}/split?unload={unload}",
                    base.trim_end_matches('/'),
                    ns.tenant,
                    ns.namespace
                );
                self.forward_admin("PUT", &url, authorization, None)
                    .await
                    .map(drop)
            }
            _ => self.split_bundle(ns, range, unload).await.map(drop),
        }
    }
}
