//! Bundle ownership on the embedded store: one owner at a time, epochs that
//! only grow, release and session loss hand the bundle on, and a deposed
//! owner's epoch no longer holds, even when racing brokers lose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use kilonova_metadata::bundles::{Acquired, BundleOwner, BundleRange};
use kilonova_metadata::{EmbeddedStore, MetadataStore, NamespaceName, Resources};

fn resources(dir: &std::path::Path) -> Resources {
    let store: Arc<dyn MetadataStore> =
        Arc::new(EmbeddedStore::open(&dir.join("metadata.redb")).unwrap());
    Resources::new(store)
}

fn broker(name: &str) -> BundleOwner {
    BundleOwner {
        broker: name.into(),
        native_url: format!("pulsar://{name}"),
        http_url: format!("http://{name}"),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_bundle_has_one_owner_at_a_time_and_each_ownership_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let r = resources(dir.path());
    let ns = NamespaceName::parse("t/ns").unwrap();
    let range: BundleRange = "0x40000000_0x80000000".parse().unwrap();
    let ttl = Duration::from_secs(30);
    let (sa, sb) = (
        r.store().open_session(ttl).await.unwrap(),
        r.store().open_session(ttl).await.unwrap(),
    );
    let (a, b) = (broker("a:8080"), broker("b:8080"));

    let owned = |a: Acquired| match a {
        Acquired::Owned { epoch } => epoch,
        other => panic!("not acquired: {other:?}"),
    };

    assert_eq!(r.bundle_owner(&ns, range).await.unwrap(), None);
    let first = owned(r.acquire_bundle(&ns, range, &a, sa).await.unwrap());
    match r.acquire_bundle(&ns, range, &b, sb).await.unwrap() {
        Acquired::OwnedBy(o) => assert_eq!((o.broker.as_str(), o.epoch), ("a:8080", first)),
        other => panic!("b took an owned bundle: {other:?}"),
    }
    assert!(r.holds_bundle(&ns, range, "a:8080", first).await.unwrap());
    assert!(!r.holds_bundle(&ns, range, "b:8080", first).await.unwrap());

    // Released: the next broker gets it at a higher epoch; a's is stale.
    assert!(
        !r.release_bundle(&ns, range, "b:8080", first).await.unwrap(),
        "only the owner releases"
    );
    assert!(r.release_bundle(&ns, range, "a:8080", first).await.unwrap());
    let second = owned(r.acquire_bundle(&ns, range, &b, sb).await.unwrap());
    assert!(second > first);
    assert!(!r.holds_bundle(&ns, range, "a:8080", first).await.unwrap());
    assert!(!r.release_bundle(&ns, range, "a:8080", first).await.unwrap());

    // b's session ends (a lost broker): its ownership goes with it.
    r.store().close_session(sb).await.unwrap();
    assert_eq!(r.bundle_owner(&ns, range).await.unwrap(), None);
    assert!(!r.holds_bundle(&ns, range, "b:8080", second).await.unwrap());
    let third = owned(r.acquire_bundle(&ns, range, &a, sa).await.unwrap());
    assert!(third > second);
    // The same broker owning again is a new ownership: its old epoch is stale.
    assert!(r.release_bundle(&ns, range, "a:8080", third).await.unwrap());
    let fourth = owned(r.acquire_bundle(&ns, range, &a, sa).await.unwrap());
    assert!(fourth > third && !r.holds_bundle(&ns, range, "a:8080", third).await.unwrap());
    // Another bundle of the namespace is apart.
    assert!(matches!(
        r.acquire_bundle(&ns, BundleRange::FULL, &b, sa)
            .await
            .unwrap(),
        Acquired::Owned { .. }
    ));
}

#[tokio::test]
async fn brokers_racing_for_a_bundle_agree_on_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let r = Arc::new(resources(dir.path()));
    let ns = NamespaceName::parse("t/ns").unwrap();
    let range = BundleRange::FULL;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (r, ns) = (r.clone(), ns.clone());
        tasks.push(tokio::spawn(async move {
            let session = r
                .store()
                .open_session(Duration::from_secs(30))
                .await
                .unwrap();
            r.acquire_bundle(&ns, range, &broker(&format!("b{i}:8080")), session)
                .await
                .unwrap()
        }));
    }
    let mut owned = Vec::new();
    let mut told = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Acquired::Owned { epoch } => owned.push(epoch),
            Acquired::OwnedBy(o) => told.push(o),
        }
    }
    assert_eq!(owned.len(), 1, "exactly one winner");
    let winner = r.bundle_owner(&ns, range).await.unwrap().unwrap();
    assert_eq!(winner.epoch, owned[0]);
    assert!(
        told.iter().all(|o| *o == winner),
        "the others are told the winner"
    );
}
