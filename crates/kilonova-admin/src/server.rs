//! The admin ports' HTTP/1.1 server (plain and TLS): the router served with
//! bounds that hold whatever clients do.
//!
//! * Connections are capped (`max_http_connections`, shared by the HTTP and
//!   HTTPS ports, within 1/8 of the open-file limit): at the cap the server
//!   stops accepting, and new connections wait in the listen backlog.
//! * A connection that has not sent a whole request head within
//!   `http_header_read_timeout_secs` — of opening, or of its previous answer
//!   (an idle keep-alive) — is closed. A TLS handshake has 10 s, in the
//!   connection's own task, holding its slot.
//! * Accept errors (out of file descriptors) pause accepting with a back-off
//!   and are logged at most once a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use kilonova_broker::accept::{within_open_files, AcceptBackoff};
use kilonova_broker::BrokerConfig;

/// Marks a request that arrived over TLS (a redirect keeps to https).
#[derive(Clone, Copy, Debug)]
pub struct OverTls;

/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin router on any number of listeners, with one connection
/// cap for them all. Cheap to clone.
#[derive(Clone)]
pub struct AdminServer {
    router: axum::Router,
    /// The same router, its requests marked as arrived over TLS ([`OverTls`]).
    tls_router: axum::Router,
    slots: Arc<Semaphore>,
    header_read_timeout: Duration,
}

impl AdminServer {
    /// `router` served with the limits of `config` (`max_http_connections`,
    /// `http_header_read_timeout_secs`).
    pub fn new(router: axum::Router, config: &BrokerConfig) -> Self {
        let max = within_open_files(config.max_http_connections.max(1), (1, 8));
        if max < config.max_http_connections {
            tracing::warn!(
                max_http_connections = config.max_http_connections,
                using = max,
                "max_http_connections lowered to 1/8 of the open-file limit"
            );
        }
        AdminServer {
            tls_router: router.clone().layer(axum::Extension(OverTls)),
            router,
            slots: Arc::new(Semaphore::new(max)),
            header_read_timeout: Duration::from_secs(config.http_header_read_timeout_secs.max(1)),
        }
    }

    /// Serves `listener` (TLS first with `tls`) until `stop` changes, then
    /// lets the requests in progress finish and returns once every
    /// connection is closed. `what` names the port in logs ("HTTP").
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
        what: &'static str,
        mut stop: watch::Receiver<bool>,
    ) {
        let tls = tls.map(TlsAcceptor::from);
        let mut connections = JoinSet::new();
        let mut backoff = AcceptBackoff::new(what);
        loop {
            // A slot first: at the cap, nothing more is accepted.
            let slot = tokio::select! {
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => break, // the semaphore is never closed
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                _ = stop.changed() => break,
            };
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        let wait = backoff.failed(&e, Instant::now());
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => continue,
                            _ = stop.changed() => break,
                        }
                    }
                },
                // Finished connections are reaped (their tasks' memory freed).
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                _ = stop.changed() => break,
            };
            backoff.succeeded();
            let (server, tls, stop) = (self.clone(), tls.clone(), stop.clone());
            connections.spawn(async move {
                let _slot = slot;
                let _ = tcp.set_nodelay(true);
                match tls {
                    None => server.serve_connection(tcp, false, stop).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => server.serve_connection(stream, true, stop).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "{what} handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "{what} handshake timed out"),
                        }
                    }
                }
            });
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    }

    /// Serves HTTP/1.1 requests on one connection until it closes, or until
    /// `stop` changes and its request in progress (if any) is answered.
    async fn serve_connection<S>(&self, io: S, tls: bool, mut stop: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = match tls {
            true => self.tls_router.clone(),
            false => self.router.clone(),
        };
        let service = TowerToHyperService::new(router);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let conn = http.serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => log_end(r),
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                log_end(conn.await);
            }
        }
    }
}

fn log_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        // Timeouts, resets and malformed requests: the client's doing.
        tracing::debug!(error = %e, "admin connection ended");
    }
}
