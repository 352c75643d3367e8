//! Cluster mode: this broker as one of many sharing a metadata store.
//!
//! A broker of a cluster registers itself ([`BrokerRecord`], an ephemeral
//! key of its metadata session) and serves only the topics of the bundles
//! it owns ([`kilonova_metadata::bundles`]): it takes a bundle when a lookup
//! places it here ([`lookup`]) or a client or admin request reaches a
//! topic of a bundle nobody owns, and gives it up when unloaded
//! ([`unload`]) or when its session is lost ([`session`]), closing the
//! bundle's topics so that their clients look them up again.
//!
//! A standalone broker has no membership and serves every topic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kilonova_metadata::brokers::BrokerRecord;
use kilonova_metadata::bundles::{Acquired, BundleOwner, BundleRange};
use kilonova_metadata::names::TopicName;
use kilonova_metadata::{NamespaceName, SessionId};

use crate::broker::Broker;
use crate::error::BrokerError;

pub(crate) mod history;
pub mod load_manager;
pub mod lookup;
pub(crate) mod message_ids;
mod session;
pub(crate) mod shared;
pub mod shedding;
mod split;
pub mod unload;

pub use lookup::LookupAnswer;

/// Segment ids a broker start may use: each start of a cluster broker
/// creates segments from its incarnation times this on.
const SEGMENT_IDS_PER_INCARNATION: u64 = 1 << 40;

/// A bundle: its namespace and hash range.
pub type BundleKey = (NamespaceName, BundleRange);

/// This broker's part in a cluster.
pub(crate) struct Membership {
    /// Its id: `host:port` of its HTTP service.
    pub(crate) id: String,
    cluster: String,
    /// What its ownership keys hold.
    owner: BundleOwner,
    ttl: Duration,
    state: Mutex<MemberState>,
    /// When the session may have expired in the store, at the latest, in
    /// ms after `epoch`: the last renewal's *sending* plus the ttl (the
    /// store counts from its receipt, later). Past it, this broker may no
    /// longer own anything: it acknowledges no publish.
    lease_deadline_ms: AtomicU64,
    epoch: Instant,
}

/// What changes while the broker runs.
struct MemberState {
    session: SessionId,
    /// Its registration, as last written.
    record: BrokerRecord,
    /// Bundles owned, with their ownership's epoch.
    held: HashMap<BundleKey, u64>,
    /// Bundles being given up, with the epoch they were held at: their
    /// topics are closing, loads are refused.
    releasing: HashMap<BundleKey, u64>,
}

impl Membership {
    fn state(&self) -> std::sync::MutexGuard<'_, MemberState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn session(&self) -> SessionId {
        self.state().session
    }

    /// The session was renewed (or opened) by a request sent at `sent`.
    fn renewed(&self, sent: Instant) {
        let deadline = sent.saturating_duration_since(self.epoch) + self.ttl;
        self.lease_deadline_ms
            .store(deadline.as_millis() as u64, Ordering::Release);
    }

    /// Whether the session may have expired by now.
    fn lapsed(&self) -> bool {
        self.epoch.elapsed().as_millis() as u64 >= self.lease_deadline_ms.load(Ordering::Acquire)
    }

    /// The epoch bundle `key` is owned at here: held, or being given up
    /// (its topics settle under it before it changes hands; the store
    /// checks the epoch still holds).
    pub(crate) fn owned_epoch(&self, key: &BundleKey) -> Option<u64> {
        let state = self.state();
        state
            .held
            .get(key)
            .or_else(|| state.releasing.get(key))
            .copied()
    }

    /// The bundles owned now.
    pub(crate) fn held(&self) -> Vec<(BundleKey, u64)> {
        let mut held: Vec<_> = self
            .state()
            .held
            .iter()
            .map(|(k, e)| (k.clone(), *e))
            .collect();
        held.sort();
        held
    }
}

/// Settings of a cluster broker.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// This broker's id (`host:port` of its HTTP service).
    pub broker_id: String,
    /// How long the metadata session outlives the broker's last keep-alive:
    /// after a crash, its bundles are free after this long.
    pub session_ttl: Duration,
}

