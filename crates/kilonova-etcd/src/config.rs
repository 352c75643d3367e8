//! Where the etcd backend finds etcd, and how long it waits for it.

use serde::Deserialize;

/// Settings of the etcd backend (the `[metadata]` table of a cluster
/// broker's config, once cluster mode reads it).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd cluster's members (`http://host:2379`); calls
    /// go to the one that answered last, and on to the next when it cannot
    /// be reached.
    pub endpoints: Vec<String>,
    /// Every key is stored under this root, so that several Kilonova clusters
    /// (or other users) can share one etcd.
    pub root: String,
    /// How long one call may take before it fails as unavailable.
    pub request_timeout_ms: u64,
    /// How long connecting to an endpoint may take before the next is tried.
    pub connect_timeout_ms: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            root: "/kilonova".into(),
            request_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
        }
    }
}

impl EtcdConfig {
    /// Settings for one endpoint, other values at their defaults.
    pub fn new(endpoint: impl Into<String>) -> Self {
        EtcdConfig {
            endpoints: vec![endpoint.into()],
            ..EtcdConfig::default()
        }
    }

    /// Why these settings cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("no etcd endpoints".into());
        }
        // TLS to etcd (client certificates, https endpoints) comes with cluster mode.
        if let Some(bad) = self.endpoints.iter().find(|e| !e.starts_with("http://")) {
            return Err(format!(
                "etcd endpoint {bad:?} is not an http:// URL (TLS to etcd is not supported yet)"
            ));
        }
        // The key layout separates components with 0x00 and escapes with 0x01.
        if self.root.bytes().any(|b| b <= 0x01) {
            return Err(format!(
                "etcd root {:?} holds a NUL or 0x01 byte",
                self.root
            ));
        }
        if self.request_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err("etcd timeouts must be above 0".into());
        }
        Ok(())
    }
}
