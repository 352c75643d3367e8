//! The proxy process: its listeners, the state every connection shares, and
//! the first frame of a client connection (CONNECT), which decides between a
//! lookup connection and a relay.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kilonova_auth::Security;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{base_command::Type, BaseCommand, ServerError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::allow_list::{AllowList, BrokerAddress};
use crate::commands::{self, Credentials, NO_REQUEST};
use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::link::LinkPool;
use crate::metrics::Metrics;

/// How long a refused client's error may take to write before it is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to finish its TLS handshake.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping waits for the listeners' tasks.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed accept (out of file descriptors, …).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What every connection of the proxy shares.
pub(crate) struct Shared {
    pub config: ProxyConfig,
    pub security: Security,
    pub proxy_token: Option<String>,
    /// The configured brokers, where lookups go in turn.
    pub brokers: Vec<BrokerAddress>,
    pub next_broker: AtomicUsize,
    pub allow: AllowList,
    pub links: LinkPool,
    pub lookups: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
}

impl Shared {
    pub fn broker_timeout(&self) -> Duration {
        Duration::from_secs(self.config.broker_timeout_secs.max(1))
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.config.keep_alive_secs.max(1))
    }

    pub fn relay_write_timeout(&self) -> Duration {
        Duration::from_secs(self.config.relay_write_timeout_secs.max(1))
    }
}

/// The ports a started proxy listens on (the system's choice for port 0);
/// `None` for a port that is off.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ProxyPorts {
    pub pulsar: Option<u16>,
    pub http: Option<u16>,
    pub pulsar_tls: Option<u16>,
    pub https: Option<u16>,
}

