//! One Kafka connection: requests read and handled in order, their answers
//! written in that order (Kafka's rule) by a writer task. A produce's answer
//! waits for its entries' receipts while the connection reads on, so a
//! client's pipelined produces share group commits; other requests are
//! answered when handled. At most [`MAX_IN_FLIGHT`] answers wait at once:
//! past that the connection stops reading.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kilonova_kafka::request::{self, RequestError};
use kilonova_kafka::{frame, names, response, versions};
use kilonova_metadata::names::TopicName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::routes::Routes;
use super::KafkaSettings;
use crate::outbound::Outbound;
use crate::topic::TopicHandle;
use crate::Broker;
use kilonova_auth::{Need, Principal, Want};
use kilonova_kafka_groups::groups::Coordinator;

/// A connection that sends nothing for this long is closed (Kafka's
/// `connections.max.idle.ms` default is 10 minutes).
const IDLE_LIMIT: Duration = Duration::from_secs(600);

/// Room for a request's header and framing beyond the largest message.
const REQUEST_OVERHEAD_BYTES: usize = 64 << 10;

/// Answers a connection has waiting to be written, at most (Kafka clients
/// pipeline 5 by default).
const MAX_IN_FLIGHT: usize = 64;

/// An answer, framed, once ready (none: a produce with acks=0).
type Answer = Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>;

/// Answers queued and not yet written, and a wake-up when none are left
/// (or the writer stopped).
#[derive(Default)]
struct Outstanding {
    count: std::sync::atomic::AtomicUsize,
    stopped: std::sync::atomic::AtomicBool,
    none_left: tokio::sync::Notify,
}

impl Outstanding {
    fn queued(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn written(&self) {
        if self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.none_left.notify_waiters();
        }
    }

    /// The writer stopped: nothing more will be written.
    fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        self.none_left.notify_waiters();
    }

    /// Returns once every queued answer is written (or the writer stopped).
    async fn drained(&self) {
        loop {
            let notified = self.none_left.notified();
            if self.count.load(std::sync::atomic::Ordering::Acquire) == 0
                || self.stopped.load(std::sync::atomic::Ordering::Acquire)
            {
                return;
            }
            notified.await;
        }
    }
}

pub(super) struct KafkaConnection {
    pub(super) broker: Broker,
    pub(super) settings: Arc<KafkaSettings>,
    /// The listener's consumer groups.
    pub(super) groups: Arc<Coordinator>,
    /// The port clients are told to come back to (this listener's).
    pub(super) advertised_port: u16,
    pub(super) id: u64,
    pub(super) peer: SocketAddr,
    pub(super) client_id: Arc<str>,
    /// Where the topics answer this connection's producers ([`Routes`]
    /// hands the answers on).
    pub(super) out: Outbound,
    pub(super) routes: Arc<Routes>,
    /// Producers this connection opened, by topic (full name).
    pub(super) producers: HashMap<String, (TopicHandle, u64)>,
    pub(super) next_id: u64,
    /// Partition counts seen (0: not partitioned), by Kafka topic name.
    partitions: HashMap<String, u32>,
    /// Where this connection's Kafka topic names live: the listener's
    /// namespace, or the one its SASL username named.
    pub(super) namespace: String,
    /// Who the client proved to be (SASL), with authentication on.
    pub(super) principal: Option<Principal>,
    pub(super) authenticated: bool,
    /// SaslHandshake chose PLAIN.
    pub(super) sasl_mechanism_ok: bool,
    /// SaslHandshake v0 succeeded: the next frame is the raw credentials.
    pub(super) raw_sasl_next: bool,
    /// The connection closes once this answer is written.
    pub(super) closing: bool,
    /// It came in by the TLS listener (Metadata names TLS addresses).
    pub(super) over_tls: bool,
    pub(super) nodes: super::nodes::NodeCache,
}

