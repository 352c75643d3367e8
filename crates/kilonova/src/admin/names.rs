//! Namespace and topic names as the CLI accepts them, and the REST path of each.
//!
//! A topic may be written as pulsar-admin accepts it: `x` (in `public/default`),
//! `tenant/ns/x`, or fully qualified `persistent://tenant/ns/x` /
//! `non-persistent://tenant/ns/x`. Version-1 names (with a cluster part) are
//! not supported. The broker validates the characters; here only the shape.

use std::fmt;
use std::str::FromStr;

use super::client::ApiPath;

const DEFAULT_TENANT: &str = "public";
const DEFAULT_NAMESPACE: &str = "default";

/// `tenant/namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceName {
    pub tenant: String,
    pub namespace: String,
}

impl NamespaceName {
    /// `/admin/v2/namespaces/{tenant}/{ns}`: the namespace and its policies.
    pub fn policies_path(&self) -> ApiPath {
        ApiPath::new(["namespaces", &self.tenant, &self.namespace])
    }

    /// `/admin/v2/{domain}/{tenant}/{ns}`: the namespace's topics of one domain.
    pub fn topics_path(&self, domain: Domain) -> ApiPath {
        ApiPath::new([domain.as_str(), &self.tenant, &self.namespace])
    }
}

impl FromStr for NamespaceName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split('/').collect::<Vec<_>>().as_slice() {
            [tenant, namespace] if !tenant.is_empty() && !namespace.is_empty() => Ok(Self {
                tenant: (*tenant).to_owned(),
                namespace: (*namespace).to_owned(),
            }),
            _ => Err(format!(
                "invalid namespace {s:?}: expected tenant/namespace"
            )),
        }
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.namespace)
    }
}

/// A topic's domain: the first segment of its REST path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    Persistent,
    NonPersistent,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Persistent => "persistent",
            Domain::NonPersistent => "non-persistent",
        }
    }
}

impl FromStr for Domain {
    type Err = String;

    /// `persistent`, or `non-persistent` / `non_persistent` (pulsar-admin's
    /// `--topic-domain` spells it with an underscore).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "persistent" => Ok(Domain::Persistent),
            "non-persistent" | "non_persistent" => Ok(Domain::NonPersistent),
            _ => Err(format!(
                "invalid topic domain {s:?}: expected persistent or non-persistent"
            )),
        }
    }
}

/// A fully resolved topic name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicName {
    pub domain: Domain,
    pub namespace: NamespaceName,
    pub local: String,
}

impl TopicName {
    /// `/admin/v2/{domain}/{tenant}/{ns}/{topic}`.
    pub fn path(&self) -> ApiPath {
        self.namespace.topics_path(self.domain).join(&self.local)
    }
}

impl FromStr for TopicName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid topic name {s:?}: expected name, tenant/namespace/name or \
                 (non-)persistent://tenant/namespace/name"
            )
        };
        let (domain, rest, qualified) = match s.split_once("://") {
            Some((domain, rest)) => (domain.parse::<Domain>()?, rest, true),
            None => (Domain::Persistent, s, false),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid());
        }
        let (tenant, namespace, local) = match parts.as_slice() {
            [local] if !qualified => (DEFAULT_TENANT, DEFAULT_NAMESPACE, *local),
            [tenant, namespace, local] => (*tenant, *namespace, *local),
            _ => return Err(invalid()),
        };
        Ok(TopicName {
            domain,
            namespace: NamespaceName {
                tenant: tenant.to_owned(),
                namespace: namespace.to_owned(),
            },
            local: local.to_owned(),
        })
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}/{}",
            self.domain.as_str(),
            self.namespace,
            self.local
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> TopicName {
        s.parse().unwrap()
    }

    #[test]
    fn short_topic_names_default_to_persistent_public_default() {
        assert_eq!(
            topic("orders").to_string(),
            "persistent://public/default/orders"
        );
        assert_eq!(
            topic("acme/eu/orders").to_string(),
            "persistent://acme/eu/orders"
        );
    }

    #[test]
    fn qualified_topic_names_keep_their_domain() {
        let t = topic("non-persistent://acme/eu/ticks");
        assert_eq!(t.domain, Domain::NonPersistent);
        assert_eq!(t.namespace.to_string(), "acme/eu");
        assert_eq!(t.local, "ticks");
        assert_eq!(
            topic("persistent://acme/eu/orders").domain,
            Domain::Persistent
        );
    }

    #[test]
    fn malformed_topic_names_are_refused() {
        for bad in [
            "",
            "a/b",
            "t/c/ns/x",
            "persistent://x",
            "persistent://t/ns",
            "persistent://t/ns/",
            "t//x",
            "kafka://t/ns/x",
            "persistent://t/c/ns/x",
        ] {
            assert!(
                bad.parse::<TopicName>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn namespaces_are_tenant_slash_namespace() {
        let ns: NamespaceName = "acme/eu".parse().unwrap();
        assert_eq!((ns.tenant.as_str(), ns.namespace.as_str()), ("acme", "eu"));
        for bad in ["acme", "acme/", "/eu", "acme/eu/x", ""] {
            assert!(
                bad.parse::<NamespaceName>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn domains_accept_pulsar_admins_spelling() {
        assert_eq!("non_persistent".parse(), Ok(Domain::NonPersistent));
        assert_eq!("non-persistent".parse(), Ok(Domain::NonPersistent));
        assert_eq!("persistent".parse(), Ok(Domain::Persistent));
        assert!("durable".parse::<Domain>().is_err());
    }
}
