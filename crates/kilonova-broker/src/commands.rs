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
    CommandNewTxnResponse, CommandPartitionedTopicMetadataResponse, CommandSendError,
    CommandSendReceipt, CommandSuccess, CommandTcClientConnectResponse, KeyValue, MessageIdData,
    Schema, ServerError,
};
use kilonova_storage::Position;

use crate::broker::ServiceUrls;
use crate::error::BrokerError;

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

pub(crate) fn send_receipt(
    producer_id: u64,
    sequence_id: u64,
    highest_sequence_id: u64,
    id: MessageIdData,
) -> BaseCommand {
    BaseCommand {
        send_receipt: Some(Box::new(CommandSendReceipt {
            producer_id,
            sequence_id,
            message_id: Some(id),
            highest_sequence_id: Some(highest_sequence_id),
        })),
        ..base(Type::SendReceipt)
    }
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

/// The broker closes a producer; the client reconnects it.
pub(crate) fn close_producer(producer_id: u64) -> BaseCommand {
    BaseCommand {
        close_producer: Some(Box::new(CommandCloseProducer {
            producer_id,
            request_id: 0,
        })),
        ..base(Type::CloseProducer)
    }
}

/// The broker closes a consumer; the client reconnects it.
pub(crate) fn close_consumer(consumer_id: u64) -> BaseCommand {
    BaseCommand {
        close_consumer: Some(Box::new(CommandCloseConsumer {
            consumer_id,
            request_id: 0,
        })),
        ..base(Type::CloseConsumer)
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
    result: Result<&ServiceUrls, &BrokerError>,
) -> BaseCommand {
    let response = match result {
        Ok(urls) => CommandLookupTopicResponse {
            broker_service_url: urls.plain.clone().or_else(|| urls.tls.clone()),
            broker_service_url_tls: urls.tls.clone(),
            response: Some(LookupType::Connect as i32),
            request_id,
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
