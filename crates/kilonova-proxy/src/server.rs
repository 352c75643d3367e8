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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::allow_list::{AllowList, BrokerAddress};
use crate::commands::{self, Credentials, NO_REQUEST};
use crate::config::{read_token, ProxyConfig};
use crate::error::ProxyError;
use crate::link::LinkPool;
use crate::metrics::Metrics;

/// How long a refused client's error may take to write before it is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
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

/// The ports a started proxy listens on (the system's choice for port 0).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ProxyPorts {
    pub pulsar: u16,
    pub http: u16,
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
    #[error("broker_client_auth_token: {0}")]
    Token(std::io::Error),
    #[error(transparent)]
    BrokerUrl(#[from] ProxyError),
    #[error("no broker_service_urls (--broker-url pulsar://host:port): the proxy needs a broker to send lookups to")]
    NoBrokers,
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error("the HTTP client: {0}")]
    Http(reqwest::Error),
}

impl Proxy {
    /// Checks the configuration, binds both ports and starts serving.
    pub async fn start(config: ProxyConfig) -> Result<Proxy, StartError> {
        let security = Security::from_config(&config.auth)?;
        let proxy_token = match &config.auth.broker_client_auth_token {
            Some(t) => Some(read_token(t.expose()).map_err(StartError::Token)?),
            None => None,
        };
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
        let bind = |port: u16| {
            let addr = format!("{}:{port}", config.bind_address);
            async move {
                TcpListener::bind(&addr)
                    .await
                    .map_err(|error| StartError::Bind { addr, error })
            }
        };
        let pulsar = bind(config.pulsar_port).await?;
        let http_listener = bind(config.http_port).await?;
        let ports = ProxyPorts {
            pulsar: local_port(&pulsar),
            http: local_port(&http_listener),
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
        let tasks = vec![
            tokio::spawn(accept_loop(pulsar, shared.clone(), stopped.clone())),
            tokio::spawn(crate::http::serve(http_listener, shared.clone(), stopped)),
        ];
        tracing::info!(
            pulsar_port = ports.pulsar,
            http_port = ports.http,
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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    let mut last_refusal_log: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _active = shared.metrics.connection_opened();
                        serve_client(shared.clone(), stream, peer).await;
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
async fn serve_client(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
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
    let role = creds.original_principal.as_deref();
    match connect.proxy_to_broker_url.clone() {
        Some(url) if !url.is_empty() => {
            tracing::debug!(%peer, role, broker = %url, "relay connection");
            crate::relay::serve(&shared, stream, buf, connect, creds, &url).await;
        }
        _ => {
            tracing::debug!(%peer, role, "lookup connection");
            crate::lookup::serve(shared, stream, buf, connect, creds).await;
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
