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
//! Not with shared storage: a topic's history in the object store is kept
//! per bundle, so a split must carry it to the halves first (not built).

use std::time::Duration;

use kilonova_metadata::bundles::{self, Acquired, BundleRange};
use kilonova_metadata::NamespaceName;

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
        if self.shared_log().is_some() {
            return Err(BrokerError::Precondition(
                "bundles cannot be split with shared storage yet: a topic's history is kept per bundle".into(),
            ));
        }
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
            return Err(e.into());
        }
        let (record, session) = {
            let mut state = m.state();
            state.held.remove(&key);
            for (half, e) in &halves {
                state.held.insert((ns.clone(), *half), *e);
            }
            state.record.bundles = state.held.len() as u64;
            (state.record.clone(), state.session)
        };
        self.publish_record(m, &record, session).await;
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
