//! The connection: a writer task that flushes one shared output buffer, a
//! reader task that decodes frames and routes them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use kilonova_pulsar_protocol::frame::{self, Frame, DEFAULT_MAX_FRAME_BYTES};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_lookup_topic_response::LookupType as TopicLookupType,
    command_partitioned_topic_metadata_response::LookupType, AuthData, BaseCommand,
    CommandAuthResponse, CommandConnect, CommandLookupTopic, CommandMessage,
    CommandPartitionedTopicMetadata, CommandPong, MessageMetadata,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::consumer::{self, Consumer, ConsumerOptions};
use crate::producer::{self, Producer, ProducerOptions};
use crate::tls::{self, ServiceUrl};
use crate::ClientError;

/// The protocol version this client speaks.
const PROTOCOL_VERSION: i32 = 19;
const CLIENT_VERSION: &str = concat!("kilonova-client/", env!("CARGO_PKG_VERSION"));

/// Builds a command of type `t`, filled in by `f`.
pub(crate) fn command(t: Type, f: impl FnOnce(&mut BaseCommand)) -> BaseCommand {
    let mut c = BaseCommand {
        r#type: t as i32,
        ..Default::default()
    };
    f(&mut c);
    c
}

/// What the reader hands a consumer.
pub(crate) enum ConsumerEvent {
    Message(CommandMessage, Bytes),
    Closed,
}

type Responder = oneshot::Sender<Result<BaseCommand, ClientError>>;

pub(crate) struct Conn {
    out: Mutex<BytesMut>,
    wake_writer: Notify,
    closed: AtomicBool,
    next_id: AtomicU64,
    requests: Mutex<HashMap<u64, Responder>>,
    producers: Mutex<HashMap<u64, Arc<producer::Shared>>>,
    consumers: Mutex<HashMap<u64, mpsc::UnboundedSender<ConsumerEvent>>>,
    /// The token presented at CONNECT, presented again when challenged.
    token: Option<String>,
    /// The largest frame accepted: also the cap on a payload's uncompressed size.
    pub max_frame: usize,
}

impl Conn {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Queues a command for the writer.
    pub fn send(&self, cmd: &BaseCommand) {
        self.with_output(|out| frame::encode_command(cmd, out));
    }

    /// Queues a payload command whose payload is built in place.
    pub fn send_message(&self, cmd: &BaseCommand, metadata: &MessageMetadata, data: &[u8]) {
        self.with_output(|out| frame::encode_message(cmd, metadata, data, out));
    }

    fn with_output(&self, f: impl FnOnce(&mut BytesMut)) {
        if let Ok(mut out) = self.out.lock() {
            let was_empty = out.is_empty();
            f(&mut out);
            if was_empty {
                self.wake_writer.notify_one();
            }
        }
    }

