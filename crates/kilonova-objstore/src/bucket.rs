//! [`Bucket`]: the object store Kilonova writes into (an S3 bucket or a local
//! directory) under its key prefix, with typed errors, request timing and
//! multipart uploads. Offload uses it; cluster storage will write through it too.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutPayload,
    RetryConfig, WriteMultipart,
};

use crate::config::{Driver, ObjectStoreConfig};
use crate::error::{ObjectStoreError, Result};
use crate::metrics::{Metrics, Request};

/// An object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its full key in the bucket (prefix included).
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// The store and key prefix Kilonova uses. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `s3://bucket/prefix` or `file:///dir/prefix`, for logs and errors.
    describe: Arc<str>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("at", &self.describe)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// Opens the store the settings describe, with credentials from them or
    /// from the process environment. Checks the settings; makes no request.
    pub fn open(config: &ObjectStoreConfig) -> Result<Self> {
        Self::open_with_env(config, |k| std::env::var(k).ok())
    }

    /// [`Bucket::open`] with environment variables read through `env`.
    pub fn open_with_env(
        config: &ObjectStoreConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        config.validate()?;
        let (store, describe): (Arc<dyn ObjectStore>, String) = match config.driver {
            Driver::Filesystem => {
                let dir = config
                    .directory
                    .as_ref()
                    .ok_or_else(|| ObjectStoreError::Config("no directory".into()))?;
                std::fs::create_dir_all(dir).map_err(|e| {
                    ObjectStoreError::Config(format!("creating {}: {e}", dir.display()))
                })?;
                // fsync: a write that succeeded is durable, as S3 promises (the
                // caller may delete the local copy next). Cleanup: deleting a
                // topic's objects leaves no empty directories behind.
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| ObjectStoreError::Config(format!("{}: {e}", dir.display())))?
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                (Arc::new(fs), format!("file://{}", dir.display()))
            }
            Driver::S3 => {
                // reqwest is built without a bundled TLS provider (see Cargo.toml):
                // ring, as everywhere in Kilonova. Installing it twice is harmless.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(&config.bucket)
                    .with_region(config.resolved_region(&env))
                    .with_virtual_hosted_style_request(!config.path_style)
                    .with_retry(RetryConfig {
                        max_retries: config.max_retries,
                        retry_timeout: config.retry_timeout(),
                        ..RetryConfig::default()
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_timeout(config.request_timeout())
                            .with_connect_timeout(config.connect_timeout())
                            .with_allow_http(true),
                    );
                if let Some(endpoint) = &config.endpoint {
                    b = b.with_endpoint(endpoint);
                }
                match config.credentials(&env)? {
                    Some(c) => {
                        b = b
                            .with_access_key_id(c.access_key_id)
                            .with_secret_access_key(c.secret_access_key.expose());
                        if let Some(t) = c.session_token {
                            b = b.with_token(t.expose());
                        }
                    }
                    None => b = b.with_skip_signature(true),
                }
                let s3 = b
                    .build()
                    .map_err(|e| ObjectStoreError::Config(e.to_string()))?;
                (Arc::new(s3), format!("s3://{}", config.bucket))
            }
        };
        let describe = if config.prefix.is_empty() {
            describe
        } else {
            format!("{describe}/{}", config.prefix)
        };
        tracing::info!(store = %describe, driver = %config.driver, "object store configured");
        Ok(Bucket {
            store,
            prefix: config.prefix.clone(),
            describe: describe.into(),
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// Where this bucket points (`s3://bucket/prefix`), for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The full key of `relative` (a `/`-separated path under the prefix).
    pub fn key(&self, relative: &str) -> String {
        if self.prefix.is_empty() {
            relative.to_string()
        } else {
            format!("{}/{relative}", self.prefix)
        }
    }

    fn path(&self, key: &str) -> Result<Path> {
        Path::parse(key).map_err(|e| ObjectStoreError::Failed {
            op: "naming",
            key: key.to_string(),
            detail: e.to_string(),
        })
    }

    /// Writes a whole object in one request.
    pub async fn put(&self, key: &str, payload: PutPayload) -> Result<()> {
        let path = self.path(key)?;
        let t = Instant::now();
        let r = self.store.put(&path, payload).await;
        self.metrics.observe(Request::Put, t);
        r.map(|_| ()).map_err(|e| self.write_error("put", key, e))
    }

    /// Writes a whole object only if there is none under `key` (S3's
    /// `If-None-Match: *`; the filesystem driver creates the file
    /// exclusively): `AlreadyExists` otherwise, and the object there is untouched.
    pub async fn put_if_absent(&self, key: &str, payload: PutPayload) -> Result<()> {
        let path = self.path(key)?;
        let t = Instant::now();
        let r = self
            .store
            .put_opts(&path, payload, PutMode::Create.into())
            .await;
        self.metrics.observe(Request::Put, t);
        match r {
            Ok(_) => Ok(()),
            Err(e @ object_store::Error::AlreadyExists { .. }) => {
                Err(ObjectStoreError::from_store("put", key, e))
            }
            Err(e) => Err(self.write_error("put", key, e)),
        }
    }

    /// Starts a multipart upload of `key` in parts of `part_bytes`, at most
    /// `concurrency` of them in flight. Nothing is visible under `key` until
    /// [`Upload::finish`] succeeds.
    pub async fn upload(&self, key: &str, part_bytes: usize, concurrency: usize) -> Result<Upload> {
        let path = self.path(key)?;
        let started = Instant::now();
        let inner = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.write_error("upload", key, e))?;
        Ok(Upload {
            writer: WriteMultipart::new_with_chunk_size(inner, part_bytes.max(1)),
            concurrency: concurrency.max(1),
            key: key.to_string(),
            bucket: self.clone(),
            started,
        })
    }

    /// Bytes `range` of an object.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let path = self.path(key)?;
        let t = Instant::now();
        let want = range.end - range.start;
        let r = self.store.get_range(&path, range).await;
        self.metrics.observe(Request::Get, t);
        let b = r.map_err(|e| ObjectStoreError::from_store("get", key, e))?;
        if b.len() as u64 != want {
            return Err(ObjectStoreError::Corrupt {
                key: key.to_string(),
                detail: format!(
                    "asked for {want} bytes, got {} (the object is shorter)",
                    b.len()
                ),
            });
        }
        Ok(b)
    }

    /// The last `n` bytes of an object (all of it if shorter), and its size.
    pub async fn get_suffix(&self, key: &str, n: u64) -> Result<(Bytes, u64)> {
        let path = self.path(key)?;
        let options = GetOptions {
            range: Some(GetRange::Suffix(n.max(1))),
            ..GetOptions::default()
        };
        let t = Instant::now();
        let r = async {
            let got = self.store.get_opts(&path, options).await?;
            let size = got.meta.size;
            Ok::<_, object_store::Error>((got.bytes().await?, size))
        }
        .await;
        self.metrics.observe(Request::Get, t);
        r.map_err(|e| ObjectStoreError::from_store("get", key, e))
    }

    /// A whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        let t = Instant::now();
        let r = async { self.store.get(&path).await?.bytes().await }.await;
        self.metrics.observe(Request::Get, t);
        r.map_err(|e| ObjectStoreError::from_store("get", key, e))
    }

    pub async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = self.path(key)?;
        let t = Instant::now();
        let r = self.store.head(&path).await;
        self.metrics.observe(Request::Head, t);
        r.map(info)
            .map_err(|e| ObjectStoreError::from_store("head", key, e))
    }

    /// Deletes an object; deleting one that is not there succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let t = Instant::now();
        let r = self.store.delete(&path).await;
        self.metrics.observe(Request::Delete, t);
        match r {
            Ok(()) => {
                self.metrics.deleted();
                Ok(())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.write_error("delete", key, e)),
        }
    }

    /// Every object whose key starts with `key_prefix` (a whole-path prefix:
    /// `a/b` lists `a/b/...`, not `a/bc`), in no particular order.
    pub async fn list(&self, key_prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = self.path(key_prefix)?;
        let t = Instant::now();
        let mut stream = self.store.list(Some(&path));
        let mut out = Vec::new();
        let mut failed = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(meta) => out.push(info(meta)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.metrics.observe(Request::List, t);
        match failed {
            Some(e) => Err(ObjectStoreError::from_store("list", key_prefix, e)),
            None => Ok(out),
        }
    }

    /// Asks the store for (at most) one object under the prefix: `Ok` if it
    /// answers, `Refused` for wrong credentials or a missing bucket,
    /// `Unavailable` if it cannot be reached. For a start-up check.
    pub async fn probe(&self) -> Result<()> {
        let path = self.path(&self.prefix)?;
        let t = Instant::now();
        let first = self.store.list(Some(&path)).next().await;
        self.metrics.observe(Request::List, t);
        match first {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(ObjectStoreError::from_store("list", &self.prefix, e)),
        }
    }

    fn write_error(&self, op: &'static str, key: &str, e: object_store::Error) -> ObjectStoreError {
        self.metrics.write_failed();
        ObjectStoreError::from_store(op, key, e)
    }
}

