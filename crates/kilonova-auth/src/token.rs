//! Pulsar's token authentication: a JWT whose signature verifies with the
//! broker's key, whose `exp` (if any) is in the future, and whose role claim
//! (`sub` unless configured) names the client's role.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::AuthConfig;
use crate::error::{AuthError, KeyError};
use crate::keys::{self, KeyFamily};

/// The authentication method name clients send (`AuthenticationToken`).
pub const TOKEN_METHOD: &str = "token";

/// Who a client is, once its credentials checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub role: String,
    /// When the credentials stop being valid (seconds since the epoch); `None`: never.
    pub expires_at_secs: Option<u64>,
    /// Before when they are not valid yet (`nbf`).
    pub not_before_secs: Option<u64>,
}

impl Principal {
    /// Whether the credentials have expired at `now_secs`.
    pub fn expired(&self, now_secs: u64) -> bool {
        self.expires_at_secs.is_some_and(|e| e <= now_secs)
    }
}

/// Checks tokens against one key.
pub struct TokenAuthenticator {
    key: DecodingKey,
    family: KeyFamily,
    role_claim: String,
    /// Tokens whose signature verified, with what they proved: clients
    /// reconnect with the same token, and an RS256/ES256 verification costs
    /// ~100x a lookup. Keyed by the whole token; expiry is checked on every use.
    verified: Mutex<HashMap<String, Principal>>,
}

/// Verified tokens remembered; past this the memory starts over.
const VERIFIED_CACHE_ENTRIES: usize = 10_000;

impl std::fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthenticator")
            .field("family", &self.family)
            .field("role_claim", &self.role_claim)
            .finish_non_exhaustive()
    }
}

impl TokenAuthenticator {
    /// The authenticator the configuration describes: its secret key (HS*) or
    /// its public key (RS*, PS*, ES*, EdDSA); exactly one must be set.
    pub fn from_config(c: &AuthConfig) -> Result<Self, KeyError> {
        match (&c.token_secret_key, &c.token_public_key) {
            (Some(secret), None) => {
                let bytes = keys::read_key(secret.expose())?;
                if bytes.is_empty() {
                    return Err(KeyError::Invalid("the secret key is empty".into()));
                }
                Self::with_secret(&bytes, &c.token_auth_claim)
            }
            (None, Some(public)) => {
                let bytes = keys::read_key(public.expose())?;
                Self::with_public_key(&bytes, &c.token_auth_claim)
            }
            (Some(_), Some(_)) => Err(KeyError::Config(
                "set token_secret_key or token_public_key, not both".into(),
            )),
            (None, None) => Err(KeyError::Config(
                "authentication is enabled but neither token_secret_key nor token_public_key is set"
                    .into(),
            )),
        }
    }

    pub fn with_secret(secret: &[u8], role_claim: &str) -> Result<Self, KeyError> {
        let key = DecodingKey::from_secret(secret)
            .map_err(|e| KeyError::Invalid(format!("secret key: {e}")))?;
        Ok(TokenAuthenticator {
            key,
            family: KeyFamily::Secret,
            role_claim: role_claim.to_owned(),
            verified: Mutex::default(),
        })
    }

    pub fn with_public_key(der_or_pem: &[u8], role_claim: &str) -> Result<Self, KeyError> {
        let (key, family) = keys::decoding_key(der_or_pem)?;
        Ok(TokenAuthenticator {
            key,
            family,
            role_claim: role_claim.to_owned(),
            verified: Mutex::default(),
        })
    }

    /// The principal `token` proves, checked at the current time.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        self.authenticate_at(token, now_secs())
    }

    /// The principal `token` proves at `now_secs` (seconds since the epoch).
    pub fn authenticate_at(&self, token: &str, now_secs: u64) -> Result<Principal, AuthError> {
        let token = token.trim();
        let known = self
            .verified
            .lock()
            .ok()
            .and_then(|m| m.get(token).cloned());
        let p = match known {
            Some(p) => p,
            None => {
                let p = self.verify(token)?;
                if let Ok(mut m) = self.verified.lock() {
                    if m.len() >= VERIFIED_CACHE_ENTRIES {
                        m.clear();
                    }
                    m.insert(token.to_owned(), p.clone());
                }
                p
            }
        };
        if p.expired(now_secs) {
            return Err(AuthError::Expired);
        }
        if p.not_before_secs.is_some_and(|n| n > now_secs) {
            return Err(AuthError::NotYetValid);
        }
        Ok(p)
    }

    /// Checks `token`'s algorithm and signature and reads its claims (not
    /// their times: the caller checks those against its clock).
    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        // The algorithm must be one of the key's family: a token naming HS256
        // never verifies against a public key (the classic confusion attack).
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let accepted = self.family.algorithms();
        if !accepted.contains(&header.alg) {
            return Err(AuthError::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = accepted;
        // Pulsar's tokens carry `exp` only when created with an expiry; expiry
        // is checked below against our clock, not the library's.
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.leeway = 0;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &v).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::WrongAlgorithm(format!("{:?}", header.alg))
                }
                _ => AuthError::Malformed,
            },
        )?;
        let claims = data.claims;
        let expires_at_secs = match claims.get("exp") {
            None | Some(Value::Null) => None,
            Some(v) => Some(numeric_date(v).ok_or(AuthError::Malformed)?),
        };
        let not_before_secs = match claims.get("nbf") {
            None | Some(Value::Null) => None,
            Some(v) => Some(numeric_date(v).ok_or(AuthError::Malformed)?),
        };
        let role = claims
            .get(&self.role_claim)
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| AuthError::NoRole(self.role_claim.clone()))?;
        Ok(Principal {
            role: role.to_owned(),
            expires_at_secs,
            not_before_secs,
        })
    }

    /// The algorithms this authenticator accepts.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        self.family.algorithms()
    }
}

/// A JWT NumericDate: seconds since the epoch, an integer or a float.
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// The wall clock in seconds since the epoch (what JWT expiry is measured in).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::SigningKey;

    #[test]
    fn a_remembered_token_still_expires_and_another_token_is_still_verified() {
        let secret = crate::issue::generate_secret_key().unwrap();
        let key = SigningKey::from_secret(&secret).unwrap();
        let auth = TokenAuthenticator::with_secret(&secret, "sub").unwrap();
        let token = key.token("sub", "alice", Some(1_000)).unwrap();
        assert_eq!(auth.authenticate_at(&token, 999).unwrap().role, "alice");
        // The same token, now cached, past its expiry.
        assert_eq!(auth.authenticate_at(&token, 1_000), Err(AuthError::Expired));
        // A token differing in its signature is verified, not looked up.
        // (A character well inside the signature: the last one holds padding bits.)
        let i = token.len() - 10;
        let c = if &token[i..=i] == "A" { "B" } else { "A" };
        let forged = format!("{}{c}{}", &token[..i], &token[i + 1..]);
        assert_ne!(forged, token);
        assert!(auth.authenticate_at(&forged, 999).is_err());
    }
}
