//! A Kafka client connection to one physical broker, pipelined: requests
//! go out as they come (each registered by correlation id first), a reader
//! task hands each response to whoever waits for it. Record batches travel
//! as the `Bytes` they were decoded into: no per-record work.
//!
//! [`Pool`] keeps, per broker address, one shared connection for produces
//! and other short requests, and connections for fetches, each used by one
//! fetch at a time (a broker answers a connection's requests in order, so
//! a long-polling fetch would hold up everything queued behind it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Why an upstream call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the connection to {0} closed")]
    Closed(String),
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{addr} does not serve {api:?} at any version we speak")]
    Unsupported { addr: String, api: ApiKey },
    #[error("bad response from {addr}: {reason}")]
    Protocol { addr: String, reason: String },
}

/// How long a call waits for its answer beyond what the request itself
/// may wait (a fetch's max wait, a produce's timeout).
const ANSWER_MARGIN: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response accepted (a fetch's answer is bounded by its
/// max_bytes; this bounds a broker that misbehaves).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

type Reply = oneshot::Sender<Result<ResponseKind, UpstreamError>>;

struct Waiting {
    api_key: ApiKey,
    version: i16,
    reply: Reply,
}

/// One connection to one broker.
pub struct Upstream {
    addr: String,
    /// Requests are written by their senders in turn (no writer task: one
    /// hand-off less per request); a sender waits while the broker does not
    /// read.
    writer: tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
    waiting: Arc<Mutex<HashMap<i32, Waiting>>>,
    in_flight: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    next_id: AtomicI32,
    /// The versions the broker serves, by API key.
    versions: Mutex<HashMap<i16, (i16, i16)>>,
}

impl Upstream {
    /// Connects and asks the broker which versions it serves.
    pub async fn connect(addr: &str) -> Result<Arc<Upstream>, UpstreamError> {
        let failed = |reason: String| UpstreamError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| failed("timed out".into()))?
            .map_err(|e| failed(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let waiting: Arc<Mutex<HashMap<i32, Waiting>>> = Arc::default();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_answers(
            addr.to_string(),
            reader,
            waiting.clone(),
            in_flight.clone(),
            closed.clone(),
        ));
        let up = Arc::new(Upstream {
            addr: addr.to_string(),
            writer: tokio::sync::Mutex::new(writer),
            waiting,
            in_flight,
            closed,
            next_id: AtomicI32::new(1),
            versions: Mutex::new(HashMap::new()),
        });
        let asked = RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("kilonova-federation"))
                .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION"))),
        );
        match up.call_at(ApiKey::ApiVersions, 3, asked).await? {
            ResponseKind::ApiVersions(v) if v.error_code == 0 => {
                *up.versions.lock().unwrap_or_else(|p| p.into_inner()) = v
                    .api_keys
                    .iter()
                    .map(|k| (k.api_key, (k.min_version, k.max_version)))
                    .collect();
                Ok(up)
            }
            _ => Err(failed("ApiVersions refused".into())),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection is gone (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The version to speak for `api`: the one asked for, or the broker's
    /// highest below it; none if the broker serves nothing at or below it.
    pub fn version_for(&self, api: ApiKey, wanted: i16) -> Result<i16, UpstreamError> {
        let unsupported = || UpstreamError::Unsupported {
            addr: self.addr.clone(),
            api,
        };
        let (lo, hi) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(api as i16))
            .copied()
            .ok_or_else(unsupported)?;
        let ours = api.valid_versions();
        let v = wanted.min(hi).min(ours.max);
        if v < lo || v < ours.min {
            return Err(unsupported());
        }
        Ok(v)
    }

    /// Sends `body` at the version nearest `wanted` and awaits the answer
    /// (`expect_answer` false: a produce with acks 0, answered by nobody).
    pub async fn call(
        self: &Arc<Self>,
        api: ApiKey,
        wanted: i16,
        body: RequestKind,
        expect_answer: bool,
        wait: Duration,
    ) -> Result<Option<ResponseKind>, UpstreamError> {
        self.start(api, wanted, body, expect_answer)
            .await?
            .answer(wait)
            .await
    }

    /// Sends `body` (requests started one after another go out in that
    /// order); the answer is awaited on the [`InFlight`] returned.
    pub async fn start(
        self: &Arc<Self>,
        api: ApiKey,
        wanted: i16,
        body: RequestKind,
        expect_answer: bool,
    ) -> Result<InFlight, UpstreamError> {
        let version = self.version_for(api, wanted)?;
        self.start_at(api, version, body, expect_answer).await
    }

    async fn call_at(
        self: &Arc<Self>,
        api: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> Result<ResponseKind, UpstreamError> {
        let answer = self
            .start_at(api, version, body, true)
            .await?
            .answer(Duration::ZERO)
            .await?;
        answer.ok_or_else(|| UpstreamError::Closed(self.addr.clone()))
    }

    async fn start_at(
        self: &Arc<Self>,
        api: ApiKey,
        version: i16,
        body: RequestKind,
        expect_answer: bool,
    ) -> Result<InFlight, UpstreamError> {
        let (frame, id) = self.frame(api, version, &body)?;
        if !expect_answer {
            self.send(frame).await?;
            return Ok(InFlight {
                upstream: self.clone(),
                id,
                answer: None,
            });
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.insert(
                id,
                Waiting {
                    api_key: api,
                    version,
                    reply,
                },
            );
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.send(frame).await {
            self.forget(id);
            return Err(e);
        }
        Ok(InFlight {
            upstream: self.clone(),
            id,
            answer: Some(answer),
        })
    }

    fn forget(&self, id: i32) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.remove(&id).is_some() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn frame(
        &self,
        api: ApiKey,
        version: i16,
        body: &RequestKind,
    ) -> Result<(Bytes, i32), UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let bad = |e: anyhow::Error| UpstreamError::Protocol {
            addr: self.addr.clone(),
            reason: format!("cannot encode {api:?} v{version}: {e:#}"),
        };
        // Sized up front for the requests that carry records: no growing
        // by doubling, no copy per doubling.
        let body_size = match body {
            RequestKind::Produce(p) => p.compute_size(version).unwrap_or(0),
            _ => 0,
        };
        let mut b = BytesMut::with_capacity(256 + body_size);
        b.extend_from_slice(&[0; 4]);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str("kilonova-federation")))
            .encode(&mut b, api.request_header_version(version))
            .map_err(bad)?;
        body.encode(&mut b, version).map_err(bad)?;
        let size = (b.len() - 4) as i32;
        b[..4].copy_from_slice(&size.to_be_bytes());
        Ok((b.freeze(), id))
    }

    async fn send(&self, frame: Bytes) -> Result<(), UpstreamError> {
        if self.is_closed() {
            return Err(UpstreamError::Closed(self.addr.clone()));
        }
        let mut writer = self.writer.lock().await;
        if let Err(e) = writer.write_all(&frame).await {
            self.closed.store(true, Ordering::Release);
            tracing::debug!(addr = %self.addr, error = %e, "upstream write failed");
            return Err(UpstreamError::Closed(self.addr.clone()));
        }
        Ok(())
    }
}

