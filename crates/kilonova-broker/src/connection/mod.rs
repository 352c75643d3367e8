//! One client connection: reads frames, answers what the connection can answer
//! itself (CONNECT, PING, LOOKUP, metadata, schemas) and routes the rest to topic
//! tasks. A writer task sends everything queued for the connection, vectored.
//!
//! Bad input never takes more than this connection down: a frame over the limit
//! (64 KiB until CONNECT completes), bytes that are not a frame, an unknown
//! command, a command before CONNECT or no CONNECT within `connect_timeout_secs`
//! close the connection; bad requests inside valid frames get the protocol's error.
//! A client that does not read its answers is not read either (see [`crate::outbound`]).
//!
//! This module is the connection's task (reading, throttling, the
//! keep-alive and credential checks; [`keep_alive`] decides, [`writer`]
//! writes) and the dispatch of each command to its family: [`handshake`]
//! (CONNECT, credentials), [`lookup`] (where topics are, which exist),
//! [`producer`], [`consumer`] and [`schema`]. Replies are built in
//! [`crate::commands`].

mod consumer;
mod handshake;
mod keep_alive;
mod lookup;
mod producer;
mod read_size;
mod schema;
mod shared_write;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use kilonova_pulsar_protocol::frame::{self, Frame};
use kilonova_pulsar_protocol::proto::{base_command::Type, BaseCommand, Schema, ServerError};

use crate::broker::Broker;
use crate::commands;
use crate::error::BrokerError;
use crate::listeners::ClientListener;
use crate::outbound::Outbound;
use crate::rate_limit::PublishGate;
use crate::subscription::ConsumerKey;
use crate::topic::{sleep_until, ClientInfo, ConnCtx, TopicCommand, TopicHandle};
use kilonova_auth::{Need, Principal, Want};
use kilonova_metadata::names::TopicName;
use tokio_rustls::rustls;

use keep_alive::{KeepAlive, Liveness};
use producer::ProducerOnConn;
use writer::write_loop;

/// Largest frame accepted before CONNECT completes: a CONNECT (even with a
/// token) is small, and nobody unauthenticated may make the broker buffer a
/// whole message's worth.
const MAX_FRAME_BYTES_BEFORE_CONNECT: usize = 64 << 10;

/// The longest a throttled connection sleeps before it looks again (the
/// keep-alive clock restarts each time).
const MAX_THROTTLE_PAUSE: Duration = Duration::from_secs(1);

/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the connection ends.
#[derive(Debug, PartialEq)]
enum End {
    /// The peer went away or the broker is closing.
    Done,
    /// The peer broke the protocol.
    Violation(String),
}

struct Connection {
    broker: Broker,
    id: u64,
    peer: SocketAddr,
    out: Outbound,
    /// The largest frame accepted once CONNECT completed.
    max_frame_bytes: usize,
    connected: bool,
    /// Who the client proved to be (`None` with authentication off).
    principal: Option<Principal>,
    /// On a proxy's connection, the client it relays for: what the
    /// connection does must be allowed to it as well as to `principal`.
    original_principal: Option<Principal>,
    /// An AUTH_CHALLENGE went out and no valid AUTH_RESPONSE came back yet.
    challenged: bool,
    protocol_version: i32,
    wants_entry_metadata: bool,
    /// Whether its consumers are told REACHED_END_OF_TOPIC.
    hears_end_of_topic: bool,
    /// What the client said it is in CONNECT (capped), for stats.
    client_version: std::sync::Arc<str>,
    /// When CONNECT completed (ms since the epoch, the broker's clock).
    connected_since_ms: u64,
    /// The advertised listener the client's lookups here named.
    listener: ClientListener,
    producers: HashMap<u64, ProducerOnConn>,
    consumers: HashMap<u64, TopicHandle>,
    /// A publish rate was reached: stop reading until then.
    throttled_until: Option<Instant>,
}

/// Serves one accepted TCP connection (TLS first, with `tls`) until it closes.
async fn serve_tcp(
    broker: Broker,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            // The journal's thread writes receipts to the socket too
            // (`outbound::direct`).
            let (reader, writer) = stream.into_split();
            let writer = Arc::new(writer);
            let direct = Some(writer.clone());
            let writer = shared_write::SharedWriteHalf(writer);
            serve(broker, reader, writer, direct, peer, shutdown).await;
        }
        Some(acceptor) => {
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let (reader, writer) = tokio::io::split(stream);
            serve(broker, reader, writer, None, peer, shutdown).await;
        }
    }
}

