//! The `[auth]` settings (Pulsar's `authenticationEnabled`,
//! `authorizationEnabled`, `superUserRoles`, `tokenSecretKey`, …). Every
//! option is documented in docs/configuration.md with its default.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::secret::Secret;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Clients must present a token: CONNECT with method `token`, HTTP
    /// `Authorization: Bearer …`.
    pub authentication_enabled: bool,
    /// Roles need permissions (super-user, tenant admin, or a grant) for what
    /// they do. Needs authentication.
    pub authorization_enabled: bool,
    /// Roles allowed everything.
    pub super_user_roles: BTreeSet<String>,
    /// HS256 key: `file:PATH`, `data:;base64,…`, a path, or base64.
    pub token_secret_key: Option<Secret<String>>,
    /// RS256 / ES256 public key (DER or PEM): `file:PATH` or `data:;base64,…`.
    pub token_public_key: Option<Secret<String>>,
    /// More secret keys tokens may be signed with (a key rotation: the old
    /// and the new key both verify).
    pub token_secret_keys: Vec<Secret<String>>,
    /// More public keys tokens may be signed with.
    pub token_public_keys: Vec<Secret<String>>,
    /// A JWK Set file (RFC 7517) of more keys, picked by a token's `kid`.
    pub token_jwks_file: Option<std::path::PathBuf>,
    /// The claim naming the role (Pulsar's `tokenAuthClaim`).
    pub token_auth_claim: String,
    /// Role of clients that present no credentials; unset: they are refused.
    pub anonymous_user_role: Option<String>,
    /// How often connections' credentials are checked for expiry; an expired
    /// one is challenged (AUTH_CHALLENGE) and closed at the next check if it
    /// did not answer with a valid token (Pulsar's
    /// `authenticationRefreshCheckSeconds`).
    pub auth_refresh_check_secs: u64,
    /// The token the broker's own clients present (replication).
    pub broker_client_auth_token: Option<Secret<String>>,
    /// Require a token on `GET /metrics` too (Pulsar's
    /// `authenticateMetricsEndpoint`).
    pub authenticate_metrics_endpoint: bool,
    /// Roles of `kilonova proxy` (Pulsar's `proxyRoles`): a connection
    /// authenticated as one of them acts for the `original_principal` its
    /// CONNECT names, and both roles must be allowed what it does
    /// ([`crate::proxy_roles`]).
    pub proxy_roles: BTreeSet<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            authentication_enabled: false,
            authorization_enabled: false,
            super_user_roles: BTreeSet::new(),
            token_secret_key: None,
            token_public_key: None,
            token_secret_keys: Vec::new(),
            token_public_keys: Vec::new(),
            token_jwks_file: None,
            token_auth_claim: "sub".into(),
            anonymous_user_role: None,
            auth_refresh_check_secs: 60,
            broker_client_auth_token: None,
            authenticate_metrics_endpoint: false,
            proxy_roles: BTreeSet::new(),
        }
    }
}
