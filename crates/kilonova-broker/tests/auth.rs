#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Authentication and authorization on the Pulsar protocol, driven with raw
//! frames: the exact codes every refused command gets, and the token refresh
//! exchange (AUTH_CHALLENGE / AUTH_RESPONSE) real clients hide.

mod common;

use std::time::Duration;

use bytes::Bytes;

use kilonova_auth::issue::{self, KeyPairAlgorithm, SigningKey};
use kilonova_auth::{now_secs, AuthConfig, Secret, Security};
use kilonova_broker::BrokerConfig;
use kilonova_metadata::policies::AuthAction;
use kilonova_metadata::NamespaceName;
use kilonova_pulsar_protocol::frame::Frame;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_subscribe::SubType, AuthData, CommandAuthResponse,
    CommandGetTopicsOfNamespace, CommandLookupTopic, CommandPartitionedTopicMetadata, CommandPing,
    CommandProducer, CommandSubscribe, ServerError,
};

use common::{cmd, start_with, Raw, Server};

const SUPER_USER: &str = "admin";

struct Keys {
    secret: Vec<u8>,
    key: SigningKey,
}

impl Keys {
    fn new() -> Keys {
        let secret = issue::generate_secret_key().unwrap();
        let key = SigningKey::from_secret(&secret).unwrap();
        Keys { secret, key }
    }

    fn token(&self, role: &str, expires_at_secs: Option<u64>) -> String {
        self.key.token("sub", role, expires_at_secs).unwrap()
    }

    fn config(&self, refresh_check_secs: u64) -> AuthConfig {
        AuthConfig {
            authentication_enabled: true,
            authorization_enabled: true,
            super_user_roles: [SUPER_USER.to_string()].into(),
            token_secret_key: Some(Secret::new(format!(
                "data:;base64,{}",
                issue::base64_text(&self.secret)
            ))),
            auth_refresh_check_secs: refresh_check_secs,
            ..AuthConfig::default()
        }
    }
}

async fn secured(keys: &Keys, refresh_check_secs: u64) -> Server {
    let security = Security::from_config(&keys.config(refresh_check_secs)).unwrap();
    start_with(BrokerConfig::default(), security).await
}

