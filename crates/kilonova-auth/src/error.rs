//! Errors of authentication and key loading. Their messages name what is wrong,
//! never the token or key itself.

/// Why a client's credentials were refused (Pulsar's `AuthenticationError`,
/// HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: this broker accepts the \"token\" method")]
    Missing,
    #[error("unsupported authentication method {0:?}: this broker accepts \"token\"")]
    UnsupportedMethod(String),
    #[error("malformed token")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's algorithm {0} is not accepted by this broker's key")]
    WrongAlgorithm(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has no {0:?} claim naming a role")]
    NoRole(String),
    #[error("the refreshed token is for another role")]
    RoleChanged,
}

/// Why a key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
    /// A bare key value that looks like a path but names no file (shown only
    /// when it cannot be a base64 key).
    #[error("no key file {0}: {forms}", forms = crate::keys::KEY_FORMS)]
    NoFile(String),
    #[error("invalid key: {0}")]
    Invalid(String),
    #[error("configuration: {0}")]
    Config(String),
}
