//! Bundle ownership on the embedded store: one owner at a time, epochs that
//! only grow, release and session loss hand the bundle on, and a deposed
//! owner's epoch no longer holds, even when racing brokers lose; and a
//! deposed owner's guarded writes never land.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kilonova_metadata::bundles::{Acquired, BundleOwner, BundleRange, Commit, Held};
use kilonova_metadata::{
    EmbeddedStore, Expect, MetadataError, MetadataStore, NamespaceName, Resources, TxnOp,
};

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

fn record(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        expect: Expect::Absent,
        session: None,
    }
}

#[tokio::test]
async fn a_deposed_owners_commit_is_refused_and_the_current_owners_lands() {
    let dir = tempfile::tempdir().unwrap();
    let r = resources(dir.path());
    let ns = NamespaceName::parse("t/ns").unwrap();
    let (low, high): (BundleRange, BundleRange) = (
        "0x00000000_0x80000000".parse().unwrap(),
        "0x80000000_0xffffffff".parse().unwrap(),
    );
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
    let held = |range: BundleRange, epoch: u64| Held {
        ns: ns.clone(),
        range,
        epoch,
    };

    // a owns both bundles and commits a flush touching both.
    let a_low = owned(r.acquire_bundle(&ns, low, &a, sa).await.unwrap());
    let a_high = owned(r.acquire_bundle(&ns, high, &a, sa).await.unwrap());
    let a_holds = [held(low, a_low), held(high, a_high)];
    let first = r
        .commit_if_owner(&a_holds, vec![record("/flushes/1", "by a")])
        .await
        .unwrap();
    let Commit::Committed { revision } = first else {
        panic!("the owner's commit was refused: {first:?}");
    };
    assert_eq!(
        r.store().get("/flushes/1").await.unwrap().unwrap().version,
        revision
    );

    // a's session ends (lost, partitioned away); b takes the low bundle.
    r.store().close_session(sa).await.unwrap();
    let b_low = owned(r.acquire_bundle(&ns, low, &b, sb).await.unwrap());
    assert!(b_low > a_low);
    // a still believes it owns both: its commit lands nowhere, and the
    // first bundle it lost is named.
    let late = r
        .commit_if_owner(
            &a_holds,
            vec![record("/flushes/2", "by a"), record("/flushes/3", "by a")],
        )
        .await
        .unwrap();
    assert_eq!(
        late,
        Commit::Deposed {
            ns: ns.clone(),
            range: low
        }
    );
    let late_high = r
        .commit_if_owner(&[held(high, a_high)], vec![record("/flushes/2", "by a")])
        .await
        .unwrap();
    assert_eq!(
        late_high,
        Commit::Deposed {
            ns: ns.clone(),
            range: high
        },
        "a bundle nobody took since is lost too"
    );
    for k in ["/flushes/2", "/flushes/3"] {
        assert_eq!(r.store().get(k).await.unwrap(), None, "{k} not written");
    }

    // The current owner commits; a write's own conflict is its own error.
    let b_holds = [held(low, b_low)];
    assert!(matches!(
        r.commit_if_owner(&b_holds, vec![record("/flushes/2", "by b")])
            .await
            .unwrap(),
        Commit::Committed { .. }
    ));
    let got = r.store().get("/flushes/2").await.unwrap().unwrap();
    assert_eq!(got.value.as_ref(), b"by b");
    match r
        .commit_if_owner(&b_holds, vec![record("/flushes/2", "again")])
        .await
    {
        Err(MetadataError::BadVersion { key, .. }) => assert_eq!(key, "/flushes/2"),
        other => panic!("a write over an existing record: {other:?}"),
    }
    // Ownership keys change only by acquire and release.
    let sneaky = TxnOp::Delete {
        key: format!("/ownership/t/ns/{low}"),
        expect: Expect::Any,
    };
    assert!(matches!(
        r.commit_if_owner(&b_holds, vec![sneaky]).await,
        Err(MetadataError::Invalid(_))
    ));
    assert!(r.holds_bundle(&ns, low, "b:8080", b_low).await.unwrap());
}
