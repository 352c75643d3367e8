//! Builders for the commands the broker sends, so the serving code reads as
//! "send a receipt", not as protobuf plumbing.

use bytes::Bytes;
use kilonova_auth::TOKEN_METHOD;
use kilonova_metadata::SchemaRecord;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_lookup_topic_response::LookupType,
    command_partitioned_topic_metadata_response::LookupType as PartitionsType, AuthData,
    BaseCommand, CommandActiveConsumerChange, CommandAuthChallenge, CommandCloseConsumer,
    CommandCloseProducer, CommandConnected, CommandConsumerStatsResponse, CommandError,
    CommandGetOrCreateSchemaResponse, CommandGetSchemaResponse,
    CommandGetTopicsOfNamespaceResponse, CommandHealthCheckResponse, CommandLookupTopicResponse,
    CommandNewTxnResponse, CommandPartitionedTopicMetadataResponse, CommandReachedEndOfTopic,
    CommandSendError, CommandSuccess, CommandTcClientConnectResponse, KeyValue, MessageIdData,
    Schema, ServerError,
};
use kilonova_storage::Position;

use crate::cluster::LookupAnswer;
use crate::error::BrokerError;
use crate::listeners::ListenerUrls;

fn base(t: Type) -> BaseCommand {
    BaseCommand {
        r#type: t as i32,
        ..Default::default()
    }
}

pub(crate) fn message_id(p: Position, batch_index: Option<i32>) -> MessageIdData {
    MessageIdData {
        ledger_id: p.segment,
        entry_id: p.entry,
        batch_index,
        ..Default::default()
    }
}

pub(crate) fn success(request_id: u64) -> BaseCommand {
    BaseCommand {
        success: Some(Box::new(CommandSuccess {
            request_id,
            schema: None,
        })),
        ..base(Type::Success)
    }
}

pub(crate) fn error(request_id: u64, code: ServerError, message: impl Into<String>) -> BaseCommand {
    BaseCommand {
        error: Some(Box::new(CommandError {
            request_id,
            error: code as i32,
            message: message.into(),
        })),
        ..base(Type::Error)
    }
}

pub(crate) fn broker_error(request_id: u64, e: &BrokerError) -> BaseCommand {
    error(request_id, e.server_error(), e.to_string())
}

pub(crate) fn send_error(
    producer_id: u64,
    sequence_id: u64,
    code: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    BaseCommand {
        send_error: Some(Box::new(CommandSendError {
            producer_id,
            sequence_id,
            error: code as i32,
            message: message.into(),
        })),
        ..base(Type::SendError)
    }
}

/// The broker closes a producer; the client reconnects it — to `to`, the
/// topic's new owner, without a lookup, when the broker names one.
pub(crate) fn close_producer(producer_id: u64, to: Option<&ListenerUrls>) -> BaseCommand {
    BaseCommand {
        close_producer: Some(Box::new(CommandCloseProducer {
            producer_id,
            request_id: 0,
            assigned_broker_service_url: to.and_then(|u| u.plain.clone()),
            assigned_broker_service_url_tls: to.and_then(|u| u.tls.clone()),
        })),
        ..base(Type::CloseProducer)
    }
}

/// The broker closes a consumer; the client reconnects it (to `to`, as
/// [`close_producer`]).
pub(crate) fn close_consumer(consumer_id: u64, to: Option<&ListenerUrls>) -> BaseCommand {
    BaseCommand {
        close_consumer: Some(Box::new(CommandCloseConsumer {
            consumer_id,
            request_id: 0,
            assigned_broker_service_url: to.and_then(|u| u.plain.clone()),
            assigned_broker_service_url_tls: to.and_then(|u| u.tls.clone()),
        })),
        ..base(Type::CloseConsumer)
    }
}

