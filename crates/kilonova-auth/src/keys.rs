//! Where keys come from and what they are.
//!
//! A key value is written as Pulsar writes `tokenSecretKey` / `tokenPublicKey`:
//! `file:///path`, `file:path`, `data:;base64,…` (or `data:,raw`), a path to an
//! existing file, or else the key itself in base64. A bare value that looks
//! like a path ([`looks_like_path`]) but names no file is an error, never
//! base64: a missing key file must not turn its path's text into the key.
//! Public and private keys may be DER (what `pulsar tokens create-key-pair` and
//! `kilonova tokens create-key-pair` write) or PEM; secret keys are the raw
//! bytes.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use crate::error::KeyError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The forms of a key value, for error messages.
pub const KEY_FORMS: &str = "a key is file:PATH, data:;base64,BASE64, the path of an existing \
file, or BASE64 text (a base64 key starting with '/' is written data:;base64,…)";

/// Whether a bare key value is meant as a path: it starts with `/` or `~`, or
/// holds a dot or a backslash (base64 has neither).
pub fn looks_like_path(value: &str) -> bool {
    value.starts_with(['/', '~']) || value.contains(['.', '\\'])
}

/// Whether `value` could be a base64 key (then an error must not show it).
fn could_be_base64(value: &str) -> bool {
    value.len() % 4 == 0
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
}

/// Whether `value` is base64 text of at least a secret key's 32 bytes.
fn decodes_to_a_key(value: &str) -> bool {
    could_be_base64(value) && B64.decode(value).is_ok_and(|k| k.len() >= 32)
}

/// The bytes a key value names.
pub fn read_key(value: &str) -> Result<Vec<u8>, KeyError> {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| KeyError::Invalid("a data: key needs a ',' before its data".into()))?;
        return if meta.split(';').any(|m| m == "base64") {
            B64.decode(data.trim())
                .map_err(|_| KeyError::Invalid("a data:;base64 key is not valid base64".into()))
        } else {
            Ok(data.as_bytes().to_vec())
        };
    }
    let path = if let Some(p) = value.strip_prefix("file://") {
        Some(p)
    } else if let Some(p) = value.strip_prefix("file:") {
        Some(p)
    } else if std::path::Path::new(value).is_file() {
        Some(value)
    } else {
        None
    };
    match path {
        Some(p) => std::fs::read(p).map_err(|error| KeyError::Read {
            path: p.to_owned(),
            error,
        }),
        // A generated secret key's base64 text may start with '/': one
        // that decodes to a whole key (32 bytes or more) is that key, not
        // a missing file (a path of 43 or more base64 characters with no
        // '.' in it would be read as a key; it then verifies no token).
        None if looks_like_path(value) && !decodes_to_a_key(value) => {
            Err(KeyError::NoFile(if could_be_base64(value) {
                "at the path given".into()
            } else {
                value.to_owned()
            }))
        }
        None => B64
            .decode(value)
            .map_err(|_| KeyError::Invalid(format!("{KEY_FORMS}; this is none of them"))),
    }
}

/// The family of a public or private key, which fixes the algorithms it signs
/// and verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    /// A shared secret: HS256, HS384, HS512.
    Secret,
    /// RS256, RS384, RS512, PS256, PS384, PS512.
    Rsa,
    /// ES256 (P-256) and ES384 (P-384).
    Ec,
    /// EdDSA (Ed25519).
    Ed,
}

impl KeyFamily {
    /// The algorithms a token signed with this family's keys may name.
    pub fn algorithms(self) -> Vec<Algorithm> {
        match self {
            KeyFamily::Secret => vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            KeyFamily::Rsa => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            KeyFamily::Ec => vec![Algorithm::ES256, Algorithm::ES384],
            KeyFamily::Ed => vec![Algorithm::EdDSA],
        }
    }
}

/// PEM text for DER bytes (so one parser serves both encodings).
fn as_pem(bytes: &[u8], label: &str) -> Vec<u8> {
    if bytes.starts_with(b"-----BEGIN") {
        return bytes.to_vec();
    }
    let b64 = B64.encode(bytes);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem.into_bytes()
}