/// Serves one connection until it closes (`direct`: the socket receipts
/// may be written to by the journal's thread, see [`crate::outbound`]).
async fn serve<R, W>(
    broker: Broker,
    mut reader: R,
    writer: W,
    direct: Option<Arc<tokio::net::tcp::OwnedWriteHalf>>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, out_rx) = Outbound::new(broker.config().max_outbound_bytes());
    let stages = broker.metrics().publish_stages().clone();
    let clock = broker.clock().clone();
    if let Some(socket) = direct {
        out.write_receipts_directly(socket, stages.clone(), clock.clone());
    }
    let mut writer = tokio::spawn(write_loop(writer, out_rx, stages, clock));
    let mut conn = Connection::new(broker, peer, out);
    tracing::debug!(conn = conn.id, %peer, "connection opened");
    let (end, writer_ended) = conn.read_loop(&mut reader, &mut writer, shutdown).await;
    if let End::Violation(why) = &end {
        tracing::info!(conn = conn.id, peer = %conn.peer, reason = %why, "closing connection");
    }
    conn.release().await;
    conn.out.close();
    // Let the writer flush what topics queued (close commands on shutdown).
    // (A task's handle must not be awaited again once it has answered.)
    if !writer_ended {
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
    tracing::debug!(conn = conn.id, "connection closed");
}

impl Connection {
    fn new(broker: Broker, peer: SocketAddr, out: Outbound) -> Self {
        Connection {
            id: broker.next_connection_id(),
            max_frame_bytes: broker.config().max_frame_bytes(),
            broker,
            peer,
            out,
            connected: false,
            principal: None,
            original_principal: None,
            challenged: false,
            protocol_version: 0,
            wants_entry_metadata: false,
            hears_end_of_topic: false,
            client_version: std::sync::Arc::from(""),
            connected_since_ms: 0,
            listener: ClientListener::Unknown,
            producers: HashMap::new(),
            consumers: HashMap::new(),
            throttled_until: None,
        }
    }

    fn now(&self) -> Instant {
        self.broker.clock().now()
    }

