//! Partition counts through the admin API in-process: a record with more
//! partitions than the cap (stored before the cap existed) must not crash or
//! stall any route, and can be deleted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use kilonova_auth::Security;
use kilonova_broker::{Broker, BrokerConfig};
use kilonova_metadata::{EmbeddedStore, Resources, TopicName, TopicRecord};
use kilonova_storage::{DirStateStore, SegmentStore, StoreConfig};

struct Fixture {
    router: axum::Router,
    broker: Broker,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut sc = StoreConfig::new(dir.path().join("storage"));
    sc.log_file_bytes = 16 << 20;
    let store = SegmentStore::open(sc).unwrap();
    let state = Arc::new(DirStateStore::open(dir.path().join("state")).unwrap());
    let metadata = EmbeddedStore::open(&dir.path().join("metadata.redb")).unwrap();
    let resources = Resources::new(Arc::new(metadata));
    resources
        .bootstrap("standalone", &Default::default())
        .await
        .unwrap();
    let broker = Broker::new(
        BrokerConfig::default(),
        store,
        state,
        resources,
        "pulsar://127.0.0.1:6650".to_string(),
        Security::open(),
        kilonova_broker::clock::system(),
    )
    .unwrap();
    Fixture {
        router: kilonova_admin::router(broker.clone()),
        broker,
        _dir: dir,
    }
}

async fn call(f: &Fixture, method: &str, path: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let resp = f.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (status, json)
}

#[tokio::test]
async fn an_oversized_partitioned_topic_is_listed_without_its_partitions_and_can_be_deleted() {
    let f = fixture().await;
    let r = f.broker.resources();
    let huge = TopicName::parse("persistent://public/default/huge").unwrap();
    // Written as a data dir from before the cap holds it: u32::MAX partitions,
    // one of them used once.
    r.put_topic(
        &huge,
        &TopicRecord {
            id: 1_000_000,
            partitions: u32::MAX,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    r.put_topic(
        &huge.partition_name(7),
        &TopicRecord {
            id: 1_000_001,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let plain = TopicName::parse("persistent://public/default/plain").unwrap();
    r.create_topic(&plain, 0).await.unwrap();

    for path in [
        "/admin/v2/persistent/public/default",
        "/admin/v2/persistent/public/default?limit=10",
    ] {
        let (status, list) = call(&f, "GET", path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}");
        assert_eq!(
            list,
            serde_json::json!(["persistent://public/default/plain"]),
            "GET {path}"
        );
    }
    let (status, list) = call(&f, "GET", "/admin/v2/persistent/public/default/partitioned").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list,
        serde_json::json!(["persistent://public/default/huge"])
    );

    // Served to nobody: lookups and per-partition operations refuse it.
    let err = f.broker.partitions(&huge).await.unwrap_err();
    assert!(err.to_string().contains("can only be deleted"), "{err}");
    for (method, suffix) in [
        ("GET", "partitioned-stats"),
        ("GET", "subscriptions"),
        ("PUT", "unload"),
    ] {
        let (status, body) = call(
            &f,
            method,
            &format!("/admin/v2/persistent/public/default/huge/{suffix}"),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::PRECONDITION_FAILED,
            "{method} {suffix}: {body}"
        );
    }
    // A partition never used is not created; the one used before is an
    // ordinary topic of its own.
    let (status, body) = call(
        &f,
        "GET",
        "/admin/v2/persistent/public/default/huge-partition-8/stats",
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    let (status, body) = call(
        &f,
        "GET",
        "/admin/v2/persistent/public/default/huge-partition-7/stats",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Deleting it walks the stored partitions, not 4 billion indexes.
    let (status, body) = call(
        &f,
        "DELETE",
        "/admin/v2/persistent/public/default/huge/partitions",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(r.topic(&huge).await.unwrap(), None);
    assert_eq!(r.topic(&huge.partition_name(7)).await.unwrap(), None);
}

#[tokio::test]
async fn partitioned_stats_loads_no_partition() {
    use kilonova_broker::{AdminRequest, ResetTo};
    const PARTITIONS: u32 = 2_000;
    let f = fixture().await;
    let base = TopicName::parse("persistent://public/default/wide").unwrap();
    let path = "/admin/v2/persistent/public/default/wide";
    let req = Request::builder()
        .method("PUT")
        .uri(format!("{path}/partitions"))
        .body(Body::from(PARTITIONS.to_string()))
        .unwrap();
    let resp = f.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // Two partitions used: one stays loaded, one is unloaded again (its
    // subscription then lives only in its stored state).
    for (i, sub) in [(3, "loaded-sub"), (5, "stored-sub")] {
        f.broker
            .topic_admin(
                &base.partition_name(i),
                AdminRequest::CreateSubscription {
                    name: sub.into(),
                    start: ResetTo::Earliest,
                },
            )
            .await
            .unwrap();
    }
    f.broker
        .topic_admin(&base.partition_name(5), AdminRequest::Unload)
        .await
        .unwrap();
    assert_eq!(f.broker.loaded_topics(), 1);

    let (status, stats) = call(&f, "GET", &format!("{path}/partitioned-stats")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(
        f.broker.loaded_topics(),
        1,
        "partitioned-stats loaded partitions"
    );
    assert_eq!(stats["metadata"]["partitions"], PARTITIONS);
    let per_partition = stats["partitions"].as_object().unwrap();
    assert_eq!(per_partition.len(), PARTITIONS as usize);
    for sub in ["loaded-sub", "stored-sub"] {
        assert_eq!(
            stats["subscriptions"][sub]["msgBacklog"], 0,
            "{sub}: {stats}"
        );
    }
    assert!(
        per_partition["persistent://public/default/wide-partition-5"]["subscriptions"]
            .get("stored-sub")
            .is_some()
    );
    assert_eq!(
        per_partition["persistent://public/default/wide-partition-0"]["storageSize"],
        0
    );

    let (status, brief) = call(
        &f,
        "GET",
        &format!("{path}/partitioned-stats?perPartition=false"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(brief["partitions"], serde_json::json!({}));
    assert_eq!(brief["subscriptions"], stats["subscriptions"]);
    assert_eq!(f.broker.loaded_topics(), 1);
}
