//! The cluster's live brokers: each registers itself under
//! `/brokers/<cluster>/<id>`, an ephemeral key bound to its metadata session
//! (it disappears when the broker's session ends or expires), holding where
//! clients and other brokers reach it and how loaded it is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::resources::{from_json, to_json, Resources};
use crate::store::{Expect, SessionId};

/// A live broker, as it registered itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BrokerRecord {
    /// `pulsar://host:port` (none: the plain port is off).
    pub pulsar_url: Option<String>,
    /// `pulsar+ssl://host:port`.
    pub pulsar_url_tls: Option<String>,
    /// `http://host:port` of the admin API.
    pub http_url: Option<String>,
    pub https_url: Option<String>,
    /// Advertised listeners as configured: name → its URLs.
    pub listeners: BTreeMap<String, Vec<String>>,
    /// The listener clients naming none are told.
    pub internal_listener: Option<String>,
    /// The session the record is bound to: a restarted broker ends its
    /// predecessor's (and so drops the bundles it owned) instead of waiting
    /// for it to expire.
    pub session: u64,
    /// Bundles owned: the load a new bundle is placed by.
    pub bundles: u64,
    /// `host:port` of its Kafka listener, and of the Kafka TLS listener
    /// (none: not served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_tls: Option<String>,
}

fn broker_key(cluster: &str, id: &str) -> String {
    format!("/brokers/{cluster}/{id}")
}

/// The counter of broker starts ([`Resources::next_broker_incarnation`]).
const INCARNATIONS: &str = "/broker-incarnations";

impl Resources {
    /// A number no broker start on this metadata store got before (from 1):
    /// what a cluster broker keeps its local ids apart from other brokers'
    /// with.
    pub async fn next_broker_incarnation(&self) -> Result<u64> {
        loop {
            let current = self.store().get(INCARNATIONS).await?;
            let (next, expect) = match &current {
                Some(s) => (
                    from_json::<u64>("the broker incarnation counter", &s.value)?.saturating_add(1),
                    Expect::Version(s.version),
                ),
                None => (1, Expect::Absent),
            };
            let value = to_json("the broker incarnation counter", &next)?;
            match self.store().put(INCARNATIONS, value, expect, None).await {
                Ok(_) => return Ok(next),
                Err(crate::MetadataError::BadVersion { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Registers a live broker of `cluster` as `id` (`host:port` of its HTTP
    /// service), an ephemeral key that dies with `session`; registering
    /// again replaces the record.
    pub async fn register_broker(
        &self,
        cluster: &str,
        id: &str,
        record: &BrokerRecord,
        session: SessionId,
    ) -> Result<()> {
        self.store()
            .put(
                &broker_key(cluster, id),
                to_json("a broker record", record)?,
                Expect::Any,
                Some(session),
            )
            .await
            .map(drop)
    }

    /// Removes broker `id`'s registration (it is shutting down).
    pub async fn deregister_broker(&self, cluster: &str, id: &str) -> Result<()> {
        self.store()
            .delete(&broker_key(cluster, id), Expect::Any)
            .await
            .map(drop)
    }

    /// The cluster's live brokers' ids.
    pub async fn list_brokers(&self, cluster: &str) -> Result<Vec<String>> {
        self.list(&format!("/brokers/{cluster}")).await
    }

    /// A live broker's record (`None`: not registered). A record written
    /// before records had fields reads as all defaults.
    pub async fn broker(&self, cluster: &str, id: &str) -> Result<Option<BrokerRecord>> {
        match self.store().get(&broker_key(cluster, id)).await? {
            Some(s) if s.value.as_ref() == b"{}" => Ok(Some(BrokerRecord::default())),
            Some(s) => Ok(Some(from_json("a broker record", &s.value)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::EmbeddedStore;

    #[tokio::test]
    async fn a_registration_is_listed_read_back_and_gone_with_its_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("m.redb")).unwrap());
        let r = Resources::new(store);
        let session = r
            .store()
            .open_session(std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let record = BrokerRecord {
            pulsar_url: Some("pulsar://b1:6650".into()),
            http_url: Some("http://b1:8080".into()),
            session: session.0,
            bundles: 3,
            ..BrokerRecord::default()
        };
        r.register_broker("c", "b1:8080", &record, session)
            .await
            .unwrap();
        assert_eq!(r.list_brokers("c").await.unwrap(), ["b1:8080"]);
        assert_eq!(r.broker("c", "b1:8080").await.unwrap(), Some(record));
        r.store().close_session(session).await.unwrap();
        assert!(r.list_brokers("c").await.unwrap().is_empty());
        assert_eq!(r.broker("c", "b1:8080").await.unwrap(), None);
    }
}
