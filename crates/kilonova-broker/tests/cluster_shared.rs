#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Shared storage in-process: cluster members with one metadata store (the
//! embedded one) and one object store (a directory), as `tests/python`
//! runs them with etcd and SeaweedFS — a topic's messages and subscription
//! positions follow its bundle, and its compacted history rebuilds it with
//! the messages still needed and their message indexes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cmd, start_cluster_member_tuned, start_cluster_member_with, Raw, Server, WAIT};
use kilonova_broker::{AdminReply, AdminRequest, BrokerConfig, TopicName};
use kilonova_metadata::bundles::{self, BundleRange};
use kilonova_metadata::policies::Policies;
use kilonova_metadata::{EmbeddedStore, NamespaceName, Resources};
use kilonova_objstore::{Bucket, ObjectStoreConfig};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_ack::AckType, command_subscribe::SubType, CommandAck,
    CommandProducer, MessageIdData, MessageMetadata,
};

const TTL: Duration = Duration::from_secs(30);

/// A metadata store (embedded) and an object store (a directory) for the
/// members to share: their directories, and the metadata.
fn stores() -> (tempfile::TempDir, tempfile::TempDir, Resources) {
    let (meta, objects) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r = Resources::new(Arc::new(
        EmbeddedStore::open(&meta.path().join("metadata.redb")).unwrap(),
    ));
    (meta, objects, r)
}

async fn member(r: &Resources, id: &str, objects: &tempfile::TempDir) -> Server {
    member_with(r, id, objects, BrokerConfig::default()).await
}

async fn member_with(
    r: &Resources,
    id: &str,
    objects: &tempfile::TempDir,
    config: BrokerConfig,
) -> Server {
    let s = start_cluster_member_with(r.clone(), id, TTL, config).await;
    sharing(s, objects)
}

/// `s` with the shared data path on, `objects` its object store.
fn sharing(s: Server, objects: &tempfile::TempDir) -> Server {
    let bucket = Bucket::open(&ObjectStoreConfig::filesystem(objects.path())).unwrap();
    s.broker.enable_shared_log(bucket).unwrap();
    s
}

fn default_ns() -> NamespaceName {
    NamespaceName::new("public", "default").unwrap()
}

/// A topic of `public/default` and its bundle.
async fn a_topic(r: &Resources) -> (BundleRange, TopicName) {
    let policies = r.namespace(&default_ns()).await.unwrap();
    let topic = TopicName::parse("persistent://public/default/follows").unwrap();
    (
        bundles::bundle_of(&policies.bundles, &topic).unwrap(),
        topic,
    )
}

/// Receives `n` messages on consumer 1; their payloads and ids.
async fn receive(c: &mut Raw, n: usize) -> Vec<(String, MessageIdData)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c.recv_type(Type::Message).await;
        let id = m.command.message.unwrap().message_id;
        let data = m.payload.unwrap().data;
        out.push((String::from_utf8(data.to_vec()).unwrap(), id));
    }
    out
}