/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection gets from the listener it came in by.
pub(super) struct Listener {
    pub settings: Arc<KafkaSettings>,
    pub groups: Arc<Coordinator>,
    /// The port Metadata and FindCoordinator name (this listener's).
    pub advertised_port: u16,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves one accepted connection (TLS first, if the listener is) until it closes.
pub(super) async fn serve(
    broker: Broker,
    stream: TcpStream,
    peer: SocketAddr,
    mut listener: Listener,
    close: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    match listener.tls.take() {
        None => {
            let (reader, writer) = stream.into_split();
            serve_on(broker, reader, writer, peer, listener, false, close).await
        }
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    let (reader, writer) = tokio::io::split(s);
                    serve_on(broker, reader, writer, peer, listener, true, close).await
                }
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "Kafka TLS handshake failed"),
                Err(_) => tracing::info!(%peer, "Kafka TLS handshake timed out"),
            }
        }
    }
}

async fn serve_on<R, W>(
    broker: Broker,
    mut reader: R,
    writer: W,
    peer: SocketAddr,
    listener: Listener,
    over_tls: bool,
    mut close: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let max_request = broker.config().max_frame_bytes() + REQUEST_OVERHEAD_BYTES;
    let (out, out_rx) = Outbound::new(broker.config().max_outbound_bytes());
    let routes = Arc::new(Routes::default());
    let pump = tokio::spawn(super::routes::pump(out_rx, routes.clone()));
    let (answers, pending) = mpsc::channel::<Answer>(MAX_IN_FLIGHT);
    let outstanding = Arc::new(Outstanding::default());
    let mut written = tokio::spawn(write_answers(writer, pending, outstanding.clone()));
    let mut conn = KafkaConnection {
        id: broker.next_connection_id(),
        broker,
        settings: listener.settings,
        groups: listener.groups,
        advertised_port: listener.advertised_port,
        peer,
        client_id: Arc::from(""),
        out,
        routes,
        producers: HashMap::new(),
        next_id: 1,
        partitions: HashMap::new(),
        namespace: String::new(),
        principal: None,
        authenticated: false,
        sasl_mechanism_ok: false,
        raw_sasl_next: false,
        closing: false,
        over_tls,
        nodes: Default::default(),
    };
    conn.namespace = conn.settings.namespace.clone();
    tracing::debug!(conn = conn.id, %peer, "Kafka connection opened");
    let mut buf = BytesMut::with_capacity(16 << 10);
    'serve: loop {
        loop {
            match frame::next_request(&mut buf, max_request) {
                Ok(Some(req)) => {
                    // A fetch's answer can be large: it is built once every
                    // earlier answer is out, so one connection holds one.
                    if request::is_fetch(&req) {
                        outstanding.drained().await;
                    }
                    let answer = conn.handle(req).await;
                    outstanding.queued();
                    if answers.send(answer).await.is_err() || conn.closing {
                        break 'serve;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(conn = conn.id, %peer, error = %e, "closing Kafka connection");
                    break 'serve;
                }
            }
        }
        tokio::select! {
            read = tokio::time::timeout(IDLE_LIMIT, reader.read_buf(&mut buf)) => match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            },
            _ = close.changed() => break,
            // The writer stopped (the client went away).
            _ = &mut written => break,
        }
    }
    // Answers already due are written (each bounded by its request's timeout).
    drop(answers);
    if !written.is_finished() {
        let _ = written.await;
    }
    conn.release().await;
    pump.abort();
    tracing::debug!(conn = conn.id, "Kafka connection closed");
}

/// Writes the answers in the order their requests came, each once ready.
async fn write_answers<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut pending: mpsc::Receiver<Answer>,
    outstanding: Arc<Outstanding>,
) {
    while let Some(answer) = pending.recv().await {
        let written = match answer.await {
            Some(bytes) => writer.write_all(&bytes).await.is_ok(),
            None => true,
        };
        outstanding.written();
        if !written {
            break;
        }
    }
    outstanding.stop();
}

fn ready(answer: Option<Bytes>) -> Answer {
    Box::pin(std::future::ready(answer))
}

