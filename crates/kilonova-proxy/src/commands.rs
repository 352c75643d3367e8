//! The commands the proxy builds and the request ids it rewrites, so the
//! serving code reads as "answer CONNECTED", not as protobuf plumbing.

use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_lookup_topic_response::LookupType,
    command_partitioned_topic_metadata_response::LookupType as PartitionsType, BaseCommand,
    CommandConnect, CommandConnected, CommandError, CommandGetSchemaResponse,
    CommandLookupTopicResponse, CommandPartitionedTopicMetadataResponse, CommandPing, CommandPong,
    FeatureFlags, ServerError,
};

/// Request id of errors that answer no request (a refused CONNECT), as Pulsar
/// sends them (-1).
pub const NO_REQUEST: u64 = u64::MAX;

/// The newest protocol version the proxy speaks itself (the `.proto` it
/// compiles); relayed connections speak what client and broker agree.
pub const PROTOCOL_VERSION: i32 = 19;

/// How the proxy names itself to clients and brokers.
pub const PROXY_VERSION: &str = concat!("kilonova-proxy-", env!("CARGO_PKG_VERSION"));

pub fn base(t: Type) -> BaseCommand {
    BaseCommand {
        r#type: t as i32,
        ..Default::default()
    }
}

pub fn connected(protocol_version: i32, max_message_size: Option<i32>) -> BaseCommand {
    BaseCommand {
        connected: Some(Box::new(CommandConnected {
            server_version: PROXY_VERSION.into(),
            protocol_version: Some(protocol_version),
            max_message_size,
        })),
        ..base(Type::Connected)
    }
}

pub fn error(request_id: u64, code: ServerError, message: impl Into<String>) -> BaseCommand {
    BaseCommand {
        error: Some(Box::new(CommandError {
            request_id,
            error: code as i32,
            message: message.into(),
        })),
        ..base(Type::Error)
    }
}

pub fn ping() -> BaseCommand {
    BaseCommand {
        ping: Some(Box::new(CommandPing {})),
        ..base(Type::Ping)
    }
}

pub fn pong() -> BaseCommand {
    BaseCommand {
        pong: Some(Box::new(CommandPong {})),
        ..base(Type::Pong)
    }
}

/// A LOOKUP's answer to a client of the proxy: connect to `broker_url`,
/// through the proxy (the client opens a connection to the proxy's address
/// naming `broker_url` in `proxy_to_broker_url`). The URL is also the TLS
/// one: a client on the proxy's TLS port takes `brokerServiceUrlTls`, but
/// only as the name of the broker to be relayed to; its own connection is
/// to the proxy, and the proxy reaches the broker on its plain port.
pub fn lookup_through_proxy(request_id: u64, broker_url: &str) -> BaseCommand {
    BaseCommand {
        lookup_topic_response: Some(Box::new(CommandLookupTopicResponse {
            broker_service_url: Some(broker_url.into()),
            broker_service_url_tls: Some(broker_url.into()),
            response: Some(LookupType::Connect as i32),
            request_id,
            authoritative: Some(true),
            proxy_through_service_url: Some(true),
            ..Default::default()
        })),
        ..base(Type::LookupResponse)
    }
}

/// The answer to a request the proxy could not forward, of the type the
/// client waits for (`request`'s type).
pub fn failure(request: Type, request_id: u64, code: ServerError, message: String) -> BaseCommand {
    match request {
        Type::Lookup => BaseCommand {
            lookup_topic_response: Some(Box::new(CommandLookupTopicResponse {
                response: Some(LookupType::Failed as i32),
                request_id,
                error: Some(code as i32),
                message: Some(message),
                ..Default::default()
            })),
            ..base(Type::LookupResponse)
        },
        Type::PartitionedMetadata => BaseCommand {
            partition_metadata_response: Some(Box::new(CommandPartitionedTopicMetadataResponse {
                request_id,
                response: Some(PartitionsType::Failed as i32),
                error: Some(code as i32),
                message: Some(message),
                ..Default::default()
            })),
            ..base(Type::PartitionedMetadataResponse)
        },
        Type::GetSchema => BaseCommand {
            get_schema_response: Some(Box::new(CommandGetSchemaResponse {
                request_id,
                error_code: Some(code as i32),
                error_message: Some(message),
                ..Default::default()
            })),
            ..base(Type::GetSchemaResponse)
        },
        _ => error(request_id, code, message),
    }
}

