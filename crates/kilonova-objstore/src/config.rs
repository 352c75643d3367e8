//! Where objects go: the `[offload]` settings of one object store, and the
//! credentials for it.
//!
//! Credentials come from the settings or, for the fields the settings leave
//! out, from the usual AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
//! `AWS_DEFAULT_REGION`). Secrets are held in [`Secret`], which never shows
//! its value in `Debug`, `Display` or serialised output.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ObjectStoreError;

/// Which kind of object store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Amazon S3 or an S3-compatible store (SeaweedFS, MinIO, Ceph RGW, ...).
    #[default]
    S3,
    /// A local directory (one file per object): for tests, and for a shared
    /// mount treated as an object store.
    Filesystem,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::S3 => "s3",
            Driver::Filesystem => "filesystem",
        })
    }
}

/// A secret (a key, a token): printed and serialised as `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it (signing requests).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// What a secret looks like wherever it is shown.
pub const MASK: &str = "***";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// Serialised masked, so settings echoed by the admin API or written to a log
/// as JSON never carry the value.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

/// One object store's settings (the broker's `[offload]` section, or a
/// namespace's offload policies). Units are in the names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectStoreConfig {
    pub driver: Driver,
    /// S3: the bucket (a DNS-valid name: 3–63 characters of `a-z 0-9 . -`).
    pub bucket: String,
    /// S3: the endpoint URL of an S3-compatible store (`http://127.0.0.1:8333`);
    /// unset means AWS itself. `http://` endpoints are allowed.
    pub endpoint: Option<String>,
    /// S3: the region; unset means `AWS_REGION`, `AWS_DEFAULT_REGION`, then `us-east-1`.
    pub region: Option<String>,
    /// S3: path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible stores want; virtual-hosted style (`bucket.endpoint/key`) otherwise.
    pub path_style: bool,
    /// S3: the access key id; unset means `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// S3: the secret access key; unset means `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Secret>,
    /// S3: a session token for temporary credentials; unset means `AWS_SESSION_TOKEN`.
    pub session_token: Option<Secret>,
    /// S3: send unsigned requests (a public bucket); no credentials needed.
    pub anonymous: bool,
    /// Filesystem: the directory that holds the objects (created if missing).
    pub directory: Option<PathBuf>,
    /// Every key Kilonova writes starts with this (no leading or trailing `/`);
    /// several clusters can share a bucket under different prefixes.
    pub prefix: String,
    /// A request (of any kind) that takes longer fails (and may be retried).
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Retries of a failed request (connection errors, 5xx, timeouts) ...
    pub max_retries: usize,
    /// ... within this much time from the first try.
    pub retry_timeout_ms: u64,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            driver: Driver::S3,
            bucket: String::new(),
            endpoint: None,
            region: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            anonymous: false,
            directory: None,
            prefix: "kilonova".into(),
            request_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            max_retries: 3,
            retry_timeout_ms: 30_000,
        }
    }
}

/// S3 credentials as resolved from the settings and the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// The longest key prefix accepted (S3 keys are at most 1,024 bytes; the
/// rest is Kilonova's own layout).
pub const MAX_PREFIX_BYTES: usize = 512;

