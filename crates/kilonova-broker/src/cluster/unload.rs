//! Unloading: a bundle's topics closed (their clients look them up again)
//! and, in a cluster, the bundle given up so that the next lookup places it
//! anew. A namespace unload reaches every bundle's owner: the ones owned
//! here are unloaded here, the others on their owners through the admin API
//! (Pulsar's way too).

use std::time::Duration;

use kilonova_metadata::brokers::BrokerRecord;
use kilonova_metadata::bundles::{self, BundleRange};
use kilonova_metadata::names::TopicName;
use kilonova_metadata::{NamespaceName, SessionId};
use tokio::sync::oneshot;

use super::BundleKey;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::listeners::NextOwner;
use crate::topic::{AdminRequest, TopicCommand};

/// How long a forwarded bundle unload may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

impl Broker {
    /// Closes the loaded topics of bundle `key` here (producers and
    /// consumers get the protocol's close commands). Reads no metadata, so
    /// it works while the store is unreachable. Returns how many it closed.
    pub(crate) async fn close_bundle_topics(
        &self,
        key: &BundleKey,
        next_owner: Option<&NextOwner>,
    ) -> usize {
        let mut closed = 0;
        for name in &self.loaded_topics_in(key) {
            let Some(handle) = self.loaded_handle(&name.to_string()) else {
                continue;
            };
            let (reply, answer) = oneshot::channel();
            let request = TopicCommand::Admin {
                request: match next_owner {
                    Some(to) => AdminRequest::Handover { to: to.clone() },
                    None => AdminRequest::Unload,
                },
                reply,
            };
            if handle.send(request).await.is_ok() && matches!(answer.await, Ok(Ok(_))) {
                closed += 1;
            }
        }
        closed
    }

    /// Asks each loaded topic of bundle `key` to settle before the bundle
    /// changes hands ([`AdminRequest::PrepareHandover`]).
    async fn prepare_bundle_handover(&self, key: &BundleKey) {
        for name in self.loaded_topics_in(key) {
            let Some(handle) = self.loaded_handle(&name.to_string()) else {
                continue;
            };
            let (reply, answer) = oneshot::channel();
            let request = TopicCommand::Admin {
                request: AdminRequest::PrepareHandover,
                reply,
            };
            if handle.send(request).await.is_ok() {
                let _ = answer.await;
            }
        }
    }

    /// The loaded topics of bundle `key`.
    fn loaded_topics_in(&self, key: &BundleKey) -> Vec<TopicName> {
        self.loaded_topics_of(&key.0)
            .iter()
            .filter_map(|n| TopicName::parse(n).ok())
            .filter(|t| key.1.contains(bundles::topic_hash(t)))
            .collect()
    }

    /// Unloads bundle `range` of `ns` here: closes its topics and, in a
    /// cluster, gives the bundle up (loads of its topics are refused
    /// meanwhile). Returns whether this broker served it (a standalone
    /// serves every bundle).
    pub async fn unload_bundle(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
    ) -> Result<bool, BrokerError> {
        self.unload_bundle_to(ns, range, None).await
    }

    /// [`Broker::unload_bundle`], handing the bundle to broker `to` when it
    /// is given and registered (Pulsar's `destinationBroker`; the load
    /// manager's moves), else to the least loaded other broker.
    pub async fn unload_bundle_to(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
        to: Option<&str>,
    ) -> Result<bool, BrokerError> {
        let key = (ns.clone(), range);
        let Some(m) = self.membership() else {
            let closed = self.close_bundle_topics(&key, None).await;
            tracing::info!(bundle = %format!("{ns}/{range}"), topics = closed, "bundle unloaded");
            return Ok(true);
        };
        if !m.state().held.contains_key(&key) {
            // Handed over here but not yet counted: count it, to unload it.
            match self.resources().bundle_owner(ns, range).await? {
                Some(o) if self.adopt(m, &key, &o).await => {}
                _ => return Ok(false),
            }
        }
        let epoch = {
            let mut state = m.state();
            let Some(epoch) = state.held.remove(&key) else {
                return Ok(false);
            };
            state.releasing.insert(key.clone(), epoch);
            epoch
        };
        // First its topics settle while the bundle is still this broker's
        // (new SENDs wait for the next owner, appends in flight are
        // committed, subscription positions stored). Then the next owner is
        // chosen and the bundle handed to it in the store — never unowned,
        // so a client looking a topic up meanwhile is sent there too — and
        // named to the clients, which reconnect there at once instead of
        // looking the topics up again after a backoff. Without a next
        // owner, or if the handover fails, the bundle is released for
        // lookups to place.
        self.prepare_bundle_handover(&key).await;
        let mut handed_to = None;
        let chosen = match self.config().load_balancer_transfer_enabled {
            true => self.next_owner(m, &key, to).await,
            false => None,
        };
        if let Some((id, record)) = chosen {
            if self.hand_over(m, &key, epoch, &id, &record).await {
                handed_to = Some((id, record));
            }
        }
        let released = match handed_to {
            Some(_) => Ok(true),
            None => {
                self.resources()
                    .release_bundle(ns, range, &m.id, epoch)
                    .await
            }
        };
        let next = handed_to.as_ref().and_then(|(_, record)| {
            let (listeners, own) = super::lookup::record_listeners(record).ok()?;
            Some(NextOwner::new(
                listeners,
                own,
                &self.service_urls().listeners,
            ))
        });
        let closed = self.close_bundle_topics(&key, next.as_ref()).await;
        let (record, session) = {
            let mut state = m.state();
            state.releasing.remove(&key);
            state.record.bundles = state.held.len() as u64;
            (state.record.clone(), state.session)
        };
        self.publish_record(m, &record, session).await;
        match released {
            Ok(_) => {
                let to = handed_to.as_ref().map_or("", |(id, _)| id.as_str());
                tracing::info!(bundle = %format!("{ns}/{range}"), topics = closed, epoch, handed_to = to, "bundle unloaded and given up");
                Ok(true)
            }
            // Its topics are closed and the broker no longer serves it; the
            // key frees with the session if it could not be deleted.
            Err(e) => Err(e.into()),
        }
    }

