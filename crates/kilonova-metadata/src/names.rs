//! Names of the Pulsar model (tenants, namespaces, topics) as clients and
//! operators send them, validated at the edge.
//!
//! Accepted forms (Pulsar's):
//! * `my-topic` → `persistent://public/default/my-topic`
//! * `tenant/namespace/my-topic` → `persistent://tenant/namespace/my-topic`
//! * `persistent://tenant/namespace/my-topic`, `non-persistent://…`
//!
//! Partition `i` of a partitioned topic `t` is the topic `t-partition-i`.

use std::fmt;
use std::str::FromStr;

pub const DEFAULT_TENANT: &str = "public";
pub const DEFAULT_NAMESPACE: &str = "default";
pub const PARTITION_SUFFIX: &str = "-partition-";
/// Longest accepted name, so a hostile client cannot make names cost unbounded memory.
pub const MAX_TOPIC_NAME_BYTES: usize = 1024;

/// Whether a topic is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// `persistent` or `non-persistent`, as a topic name's scheme and the admin
/// API's paths spell them.
impl FromStr for Domain {
    type Err = TopicNameError;

    fn from_str(s: &str) -> Result<Self, TopicNameError> {
        match s {
            "persistent" => Ok(Domain::Persistent),
            "non-persistent" => Ok(Domain::NonPersistent),
            other => Err(TopicNameError::UnknownDomain(other.to_string())),
        }
    }
}

/// Why a name is refused; the message is sent to the client (`InvalidTopicName`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    #[error("topic name is empty")]
    Empty,
    #[error("topic name is longer than {MAX_TOPIC_NAME_BYTES} bytes")]
    TooLong,
    #[error("unknown topic domain {0:?}: expected persistent or non-persistent")]
    UnknownDomain(String),
    #[error("topic name {0:?} must be 'topic', 'tenant/namespace/topic' or 'domain://tenant/namespace/topic'")]
    Shape(String),
    #[error("namespace {0:?} must be 'tenant/namespace'")]
    NamespaceShape(String),
    #[error("invalid {part} {value:?}: only letters, digits and - _ = : . % are allowed")]
    Characters { part: &'static str, value: String },
    /// `.` and `..` mean "this" and "the parent" in every path they reach (a
    /// URL, a file name): as names they would be unreachable.
    #[error("invalid {part} {value:?}: '.' and '..' are not names")]
    Dots { part: &'static str, value: String },
}

/// A validated `tenant/namespace` name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespaceName {
    pub tenant: String,
    pub namespace: String,
}

impl NamespaceName {
    pub fn new(tenant: &str, namespace: &str) -> Result<Self, TopicNameError> {
        check("tenant", tenant)?;
        check("namespace", namespace)?;
        Ok(NamespaceName {
            tenant: tenant.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    /// Parses `tenant/namespace`.
    pub fn parse(name: &str) -> Result<Self, TopicNameError> {
        match name.split_once('/') {
            Some((t, ns)) if !ns.contains('/') => Self::new(t, ns),
            _ => Err(TopicNameError::NamespaceShape(name.to_owned())),
        }
    }
}

impl FromStr for NamespaceName {
    type Err = TopicNameError;

    fn from_str(s: &str) -> Result<Self, TopicNameError> {
        Self::parse(s)
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.namespace)
    }
}

/// A fully qualified, validated topic name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName {
    pub domain: Domain,
    pub tenant: String,
    pub namespace: String,
    /// The local name, including a `-partition-N` suffix if there is one.
    pub local: String,
}

/// Checks one name component (tenant, namespace, topic, cluster): Pulsar's
/// characters (`[A-Za-z0-9_=:.-]`, and `%` of URL-encoded names), and not `.`
/// or `..`.
pub fn check(part: &'static str, value: &str) -> Result<(), TopicNameError> {
    if value == "." || value == ".." {
        return Err(TopicNameError::Dots {
            part,
            value: value.to_string(),
        });
    }
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | ':' | '.' | '%'));
    if ok {
        Ok(())
    } else {
        Err(TopicNameError::Characters {
            part,
            value: value.to_string(),
        })
    }
}

