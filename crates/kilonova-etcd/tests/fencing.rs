#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Fencing on a real etcd: a broker whose lease expired (it stopped sending
//! keep-alives: paused, partitioned away) cannot commit guarded writes once
//! another broker took its bundle, and the new owner can — its flush
//! commits included. Two brokers, two
//! connections. Without an `etcd` binary this skips, or fails with
//! KILONOVA_REQUIRE_ETCD=1.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kilonova_etcd::server::EtcdServer;
use kilonova_etcd::EtcdStore;
use kilonova_metadata::bundles::{Acquired, BundleOwner, BundleRange, Commit, Held};
use kilonova_metadata::wal_index::FlushRecords;
use kilonova_metadata::{
    Expect, MetadataStore, NamespaceName, Resources, TopicName, TxnOp, Watched,
};

const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

fn broker(name: &str) -> BundleOwner {
    BundleOwner {
        broker: name.into(),
        native_url: format!("pulsar://{name}"),
        http_url: format!("http://{name}"),
        ..Default::default()
    }
}

fn record(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        expect: Expect::Absent,
        session: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_lease_expired_commits_nothing_after_another_takes_its_bundle() {
    let Some(server) = EtcdServer::start_or_skip("fencing").await else {
        return;
    };
    let connect = || async {
        let store: Arc<dyn MetadataStore> =
            Arc::new(EtcdStore::connect(&server.config()).await.unwrap());
        Resources::new(store)
    };
    let (a, b) = (connect().await, connect().await);
    let ns = NamespaceName::parse("t/ns").unwrap();
    let range = BundleRange::FULL;
    let sa = a
        .store()
        .open_session(Duration::from_secs(1))
        .await
        .unwrap();
    let sb = b
        .store()
        .open_session(Duration::from_secs(30))
        .await
        .unwrap();

    let Acquired::Owned { epoch: a_epoch } = a
        .acquire_bundle(&ns, range, &broker("a:8080"), sa)
        .await
        .unwrap()
    else {
        panic!("a could not take a free bundle");
    };
    let a_holds = [Held {
        ns: ns.clone(),
        range,
        epoch: a_epoch,
    }];
    assert!(matches!(
        a.commit_if_owner(&a_holds, vec![record("/flushes/1", "by a")])
            .await
            .unwrap(),
        Commit::Committed { .. }
    ));

    // a sends no keep-alive: its lease expires and etcd deletes the key.
    // (b's watch may start before a's creation: b's connection has not seen it.)
    let mut w = b.store().watch("/ownership");
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, w.next()).await {
            Ok(Some(Watched::Event(e))) if e.value.is_none() => break,
            Ok(Some(Watched::Event(_))) => {}
            other => panic!("a's ownership did not expire: {other:?}"),
        }
    }
    let Acquired::Owned { epoch: b_epoch } = b
        .acquire_bundle(&ns, range, &broker("b:8080"), sb)
        .await
        .unwrap()
    else {
        panic!("b could not take the bundle a lost");
    };
    assert!(b_epoch > a_epoch);

    // a comes back believing it owns the bundle: refused, nothing written.
    assert_eq!(
        a.commit_if_owner(&a_holds, vec![record("/flushes/2", "by a")])
            .await
            .unwrap(),
        Commit::Deposed {
            ns: ns.clone(),
            range
        }
    );
    assert_eq!(a.store().get("/flushes/2").await.unwrap(), None);
    let b_holds = [Held {
        ns: ns.clone(),
        range,
        epoch: b_epoch,
    }];
    assert!(matches!(
        b.commit_if_owner(&b_holds, vec![record("/flushes/2", "by b")])
            .await
            .unwrap(),
        Commit::Committed { .. }
    ));
    let got = a.store().get("/flushes/2").await.unwrap().unwrap();
    assert_eq!(got.value.as_ref(), b"by b");

    // The flush index's commit is fenced the same way: a's records (under
    // its lapsed epoch) are refused, b's land, and only b's are listed.
    let topic = TopicName::parse("persistent://t/ns/topic").unwrap();
    let flush = |object: &str, index: u64| {
        let mut f = FlushRecords::new(object);
        f.push(&topic, range, 1, index, 0).unwrap();
        f.finish()
    };
    assert!(matches!(
        a.commit_flush(&a_holds, 1, flush("a/1", 0)).await.unwrap(),
        Commit::Deposed { .. }
    ));
    assert!(matches!(
        b.commit_flush(&b_holds, 1, flush("b/1", 0)).await.unwrap(),
        Commit::Committed { .. }
    ));
    let objects: Vec<String> = a
        .flush_records(&ns, range)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r.object)
        .collect();
    assert_eq!(objects, vec!["b/1"]);
}
