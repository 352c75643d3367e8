//! Lookup connections: a client's CONNECT without `proxy_to_broker_url`.
//! The proxy answers CONNECTED and PINGs itself and forwards the discovery
//! requests — LOOKUP, PARTITIONED_METADATA, GET_TOPICS_OF_NAMESPACE,
//! GET_SCHEMA — to a broker over a [`crate::link::BrokerLink`] opened for
//! the client's role, so the broker authorizes them as the client. A
//! LOOKUP's redirects are followed here; its final answer tells the client
//! to connect to the owner through the proxy (`proxy_through_service_url`).
//! Any other command is a protocol error: it is answered and the connection
//! closes.
//!
//! Requests are answered concurrently, at most `max_concurrent_lookup_requests`
//! over all clients: a client whose next request finds no room is not read
//! from until one is answered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_lookup_topic_response::LookupType, BaseCommand, CommandConnect,
    ServerError,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, Semaphore};

use crate::allow_list::BrokerAddress;
use crate::commands::{self, Credentials, NO_REQUEST, PROTOCOL_VERSION};
use crate::error::ProxyError;
use crate::server::{read_frame, Shared};

/// Answers queued for a client's writer.
const CLIENT_QUEUE: usize = 64;
/// Requests of one connection in flight at once: with the answers queued,
/// what one client that does not read can make the proxy hold (answers are
/// at most `max_broker_frame_bytes` each).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 64;
/// How long the writer may take to flush after the connection ends.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the connection does with a client's command.
#[derive(Debug, PartialEq)]
enum Action {
    Pong,
    Ignore,
    Forward,
    /// A protocol error: answer this and close.
    Refuse(String),
}

