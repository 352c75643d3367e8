//! Where topics are and which exist: LOOKUP (this broker serves every topic),
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

impl Connection {
    pub(super) async fn lookup(&self, l: CommandLookupTopic) {
        let result = match self.authorized_topic(&l.topic, Want::Lookup).await {
            Ok(n) => match self
                .broker
                .resources()
                .namespace_exists(&n.namespace())
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err(BrokerError::NamespaceNotFound(n.namespace_name())),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        let urls = result.as_ref().map(|()| self.broker.service_urls());
        self.out
            .command(commands::lookup_response(l.request_id, urls));
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
