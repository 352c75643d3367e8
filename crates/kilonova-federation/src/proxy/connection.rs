//! One client connection to a proxy: requests read and handled in order
//! (so what each sends upstream goes out in the client's order), their
//! answers awaited side by side and written in request order, as Kafka
//! requires. At most [`MAX_IN_FLIGHT`] answers wait at once, and every
//! request holds its share of the connection's memory budget (its own
//! size; a fetch, its answer's largest size) until its answer is written;
//! past either the connection stops reading. A client that never reads
//! stalls only itself, and the proxy holds at most its connection limit
//! times that budget.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kilonova_kafka::sasl::{plain_credentials, PLAIN};
use kilonova_kafka::{frame, request, response, versions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, AcquireError, OwnedSemaphorePermit, Semaphore};

use super::group_requests::GroupClient;
use super::{forward, routing, Shared};
use crate::map::Side;

/// A connection that sends nothing for this long is closed.
const IDLE_LIMIT: Duration = Duration::from_secs(600);
/// Answers waiting to be written, at most.
const MAX_IN_FLIGHT: usize = 64;

/// The APIs a proxy serves (topics are created through the controller;
/// transactions and idempotent producer ids are not served).
pub const PROXY_APIS: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::SyncGroup,
    ApiKey::ListGroups,
    ApiKey::DescribeGroups,
    ApiKey::DeleteGroups,
    ApiKey::ApiVersions,
    ApiKey::SaslHandshake,
    ApiKey::SaslAuthenticate,
];

/// What a connection remembers between requests.
#[derive(Default)]
struct ConnState {
    client_id: String,
    /// Per topic, the partition count its producer is taken to know
    /// ([`forward::produce`]).
    counts: HashMap<String, forward::KnownCount>,
    /// The role its token proved (SASL/PLAIN), with authentication on.
    principal: Option<String>,
    authenticated: bool,
    /// SaslHandshake chose PLAIN.
    mechanism_ok: bool,
    /// SaslHandshake v0 succeeded: the next frame is the raw credentials.
    raw_sasl_next: bool,
    /// The connection closes once this answer is written.
    closing: bool,
}

impl ConnState {
    /// Who the name service maps to a proxy group: the SASL identity if
    /// the client proved one, else its client id.
    fn identity(&self) -> &str {
        self.principal.as_deref().unwrap_or(&self.client_id)
    }
}

type Answer = Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>;

/// A connection's memory budget, in KiB.
struct Budget {
    kib: Arc<Semaphore>,
    total: u32,
}

impl Budget {
    fn new(bytes: usize) -> Budget {
        let total = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Budget {
            kib: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Holds `bytes` (the whole budget, for more) until the permit is
    /// dropped; waits while the budget is spent.
    async fn hold(&self, bytes: usize) -> Result<OwnedSemaphorePermit, AcquireError> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.kib.clone().acquire_many_owned(kib).await
    }
}

/// An answer to write once ready, with the budget its request holds.
type Queued = Pin<Box<dyn Future<Output = (Option<Bytes>, OwnedSemaphorePermit)> + Send>>;

fn ready(a: Option<Bytes>) -> Answer {
    Box::pin(std::future::ready(a))
}

pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, side: Side) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (answers, pending) = mpsc::channel::<Queued>(MAX_IN_FLIGHT);
    let mut written = tokio::spawn(write_answers(writer, pending));
    let mut conn = ConnState::default();
    let budget = Budget::new(shared.config.max_connection_bytes);
    let mut buf = BytesMut::with_capacity(16 << 10);
    let max = shared.config.max_request_bytes;
    tracing::debug!(%peer, ?side, "federation client connected");
    'serve: loop {
        loop {
            match frame::next_request(&mut buf, max) {
                Ok(Some(req)) => {
                    // A fetch's answer may be as large as its leaders' cap.
                    let holds = req.len()
                        + if request::is_fetch(&req) {
                            forward::MAX_FETCH_BYTES
                        } else {
                            0
                        };
                    let Ok(permit) = budget.hold(holds).await else {
                        break 'serve;
                    };
                    let answer = handle(&shared, req, peer, side, &mut conn).await;
                    let queued: Queued = Box::pin(async move { (answer.await, permit) });
                    if answers.send(queued).await.is_err() || conn.closing {
                        break 'serve;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    shared
                        .metrics
                        .request_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, error = %e, "closing federation client connection");
                    break 'serve;
                }
            }
        }
        tokio::select! {
            read = tokio::time::timeout(IDLE_LIMIT, reader.read_buf(&mut buf)) => match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            },
            _ = &mut written => break,
        }
    }
    drop(answers);
    if !written.is_finished() {
        let _ = written.await;
    }
    tracing::debug!(%peer, "federation client disconnected");
}

/// Awaits the answers side by side, writes them in request order.
async fn write_answers(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut pending: mpsc::Receiver<Queued>,
) {
    let mut ordered = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            next = pending.recv(), if open && ordered.len() < MAX_IN_FLIGHT => match next {
                Some(a) => ordered.push_back(a),
                None => open = false,
            },
            Some((done, _budget)) = ordered.next(), if !ordered.is_empty() => {
                // The budget goes back once the answer is written.
                if let Some(bytes) = done {
                    if writer.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            }
            else => return,
        }
    }
}