/// A request sent, its answer to come.
pub struct InFlight {
    upstream: Arc<Upstream>,
    id: i32,
    answer: Option<oneshot::Receiver<Result<ResponseKind, UpstreamError>>>,
}

impl InFlight {
    /// The answer (none for a request nobody answers), waiting at most
    /// `wait` (what the request itself may wait) and a margin.
    pub async fn answer(self, wait: Duration) -> Result<Option<ResponseKind>, UpstreamError> {
        let Some(answer) = self.answer else {
            return Ok(None);
        };
        let limit = wait + ANSWER_MARGIN;
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(r)) => r.map(Some),
            Ok(Err(_)) => Err(UpstreamError::Closed(self.upstream.addr.clone())),
            Err(_) => {
                self.upstream.forget(self.id);
                Err(UpstreamError::Timeout(self.upstream.addr.clone(), limit))
            }
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // The write half's drop shuts it down: the broker closes its end,
        // which ends the reader.
        self.closed.store(true, Ordering::Release);
    }
}

async fn read_answers(
    addr: String,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    waiting: Arc<Mutex<HashMap<i32, Waiting>>>,
    in_flight: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    let why = loop {
        while buf.len() >= 4 {
            let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            // Negative or absurd: the stream cannot be followed any more.
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if !(4..=MAX_RESPONSE_BYTES).contains(&size) {
                closed.store(true, Ordering::Release);
                tracing::warn!(%addr, size, "upstream response size out of bounds: closing");
                fail_all(&addr, &waiting, &in_flight);
                return;
            }
            if buf.len() < 4 + size {
                buf.reserve(4 + size - buf.len());
                break;
            }
            buf.advance(4);
            let frame = buf.split_to(size).freeze();
            answer(&addr, frame, &waiting, &in_flight);
        }
        match reader.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            Ok(_) => break "closed by the broker".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    tracing::debug!(%addr, why, "upstream connection closed");
    closed.store(true, Ordering::Release);
    fail_all(&addr, &waiting, &in_flight);
}

fn answer(
    addr: &str,
    mut frame: Bytes,
    waiting: &Mutex<HashMap<i32, Waiting>>,
    in_flight: &AtomicUsize,
) {
    let id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let Some(w) = waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id)
    else {
        // Its caller gave up (timed out): nobody waits.
        return;
    };
    in_flight.fetch_sub(1, Ordering::AcqRel);
    let bad = |e: anyhow::Error| UpstreamError::Protocol {
        addr: addr.to_string(),
        reason: format!("{:?} v{}: {e:#}", w.api_key, w.version),
    };
    let decoded = ResponseHeader::decode(&mut frame, w.api_key.response_header_version(w.version))
        .map_err(bad)
        .and_then(|_| ResponseKind::decode(w.api_key, &mut frame, w.version).map_err(bad));
    let _ = w.reply.send(decoded);
}

