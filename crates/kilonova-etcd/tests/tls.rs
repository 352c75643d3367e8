#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! etcd with TLS for clients and client certificates required
//! (`--client-cert-auth`): the store works with the right CA and
//! certificate, and is refused without them.
//! Without an `etcd` binary these skip, or fail with KILONOVA_REQUIRE_ETCD=1.

use std::time::Duration;

use bytes::Bytes;
use kilonova_etcd::server::{EtcdServer, TlsFiles};
use kilonova_etcd::{EtcdConfig, EtcdStore};
use kilonova_metadata::{Expect, MetadataError, MetadataStore, Watched};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_over_tls_with_a_client_certificate() {
    let Some(server) = EtcdServer::start_tls_or_skip("etcd over TLS").await else {
        return;
    };
    assert!(server.endpoint().starts_with("https://"));
    let s = EtcdStore::connect(&server.config()).await.unwrap();
    let mut w = s.watch("/tls");
    let session = s.open_session(Duration::from_secs(10)).await.unwrap();
    let v = s
        .put(
            "/tls/k",
            Bytes::from_static(b"v"),
            Expect::Absent,
            Some(session),
        )
        .await
        .unwrap();
    let got = s.get("/tls/k").await.unwrap().unwrap();
    assert_eq!((got.version, got.session), (v, Some(session)));
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Watched::Event(e))) => assert_eq!((e.key.as_str(), e.revision), ("/tls/k", v)),
        other => panic!("the watch over TLS: {other:?}"),
    }
    s.keep_alive(session).await.unwrap();
    assert_eq!(s.children("/tls", None, 10).await.unwrap().names, ["k"]);
    s.close_session(session).await.unwrap();
}

fn refused(r: Result<EtcdStore, MetadataError>, what: &str) {
    match r {
        Err(MetadataError::Unavailable(msg)) => eprintln!("{what}: refused: {msg}"),
        Err(e) => panic!("{what}: expected Unavailable, got {e}"),
        Ok(_) => panic!("{what}: connected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_or_trusting_another_ca_is_refused() {
    let Some(server) = EtcdServer::start_tls_or_skip("etcd TLS refusals").await else {
        return;
    };
    let without_certificate = EtcdConfig {
        cert_file: None,
        key_file: None,
        ..server.config()
    };
    refused(
        EtcdStore::connect(&without_certificate).await,
        "no client certificate",
    );
    let other = tempfile::tempdir().unwrap();
    let other_ca = TlsFiles::create(other.path()).unwrap();
    let wrong_ca = EtcdConfig {
        ca_file: Some(other_ca.ca.clone()),
        ..server.config()
    };
    refused(EtcdStore::connect(&wrong_ca).await, "another CA");
    let plain = EtcdConfig {
        endpoints: vec![server.endpoint().replace("https://", "http://")],
        ..server.config()
    };
    refused(EtcdStore::connect(&plain).await, "plain HTTP to a TLS port");
    let missing = EtcdConfig {
        ca_file: Some(other.path().join("missing.pem")),
        ..server.config()
    };
    match EtcdStore::connect(&missing).await {
        Err(MetadataError::Invalid(msg)) => assert!(msg.contains("missing.pem"), "{msg}"),
        Err(e) => panic!("a missing CA file: {e}"),
        Ok(_) => panic!("connected with a missing CA file"),
    }
}
