//! Service URLs (`pulsar://` and `pulsar+ssl://`) and the TLS client
//! configuration of `pulsar+ssl://` connections.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::ClientError;

/// Pulsar's default ports for plain and TLS service URLs.
const DEFAULT_PORT: u16 = 6650;
const DEFAULT_TLS_PORT: u16 = 6651;

/// A parsed service URL: `pulsar://host[:port]` or `pulsar+ssl://host[:port]`.
/// A URL listing several hosts (`pulsar://a:6650,b:6650`) is served by the
/// first: this client talks to one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl ServiceUrl {
    pub fn parse(url: &str) -> Result<ServiceUrl, ClientError> {
        let bad = || ClientError::BadUrl(url.to_owned());
        let (tls, rest) = if let Some(rest) = url.strip_prefix("pulsar+ssl://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("pulsar://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let first = rest.trim_end_matches('/').split(',').next().unwrap_or("");
        let default_port = if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT };
        // `[::1]:6650`, `host:6650`, `host`.
        let (host, port) = if let Some(v6) = first.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (host, port)
        } else {
            match first.rsplit_once(':') {
                Some((host, p)) => (host, p.parse().map_err(|_| bad())?),
                None => (first, default_port),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        Ok(ServiceUrl {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A TLS connector trusting only the CA certificates (PEM) in `trust_certs`.
pub(crate) fn connector(trust_certs: Option<&Path>) -> Result<TlsConnector, ClientError> {
    let Some(path) = trust_certs else {
        return Err(ClientError::Tls(
            "a pulsar+ssl:// URL needs the CA certificates that signed the broker's certificate (--tls-trust-cert-path)".into(),
        ));
    };
    let bad = |e: &dyn std::fmt::Display| ClientError::Tls(format!("{}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name the broker's certificate must hold: the URL's host (an IP
/// address or a DNS name).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::Tls(format!("'{host}' is not a valid TLS server name: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_parse_with_and_without_ports() {
        let u = ServiceUrl::parse("pulsar://127.0.0.1:6650").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 6650, false));
        let u = ServiceUrl::parse("pulsar+ssl://broker.example/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls),
            ("broker.example", 6651, true)
        );
        let u = ServiceUrl::parse("pulsar://[::1]:7000,other:6650").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 7000));
        assert_eq!(u.address(), "[::1]:7000");
    }

    #[test]
    fn bad_service_urls_are_refused() {
        for url in [
            "http://h:1",
            "pulsar://",
            "pulsar://h:notaport",
            "pulsar://h:99999",
            "pulsar://[::1",
            "h:6650",
        ] {
            assert!(
                matches!(ServiceUrl::parse(url), Err(ClientError::BadUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn a_tls_url_needs_a_readable_trust_file() {
        assert!(matches!(connector(None), Err(ClientError::Tls(_))));
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(matches!(connector(Some(missing)), Err(ClientError::Tls(_))));
    }
}
