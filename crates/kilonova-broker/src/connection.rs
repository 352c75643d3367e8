//! One client connection: reads frames, answers what the connection can answer
//! itself (CONNECT, PING, LOOKUP, metadata, schemas) and routes the rest to topic
//! tasks. A writer task sends everything queued for the connection, vectored.
//!
//! Bad input never takes more than this connection down: a frame over the limit
//! (64 KiB until CONNECT completes), bytes that are not a frame, an unknown
//! command, a command before CONNECT or no CONNECT within `connect_timeout_secs`
//! close the connection; bad requests inside valid frames get the protocol's error.
//! A client that does not read its answers is not read either (see [`crate::outbound`]).

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use kilonova_pulsar_protocol::frame::{self, Frame};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_get_topics_of_namespace::Mode,
    command_lookup_topic_response::LookupType, command_partitioned_topic_metadata_response,
    AuthData, CommandAuthChallenge, CommandConnected, CommandConsumerStatsResponse,
    CommandGetOrCreateSchemaResponse, CommandGetSchemaResponse,
    CommandGetTopicsOfNamespaceResponse, CommandHealthCheckResponse, CommandLookupTopicResponse,
    CommandNewTxnResponse, CommandPartitionedTopicMetadataResponse, CommandPong,
    CommandTcClientConnectResponse, KeyValue, Schema, ServerError,
};

use crate::accept::{AcceptBackoff, LogLimiter};
use crate::broker::Broker;
use crate::commands;
use crate::error::BrokerError;
use crate::outbound::{Out, Outbound, OutboundReceiver};
use crate::subscription::ConsumerKey;
use crate::topic::{self, sleep_until, ConnCtx, NewProducer, TopicCommand, TopicHandle};
use kilonova_auth::{Need, Principal, Want, TOKEN_METHOD};
use kilonova_metadata::names::{Domain, TopicName};
use kilonova_metadata::SchemaOutcome;
use tokio_rustls::rustls;

/// The newest protocol version we speak (v19: the `.proto` we compile).
const PROTOCOL_VERSION: i32 = 19;
/// Read buffer kept by an idle connection; a larger one (after a big frame) is dropped.
const IDLE_READ_BUFFER_BYTES: usize = 16 << 10;
const READ_CHUNK_BYTES: usize = 8 << 10;
/// The writer sends up to this much per vectored write.
const WRITE_BATCH_BYTES: usize = 1 << 20;
const MAX_IO_SLICES: usize = 64;

/// Largest frame accepted before CONNECT completes: a CONNECT (even with a
/// token) is small, and nobody unauthenticated may make the broker buffer a
/// whole message's worth.
const MAX_FRAME_BYTES_BEFORE_CONNECT: usize = 64 << 10;

/// Request id of errors that answer no request (a refused CONNECT), as Pulsar
/// sends them (-1).
const NO_REQUEST: u64 = u64::MAX;

/// Why the connection ends.
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
    connected: bool,
    /// Who the client proved to be (`None` with authentication off).
    principal: Option<Principal>,
    /// An AUTH_CHALLENGE went out and no valid AUTH_RESPONSE came back yet.
    challenged: bool,
    protocol_version: i32,
    wants_entry_metadata: bool,
    producers: HashMap<u64, TopicHandle>,
    consumers: HashMap<u64, TopicHandle>,
    /// A publish rate was reached: stop reading until then.
    throttled_until: Option<Instant>,
}

/// The longest a throttled connection sleeps before it looks again (the
/// keep-alive clock restarts each time).
const MAX_THROTTLE_PAUSE: Duration = Duration::from_secs(1);

/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
            let (reader, writer) = stream.into_split();
            serve(broker, reader, writer, peer, shutdown).await;
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
            serve(broker, reader, writer, peer, shutdown).await;
        }
    }
}

