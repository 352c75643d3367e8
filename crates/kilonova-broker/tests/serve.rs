#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The broker in-process, driven with raw protocol frames: behaviours real clients
//! cannot easily show (what the broker answers to refused requests, what idle
//! topics and connections cost).

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use kilonova_broker::BrokerConfig;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_ack::AckType, command_subscribe::SubType, CommandAck,
    CommandProducer, CommandSend, MessageIdData, MessageMetadata, ProducerAccessMode, ServerError,
};

use common::{cmd, start, start_tuned, Raw, WAIT};

#[tokio::test]
async fn cumulative_ack_on_shared_subscription_is_refused() {
    let server = start(BrokerConfig::default()).await;
    let mut c = Raw::connect(server.addr).await;
    c.producer("cum-ack", 1).await;
    c.send_message(1, 0, b"x").await;
    c.recv_type(Type::SendReceipt).await;
    c.subscribe("cum-ack", "s", SubType::Shared, 1).await;
    c.flow(1, 10).await;
    let m = c.recv_type(Type::Message).await;
    let id = m.command.message.unwrap().message_id;
    c.send(cmd(Type::Ack, |a| {
        a.ack = Some(Box::new(CommandAck {
            consumer_id: 1,
            ack_type: AckType::Cumulative as i32,
            message_id: vec![MessageIdData { ..id }],
            request_id: Some(7),
            ..Default::default()
        }))
    }))
    .await;
    let r = c.recv_type(Type::AckResponse).await;
    let r = r.command.ack_response.unwrap();
    assert_eq!(r.request_id, Some(7));
    assert_eq!(r.error, Some(ServerError::NotAllowedError as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_get_every_receipt_in_order() {
    // More sends than a topic handles in one burst, written without waiting.
    const N: u64 = 2_000;
    let server = start(BrokerConfig::default()).await;
    let mut c = Raw::connect(server.addr).await;
    c.producer("pipelined", 1).await;
    let mut frames = BytesMut::new();
    for seq in 0..N {
        let send = cmd(Type::Send, |c| {
            c.send = Some(Box::new(CommandSend {
                producer_id: 1,
                sequence_id: seq,
                num_messages: Some(1),
                ..Default::default()
            }))
        });
        let meta = MessageMetadata {
            producer_name: "raw".into(),
            sequence_id: seq,
            publish_time: 1,
            ..Default::default()
        };
        let payload = frame::build_payload(&meta, &seq.to_be_bytes());
        frame::encode_payload_command(&send, &payload, &mut frames);
    }
    c.s.write_all(&frames).await.unwrap();
    for seq in 0..N {
        let r = c.recv_type(Type::SendReceipt).await;
        let r = r.command.send_receipt.unwrap();
        assert_eq!(r.sequence_id, seq, "receipts come back in send order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_behind_appends_in_flight_is_answered_after_their_receipts() {
    // Group commits wait 300 ms for more appends: the first SEND's append
    // (answered off the topic's task, by the journal's call) is still in
    // flight when the refused one and the one after it arrive.
    let server = start_tuned(BrokerConfig::default(), |c| {
        c.group_commit_max_delay_us = 300_000
    })
    .await;
    let mut c = Raw::connect(server.addr).await;
    c.producer("refused-in-between", 1).await;
    let meta = |seq: u64, batch: Option<i32>| MessageMetadata {
        producer_name: "raw".into(),
        sequence_id: seq,
        publish_time: 1,
        num_messages_in_batch: batch,
        ..Default::default()
    };
    c.send_message_with(1, &meta(0, None), b"first").await;
    // A batch whose claimed count its bytes cannot hold: refused at once.
    c.send_message_with(1, &meta(1, Some(1_000_000)), b"tiny")
        .await;
    c.send_message_with(1, &meta(2, None), b"third").await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let f = c.recv().await.command;
        match (&f.send_receipt, &f.send_error) {
            (Some(r), None) => answers.push((r.sequence_id, "receipt")),
            (None, Some(e)) => answers.push((e.sequence_id, "error")),
            _ => panic!("not an answer to a SEND: {f:?}"),
        }
    }
    assert_eq!(answers, [(0, "receipt"), (1, "error"), (2, "receipt")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_consumer_gets_a_message_answered_off_the_topics_task() {
    // The topic ticks once a minute: only the journal's call waking the
    // topic (it has a consumer) delivers the message within the wait.
    let config = BrokerConfig {
        cursor_persist_interval_ms: 60_000,
        ..Default::default()
    };
    let server = start(config).await;
    let mut consumer = Raw::connect(server.addr).await;
    consumer
        .subscribe("woken", "s", SubType::Exclusive, 1)
        .await;
    consumer.flow(1, 10).await;
    let mut producer = Raw::connect(server.addr).await;
    producer.producer("woken", 1).await;
    producer.send_message(1, 0, b"now").await;
    producer.recv_type(Type::SendReceipt).await;
    let m = consumer.recv_type(Type::Message).await;
    assert_eq!(m.payload.unwrap().data.as_ref(), b"now");
}

#[tokio::test]
async fn idle_topic_unloads_its_task_and_keeps_its_messages() {
    let config = BrokerConfig {
        topic_unload_idle_secs: 0,
        cursor_persist_interval_ms: 20,
        // Otherwise this topic (no subscription, no retention) is one that
        // inactive-topic deletion removes instead of unloading.
        delete_inactive_topics_enabled: false,
        ..BrokerConfig::default()
    };
    let server = start(config).await;
    let mut c = Raw::connect(server.addr).await;
    c.producer("idle", 1).await;
    c.send_message(1, 0, b"kept").await;
    c.recv_type(Type::SendReceipt).await;
    assert_eq!(server.broker.loaded_topics(), 1);
    drop(c); // the connection closes: its producer goes away
    let deadline = Instant::now() + WAIT;
    while server.broker.loaded_topics() > 0 {
        assert!(Instant::now() < deadline, "idle topic never unloaded");
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a gauge, bounded
    }
    let mut c = Raw::connect(server.addr).await;
    c.subscribe("idle", "s", SubType::Exclusive, 1).await;
    c.flow(1, 10).await;
    let m = c.recv_type(Type::Message).await;
    assert!(m.payload.unwrap().data.as_ref() == b"kept");
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_costs_less_than_64_kib() {
    const N: u64 = 500;
    let server = start(BrokerConfig::default()).await;
    // Warm up allocator arenas and the runtime with a first batch.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(Raw::connect(server.addr).await);
    }
    let before = rss_bytes();
    let mut conns = Vec::new();
    for _ in 0..N {
        conns.push(Raw::connect(server.addr).await);
    }
    let after = rss_bytes();
    // Both ends live in this process, so this over-counts the broker's share.
    let per_connection = after.saturating_sub(before) / N;
    println!("idle connection: {per_connection} bytes (both ends)");
    assert!(
        per_connection < 64 << 10,
        "an idle connection costs {per_connection} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_created_twice_keeps_its_counts() {
    let server = start(BrokerConfig::default()).await;
    let topic = "created-twice-counts";
    let mut c = Raw::connect(server.addr).await;
    // A subscription with a consumer: SENDs go through the topic's task,
    // which counts them in the producer's entry.
    c.subscribe(topic, "s", SubType::Exclusive, 1).await;
    c.producer(topic, 1).await;
    for seq in 0..3 {
        c.send_message(1, seq, b"first").await;
        c.recv_type(Type::SendReceipt).await;
    }
    // The client asks again with the same id (it stopped waiting).
    c.producer(topic, 1).await;
    for seq in 3..5 {
        c.send_message(1, seq, b"again").await;
        c.recv_type(Type::SendReceipt).await;
    }
    let name = kilonova_broker::TopicName::parse(topic).unwrap();
    let reply = server
        .broker
        .topic_admin(&name, kilonova_broker::AdminRequest::Stats)
        .await
        .unwrap();
    let kilonova_broker::AdminReply::Stats(stats) = reply else {
        panic!("a stats answer");
    };
    let [p] = stats.publishers.as_slice() else {
        panic!("one publisher: {:?}", stats.publishers);
    };
    assert_eq!(p.msg_in_counter, 5, "{p:?}");
    assert_eq!(stats.msg_in_counter, 5, "the topic's own count");
    assert_eq!(p.bytes_in_counter, stats.bytes_in_counter, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_created_twice_then_fenced_out_stores_nothing_more() {
    let server = start(BrokerConfig::default()).await;
    let topic = "created-twice";
    let mut old = Raw::connect(server.addr).await;
    old.producer(topic, 1).await;
    // A client that gave up waiting for PRODUCER_SUCCESS asks again with
    // the same id: the topic answers again.
    old.producer(topic, 1).await;
    old.send_message(1, 0, b"before").await;
    old.recv_type(Type::SendReceipt).await;

    // An ExclusiveWithFencing producer takes the topic: the old one is closed.
    let mut new = Raw::connect(server.addr).await;
    new.send(cmd(Type::Producer, |c| {
        c.producer = Some(Box::new(CommandProducer {
            topic: topic.into(),
            producer_id: 1,
            request_id: 1,
            producer_access_mode: Some(ProducerAccessMode::ExclusiveWithFencing as i32),
            ..Default::default()
        }))
    }))
    .await;
    new.recv_type(Type::ProducerSuccess).await;
    old.recv_type(Type::CloseProducer).await;

    // The old client sends on regardless: it is no producer of the topic
    // any more, whichever way its SEND goes (the PONG comes after the
    // connection handled the SEND).
    old.send_message(1, 1, b"after the fence").await;
    old.send(cmd(Type::Ping, |_| {})).await;
    old.recv_type(Type::Pong).await;
    new.send_message(1, 0, b"new").await;
    new.recv_type(Type::SendReceipt).await;

    let mut reader = Raw::connect(server.addr).await;
    reader
        .subscribe(topic, "check", SubType::Exclusive, 1)
        .await;
    reader.flow(1, 10).await;
    let mut stored = Vec::new();
    for _ in 0..2 {
        let m = reader.recv_type(Type::Message).await;
        let payload = m.payload.expect("a message has a payload");
        stored.push(payload.data.to_vec());
    }
    assert_eq!(stored, [b"before".to_vec(), b"new".to_vec()]);
}