/// What the proxy presents to a broker in CONNECT: its own token, and whom it
/// connects for.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The proxy's token (`broker_client_auth_token`).
    pub proxy_token: Option<String>,
    /// The client's authenticated role.
    pub original_principal: Option<String>,
    /// The client's token, with `forward_authorization_credentials`.
    pub original_auth_data: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens never reach logs.
        f.debug_struct("Credentials")
            .field("original_principal", &self.original_principal)
            .finish_non_exhaustive()
    }
}

/// The proxy's CONNECT to a broker on behalf of a client that sent
/// `client` (its protocol version, client version and feature flags pass on).
pub fn broker_connect(client: Option<&CommandConnect>, creds: &Credentials) -> BaseCommand {
    let token = creds.proxy_token.as_ref();
    let connect = CommandConnect {
        client_version: client.map_or_else(|| PROXY_VERSION.into(), |c| c.client_version.clone()),
        auth_method_name: token.map(|_| kilonova_auth::TOKEN_METHOD.into()),
        auth_data: token.map(|t| bytes::Bytes::copy_from_slice(t.as_bytes())),
        protocol_version: Some(
            client
                .and_then(|c| c.protocol_version)
                .unwrap_or(PROTOCOL_VERSION),
        ),
        original_principal: creds.original_principal.clone(),
        original_auth_data: creds.original_auth_data.clone(),
        original_auth_method: creds
            .original_auth_data
            .as_ref()
            .map(|_| kilonova_auth::TOKEN_METHOD.into()),
        feature_flags: match client {
            Some(c) => c.feature_flags,
            None => Some(FeatureFlags {
                supports_auth_refresh: Some(false),
                ..Default::default()
            }),
        },
        ..Default::default()
    };
    BaseCommand {
        connect: Some(Box::new(connect)),
        ..base(Type::Connect)
    }
}

/// The request id of a request the proxy forwards (LOOKUP,
/// PARTITIONED_METADATA, GET_TOPICS_OF_NAMESPACE, GET_SCHEMA), or of a
/// broker's answer to one; `None` for other commands.
pub fn request_id(c: &BaseCommand) -> Option<u64> {
    Some(match Type::try_from(c.r#type).ok()? {
        Type::Lookup => c.lookup_topic.as_ref()?.request_id,
        Type::LookupResponse => c.lookup_topic_response.as_ref()?.request_id,
        Type::PartitionedMetadata => c.partition_metadata.as_ref()?.request_id,
        Type::PartitionedMetadataResponse => c.partition_metadata_response.as_ref()?.request_id,
        Type::GetTopicsOfNamespace => c.get_topics_of_namespace.as_ref()?.request_id,
        Type::GetTopicsOfNamespaceResponse => {
            c.get_topics_of_namespace_response.as_ref()?.request_id
        }
        Type::GetSchema => c.get_schema.as_ref()?.request_id,
        Type::GetSchemaResponse => c.get_schema_response.as_ref()?.request_id,
        Type::Error => c.error.as_ref()?.request_id,
        _ => return None,
    })
}