/// The consumer has everything of a terminated topic: no more will come.
pub(crate) fn reached_end_of_topic(consumer_id: u64) -> BaseCommand {
    BaseCommand {
        reached_end_of_topic: Some(Box::new(CommandReachedEndOfTopic { consumer_id })),
        ..base(Type::ReachedEndOfTopic)
    }
}

pub(crate) fn active_consumer_change(consumer_id: u64, is_active: bool) -> BaseCommand {
    BaseCommand {
        active_consumer_change: Some(Box::new(CommandActiveConsumerChange {
            consumer_id,
            is_active: Some(is_active),
        })),
        ..base(Type::ActiveConsumerChange)
    }
}

/// A schema version on the wire: 8 bytes, big-endian (as Pulsar's).
pub(crate) fn schema_version_bytes(v: u64) -> Bytes {
    Bytes::copy_from_slice(&v.to_be_bytes())
}

fn server_version() -> String {
    format!("Kilonova/{}", env!("CARGO_PKG_VERSION"))
}

/// CONNECT succeeded: the protocol version the connection speaks.
pub(crate) fn connected(protocol_version: i32, max_message_size: Option<i32>) -> BaseCommand {
    BaseCommand {
        connected: Some(Box::new(CommandConnected {
            server_version: server_version(),
            protocol_version: Some(protocol_version),
            max_message_size,
        })),
        ..base(Type::Connected)
    }
}

/// The client's token expired: it must send a fresh one (AUTH_RESPONSE).
pub(crate) fn auth_challenge(protocol_version: i32) -> BaseCommand {
    BaseCommand {
        auth_challenge: Some(Box::new(CommandAuthChallenge {
            server_version: Some(server_version()),
            challenge: Some(AuthData {
                auth_method_name: Some(TOKEN_METHOD.into()),
                auth_data: Some(Bytes::from_static(b"refresh")),
            }),
            protocol_version: Some(protocol_version),
        })),
        ..base(Type::AuthChallenge)
    }
}

pub(crate) fn ping() -> BaseCommand {
    BaseCommand {
        ping: Some(Box::default()),
        ..base(Type::Ping)
    }
}

pub(crate) fn pong() -> BaseCommand {
    BaseCommand {
        pong: Some(Box::default()),
        ..base(Type::Pong)
    }
}

/// Where a topic is served: this broker (its plain URL, else its TLS one).
pub(crate) fn lookup_response(
    request_id: u64,
    result: Result<&LookupAnswer, &BrokerError>,
) -> BaseCommand {
    let response = match result {
        Ok(a) => CommandLookupTopicResponse {
            broker_service_url: a.urls.plain.clone().or_else(|| a.urls.tls.clone()),
            broker_service_url_tls: a.urls.tls.clone(),
            response: Some(match a.redirect {
                true => LookupType::Redirect,
                false => LookupType::Connect,
            } as i32),
            request_id,
            // A redirect sends the client to the broker chosen to take the
            // bundle: it must take it, not choose again.
            authoritative: Some(true),
            ..Default::default()
        },
        Err(e) => CommandLookupTopicResponse {
            response: Some(LookupType::Failed as i32),
            request_id,
            error: Some(e.server_error() as i32),
            message: Some(e.to_string()),
            ..Default::default()
        },
    };
    BaseCommand {
        lookup_topic_response: Some(Box::new(response)),
        ..base(Type::LookupResponse)
    }
}

/// A topic's partition count (0: not partitioned).
pub(crate) fn partitioned_metadata_response(
    request_id: u64,
    result: Result<u32, &BrokerError>,
) -> BaseCommand {
    let response = match result {
        Ok(n) => CommandPartitionedTopicMetadataResponse {
            partitions: Some(n),
            request_id,
            response: Some(PartitionsType::Success as i32),
            ..Default::default()
        },
        Err(e) => CommandPartitionedTopicMetadataResponse {
            request_id,
            response: Some(PartitionsType::Failed as i32),
            error: Some(e.server_error() as i32),
            message: Some(e.to_string()),
            ..Default::default()
        },
    };
    BaseCommand {
        partition_metadata_response: Some(Box::new(response)),
        ..base(Type::PartitionedMetadataResponse)
    }
}

