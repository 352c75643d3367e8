//! Where topics are and which exist: LOOKUP (this broker serves every topic),
//! PARTITIONED_METADATA and GET_TOPICS_OF_NAMESPACE (with the client's topic
//! pattern and the hash that lets a client skip an unchanged list).

use kilonova_auth::{Need, Want};
use kilonova_metadata::names::Domain;
use kilonova_metadata::NamespaceName;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_get_topics_of_namespace::Mode,
    command_lookup_topic_response::LookupType, command_partitioned_topic_metadata_response,
    CommandGetTopicsOfNamespace, CommandGetTopicsOfNamespaceResponse, CommandLookupTopic,
    CommandLookupTopicResponse, CommandPartitionedTopicMetadata,
    CommandPartitionedTopicMetadataResponse,
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
        let urls = self.broker.service_urls().clone();
        self.out
            .command(commands::with_type(Type::LookupResponse, |b| {
                b.lookup_topic_response = Some(match result {
                    Ok(()) => Box::new(CommandLookupTopicResponse {
                        broker_service_url: urls.plain.or(urls.tls.clone()),
                        broker_service_url_tls: urls.tls,
                        response: Some(LookupType::Connect as i32),
                        request_id: l.request_id,
                        authoritative: Some(true),
                        ..Default::default()
                    }),
                    Err(e) => Box::new(CommandLookupTopicResponse {
                        response: Some(LookupType::Failed as i32),
                        request_id: l.request_id,
                        error: Some(e.server_error() as i32),
                        message: Some(e.to_string()),
                        ..Default::default()
                    }),
                });
            }));
    }

    pub(super) async fn partitioned_metadata(&self, m: CommandPartitionedTopicMetadata) {
        let result = match self.authorized_topic(&m.topic, Want::Lookup).await {
            Ok(n) => self.broker.partitions(&n).await,
            Err(e) => Err(e),
        };
        use command_partitioned_topic_metadata_response::LookupType as L;
        self.out.command(commands::with_type(
            Type::PartitionedMetadataResponse,
            |b| {
                b.partition_metadata_response = Some(match result {
                    Ok(n) => Box::new(CommandPartitionedTopicMetadataResponse {
                        partitions: Some(n),
                        request_id: m.request_id,
                        response: Some(L::Success as i32),
                        ..Default::default()
                    }),
                    Err(e) => Box::new(CommandPartitionedTopicMetadataResponse {
                        request_id: m.request_id,
                        response: Some(L::Failed as i32),
                        error: Some(e.server_error() as i32),
                        message: Some(e.to_string()),
                        ..Default::default()
                    }),
                });
            },
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
                commands::with_type(Type::GetTopicsOfNamespaceResponse, |b| {
                    b.get_topics_of_namespace_response =
                        Some(Box::new(CommandGetTopicsOfNamespaceResponse {
                            request_id: g.request_id,
                            topics: l.topics,
                            filtered: Some(l.filtered),
                            topics_hash: Some(l.hash),
                            changed: Some(l.changed),
                        }));
                })
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
