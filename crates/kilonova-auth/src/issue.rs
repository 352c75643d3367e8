//! Making keys and tokens, as `pulsar tokens` does: a random HS256 secret, an
//! RS256 or ES256 key pair (PKCS#8 and SubjectPublicKeyInfo DER, the files
//! Pulsar's brokers read), and signed tokens with a subject and an optional
//! expiry.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

use crate::error::KeyError;
use crate::keys::{self, KeyFamily};

/// Bytes in a generated secret key (HS256 wants at least 256 bits).
pub const SECRET_KEY_BYTES: usize = 32;

/// A new random secret key.
pub fn generate_secret_key() -> Result<Vec<u8>, KeyError> {
    let mut key = vec![0u8; SECRET_KEY_BYTES];
    getrandom::fill(&mut key)
        .map_err(|e| KeyError::Invalid(format!("the system RNG failed: {e}")))?;
    Ok(key)
}

/// A key as standard base64 text, as `create-secret-key --base64` writes it;
/// a key value (`data:;base64,TEXT` or the bare text) reads it back.
pub fn base64_text(key: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// The key pair kinds `create-key-pair` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPairAlgorithm {
    /// RSA, 2048-bit modulus.
    Rs256,
    /// ECDSA on P-256.
    Es256,
}

impl KeyPairAlgorithm {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        match s.to_ascii_uppercase().as_str() {
            "RS256" => Ok(KeyPairAlgorithm::Rs256),
            "ES256" => Ok(KeyPairAlgorithm::Es256),
            other => Err(KeyError::Config(format!(
                "unsupported key pair algorithm {other}: RS256 or ES256"
            ))),
        }
    }
}

/// A private key (PKCS#8 DER) and its public key (SubjectPublicKeyInfo DER).
pub struct KeyPair {
    pub private_der: Vec<u8>,
    pub public_der: Vec<u8>,
}

/// A new key pair.
pub fn generate_key_pair(alg: KeyPairAlgorithm) -> Result<KeyPair, KeyError> {
    match alg {
        KeyPairAlgorithm::Rs256 => {
            use rsa::Generate;
            let private = rsa::PrivateKey::try_generate().map_err(|e| generation_failed(&e))?;
            let public = private.to_public_key();
            der_pair(&private, &public)
        }
        KeyPairAlgorithm::Es256 => {
            use p256::elliptic_curve::Generate;
            let private = p256::SecretKey::try_generate().map_err(|e| generation_failed(&e))?;
            let public = private.public_key();
            der_pair(&private, &public)
        }
    }
}

fn generation_failed(e: &dyn std::fmt::Display) -> KeyError {
    KeyError::Invalid(format!("key generation failed: {e}"))
}

/// PKCS#8 and SubjectPublicKeyInfo DER of a pair (both crates encode through `pkcs8`).
fn der_pair(
    private: &impl rsa::pkcs8::EncodePrivateKey,
    public: &impl rsa::pkcs8::EncodePublicKey,
) -> Result<KeyPair, KeyError> {
    Ok(KeyPair {
        private_der: private
            .to_pkcs8_der()
            .map_err(|e| generation_failed(&e))?
            .as_bytes()
            .to_vec(),
        public_der: public
            .to_public_key_der()
            .map_err(|e| generation_failed(&e))?
            .as_bytes()
            .to_vec(),
    })
}

/// A key that signs tokens, with the algorithm it signs with.
pub struct SigningKey {
    key: EncodingKey,
    alg: Algorithm,
    /// The `kid` header of its tokens, naming the key that verifies them.
    kid: Option<String>,
}