/// The frame is an ERROR with `code` (for a refused CONNECT: no request id, -1).
fn assert_error(f: &Frame, code: ServerError, what: &str) {
    assert_eq!(f.command.r#type, Type::Error as i32, "{what}: {f:?}");
    let e = f.command.error.as_ref().expect("ERROR without its body");
    assert_eq!(e.error, code as i32, "{what}: {}", e.message);
}

#[tokio::test]
async fn connect_refuses_missing_malformed_forged_wrongly_signed_and_expired_tokens() {
    let keys = Keys::new();
    let server = secured(&keys, 60).await;
    let other = Keys::new();
    let es256 = issue::generate_key_pair(KeyPairAlgorithm::Es256).unwrap();
    let es256_token = SigningKey::from_private_key(&es256.private_der, None)
        .unwrap()
        .token("sub", SUPER_USER, None)
        .unwrap();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("malformed", Some("not-a-jwt".into())),
        (
            "signed with another key",
            Some(other.token(SUPER_USER, None)),
        ),
        ("ES256 against an HS256 key", Some(es256_token)),
        (
            "expired",
            Some(keys.token(SUPER_USER, Some(now_secs().saturating_sub(10)))),
        ),
        (
            "no role",
            Some(keys.key.token("role", SUPER_USER, None).unwrap()),
        ),
    ];
    for (what, token) in &cases {
        let (mut c, f) = Raw::connect_with(server.addr, token.as_deref()).await;
        assert_error(&f, ServerError::AuthenticationError, what);
        let e = f.command.error.as_ref().unwrap();
        assert_eq!(e.request_id, u64::MAX, "{what}");
        if let Some(t) = token {
            assert!(
                !e.message.contains(t.as_str()),
                "{what}: the error echoes the token"
            );
        }
        assert!(c.closed().await, "{what}: the connection stayed open");
    }
    // Meanwhile a client with a valid token is served.
    let (mut good, f) = Raw::connect_with(server.addr, Some(&keys.token(SUPER_USER, None))).await;
    assert_eq!(f.command.r#type, Type::Connected as i32, "{f:?}");
    good.producer("persistent://public/default/auth-good", 1)
        .await;
    good.send_message(1, 0, b"x").await;
    good.recv_type(Type::SendReceipt).await;
    let metrics = server.broker.render_metrics();
    let failures = format!(
        "pulsar_authentication_failures_total{{cluster=\"standalone\"}} {}",
        cases.len()
    );
    assert!(metrics.contains(&failures), "{metrics}");
}

fn lookup(topic: &str, request_id: u64) -> kilonova_pulsar_protocol::proto::BaseCommand {
    cmd(Type::Lookup, |c| {
        c.lookup_topic = Some(Box::new(CommandLookupTopic {
            topic: topic.into(),
            request_id,
            ..Default::default()
        }))
    })
}

fn producer(topic: &str, producer_id: u64) -> kilonova_pulsar_protocol::proto::BaseCommand {
    cmd(Type::Producer, |c| {
        c.producer = Some(Box::new(CommandProducer {
            topic: topic.into(),
            producer_id,
            request_id: 100 + producer_id,
            ..Default::default()
        }))
    })
}

fn subscribe(topic: &str, consumer_id: u64) -> kilonova_pulsar_protocol::proto::BaseCommand {
    cmd(Type::Subscribe, |c| {
        c.subscribe = Some(Box::new(CommandSubscribe {
            topic: topic.into(),
            subscription: "s".into(),
            sub_type: SubType::Exclusive as i32,
            consumer_id,
            request_id: 200 + consumer_id,
            ..Default::default()
        }))
    })
}

#[tokio::test]
async fn a_role_without_permissions_is_refused_every_topic_command_until_granted() {
    let keys = Keys::new();
    let server = secured(&keys, 60).await;
    let topic = "persistent://public/default/auth-perm";
    let (mut c, f) = Raw::connect_with(server.addr, Some(&keys.token("alice", None))).await;
    assert_eq!(f.command.r#type, Type::Connected as i32, "{f:?}");

    c.send(lookup(topic, 1)).await;
    let f = c.recv_type(Type::LookupResponse).await;
    let r = f.command.lookup_topic_response.unwrap();
    assert_eq!(
        r.error,
        Some(ServerError::AuthorizationError as i32),
        "LOOKUP: {r:?}"
    );

    c.send(cmd(Type::PartitionedMetadata, |b| {
        b.partition_metadata = Some(Box::new(CommandPartitionedTopicMetadata {
            topic: topic.into(),
            request_id: 2,
            ..Default::default()
        }))
    }))
    .await;
    let f = c.recv_type(Type::PartitionedMetadataResponse).await;
    let r = f.command.partition_metadata_response.unwrap();
    assert_eq!(
        r.error,
        Some(ServerError::AuthorizationError as i32),
        "PARTITIONED_METADATA: {r:?}"
    );

    c.send(producer(topic, 1)).await;
    assert_error(&c.recv().await, ServerError::AuthorizationError, "PRODUCER");
    c.send(subscribe(topic, 1)).await;
    assert_error(
        &c.recv().await,
        ServerError::AuthorizationError,
        "SUBSCRIBE",
    );
    c.send(cmd(Type::GetTopicsOfNamespace, |b| {
        b.get_topics_of_namespace = Some(Box::new(CommandGetTopicsOfNamespace {
            request_id: 3,
            namespace: "public/default".into(),
            ..Default::default()
        }))
    }))
    .await;
    assert_error(
        &c.recv().await,
        ServerError::AuthorizationError,
        "GET_TOPICS_OF_NAMESPACE",
    );

    // A namespace grant of produce: producing and looking up now, consuming still not.
    let ns = NamespaceName::parse("public/default").unwrap();
    server
        .broker
        .resources()
        .update_namespace(&ns, |p| {
            p.auth_policies
                .namespace_auth
                .insert("alice".into(), [AuthAction::Produce].into());
            Ok(())
        })
        .await
        .unwrap();
    c.send(producer(topic, 2)).await;
    c.recv_type(Type::ProducerSuccess).await;
    c.send(lookup(topic, 4)).await;
    let f = c.recv_type(Type::LookupResponse).await;
    assert_eq!(f.command.lookup_topic_response.unwrap().error, None);
    c.send(subscribe(topic, 2)).await;
    assert_error(
        &c.recv().await,
        ServerError::AuthorizationError,
        "SUBSCRIBE after a produce grant",
    );
    // A topic-level grant of consume on that topic only.
    server
        .broker
        .resources()
        .update_namespace(&ns, |p| {
            p.auth_policies
                .destination_auth
                .entry(topic.into())
                .or_default()
                .insert("alice".into(), [AuthAction::Consume].into());
            Ok(())
        })
        .await
        .unwrap();
    c.send(subscribe(topic, 3)).await;
    c.recv_type(Type::Success).await;
    c.send(subscribe("persistent://public/default/auth-other", 4))
        .await;
    assert_error(
        &c.recv().await,
        ServerError::AuthorizationError,
        "SUBSCRIBE elsewhere",
    );
}

#[tokio::test]
async fn a_metadata_read_error_during_authorization_is_a_server_error_not_a_refusal() {
    let keys = Keys::new();
    let server = secured(&keys, 60).await;
    let topic = "persistent://public/default/auth-unreadable";
    // The namespace's record, read to find alice's grants, cannot be read.
    server
        .broker
        .resources()
        .store()
        .put(
            "/namespaces/public/default",
            Bytes::from_static(b"{not json"),
            kilonova_metadata::Expect::Any,
            None,
        )
        .await
        .unwrap();
    let (mut c, f) = Raw::connect_with(server.addr, Some(&keys.token("alice", None))).await;
    assert_eq!(f.command.r#type, Type::Connected as i32, "{f:?}");
    c.send(producer(topic, 1)).await;
    let f = c.recv().await;
    assert_error(&f, ServerError::MetadataError, "PRODUCER");
    let message = &f.command.error.as_ref().unwrap().message;
    assert!(message.contains("cannot authorize"), "{message}");
    c.send(lookup(topic, 2)).await;
    let r = c
        .recv_type(Type::LookupResponse)
        .await
        .command
        .lookup_topic_response
        .unwrap();
    assert_eq!(
        r.error,
        Some(ServerError::MetadataError as i32),
        "LOOKUP: {r:?}"
    );
    // Refused all the same: nothing was created.
    assert!(server
        .broker
        .resources()
        .topic(&kilonova_metadata::TopicName::parse(topic).unwrap())
        .await
        .unwrap()
        .is_none());
}

fn auth_response(token: &str) -> kilonova_pulsar_protocol::proto::BaseCommand {
    cmd(Type::AuthResponse, |c| {
        c.auth_response = Some(Box::new(CommandAuthResponse {
            client_version: Some("raw-test".into()),
            response: Some(AuthData {
                auth_method_name: Some("token".into()),
                auth_data: Some(Bytes::copy_from_slice(token.as_bytes())),
            }),
            protocol_version: Some(19),
        }))
    })
}

/// Connects with a token that expires in about a second and waits for the
/// broker's challenge.
async fn challenged(server: &Server, keys: &Keys, role: &str) -> Raw {
    let token = keys.token(role, Some(now_secs() + 1));
    let (mut c, f) = Raw::connect_with(server.addr, Some(&token)).await;
    assert_eq!(f.command.r#type, Type::Connected as i32, "{f:?}");
    let f = c.recv_type(Type::AuthChallenge).await;
    let ch = f.command.auth_challenge.unwrap().challenge.unwrap();
    assert_eq!(ch.auth_method_name.as_deref(), Some("token"));
    c
}

#[tokio::test]
async fn an_expired_token_is_challenged_and_a_refreshed_one_keeps_the_connection() {
    let keys = Keys::new();
    let server = secured(&keys, 1).await;
    let mut c = challenged(&server, &keys, SUPER_USER).await;
    c.send(auth_response(
        &keys.token(SUPER_USER, Some(now_secs() + 3600)),
    ))
    .await;
    // Absence of a close: past two more checks, the connection still answers.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.send(cmd(Type::Ping, |b| b.ping = Some(Box::new(CommandPing {}))))
        .await;
    c.recv_type(Type::Pong).await;
    c.producer("persistent://public/default/auth-refresh", 1)
        .await;
}

#[tokio::test]
async fn an_unanswered_challenge_closes_the_connection() {
    let keys = Keys::new();
    let server = secured(&keys, 1).await;
    let mut c = challenged(&server, &keys, SUPER_USER).await;
    assert_error(
        &c.recv().await,
        ServerError::AuthenticationError,
        "unanswered challenge",
    );
    assert!(c.closed().await, "the connection stayed open");
}

#[tokio::test]
async fn a_refresh_with_an_expired_or_another_roles_token_closes_the_connection() {
    let keys = Keys::new();
    let server = secured(&keys, 1).await;
    let refreshes = [
        (
            "expired",
            keys.token(SUPER_USER, Some(now_secs().saturating_sub(5))),
        ),
        ("another role", keys.token("mallory", None)),
    ];
    for (what, token) in refreshes {
        let mut c = challenged(&server, &keys, SUPER_USER).await;
        c.send(auth_response(&token)).await;
        assert_error(&c.recv().await, ServerError::AuthenticationError, what);
        assert!(c.closed().await, "{what}: the connection stayed open");
    }
}