impl KafkaConnection {
    /// The answer to one request, framed, once ready.
    async fn handle(&mut self, frame: Bytes) -> Answer {
        if self.raw_sasl_next {
            let answer = self.sasl_raw(frame);
            return ready(answer);
        }
        let req = match request::decode(frame) {
            Ok(r) => r,
            Err(e) => return ready(self.refuse(e)),
        };
        if let Some(id) = &req.header.client_id {
            if *self.client_id != **id {
                self.client_id = Arc::from(id.as_str());
            }
        }
        let (key, version, correlation_id) = (req.api_key, req.version(), req.correlation_id());
        self.broker.metrics().kafka().count_request(key as i16);
        let broker = self.broker.clone();
        let started = std::time::Instant::now();
        let before_auth = matches!(
            key,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        );
        if !before_auth && !self.authenticated && self.broker.security().authentication_enabled() {
            tracing::info!(conn = self.id, peer = %self.peer, api = ?key, "Kafka request before SASL authentication: closing");
            self.closing = true;
            return ready(Some(response::bare_error(
                correlation_id,
                ResponseError::SaslAuthenticationFailed.code(),
            )));
        }
        let conn = self.id;
        let frame = move |body: ResponseKind| {
            let errors = response::error_codes(&body);
            broker
                .metrics()
                .kafka()
                .answered(key as i16, started.elapsed(), &errors);
            match response::encode(key, version, correlation_id, &body) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(conn, error = %e, "Kafka response not encoded");
                    response::bare_error(correlation_id, ResponseError::UnknownServerError.code())
                }
            }
        };
        let body = match req.body {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(versions::api_versions(0)),
            RequestKind::SaslHandshake(r) => {
                ResponseKind::SaslHandshake(self.sasl_handshake(r, version))
            }
            RequestKind::SaslAuthenticate(r) => {
                ResponseKind::SaslAuthenticate(self.sasl_authenticate(r))
            }
            RequestKind::Metadata(m) => ResponseKind::Metadata(self.metadata(m, version).await),
            RequestKind::Produce(p) => {
                let answer = self.produce(p).await;
                return Box::pin(
                    async move { answer.await.map(|r| frame(ResponseKind::Produce(r))) },
                );
            }
            RequestKind::Fetch(f) => ResponseKind::Fetch(self.fetch(f, version).await),
            RequestKind::ListOffsets(l) => ResponseKind::ListOffsets(self.list_offsets(l).await),
            RequestKind::FindCoordinator(r) => {
                ResponseKind::FindCoordinator(self.find_coordinator(r, version).await)
            }
            // Joins and syncs wait for the group: the connection reads on.
            RequestKind::JoinGroup(r) => {
                let joined = self.join_group(r, version).await;
                return Box::pin(async move { Some(frame(ResponseKind::JoinGroup(joined.await))) });
            }
            RequestKind::SyncGroup(r) => {
                let synced = self.sync_group(r).await;
                return Box::pin(async move { Some(frame(ResponseKind::SyncGroup(synced.await))) });
            }
            RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(self.heartbeat(r).await),
            RequestKind::LeaveGroup(r) => {
                ResponseKind::LeaveGroup(self.leave_group(r, version).await)
            }
            RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(self.offset_commit(r).await),
            RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(self.offset_fetch(r).await),
            RequestKind::ListGroups(_) => ResponseKind::ListGroups(self.list_groups().await),
            RequestKind::DescribeGroups(r) => {
                ResponseKind::DescribeGroups(self.describe_groups(r).await)
            }
            RequestKind::DeleteGroups(r) => ResponseKind::DeleteGroups(self.delete_groups(r).await),
            RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(self.create_topics(r).await),
            RequestKind::DescribeConfigs(r) => {
                ResponseKind::DescribeConfigs(self.describe_configs(r).await)
            }
            RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(self.alter_configs(r).await),
            RequestKind::IncrementalAlterConfigs(r) => {
                ResponseKind::IncrementalAlterConfigs(self.incremental_alter_configs(r).await)
            }
            RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(self.delete_topics(r).await),
            RequestKind::CreatePartitions(r) => {
                ResponseKind::CreatePartitions(self.create_partitions(r).await)
            }
            RequestKind::InitProducerId(r) => {
                ResponseKind::InitProducerId(self.init_producer_id(r).await)
            }
            // `request::decode` admits only the APIs served.
            _ => ResponseKind::ApiVersions(versions::api_versions(
                ResponseError::UnsupportedVersion.code(),
            )),
        };
        ready(Some(frame(body)))
    }

    /// The answer to a request that was not decoded ([`response::refusal`]).
    fn refuse(&mut self, e: RequestError) -> Option<Bytes> {
        tracing::debug!(conn = self.id, peer = %self.peer, error = %e, "Kafka request refused");
        response::refusal(e, versions::api_versions)
    }

    /// The Kilonova topic serving Kafka topic `name`'s partition `partition`.
    /// Only a produce creates a missing topic (as a Kafka producer's
    /// metadata request would): a fetch of a deleted topic does not bring
    /// it back.
    pub(super) async fn partition_topic(
        &mut self,
        name: &str,
        partition: i32,
        want: Want,
    ) -> Result<TopicName, i16> {
        let base = self.topic_name(name)?;
        self.allowed(&base, want).await?;
        let serving = |count: u32| match count {
            0 => base.clone(),
            _ => base.partition_name(partition as u32),
        };
        // A count seen before holds while its partition is loaded; one that
        // is not loaded may have been deleted since: its record is read again.
        let cached = self
            .partitions
            .get(name)
            .copied()
            .filter(|n| partition < (*n).max(1) as i32 && self.broker.is_loaded(&serving(*n)));
        let count = match cached {
            Some(n) => n,
            None => {
                let n = self
                    .partition_count(name, matches!(want, Want::Produce))
                    .await?;
                self.partitions.insert(name.to_string(), n);
                n
            }
        };
        if partition < 0 || partition >= count.max(1) as i32 {
            return Err(ResponseError::UnknownTopicOrPartition.code());
        }
        Ok(serving(count))
    }

    /// Whether this connection's role may do `want` on `topic`
    /// (`TOPIC_AUTHORIZATION_FAILED` if not).
    pub(super) async fn allowed(&self, topic: &TopicName, want: Want) -> Result<(), i16> {
        self.broker
            .authorize(
                self.principal.as_ref(),
                Need::Topic(topic, want),
                None,
                Some(&topic.namespace()),
            )
            .await
            .map_err(|e| super::errors::code(&e))
    }

    /// Forgets Kafka topic `name`'s partition count (it changed).
    pub(super) fn forget_partitions(&mut self, name: &str) {
        self.partitions.remove(name);
    }

    /// Kafka topic `name` as a Kilonova topic name.
    pub(super) fn topic_name(&self, name: &str) -> Result<TopicName, i16> {
        let full = names::to_topic(&self.namespace, name)
            .map_err(|_| ResponseError::InvalidTopicException.code())?;
        TopicName::parse(&full).map_err(|_| ResponseError::InvalidTopicException.code())
    }

    /// How many partitions Kafka topic `name` has (0: not partitioned);
    /// a topic that does not exist is `UNKNOWN_TOPIC_OR_PARTITION`, or with
    /// `create` is created if the broker's auto-creation allows it, as a
    /// Pulsar producer's would be.
    pub(super) async fn partition_count(&mut self, name: &str, create: bool) -> Result<u32, i16> {
        let topic = self.topic_name(name)?;
        let existed = self
            .broker
            .resources()
            .topic(&topic)
            .await
            .map_err(|e| super::errors::code(&crate::BrokerError::from(e)))?
            .is_some();
        if !existed && !create {
            return Err(ResponseError::UnknownTopicOrPartition.code());
        }
        let n = self
            .broker
            .partitions(&topic)
            .await
            .map_err(|e| super::errors::code(&e))?;
        if n == 0 {
            // Not partitioned: loading it checks it exists (or creates it).
            self.broker
                .topic(&topic)
                .await
                .map_err(|e| super::errors::code(&e))?;
        }
        if !existed {
            self.give_kafka_retention(&topic).await;
        }
        Ok(n)
    }

    /// Gives a topic this listener just created Kafka's retention as its
    /// own policy, unless it has one ([`KafkaSettings::retention_minutes`]).
    pub(super) async fn give_kafka_retention(&self, topic: &TopicName) {
        let Some(minutes) = self.settings.retention_minutes else {
            return;
        };
        let set = self
            .broker
            .resources()
            .update_topic(topic, |t| {
                if t.policies.retention_policies.is_none() {
                    t.policies.retention_policies =
                        Some(kilonova_metadata::policies::RetentionPolicies {
                            retention_time_in_minutes: minutes,
                            retention_size_in_mb: -1,
                        });
                }
                Ok(())
            })
            .await;
        match set {
            Ok(_) => tracing::info!(%topic, minutes, "Kafka topic created with Kafka's retention"),
            Err(e) => tracing::warn!(%topic, error = %e, "the Kafka retention policy was not set"),
        }
    }
}
