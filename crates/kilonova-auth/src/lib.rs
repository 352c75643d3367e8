//! Kilonova's security layer, shared by every edge (Pulsar protocol, admin
//! HTTP, later Kafka):
//! - **authentication**: JWT tokens as Pulsar's token provider issues and
//!   checks them ([`TokenAuthenticator`]), with keys loaded from `file:` or
//!   `data:` values ([`keys`]); token and key creation for `kilonova tokens`
//!   ([`issue`]);
//! - **authorization**: super-users, tenant admins and per-role permissions on
//!   namespaces and topics ([`grants`]), decided by a pure function
//!   ([`authz`]);
//! - **TLS**: the rustls server configuration of the TLS ports ([`tls`]).
//!
//! It does no network I/O and never logs or prints a key or a token: values
//! that hold one are [`Secret`]s, whose `Debug` masks them. It depends on no
//! other Kilonova crate and on no async runtime or store
//! (`scripts/check-layering` checks): the caller reads the records a decision
//! needs.

pub mod authz;
pub mod config;
mod error;
pub mod grants;
pub mod issue;
pub mod keys;
pub mod proxy_roles;
mod secret;
mod security;
pub mod tls;
mod token;

pub use authz::{Authorizer, GrantedTopic, Need, Want};
pub use config::AuthConfig;
pub use error::{AuthError, KeyError};
pub use grants::{AuthAction, AuthPolicies, UnknownAction};
pub use proxy_roles::OriginalPrincipalError;
pub use secret::Secret;
pub use security::Security;
pub use token::{
    now_secs, Principal, TokenAuthenticator, VerificationKey, MAX_VERIFICATION_KEYS, TOKEN_METHOD,
};
