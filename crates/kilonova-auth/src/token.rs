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

/// One key tokens may be signed with.
pub struct VerificationKey {
    key: DecodingKey,
    family: KeyFamily,
    /// The algorithms a token verified by it may name: its family's, or the
    /// one its JWK states.
    algorithms: Vec<Algorithm>,
    /// Its JWK `kid`: a token naming a `kid` is checked against the keys
    /// with that id only (if any has it).
    kid: Option<String>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("family", &self.family)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// An HS256/384/512 secret.
    pub fn secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::Invalid("the secret key is empty".into()));
        }
        let key = DecodingKey::from_secret(secret)
            .map_err(|e| KeyError::Invalid(format!("secret key: {e}")))?;
        Ok(Self::new(key, KeyFamily::Secret, None, None))
    }

    /// A public key (DER or PEM): RSA, EC or Ed25519.
    pub fn public(der_or_pem: &[u8]) -> Result<Self, KeyError> {
        let (key, family) = keys::decoding_key(der_or_pem)?;
        Ok(Self::new(key, family, None, None))
    }

    fn new(
        key: DecodingKey,
        family: KeyFamily,
        alg: Option<Algorithm>,
        kid: Option<String>,
    ) -> Self {
        VerificationKey {
            key,
            family,
            algorithms: alg.map_or_else(|| family.algorithms(), |a| vec![a]),
            kid,
        }
    }

    /// The signature keys of a JWK Set (RFC 7517): `oct` secrets, RSA, EC
    /// (P-256, P-384) and Ed25519 public keys, each with its `kid` and `alg`
    /// if stated. Keys for encryption (`"use": "enc"`) or of another kind are
    /// skipped (and said so in the log, without their material).
    pub fn from_jwks(json: &[u8]) -> Result<Vec<Self>, KeyError> {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|e| KeyError::Invalid(format!("not a JWK Set: {e}")))?;
        let mut out = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            let skip = |why: &str| {
                tracing::warn!(
                    index = i,
                    kid = kid.as_deref().unwrap_or(""),
                    "JWKS key skipped: {why}"
                );
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                skip("an encryption key");
                continue;
            }
            let family = match &jwk.algorithm {
                AlgorithmParameters::OctetKey(_) => KeyFamily::Secret,
                AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
                AlgorithmParameters::EllipticCurve(p)
                    if matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384) =>
                {
                    KeyFamily::Ec
                }
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    KeyFamily::Ed
                }
                _ => {
                    skip("an unsupported key type or curve");
                    continue;
                }
            };
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match signature_algorithm(a) {
                    Some(a) if family.algorithms().contains(&a) => Some(a),
                    _ => {
                        skip("its alg does not sign with its key type");
                        continue;
                    }
                },
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| KeyError::Invalid(format!("JWKS key {i}: {e}")))?;
            out.push(Self::new(key, family, alg, kid));
        }
        Ok(out)
    }
}