    /// Hands bundle `key`, held here at `epoch`, to broker `id` (registered
    /// as `record`). Returns whether it did.
    async fn hand_over(
        &self,
        m: &super::Membership,
        key: &BundleKey,
        epoch: u64,
        id: &str,
        record: &BrokerRecord,
    ) -> bool {
        let owner = match super::lookup::bundle_owner(id, record) {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(error = %e, "the next owner's registration is unusable");
                return false;
            }
        };
        match self
            .resources()
            .transfer_bundle(
                &key.0,
                key.1,
                (&m.id, epoch),
                &owner,
                SessionId(record.session),
            )
            .await
        {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(error = %e, next = id, "handing a bundle over failed");
                false
            }
        }
    }

    /// The broker a bundle given up here should go to next: the least
    /// loaded other live broker, with its registration (none: no other
    /// broker, or the choice failed — clients then look the topics up again).
    async fn next_owner(
        &self,
        m: &super::Membership,
        key: &BundleKey,
        to: Option<&str>,
    ) -> Option<(String, BrokerRecord)> {
        if let Some(to) = to.filter(|to| *to != m.id) {
            match self.resources().broker(&m.cluster, to).await {
                Ok(Some(record)) => return Some((to.to_owned(), record)),
                _ => tracing::info!(
                    destination = to,
                    "the destination broker is not registered: choosing another"
                ),
            }
        }
        let next = match self.least_loaded(m, key, Some(&m.id)).await {
            Ok(id) => id,
            Err(e) => {
                tracing::debug!(error = %e, "no next owner chosen for an unloaded bundle");
                return None;
            }
        };
        match self.resources().broker(&m.cluster, &next).await {
            Ok(Some(record)) => Some((next, record)),
            _ => None,
        }
    }

    /// Unloads bundle `range` of `ns` wherever it is served: here, or on
    /// its owner through the admin API (with the caller's `authorization`
    /// header), to broker `to` if given. Returns whether some broker served it.
    pub async fn unload_bundle_anywhere(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
        authorization: Option<&str>,
        to: Option<&str>,
    ) -> Result<bool, BrokerError> {
        let Some(m) = self.membership() else {
            return self.unload_bundle(ns, range).await;
        };
        match self.resources().bundle_owner(ns, range).await? {
            None => Ok(false),
            Some(o) if o.broker == m.id => self.unload_bundle_to(ns, range, to).await,
            Some(o) => {
                let base = match (o.http_url.is_empty(), &o.http_url_tls) {
                    (false, _) => o.http_url.clone(),
                    (true, Some(tls)) => tls.clone(),
                    (true, None) => {
                        return Err(BrokerError::Unavailable(format!(
                            "{} owns {ns}/{range} but advertises no admin URL",
                            o.broker
                        )))
                    }
                };
                let mut url = format!(
                    "{}/admin/v2/namespaces/{}/{}/{range}/unload",
                    base.trim_end_matches('/'),
                    ns.tenant,
                    ns.namespace
                );
                if let Some(to) = to {
                    url.push_str("?destinationBroker=");
                    for b in to.bytes() {
                        match b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
                            true => url.push(char::from(b)),
                            false => url.push_str(&format!("%{b:02X}")),
                        }
                    }
                }
                self.forward_admin("PUT", &url, authorization, None).await?;
                Ok(true)
            }
        }
    }

    /// Unloads every bundle of `ns` on its owner. Returns how many were served.
    pub async fn unload_namespace(
        &self,
        ns: &NamespaceName,
        authorization: Option<&str>,
    ) -> Result<usize, BrokerError> {
        let policies = self.namespace_policies(ns).await?;
        let mut served = 0;
        for range in bundles::ranges(&policies.bundles)? {
            if self
                .unload_bundle_anywhere(ns, range, authorization, None)
                .await?
            {
                served += 1;
            }
        }
        Ok(served)
    }

    /// A request to another broker's admin API (`url`), as the caller
    /// (`authorization`, its Authorization header); the answer's body.
    pub async fn forward_admin(
        &self,
        method: &str,
        url: &str,
        authorization: Option<&str>,
        body: Option<bytes::Bytes>,
    ) -> Result<bytes::Bytes, BrokerError> {
        let failed = |why: String| BrokerError::Unavailable(format!("{method} {url}: {why}"));
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| BrokerError::BadRequest(format!("method {method:?}: {e}")))?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(FORWARD_TIMEOUT)
            .timeout(FORWARD_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if url.starts_with("https://") {
            let trust = self.config().replication_tls_trust_certs.as_deref();
            http = http
                .tls_backend_preconfigured(crate::replicator::admin_tls(trust).map_err(failed)?);
        }
        let http = http.build().map_err(|e| failed(e.to_string()))?;
        let mut request = http.request(method.clone(), url);
        if let Some(a) = authorization {
            request = request.header("Authorization", a);
        }
        if let Some(b) = body {
            request = request.header("Content-Type", "application/json").body(b);
        }
        let response = request.send().await.map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return response.bytes().await.map_err(|e| failed(e.to_string()));
        }
        let body = response.text().await.unwrap_or_default();
        let why = format!("{status}: {}", body.chars().take(512).collect::<String>());
        Err(match status.as_u16() {
            401 | 403 => BrokerError::Authorization(why),
            404 => BrokerError::NotFound(why),
            _ => failed(why),
        })
    }
}