/// A public key (X.509 SubjectPublicKeyInfo, DER or PEM; PKCS#1 `RSA PUBLIC
/// KEY` PEM too) for verifying tokens.
pub fn decoding_key(bytes: &[u8]) -> Result<(DecodingKey, KeyFamily), KeyError> {
    let pem = as_pem(bytes, "PUBLIC KEY");
    if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((k, KeyFamily::Rsa));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        return Ok((k, KeyFamily::Ec));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
        return Ok((k, KeyFamily::Ed));
    }
    Err(KeyError::Invalid(
        "not an RSA, EC or Ed25519 public key (DER or PEM)".into(),
    ))
}

/// A private key (PKCS#8, DER or PEM; PKCS#1 `RSA PRIVATE KEY` PEM too) for
/// signing tokens.
pub fn encoding_key(bytes: &[u8]) -> Result<(EncodingKey, KeyFamily), KeyError> {
    let pem = as_pem(bytes, "PRIVATE KEY");
    if let Ok(k) = EncodingKey::from_rsa_pem(&pem) {
        return Ok((k, KeyFamily::Rsa));
    }
    if let Ok(k) = EncodingKey::from_ec_pem(&pem) {
        return Ok((k, KeyFamily::Ec));
    }
    if let Ok(k) = EncodingKey::from_ed_pem(&pem) {
        return Ok((k, KeyFamily::Ed));
    }
    Err(KeyError::Invalid(
        "not an RSA, EC or Ed25519 private key (PKCS#8 DER or PEM)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_are_read_from_data_urls_files_and_base64() {
        assert_eq!(read_key("data:;base64,AAEC").unwrap(), vec![0, 1, 2]);
        assert_eq!(read_key("data:base64,AAEC").unwrap(), vec![0, 1, 2]);
        assert_eq!(read_key("data:,abc").unwrap(), b"abc".to_vec());
        assert_eq!(read_key("AAEC").unwrap(), vec![0, 1, 2]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(&path, [9, 8, 7]).unwrap();
        let p = path.display().to_string();
        assert_eq!(read_key(&format!("file://{p}")).unwrap(), vec![9, 8, 7]);
        assert_eq!(read_key(&format!("file:{p}")).unwrap(), vec![9, 8, 7]);
        assert_eq!(read_key(&p).unwrap(), vec![9, 8, 7]);
        // A 32-byte key whose base64 text starts with '/' (one generated
        // key in 64) is that key, not a missing file.
        let key: Vec<u8> = std::iter::once(0xfc).chain(1..32).collect();
        let text = B64.encode(&key);
        assert!(text.starts_with('/'), "{text}");
        assert_eq!(read_key(&text).unwrap(), key);
    }

    #[test]
    fn bad_key_values_are_errors_that_do_not_echo_the_value() {
        let e = read_key("data:;base64,!!not-base64!!")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("not-base64"), "{e}");
        let e = read_key("file:/nonexistent/kilonova.key").unwrap_err();
        assert!(matches!(e, KeyError::Read { .. }));
        // A missing file's path is never read as base64 (`/no/such/key` is
        // valid base64), and a value that could be a key is not echoed.
        for (value, shown) in [
            ("/no/such/key", false),
            ("/missing/file", true),
            ("./k", true),
            ("../keys/k", true),
            ("~/k", true),
            ("keys/secret.key", true),
        ] {
            let e = read_key(value).unwrap_err();
            assert!(matches!(e, KeyError::NoFile(_)), "{value}: {e}");
            let text = e.to_string();
            assert_eq!(text.contains(value), shown, "{value}: {text}");
            assert!(text.contains("data:;base64,"), "{text}");
        }
        assert!(read_key("data:no-comma").is_err());
        assert!(read_key("%%%").is_err());
        assert!(decoding_key(b"garbage").is_err());
        assert!(encoding_key(b"garbage").is_err());
    }
}
