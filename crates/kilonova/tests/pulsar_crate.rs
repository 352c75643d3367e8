#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests: the real `kilonova` binary driven by the `pulsar` crate
//! (pulsar-rs, StreamNative), a Pulsar client we did not write.
//!
//! Every test starts its own broker (fresh data dir, free ports). Waits are
//! bounded and name what they wait for; "nothing else arrives" is checked by
//! publishing a marker and requiring it to be the next message.
//!
//! The `pulsar` crate's `ack` is fire-and-forget (queued to the consumer's
//! engine task, no broker answer). Where a test needs its acks applied before
//! the next step it first receives every message the topic holds (so no
//! delivery is still queued: pulsar-rs's engine stops, dropping queued acks,
//! when it cannot hand a message to a dropped consumer), then drops the
//! consumer (the engine writes the queued acks, then CloseConsumer, on the
//! same connection) and re-subscribes to the same Exclusive subscription: the
//! broker only accepts that once the close, and so every ack before it, has
//! been processed.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::{numbered, within, Broker, STEP};
use futures::StreamExt;
use pulsar::consumer::{InitialPosition, Message};
use pulsar::message::proto::command_subscribe::SubType;
use pulsar::producer::SendFuture;
use pulsar::routing_policy::RoutingPolicy;
use pulsar::{Consumer, ConsumerOptions, Producer, ProducerOptions, Pulsar, TokioExecutor};
use tokio::sync::mpsc;

type Client = Pulsar<TokioExecutor>;
type StrConsumer = Consumer<String, TokioExecutor>;

fn topic(name: &str) -> String {
    format!("persistent://public/default/{name}")
}

async fn client(broker: &Broker) -> Client {
    within(
        STEP,
        "pulsar crate: connect",
        Pulsar::builder(broker.service_url(), TokioExecutor).build(),
    )
    .await
    .expect("pulsar crate client connects to the broker")
}

async fn producer(
    client: &Client,
    topic: &str,
    options: ProducerOptions,
) -> Producer<TokioExecutor> {
    within(
        STEP,
        format!("create producer on {topic}"),
        client
            .producer()
            .with_topic(topic)
            .with_options(options)
            .build(),
    )
    .await
    .unwrap_or_else(|e| panic!("create producer on {topic}: {e}"))
}

async fn consumer(
    client: &Client,
    topic: &str,
    subscription: &str,
    sub_type: SubType,
    name: &str,
) -> StrConsumer {
    within(
        STEP,
        format!("subscribe {name} to {topic}/{subscription} ({sub_type:?})"),
        client
            .consumer()
            .with_topic(topic)
            .with_subscription(subscription)
            .with_subscription_type(sub_type)
            .with_consumer_name(name)
            .with_options(ConsumerOptions {
                initial_position: InitialPosition::Earliest,
                ..Default::default()
            })
            .build::<String>(),
    )
    .await
    .unwrap_or_else(|e| panic!("subscribe {name} to {topic}/{subscription}: {e}"))
}

/// Publish `payloads` one at a time, awaiting each receipt.
async fn send_each(producer: &mut Producer<TokioExecutor>, payloads: &[String]) {
    for p in payloads {
        let receipt = within(STEP, format!("send receipt for {p}"), async {
            producer
                .send_non_blocking(p.clone())
                .await
                .unwrap_or_else(|e| panic!("send {p}: {e}"))
                .await
        })
        .await;
        receipt.unwrap_or_else(|e| panic!("broker refused {p}: {e}"));
    }
}

/// The next message, within [`STEP`].
async fn next(consumer: &mut StrConsumer, what: &str) -> Message<String> {
    within(STEP, what, consumer.next())
        .await
        .unwrap_or_else(|| panic!("consumer stream ended while waiting for {what}"))
        .unwrap_or_else(|e| panic!("consumer error while waiting for {what}: {e}"))
}

fn text(msg: &Message<String>) -> String {
    String::from_utf8(msg.payload.data.clone()).expect("utf-8 payload")
}

