#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The conformance suite on the embedded backend, plus what only it promises:
//! durability across reopening, and ephemeral keys not outliving the process.

use std::sync::Arc;

use bytes::Bytes;
use kilonova_metadata::{EmbeddedStore, Expect, MetadataStore};

async fn embedded() -> Arc<dyn MetadataStore> {
    // The directory must outlive the test's store: keep it (tests are short-lived processes).
    let dir = tempfile::tempdir().expect("temp dir").keep();
    Arc::new(EmbeddedStore::open(&dir.join("metadata.redb")).expect("open"))
}

kilonova_metadata::conformance_tests!(embedded());

#[tokio::test]
async fn writes_survive_reopening_and_ephemeral_keys_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.redb");
    let (durable, version) = {
        let s = EmbeddedStore::open(&path).unwrap();
        let v = s
            .put(
                "/a/durable",
                Bytes::from_static(b"kept"),
                Expect::Absent,
                None,
            )
            .await
            .unwrap();
        let session = s
            .open_session(std::time::Duration::from_secs(60))
            .await
            .unwrap();
        s.put(
            "/a/ephemeral",
            Bytes::from_static(b"gone"),
            Expect::Absent,
            Some(session),
        )
        .await
        .unwrap();
        s.close();
        ("/a/durable", v)
    };
    let s = EmbeddedStore::open(&path).unwrap();
    let got = s.get(durable).await.unwrap().expect("the durable key");
    assert_eq!((got.value.as_ref(), got.version), (&b"kept"[..], version));
    assert_eq!(s.get("/a/ephemeral").await.unwrap(), None);
    let next = s
        .put("/a/other", Bytes::from_static(b"x"), Expect::Any, None)
        .await
        .unwrap();
    assert!(next > version, "revisions continue after reopening");
}
