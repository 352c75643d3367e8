//! What goes wrong in the proxy, one variant per thing a caller acts on;
//! mapped to the Pulsar protocol's `ServerError` in one place
//! ([`ProxyError::server_error`]).

use kilonova_pulsar_protocol::frame::DecodeError;
use kilonova_pulsar_protocol::proto::ServerError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid broker URL {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("{0} is not a broker of this cluster: the proxy relays only to its brokers")]
    NotABroker(String),
    #[error("cannot reach broker {addr}: {error}")]
    Unreachable { addr: String, error: std::io::Error },
    #[error("broker {0} did not answer in time")]
    Timeout(String),
    #[error("broker {addr} refused the proxy's connection: {message}")]
    BrokerRefused {
        addr: String,
        code: Option<ServerError>,
        message: String,
    },
    #[error("the connection to broker {0} closed")]
    LinkClosed(String),
    #[error("too many requests in flight to broker {0}")]
    TooManyRequests(String),
    #[error("too many redirects looking up {0}")]
    TooManyRedirects(String),
    #[error("no broker is configured (--broker-url)")]
    NoBroker,
    #[error("unexpected answer from broker {addr}: {what}")]
    Unexpected { addr: String, what: String },
    #[error("invalid frame: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ProxyError {
    /// The code a client is told.
    pub fn server_error(&self) -> ServerError {
        match self {
            ProxyError::NotABroker(_) | ProxyError::BadUrl { .. } => ServerError::NotAllowedError,
            ProxyError::BrokerRefused {
                code: Some(code), ..
            } => *code,
            ProxyError::TooManyRequests(_) => ServerError::TooManyRequests,
            ProxyError::Decode(_) | ProxyError::Unexpected { .. } => ServerError::UnknownError,
            ProxyError::Unreachable { .. }
            | ProxyError::Timeout(_)
            | ProxyError::BrokerRefused { code: None, .. }
            | ProxyError::LinkClosed(_)
            | ProxyError::TooManyRedirects(_)
            | ProxyError::NoBroker
            | ProxyError::Io(_) => ServerError::ServiceNotReady,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_a_stable_server_error() {
        let io = || std::io::Error::other("x");
        let cases = [
            (
                ProxyError::NotABroker("a".into()),
                ServerError::NotAllowedError,
            ),
            (
                ProxyError::BadUrl {
                    url: "x".into(),
                    why: "y",
                },
                ServerError::NotAllowedError,
            ),
            (
                ProxyError::BrokerRefused {
                    addr: "a".into(),
                    code: Some(ServerError::AuthorizationError),
                    message: "m".into(),
                },
                ServerError::AuthorizationError,
            ),
            (
                ProxyError::TooManyRequests("a".into()),
                ServerError::TooManyRequests,
            ),
            (
                ProxyError::Unreachable {
                    addr: "a".into(),
                    error: io(),
                },
                ServerError::ServiceNotReady,
            ),
            (
                ProxyError::Timeout("a".into()),
                ServerError::ServiceNotReady,
            ),
            (ProxyError::NoBroker, ServerError::ServiceNotReady),
        ];
        for (e, code) in cases {
            assert_eq!(e.server_error(), code, "{e}");
        }
    }
}