    /// Sends a command that carries `request_id` and waits for its answer.
    /// An ERROR answer (or a failed lookup-style answer) is an `Err`.
    pub async fn request(
        &self,
        request_id: u64,
        cmd: BaseCommand,
    ) -> Result<BaseCommand, ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut requests = self.requests.lock().map_err(|_| ClientError::Closed)?;
            if self.is_closed() {
                return Err(ClientError::Closed);
            }
            requests.insert(request_id, tx);
        }
        self.send(&cmd);
        rx.await.map_err(|_| ClientError::Closed)?
    }

    pub fn register_producer(&self, id: u64, p: Arc<producer::Shared>) {
        if let Ok(mut m) = self.producers.lock() {
            m.insert(id, p);
        }
    }

    pub fn forget_producer(&self, id: u64) {
        if let Ok(mut m) = self.producers.lock() {
            m.remove(&id);
        }
    }

    pub fn register_consumer(&self, id: u64, tx: mpsc::UnboundedSender<ConsumerEvent>) {
        if let Ok(mut m) = self.consumers.lock() {
            m.insert(id, tx);
        }
    }

    pub fn forget_consumer(&self, id: u64) {
        if let Ok(mut m) = self.consumers.lock() {
            m.remove(&id);
        }
    }

    fn respond(&self, request_id: u64, answer: Result<BaseCommand, ClientError>) {
        let waiter = self
            .requests
            .lock()
            .ok()
            .and_then(|mut r| r.remove(&request_id));
        if let Some(tx) = waiter {
            let _ = tx.send(answer);
        }
    }

    fn producer(&self, id: u64) -> Option<Arc<producer::Shared>> {
        self.producers.lock().ok()?.get(&id).cloned()
    }

    fn to_consumer(&self, id: u64, event: ConsumerEvent) {
        if let Some(tx) = self.consumers.lock().ok().and_then(|m| m.get(&id).cloned()) {
            let _ = tx.send(event);
        }
    }

    /// Routes one frame from the broker.
    fn dispatch(&self, f: Frame) {
        let c = f.command;
        match c.r#type() {
            Type::Ping => self.send(&command(Type::Pong, |b| {
                b.pong = Some(Box::new(CommandPong {}))
            })),
            // The broker wants fresh credentials: this client has only the one token.
            Type::AuthChallenge => {
                if let Some(t) = &self.token {
                    self.send(&command(Type::AuthResponse, |b| {
                        b.auth_response = Some(Box::new(CommandAuthResponse {
                            client_version: Some(CLIENT_VERSION.into()),
                            response: Some(AuthData {
                                auth_method_name: Some("token".into()),
                                auth_data: Some(Bytes::copy_from_slice(t.as_bytes())),
                            }),
                            protocol_version: Some(PROTOCOL_VERSION),
                        }))
                    }));
                }
            }
            Type::Success => {
                if let Some(s) = &c.success {
                    self.respond(s.request_id, Ok(c.clone()));
                }
            }
            Type::Error => {
                if let Some(e) = &c.error {
                    self.respond(e.request_id, Err(ClientError::broker(e.error, &e.message)));
                }
            }
            Type::ProducerSuccess => {
                if let Some(s) = &c.producer_success {
                    self.respond(s.request_id, Ok(c.clone()));
                }
            }
            Type::PartitionedMetadataResponse => {
                if let Some(r) = &c.partition_metadata_response {
                    let failed = r.response() == LookupType::Failed;
                    let answer = lookup_answer(&c, failed, r.error, &r.message);
                    self.respond(r.request_id, answer);
                }
            }
            Type::LookupResponse => {
                if let Some(r) = &c.lookup_topic_response {
                    let failed = r.response() == TopicLookupType::Failed;
                    let answer = lookup_answer(&c, failed, r.error, &r.message);
                    self.respond(r.request_id, answer);
                }
            }
            Type::GetLastMessageIdResponse => {
                if let Some(r) = &c.get_last_message_id_response {
                    self.respond(r.request_id, Ok(c.clone()));
                }
            }
            Type::SendReceipt => {
                if let Some(r) = c.send_receipt {
                    if let Some(p) = self.producer(r.producer_id) {
                        p.on_receipt(r.sequence_id, r.message_id.as_ref());
                    }
                }
            }
            Type::SendError => {
                if let Some(e) = c.send_error {
                    if let Some(p) = self.producer(e.producer_id) {
                        p.on_send_error(e.sequence_id, ClientError::broker(e.error, e.message));
                    }
                }
            }
            Type::CloseProducer => {
                if let Some(cp) = c.close_producer {
                    if let Some(p) = self.producer(cp.producer_id) {
                        p.fail(ClientError::Closed);
                    }
                }
            }
            Type::Message => {
                if let (Some(m), Some(p)) = (c.message, f.payload) {
                    let id = m.consumer_id;
                    self.to_consumer(id, ConsumerEvent::Message(*m, p.raw));
                }
            }
            Type::CloseConsumer => {
                if let Some(cc) = c.close_consumer {
                    self.to_consumer(cc.consumer_id, ConsumerEvent::Closed);
                }
            }
            other => tracing::trace!(?other, "ignored a frame from the broker"),
        }
    }

    /// The connection is gone: every waiter learns it.
    fn fail(&self, e: &ClientError) {
        self.closed.store(true, Ordering::Release);
        self.wake_writer.notify_one();
        let requests: Vec<_> = self
            .requests
            .lock()
            .map(|mut r| r.drain().collect())
            .unwrap_or_default();
        for (_, tx) in requests {
            let _ = tx.send(Err(e.clone()));
        }
        let producers: Vec<_> = self
            .producers
            .lock()
            .map(|mut m| m.drain().collect())
            .unwrap_or_default();
        for (_, p) in producers {
            p.fail(e.clone());
        }
        let consumers: Vec<_> = self
            .consumers
            .lock()
            .map(|mut m| m.drain().collect())
            .unwrap_or_default();
        for (_, tx) in consumers {
            let _ = tx.send(ConsumerEvent::Closed);
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(conn: Arc<Conn>, mut w: W) {
    let mut spare = BytesMut::with_capacity(64 << 10);
    loop {
        if let Ok(mut out) = conn.out.lock() {
            std::mem::swap(&mut *out, &mut spare);
        }
        if spare.is_empty() {
            if conn.is_closed() {
                break;
            }
            conn.wake_writer.notified().await;
            continue;
        }
        if let Err(e) = w.write_all(&spare).await {
            conn.fail(&ClientError::Connect {
                addr: "broker".into(),
                message: format!("write failed: {e}"),
            });
            break;
        }
        spare.clear();
    }
    let _ = w.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    conn: Arc<Conn>,
    mut r: R,
    mut buf: BytesMut,
    max_frame: usize,
) {
    let error = loop {
        loop {
            match frame::decode(&mut buf, max_frame) {
                Ok(Some(f)) => conn.dispatch(f),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable frame from the broker");
                    conn.fail(&ClientError::Protocol(e.to_string()));
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < 16 << 10 {
            buf.reserve(64 << 10);
        }
        match r.read_buf(&mut buf).await {
            Ok(0) => break ClientError::Closed,
            Ok(_) => {}
            Err(e) => {
                break ClientError::Connect {
                    addr: "broker".into(),
                    message: format!("read failed: {e}"),
                }
            }
        }
    };
    conn.fail(&error);
}

/// Sends CONNECT (with `token`, if any) and waits for CONNECTED. Returns the
/// stream, the bytes read past CONNECTED, and the largest frame to accept (the
/// broker's max message size and room for metadata).
/// A lookup's (or partitioned metadata's) answer: the command, or the
/// error it reports when it failed.
fn lookup_answer(
    c: &BaseCommand,
    failed: bool,
    error: Option<i32>,
    message: &Option<String>,
) -> Result<BaseCommand, ClientError> {
    match failed {
        true => Err(ClientError::broker(
            error.unwrap_or_default(),
            message.clone().unwrap_or_default(),
        )),
        false => Ok(c.clone()),
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    token: Option<&str>,
    proxy_to: Option<&str>,
    addr: &str,
) -> Result<(S, BytesMut, usize), ClientError> {
    let connect_err = |message: String| ClientError::Connect {
        addr: addr.to_owned(),
        message,
    };
    let mut out = BytesMut::new();
    frame::encode_command(
        &command(Type::Connect, |b| {
            b.connect = Some(Box::new(CommandConnect {
                client_version: CLIENT_VERSION.into(),
                protocol_version: Some(PROTOCOL_VERSION),
                auth_method_name: token.map(|_| "token".into()),
                auth_data: token.map(|t| Bytes::copy_from_slice(t.as_bytes())),
                proxy_to_broker_url: proxy_to.map(str::to_owned),
                ..Default::default()
            }))
        }),
        &mut out,
    );
    stream
        .write_all(&out)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        match frame::decode(&mut buf, DEFAULT_MAX_FRAME_BYTES) {
            Ok(Some(f)) => match (f.command.r#type(), f.command.connected, f.command.error) {
                (Type::Connected, Some(c), _) => {
                    let max_message = c
                        .max_message_size
                        .and_then(|m| usize::try_from(m).ok())
                        .unwrap_or(5 << 20);
                    return Ok((stream, buf, max_message + (64 << 10)));
                }
                (Type::Error, _, Some(e)) => return Err(ClientError::broker(e.error, e.message)),
                (t, _, _) => {
                    return Err(ClientError::Protocol(format!(
                        "expected CONNECTED, got {t:?}"
                    )))
                }
            },
            Ok(None) => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err(connect_err("closed during the handshake".into())),
            Ok(_) => {}
            Err(e) => return Err(connect_err(e.to_string())),
        }
    }
}

/// How to reach a broker: credentials and the TLS trust of `pulsar+ssl://` URLs.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Presented at CONNECT (Pulsar's token authentication), and again when
    /// the broker challenges the connection.
    pub token: Option<String>,
    /// CA certificates (PEM) a `pulsar+ssl://` broker's certificate must chain to.
    pub tls_trust_certs: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ConnectOptions {
    /// Never shows the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tls_trust_certs", &self.tls_trust_certs)
            .finish()
    }
}

/// A connection to one broker, shared by the producers and consumers made from it.
/// Dropping the client closes the connection: keep it while they are in use.
pub struct Client {
    conn: Arc<Conn>,
}

impl Client {
    /// Connects to `pulsar://host:port` and completes the CONNECT handshake.
    pub async fn connect(service_url: &str) -> Result<Client, ClientError> {
        Self::connect_with_token(service_url, None).await
    }

    /// Connects presenting `token` (Pulsar's token authentication), if given.
    pub async fn connect_with_token(
        service_url: &str,
        token: Option<&str>,
    ) -> Result<Client, ClientError> {
        let options = ConnectOptions {
            token: token.map(str::to_owned),
            tls_trust_certs: None,
        };
        Self::connect_with(service_url, &options).await
    }

    /// Connects to `pulsar://host:port` or `pulsar+ssl://host:port` (the
    /// broker's certificate checked against `options.tls_trust_certs` and the
    /// URL's host name) and completes the CONNECT handshake.
    pub async fn connect_with(
        service_url: &str,
        options: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        Self::open(service_url, options, None).await
    }

    /// Connects to the broker serving `topic`, found by LOOKUP from
    /// `service_url` as Pulsar's clients find it: a `Redirect` is asked
    /// again (authoritatively), a `Connect` is followed — through the
    /// service URL, naming the broker in CONNECT's `proxy_to_broker_url`,
    /// when the answer says so (the service URL is a proxy: `kilonova
    /// proxy`, Pulsar's proxy).
    pub async fn connect_to_owner(
        service_url: &str,
        topic: &str,
        options: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        /// Redirects followed at most.
        const HOPS: usize = 8;
        let tls = ServiceUrl::parse(service_url)?.tls;
        let mut at = Self::open(service_url, options, None).await?;
        let mut at_url = service_url.to_owned();
        let mut authoritative = false;
        for _ in 0..HOPS {
            let request_id = at.conn.next_id();
            let answer = at
                .conn
                .request(
                    request_id,
                    command(Type::Lookup, |b| {
                        b.lookup_topic = Some(Box::new(CommandLookupTopic {
                            topic: topic.into(),
                            request_id,
                            authoritative: Some(authoritative),
                            ..Default::default()
                        }))
                    }),
                )
                .await?;
            let Some(r) = answer.lookup_topic_response else {
                return Err(ClientError::Protocol(
                    "a LOOKUP answered without its response".into(),
                ));
            };
            let url = match tls {
                true => r
                    .broker_service_url_tls
                    .clone()
                    .or(r.broker_service_url.clone()),
                false => r.broker_service_url.clone(),
            }
            .ok_or_else(|| {
                ClientError::Protocol(format!("the lookup of {topic} named no broker"))
            })?;
            match r.response() {
                TopicLookupType::Connect if r.proxy_through_service_url() => {
                    at.close();
                    return Self::open(service_url, options, Some(&url)).await;
                }
                TopicLookupType::Connect if url == at_url => return Ok(at),
                TopicLookupType::Connect => {
                    at.close();
                    return Self::open(&url, options, None).await;
                }
                _ => {
                    // Redirect: ask the broker named, as it said.
                    authoritative = r.authoritative();
                    at.close();
                    at = match r.proxy_through_service_url() {
                        true => Self::open(service_url, options, Some(&url)).await?,
                        false => Self::open(&url, options, None).await?,
                    };
                    at_url = url;
                }
            }
        }
        Err(ClientError::Protocol(format!(
            "the lookup of {topic} was redirected more than {HOPS} times"
        )))
    }

    /// Opens a connection to `service_url`; with `proxy_to`, CONNECT asks
    /// the proxy there to relay it to that broker.
    async fn open(
        service_url: &str,
        options: &ConnectOptions,
        proxy_to: Option<&str>,
    ) -> Result<Client, ClientError> {
        let url = ServiceUrl::parse(service_url)?;
        let addr = url.address();
        let connect_err = |message: String| ClientError::Connect {
            addr: addr.clone(),
            message,
        };
        let stream = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let token = options.token.as_deref();
        if !url.tls {
            let (stream, buf, max_frame) = handshake(stream, token, proxy_to, &addr).await?;
            let (r, w) = stream.into_split();
            return Ok(Self::start(r, w, buf, max_frame, token));
        }
        let connector = tls::connector(options.tls_trust_certs.as_deref())?;
        let name = tls::server_name(&url.host)?;
        let stream = connector
            .connect(name, stream)
            .await
            .map_err(|e| ClientError::Tls(format!("TLS handshake with {addr}: {e}")))?;
        let (stream, buf, max_frame) = handshake(stream, token, proxy_to, &addr).await?;
        let (r, w) = tokio::io::split(stream);
        Ok(Self::start(r, w, buf, max_frame, token))
    }

    /// Starts the reader and writer tasks of a connection that completed its
    /// handshake; `buf` holds what was read past the CONNECTED frame.
    fn start<R, W>(r: R, w: W, buf: BytesMut, max_frame: usize, token: Option<&str>) -> Client
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Arc::new(Conn {
            out: Mutex::new(BytesMut::with_capacity(64 << 10)),
            wake_writer: Notify::new(),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            requests: Mutex::new(HashMap::new()),
            producers: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            token: token.map(str::to_owned),
            max_frame,
        });
        tokio::spawn(write_loop(conn.clone(), w));
        tokio::spawn(read_loop(conn.clone(), r, buf, max_frame));
        Client { conn }
    }

    /// The number of partitions of `topic` (0: not partitioned).
    pub async fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        let request_id = self.conn.next_id();
        let answer = self
            .conn
            .request(
                request_id,
                command(Type::PartitionedMetadata, |b| {
                    b.partition_metadata = Some(Box::new(CommandPartitionedTopicMetadata {
                        topic: topic.into(),
                        request_id,
                        ..Default::default()
                    }))
                }),
            )
            .await?;
        Ok(answer
            .partition_metadata_response
            .and_then(|r| r.partitions)
            .unwrap_or(0))
    }

    /// Creates a producer on one topic (for a partitioned topic: on one partition,
    /// `…-partition-N`).
    pub async fn create_producer(
        &self,
        topic: &str,
        options: ProducerOptions,
    ) -> Result<Producer, ClientError> {
        producer::create(self.conn.clone(), topic, options).await
    }

    /// Subscribes to one topic (or one partition).
    pub async fn subscribe(
        &self,
        topic: &str,
        subscription: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer, ClientError> {
        consumer::subscribe(self.conn.clone(), topic, subscription, options).await
    }

    /// Closes the connection; pending operations fail with [`ClientError::Closed`].
    pub fn close(&self) {
        self.conn.fail(&ClientError::Closed);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}