impl Broker {
    /// Joins the cluster the metadata store holds: opens a session, ends a
    /// predecessor's (this broker restarted before its old session
    /// expired: the bundles that session owned are free at once), and
    /// registers. Then keeps the session alive until [`Broker::leave_cluster`]
    /// ([`session`]).
    pub async fn join_cluster(&self, settings: ClusterSettings) -> Result<(), BrokerError> {
        let resources = self.resources();
        let cluster = self.config().cluster_name.clone();
        // Segments this broker creates from now on have ids no other
        // broker's (or earlier start's) have: a message id handed out
        // elsewhere never names an entry here (topics move between brokers).
        let incarnation = resources.next_broker_incarnation().await?;
        self.segment_store()
            .raise_segment_ids(incarnation.saturating_mul(SEGMENT_IDS_PER_INCARNATION));
        let opened = Instant::now();
        let session = resources.store().open_session(settings.session_ttl).await?;
        if let Some(old) = resources.broker(&cluster, &settings.broker_id).await? {
            if old.session != session.0 && old.session != 0 {
                tracing::info!(
                    session = old.session,
                    "ending this broker's previous session (its bundles are free)"
                );
                if let Err(e) = resources
                    .store()
                    .close_session(SessionId(old.session))
                    .await
                {
                    tracing::debug!(error = %e, "the previous session was gone already");
                }
            }
        }
        let urls = self.service_urls();
        let record = BrokerRecord {
            pulsar_url: urls.plain.clone(),
            pulsar_url_tls: urls.tls.clone(),
            http_url: urls.http.clone(),
            https_url: urls.https.clone(),
            listeners: urls.listeners.table(),
            internal_listener: urls.listeners.internal().map(|(n, _)| n.to_owned()),
            session: session.0,
            bundles: 0,
            kafka: urls.kafka.clone(),
            kafka_tls: urls.kafka_tls.clone(),
        };
        resources
            .register_broker(&cluster, &settings.broker_id, &record, session)
            .await?;
        let owner = lookup::bundle_owner(&settings.broker_id, &record)?;
        let membership = Membership {
            id: settings.broker_id,
            cluster,
            owner,
            ttl: settings.session_ttl,
            state: Mutex::new(MemberState {
                session,
                record,
                held: HashMap::new(),
                releasing: HashMap::new(),
            }),
            lease_deadline_ms: AtomicU64::new(0),
            epoch: opened,
        };
        membership.renewed(opened);
        self.set_membership(membership)?;
        tokio::spawn(session::keep_alive(self.clone()));
        tracing::info!(
            broker = %self.membership().map_or("", |m| m.id.as_str()),
            session = session.0,
            ttl_ms = settings.session_ttl.as_millis() as u64,
            "joined the cluster"
        );
        Ok(())
    }

    /// Stops being placed on: deletes this broker's registration, so that
    /// lookups no longer choose it for unowned bundles while it shuts down.
    /// Before [`Broker::shutdown`].
    pub async fn withdraw_from_cluster(&self) {
        let Some(m) = self.membership() else {
            return;
        };
        if let Err(e) = self.resources().deregister_broker(&m.cluster, &m.id).await {
            tracing::warn!(error = %e, "withdrawing this broker's registration failed");
        }
    }

    /// Leaves the cluster: gives up every bundle and ends the session (its
    /// registration goes with it). After [`Broker::shutdown`].
    pub async fn leave_cluster(&self) {
        let Some(m) = self.membership() else {
            return;
        };
        for ((ns, range), epoch) in m.held() {
            if let Err(e) = self
                .resources()
                .release_bundle(&ns, range, &m.id, epoch)
                .await
            {
                tracing::warn!(bundle = %format!("{ns}/{range}"), error = %e, "releasing a bundle failed (it frees when the session ends)");
            }
        }
        if let Err(e) = self.resources().store().close_session(m.session()).await {
            tracing::warn!(error = %e, "ending the metadata session failed (it expires after its ttl)");
        }
    }

    /// Whether this broker may have lost its session (and so its bundles)
    /// without having noticed yet: it then acknowledges nothing. Never in
    /// standalone.
    pub(crate) fn ownership_lapsed(&self) -> bool {
        self.membership().is_some_and(Membership::lapsed)
    }

    /// The namespace bundle `name` belongs to.
    pub async fn bundle_of(&self, name: &TopicName) -> Result<BundleKey, BrokerError> {
        let ns = name.namespace();
        let policies = self.namespace_policies(&ns).await?;
        let range = kilonova_metadata::bundles::bundle_of(&policies.bundles, name)?;
        Ok((ns, range))
    }

