#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The broker in-process, driven with raw protocol frames: behaviours real clients
//! cannot easily show (what the broker answers to refused requests, what idle
//! topics and connections cost).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use kilonova_broker::{accept_loop, Broker, BrokerConfig};
use kilonova_pulsar_protocol::frame::{self, Frame};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_ack::AckType, command_subscribe::SubType, BaseCommand, CommandAck,
    CommandConnect, CommandFlow, CommandProducer, CommandSend, CommandSubscribe, MessageIdData,
    MessageMetadata, ServerError,
};
use kilonova_storage::{DirStateStore, SegmentStore, StoreConfig};

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    broker: Broker,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
    _close: watch::Sender<bool>,
}

async fn start(config: BrokerConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut sc = StoreConfig::new(dir.path().join("storage"));
    sc.log_file_bytes = 16 << 20;
    let store = SegmentStore::open(sc).unwrap();
    let state = Arc::new(DirStateStore::open(dir.path().join("state")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metadata =
        kilonova_metadata::EmbeddedStore::open(&dir.path().join("metadata.redb")).unwrap();
    let resources = kilonova_metadata::Resources::new(Arc::new(metadata));
    resources
        .bootstrap(&config.cluster_name, &Default::default())
        .await
        .unwrap();
    let broker = Broker::new(
        config,
        store,
        state,
        resources,
        format!("pulsar://{addr}"),
        kilonova_auth::Security::open(),
    )
    .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let (close, close_rx) = watch::channel(false);
    tokio::spawn(accept_loop(
        broker.clone(),
        listener,
        None,
        stop_rx,
        close_rx,
    ));
    Server {
        broker,
        addr,
        _dir: dir,
        _stop: stop,
        _close: close,
    }
}

/// A raw protocol client.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

fn cmd(t: Type, f: impl FnOnce(&mut BaseCommand)) -> BaseCommand {
    let mut c = BaseCommand {
        r#type: t as i32,
        ..Default::default()
    };
    f(&mut c);
    c
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Raw {
        let mut r = Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        };
        r.send(cmd(Type::Connect, |c| {
            c.connect = Some(Box::new(CommandConnect {
                client_version: "raw-test".into(),
                protocol_version: Some(19),
                ..Default::default()
            }))
        }))
        .await;
        let f = r.recv().await;
        assert_eq!(f.command.r#type, Type::Connected as i32);
        r
    }

    async fn send(&mut self, c: BaseCommand) {
        let mut b = BytesMut::new();
        frame::encode_command(&c, &mut b);
        self.s.write_all(&b).await.unwrap();
    }

    async fn send_message(&mut self, producer_id: u64, seq: u64, data: &[u8]) {
        let c = cmd(Type::Send, |c| {
            c.send = Some(Box::new(CommandSend {
                producer_id,
                sequence_id: seq,
                num_messages: Some(1),
                ..Default::default()
            }))
        });
        let payload = frame::build_payload(
            &MessageMetadata {
                producer_name: "raw".into(),
                sequence_id: seq,
                publish_time: 1,
                ..Default::default()
            },
            data,
        );
        let mut b = BytesMut::new();
        frame::encode_payload_command(&c, &payload, &mut b);
        self.s.write_all(&b).await.unwrap();
    }

    async fn recv(&mut self) -> Frame {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(f) = frame::decode(&mut self.buf, 10 << 20).unwrap() {
                    return f;
                }
                let n = self.s.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "connection closed while waiting for a frame");
            }
        })
        .await
        .expect("no frame from the broker in time")
    }

    /// The next frame that is not a PING (answered) or an unrelated notification.
    async fn recv_type(&mut self, t: Type) -> Frame {
        loop {
            let f = self.recv().await;
            if f.command.r#type == t as i32 {
                return f;
            }
            assert_ne!(
                f.command.r#type,
                Type::Error as i32,
                "unexpected error: {:?}",
                f.command.error
            );
        }
    }

    async fn producer(&mut self, topic: &str, producer_id: u64) {
        self.send(cmd(Type::Producer, |c| {
            c.producer = Some(Box::new(CommandProducer {
                topic: topic.into(),
                producer_id,
                request_id: 100 + producer_id,
                ..Default::default()
            }))
        }))
        .await;
        self.recv_type(Type::ProducerSuccess).await;
    }

    async fn subscribe(&mut self, topic: &str, sub: &str, t: SubType, consumer_id: u64) {
        self.send(cmd(Type::Subscribe, |c| {
            c.subscribe = Some(Box::new(CommandSubscribe {
                topic: topic.into(),
                subscription: sub.into(),
                sub_type: t as i32,
                consumer_id,
                request_id: 200 + consumer_id,
                initial_position: Some(1), // earliest
                ..Default::default()
            }))
        }))
        .await;
        self.recv_type(Type::Success).await;
    }

    async fn flow(&mut self, consumer_id: u64, permits: u32) {
        self.send(cmd(Type::Flow, |c| {
            c.flow = Some(Box::new(CommandFlow {
                consumer_id,
                message_permits: permits,
            }))
        }))
        .await;
    }
}

