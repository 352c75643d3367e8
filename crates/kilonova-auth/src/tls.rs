//! The TLS ports' server configuration (rustls with the ring provider):
//! a certificate chain and key from PEM files, and optionally a trusted CA
//! whose client certificates are verified (required with
//! `require_trusted_client_cert`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;

/// The `[tls]` settings. TLS ports listen only when `cert_file` is set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    pub trust_certs_file: Option<PathBuf>,
    /// Refuse clients without a certificate from `trust_certs_file`.
    pub require_trusted_client_cert: bool,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {error}")]
    File {
        what: &'static str,
        path: String,
        error: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(what: &'static str, path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        error: error.to_string(),
    }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The server configuration, offering `alpn` protocols (e.g. `http/1.1`).
pub fn server_config(c: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&c.cert_file, &c.key_file) else {
        return Err(TlsError::Config(
            "tls.cert_file and tls.key_file must both be set".into(),
        ));
    };
    let chain = certs("certificate file", cert_file)?;
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| file_error("key file", key_file, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &c.trust_certs_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certs("trusted CA file", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error("trusted CA file", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if c.require_trusted_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?,
            )
        }
        None if c.require_trusted_client_cert => {
            return Err(TlsError::Config(
                "require_trusted_client_cert needs tls.trust_certs_file".into(),
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
