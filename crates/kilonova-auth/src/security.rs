//! What an edge needs to check a client: the authenticator (if
//! authentication is on), the authorizer, and how expiring credentials are
//! handled. Built once from [`AuthConfig`] at start.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::authz::Authorizer;
use crate::config::AuthConfig;
use crate::error::{AuthError, KeyError};
use crate::proxy_roles::{self, OriginalPrincipalError};
use crate::token::{Principal, TokenAuthenticator, TOKEN_METHOD};

#[derive(Debug, Default)]
pub struct Security {
    authenticator: Option<TokenAuthenticator>,
    authorizer: Authorizer,
    anonymous_role: Option<String>,
    refresh_check: Duration,
    authenticate_metrics: bool,
    proxy_roles: BTreeSet<String>,
    /// The token the broker presents to other brokers (`broker_client_auth_token`).
    broker_client_token: Option<crate::Secret<String>>,
}

impl Security {
    /// No authentication and no authorization: every client may do everything.
    pub fn open() -> Self {
        Security {
            refresh_check: Duration::from_secs(60),
            ..Security::default()
        }
    }

    pub fn from_config(c: &AuthConfig) -> Result<Self, KeyError> {
        if c.authorization_enabled && !c.authentication_enabled {
            return Err(KeyError::Config(
                "authorization_enabled needs authentication_enabled (roles come from tokens)"
                    .into(),
            ));
        }
        let authenticator = if c.authentication_enabled {
            Some(TokenAuthenticator::from_config(c)?)
        } else {
            None
        };
        Ok(Security {
            authenticator,
            authorizer: Authorizer::new(c.authorization_enabled, c.super_user_roles.clone()),
            anonymous_role: c.anonymous_user_role.clone(),
            refresh_check: Duration::from_secs(c.auth_refresh_check_secs.max(1)),
            authenticate_metrics: c.authenticate_metrics_endpoint,
            proxy_roles: c.proxy_roles.clone(),
            broker_client_token: c
                .broker_client_auth_token
                .as_ref()
                .map(|t| read_token(t.expose()).map(crate::Secret::new))
                .transpose()?,
        })
    }

    /// The token this broker presents to other brokers' admin APIs (the
    /// load manager's unloads), if one is configured.
    pub fn broker_client_token(&self) -> Option<&str> {
        self.broker_client_token
            .as_ref()
            .map(|t| t.expose().as_str())
    }

    /// Whether clients must authenticate.
    pub fn authentication_enabled(&self) -> bool {
        self.authenticator.is_some()
    }

    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// How often connections check their credentials' expiry.
    pub fn refresh_check(&self) -> Duration {
        self.refresh_check
    }

    pub fn authenticate_metrics(&self) -> bool {
        self.authenticate_metrics
    }

    /// Whether `role` is a proxy's (`proxy_roles`).
    pub fn is_proxy_role(&self, role: &str) -> bool {
        self.proxy_roles.contains(role)
    }

    /// Whether a connection authenticated as `role` may name
    /// `original_principal` (Pulsar's rule: see [`proxy_roles::check`]).
    pub fn check_original_principal(
        &self,
        role: &str,
        original_principal: Option<&str>,
    ) -> Result<(), OriginalPrincipalError> {
        proxy_roles::check(&self.proxy_roles, role, original_principal)
    }

    /// Who presents `data` with `method` (`None`: no credentials). With
    /// authentication off, `Ok(None)`: nobody in particular, allowed
    /// everything.
    pub fn authenticate(
        &self,
        method: Option<&str>,
        data: Option<&[u8]>,
    ) -> Result<Option<Principal>, AuthError> {
        let Some(auth) = &self.authenticator else {
            return Ok(None);
        };
        let method = method.filter(|m| !m.is_empty() && *m != "none");
        let data = data.filter(|d| !d.is_empty());
        match (method, data) {
            (None, None) => match &self.anonymous_role {
                Some(role) => Ok(Some(Principal {
                    role: role.clone(),
                    expires_at_secs: None,
                    not_before_secs: None,
                })),
                None => Err(AuthError::Missing),
            },
            (Some(m), _) if m != TOKEN_METHOD => Err(AuthError::UnsupportedMethod(m.to_owned())),
            (_, None) => Err(AuthError::Missing),
            (_, Some(d)) => {
                let token = std::str::from_utf8(d).map_err(|_| AuthError::Malformed)?;
                auth.authenticate(token).map(Some)
            }
        }
    }
}

/// A token given as `file:PATH` (or `file://PATH`: the file's text,
/// trimmed) or as itself.
fn read_token(value: &str) -> Result<String, KeyError> {
    let value = value.trim();
    let path = value
        .strip_prefix("file://")
        .or_else(|| value.strip_prefix("file:"));
    match path {
        Some(p) => std::fs::read_to_string(p)
            .map(|t| t.trim().to_owned())
            .map_err(|error| KeyError::Read {
                path: p.to_owned(),
                error,
            }),
        None => Ok(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_client_token_is_read_from_a_file_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.token");
        std::fs::write(&path, "tok-from-file\n").unwrap();
        let c = AuthConfig {
            broker_client_auth_token: Some(crate::Secret::new(format!("file:{}", path.display()))),
            ..AuthConfig::default()
        };
        let s = Security::from_config(&c).unwrap();
        assert_eq!(s.broker_client_token(), Some("tok-from-file"));
        assert!(!format!("{s:?}").contains("tok-from-file"));
        let c = AuthConfig {
            broker_client_auth_token: Some(crate::Secret::new("tok-inline".into())),
            ..AuthConfig::default()
        };
        assert_eq!(
            Security::from_config(&c).unwrap().broker_client_token(),
            Some("tok-inline")
        );
    }
}