/// A started proxy: listening, serving until [`Proxy::shutdown`].
pub struct Proxy {
    ports: ProxyPorts,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the [auth] settings: {0}")]
    Auth(#[from] kilonova_auth::KeyError),
    #[error(transparent)]
    BrokerUrl(#[from] ProxyError),
    #[error("no broker_service_urls (--broker-url pulsar://host:port): the proxy needs a broker to send lookups to")]
    NoBrokers,
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error("the HTTP client: {0}")]
    Http(reqwest::Error),
    #[error("the [tls] settings: {0}")]
    Tls(#[from] kilonova_auth::tls::TlsError),
    #[error("plain_ports_enabled = false needs [tls] with a certificate: no port would serve")]
    NoPort,
}

impl Proxy {
    /// Checks the configuration, binds both ports and starts serving.
    pub async fn start(config: ProxyConfig) -> Result<Proxy, StartError> {
        let security = Security::from_config(&config.auth)?;
        // `broker_client_auth_token`, read (a `file:` value) by Security.
        let proxy_token = security.broker_client_token().map(str::to_owned);
        let brokers = config
            .broker_service_urls
            .iter()
            .map(|u| BrokerAddress::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        if brokers.is_empty() {
            return Err(StartError::NoBrokers);
        }
        // reqwest's client panics without a process-wide rustls provider;
        // this fails only if one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(config.broker_timeout_secs.max(1)))
            .build()
            .map_err(StartError::Http)?;
        let tls = config.tls.enabled();
        if !tls && !config.plain_ports_enabled {
            return Err(StartError::NoPort);
        }
        let (pulsar_tls, https_tls) = match tls {
            true => (
                Some(TlsAcceptor::from(kilonova_auth::tls::server_config(
                    &config.tls,
                    &[],
                )?)),
                Some(TlsAcceptor::from(kilonova_auth::tls::server_config(
                    &config.tls,
                    &[b"http/1.1"],
                )?)),
            ),
            false => (None, None),
        };
        let host = config.bind_address.clone();
        let bind = |port: u16, on: bool| {
            let addr = format!("{host}:{port}");
            async move {
                if !on {
                    return Ok(None);
                }
                TcpListener::bind(&addr)
                    .await
                    .map(Some)
                    .map_err(|error| StartError::Bind { addr, error })
            }
        };
        let plain = config.plain_ports_enabled;
        let pulsar = bind(config.pulsar_port, plain).await?;
        let http_listener = bind(config.http_port, plain).await?;
        let pulsar_tls_listener = bind(config.pulsar_tls_port, tls).await?;
        let https_listener = bind(config.https_port, tls).await?;
        let port = |l: &Option<TcpListener>| l.as_ref().map(local_port);
        let ports = ProxyPorts {
            pulsar: port(&pulsar),
            http: port(&http_listener),
            pulsar_tls: port(&pulsar_tls_listener),
            https: port(&https_listener),
        };
        let shared = Arc::new(Shared {
            allow: AllowList::new(brokers.iter().cloned(), config.max_learned_brokers),
            links: LinkPool::new(
                config.max_lookup_links,
                config.max_broker_frame_bytes,
                Duration::from_secs(config.broker_timeout_secs.max(1)),
            ),
            lookups: Arc::new(Semaphore::new(config.max_concurrent_lookup_requests.max(1))),
            metrics: Arc::new(Metrics::default()),
            next_broker: AtomicUsize::new(0),
            brokers,
            proxy_token,
            security,
            http,
            config,
        });
        let (stop, stopped) = watch::channel(false);
        // One cap for each kind of port, plain and TLS together.
        let pulsar_slots = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
        let http_server = crate::http::HttpServer::new(shared.clone());
        let mut tasks = Vec::new();
        for (listener, acceptor) in [(pulsar, None), (pulsar_tls_listener, pulsar_tls)] {
            if let Some(l) = listener {
                tasks.push(tokio::spawn(accept_loop(
                    l,
                    acceptor,
                    shared.clone(),
                    pulsar_slots.clone(),
                    stopped.clone(),
                )));
            }
        }
        for (listener, acceptor) in [(http_listener, None), (https_listener, https_tls)] {
            if let Some(l) = listener {
                let (server, stopped) = (http_server.clone(), stopped.clone());
                tasks.push(tokio::spawn(async move {
                    server.serve(l, acceptor, stopped).await
                }));
            }
        }
        tracing::info!(
            pulsar_port = ?ports.pulsar,
            http_port = ?ports.http,
            pulsar_tls_port = ?ports.pulsar_tls,
            https_port = ?ports.https,
            brokers = ?shared.config.broker_service_urls,
            "proxy serving"
        );
        Ok(Proxy {
            ports,
            shared,
            stop,
            tasks,
        })
    }

    pub fn ports(&self) -> ProxyPorts {
        self.ports
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Stops accepting; connections being served end with the process.
    /// The HTTP port finishes the requests it is answering, for at most
    /// `SHUTDOWN_TIMEOUT` (an idle keep-alive connection must not hold
    /// the process).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, t).await;
        }
    }
}

fn local_port(l: &TcpListener) -> u16 {
    l.local_addr().map(|a| a.port()).unwrap_or(0)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_refusal_log: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let (shared, tls) = (shared.clone(), tls.clone());
                    tokio::spawn(async move {
                        let _active = shared.metrics.connection_opened();
                        let _ = stream.set_nodelay(true);
                        match tls {
                            None => serve_client(shared.clone(), stream, peer).await,
                            Some(acceptor) => {
                                let handshake = acceptor.accept(stream);
                                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                                    Ok(Ok(s)) => serve_client(shared.clone(), s, peer).await,
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, error = %e, "TLS handshake failed")
                                    }
                                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                }
                            }
                        }
                        drop(slot);
                    });
                }
                Err(_) => {
                    shared.metrics.connection_rejected();
                    // At most one line a second however many are refused.
                    let now = tokio::time::Instant::now();
                    if last_refusal_log.is_none_or(|t| now - t >= Duration::from_secs(1)) {
                        last_refusal_log = Some(now);
                        tracing::warn!(%peer, max_connections = shared.config.max_connections, "connection refused: too many connections");
                    }
                    drop(stream);
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Reads the client's CONNECT, authenticates it, and serves the connection
/// as a lookup connection or a relay.
async fn serve_client<S>(shared: Arc<Shared>, mut stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(1024);
    let first = tokio::time::timeout(
        shared.keep_alive(),
        read_frame(&mut stream, &mut buf, shared.config.max_client_frame_bytes),
    )
    .await;
    let command = match first {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "bad first frame");
            let msg = format!("invalid frame: {e}");
            refuse(
                &mut stream,
                commands::error(NO_REQUEST, ServerError::UnknownError, msg),
            )
            .await;
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
    };
    let connect = match (Type::try_from(command.r#type), command.connect) {
        (Ok(Type::Connect), Some(c)) => *c,
        (t, _) => {
            let msg = format!("the first command must be CONNECT, not {t:?}");
            refuse(
                &mut stream,
                commands::error(NO_REQUEST, ServerError::UnknownError, msg),
            )
            .await;
            return;
        }
    };
    let principal = match shared.security.authenticate(
        connect.auth_method_name.as_deref(),
        connect.auth_data.as_deref(),
    ) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(%peer, error = %e, "client authentication failed");
            let refusal =
                commands::error(NO_REQUEST, ServerError::AuthenticationError, e.to_string());
            refuse(&mut stream, refusal).await;
            return;
        }
    };
    let creds = Credentials {
        proxy_token: shared.proxy_token.clone(),
        original_principal: principal.as_ref().map(|p| p.role.clone()),
        original_auth_data: match (&principal, shared.config.forward_authorization_credentials) {
            (Some(_), true) => connect
                .auth_data
                .as_deref()
                .and_then(|d| std::str::from_utf8(d).ok())
                .map(str::to_owned),
            _ => None,
        },
    };
    let expiry = principal
        .as_ref()
        .and_then(|p| p.expires_at_secs)
        .map(|at| Duration::from_secs(at.saturating_sub(kilonova_auth::now_secs())));
    let role = creds.original_principal.as_deref();
    match connect.proxy_to_broker_url.clone() {
        Some(url) if !url.is_empty() => {
            tracing::debug!(%peer, role, broker = %url, "relay connection");
            let relay = crate::relay::serve(&shared, stream, buf, connect, creds, &url);
            until_expiry(relay, expiry, "relay").await;
        }
        _ => {
            tracing::debug!(%peer, role, "lookup connection");
            let lookups = crate::lookup::serve(shared, stream, buf, connect, creds);
            until_expiry(lookups, expiry, "lookup connection").await;
        }
    }
}

/// Serves `connection` until it ends or the client's token expires (then it
/// is closed: the proxy checks credentials at CONNECT only, so a connection
/// must not outlive them; clients reconnect with a fresh token).
async fn until_expiry(
    connection: impl std::future::Future<Output = ()>,
    expiry: Option<Duration>,
    what: &str,
) {
    match expiry {
        None => connection.await,
        Some(left) => {
            if tokio::time::timeout(left, connection).await.is_err() {
                tracing::info!("{what} closed: the client's token expired");
            }
        }
    }
}

/// Reads one frame's command; `Ok(None)` on a clean close before one.
pub(crate) async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_frame_bytes: usize,
) -> Result<Option<BaseCommand>, ProxyError> {
    loop {
        if let Some(f) = frame::decode(buf, max_frame_bytes)? {
            return Ok(Some(f.command));
        }
        if r.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Writes `command` (an error) and closes, bounded in time.
pub(crate) async fn refuse<W: AsyncWriteExt + Unpin>(w: &mut W, command: BaseCommand) {
    let mut out = BytesMut::new();
    frame::encode_command(&command, &mut out);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        w.write_all(&out).await?;
        w.shutdown().await
    })
    .await;
}