/// Receive `n` messages, acking each; returns their payloads in arrival order.
async fn receive_and_ack(consumer: &mut StrConsumer, n: usize, what: &str) -> Vec<String> {
    let mut got = Vec::with_capacity(n);
    for i in 0..n {
        let msg = next(
            consumer,
            &format!("{what}: message {i} of {n}, got so far {got:?}"),
        )
        .await;
        got.push(text(&msg));
        consumer.ack(&msg).await.expect("queue ack");
    }
    got
}

/// Reconnect to an Exclusive subscription after dropping its previous
/// consumer. Success proves the broker processed the old consumer's close,
/// and therefore every ack it sent before (see the file comment).
async fn resubscribe_exclusive(client: &Client, topic: &str, sub: &str) -> StrConsumer {
    consumer(client, topic, sub, SubType::Exclusive, "reconnected").await
}

async fn exclusive_in_order(batching: bool) {
    let broker = Broker::start().await;
    let client = client(&broker).await;
    let t = topic(if batching {
        "ordered-batched"
    } else {
        "ordered"
    });
    let mut c = consumer(&client, &t, "sub", SubType::Exclusive, "c").await;
    let options = if batching {
        ProducerOptions {
            batch_size: Some(5),
            ..Default::default()
        }
    } else {
        ProducerOptions::default()
    };
    let mut p = producer(&client, &t, options).await;
    let payloads: Vec<String> = (0..20).map(|i| numbered("m", i)).collect();
    if batching {
        // Queue all 20 before awaiting a receipt: four full batches of five.
        let mut receipts: Vec<SendFuture> = Vec::new();
        for m in &payloads {
            receipts.push(p.send_non_blocking(m.clone()).await.expect("queue send"));
        }
        within(STEP, "flush of the last batch", p.send_batch())
            .await
            .expect("flush batch");
        for (m, r) in payloads.iter().zip(receipts) {
            within(STEP, format!("batched receipt for {m}"), r)
                .await
                .unwrap_or_else(|e| panic!("broker refused batched {m}: {e}"));
        }
    } else {
        send_each(&mut p, &payloads).await;
    }

    let mut got = Vec::new();
    let mut batch_indexes = Vec::new();
    for i in 0..payloads.len() {
        let msg = next(&mut c, &format!("message {i}, got so far {got:?}")).await;
        got.push(text(&msg));
        batch_indexes.push(msg.message_id().batch_index);
        c.ack(&msg).await.expect("queue ack");
    }
    assert_eq!(
        got, payloads,
        "exclusive consumer must get every message in publish order"
    );
    if batching {
        assert!(
            batch_indexes.iter().all(|b| b.is_some()),
            "messages published in batches must arrive with a batch index: {batch_indexes:?}"
        );
    }
    let marker = p.send_non_blocking("marker").await.expect("queue marker");
    if batching {
        within(STEP, "flush of the marker's batch", p.send_batch())
            .await
            .expect("flush batch");
    }
    within(STEP, "receipt for the marker", marker)
        .await
        .expect("broker refused the marker");
    let after = next(&mut c, "the marker").await;
    assert_eq!(text(&after), "marker", "no message may be delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_subscription_receives_unbatched_messages_in_publish_order() {
    exclusive_in_order(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_subscription_receives_batched_messages_in_publish_order() {
    exclusive_in_order(true).await;
}

/// Drain a consumer in the background into `tx` as (consumer index, payload),
/// acking each message.
fn drain(
    mut consumer: StrConsumer,
    index: usize,
    tx: mpsc::UnboundedSender<(usize, String)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(msg)) = consumer.next().await {
            let payload = text(&msg);
            if consumer.ack(&msg).await.is_err() || tx.send((index, payload)).is_err() {
                break;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_each_message_to_exactly_one_of_two_consumers() {
    let broker = Broker::start().await;
    let client = client(&broker).await;
    let t = topic("shared");
    let a = consumer(&client, &t, "sub", SubType::Shared, "a").await;
    let b = consumer(&client, &t, "sub", SubType::Shared, "b").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks = [drain(a, 0, tx.clone()), drain(b, 1, tx)];

    let mut p = producer(&client, &t, ProducerOptions::default()).await;
    let payloads: Vec<String> = (0..40).map(|i| numbered("s", i)).collect();
    send_each(&mut p, &payloads).await;
    send_each(&mut p, &["marker".to_owned()]).await;

    // Everything up to and including the marker; a redelivered (duplicate)
    // message would be dispatched before the marker.
    let mut seen: Vec<(usize, String)> = Vec::new();
    while !seen.iter().any(|(_, m)| m == "marker") {
        let got = within(
            STEP,
            format!("shared delivery; {} of 41 so far", seen.len()),
            rx.recv(),
        )
        .await
        .expect("drain tasks alive");
        seen.push(got);
    }
    for t in tasks {
        t.abort();
    }
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, m) in &seen {
        *count.entry(m.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "messages delivered more than once: {dups:?}"
    );
    let got: BTreeSet<&str> = count.keys().copied().filter(|m| *m != "marker").collect();
    let want: BTreeSet<&str> = payloads.iter().map(String::as_str).collect();
    assert_eq!(
        got, want,
        "every message must be delivered to one of the consumers"
    );
    let per: [usize; 2] = [0, 1].map(|i| seen.iter().filter(|(c, _)| *c == i).count());
    assert!(
        per[0] > 0 && per[1] > 0,
        "a shared subscription must spread messages over both connected consumers, got {per:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_topic_routes_each_key_to_one_partition_and_consumer_gets_all() {
    let broker = Broker::start().await;
    broker.create_partitioned_topic("parts", 4).await;
    let client = client(&broker).await;
    let t = topic("parts");
    let mut c = consumer(&client, &t, "sub", SubType::Exclusive, "c").await;
    let mut p = producer(
        &client,
        &t,
        ProducerOptions {
            routing_policy: Some(RoutingPolicy::RoundRobin), // keyed messages hash by key
            ..Default::default()
        },
    )
    .await;
    let mut partitions = p.partitions().expect("a partitioned producer");
    partitions.sort();
    let expected: Vec<String> = (0..4).map(|i| format!("{t}-partition-{i}")).collect();
    assert_eq!(
        partitions, expected,
        "the producer must see the 4 partitions"
    );

    let keys = 8;
    let per_key = 5;
    let mut sent = BTreeSet::new();
    for seq in 0..per_key {
        for k in 0..keys {
            let payload = format!("k{k}:{seq}");
            let receipt = within(STEP, format!("receipt for {payload}"), async {
                p.create_message()
                    .with_key(format!("k{k}"))
                    .with_content(payload.clone())
                    .send_non_blocking()
                    .await
                    .expect("queue keyed send")
                    .await
            })
            .await;
            receipt.unwrap_or_else(|e| panic!("broker refused {payload}: {e}"));
            sent.insert(payload);
        }
    }

    let mut key_partitions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut key_seqs: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut got = BTreeSet::new();
    for i in 0..sent.len() {
        let msg = next(
            &mut c,
            &format!("partitioned message {i} of {}", sent.len()),
        )
        .await;
        let payload = text(&msg);
        let key = msg
            .key()
            .unwrap_or_else(|| panic!("{payload} arrived without its key"));
        let (k, seq) = payload.split_once(':').expect("k:seq payload");
        assert_eq!(k, key, "the message key must be the one it was sent with");
        assert!(
            expected.contains(&msg.topic),
            "message {payload} came from {}, not one of the partitions",
            msg.topic
        );
        key_partitions
            .entry(key.clone())
            .or_default()
            .insert(msg.topic.clone());
        key_seqs
            .entry(key)
            .or_default()
            .push(seq.parse().expect("seq"));
        assert!(got.insert(payload.clone()), "{payload} delivered twice");
        c.ack(&msg).await.expect("queue ack");
    }
    assert_eq!(got, sent, "every keyed message must be consumed");
    for (k, parts) in &key_partitions {
        assert_eq!(
            parts.len(),
            1,
            "key {k} must land on one partition, saw {parts:?}"
        );
    }
    for (k, seqs) in &key_seqs {
        let want: Vec<u32> = (0..per_key).collect();
        assert_eq!(
            seqs, &want,
            "messages of key {k} must arrive in publish order"
        );
    }
    let used: BTreeSet<&String> = key_partitions.values().flatten().collect();
    assert!(
        used.len() >= 2,
        "8 keys hashed over 4 partitions must use more than one partition, used {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnected_consumer_resumes_after_acknowledged_messages() {
    let broker = Broker::start().await;
    let client = client(&broker).await;
    let t = topic("resume");
    let mut p = producer(&client, &t, ProducerOptions::default()).await;
    let payloads: Vec<String> = (0..10).map(|i| numbered("r", i)).collect();
    send_each(&mut p, &payloads).await;

    let mut c = consumer(&client, &t, "sub", SubType::Exclusive, "first").await;
    // Receive all ten; ack 0..=4 and 7, leave 5, 6, 8 and 9 unacknowledged.
    for (i, expected) in payloads.iter().enumerate() {
        let msg = next(&mut c, &format!("first pass message {i}")).await;
        assert_eq!(&text(&msg), expected, "first pass is in publish order");
        if i <= 4 || i == 7 {
            c.ack(&msg).await.expect("queue ack");
        }
    }
    drop(c);

    let mut c = resubscribe_exclusive(&client, &t, "sub").await;
    send_each(&mut p, &["marker".to_owned()]).await;
    let mut got = Vec::new();
    loop {
        let msg = next(&mut c, &format!("after reconnect, got so far {got:?}")).await;
        got.push(text(&msg));
        c.ack(&msg).await.expect("queue ack");
        if got.last().is_some_and(|m| m == "marker") {
            break;
        }
    }
    let want: Vec<String> = [5, 6, 8, 9]
        .iter()
        .map(|i| payloads[*i].clone())
        .chain(["marker".to_owned()])
        .collect();
    assert_eq!(
        got, want,
        "after reconnecting, the subscription must deliver exactly the unacknowledged messages \
         (5, 6, 8, 9) in order, then new ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_keeps_messages_and_subscription_position() {
    let mut broker = Broker::start().await;
    let t = topic("durable");
    let payloads: Vec<String> = (0..10).map(|i| numbered("d", i)).collect();
    {
        let client = client(&broker).await;
        let mut p = producer(&client, &t, ProducerOptions::default()).await;
        send_each(&mut p, &payloads).await;
        let mut c = consumer(&client, &t, "sub", SubType::Exclusive, "before").await;
        let first = receive_and_ack(&mut c, 4, "before restart").await;
        assert_eq!(first, payloads[..4], "before restart, in order");
        for (i, expected) in payloads.iter().enumerate().skip(4) {
            // Received but not acknowledged.
            let m = next(&mut c, &format!("before restart, unacked message {i}")).await;
            assert_eq!(&text(&m), expected, "before restart, in order");
        }
        drop(c);
        // Proves the four acks were applied (see the file comment), then
        // closes cleanly before the broker goes down.
        let mut c = resubscribe_exclusive(&client, &t, "sub").await;
        let resumed = next(&mut c, "first message after reconnecting, before restart").await;
        assert_eq!(
            text(&resumed),
            payloads[4],
            "before the restart, the reconnected subscription must resume after the 4 acks"
        );
        within(STEP, "consumer close", c.close())
            .await
            .expect("close consumer");
        within(STEP, "producer close", p.close())
            .await
            .expect("close producer");
    }

    broker.restart().await;

    let client = client(&broker).await;
    let mut c = consumer(&client, &t, "sub", SubType::Exclusive, "after").await;
    let mut p = producer(&client, &t, ProducerOptions::default()).await;
    send_each(&mut p, &["after-restart".to_owned()]).await;
    let rest = receive_and_ack(&mut c, 7, "after restart on the old subscription").await;
    let mut want: Vec<String> = payloads[4..].to_vec();
    want.push("after-restart".to_owned());
    assert_eq!(
        rest, want,
        "after a restart the subscription must resume at the first unacknowledged message"
    );

    let mut fresh = consumer(&client, &t, "fresh", SubType::Exclusive, "fresh").await;
    let all = receive_and_ack(&mut fresh, 11, "new subscription from earliest").await;
    let mut want: Vec<String> = payloads.clone();
    want.push("after-restart".to_owned());
    assert_eq!(
        all, want,
        "every acknowledged message must survive the restart"
    );
}
