//! A partitioned topic's partitions may be served by several brokers (in a
//! cluster): an operation on the partitioned topic runs on each partition
//! where it is served — here, or repeated for that partition on its owner
//! through the admin API, with the caller's credentials, as Pulsar's
//! brokers do. In standalone every partition is served here.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bytes::Bytes;

use kilonova_broker::{AdminReply, AdminRequest, Broker};
use kilonova_metadata::TopicName;

use crate::error::{ApiError, ApiResult};
use crate::server::OverTls;
use crate::topics::targets;

/// The request being served, to repeat for a partition on its owner.
#[derive(Clone, Debug)]
pub struct Incoming {
    method: String,
    path: String,
    query: Option<String>,
    authorization: Option<String>,
    tls: bool,
    body: Option<Bytes>,
}

impl<S: Send + Sync> FromRequestParts<S> for Incoming {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Incoming {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            authorization: parts
                .headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            tls: parts.extensions.get::<OverTls>().is_some(),
            body: None,
        })
    }
}

impl Incoming {
    /// The same request with its body (repeated along with it).
    pub fn with_body(self, body: Bytes) -> Self {
        Incoming {
            body: Some(body).filter(|b| !b.is_empty()),
            ..self
        }
    }

    /// Another request about `partition` as the same caller: `method` on
    /// `/admin/v2/{domain}/{tenant}/{ns}/{partition}` followed by `rest`
    /// (`/stats`, or nothing), with `query`.
    pub fn about(
        &self,
        method: &str,
        partition: &TopicName,
        rest: &str,
        query: Option<String>,
    ) -> Incoming {
        Incoming {
            method: method.into(),
            path: format!(
                "/admin/v2/{}/{}/{}/{}{rest}",
                partition.domain.as_str(),
                partition.tenant,
                partition.namespace,
                partition.local
            ),
            query,
            body: None,
            ..self.clone()
        }
    }

    /// This request's URL for `partition` on the broker at `base`: the
    /// topic's component of the path (`/admin/v2/{domain}/{tenant}/{ns}/{topic}/…`)
    /// replaced by the partition's name.
    fn url_for(&self, base: &str, partition: &TopicName) -> ApiResult<String> {
        let mut parts: Vec<&str> = self.path.split('/').collect();
        let local = partition.local.as_str();
        match parts.get_mut(6) {
            Some(topic) if self.path.starts_with("/admin/v2/") => *topic = local,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{} does not name a topic where a partition can be put",
                    self.path
                )))
            }
        }
        let query = self
            .query
            .as_ref()
            .map_or(String::new(), |q| format!("?{q}"));
        Ok(format!(
            "{}{}{query}",
            base.trim_end_matches('/'),
            parts.join("/")
        ))
    }
}

/// What one partition answered.
pub enum PartitionReply {
    /// Served here.
    Here(AdminReply),
    /// Served by another broker: its answer's body.
    There(Bytes),
}

/// Runs `make()` on `name` (every partition of a partitioned topic) where
/// each is served: here, or repeated on its owner. A topic that is not
/// partitioned is served here or redirected whole (a 307, as before).
pub(crate) async fn each(
    b: &Broker,
    name: &TopicName,
    incoming: &Incoming,
    make: impl Fn() -> AdminRequest,
) -> ApiResult<Vec<PartitionReply>> {
    let targets = targets(b, name).await?;
    let partitioned = targets.first() != Some(name);
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        if partitioned {
            if let Some(owner) = b.other_owner(&t).await? {
                out.push(PartitionReply::There(
                    on_owner(b, incoming, &t, owner).await?,
                ));
                continue;
            }
        }
        out.push(PartitionReply::Here(b.topic_admin(&t, make()).await?));
    }
    Ok(out)
}

/// Repeats `incoming` for `partition` on its `owner` ((http, https) admin
/// URLs): over TLS if it came over TLS.
pub(crate) async fn on_owner(
    b: &Broker,
    incoming: &Incoming,
    partition: &TopicName,
    owner: (Option<String>, Option<String>),
) -> ApiResult<Bytes> {
    let base = match incoming.tls {
        true => owner.1,
        false => owner.0.or(owner.1),
    }
    .ok_or_else(|| {
        ApiError::from(kilonova_broker::BrokerError::Unavailable(format!(
            "the broker serving {partition} advertises no admin URL this request may go to"
        )))
    })?;
    let url = incoming.url_for(&base, partition)?;
    Ok(b.forward_admin(
        &incoming.method,
        &url,
        incoming.authorization.as_deref(),
        incoming.body.clone(),
    )
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(path: &str, query: Option<&str>) -> Incoming {
        Incoming {
            method: "POST".into(),
            path: path.into(),
            query: query.map(str::to_owned),
            authorization: None,
            tls: false,
            body: None,
        }
    }

    #[test]
    fn a_partitions_url_puts_its_name_in_the_topics_place() {
        let p = TopicName::parse("persistent://t/ns/orders-partition-3").unwrap();
        let r = incoming(
            "/admin/v2/persistent/t/ns/orders/subscription/s/skip/5",
            Some("force=true"),
        );
        assert_eq!(
            r.url_for("http://b2:8080/", &p).unwrap(),
            "http://b2:8080/admin/v2/persistent/t/ns/orders-partition-3/subscription/s/skip/5?force=true"
        );
        let unload = incoming("/admin/v2/persistent/t/ns/orders/unload", None);
        assert_eq!(
            unload.url_for("http://b2:8080", &p).unwrap(),
            "http://b2:8080/admin/v2/persistent/t/ns/orders-partition-3/unload"
        );
        assert!(incoming("/lookup/v2/topic/x", None)
            .url_for("http://b2:8080", &p)
            .is_err());
    }
}