/// A namespace's topics (`filtered`: by the client's pattern); `topics_hash`
/// lets the client skip an unchanged list (then `topics` is empty).
pub(crate) fn topics_of_namespace_response(
    request_id: u64,
    topics: Vec<String>,
    filtered: bool,
    topics_hash: String,
    changed: bool,
) -> BaseCommand {
    BaseCommand {
        get_topics_of_namespace_response: Some(Box::new(CommandGetTopicsOfNamespaceResponse {
            request_id,
            topics,
            filtered: Some(filtered),
            topics_hash: Some(topics_hash),
            changed: Some(changed),
        })),
        ..base(Type::GetTopicsOfNamespaceResponse)
    }
}

/// A topic's schema (`found`: its version and record) for GET_SCHEMA.
pub(crate) fn schema_response(
    request_id: u64,
    topic: &str,
    found: Option<(u64, SchemaRecord)>,
) -> BaseCommand {
    let response = match found {
        Some((version, s)) => CommandGetSchemaResponse {
            request_id,
            schema: Some(Schema {
                name: s.name,
                schema_data: Bytes::from(s.data),
                r#type: s.kind,
                properties: s
                    .properties
                    .into_iter()
                    .map(|(key, value)| KeyValue { key, value })
                    .collect(),
            }),
            schema_version: Some(schema_version_bytes(version)),
            ..Default::default()
        },
        None => CommandGetSchemaResponse {
            request_id,
            error_code: Some(ServerError::TopicNotFound as i32),
            error_message: Some(format!("topic {topic} not found or has no schema")),
            ..Default::default()
        },
    };
    BaseCommand {
        get_schema_response: Some(Box::new(response)),
        ..base(Type::GetSchemaResponse)
    }
}

/// The version of the schema a GET_OR_CREATE_SCHEMA sent.
pub(crate) fn get_or_create_schema_response(
    request_id: u64,
    result: Result<u64, &BrokerError>,
) -> BaseCommand {
    let mut r = CommandGetOrCreateSchemaResponse {
        request_id,
        ..Default::default()
    };
    match result {
        Ok(v) => r.schema_version = Some(schema_version_bytes(v)),
        Err(e) => {
            r.error_code = Some(e.server_error() as i32);
            r.error_message = Some(e.to_string());
        }
    }
    BaseCommand {
        get_or_create_schema_response: Some(Box::new(r)),
        ..base(Type::GetOrCreateSchemaResponse)
    }
}

pub(crate) fn health_check_response(request_id: u64) -> BaseCommand {
    BaseCommand {
        health_check_response: Some(Box::new(CommandHealthCheckResponse {
            request_id,
            ok: true,
            ..Default::default()
        })),
        ..base(Type::HealthCheckResponse)
    }
}

/// Consumer stats are not served on the binary protocol.
pub(crate) fn consumer_stats_refused(request_id: u64) -> BaseCommand {
    BaseCommand {
        consumer_stats_response: Some(Box::new(CommandConsumerStatsResponse {
            request_id,
            error_code: Some(ServerError::NotAllowedError as i32),
            error_message: Some("consumer stats are served by the admin API".into()),
            ..Default::default()
        })),
        ..base(Type::ConsumerStatsResponse)
    }
}

const NO_TRANSACTIONS: &str = "transactions are not supported";

/// There is no transaction coordinator to connect to.
pub(crate) fn tc_client_connect_refused(request_id: u64) -> BaseCommand {
    BaseCommand {
        tc_client_connect_response: Some(Box::new(CommandTcClientConnectResponse {
            request_id,
            error: Some(ServerError::TransactionCoordinatorNotFound as i32),
            message: Some(NO_TRANSACTIONS.into()),
        })),
        ..base(Type::TcClientConnectResponse)
    }
}

