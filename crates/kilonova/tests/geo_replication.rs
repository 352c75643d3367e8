#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Geo-replication driven by a Rust client we did not write (the `pulsar`
//! crate): two standalones, clusters `a` and `b`, registering each other;
//! what a producer publishes in a reaches a consumer in b with its key,
//! properties and event time, unless the message names other clusters.
//! (The three-cluster, fault and authentication cases are driven by the
//! Python client: tests/python/test_geo_replication.py.)

mod common;

use std::collections::HashMap;

use common::{http_request, within, Broker, STEP};
use futures::StreamExt;
use pulsar::consumer::{InitialPosition, Message};
use pulsar::producer::Message as Outgoing;
use pulsar::{ConsumerOptions, Pulsar, TokioExecutor};

async fn rest(broker: &Broker, method: &str, path: &str, body: &str) {
    let (status, text) = http_request(broker.http_port, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
}

async fn cluster(name: &str) -> Broker {
    Broker::start_with(
        Some(&format!("[broker]\ncluster_name = \"{name}\"\n")),
        None,
    )
    .await
}

#[tokio::test]
async fn a_message_published_in_one_cluster_reaches_the_other_with_its_metadata() {
    let a = cluster("a").await;
    let b = cluster("b").await;
    for (broker, other, peer) in [(&a, "b", &b), (&b, "a", &a)] {
        let body = format!(
            r#"{{"serviceUrl": "http://127.0.0.1:{}", "brokerServiceUrl": "{}"}}"#,
            peer.http_port,
            peer.service_url()
        );
        rest(broker, "PUT", &format!("/admin/v2/clusters/{other}"), &body).await;
    }
    for broker in [&a, &b] {
        rest(
            broker,
            "PUT",
            "/admin/v2/tenants/fl",
            r#"{"adminRoles": [], "allowedClusters": ["a", "b"]}"#,
        )
        .await;
        rest(broker, "PUT", "/admin/v2/namespaces/fl/training", "").await;
        rest(
            broker,
            "POST",
            "/admin/v2/namespaces/fl/training/replication",
            r#"["a", "b"]"#,
        )
        .await;
    }
    let topic = "persistent://fl/training/t1";
    let client_a = within(
        STEP,
        "connect to a",
        Pulsar::builder(a.service_url(), TokioExecutor).build(),
    )
    .await
    .unwrap();
    let client_b = within(
        STEP,
        "connect to b",
        Pulsar::builder(b.service_url(), TokioExecutor).build(),
    )
    .await
    .unwrap();
    let mut consumer: pulsar::Consumer<Vec<u8>, TokioExecutor> = within(
        STEP,
        "subscribe in b",
        client_b
            .consumer()
            .with_topic(topic)
            .with_subscription("s")
            .with_options(ConsumerOptions {
                initial_position: InitialPosition::Earliest,
                ..Default::default()
            })
            .build(),
    )
    .await
    .unwrap();
    let mut producer = within(
        STEP,
        "producer in a",
        client_a.producer().with_topic(topic).build(),
    )
    .await
    .unwrap();
    for i in 0..21u64 {
        let message = Outgoing {
            payload: format!("m-{i}").into_bytes(),
            properties: HashMap::from([("i".to_string(), i.to_string())]),
            partition_key: Some(format!("k{}", i % 3)),
            event_time: Some(1_000 + i),
            // The odd ones stay in a.
            replicate_to: if i % 2 == 1 {
                vec!["a".into()]
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        within(STEP, format!("send m-{i}"), async {
            producer.send_non_blocking(message).await.unwrap().await
        })
        .await
        .unwrap();
    }
    for i in (0..21u64).step_by(2) {
        let msg: Message<Vec<u8>> = within(STEP, format!("m-{i} in b"), consumer.next())
            .await
            .expect("the consumer's stream ended")
            .expect("a consumer error");
        let meta = &msg.payload.metadata;
        assert_eq!(
            msg.payload.data,
            format!("m-{i}").into_bytes(),
            "in order, odd ones left out"
        );
        assert_eq!(
            meta.partition_key.as_deref(),
            Some(format!("k{}", i % 3).as_str())
        );
        assert_eq!(meta.event_time, Some(1_000 + i));
        assert_eq!(meta.replicated_from.as_deref(), Some("a"));
        let props: HashMap<_, _> = meta
            .properties
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        assert_eq!(props.get("i"), Some(&i.to_string().as_str()));
        consumer.ack(&msg).await.unwrap();
    }
}
