//! The proxy against fake brokers on loopback: a lookup redirected from one
//! broker to another comes back as "connect to the second, through the
//! proxy"; the proxy's CONNECT names the client; a relay reaches the learned
//! broker and carries frames both ways; a relay to any other address is
//! refused without a connection being made.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Duration;

use bytes::BytesMut;
use kilonova_proxy::{Proxy, ProxyConfig};
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_lookup_topic_response::LookupType, BaseCommand, CommandConnect,
    CommandConnected, CommandLookupTopic, CommandLookupTopicResponse, CommandPing, CommandPong,
    ServerError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn base(t: Type) -> BaseCommand {
    BaseCommand {
        r#type: t as i32,
        ..Default::default()
    }
}

async fn send(s: &mut TcpStream, c: &BaseCommand) {
    let mut out = BytesMut::new();
    frame::encode_command(c, &mut out);
    s.write_all(&out).await.expect("write to a loopback peer");
}

/// The next command, or `None` once the peer closed.
async fn recv(s: &mut TcpStream, buf: &mut BytesMut) -> Option<BaseCommand> {
    let read = async {
        loop {
            if let Some(f) = frame::decode(buf, 1 << 20).expect("a valid frame") {
                return Some(f.command);
            }
            if s.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a frame or a close in time")
}

/// A fake broker: answers CONNECT with CONNECTED, PING with PONG, and a
/// LOOKUP with `answer(its own URL, request_id)`; reports every CONNECT it gets.
async fn fake_broker(
    answer: impl Fn(&str, u64) -> CommandLookupTopicResponse + Send + Sync + 'static,
) -> (String, mpsc::UnboundedReceiver<CommandConnect>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("pulsar://{}", listener.local_addr().expect("addr"));
    let me = url.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (tx, answer, me) = (tx.clone(), answer.clone(), me.clone());
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while let Some(c) = recv(&mut s, &mut buf).await {
                    match Type::try_from(c.r#type) {
                        Ok(Type::Connect) => {
                            let _ = tx.send(*c.connect.unwrap_or_default());
                            let connected = BaseCommand {
                                connected: Some(Box::new(CommandConnected {
                                    server_version: "fake-broker".into(),
                                    protocol_version: Some(19),
                                    max_message_size: None,
                                })),
                                ..base(Type::Connected)
                            };
                            send(&mut s, &connected).await;
                        }
                        Ok(Type::Ping) => {
                            let pong = BaseCommand {
                                pong: Some(Box::new(CommandPong {})),
                                ..base(Type::Pong)
                            };
                            send(&mut s, &pong).await;
                        }
                        Ok(Type::Lookup) => {
                            let id = c.lookup_topic.map_or(0, |l| l.request_id);
                            let r = BaseCommand {
                                lookup_topic_response: Some(Box::new(answer(&me, id))),
                                ..base(Type::LookupResponse)
                            };
                            send(&mut s, &r).await;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (url, rx)
}

fn lookup_answer(kind: LookupType, url: &str, request_id: u64) -> CommandLookupTopicResponse {
    CommandLookupTopicResponse {
        broker_service_url: Some(url.into()),
        response: Some(kind as i32),
        request_id,
        authoritative: Some(true),
        ..Default::default()
    }
}

fn connect(proxy_to_broker_url: Option<&str>) -> BaseCommand {
    BaseCommand {
        connect: Some(Box::new(CommandConnect {
            client_version: "test-client".into(),
            protocol_version: Some(19),
            proxy_to_broker_url: proxy_to_broker_url.map(Into::into),
            ..Default::default()
        })),
        ..base(Type::Connect)
    }
}

async fn start_proxy(broker_url: &str) -> Proxy {
    let config = ProxyConfig {
        pulsar_port: 0,
        http_port: 0,
        broker_service_urls: vec![broker_url.into()],
        ..ProxyConfig::default()
    };
    Proxy::start(config).await.expect("the proxy starts")
}

#[tokio::test]
async fn a_redirected_lookup_is_followed_and_the_owner_is_reached_through_the_proxy() {
    // A broker nobody names, the topic's owner, and the broker the proxy
    // knows, which redirects to the owner.
    let (owner_url, mut owner_connects) =
        fake_broker(|me, id| lookup_answer(LookupType::Connect, me, id)).await;
    let (owner_url2, mut owner_connects2) =
        fake_broker(|me, id| lookup_answer(LookupType::Connect, me, id)).await;
    let redirect_to = owner_url2.clone();
    let (first_url, mut first_connects) =
        fake_broker(move |_, id| lookup_answer(LookupType::Redirect, &redirect_to, id)).await;
    let proxy = start_proxy(&first_url).await;
    let proxy_addr = format!(
        "127.0.0.1:{}",
        proxy.ports().pulsar.expect("the plain port")
    );

    // Lookup connection: CONNECTED from the proxy, LOOKUP answered Connect
    // to the owner (the broker the redirect named), through the proxy.
    let mut c = TcpStream::connect(&proxy_addr).await.expect("connect");
    let mut buf = BytesMut::new();
    send(&mut c, &connect(None)).await;
    let connected = recv(&mut c, &mut buf).await.expect("CONNECTED");
    assert_eq!(connected.r#type, Type::Connected as i32);
    let lookup = BaseCommand {
        lookup_topic: Some(Box::new(CommandLookupTopic {
            topic: "persistent://public/default/t".into(),
            request_id: 42,
            ..Default::default()
        })),
        ..base(Type::Lookup)
    };
    send(&mut c, &lookup).await;
    let answer = recv(&mut c, &mut buf).await.expect("LOOKUP_RESPONSE");
    let r = answer.lookup_topic_response.expect("a lookup response");
    assert_eq!(r.request_id, 42);
    assert_eq!(r.response, Some(LookupType::Connect as i32));
    assert_eq!(r.proxy_through_service_url, Some(true));
    assert_eq!(r.broker_service_url.as_deref(), Some(owner_url2.as_str()));
    // Both brokers saw the proxy's CONNECT (no credentials: authentication is off).
    let seen = first_connects
        .recv()
        .await
        .expect("the first broker's CONNECT");
    assert_eq!(seen.original_principal, None);
    assert!(owner_connects2.recv().await.is_some());

    // Relay connection to the learned owner, named as clients do (host:port).
    let host_port = owner_url2.trim_start_matches("pulsar://").to_string();
    let mut relay = TcpStream::connect(&proxy_addr).await.expect("connect");
    let mut rbuf = BytesMut::new();
    send(&mut relay, &connect(Some(&host_port))).await;
    let connected = recv(&mut relay, &mut rbuf).await.expect("CONNECTED");
    let server = connected.connected.map(|c| c.server_version);
    assert_eq!(
        server.as_deref(),
        Some("fake-broker"),
        "the broker's CONNECTED, relayed"
    );
    let relayed_connect = owner_connects2.recv().await.expect("the relay's CONNECT");
    assert_eq!(relayed_connect.client_version, "test-client");
    assert_eq!(relayed_connect.proxy_to_broker_url, None);
    let ping = BaseCommand {
        ping: Some(Box::new(CommandPing {})),
        ..base(Type::Ping)
    };
    send(&mut relay, &ping).await;
    let pong = recv(&mut relay, &mut rbuf)
        .await
        .expect("PONG through the relay");
    assert_eq!(pong.r#type, Type::Pong as i32);

    // A relay to a broker nobody named (the unused one) is refused.
    let unknown = owner_url.trim_start_matches("pulsar://").to_string();
    let mut refused = TcpStream::connect(&proxy_addr).await.expect("connect");
    let mut fbuf = BytesMut::new();
    send(&mut refused, &connect(Some(&unknown))).await;
    let err = recv(&mut refused, &mut fbuf).await.expect("ERROR");
    let e = err.error.expect("an ERROR");
    assert_eq!(
        e.error,
        ServerError::NotAllowedError as i32,
        "{}",
        e.message
    );
    assert!(
        recv(&mut refused, &mut fbuf).await.is_none(),
        "closed after the error"
    );
    assert!(
        owner_connects.try_recv().is_err(),
        "the proxy connected to an address that is not a broker"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn garbage_instead_of_connect_is_answered_and_closed_and_the_proxy_keeps_serving() {
    let (url, _connects) =
        fake_broker(|_, id| lookup_answer(LookupType::Connect, "pulsar://b:6650", id)).await;
    let proxy = start_proxy(&url).await;
    let addr = format!(
        "127.0.0.1:{}",
        proxy.ports().pulsar.expect("the plain port")
    );
    for garbage in [
        &b"\xff\xff\xff\xff"[..],
        &b"\x00\x00\x00\x08\x00\x00\x00\x04\xff\xff\xff\xff"[..],
        &b"\x00\x00\x00\x02\x00\x00"[..],
    ] {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(garbage).await.expect("write");
        let mut buf = BytesMut::new();
        let answer = recv(&mut s, &mut buf).await;
        assert!(
            answer
                .as_ref()
                .is_none_or(|c| c.r#type == Type::Error as i32),
            "{answer:?}"
        );
    }
    // A PING before CONNECT is a protocol error too.
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    let ping = BaseCommand {
        ping: Some(Box::new(CommandPing {})),
        ..base(Type::Ping)
    };
    send(&mut s, &ping).await;
    let mut buf = BytesMut::new();
    let answer = recv(&mut s, &mut buf).await.expect("an ERROR");
    assert_eq!(answer.r#type, Type::Error as i32);
    // Still serving.
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    send(&mut s, &connect(None)).await;
    let mut buf = BytesMut::new();
    let connected = recv(&mut s, &mut buf).await.expect("CONNECTED");
    assert_eq!(connected.r#type, Type::Connected as i32);
    proxy.shutdown().await;
}
