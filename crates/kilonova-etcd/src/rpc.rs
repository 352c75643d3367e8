//! etcd's v3 gRPC API: the generated messages and clients (from
//! proto/etcd.proto), and [`Rpc`], which sends calls to the first endpoint
//! that answers.
//!
//! Each endpoint is one HTTP/2 connection (made on first use, remade after
//! it breaks) that carries every call, watch and keep-alive. A call that
//! could not connect moves on to the next endpoint: it never reached etcd, so
//! trying it elsewhere is safe.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::config::EtcdConfig;

/// The generated messages and clients.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub(crate) mod pb {
    tonic::include_proto!("etcdserverpb");
}

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RpcError {
    /// The settings cannot work (a bad URL, an unreadable certificate).
    #[error("{0}")]
    Config(String),
    /// No endpoint could be reached, or none answered in time.
    #[error("{0}")]
    Unreachable(String),
    /// etcd answered with an error status.
    #[error("etcd error ({code:?}): {message}")]
    Status { code: Code, message: String },
}

impl From<Status> for RpcError {
    fn from(s: Status) -> Self {
        // A status with a source is this side's transport failing (a
        // connection refused, reset or closed), not an answer from etcd.
        let local = std::error::Error::source(&s).is_some();
        match s.code() {
            // A connection lost mid-call, or etcd without a leader.
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                RpcError::Unreachable(format!("etcd: {}", reason(&s)))
            }
            _ if local => RpcError::Unreachable(format!("etcd: {}", reason(&s))),
            code => RpcError::Status {
                code,
                message: s.message().to_owned(),
            },
        }
    }
}

/// A status's message with its causes.
fn reason(s: &Status) -> String {
    let mut text = s.message().to_owned();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}

/// Whether a failed call never left this process: the endpoint's name did
/// not resolve or its connection could not be made (hyper's words for these;
/// a connection reset or closed mid-call is not this).
fn never_sent(s: &Status) -> bool {
    let why = reason(s);
    s.code() == Code::Unavailable
        && (why.contains("tcp connect error") || why.contains("dns error"))
}

/// The TLS settings of https endpoints: the CA of the members' certificates
/// and, if etcd asks for one, this client's certificate.
fn tls_config(config: &EtcdConfig) -> Result<Option<ClientTlsConfig>, RpcError> {
    if !config.tls() {
        return Ok(None);
    }
    // rustls needs a crypto provider chosen: ring, as everywhere in
    // Kilonova. Installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| RpcError::Config(format!("{}: {e}", path.display())))
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &config.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// Clients of one etcd cluster.
pub(crate) struct Rpc {
    endpoints: Vec<(String, Channel)>,
    /// The endpoint that answered last.
    current: AtomicUsize,
    request_timeout: Duration,
    /// The highest revision any answer carried: a watch opened now starts
    /// after it, so it sees no change that a call returned before it.
    seen: AtomicU64,
}

impl Rpc {
    pub(crate) fn new(config: &EtcdConfig) -> Result<Self, RpcError> {
        let tls = tls_config(config)?;
        let mut endpoints = Vec::new();
        for url in &config.endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| RpcError::Config(format!("etcd endpoint {url:?}: {e}")))?;
            if let (true, Some(tls)) = (url.starts_with("https://"), &tls) {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| RpcError::Config(format!("etcd endpoint {url:?}: {e}")))?;
            }
            let channel = endpoint
                .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
                .tcp_nodelay(true)
                // Finds a dead connection (a member gone without a FIN) while idle.
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .connect_lazy();
            endpoints.push((url.clone(), channel));
        }
        Ok(Rpc {
            endpoints,
            current: AtomicUsize::new(0),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            seen: AtomicU64::new(0),
        })
    }

    pub(crate) fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    pub(crate) fn saw(&self, header: Option<&pb::ResponseHeader>) {
        if let Some(r) = header.and_then(|h| u64::try_from(h.revision).ok()) {
            self.seen.fetch_max(r, Ordering::AcqRel);
        }
    }

    /// Runs `call` on the endpoints in turn, from the one that answered
    /// last, until one is reached; each attempt has the request timeout (for
    /// a stream: until its first answer's headers).
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, RpcError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let Some((url, channel)) = self.endpoints.get(idx) else {
                break;
            };
            match tokio::time::timeout(self.request_timeout, call(channel.clone())).await {
                Ok(Ok(r)) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Ok(Err(s)) if never_sent(&s) => failures.push(format!("{url}: {}", reason(&s))),
                Ok(Err(s)) => return Err(s.into()),
                Err(_) => {
                    return Err(RpcError::Unreachable(format!(
                        "{url} did not answer {what} within {:?} (a write may or may not have happened)",
                        self.request_timeout
                    )))
                }
            }
        }
        Err(RpcError::Unreachable(format!(
            "no etcd endpoint reachable for {what} ({})",
            failures.join("; ")
        )))
    }

    /// The per-call timeout.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_unreachable_and_answers_are_statuses() {
        let reset = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(matches!(RpcError::from(reset), RpcError::Unreachable(_)));
        let no_leader = Status::unavailable("etcdserver: no leader");
        assert!(matches!(
            RpcError::from(no_leader),
            RpcError::Unreachable(_)
        ));
        let answer = Status::not_found("etcdserver: requested lease not found");
        assert!(matches!(
            RpcError::from(answer),
            RpcError::Status {
                code: Code::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn only_a_refused_connection_counts_as_never_sent() {
        assert!(never_sent(&Status::unavailable(
            "tcp connect error: Connection refused (os error 111)"
        )));
        assert!(never_sent(&Status::unavailable(
            "dns error: failed to lookup address information"
        )));
        assert!(!never_sent(&Status::unavailable(
            "transport error: connection reset"
        )));
        assert!(!never_sent(&Status::unavailable("etcdserver: no leader")));
    }
}