/// Serves one connection until it closes.
async fn serve<R, W>(
    broker: Broker,
    mut reader: R,
    writer: W,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, out_rx) = Outbound::new(broker.config().max_outbound_bytes());
    let mut writer = tokio::spawn(write_loop(writer, out_rx));
    let mut conn = Connection {
        id: broker.next_connection_id(),
        broker,
        peer,
        out,
        connected: false,
        principal: None,
        challenged: false,
        protocol_version: 0,
        wants_entry_metadata: false,
        producers: HashMap::new(),
        consumers: HashMap::new(),
        throttled_until: None,
    };
    tracing::debug!(conn = conn.id, %peer, "connection opened");
    let keep_alive = Duration::from_secs(conn.broker.config().keep_alive_secs.max(1));
    let max_frame = conn.broker.config().max_frame_bytes();
    let mut ticker = tokio::time::interval(keep_alive);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut auth_check = tokio::time::interval(conn.broker.security().refresh_check());
    auth_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let connect_timeout = Duration::from_secs(conn.broker.config().connect_timeout_secs.max(1));
    let clock = conn.broker.clock().clone();
    let connect_deadline = Some(clock.now() + connect_timeout);
    let mut last_seen = clock.now();
    let mut last_written = 0;
    // The client does not read its answers: its requests are not read either
    // until the writer drained the queue to half its bound.
    let mut unread_answers = false;
    let mut writer_ended = false;
    let mut buf = BytesMut::new();
    let end = loop {
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 2 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let throttled = conn.throttled_until;
        unread_answers = unread_answers || conn.out.is_full();
        tokio::select! {
            _ = conn.out.drained(), if unread_answers => {
                // What was read before the pause is decoded first.
                match conn.drain_frames(&mut buf, max_frame).await {
                    Ok(paused) => unread_answers = paused,
                    Err(end) => break end,
                }
            }
            // A publish rate was reached: the socket is not read (the client's
            // sends wait in TCP buffers and then in the client) until it allows.
            _ = sleep_until(throttled), if throttled.is_some() => {
                // A pause of our own making is not the client's silence.
                last_seen = clock.now();
                conn.throttled_until = None;
                if let Some(wait) = conn.still_throttled() {
                    conn.throttled_until = Some(clock.now() + wait.min(MAX_THROTTLE_PAUSE));
                    continue;
                }
                match conn.drain_frames(&mut buf, max_frame).await {
                    Ok(paused) => unread_answers = paused,
                    Err(end) => break end,
                }
            }
            read = reader.read_buf(&mut buf), if throttled.is_none() && !unread_answers => {
                match read {
                    Ok(0) | Err(_) => break End::Done,
                    Ok(_) => last_seen = clock.now(),
                }
                match conn.drain_frames(&mut buf, max_frame).await {
                    Ok(paused) => unread_answers = paused,
                    Err(end) => break end,
                }
                if buf.is_empty() && buf.capacity() > IDLE_READ_BUFFER_BYTES {
                    buf = BytesMut::new();
                }
            }
            _ = ticker.tick() => {
                // Paused for its unread answers, a client that reads some of
                // them is alive although its requests wait unread. (Only then:
                // the kernel takes a few pings for a dead peer too.)
                let written = conn.out.written_bytes();
                let now = clock.now();
                if unread_answers && written != last_written {
                    last_seen = now;
                }
                last_written = written;
                let silent = now.saturating_duration_since(last_seen);
                if silent >= keep_alive * 2 {
                    break End::Violation(match unread_answers {
                        true => format!(
                            "it read none of its answers ({} bytes queued) for {}s",
                            conn.out.queued_bytes(),
                            silent.as_secs()
                        ),
                        false => "keep-alive timed out".into(),
                    });
                }
                if silent >= keep_alive {
                    conn.out.command(commands::with_type(Type::Ping, |b| b.ping = Some(Default::default())));
                }
            }
            _ = auth_check.tick() => {
                if let Err(end) = conn.check_credentials() {
                    break end;
                }
            }
            _ = sleep_until(connect_deadline), if !conn.connected => {
                break End::Violation(format!("no CONNECT within {}s", connect_timeout.as_secs()));
            }
            _ = shutdown.changed() => break End::Done,
            _ = &mut writer => {
                writer_ended = true;
                break End::Done;
            }
        }
    };
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
    /// Challenges credentials that expired; closes the connection if they
    /// expired and the last challenge was not answered (Pulsar's refresh).
    fn check_credentials(&mut self) -> Result<(), End> {
        let Some(p) = &self.principal else {
            return Ok(());
        };
        if !p.expired(self.broker.clock().now_ms() / 1000) {
            return Ok(());
        }
        if self.challenged {
            self.out.command(commands::error(
                NO_REQUEST,
                ServerError::AuthenticationError,
                "the token expired and was not refreshed",
            ));
            return Err(End::Violation(format!(
                "role {}'s token expired and was not refreshed",
                p.role
            )));
        }
        self.challenged = true;
        tracing::debug!(conn = self.id, role = %p.role, "token expired: challenging");
        let version = self.protocol_version;
        self.out
            .command(commands::with_type(Type::AuthChallenge, |b| {
                b.auth_challenge = Some(Box::new(CommandAuthChallenge {
                    server_version: Some(server_version()),
                    challenge: Some(AuthData {
                        auth_method_name: Some(TOKEN_METHOD.into()),
                        auth_data: Some(Bytes::from_static(b"refresh")),
                    }),
                    protocol_version: Some(version),
                }));
            }));
        Ok(())
    }

    /// Refuses the client's credentials: the error, then the connection closes.
    fn refuse_credentials(&self, e: &BrokerError) -> End {
        self.out.command(commands::error(
            NO_REQUEST,
            ServerError::AuthenticationError,
            e.to_string(),
        ));
        End::Violation(e.to_string())
    }

    /// Whether this connection's role may do `need` (an error to answer with if not).
    async fn authorize(
        &self,
        need: Need<'_>,
        ns: &kilonova_metadata::NamespaceName,
    ) -> Result<(), BrokerError> {
        self.broker
            .authorize(self.principal.as_ref(), need, None, Some(ns))
            .await
    }

    /// The topic `name`, if this connection's role may do `want` on it.
    async fn authorized_topic(&self, name: &str, want: Want) -> Result<TopicName, BrokerError> {
        let topic = TopicName::parse(name)?;
        self.authorize(Need::Topic(&topic, want), &topic.namespace())
            .await?;
        Ok(topic)
    }

    /// How long a connection paused by a publish rate must still wait (the
    /// longest wait among its producers' topics).
    fn still_throttled(&self) -> Option<std::time::Duration> {
        let now = self.broker.clock().now();
        self.producers
            .values()
            .map(|h| h.publish_gate.wait(now))
            .max()
            .filter(|w| !w.is_zero())
    }

    /// Handles the frames in `buf`, stopping after a SEND that reached a
    /// publish rate, and when the client is not reading its answers (then
    /// returns true: the rest waits until the answers are drained).
    async fn drain_frames(&mut self, buf: &mut BytesMut, max_frame: usize) -> Result<bool, End> {
        loop {
            if self.out.is_full() {
                return Ok(true);
            }
            if self.throttled_until.is_some() {
                return Ok(false);
            }
            let max_frame = match self.connected {
                true => max_frame,
                false => MAX_FRAME_BYTES_BEFORE_CONNECT,
            };
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
        for (producer_id, h) in self.producers.drain() {
            let _ = h
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
        }
    }

    fn key(&self, consumer_id: u64) -> ConsumerKey {
        ConsumerKey {
            conn: self.id,
            id: consumer_id,
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), End> {
        let Frame { command, payload } = frame;
        // CONNECT and AUTH_RESPONSE carry credentials: never logged.
        let credentials = [Type::Connect as i32, Type::AuthResponse as i32];
        if credentials.contains(&command.r#type) {
            tracing::trace!(
                conn = self.id,
                command_type = command.r#type,
                "frame (credentials not shown)"
            );
        } else {
            tracing::trace!(conn = self.id, command = ?command, "frame");
        }
        let Ok(t) = Type::try_from(command.r#type) else {
            return Err(End::Violation(format!(
                "unknown command type {}",
                command.r#type
            )));
        };
        if !self.connected && t != Type::Connect {
            return Err(End::Violation(format!("{t:?} before CONNECT")));
        }
        let missing = || End::Violation(format!("{t:?} without its body"));
        match t {
            Type::Connect => {
                let c = command.connect.ok_or_else(missing)?;
                if self.connected {
                    return Err(End::Violation("second CONNECT".into()));
                }
                let method = c.auth_method_name.as_deref();
                match self.broker.authenticate(method, c.auth_data.as_deref()) {
                    Ok(p) => self.principal = p,
                    Err(e) => return Err(self.refuse_credentials(&e)),
                }
                self.connected = true;
                self.wants_entry_metadata = c
                    .feature_flags
                    .and_then(|f| f.supports_broker_entry_metadata)
                    .unwrap_or(false);
                let version = c.protocol_version.unwrap_or(0).clamp(0, PROTOCOL_VERSION);
                self.protocol_version = version;
                let role = self.principal.as_ref().map(|p| p.role.as_str());
                tracing::debug!(conn = self.id, client = %c.client_version, version, role, "connected");
                self.out.command(commands::with_type(Type::Connected, |b| {
                    b.connected = Some(Box::new(CommandConnected {
                        server_version: server_version(),
                        protocol_version: Some(version),
                        max_message_size: i32::try_from(self.broker.config().max_message_bytes)
                            .ok(),
                    }));
                }));
            }
            Type::Ping => self.out.command(commands::with_type(Type::Pong, |b| {
                b.pong = Some(Box::new(CommandPong {}))
            })),
            Type::Pong => {}
            Type::Lookup => {
                let l = command.lookup_topic.ok_or_else(missing)?;
                let result = match self.authorized_topic(&l.topic, Want::Lookup).await {
                    Ok(n) => match self
                        .broker
                        .resources()
                        .namespace_exists(&n.namespace())
                        .await
                    {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(BrokerError::NamespaceNotFound(n.namespace_name())),
                        Err(e) => Err(e.into()),
                    },
                    Err(e) => Err(e),
                };
                let urls = self.broker.service_urls().clone();
                self.out
                    .command(commands::with_type(Type::LookupResponse, |b| {
                        b.lookup_topic_response = Some(match result {
                            Ok(()) => Box::new(CommandLookupTopicResponse {
                                broker_service_url: urls.plain.or(urls.tls.clone()),
                                broker_service_url_tls: urls.tls,
                                response: Some(LookupType::Connect as i32),
                                request_id: l.request_id,
                                authoritative: Some(true),
                                ..Default::default()
                            }),
                            Err(e) => Box::new(CommandLookupTopicResponse {
                                response: Some(LookupType::Failed as i32),
                                request_id: l.request_id,
                                error: Some(e.server_error() as i32),
                                message: Some(e.to_string()),
                                ..Default::default()
                            }),
                        });
                    }));
            }
            Type::PartitionedMetadata => {
                let m = command.partition_metadata.ok_or_else(missing)?;
                let result = match self.authorized_topic(&m.topic, Want::Lookup).await {
                    Ok(n) => self.broker.partitions(&n).await,
                    Err(e) => Err(e),
                };
                use command_partitioned_topic_metadata_response::LookupType as L;
                self.out.command(commands::with_type(
                    Type::PartitionedMetadataResponse,
                    |b| {
                        b.partition_metadata_response = Some(match result {
                            Ok(n) => Box::new(CommandPartitionedTopicMetadataResponse {
                                partitions: Some(n),
                                request_id: m.request_id,
                                response: Some(L::Success as i32),
                                ..Default::default()
                            }),
                            Err(e) => Box::new(CommandPartitionedTopicMetadataResponse {
                                request_id: m.request_id,
                                response: Some(L::Failed as i32),
                                error: Some(e.server_error() as i32),
                                message: Some(e.to_string()),
                                ..Default::default()
                            }),
                        });
                    },
                ));
            }
            Type::Producer => {
                let p = command.producer.ok_or_else(missing)?;
                let (topic, schema_version) = match self
                    .open_topic(&p.topic, p.schema.as_ref(), Want::Produce)
                    .await
                {
                    Ok(t) => t,
                    Err(e) => {
                        self.out.command(commands::broker_error(p.request_id, &e));
                        return Ok(());
                    }
                };
                // A producer id names one producer of this connection: reusing
                // it for another topic would leave the first topic with a
                // producer nobody can close (it held off every new producer).
                if let Some(other) = self.producers.get(&p.producer_id) {
                    if !other.same_channel(&topic) && !other.is_closed() {
                        let e = BrokerError::ProducerBusy(format!(
                            "producer id {} is in use on another topic of this connection",
                            p.producer_id
                        ));
                        self.out.command(commands::broker_error(p.request_id, &e));
                        return Ok(());
                    }
                }
                self.producers.insert(p.producer_id, topic.clone());
                let access_mode = p.producer_access_mode();
                let cmd = TopicCommand::AddProducer(NewProducer {
                    conn: self.ctx(),
                    producer_id: p.producer_id,
                    request_id: p.request_id,
                    name: p.producer_name,
                    access_mode,
                    schema_version,
                });
                self.to_topic(&topic, cmd, Some(p.request_id)).await;
            }
            Type::Send => {
                let s = command.send.ok_or_else(missing)?;
                let payload =
                    payload.ok_or_else(|| End::Violation("SEND without a payload".into()))?;
                let Some(topic) = self.producers.get(&s.producer_id).cloned() else {
                    return Err(End::Violation(format!(
                        "SEND for producer {} that this connection did not create",
                        s.producer_id
                    )));
                };
                // A batch whose count its bytes cannot hold is refused by the
                // topic; here it costs one message, not the count it claims.
                let messages = payload
                    .checked_message_count(self.broker.max_uncompressed_batch_bytes())
                    .unwrap_or(1);
                let (messages, bytes) = (u64::from(messages), payload.raw.len() as u64);
                let cmd = TopicCommand::Send {
                    conn: self.id,
                    producer_id: s.producer_id,
                    sequence_id: s.sequence_id,
                    highest_sequence_id: s.highest_sequence_id.unwrap_or(0).max(s.sequence_id),
                    payload,
                };
                let now = self.broker.clock().now();
                let wait = topic.publish_gate.charge(messages, bytes, now);
                if !wait.is_zero() {
                    self.broker.metrics().count_publish_throttled();
                    self.throttled_until = Some(now + wait.min(MAX_THROTTLE_PAUSE));
                }
                if topic.send(cmd).await.is_err() {
                    self.out.command(commands::send_error(
                        s.producer_id,
                        s.sequence_id,
                        ServerError::ServiceNotReady,
                        "topic is not available",
                    ));
                }
            }
            Type::CloseProducer => {
                let c = command.close_producer.ok_or_else(missing)?;
                // As for CLOSE_CONSUMER: queue the removal, then answer.
                if let Some(h) = self.producers.remove(&c.producer_id) {
                    let cmd = TopicCommand::RemoveProducer {
                        conn: self.id,
                        producer_id: c.producer_id,
                    };
                    let _ = h.send(cmd).await;
                }
                self.out.command(commands::success(c.request_id));
            }
            Type::Subscribe => {
                let s = command.subscribe.ok_or_else(missing)?;
                let topic = match self
                    .open_topic(&s.topic, s.schema.as_ref(), Want::Consume)
                    .await
                {
                    Ok((t, _)) => t,
                    Err(e) => {
                        self.out.command(commands::broker_error(s.request_id, &e));
                        return Ok(());
                    }
                };
                if let Some(other) = self.consumers.get(&s.consumer_id) {
                    if !other.same_channel(&topic) && !other.is_closed() {
                        let e = BrokerError::ConsumerBusy(format!(
                            "consumer id {} is in use on another topic of this connection",
                            s.consumer_id
                        ));
                        self.out.command(commands::broker_error(s.request_id, &e));
                        return Ok(());
                    }
                }
                self.consumers.insert(s.consumer_id, topic.clone());
                let request_id = s.request_id;
                let cmd = TopicCommand::Subscribe {
                    conn: self.ctx(),
                    command: s,
                };
                self.to_topic(&topic, cmd, Some(request_id)).await;
            }
            Type::Flow => {
                let f = command.flow.ok_or_else(missing)?;
                let key = self.key(f.consumer_id);
                self.to_consumer(
                    f.consumer_id,
                    TopicCommand::Flow {
                        key,
                        permits: f.message_permits,
                    },
                    None,
                )
                .await;
            }
            Type::Ack => {
                let a = command.ack.ok_or_else(missing)?;
                let key = self.key(a.consumer_id);
                let (id, request_id) = (a.consumer_id, a.request_id);
                self.to_consumer(id, TopicCommand::Ack { key, ack: *a }, request_id)
                    .await;
            }
            Type::RedeliverUnacknowledgedMessages => {
                let r = command
                    .redeliver_unacknowledged_messages
                    .ok_or_else(missing)?;
                let key = self.key(r.consumer_id);
                self.to_consumer(
                    r.consumer_id,
                    TopicCommand::Redeliver {
                        key,
                        ids: r.message_ids,
                        epoch: r.consumer_epoch,
                    },
                    None,
                )
                .await;
            }
            Type::Seek => {
                let s = command.seek.ok_or_else(missing)?;
                let key = self.key(s.consumer_id);
                self.to_consumer(
                    s.consumer_id,
                    TopicCommand::Seek {
                        key,
                        request_id: s.request_id,
                        message_id: s.message_id,
                        publish_time_ms: s.message_publish_time,
                    },
                    Some(s.request_id),
                )
                .await;
            }
            Type::GetLastMessageId => {
                let g = command.get_last_message_id.ok_or_else(missing)?;
                let key = self.key(g.consumer_id);
                self.to_consumer(
                    g.consumer_id,
                    TopicCommand::GetLastMessageId {
                        key,
                        request_id: g.request_id,
                    },
                    Some(g.request_id),
                )
                .await;
            }
            Type::Unsubscribe => {
                let u = command.unsubscribe.ok_or_else(missing)?;
                let key = self.key(u.consumer_id);
                self.to_consumer(
                    u.consumer_id,
                    TopicCommand::Unsubscribe {
                        key,
                        request_id: u.request_id,
                    },
                    Some(u.request_id),
                )
                .await;
            }
            Type::CloseConsumer => {
                let c = command.close_consumer.ok_or_else(missing)?;
                // The removal is queued before the answer goes out, so this
                // connection's later commands see the consumer gone. A topic that
                // closed or already dropped the consumer (an unload, a forced
                // delete) has nothing left to remove: closing still succeeds.
                if let Some(h) = self.consumers.remove(&c.consumer_id) {
                    let key = self.key(c.consumer_id);
                    let cmd = TopicCommand::RemoveConsumer { key };
                    let _ = h.send(cmd).await;
                }
                self.out.command(commands::success(c.request_id));
            }
            Type::GetTopicsOfNamespace => {
                let g = command.get_topics_of_namespace.ok_or_else(missing)?;
                self.topics_of_namespace(*g).await;
            }
            Type::GetSchema => {
                let g = command.get_schema.ok_or_else(missing)?;
                let version = g
                    .schema_version
                    .as_ref()
                    .filter(|v| v.len() == 8)
                    .map(|v| v.clone().get_u64());
                let found = match self.authorized_topic(&g.topic, Want::Lookup).await {
                    Ok(t) => self
                        .broker
                        .resources()
                        .schema(&t, version)
                        .await
                        .ok()
                        .flatten(),
                    Err(_) => None,
                };
                self.out
                    .command(commands::with_type(Type::GetSchemaResponse, |b| {
                        b.get_schema_response = Some(match found {
                            Some((v, s)) => Box::new(CommandGetSchemaResponse {
                                request_id: g.request_id,
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
                                schema_version: Some(topic::schema_version_bytes(v)),
                                ..Default::default()
                            }),
                            None => Box::new(CommandGetSchemaResponse {
                                request_id: g.request_id,
                                error_code: Some(ServerError::TopicNotFound as i32),
                                error_message: Some(format!(
                                    "topic {} not found or has no schema",
                                    g.topic
                                )),
                                ..Default::default()
                            }),
                        });
                    }));
            }
            Type::GetOrCreateSchema => {
                let g = command.get_or_create_schema.ok_or_else(missing)?;
                let result = match self.authorized_topic(&g.topic, Want::Produce).await {
                    Ok(t) => self
                        .broker
                        .resources()
                        .get_or_create_schema(&t, topic::schema_record(&g.schema))
                        .await
                        .map_err(BrokerError::from),
                    Err(e) => Err(e),
                };
                self.out
                    .command(commands::with_type(Type::GetOrCreateSchemaResponse, |b| {
                        let mut r = CommandGetOrCreateSchemaResponse {
                            request_id: g.request_id,
                            ..Default::default()
                        };
                        match result {
                            Ok(SchemaOutcome::Version(v)) => {
                                r.schema_version = Some(topic::schema_version_bytes(v))
                            }
                            Ok(SchemaOutcome::Incompatible) => {
                                r.error_code = Some(ServerError::IncompatibleSchema as i32);
                                r.error_message = Some("incompatible schema".into());
                            }
                            Err(e) => {
                                r.error_code = Some(e.server_error() as i32);
                                r.error_message = Some(e.to_string());
                            }
                        }
                        b.get_or_create_schema_response = Some(Box::new(r));
                    }));
            }
            Type::HealthCheck => {
                let h = command.health_check.ok_or_else(missing)?;
                self.out
                    .command(commands::with_type(Type::HealthCheckResponse, |b| {
                        b.health_check_response = Some(Box::new(CommandHealthCheckResponse {
                            request_id: h.request_id,
                            ok: true,
                            ..Default::default()
                        }));
                    }));
            }
            Type::TcClientConnectRequest => {
                let r = command.tc_client_connect_request.ok_or_else(missing)?;
                self.out
                    .command(commands::with_type(Type::TcClientConnectResponse, |b| {
                        b.tc_client_connect_response =
                            Some(Box::new(CommandTcClientConnectResponse {
                                request_id: r.request_id,
                                error: Some(ServerError::TransactionCoordinatorNotFound as i32),
                                message: Some("transactions are not supported".into()),
                            }));
                    }));
            }
            Type::NewTxn => {
                let r = command.new_txn.ok_or_else(missing)?;
                self.out
                    .command(commands::with_type(Type::NewTxnResponse, |b| {
                        b.new_txn_response = Some(Box::new(CommandNewTxnResponse {
                            request_id: r.request_id,
                            error: Some(ServerError::TransactionCoordinatorNotFound as i32),
                            message: Some("transactions are not supported".into()),
                            ..Default::default()
                        }));
                    }));
            }
            Type::ConsumerStats => {
                let r = command.consumer_stats.ok_or_else(missing)?;
                self.out
                    .command(commands::with_type(Type::ConsumerStatsResponse, |b| {
                        b.consumer_stats_response = Some(Box::new(CommandConsumerStatsResponse {
                            request_id: r.request_id,
                            error_code: Some(ServerError::NotAllowedError as i32),
                            error_message: Some(
                                "consumer stats are served by the admin API".into(),
                            ),
                            ..Default::default()
                        }));
                    }));
            }
            Type::AuthResponse => {
                let r = command.auth_response.ok_or_else(missing)?;
                let Some(old) = self.principal.clone() else {
                    // Authentication is off: nothing was asked.
                    return Ok(());
                };
                let (method, data) = match &r.response {
                    Some(d) => (d.auth_method_name.as_deref(), d.auth_data.as_deref()),
                    None => (None, None),
                };
                let p = match self.broker.authenticate(method, data) {
                    Ok(Some(p)) if p.role == old.role => p,
                    Ok(_) => {
                        let e = BrokerError::Authentication(kilonova_auth::AuthError::RoleChanged);
                        return Err(self.refuse_credentials(&e));
                    }
                    Err(e) => return Err(self.refuse_credentials(&e)),
                };
                tracing::debug!(conn = self.id, role = %p.role, "credentials refreshed");
                self.principal = Some(p);
                self.challenged = false;
            }
            other => {
                return Err(End::Violation(format!(
                    "unexpected command {other:?} from a client"
                )))
            }
        }
        Ok(())
    }

    /// Loads the topic and registers `schema` on it; returns the topic and
    /// the schema's version.
    async fn open_topic(
        &self,
        name: &str,
        schema: Option<&Schema>,
        want: Want,
    ) -> Result<(TopicHandle, Option<u64>), BrokerError> {
        let name = self.authorized_topic(name, want).await?;
        let topic = self.broker.topic(&name).await?;
        let version = self.broker.register_schema(&name, schema).await?;
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

    async fn to_consumer(&self, consumer_id: u64, cmd: TopicCommand, request_id: Option<u64>) {
        match self.consumers.get(&consumer_id) {
            Some(h) => self.to_topic(h, cmd, request_id).await,
            None => {
                if let Some(r) = request_id {
                    self.out.command(commands::error(
                        r,
                        ServerError::ConsumerNotFound,
                        format!("consumer {consumer_id} not found"),
                    ));
                }
            }
        }
    }

    async fn topics_of_namespace(
        &self,
        g: kilonova_pulsar_protocol::proto::CommandGetTopicsOfNamespace,
    ) {
        let domain = match g.mode() {
            Mode::Persistent => Some(Domain::Persistent),
            Mode::NonPersistent => Some(Domain::NonPersistent),
            Mode::All => None,
        };
        let ns = kilonova_metadata::NamespaceName::parse(&g.namespace).map_err(BrokerError::from);
        let ns = match ns {
            Ok(ns) => self
                .authorize(Need::Namespace(Want::Lookup), &ns)
                .await
                .map(|()| ns),
            Err(e) => Err(e),
        };
        let result = match ns {
            Ok(ns) => self
                .broker
                .resources()
                .topics_of_namespace(&ns, domain)
                .await
                .map_err(|e| match e {
                    kilonova_metadata::MetadataError::NotFound(_) => {
                        BrokerError::NamespaceNotFound(g.namespace.clone())
                    }
                    e => e.into(),
                }),
            Err(e) => Err(e),
        };
        let reply = match result {
            Err(e) => commands::broker_error(g.request_id, &e),
            Ok(mut topics) => {
                let mut filtered = false;
                if let Some(p) = g.topics_pattern.as_deref() {
                    if let Some(re) = compile_pattern(p) {
                        topics.retain(|t| {
                            let short = t.split_once("://").map_or(t.as_str(), |(_, r)| r);
                            re.is_match(t) || re.is_match(short)
                        });
                        filtered = true;
                    }
                }
                let hash = format!("{:08x}", crc32c::crc32c(topics.join(",").as_bytes()));
                let unchanged = g.topics_hash.as_deref() == Some(hash.as_str());
                commands::with_type(Type::GetTopicsOfNamespaceResponse, |b| {
                    b.get_topics_of_namespace_response =
                        Some(Box::new(CommandGetTopicsOfNamespaceResponse {
                            request_id: g.request_id,
                            topics: if unchanged { Vec::new() } else { topics },
                            filtered: Some(filtered),
                            topics_hash: Some(hash),
                            changed: Some(!unchanged),
                        }));
                })
            }
        };
        self.out.command(reply);
    }
}

fn server_version() -> String {
    format!("Kilonova/{}", env!("CARGO_PKG_VERSION"))
}

/// A client's topic pattern (a Java regex matched against whole names), if our
/// regex engine accepts it within bounded size; clients filter again themselves.
fn compile_pattern(p: &str) -> Option<regex::Regex> {
    regex::RegexBuilder::new(&format!("^(?:{p})$"))
        .size_limit(1 << 20)
        .build()
        .ok()
}

/// Writes what is queued for the connection, many frames per vectored write.
async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: OutboundReceiver) {
    let mut parts: VecDeque<Bytes> = VecDeque::new();
    'outer: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let (mut cost, mut bytes) = (0usize, 0usize);
        let mut close = false;
        while let Some(out) = next.take() {
            cost += out.cost();
            match out {
                Out::Frame(b) => {
                    bytes += b.len();
                    parts.push_back(b);
                }
                Out::Message {
                    header,
                    prefix,
                    payload,
                } => {
                    bytes += header.len() + prefix.as_ref().map_or(0, Bytes::len) + payload.len();
                    parts.push_back(header);
                    parts.extend(prefix);
                    parts.push_back(payload);
                }
                Out::Close => {
                    close = true;
                    break;
                }
            }
            if bytes < WRITE_BATCH_BYTES {
                next = rx.try_recv();
            }
        }
        while !parts.is_empty() {
            let slices: Vec<IoSlice<'_>> = parts
                .iter()
                .take(MAX_IO_SLICES)
                .map(|b| IoSlice::new(b))
                .collect();
            let mut n = match w.write_vectored(&slices).await {
                Ok(0) | Err(_) => break 'outer,
                Ok(n) => n,
            };
            while n > 0 {
                let Some(front) = parts.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    parts.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        rx.written(cost, bytes);
        if close {
            break;
        }
    }
    let _ = w.shutdown().await;
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
    mut stop_accepting: watch::Receiver<bool>,
    close_connections: watch::Receiver<bool>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut tasks = tokio::task::JoinSet::new();
    let mut backoff = AcceptBackoff::new("Pulsar");
    let mut refusals_log = LogLimiter::new(Duration::from_secs(1));
    let mut paused_until: Option<Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept(), if paused_until.is_none() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        let now = broker.clock().now();
                        let wait = backoff.failed(&e, now);
                        if !wait.is_zero() {
                            paused_until = Some(now + wait);
                        }
                        continue;
                    }
                };
                backoff.succeeded();
                let admitted = match broker.connection_limits().admit(peer.ip()) {
                    Ok(a) => a,
                    Err(why) => {
                        broker.metrics().count_connection_refused(why);
                        if let Some(suppressed) = refusals_log.allow(broker.clock().now()) {
                            tracing::warn!(
                                %peer,
                                limit = why.as_str(),
                                max_connections = broker.connection_limits().max_total(),
                                suppressed,
                                "refusing a connection"
                            );
                        }
                        drop(stream);
                        continue;
                    }
                };
                let (b, s) = (broker.clone(), close_connections.clone());
                let tls = tls.clone();
                tasks.spawn(async move {
                    b.metrics().connection_opened();
                    serve_tcp(b.clone(), stream, peer, tls, s).await;
                    b.metrics().connection_closed();
                    drop(admitted);
                });
            }
            _ = sleep_until(paused_until), if paused_until.is_some() => paused_until = None,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = stop_accepting.changed() => break,
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}
