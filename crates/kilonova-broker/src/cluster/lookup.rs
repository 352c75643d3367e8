//! Where a topic is served, in a cluster: any broker answers a lookup.
//!
//! As Pulsar answers it: a topic whose bundle a broker owns is served there
//! (`Connect` to that broker's URLs). A bundle nobody owns is placed on a
//! live broker at or below the average load, the one of those owning the
//! fewest bundles (ties spread by the bundle's place in its namespace;
//! `least_loaded`): this broker takes it itself when it is that broker, or
//! when the lookup is *authoritative* (a redirect sent it here: it must not
//! send the client on again); otherwise the answer is a `Redirect` to the
//! chosen broker, authoritative, and the client asks there, which takes the
//! bundle.
//!
//! Every answer carries the URLs of the advertised listener the client names,
//! as the broker it names registered them (`record_urls`): a listener that
//! broker lacks fails the lookup (Pulsar's ServiceNotReady, "the broker do not
//! have NAME listener"), and nothing is placed for a refused lookup.

use kilonova_metadata::brokers::BrokerRecord;
use kilonova_metadata::bundles::{Acquired, BundleOwner};
use kilonova_metadata::names::TopicName;

use super::{BundleKey, Membership};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::listeners::{AdvertisedListeners, ListenerUrls};

/// A lookup's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupAnswer {
    /// The Pulsar-protocol URLs of the broker to connect to (or to ask again).
    pub urls: ListenerUrls,
    /// Its admin API's URLs.
    pub http: Option<String>,
    pub https: Option<String>,
    /// Ask that broker again, authoritatively (Pulsar's `Redirect`); else connect.
    pub redirect: bool,
}

/// Tries a placement this many times when ownership changes under it.
const ATTEMPTS: usize = 4;

impl Broker {
    /// Where `name` is served, for LOOKUP and the HTTP lookup, with the URLs
    /// of the advertised `listener` the client names. The caller has
    /// authorized the lookup.
    pub async fn lookup_topic(
        &self,
        name: &TopicName,
        listener: Option<&str>,
        authoritative: bool,
    ) -> Result<LookupAnswer, BrokerError> {
        let ns = name.namespace();
        if !self.resources().namespace_exists(&ns).await? {
            return Err(BrokerError::NamespaceNotFound(name.namespace_name()));
        }
        let Some(m) = self.membership() else {
            return self.own_answer(listener);
        };
        let key = self.bundle_of(name).await?;
        for _ in 0..ATTEMPTS {
            if let Some(owner) = self.resources().bundle_owner(&key.0, key.1).await? {
                if owner.broker == m.id {
                    return self.own_answer(listener);
                }
                if let Some(answer) = self.answer_for(m, &owner.broker, listener, false).await? {
                    return Ok(answer);
                }
                // Its owner is no longer registered: its session is ending.
                return Err(BrokerError::Unavailable(format!(
                    "bundle {}/{} is owned by {}, which is leaving: look {name} up again",
                    key.0, key.1, owner.broker
                )));
            }
            let target = match authoritative {
                true => m.id.clone(),
                false => self.least_loaded(m, &key, None).await?,
            };
            if target != m.id {
                match self.answer_for(m, &target, listener, true).await? {
                    Some(answer) => return Ok(answer),
                    None => continue, // gone meanwhile: choose again
                }
            }
            // A listener this broker lacks is refused before it takes the
            // bundle: a refused lookup places nothing.
            let answer = self.own_answer(listener)?;
            match self.acquire(&key).await? {
                Acquired::Owned { .. } => return Ok(answer),
                // Taken meanwhile: answer its owner on the next pass.
                Acquired::OwnedBy(_) => continue,
            }
        }
        Err(BrokerError::Unavailable(format!(
            "bundle {}/{}: ownership kept changing, look {name} up again",
            key.0, key.1
        )))
    }

