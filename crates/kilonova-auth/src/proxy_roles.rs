//! Connections from `kilonova proxy`: the proxy authenticates as a role of
//! its own and names the client it relays for in CONNECT's
//! `original_principal`. As Pulsar's brokers (`proxyRoles`), with
//! authorization on:
//! - a proxy role must name an original principal, and not another proxy role;
//! - any other role must not name one (else any client could claim to be
//!   anybody);
//! - what the connection does must be allowed to both roles (the proxy role
//!   is usually a super-user, so in practice the client's grants decide).

use std::collections::BTreeSet;

/// Why a CONNECT's pair of roles is refused (Pulsar's `AuthorizationError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginalPrincipalError {
    #[error("a proxy role must name the original principal it connects for")]
    Missing,
    #[error("the original principal cannot be a proxy role")]
    IsProxyRole,
    #[error("only proxy roles may name an original principal")]
    NotAProxy,
}

/// Whether a connection authenticated as `role` may name `original` (an
/// empty name counts as none, as in Pulsar).
pub fn check(
    proxy_roles: &BTreeSet<String>,
    role: &str,
    original: Option<&str>,
) -> Result<(), OriginalPrincipalError> {
    let original = original.filter(|o| !o.trim().is_empty());
    match (proxy_roles.contains(role), original) {
        (true, None) => Err(OriginalPrincipalError::Missing),
        (true, Some(o)) if proxy_roles.contains(o) => Err(OriginalPrincipalError::IsProxyRole),
        (true, Some(_)) | (false, None) => Ok(()),
        (false, Some(_)) => Err(OriginalPrincipalError::NotAProxy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> BTreeSet<String> {
        ["proxy".to_string(), "proxy-2".to_string()].into()
    }

    #[test]
    fn a_proxy_role_must_name_a_client_that_is_not_a_proxy() {
        assert_eq!(check(&roles(), "proxy", Some("app")), Ok(()));
        assert_eq!(
            check(&roles(), "proxy", None),
            Err(OriginalPrincipalError::Missing)
        );
        assert_eq!(
            check(&roles(), "proxy", Some(" ")),
            Err(OriginalPrincipalError::Missing)
        );
        assert_eq!(
            check(&roles(), "proxy", Some("proxy-2")),
            Err(OriginalPrincipalError::IsProxyRole)
        );
    }

    #[test]
    fn other_roles_may_not_name_an_original_principal() {
        assert_eq!(check(&roles(), "app", None), Ok(()));
        assert_eq!(check(&roles(), "app", Some("")), Ok(()));
        assert_eq!(
            check(&roles(), "app", Some("admin")),
            Err(OriginalPrincipalError::NotAProxy)
        );
        // The same name is no exception: a client may not claim itself either.
        assert_eq!(
            check(&roles(), "app", Some("app")),
            Err(OriginalPrincipalError::NotAProxy)
        );
        assert_eq!(
            check(&BTreeSet::new(), "app", Some("bob")),
            Err(OriginalPrincipalError::NotAProxy)
        );
    }
}
