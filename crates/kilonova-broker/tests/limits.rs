#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What a connection may cost the broker: frames before CONNECT, the time to
//! CONNECT, connections per broker and per address.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use kilonova_broker::BrokerConfig;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{base_command::Type, CommandConnect};

use common::{cmd, start, Raw};

async fn raw(addr: std::net::SocketAddr) -> Raw {
    Raw {
        s: TcpStream::connect(addr).await.unwrap(),
        buf: BytesMut::new(),
    }
}

#[tokio::test]
async fn a_frame_over_64_kib_before_connect_closes_the_connection() {
    let server = start(BrokerConfig::default()).await;
    let mut c = raw(server.addr).await;
    // A header announcing 1 MiB, and some of its body.
    let mut b = BytesMut::new();
    b.extend_from_slice(&(1u32 << 20).to_be_bytes());
    b.extend_from_slice(&[0u8; 4096]);
    c.s.write_all(&b).await.unwrap();
    assert!(c.closed().await, "the connection stayed open");

    // The same frame after CONNECT is within the limit.
    let mut c = Raw::connect(server.addr).await;
    c.s.write_all(&b).await.unwrap();
    let still_open = tokio::time::timeout(Duration::from_millis(500), c.closed()).await;
    assert!(
        still_open.is_err(),
        "a 1 MiB frame after CONNECT was refused"
    );
}

#[tokio::test]
async fn a_large_connect_within_64_kib_is_served() {
    let server = start(BrokerConfig::default()).await;
    let mut c = raw(server.addr).await;
    c.send(cmd(Type::Connect, |c| {
        c.connect = Some(Box::new(CommandConnect {
            client_version: "x".repeat(60 << 10),
            protocol_version: Some(19),
            ..Default::default()
        }))
    }))
    .await;
    let f = c.recv().await;
    assert_eq!(f.command.r#type, Type::Connected as i32);
}

#[tokio::test]
async fn a_connection_that_does_not_connect_in_time_is_closed() {
    let config = BrokerConfig {
        connect_timeout_secs: 1,
        ..BrokerConfig::default()
    };
    let server = start(config).await;
    let mut silent = raw(server.addr).await;
    let mut partial = raw(server.addr).await;
    let mut connect = BytesMut::new();
    frame::encode_command(
        &cmd(Type::Connect, |c| {
            c.connect = Some(Box::new(CommandConnect {
                client_version: "slow".into(),
                protocol_version: Some(19),
                ..Default::default()
            }))
        }),
        &mut connect,
    );
    partial
        .s
        .write_all(&connect[..connect.len() - 2])
        .await
        .unwrap();
    let mut connected = Raw::connect(server.addr).await;
    assert!(silent.closed().await, "a silent connection stayed open");
    assert!(partial.closed().await, "a partial CONNECT stayed open");
    // One that connected in time stays.
    connected
        .send(cmd(Type::Ping, |c| c.ping = Some(Default::default())))
        .await;
    connected.recv_type(Type::Pong).await;
}