    /// Reads and handles the client's frames until the connection ends; says
    /// why, and whether the writer task has already ended.
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        writer: &mut JoinHandle<()>,
        mut shutdown: watch::Receiver<bool>,
    ) -> (End, bool) {
        let config = self.broker.config();
        let keep_alive = Duration::from_secs(config.keep_alive_secs.max(1));
        let connect_timeout = Duration::from_secs(config.connect_timeout_secs.max(1));
        let mut ticker = tokio::time::interval(keep_alive);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut auth_check = tokio::time::interval(self.broker.security().refresh_check());
        auth_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let connect_deadline = Some(self.now() + connect_timeout);
        let mut alive = KeepAlive::new(keep_alive, self.now());
        // The client does not read its answers: its requests are not read either
        // until the writer drained the queue to half its bound.
        let mut unread_answers = false;
        let mut buf = BytesMut::new();
        let mut read_size = read_size::ReadSize::default();
        loop {
            if buf.capacity() - buf.len() < read_size.bytes() / 2 {
                buf.reserve(read_size.bytes());
            }
            let space = buf.capacity() - buf.len();
            let throttled = self.throttled_until;
            unread_answers = unread_answers || self.out.is_full();
            // Ok(Some(paused)): frames were handled, and `paused` says whether
            // the client's unread answers now stop the reading.
            let step: Result<Option<bool>, End> = tokio::select! {
                // What was read before the pause is decoded first.
                _ = self.out.drained(), if unread_answers => {
                    self.drain_frames(&mut buf).await.map(Some)
                }
                // A publish rate was reached: the socket is not read (the client's
                // sends wait in TCP buffers and then in the client) until it allows.
                _ = sleep_until(throttled), if throttled.is_some() => {
                    // A pause of our own making is not the client's silence.
                    alive.seen(self.now());
                    self.throttle_ended(&mut buf).await
                }
                read = reader.read_buf(&mut buf), if throttled.is_none() && !unread_answers => {
                    match read {
                        Ok(0) | Err(_) => Err(End::Done),
                        Ok(n) => {
                            read_size.after_read(space, n);
                            alive.seen(self.now());
                            let step = self.drain_frames(&mut buf).await.map(Some);
                            if buf.is_empty() && !read_size.keeps(buf.capacity()) {
                                buf = BytesMut::new();
                            }
                            step
                        }
                    }
                }
                _ = ticker.tick() => {
                    let unread = unread_answers.then(|| self.out.queued_bytes());
                    match alive.tick(self.now(), self.out.written_bytes(), unread) {
                        Liveness::Alive => Ok(None),
                        Liveness::Ping => {
                            self.out.command(commands::ping());
                            Ok(None)
                        }
                        Liveness::Dead(why) => Err(End::Violation(why)),
                    }
                }
                _ = auth_check.tick() => self.check_credentials().map(|()| None),
                _ = sleep_until(connect_deadline), if !self.connected => {
                    Err(End::Violation(format!("no CONNECT within {}s", connect_timeout.as_secs())))
                }
                _ = shutdown.changed() => Err(End::Done),
                _ = &mut *writer => return (End::Done, true),
            };
            match step {
                Ok(Some(paused)) => unread_answers = paused,
                Ok(None) => {}
                Err(end) => return (end, false),
            }
        }
    }

    /// A pause for a publish rate is over: reads again, unless one of the
    /// producers' topics still wants the connection paused.
    async fn throttle_ended(&mut self, buf: &mut BytesMut) -> Result<Option<bool>, End> {
        let now = self.now();
        let gates = self.producers.values().map(|p| &*p.topic.publish_gate);
        self.throttled_until = throttle_wait(gates, now).and_then(|w| pause_until(now, w));
        if self.throttled_until.is_some() {
            return Ok(None);
        }
        self.drain_frames(buf).await.map(Some)
    }

    /// Handles the frames in `buf`, stopping after a SEND that reached a
    /// publish rate, and when the client is not reading its answers (then
    /// returns true: the rest waits until the answers are drained).
    async fn drain_frames(&mut self, buf: &mut BytesMut) -> Result<bool, End> {
        loop {
            if self.out.is_full() {
                return Ok(true);
            }
            if self.throttled_until.is_some() {
                return Ok(false);
            }
            let max_frame = frame_limit(self.connected, self.max_frame_bytes);
            let frame = match frame::decode(buf, max_frame) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(false),
                Err(e) => return Err(End::Violation(format!("bad frame: {e}"))),
            };
            self.handle(frame).await?;
        }
    }

    /// Detaches this connection's producers and consumers from their topics.
    async fn release(&mut self) {
        for (producer_id, p) in self.producers.drain() {
            let _ = p
                .topic
                .send(TopicCommand::RemoveProducer {
                    conn: self.id,
                    producer_id,
                })
                .await;
        }
        for (id, h) in self.consumers.drain() {
            let key = ConsumerKey { conn: self.id, id };
            let _ = h.send(TopicCommand::RemoveConsumer { key }).await;
        }
    }

    fn ctx(&self) -> ConnCtx {
        ConnCtx {
            id: self.id,
            out: self.out.clone(),
            wants_entry_metadata: self.wants_entry_metadata,
            hears_end_of_topic: self.hears_end_of_topic,
            client: ClientInfo {
                address: std::sync::Arc::from(self.peer.to_string()),
                client_version: self.client_version.clone(),
                connected_since_ms: self.connected_since_ms,
                listener: self.listener.clone(),
            },
        }
    }

    /// Handles one frame: the command goes to its family's handler.
    async fn handle(&mut self, frame: Frame) -> Result<(), End> {
        let Frame {
            command: c,
            payload,
        } = frame;
        trace_frame(self.id, &c);
        let t = admitted_type(c.r#type, self.connected)?;
        match t {
            Type::Connect => self.connect(*body(t, c.connect)?)?,
            Type::AuthResponse => self.auth_response(*body(t, c.auth_response)?)?,
            Type::Ping => self.out.command(commands::pong()),
            Type::Pong => {}
            Type::Lookup => self.lookup(*body(t, c.lookup_topic)?).await,
            Type::PartitionedMetadata => {
                self.partitioned_metadata(*body(t, c.partition_metadata)?)
                    .await
            }
            Type::GetTopicsOfNamespace => {
                self.topics_of_namespace(*body(t, c.get_topics_of_namespace)?)
                    .await
            }
            Type::Producer => self.producer(*body(t, c.producer)?).await,
            Type::Send => self.send(*body(t, c.send)?, payload).await?,
            Type::CloseProducer => self.close_producer(*body(t, c.close_producer)?).await,
            Type::Subscribe => self.subscribe(body(t, c.subscribe)?).await,
            Type::Flow => self.flow(*body(t, c.flow)?).await,
            Type::Ack => self.ack(*body(t, c.ack)?).await,
            Type::RedeliverUnacknowledgedMessages => {
                self.redeliver(*body(t, c.redeliver_unacknowledged_messages)?)
                    .await
            }
            Type::Seek => self.seek(*body(t, c.seek)?).await,
            Type::GetLastMessageId => self.last_message_id(*body(t, c.get_last_message_id)?).await,
            Type::Unsubscribe => self.unsubscribe(*body(t, c.unsubscribe)?).await,
            Type::CloseConsumer => self.close_consumer(*body(t, c.close_consumer)?).await,
            Type::ConsumerStats => {
                let r = body(t, c.consumer_stats)?;
                self.out
                    .command(commands::consumer_stats_refused(r.request_id));
            }
            Type::GetSchema => self.get_schema(*body(t, c.get_schema)?).await,
            Type::GetOrCreateSchema => {
                self.get_or_create_schema(*body(t, c.get_or_create_schema)?)
                    .await
            }
            Type::HealthCheck => {
                let h = body(t, c.health_check)?;
                self.out
                    .command(commands::health_check_response(h.request_id));
            }
            Type::TcClientConnectRequest => {
                let r = body(t, c.tc_client_connect_request)?;
                self.out
                    .command(commands::tc_client_connect_refused(r.request_id));
            }
            Type::NewTxn => {
                let r = body(t, c.new_txn)?;
                self.out.command(commands::new_txn_refused(r.request_id));
            }
            other => {
                return Err(End::Violation(format!(
                    "unexpected command {other:?} from a client"
                )))
            }
        }
        Ok(())
    }

    /// Whether this connection's role may do `need` (an error to answer with
    /// if not); on a proxy's connection, both the proxy's role and the
    /// client's it relays for must be allowed (Pulsar's rule).
    async fn authorize(
        &self,
        need: Need<'_>,
        ns: &kilonova_metadata::NamespaceName,
    ) -> Result<(), BrokerError> {
        self.broker
            .authorize(self.principal.as_ref(), need, None, Some(ns))
            .await?;
        if let Some(original) = &self.original_principal {
            self.broker
                .authorize(Some(original), need, None, Some(ns))
                .await?;
        }
        Ok(())
    }

    /// The topic `name`, if this connection's role may do `want` on it.
    async fn authorized_topic(&self, name: &str, want: Want) -> Result<TopicName, BrokerError> {
        let topic = TopicName::parse(name)?;
        self.authorize(Need::Topic(&topic, want), &topic.namespace())
            .await?;
        Ok(topic)
    }

    /// The topic this connection's producer or consumer `id` is on.
    fn topic_of(&self, side: Side, id: u64) -> Option<&TopicHandle> {
        match side {
            Side::Producer => self.producers.get(&id).map(|p| &p.topic),
            Side::Consumer => self.consumers.get(&id),
        }
    }

    /// Opens topic `name` for a new producer or consumer `id` of this
    /// connection: loads it and registers `schema` on it; returns the topic
    /// and the schema's version. If the topic cannot be opened, or `id` is
    /// live on another topic, answers request `request_id` and returns `None`.
    async fn open_for(
        &self,
        side: Side,
        id: u64,
        request_id: u64,
        name: &str,
        schema: Option<&Schema>,
    ) -> Option<(TopicHandle, Option<u64>)> {
        let result = match self.open_topic(side, name, schema).await {
            Ok((topic, _)) if in_use_elsewhere(self.topic_of(side, id), &topic) => {
                Err(side.busy(id))
            }
            other => other,
        };
        match result {
            Ok(opened) => Some(opened),
            Err(e) => {
                self.out.command(commands::broker_error(request_id, &e));
                None
            }
        }
    }

    async fn open_topic(
        &self,
        side: Side,
        name: &str,
        schema: Option<&Schema>,
    ) -> Result<(TopicHandle, Option<u64>), BrokerError> {
        let name = self.authorized_topic(name, side.want()).await?;
        let topic = self.broker.topic(&name).await?;
        let version = self.register_schema(&name, schema, side).await?;
        Ok((topic, version))
    }

    /// Queues a command for a topic; if the topic is gone, answers the request.
    async fn to_topic(&self, topic: &TopicHandle, cmd: TopicCommand, request_id: Option<u64>) {
        if topic.send(cmd).await.is_err() {
            if let Some(r) = request_id {
                self.out.command(commands::error(
                    r,
                    ServerError::ServiceNotReady,
                    "topic is not available; retry",
                ));
            }
        }
    }
}