/// The JWS algorithm a JWK's `alg` names (`None`: not a signature algorithm).
fn signature_algorithm(a: jsonwebtoken::jwk::KeyAlgorithm) -> Option<Algorithm> {
    use jsonwebtoken::jwk::KeyAlgorithm as K;
    Some(match a {
        K::HS256 => Algorithm::HS256,
        K::HS384 => Algorithm::HS384,
        K::HS512 => Algorithm::HS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Most verification keys one broker holds: a token without a `kid` may be
/// tried against every key of its algorithm's family, so this bounds what one
/// bad token costs.
pub const MAX_VERIFICATION_KEYS: usize = 16;

/// Largest JWKS file read.
const MAX_JWKS_BYTES: u64 = 1 << 20;

/// Checks tokens against the broker's keys (several during a key rotation).
pub struct TokenAuthenticator {
    keys: Vec<VerificationKey>,
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
            .field("keys", &self.keys)
            .field("role_claim", &self.role_claim)
            .finish_non_exhaustive()
    }
}

impl TokenAuthenticator {
    /// The authenticator the configuration describes: every key of
    /// `token_secret_key(s)`, `token_public_key(s)` and `token_jwks_file`
    /// (at least one, at most [`MAX_VERIFICATION_KEYS`]).
    pub fn from_config(c: &AuthConfig) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for secret in c.token_secret_key.iter().chain(&c.token_secret_keys) {
            keys.push(VerificationKey::secret(&keys::read_key(secret.expose())?)?);
        }
        for public in c.token_public_key.iter().chain(&c.token_public_keys) {
            keys.push(VerificationKey::public(&keys::read_key(public.expose())?)?);
        }
        if let Some(path) = &c.token_jwks_file {
            let found = VerificationKey::from_jwks(&read_jwks(path)?)?;
            if found.is_empty() {
                return Err(KeyError::Config(format!(
                    "token_jwks_file {} holds no signature key this broker can use",
                    path.display()
                )));
            }
            keys.extend(found);
        }
        if keys.is_empty() {
            return Err(KeyError::Config(
                "authentication is enabled but no key is set: set token_secret_key, token_public_key, their lists or token_jwks_file"
                    .into(),
            ));
        }
        Self::with_keys(keys, &c.token_auth_claim)
    }

    /// Checks tokens against `keys` (at most [`MAX_VERIFICATION_KEYS`]).
    pub fn with_keys(keys: Vec<VerificationKey>, role_claim: &str) -> Result<Self, KeyError> {
        if keys.len() > MAX_VERIFICATION_KEYS {
            return Err(KeyError::Config(format!(
                "{} verification keys: at most {MAX_VERIFICATION_KEYS}",
                keys.len()
            )));
        }
        Ok(TokenAuthenticator {
            keys,
            role_claim: role_claim.to_owned(),
            verified: Mutex::default(),
        })
    }

    pub fn with_secret(secret: &[u8], role_claim: &str) -> Result<Self, KeyError> {
        Self::with_keys(vec![VerificationKey::secret(secret)?], role_claim)
    }

    pub fn with_public_key(der_or_pem: &[u8], role_claim: &str) -> Result<Self, KeyError> {
        Self::with_keys(vec![VerificationKey::public(der_or_pem)?], role_claim)
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
    ///
    /// The keys tried are those whose algorithms include the token's (a
    /// token naming HS256 never verifies against a public key: the classic
    /// confusion attack); if the token names a `kid` that some of them have,
    /// only those. The first whose signature verifies decides.
    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let mut candidates: Vec<&VerificationKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        if let Some(kid) = header.kid.as_deref() {
            if candidates.iter().any(|k| k.kid.as_deref() == Some(kid)) {
                candidates.retain(|k| k.kid.as_deref() == Some(kid));
            }
        }
        let mut v = Validation::new(header.alg);
        // Pulsar's tokens carry `exp` only when created with an expiry; expiry
        // is checked by the caller against our clock, not the library's.
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.leeway = 0;
        let mut claims = None;
        let mut refusal = AuthError::BadSignature;
        for k in candidates {
            v.algorithms.clone_from(&k.algorithms);
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &v) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    // This key did not sign it (or cannot: a P-256 key and
                    // an ES384 token); another key may have.
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat => {}
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        refusal = AuthError::WrongAlgorithm(format!("{:?}", header.alg));
                    }
                    // The token itself is bad, whichever key is tried.
                    _ => return Err(AuthError::Malformed),
                },
            }
        }
        let claims = claims.ok_or(refusal)?;
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

    /// The algorithms this authenticator accepts (of any of its keys).
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut all: Vec<Algorithm> = Vec::new();
        for a in self.keys.iter().flat_map(|k| &k.algorithms) {
            if !all.contains(a) {
                all.push(*a);
            }
        }
        all
    }
}