/// Sets the request id of a command [`request_id`] reads; false if it has none.
pub fn set_request_id(c: &mut BaseCommand, id: u64) -> bool {
    let slot = match Type::try_from(c.r#type) {
        Ok(Type::Lookup) => c.lookup_topic.as_mut().map(|x| &mut x.request_id),
        Ok(Type::LookupResponse) => c.lookup_topic_response.as_mut().map(|x| &mut x.request_id),
        Ok(Type::PartitionedMetadata) => c.partition_metadata.as_mut().map(|x| &mut x.request_id),
        Ok(Type::PartitionedMetadataResponse) => c
            .partition_metadata_response
            .as_mut()
            .map(|x| &mut x.request_id),
        Ok(Type::GetTopicsOfNamespace) => c
            .get_topics_of_namespace
            .as_mut()
            .map(|x| &mut x.request_id),
        Ok(Type::GetTopicsOfNamespaceResponse) => c
            .get_topics_of_namespace_response
            .as_mut()
            .map(|x| &mut x.request_id),
        Ok(Type::GetSchema) => c.get_schema.as_mut().map(|x| &mut x.request_id),
        Ok(Type::GetSchemaResponse) => c.get_schema_response.as_mut().map(|x| &mut x.request_id),
        Ok(Type::Error) => c.error.as_mut().map(|x| &mut x.request_id),
        _ => None,
    };
    match slot {
        Some(s) => {
            *s = id;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilonova_pulsar_protocol::proto::{CommandGetTopicsOfNamespace, CommandLookupTopic};
    use proptest::prelude::*;
    use prost::Message;

    proptest! {
        /// Whatever a peer sends that decodes as a command, reading and
        /// rewriting its request id never panics, and a rewritten id reads back.
        #[test]
        fn request_ids_of_arbitrary_commands_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), id: u64) {
            if let Ok(mut c) = BaseCommand::decode(&bytes[..]) {
                let had = request_id(&c).is_some();
                prop_assert_eq!(set_request_id(&mut c, id), had);
                if had {
                    prop_assert_eq!(request_id(&c), Some(id));
                }
            }
        }
    }

    #[test]
    fn request_ids_of_forwarded_requests_and_answers_are_read_and_rewritten() {
        let mut lookup = BaseCommand {
            lookup_topic: Some(Box::new(CommandLookupTopic {
                topic: "t".into(),
                request_id: 7,
                ..Default::default()
            })),
            ..base(Type::Lookup)
        };
        assert_eq!(request_id(&lookup), Some(7));
        assert!(set_request_id(&mut lookup, 9));
        assert_eq!(request_id(&lookup), Some(9));
        let mut listing = BaseCommand {
            get_topics_of_namespace: Some(Box::new(CommandGetTopicsOfNamespace {
                request_id: 1,
                namespace: "public/default".into(),
                ..Default::default()
            })),
            ..base(Type::GetTopicsOfNamespace)
        };
        assert!(set_request_id(&mut listing, 2));
        assert_eq!(request_id(&listing), Some(2));
        let mut err = error(3, ServerError::UnknownError, "x");
        assert!(set_request_id(&mut err, 4));
        assert_eq!(request_id(&err), Some(4));
        // A command of the type but without its body, and other commands.
        let mut hollow = base(Type::Lookup);
        assert_eq!(request_id(&hollow), None);
        assert!(!set_request_id(&mut hollow, 1));
        assert_eq!(request_id(&ping()), None);
        let mut unknown = BaseCommand {
            r#type: 9999,
            ..Default::default()
        };
        assert!(!set_request_id(&mut unknown, 1));
    }

    #[test]
    fn a_failure_has_the_answer_type_the_client_waits_for() {
        let f = failure(Type::Lookup, 5, ServerError::ServiceNotReady, "m".into());
        assert_eq!(f.r#type, Type::LookupResponse as i32);
        assert_eq!(request_id(&f), Some(5));
        let f = failure(
            Type::PartitionedMetadata,
            5,
            ServerError::ServiceNotReady,
            "m".into(),
        );
        assert_eq!(f.r#type, Type::PartitionedMetadataResponse as i32);
        let f = failure(Type::GetSchema, 5, ServerError::ServiceNotReady, "m".into());
        assert_eq!(f.r#type, Type::GetSchemaResponse as i32);
        let f = failure(
            Type::GetTopicsOfNamespace,
            5,
            ServerError::ServiceNotReady,
            "m".into(),
        );
        assert_eq!(f.r#type, Type::Error as i32);
    }

    #[test]
    fn the_proxys_connect_names_the_client_and_forwards_credentials_only_when_asked() {
        let creds = Credentials {
            proxy_token: Some("proxy-token".into()),
            original_principal: Some("app".into()),
            original_auth_data: None,
        };
        let client = CommandConnect {
            client_version: "Pulsar-CPP-v3.7.0".into(),
            protocol_version: Some(20),
            proxy_to_broker_url: Some("pulsar://b:6650".into()),
            auth_data: Some(bytes::Bytes::from_static(b"client-token")),
            ..Default::default()
        };
        let c = broker_connect(Some(&client), &creds);
        let connect = c.connect.as_ref().map(|c| c.as_ref().clone());
        let Some(connect) = connect else {
            panic!("no CONNECT body")
        };
        assert_eq!(connect.auth_data.as_deref(), Some(&b"proxy-token"[..]));
        assert_eq!(connect.auth_method_name.as_deref(), Some("token"));
        assert_eq!(connect.original_principal.as_deref(), Some("app"));
        assert_eq!(connect.original_auth_data, None);
        assert_eq!(
            connect.proxy_to_broker_url, None,
            "the broker is not asked to proxy"
        );
        assert_eq!(connect.protocol_version, Some(20));
        assert_eq!(connect.client_version, "Pulsar-CPP-v3.7.0");
        let forwarding = Credentials {
            original_auth_data: Some("client-token".into()),
            ..creds
        };
        let c = broker_connect(None, &forwarding);
        let connect = c.connect.map(|c| *c);
        assert_eq!(
            connect
                .as_ref()
                .and_then(|c| c.original_auth_method.as_deref()),
            Some("token")
        );
        assert!(!format!("{forwarding:?}").contains("token"));
    }
}