    /// The stored policies of `ns` (its bundles among them).
    pub(crate) async fn namespace_policies(
        &self,
        ns: &NamespaceName,
    ) -> Result<kilonova_metadata::policies::Policies, BrokerError> {
        match self.resources().namespace(ns).await {
            Ok(p) => Ok(p),
            Err(kilonova_metadata::MetadataError::NotFound(_)) => {
                Err(BrokerError::NamespaceNotFound(ns.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses to load `name` unless this broker owns its bundle, taking
    /// the bundle if nobody does (a client or admin request came here for
    /// it). In standalone every topic is served here.
    pub(crate) async fn ensure_owned(&self, name: &TopicName) -> Result<(), BrokerError> {
        let Some(m) = self.membership() else {
            return Ok(());
        };
        let key = self.bundle_of(name).await?;
        {
            let state = m.state();
            if state.releasing.contains_key(&key) {
                return Err(BrokerError::Unavailable(format!(
                    "bundle {}/{} is being unloaded: look {name} up again",
                    key.0, key.1
                )));
            }
            if state.held.contains_key(&key) {
                return Ok(());
            }
        }
        match self.acquire(&key).await? {
            Acquired::Owned { .. } => Ok(()),
            Acquired::OwnedBy(o) => Err(served_by(name, o)),
        }
    }

    /// The admin URLs (`http://`, `https://`) of the broker serving `name`
    /// when it is another broker (in a cluster): where a request about it
    /// is repeated (a partitioned topic's partitions may be on several).
    pub async fn other_owner(
        &self,
        name: &TopicName,
    ) -> Result<Option<(Option<String>, Option<String>)>, BrokerError> {
        match self.served_elsewhere(name).await {
            Ok(()) => Ok(None),
            Err(BrokerError::ServedElsewhere {
                http_url,
                https_url,
                ..
            }) => Ok(Some((Some(http_url).filter(|u| !u.is_empty()), https_url))),
            Err(e) => Err(e),
        }
    }

    /// Refuses a request about `name` when another broker owns its bundle
    /// (in a cluster), naming that broker.
    pub(crate) async fn served_elsewhere(&self, name: &TopicName) -> Result<(), BrokerError> {
        let Some(m) = self.membership() else {
            return Ok(());
        };
        let (ns, range) = self.bundle_of(name).await?;
        match self.resources().bundle_owner(&ns, range).await? {
            Some(o) if o.broker != m.id => Err(served_by(name, o)),
            _ => Ok(()),
        }
    }

    /// Takes bundle `key` for this broker if nobody owns it.
    pub(crate) async fn acquire(&self, key: &BundleKey) -> Result<Acquired, BrokerError> {
        let Some(m) = self.membership() else {
            return Err(BrokerError::NotAllowed(
                "a standalone broker owns no bundles".into(),
            ));
        };
        let session = m.session();
        let acquired = self
            .resources()
            .acquire_bundle(&key.0, key.1, &m.owner, session)
            .await?;
        match &acquired {
            Acquired::Owned { epoch } => {
                let (record, session) = {
                    let mut state = m.state();
                    if state.session != session {
                        // The session was lost while acquiring: that ownership is gone.
                        return Err(BrokerError::Unavailable(
                            "this broker's metadata session changed: look the topic up again"
                                .into(),
                        ));
                    }
                    state.held.insert(key.clone(), *epoch);
                    state.record.bundles = state.held.len() as u64;
                    (state.record.clone(), state.session)
                };
                tracing::info!(bundle = %format!("{}/{}", key.0, key.1), epoch, "bundle acquired");
                self.publish_record(m, &record, session).await;
            }
            // Ours from this very session: taken by a concurrent request,
            // or handed over here by its previous owner.
            Acquired::OwnedBy(o) if self.adopt(m, key, o).await => {
                return Ok(Acquired::Owned { epoch: o.epoch });
            }
            Acquired::OwnedBy(_) => {}
        }
        Ok(acquired)
    }

    /// Counts bundle `key` among this broker's if `owner`, its ownership
    /// record, names this broker in its current session (a previous owner
    /// handed it over: [`unload`]). Returns whether it is held here now.
    async fn adopt(&self, m: &Membership, key: &BundleKey, owner: &BundleOwner) -> bool {
        let (record, session) = {
            let mut state = m.state();
            if owner.broker != m.id || owner.session != state.session.0 {
                return false;
            }
            if state.held.contains_key(key) {
                return true;
            }
            state.held.insert(key.clone(), owner.epoch);
            state.record.bundles = state.held.len() as u64;
            (state.record.clone(), state.session)
        };
        tracing::info!(bundle = %format!("{}/{}", key.0, key.1), epoch = owner.epoch, "bundle taken over");
        self.publish_record(m, &record, session).await;
        true
    }

    /// Rewrites this broker's registration (its load changed). A failure
    /// leaves the old load in place: placement is only a little off.
    async fn publish_record(&self, m: &Membership, record: &BrokerRecord, session: SessionId) {
        if let Err(e) = self
            .resources()
            .register_broker(&m.cluster, &m.id, record, session)
            .await
        {
            tracing::warn!(error = %e, "updating this broker's registration failed");
        }
    }
}

/// The refusal of a request for `name`, which `owner` serves.
fn served_by(name: &TopicName, owner: BundleOwner) -> BrokerError {
    BrokerError::ServedElsewhere {
        what: format!("{name} is served by {}", owner.broker),
        http_url: owner.http_url,
        https_url: owner.http_url_tls,
    }
}
