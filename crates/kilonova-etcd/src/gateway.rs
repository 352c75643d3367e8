//! etcd's v3 JSON gateway: the gRPC API as HTTP POSTs of JSON (`/v3/kv/range`,
//! `/v3/kv/txn`, `/v3/watch`, `/v3/lease/*`), keys and values base64, 64-bit
//! integers as strings, fields at their zero value left out.
//!
//! Calls go to the first endpoint that answers; a connection refused or
//! timed out moves on to the next one (such a request never reached etcd,
//! so trying it again elsewhere is safe).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::config::EtcdConfig;

/// What a gateway call can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// No endpoint could be reached, or none answered in time.
    #[error("{0}")]
    Unreachable(String),
    /// etcd answered with an error (a gRPC status code and its message).
    #[error("etcd error {code}: {message}")]
    Status { code: i32, message: String },
    /// An answer we cannot read.
    #[error("unreadable etcd answer: {0}")]
    Decode(String),
}

/// gRPC status codes etcd uses for what a caller acts on.
pub(crate) const NOT_FOUND: i32 = 5;
pub(crate) const UNAVAILABLE: i32 = 14;
pub(crate) const DEADLINE_EXCEEDED: i32 = 4;

/// The body of an error answer.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: i32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    error: String,
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    let s = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(Bytes::from)
        .map_err(serde::de::Error::custom)
}

/// A 64-bit integer, which the gateway writes as a string.
fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        S(String),
        N(i64),
    }
    match Num::deserialize(d)? {
        Num::N(n) => Ok(n),
        Num::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Header {
    #[serde(default, deserialize_with = "de_i64")]
    pub revision: i64,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct KeyValue {
    #[serde(default, deserialize_with = "de_b64")]
    pub key: Bytes,
    #[serde(default, deserialize_with = "de_i64")]
    pub mod_revision: i64,
    #[serde(default, deserialize_with = "de_b64")]
    pub value: Bytes,
    #[serde(default, deserialize_with = "de_i64")]
    pub lease: i64,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    #[serde(default)]
    pub more: bool,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeleteRangeResponse {
    #[serde(default, deserialize_with = "de_i64")]
    pub deleted: i64,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ResponseOp {
    #[serde(default)]
    pub response_range: Option<RangeResponse>,
    #[serde(default)]
    pub response_delete_range: Option<DeleteRangeResponse>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct TxnResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LeaseResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    pub id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
    pub ttl: i64,
}

/// One message of a streamed answer (watch, keep-alive).
#[derive(Debug, Deserialize)]
pub(crate) struct Streamed<T> {
    pub result: Option<T>,
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Event {
    /// `PUT` is the default, left out; `DELETE` is written.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub kv: KeyValue,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WatchResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, deserialize_with = "de_i64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// reqwest is built without a bundled TLS provider and needs one even for
/// plain HTTP: ring, as everywhere in Kilonova. Installing it twice is harmless.
pub(crate) fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client of one etcd cluster's gateway.
pub(crate) struct Gateway {
    http: reqwest::Client,
    endpoints: Vec<String>,
    /// The endpoint that answered last.
    current: AtomicUsize,
    request_timeout: Duration,
    /// The highest revision any answer carried: a watch opened now starts
    /// after it, so it sees no change that a call returned before it.
    seen: AtomicU64,
}

impl Gateway {
    pub(crate) fn new(config: &EtcdConfig) -> Result<Self, GatewayError> {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| GatewayError::Unreachable(format!("HTTP client: {e}")))?;
        Ok(Gateway {
            http,
            endpoints: config
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            current: AtomicUsize::new(0),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            seen: AtomicU64::new(0),
        })
    }

    pub(crate) fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    pub(crate) fn saw(&self, header: &Header) {
        if let Ok(r) = u64::try_from(header.revision) {
            self.seen.fetch_max(r, Ordering::AcqRel);
        }
    }

    /// POSTs `body` to `path` at the endpoints in turn, from the current one;
    /// `timeout` bounds each attempt (`None`: a stream, bounded by its reader).
    async fn send(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, GatewayError> {
        let body = serde_json::to_vec(body).map_err(|e| GatewayError::Decode(e.to_string()))?;
        let n = self.endpoints.len().max(1);
        let first = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let Some(endpoint) = self.endpoints.get(idx) else {
                break;
            };
            let mut req = self
                .http
                .post(format!("{endpoint}{path}"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            match req.send().await {
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                // Never sent: the next endpoint may take it.
                Err(e) if e.is_connect() => failures.push(format!("{endpoint}: {}", cause(&e))),
                Err(e) if e.is_timeout() => {
                    return Err(GatewayError::Unreachable(format!(
                        "{endpoint} did not answer {path} within {:?} (a write may or may not have happened)",
                        timeout.unwrap_or_default()
                    )))
                }
                Err(e) => {
                    return Err(GatewayError::Unreachable(format!(
                        "{endpoint}{path}: {}",
                        cause(&e)
                    )))
                }
            }
        }
        Err(GatewayError::Unreachable(format!(
            "no etcd endpoint reachable ({})",
            failures.join("; ")
        )))
    }

    /// A unary call: POSTs the request and reads the whole answer.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, GatewayError> {
        let resp = self.send(path, body, Some(self.request_timeout)).await?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            GatewayError::Unreachable(format!("reading the answer to {path}: {}", cause(&e)))
        })?;
        if !status.is_success() {
            return Err(status_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| GatewayError::Decode(format!("{path}: {e}")))
    }

    /// A streaming call (watch, keep-alive): the answer's messages are read
    /// with [`Lines`].
    pub(crate) async fn stream(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Option<Duration>,
    ) -> Result<Lines, GatewayError> {
        let resp = self.send(path, body, timeout).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(status_error(status, &bytes));
        }
        Ok(Lines {
            resp,
            buf: Vec::new(),
        })
    }

    /// The per-call timeout.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
}

/// The most specific reason of a reqwest error (its source chain).
fn cause(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

fn status_error(status: reqwest::StatusCode, body: &[u8]) -> GatewayError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => GatewayError::Status {
            code: b.code,
            message: if b.message.is_empty() {
                b.error
            } else {
                b.message
            },
        },
        Err(_) => GatewayError::Status {
            code: if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                UNAVAILABLE
            } else {
                0
            },
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
        },
    }
}

/// Bytes a streamed message may take before the stream is refused (etcd's own
/// request limit is 1.5 MiB; a watch answer carries at most a few of them).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The newline-separated JSON messages of a streamed answer.
pub(crate) struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Lines {
    /// The next message; `Ok(None)` when the stream ended.
    pub(crate) async fn next<T: DeserializeOwned>(
        &mut self,
    ) -> Result<Option<Streamed<T>>, GatewayError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| GatewayError::Decode(e.to_string()));
            }
            if self.buf.len() > MAX_MESSAGE_BYTES {
                return Err(GatewayError::Decode(format!(
                    "a streamed message over {MAX_MESSAGE_BYTES} bytes"
                )));
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) if self.buf.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                Ok(None) => {
                    let line = std::mem::take(&mut self.buf);
                    return serde_json::from_slice(&line)
                        .map(Some)
                        .map_err(|e| GatewayError::Decode(e.to_string()));
                }
                Err(e) => {
                    return Err(GatewayError::Unreachable(format!(
                        "the stream broke: {}",
                        cause(&e)
                    )))
                }
            }
        }
    }
}