impl ObjectStoreConfig {
    /// Settings for a directory of objects.
    pub fn filesystem(directory: impl Into<PathBuf>) -> Self {
        ObjectStoreConfig {
            driver: Driver::Filesystem,
            directory: Some(directory.into()),
            ..ObjectStoreConfig::default()
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn retry_timeout(&self) -> Duration {
        Duration::from_millis(self.retry_timeout_ms)
    }

    /// Checks the settings a store needs, without touching the network.
    pub fn validate(&self) -> Result<(), ObjectStoreError> {
        validate_prefix(&self.prefix)?;
        match self.driver {
            Driver::S3 => {
                validate_bucket(&self.bucket)?;
                if let Some(endpoint) = &self.endpoint {
                    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                        return Err(config_error(format!(
                            "endpoint {endpoint:?} must start with http:// or https://"
                        )));
                    }
                }
            }
            Driver::Filesystem => {
                if self.directory.is_none() {
                    return Err(config_error(
                        "the filesystem driver needs `directory`".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The S3 credentials: the settings' own, else the environment's (read
    /// through `env`, so callers and tests choose where variables come from).
    /// `None` for anonymous access. An id without a secret (or the reverse)
    /// is an error rather than a silent fall-back to another source.
    pub fn credentials(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Credentials>, ObjectStoreError> {
        if self.anonymous {
            return Ok(None);
        }
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let id =
            nonempty(self.access_key_id.clone()).or_else(|| nonempty(env("AWS_ACCESS_KEY_ID")));
        let secret = self
            .secret_access_key
            .clone()
            .filter(|s| !s.expose().is_empty())
            .or_else(|| nonempty(env("AWS_SECRET_ACCESS_KEY")).map(Secret));
        let token = self
            .session_token
            .clone()
            .or_else(|| nonempty(env("AWS_SESSION_TOKEN")).map(Secret));
        match (id, secret) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Credentials {
                access_key_id,
                secret_access_key,
                session_token: token,
            })),
            (Some(_), None) => Err(config_error(
                "an access key id without a secret access key (set secret_access_key or AWS_SECRET_ACCESS_KEY)".into(),
            )),
            (None, Some(_)) => Err(config_error(
                "a secret access key without an access key id (set access_key_id or AWS_ACCESS_KEY_ID)".into(),
            )),
            (None, None) => Err(config_error(
                "no S3 credentials: set access_key_id and secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or anonymous = true".into(),
            )),
        }
    }

    /// The region: the settings', else `AWS_REGION`, `AWS_DEFAULT_REGION`, `us-east-1`.
    pub fn resolved_region(&self, env: impl Fn(&str) -> Option<String>) -> String {
        self.region
            .clone()
            .filter(|r| !r.is_empty())
            .or_else(|| env("AWS_REGION").filter(|r| !r.is_empty()))
            .or_else(|| env("AWS_DEFAULT_REGION").filter(|r| !r.is_empty()))
            .unwrap_or_else(|| "us-east-1".into())
    }
}

fn config_error(detail: String) -> ObjectStoreError {
    ObjectStoreError::Config(detail)
}

/// S3's bucket naming rules (the DNS-compatible subset every S3-compatible
/// store accepts): 3–63 characters, lowercase letters, digits, `.` and `-`,
/// starting and ending with a letter or digit, no `..`, not an IPv4 address.
pub fn validate_bucket(bucket: &str) -> Result<(), ObjectStoreError> {
    let bad = |why: &str| config_error(format!("bucket name {bucket:?} is not DNS-valid: {why}"));
    if !(3..=63).contains(&bucket.len()) {
        return Err(bad("it must be 3 to 63 characters long"));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(bad(
            "only lowercase letters, digits, '.' and '-' are allowed",
        ));
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !edge_ok(bucket.bytes().next()) || !edge_ok(bucket.bytes().last()) {
        return Err(bad("it must start and end with a letter or digit"));
    }
    if bucket.contains("..") || bucket.contains(".-") || bucket.contains("-.") {
        return Err(bad("labels must not be empty or start or end with '-'"));
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(bad("it must not look like an IP address"));
    }
    Ok(())
}

fn validate_prefix(prefix: &str) -> Result<(), ObjectStoreError> {
    let bad = |why: &str| config_error(format!("key prefix {prefix:?} is invalid: {why}"));
    if prefix.len() > MAX_PREFIX_BYTES {
        return Err(bad("it is longer than 512 bytes"));
    }
    if prefix.is_empty() {
        return Ok(());
    }
    if prefix.starts_with('/') || prefix.ends_with('/') {
        return Err(bad("it must not start or end with '/'"));
    }
    for part in prefix.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(bad("its parts must be non-empty and not '.' or '..'"));
        }
        if part
            .chars()
            .any(|c| c.is_control() || c == '\\' || c == '#')
        {
            return Err(bad("control characters, '\\' and '#' are not allowed"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn secrets_are_masked_in_debug_display_and_json() {
        let c = ObjectStoreConfig {
            secret_access_key: Some(Secret::new("hunter2-very-secret")),
            session_token: Some(Secret::new("token-very-secret")),
            ..ObjectStoreConfig::default()
        };
        let debug = format!("{c:?}");
        let json = serde_json::to_string(&c).unwrap();
        for shown in [&debug, &json, &format!("{}", Secret::new("x-secret"))] {
            assert!(!shown.contains("secret\""), "{shown}");
            assert!(!shown.contains("very-secret"), "{shown}");
            assert!(shown.contains(MASK), "{shown}");
        }
    }

    #[test]
    fn settings_parse_from_toml_with_defaults() {
        let c: ObjectStoreConfig = toml::from_str(
            r#"
            driver = "s3"
            bucket = "kilonova-offload"
            endpoint = "http://127.0.0.1:8333"
            path_style = true
            access_key_id = "id"
            secret_access_key = "s3cr3t"
            "#,
        )
        .unwrap();
        assert_eq!(c.driver, Driver::S3);
        assert_eq!(
            c.secret_access_key.as_ref().map(Secret::expose),
            Some("s3cr3t")
        );
        assert_eq!(c.prefix, "kilonova");
        assert_eq!(c.max_retries, 3);
        c.validate().unwrap();
        let unknown = toml::from_str::<ObjectStoreConfig>("bucket = \"b\"\nbukket = \"x\"");
        assert!(unknown.is_err(), "a misspelt option is refused");
    }

    #[test]
    fn credentials_come_from_settings_before_the_environment() {
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("env-id".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("env-secret".to_string()),
            "AWS_REGION" => Some("eu-west-3".to_string()),
            _ => None,
        };
        let from_env = ObjectStoreConfig::default()
            .credentials(env)
            .unwrap()
            .unwrap();
        assert_eq!(from_env.access_key_id, "env-id");
        assert_eq!(from_env.secret_access_key.expose(), "env-secret");
        assert_eq!(
            ObjectStoreConfig::default().resolved_region(env),
            "eu-west-3"
        );
        assert_eq!(
            ObjectStoreConfig::default().resolved_region(no_env),
            "us-east-1"
        );

        let own = ObjectStoreConfig {
            access_key_id: Some("own-id".into()),
            secret_access_key: Some(Secret::new("own-secret")),
            ..ObjectStoreConfig::default()
        };
        let c = own.credentials(env).unwrap().unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.expose()),
            ("own-id", "own-secret")
        );
    }

    #[test]
    fn missing_or_half_credentials_are_errors_and_anonymous_needs_none() {
        assert!(ObjectStoreConfig::default().credentials(no_env).is_err());
        let half = ObjectStoreConfig {
            access_key_id: Some("id".into()),
            ..ObjectStoreConfig::default()
        };
        let e = half.credentials(no_env).unwrap_err().to_string();
        assert!(e.contains("without a secret"), "{e}");
        let anon = ObjectStoreConfig {
            anonymous: true,
            ..ObjectStoreConfig::default()
        };
        assert_eq!(anon.credentials(no_env).unwrap(), None);
    }

    #[test]
    fn bucket_names_must_be_dns_valid() {
        for ok in ["abc", "kilonova-offload", "a.b.c", "0bucket9"] {
            validate_bucket(ok).unwrap();
        }
        for bad in [
            "ab",
            "Upper",
            "under_score",
            "-start",
            "end-",
            "a..b",
            "a.-b",
            "192.168.1.1",
            &"x".repeat(64),
        ] {
            assert!(validate_bucket(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn prefixes_are_relative_key_paths() {
        for ok in ["", "kilonova", "cluster-a/offload"] {
            validate_prefix(ok).unwrap();
        }
        for bad in ["/abs", "trailing/", "a//b", "a/../b", "a#b"] {
            assert!(validate_prefix(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn filesystem_driver_needs_a_directory_and_s3_a_bucket() {
        let fs = ObjectStoreConfig {
            driver: Driver::Filesystem,
            ..ObjectStoreConfig::default()
        };
        assert!(fs.validate().is_err());
        assert!(ObjectStoreConfig::filesystem("/tmp/x").validate().is_ok());
        assert!(
            ObjectStoreConfig::default().validate().is_err(),
            "empty bucket"
        );
        let bad_endpoint = ObjectStoreConfig {
            bucket: "abc".into(),
            endpoint: Some("127.0.0.1:8333".into()),
            ..ObjectStoreConfig::default()
        };
        assert!(bad_endpoint.validate().is_err());
    }
}
