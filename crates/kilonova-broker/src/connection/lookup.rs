//! Where topics are and which exist: LOOKUP (the serving broker's URLs for
//! the advertised listener the client names: this broker's in standalone,
//! the bundle owner's in a cluster, see `crate::cluster::lookup`),
//! PARTITIONED_METADATA and GET_TOPICS_OF_NAMESPACE (with the client's topic
//! pattern and the hash that lets a client skip an unchanged list).

use kilonova_auth::{Need, Want};
use kilonova_metadata::names::Domain;
use kilonova_metadata::NamespaceName;
use kilonova_pulsar_protocol::proto::{
    command_get_topics_of_namespace::Mode, CommandGetTopicsOfNamespace, CommandLookupTopic,
    CommandPartitionedTopicMetadata,
};

use super::Connection;
use crate::commands;
use crate::error::BrokerError;
use crate::listeners::ClientListener;

impl Connection {
    pub(super) async fn lookup(&mut self, l: CommandLookupTopic) {
        let result = match self.authorized_topic(&l.topic, Want::Lookup).await {
            Ok(n) => {
                let listener = l.advertised_listener_name.as_deref();
                let authoritative = l.authoritative.unwrap_or(false);
                self.broker.lookup_topic(&n, listener, authoritative).await
            }
            Err(e) => Err(e),
        };
        self.broker.metrics().lookup_answered(result.as_ref().ok());
        if result.is_ok() {
            // The client uses this listener: a handover names it the next
            // owner's URLs of it (producers and consumers made from now on).
            let name = l
                .advertised_listener_name
                .as_deref()
                .filter(|n| !n.is_empty());
            self.listener = ClientListener::Named(name.map(Into::into));
        }
        if let Err(e @ BrokerError::UnknownListener(_)) = &result {
            tracing::debug!(topic = %l.topic, error = %e, "lookup refused");
        }
        self.out
            .command(commands::lookup_response(l.request_id, result.as_ref()));
    }

    pub(super) async fn partitioned_metadata(&self, m: CommandPartitionedTopicMetadata) {
        let result = match self.authorized_topic(&m.topic, Want::Lookup).await {
            Ok(n) => self.broker.partitions(&n).await,
            Err(e) => Err(e),
        };
        self.out.command(commands::partitioned_metadata_response(
            m.request_id,
            result.as_ref().copied(),
        ));
    }

    pub(super) async fn topics_of_namespace(&self, g: CommandGetTopicsOfNamespace) {
        let reply = match self.namespace_topics(&g).await {
            Err(e) => commands::broker_error(g.request_id, &e),
            Ok(topics) => {
                let l = listing(
                    topics,
                    g.topics_pattern.as_deref(),
                    g.topics_hash.as_deref(),
                );
                commands::topics_of_namespace_response(
                    g.request_id,
                    l.topics,
                    l.filtered,
                    l.hash,
                    l.changed,
                )
            }
        };
        self.out.command(reply);
    }

    /// The topics of the request's namespace and domain, if the role may look them up.
    async fn namespace_topics(
        &self,
        g: &CommandGetTopicsOfNamespace,
    ) -> Result<Vec<String>, BrokerError> {
        let domain = match g.mode() {
            Mode::Persistent => Some(Domain::Persistent),
            Mode::NonPersistent => Some(Domain::NonPersistent),
            Mode::All => None,
        };
        let ns = NamespaceName::parse(&g.namespace)?;
        self.authorize(Need::Namespace(Want::Lookup), &ns).await?;
        self.broker
            .resources()
            .topics_of_namespace(&ns, domain)
            .await
            .map_err(|e| match e {
                kilonova_metadata::MetadataError::NotFound(_) => {
                    BrokerError::NamespaceNotFound(g.namespace.clone())
                }
                e => e.into(),
            })
    }
}

/// What GET_TOPICS_OF_NAMESPACE answers.
#[derive(Debug, PartialEq)]
struct Listing {
    /// Empty when the client's hash says it has the list already.
    topics: Vec<String>,
    /// Whether the client's pattern was applied.
    filtered: bool,
    /// CRC32C of the (filtered) list, comma-joined, in 8 hex digits.
    hash: String,
    changed: bool,
}

/// The namespace's `topics` as a client with `pattern` and the list's
/// previous `client_hash` gets them.
fn listing(mut topics: Vec<String>, pattern: Option<&str>, client_hash: Option<&str>) -> Listing {
    let mut filtered = false;
    if let Some(re) = pattern.and_then(compile_pattern) {
        topics.retain(|t| {
            let short = t.split_once("://").map_or(t.as_str(), |(_, r)| r);
            re.is_match(t) || re.is_match(short)
        });
        filtered = true;
    }
    let hash = format!("{:08x}", crc32c::crc32c(topics.join(",").as_bytes()));
    let changed = client_hash != Some(hash.as_str());
    Listing {
        topics: if changed { topics } else { Vec::new() },
        filtered,
        hash,
        changed,
    }
}

/// A client's topic pattern (a Java regex matched against whole names), if our
/// regex engine accepts it within bounded size; clients filter again themselves.
fn compile_pattern(p: &str) -> Option<regex::Regex> {
    regex::RegexBuilder::new(&format!("^(?:{p})$"))
        .size_limit(1 << 20)
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    const TOPICS: [&str; 3] = [
        "persistent://public/default/orders-1",
        "persistent://public/default/payments",
        "non-persistent://public/default/orders-2",
    ];

    #[test]
    fn a_pattern_keeps_the_topics_whose_whole_full_or_short_name_matches() {
        let short = listing(names(&TOPICS), Some("public/default/orders-.*"), None);
        assert!(short.filtered);
        assert_eq!(short.topics, names(&[TOPICS[0], TOPICS[2]]));
        // Matched whole: "persistent://…" is not found inside "non-persistent://…".
        let full = listing(names(&TOPICS), Some("persistent://.*/orders-.*"), None);
        assert_eq!(full.topics, names(&[TOPICS[0]]));
        let prefix = listing(names(&TOPICS), Some("public/default/orders"), None);
        assert!(prefix.topics.is_empty(), "{:?}", prefix.topics);
    }

    #[test]
    fn a_pattern_the_regex_engine_refuses_filters_nothing() {
        // Too large compiled (over 1 MiB, under the engine's own 10 MiB
        // default), and not a regex at all.
        for p in ["\\w{100}", "orders-("] {
            assert!(compile_pattern(p).is_none(), "{p}");
            let l = listing(names(&TOPICS), Some(p), None);
            assert!(!l.filtered);
            assert_eq!(l.topics, names(&TOPICS));
        }
    }

    #[test]
    fn a_client_holding_the_current_list_gets_only_its_hash() {
        let first = listing(names(&TOPICS), None, None);
        assert!(first.changed && !first.filtered);
        assert_eq!(first.topics, names(&TOPICS));
        let expected = crc32c::crc32c(TOPICS.join(",").as_bytes());
        assert_eq!(first.hash, format!("{expected:08x}"));
        let again = listing(names(&TOPICS), None, Some(&first.hash));
        assert!(!again.changed);
        assert!(again.topics.is_empty());
        assert_eq!(again.hash, first.hash);
    }

    #[test]
    fn the_hash_covers_the_filtered_list() {
        let all = listing(names(&TOPICS), None, None);
        let some = listing(names(&TOPICS), Some(".*payments"), Some(&all.hash));
        assert!(some.changed, "a filtered list is another list");
        let expected = crc32c::crc32c(TOPICS[1].as_bytes());
        assert_eq!(some.hash, format!("{expected:08x}"));
    }
}