#[tokio::test]
async fn cumulative_ack_on_shared_subscription_is_refused() {
    let server = start(BrokerConfig::default()).await;
    let mut c = Raw::connect(server.addr).await;
    c.producer("cum-ack", 1).await;
    c.send_message(1, 0, b"x").await;
    c.recv_type(Type::SendReceipt).await;
    c.subscribe("cum-ack", "s", SubType::Shared, 1).await;
    c.flow(1, 10).await;
    let m = c.recv_type(Type::Message).await;
    let id = m.command.message.unwrap().message_id;
    c.send(cmd(Type::Ack, |a| {
        a.ack = Some(Box::new(CommandAck {
            consumer_id: 1,
            ack_type: AckType::Cumulative as i32,
            message_id: vec![MessageIdData { ..id }],
            request_id: Some(7),
            ..Default::default()
        }))
    }))
    .await;
    let r = c.recv_type(Type::AckResponse).await;
    let r = r.command.ack_response.unwrap();
    assert_eq!(r.request_id, Some(7));
    assert_eq!(r.error, Some(ServerError::NotAllowedError as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_get_every_receipt_in_order() {
    // More sends than a topic handles in one burst, written without waiting.
    const N: u64 = 2_000;
    let server = start(BrokerConfig::default()).await;
    let mut c = Raw::connect(server.addr).await;
    c.producer("pipelined", 1).await;
    let mut frames = BytesMut::new();
    for seq in 0..N {
        let send = cmd(Type::Send, |c| {
            c.send = Some(Box::new(CommandSend {
                producer_id: 1,
                sequence_id: seq,
                num_messages: Some(1),
                ..Default::default()
            }))
        });
        let meta = MessageMetadata {
            producer_name: "raw".into(),
            sequence_id: seq,
            publish_time: 1,
            ..Default::default()
        };
        let payload = frame::build_payload(&meta, &seq.to_be_bytes());
        frame::encode_payload_command(&send, &payload, &mut frames);
    }
    c.s.write_all(&frames).await.unwrap();
    for seq in 0..N {
        let r = c.recv_type(Type::SendReceipt).await;
        let r = r.command.send_receipt.unwrap();
        assert_eq!(r.sequence_id, seq, "receipts come back in send order");
    }
}

#[tokio::test]
async fn idle_topic_unloads_its_task_and_keeps_its_messages() {
    let config = BrokerConfig {
        topic_unload_idle_secs: 0,
        cursor_persist_interval_ms: 20,
        ..BrokerConfig::default()
    };
    let server = start(config).await;
    let mut c = Raw::connect(server.addr).await;
    c.producer("idle", 1).await;
    c.send_message(1, 0, b"kept").await;
    c.recv_type(Type::SendReceipt).await;
    assert_eq!(server.broker.loaded_topics(), 1);
    drop(c); // the connection closes: its producer goes away
    let deadline = Instant::now() + WAIT;
    while server.broker.loaded_topics() > 0 {
        assert!(Instant::now() < deadline, "idle topic never unloaded");
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a gauge, bounded
    }
    let mut c = Raw::connect(server.addr).await;
    c.subscribe("idle", "s", SubType::Exclusive, 1).await;
    c.flow(1, 10).await;
    let m = c.recv_type(Type::Message).await;
    assert!(m.payload.unwrap().data.as_ref() == b"kept");
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_costs_less_than_64_kib() {
    const N: u64 = 500;
    let server = start(BrokerConfig::default()).await;
    // Warm up allocator arenas and the runtime with a first batch.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(Raw::connect(server.addr).await);
    }
    let before = rss_bytes();
    let mut conns = Vec::new();
    for _ in 0..N {
        conns.push(Raw::connect(server.addr).await);
    }
    let after = rss_bytes();
    // Both ends live in this process, so this over-counts the broker's share.
    let per_connection = after.saturating_sub(before) / N;
    println!("idle connection: {per_connection} bytes (both ends)");
    assert!(
        per_connection < 64 << 10,
        "an idle connection costs {per_connection} bytes"
    );
}
