#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
//! The broker in-process on a loopback port, and a raw protocol client: shared
//! by the raw-frame tests.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use kilonova_auth::Security;
use kilonova_broker::{accept_loop, Broker, BrokerConfig};
use kilonova_pulsar_protocol::frame::{self, Frame};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_subscribe::SubType, BaseCommand, CommandConnect, CommandFlow,
    CommandProducer, CommandSend, CommandSubscribe, MessageMetadata,
};
use kilonova_storage::{DirStateStore, SegmentStore, StoreConfig};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    pub broker: Broker,
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
    _close: watch::Sender<bool>,
}

pub async fn start(config: BrokerConfig) -> Server {
    start_with(config, Security::open()).await
}

/// A broker checking clients with `security`.
pub async fn start_with(config: BrokerConfig, security: Security) -> Server {
    start_with_clock(config, security, kilonova_broker::clock::system()).await
}

/// A broker whose topics and connections read `clock` (a test's
/// `ManualClock`, to drive expirations and rates).
pub async fn start_with_clock(
    config: BrokerConfig,
    security: Security,
    clock: kilonova_broker::clock::SharedClock,
) -> Server {
    start_inner(config, security, clock, |_| {}).await
}

/// A broker whose segment store's configuration `tune` changed (a test
/// that holds group commits open, say).
#[allow(dead_code)] // not every test binary uses it
pub async fn start_tuned(config: BrokerConfig, tune: fn(&mut StoreConfig)) -> Server {
    start_inner(
        config,
        Security::open(),
        kilonova_broker::clock::system(),
        tune,
    )
    .await
}

async fn start_inner(
    config: BrokerConfig,
    security: Security,
    clock: kilonova_broker::clock::SharedClock,
    tune: fn(&mut StoreConfig),
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = storage_tuned(&dir, tune);
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
        security,
        clock,
    )
    .unwrap();
    serving(broker, listener, dir)
}

/// A segment store and state store in `dir`, `tune` applied to the
/// segment store's configuration.
fn storage_tuned(
    dir: &tempfile::TempDir,
    tune: fn(&mut StoreConfig),
) -> (SegmentStore, Arc<DirStateStore>) {
    let mut sc = StoreConfig::new(dir.path().join("storage"));
    sc.log_file_bytes = 16 << 20;
    tune(&mut sc);
    let store = SegmentStore::open(sc).unwrap();
    let state = Arc::new(DirStateStore::open(dir.path().join("state")).unwrap());
    (store, state)
}

