//! The controller's HTTP API as its callers see it: the JSON bodies, and a
//! small client (the proxies' and the CLI's).

use serde::{Deserialize, Serialize};

use crate::map::{FederationMap, KeyPolicy};

/// A proxy as it introduces itself on each watch call (its heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyHello {
    /// Unique among the federation's proxies.
    pub id: String,
    /// Its proxy group (the name service maps clients to groups).
    pub group: String,
    /// The node id Metadata gives it (unique among the proxies).
    pub node_id: i32,
    /// Where producers reach it (`host:port`).
    pub producer_addr: String,
    /// Where consumers reach it (`host:port`).
    pub consumer_addr: String,
    /// The map version it serves.
    pub map_version: u64,
    /// The proxy list version it holds.
    pub proxies_version: u64,
}

/// A live proxy, as the controller lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyInfo {
    pub id: String,
    pub group: String,
    pub node_id: i32,
    pub producer_addr: String,
    pub consumer_addr: String,
    pub map_version: u64,
    /// Milliseconds since it last called.
    pub last_seen_ms: u64,
}

/// The answer to a watch call: the newest map and the live proxies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchAnswer {
    pub map: FederationMap,
    pub proxies: Vec<ProxyInfo>,
    pub proxies_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddCluster {
    pub name: String,
    pub bootstrap: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateTopic {
    pub name: String,
    pub partitions_per_cluster: u32,
    #[serde(default)]
    pub key_policy: KeyPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetName {
    pub group: String,
}

/// Where a client should go: its proxy group and that group's proxies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameAnswer {
    pub client: String,
    pub group: String,
    pub producer_addrs: Vec<String>,
    pub consumer_addrs: Vec<String>,
}

/// One committed offset of a group, per logical partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetEntry {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default)]
    pub metadata: Option<String>,
}

/// The answer to a change: the map version it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changed {
    pub version: u64,
}

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A client of one or more controller instances: each call goes to the
/// first that answers (a follower redirects writes to the leader).
#[derive(Clone)]
pub struct ControllerClient {
    urls: Vec<String>,
    http: reqwest::Client,
}

/// Why a controller call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no controller answered ({0})")]
    Unreachable(String),
    #[error("the controller refused: {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the controller's answer is not what was expected: {0}")]
    Body(String),
}

impl ControllerClient {
    pub fn new(urls: Vec<String>) -> ControllerClient {
        let urls = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        ControllerClient {
            urls,
            http: reqwest::Client::new(),
        }
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: std::time::Duration,
    ) -> Result<T, ClientError> {
        let mut last = String::from("no controller URL");
        for url in &self.urls {
            let mut req = self
                .http
                .request(method.clone(), format!("{url}{path}"))
                .timeout(timeout);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ClientError::Body(e.to_string()))?;
            if status.is_server_error() && status.as_u16() == 503 {
                last = format!("{url}: {}", String::from_utf8_lossy(&bytes));
                continue;
            }
            if !status.is_success() {
                let message = serde_json::from_slice::<ErrorBody>(&bytes)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                return Err(ClientError::Refused {
                    status: status.as_u16(),
                    message,
                });
            }
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Body(e.to_string()));
        }
        Err(ClientError::Unreachable(last))
    }

    const CALL: std::time::Duration = std::time::Duration::from_secs(30);

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(reqwest::Method::GET, path, None, Self::CALL)
            .await
    }

    pub async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, ClientError> {
        self.send(reqwest::Method::POST, path, Some(body), Self::CALL)
            .await
    }

    pub async fn put<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, ClientError> {
        self.send(reqwest::Method::PUT, path, Some(body), Self::CALL)
            .await
    }

    pub async fn delete<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClientError> {
        self.send(reqwest::Method::DELETE, path, None, Self::CALL)
            .await
    }

    /// A proxy's watch call: returns once the map or the proxy list is
    /// newer than `hello`'s, or after the controller's heartbeat interval.
    pub async fn watch(&self, hello: &ProxyHello) -> Result<WatchAnswer, ClientError> {
        let body = serde_json::to_value(hello).map_err(|e| ClientError::Body(e.to_string()))?;
        self.send(
            reqwest::Method::POST,
            "/federation/v1/watch",
            Some(body),
            WATCH_HOLD + std::time::Duration::from_secs(10),
        )
        .await
    }
}

/// How long the controller holds a watch call with nothing new.
pub const WATCH_HOLD: std::time::Duration = std::time::Duration::from_secs(5);