    /// The id of the cluster broker serving bundle `key` and its ownership's
    /// epoch (it grows each time the bundle changes hands), placing the
    /// bundle as a lookup does if nobody owns it: this broker takes it when
    /// it is the least loaded; another broker is named, and takes it when a
    /// client comes to it, with the store's current revision as the epoch:
    /// newer than any earlier owner's and older than the ownership to come
    /// (clients that saw an owner take a leader with an older epoch as
    /// stale). `None` outside a cluster: this broker serves everything.
    pub async fn bundle_server(
        &self,
        key: &BundleKey,
    ) -> Result<Option<(String, i64)>, BrokerError> {
        let Some(m) = self.membership() else {
            return Ok(None);
        };
        if let Some(owner) = self.resources().bundle_owner(&key.0, key.1).await? {
            return Ok(Some((owner.broker, owner.epoch as i64)));
        }
        let target = self.least_loaded(m, key, None).await?;
        if target != m.id {
            // An empty transaction answers the store's current revision.
            let now = self.resources().store().txn(Vec::new()).await?;
            return Ok(Some((target, now as i64)));
        }
        match self.acquire(key).await? {
            Acquired::Owned { epoch } => Ok(Some((m.id.clone(), epoch as i64))),
            Acquired::OwnedBy(o) => Ok(Some((o.broker, o.epoch as i64))),
        }
    }

    /// The cluster's registered brokers, by id (empty outside a cluster).
    pub async fn cluster_brokers(&self) -> Result<Vec<(String, BrokerRecord)>, BrokerError> {
        let Some(m) = self.membership() else {
            return Ok(Vec::new());
        };
        let mut ids = self.resources().list_brokers(&m.cluster).await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.resources().broker(&m.cluster, &id).await? {
                out.push((id, r));
            }
        }
        Ok(out)
    }

    /// This broker's id in its cluster, if it is a cluster broker.
    pub fn cluster_broker_id(&self) -> Option<&str> {
        self.membership().map(|m| m.id.as_str())
    }

    /// This broker's answer.
    fn own_answer(&self, listener: Option<&str>) -> Result<LookupAnswer, BrokerError> {
        let urls = self.service_urls();
        Ok(LookupAnswer {
            urls: urls.broker_urls(listener)?,
            http: urls.http.clone(),
            https: urls.https.clone(),
            redirect: false,
        })
    }

    /// The answer naming broker `id` (`None`: it is not registered).
    async fn answer_for(
        &self,
        m: &Membership,
        id: &str,
        listener: Option<&str>,
        redirect: bool,
    ) -> Result<Option<LookupAnswer>, BrokerError> {
        let Some(record) = self.resources().broker(&m.cluster, id).await? else {
            return Ok(None);
        };
        Ok(Some(LookupAnswer {
            urls: record_urls(&record, listener)?,
            http: record.http_url,
            https: record.https_url,
            redirect,
        }))
    }

    /// The live broker a new bundle goes to (never `exclude`): one at or
    /// below the cluster's average load by the brokers' last reports (a
    /// broker yet to report counts as unloaded) and serving fewer than
    /// `load_balancer_broker_max_topics` topics — all of them if none is;
    /// among those, the fewest bundles owned, ties broken by the bundle's
    /// place in its namespace ([`Broker::spread`]). Reports are seconds old
    /// while bundle counts change with every placement, so lookups of many
    /// new bundles at once (all seeing the same reports) still spread them.
    pub(super) async fn least_loaded(
        &self,
        m: &Membership,
        key: &BundleKey,
        exclude: Option<&str>,
    ) -> Result<String, BrokerError> {
        let mut ids = self.resources().list_brokers(&m.cluster).await?;
        ids.sort();
        let reports = match self.config().load_balancer_enabled {
            true => self.broker_loads(&m.cluster).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "reading the load reports failed: placing by bundles owned");
                Default::default()
            }),
            false => Default::default(),
        };
        let mut candidates = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.resources().broker(&m.cluster, &id).await? {
                let (load, topics) = reports.get(&id).copied().unwrap_or((0.0, 0));
                candidates.push((id, r.bundles, load, topics));
            }
        }
        let average = match candidates.is_empty() {
            true => 0.0,
            false => candidates.iter().map(|c| c.2).sum::<f64>() / candidates.len() as f64,
        };
        candidates.retain(|c| Some(c.0.as_str()) != exclude);
        let max_topics = self.config().load_balancer_broker_max_topics;
        let fits = |c: &(String, u64, f64, u64)| c.2 <= average && c.3 < max_topics;
        if candidates.iter().any(fits) {
            candidates.retain(fits);
        }
        let Some(min) = candidates.iter().map(|c| c.1).min() else {
            // Not even this broker is registered: its session is being renewed.
            return Err(BrokerError::Unavailable(
                "no broker of the cluster is registered".into(),
            ));
        };
        let least: Vec<String> = candidates
            .into_iter()
            .filter(|c| c.1 == min)
            .map(|c| c.0)
            .collect();
        Ok(least[self.spread(key).await % least.len()].clone())
    }

    /// Where bundle `key` falls among equally loaded brokers: its place in
    /// its namespace's bundles, from an offset of the namespace's own —
    /// bundles of one namespace placed at once (their lookups all reading
    /// the same counts) go round the brokers instead of colliding as hashes
    /// would, and namespaces start at different brokers.
    async fn spread(&self, key: &BundleKey) -> usize {
        let offset = crc32c::crc32c(key.0.to_string().as_bytes()) as usize;
        let place = match self.namespace_policies(&key.0).await {
            Ok(p) => kilonova_metadata::bundles::ranges(&p.bundles)
                .ok()
                .and_then(|r| r.iter().position(|r| *r == key.1)),
            Err(_) => None,
        };
        // A bundle no longer in the policies (split meanwhile): its hash.
        let place = place.unwrap_or(key.1.lower as usize);
        offset.wrapping_add(place)
    }
}

