#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What a connection may cost the broker: frames before CONNECT, the time to
//! CONNECT, connections per broker (across its listeners) and per address.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use kilonova_broker::{accept_loop, BrokerConfig};
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

/// A second listener on the same broker, as the TLS port is.
async fn second_listener(server: &common::Server) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(accept_loop(
        server.broker.clone(),
        listener,
        None,
        stop_rx.clone(),
        stop_rx,
    ));
    (addr, stop)
}

fn refused(server: &common::Server, reason: &str) -> u64 {
    let text = server.broker.render_metrics();
    let prefix = format!(
        "kilonova_connections_refused_total{{cluster=\"standalone\",reason=\"{reason}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in the metrics"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn max_connections_counts_every_listener_of_the_broker() {
    let config = BrokerConfig {
        max_connections: 2,
        ..BrokerConfig::default()
    };
    let server = start(config).await;
    let (other, _stop) = second_listener(&server).await;
    let _a = Raw::connect(server.addr).await;
    let _b = Raw::connect(other).await;
    for addr in [server.addr, other] {
        let mut c = raw(addr).await;
        assert!(c.closed().await, "a third connection was served");
    }
    assert_eq!(refused(&server, "max_connections"), 2);
    drop(_a);
    // The slot frees once the broker has seen the close.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while try_connect(other).await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed slot was never reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a slot, bounded
    }
}

/// A connection that completed CONNECT, or `None` if the broker closed it.
async fn try_connect(addr: std::net::SocketAddr) -> Option<Raw> {
    let mut c = raw(addr).await;
    c.send(cmd(Type::Connect, |c| {
        c.connect = Some(Box::new(CommandConnect {
            client_version: "retry".into(),
            protocol_version: Some(19),
            ..Default::default()
        }))
    }))
    .await;
    loop {
        if let Some(f) = frame::decode(&mut c.buf, 1 << 20).unwrap() {
            assert_eq!(f.command.r#type, Type::Connected as i32);
            return Some(c);
        }
        let read = tokio::time::timeout(common::WAIT, c.s.read_buf(&mut c.buf)).await;
        match read.expect("no answer to CONNECT") {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn max_connections_per_ip_refuses_one_address_and_serves_another() {
    let config = BrokerConfig {
        max_connections_per_ip: 2,
        ..BrokerConfig::default()
    };
    let server = start(config).await;
    let _a = Raw::connect(server.addr).await;
    let _b = Raw::connect(server.addr).await;
    let mut c = raw(server.addr).await;
    assert!(
        c.closed().await,
        "a third connection from 127.0.0.1 was served"
    );
    assert_eq!(refused(&server, "max_connections_per_ip"), 1);
    // Another loopback address is another client.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = Raw {
        s: socket.connect(server.addr).await.unwrap(),
        buf: BytesMut::new(),
    };
    other
        .send(cmd(Type::Connect, |c| {
            c.connect = Some(Box::new(CommandConnect {
                client_version: "other".into(),
                protocol_version: Some(19),
                ..Default::default()
            }))
        }))
        .await;
    other.recv_type(Type::Connected).await;
}

/// More than the sockets between a client and the broker can buffer, both
/// ways: each side's send and receive buffers at their largest
/// (`tcp_wmem` / `tcp_rmem`), twice, plus a MiB for the broker's own queue
/// and read buffer.
fn kernel_buffer_bound() -> usize {
    let max = |path: &str| -> usize {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.split_whitespace().last()?.parse().ok())
            .unwrap_or(32 << 20)
    };
    2 * (max("/proc/sys/net/ipv4/tcp_rmem") + max("/proc/sys/net/ipv4/tcp_wmem")) + (1 << 20)
}

fn active_connections(server: &common::Server) -> u64 {
    let text = server.broker.render_metrics();
    text.lines()
        .find_map(|l| l.strip_prefix("pulsar_active_connections{cluster=\"standalone\"} "))
        .expect("no pulsar_active_connections in the metrics")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_paused_and_released_when_it_goes_away() {
    let config = BrokerConfig {
        max_outbound_bytes_per_connection: 64 << 10,
        ..BrokerConfig::default()
    };
    let server = start(config).await;
    let mut c = Raw::connect(server.addr).await;
    let mut ping = BytesMut::new();
    frame::encode_command(
        &cmd(Type::Ping, |c| c.ping = Some(Default::default())),
        &mut ping,
    );
    let chunk = ping.repeat((64 << 10) / ping.len());
    // The broker stops reading once its answers are not read, so the
    // client's writes stall once the sockets' buffers are full. What the
    // kernel may buffer depends on the machine (receive buffers grow while
    // the broker reads): the bound is from its own limits, not a guess.
    let bound = kernel_buffer_bound();
    let mut written = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), c.s.write_all(&chunk)).await {
            Err(_) => break, // stalled: the broker stopped reading
            Ok(r) => r.unwrap(),
        }
        written += chunk.len();
        assert!(
            written <= bound,
            "the broker read {written} bytes of PINGs without their PONGs being read \
             (more than the {bound} the sockets' buffers can hold)"
        );
    }
    assert_eq!(active_connections(&server), 1);
    drop(c);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while active_connections(&server) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection of a client that went away was never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a gauge, bounded
    }
}