/// No transaction can be opened.
pub(crate) fn new_txn_refused(request_id: u64) -> BaseCommand {
    BaseCommand {
        new_txn_response: Some(Box::new(CommandNewTxnResponse {
            request_id,
            error: Some(ServerError::TransactionCoordinatorNotFound as i32),
            message: Some(NO_TRANSACTIONS.into()),
            ..Default::default()
        })),
        ..base(Type::NewTxnResponse)
    }
}

pub(crate) fn with_type(t: Type, f: impl FnOnce(&mut BaseCommand)) -> BaseCommand {
    let mut c = base(t);
    f(&mut c);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(plain: Option<&str>, tls: Option<&str>) -> LookupAnswer {
        LookupAnswer {
            urls: crate::listeners::ListenerUrls {
                plain: plain.map(String::from),
                tls: tls.map(String::from),
            },
            http: None,
            https: None,
            redirect: false,
        }
    }

    fn lookup(c: &BaseCommand) -> &CommandLookupTopicResponse {
        c.lookup_topic_response
            .as_deref()
            .unwrap_or_else(|| panic!("no lookup response in {c:?}"))
    }

    #[test]
    fn a_lookup_points_at_this_brokers_plain_url_or_else_its_tls_one() {
        let both = urls(Some("pulsar://h:6650"), Some("pulsar+ssl://h:6651"));
        let r = lookup_response(7, Ok(&both));
        let l = lookup(&r);
        assert_eq!(l.request_id, 7);
        assert_eq!(l.response, Some(LookupType::Connect as i32));
        assert_eq!(l.authoritative, Some(true));
        assert_eq!(l.broker_service_url.as_deref(), Some("pulsar://h:6650"));
        assert_eq!(
            l.broker_service_url_tls.as_deref(),
            Some("pulsar+ssl://h:6651")
        );
        let tls_only = urls(None, Some("pulsar+ssl://h:6651"));
        let r = lookup_response(8, Ok(&tls_only));
        assert_eq!(
            lookup(&r).broker_service_url.as_deref(),
            Some("pulsar+ssl://h:6651")
        );
    }

    #[test]
    fn a_redirect_is_authoritative_so_the_broker_asked_next_takes_the_bundle() {
        let elsewhere = LookupAnswer {
            redirect: true,
            ..urls(Some("pulsar://b2:6650"), None)
        };
        let r = lookup_response(9, Ok(&elsewhere));
        let l = lookup(&r);
        assert_eq!(l.response, Some(LookupType::Redirect as i32));
        assert_eq!(l.authoritative, Some(true));
        assert_eq!(l.broker_service_url.as_deref(), Some("pulsar://b2:6650"));
    }

    #[test]
    fn a_failed_lookup_or_partition_count_carries_the_errors_code_and_message() {
        let e = BrokerError::NamespaceNotFound("acme/ns".into());
        let r = lookup_response(3, Err(&e));
        let l = lookup(&r);
        assert_eq!(l.response, Some(LookupType::Failed as i32));
        assert_eq!(l.error, Some(ServerError::TopicNotFound as i32));
        assert_eq!(
            l.message.as_deref(),
            Some("namespace acme/ns does not exist")
        );
        assert_eq!(l.broker_service_url, None);
        let r = partitioned_metadata_response(4, Err(&e));
        let p = r.partition_metadata_response.as_deref();
        assert_eq!(
            p.map(|p| p.response),
            Some(Some(PartitionsType::Failed as i32))
        );
        assert_eq!(p.and_then(|p| p.partitions), None);
        let r = partitioned_metadata_response(5, Ok(4));
        let p = r.partition_metadata_response.as_deref();
        assert_eq!(p.map(|p| (p.request_id, p.partitions)), Some((5, Some(4))));
    }

    #[test]
    fn a_stored_schema_is_answered_with_its_version_and_a_missing_one_with_topic_not_found() {
        let record = SchemaRecord {
            name: "orders".into(),
            kind: 4,
            data: b"{}".to_vec(),
            properties: vec![("k".into(), "v".into())],
            timestamp: 0,
            deleted: false,
        };
        let r = schema_response(9, "t", Some((2, record)));
        let g = r.get_schema_response.as_deref();
        let s = g.and_then(|g| g.schema.as_ref());
        assert_eq!(s.map(|s| (s.name.as_str(), s.r#type)), Some(("orders", 4)));
        assert_eq!(s.map(|s| &s.schema_data[..]), Some(&b"{}"[..]));
        let kv = s.and_then(|s| s.properties.first());
        assert_eq!(
            kv.map(|kv| (kv.key.as_str(), kv.value.as_str())),
            Some(("k", "v"))
        );
        let version = g.and_then(|g| g.schema_version.as_deref());
        assert_eq!(version, Some(&[0, 0, 0, 0, 0, 0, 0, 2][..]));
        let r = schema_response(10, "persistent://a/b/t", None);
        let g = r.get_schema_response.as_deref();
        assert_eq!(
            g.and_then(|g| g.error_code),
            Some(ServerError::TopicNotFound as i32)
        );
        assert_eq!(
            g.and_then(|g| g.error_message.as_deref()),
            Some("topic persistent://a/b/t not found or has no schema")
        );
    }

    /// Whether `c` carries the body of type `t`.
    fn has_body(c: &BaseCommand, t: Type) -> bool {
        match t {
            Type::Connected => c.connected.is_some(),
            Type::AuthChallenge => c.auth_challenge.is_some(),
            Type::Ping => c.ping.is_some(),
            Type::Pong => c.pong.is_some(),
            Type::LookupResponse => c.lookup_topic_response.is_some(),
            Type::PartitionedMetadataResponse => c.partition_metadata_response.is_some(),
            Type::GetTopicsOfNamespaceResponse => c.get_topics_of_namespace_response.is_some(),
            Type::GetSchemaResponse => c.get_schema_response.is_some(),
            Type::GetOrCreateSchemaResponse => c.get_or_create_schema_response.is_some(),
            Type::HealthCheckResponse => c.health_check_response.is_some(),
            Type::ConsumerStatsResponse => c.consumer_stats_response.is_some(),
            Type::TcClientConnectResponse => c.tc_client_connect_response.is_some(),
            Type::NewTxnResponse => c.new_txn_response.is_some(),
            Type::ReachedEndOfTopic => c.reached_end_of_topic.is_some(),
            _ => false,
        }
    }

    #[test]
    fn every_reply_is_of_the_type_whose_body_it_carries() {
        let e = BrokerError::ShuttingDown;
        let replies = [
            (connected(19, Some(5 << 20)), Type::Connected),
            (auth_challenge(19), Type::AuthChallenge),
            (ping(), Type::Ping),
            (pong(), Type::Pong),
            (lookup_response(1, Err(&e)), Type::LookupResponse),
            (
                partitioned_metadata_response(1, Ok(0)),
                Type::PartitionedMetadataResponse,
            ),
            (
                topics_of_namespace_response(1, Vec::new(), false, "0".into(), true),
                Type::GetTopicsOfNamespaceResponse,
            ),
            (schema_response(1, "t", None), Type::GetSchemaResponse),
            (
                get_or_create_schema_response(1, Ok(1)),
                Type::GetOrCreateSchemaResponse,
            ),
            (health_check_response(1), Type::HealthCheckResponse),
            (consumer_stats_refused(1), Type::ConsumerStatsResponse),
            (tc_client_connect_refused(1), Type::TcClientConnectResponse),
            (new_txn_refused(1), Type::NewTxnResponse),
            (reached_end_of_topic(1), Type::ReachedEndOfTopic),
        ];
        for (c, t) in replies {
            assert_eq!(c.r#type, t as i32, "{t:?}");
            assert!(has_body(&c, t), "{t:?} without its body");
        }
    }
}