/// Checks SASL/PLAIN credentials (the password is a token); on failure
/// the connection closes after the answer.
fn authenticate(
    shared: &Shared,
    conn: &mut ConnState,
    auth_bytes: &[u8],
    peer: SocketAddr,
) -> Result<(), String> {
    let refused = |conn: &mut ConnState, why: String| {
        tracing::info!(%peer, why, "federation client authentication failed");
        conn.closing = true;
        Err(why)
    };
    let Some(authenticator) = &shared.config.authenticator else {
        // Authentication off: any credentials do, as a broker without it.
        conn.authenticated = true;
        return Ok(());
    };
    if !conn.mechanism_ok {
        return refused(
            conn,
            "SaslHandshake with mechanism PLAIN must come first".into(),
        );
    }
    let Some((_user, token)) = plain_credentials(auth_bytes) else {
        return refused(conn, "malformed PLAIN credentials".into());
    };
    match authenticator.authenticate(token) {
        Ok(principal) => {
            tracing::debug!(%peer, role = %principal.role, "federation client authenticated");
            conn.principal = Some(principal.role);
            conn.authenticated = true;
            Ok(())
        }
        Err(e) => refused(conn, format!("authentication failed: {e}")),
    }
}

/// Handles one request: what it sends upstream is sent before this
/// returns; the answer is the future returned.
async fn handle(
    shared: &Arc<Shared>,
    frame: Bytes,
    peer: SocketAddr,
    side: Side,
    conn: &mut ConnState,
) -> Answer {
    shared.metrics.requests.fetch_add(1, Ordering::Relaxed);
    if conn.raw_sasl_next {
        // After SaslHandshake v0 the credentials come as a frame of their
        // own, answered by an empty frame (or the connection closes).
        conn.raw_sasl_next = false;
        let ok = authenticate(shared, conn, &frame, peer).is_ok();
        return ready(ok.then(|| Bytes::from_static(&[0, 0, 0, 0])));
    }
    let req = match request::decode(frame) {
        Ok(r) => r,
        Err(e) => {
            shared
                .metrics
                .request_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "federation request refused");
            return ready(response::refusal(e, |code| {
                versions::api_versions_of(PROXY_APIS, code)
            }));
        }
    };
    if let Some(id) = &req.header.client_id {
        if conn.client_id.as_str() != id.as_str() {
            conn.client_id = id.to_string();
        }
    }
    let (key, version, correlation_id) = (req.api_key, req.version(), req.correlation_id());
    let before_auth = matches!(
        key,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    );
    if !before_auth && !conn.authenticated && shared.config.authenticator.is_some() {
        tracing::info!(%peer, api = ?key, "request before SASL authentication: closing");
        conn.closing = true;
        return ready(Some(response::bare_error(
            correlation_id,
            ResponseError::SaslAuthenticationFailed.code(),
        )));
    }
    let frame =
        move |body: ResponseKind| match response::encode(key, version, correlation_id, &body) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "federation response not encoded");
                response::bare_error(correlation_id, ResponseError::UnknownServerError.code())
            }
        };
    let groups = GroupClient {
        shared,
        client_id: &conn.client_id,
        identity: conn.identity(),
        client_host: format!("/{}", peer.ip()),
        side,
    };
    let body = match req.body {
        RequestKind::SaslHandshake(r) => {
            let ok = r.mechanism.as_str() == PLAIN;
            conn.mechanism_ok = ok;
            conn.raw_sasl_next = ok && version == 0;
            ResponseKind::SaslHandshake(
                SaslHandshakeResponse::default()
                    .with_error_code(match ok {
                        true => 0,
                        false => ResponseError::UnsupportedSaslMechanism.code(),
                    })
                    .with_mechanisms(vec![StrBytes::from_static_str(PLAIN)]),
            )
        }
        RequestKind::SaslAuthenticate(r) => {
            let answer = match authenticate(shared, conn, &r.auth_bytes, peer) {
                Ok(()) => SaslAuthenticateResponse::default(),
                Err(why) => SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                    .with_error_message(Some(StrBytes::from_string(why))),
            };
            ResponseKind::SaslAuthenticate(answer)
        }
        RequestKind::ApiVersions(_) => {
            ResponseKind::ApiVersions(versions::api_versions_of(PROXY_APIS, 0))
        }
        RequestKind::Metadata(m) => {
            let view = shared.view();
            ResponseKind::Metadata(routing::metadata(
                shared,
                &view,
                &m,
                version,
                side,
                conn.identity(),
            ))
        }
        RequestKind::Produce(p) => {
            let answer = forward::produce(shared, p, version, &mut conn.counts).await;
            return Box::pin(async move { answer.await.map(|r| frame(ResponseKind::Produce(r))) });
        }
        RequestKind::Fetch(f) => {
            let answer = forward::fetch(shared, f, version).await;
            return Box::pin(async move { Some(frame(ResponseKind::Fetch(answer.await))) });
        }
        RequestKind::ListOffsets(l) => {
            let answer = forward::list_offsets(shared, l, version).await;
            return Box::pin(async move { Some(frame(ResponseKind::ListOffsets(answer.await))) });
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups.find_coordinator(&r, version))
        }
        RequestKind::JoinGroup(r) => {
            let joined = groups.join(r, version);
            return Box::pin(async move { Some(frame(ResponseKind::JoinGroup(joined.await))) });
        }
        RequestKind::SyncGroup(r) => {
            let synced = groups.sync(r);
            return Box::pin(async move { Some(frame(ResponseKind::SyncGroup(synced.await))) });
        }
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups.heartbeat(&r)),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(groups.leave(&r, version)),
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(groups.offset_commit(&r).await),
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(groups.offset_fetch(&r).await),
        RequestKind::ListGroups(_) => ResponseKind::ListGroups(groups.list()),
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(groups.describe(&r)),
        RequestKind::DeleteGroups(r) => ResponseKind::DeleteGroups(groups.delete_groups(&r).await),
        _ => {
            shared
                .metrics
                .request_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, api = ?key, "API not served by the federation proxy");
            return ready(Some(response::bare_error(
                correlation_id,
                ResponseError::UnsupportedVersion.code(),
            )));
        }
    };
    ready(Some(frame(body)))
}