/// A JWKS file's bytes (at most [`MAX_JWKS_BYTES`]).
fn read_jwks(path: &std::path::Path) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    let read_error = |error| KeyError::Read {
        path: path.display().to_string(),
        error,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(MAX_JWKS_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_JWKS_BYTES {
        return Err(KeyError::Config(format!(
            "token_jwks_file {} is larger than {MAX_JWKS_BYTES} bytes",
            path.display()
        )));
    }
    Ok(bytes)
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
    use crate::issue::{self, KeyPairAlgorithm, SigningKey};
    use base64::Engine;

    fn b64url(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn oct_jwk(kid: &str, secret: &[u8]) -> Value {
        serde_json::json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": b64url(secret)})
    }

    fn rsa_jwk(kid: &str, public_der: &[u8]) -> Value {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let public = rsa::PublicKey::from_public_key_der(public_der).unwrap();
        serde_json::json!({
            "kty": "RSA", "kid": kid, "use": "sig",
            "n": b64url(&public.n_bytes()), "e": b64url(&public.e_bytes()),
        })
    }

    fn ec_jwk(kid: &str, public_der: &[u8]) -> Value {
        use p256::elliptic_curve::sec1::ToSec1Point;
        use p256::pkcs8::DecodePublicKey;
        let public = p256::PublicKey::from_public_key_der(public_der).unwrap();
        let point = public.to_sec1_point(false);
        serde_json::json!({
            "kty": "EC", "kid": kid, "crv": "P-256",
            "x": b64url(point.x().unwrap()), "y": b64url(point.y().unwrap()),
        })
    }

    fn jwks(keys: &[Value]) -> Vec<VerificationKey> {
        let set = serde_json::json!({ "keys": keys });
        VerificationKey::from_jwks(set.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn tokens_of_the_old_and_the_new_secret_both_verify_and_a_third_is_refused() {
        let (old, new, stranger) = (
            issue::generate_secret_key().unwrap(),
            issue::generate_secret_key().unwrap(),
            issue::generate_secret_key().unwrap(),
        );
        let auth = TokenAuthenticator::with_keys(
            vec![
                VerificationKey::secret(&new).unwrap(),
                VerificationKey::secret(&old).unwrap(),
            ],
            "sub",
        )
        .unwrap();
        for (secret, role) in [(&old, "old-role"), (&new, "new-role")] {
            let token = SigningKey::from_secret(secret)
                .unwrap()
                .token("sub", role, None)
                .unwrap();
            assert_eq!(auth.authenticate(&token).unwrap().role, role);
        }
        let forged = SigningKey::from_secret(&stranger)
            .unwrap()
            .token("sub", "admin", None)
            .unwrap();
        assert_eq!(auth.authenticate(&forged), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_kid_picks_its_key_and_without_one_every_key_of_the_family_is_tried() {
        let (old, new) = (
            issue::generate_secret_key().unwrap(),
            issue::generate_secret_key().unwrap(),
        );
        let auth = TokenAuthenticator::with_keys(
            jwks(&[oct_jwk("2024", &old), oct_jwk("2025", &new)]),
            "sub",
        )
        .unwrap();
        let sign = |secret: &[u8], kid: Option<&str>| {
            let key = SigningKey::from_secret(secret).unwrap();
            let key = match kid {
                Some(k) => key.with_key_id(k),
                None => key,
            };
            key.token("sub", "app", None).unwrap()
        };
        assert!(auth.authenticate(&sign(&new, Some("2025"))).is_ok());
        assert!(auth.authenticate(&sign(&old, Some("2024"))).is_ok());
        assert!(auth.authenticate(&sign(&old, None)).is_ok());
        assert!(auth.authenticate(&sign(&new, None)).is_ok());
        // A kid is a promise: the new key's token naming the old key's id is
        // checked against the old key only.
        assert_eq!(
            auth.authenticate(&sign(&new, Some("2024"))),
            Err(AuthError::BadSignature)
        );
        // An id no key has: every key of the family is tried.
        assert!(auth.authenticate(&sign(&new, Some("unknown"))).is_ok());
    }

    #[test]
    fn mixed_families_verify_each_with_its_own_keys_only() {
        let secret = issue::generate_secret_key().unwrap();
        let rsa = issue::generate_key_pair(KeyPairAlgorithm::Rs256).unwrap();
        let ec = issue::generate_key_pair(KeyPairAlgorithm::Es256).unwrap();
        let mut keys = vec![VerificationKey::secret(&secret).unwrap()];
        keys.extend(jwks(&[
            rsa_jwk("rsa-1", &rsa.public_der),
            ec_jwk("ec-1", &ec.public_der),
        ]));
        let auth = TokenAuthenticator::with_keys(keys, "sub").unwrap();
        let hs = SigningKey::from_secret(&secret).unwrap();
        let rs = SigningKey::from_private_key(&rsa.private_der, None).unwrap();
        let es = SigningKey::from_private_key(&ec.private_der, None).unwrap();
        for (key, role) in [(&hs, "h"), (&rs, "r"), (&es, "e")] {
            let token = key.token("sub", role, None).unwrap();
            assert_eq!(auth.authenticate(&token).unwrap().role, role);
        }
        // The confusion attack: HS256 with the RSA public key as the secret.
        let confused = SigningKey::from_secret(&rsa.public_der)
            .unwrap()
            .token("sub", "admin", None)
            .unwrap();
        assert_eq!(auth.authenticate(&confused), Err(AuthError::BadSignature));
        // Without a public key of its family a token is refused by algorithm.
        let only_secret = TokenAuthenticator::with_secret(&secret, "sub").unwrap();
        let rs_token = rs.token("sub", "r", None).unwrap();
        assert!(matches!(
            only_secret.authenticate(&rs_token),
            Err(AuthError::WrongAlgorithm(_))
        ));
    }

    #[test]
    fn jwks_keys_for_encryption_or_of_unknown_kinds_are_skipped_and_alg_is_enforced() {
        let secret = issue::generate_secret_key().unwrap();
        let rsa = issue::generate_key_pair(KeyPairAlgorithm::Rs256).unwrap();
        let mut enc = rsa_jwk("enc", &rsa.public_der);
        enc["use"] = "enc".into();
        let mut ps_only = rsa_jwk("ps", &rsa.public_der);
        ps_only["alg"] = "PS256".into();
        let keys = jwks(&[
            enc,
            serde_json::json!({"kty": "EC", "kid": "k", "crv": "P-521", "x": "AA", "y": "AA"}),
            oct_jwk("hs", &secret),
            ps_only,
        ]);
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["hs", "ps"]);
        // The key says PS256: an RS256 token of the same RSA key is refused.
        let auth = TokenAuthenticator::with_keys(keys, "sub").unwrap();
        let rs = SigningKey::from_private_key(&rsa.private_der, None).unwrap();
        assert!(matches!(
            auth.authenticate(&rs.token("sub", "r", None).unwrap()),
            Err(AuthError::WrongAlgorithm(_))
        ));
        let ps = SigningKey::from_private_key(&rsa.private_der, Some(Algorithm::PS256)).unwrap();
        assert!(auth
            .authenticate(&ps.token("sub", "r", None).unwrap())
            .is_ok());
        assert!(VerificationKey::from_jwks(b"{\"keys\": 3}").is_err());
        assert!(VerificationKey::from_jwks(b"not json").is_err());
    }

    #[test]
    fn keys_come_from_every_configured_source_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            issue::generate_secret_key().unwrap(),
            issue::generate_secret_key().unwrap(),
            issue::generate_secret_key().unwrap(),
        );
        let file = dir.path().join("b.key");
        std::fs::write(&file, &b).unwrap();
        let jwks_file = dir.path().join("jwks.json");
        let set = serde_json::json!({"keys": [oct_jwk("c", &c)]});
        std::fs::write(&jwks_file, set.to_string()).unwrap();
        let config = AuthConfig {
            authentication_enabled: true,
            token_secret_key: Some(format!("data:;base64,{}", issue::base64_text(&a)).into()),
            token_secret_keys: vec![format!("file:{}", file.display()).into()],
            token_jwks_file: Some(jwks_file.clone()),
            ..AuthConfig::default()
        };
        let auth = TokenAuthenticator::from_config(&config).unwrap();
        for (secret, kid) in [(&a, None), (&b, None), (&c, Some("c"))] {
            let key = SigningKey::from_secret(secret).unwrap();
            let key = match kid {
                Some(k) => key.with_key_id(k),
                None => key,
            };
            assert!(auth
                .authenticate(&key.token("sub", "x", None).unwrap())
                .is_ok());
        }
        // No key at all, a JWKS without a usable key, and too many keys are refused.
        let none = AuthConfig {
            authentication_enabled: true,
            ..AuthConfig::default()
        };
        assert!(TokenAuthenticator::from_config(&none).is_err());
        std::fs::write(&jwks_file, r#"{"keys": []}"#).unwrap();
        assert!(TokenAuthenticator::from_config(&config).is_err());
        let many: Vec<VerificationKey> = (0..=MAX_VERIFICATION_KEYS)
            .map(|_| VerificationKey::secret(&a).unwrap())
            .collect();
        assert!(TokenAuthenticator::with_keys(many, "sub").is_err());
    }

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