/// The command type of a frame, if the connection takes it now: an unknown
/// type, or anything but CONNECT before CONNECT, closes the connection.
fn admitted_type(raw: i32, connected: bool) -> Result<Type, End> {
    let Ok(t) = Type::try_from(raw) else {
        return Err(End::Violation(format!("unknown command type {raw}")));
    };
    if !connected && t != Type::Connect {
        return Err(End::Violation(format!("{t:?} before CONNECT")));
    }
    Ok(t)
}

/// The body a command of type `t` must carry.
fn body<T>(t: Type, body: Option<T>) -> Result<T, End> {
    body.ok_or_else(|| End::Violation(format!("{t:?} without its body")))
}

fn trace_frame(conn: u64, command: &BaseCommand) {
    // CONNECT and AUTH_RESPONSE carry credentials: never logged.
    let credentials = [Type::Connect as i32, Type::AuthResponse as i32];
    if credentials.contains(&command.r#type) {
        tracing::trace!(
            conn,
            command_type = command.r#type,
            "frame (credentials not shown)"
        );
    } else {
        tracing::trace!(conn, command = ?command, "frame");
    }
}

/// The largest frame a connection accepts (small until CONNECT completes).
fn frame_limit(connected: bool, max_frame_bytes: usize) -> usize {
    match connected {
        true => max_frame_bytes,
        false => MAX_FRAME_BYTES_BEFORE_CONNECT,
    }
}

