//! Token authentication as the broker's edges call it
//! ([`Security::authenticate`] with the bytes a CONNECT or an HTTP header
//! carried), for an HS256 secret, an RSA and an EC public key.
//!
//! Input: `[key][token bytes]`. Starting points are genuine tokens (with
//! `exp`, `nbf`, float times, other claims, other role claims), tokens signed
//! by another key, `alg: none`, and the algorithm-confusion forgery (HS256
//! signed with the public key's bytes). Invariant: a token verifies only if
//! its signed part (header and claims) is one a key's owner signed, and then
//! it proves the role that owner put in it.

use std::collections::HashMap;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

use kilonova_auth::{AuthConfig, Secret, Security, TOKEN_METHOD};

use super::Target;
use crate::mutate::Input;
use crate::rng::Rng;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

const RSA_PRIVATE: &[u8] = include_bytes!("../../testdata/rs256-private.der");
const RSA_PUBLIC: &[u8] = include_bytes!("../../testdata/rs256-public.der");
const EC_PRIVATE: &[u8] = include_bytes!("../../testdata/es256-private.der");
const EC_PUBLIC: &[u8] = include_bytes!("../../testdata/es256-public.der");
/// The HS256 secret (fixed: a seed must replay the same tokens).
const SECRET: &[u8] = b"kilonova-fuzz-secret-key-0123456";

struct Verifier {
    security: Security,
    /// Key that signs genuine tokens for this verifier.
    signer: EncodingKey,
    algorithms: &'static [Algorithm],
    /// Signed parts (header.claims) this key's owner signed → the role in them.
    genuine: HashMap<String, Option<String>>,
}

pub struct TokenTarget {
    verifiers: Vec<Verifier>,
    /// Keys nobody trusts, for tokens that must not verify.
    strangers: Vec<(EncodingKey, Algorithm)>,
}

fn security(config: AuthConfig) -> anyhow::Result<Security> {
    Ok(Security::from_config(&AuthConfig {
        authentication_enabled: true,
        ..config
    })?)
}

fn data_url(bytes: &[u8]) -> Option<Secret<String>> {
    Some(Secret::new(format!("data:;base64,{}", B64.encode(bytes))))
}

impl TokenTarget {
    pub fn new() -> anyhow::Result<Self> {
        let hs = Verifier {
            security: security(AuthConfig {
                token_secret_key: data_url(SECRET),
                ..AuthConfig::default()
            })?,
            signer: EncodingKey::from_secret(SECRET)?,
            algorithms: &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            genuine: HashMap::new(),
        };
        let rs = Verifier {
            security: security(AuthConfig {
                token_public_key: data_url(RSA_PUBLIC),
                ..AuthConfig::default()
            })?,
            signer: EncodingKey::from_rsa_der(RSA_PRIVATE),
            algorithms: &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
            genuine: HashMap::new(),
        };
        let es = Verifier {
            security: security(AuthConfig {
                token_public_key: data_url(EC_PUBLIC),
                ..AuthConfig::default()
            })?,
            signer: EncodingKey::from_ec_der(EC_PRIVATE),
            algorithms: &[Algorithm::ES256],
            genuine: HashMap::new(),
        };
        let strangers = vec![
            (
                EncodingKey::from_secret(b"another-secret-entirely-0123456789")?,
                Algorithm::HS256,
            ),
            // Algorithm confusion: the public keys' bytes as an HMAC secret.
            (EncodingKey::from_secret(RSA_PUBLIC)?, Algorithm::HS256),
            (EncodingKey::from_secret(EC_PUBLIC)?, Algorithm::HS256),
        ];
        Ok(TokenTarget {
            verifiers: vec![hs, rs, es],
            strangers,
        })
    }
}

fn claims(rng: &mut Rng) -> Map<String, Value> {
    let mut c = Map::new();
    let claim = if rng.chance(7, 8) { "sub" } else { "role" };
    let role = match rng.below(6) {
        0 => json!(""),
        1 => json!(rng.below(100)),
        2 => Value::Null,
        _ => json!(rng.text(24)),
    };
    c.insert(claim.into(), role);
    let time = |rng: &mut Rng| match rng.below(5) {
        0 => json!(rng.interesting_u64()),
        1 => json!(rng.interesting_i64()),
        2 => json!(*rng
            .pick(&[1e300, -1.0, 0.5, 1.7e9, f64::MAX])
            .unwrap_or(&0.5)),
        3 => json!(rng.text(8)),
        _ => json!(2_000_000_000u64 + rng.below(1000) as u64),
    };
    if rng.chance(1, 2) {
        c.insert("exp".into(), time(rng));
    }
    if rng.chance(1, 4) {
        c.insert("nbf".into(), time(rng));
    }
    if rng.chance(1, 4) {
        c.insert(rng.text(8), json!({"nested": [1, 2, {"x": rng.text(4)}]}));
    }
    c
}