fn info(meta: object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: meta.location.to_string(),
        size: meta.size,
        last_modified: SystemTime::from(meta.last_modified),
    }
}

/// A multipart upload in progress ([`Bucket::upload`]). Dropped without
/// [`Upload::finish`], it leaves nothing under its key (the store may keep
/// its parts until [`Upload::abort`] or the bucket's lifecycle rule removes them).
pub struct Upload {
    writer: WriteMultipart,
    concurrency: usize,
    key: String,
    bucket: Bucket,
    started: Instant,
}

impl Upload {
    /// Appends bytes (not copied); waits while `concurrency` parts are in flight.
    pub async fn write(&mut self, bytes: Bytes) -> Result<()> {
        self.writer
            .wait_for_capacity(self.concurrency)
            .await
            .map_err(|e| self.bucket.write_error("upload", &self.key, e))?;
        self.writer.put(bytes);
        Ok(())
    }

    /// [`Upload::write`] for several buffers: one wait for capacity, then all of them.
    pub async fn write_all(&mut self, buffers: impl IntoIterator<Item = Bytes>) -> Result<()> {
        self.writer
            .wait_for_capacity(self.concurrency)
            .await
            .map_err(|e| self.bucket.write_error("upload", &self.key, e))?;
        for b in buffers {
            self.writer.put(b);
        }
        Ok(())
    }

    /// Uploads what is buffered and completes the object: it is then visible, whole.
    pub async fn finish(self) -> Result<()> {
        let r = self.writer.finish().await;
        self.bucket.metrics.observe(Request::Upload, self.started);
        r.map(|_| ())
            .map_err(|e| self.bucket.write_error("upload", &self.key, e))
    }

    /// Abandons the upload and asks the store to drop its parts (best effort).
    pub async fn abort(self) {
        if let Err(e) = self.writer.abort().await {
            tracing::debug!(key = %self.key, error = %e, "aborting a multipart upload failed; the bucket's lifecycle rule removes its parts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn a_bucket_never_shows_its_secret() {
        let config = ObjectStoreConfig {
            bucket: "kilonova-offload".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            access_key_id: Some("id".into()),
            secret_access_key: Some(Secret::new("very-secret-value")),
            session_token: Some(Secret::new("very-secret-token")),
            ..ObjectStoreConfig::default()
        };
        let b = Bucket::open_with_env(&config, |_| None).unwrap();
        let shown = format!("{b:?} {}", b.describe());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(b.describe(), "s3://kilonova-offload/kilonova");
        assert_eq!(b.key("logs/1"), "kilonova/logs/1");
    }
}
