//! The proxy's HTTP port: `/admin/*` and `/lookup/*` forwarded to a broker's
//! web service with the client's `Authorization` header (the broker decides
//! what the client may do), redirects (307/308: a cluster's broker sends a
//! topic's requests to its owner) followed here so the client sees only the
//! proxy; `/metrics` is the proxy's own.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::server::{Shared, TLS_HANDSHAKE_TIMEOUT};

/// The pause after a failed accept (out of file descriptors, …).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Request headers passed to the broker (hop-by-hop and host headers are not).
const FORWARDED_HEADERS: [header::HeaderName; 4] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
];
/// Response headers passed back to the client.
const RETURNED_HEADERS: [header::HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::WWW_AUTHENTICATE,
];

/// The HTTP and HTTPS ports' server: one connection cap for both
/// (`max_http_connections`; at the cap nothing more is accepted and new
/// connections wait in the listen backlog), a request head due within
/// `http_header_read_timeout_secs`, TLS handshakes in the connection's task.
#[derive(Clone)]
pub(crate) struct HttpServer {
    router: axum::Router,
    slots: Arc<Semaphore>,
    header_read_timeout: Duration,
}

impl HttpServer {
    pub fn new(shared: Arc<Shared>) -> Self {
        HttpServer {
            slots: Arc::new(Semaphore::new(shared.config.max_http_connections.max(1))),
            header_read_timeout: Duration::from_secs(
                shared.config.http_header_read_timeout_secs.max(1),
            ),
            router: axum::Router::new().fallback(handle).with_state(shared),
        }
    }

    /// Serves `listener` until `stop` changes; then lets the requests in
    /// progress finish.
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut connections = JoinSet::new();
        loop {
            let slot = tokio::select! {
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => break, // never closed
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                _ = stop.changed() => break,
            };
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::select! {
                            _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                            _ = stop.changed() => break,
                        }
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                _ = stop.changed() => break,
            };
            let (server, tls, stop) = (self.clone(), tls.clone(), stop.clone());
            connections.spawn(async move {
                let _slot = slot;
                let _ = tcp.set_nodelay(true);
                match tls {
                    None => server.serve_connection(tcp, stop).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => server.serve_connection(s, stop).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "HTTPS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                        }
                    }
                }
            });
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    }

    async fn serve_connection<S>(&self, io: S, mut stop: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = TowerToHyperService::new(self.router.clone());
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let conn = http.serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let end = tokio::select! {
            r = conn.as_mut() => r,
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = end {
            tracing::debug!(error = %e, "HTTP connection ended");
        }
    }
}

/// Pulsar's error body: `{"reason": "…"}`.
fn reason(status: StatusCode, why: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "reason": why.to_string() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path();
    if path == "/metrics" {
        return metrics(&shared, req.headers());
    }
    if path.starts_with("/admin/") || path.starts_with("/lookup/") {
        return forward(&shared, req).await;
    }
    reason(
        StatusCode::NOT_FOUND,
        "the proxy serves /admin/*, /lookup/* (forwarded to the brokers) and /metrics",
    )
}

fn metrics(shared: &Shared, headers: &HeaderMap) -> Response {
    if shared.security.authenticate_metrics() && shared.security.authentication_enabled() {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let checked = shared.security.authenticate(
            token.map(|_| kilonova_auth::TOKEN_METHOD),
            token.map(str::as_bytes),
        );
        if let Err(e) = checked {
            return reason(StatusCode::UNAUTHORIZED, e);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

async fn forward(shared: &Shared, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, shared.config.max_http_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return reason(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request bodies are limited to {} bytes (max_http_body_bytes)",
                    shared.config.max_http_body_bytes
                ),
            )
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    for name in FORWARDED_HEADERS {
        if let Some(v) = parts.headers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let mut last_error = String::from("no broker_web_service_urls configured");
    for base in &shared.config.broker_web_service_urls {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        match send_following_redirects(shared, &parts.method, url, &headers, &body).await {
            Ok(r) => return respond(r),
            Err(e) => {
                tracing::debug!(broker = %base, error = %e, "admin request not forwarded");
                last_error = e;
            }
        }
    }
    reason(
        StatusCode::BAD_GATEWAY,
        format!("no broker answered: {last_error}"),
    )
}

/// Sends the request, following the brokers' 307/308 redirects (at most
/// `max_lookup_redirects`) with the same method, headers and body.
async fn send_following_redirects(
    shared: &Shared,
    method: &Method,
    mut url: String,
    headers: &reqwest::header::HeaderMap,
    body: &Bytes,
) -> Result<reqwest::Response, String> {
    for _ in 0..=shared.config.max_lookup_redirects {
        let r = shared
            .http
            .request(method.clone(), &url)
            .headers(headers.clone())
            .body(body.clone())
            .timeout(std::time::Duration::from_secs(
                shared.config.broker_timeout_secs.max(1),
            ))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let redirect = matches!(
            r.status(),
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
        );
        let location = r
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok());
        match (redirect, location) {
            (true, Some(l)) => {
                url = r.url().join(l).map_err(|e| e.to_string())?.to_string();
            }
            _ => return Ok(r),
        }
    }
    Err(format!(
        "more than {} redirects",
        shared.config.max_lookup_redirects
    ))
}

/// The broker's answer, streamed back as it arrives.
fn respond(r: reqwest::Response) -> Response {
    let status = r.status();
    let mut headers = HeaderMap::new();
    for name in RETURNED_HEADERS {
        if let Some(v) = r.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let chunks = futures_util::stream::unfold(Some(r), |state| async move {
        let mut r = state?;
        match r.chunk().await {
            Ok(Some(c)) => Some((Ok::<Bytes, reqwest::Error>(c), Some(r))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    if !response.headers().contains_key(header::CONTENT_TYPE) {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    response
}