fn fail_all(addr: &str, waiting: &Mutex<HashMap<i32, Waiting>>, in_flight: &AtomicUsize) {
    let drained: Vec<Waiting> = waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, w)| w)
        .collect();
    in_flight.fetch_sub(drained.len(), Ordering::AcqRel);
    for w in drained {
        let _ = w.reply.send(Err(UpstreamError::Closed(addr.to_string())));
    }
}

/// The most fetch connections kept to one broker.
const MAX_FETCH_CONNECTIONS: usize = 64;

/// Connections to the brokers of the physical clusters, by address.
/// Connecting happens outside the locks: a broker slow to answer holds up
/// only the requests for it.
#[derive(Default)]
pub struct Pool {
    shared: Mutex<HashMap<String, Arc<Upstream>>>,
    fetchers: tokio::sync::Mutex<HashMap<String, Vec<Arc<Upstream>>>>,
}

impl Pool {
    /// The shared connection to `addr` (produces, metadata, offsets).
    pub async fn shared(&self, addr: &str) -> Result<Arc<Upstream>, UpstreamError> {
        let live = |shared: &HashMap<String, Arc<Upstream>>| {
            shared.get(addr).filter(|u| !u.is_closed()).cloned()
        };
        if let Some(up) = live(&self.shared.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(up);
        }
        let up = Upstream::connect(addr).await?;
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        // Another caller may have connected meanwhile: the first one stays.
        if let Some(first) = live(&shared) {
            return Ok(first);
        }
        shared.insert(addr.to_string(), up.clone());
        Ok(up)
    }

    /// Starts a fetch on a connection to `addr` with nothing in flight (a
    /// new one if every one is busy, up to about [`MAX_FETCH_CONNECTIONS`]:
    /// fetches connecting at once may each add one; past that the least
    /// busy). Picking an existing connection and sending on it are one
    /// step, so two fetches never pick the same idle connection.
    pub async fn start_fetch(
        &self,
        addr: &str,
        wanted: i16,
        body: RequestKind,
    ) -> Result<InFlight, UpstreamError> {
        {
            let mut fetchers = self.fetchers.lock().await;
            let list = fetchers.entry(addr.to_string()).or_default();
            list.retain(|u| !u.is_closed());
            let pick = match list.iter().find(|u| u.in_flight() == 0) {
                Some(idle) => Some(idle.clone()),
                None if list.len() >= MAX_FETCH_CONNECTIONS => {
                    list.iter().min_by_key(|u| u.in_flight()).cloned()
                }
                None => None,
            };
            if let Some(up) = pick {
                return up.start(ApiKey::Fetch, wanted, body, true).await;
            }
        }
        let up = Upstream::connect(addr).await?;
        let mut fetchers = self.fetchers.lock().await;
        fetchers
            .entry(addr.to_string())
            .or_default()
            .push(up.clone());
        up.start(ApiKey::Fetch, wanted, body, true).await
    }
}
