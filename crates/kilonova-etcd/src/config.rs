//! Where the etcd backend finds etcd, and how long it waits for it.

use std::path::PathBuf;

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
    /// PEM file of the CA that signed the members' server certificates;
    /// required by `https://` endpoints.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate this client presents (etcd's `--client-cert-auth`),
    /// with its key in `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            root: "/kilonova".into(),
            request_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            ca_file: None,
            cert_file: None,
            key_file: None,
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

    /// Whether any endpoint speaks TLS.
    pub fn tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Why these settings cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("no etcd endpoints".into());
        }
        if let Some(bad) = self
            .endpoints
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err(format!(
                "etcd endpoint {bad:?} is not an http:// or https:// URL"
            ));
        }
        if self.tls() && self.ca_file.is_none() {
            return Err(
                "https:// etcd endpoints need ca_file (the CA of etcd's certificates)".into(),
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("etcd cert_file and key_file go together".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused() {
        assert!(EtcdConfig::default().check().is_ok());
        let bad = |c: EtcdConfig| c.check().expect_err("refused");
        assert!(bad(EtcdConfig {
            endpoints: vec![],
            ..EtcdConfig::default()
        })
        .contains("no etcd endpoints"));
        assert!(bad(EtcdConfig::new("etcd:2379")).contains("not an http"));
        assert!(bad(EtcdConfig::new("https://etcd:2379")).contains("ca_file"));
        assert!(bad(EtcdConfig {
            cert_file: Some("c.pem".into()),
            ..EtcdConfig::default()
        })
        .contains("go together"));
        assert!(bad(EtcdConfig {
            root: "/a\0b".into(),
            ..EtcdConfig::default()
        })
        .contains("NUL"));
        let tls = EtcdConfig {
            ca_file: Some("ca.pem".into()),
            ..EtcdConfig::new("https://etcd:2379")
        };
        assert!(tls.check().is_ok() && tls.tls());
    }

    #[test]
    fn settings_read_from_toml_keep_defaults_for_what_is_left_out() {
        let c: EtcdConfig = toml::from_str(
            "endpoints = [\"http://a:2379\", \"http://b:2379\"]\nroot = \"/kn/c1\"\n",
        )
        .unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.root, "/kn/c1");
        assert_eq!(
            c.request_timeout_ms,
            EtcdConfig::default().request_timeout_ms
        );
    }
}