/// `broker` accepting Pulsar connections on `listener` until the server drops.
fn serving(broker: Broker, listener: tokio::net::TcpListener, dir: tempfile::TempDir) -> Server {
    let addr = listener.local_addr().unwrap();
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
pub struct Raw {
    pub s: TcpStream,
    pub buf: BytesMut,
}

pub fn cmd(t: Type, f: impl FnOnce(&mut BaseCommand)) -> BaseCommand {
    let mut c = BaseCommand {
        r#type: t as i32,
        ..Default::default()
    };
    f(&mut c);
    c
}

impl Raw {
    pub async fn connect(addr: std::net::SocketAddr) -> Raw {
        let (r, f) = Raw::connect_with(addr, None).await;
        assert_eq!(f.command.r#type, Type::Connected as i32);
        r
    }

    /// Connects presenting `token` (method `token`); returns the broker's
    /// answer to CONNECT too.
    pub async fn connect_with(addr: std::net::SocketAddr, token: Option<&str>) -> (Raw, Frame) {
        let mut r = Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        };
        r.send(cmd(Type::Connect, |c| {
            c.connect = Some(Box::new(CommandConnect {
                client_version: "raw-test".into(),
                protocol_version: Some(19),
                auth_method_name: token.map(|_| "token".into()),
                auth_data: token.map(|t| bytes::Bytes::copy_from_slice(t.as_bytes())),
                ..Default::default()
            }))
        }))
        .await;
        let f = r.recv().await;
        (r, f)
    }

    /// Whether the broker closes the connection within `WAIT` (frames before
    /// the close are skipped).
    pub async fn closed(&mut self) -> bool {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => self.buf.clear(),
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    pub async fn send(&mut self, c: BaseCommand) {
        let mut b = BytesMut::new();
        frame::encode_command(&c, &mut b);
        self.s.write_all(&b).await.unwrap();
    }

    pub async fn send_message(&mut self, producer_id: u64, seq: u64, data: &[u8]) {
        let metadata = MessageMetadata {
            producer_name: "raw".into(),
            sequence_id: seq,
            publish_time: 1,
            ..Default::default()
        };
        self.send_message_with(producer_id, &metadata, data).await;
    }

    /// Sends one message with `metadata` (its sequence id is the SEND's).
    pub async fn send_message_with(
        &mut self,
        producer_id: u64,
        metadata: &MessageMetadata,
        data: &[u8],
    ) {
        let c = cmd(Type::Send, |c| {
            c.send = Some(Box::new(CommandSend {
                producer_id,
                sequence_id: metadata.sequence_id,
                num_messages: Some(1),
                ..Default::default()
            }))
        });
        let payload = frame::build_payload(metadata, data);
        let mut b = BytesMut::new();
        frame::encode_payload_command(&c, &payload, &mut b);
        self.s.write_all(&b).await.unwrap();
    }

    pub async fn recv(&mut self) -> Frame {
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
    pub async fn recv_type(&mut self, t: Type) -> Frame {
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

    pub async fn producer(&mut self, topic: &str, producer_id: u64) {
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

    pub async fn subscribe(&mut self, topic: &str, sub: &str, t: SubType, consumer_id: u64) {
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

    pub async fn flow(&mut self, consumer_id: u64, permits: u32) {
        self.send(cmd(Type::Flow, |c| {
            c.flow = Some(Box::new(CommandFlow {
                consumer_id,
                message_permits: permits,
            }))
        }))
        .await;
    }
}

/// A broker of a cluster whose metadata is `resources` (shared with the
/// other members), registered as `id` with a session of `ttl`. Its HTTP
/// URL is `http://<id>` (not served: the tests here use the protocol port).
pub async fn start_cluster_member(
    resources: kilonova_metadata::Resources,
    id: &str,
    ttl: Duration,
) -> Server {
    start_cluster_member_with(resources, id, ttl, BrokerConfig::default()).await
}

/// [`start_cluster_member`] with `config`.
pub async fn start_cluster_member_with(
    resources: kilonova_metadata::Resources,
    id: &str,
    ttl: Duration,
    config: BrokerConfig,
) -> Server {
    start_member(resources, id, ttl, config, None, |_| {}).await
}

/// [`start_cluster_member_with`] whose segment store's configuration
/// `tune` changes.
pub async fn start_cluster_member_tuned(
    resources: kilonova_metadata::Resources,
    id: &str,
    ttl: Duration,
    config: BrokerConfig,
    tune: fn(&mut StoreConfig),
) -> Server {
    start_member(resources, id, ttl, config, None, tune).await
}

/// [`start_cluster_member`] with advertised listeners `internal` (its
/// address, the internal listener) and `external` (the URL given).
pub async fn start_cluster_member_listening(
    resources: kilonova_metadata::Resources,
    id: &str,
    ttl: Duration,
    external: &str,
) -> Server {
    start_member(
        resources,
        id,
        ttl,
        BrokerConfig::default(),
        Some(external),
        |_| {},
    )
    .await
}

async fn start_member(
    resources: kilonova_metadata::Resources,
    id: &str,
    ttl: Duration,
    config: BrokerConfig,
    external: Option<&str>,
    tune: fn(&mut StoreConfig),
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = storage_tuned(&dir, tune);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    resources
        .bootstrap(&config.cluster_name, &Default::default())
        .await
        .unwrap();
    let listeners = match external {
        None => Default::default(),
        Some(url) => {
            let table = [
                ("internal".to_owned(), vec![format!("pulsar://{addr}")]),
                ("external".to_owned(), vec![url.to_owned()]),
            ];
            kilonova_broker::AdvertisedListeners::new(
                &table.into_iter().collect(),
                Some("internal"),
            )
            .unwrap()
        }
    };
    let urls = kilonova_broker::ServiceUrls {
        plain: Some(format!("pulsar://{addr}")),
        http: Some(format!("http://{id}")),
        listeners,
        ..Default::default()
    };
    let broker = Broker::new(
        config,
        store,
        state,
        resources,
        urls,
        Security::open(),
        kilonova_broker::clock::system(),
    )
    .unwrap();
    broker
        .join_cluster(kilonova_broker::ClusterSettings {
            broker_id: id.to_owned(),
            session_ttl: ttl,
        })
        .await
        .unwrap();
    serving(broker, listener, dir)
}