fn classify(c: &BaseCommand) -> Action {
    match Type::try_from(c.r#type) {
        Ok(Type::Ping) => Action::Pong,
        // A PONG answers our PING; an AUTH_RESPONSE answers a challenge the
        // proxy never sends (credentials are checked at CONNECT).
        Ok(Type::Pong | Type::AuthResponse) => Action::Ignore,
        Ok(Type::Lookup | Type::PartitionedMetadata | Type::GetTopicsOfNamespace | Type::GetSchema)
            if commands::request_id(c).is_some() =>
        {
            Action::Forward
        }
        Ok(Type::Connect) => Action::Refuse("second CONNECT".into()),
        Ok(t) => Action::Refuse(format!(
            "{t:?} is not served on a lookup connection: producers and consumers connect through the proxy to the broker a LOOKUP names"
        )),
        Err(_) => Action::Refuse(format!("unknown command type {}", c.r#type)),
    }
}

pub(crate) async fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    mut buf: BytesMut,
    connect: CommandConnect,
    creds: Credentials,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let mut writer = tokio::spawn(write_loop(writer, rx, shared.relay_write_timeout()));
    // Dropped early (the client's token expired), the connection closes at
    // once: its writer must not wait for the answers still in flight.
    let _abort_writer = AbortOnDrop(writer.abort_handle());
    let version = connect
        .protocol_version
        .unwrap_or(0)
        .clamp(0, PROTOCOL_VERSION);
    if tx.send(commands::connected(version, None)).await.is_err() {
        return;
    }
    let creds = Arc::new(creds);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let keep_alive = shared.keep_alive();
    let mut pinged = false;
    loop {
        let next = tokio::time::timeout(
            keep_alive,
            read_frame(&mut reader, &mut buf, shared.config.max_client_frame_bytes),
        );
        let command = tokio::select! {
            // The writer ends when the client stops reading or goes away.
            _ = &mut writer => return,
            r = next => r,
        };
        let command = match command {
            Err(_) if pinged => {
                tracing::debug!("lookup connection idle: closing");
                break;
            }
            Err(_) => {
                pinged = true;
                if tx.send(commands::ping()).await.is_err() {
                    break;
                }
                continue;
            }
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                let _ = tx
                    .send(commands::error(
                        NO_REQUEST,
                        ServerError::UnknownError,
                        e.to_string(),
                    ))
                    .await;
                break;
            }
        };
        pinged = false;
        match classify(&command) {
            Action::Pong => {
                if tx.send(commands::pong()).await.is_err() {
                    break;
                }
            }
            Action::Ignore => {}
            Action::Refuse(why) => {
                tracing::info!(reason = %why, "lookup connection: protocol error");
                let id = commands::request_id(&command).unwrap_or(NO_REQUEST);
                let _ = tx
                    .send(commands::error(id, ServerError::NotAllowedError, why))
                    .await;
                break;
            }
            Action::Forward => {
                // Room for one more request of this connection and of all,
                // or wait (not reading meanwhile).
                let Ok(mine) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let Ok(global) = shared.lookups.clone().acquire_owned().await else {
                    break;
                };
                let (shared, creds, tx) = (shared.clone(), creds.clone(), tx.clone());
                tokio::spawn(async move {
                    let answer = forward(&shared, &creds, command).await;
                    let _ = tx.send(answer).await;
                    drop((mine, global));
                });
            }
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, writer).await;
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write_loop<S: AsyncWrite>(
    mut writer: WriteHalf<S>,
    mut rx: mpsc::Receiver<BaseCommand>,
    write_timeout: Duration,
) {
    let mut out = BytesMut::new();
    while let Some(c) = rx.recv().await {
        out.clear();
        frame::encode_command(&c, &mut out);
        match tokio::time::timeout(write_timeout, writer.write_all(&out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let _ = writer.shutdown().await;
}

/// The answer to a forwarded request, with the client's request id.
async fn forward(shared: &Shared, creds: &Credentials, request: BaseCommand) -> BaseCommand {
    shared.metrics.lookup_request();
    let client_id = commands::request_id(&request).unwrap_or(NO_REQUEST);
    let kind = Type::try_from(request.r#type).unwrap_or(Type::Error);
    let result = match kind {
        Type::Lookup => lookup(shared, creds, request).await,
        _ => ask_any(shared, creds, request).await,
    };
    match result {
        Ok(mut answer) => {
            commands::set_request_id(&mut answer, client_id);
            answer
        }
        Err(e) => {
            tracing::debug!(request = ?kind, error = %e, "forwarded request failed");
            commands::failure(kind, client_id, e.server_error(), e.to_string())
        }
    }
}

/// Asks the configured brokers in turn, moving on from one that cannot be
/// reached (not from one that answers, nor one that refuses the proxy).
async fn ask_any(
    shared: &Shared,
    creds: &Credentials,
    request: BaseCommand,
) -> Result<BaseCommand, ProxyError> {
    let n = shared.brokers.len();
    let start = shared.next_broker.fetch_add(1, Ordering::Relaxed);
    let mut last = ProxyError::NoBroker;
    for i in 0..n {
        let Some(addr) = shared.brokers.get((start + i) % n) else {
            break;
        };
        match ask(shared, addr, creds, request.clone()).await {
            Err(e @ (ProxyError::Unreachable { .. } | ProxyError::LinkClosed(_))) => last = e,
            other => return other,
        }
    }
    Err(last)
}

async fn ask(
    shared: &Shared,
    addr: &BrokerAddress,
    creds: &Credentials,
    request: BaseCommand,
) -> Result<BaseCommand, ProxyError> {
    let link = shared.links.get(addr, creds).await?;
    link.request(request, shared.broker_timeout()).await
}

/// A LOOKUP, redirects followed; the owner's answer turned into "connect
/// to it through the proxy".
async fn lookup(
    shared: &Shared,
    creds: &Credentials,
    request: BaseCommand,
) -> Result<BaseCommand, ProxyError> {
    let mut answer = ask_any(shared, creds, request.clone()).await?;
    for _ in 0..=shared.config.max_lookup_redirects {
        let r = match &answer.lookup_topic_response {
            Some(r) if answer.r#type == Type::LookupResponse as i32 => r,
            // A broker's ERROR (or anything else) answering the LOOKUP: the
            // client gets a failed lookup with the broker's code and reason.
            _ => {
                let (code, message) = match &answer.error {
                    Some(e) => (
                        ServerError::try_from(e.error).unwrap_or(ServerError::UnknownError),
                        e.message.clone(),
                    ),
                    None => (
                        ServerError::UnknownError,
                        format!("command type {} answering a LOOKUP", answer.r#type),
                    ),
                };
                return Ok(commands::failure(Type::Lookup, 0, code, message));
            }
        };
        let (kind, addr, authoritative) =
            match r.response.and_then(|t| LookupType::try_from(t).ok()) {
                Some(t @ (LookupType::Connect | LookupType::Redirect)) => {
                    let url =
                        r.broker_service_url
                            .as_deref()
                            .ok_or_else(|| ProxyError::Unexpected {
                                addr: "a broker".into(),
                                what: "a lookup answer without a pulsar:// URL".into(),
                            })?;
                    (t, BrokerAddress::parse(url)?, r.authoritative)
                }
                // Failed (or a type we do not know): the client is told as is.
                _ => return Ok(answer),
            };
        // A broker named it: relays to it are allowed from now on.
        shared.allow.learn(&addr);
        if kind == LookupType::Connect {
            return Ok(commands::lookup_through_proxy(0, &addr.to_string()));
        }
        let mut next = request.clone();
        if let Some(l) = next.lookup_topic.as_mut() {
            l.authoritative = authoritative;
        }
        answer = ask(shared, &addr, creds, next).await?;
    }
    let topic = request
        .lookup_topic
        .as_ref()
        .map_or_else(String::new, |l| l.topic.clone());
    Err(ProxyError::TooManyRedirects(topic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilonova_pulsar_protocol::proto::{CommandLookupTopic, CommandProducer};

    #[test]
    fn only_discovery_requests_are_forwarded_and_the_rest_is_refused() {
        let lookup = BaseCommand {
            lookup_topic: Some(Box::new(CommandLookupTopic {
                topic: "t".into(),
                request_id: 1,
                ..Default::default()
            })),
            ..commands::base(Type::Lookup)
        };
        assert_eq!(classify(&lookup), Action::Forward);
        assert_eq!(classify(&commands::ping()), Action::Pong);
        assert_eq!(classify(&commands::pong()), Action::Ignore);
        let producer = BaseCommand {
            producer: Some(Box::new(CommandProducer {
                topic: "t".into(),
                producer_id: 1,
                request_id: 2,
                ..Default::default()
            })),
            ..commands::base(Type::Producer)
        };
        assert!(matches!(classify(&producer), Action::Refuse(_)));
        // A LOOKUP without its body cannot be answered: refused, not forwarded.
        assert!(matches!(
            classify(&commands::base(Type::Lookup)),
            Action::Refuse(_)
        ));
        let unknown = BaseCommand {
            r#type: 4242,
            ..Default::default()
        };
        assert!(matches!(classify(&unknown), Action::Refuse(_)));
        assert!(matches!(
            classify(&commands::base(Type::Connect)),
            Action::Refuse(_)
        ));
    }
}
