use kilonova_pulsar_protocol::proto::ServerError;

/// Why a client operation failed. Cloneable: one connection failure is reported
/// to every request, send and consumer waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("invalid service URL '{0}': expected pulsar://host:port or pulsar+ssl://host:port")]
    BadUrl(String),
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("the connection is closed")]
    Closed,
    #[error("the broker answered {code:?}: {message}")]
    Broker { code: ServerError, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    pub(crate) fn broker(code: i32, message: impl Into<String>) -> ClientError {
        ClientError::Broker {
            code: ServerError::try_from(code).unwrap_or(ServerError::UnknownError),
            message: message.into(),
        }
    }
}
