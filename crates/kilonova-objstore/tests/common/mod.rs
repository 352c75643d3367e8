//! The two backends the write-ahead tests run on: a directory, and a real
//! SeaweedFS server on loopback (skipped without `weed`, unless
//! KILONOVA_REQUIRE_S3 is set).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses a subset

use kilonova_objstore::seaweed::SeaweedServer;
use kilonova_objstore::{Bucket, ObjectStoreConfig};
use tempfile::TempDir;

/// A bucket in a fresh directory (the filesystem driver).
pub async fn filesystem() -> (Bucket, TempDir) {
    let dir = TempDir::new().unwrap();
    (
        Bucket::open(&ObjectStoreConfig::filesystem(dir.path())).unwrap(),
        dir,
    )
}

/// `bucket` on a fresh SeaweedFS server, with `configure` applied to its
/// settings; `None`: the test skips.
pub async fn s3(
    test: &str,
    bucket: &str,
    configure: impl FnOnce(&mut ObjectStoreConfig),
) -> Option<(Bucket, SeaweedServer)> {
    let server = SeaweedServer::start_or_skip(test).await?;
    server.create_bucket(bucket).await.unwrap();
    let mut config = server.config(bucket);
    configure(&mut config);
    Some((Bucket::open(&config).unwrap(), server))
}