fn signed_part(token: &str) -> Option<&str> {
    token.rsplit_once('.').map(|(head, _)| head)
}

impl Target for TokenTarget {
    fn name(&self) -> &'static str {
        "token"
    }

    fn generate(&mut self, rng: &mut Rng) -> Input {
        let which = rng.below(self.verifiers.len());
        let c = claims(rng);
        let token = match rng.below(8) {
            // Signed by someone else (or with a public key as an HMAC secret).
            0 => self
                .strangers
                .get(rng.below(self.strangers.len()))
                .and_then(|(key, alg)| jsonwebtoken::encode(&Header::new(*alg), &c, key).ok()),
            // `alg: none`, no signature.
            1 => {
                let header = B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#);
                let body = B64URL.encode(Value::Object(c).to_string());
                Some(format!("{header}.{body}."))
            }
            _ => self.verifiers.get_mut(which).and_then(|v| {
                let alg = *rng.pick(v.algorithms)?;
                let token = jsonwebtoken::encode(&Header::new(alg), &c, &v.signer).ok()?;
                let role = c.get("sub").and_then(Value::as_str).map(str::to_owned);
                v.genuine.insert(signed_part(&token)?.to_owned(), role);
                Some(token)
            }),
        };
        let mut input = Input::new(vec![which as u8]);
        input
            .bytes
            .extend_from_slice(token.unwrap_or_default().as_bytes());
        input
    }

    /// Rewrites a part of the token (header or claims) as JSON, keeping the
    /// rest: a near-valid token whose signature no longer matches.
    fn mutate_structured(&mut self, rng: &mut Rng, input: &mut Input) -> bool {
        let Some(text) = input
            .bytes
            .get(1..)
            .and_then(|b| std::str::from_utf8(b).ok())
        else {
            return false;
        };
        let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
        if parts.len() != 3 {
            return false;
        }
        let i = rng.below(3);
        let Some(part) = parts.get_mut(i) else {
            return false;
        };
        if i == 2 {
            // The signature: another token's, truncated, or a changed character.
            *part = match rng.below(3) {
                0 => String::new(),
                1 => part.get(..part.len() / 2).unwrap_or_default().to_owned(),
                _ => {
                    let mut s = part.clone().into_bytes();
                    let at = rng.below(s.len().max(1));
                    if let Some(c) = s.get_mut(at) {
                        *c = *rng.pick(b"AB_-xyz09").unwrap_or(&b'A');
                    }
                    String::from_utf8(s).unwrap_or_default()
                }
            };
        } else {
            let Some(mut v) = B64URL
                .decode(part.as_bytes())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            else {
                return false;
            };
            if let Value::Object(m) = &mut v {
                match rng.below(4) {
                    0 if i == 0 => {
                        let alg = *rng
                            .pick(&[
                                "none", "HS256", "RS256", "ES256", "PS256", "EdDSA", "hs256", "",
                            ])
                            .unwrap_or(&"none");
                        m.insert("alg".into(), json!(alg));
                    }
                    1 => {
                        m.insert("sub".into(), json!("admin"));
                    }
                    2 => {
                        m.insert("exp".into(), json!(rng.interesting_i64()));
                    }
                    _ => {
                        m.insert(rng.text(6), json!(rng.text(6)));
                    }
                }
            }
            *part = B64URL.encode(v.to_string());
        }
        input.bytes.truncate(1);
        input.bytes.extend_from_slice(parts.join(".").as_bytes());
        true
    }

    fn alloc_limit(&self, input_len: usize) -> usize {
        // Decoding and verifying: the token's parts, its JSON, the key's
        // arithmetic (RSA); and the verified-token cache, which grows (to
        // 10,000 tokens, each signed by the key's owner) on the thread that
        // inserts: its table doubling reaches 1.3 MB.
        (2 << 20) + 64 * input_len
    }

    fn run(&mut self, input: &[u8]) {
        let Some((which, token)) = input.split_first() else {
            return;
        };
        let Some(v) = self.verifiers.get(usize::from(*which) % 3) else {
            return;
        };
        let Ok(Some(p)) = v.security.authenticate(Some(TOKEN_METHOD), Some(token)) else {
            return;
        };
        let text = std::str::from_utf8(token).unwrap_or_default().trim();
        let signed = signed_part(text).unwrap_or_default();
        match v.genuine.get(signed) {
            Some(role) => assert_eq!(
                role.as_deref(),
                Some(p.role.as_str()),
                "a token proved another role than its owner signed"
            ),
            None => panic!("a token nobody signed verified as {:?}: {text}", p.role),
        }
    }
}
