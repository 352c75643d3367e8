#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Run-time policies driven by the `pulsar` crate (pulsar-rs), a client we did
//! not write: a publish rate slows its producer without losing anything, and a
//! delayed message waits on a shared subscription. (Every policy is covered
//! with the Python client in tests/python/test_policies.py.)
//!
//! Each test sets its policy on a namespace of its own before any topic of it
//! is loaded, so the topic applies it from its first message.

mod common;

use std::time::{Duration, Instant};

use common::{http_request, within, Broker, STEP};
use futures::StreamExt;
use pulsar::consumer::InitialPosition;
use pulsar::message::proto::command_subscribe::SubType;
use pulsar::{Consumer, ConsumerOptions, Producer, Pulsar, TokioExecutor};

async fn namespace_with(broker: &Broker, ns: &str, policy: &str, body: &str) {
    let port = broker.http_port;
    let (status, text) = http_request(
        port,
        "PUT",
        &format!("/admin/v2/namespaces/public/{ns}"),
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(status, 204, "create namespace public/{ns}: {text}");
    let path = format!("/admin/v2/namespaces/public/{ns}/{policy}");
    let (status, text) = http_request(port, "POST", &path, body).await.unwrap();
    assert_eq!(status, 204, "set {policy}: {text}");
}

async fn client(broker: &Broker) -> Pulsar<TokioExecutor> {
    within(
        STEP,
        "pulsar crate: connect",
        Pulsar::builder(broker.service_url(), TokioExecutor).build(),
    )
    .await
    .expect("connect")
}

/// A consumer of subscription `s` on `topic`, reading from the earliest message.
async fn consumer(
    pulsar: &Pulsar<TokioExecutor>,
    topic: &str,
    kind: SubType,
) -> Consumer<String, TokioExecutor> {
    within(
        STEP,
        format!("subscribe ({kind:?})"),
        pulsar
            .consumer()
            .with_topic(topic)
            .with_subscription("s")
            .with_subscription_type(kind)
            .with_options(ConsumerOptions {
                initial_position: InitialPosition::Earliest,
                ..Default::default()
            })
            .build::<String>(),
    )
    .await
    .unwrap()
}

async fn producer(pulsar: &Pulsar<TokioExecutor>, topic: &str) -> Producer<TokioExecutor> {
    within(
        STEP,
        "producer",
        pulsar.producer().with_topic(topic).build(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_publish_rate_slows_the_producer_and_loses_nothing() {
    const RATE: u32 = 20;
    const N: u32 = 60;
    let broker = Broker::start().await;
    namespace_with(
        &broker,
        "rated",
        "publishRate",
        &format!(r#"{{"publishThrottlingRateInMsg": {RATE}, "publishThrottlingRateInByte": -1}}"#),
    )
    .await;
    let topic = "persistent://public/rated/t";
    let pulsar = client(&broker).await;
    let mut consumer = consumer(&pulsar, topic, SubType::Exclusive).await;
    let mut producer = producer(&pulsar, topic).await;
    let started = Instant::now();
    let mut receipts = Vec::new();
    for i in 0..N {
        receipts.push(producer.send_non_blocking(format!("m{i}")).await.unwrap());
    }
    for r in receipts {
        within(
            Duration::from_secs(30),
            "a receipt under the publish rate",
            r,
        )
        .await
        .expect("every send succeeds: throttling delays, it does not refuse");
    }
    let elapsed = started.elapsed().as_secs_f64();
    // 60 messages at 20/s: about 3 s (the bucket saves up 0.1 s, one message
    // goes in debt). Loose bounds: the test shares the cores with others.
    let floor = f64::from(N - 4) / f64::from(RATE);
    assert!(
        elapsed >= floor * 0.8 && elapsed <= floor * 4.0,
        "{N} messages at {RATE} msg/s took {elapsed:.2} s"
    );
    let mut got = Vec::new();
    while got.len() < N as usize {
        let m = within(STEP, "receive every throttled message", consumer.next())
            .await
            .unwrap()
            .unwrap();
        consumer.ack(&m).await.unwrap();
        got.push(m.deserialize().unwrap());
    }
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(got, expected, "nothing dropped or reordered");
}

#[tokio::test]
async fn a_delayed_message_waits_on_a_shared_subscription() {
    let broker = Broker::start().await;
    let pulsar = client(&broker).await;
    let topic = "persistent://public/default/delayed-pulsar-crate";
    let mut consumer = consumer(&pulsar, topic, SubType::Shared).await;
    let mut producer = producer(&pulsar, topic).await;
    let sent = Instant::now();
    let delay = Duration::from_secs(2);
    producer
        .create_message()
        .with_content("later".to_string())
        .delay(delay)
        .unwrap()
        .send_non_blocking()
        .await
        .unwrap()
        .await
        .unwrap();
    producer
        .send_non_blocking("now".to_string())
        .await
        .unwrap()
        .await
        .unwrap();
    let first = within(STEP, "the undelayed message", consumer.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.deserialize().unwrap(),
        "now",
        "the message sent later but not delayed comes first"
    );
    consumer.ack(&first).await.unwrap();
    let second = within(STEP, "the delayed message", consumer.next())
        .await
        .unwrap()
        .unwrap();
    let waited = sent.elapsed();
    assert_eq!(second.deserialize().unwrap(), "later");
    assert!(
        waited >= delay - Duration::from_millis(100),
        "delivered after {waited:?}, delay {delay:?}"
    );
}