/// Waits until `server`'s topic took `n` messages (appended them, their
/// appends perhaps in flight). Each Stats request it makes also shares the
/// topic's subscription positions.
async fn took(server: &Server, topic: &TopicName, n: u64) {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(AdminReply::Stats(s)) =
                server.broker.topic_admin(topic, AdminRequest::Stats).await
            {
                if s.msg_in_counter == n {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the send reached the topic");
}

/// Waits until the stored position of subscription `sub` of topic `id` is `index`.
async fn stored_position(r: &Resources, id: u64, sub: &str, index: u64) {
    tokio::time::timeout(WAIT, async {
        loop {
            let c = r.topic_cursors(id).await.unwrap();
            if c.subscriptions.get(sub) == Some(&index) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("subscription {sub} never stored at {index}"));
}

/// Two members, a and b, sharing a metadata store and a directory as
/// object store; a serves a topic of public/default, with a client
/// connected to a, subscribed ("s", consumer 1) and producing (producer 1).
struct Fixture {
    _meta: tempfile::TempDir,
    objects: tempfile::TempDir,
    r: Resources,
    a: Server,
    b: Server,
    ns: NamespaceName,
    range: BundleRange,
    topic: TopicName,
    c: Raw,
}

/// A client of `a`, which serves `topic`: subscribed ("s", consumer 1) and
/// producing (producer 1).
async fn subscribed_producer(a: &Server, topic: &TopicName) -> Raw {
    a.broker.lookup_topic(topic, None, true).await.unwrap();
    let mut c = Raw::connect(a.addr).await;
    c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
        .await;
    c.producer(&topic.to_string(), 1).await;
    c
}

async fn fixture() -> Fixture {
    let (meta, objects, r) = stores();
    let a = member(&r, "a:8080", &objects).await;
    let b = member(&r, "b:8080", &objects).await;
    let (range, topic) = a_topic(&r).await;
    let c = subscribed_producer(&a, &topic).await;
    Fixture {
        _meta: meta,
        objects,
        r,
        a,
        b,
        ns: default_ns(),
        range,
        topic,
        c,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_history_rebuilds_a_moved_topic_with_what_is_still_needed() {
    let Fixture {
        r,
        a,
        b,
        ns,
        range,
        topic,
        mut c,
        ..
    } = fixture().await;
    publish(&mut c, 0..10).await;
    c.flow(1, 100).await;
    let got = receive(&mut c, 10).await;
    ack(&mut c, &got[5].1, AckType::Cumulative).await;
    let id = r.topic(&topic).await.unwrap().unwrap().id;
    stored_position(&r, id, "s", 6).await;

    // Compacted: the six acknowledged messages are dropped, four kept, and
    // the flush records it covers are gone.
    a.broker.compact_held_bundles(1).await;
    let (base, _) = r.flush_base(&ns, range).await.unwrap().expect("a base");
    let t = base
        .topics
        .iter()
        .find(|t| t.topic == topic.to_string())
        .unwrap();
    let kept: u32 = t.runs.iter().map(|r| r.count).sum();
    assert_eq!((t.first_message_index, t.first_index, kept), (6, 6, 4));
    assert!(r.flush_records(&ns, range).await.unwrap().is_empty());

    // Two more after the compaction, then the bundle moves to b.
    publish(&mut c, 10..12).await;
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());

    // On b: the subscription resumes at m6; a new one from the earliest
    // starts there too (m0..m5 are gone); message indexes are kept.
    let mut c = Raw::connect(b.addr).await;
    c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
        .await;
    c.flow(1, 100).await;
    let resumed: Vec<String> = receive(&mut c, 6)
        .await
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(resumed, ["m6", "m7", "m8", "m9", "m10", "m11"]);
    let mut e = Raw::connect(b.addr).await;
    e.subscribe(&topic.to_string(), "earliest", SubType::Exclusive, 2)
        .await;
    e.flow(2, 100).await;
    let m = e.recv_type(Type::Message).await;
    assert_eq!(&m.payload.unwrap().data[..], b"m6");
    // b continues the topic's numbering: its next message is m12's index.
    let mut p = Raw::connect(b.addr).await;
    p.producer(&topic.to_string(), 1).await;
    p.send_message(1, 12, b"m12").await;
    p.recv_type(Type::SendReceipt).await;
    let next = r.flush_records(&ns, range).await.unwrap();
    let last = next.last().unwrap().1.topics.last().unwrap().clone();
    assert_eq!(last.end_index(), 13, "entry indexes go on from a's");
}

/// The objects in `objects` (the bucket's directory) under a directory
/// named `under`: `wal-base` (compacted histories) or `wal` (flushes).
fn objects_in(objects: &tempfile::TempDir, under: &str) -> usize {
    fn count(dir: &std::path::Path, under: &str, in_base: bool) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                match e.file_type().unwrap().is_dir() {
                    true => count(&path, under, in_base || e.file_name() == under),
                    false => usize::from(in_base && path.extension().is_some_and(|x| x == "wal")),
                }
            })
            .sum()
    }
    count(objects.path(), under, false)
}

/// Publishes `m<seq>` for each of `seqs` on producer 1, each acknowledged
/// before the next.
async fn publish(c: &mut Raw, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        c.send_message(1, seq, format!("m{seq}").as_bytes()).await;
        c.recv_type(Type::SendReceipt).await;
    }
}

/// Publishes `m<seq>` on producer 1, then has `server` compact its bundles.
async fn send_and_compact(c: &mut Raw, server: &Server, seq: u64) {
    publish(c, seq..seq + 1).await;
    server.broker.compact_held_bundles(1).await;
}

/// Acknowledges `id` on consumer 1 (cumulatively: it and all before it).
async fn ack(c: &mut Raw, id: &MessageIdData, ack_type: AckType) {
    c.send(cmd(Type::Ack, |a| {
        a.ack = Some(Box::new(CommandAck {
            consumer_id: 1,
            ack_type: ack_type as i32,
            message_id: vec![id.clone()],
            ..Default::default()
        }))
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compactions_keep_few_runs_drop_consumed_ones_and_the_sweep_deletes_compacted_flushes() {
    let Fixture {
        objects,
        r,
        a,
        b,
        ns,
        range,
        topic,
        mut c,
        ..
    } = fixture().await;
    let id = r.topic(&topic).await.unwrap().unwrap().id;
    let runs = |base: &kilonova_metadata::wal_index::FlushBase| -> Vec<u32> {
        base.topics[0].runs.iter().map(|r| r.count).collect()
    };
    let mut seq = 0..;
    // One entry per compaction: runs as a binary counter.
    let mut sizes = Vec::new();
    for _ in 0..8 {
        send_and_compact(&mut c, &a, seq.next().unwrap()).await;
        sizes.push(runs(&r.flush_base(&ns, range).await.unwrap().unwrap().0));
    }
    assert_eq!(
        sizes,
        vec![
            vec![1],
            vec![2],
            vec![2, 1],
            vec![4],
            vec![4, 1],
            vec![4, 2],
            vec![4, 2, 1],
            vec![8]
        ]
    );
    assert_eq!(
        objects_in(&objects, "wal-base"),
        1,
        "merged runs' objects are deleted"
    );

    // Half consumed: the run is still partly needed and stays whole.
    c.flow(1, 100).await;
    let got = receive(&mut c, 8).await;
    ack(&mut c, &got[4].1, AckType::Cumulative).await;
    stored_position(&r, id, "s", 5).await;
    send_and_compact(&mut c, &a, seq.next().unwrap()).await;
    let (base, _) = r.flush_base(&ns, range).await.unwrap().unwrap();
    assert_eq!(
        (runs(&base), base.topics[0].first_message_index),
        (vec![8, 1], 0)
    );
    // All consumed: both runs go, and their objects.
    let got = receive(&mut c, 1).await;
    ack(&mut c, &got[0].1, AckType::Cumulative).await;
    stored_position(&r, id, "s", 9).await;
    send_and_compact(&mut c, &a, seq.next().unwrap()).await;
    let (base, _) = r.flush_base(&ns, range).await.unwrap().unwrap();
    assert_eq!(
        (
            runs(&base),
            base.topics[0].first_index,
            base.topics[0].first_message_index
        ),
        (vec![1], 9, 9)
    );
    assert_eq!(objects_in(&objects, "wal-base"), 1);

    // The flushes' objects are swept once no record names them; the last
    // one, not compacted yet, stays.
    c.send_message(1, 10, b"m10").await;
    c.recv_type(Type::SendReceipt).await;
    assert_eq!(objects_in(&objects, "wal"), 11);
    let swept = a.broker.sweep_write_ahead_objects(Duration::ZERO).await;
    assert_eq!(swept.unwrap(), 10);
    assert_eq!(objects_in(&objects, "wal"), 1);

    // On b, the subscription and a new one from the earliest both start at m9.
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());
    let mut c = Raw::connect(b.addr).await;
    c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
        .await;
    c.subscribe(&topic.to_string(), "new", SubType::Exclusive, 2)
        .await;
    c.flow(1, 10).await;
    c.flow(2, 10).await;
    // Each consumer's messages, in order: m9 then m10 for both.
    let mut seen: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    while seen.values().map(Vec::len).sum::<usize>() < 4 {
        let m = c.recv_type(Type::Message).await;
        let consumer = m.command.message.unwrap().consumer_id;
        let data = String::from_utf8(m.payload.unwrap().data.to_vec()).unwrap();
        seen.entry(consumer).or_default().push(data);
    }
    let want = vec!["m9".to_owned(), "m10".to_owned()];
    assert_eq!(seen, [(1, want.clone()), (2, want)].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_stay_in_the_shared_history_as_long_as_retention_says() {
    use kilonova_metadata::policies::RetentionPolicies;
    let (_meta, objects, r) = stores();
    let a = member(&r, "a:8080", &objects).await;
    // (namespace, retention minutes, retention MiB, messages kept once all are acknowledged)
    let cases = [
        ("forever", -1, -1, 4),
        ("no-size", -1, 0, 0),
        ("none", 0, 0, 0),
    ];
    for (name, minutes, mib, kept) in cases {
        let ns = NamespaceName::new("public", name).unwrap();
        let policies = Policies {
            retention_policies: Some(RetentionPolicies {
                retention_time_in_minutes: minutes,
                retention_size_in_mb: mib,
            }),
            ..Policies::default()
        };
        r.create_namespace(&ns, policies).await.unwrap();
        let topic = TopicName::parse(&format!("persistent://public/{name}/t")).unwrap();
        a.broker.lookup_topic(&topic, None, true).await.unwrap();
        let mut c = Raw::connect(a.addr).await;
        c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
            .await;
        c.producer(&topic.to_string(), 1).await;
        publish(&mut c, 0..4).await;
        c.flow(1, 10).await;
        let got = receive(&mut c, 4).await;
        ack(&mut c, &got[3].1, AckType::Cumulative).await;
        let id = r.topic(&topic).await.unwrap().unwrap().id;
        stored_position(&r, id, "s", 4).await;
        // Compacted twice: the first writes the run, the second may drop it
        // (a run goes whole, once acknowledged and out of retention).
        a.broker.compact_held_bundles(1).await;
        c.send_message(1, 4, b"m4").await;
        c.recv_type(Type::SendReceipt).await;
        a.broker.compact_held_bundles(1).await;
        let policies = r.namespace(&ns).await.unwrap();
        let range = bundles::bundle_of(&policies.bundles, &topic).unwrap();
        let (base, _) = r.flush_base(&ns, range).await.unwrap().unwrap();
        let t = &base.topics[0];
        let runs: u32 = t.runs.iter().map(|r| r.count).sum();
        assert_eq!(
            (t.first_message_index, runs),
            (4 - kept, kept as u32 + 1),
            "{name}: retention {minutes} min / {mib} MiB"
        );
    }
}

fn payloads(got: &[(String, MessageIdData)]) -> Vec<&str> {
    got.iter().map(|(d, _)| d.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_from_earlier_owners_acknowledge_the_same_messages() {
    let Fixture {
        a,
        b,
        ns,
        range,
        topic,
        mut c,
        ..
    } = fixture().await;
    publish(&mut c, 0..10).await;
    c.flow(1, 100).await;
    let on_a = receive(&mut c, 10).await;
    drop(c);
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());
    // On b, a client acknowledges with ids a handed out (as a client does
    // with messages it received before the move): the same messages are
    // acknowledged. An id naming a segment nobody recorded acknowledges
    // nothing.
    let mut c = Raw::connect(b.addr).await;
    c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
        .await;
    let mut unknown = on_a[9].1.clone();
    unknown.ledger_id += 1 << 20;
    ack(&mut c, &unknown, AckType::Cumulative).await;
    ack(&mut c, &on_a[4].1, AckType::Cumulative).await;
    ack(&mut c, &on_a[7].1, AckType::Individual).await;
    c.flow(1, 100).await;
    let on_b = receive(&mut c, 4).await;
    assert_eq!(payloads(&on_b), ["m5", "m6", "m8", "m9"]);
    assert!(
        on_b.iter()
            .all(|(_, id)| on_a.iter().all(|(_, old)| old.ledger_id != id.ledger_id)),
        "b's message ids share no segment with a's"
    );
    drop(c);
    // Back to a, in a new log: ids of both earlier owners still name their messages.
    assert!(b.broker.unload_bundle(&ns, range).await.unwrap());
    let mut c = Raw::connect(a.addr).await;
    c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
        .await;
    c.producer(&topic.to_string(), 1).await;
    ack(&mut c, &on_b[2].1, AckType::Individual).await; // m8, as b numbered it
    ack(&mut c, &on_a[9].1, AckType::Individual).await; // m9, as a numbered it first
    publish(&mut c, 10..11).await;
    c.flow(1, 100).await;
    // m7, acknowledged alone on b with a's id, stays acknowledged too: the
    // ranges acknowledged after the first unacknowledged message follow
    // the topic.
    let again = receive(&mut c, 3).await;
    assert_eq!(payloads(&again), ["m5", "m6", "m10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_commits_the_appends_in_flight_before_the_bundle_changes_hands() {
    let (_meta, objects, r) = stores();
    // A long flush interval: the append is still waiting for its flush when
    // the unload starts.
    let slow = BrokerConfig {
        cluster_flush_interval_ms: 2_000,
        ..BrokerConfig::default()
    };
    let a = member_with(&r, "a:8080", &objects, slow).await;
    let b = member(&r, "b:8080", &objects).await;
    let ns = default_ns();
    let (range, topic) = a_topic(&r).await;
    a.broker.lookup_topic(&topic, None, true).await.unwrap();
    let mut c = Raw::connect(a.addr).await;
    c.producer(&topic.to_string(), 1).await;
    c.send_message(1, 0, b"m0").await;
    // The topic took it (appended, its flush pending).
    took(&a, &topic, 1).await;
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());
    // Acknowledged (committed under a's epoch before the handover), not refused.
    let receipt = c.recv_type(Type::SendReceipt).await;
    assert_eq!(receipt.command.send_receipt.unwrap().sequence_id, 0);
    let mut c = Raw::connect(b.addr).await;
    c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
        .await;
    c.flow(1, 10).await;
    let got = receive(&mut c, 1).await;
    assert_eq!(got[0].0, "m0");
}

/// A producer named `name` (id 1): what the broker answers (its last
/// sequence id, with deduplication on).
async fn named_producer(c: &mut Raw, topic: &TopicName, name: &str) -> Option<i64> {
    c.send(cmd(Type::Producer, |p| {
        p.producer = Some(Box::new(CommandProducer {
            topic: topic.to_string(),
            producer_id: 1,
            request_id: 101,
            producer_name: Some(name.into()),
            ..Default::default()
        }))
    }))
    .await;
    let ok = c.recv_type(Type::ProducerSuccess).await;
    ok.command.producer_success.unwrap().last_sequence_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplication_follows_a_moved_topic() {
    let (_meta, objects, r) = stores();
    let config = BrokerConfig {
        deduplication_enabled: true,
        ..BrokerConfig::default()
    };
    let a = member_with(&r, "a:8080", &objects, config.clone()).await;
    let b = member_with(&r, "b:8080", &objects, config).await;
    let (range, topic) = a_topic(&r).await;
    a.broker.lookup_topic(&topic, None, true).await.unwrap();
    let mut c = Raw::connect(a.addr).await;
    c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 2)
        .await;
    // Named as Raw::send_message names the messages' producer.
    named_producer(&mut c, &topic, "raw").await;
    publish(&mut c, 0..5).await;
    drop(c);
    // Compacted first: b replays the entries of the compacted run too (a
    // topic with deduplication loads them all, not leaving them in the
    // object store), and finds the producer's last sequence id there.
    a.broker.compact_held_bundles(1).await;
    assert!(r
        .flush_records(&default_ns(), range)
        .await
        .unwrap()
        .is_empty());
    assert!(a.broker.unload_bundle(&default_ns(), range).await.unwrap());
    // On b the producer learns where it stands, and what it sends again (as a
    // client resends what it had no receipt for) is not stored twice.
    let mut c = Raw::connect(b.addr).await;
    assert_eq!(named_producer(&mut c, &topic, "raw").await, Some(4));
    assert_eq!(
        counted(&b, "kilonova_cluster_topic_load_entries_read_total{"),
        5
    );
    publish(&mut c, 3..7).await;
    c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
        .await;
    c.flow(1, 100).await;
    let got = receive(&mut c, 7).await;
    assert_eq!(payloads(&got), ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);
}

/// A subscription's position shared while an append is in flight stands
/// for the last durable message, not for the end the append reached: a
/// compaction right after the receipt keeps the unacknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_shared_while_an_append_is_in_flight_does_not_cover_it() {
    let (_meta, objects, r) = stores();
    // Each journal group waits a second for more appends: the SEND below
    // stays in flight while the topic shares its positions.
    let slow_groups = |c: &mut kilonova_storage::StoreConfig| {
        c.group_commit_max_delay_us = 1_000_000;
    };
    let a = start_cluster_member_tuned(
        r.clone(),
        "a:8080",
        TTL,
        BrokerConfig::default(),
        slow_groups,
    )
    .await;
    let a = sharing(a, &objects);
    let (range, topic) = a_topic(&r).await;
    let mut c = subscribed_producer(&a, &topic).await;
    let id = r.topic(&topic).await.unwrap().unwrap().id;
    stored_position(&r, id, "s", 0).await;
    c.send_message(1, 0, b"m0").await;
    // The Stats request that counts the message shares the positions with
    // its append in flight.
    took(&a, &topic, 1).await;
    c.recv_type(Type::SendReceipt).await;
    a.broker.compact_held_bundles(1).await;
    let (base, _) = r.flush_base(&default_ns(), range).await.unwrap().unwrap();
    let runs: Vec<u32> = base.topics[0].runs.iter().map(|r| r.count).collect();
    assert_eq!(runs, [1], "the unacknowledged message is kept");
    assert_eq!(r.topic_cursors(id).await.unwrap().subscriptions["s"], 0);
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// Sends `data` on producer 1 as sequence id `seq`, to be delivered at
/// `deliver_at_ms` (ms since the epoch), and waits for its receipt.
async fn send_delayed(c: &mut Raw, seq: u64, data: &str, deliver_at_ms: Option<i64>) {
    let metadata = MessageMetadata {
        producer_name: "raw".into(),
        sequence_id: seq,
        publish_time: u64::try_from(now_ms()).unwrap(),
        deliver_at_time: deliver_at_ms,
        ..Default::default()
    };
    c.send_message_with(1, &metadata, data.as_bytes()).await;
    c.recv_type(Type::SendReceipt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_stays_delayed_on_the_next_owner() {
    let Fixture {
        a,
        b,
        ns,
        range,
        topic,
        mut c,
        ..
    } = fixture().await;
    c.subscribe(&topic.to_string(), "d", SubType::Shared, 2)
        .await;
    let at = now_ms() + 2_000;
    send_delayed(&mut c, 0, "later", Some(at)).await;
    send_delayed(&mut c, 1, "now", None).await;
    drop(c);
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());
    let mut c = Raw::connect(b.addr).await;
    c.subscribe(&topic.to_string(), "d", SubType::Shared, 1)
        .await;
    c.flow(1, 100).await;
    assert_eq!(payloads(&receive(&mut c, 1).await), ["now"]);
    assert_eq!(payloads(&receive(&mut c, 1).await), ["later"]);
    assert!(now_ms() >= at, "delivered before its time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespaces_history_is_forgotten_unless_it_was_created_again() {
    let (_meta, objects, r) = stores();
    let a = member(&r, "a:8080", &objects).await;
    let ns = NamespaceName::new("public", "gone").unwrap();
    // One bundle: its records and base are the namespace's history.
    let policies = || Policies {
        bundles: kilonova_metadata::policies::BundlesData::even(1).unwrap(),
        ..Policies::default()
    };
    let history = || async {
        (
            r.flush_records(&ns, BundleRange::FULL).await.unwrap().len(),
            r.flush_base(&ns, BundleRange::FULL)
                .await
                .unwrap()
                .is_some(),
        )
    };
    for round in 0..2 {
        // A topic of its own per round (the broker still has the first loaded).
        let topic = TopicName::parse(&format!("persistent://public/gone/t{round}")).unwrap();
        r.create_namespace(&ns, policies()).await.unwrap();
        a.broker.lookup_topic(&topic, None, true).await.unwrap();
        let mut c = Raw::connect(a.addr).await;
        // A subscription that keeps every message in the history.
        c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
            .await;
        c.producer(&topic.to_string(), 1).await;
        // A compacted base, then records after it.
        publish(&mut c, 0..4).await;
        a.broker.compact_held_bundles(1).await;
        publish(&mut c, 4..6).await;
        drop(c);
        let (records, base) = history().await;
        assert!(
            records > 0 && base,
            "round {round}: {records} records, base {base}"
        );
        let base_objects = objects_in(&objects, "wal-base");
        assert!(base_objects > 0);
        r.delete_topic(&topic).await.unwrap();
        r.delete_namespace(&ns).await.unwrap();
        if round == 0 {
            a.broker.forget_namespace_history(&ns).await.unwrap();
            assert_eq!(history().await, (0, false));
            assert_eq!(objects_in(&objects, "wal-base"), 0);
        } else {
            // Created again before its history was forgotten: it keeps it.
            r.create_namespace(&ns, policies()).await.unwrap();
            assert!(a.broker.forget_namespace_history(&ns).await.is_err());
            assert_eq!(history().await, (records, true));
            assert_eq!(objects_in(&objects, "wal-base"), base_objects);
        }
    }
}

/// Waits until bundle `range` of `ns` has a compacted base.
async fn compacted(r: &Resources, ns: &NamespaceName, range: BundleRange, when: &str) {
    tokio::time::timeout(WAIT, async {
        while r.flush_base(ns, range).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no compaction {when}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_is_compacted_as_soon_as_this_broker_committed_enough_bytes() {
    let (_meta, objects, r) = stores();
    // Records far from their threshold, looked at once an hour: only the
    // bytes committed here can start the compaction within the test.
    let config = BrokerConfig {
        cluster_compact_after_records: 10_000,
        cluster_compact_after_bytes: 64 << 10,
        cluster_compaction_interval_ms: 3_600_000,
        ..BrokerConfig::default()
    };
    let a = member_with(&r, "a:8080", &objects, config).await;
    let (range, topic) = a_topic(&r).await;
    a.broker.lookup_topic(&topic, None, true).await.unwrap();
    let mut c = Raw::connect(a.addr).await;
    c.producer(&topic.to_string(), 1).await;
    let ns = default_ns();
    // Three 16 KiB messages: under the bytes threshold, no compaction.
    let data = vec![b'x'; 16 << 10];
    for seq in 0..3 {
        c.send_message(1, seq, &data).await;
        c.recv_type(Type::SendReceipt).await;
    }
    assert_eq!(
        counted(&a, "kilonova_cluster_history_compactions_total{"),
        0
    );
    assert!(r.flush_base(&ns, range).await.unwrap().is_none());
    // Two more: over 64 KiB.
    for seq in 3..5 {
        c.send_message(1, seq, &data).await;
        c.recv_type(Type::SendReceipt).await;
    }
    compacted(
        &r,
        &ns,
        range,
        "after 80 KiB committed (the threshold is 64 KiB)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_is_compacted_as_soon_as_this_broker_committed_enough_records() {
    let (_meta, objects, r) = stores();
    // Looked at once an hour: only the count of records committed here
    // can start the compaction within the test.
    let config = BrokerConfig {
        cluster_compact_after_records: 8,
        cluster_compaction_interval_ms: 3_600_000,
        ..BrokerConfig::default()
    };
    let a = member_with(&r, "a:8080", &objects, config).await;
    let (range, topic) = a_topic(&r).await;
    let mut c = subscribed_producer(&a, &topic).await;
    // One at a time: a flush, and a record, each.
    publish(&mut c, 0..10).await;
    let ns = default_ns();
    compacted(
        &r,
        &ns,
        range,
        "after 10 records committed (the threshold is 8)",
    )
    .await;
    // The base is written before the records it covers are deleted: the
    // compaction is over when it is counted.
    tokio::time::timeout(WAIT, async {
        while counted(&a, "kilonova_cluster_history_compactions_total{") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the compaction that wrote the base never finished");
    let records = r.flush_records(&ns, range).await.unwrap().len();
    assert!(records < 10, "{records} records left after the compaction");
    assert_eq!(counted(&a, "kilonova_cluster_topic_loads_total{"), 1);
}

/// The value of counter `name` (up to its labels' brace) in `server`'s metrics.
fn counted(server: &Server, name: &str) -> u64 {
    let metrics = server.broker.render_metrics();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.split(' ').nth(1)?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_dropped_by_the_next_owners_compaction_leaves_its_loaded_topic() {
    let Fixture {
        r,
        a,
        b,
        ns,
        range,
        topic,
        mut c,
        objects,
        ..
    } = fixture().await;
    publish(&mut c, 0..40).await;
    a.broker.compact_held_bundles(1).await;
    let first_objects = run_objects(&r, &topic).await;
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());

    // On b (the run left in the object store), everything is consumed.
    let name = topic.to_string();
    let mut c = Raw::connect(b.addr).await;
    c.subscribe(&name, "s", SubType::Exclusive, 1).await;
    assert_eq!(
        counted(&b, "kilonova_cluster_topic_load_entries_left_total{"),
        40
    );
    c.flow(1, 100).await;
    let got = receive(&mut c, 40).await;
    ack(&mut c, &got[39].1, AckType::Cumulative).await;
    let id = r.topic(&topic).await.unwrap().unwrap().id;
    stored_position(&r, id, "s", 40).await;
    c.producer(&name, 1).await;
    publish(&mut c, 40..42).await;
    // b's compaction drops the run (acknowledged, no retention) and its
    // object; the topic lets go of it too: a reader from the earliest
    // starts at the first message kept, not at one no object holds.
    b.broker.compact_held_bundles(1).await;
    assert!(first_objects
        .iter()
        .all(|o| !objects.path().join(o).exists()));
    let mut e = Raw::connect(b.addr).await;
    e.subscribe(&name, "earliest", SubType::Exclusive, 2).await;
    e.flow(2, 100).await;
    assert_eq!(payloads(&receive(&mut e, 2).await), ["m40", "m41"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_inside_a_run_of_large_entries_is_found_at_the_load() {
    // 200 entries of 256 KiB: a fetch with the usual read-ahead (100
    // entries, 25 MiB) is larger than a log's offload cache (16 MiB).
    let Fixture {
        r,
        a,
        b,
        ns,
        range,
        topic,
        mut c,
        ..
    } = fixture().await;
    let big = vec![7u8; 256 << 10];
    for seq in 0..200u64 {
        let mut data = format!("m{seq:03}:").into_bytes();
        data.extend_from_slice(&big);
        c.send_message(1, seq, &data).await;
        c.recv_type(Type::SendReceipt).await;
    }
    c.flow(1, 100).await;
    let got = receive(&mut c, 100).await;
    ack(&mut c, &got[99].1, AckType::Cumulative).await;
    let id = r.topic(&topic).await.unwrap().unwrap().id;
    stored_position(&r, id, "s", 100).await;
    a.broker.compact_held_bundles(1).await;
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());
    // b finds m100 inside the run left in the object store (a binary
    // search, each entry it looks at fetched alone) and resumes there.
    let mut c = Raw::connect(b.addr).await;
    c.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
        .await;
    assert!(counted(&b, "kilonova_cluster_topic_load_entries_left_total{") >= 100);
    c.flow(1, 1).await;
    let (first, _) = receive(&mut c, 1).await.remove(0);
    assert!(first.starts_with("m100:"), "resumed at {}", &first[..5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_inside_a_run_left_in_the_object_store_is_stored_as_it_was() {
    let Fixture {
        r,
        a,
        b,
        ns,
        range,
        topic,
        mut c,
        ..
    } = fixture().await;
    publish(&mut c, 0..40).await;
    // Compacted before anything is acknowledged: one run of all 40.
    a.broker.compact_held_bundles(1).await;
    c.flow(1, 10).await;
    let got = receive(&mut c, 10).await;
    ack(&mut c, &got[9].1, AckType::Cumulative).await;
    let id = r.topic(&topic).await.unwrap().unwrap().id;
    stored_position(&r, id, "s", 10).await;
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());

    // On b the subscription's position is inside the run b left in the
    // object store: b stores it again (on subscribe, and as it publishes)
    // as message 10, not as if everything were acknowledged, so b's own
    // compaction keeps the run and the next owner resumes at m10.
    let name = topic.to_string();
    let mut c = Raw::connect(b.addr).await;
    c.subscribe(&name, "s", SubType::Exclusive, 1).await;
    assert_eq!(
        counted(&b, "kilonova_cluster_topic_load_entries_left_total{"),
        40
    );
    c.producer(&name, 1).await;
    publish(&mut c, 40..42).await;
    drop(c);
    b.broker.compact_held_bundles(1).await;
    assert!(b.broker.unload_bundle(&ns, range).await.unwrap());
    let mut c = Raw::connect(a.addr).await;
    c.subscribe(&name, "s", SubType::Exclusive, 1).await;
    c.flow(1, 100).await;
    let expected: Vec<String> = (10..42).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads(&receive(&mut c, 32).await), expected);
}

/// The objects topic `topic`'s runs are in, in its bundle's base.
async fn run_objects(r: &Resources, topic: &TopicName) -> Vec<String> {
    let ns = topic.namespace();
    let policies = r.namespace(&ns).await.unwrap();
    let range = bundles::bundle_of(&policies.bundles, topic).unwrap();
    let (base, _) = r.flush_base(&ns, range).await.unwrap().expect("a base");
    let t = base.topics.iter().find(|t| t.topic == topic.to_string());
    t.iter()
        .flat_map(|t| &t.runs)
        .map(|r| r.object.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_owner_leaves_compacted_runs_in_the_object_store_and_follows_their_next_compaction()
{
    use kilonova_metadata::policies::RetentionPolicies;
    let (_meta, objects, r) = stores();
    let a = member(&r, "a:8080", &objects).await;
    let b = member(&r, "b:8080", &objects).await;
    // Acknowledged messages are kept (retention without limits), so the
    // compacted runs hold messages no subscription's position is in.
    let ns = NamespaceName::new("public", "kept").unwrap();
    let policies = Policies {
        retention_policies: Some(RetentionPolicies {
            retention_time_in_minutes: -1,
            retention_size_in_mb: -1,
        }),
        ..Policies::default()
    };
    r.create_namespace(&ns, policies).await.unwrap();
    let topic = TopicName::parse("persistent://public/kept/t").unwrap();
    let name = topic.to_string();
    a.broker.lookup_topic(&topic, None, true).await.unwrap();
    let mut c = Raw::connect(a.addr).await;
    c.subscribe(&name, "s", SubType::Exclusive, 1).await;
    c.producer(&name, 1).await;
    publish(&mut c, 0..40).await;
    c.flow(1, 100).await;
    let got = receive(&mut c, 40).await;
    ack(&mut c, &got[39].1, AckType::Cumulative).await;
    let id = r.topic(&topic).await.unwrap().unwrap().id;
    stored_position(&r, id, "s", 40).await;
    a.broker.compact_held_bundles(1).await;
    let first_objects = run_objects(&r, &topic).await;
    assert_eq!(first_objects.len(), 1, "40 entries compacted into one run");
    publish(&mut c, 40..42).await;
    let range = bundles::bundle_of(&r.namespace(&ns).await.unwrap().bundles, &topic).unwrap();
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());

    // b loads the topic reading only the two records after the base: the
    // run stays in the object store until a reader reaches it.
    let mut c = Raw::connect(b.addr).await;
    c.subscribe(&name, "s", SubType::Exclusive, 1).await;
    assert_eq!(
        counted(&b, "kilonova_cluster_topic_load_entries_left_total{"),
        40
    );
    assert_eq!(
        counted(&b, "kilonova_cluster_topic_load_entries_read_total{"),
        2
    );
    c.flow(1, 100).await;
    assert_eq!(payloads(&receive(&mut c, 2).await), ["m40", "m41"]);

    // b publishes more and compacts: the run merges with the new entries
    // into another object and the old object is deleted while the topic
    // is loaded here; a reader from the earliest still reads every
    // message, the first 40 from the new object.
    c.producer(&name, 1).await;
    publish(&mut c, 42..82).await;
    b.broker.compact_held_bundles(1).await;
    let now = run_objects(&r, &topic).await;
    assert!(
        first_objects
            .iter()
            .all(|o| !now.contains(o) && !objects.path().join(o).exists()),
        "the first run's object was rewritten and deleted: {first_objects:?}, now {now:?}"
    );
    let mut e = Raw::connect(b.addr).await;
    e.subscribe(&name, "earliest", SubType::Exclusive, 2).await;
    e.flow(2, 1000).await;
    let all = receive(&mut e, 82).await;
    let expected: Vec<String> = (0..82).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads(&all), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_owner_counts_the_records_it_found_towards_a_compaction() {
    let (_meta, objects, r) = stores();
    let config = BrokerConfig {
        cluster_compact_after_records: 8,
        cluster_compaction_interval_ms: 3_600_000,
        ..BrokerConfig::default()
    };
    let a = member_with(&r, "a:8080", &objects, config.clone()).await;
    let b = member_with(&r, "b:8080", &objects, config).await;
    let (range, topic) = a_topic(&r).await;
    let ns = default_ns();
    let mut c = subscribed_producer(&a, &topic).await;
    // Six records on a (below the threshold of 8), then three on b: b
    // found six at its load, so its third makes nine.
    publish(&mut c, 0..6).await;
    drop(c);
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());
    let mut c = Raw::connect(b.addr).await;
    c.producer(&topic.to_string(), 1).await;
    assert!(r.flush_base(&ns, range).await.unwrap().is_none());
    publish(&mut c, 6..9).await;
    compacted(
        &r,
        &ns,
        range,
        "by b, 9 records after its load (the threshold is 8)",
    )
    .await;
}

/// A topic of bundle `range` of public/default whose hash is on the other
/// side of the range's middle from `of`'s.
fn a_neighbour_across_the_middle(range: BundleRange, of: &TopicName) -> TopicName {
    let mid = range.lower + (range.upper - range.lower) / 2;
    let side = |t: &TopicName| bundles::topic_hash(t) < mid;
    (0..10_000)
        .map(|i| TopicName::parse(&format!("persistent://public/default/n{i}")).unwrap())
        .find(|t| range.contains(bundles::topic_hash(t)) && side(t) != side(of))
        .expect("a topic across the middle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_carries_each_topics_history_to_its_half_and_keeps_shared_objects() {
    let Fixture {
        r,
        a,
        b,
        ns,
        range,
        topic,
        mut c,
        ..
    } = fixture().await;
    let other = a_neighbour_across_the_middle(range, &topic);
    let mut d = Raw::connect(a.addr).await;
    d.subscribe(&other.to_string(), "s", SubType::Exclusive, 1)
        .await;
    d.producer(&other.to_string(), 1).await;
    // Both topics' histories: a compacted base, then records after it.
    publish(&mut c, 0..5).await;
    publish(&mut d, 0..5).await;
    a.broker.compact_held_bundles(1).await;
    publish(&mut c, 5..8).await;
    publish(&mut d, 5..8).await;
    assert!(!r.flush_records(&ns, range).await.unwrap().is_empty());

    let (lo, hi) = a.broker.split_bundle(&ns, range, false).await.unwrap();
    assert!(r.flush_base(&ns, range).await.unwrap().is_none());
    assert!(r.flush_records(&ns, range).await.unwrap().is_empty());
    let policies = r.namespace(&ns).await.unwrap();
    let (mine, theirs) = match bundles::bundle_of(&policies.bundles, &topic).unwrap() {
        h if h == lo => (lo, hi),
        _ => (hi, lo),
    };
    assert_eq!(
        bundles::bundle_of(&policies.bundles, &other).unwrap(),
        theirs
    );
    for (half, t) in [(mine, &topic), (theirs, &other)] {
        let (base, _) = r
            .flush_base(&ns, half)
            .await
            .unwrap()
            .expect("a half's base");
        let names: Vec<&str> = base.topics.iter().map(|t| t.topic.as_str()).collect();
        assert_eq!(names, [t.to_string().as_str()], "{half}");
    }

    // The first topic's half moves to b: its subscription finds all eight.
    assert!(a
        .broker
        .unload_bundle_to(&ns, mine, Some("b:8080"))
        .await
        .unwrap());
    let mut e = Raw::connect(b.addr).await;
    e.subscribe(&topic.to_string(), "s", SubType::Exclusive, 1)
        .await;
    e.flow(1, 100).await;
    let got = receive(&mut e, 8).await;
    assert_eq!(
        payloads(&got),
        ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"]
    );
    // Everything acknowledged and compacted away on b: the runs b's half
    // drops name the object the other half's base still names — it stays.
    ack(&mut e, &got[7].1, AckType::Cumulative).await;
    let id = r.topic(&topic).await.unwrap().unwrap().id;
    stored_position(&r, id, "s", 8).await;
    e.producer(&topic.to_string(), 1).await;
    publish(&mut e, 8..9).await;
    b.broker.compact_held_bundles(1).await;

    // The other topic stays on a (its half did not move); loaded again on
    // b, its history is whole.
    assert!(a
        .broker
        .unload_bundle_to(&ns, theirs, Some("b:8080"))
        .await
        .unwrap());
    let mut f = Raw::connect(b.addr).await;
    f.subscribe(&other.to_string(), "s", SubType::Exclusive, 1)
        .await;
    f.flow(1, 100).await;
    assert_eq!(
        payloads(&receive(&mut f, 8).await),
        ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"]
    );
}