/// What a client opens on a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Producer,
    Consumer,
}

impl Side {
    fn want(self) -> Want {
        match self {
            Side::Producer => Want::Produce,
            Side::Consumer => Want::Consume,
        }
    }

    /// The refusal of an `id` that is live on another topic.
    fn busy(self, id: u64) -> BrokerError {
        let why = |what| format!("{what} id {id} is in use on another topic of this connection");
        match self {
            Side::Producer => BrokerError::ProducerBusy(why("producer")),
            Side::Consumer => BrokerError::ConsumerBusy(why("consumer")),
        }
    }
}

/// Whether an id of this connection, on topic `held` (none: unused), is
/// live on another topic than `topic`. Such an id is not reused: the first
/// topic would keep a producer nobody can close (it held off every new
/// producer).
fn in_use_elsewhere(held: Option<&TopicHandle>, topic: &TopicHandle) -> bool {
    held.is_some_and(|other| !other.same_channel(topic) && !other.is_closed())
}

/// How long a connection paused by a publish rate must still wait: the
/// longest wait among its producers' topics (`None`: not at all).
fn throttle_wait<'a>(
    gates: impl Iterator<Item = &'a PublishGate>,
    now: Instant,
) -> Option<Duration> {
    gates.map(|g| g.wait(now)).max().filter(|w| !w.is_zero())
}

/// Until when a connection told to wait `wait` stops reading: at most
/// [`MAX_THROTTLE_PAUSE`] at a time, then it looks again.
fn pause_until(now: Instant, wait: Duration) -> Option<Instant> {
    (!wait.is_zero()).then(|| now + wait.min(MAX_THROTTLE_PAUSE))
}