/// What the ownership keys of broker `id`, registered as `record`, hold.
pub(super) fn bundle_owner(id: &str, record: &BrokerRecord) -> Result<BundleOwner, BrokerError> {
    let default = record_urls(record, None)?;
    Ok(BundleOwner {
        broker: id.to_owned(),
        native_url: default
            .plain
            .clone()
            .or(default.tls.clone())
            .unwrap_or_default(),
        native_url_tls: default.tls,
        http_url: record
            .http_url
            .clone()
            .or(record.https_url.clone())
            .unwrap_or_default(),
        http_url_tls: record.https_url.clone(),
        epoch: 0,
        session: 0,
    })
}

/// A registered broker's URLs for a client naming `listener`.
pub(super) fn record_urls(
    record: &BrokerRecord,
    listener: Option<&str>,
) -> Result<ListenerUrls, BrokerError> {
    let (listeners, own) = record_listeners(record)?;
    listeners.select(listener, &own)
}

/// A registered broker's advertised listeners, and its URLs without them.
pub(super) fn record_listeners(
    record: &BrokerRecord,
) -> Result<(AdvertisedListeners, ListenerUrls), BrokerError> {
    let own = ListenerUrls {
        plain: record.pulsar_url.clone(),
        tls: record.pulsar_url_tls.clone(),
    };
    let listeners =
        AdvertisedListeners::new(&record.listeners, record.internal_listener.as_deref())
            .map_err(|e| BrokerError::Metadata(format!("a broker's advertised listeners: {e}")))?;
    Ok((listeners, own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_brokers_urls_follow_its_listeners() {
        let mut record = BrokerRecord {
            pulsar_url: Some("pulsar://b2:6650".into()),
            ..BrokerRecord::default()
        };
        let plain = record_urls(&record, None).unwrap();
        assert_eq!(plain.plain.as_deref(), Some("pulsar://b2:6650"));
        assert!(matches!(
            record_urls(&record, Some("external")),
            Err(BrokerError::UnknownListener(_))
        ));
        record.listeners.insert(
            "external".into(),
            vec!["pulsar://b2.example.com:16650".into()],
        );
        record
            .listeners
            .insert("internal".into(), vec!["pulsar://10.0.0.2:6650".into()]);
        record.internal_listener = Some("internal".into());
        let external = record_urls(&record, Some("external")).unwrap();
        assert_eq!(
            external.plain.as_deref(),
            Some("pulsar://b2.example.com:16650")
        );
        let none = record_urls(&record, None).unwrap();
        assert_eq!(none.plain.as_deref(), Some("pulsar://10.0.0.2:6650"));
    }
}