impl TopicName {
    /// Parses and validates a name in any of the accepted forms.
    pub fn parse(name: &str) -> Result<Self, TopicNameError> {
        if name.is_empty() {
            return Err(TopicNameError::Empty);
        }
        if name.len() > MAX_TOPIC_NAME_BYTES {
            return Err(TopicNameError::TooLong);
        }
        let (domain, rest) = match name.split_once("://") {
            Some((domain, rest)) => (domain.parse()?, rest),
            None => (Domain::Persistent, name),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (tenant, namespace, local) = match (parts.as_slice(), name.contains("://")) {
            ([local], false) => (DEFAULT_TENANT, DEFAULT_NAMESPACE, *local),
            ([tenant, namespace, local], _) => (*tenant, *namespace, *local),
            _ => return Err(TopicNameError::Shape(name.to_string())),
        };
        check("tenant", tenant)?;
        check("namespace", namespace)?;
        check("topic", local)?;
        Ok(TopicName {
            domain,
            tenant: tenant.to_string(),
            namespace: namespace.to_string(),
            local: local.to_string(),
        })
    }

    pub fn namespace(&self) -> NamespaceName {
        NamespaceName {
            tenant: self.tenant.clone(),
            namespace: self.namespace.clone(),
        }
    }

    /// `tenant/namespace`.
    pub fn namespace_name(&self) -> String {
        format!("{}/{}", self.tenant, self.namespace)
    }

    pub fn is_persistent(&self) -> bool {
        self.domain == Domain::Persistent
    }

    /// The partition index, if this is a partition of a partitioned topic.
    pub fn partition(&self) -> Option<u32> {
        let (_, idx) = self.local.rsplit_once(PARTITION_SUFFIX)?;
        idx.parse().ok()
    }

    /// The partitioned topic this partition belongs to (itself if not a partition).
    pub fn partitioned_topic(&self) -> TopicName {
        match self.local.rsplit_once(PARTITION_SUFFIX) {
            Some((base, idx)) if idx.parse::<u32>().is_ok() => TopicName {
                local: base.to_string(),
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    /// Partition `i` of this topic.
    pub fn partition_name(&self, i: u32) -> TopicName {
        TopicName {
            local: format!("{}{PARTITION_SUFFIX}{i}", self.local),
            ..self.clone()
        }
    }
}

impl FromStr for TopicName {
    type Err = TopicNameError;

    fn from_str(s: &str) -> Result<Self, TopicNameError> {
        Self::parse(s)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}/{}/{}",
            self.domain.as_str(),
            self.tenant,
            self.namespace,
            self.local
        )
    }
}

/// The authorizer names a topic's grants by its full name; a partition is
/// also covered by its partitioned topic's grants.
impl kilonova_auth::GrantedTopic for TopicName {
    fn partitioned_name(&self) -> Option<String> {
        self.partition()
            .map(|_| self.partitioned_topic().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_names_expand_like_pulsar() {
        assert_eq!(
            TopicName::parse("my-topic").unwrap().to_string(),
            "persistent://public/default/my-topic"
        );
        assert_eq!(
            TopicName::parse("acme/orders/created").unwrap().to_string(),
            "persistent://acme/orders/created"
        );
        let np = TopicName::parse("non-persistent://acme/ns/t").unwrap();
        assert!(!np.is_persistent());
        assert_eq!(np.namespace_name(), "acme/ns");
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        assert_eq!(TopicName::parse(""), Err(TopicNameError::Empty));
        assert!(matches!(
            TopicName::parse("kafka://a/b/c"),
            Err(TopicNameError::UnknownDomain(_))
        ));
        assert!(matches!(
            TopicName::parse("a/b"),
            Err(TopicNameError::Shape(_))
        ));
        assert!(matches!(
            TopicName::parse("persistent://a/b"),
            Err(TopicNameError::Shape(_))
        ));
        assert!(matches!(
            TopicName::parse("persistent://t"),
            Err(TopicNameError::Shape(_))
        ));
        assert!(matches!(
            TopicName::parse("a/b/c/d"),
            Err(TopicNameError::Shape(_))
        ));
        let err = TopicName::parse("persistent://ten ant/ns/t").unwrap_err();
        assert!(err.to_string().contains("tenant"), "{err}");
        assert!(matches!(
            TopicName::parse("public//t"),
            Err(TopicNameError::Shape(_)) | Err(TopicNameError::Characters { .. })
        ));
        assert_eq!(
            TopicName::parse(&"x".repeat(2000)),
            Err(TopicNameError::TooLong)
        );
    }

    #[test]
    fn dot_and_dot_dot_are_not_names() {
        for bad in [".", ".."] {
            for name in [
                format!("persistent://public/default/{bad}"),
                format!("non-persistent://public/{bad}/t"),
                format!("persistent://{bad}/default/t"),
                format!("{bad}/default/t"),
                bad.to_string(),
            ] {
                assert!(
                    matches!(TopicName::parse(&name), Err(TopicNameError::Dots { .. })),
                    "{name} accepted"
                );
            }
            assert!(matches!(
                NamespaceName::new("public", bad),
                Err(TopicNameError::Dots { .. })
            ));
            assert!(matches!(
                NamespaceName::parse(&format!("{bad}/default")),
                Err(TopicNameError::Dots { .. })
            ));
            assert!(check("cluster", bad).is_err());
        }
        // Dots inside or around a longer name are ordinary characters.
        for ok in ["...", ".a", "a.", "a..b", "..-partition-0"] {
            assert!(
                TopicName::parse(&format!("public/default/{ok}")).is_ok(),
                "{ok}"
            );
            assert!(check("tenant", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn partitions_are_named_and_recognised() {
        let t = TopicName::parse("persistent://a/b/orders").unwrap();
        let p = t.partition_name(3);
        assert_eq!(p.to_string(), "persistent://a/b/orders-partition-3");
        assert_eq!(p.partition(), Some(3));
        assert_eq!(p.partitioned_topic(), t);
        assert_eq!(t.partition(), None);
        // A name that only looks like a partition keeps its whole local name.
        let odd = TopicName::parse("a/b/x-partition-y").unwrap();
        assert_eq!(odd.partition(), None);
        assert_eq!(odd.partitioned_topic(), odd);
    }

    #[test]
    fn names_parse_from_str_as_parse_does() {
        let t: TopicName = "non-persistent://acme/eu/ticks".parse().unwrap();
        assert_eq!(
            t,
            TopicName::parse("non-persistent://acme/eu/ticks").unwrap()
        );
        assert_eq!(t.domain, Domain::NonPersistent);
        assert_eq!(t.namespace(), "acme/eu".parse().unwrap());
        assert_eq!(t.local, "ticks");
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
    fn domains_parse_as_schemes_and_admin_paths_spell_them() {
        assert_eq!("persistent".parse(), Ok(Domain::Persistent));
        assert_eq!("non-persistent".parse(), Ok(Domain::NonPersistent));
        for d in [Domain::Persistent, Domain::NonPersistent] {
            assert_eq!(d.as_str().parse(), Ok(d));
        }
        assert_eq!(
            "durable".parse::<Domain>(),
            Err(TopicNameError::UnknownDomain("durable".into()))
        );
    }

    #[test]
    fn a_partition_shows_the_authorizer_its_partitioned_topic() {
        use kilonova_auth::GrantedTopic;
        let t = TopicName::parse("persistent://a/b/orders").unwrap();
        assert_eq!(t.partitioned_name(), None);
        assert_eq!(
            t.partition_name(3).partitioned_name().as_deref(),
            Some("persistent://a/b/orders")
        );
        let odd = TopicName::parse("a/b/x-partition-y").unwrap();
        assert_eq!(odd.partitioned_name(), None);
    }

    proptest! {
        #[test]
        fn any_input_parses_or_is_refused_without_panicking(s in "\\PC{0,64}") {
            let _ = TopicName::parse(&s);
        }

        #[test]
        fn a_parsed_name_reparses_to_itself(
            d in prop_oneof![Just("persistent"), Just("non-persistent")],
            t in "[a-z0-9_.=:-]{1,12}", n in "[a-z0-9_.=:-]{1,12}", l in "[a-zA-Z0-9_.=:%-]{1,20}",
        ) {
            prop_assume!([&t, &n, &l].iter().all(|c| *c != "." && *c != ".."));
            let name = TopicName::parse(&format!("{d}://{t}/{n}/{l}")).unwrap();
            prop_assert_eq!(TopicName::parse(&name.to_string()).unwrap(), name);
        }
    }
}