/// Serves the Pulsar protocol on `listener` (over TLS with `tls`: the
/// `pulsar+ssl://` port): accepts until `stop_accepting` changes, closes every
/// connection when `close_connections` changes (after the broker closed its
/// producers and consumers), and returns once all connections are closed.
///
/// Connections count against the broker's limits across all its listeners
/// (`max_connections`, `max_connections_per_ip`); one over a limit is closed
/// at once. Accept errors (out of file descriptors) pause accepting, with a
/// back-off, and are logged at most once a second; open connections are
/// served all along.
pub async fn accept_loop(
    broker: Broker,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop_accepting: watch::Receiver<bool>,
    close_connections: watch::Receiver<bool>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    crate::accept::accept_connections(
        broker,
        listener,
        "Pulsar",
        stop_accepting,
        close_connections,
        move |b, stream, peer, s| serve_tcp(b, stream, peer, tls.clone(), s),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::rate_limit::{Rate, RateLimits};
    use tokio::sync::mpsc;

    /// A moment for tests to count from.
    pub(super) fn t0() -> Instant {
        ManualClock::at_ms(0).now()
    }

    pub(super) fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_command_before_connect_closes_the_connection() {
        let lookup = Type::Lookup as i32;
        assert_eq!(
            admitted_type(lookup, false),
            Err(End::Violation("Lookup before CONNECT".into()))
        );
        assert_eq!(
            admitted_type(Type::Connect as i32, false),
            Ok(Type::Connect)
        );
        assert_eq!(admitted_type(lookup, true), Ok(Type::Lookup));
    }

    #[test]
    fn an_unknown_command_type_closes_the_connection() {
        assert_eq!(
            admitted_type(9_999, true),
            Err(End::Violation("unknown command type 9999".into()))
        );
    }

    #[test]
    fn a_command_without_its_body_closes_the_connection() {
        assert_eq!(
            body::<u8>(Type::Seek, None),
            Err(End::Violation("Seek without its body".into()))
        );
        assert_eq!(body(Type::Seek, Some(7u8)), Ok(7));
    }

    #[test]
    fn frames_before_connect_are_capped_at_64_kib() {
        let configured = 5 << 20;
        assert_eq!(frame_limit(false, configured), 64 << 10);
        assert_eq!(frame_limit(true, configured), configured);
    }

    #[test]
    fn a_throttled_connection_pauses_at_most_a_second_at_a_time() {
        let t0 = t0();
        assert_eq!(pause_until(t0, Duration::ZERO), None);
        let short = Duration::from_millis(200);
        assert_eq!(pause_until(t0, short), Some(t0 + short));
        assert_eq!(pause_until(t0, secs(5)), Some(t0 + MAX_THROTTLE_PAUSE));
    }

    fn gate(messages_per_sec: Option<u64>, now: Instant) -> PublishGate {
        let g = PublishGate::default();
        let limits = RateLimits {
            messages: messages_per_sec.map(Rate::per_second),
            bytes: None,
        };
        g.set(limits, now);
        g
    }

    #[test]
    fn a_throttled_connection_waits_for_the_slowest_of_its_producers_topics() {
        let t0 = t0();
        let (free, slow, slower) = (gate(None, t0), gate(Some(10), t0), gate(Some(1), t0));
        slow.charge(20, 0, t0);
        slower.charge(3, 0, t0);
        let wait = throttle_wait([&free, &slow, &slower].into_iter(), t0);
        let expected = slower.wait(t0);
        assert!(expected > slow.wait(t0), "the test's premise");
        assert_eq!(wait, Some(expected));
        assert_eq!(throttle_wait([&free].into_iter(), t0), None);
        assert_eq!(throttle_wait(std::iter::empty(), t0), None);
    }

    fn handle() -> (TopicHandle, mpsc::Receiver<TopicCommand>) {
        let (tx, rx) = mpsc::channel(1);
        (TopicHandle::new(tx), rx)
    }

    #[test]
    fn an_id_live_on_another_topic_of_the_connection_is_in_use() {
        let (a, a_rx) = handle();
        let (b, _b_rx) = handle();
        assert!(in_use_elsewhere(Some(&a), &b));
        assert!(!in_use_elsewhere(Some(&a), &a), "the same topic again");
        assert!(!in_use_elsewhere(None, &b), "an unused id");
        drop(a_rx);
        assert!(
            !in_use_elsewhere(Some(&a), &b),
            "the id's topic went away (unloaded): it is free"
        );
    }
}