impl SigningKey {
    /// An HS256 key.
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::Invalid("the secret key is empty".into()));
        }
        let key = EncodingKey::from_secret(secret)
            .map_err(|e| KeyError::Invalid(format!("secret key: {e}")))?;
        Ok(SigningKey {
            key,
            alg: Algorithm::HS256,
            kid: None,
        })
    }

    /// A private key (PKCS#8 DER or PEM): RS256 for RSA, ES256 for P-256,
    /// EdDSA for Ed25519, unless `alg` names another of the family's.
    pub fn from_private_key(bytes: &[u8], alg: Option<Algorithm>) -> Result<Self, KeyError> {
        let (key, family) = keys::encoding_key(bytes)?;
        let default = match family {
            KeyFamily::Rsa => Algorithm::RS256,
            KeyFamily::Ec => Algorithm::ES256,
            KeyFamily::Ed => Algorithm::EdDSA,
            KeyFamily::Secret => Algorithm::HS256,
        };
        let alg = alg.unwrap_or(default);
        if !family.algorithms().contains(&alg) {
            return Err(KeyError::Config(format!(
                "{alg:?} cannot be signed with a {family:?} key"
            )));
        }
        Ok(SigningKey {
            key,
            alg,
            kid: None,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Tokens name `kid` in their header (a broker with several keys then
    /// checks them against the key with that id).
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// A token whose `role_claim` (Pulsar: `sub`) is `subject`, expiring at
    /// `expires_at_secs` if given.
    pub fn token(
        &self,
        role_claim: &str,
        subject: &str,
        expires_at_secs: Option<u64>,
    ) -> Result<String, KeyError> {
        let mut claims = Map::new();
        claims.insert(role_claim.to_owned(), json!(subject));
        if let Some(exp) = expires_at_secs {
            claims.insert("exp".into(), json!(exp));
        }
        let mut header = Header::new(self.alg);
        // Pulsar's tokens carry only `alg` (and ours a `kid` when asked).
        header.typ = None;
        header.kid.clone_from(&self.kid);
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| KeyError::Invalid(format!("signing failed: {e}")))
    }
}

/// A relative time as Pulsar's CLI takes it: a number and a unit, `s`, `m`,
/// `h`, `d`, `w` or `y` (365 days); a bare number is seconds.
pub fn parse_relative_time(s: &str) -> Result<Duration, KeyError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        KeyError::Config(format!("{s:?} is not a relative time like 30s, 1h, 7d, 1y"))
    })?;
    let unit_secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => {
            return Err(KeyError::Config(format!(
                "unknown unit {unit:?} in {s:?}: s, m, h, d, w or y"
            )))
        }
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| KeyError::Config(format!("{s:?} is too long")))
}

/// A token's header and claims, without checking its signature (for `tokens show`).
pub fn decode_unverified(token: &str) -> Result<(Value, Value), KeyError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.trim().split('.');
    let (Some(h), Some(c), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(KeyError::Invalid(
            "a token has three dot-separated parts".into(),
        ));
    };
    let part = |p: &str| -> Result<Value, KeyError> {
        let bytes = b64
            .decode(p.trim_end_matches('='))
            .map_err(|_| KeyError::Invalid("a token part is not base64url".into()))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| KeyError::Invalid("a token part is not JSON".into()))
    };
    Ok((part(h)?, part(c)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthError, TokenAuthenticator};

    #[test]
    fn relative_times_parse_like_pulsars_cli() {
        assert_eq!(parse_relative_time("30").unwrap().as_secs(), 30);
        assert_eq!(parse_relative_time("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_relative_time("5m").unwrap().as_secs(), 300);
        assert_eq!(parse_relative_time("2h").unwrap().as_secs(), 7_200);
        assert_eq!(parse_relative_time("1d").unwrap().as_secs(), 86_400);
        assert_eq!(parse_relative_time("1w").unwrap().as_secs(), 604_800);
        assert_eq!(parse_relative_time("1y").unwrap().as_secs(), 31_536_000);
        for bad in ["", "y", "1x", "-1d", "1.5h", "99999999999999999999y"] {
            assert!(parse_relative_time(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn base64_text_reads_back_as_the_same_key() {
        let secret = generate_secret_key().unwrap();
        let text = base64_text(&secret);
        assert_eq!(keys::read_key(&text).unwrap(), secret);
        assert_eq!(
            keys::read_key(&format!("data:;base64,{text}")).unwrap(),
            secret
        );
    }

    #[test]
    fn a_secret_key_signs_tokens_its_authenticator_accepts() {
        let secret = generate_secret_key().unwrap();
        assert_eq!(secret.len(), SECRET_KEY_BYTES);
        let key = SigningKey::from_secret(&secret).unwrap();
        let token = key.token("sub", "alice", None).unwrap();
        let auth = TokenAuthenticator::with_secret(&secret, "sub").unwrap();
        let p = auth.authenticate(&token).unwrap();
        assert_eq!(p.role, "alice");
        assert_eq!(p.expires_at_secs, None);
        let (header, claims) = decode_unverified(&token).unwrap();
        assert_eq!(header, json!({"alg": "HS256"}));
        assert_eq!(claims, json!({"sub": "alice"}));
    }

    #[test]
    fn key_pairs_sign_tokens_their_public_keys_verify() {
        for alg in [KeyPairAlgorithm::Es256, KeyPairAlgorithm::Rs256] {
            let pair = generate_key_pair(alg).unwrap();
            let key = SigningKey::from_private_key(&pair.private_der, None).unwrap();
            let token = key.token("sub", "bob", Some(4_000_000_000)).unwrap();
            let auth = TokenAuthenticator::with_public_key(&pair.public_der, "sub").unwrap();
            let p = auth.authenticate(&token).unwrap();
            assert_eq!(p.role, "bob", "{alg:?}");
            assert_eq!(p.expires_at_secs, Some(4_000_000_000));
            // Another pair's public key does not verify it.
            let other = generate_key_pair(alg).unwrap();
            let auth = TokenAuthenticator::with_public_key(&other.public_der, "sub").unwrap();
            assert_eq!(
                auth.authenticate(&token),
                Err(AuthError::BadSignature),
                "{alg:?}"
            );
        }
    }
}
